"""A tiny HTTP server on loopback for faking provider APIs in tests.

Each fake provider subclasses :class:`FakeUpstream` and implements
:meth:`FakeUpstream.handle`, which gets a :class:`Recorded` request and
answers through the ``reply`` helpers. Every request is recorded in
``upstream.requests`` so tests can assert what the real SDK sent. Failures
to inject are queued with :meth:`FakeUpstream.fail_next`; streams to cut short
(the body ending cleanly mid-answer) with :meth:`FakeUpstream.truncate_next`; error answers with a
huge or endless body with :meth:`FakeUpstream.huge_error_next`, which counts what it could send in
``upstream.huge_bytes_sent``.
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Failure:
    """An error answer to give instead of the next normal one."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    #: Only a request to this path gets the failure (None: the next request, whatever its path).
    path: str | None = None
    #: Seconds between sending the headers and the body.
    body_delay: float = 0.0


@dataclass
class HugeError:
    """An error answer whose body is ``size`` bytes (None: it never ends), made as it is sent: ``head``
    then filler, in writes of ``piece`` bytes (endless: ``pause`` seconds apart)."""

    status: int
    size: int | None
    head: bytes
    content_type: str
    path: str | None
    pause: float
    piece: int


@dataclass
class Truncation:
    """A stream to end early: after ``after`` events the body ends cleanly, as when a proxy closes the
    chunked body properly or (``close``) a server whose body is delimited by connection close dies."""

    after: int
    close: bool = False


class Reply:
    """Writes one HTTP answer for a handler."""

    def __init__(self, handler: BaseHTTPRequestHandler, upstream: FakeUpstream | None = None) -> None:
        self._h = handler
        self._upstream = upstream

    def json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None,
             body_delay: float = 0.0) -> None:
        """Answer with a JSON body."""
        self.raw(json.dumps(payload).encode(), status, "application/json", headers, body_delay)

    def raw(self, body: bytes, status: int = 200, content_type: str = "application/octet-stream",
            headers: dict[str, str] | None = None, body_delay: float = 0.0) -> None:
        """Answer with ``body`` as is (``body_delay`` seconds after the headers)."""
        h = self._h
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if body_delay:
            h.wfile.flush()
            time.sleep(body_delay)
        h.wfile.write(body)

    def huge(self, error: HugeError) -> int:
        """Answer ``error`` (chunked when endless, else with its Content-Length) until it is all sent or
        the client closes the connection; the bytes of body sent. Its send buffer is kept small, so what
        was sent is close to what the client read."""
        h = self._h
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        h.close_connection = True
        h.send_response(error.status)
        h.send_header("Content-Type", error.content_type)
        chunked = error.size is None
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(error.size))
        h.end_headers()
        h.wfile.flush()
        sent, left = 0, error.size
        pieces = itertools.chain([error.head], itertools.repeat(b"x" * error.piece))
        try:
            for piece in pieces:
                if left is not None:
                    if left <= 0:
                        break
                    piece = piece[:left]
                    left -= len(piece)
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
                if self._upstream is not None:
                    self._upstream.huge_sent(len(piece))
                if chunked and error.pause:
                    time.sleep(error.pause)
            h.wfile.flush()
        except OSError:  # the client closed the connection: what it had not read was not sent
            pass
        return sent

    def sse(self, events: Iterable[str | tuple[str, Any]], delay: float = 0.0) -> None:
        """Answer with a Server-Sent Events stream (cut short if the upstream was told to).

        Each item is either a ready ``data`` string, or ``(event_name, payload)``
        where a non-str payload is JSON-encoded; ``event_name`` None omits the event line.
        """
        h = self._h
        cut = self._upstream.take_truncation() if self._upstream is not None else None
        chunked = cut is None or not cut.close
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        h.end_headers()
        for n, item in enumerate(events):
            if cut is not None and n >= cut.after:
                break
            if isinstance(item, tuple):
                name, payload = item
                data = payload if isinstance(payload, str) else json.dumps(payload)
                text = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
            else:
                text = f"data: {item}\n\n"
            chunk = text.encode()
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            h.wfile.flush()
            if delay:
                time.sleep(delay)
        if chunked:
            h.wfile.write(b"0\r\n\r\n")
        else:
            h.close_connection = True  # the body ends with the connection
        h.wfile.flush()


#: The longest a request held by :meth:`FakeUpstream.hold_next` waits for its release.
HOLD_SECONDS = 20.0


def _copies(values: dict[str, Any]) -> dict[str, Any]:
    """Deep copies of ``values``, leaving out those that cannot be copied (a lock, an event)."""
    copies = {}
    for name, value in values.items():
        try:
            copies[name] = copy.deepcopy(value)
        except TypeError:
            continue
    return copies


class FakeUpstream:
    """Base of the fake provider servers. Use as a context manager or call start()/stop()."""

    #: What :meth:`reset` never touches: what serves requests (a subclass adds its own, such as a counter that
    #: must go on counting).
    SERVING: frozenset[str] = frozenset({"_server", "_thread", "_lock", "huge_done", "_as_started"})

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._failures: list[Failure] = []
        self._truncations: list[Truncation] = []
        self._huge: list[HugeError] = []
        self._holds: list[tuple[str | None, threading.Event]] = []
        #: The bytes of huge error bodies (:meth:`huge_error_next`) sent so far.
        self.huge_bytes_sent = 0
        #: Set when a huge error body's answer ended (all sent, or the client closed the connection).
        self.huge_done = threading.Event()
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                rec = Recorded(self.command, url.path, parse_qs(url.query),
                               {k.lower(): v for k, v in self.headers.items()}, body)
                with upstream._lock:
                    upstream.requests.append(rec)
                    failure = next((f for f in upstream._failures if f.path in (None, rec.path)), None)
                    if failure is not None:
                        upstream._failures.remove(failure)
                    huge = next((e for e in upstream._huge if e.path in (None, rec.path)), None)
                    if huge is not None and failure is None:
                        upstream._huge.remove(huge)
                    hold = next((h for h in upstream._holds if h[0] in (None, rec.path)), None)
                    if hold is not None:
                        upstream._holds.remove(hold)
                if hold is not None:
                    hold[1].wait(HOLD_SECONDS)
                reply = Reply(self, upstream)
                if huge is not None and failure is None:
                    try:
                        reply.huge(huge)
                    finally:
                        upstream.huge_done.set()
                    return
                if failure is not None:
                    reply.json(failure.body, failure.status, failure.headers, failure.body_delay)
                    return
                upstream.handle(rec, reply)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, request: Recorded, reply: Reply) -> None:
        """Answer one request. Subclasses implement the provider's endpoints."""
        reply.json({"error": {"message": f"no fake for {request.method} {request.path}"}}, 404)

    def hold_next(self, path: str | None = None) -> threading.Event:
        """Hold the next request (to ``path`` if given) until the event returned is set (or for
        :data:`HOLD_SECONDS`, so a test never hangs), then answer it as usual."""
        release = threading.Event()
        with self._lock:
            self._holds.append((path, release))
        return release

    def fail_next(self, status: int, body: dict, headers: dict[str, str] | None = None, *,
                  path: str | None = None, body_delay: float = 0.0) -> None:
        """Answer the next request (to ``path`` if given) with this error instead of normally, its body
        ``body_delay`` seconds after its headers."""
        with self._lock:
            self._failures.append(Failure(status, body, headers or {}, path, body_delay))

    def huge_error_next(self, status: int, size: int | None, *, head: bytes = b"",
                        content_type: str = "application/json", path: str | None = None,
                        pause: float = 0.001, piece: int = 65536) -> None:
        """Answer the next request (to ``path`` if given) with ``status`` and a body of ``size`` bytes (None:
        one that never ends, chunked, a write of ``piece`` bytes every ``pause`` seconds), ``head`` then
        filler; see :attr:`huge_bytes_sent` and :attr:`huge_done`."""
        with self._lock:
            self._huge.append(HugeError(status, size, head, content_type, path, pause, piece))

    def huge_sent(self, count: int) -> None:
        """Count ``count`` more bytes of a huge error body sent."""
        with self._lock:
            self.huge_bytes_sent += count

    def truncate_next(self, after: int, *, close: bool = False) -> None:
        """End the next SSE stream cleanly after ``after`` events: no error, the body just
        stops (``close``: delimited by connection close instead of a final empty chunk)."""
        with self._lock:
            self._truncations.append(Truncation(after, close))

    def take_truncation(self) -> Truncation | None:
        """The truncation for the stream about to be sent, if one is queued."""
        with self._lock:
            return self._truncations.pop(0) if self._truncations else None

    def start(self) -> FakeUpstream:
        self._as_started = _copies({name: value for name, value in vars(self).items() if name not in self.SERVING})
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def reset(self, keep: Iterable[str] = ()) -> None:
        """Put the fake back as it was started, for a fake that a module's tests share: forget what it recorded
        (``requests``...), the failures and holds queued and whatever a test scripted (``reply_chunks``,
        ``statuses``...), except the attributes named in ``keep`` (and :data:`SERVING`, and those that cannot be
        copied: locks and events)."""
        with self._lock:
            for name, value in self._as_started.items():
                if name not in keep:
                    setattr(self, name, copy.deepcopy(value))
        self.huge_done.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
