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

With ``max_retries`` over 0 the SDK retries a failed request itself (a 429, a 5xx, a lost connection), waiting
for the answer's Retry-After or its own backoff: :func:`retries_within` and the client's
:func:`response_hooks` keep those retries within the call's deadline, so that the router can still fall back.

Streamed answers are read as raw responses and parsed with :func:`sse_events` and ``json.loads``: the
SDKs' typed stream events (a pydantic model per event) cost several times the CPU per chunk.

A plugin's settings take :class:`SdkTransportSettings` in (its ``http_client`` key).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from .error_body import httpx_error_hook
from .errors import parse_retry_after
from .invoke import DEADLINE_MARGIN_SECONDS

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
    (see :meth:`SdkTransportSettings.transport_for`), whose write timeout bounds each attempt, and
    :func:`retries_within` keeps its retries within the call's deadline."""
    if max_retries > 0:
        yield
        return
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise timed_out() from None


#: The openai and anthropic SDKs' backoff before a retry when the answer gave no Retry-After (their
#: ``_constants``): ``INITIAL_RETRY_DELAY`` seconds, doubled for each retry already taken, at most
#: ``MAX_RETRY_DELAY``; the SDK then takes up to a quarter off at random (jitter).
SDK_INITIAL_RETRY_DELAY = 0.5
SDK_MAX_RETRY_DELAY = 8.0

#: The latest ``time.monotonic()`` at which an SDK retry of the call under way may begin (set by
#: :func:`retries_within`; None: no limit), read by :func:`late_retry_hook`.
_RETRY_BY: ContextVar[float | None] = ContextVar("mmrouter_sdk_retry_by", default=None)
#: What :func:`retries_within` gives a call with no deadline, or whose client does not retry.
_NO_LIMIT = contextlib.nullcontext()


def retries_within(deadline: float | None, max_retries: int) -> contextlib.AbstractContextManager[None]:
    """Keep the SDK retries of the call run inside (by a client made with :func:`response_hooks`) within
    the call's ``deadline`` (``CallContext.deadline``, a ``time.monotonic()``): a retry whose wait (the
    answer's Retry-After, else the SDK's backoff) would end within ``DEADLINE_MARGIN_SECONDS`` of the
    deadline, or after it, is not waited for. The SDK raises the error of that last answer at once (a 429
    as a rate limit, with its Retry-After; a 5xx as unavailable), and the router falls back with the time
    left, and records what the provider said. Without a deadline, or for a client that does not retry
    (``max_retries`` 0), nothing is done.

    Enter it in the task that makes the SDK call, around the call only (it sets a context variable)."""
    if not max_retries or deadline is None:
        return _NO_LIMIT
    return _retries_by(deadline - DEADLINE_MARGIN_SECONDS)


@contextlib.contextmanager
def _retries_by(retry_by: float) -> Iterator[None]:
    """Let SDK retries begin until ``retry_by`` (a ``time.monotonic()``) in what runs inside."""
    token = _RETRY_BY.set(retry_by)
    try:
        yield
    finally:
        _RETRY_BY.reset(token)


def sdk_retry_wait(headers: Any, retries_taken: int) -> float:
    """How long the openai or anthropic SDK waits before it retries an answer with ``headers`` after
    ``retries_taken`` retries: the answer's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP
    date) when it is over 0, else the SDK's backoff at its longest (before jitter)."""
    delay = _server_delay(headers)
    if delay is not None and delay > 0:
        return delay
    return min(SDK_INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 64), SDK_MAX_RETRY_DELAY)


def _server_delay(headers: Any) -> float | None:
    """The delay an answer's headers ask for, as the SDKs read it: ``retry-after-ms`` first (a number of
    milliseconds), else ``Retry-After``; None when neither is readable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            delay = float(millis) / 1000
        except ValueError:
            pass
        else:
            return None if math.isnan(delay) else delay
    return parse_retry_after(headers.get("retry-after"))


def late_retry_hook() -> Callable[[Any], Awaitable[None]]:
    """A ``response`` event hook for the httpx client of an SDK that retries (``max_retries`` > 0): an
    error answer (status 400 or over) of a call inside :func:`retries_within` whose retry would begin
    too late gets ``x-should-retry: false``, the header by which a server tells the openai and anthropic
    SDKs not to retry. The SDK then raises the error it raises for the answer of its last attempt. The
    hook changes nothing else, and neither the SDK nor its retry loop is patched."""

    async def no_late_retry(response: Any) -> None:
        """Forbid the retry of ``response`` when it would begin past the call's limit."""
        if response.status_code < 400:
            return
        retry_by = _RETRY_BY.get()
        if retry_by is None:
            return
        try:
            retries_taken = int(response.request.headers.get("x-stainless-retry-count", 0))
        except ValueError:
            retries_taken = 0
        if time.monotonic() + sdk_retry_wait(response.headers, retries_taken) >= retry_by:
            response.headers["x-should-retry"] = "false"

    return no_late_retry


def response_hooks(httpx: ModuleType, max_retries: int) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """The ``event_hooks`` of an SDK's HTTP client (of ``httpx``, the ``httpx`` or ``httpx2`` module):
    :func:`router.error_body.httpx_error_hook` (an error answer's body is read up to
    ``ERROR_BODY_LIMIT``), and, when the SDK retries (``max_retries`` > 0), :func:`late_retry_hook`."""
    hooks = [httpx_error_hook(httpx)]
    if max_retries > 0:
        hooks.append(late_retry_hook())
    return {"response": hooks}


class SdkTransportSettings(BaseModel):
    """The ``http_client`` setting of a plugin whose SDK offers both transports (mixed into its
    :class:`router.ProviderSettings` subclass)."""

    http_client: Transport = Field(
        "aiohttp", description="the SDK's HTTP transport: aiohttp (DefaultAioHttpClient, about half the CPU "
        "per call) or httpx (the SDK's own default); a base_url with credentials, or max_retries over 0, "
        "always uses httpx")
    max_retries: int = Field(
        0, ge=0, description="the SDK's retries of a failed request (429, 5xx, lost connection), after the "
        "answer's Retry-After or a backoff, within the call's deadline: a retry that would wait until within "
        f"{DEADLINE_MARGIN_SECONDS:g} s of it is not made, and the router falls back; default 0, the router "
        "does fallbacks")

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
