"""mmrouter-assemblyai: AssemblyAI transcription with speaker diarization, as an mmrouter provider plugin.

Registers the provider ``assemblyai``, with the models ``best``, ``universal-2`` and ``nano`` (a deprecated
alias of ``universal-2``), and one more for each extra instance the config asks for
(``providers.<name>`` with ``plugin: assemblyai``).
Settings come from ``providers.assemblyai`` (see :mod:`mmrouter_assemblyai.settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import router

from .provider import AssemblyAIProvider
from .settings import PLUGIN, AssemblyAISettings

__all__ = ["AssemblyAIProvider", "AssemblyAISettings", "register_providers"]


@router.hookimpl
def register_providers(register: Any, settings: Mapping[str, Any], name: str) -> None:
    """Offer the AssemblyAI provider, configured from ``providers.assemblyai``, or an extra instance
    (``providers.<name>`` with ``plugin: assemblyai``, e.g. a second account or the EU endpoint)."""
    provider_settings = AssemblyAISettings.load(name, settings, environment=name == PLUGIN)
    register(AssemblyAIProvider(provider_settings, name=name))
