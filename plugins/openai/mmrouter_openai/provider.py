"""The OpenAI provider: one lazily made ``AsyncOpenAI`` client, reused for every call."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import router
from router import (
    CallContext,
    ModelInfo,
    ProviderEvent,
    ProviderModelNotFound,
    ProviderNotConfigured,
    ProviderUnavailable,
    Request,
)
from router.bridging import part_names
from router.sdk_http import response_hooks

from . import chat, transcribe
from .errors import BadAnswer, map_error, scrub, shown_url, transport_error
from .models import Entry, catalogue
from .settings import PLUGIN, OpenAISettings

#: What the first call imports beyond the SDK's package (:meth:`OpenAIProvider.prepare`): the chat and audio
#: resources, which the client loads on first use, and the HTTP stack the client is made with.
_CALL_MODULES = ("openai.resources.chat.chat", "openai.resources.chat.completions.completions",
                 "openai.resources.audio.audio", "httpx2", "httpcore2", "truststore")

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)


class OpenAIProvider(router.Provider):
    """GPT-4o chat (text, images, audio) and Whisper / GPT-4o transcription via the official SDK.

    Works with any OpenAI-compatible server (vLLM, Ollama, llama.cpp) through ``base_url``.
    """

    name = PLUGIN
    required_modules = ("openai", "aiohttp")  # imported on first use

    def __init__(self, settings: OpenAISettings | Mapping[str, Any] | None = None, *, name: str = PLUGIN) -> None:
        """``name`` other than ``openai`` makes an extra instance (say ``vllm``): its settings are its own
        section only, without the OPENAI_* environment fallbacks."""
        self.name = name
        self.settings = settings if isinstance(settings, OpenAISettings) else OpenAISettings.load(
            name, settings, environment=name == PLUGIN)
        self._entries: dict[str, Entry] = catalogue(self.settings.builtin_models, self.settings.models, name,
                                                     openai_api=self.settings.is_openai)
        self.models: list[ModelInfo] = [e.info for e in self._entries.values()]
        self._client: AsyncOpenAI | None = None
        if self.settings.sends_environment_key_elsewhere:
            # the key itself is never logged
            log.warning("providers.%s sends the OPENAI_API_KEY of the environment to %s, which is not OpenAI: "
                        "give that server its own section (`plugin: openai`, which reads no OPENAI_* variable) or "
                        "an explicit providers.%s.api_key", name, shown_url(self.settings.effective_base_url), name)

    def unconfigured_reason(self) -> str | None:
        """Why the provider cannot be used (no key for OpenAI itself), or None."""
        return self.settings.unconfigured_reason(self.name)

    def prepare(self) -> None:
        """Import the SDK, the parts of it a call loads lazily and its HTTP stack (about 1.3 s), in the
        router's prepare thread (see :meth:`router.Provider.prepare`)."""
        for module in (*self.required_modules, *_CALL_MODULES):
            importlib.import_module(module)

    def client(self) -> AsyncOpenAI:
        """The provider's one SDK client, made on first use (imports the SDK then)."""
        if self._client is None:
            import httpx2  # the SDK's HTTP client, on either transport
            from openai import AsyncOpenAI

            s = self.settings
            # A call never follows a redirect (the SDK's clients do): it could take the key to another
            # host, and hides a wrong base_url. The 3xx is an error (router.errors.redirect_refused).
            # An error answer's body is read up to router.error_body.ERROR_BODY_LIMIT, no further; with
            # max_retries, no SDK retry waits past the call's deadline (router.sdk_http.retries_within).
            hooks = response_hooks(httpx2, s.max_retries)
            if s.transport == "aiohttp":
                from openai import DefaultAioHttpClient  # needs the aiohttp package

                http_client = DefaultAioHttpClient(timeout=s.timeout, follow_redirects=False, event_hooks=hooks)
            else:
                from openai import DefaultAsyncHttpxClient

                http_client = DefaultAsyncHttpxClient(timeout=s.timeout, follow_redirects=False, event_hooks=hooks)
            self._client = AsyncOpenAI(
                http_client=http_client,
                api_key=s.key_for_client,
                base_url=s.effective_base_url,
                # None lets the SDK read OPENAI_ORG_ID / OPENAI_PROJECT_ID: the plugin's own provider only.
                organization=s.organization or (None if s.uses_environment else ""),
                project=s.project or (None if s.uses_environment else ""),
                timeout=s.timeout,
                max_retries=s.max_retries,
            )
        return self._client

    def _timeout(self, ctx: CallContext) -> float:
        """The configured timeout, shortened to the call's deadline."""
        remaining = ctx.time_remaining()
        if remaining is None:
            return self.settings.timeout
        return max(0.1, min(self.settings.timeout, remaining))

    async def generate(self, request: Request, model: ModelInfo, ctx: CallContext) -> AsyncIterator[ProviderEvent]:
        """Answer with Chat Completions (streamed) or transcribe with ``/audio/transcriptions``."""
        import openai

        entry = self._entries.get(model.name)
        if entry is None:
            raise ProviderModelNotFound(self.name, f"model {model.name!r} is not offered by this provider")
        reason = self.unconfigured_reason()
        if reason:
            raise ProviderNotConfigured(self.name, reason)
        timeout = self._timeout(ctx)
        if entry.transcribes:
            events = transcribe.transcribe(self.client(), self.name, entry, request, timeout, model.price,
                                           deadline=ctx.deadline)
        else:
            gifs = chat.local_gifs(request) if entry.still_gifs_only else []
            if gifs:  # read in a thread: a stored GIF is walked up to its second frame
                await asyncio.to_thread(chat.refuse_animated_gifs, self.name, model, gifs, part_names(request))
            params = chat.build_params(self.name, model, request, legacy_max_tokens=self.settings.legacy_max_tokens,
                                       output_limit=entry.max_output_tokens, stream_usage=self.settings.stream_usage)
            events = chat.stream_chat(self.client(), params, timeout, with_media=bool(request.media()),
                                      deadline=ctx.deadline)
        try:
            async for event in events:
                yield event
        except openai.OpenAIError as exc:
            raise map_error(exc, self.name, model=model.name, base_url=self.settings.effective_base_url,
                            api_key=self.settings.key, timeout=timeout) from None
        except BadAnswer as exc:  # a chat answer of the wrong shape (transcription reports its own)
            raise ProviderUnavailable(self.name, f"bad answer from {model.name} "
                                                 f"({shown_url(self.settings.effective_base_url)}): "
                                                 f"{scrub(str(exc), self.settings.key)}") from None
        except Exception as exc:
            error = transport_error(exc, self.name, base_url=self.settings.effective_base_url, api_key=self.settings.key)
            if error is None:
                raise
            raise error from None
        finally:
            await events.aclose()

    async def aclose(self) -> None:
        """Close the SDK client and its connection pool (safe to call twice)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
