"""The plugin's settings: ``providers.anthropic`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      anthropic:
        api_key: ${ANTHROPIC_API_KEY}  # else the ANTHROPIC_API_KEY environment variable
        base_url: https://api.anthropic.com   # API root (a trailing /v1 is dropped, no ?query); else the
                                              # SDK's default: ANTHROPIC_BASE_URL, else the public API
        timeout: 120                   # seconds per call (default 120), shortened to the call's deadline
        max_retries: 0                 # SDK retries, within the call's deadline; the router does fallbacks (default 0)
        http_client: aiohttp           # the SDK's DefaultAioHttpClient transport (default), or httpx
        models:                        # models newer than the plugin's catalogue (router.ModelSpec)
          - {name: claude-sonnet-5-5, price: {input_per_mtok: 3, output_per_mtok: 15}}

An empty value (``timeout:``, or ``${VAR:-}``) means the default; an unset ``${VAR}`` leaves the provider not configured.

Another section with ``plugin: anthropic`` (say ``providers.claude-eu``) is one more provider, an
extra instance: it reads only its own section (no ``ANTHROPIC_*`` environment variables), and its
base_url defaults to the public API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import Field, field_validator

from router import ModelSpec, ProviderSettings
from router.errors import ConfigError
from router.sdk_http import SdkTransportSettings, Transport
from router.settings import base_url_query_problem

#: The plugin's own provider name; other names are extra instances (``plugin: anthropic``).
PLUGIN = "anthropic"
#: The public API root, where an extra instance without a base_url goes.
ANTHROPIC_API_URL = "https://api.anthropic.com"
#: The environment variable the SDK reads for the plugin's own provider without a base_url.
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
#: Why a base_url with a query or fragment is refused (never quoting it: a ``?code=`` is often a key).
#: What the SDK appends to the base_url (see :func:`router.settings.base_url_query_problem`).
APPENDED_PATH = "/v1/messages"


def key_setting_hint(provider: str) -> str:
    """The settings to fix when the key is missing or refused (an extra instance has no environment)."""
    return AnthropicSettings.key_settings(provider, PLUGIN)


class AnthropicSettings(ProviderSettings, SdkTransportSettings):
    """Settings of one Anthropic provider."""

    api_key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)

    timeout: float = Field(120.0, gt=0, description="seconds per call, shortened to the call's deadline")
    models: list[ModelSpec] = Field(default_factory=list, description="models added to the built-in catalogue")


    @classmethod
    def load(cls, provider: str, section: Mapping[str, Any] | None, *, environment: bool = True) -> Self:
        """As :meth:`ProviderSettings.load`; also refuses an ``ANTHROPIC_BASE_URL`` with a query or fragment
        when the SDK would read it (the plugin's own provider without a base_url), naming the variable."""
        settings = super().load(provider, section, environment=environment)
        problem = base_url_query_problem(os.environ.get(BASE_URL_ENV, ""), APPENDED_PATH)
        if settings.client_base_url is None and problem:
            raise ConfigError(f"{BASE_URL_ENV} (read for providers.{provider}.base_url): {problem}")
        return settings

    @field_validator("base_url")
    @classmethod
    def _api_root(cls, url: str) -> str:
        """The API root: without a trailing slash or /v1 (the SDK adds /v1/messages itself). A query or
        fragment is refused: the SDK appends the path after it (``/?code=.../v1/messages``), and httpx
        logs the whole URL, query included."""
        problem = base_url_query_problem(url, APPENDED_PATH)
        if problem:
            raise ValueError(problem)
        return url.rstrip("/").removesuffix("/v1")

    @property
    def client_base_url(self) -> str | None:
        """The ``base_url`` to give the SDK. None lets it read ANTHROPIC_BASE_URL: the plugin's own
        provider only; an extra instance gets its own or the public API."""
        return self.base_url or (None if self.uses_environment else ANTHROPIC_API_URL)

    @property
    def transport(self) -> Transport:
        """The HTTP transport the SDK client uses (see :meth:`SdkTransportSettings.transport_for`); for the
        plugin's own provider without a base_url, the SDK's ANTHROPIC_BASE_URL is the URL."""
        url = self.client_base_url
        return self.transport_for(url if url is not None else os.environ.get("ANTHROPIC_BASE_URL", ""))

    def unconfigured_reason(self, provider: str = PLUGIN) -> str | None:
        """Why the provider cannot be used (no key), or None."""
        return self.missing_key(provider, PLUGIN)

