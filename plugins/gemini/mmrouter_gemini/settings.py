"""The plugin's settings (``providers.gemini`` in the config), checked and defaulted.

An empty value (``timeout:``, or an unset ``${VAR}``) means the default.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from router import ProviderSettings

#: What to tell a user whose key is missing or refused.
KEY_HINT = "check GEMINI_API_KEY (or GOOGLE_API_KEY) or providers.gemini.api_key"

DEFAULT_INLINE_LIMIT = 8 * 1024 * 1024


class GeminiSettings(ProviderSettings):
    """Settings of one Gemini provider."""

    #: Environment variables that may hold the key, in order of preference.
    api_key_env: ClassVar[tuple[str, ...]] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

    api_version: str = "v1beta"
    timeout: float = Field(300.0, gt=0, description="seconds each HTTP call may take")
    inline_limit_bytes: int = Field(
        DEFAULT_INLINE_LIMIT, ge=0, description="media beyond this many inline bytes per request use the Files API"
    )
    streaming: bool = Field(True, description="streamGenerateContent (true) or one generateContent call (false)")
    poll_interval: float = Field(
        1.0, gt=0, description="first wait, in seconds, between polls of a PROCESSING file (then x1.5, max 10 s)"
    )
    max_processing_seconds: float = Field(
        600.0, gt=0, description="longest wait for a file to become ACTIVE when the call has no deadline"
    )


    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")
