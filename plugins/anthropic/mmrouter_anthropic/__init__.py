"""mmrouter-anthropic: Claude (text, images, PDF documents) for mmrouter.

Registered through the ``mmrouter`` entry point group; the config section
``providers.anthropic`` is this plugin's settings (see :mod:`mmrouter_anthropic.settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import router
from router.hookspecs import RegisterProvider

from .models import MODELS
from .provider import AnthropicProvider
from .settings import AnthropicSettings

__all__ = ["MODELS", "AnthropicProvider", "AnthropicSettings", "register_providers"]


@router.hookimpl
def register_providers(register: RegisterProvider, settings: Mapping[str, Any], name: str) -> None:
    """Offer the Anthropic provider, configured from ``providers.anthropic``, or an extra instance
    (``providers.<name>`` with ``plugin: anthropic``, e.g. a second account or a gateway)."""
    register(AnthropicProvider(settings, name=name))
