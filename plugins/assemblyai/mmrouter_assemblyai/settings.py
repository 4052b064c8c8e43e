"""The plugin's settings: ``providers.assemblyai`` of the config file, with environment fallbacks.

Keys (all optional)::

    providers:
      assemblyai:
        api_key: ${ASSEMBLYAI_API_KEY}  # else the ASSEMBLYAI_API_KEY environment variable
        base_url: https://api.assemblyai.com  # else ASSEMBLYAI_BASE_URL (no ?query)
        timeout: 30                     # seconds per HTTP request (default 30)
        poll_interval: 3                # seconds between transcript status polls (default 3)
        speaker_labels: true            # diarize every call, not only when asked (default true)
        speech_models: [assemblyai-stt-3-7, universal-2]  # what assemblyai/best sends, in priority order
        delete_transcripts: true        # delete each transcript at AssemblyAI once read (default true)

An empty value (``timeout:``, or ``${VAR:-}``) means the default; an unset ``${VAR}`` leaves the provider not configured.

Another section with ``plugin: assemblyai`` (say ``providers.assemblyai-eu``) is one more provider,
an extra instance: it reads only its own section (no ASSEMBLYAI_* environment variables), and its
base_url defaults to AssemblyAI's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from router import ProviderSettings
from router.settings import base_url_query_problem

from .models import DEFAULT_BEST_MODELS

#: The official endpoint, used when no base_url is configured.
ASSEMBLYAI_BASE_URL = "https://api.assemblyai.com"
#: The plugin's own provider name; other names are extra instances (``plugin: assemblyai``).
PLUGIN = "assemblyai"
#: What a speech model id looks like (``universal-2``, ``assemblyai-stt-3-7``).
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
#: Why a base_url with a query or fragment is refused (never quoting it: the query is often a key).
#: Values AssemblyAI refuses in ``speech_models`` now (the old singular ``speech_model``'s tiers).
_REFUSED_MODELS = frozenset({"best", "nano"})


class AssemblyAISettings(ProviderSettings):
    """Settings of one AssemblyAI provider."""

    model_config = ConfigDict(str_strip_whitespace=True)
    api_key_env: ClassVar[tuple[str, ...]] = ("ASSEMBLYAI_API_KEY",)
    env_fields: ClassVar[Mapping[str, str]] = {"base_url": "ASSEMBLYAI_BASE_URL"}

    base_url: str = Field(ASSEMBLYAI_BASE_URL, validate_default=True,
                          description="the API root; else ASSEMBLYAI_BASE_URL, else AssemblyAI's")
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request (upload, submit, each poll)")
    poll_interval: float = Field(3.0, gt=0, description="seconds between transcript status polls")
    speaker_labels: bool = Field(True, description="diarize every call, not only when asked")
    speech_models: tuple[str, ...] = Field(
        DEFAULT_BEST_MODELS, description="AssemblyAI's speech_models sent for assemblyai/best, in priority order")
    delete_transcripts: bool = Field(
        True, description="delete each transcript at AssemblyAI once read, or once its call failed or was "
                          "cancelled (false: AssemblyAI keeps them, per the account's retention)")

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        """The URL without a trailing slash. A query or fragment is refused: the SDK's httpx client appends
        the paths after it (``/?code=.../v2/upload``), and httpx logs the whole URL, query included."""
        problem = base_url_query_problem(url, "/v2/transcript")
        if problem:
            raise ValueError(problem)
        return url.rstrip("/") or ASSEMBLYAI_BASE_URL

    @field_validator("speech_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """A string (say from ``${AAI_MODELS}``) is a comma-separated list."""
        return value.split(",") if isinstance(value, str) else value

    @field_validator("speech_models")
    @classmethod
    def _check_models(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        models = tuple(m.strip() for m in models)
        if not models:
            raise ValueError("give at least one AssemblyAI speech model id")
        for model in models:
            if not _MODEL_ID.fullmatch(model):
                raise ValueError(f"{model!r} is not a speech model id (lower case, like universal-2)")
            if model in _REFUSED_MODELS:
                raise ValueError(f"AssemblyAI no longer takes {model!r}; use its current ids, "
                                 f"like {', '.join(DEFAULT_BEST_MODELS)}")
        if len(set(models)) != len(models):
            raise ValueError("a speech model is listed twice")
        return models


    def unconfigured_reason(self, provider: str = PLUGIN) -> str | None:
        """Why the provider called ``provider`` cannot be used, or None."""
        return self.missing_key(provider, PLUGIN)
