"""The bounded worker pool that all CPU work runs on.

CPU work (decoding, OCR, speech recognition) never runs on the event loop:
:class:`WorkerPool` runs it on a fixed number of threads, so at most
``workers`` extractions run at once and the daemon keeps answering other
calls. :class:`Lazy` loads a heavy model once, on first use, thread-safely.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class WorkerPool:
    """A fixed-size thread pool that coroutines await work on."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="mmrouter-local")
            return self._executor

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get(), functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Cancel queued work and let the threads end after their current job. Idempotent.

        Does not wait, so it is safe to call from the event loop.
        """
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

