"""mmrouter-gemini: the Google Gemini provider plugin (google-genai SDK).

Registered through the ``mmrouter`` entry point group; configured by the
``providers.gemini`` section of the router's config (see README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import router

from .models import MODELS
from .provider import GeminiProvider
from .settings import GeminiSettings


@router.hookimpl
def register_providers(register: Any, settings: Mapping[str, Any], name: str) -> None:
    """Offer the Gemini provider, configured from ``providers.gemini``, or an extra instance
    (``providers.<name>`` with ``plugin: gemini``, e.g. a second key or a gateway)."""
    register(GeminiProvider.from_settings(settings or {}, name))


__all__ = ["MODELS", "GeminiProvider", "GeminiSettings", "register_providers"]
