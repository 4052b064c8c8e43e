"""The daemon's log on stderr, which a reader that stops reading (a stalled log shipper, docker's
blocking log mode, a supervisor that no longer reads the pipe) must not be able to stop the daemon with.

A line is written at once by the thread that logs it, as a plain handler would (so a call's access line is
in the log before its client has the answer), when nothing is queued before it and the write cannot block:
``poll`` says stderr takes at least ``PIPE_BUF`` bytes (or it is a file), and the line is no longer than
that. Otherwise (the reader stalled, a line with a long traceback) the record goes to a bounded queue that a
thread of its own empties, and the following ones after it, in order, until the queue is empty again. When
the queue is full, records are dropped and counted; once writing resumes, one WARNING line says how many.
The filters of the handler (:class:`router.redact.SecretFilter`) run in the logging thread, before anything
is written or queued. At exit (``logging.shutdown``) what is queued is written for up to :data:`FLUSH_SECONDS`;
a writer still stuck then is a daemon thread blocked in ``write(2)``, which holds no lock the exit needs, so
the process ends all the same, with its exit code.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
from logging.handlers import QueueHandler, QueueListener
from typing import IO

#: How many records may wait for the writer; past that they are dropped (and counted). A burst of the
#: daemon's own lines fits many times over; a reader that stopped fills it, and then nothing else grows.
QUEUE_RECORDS = 1000
#: How long the exit waits for the queued records to be written (the reader may never read again).
FLUSH_SECONDS = 2.0
#: The most bytes a write of a line in the logging thread may take: a pipe that ``poll`` says is writable
#: takes that much without blocking (POSIX's PIPE_BUF).
DIRECT_BYTES = select.PIPE_BUF


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
        self._poll = select.poll()
        if self.fd is not None:
            self._poll.register(self.fd, select.POLLOUT)

    def line(self, record: logging.LogRecord) -> bytes:
        """``record`` formatted, a line (a traceback's lines after it), encoded for the stream."""
        try:
            text = self.formatter.format(record) + "\n"
        except Exception as exc:  # a record nothing can format: say so, not kill the writer
            text = f"{record.levelname} {record.name}: {record.msg!r} (the log record cannot be formatted: {exc!r})\n"
        return text.encode(self.encoding, self.errors)

    def handle(self, record: logging.LogRecord) -> None:
        """Write one record, waiting for the stream as long as it takes (the writer thread's way)."""
        self.write(self.line(record))

    def write(self, data: bytes) -> None:
        """Write ``data`` whole; what cannot be written (the reader closed the pipe) is lost."""
        try:
            if self.fd is None:
                self.stream.write(data.decode(self.encoding, self.errors))
                self.stream.flush()
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except (OSError, ValueError):  # the reader closed the pipe, stderr was closed: nowhere to write
            pass

    def takes_now(self, size: int) -> bool:
        """Whether ``size`` bytes can be written at once without waiting for the reader: a stream with no
        descriptor (a test's StringIO), or one ``poll`` says is writable for a write of up to PIPE_BUF."""
        if self.fd is None:
            return True
        if size > DIRECT_BYTES:
            return False
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return True  # a closed stderr: the write fails at once, and is lost


class _Listener(QueueListener):
    """Empties the queue into the writer on a thread of its own, counting down the handler's records
    waiting (:attr:`DroppingQueueHandler.waiting`) as each is written."""

    def __init__(self, records: queue.SimpleQueue, writer: StreamWriter, handler: DroppingQueueHandler) -> None:
        super().__init__(records, writer)
        self.owner = handler

    def handle(self, record: logging.LogRecord) -> None:
        try:
            super().handle(record)
        finally:
            with self.owner.counting:
                self.owner.waiting -= 1


class DroppingQueueHandler(QueueHandler):
    """The root logger's handler. A record is written by the logging thread when nothing waits before it and
    the write cannot block (:meth:`StreamWriter.takes_now`); else it waits in a bounded queue that
    :class:`StreamWriter` empties on a thread of its own. When the queue is full the record is dropped and
    counted; the next record that fits is preceded by one WARNING saying how many lines were dropped.
    :meth:`close` (called by ``logging.shutdown`` at exit) writes what is queued for up to :data:`FLUSH_SECONDS`."""

    def __init__(self, writer: StreamWriter, records: int = QUEUE_RECORDS) -> None:
        super().__init__(queue.SimpleQueue())
        self.writer = writer
        self.records = records
        #: Records queued and not yet written; changed under :attr:`counting`.
        self.waiting = 0
        self.dropped = 0
        self.counting = threading.Lock()
        self.listener: _Listener | None = _Listener(self.queue, writer, self)
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

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` now if that cannot block and nothing waits before it, else queue it, after the
        WARNING of the lines dropped if any were; drop and count it when the queue is full. Called with the
        handler's lock held: one record at a time."""
        try:
            record = self.prepare(record)
            if self.waiting >= self.records:
                self.dropped += 1
                return
            if self.dropped:
                self._write_or_queue(dropped_record(self.dropped))
                self.dropped = 0
            self._write_or_queue(record)
        except Exception:
            self.handleError(record)

    def _write_or_queue(self, record: logging.LogRecord) -> None:
        """Write ``record`` now if the stream takes it at once and nothing waits, else queue it (once the
        writer is stopped, at exit: dropped)."""
        if self.waiting == 0:
            data = self.writer.line(record)
            if self.writer.takes_now(len(data)):
                self.writer.write(data)
                return
        if self.listener is not None:
            self._queue(record)

    def _queue(self, record: logging.LogRecord) -> None:
        with self.counting:
            self.waiting += 1
        self.queue.put_nowait(record)

    def close(self) -> None:
        """Write what is queued (with the count of lines dropped) for up to :data:`FLUSH_SECONDS`, then
        stop the writer; a writer still blocked then (nobody reads stderr) is left to the process's exit."""
        listener, self.listener = self.listener, None
        if listener is not None:
            if self.dropped:
                self._queue(dropped_record(self.dropped))
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
