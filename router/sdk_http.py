"""Helpers for provider plugins whose official SDK runs on aiohttp (the SDKs' ``DefaultAioHttpClient``).

The OpenAI and Anthropic SDKs offer an aiohttp transport that costs about half the CPU per call of
their default httpx one. It differs from httpx in three ways a plugin must cover:

- aiohttp has no write timeout: its read timeout starts once the request body is sent, so an
  upload to a server that stopped reading waits for TCP to give up. :func:`until_headers` bounds
  the request as a whole until its response headers.
- Some of aiohttp's own errors reach the plugin unmapped by the SDK (a response header over 8190
  bytes, a malformed status line, a server that does not speak HTTP): :func:`is_aiohttp_error`
  tells them apart, without importing aiohttp.
- aiohttp refuses credentials in the URL beside an ``Authorization`` header:
  :func:`url_has_credentials` says when to keep httpx.

Streamed answers are read as raw responses and parsed with :func:`sse_data` and ``json.loads``: the
SDKs' typed stream events (a pydantic model per event) cost several times the CPU per chunk.

A plugin's settings take :class:`SdkTransportSettings` in (its ``http_client`` key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
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


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event in ``chunks`` (a response body's bytes as they come),
    multi-line data joined by newlines; events without data (comments, ``event:`` alone) are skipped."""
    buffer = b""
    data: list[bytes] = []
    async for piece in chunks:
        buffer += piece
        if b"\n" not in piece and b"\r" not in piece:
            continue
        lines = buffer.splitlines(keepends=True)
        buffer = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:  # the blank line ends an event
                if data:
                    yield b"\n".join(data).decode("utf-8")
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if buffer.strip().startswith(b"data:"):
        value = buffer.strip()[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data).decode("utf-8")


@contextlib.asynccontextmanager
async def until_headers(timeout: float, timed_out: Callable[[], BaseException]) -> AsyncIterator[None]:
    """Bound what runs inside (an SDK call that returns once the response headers are in: sending the
    body included) by ``timeout`` seconds as a whole; past it, raise ``timed_out()`` (the SDK's own
    timeout error, so that it is mapped as the SDK's timeouts are). A cancellation from outside goes
    through unchanged."""
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
        "per call) or httpx (the SDK's own default); a base_url with credentials always uses httpx")

    @field_validator("http_client", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def transport_for(self, base_url: str) -> Transport:
        """The transport the SDK client uses for ``base_url``: ``http_client``, but httpx for a URL with
        credentials, which aiohttp refuses beside the SDK's ``Authorization`` header."""
        if self.http_client == "aiohttp" and url_has_credentials(base_url):
            return "httpx"
        return self.http_client
