"""One call to one provider model, with its accounting and its failures contained.

Whatever the plugin does (raise anything, even KeyboardInterrupt or SystemExit, yield junk, be
cancelled), the caller gets either the events or a :class:`ProviderError`, and the route records
the attempt and, on success, the step with its latency and cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .contract import PairJoiner, event_problem, with_valid_text
from .errors import (
    ProviderError,
    ProviderFailed,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    UnknownMedia,
)
from .outcome import Attempt, RouteInfo, Step
from .prepare import prepared
from .provider import Provider
from .text import valid_text
from .types import (
    CallContext,
    ModelInfo,
    Price,
    ProviderEvent,
    Request,
    RouteNote,
    TextDelta,
    Usage,
    UsageReport,
)

log = logging.getLogger(__name__)

#: A call cancelled this close to its deadline, or after it, was cancelled for its deadline (a client's
#: reset at its deadline may come a little before it): the provider did not answer in time. The access
#: log draws the same line (``router.server.DEADLINE_MARGIN_SECONDS``).
DEADLINE_MARGIN_SECONDS = 0.25


class ProviderCall(NamedTuple):
    """A provider call: its provider's name and its request id, for the log records about it."""

    provider: str
    request_id: str


#: The task of each provider call under way, and of each background close of one (see :func:`in_background`)
#: -> its call (to say which provider hangs at exit, and whose generators a call leaves unfinished).
_UNDER_WAY: dict[asyncio.Task, ProviderCall] = {}
#: How long a plugin's generator may take to close in the background (after its answer ended, or left
#: unfinished by its call) before it is cancelled, with a warning.
CLOSE_SECONDS = 10.0


@dataclass
class FailedAttempt(Attempt):
    """A failed attempt. ``unpaid`` is its zero-cost ``"<purpose> (failed)"`` step for the statistics
    when no paid step (see :func:`_keep_paid_part`) already counts it: not in the route's steps, which
    the client gets with their usage. ``reason`` is the error's ErrorInfo reason and ``at`` when it
    failed (a ``time.time()``) and ``http_status`` the HTTP status the provider answered (None: none
    known), for :class:`ProviderHealth`. ``retry_after`` is the delay the provider asked to be left alone for,
    in seconds, when it rate-limited the call or was unavailable with a ``Retry-After`` (None otherwise), for
    :class:`router.cooldowns.Cooldowns`."""

    unpaid: Step | None = None
    reason: str = ""
    at: float = 0.0
    http_status: int | None = None
    retry_after: float | None = None


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
    return sorted({_UNDER_WAY[task].provider for task in tasks if task in _UNDER_WAY})


def calls_under_way() -> list[asyncio.Task]:
    """The tasks in a provider call now."""
    return list(_UNDER_WAY)


async def call_model(provider: Provider, model: ModelInfo, request: Request, ctx: CallContext,
                     route: RouteInfo, purpose: str) -> AsyncIterator[ProviderEvent]:
    """Yield ``provider.generate``'s events; record the attempt and step in ``route``.

    A :class:`UsageReport` without a cost gets one from the model's price. The answer ends with the
    UsageReport that carries a finish reason: the call ends there, without waiting for ``generate`` to
    return (an upstream that holds its connection open, a slow cleanup), and the generator is closed in
    the background (:func:`_close_in_time`). The request's ``options.max_output_tokens`` is capped to
    the model's ``max_output_tokens`` (:func:`_capped`); a ``Provider*`` error the plugin made with
    another provider's name is made to name this one (:func:`_renamed`). A :class:`RouteNote` is not
    passed on: its text goes to ``route.notes`` at once (kept if the call then fails), named after the
    call's target (:func:`_add_note`).
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
    request = _capped(request, provider, model, route)
    started = time.perf_counter()
    reported = False
    finished = False  # the plugin yielded the answer's last UsageReport (one with a finish reason)
    task = asyncio.current_task()
    call = ProviderCall(provider.name, ctx.request_id)

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    events: AsyncIterator[object] | None = None
    if task is not None:
        _UNDER_WAY[task] = call
    try:
        events = _start(provider, request, model, ctx)
        pairs = PairJoiner()  # a surrogate pair split across two deltas arrives whole
        while True:
            event = await _next_event(provider, model, ctx, events)
            if isinstance(event, RouteNote):  # not part of the answer: a surrogate half held stays held
                _add_note(route, provider, model, event)
                continue
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
                finished = event.finish_reason is not None
            yield event
            if finished:
                break  # the answer is complete: what the generator does after it is not waited for
    except ProviderError as exc:
        if (erased := _erased_media(request)) is not None:  # no fault of the provider's: nor of a fallback's
            _cancelled(route, purpose, provider, model, elapsed(), usage)
            raise erased from exc
        _renamed(exc, provider)
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
            if events is not None and finished:  # its client is not kept waiting for the plugin's cleanup
                in_background(_close_in_time(call, events, "its call (after its answer ended)", _LINGERS), call)
            elif events is not None:
                await _close(call, events)
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


def _erased_media(request: Request) -> UnknownMedia | None:
    """MEDIA_NOT_FOUND for a stored media of ``request`` whose file is gone: deleted while the call was under way
    (DeleteMedia, ResetSession with erase_media, prune), which is why its provider failed; None when every one
    is there. Looked at only once a provider failed: a stat per stored media."""
    for media in request.media():
        if media.media_id and media.path is not None and not media.path.exists():
            return UnknownMedia(f"media {media.media_id} was deleted while this call was under way (DeleteMedia, "
                                "ResetSession with erase_media, or prune): upload it again and send the call again",
                                metadata={"media_id": media.media_id})
    return None


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
    wait = error.retry_after if isinstance(error, ProviderRateLimited | ProviderUnavailable) else None
    route.attempts.append(FailedAttempt(provider.name, model.name, False, error.message, latency_ms, unpaid,
                                        error.reason, time.time(), error.http_status, wait))
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


def _add_note(route: RouteInfo, provider: Provider, model: ModelInfo, note: RouteNote) -> None:
    """Add the plugin's ``note`` (checked by :func:`router.contract.route_note_problem`) to ``route``'s
    notes as ``<provider>/<model>: <text>`` (so a note of a call that failed before a fallback answered still says
    whose it is), unless the answer has it already (a call retried with less history notes it again).
    Secrets are masked in it as in every note, when the route is sent (``App.redact``)."""
    text = f"{provider.name}/{model.name}: {valid_text(note.text.strip())}"
    if text not in route.notes:
        route.notes.append(text)


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


async def _close(call: ProviderCall, events: object, what: str = "its call") -> None:
    """Close the plugin's generator ``events`` (cancelling its HTTP call); what the plugin raises then is
    logged (:func:`_close_failed`), never raised, but for this task's own cancellation."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # ours: the call is cancelled
            raise
        _close_failed(call, what, exc)
    except BaseException as exc:
        _close_failed(call, what, exc)


def _close_failed(call: ProviderCall, what: str, exc: BaseException) -> None:
    """Log, in one record naming the provider and the request id, what the plugin raised while ``what`` was
    closed: a traceback only for an error that is not said whole by its message."""
    fields = {"extra": call._asdict()}
    if isinstance(exc, asyncio.CancelledError):
        log.error("provider %s raised CancelledError of its own while %s was closed; ignored [request_id=%s]",
                  call.provider, what, call.request_id, **fields)
    elif isinstance(exc, RuntimeError) and str(exc).endswith("ignored GeneratorExit"):
        log.error("provider %s yielded while %s was closed (an async generator that yields in `except "
                  "GeneratorExit` or `finally` cannot be closed: return, or re-raise, there); ignored "
                  "[request_id=%s]", call.provider, what, call.request_id, **fields)
    else:
        log.error("provider %s raised while %s was closed; ignored [request_id=%s]", call.provider, what,
                  call.request_id, exc_info=exc, **fields)


async def _close_in_time(call: ProviderCall, events: object, what: str, hint: str = "its cleanup takes that long") -> None:
    """:func:`_close`, in a task of its own (:func:`in_background`; the whole close in one task: an anyio
    cancel scope, which httpx's close enters, must be left in the task it was entered in): cancelled, with
    a warning, when it has not ended after :data:`CLOSE_SECONDS` (a plugin that keeps reading an upstream
    that holds its connection open, or sleeps in its cleanup)."""
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await _close(call, events, what)
    except TimeoutError:  # ours (_close lets no error of the plugin's through)
        log.warning("provider %s had not closed %s %g s later (%s); cancelled [request_id=%s]", call.provider, what,
                    CLOSE_SECONDS, hint, call.request_id, extra=call._asdict())


#: Why a plugin's generator may take long to close once its answer ended.
_LINGERS = ("generate should return once it has yielded its last UsageReport, without reading on, and clean up "
            "quickly")


def in_background(closing: Coroutine[Any, Any, None], call: ProviderCall) -> None:
    """Run ``closing`` (which raises nothing but its cancellation) in a task of its own, counted among the
    calls under way: the daemon's stop cancels it, and names the provider if it hangs."""
    task = asyncio.get_running_loop().create_task(closing)
    _UNDER_WAY[task] = call
    task.add_done_callback(_forget_task)


def _forget_task(task: asyncio.Task) -> None:
    _UNDER_WAY.pop(task, None)


def _capped(request: Request, provider: Provider, model: ModelInfo, route: RouteInfo) -> Request:
    """``request`` with ``options.max_output_tokens`` capped to ``model.max_output_tokens`` (as
    :attr:`ModelInfo.max_output_tokens` says), with a route note; ``request`` itself when within it."""
    limit, asked = model.max_output_tokens, request.options.max_output_tokens
    if not limit or asked <= limit:
        return request
    note = f"max_output_tokens {asked} capped to {limit}, the most {provider.name}/{model.name} writes"
    if note not in route.notes:  # once, though a session's call retries with less history
        route.notes.append(note)
    return dataclasses.replace(request, options=dataclasses.replace(request.options, max_output_tokens=limit))


def _renamed(error: ProviderError, provider: Provider) -> None:
    """Make ``error``, raised by ``provider``'s plugin under another provider's name (a plugin built on
    another's code: ``ProviderUnavailable("openai", ...)``), name ``provider``: in its message and its
    ``provider`` metadata, which the client gets, as its health already counts it."""
    other = getattr(error, "provider", provider.name)
    if other == provider.name:
        return
    error.provider = provider.name
    error.metadata["provider"] = provider.name
    error.message = f"{provider.name}: {error.message.removeprefix(f'{other}: ')}"
    error.args = (error.message,)
