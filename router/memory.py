"""Giving back to the system the memory a burst of calls freed.

Python frees a call's request and media when the call ends, but glibc's allocator keeps the pages for
later allocations: after a burst of calls with large media the daemon's RSS stayed at its peak (1-1.7 GB
after bursts of 7 MiB images) however long it then idled, and capacity planning had to assume the peak
forever. ``malloc_trim(0)`` hands the free pages back (a burst's 717 MiB fell to 11 MiB in a test). It
walks the allocator's arenas, so the daemon calls it only when no call is under way and some ended since
the last time, from a worker thread (ctypes releases the GIL for it), at most every :data:`TRIM_SECONDS`.
Without glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: How often the daemon looks whether it may give memory back.
TRIM_SECONDS = 10.0


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none. Looked up in what the process has
    loaded (``dlopen(NULL)``), not with ``ctypes.util.find_library``, which runs ``ldconfig -p``: a fork in
    the daemon runs gRPC's fork handlers, which closed its poller's epoll descriptor under it (SIGABRT)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` (``ulimit -v``, ``LimitAS=``) in bytes, or None when unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def status_bytes(key: str) -> int | None:
    """A size line of this process's ``/proc/self/status`` (``VmRSS``, ``VmSize``) in bytes; None where it
    cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def resident_mib() -> int:
    """This process's resident memory (``VmRSS``) in MiB; 0 where /proc does not tell."""
    return (status_bytes("VmRSS") or 0) >> 20


async def give_back_when_idle(calls_ended: Callable[[], int], under_way: Callable[[], int],
                              interval: float = TRIM_SECONDS) -> None:
    """Until cancelled, every ``interval`` seconds: when calls ended since the last look (``calls_ended()``
    counts them all) and none is ``under_way()``, trim the allocator's free memory, logging (DEBUG) the
    resident memory before and after."""
    trim = malloc_trim()
    if trim is None:
        return
    seen = calls_ended()
    while True:
        await asyncio.sleep(interval)
        ended = calls_ended()
        if ended == seen or under_way():
            continue
        seen = ended
        before = resident_mib()
        await asyncio.to_thread(trim)
        log.debug("gave freed memory back to the system: resident %d -> %d MiB", before, resident_mib())
