"""mmrouter-local: the offline provider that serves a fresh install with no API keys.

It extracts, and says so: PDF text page by page, OCR of images and video
frames (rapidocr-onnxruntime), speech to text with times (pocketsphinx),
audio decoded by PyAV. It never pretends to answer a question.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import router

from .provider import LocalProvider
from .settings import LocalSettings

__all__ = ["LocalProvider", "LocalSettings", "register_providers"]


@router.hookimpl
def register_providers(register: Callable[[router.Provider], None], settings: Mapping[str, Any]) -> None:
    """Offer the ``local`` provider, configured from ``providers.local``."""
    register(LocalProvider.from_settings(settings or {}))
