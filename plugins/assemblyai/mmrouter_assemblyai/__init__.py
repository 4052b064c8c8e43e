"""mmrouter-assemblyai: AssemblyAI transcription with speaker diarization, as an mmrouter provider plugin.

Registers one provider, ``assemblyai``, with the models ``best`` and ``nano``.
Settings come from ``providers.assemblyai`` (see :mod:`mmrouter_assemblyai.settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import router

from .provider import AssemblyAIProvider
from .settings import AssemblyAISettings

__all__ = ["AssemblyAIProvider", "AssemblyAISettings", "register_providers"]


@router.hookimpl
def register_providers(register: Any, settings: Mapping[str, Any]) -> None:
    """Offer the AssemblyAI provider, configured from ``providers.assemblyai``."""
    register(AssemblyAIProvider(AssemblyAISettings.load("assemblyai", settings)))
