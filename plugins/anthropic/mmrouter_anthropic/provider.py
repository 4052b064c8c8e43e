"""The Anthropic provider: Claude through the official SDK's async client, streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from router import (
    CallContext,
    ModelInfo,
    Provider,
    ProviderEvent,
    Request,
    TextDelta,
    Usage,
    UsageReport,
)
from router.errors import ProviderNotConfigured

from .convert import prepare
from .errors import KEY_HINT, PROVIDER, is_mappable, map_sdk_error
from .models import MODELS, max_tokens_for
from .settings import AnthropicSettings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

class AnthropicProvider(Provider):
    """Claude models (text, images, PDF documents) through ``anthropic.AsyncAnthropic``.

    Settings: ``providers.anthropic``, see :class:`~mmrouter_anthropic.settings.AnthropicSettings`.
    """

    name = PROVIDER

    def __init__(self, settings: AnthropicSettings | Mapping[str, Any] | None = None) -> None:
        self.settings = (
            settings if isinstance(settings, AnthropicSettings) else AnthropicSettings.load(PROVIDER, settings)
        )
        self.models = list(MODELS)
        self._client: AsyncAnthropic | None = None

    def unconfigured_reason(self) -> str | None:
        """Why Claude cannot be called (no API key), or None."""
        if not self.settings.key:
            return "ANTHROPIC_API_KEY is not set (set it, or providers.anthropic.api_key in the config)"
        return None

    def client(self) -> AsyncAnthropic:
        """The one SDK client of this provider, made on first use."""
        if self._client is None:
            from anthropic import AsyncAnthropic

            s = self.settings
            self._client = AsyncAnthropic(
                api_key=s.key, base_url=s.base_url or None, timeout=s.timeout, max_retries=s.max_retries
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
        """Stream Claude's answer: text deltas as they come, then one usage report."""
        if not self.settings.key:
            raise ProviderNotConfigured(PROVIDER, f"no API key: {KEY_HINT}")
        prepared = await prepare(request)
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
        try:
            stream = await self.client().messages.create(
                stream=True, timeout=self._call_timeout(ctx), **params
            )
            async with stream:
                async for event in stream:
                    delta = _handle_event(event, usage)
                    if delta:
                        yield TextDelta(delta)
        except Exception as exc:
            if is_mappable(exc):
                raise map_sdk_error(exc, self.settings.key) from exc
            raise
        yield UsageReport(usage)

    async def aclose(self) -> None:
        """Close the SDK client (and its connection pool); safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _handle_event(event: Any, usage: Usage) -> str:
    """Fold one stream event into ``usage``; return its text, if it carries any."""
    kind = getattr(event, "type", "")
    if kind == "content_block_delta":
        delta = event.delta
        if getattr(delta, "type", "") == "text_delta":
            return delta.text
    elif kind == "message_start":
        _fold_usage(event.message.usage, usage)
    elif kind == "message_delta":
        _fold_usage(event.usage, usage)
    return ""


def _fold_usage(reported: Any, usage: Usage) -> None:
    """Take the cumulative counts of a ``message_start`` or ``message_delta`` usage.

    Input tokens include tokens written to or read from the prompt cache.
    """
    if reported is None:
        return
    input_tokens = reported.input_tokens
    if input_tokens is not None:
        input_tokens += (reported.cache_creation_input_tokens or 0) + (reported.cache_read_input_tokens or 0)
        usage.input_tokens = max(usage.input_tokens, input_tokens)
    if reported.output_tokens is not None:
        usage.output_tokens = max(usage.output_tokens, reported.output_tokens)
