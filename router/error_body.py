"""What a provider call reads of an upstream's error answer: :data:`ERROR_BODY_LIMIT` bytes at most.

The SDKs read an error answer's body whole before raising (to quote it): a provider URL, or a proxy or
self-hosted server in front of it, answering an error status with a 200 MB body made one call take
about 1.2 GB, and a body that never ends grew until the call's deadline. The cloud plugins hand their
SDK's HTTP client a hook that, for an answer whose status is not 2xx, reads at most
:data:`ERROR_BODY_LIMIT` bytes of its body (decoded), closes the response (its connection is not
reused when the body was longer) and gives the SDK that prefix as the body. The SDK then raises the
error it raises for that status, quoting the body as it always did, or, for a body over the limit,
:func:`over_limit_message`. A 2xx answer costs one status comparison and is not touched: a streamed
or JSON answer is bounded where it is read.

- httpx and its fork httpx2 (the OpenAI and Anthropic SDKs' clients, both transports; AssemblyAI's):
  :func:`httpx_error_hook`, a ``response`` event hook.
- aiohttp (the session the Gemini plugin gives google-genai): :func:`bound_aiohttp_error`, called from
  the plugin's client middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

#: The most bytes of an error answer's body read (64 KiB): a provider's JSON error, or a proxy's error
#: page, is a few KiB at most.
ERROR_BODY_LIMIT = 64 * 1024
#: How many bytes of a body over the limit :func:`over_limit_message` quotes.
_QUOTED = 200
#: What the body of an over-limit answer is said to be once replaced by :func:`over_limit_message`.
_TEXT = "text/plain; charset=utf-8"


async def read_prefix(chunks: AsyncIterator[bytes], limit: int = ERROR_BODY_LIMIT) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of ``chunks`` (a body's pieces as they come), and whether the body went
    on past them; nothing more is read."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def over_limit_message(content_type: str, prefix: bytes) -> str:
    """The error text of an answer whose body went past :data:`ERROR_BODY_LIMIT` (of type ``content_type``,
    beginning with ``prefix``): what came, and its first bytes, whitespace collapsed."""
    start = " ".join(prefix[:_QUOTED].decode("utf-8", "replace").split())
    return (f"the error body ({content_type or 'no Content-Type'}) was over {ERROR_BODY_LIMIT // 1024} KiB "
            f"and was not read past that; it began: {start}")


def httpx_error_hook(httpx: ModuleType) -> Callable[[Any], Awaitable[None]]:
    """An async ``response`` event hook for a client of ``httpx`` (the ``httpx`` or ``httpx2`` module):
    an answer that is not 2xx gets as its body the first :data:`ERROR_BODY_LIMIT` bytes of its own (decoded,
    its ``Content-Encoding`` dropped), or :func:`over_limit_message` as text when it was longer, and
    its stream is closed. Other answers are left as they are."""

    async def bound_error_body(response: Any) -> None:
        """Bound the body of ``response`` when it is an error answer (see :func:`httpx_error_hook`)."""
        if 200 <= response.status_code < 300:
            return
        raw = response.stream
        # A response of our own over the same stream decodes it as the SDK would have (gzip, brotli).
        decoding = httpx.Response(response.status_code, headers=response.headers, stream=raw,
                                  request=response.request)
        try:
            async with contextlib.aclosing(decoding.aiter_bytes()) as chunks:
                body, over = await read_prefix(chunks)
        finally:
            await decoding.aclose()  # a body not read to its end closes the connection
        elapsed = getattr(raw, "elapsed", None)
        if elapsed is not None:  # httpx2 keeps it on the stream it made
            response.elapsed = elapsed
        headers = response.headers
        headers.pop("content-encoding", None)
        if over:
            body = over_limit_message(headers.get("content-type", ""), body).encode()
            headers["content-type"] = _TEXT
        headers["content-length"] = str(len(body))
        response.stream = httpx.ByteStream(body)

    return bound_error_body


async def bound_aiohttp_error(response: Any) -> None:
    """Bound the body of an ``aiohttp.ClientResponse`` whose status is an error (the caller checks it): its
    ``content`` becomes the first :data:`ERROR_BODY_LIMIT` bytes of its own, or when it was longer
    :func:`over_limit_message` (in a JSON error envelope ``{"error": {"code", "message", "status"}}``
    when the body says it is JSON, which ``ClientResponse.json`` parses), and its connection is closed.
    ``read``, ``text`` and ``json`` then answer that body."""
    import aiohttp
    from aiohttp.base_protocol import BaseProtocol

    body, over = await read_prefix(response.content.iter_chunked(2**14))
    if over:
        connection = response.connection
        if connection is not None:  # not ``response.close()``: the body could not be read after it
            connection.close()
        message = over_limit_message(response.headers.get("Content-Type", ""), body)
        if _is_json(response.content_type):
            body = json.dumps({"error": {"code": response.status, "message": message,
                                         "status": response.reason or ""}}).encode()
        else:
            body = message.encode()
    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    content.feed_data(body)
    content.feed_eof()
    response.content = content


#: The media types ``aiohttp.ClientResponse.json`` takes (its own test): ``application/json``,
#: ``application/problem+json``...
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+?\+)?json")


def _is_json(media_type: str) -> bool:
    """Whether ``aiohttp.ClientResponse.json`` parses a body of ``media_type`` (else it raises
    ``ContentTypeError``, and google-genai quotes the body as text)."""
    return _JSON_TYPE.match(media_type) is not None
