"""A tiny HTTP server on loopback for faking provider APIs in tests.

Each fake provider subclasses :class:`FakeUpstream` and implements
:meth:`FakeUpstream.handle`, which gets a :class:`Recorded` request and
answers through the ``reply`` helpers. Every request is recorded in
``upstream.requests`` so tests can assert what the real SDK sent. Failures
to inject are queued with :meth:`FakeUpstream.fail_next`; streams to cut short
(the body ending cleanly mid-answer) with :meth:`FakeUpstream.truncate_next`.
"""

from __future__ import annotations

import json
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


class FakeUpstream:
    """Base of the fake provider servers. Use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._failures: list[Failure] = []
        self._truncations: list[Truncation] = []
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
                reply = Reply(self, upstream)
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

    def fail_next(self, status: int, body: dict, headers: dict[str, str] | None = None, *,
                  path: str | None = None, body_delay: float = 0.0) -> None:
        """Answer the next request (to ``path`` if given) with this error instead of normally, its body
        ``body_delay`` seconds after its headers."""
        with self._lock:
            self._failures.append(Failure(status, body, headers or {}, path, body_delay))

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
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
