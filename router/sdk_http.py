"""Helpers for provider plugins whose official SDK runs on aiohttp (the SDKs' ``DefaultAioHttpClient``).

The OpenAI and Anthropic SDKs offer an aiohttp transport that costs about half the CPU per call of
their default httpx one. It differs from httpx in three ways a plugin must cover:

- aiohttp has no write timeout: its read timeout starts once the request body is sent, so an
  upload to a server that stopped reading waits for TCP to give up. :func:`until_headers` bounds
  the request as a whole until its response headers (a client with SDK retries uses httpx).
- Some of aiohttp's own errors reach the plugin unmapped by the SDK (a response header over 8190
  bytes, a malformed status line, a server that does not speak HTTP): :func:`is_aiohttp_error`
  tells them apart, without importing aiohttp.
- aiohttp refuses credentials in the URL beside an ``Authorization`` header:
  :func:`url_has_credentials` says when to keep httpx.

Streamed answers are read as raw responses and parsed with :func:`sse_events` and ``json.loads``: the
SDKs' typed stream events (a pydantic model per event) cost several times the CPU per chunk.

A plugin's settings take :class:`SdkTransportSettings` in (its ``http_client`` key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

Transport = Literal["aiohttp", "httpx"]


def is_aiohttp_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of aiohttp's own exceptions (without importing aiohttp)."""
    return type(exc).__module__.startswith("aiohttp")


def url_has_credentials(url: str) -> bool:
    """Whether ``url`` carries credentials (``https://user:password@host``)."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


class ServerSentEvent(NamedTuple):
    """One server-sent event: its ``event`` field ("" when it has none) and its ``data`` lines joined by
    newlines, as bytes (``json.loads`` takes them, and refuses bad UTF-8 as the ``ValueError`` it raises
    for bad JSON)."""

    event: str
    data: bytes


#: UTF-8's byte order mark, which a stream may begin with (.NET servers write one).
_BOM = b"\xef\xbb\xbf"


class SseParser:
    """Server-sent events from a body fed in pieces as they come (a line may be cut anywhere, a CRLF
    included); events without data (comments, ``event:`` alone, pings with no data) are skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = b""
        self._data: list[bytes] = []
        self._started = False  # a byte order mark may open the stream (the SSE spec drops it)

    def feed(self, piece: bytes) -> list[ServerSentEvent]:
        """The events that ``piece`` completes."""
        self._buffer += piece
        if not self._started:
            if len(self._buffer) < len(_BOM) and _BOM.startswith(self._buffer):
                return []  # the mark may be cut between two pieces
            self._started = True
            self._buffer = self._buffer.removeprefix(_BOM)
            piece = self._buffer
        if b"\n" not in piece and b"\r" not in piece:
            return []
        lines = self._buffer.splitlines(keepends=True)
        # an unfinished line, or one ending in CR (maybe the first half of a CRLF), waits for more
        self._buffer = lines.pop() if not lines[-1].endswith(b"\n") else b""
        return self._lines(lines)

    def end(self) -> list[ServerSentEvent]:
        """The events left when the body ends (its last event may lack the blank line after it)."""
        if not self._started:
            self._buffer = self._buffer.removeprefix(_BOM)
        lines, self._buffer = [*self._buffer.splitlines(), b""], b""
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events = []
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:  # the blank line ends an event
                if self._data:
                    events.append(ServerSentEvent(self._event.decode("utf-8", "replace"), b"\n".join(self._data)))
                    self._data = []
                self._event = b""
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                self._event = value[1:] if value.startswith(b" ") else value
        return events


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
    """The server-sent events of ``chunks``, a response body's bytes as they come (see :class:`SseParser`)."""
    parser = SseParser()
    async for piece in chunks:
        for event in parser.feed(piece):
            yield event
    for event in parser.end():
        yield event


#: How long a streamed body may stay open after its end marker (OpenAI's ``data: [DONE]``, Anthropic's
#: ``message_stop``), in seconds. Its end usually comes with the marker, and reading it lets the pooled
#: connection be reused; but a proxy may hold a chunked body open, and the whole answer is in by then:
#: past this wait the caller closes the response (its connection is not reused) and the call succeeds,
#: instead of failing at the read timeout.
END_OF_BODY_WAIT = 1.0


async def read_rest(events: AsyncIterator[object], timeout: float) -> None:
    """Read what is left of a body after its stream's end marker, for at most :data:`END_OF_BODY_WAIT`
    seconds (``timeout`` when shorter); a read error or the wait running out is ignored: the answer is
    complete. A cancellation goes through."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(min(END_OF_BODY_WAIT, timeout)):
            async for _ in events:
                pass


@contextlib.asynccontextmanager
async def until_headers(timeout: float, timed_out: Callable[[], BaseException],
                        max_retries: int = 0) -> AsyncIterator[None]:
    """Bound what runs inside (an SDK call that returns once the response headers are in: sending the
    body included) by ``timeout`` seconds as a whole; past it, raise ``timed_out()`` (the SDK's own
    timeout error, so that it is mapped as the SDK's timeouts are). A cancellation from outside goes
    through unchanged.

    Not bounded when the SDK retries (``max_retries`` > 0): its retry loop, with its waits for a
    Retry-After, runs inside, and a bound would report a retry as a timeout. Such a client uses httpx
    (see :meth:`SdkTransportSettings.transport_for`), whose write timeout bounds each attempt."""
    if max_retries > 0:
        yield
        return
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise timed_out() from None


class SdkTransportSettings(BaseModel):
    """The ``http_client`` setting of a plugin whose SDK offers both transports (mixed into its
    :class:`router.ProviderSettings` subclass)."""

    http_client: Transport = Field(
        "aiohttp", description="the SDK's HTTP transport: aiohttp (DefaultAioHttpClient, about half the CPU "
        "per call) or httpx (the SDK's own default); a base_url with credentials, or max_retries over 0, "
        "always uses httpx")
    max_retries: int = Field(0, ge=0, description="SDK retries; the router does fallbacks")

    @field_validator("http_client", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def transport_for(self, base_url: str) -> Transport:
        """The transport the SDK client uses for ``base_url``: ``http_client``, but httpx for a URL with
        credentials, which aiohttp refuses beside the SDK's ``Authorization`` header, and when the SDK
        retries: aiohttp has no write timeout, and a bound on the whole call (:func:`until_headers`)
        would cut the SDK's retries."""
        if self.http_client == "aiohttp" and (url_has_credentials(base_url) or self.max_retries > 0):
            return "httpx"
        return self.http_client
