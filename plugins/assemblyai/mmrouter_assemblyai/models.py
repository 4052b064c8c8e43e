"""The models this plugin offers: AssemblyAI's speech models for pre-recorded media."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router import (
    FEATURE_DIARIZATION,
    OUTPUT_TRANSCRIPT,
    Modality,
    ModelInfo,
    Price,
)

if TYPE_CHECKING:
    import assemblyai

_INPUTS = frozenset({Modality.AUDIO, Modality.VIDEO})
_OUTPUTS = frozenset({OUTPUT_TRANSCRIPT})
_FEATURES = frozenset({FEATURE_DIARIZATION})

#: The models, first the one routing uses by default (``assemblyai/best``).
#: Prices are US dollars per audio hour at AssemblyAI's list price (override them
#: with ``providers.assemblyai.prices`` in the config).
MODELS: list[ModelInfo] = [
    ModelInfo("best", inputs=_INPUTS, outputs=_OUTPUTS, features=_FEATURES,
              price=Price(per_audio_hour=0.37)),
    ModelInfo("nano", inputs=_INPUTS, outputs=_OUTPUTS, features=_FEATURES,
              price=Price(per_audio_hour=0.12)),
]


def speech_model(model: ModelInfo) -> assemblyai.SpeechModel:
    """The SDK's ``SpeechModel`` for one of :data:`MODELS`."""
    import assemblyai as aai

    return aai.SpeechModel(model.name)
