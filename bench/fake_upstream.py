"""A cheap fake OpenAI upstream: raw asyncio HTTP/1.1 with canned answers (never the bottleneck).

``POST /v1/chat/completions`` answers with a canned chat completion, or, when the body asks for
``"stream": true``, with canned SSE chunks ending with a usage chunk and ``[DONE]``. The number of
content chunks is the request's ``max_completion_tokens`` (or ``max_tokens``), 1 when absent, so one
fake serves both the unary and the 50-chunk streaming benchmark. ``--delay S`` waits S seconds
before answering (the slow upstream). ``GET /stats`` returns connection counters as JSON (open,
peak open, accepted, requests); ``POST /stats/reset`` resets peak/accepted/requests.

Run: ``python bench/fake_upstream.py --port 0 --ready-file F [--delay 1.0]`` (writes the port to F).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from pathlib import Path

_COUNT = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d+)')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
MAX_CHUNKS = 10_000


def _chunk(content: str | None, finish: str | None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_USAGE_CHUNK = b"data: " + json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o",
    "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}, separators=(",", ":")).encode() + b"\n\n"


def _response(status: str, ctype: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + ctype +
            b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + body)


_sse_cache: dict[int, bytes] = {}


def sse_answer(chunks: int) -> bytes:
    cached = _sse_cache.get(chunks)
    if cached is None:
        first = _chunk("", None).replace(b'"delta":{"content":""}', b'"delta":{"role":"assistant","content":""}')
        parts = [first] + [_chunk(f"tok{i} ", None) for i in range(chunks)] + [_chunk(None, "stop"), _USAGE_CHUNK,
                                                                            b"data: [DONE]\n\n"]
        cached = _response("200 OK", b"text/event-stream", b"".join(parts))
        if len(_sse_cache) < 64:
            _sse_cache[chunks] = cached
    return cached


_JSON_ANSWER = _response("200 OK", b"application/json", json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok0 "}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}, separators=(",", ":")).encode())
_NOT_FOUND = _response("404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')


class Stats:
    def __init__(self) -> None:
        self.open = self.peak = self.accepted = self.requests = 0

    def as_json(self) -> bytes:
        return json.dumps({"open": self.open, "peak": self.peak, "accepted": self.accepted,
                           "requests": self.requests}).encode()


class Upstream(asyncio.Protocol):
    def __init__(self, stats: Stats, delay: float) -> None:
        self.stats, self.delay = stats, delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        s = self.stats
        s.open += 1
        s.accepted += 1
        s.peak = max(s.peak, s.open)

    def connection_lost(self, exc) -> None:
        self.stats.open -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:  # bounded: each pass consumes one complete request or stops
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"content-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i)
                length = int(lower[i + 15:j if j >= 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.handle(head.split(b" ", 2), body)

    def handle(self, request_line: list[bytes], body: bytes) -> None:
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else b""
        self.stats.requests += 1
        if path.endswith(b"/chat/completions") and method == b"POST":
            if _STREAM.search(body):
                m = _COUNT.search(body)
                answer = sse_answer(min(int(m.group(1)), MAX_CHUNKS) if m else 1)
            else:
                answer = _JSON_ANSWER
            if self.delay > 0:
                asyncio.get_running_loop().call_later(self.delay, self._send, answer)
            else:
                self._send(answer)
        elif path == b"/stats":
            self._send(_response("200 OK", b"application/json", self.stats.as_json()))
        elif path == b"/stats/reset":
            s = self.stats
            s.peak, s.accepted, s.requests = s.open, s.open, 0
            self._send(_response("200 OK", b"application/json", self.stats.as_json()))
        else:
            self._send(_NOT_FOUND)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def main(port: int, ready_file: Path | None, delay: float) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: Upstream(stats, delay), "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    if ready_file is not None:
        ready_file.write_text(str(bound))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.ready_file, args.delay))
