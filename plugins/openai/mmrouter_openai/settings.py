"""The plugin's settings: ``providers.openai`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      openai:
        api_key: ${OPENAI_API_KEY}     # else the OPENAI_API_KEY environment variable
        base_url: http://localhost:11434/v1   # else OPENAI_BASE_URL, else https://api.openai.com/v1
        organization: org-...          # else OPENAI_ORG_ID
        project: proj_...              # else OPENAI_PROJECT_ID
        timeout: 60                    # seconds per HTTP request (default 600)
        max_retries: 0                 # SDK retries; the router does fallbacks (default 0)
        legacy_max_tokens: false       # send max_tokens instead of max_completion_tokens
        http_client: httpx             # or aiohttp: the SDK's DefaultAioHttpClient transport (faster)
        builtin_models: true           # offer the built-in OpenAI catalogue
        models: [...]                  # extra models, see mmrouter_openai.models
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from router import setting_or_env

#: The official endpoint, used when no base_url is configured.
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The setting names to fix when the key is missing or refused.
KEY_SETTING_HINT = "OPENAI_API_KEY or providers.openai.api_key"
#: Sent as the key to OpenAI-compatible servers that need none (vLLM, Ollama, llama.cpp).
NO_KEY_PLACEHOLDER = "sk-no-key-required"


#: The SDK transports ``http_client`` may name.
HTTP_CLIENTS = ("httpx", "aiohttp")


class SettingsError(ValueError):
    """A setting has a value of the wrong kind; the message names it."""


def _as_float(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key)
    if value in (None, ""):
        return default
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"providers.openai.{key} must be a number of seconds, got {value!r}") from None
    if result <= 0:
        raise SettingsError(f"providers.openai.{key} must be positive, got {value!r}")
    return result


def _as_int(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key)
    if value in (None, ""):
        return default
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"providers.openai.{key} must be a whole number, got {value!r}") from None
    if result < 0:
        raise SettingsError(f"providers.openai.{key} must not be negative, got {value!r}")
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
    raise SettingsError(f"providers.openai.{key} must be true or false, got {value!r}")


@dataclass
class OpenAISettings:
    """Resolved settings for one OpenAI provider."""

    api_key: str = ""
    base_url: str = ""
    organization: str = ""
    project: str = ""
    timeout: float = 600.0
    max_retries: int = 0
    legacy_max_tokens: bool = False
    builtin_models: bool = True
    http_client: str = "httpx"
    models: list[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> OpenAISettings:
        """Read ``providers.openai`` (``${ENV}`` already expanded), falling back to the environment."""
        settings = settings or {}
        models = settings.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, Mapping) for m in models):
            raise SettingsError("providers.openai.models must be a list of mappings with at least a name")
        http_client = str(settings.get("http_client") or "httpx").strip().lower()
        if http_client not in HTTP_CLIENTS:
            raise SettingsError(f"providers.openai.http_client must be one of {', '.join(HTTP_CLIENTS)},"
                                f" got {settings.get('http_client')!r}")
        return cls(
            api_key=setting_or_env(settings, "api_key", "OPENAI_API_KEY").strip(),
            base_url=setting_or_env(settings, "base_url", "OPENAI_BASE_URL").strip().rstrip("/"),
            organization=setting_or_env(settings, "organization", "OPENAI_ORG_ID").strip(),
            project=setting_or_env(settings, "project", "OPENAI_PROJECT_ID").strip(),
            timeout=_as_float(settings, "timeout", 600.0),
            max_retries=_as_int(settings, "max_retries", 0),
            legacy_max_tokens=_as_bool(settings, "legacy_max_tokens", False),
            builtin_models=_as_bool(settings, "builtin_models", True),
            http_client=http_client,
            models=list(models),
        )

    @property
    def effective_base_url(self) -> str:
        """The URL requests go to."""
        return self.base_url or OPENAI_BASE_URL

    @property
    def is_openai(self) -> bool:
        """True when requests go to OpenAI itself rather than a compatible server."""
        host = urlsplit(self.effective_base_url).hostname or ""
        return host == "openai.com" or host.endswith(".openai.com")

    @property
    def key_for_client(self) -> str:
        """The key to give the SDK: the configured one, or a placeholder for keyless local servers."""
        if self.api_key:
            return self.api_key
        return "" if self.is_openai else NO_KEY_PLACEHOLDER

    def unconfigured_reason(self) -> str | None:
        """Why the provider cannot be used, or None."""
        if not self.key_for_client:
            return f"no API key: set {KEY_SETTING_HINT}"
        return None
