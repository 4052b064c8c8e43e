"""The plugin's settings: ``providers.assemblyai`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      assemblyai:
        api_key: ${ASSEMBLYAI_API_KEY}  # else the ASSEMBLYAI_API_KEY environment variable
        base_url: https://api.assemblyai.com  # else ASSEMBLYAI_BASE_URL
        timeout: 30                     # seconds per HTTP request (default 30)
        poll_interval: 3                # seconds between transcript status polls (default 3)
        speaker_labels: true            # diarize every call, not only when asked (default true)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router import setting_or_env

#: The official endpoint, used when no base_url is configured.
ASSEMBLYAI_BASE_URL = "https://api.assemblyai.com"
#: The setting names to fix when the key is missing or refused.
KEY_SETTING_HINT = "ASSEMBLYAI_API_KEY or providers.assemblyai.api_key"


class SettingsError(ValueError):
    """A setting has a value of the wrong kind; the message names it."""


def _as_seconds(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key)
    if value in (None, ""):
        return default
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"providers.assemblyai.{key} must be a number of seconds, got {value!r}") from None
    if result <= 0:
        raise SettingsError(f"providers.assemblyai.{key} must be positive, got {value!r}")
    return result


def _as_bool(settings: Mapping[str, Any], key: str, default: bool) -> bool:
    value = settings.get(key)
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"providers.assemblyai.{key} must be true or false, got {value!r}")


@dataclass
class AssemblyAISettings:
    """Resolved settings for one AssemblyAI provider."""

    api_key: str = ""
    base_url: str = ASSEMBLYAI_BASE_URL
    timeout: float = 30.0
    poll_interval: float = 3.0
    speaker_labels: bool = True

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> AssemblyAISettings:
        """Read ``providers.assemblyai`` (``${ENV}`` already expanded), falling back to the environment."""
        settings = settings or {}
        base_url = setting_or_env(settings, "base_url", "ASSEMBLYAI_BASE_URL").strip().rstrip("/")
        return cls(
            api_key=setting_or_env(settings, "api_key", "ASSEMBLYAI_API_KEY").strip(),
            base_url=base_url or ASSEMBLYAI_BASE_URL,
            timeout=_as_seconds(settings, "timeout", 30.0),
            poll_interval=_as_seconds(settings, "poll_interval", 3.0),
            speaker_labels=_as_bool(settings, "speaker_labels", True),
        )

    def unconfigured_reason(self) -> str | None:
        """Why the provider cannot be used, or None."""
        if not self.api_key:
            return f"no API key: set {KEY_SETTING_HINT}"
        return None
