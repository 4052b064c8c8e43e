"""One call to one provider model, with its accounting and its failures contained.

Whatever the plugin does (raise anything, even KeyboardInterrupt or SystemExit, yield junk, be
cancelled), the caller gets either the events or a :class:`ProviderError`, and the route records
the attempt and, on success, the step with its latency and cost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from .contract import PairJoiner, event_problem, with_valid_text
from .errors import ProviderError, ProviderFailed, ProviderTimeout, ProviderUnavailable
from .outcome import Attempt, RouteInfo, Step
from .prepare import prepared
from .provider import Provider
from .types import (
    CallContext,
    ModelInfo,
    Price,
    ProviderEvent,
    Request,
    TextDelta,
    Usage,
    UsageReport,
)

log = logging.getLogger(__name__)

#: A call cancelled this close to its deadline, or after it, was cancelled for its deadline (a client's
#: reset at its deadline may come a little before it): the provider did not answer in time. The access
#: log draws the same line (``router.server.DEADLINE_MARGIN_SECONDS``).
DEADLINE_MARGIN_SECONDS = 0.25

#: The task of each provider call under way -> its provider's name (to say which one hangs at exit).
_UNDER_WAY: dict[asyncio.Task, str] = {}


@dataclass
class FailedAttempt(Attempt):
    """A failed attempt. ``unpaid`` is its zero-cost ``"<purpose> (failed)"`` step for the statistics
    when no paid step (see :func:`_keep_paid_part`) already counts it: not in the route's steps, which
    the client gets with their usage. ``reason`` is the error's ErrorInfo reason and ``at`` when it
    failed (a ``time.time()``) and ``http_status`` the HTTP status the provider answered (None: none
    known), for :class:`ProviderHealth`."""

    unpaid: Step | None = None
    reason: str = ""
    at: float = 0.0
    http_status: int | None = None


@dataclass
class CancelledAttempt(Attempt):
    """An attempt cancelled before its deadline (its client left, the daemon stopped). ``unpaid`` is its
    zero-cost ``"<purpose> (cancelled)"`` step for the statistics when it reported no usage (a stream's
    usage comes at its end with OpenAI), so that the call is counted all the same."""

    unpaid: Step | None = None


def unpaid_failures(route: RouteInfo) -> list[Step]:
    """The steps of ``route``'s failed or cancelled attempts that no step of ``route.steps`` counts (for
    statistics)."""
    return [a.unpaid for a in route.attempts
            if isinstance(a, FailedAttempt | CancelledAttempt) and a.unpaid is not None]


def providers_running(tasks: Iterable[asyncio.Task]) -> list[str]:
    """The providers whose calls the ``tasks`` are in (sorted, once each)."""
    return sorted({_UNDER_WAY[task] for task in tasks if task in _UNDER_WAY})


def calls_under_way() -> list[asyncio.Task]:
    """The tasks in a provider call now."""
    return list(_UNDER_WAY)


async def call_model(provider: Provider, model: ModelInfo, request: Request, ctx: CallContext,
                     route: RouteInfo, purpose: str) -> AsyncIterator[ProviderEvent]:
    """Yield ``provider.generate``'s events; record the attempt and step in ``route``.

    A :class:`UsageReport` without a cost gets one from the model's price.
    Cancellation (client gone, deadline passed) closes the provider's
    generator, which cancels its HTTP call. A cancellation at the call's deadline (``ctx.deadline``,
    which ``server.max_call_seconds`` bounds) while it waits for the provider is the provider's failure
    to answer in time: a failed attempt (``PROVIDER_TIMEOUT``), logged and counted as the others are;
    the cancellation goes on all the same.
    """
    started = time.perf_counter()
    usage = Usage()
    try:
        await prepared(provider, route, ctx)  # its SDK imported off the event loop, before its attempt is timed
    except ProviderError as exc:  # prepare() hangs: this attempt fails, the fallbacks are tried
        _failed(route, purpose, provider, model, ctx, exc, (time.perf_counter() - started) * 1000, usage)
        raise
    started = time.perf_counter()
    reported = False
    task = asyncio.current_task()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    events: AsyncIterator[object] | None = None
    if task is not None:
        _UNDER_WAY[task] = provider.name
    try:
        events = _start(provider, request, model, ctx)
        pairs = PairJoiner()  # a surrogate pair split across two deltas arrives whole
        while True:
            event = await _next_event(provider, model, ctx, events)
            if not isinstance(event, TextDelta) and (rest := pairs.flush()) is not None:
                yield rest
            if event is None:
                break
            event = pairs.joined(event) if isinstance(event, TextDelta) else with_valid_text(event)
            if isinstance(event, TextDelta) and not event.text:
                continue  # no text: not an answer begun (fallbacks stay open), and nothing to send
            if isinstance(event, UsageReport):
                if not event.usage.cost_usd:
                    event.usage.cost_usd = model.price.cost(event.usage)
                usage.add(event.usage)
                reported = True
            yield event
    except ProviderError as exc:
        if isinstance(exc, ProviderUnavailable) and deadline_passed(ctx):
            # the plugin's own timeout, cut to the call's deadline, fired a moment before it: the deadline's
            # failure, as when the router's cancellation wins the race (not an outage of the provider's); a
            # refusal (a bad request, a key, a rate limit) stays what it is
            timed_out = _timed_out(provider, elapsed(), exc)
            _failed(route, purpose, provider, model, ctx, timed_out, elapsed(), usage)
            raise timed_out from exc
        _failed(route, purpose, provider, model, ctx, exc, elapsed(), usage)
        raise
    except asyncio.CancelledError:  # ours: the call was cancelled while it waited for the provider
        if deadline_passed(ctx):  # the provider's failure to answer in time: cancelled, but counted
            _failed(route, purpose, provider, model, ctx, _timed_out(provider, elapsed()), elapsed(), usage)
        else:
            _cancelled(route, purpose, provider, model, elapsed(), usage)
        raise
    except GeneratorExit:  # its consumer left between two events: no fault of the provider's
        _cancelled(route, purpose, provider, model, elapsed(), usage)
        raise
    except Exception as exc:  # our accounting of what the plugin sent (a Usage with odd values)
        error = _plugin_failed(provider, model, ctx, exc)
        _failed(route, purpose, provider, model, ctx, error, elapsed(), usage)
        raise error from exc
    finally:
        try:
            if events is not None:
                await _close(provider, events)
        finally:
            if task is not None:
                _UNDER_WAY.pop(task, None)
    if not reported:
        _warn_unreported(provider, model)
    elif usage == Usage() and model.price != Price():
        _warn_unreported(provider, model, "with a usage report of nothing (0 tokens, 0 s: the provider sent no "
                                          "usage, or the plugin did not read it)")
    route.attempts.append(Attempt(provider.name, model.name, True, "", elapsed()))
    route.steps.append(Step(purpose, provider.name, model.name, elapsed(), usage))


#: The models whose answer came without a usage report, warned of once each (see :func:`_warn_unreported`).
_UNREPORTED: set[tuple[str, str]] = set()


def _warn_unreported(provider: Provider, model: ModelInfo, how: str = "") -> None:
    """Log, once per model, an answer of a priced model that ended without a :class:`UsageReport` (the
    plugin breaks its contract; the conformance kit checks it: its finish reason is unknown too), or, said
    ``how``, with one of nothing (a provider or proxy that sends no usage): it is recorded as free."""
    if (provider.name, model.name) not in _UNREPORTED:
        _UNREPORTED.add((provider.name, model.name))
        if how:
            log.warning("provider %s answered with %s %s: its calls are recorded as free; said once",
                        provider.name, model.name, how)
            return
        log.warning("provider %s answered with %s without a usage report (the plugin's generate must yield a "
                    "router.UsageReport): its calls are recorded as free and their finish reason unknown; "
                    "said once", provider.name, model.name)


def _failed(route: RouteInfo, purpose: str, provider: Provider, model: ModelInfo, ctx: CallContext,
            error: ProviderError, latency_ms: float, usage: Usage) -> None:
    """Record a failed call in ``route`` (its attempt; a step for what was paid, else one for the
    statistics only) and log it: a provider that fails while a fallback answers is seen nowhere else."""
    paid = _keep_paid_part(route, purpose, provider, model, latency_ms, usage)
    unpaid = None if paid else Step(f"{purpose} (failed)", provider.name, model.name, latency_ms)
    route.attempts.append(FailedAttempt(provider.name, model.name, False, error.message, latency_ms, unpaid,
                                        error.reason, time.time(), error.http_status))
    log.warning("provider call %s/%s failed (%s, %s) after %.0f ms: %s [request_id=%s]", provider.name, model.name, purpose,
                error.reason, latency_ms, error.message, ctx.request_id,
                extra={"provider": provider.name, "model": model.name, "purpose": purpose, "reason": error.reason,
                       "latency_ms": round(latency_ms, 1), "request_id": ctx.request_id})


def deadline_passed(ctx: CallContext) -> bool:
    """Whether the call's deadline (the client's, or the daemon's ``server.max_call_seconds``) has passed,
    within :data:`DEADLINE_MARGIN_SECONDS`: a cancellation then is the deadline's, not the client's."""
    return ctx.deadline is not None and time.monotonic() >= ctx.deadline - DEADLINE_MARGIN_SECONDS


def _timed_out(provider: Provider, latency_ms: float, cause: ProviderError | None = None) -> ProviderTimeout:
    """The error of a call cancelled at its deadline (or that failed with ``cause`` at it): the provider
    did not answer in time."""
    how = "cancelled" if cause is None else f"{cause.reason} ({cause.message.removeprefix(provider.name + ': ')})"
    return ProviderTimeout(provider.name, f"no answer before the deadline of the call (set by its client, or "
                                          f"server.max_call_seconds): {how} after {latency_ms:.0f} ms")


def _cancelled(route: RouteInfo, purpose: str, provider: Provider, model: ModelInfo, latency_ms: float,
               usage: Usage) -> None:
    """Record a call cancelled before its deadline (its client cancelled or left, the daemon stops):
    an attempt ``"cancelled"``, not a failure of the provider's, and a step for what was paid (else one
    for the statistics only)."""
    paid = _keep_paid_part(route, purpose, provider, model, latency_ms, usage, "cancelled")
    unpaid = None if paid else Step(f"{purpose} (cancelled)", provider.name, model.name, latency_ms)
    route.attempts.append(CancelledAttempt(provider.name, model.name, False, "cancelled", latency_ms, unpaid))


def _keep_paid_part(route: RouteInfo, purpose: str, provider: Provider, model: ModelInfo, latency_ms: float,
                    usage: Usage, how: str = "failed") -> bool:
    """A call that failed or was cancelled after it reported usage (clips transcribed before a later one
    failed; a client gone between the usage and the end) was billed for it: a step ``"<purpose> (<how>)"``
    keeps it in the answer's usage and the statistics. Returns whether there was such a part."""
    if usage == Usage():
        return False
    route.steps.append(Step(f"{purpose} ({how})", provider.name, model.name, latency_ms, usage))
    return True


def _start(provider: Provider, request: Request, model: ModelInfo, ctx: CallContext) -> AsyncIterator[object]:
    """``provider.generate(...)``: what it raises (a plugin whose generate is no async generator) is ProviderFailed."""
    try:
        return provider.generate(request, model, ctx)
    except ProviderError:
        raise
    except BaseException as exc:
        raise _plugin_failed(provider, model, ctx, exc) from exc


async def _next_event(provider: Provider, model: ModelInfo, ctx: CallContext,
                      events: AsyncIterator[object]) -> ProviderEvent | None:
    """The plugin's next event, checked (its texts are made valid by :func:`call_model`, which joins a
    surrogate pair split across two deltas), or None at its end. Anything the plugin raises other than a
    ProviderError (BaseException too: KeyboardInterrupt, SystemExit, GeneratorExit, a CancelledError
    of its own) becomes ProviderFailed; a CancelledError of this task's cancellation goes through."""
    try:
        event = await anext(events)
    except StopAsyncIteration:
        return None
    except ProviderError:
        raise
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise _plugin_failed(provider, model, ctx, exc) from exc
    except BaseException as exc:
        raise _plugin_failed(provider, model, ctx, exc) from exc
    problem = event_problem(event)
    if problem:
        message = f"the plugin yielded a bad event: {problem}"
        log.error("provider %s: %s [request_id=%s]", provider.name, message, ctx.request_id,
                  extra=_call_fields(provider, model, ctx))
        raise ProviderFailed(provider.name, message)
    return event  # type: ignore[return-value]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call_fields(provider: Provider, model: ModelInfo, ctx: CallContext) -> dict[str, str]:
    """The fields a log record of a provider call carries (JSON log), to tie it to the call's other lines."""
    return {"provider": provider.name, "model": model.name, "request_id": ctx.request_id}


def _plugin_failed(provider: Provider, model: ModelInfo, ctx: CallContext, exc: BaseException) -> ProviderError:
    """The error for a plugin that raised ``exc`` during the call ``ctx`` to ``model`` (logged with its
    traceback and the call's request id); the daemon out of file descriptors is said as such (no plugin's
    bug, and one traceback per call is no help)."""
    if _out_of_descriptors(exc):
        now = time.monotonic()
        if now - _DESCRIPTORS_WARNED[0] >= DESCRIPTORS_WARN_SECONDS:
            _DESCRIPTORS_WARNED[0] = now
            log.error("the daemon ran out of file descriptors (%s) while calling %s: raise its limit (ulimit -n, "
                      "systemd LimitNOFILE) or lower server.max_concurrent_calls; said at most once a minute",
                      _describe(exc), provider.name)
        return ProviderUnavailable(provider.name, "the daemon ran out of file descriptors (too many open "
                                                  "connections or files): try again shortly")
    log.error("provider %s raised while answering with %s [request_id=%s]", provider.name, model.name,
              ctx.request_id, exc_info=exc, extra=_call_fields(provider, model, ctx))
    return ProviderFailed(provider.name, f"the plugin failed: {_describe(exc)}")


#: How often running out of file descriptors is logged, and when it was last (time.monotonic()).
DESCRIPTORS_WARN_SECONDS = 60.0
_DESCRIPTORS_WARNED = [-DESCRIPTORS_WARN_SECONDS]


def _out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is EMFILE or ENFILE."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


async def _close(provider: Provider, events: AsyncIterator[object]) -> None:
    """Close the plugin's generator (cancelling its HTTP call); what the plugin raises then is logged."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # ours: the call is cancelled
            raise
        log.error("provider %s raised CancelledError of its own while its call was closed; ignored",
                  provider.name)
    except BaseException:
        log.exception("provider %s raised while its call was closed; ignored", provider.name)
