"""One call to one provider model, with its accounting and its failures contained.

Whatever the plugin does (raise anything, be cancelled), the caller gets
either the events or a :class:`ProviderError`, and the route records the
attempt and, on success, the step with its latency and cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from .errors import ProviderError, ProviderFailed
from .outcome import Attempt, RouteInfo, Step
from .provider import Provider
from .types import CallContext, ModelInfo, ProviderEvent, Request, Usage, UsageReport

log = logging.getLogger(__name__)


async def call_model(provider: Provider, model: ModelInfo, request: Request, ctx: CallContext,
                     route: RouteInfo, purpose: str) -> AsyncIterator[ProviderEvent]:
    """Yield ``provider.generate``'s events; record the attempt and step in ``route``.

    A :class:`UsageReport` without a cost gets one from the model's price.
    Cancellation (client gone, deadline passed) closes the provider's
    generator, which cancels its HTTP call.
    """
    started = time.perf_counter()
    usage = Usage()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        async with aclosing(provider.generate(request, model, ctx)) as events:
            async for event in events:
                if isinstance(event, UsageReport):
                    if not event.usage.cost_usd:
                        event.usage.cost_usd = model.price.cost(event.usage)
                    usage.add(event.usage)
                yield event
    except ProviderError as exc:
        route.attempts.append(Attempt(provider.name, model.name, False, exc.message, elapsed()))
        raise
    except (asyncio.CancelledError, GeneratorExit):
        route.attempts.append(Attempt(provider.name, model.name, False, "cancelled", elapsed()))
        raise
    except Exception as exc:
        log.exception("provider %s raised while answering", provider.name)
        error = ProviderFailed(provider.name, f"the plugin failed: {type(exc).__name__}: {exc}")
        route.attempts.append(Attempt(provider.name, model.name, False, error.message, elapsed()))
        raise error from exc
    route.attempts.append(Attempt(provider.name, model.name, True, "", elapsed()))
    route.steps.append(Step(purpose, provider.name, model.name, elapsed(), usage))
