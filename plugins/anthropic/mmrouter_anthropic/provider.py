"""The Anthropic provider: Claude through the official SDK's async client, streamed."""

from __future__ import annotations

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
    TextDelta,
    Usage,
    UsageReport,
    with_configured_models,
)
from router.errors import ProviderNotConfigured, ProviderUnavailable
from router.sdk_http import until_headers

from .convert import prepare
from .errors import is_mappable, key_hint, map_sdk_error
from .models import MODELS, TYPICAL, max_tokens_for
from .settings import PLUGIN, AnthropicSettings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

class AnthropicProvider(Provider):
    """Claude models (text, images, PDF documents) through ``anthropic.AsyncAnthropic``.

    Settings: ``providers.anthropic``, see :class:`~mmrouter_anthropic.settings.AnthropicSettings`.
    """

    name = PLUGIN

    def __init__(self, settings: AnthropicSettings | Mapping[str, Any] | None = None, *,
                 name: str = PLUGIN) -> None:
        """``name`` other than ``anthropic`` makes an extra instance (say ``claude-eu``): its settings are
        its own section only, without the ANTHROPIC_* environment fallbacks."""
        self.name = name
        self.settings = (
            settings if isinstance(settings, AnthropicSettings)
            else AnthropicSettings.load(name, settings, environment=name == PLUGIN)
        )
        self.models = with_configured_models(MODELS, self.settings.models, TYPICAL, provider=name)
        self._client: AsyncAnthropic | None = None

    def unconfigured_reason(self) -> str | None:
        """Why Claude cannot be called (no API key), or None."""
        return self.settings.unconfigured_reason(self.name)

    def client(self) -> AsyncAnthropic:
        """The one SDK client of this provider, made on first use."""
        if self._client is None:
            from anthropic import AsyncAnthropic

            s = self.settings
            http_client = None
            if s.transport == "aiohttp":
                from anthropic import DefaultAioHttpClient  # needs the aiohttp package (the SDK's extra)

                http_client = DefaultAioHttpClient(timeout=s.timeout)
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
        """Stream Claude's answer: text deltas as they come, then one usage report. A stream that ends
        without ``message_stop`` (nor a ``stop_reason``) is a failed call: ``ProviderUnavailable``."""
        if not self.settings.key:
            raise ProviderNotConfigured(self.name, f"no API key: {key_hint(self.name)}")
        prepared = await prepare(request, self.name, model)
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
        stop: list[FinishReason] = []
        complete = False
        timeout = self._call_timeout(ctx)
        client = self.client()
        try:
            async with until_headers(timeout, lambda: _timed_out(client)):
                stream = await client.messages.create(stream=True, timeout=timeout, **params)
            async with stream:
                async for event in stream:
                    complete = complete or getattr(event, "type", "") == "message_stop"
                    delta = _handle_event(event, usage, stop, model.price)
                    if delta:
                        yield TextDelta(delta)
        except Exception as exc:
            if is_mappable(exc):
                raise map_sdk_error(exc, self.name, self.settings.key) from exc
            raise
        if not (complete or stop):
            # The body ended cleanly but early (a dead server behind a proxy, a body delimited by
            # connection close), and the SDK does not notice: the answer is cut, the call failed.
            if usage != Usage():  # the prompt read (message_start) is billed all the same
                yield UsageReport(usage)
            raise ProviderUnavailable(self.name, "the stream ended before the answer was complete "
                                                 "(no message_stop)")
        yield UsageReport(usage, stop[-1] if stop else None)

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


def _handle_event(event: Any, usage: Usage, stop: list[FinishReason], price: Price) -> str:
    """Fold one stream event into ``usage`` (priced at ``price`` when the prompt cache was written) and its
    stop reason into ``stop``; return its text, if any."""
    kind = getattr(event, "type", "")
    if kind == "content_block_delta":
        delta = event.delta
        if getattr(delta, "type", "") == "text_delta":
            return delta.text
    elif kind == "message_start":
        _fold_usage(event.message.usage, usage, price)
    elif kind == "message_delta":
        _fold_usage(event.usage, usage, price)
        reason = getattr(event.delta, "stop_reason", None)
        if reason:
            stop.append(STOP_REASONS.get(reason, FinishReason.OTHER))
    return ""


#: What writing a token to the prompt cache costs over the input price, by the entry's lifetime: 1.25x
#: the input price for 5 minutes, 2x for an hour (platform.claude.com/docs/en/build-with-claude/prompt-caching,
#: "Pricing", 2026-11). Reading one costs 0.1x: the models' ``cached_input_per_mtok``.
CACHE_WRITE_EXTRA = {"ephemeral_5m_input_tokens": 0.25, "ephemeral_1h_input_tokens": 1.0}


def _fold_usage(reported: Any, usage: Usage, price: Price) -> None:
    """Take the cumulative counts of a ``message_start`` or ``message_delta`` usage.

    ``input_tokens`` leaves out the tokens written to or read from the prompt cache: ours includes them,
    the ones read as ``cached_input_tokens``. Cache writes cost more than input: when there are any,
    ``usage.cost_usd`` is set here (``price``'s cost plus the writes' extra), else left to the router.
    """
    if reported is None:
        return
    extra = usage.cost_usd - price.cost(usage) if usage.cost_usd else 0.0  # the writes' extra, folded before
    if reported.input_tokens is not None:
        reads = reported.cache_read_input_tokens or 0
        total = reported.input_tokens + (reported.cache_creation_input_tokens or 0) + reads
        usage.input_tokens = max(usage.input_tokens, total)
        usage.cached_input_tokens = max(usage.cached_input_tokens, reads)
    if reported.cache_creation_input_tokens:  # cumulative, like the counts: a repeat without breakdown is no less
        extra = max(extra, _cache_write_extra(reported, price))
    if reported.output_tokens is not None:
        usage.output_tokens = max(usage.output_tokens, reported.output_tokens)
    usage.cost_usd = price.cost(usage) + extra if extra else 0.0


def _cache_write_extra(reported: Any, price: Price) -> float:
    """What the prompt-cache writes of ``reported`` cost over the input price (5-minute writes when the
    ``cache_creation`` breakdown is missing)."""
    breakdown = getattr(reported, "cache_creation", None)
    if breakdown is None:
        written = reported.cache_creation_input_tokens or 0
        return written * CACHE_WRITE_EXTRA["ephemeral_5m_input_tokens"] * price.input_per_mtok / 1e6
    return sum((getattr(breakdown, field, 0) or 0) * share * price.input_per_mtok / 1e6
               for field, share in CACHE_WRITE_EXTRA.items())
