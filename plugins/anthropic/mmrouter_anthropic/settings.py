"""The plugin's settings: ``providers.anthropic`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      anthropic:
        api_key: ${ANTHROPIC_API_KEY}  # else the ANTHROPIC_API_KEY environment variable
        base_url: https://api.anthropic.com   # API root (a trailing /v1 is dropped); else the SDK's
                                              # default: ANTHROPIC_BASE_URL, else the public API
        timeout: 120                   # seconds per call (default 120), shortened to the call's deadline
        max_retries: 0                 # SDK retries; the router does fallbacks (default 0)

An empty value (``timeout:``, or an unset ``${VAR}``) means the default.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from router import ProviderSettings


class AnthropicSettings(ProviderSettings):
    """Settings of one Anthropic provider."""

    api_key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)

    timeout: float = Field(120.0, gt=0, description="seconds per call, shortened to the call's deadline")
    max_retries: int = Field(0, ge=0, description="SDK retries; the router does fallbacks")


    @field_validator("base_url")
    @classmethod
    def _api_root(cls, url: str) -> str:
        # The SDK adds /v1/messages itself; accept a root given with /v1 too.
        return url.rstrip("/").removesuffix("/v1")
