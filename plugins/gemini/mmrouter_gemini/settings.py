"""The plugin's settings (``providers.gemini`` in the config), checked and defaulted."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router import setting_or_env
from router.errors import ConfigError

#: Environment variables that may hold the key, in order of preference.
KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
#: What to tell a user whose key is missing or refused.
KEY_HINT = "check GEMINI_API_KEY (or GOOGLE_API_KEY) or providers.gemini.api_key"

DEFAULT_INLINE_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class GeminiSettings:
    """Resolved settings of one Gemini provider."""

    api_key: str = ""
    base_url: str | None = None
    api_version: str = "v1beta"
    #: Seconds each HTTP call may take.
    timeout: float = 300.0
    #: Media beyond this many inline bytes per request go through the Files API.
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT
    #: Use streamGenerateContent (True) or one generateContent call (False).
    streaming: bool = True
    #: First wait, in seconds, between polls of a PROCESSING file (then backoff x1.5, max 10 s).
    poll_interval: float = 1.0
    #: Longest wait for a file to become ACTIVE when the call itself has no deadline.
    max_processing_seconds: float = 600.0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> GeminiSettings:
        """Build from the config section, taking the key from the environment if absent."""
        api_key = setting_or_env(settings, "api_key", KEY_ENV_VARS[0]) or os.environ.get(KEY_ENV_VARS[1], "")
        return cls(
            api_key=api_key,
            base_url=str(settings["base_url"]).rstrip("/") if settings.get("base_url") else None,
            api_version=str(settings.get("api_version") or "v1beta"),
            timeout=_number(settings, "timeout", 300.0),
            inline_limit_bytes=int(_number(settings, "inline_limit_bytes", DEFAULT_INLINE_LIMIT, minimum=0)),
            streaming=_flag(settings, "streaming", True),
            poll_interval=_number(settings, "poll_interval", 1.0),
            max_processing_seconds=_number(settings, "max_processing_seconds", 600.0),
        )


def _number(settings: Mapping[str, Any], key: str, default: float, *, minimum: float = 1e-9) -> float:
    value = settings.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"providers.gemini.{key}: expected a number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"providers.gemini.{key}: must be at least {minimum:g}, got {value!r}")
    return number


def _flag(settings: Mapping[str, Any], key: str, default: bool) -> bool:
    value = settings.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"providers.gemini.{key}: expected true or false, got {value!r}")
