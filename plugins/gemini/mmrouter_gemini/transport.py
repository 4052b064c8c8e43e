"""How the plugin's calls reach the API: no redirect is followed, no HTML page is taken for an answer.

A provider API does not redirect its calls: following one would send the ``x-goog-api-key`` header
(which aiohttp keeps on a redirect to another host, unlike ``Authorization``) and the media to wherever
the ``Location`` points, and would hide a wrong ``base_url``. A 3xx answer is
:class:`router.errors.ProviderUnavailable` (so a fallback answers), naming the configured base_url
and where the answer pointed (:func:`router.errors.redirect_refused`).

google-genai sends its async calls through aiohttp when it is installed, else through httpx. The
plugin gives the SDK an aiohttp session of its own (:func:`session`) whose middleware
(:func:`check_answer`) refuses every 3xx answer, the upload's chunk requests included (the SDK sends
those without its per-request options), and makes its httpx clients with ``follow_redirects=False``
(:data:`HTTPX_ARGS`), where a 3xx answer becomes an ``APIError`` with that status. The middleware also
refuses a 200 HTML page (a captive portal's or proxy's login page), which the API never answers, so that
the error says what came rather than that the stream ended early or the JSON did not parse. A chunk of a
Files API upload that gets no answer (the connection cut, a timeout) is raised as :class:`UploadCut`, with
the offset it started at: the bytes the API had taken, so that the error says how far the upload got.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urljoin

from router.error_body import bound_aiohttp_error
from router.errors import public_url

#: The SDK's httpx clients' arguments (``HttpOptions.client_args`` / ``async_client_args``).
HTTPX_ARGS: dict[str, Any] = {"follow_redirects": False}
#: What google-genai's own aiohttp session reads at once (4 MiB), kept for ours.
_READ_BUFSIZE = 2**22
#: The header of a resumable upload's chunk request giving the offset of its bytes in the file.
UPLOAD_OFFSET = "X-Goog-Upload-Offset"


class RedirectRefused(Exception):
    """An API call answered with a redirect, which was not followed."""

    def __init__(self, status: int, location: str) -> None:
        """``location``: the absolute URL the answer pointed to ("" without a ``Location``)."""
        super().__init__(f"HTTP {status} redirecting to {public_url(location) or '(no Location)'}")
        self.status = status
        self.location = location


class PageAnswered(Exception):
    """An API call answered HTTP 200 with an HTML page instead of the API's JSON or event stream."""

    def __init__(self, content_type: str, streamed: bool) -> None:
        """``content_type``: the page's media type; ``streamed``: the call asked for an event stream."""
        super().__init__(f"HTTP 200 with a page of type {content_type}")
        self.content_type = content_type
        self.streamed = streamed


class UploadCut(Exception):
    """A chunk of a Files API upload got no answer (the connection was cut, or timed out): the API had
    taken the file's first ``offset`` bytes (the chunks before); the failure is its ``__cause__``."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"the upload was cut after {offset} bytes")
        self.offset = offset


def redirect_of(error: BaseException) -> tuple[int, str] | None:
    """The status and absolute ``Location`` of a redirect that ended a call (refused by our aiohttp
    session, or an SDK ``APIError`` with a 3xx status, as the httpx client answers it), else None."""
    if isinstance(error, RedirectRefused):
        return error.status, error.location
    code = getattr(error, "code", None)
    if not isinstance(code, int) or not 300 <= code < 400:
        return None
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    location = str(headers.get("location") or "") if headers is not None else ""
    return code, urljoin(str(getattr(response, "url", "") or ""), location) if location else ""


async def check_answer(request: Any, handler: Any) -> Any:
    """aiohttp client middleware: a 200 HTML page is closed and raised as :class:`PageAnswered`; a 3xx
    answer is closed unread and raised as :class:`RedirectRefused`, before the session could follow it;
    any other answer but 200 (an error, to google-genai) keeps at most the first
    :data:`router.error_body.ERROR_BODY_LIMIT` bytes of its body (:func:`router.error_body.bound_aiohttp_error`).
    An upload's chunk that gets no answer is raised as :class:`UploadCut`."""
    aiohttp = importlib.import_module("aiohttp")  # loaded: this is its session's middleware
    offset = request.headers.get(UPLOAD_OFFSET)
    try:
        response = await handler(request)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        if offset is None or not offset.isdigit():
            raise
        raise UploadCut(int(offset)) from exc
    status = response.status
    if status == 200:
        if response.content_type == "text/html":
            response.close()
            raise PageAnswered(response.content_type, request.url.query.get("alt") == "sse")
        return response
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        response.close()
        raise RedirectRefused(status, urljoin(str(request.url), location) if location else "")
    await bound_aiohttp_error(response)
    return response


def session() -> Any:
    """An aiohttp session for the SDK that checks every answer (:func:`check_answer`; made in the running
    event loop, the caller closes it), or None when aiohttp is not installed (the SDK then uses httpx)."""
    try:
        aiohttp = importlib.import_module("aiohttp")
    except ImportError:
        return None
    # as google-genai makes its own: no connection limit, the proxy settings of the environment
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=True,
                                 read_bufsize=_READ_BUFSIZE, middlewares=(check_answer,))
