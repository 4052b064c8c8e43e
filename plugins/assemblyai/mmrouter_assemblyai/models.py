"""The models this plugin offers: AssemblyAI's speech models for pre-recorded media.

AssemblyAI takes the models of a transcript as ``speech_models``, a list in priority order (the first
that supports the audio's language transcribes it). The singular ``speech_model`` and its values
``best`` and ``nano`` are refused now, so the catalogue names below are the router's, each mapped to
the list it sends (:func:`speech_models`).
"""

from __future__ import annotations

from router import (
    FEATURE_DIARIZATION,
    OUTPUT_TRANSCRIPT,
    Modality,
    ModelInfo,
    Price,
)

_INPUTS = frozenset({Modality.AUDIO, Modality.VIDEO})
_OUTPUTS = frozenset({OUTPUT_TRANSCRIPT})
_FEATURES = frozenset({FEATURE_DIARIZATION})
#: AssemblyAI fetches audio and video given by URL itself (the URL is its ``audio_url``): no upload.
_URL_INPUTS = _INPUTS

#: What ``best`` sends unless ``providers.assemblyai.speech_models`` says otherwise: AssemblyAI's newest
#: pre-recorded model, then Universal-2 for the languages it lacks (the assemblyai-stt-3-7 migration
#: guide, assemblyai.com/docs/pre-recorded-audio/assemblyai-stt-3-7-migration-guide, read 2026-11: "set
#: speech_models to ["assemblyai-stt-3-7", "universal-2"]"; AssemblyAI no longer falls back by itself).
DEFAULT_BEST_MODELS: tuple[str, ...] = ("assemblyai-stt-3-7", "universal-2")

#: Universal-2, AssemblyAI's 99-language model (assemblyai.com/docs/pre-recorded-audio/select-the-speech-model).
UNIVERSAL_2 = "universal-2"

#: The models, first the one routing uses by default (``assemblyai/best``). Prices are US dollars per
#: audio hour at AssemblyAI's list price (assemblyai.com/pricing as read on 2026-10-07: Universal-3.5 Pro
#: $0.21/hr, Universal-2 $0.15/hr; no price for assemblyai-stt-3-7 was published in what we could read,
#: so ``best`` keeps the Universal-3.5 Pro price). Override them with ``providers.assemblyai.prices``.
MODELS: list[ModelInfo] = [
    ModelInfo("best", inputs=_INPUTS, outputs=_OUTPUTS, features=_FEATURES, url_inputs=_URL_INPUTS,
              price=Price(per_audio_hour=0.21)),
    ModelInfo(UNIVERSAL_2, inputs=_INPUTS, outputs=_OUTPUTS, features=_FEATURES, url_inputs=_URL_INPUTS,
              price=Price(per_audio_hour=0.15)),
    # Deprecated: AssemblyAI refuses "nano" now; kept so configs naming assemblyai/nano still work.
    ModelInfo("nano", inputs=_INPUTS, outputs=_OUTPUTS, features=_FEATURES, url_inputs=_URL_INPUTS,
              price=Price(per_audio_hour=0.15)),
]

#: The ``speech_models`` of every catalogue name but ``best`` (which the settings give).
_FIXED_MODELS: dict[str, tuple[str, ...]] = {UNIVERSAL_2: (UNIVERSAL_2,), "nano": (UNIVERSAL_2,)}


def speech_models(model: ModelInfo, best: tuple[str, ...] | list[str] = DEFAULT_BEST_MODELS) -> list[str]:
    """The ``speech_models`` list sent for one of :data:`MODELS`: ``best`` (the configured list) for
    ``best``, Universal-2 for ``universal-2`` and its deprecated alias ``nano``."""
    return list(_FIXED_MODELS.get(model.name, best))
