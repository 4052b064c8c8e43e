"""mmrouter-openai: the ``openai`` provider plugin.

Offers GPT-4o / GPT-4o mini (text and images), the GPT-4o audio models (text
and audio), and whisper-1 plus the GPT-4o transcription models (including the
diarizing one) through the official ``openai`` SDK. Point ``base_url`` at any
OpenAI-compatible server (vLLM, Ollama, llama.cpp) to use it instead; see
``README.md`` of this distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import router

from .provider import OpenAIProvider
from .settings import OpenAISettings

__all__ = ["OpenAIProvider", "OpenAISettings", "register_providers"]


@router.hookimpl
def register_providers(register: Callable[[router.Provider], None], settings: Mapping[str, Any], name: str) -> None:
    """Register the ``openai`` provider configured from ``providers.openai``, or an extra instance
    (``providers.<name>`` with ``plugin: openai``, e.g. a vLLM server next to OpenAI)."""
    register(OpenAIProvider(settings, name=name))
