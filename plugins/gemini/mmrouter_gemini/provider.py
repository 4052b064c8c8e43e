"""The Gemini provider: generateContent / streamGenerateContent through google-genai."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from router import (
    CallContext,
    Media,
    ModelInfo,
    Provider,
    ProviderEvent,
    Request,
    TextDelta,
    UsageReport,
    with_configured_models,
)
from router.errors import ProviderAuthError, ProviderModelNotFound, ProviderUnavailable

from .convert import check_blocked, finish_of, prepare, response_text, usage_of
from .errors import map_exception
from .files import FileStore, check_file_size, media_key, shared_uploads
from .models import MODELS, TYPICAL
from .settings import PLUGIN, GeminiSettings


class GeminiProvider(Provider):
    """Google Gemini: text, images, audio, video and PDF in; text out.

    One ``google.genai.Client`` per provider, made on first use. Media beyond the
    inline limit are uploaded once through the Files API and reused while the
    provider's copy lives, also by the other providers with the same key and endpoint
    (the one made again on a reload, say).
    """

    name = PLUGIN

    def __init__(self, settings: GeminiSettings | None = None, models: list[ModelInfo] | None = None, *,
                 name: str = PLUGIN) -> None:
        """``name`` other than ``gemini`` makes an extra instance (say ``gemini-team``); give it settings
        loaded without the environment (see :meth:`from_settings`)."""
        self.name = name
        self.settings = settings or GeminiSettings()
        self.models = with_configured_models(models or MODELS, self.settings.models, TYPICAL, provider=name)
        s = self.settings
        self.files = FileStore(name, s.poll_interval, s.max_processing_seconds,
                               shared_uploads(s.key, s.client_base_url or ""))
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = PLUGIN) -> GeminiProvider:
        """The provider called ``name`` configured from its ``providers.<name>`` config section: the
        plugin's own (``gemini``, with the environment fallbacks) or an extra instance (its section only)."""
        return cls(GeminiSettings.load(name, settings, environment=name == PLUGIN), name=name)

    def unconfigured_reason(self) -> str | None:
        return self.settings.unconfigured_reason(self.name)

    def client(self) -> Any:
        """The one SDK client of this provider, made on first use."""
        if self._client is None:
            from google import genai
            from google.genai import types

            s = self.settings
            # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI and GOOGLE_CLOUD_* are not read. The key is never
            # empty here (generate refuses first), so GOOGLE_API_KEY / GEMINI_API_KEY are not read either.
            # For an extra instance the base_url is never None, which would read GOOGLE_GEMINI_BASE_URL.
            # attempts=1: no retries of the SDK's own (without retry options it sleeps 1-10 s and sends
            # the request again after a dropped connection, maybe billed twice); the router does fallbacks.
            http_options = types.HttpOptions(
                base_url=s.client_base_url, api_version=s.api_version, timeout=int(s.timeout * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            self._client = genai.Client(api_key=s.key, vertexai=False, http_options=http_options)
        return self._client

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
        """Answer ``request`` with ``model``, media beyond the inline limit through the Files API.

        When the API no longer has a Files API copy the provider remembered (deleted upstream, or gone
        before its expiry), the copy is forgotten and the call is made once more, uploading it again.
        """
        if not self.settings.key:
            raise ProviderAuthError(self.name, self.unconfigured_reason() or "no API key")

        async def upload(media: Media) -> tuple[str, str]:
            check_file_size(media, self.settings.max_file_bytes, self.name)  # before hashing 2 GB for its key
            key = media.media_id or await asyncio.to_thread(media_key, media)
            remote = await self.files.ensure(self.client(), media, key, ctx)
            return remote.uri, remote.mime_type

        for attempt in (1, 2):
            file_uris: set[str] = set()
            produced = False
            try:
                client = self.client()
                prepared = await prepare(request, self.settings.inline_limit_bytes, upload,
                                         self._timeout_ms(ctx), self.name, model.max_output_tokens)
                file_uris = prepared.file_uris
                if self.settings.streaming:
                    async for event in self._stream(client, model, prepared):
                        produced = True
                        yield event
                else:
                    response = await client.aio.models.generate_content(
                        model=model.name, contents=prepared.contents, config=prepared.config
                    )
                    text = response_text(response)
                    check_blocked(response, bool(text), self.name)
                    produced = True
                    if text:
                        yield TextDelta(text)
                    yield UsageReport(usage_of(response.usage_metadata), finish_of(response))
                return
            except Exception as exc:
                error = map_exception(exc, self.name, self.settings.key)
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

    async def _stream(self, client: Any, model: ModelInfo, prepared: Any) -> AsyncIterator[ProviderEvent]:
        """Stream the answer, then one usage report from the last usage metadata; a stream whose chunks
        carry no finishReason is cut short: ``ProviderUnavailable``."""
        stream = await client.aio.models.generate_content_stream(
            model=model.name, contents=prepared.contents, config=prepared.config
        )
        metadata = None
        finish = None
        produced = False
        try:
            async for chunk in stream:
                text = response_text(chunk)
                check_blocked(chunk, produced or bool(text), self.name)
                if chunk.usage_metadata is not None:
                    metadata = chunk.usage_metadata
                finish = finish_of(chunk) or finish
                if text:
                    produced = True
                    yield TextDelta(text)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if finish is None:
            # The last chunk of a whole answer has a finishReason. The body ended cleanly but early (a dead
            # server behind a proxy, a body delimited by connection close), and the SDK does not notice:
            # the answer is cut, the call failed.
            if metadata is not None:  # billed all the same
                yield UsageReport(usage_of(metadata))
            raise ProviderUnavailable(self.name, "the stream ended before the answer was complete "
                                                 "(no finishReason)")
        yield UsageReport(usage_of(metadata), finish)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()
            client.close()


def _named_files(message: str, file_uris: set[str]) -> set[str]:
    """The Files API copies an error message names (``... the File files/abc ... may not exist``, by their
    id), none for a refused key or an unknown model."""
    return {uri for uri in file_uris
            if re.search(rf"(?<![\w-]){re.escape(uri.rstrip('/').rsplit('/', 1)[-1])}(?![\w-])", message)}


__all__ = ["GeminiProvider"]
