"""The plugin's settings: ``providers.openai`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      openai:
        api_key: ${OPENAI_API_KEY}     # else the OPENAI_API_KEY environment variable
        base_url: http://localhost:11434/v1   # else OPENAI_BASE_URL, else https://api.openai.com/v1 (no ?query)
        organization: org-...          # else OPENAI_ORG_ID
        project: proj_...              # else OPENAI_PROJECT_ID
        timeout: 60                    # seconds per HTTP request (default 600)
        max_retries: 0                 # SDK retries, within the call's deadline; the router does fallbacks (default 0)
        legacy_max_tokens: false       # send max_tokens instead of max_completion_tokens
        stream_usage: true             # send stream_options (usage at a stream's end); false for servers refusing it
        http_client: aiohttp           # the SDK's DefaultAioHttpClient transport (default), or httpx
        builtin_models: true           # offer the built-in OpenAI catalogue
        models: [...]                  # extra models, see mmrouter_openai.models

An empty value (``timeout:``, or ``${VAR:-}``) means the default; an unset ``${VAR}`` leaves the provider not configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator

from router import ProviderSettings
from router.sdk_http import SdkTransportSettings, Transport
from router.settings import base_url_query_problem

#: The official endpoint, used when no base_url is configured.
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The plugin's own provider name; other names are extra instances (``plugin: openai``).
PLUGIN = "openai"


def key_setting_hint(provider: str) -> str:
    """The settings to fix when the key is missing or refused (an extra instance has no environment)."""
    return OpenAISettings.key_settings(provider, PLUGIN)
#: Sent as the key to OpenAI-compatible servers that need none (vLLM, Ollama, llama.cpp).
NO_KEY_PLACEHOLDER = "sk-no-key-required"


class OpenAISettings(ProviderSettings, SdkTransportSettings):
    """Settings of one OpenAI provider."""

    model_config = ConfigDict(str_strip_whitespace=True)
    api_key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    env_fields: ClassVar[Mapping[str, str]] = {
        "base_url": "OPENAI_BASE_URL", "organization": "OPENAI_ORG_ID", "project": "OPENAI_PROJECT_ID",
    }

    base_url: str = Field("", description="the API root with /v1; else OPENAI_BASE_URL, else OpenAI")
    organization: str = ""
    project: str = ""
    timeout: float = Field(600.0, gt=0, description="seconds per HTTP request, shortened to the call's deadline")
    legacy_max_tokens: bool = Field(False, description="send max_tokens instead of max_completion_tokens")
    stream_usage: bool = Field(True, description="send stream_options.include_usage (the usage at a stream's end); "
                                                 "false for a server that refuses stream_options")
    builtin_models: bool = Field(True, description="offer the built-in OpenAI catalogue")
    models: list[dict[str, Any]] = Field(default_factory=list, description="extra models, see mmrouter_openai.models")


    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        """The URL without a trailing slash; a query or fragment is refused: the SDK appends the paths
        (``/chat/completions``) to the whole URL, after the query (Azure's ``?api-version=``), so every
        call would be "model not found"."""
        problem = base_url_query_problem(url, "/chat/completions")
        if problem:
            raise ValueError(problem)
        return url.rstrip("/")

    @property
    def effective_base_url(self) -> str:
        """The URL requests go to."""
        return self.base_url or OPENAI_BASE_URL

    @property
    def transport(self) -> Transport:
        """The HTTP transport the SDK client uses (see :meth:`SdkTransportSettings.transport_for`)."""
        return self.transport_for(self.effective_base_url)

    @property
    def is_openai(self) -> bool:
        """True when requests go to OpenAI itself rather than a compatible server."""
        host = urlsplit(self.effective_base_url).hostname or ""
        return host == "openai.com" or host.endswith(".openai.com")


    @property
    def sends_environment_key_elsewhere(self) -> bool:
        """True when the plugin's own provider sends the ``OPENAI_API_KEY`` of the environment (left out of
        the section, or given as ``${OPENAI_API_KEY}``) to a base_url that is not OpenAI's."""
        key = self.key
        return (self.uses_environment and not self.is_openai and bool(key)
                and key in {os.environ.get(name, "").strip() for name in self.api_key_env})

    @property
    def key_for_client(self) -> str:
        """The key to give the SDK: the configured one, or a placeholder for keyless local servers."""
        if self.key:
            return self.key
        return "" if self.is_openai else NO_KEY_PLACEHOLDER

    def unconfigured_reason(self, provider: str = PLUGIN) -> str | None:
        """Why the provider cannot be used, or None."""
        if not self.key_for_client:
            return f"no API key: set {key_setting_hint(provider)}"
        return None
