"""A watchdog of the event loop: blocking work on it (a plugin's ``time.sleep``, a sync HTTP client, long CPU work
in ``generate`` or a hook) holds every call and health check meanwhile, while each call's own latency shows
nothing of it. A task on the loop beats every :data:`BEAT_SECONDS`; a thread of its own looks at the last beat, and
once the loop has not beaten for :data:`BLOCKED_SECONDS` it logs one warning for that stall, naming the provider
calls under way and where the loop's thread is (the innermost frames of its stack: the plugin's line). The thread
can look while the loop is blocked: a blocked thread sleeping or waiting on I/O holds no GIL, and one computing
hands it over every few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback

from . import invoke

log = logging.getLogger(__name__)

#: How often the loop beats.
BEAT_SECONDS = 0.1
#: A stall this long is logged (once per stall).
BLOCKED_SECONDS = 1.0
#: How many of the innermost frames of the loop's thread the warning shows.
FRAMES_SHOWN = 4


class LoopWatch:
    """Watches the running event loop from :meth:`start` until :meth:`stop` (see the module's docstring)."""

    def __init__(self, blocked_seconds: float = BLOCKED_SECONDS) -> None:
        self.blocked_seconds = blocked_seconds
        self._beat = time.monotonic()
        self._stopped = threading.Event()
        self._loop_thread = threading.get_ident()
        self._beats: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._watch, name="mmrouter-loop-watch", daemon=True)

    def start(self) -> None:
        """Begin beating on the running loop (called on it) and watching from a thread."""
        self._loop_thread = threading.get_ident()
        self._beats = asyncio.get_running_loop().create_task(self._beat_forever())
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and watching."""
        self._stopped.set()
        if self._beats is not None:
            self._beats.cancel()

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)

    def _watch(self) -> None:
        """Look at the last beat every :data:`BEAT_SECONDS`. A look that itself came late (the whole process was
        not scheduled: a starved machine, a stopped process) says nothing of the loop, which was not scheduled
        either: a stall counts from then on, as watched."""
        reported = 0.0  # the beat whose stall was logged
        looked = watched = time.monotonic()  # the last look; since when the looks came in time
        while not self._stopped.wait(BEAT_SECONDS):
            now, beat = time.monotonic(), self._beat
            if now - looked > self.blocked_seconds / 2:
                watched = now
            looked = now
            stalled = now - max(beat, watched)
            if stalled >= self.blocked_seconds and beat != reported:
                reported = beat
                self._report(now - beat)

    def _report(self, stalled: float) -> None:
        """Log the stall: the provider calls under way and the innermost frames of the loop's thread."""
        providers: list[str] = []
        with contextlib.suppress(RuntimeError):  # the loop changed its calls as they were read
            providers = invoke.providers_running(invoke.calls_under_way())
        frame = sys._current_frames().get(self._loop_thread)
        where = "".join(traceback.format_stack(frame)[-FRAMES_SHOWN:]).rstrip() if frame is not None else ""
        log.warning("the event loop has been blocked for %.1f s (provider calls under way: %s): every call and health "
                    "check waits meanwhile; a plugin must not block it (time.sleep, a sync HTTP client, long CPU "
                    "work: run those in a thread). The loop's thread is at:\n%s", stalled,
                    ", ".join(providers) or "none", where)
