"""The plugin's settings (``providers.gemini`` in the config), checked and defaulted.

An empty value (``timeout:``, or ``${VAR:-}``) means the default; an unset ``${VAR}`` leaves the provider not configured.

Another section with ``plugin: gemini`` (say ``providers.gemini-team``) is one more provider, an
extra instance: it reads only its own section (no GEMINI_API_KEY, GOOGLE_API_KEY or
GOOGLE_GEMINI_BASE_URL), and its base_url defaults to the public API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import Field, field_validator

from router import ModelSpec, ProviderSettings
from router.errors import ConfigError
from router.settings import base_url_query_problem

#: The plugin's own provider name; other names are extra instances (``plugin: gemini``).
PLUGIN = "gemini"
#: The Gemini API's root, where an extra instance without a base_url goes.
GEMINI_API_URL = "https://generativelanguage.googleapis.com"
#: The environment variable the SDK reads for the plugin's own provider without a base_url.
BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"
#: Why a base_url with a query or fragment is refused (never quoting it: a ``?key=`` is a key).
#: What the SDK appends to the base_url (see :func:`router.settings.base_url_query_problem`).
APPENDED_PATH = "/v1beta/models/..."
#: What the SDK refuses in a model name (``_transformers.t_model``: "invalid model parameter").
MODEL_NAME_REFUSED = ("..", "?", "&")


def key_hint(provider: str) -> str:
    """What to tell a user whose key is missing or refused (an extra instance has no environment)."""
    return f"check {GeminiSettings.key_settings(provider, PLUGIN)}"


DEFAULT_INLINE_LIMIT = 8 * 1024 * 1024
#: The Files API's limit per file: "each file not exceeding 2GB in size" (ai.google.dev, Files API).
DEFAULT_MAX_FILE_BYTES = 2 * 1024**3
#: Gemini's limits per PDF (ai.google.dev/gemini-api/docs/document-processing): "Gemini supports a maximum of
#: 1,000 document pages", and a PDF of up to 50 MB. Over them the API answers 400 INVALID_ARGUMENT (for the
#: size: "The request's total referenced files bytes are too large to be read", python-genai issue 308, from
#: about 52 MB: 50 MiB), after the whole file was uploaded.
DEFAULT_MAX_DOCUMENT_PAGES = 1000
DEFAULT_MAX_DOCUMENT_BYTES = 50 * 1024**2


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
        600.0, gt=0, description="longest wait, in seconds, for an uploaded file to become ACTIVE, in each call "
                                 "(a cap within the call's deadline: whichever ends first ends the wait)"
    )
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES, gt=0,
        description="the largest media the Files API takes (2 GB); a larger one is refused before its upload",
    )
    max_document_pages: int = Field(
        DEFAULT_MAX_DOCUMENT_PAGES, gt=0,
        description="the most pages of a PDF Gemini reads (1000); a PDF with more (as the router counted them) "
                    "is refused before its upload or the request",
    )
    max_document_bytes: int = Field(
        DEFAULT_MAX_DOCUMENT_BYTES, gt=0,
        description="the largest PDF Gemini reads (50 MB: 52428800 bytes); a larger one is refused before its "
                    "upload or the request",
    )
    models: list[ModelSpec] = Field(
        default_factory=list, description="models added to the built-in catalogue, e.g. newer ones"
    )

    @classmethod
    def load(cls, provider: str, section: Mapping[str, Any] | None, *, environment: bool = True) -> Self:
        """As :meth:`ProviderSettings.load`; also refuses a ``GOOGLE_GEMINI_BASE_URL`` with a query or
        fragment when the SDK would read it (the plugin's own provider without a base_url), naming the
        variable."""
        settings = super().load(provider, section, environment=environment)
        problem = base_url_query_problem(os.environ.get(BASE_URL_ENV, ""), APPENDED_PATH)
        if settings.client_base_url is None and problem:
            raise ConfigError(f"{BASE_URL_ENV} (read for providers.{provider}.base_url): {problem}")
        return settings

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        """The URL without a trailing slash. A query or fragment is refused: the SDK appends the path after
        it (``/gem?key=.../v1beta/models/...``), and httpx logs the whole URL, query included."""
        problem = base_url_query_problem(url, APPENDED_PATH)
        if problem:
            raise ValueError(problem)
        return url.rstrip("/")

    @field_validator("models")
    @classmethod
    def _callable_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        """Refuse a model name the SDK refuses in every call (one with ``..``, ``?`` or ``&``)."""
        for spec in models:
            if any(part in spec.name for part in MODEL_NAME_REFUSED):
                raise ValueError(f"the model name {spec.name!r} cannot be called: the Gemini SDK refuses a name "
                                 f"with {', '.join(repr(p) for p in MODEL_NAME_REFUSED)}")
        return models

    @property
    def client_base_url(self) -> str | None:
        """The ``base_url`` to give the SDK. None lets it read GOOGLE_GEMINI_BASE_URL: the plugin's own
        provider only; an extra instance gets its own or the public API."""
        return self.base_url or (None if self.uses_environment else GEMINI_API_URL)

    def unconfigured_reason(self, provider: str = PLUGIN) -> str | None:
        """Why the provider cannot be used (no key), or None."""
        return self.missing_key(provider, PLUGIN)

