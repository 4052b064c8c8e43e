"""Each provider's :meth:`~router.Provider.prepare` (its SDK's import), run once, off the event loop.

A plugin imports its SDK lazily, so that the daemon starts quickly and never loads what it does not
use. Imported on the event loop at the first call, an SDK held every call of the daemon, and its health
checks, for 1-4 s (``import anthropic`` took 3.7 s on a loaded 2-core host), and the time showed as the
provider's latency. The router runs ``prepare`` in a thread of its own before a provider's first call
instead: the other calls go on meanwhile (the import thread and the event loop share the GIL, which
changes hands every few milliseconds), and the waiting calls' attempts are timed from its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from .outcome import RouteInfo
from .provider import Provider

log = logging.getLogger(__name__)

#: Each provider instance's ``prepare`` under way or done (a reload's new instances prepare again: a quick
#: no-op once the modules are imported).
_PREPARED: weakref.WeakKeyDictionary[Provider, asyncio.Future[None]] = weakref.WeakKeyDictionary()
#: The shortest wait for a provider's ``prepare`` a call's route notes (a provider with nothing to import
#: is prepared in well under a millisecond: no note).
NOTED_WAIT_MS = 100.0
#: One thread for every provider's ``prepare``, one after the other: two threads importing overlapping
#: packages (aiohttp, pydantic) at once could take Python's module locks in opposite orders.
_EXECUTOR: list[ThreadPoolExecutor] = []


async def prepared(provider: Provider, route: RouteInfo) -> None:
    """Return once ``provider.prepare()`` has run (started by the first call to come here, in the
    router's prepare thread); a call that waited for it :data:`NOTED_WAIT_MS` or more says so in ``route``'s
    notes. A ``prepare``
    that raised is logged, and the calls go on (the provider fails them its own way)."""
    try:
        future = _PREPARED.get(provider)
    except TypeError:  # a provider class that is not hashable: nothing to remember it by
        return
    if future is None:
        if not _EXECUTOR:
            _EXECUTOR.append(ThreadPoolExecutor(1, thread_name_prefix="mmrouter-prepare"))
        future = asyncio.get_running_loop().run_in_executor(_EXECUTOR[0], _prepare, provider)
        _PREPARED[provider] = future
    if future.done():
        return
    started = time.perf_counter()
    await asyncio.shield(future)  # a cancelled caller leaves it running for the next
    waited_ms = (time.perf_counter() - started) * 1000
    if waited_ms >= NOTED_WAIT_MS:
        route.notes.append(f"waited {waited_ms:.0f} ms for {provider.name} to load its SDK (its first call since "
                           "the daemon started)")


def _prepare(provider: Provider) -> None:
    """``provider.prepare()``, in the prepare thread; whatever it raises is logged, never raised."""
    started = time.perf_counter()
    try:
        provider.prepare()
    except BaseException:
        log.exception("provider %s: preparing its calls (prepare) failed; its calls go on without", provider.name)
        return
    log.debug("provider %s prepared in %.0f ms", provider.name, (time.perf_counter() - started) * 1000)
