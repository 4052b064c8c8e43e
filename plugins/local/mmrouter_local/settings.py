"""The plugin's settings: ``providers.local`` of the config file.

Keys (all optional)::

    providers:
      local:
        workers: 2                     # threads for CPU work (default: min(2, CPUs))
        ocr_frame_interval_seconds: 2  # video frame sampling (default 2)
        max_audio_seconds: 3600        # the longest audio (or video sound) transcribed (default an hour)

``max_audio_seconds`` is not declared to routing (``ModelInfo.max_audio_seconds`` stays 0): it caps the sound
transcribed, while a silent video longer than it is still read (its frames). A longer audio is refused when its
call runs (INPUT_TOO_LARGE, which the rule's fallbacks follow), so ExplainRoute may still plan ``local/extract``
for it.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from router import ProviderSettings

from .audio import MAX_AUDIO_SECONDS

#: The settings of every provider that this one, running on this machine, has no use for.
NOT_USED = frozenset({"api_key", "base_url", "timeout"})


class LocalSettings(ProviderSettings):
    """Settings of the local provider (it needs no key)."""

    not_used = NOT_USED

    workers: int = Field(
        default_factory=lambda: max(1, min(2, os.cpu_count() or 1)), gt=0, description="threads for CPU work"
    )
    ocr_frame_interval_seconds: float = Field(2.0, gt=0, description="seconds between video frames to OCR")
    max_audio_seconds: float = Field(MAX_AUDIO_SECONDS, gt=0, description="the longest audio, or sound of a "
                                     "video, transcribed; longer is refused (INPUT_TOO_LARGE)")

    @field_validator(*NOT_USED, mode="before")
    @classmethod
    def _not_used(cls, value: object) -> object:
        raise ValueError("the local provider runs on this machine and does not use it; remove the key")
