"""The Anthropic provider: Claude through the official SDK's async client, streamed."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from router import (
    CallContext,
    FinishReason,
    ModelInfo,
    Price,
    Provider,
    ProviderEvent,
    Request,
    RouteNote,
    TextDelta,
    Usage,
    UsageReport,
    with_configured_models,
)
from router.errors import ProviderNotConfigured, ProviderUnavailable, page_answered
from router.sdk_http import (
    ServerSentEvent,
    read_rest,
    response_hooks,
    retries_within,
    sse_events,
    until_headers,
)

from .convert import prepare
from .errors import api_root, is_mappable, key_hint, map_sdk_error
from .limits import items_allowed
from .models import MODELS, TYPICAL, max_tokens_for
from .settings import PLUGIN, AnthropicSettings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

#: The most images a request's route notes name one by one; past it, one note counts them (a session of many
#: photos would carry a note per photo on every turn).
MOST_SCALING_NOTES = 3


def scaling_notes(notes: list[str]) -> list[str]:
    """The route notes of the images :func:`~mmrouter_anthropic.convert.prepare` scaled down: each, or, past
    :data:`MOST_SCALING_NOTES`, one that counts them and quotes the first (within a note's 1000 characters)."""
    if len(notes) <= MOST_SCALING_NOTES:
        return notes
    first = notes[0] if len(notes[0]) <= 800 else notes[0][:799] + "…"
    return [f"{len(notes)} images were scaled down before sending, the first: {first}"]


class AnthropicProvider(Provider):
    """Claude models (text, images, PDF documents) through ``anthropic.AsyncAnthropic``.

    Settings: ``providers.anthropic``, see :class:`~mmrouter_anthropic.settings.AnthropicSettings`.
    """

    name = PLUGIN
    required_modules = ("anthropic", "aiohttp")  # imported on first use

    def __init__(self, settings: AnthropicSettings | Mapping[str, Any] | None = None, *,
                 name: str = PLUGIN) -> None:
        """``name`` other than ``anthropic`` makes an extra instance (say ``claude-eu``): its settings are
        its own section only, without the ANTHROPIC_* environment fallbacks."""
        self.name = name
        self.settings = (
            settings if isinstance(settings, AnthropicSettings)
            else AnthropicSettings.load(name, settings, environment=name == PLUGIN)
        )
        # The most PDF pages each reads (100, or 600 with a window over 200k tokens: limits.py), declared so that
        # routing and ExplainRoute pass Claude by for a longer PDF, with a reason; check_media still refuses a
        # request over it in total (several PDFs, a session's history) at call time.
        self.models = [dataclasses.replace(m, max_document_pages=items_allowed(m)) for m in
                       with_configured_models(MODELS, self.settings.models, TYPICAL, provider=name)]
        self._client: AsyncAnthropic | None = None

    def unconfigured_reason(self) -> str | None:
        """Why Claude cannot be called (no API key), or None."""
        return self.settings.unconfigured_reason(self.name)

    def client(self) -> AsyncAnthropic:
        """The one SDK client of this provider, made on first use."""
        if self._client is None:
            import httpx2  # the SDK's HTTP client, on either transport
            from anthropic import AsyncAnthropic

            s = self.settings
            # An error answer's body is read up to router.error_body.ERROR_BODY_LIMIT, no further; with
            # max_retries, no SDK retry waits past the call's deadline (router.sdk_http.retries_within).
            hooks = response_hooks(httpx2, s.max_retries)
            http_client: httpx2.AsyncClient
            if s.transport == "aiohttp":
                from anthropic import DefaultAioHttpClient  # needs the aiohttp package (the SDK's extra)

                http_client = DefaultAioHttpClient(timeout=s.timeout, event_hooks=hooks)
            else:
                from anthropic import DefaultAsyncHttpxClient

                http_client = DefaultAsyncHttpxClient(timeout=s.timeout, event_hooks=hooks)
            # api_key is always given (a str), so the SDK reads no credential of its own (ANTHROPIC_API_KEY,
            # ANTHROPIC_AUTH_TOKEN, profiles). For an extra instance, base_url is never None (None reads
            # ANTHROPIC_BASE_URL) and ANTHROPIC_CUSTOM_HEADERS is cancelled.
            self._client = AsyncAnthropic(
                api_key=s.key, base_url=s.client_base_url, timeout=s.timeout, max_retries=s.max_retries,
                http_client=http_client, default_headers=None if s.uses_environment else _without_environment_headers(s.key),
            )
        return self._client

    def _call_timeout(self, ctx: CallContext) -> float:
        """The configured timeout, shortened to the call's deadline."""
        remaining = ctx.time_remaining()
        if remaining is None:
            return self.settings.timeout
        return max(0.001, min(self.settings.timeout, remaining))

    async def generate(
        self, request: Request, model: ModelInfo, ctx: CallContext
    ) -> AsyncIterator[ProviderEvent]:
        """Stream Claude's answer: a :class:`router.RouteNote` for each image scaled down before sending
        (:func:`~mmrouter_anthropic.convert.prepare`), the prompt's usage as ``message_start`` reports it
        (billed even if the call is then cancelled or fails), text deltas as they come, then the rest of
        the usage with the finish reason. A stream that ends without ``message_stop`` (nor a ``stop_reason``) is a failed
        call: ``ProviderUnavailable``, after the usage counted since ``message_start``."""
        if not self.settings.key:
            raise ProviderNotConfigured(self.name, f"no API key: {key_hint(self.name)}")
        prepared = await prepare(request, self.name, model)
        for note in scaling_notes(prepared.notes):  # the client is told (with our name, by the router)
            yield RouteNote(note)
        params: dict[str, Any] = {
            "model": model.name,
            "max_tokens": max_tokens_for(model, request.options.max_output_tokens),
            "messages": prepared.messages,
        }
        if prepared.system:
            params["system"] = prepared.system
        # request.options.temperature is deliberately not sent: the Messages API version the
        # anthropic 2.x SDK speaks (2026-10-21) refuses sampling parameters with a 400.

        usage = Usage()
        reported = Usage()  # what the usage reports yielded so far hold
        stop: list[str] = []  # the stop_reason values of message_delta events
        complete = False
        timeout = self._call_timeout(ctx)
        client = self.client()
        try:
            import anthropic
            import httpx2

            # A raw streamed response, its events decoded with json.loads: the SDK's typed events (a
            # pydantic model each) cost several times the CPU per chunk. The SDK still builds the
            # request (auth, headers, base URL, the API version) and maps HTTP errors.
            async with until_headers(timeout, lambda: _timed_out(client), client.max_retries):
                # Never follow a redirect (the SDK's clients do by default): the API does not redirect its
                # calls, and following one could send the key elsewhere; a 3xx fails the call (errors.py).
                with retries_within(ctx.deadline, client.max_retries):
                    response = await client.post("/v1/messages", body={**params, "stream": True},
                                                 cast_to=httpx2.Response,
                                                 options={"timeout": timeout, "follow_redirects": False}, stream=True)
            try:
                events = sse_events(response.aiter_bytes())
                async for sse in events:
                    event = _event_of(sse, response, anthropic)
                    kind = event.get("type")
                    if kind == "content_block_delta":
                        delta = event.get("delta")
                        if isinstance(delta, dict) and delta.get("type") == "text_delta" and delta.get("text"):
                            yield TextDelta(delta["text"])
                    elif kind == "message_stop":
                        complete = True
                        break
                    else:
                        _handle_event(event, usage, stop, model.price)
                        if kind == "message_start" and usage != reported:  # the prompt is billed from here
                            yield UsageReport(usage.since(reported, model.price))
                            reported = dataclasses.replace(usage)
                if complete:
                    await read_rest(events, timeout)
            finally:
                await response.aclose()
        except Exception as exc:
            error = map_sdk_error(exc, self.name, self.settings.key) if is_mappable(exc) else None
            # The stream broke (a transport error, an error event) after message_start: what it counted
            # since is billed all the same, and the router keeps a usage reported before the error.
            if usage != reported:
                yield UsageReport(usage.since(reported, model.price))
            if error is None:
                raise
            raise error from exc
        if not (complete or stop):
            # The body ended cleanly but early (a dead server behind a proxy, a body delimited by
            # connection close), and the SDK does not notice: the answer is cut, the call failed.
            if usage != reported:  # what it counted since message_start is billed all the same
                yield UsageReport(usage.since(reported, model.price))
            if content_type := _other_content_type(response):  # it was never a stream
                raise page_answered(self.name, "the Anthropic API", api_root(response.request.url), content_type,
                                    "an event stream")
            raise ProviderUnavailable(self.name, "the stream ended before the answer was complete "
                                                 "(no message_stop)")
        yield finish_report(usage.since(reported, model.price), stop[-1] if stop else None)

    async def aclose(self) -> None:
        """Close the SDK client (and its connection pool); safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _timed_out(client: AsyncAnthropic) -> BaseException:
    """The SDK's timeout error for a call to ``client``'s Messages API."""
    import anthropic
    import httpx2

    return anthropic.APITimeoutError(request=httpx2.Request("POST", f"{str(client.base_url).rstrip('/')}/v1/messages"))


def _other_content_type(response: Any) -> str:
    """The media type of ``response`` when it says it is something else than an event stream (a proxy's
    or captive portal's HTML page, JSON), else ""."""
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    return "" if media_type in ("", "text/event-stream") else media_type


def _without_environment_headers(api_key: str) -> dict[str, Any]:
    """``default_headers`` that cancel ANTHROPIC_CUSTOM_HEADERS for an extra instance: the SDK adds those
    headers (``Name: value`` lines; a gateway's credentials, say) to every request of every client, and
    they belong to the plugin's own provider.

    Each header named there is omitted, but ``Authorization``, where the SDK sends the key
    (``Bearer <api_key>``), is set to the instance's own key: omitted, the request would carry no key.
    """
    from anthropic import omit

    lines = os.environ.get("ANTHROPIC_CUSTOM_HEADERS", "").split("\n")
    names = {line.split(":", 1)[0].strip() for line in lines if ":" in line}
    return {name: f"Bearer {api_key}" if name.lower() == "authorization" else omit for name in names}


#: The Messages API's ``stop_reason`` values (others, like ``tool_use`` or ``pause_turn``, are OTHER).
STOP_REASONS = {"end_turn": FinishReason.STOP, "stop_sequence": FinishReason.STOP,
                "max_tokens": FinishReason.LENGTH, "model_context_window_exceeded": FinishReason.LENGTH,
                "refusal": FinishReason.REFUSAL}

#: The ``stop_reason`` of an answer cut because the model's context window filled (the prompt and the answer),
#: not at ``max_tokens``: LENGTH, with :attr:`router.UsageReport.context_window_full`.
CONTEXT_WINDOW_FULL = "model_context_window_exceeded"


def finish_report(usage: Usage, stop_reason: str | None) -> UsageReport:
    """The answer's last usage report: ``usage`` and the finish reason of ``stop_reason`` (None: not said),
    saying when the context window filled (:data:`CONTEXT_WINDOW_FULL`)."""
    finish = STOP_REASONS.get(stop_reason, FinishReason.OTHER) if stop_reason else None
    return UsageReport(usage, finish, context_window_full=stop_reason == CONTEXT_WINDOW_FULL)


def _event_of(sse: ServerSentEvent, response: Any, anthropic: Any) -> dict[str, Any]:
    """The stream event of a server-sent event; an error event (``event: error``, or data of type
    ``error``) raises the SDK's ``APIStatusError`` (as its own stream does), and data that is not a JSON
    object (or not UTF-8) its ``APIError``."""
    try:
        event = json.loads(sse.data)
    except ValueError:
        event = None
    if sse.event == "error" or (isinstance(event, dict) and event.get("type") == "error"):
        body = event if event is not None else sse.data.decode("utf-8", "replace")
        raise anthropic.APIStatusError(f"{body}", response=response, body=body)
    if not isinstance(event, dict):
        raise anthropic.APIError("the server sent a stream event that is not a JSON object", response.request,
                                 body=sse.data[:200].decode("utf-8", "replace"))
    return event


def _handle_event(event: dict[str, Any], usage: Usage, stop: list[str], price: Price) -> None:
    """Fold the usage of a ``message_start`` or ``message_delta`` event into ``usage`` (priced at ``price``
    when the prompt cache was written) and its ``stop_reason`` into ``stop``; other events are ignored."""
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message")
        _fold_usage(message.get("usage") if isinstance(message, dict) else None, usage, price)
    elif kind == "message_delta":
        _fold_usage(event.get("usage"), usage, price)
        delta = event.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if reason:
            stop.append(str(reason))


#: What writing a token to the prompt cache costs over the input price, by the entry's lifetime: 1.25x
#: the input price for 5 minutes, 2x for an hour (platform.claude.com/docs/en/build-with-claude/prompt-caching,
#: "Pricing", 2026-11). Reading one costs 0.1x: the models' ``cached_input_per_mtok``.
CACHE_WRITE_EXTRA = {"ephemeral_5m_input_tokens": 0.25, "ephemeral_1h_input_tokens": 1.0}


def _fold_usage(reported: Any, usage: Usage, price: Price) -> None:
    """Take the cumulative counts of a ``message_start`` or ``message_delta`` usage (a JSON object).

    ``input_tokens`` leaves out the tokens written to or read from the prompt cache: ours includes them,
    the ones read as ``cached_input_tokens``. Cache writes cost more than input: when there are any,
    ``usage.cost_usd`` is set here (``price``'s cost plus the writes' extra), else left to the router.
    """
    if not isinstance(reported, dict):
        return
    extra = usage.cost_usd - price.cost(usage) if usage.cost_usd else 0.0  # the writes' extra, folded before
    written = _count(reported, "cache_creation_input_tokens") or 0
    if _count(reported, "input_tokens") is not None:
        reads = _count(reported, "cache_read_input_tokens") or 0
        total = (_count(reported, "input_tokens") or 0) + written + reads
        usage.input_tokens = max(usage.input_tokens, total)
        usage.cached_input_tokens = max(usage.cached_input_tokens, reads)
    if written:  # cumulative, like the counts: a repeat without breakdown is no less
        extra = max(extra, _cache_write_extra(reported, written, price))
    output = _count(reported, "output_tokens")
    if output is not None:
        usage.output_tokens = max(usage.output_tokens, output)
    usage.cost_usd = price.cost(usage) + extra if extra else 0.0


def _count(reported: dict[str, Any], key: str) -> int | None:
    """A token count of a usage object: None when absent (or not a number)."""
    value = reported.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cache_write_extra(reported: dict[str, Any], written: int, price: Price) -> float:
    """What the ``written`` prompt-cache tokens of ``reported`` cost over the input price (5-minute writes
    when the ``cache_creation`` breakdown is missing)."""
    breakdown = reported.get("cache_creation")
    if not isinstance(breakdown, dict):
        return written * CACHE_WRITE_EXTRA["ephemeral_5m_input_tokens"] * price.input_per_mtok / 1e6
    return sum((_count(breakdown, field) or 0) * share * price.input_per_mtok / 1e6
               for field, share in CACHE_WRITE_EXTRA.items())
