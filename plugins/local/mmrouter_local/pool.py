"""The bounded worker pool that all CPU work runs on.

CPU work (decoding, OCR, speech recognition) never runs on the event loop:
:class:`WorkerPool` runs it on a fixed number of threads, so at most
``workers`` extractions run at once and the daemon keeps answering other
calls.

A job keeps running on its thread when the coroutine awaiting it is cancelled (the call was
cancelled or passed its deadline), so each job gets a cancel flag: the pool sets it then, and
long work calls :func:`raise_if_cancelled` between its steps to stop early and free what it
holds (such as the one speech decoder).

Jobs marked with :func:`one_at_a_time` (those using the one speech decoder) run one after another, and one
waiting for its turn waits on the event loop, not on a worker: a long transcription holds one worker, and
the others keep reading PDFs and images.

A job that reads a document page by page hands each page over as it is read (:meth:`WorkerPool.stream`):
still one job, on one worker, stopped by the same cancel flag.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])

#: The attribute :func:`one_at_a_time` sets on a job function: its ``needed`` check.
_NEEDED = "_mmrouter_one_at_a_time"

#: The running job's cancel flag, per worker thread.
_current = threading.local()


class JobCancelled(Exception):
    """Raised in a job by :func:`raise_if_cancelled` once nobody awaits its result any more."""


def raise_if_cancelled() -> None:
    """In a job run by :meth:`WorkerPool.run`: raise :class:`JobCancelled` if the coroutine awaiting
    the job was cancelled. Call it between the steps of long work; outside a job it does nothing."""
    flag: threading.Event | None = getattr(_current, "cancel", None)
    if flag is not None and flag.is_set():
        raise JobCancelled("the call waiting for this job was cancelled")


def one_at_a_time(needed: Callable[..., bool]) -> Callable[[F], F]:
    """Mark a job function that uses a resource only one job may use at a time (the speech decoder).

    :meth:`WorkerPool.run` runs such jobs one after another, in the order they came; one waiting for its
    turn waits on the event loop, holding no worker, so other jobs run meanwhile. ``needed`` takes the
    job's arguments and says whether this call uses the resource at all; it runs on a worker, only when
    the job would have to wait: a job that does not (a video without sound needs no decoder) runs at once.
    """

    def mark(fn: F) -> F:
        setattr(fn, _NEEDED, needed)
        return fn

    return mark


class WorkerPool:
    """A fixed-size thread pool that coroutines await work on."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: How many jobs stopped early because the coroutine awaiting them was cancelled.
        self.cancelled_jobs = 0
        self._running: set[threading.Event] = set()  # the cancel flags of the jobs running now
        #: The turn of the :func:`one_at_a_time` jobs, and the event loop it is for (a lock serves one loop).
        self._turn: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        #: How many :func:`one_at_a_time` jobs wait for their turn now (holding no worker).
        self.waiting_for_turn = 0

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="mmrouter-local")
            return self._executor

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker thread and await its result; a :func:`one_at_a_time`
        job first waits for its turn, on the event loop.

        If the awaiting coroutine is cancelled, the job's cancel flag is set: a job not started yet never
        runs, and a running one stops at its next :func:`raise_if_cancelled`.
        """
        needed: Callable[..., bool] | None = getattr(fn, _NEEDED, None)
        if needed is None:
            return await self._submit(fn, *args, **kwargs)
        turn = self._turn_lock()
        if turn.locked() and not await self._submit(needed, *args, **kwargs):
            return await self._submit(fn, *args, **kwargs)  # it does not use what the turn guards
        self.waiting_for_turn += 1
        try:
            await turn.acquire()
        finally:
            self.waiting_for_turn -= 1
        try:
            return await self._submit(fn, *args, **kwargs)
        finally:
            turn.release()

    async def stream(self, fn: Callable[..., Iterable[T]], *args: object) -> AsyncIterator[T]:
        """Run the generator function ``fn(*args)`` as one job (as :meth:`run` does) and yield its items on
        the event loop as they come, in order, then raise what the job raised.

        Closing or cancelling the iteration before its end cancels the job: it stops at its next
        :func:`raise_if_cancelled` (between pages), and the items it had made are dropped.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()  # unbounded: the items (a page's text) are small
        end = object()

        @functools.wraps(fn)  # keeps its one_at_a_time mark
        def produce(*job_args: object) -> None:
            for item in fn(*job_args):
                loop.call_soon_threadsafe(items.put_nowait, item)

        job = asyncio.ensure_future(self.run(produce, *args))
        # runs after the items' puts: the worker scheduled them before its result
        job.add_done_callback(lambda _: items.put_nowait(end))
        try:
            while (item := await items.get()) is not end:
                yield item
            job.result()
        finally:
            if not job.done():
                job.cancel()  # sets the job's cancel flag (see _submit)
            elif not job.cancelled():
                job.exception()  # retrieved: a job failing after its caller left is not logged as unseen

    def _turn_lock(self) -> asyncio.Lock:
        """The lock of the :func:`one_at_a_time` jobs' turn on the running event loop."""
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn[0] is not loop:
            self._turn = (loop, asyncio.Lock())
        return self._turn[1]

    async def _submit(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker thread, with a cancel flag, and await its result."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        try:
            future = loop.run_in_executor(self._get(), functools.partial(self._job, cancel, fn, *args, **kwargs))
        except RuntimeError:  # a worker could not start (no memory or address space for its stack): the job
            cancel.set()  # stays queued in the executor, and must not run when a later call starts a worker
            raise
        try:
            return await future
        except asyncio.CancelledError:
            cancel.set()
            raise

    def _job(self, cancel: threading.Event, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one job on this worker thread with ``cancel`` as its cancel flag."""
        _current.cancel = cancel
        with self._lock:
            self._running.add(cancel)
        try:
            raise_if_cancelled()  # cancelled before it started (or its worker failed to start)
            return fn(*args, **kwargs)
        except JobCancelled:
            with self._lock:
                self.cancelled_jobs += 1
            raise
        finally:
            _current.cancel = None
            with self._lock:
                self._running.discard(cancel)

    def close(self) -> None:
        """Cancel queued work, and running jobs at their next :func:`raise_if_cancelled`. Idempotent.

        Does not wait, so it is safe to call from the event loop.
        """
        with self._lock:
            executor, self._executor = self._executor, None
            running = list(self._running)
        for cancel in running:  # running jobs stop at their next check, so the process can exit
            cancel.set()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

