"""The daemon's log, written by a thread of its own: a log reader that stops reading (a stalled log
shipper, docker's blocking log mode, a supervisor that no longer reads the pipe) must not stop the daemon.

Every record is handed to a bounded queue (:class:`DroppingQueueHandler`, on the root logger) and written
to stderr by a listener thread. While the writer keeps up, the caller waits for its line to be written (a
few microseconds), so the log is as it was: a call's access line is there before its client has the
answer. A write that does not end within :data:`WAIT_SECONDS` (the reader stalled) ends the waits until the
writer has caught up: the event loop goes on, records queue, and when the queue is full they are dropped
and counted; once writing resumes one WARNING line says how many. The filters of the root handler
(:class:`router.redact.SecretFilter`) run in the calling thread, before a record is queued; the formatter
runs in the listener, once per record. At exit (``logging.shutdown``, which runs at interpreter exit) what
is queued is written for up to :data:`FLUSH_SECONDS`; a writer still stuck then is a daemon thread blocked
in ``write(2)``, which holds no lock the exit needs, so the process ends all the same, with its exit code.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from logging.handlers import QueueHandler, QueueListener
from typing import IO

#: How many records may wait for the writer; past that they are dropped (and counted). A burst of the
#: daemon's own lines fits many times over; a reader that stopped fills it, and then nothing else grows.
QUEUE_RECORDS = 1000
#: How long a caller waits for its record to be written, while the writer keeps up (it takes microseconds).
WAIT_SECONDS = 0.05
#: How long the exit waits for the queued records to be written (the reader may never read again).
FLUSH_SECONDS = 2.0


class StreamWriter:
    """Writes formatted records to a stream from the listener thread, with ``os.write`` on its file
    descriptor when it has one: a write blocked on a stalled pipe then holds no lock of the stream's
    (the interpreter's exit flushes ``sys.stderr``, and would wait forever for a lock held by it).
    Not a :class:`logging.Handler`, whose lock ``logging.shutdown`` takes, for the same reason."""

    def __init__(self, stream: IO[str], formatter: logging.Formatter) -> None:
        self.stream = stream
        self.formatter = formatter
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.errors = getattr(stream, "errors", None) or "backslashreplace"
        try:
            stream.flush()  # what was printed before (a start-up message) comes first
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a test's StringIO
            self.fd = None

    def handle(self, record: logging.LogRecord) -> None:
        """Write one record, a line (a traceback's lines after it); a line that cannot be written is lost."""
        try:
            text = self.formatter.format(record) + "\n"
        except Exception as exc:  # a record nothing can format: say so, not kill the writer
            text = f"{record.levelname} {record.name}: {record.msg!r} (the log record cannot be formatted: {exc!r})\n"
        try:
            if self.fd is None:
                self.stream.write(text)
                self.stream.flush()
                return
            data = memoryview(text.encode(self.encoding, self.errors))
            while data:
                data = data[os.write(self.fd, data):]
        except (OSError, ValueError):  # the reader closed the pipe, stderr was closed: nowhere to write
            pass


class _Listener(QueueListener):
    """Empties the queue into the writer on a thread of its own. Each item is a record and, when its caller
    waits for it to be written, the lock to release once it is (see :meth:`DroppingQueueHandler.enqueue`)."""

    def __init__(self, records: queue.SimpleQueue, writer: StreamWriter) -> None:
        super().__init__(records, writer)
        #: Whether the writer keeps up: false from a wait that passed (the reader stalled) until the queue
        #: is empty again, meanwhile callers do not wait.
        self.keeping_up = True
        self.ident: int | None = None

    def start(self) -> None:
        super().start()
        self.ident = self._thread.ident if self._thread is not None else None

    def handle(self, item: tuple[logging.LogRecord, threading.Lock | None]) -> None:
        record, written = item
        try:
            super().handle(record)
        finally:
            if written is not None:
                written.release()
        if not self.keeping_up and self.queue.empty():
            self.keeping_up = True


class DroppingQueueHandler(QueueHandler):
    """The root logger's handler: hands each record to a bounded queue that :class:`StreamWriter` empties
    on a thread of its own. While the writer keeps up, the caller waits for its record to be written (up
    to :data:`WAIT_SECONDS`), so that a line logged before a call's answer is in the log when its client has
    the answer; once a wait passes (the reader stalled), nothing waits until the queue is empty again.
    When the queue is full the record is dropped and counted; the next record that fits is preceded by
    one WARNING saying how many lines were dropped. :meth:`close` (called by ``logging.shutdown`` at exit)
    writes what is queued for up to :data:`FLUSH_SECONDS`."""

    def __init__(self, writer: StreamWriter, records: int = QUEUE_RECORDS) -> None:
        super().__init__(queue.SimpleQueue())
        self.records = records
        self.dropped = 0
        self._counting = threading.Lock()  # the count is taken only when records are dropped
        self.listener: _Listener | None = _Listener(self.queue, writer)
        self.listener.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record itself, its message made of its arguments now (they may be mutable objects that the
        caller changes before the writer formats them); not copied, not formatted. The :class:`SecretFilter`
        has done so already; this is for the records logged before it is installed."""
        if record.args:
            try:
                record.msg = record.getMessage()
            except Exception:  # arguments that do not fit the format: written as they are, not raised
                record.msg = f"{record.msg!r} {record.args!r} (the log call's arguments do not fit its format)"
            record.args = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record`` and wait for it to be written while the writer keeps up; drop and count it
        when the queue is full."""
        if (self.dropped and not self._report_dropped()) or self.queue.qsize() >= self.records:
            self._drop()
            return
        listener = self.listener
        if listener is None or not listener.keeping_up or listener.ident == threading.get_ident():
            self.queue.put_nowait((record, None))
            return
        written = threading.Lock()
        written.acquire()
        self.queue.put_nowait((record, written))
        if not written.acquire(timeout=WAIT_SECONDS):
            listener.keeping_up = False

    def _drop(self) -> None:
        with self._counting:
            self.dropped += 1

    def _report_dropped(self) -> bool:
        """Queue the WARNING that says how many lines were dropped, if it fits (with a record after it)."""
        with self._counting:
            if self.dropped and self.queue.qsize() + 1 >= self.records:
                return False
            if self.dropped:
                self.queue.put_nowait((dropped_record(self.dropped), None))
                self.dropped = 0
            return True

    def close(self) -> None:
        """Write what is queued (with the count of lines dropped) for up to :data:`FLUSH_SECONDS`, then
        stop the writer; a writer still blocked then (nobody reads stderr) is left to the process's exit."""
        listener, self.listener = self.listener, None
        if listener is not None:
            with self._counting:
                if self.dropped:
                    self.queue.put_nowait((dropped_record(self.dropped), None))
                    self.dropped = 0
            thread = listener._thread
            listener.enqueue_sentinel()
            if thread is not None:
                thread.join(FLUSH_SECONDS)
        super().close()


def dropped_record(count: int) -> logging.LogRecord:
    """The WARNING that says ``count`` log lines were dropped."""
    return logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                             f"{count} log line(s) dropped: stderr was not being read fast enough (or at all)",
                             None, None)


def log_to(stream: IO[str], formatter: logging.Formatter, level: str | int) -> DroppingQueueHandler:
    """Make the root logger's only handler a :class:`DroppingQueueHandler` writing to ``stream`` with
    ``formatter``, at ``level`` (the handlers it had are closed, as ``basicConfig(force=True)`` does)."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    handler = DroppingQueueHandler(StreamWriter(stream, formatter))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
