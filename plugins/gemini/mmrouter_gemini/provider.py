"""The Gemini provider: generateContent / streamGenerateContent through google-genai's API client (rest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from router import (
    CallContext,
    Media,
    ModelInfo,
    Provider,
    ProviderEvent,
    Request,
    TextDelta,
    Usage,
    UsageReport,
    with_configured_models,
)
from router.errors import ProviderAuthError, ProviderError, ProviderModelNotFound, ProviderUnavailable
from router.sdk_http import read_rest

from . import rest
from .convert import blocked, check_documents, finish_of, prepare, response_text, usage_of
from .errors import map_exception
from .files import FileStore, check_file_size, media_key, shared_uploads, upload_key
from .models import MODELS, TYPICAL
from .settings import GEMINI_API_URL, PLUGIN, GeminiSettings
from .transport import HTTPX_ARGS, session


class GeminiProvider(Provider):
    """Google Gemini: text, images, audio, video and PDF in; text out.

    One ``google.genai.Client`` per provider, made on first use. Media beyond the
    inline limit are uploaded once through the Files API and reused while the
    provider's copy lives, also by the other providers with the same key and endpoint
    (the one made again on a reload, say).
    """

    name = PLUGIN
    required_modules = ("google.genai", "aiohttp")  # imported on first use

    def __init__(self, settings: GeminiSettings | None = None, models: list[ModelInfo] | None = None, *,
                 name: str = PLUGIN) -> None:
        """``name`` other than ``gemini`` makes an extra instance (say ``gemini-team``); give it settings
        loaded without the environment (see :meth:`from_settings`)."""
        self.name = name
        self.settings = settings or GeminiSettings()
        s = self.settings
        # The largest media a model takes (routing and ExplainRoute skip Gemini for a larger one, with a reason):
        # the Files API's per-file limit, or more if media that large still go inline. Likewise the most pages
        # of a PDF it reads (max_document_pages; check_documents still refuses a longer one at call time).
        largest = max(s.max_file_bytes, s.inline_limit_bytes)
        self.models = [dataclasses.replace(m, max_media_bytes=largest, max_document_pages=s.max_document_pages) for m in
                       with_configured_models(models or MODELS, s.models, TYPICAL, provider=name)]
        self.files = FileStore(name, s.poll_interval, s.max_processing_seconds,
                               shared_uploads(s.key, s.client_base_url or ""), s.key)
        self._client: Any = None
        self._session: Any = None  # the aiohttp session the client uses (see transport.py)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = PLUGIN) -> GeminiProvider:
        """The provider called ``name`` configured from its ``providers.<name>`` config section: the
        plugin's own (``gemini``, with the environment fallbacks) or an extra instance (its section only)."""
        return cls(GeminiSettings.load(name, settings, environment=name == PLUGIN), name=name)

    def unconfigured_reason(self) -> str | None:
        return self.settings.unconfigured_reason(self.name)

    def prepare(self) -> None:
        """Import the SDK and what its client loads when first made (about 1-4 s), in the router's prepare
        thread (see :meth:`router.Provider.prepare`)."""
        for module in (*self.required_modules, "google.genai.types", "google.auth.aio.credentials"):
            importlib.import_module(module)

    def client(self) -> Any:
        """The one SDK client of this provider, made on first use, in the event loop its calls run in (its
        aiohttp session, which follows no redirect, belongs to that loop)."""
        if self._client is None:
            from google import genai
            from google.genai import types

            s = self.settings
            # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI and GOOGLE_CLOUD_* are not read. The key is never
            # empty here (generate refuses first), so GOOGLE_API_KEY / GEMINI_API_KEY are not read either.
            # For an extra instance the base_url is never None, which would read GOOGLE_GEMINI_BASE_URL.
            # attempts=1: no retries of the SDK's own (without retry options it sleeps 1-10 s and sends
            # the request again after a dropped connection, maybe billed twice); the router does fallbacks.
            # No call follows a redirect (transport.py): our aiohttp session refuses them (and HTML pages),
            # and so do the httpx clients the SDK uses without aiohttp.
            self._session = session()
            http_options = types.HttpOptions(
                base_url=s.client_base_url, api_version=s.api_version, timeout=int(s.timeout * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
                client_args=dict(HTTPX_ARGS), async_client_args=dict(HTTPX_ARGS), aiohttp_client=self._session,
            )
            self._client = genai.Client(api_key=s.key, vertexai=False, http_options=http_options)
        return self._client

    @property
    def base_url(self) -> str:
        """Where the API is called: the configured base_url, else where the SDK finds it
        (GOOGLE_GEMINI_BASE_URL, else the public API)."""
        return self.settings.client_base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_API_URL

    def _timeout_ms(self, ctx: CallContext) -> int:
        """This call's HTTP timeout: the configured one, cut to the call's deadline."""
        seconds = self.settings.timeout
        remaining = ctx.time_remaining()
        if remaining is not None:
            seconds = min(seconds, max(remaining, 0.001))
        return max(1, int(seconds * 1000))

    async def generate(
        self, request: Request, model: ModelInfo, ctx: CallContext
    ) -> AsyncIterator[ProviderEvent]:
        """Answer ``request`` with ``model``, media beyond the inline limit through the Files API. A PDF over
        Gemini's limits per document (``max_document_pages``, ``max_document_bytes``) is refused first, with
        :class:`router.errors.ProviderInputTooLarge`, before anything is uploaded or sent.

        When the API no longer has a Files API copy the provider remembered (deleted upstream, or gone
        before its expiry), the copy is forgotten and the call is made once more, uploading it again.
        """
        if not self.settings.key:
            raise ProviderAuthError(self.name, self.unconfigured_reason() or "no API key")
        # Gemini refuses a PDF over its page or size limit only after the whole file was uploaded: refused here
        check_documents(request, self.settings.max_document_pages, self.settings.max_document_bytes, self.name)

        async def upload(media: Media) -> tuple[str, str]:
            check_file_size(media, self.settings.max_file_bytes, self.name)  # before hashing 2 GB for its key
            sha256 = media.media_id or await asyncio.to_thread(media_key, media)
            remote = await self.files.ensure(self.client(), media, upload_key(media, sha256), ctx)
            return remote.uri, remote.mime_type

        for attempt in (1, 2):
            file_uris: set[str] = set()
            produced = False
            try:
                client = self.client()
                prepared = await prepare(request, self.settings.inline_limit_bytes, upload, self.name,
                                         model.max_output_tokens)
                file_uris = prepared.file_uris
                # the generate call's HTTP timeout: what is left of the call once the media are uploaded
                timeout_ms = self._timeout_ms(ctx)
                if self.settings.streaming:
                    async for event in self._stream(client, model, prepared.body, timeout_ms, ctx):
                        produced = True
                        yield event
                else:
                    response = await rest.generate(client, model.name, prepared.body, timeout_ms)
                    for event in self._unary_events(response):
                        produced = True
                        yield event
                return
            except Exception as exc:
                error = map_exception(exc, self.name, self.settings.key, self.base_url)
                if error is None:
                    raise
                gone = _named_files(error.message, file_uris) if isinstance(
                    error, (ProviderAuthError, ProviderModelNotFound)) else set()
                if gone:
                    # The API no longer knows a file we remembered: forget it, and upload it again. Any other
                    # 403/404 (a refused key, an unknown model) leaves the copies alone: they are fine.
                    self.files.forget_uris(gone)
                    if attempt == 1 and not produced:
                        continue
                if error is exc:
                    raise
                raise error from exc

    def _unary_events(self, response: Any) -> Iterator[ProviderEvent]:
        """The events of a whole (not streamed) answer. A reply without a candidate that has a finishReason
        (``{}``, ``[]``, a gateway's other JSON) holds no answer: ``ProviderUnavailable``, as when streamed,
        after a usage report if it has usage (billed all the same). A blocked prompt reports its usage too (its
        tokens are billed), then raises; an answer withheld by a filter is an answer (``CONTENT_FILTER``, its
        text maybe empty)."""
        text = response_text(response)
        refusal = blocked(response, bool(text), self.name)
        if refusal is not None:
            yield from _billed_then(refusal, response.usage_metadata)
        finish = finish_of(response)
        if finish is None:
            if response.usage_metadata is not None:
                yield UsageReport(usage_of(response.usage_metadata))
            raise ProviderUnavailable(self.name, "no answer from the Gemini API (the reply has no candidate "
                                                 "with a finishReason)")
        if text:
            yield TextDelta(text)
        yield UsageReport(usage_of(response.usage_metadata), finish)

    async def _stream(self, client: Any, model: ModelInfo, body: dict[str, Any], timeout_ms: int,
                      ctx: CallContext) -> AsyncIterator[ProviderEvent]:
        """Stream the answer: a usage report of the prompt as soon as a chunk counts it (see
        :func:`_prompt_part`), then the rest of the usage at the end, from the last usage metadata; a stream
        whose chunks carry no finishReason is cut short: ``ProviderUnavailable``.

        The chunks before the last do not count the prompt fully (no ``cachedContentTokenCount``; sometimes a
        different ``promptTokenCount``), so the prompt's early report is a part the whole call never exceeds;
        the last report is the rest (:meth:`router.Usage.since`), so the reports of a whole answer add up to
        its usage metadata exactly. A stream that ends before its last chunk (its client cancels, its deadline
        passes, or it is cut) is billed that early part only.

        Once a chunk with a finishReason came, the answer is whole: what is left of the body (a later chunk
        with the usage, say) is read for at most ``router.sdk_http.END_OF_BODY_WAIT``, so a proxy that holds
        the body open does not make the call wait for the read timeout."""
        stream = rest.stream(client, model.name, body, timeout_ms)
        metadata = None
        finish = None
        produced = False
        reported = Usage()  # the usage reported so far: the prompt's part, once a chunk counted it

        async def after_finish() -> AsyncIterator[Any]:
            """The chunks after the one with the finishReason, their usage kept."""
            nonlocal metadata
            async for chunk in stream:
                if chunk.usage_metadata is not None:
                    metadata = chunk.usage_metadata
                yield chunk

        try:
            async for chunk in stream:
                if chunk.usage_metadata is not None:
                    metadata = chunk.usage_metadata
                text = response_text(chunk)
                refusal = blocked(chunk, produced or bool(text), self.name)
                if refusal is not None:  # the prompt's tokens are billed all the same
                    for event in _billed_then(refusal, metadata, reported, model):
                        yield event
                finish = finish_of(chunk) or finish
                if finish is None and reported == Usage() and (part := _prompt_part(metadata, model)) is not None:
                    reported = part
                    yield UsageReport(part)  # before the text: a client that leaves at once is billed it
                if text:
                    produced = True
                    yield TextDelta(text)
                if finish is not None:
                    await read_rest(after_finish(), self._timeout_ms(ctx) / 1000)
                    break
        finally:
            await stream.aclose()
        if finish is None:
            # The last chunk of a whole answer has a finishReason. The body ended cleanly but early (a dead
            # server behind a proxy, a body delimited by connection close), and the SDK does not notice:
            # the answer is cut, the call failed, billed the prompt's part reported (as a cancelled one).
            raise ProviderUnavailable(self.name, "the stream ended before the answer was complete "
                                                 "(no finishReason)")
        yield UsageReport(_rest(metadata, reported, model), finish)

    async def forget_media(self, sha256s: frozenset[str]) -> None:
        """Forget the Files API copies of the erased media ``sha256s``, whatever MIME type each was uploaded as, so
        that the same bytes sent again are uploaded anew, then delete them at Google, all at once, each for at most
        :data:`files.DELETE_SECONDS`; a copy not deleted is logged (it expires by itself). When some media have no
        remembered copy (uploaded before a restart of the daemon, or never: inline, or sent to no Gemini
        provider), the project's files are listed first (:meth:`files.FileStore.listed`, bounded) and their copies
        found there are deleted too. No media, no request (see :meth:`router.Provider.forget_media`)."""
        copies, unknown = self.files.forget_media(sha256s)
        if not copies and not unknown:
            return
        client = self.client()
        if unknown:
            copies += await self.files.listed(client, sha256s, {copy.name for copy in copies})
        if copies:
            await self.files.delete(client, copies)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        session, self._session = self._session, None
        if client is not None:
            await client.aio.aclose()
            client.close()
        if session is not None:  # the SDK closes only the sessions it made
            await session.close()


def _billed_then(error: ProviderError, metadata: Any, reported: Usage | None = None,
                 model: ModelInfo | None = None) -> Iterator[ProviderEvent]:
    """A usage report of ``metadata`` (``usage_metadata``: what the failed call was billed), beyond what was
    ``reported`` already (priced at ``model``'s price), when there is one, then ``error`` raised, so that the
    router keeps the paid part of the failed call."""
    if metadata is not None:
        yield UsageReport(usage_of(metadata) if reported is None or model is None
                          else _rest(metadata, reported, model))
    raise error


#: The fewest prompt tokens Google's context caching reads from a cache: the smallest "min token limit" of
#: implicit caching, over all models (ai.google.dev/gemini-api/docs/caching: 1,024 for Gemini 2.5 Flash and
#: 3 Flash, 2,048 or 4,096 for the others). A shorter prompt is billed at the full input rate.
MIN_CACHED_PROMPT_TOKENS = 1024


def _prompt_part(metadata: Any, model: ModelInfo) -> Usage | None:
    """The prompt's usage from the ``usage_metadata`` of a chunk before the last (None when it counts no
    prompt): a part of the whole call's usage that never exceeds it.

    Those chunks count the prompt (``promptTokenCount``) but not the part read from a cache, which costs
    less (about a tenth): a prompt Google may have read from its cache (at least
    :data:`MIN_CACHED_PROMPT_TOKENS` long, its cached count not given) is priced as if all of it was, the
    lowest it can cost; a shorter one at the input rate, what it costs."""
    usage = usage_of(metadata)
    if usage.input_tokens <= 0:
        return None
    part = Usage(input_tokens=usage.input_tokens, audio_input_tokens=usage.audio_input_tokens,
                 cached_input_tokens=usage.cached_input_tokens)
    if part.input_tokens >= MIN_CACHED_PROMPT_TOKENS and not part.cached_input_tokens:
        part.cost_usd = model.price.cost(Usage(input_tokens=part.input_tokens, cached_input_tokens=part.input_tokens))
    return part


def _rest(metadata: Any, reported: Usage, model: ModelInfo) -> Usage:
    """The usage of ``metadata`` (the call's total) beyond what was ``reported``, priced as the difference of
    the two (:meth:`router.Usage.since`); a count the total holds fewer of than reported (a last chunk's
    other ``promptTokenCount``) is 0, never negative."""
    if reported == Usage():
        return usage_of(metadata)
    rest = usage_of(metadata).since(reported, model.price)
    return dataclasses.replace(
        rest, input_tokens=max(0, rest.input_tokens), output_tokens=max(0, rest.output_tokens),
        audio_input_tokens=max(0, rest.audio_input_tokens), cached_input_tokens=max(0, rest.cached_input_tokens))


def _named_files(message: str, file_uris: set[str]) -> set[str]:
    """The Files API copies an error message names (``... the File files/abc ... may not exist``, by their
    id), none for a refused key or an unknown model."""
    return {uri for uri in file_uris
            if re.search(rf"(?<![\w-]){re.escape(uri.rstrip('/').rsplit('/', 1)[-1])}(?![\w-])", message)}


__all__ = ["GeminiProvider"]
