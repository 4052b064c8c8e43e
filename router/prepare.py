"""Each provider's :meth:`~router.Provider.prepare` (its SDK's import), run once, off the event loop.

A plugin imports its SDK lazily, so that the daemon starts quickly and never loads what it does not
use. Imported on the event loop at the first call, an SDK held every call of the daemon, and its health
checks, for 1-4 s (``import anthropic`` took 3.7 s on a loaded 2-core host), and the time showed as the
provider's latency. The router runs ``prepare`` in a thread of its own before a provider's first call
instead: the other calls go on meanwhile (the import thread and the event loop share the GIL, which
changes hands every few milliseconds), and the waiting calls' attempts are timed from its end.

A ``prepare`` that never ends (a plugin's bug: an import that deadlocks, network I/O) must not take
more than its own provider down: a call waits for it at most :data:`WAIT_SECONDS`, and keeps
:data:`FALLBACK_RESERVE_SECONDS` of what its deadline leaves for its fallbacks (half, when under a second is
left), then fails that attempt (UNAVAILABLE, so the fallbacks are tried; the first such attempt logs a
warning with the stack of its thread); once a call has waited for it in vain after it ran
:data:`SERIAL_WAIT_SECONDS`, the provider's later calls fail at once while it runs. The prepares run one
after another, but one that has run :data:`SERIAL_WAIT_SECONDS`, or that a call waited for in vain, is
passed; and the threads are daemon threads, which never hold up the daemon's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass

from .errors import ProviderUnavailable
from .outcome import RouteInfo
from .provider import Provider
from .types import CallContext

log = logging.getLogger(__name__)

#: Each provider instance's ``prepare`` under way or done (a reload's new instances prepare again: a quick
#: no-op once the modules are imported).
_PREPARED: weakref.WeakKeyDictionary[Provider, asyncio.Future[Queued]] = weakref.WeakKeyDictionary()
#: The shortest wait for a provider's ``prepare`` a call's route notes (a provider with nothing to import
#: is prepared in well under a millisecond: no note).
NOTED_WAIT_MS = 100.0
#: The longest a call waits for its provider's ``prepare`` (an SDK's import takes 1-4 s on a loaded host).
WAIT_SECONDS = 30.0
#: What a call's deadline keeps for its fallbacks when it waits for ``prepare``.
FALLBACK_RESERVE_SECONDS = 0.5
#: The prepares run one after another: two threads importing overlapping packages (aiohttp, pydantic) at
#: once could see each other's modules half made. One still running after this long is taken to hang,
#: and the next ones go on beside it.
SERIAL_WAIT_SECONDS = 5.0
_ONE_AT_A_TIME = threading.Lock()
#: The provider whose ``prepare`` holds :data:`_ONE_AT_A_TIME`, and when it began (``time.monotonic()``).
_running: tuple[Provider, float] | None = None
#: The providers whose ``prepare`` a call waited for in vain: the other prepares no longer wait for it.
_PASSED: weakref.WeakSet[Provider] = weakref.WeakSet()
#: Those a call waited for in vain after they had run :data:`SERIAL_WAIT_SECONDS`: while it runs, their calls
#: fail at once.
_OVERDUE: weakref.WeakSet[Provider] = weakref.WeakSet()
#: Each provider's ``prepare`` thread, and when it began (``time.monotonic()``): for the warning of a call that gives up.
_THREADS: weakref.WeakKeyDictionary[Provider, tuple[threading.Thread, float]] = weakref.WeakKeyDictionary()
#: The providers whose ``prepare`` a call gave up waiting for, warned of already (once each).
_WARNED: weakref.WeakSet[Provider] = weakref.WeakSet()
#: The prepares that ended lately: (provider name, when it ended, a ``time.monotonic()``), to say which ones a
#: prepare queued behind.
_ENDED: deque[tuple[str, float]] = deque(maxlen=64)


@dataclass(frozen=True)
class Queued:
    """How a provider's ``prepare`` waited for its turn (:func:`_take_turn`): from ``since`` to ``until``
    (``time.monotonic()``), behind the prepares of ``behind`` (provider names; none: it did not wait)."""

    since: float
    until: float
    behind: tuple[str, ...] = ()


async def prepared(provider: Provider, route: RouteInfo, ctx: CallContext) -> None:
    """Return once ``provider.prepare()`` has run (started by the first call to come here, in a thread
    of its own); a call that waited for it :data:`NOTED_WAIT_MS` or more says so in ``route``'s notes.
    A ``prepare`` that raised is logged, and the calls go on (the provider fails them its own way).

    Raises :class:`~router.errors.ProviderUnavailable` when ``prepare`` has not ended after
    :data:`WAIT_SECONDS`, or by what the call's deadline leaves less :data:`FALLBACK_RESERVE_SECONDS` (half of
    it, when under a second is left); it goes on running, for the next calls."""
    try:
        future = _PREPARED.get(provider)
    except TypeError:  # a provider class that is not hashable: nothing to remember it by
        return
    if future is None:
        future = _start(provider)
        _PREPARED[provider] = future
    if future.done():
        return
    if provider in _OVERDUE:
        raise ProviderUnavailable(provider.name, "its SDK is still loading: prepare() has not ended, and an "
                                                 "earlier attempt waited for it in vain (does it hang? see the "
                                                 "daemon's log)")
    started, since = time.perf_counter(), time.monotonic()
    limit = WAIT_SECONDS
    if (left := ctx.time_remaining()) is not None:
        limit = min(limit, max(left - FALLBACK_RESERVE_SECONDS, left / 2))
    try:
        # shielded: a cancelled or timed-out caller leaves it running for the next
        queued = await asyncio.wait_for(asyncio.shield(future), limit)
    except TimeoutError:
        running = _running
        if running is not None and running[0] is provider:  # its own prepare (another's may just be long)
            _PASSED.add(provider)
            if time.monotonic() - running[1] >= SERIAL_WAIT_SECONDS:  # longer than an import takes: it hangs
                _OVERDUE.add(provider)
        hangs = "it" if running is None or running[0] is provider else f"the prepare of {running[0].name}"
        _warn_given_up(provider, hangs)
        raise ProviderUnavailable(provider.name, f"its SDK is still loading: prepare() has not ended after "
                                                 f"{time.perf_counter() - started:.1f} s (does {hangs} hang? see "
                                                 "the daemon's log); the call did not wait longer") from None
    waited_ms = (time.perf_counter() - started) * 1000
    if waited_ms >= NOTED_WAIT_MS:
        route.notes.append(_waited_note(provider, waited_ms, queued, since))


def _warn_given_up(provider: Provider, hangs: str) -> None:
    """Log, once per provider, that a call gave up waiting for its ``prepare`` (``hangs``: what may hang, "it" or
    the prepare of the one it queues behind): how long it has run, and where its thread is."""
    if provider in _WARNED or provider not in _THREADS:
        return
    _WARNED.add(provider)
    thread, began = _THREADS[provider]
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    where = "".join(traceback.format_stack(frame)).rstrip() if frame is not None else "  (it has ended meanwhile)"
    log.warning("provider %s: a call gave up waiting for its prepare(), begun %.1f s ago and not ended (does %s "
                "hang?); its thread %s is at:\n%s", provider.name, time.monotonic() - began, hangs, thread.name, where)


def _waited_note(provider: Provider, waited_ms: float, queued: Queued, since: float) -> str:
    """The route note of a call that waited ``waited_ms`` (from ``since``, a ``time.monotonic()``) for
    ``provider``'s prepare: what for, its own SDK, or mostly the prepares it queued behind (named)."""
    note = (f"waited {waited_ms:.0f} ms for {provider.name} to load its SDK (its first call since the daemon "
            "started or made it anew on a reload)")
    queued_ms = (queued.until - max(queued.since, since)) * 1000
    if not queued.behind or queued_ms < NOTED_WAIT_MS:
        return note
    return (f"{note}: {queued_ms:.0f} ms of it queued behind the prepare of {', '.join(queued.behind)} (the "
            f"providers' prepares run one at a time), {max(0.0, waited_ms - queued_ms):.0f} ms for its own")


def _start(provider: Provider) -> asyncio.Future[Queued]:
    """Run ``provider.prepare()`` in a daemon thread of its own; the future is done when it has ended, with how
    it queued for its turn."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Queued] = loop.create_future()

    def done(queued: Queued) -> None:
        if not future.done():
            future.set_result(queued)

    def run() -> None:
        global _running
        since = time.monotonic()
        took_turn = _take_turn(provider)
        queued = Queued(since, time.monotonic(), _ran_since(since, provider))
        if took_turn:
            _running = (provider, time.monotonic())
            try:
                _prepare(provider)
            finally:
                _ENDED.append((provider.name, time.monotonic()))  # before the next one takes its turn
                _running = None
                _ONE_AT_A_TIME.release()
        else:
            _prepare(provider)
            _ENDED.append((provider.name, time.monotonic()))
        _PASSED.discard(provider)
        _OVERDUE.discard(provider)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the daemon stopped)
            loop.call_soon_threadsafe(done, queued)

    thread = threading.Thread(target=run, name=f"mmrouter-prepare-{provider.name}", daemon=True)
    _THREADS[provider] = (thread, time.monotonic())
    thread.start()
    return future


def _ran_since(since: float, provider: Provider) -> tuple[str, ...]:
    """The providers other than ``provider`` whose prepare ended after ``since`` (a ``time.monotonic()``),
    or runs still (one gone beside: it hangs), in order, once each."""
    names = [name for name, ended in list(_ENDED) if ended > since]
    running = _running
    if running is not None and running[0] is not provider:
        names.append(running[0].name)
    return tuple(dict.fromkeys(name for name in names if name != provider.name))


def _take_turn(provider: Provider) -> bool:
    """Wait for the prepares before ``provider``'s to end, and take the turn (True); or, once the one running
    has run :data:`SERIAL_WAIT_SECONDS` or a call waited for it in vain, go beside it (False,
    with a warning). Each prepare is timed from its own start, not from when the waiting began."""
    while not _ONE_AT_A_TIME.acquire(timeout=0.1):
        running = _running
        if running is not None and (running[0] in _PASSED or time.monotonic() - running[1] >= SERIAL_WAIT_SECONDS):
            log.warning("provider %s: the prepare of %s has run %.0f s (does it hang?); preparing beside it",
                        provider.name, running[0].name, time.monotonic() - running[1])
            return False
    return True


def _prepare(provider: Provider) -> None:
    """``provider.prepare()``, in its thread; whatever it raises is logged, never raised."""
    started = time.perf_counter()
    try:
        provider.prepare()
    except BaseException:
        log.exception("provider %s: preparing its calls (prepare) failed; its calls go on without", provider.name)
        return
    log.debug("provider %s prepared in %.0f ms", provider.name, (time.perf_counter() - started) * 1000)
