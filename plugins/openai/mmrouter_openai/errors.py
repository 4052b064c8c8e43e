"""Turn ``openai`` SDK exceptions into the router's ``Provider*`` errors.

400/422 -> INVALID_ARGUMENT (413 and size refusals such as ``context_length_exceeded``, or llama.cpp's type
``exceed_context_size_error``, -> INPUT_TOO_LARGE, which lets the router try a fallback; a refused
``stream_options`` names the ``stream_usage`` setting), 401/403 -> FAILED_PRECONDITION naming the key
setting, 404 -> NOT_FOUND, 429 -> RESOURCE_EXHAUSTED with the Retry-After (but a spent quota, a 429
``insufficient_quota`` or a 402, -> FAILED_PRECONDITION ``PROVIDER_QUOTA_EXHAUSTED``, without it), 5xx,
connection failures and SDK timeouts -> UNAVAILABLE. An error event inside a stream (or a 200 carrying
an ``error``) is mapped as the HTTP error its ``code`` or ``type`` stands for. A redirect (3xx: the client
never follows one) is UNAVAILABLE, naming where it pointed. Messages never
contain the API key: 401/403 messages are ours (OpenAI's echo part of the
key), and every other upstream message is scrubbed of it; nor the credentials of
a ``base_url`` (``http://user:password@gateway``). An HTTP error names the
provider's request id (``x-request-id``), in the message and as ``provider_request_id``
in the error's metadata, for a support ticket; an HTTP error or an error event names the provider's
``code``, ``type`` and ``param`` (``invalid_image_format``, ``content_filter``...) as ``provider_error_code``,
``provider_error_type`` and ``provider_error_param``, when they are identifiers.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from router import ProviderError, ProviderUnavailable, provider_error_from_status
from router.errors import parse_retry_after, redirect_refused
from router.sdk_http import is_aiohttp_error, until_headers

from .settings import PLUGIN, OpenAISettings

_MAX_MESSAGE = 500


class BadAnswer(Exception):
    """An answer of the wrong shape (no transcript of the format asked for, a chat chunk whose fields
    are not what the API gives); the message says what is wrong. The provider reports it as
    ``ProviderUnavailable`` "bad answer from <model>", so the router tries the fallbacks."""


def scrub(text: str, secret: str) -> str:
    """``text`` without ``secret`` (and shortened to a readable length)."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


def _upstream_message(exc: Any) -> str:
    """The provider's own error text: ``error.message`` of the body, else the SDK's message."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    elif isinstance(body, str) and body.strip():
        return body.strip()
    return str(getattr(exc, "message", "") or exc)


#: OpenAI error codes that refuse a request for its size: another model may take it.
_TOO_LARGE_CODES = frozenset({"context_length_exceeded", "string_above_max_length", "request_too_large"})
#: Error types that do the same: llama.cpp server's, whose ``code`` is the HTTP status (400).
_TOO_LARGE_TYPES = frozenset({"exceed_context_size_error"})


def _too_large(exc: Any) -> bool:
    """Whether the provider's error body refuses the request for its size, by its ``code`` or ``type``."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return False
    code, kind = body.get("code"), body.get("type")
    return (isinstance(code, str) and code in _TOO_LARGE_CODES) or (isinstance(kind, str) and kind in _TOO_LARGE_TYPES)


#: The error code (or type) of OpenAI's 429 for an account whose quota or credit is spent ("You exceeded your
#: current quota, please check your plan and billing details"): no wait mends it.
_QUOTA_CODE = "insufficient_quota"


def _quota_spent(exc: Any) -> bool:
    """Whether the provider's error body says the account's quota is spent, by its ``code`` or ``type``."""
    body = getattr(exc, "body", None)
    return isinstance(body, dict) and _QUOTA_CODE in (body.get("code"), body.get("type"))


#: The HTTP status an error's ``code`` or ``type`` stands for, where an error event inside a stream has no
#: status of its own: OpenAI's (``rate_limit_exceeded`` of type ``requests`` or ``tokens``, ``invalid_api_key``)
#: and the Anthropic-style types some gateways use (``authentication_error``, ``overloaded_error``). vLLM and
#: LiteLLM give the status itself as the code (``400``, ``"429"``).
_STATUS_OF_CODE = {
    "invalid_request_error": 400, "invalid_api_key": 401, "authentication_error": 401, "permission_error": 403,
    "model_not_found": 404, "rate_limit_exceeded": 429, "requests": 429, "tokens": 429, "insufficient_quota": 429,
    "rate_limit_error": 429, "server_error": 500, "overloaded_error": 503,
}


def _event_status(exc: Any) -> int | None:
    """The HTTP status an error without one (an error event) stands for: 400 for a size refusal, its ``code``
    when a number (vLLM's 429, a gateway's "429"), else what its ``code`` or ``type`` names; None when unknown."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return None
    if _too_large(exc):
        return 400
    code, kind = body.get("code"), body.get("type")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    for name in (code, kind):
        if isinstance(name, str) and name in _STATUS_OF_CODE:
            return _STATUS_OF_CODE[name]
    return None


#: Why a body announced as JSON that does not parse (cut short, empty) is refused.
NOT_JSON = "the server answered with a body that is not JSON"


def page_not_answer(expected: str, page: str = "text") -> str:
    """Why an answer that is a page (of ``page``: "text", "type text/html") and not ``expected`` is refused."""
    return (f"the answer is not {expected} but a page of {page} (a proxy's or captive portal's login page, "
            "or a base_url that is not an OpenAI API?)")


def shown_url(url: str) -> str:
    """``url`` with its credentials (``user:password@``), if any, shown as ``***@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    _userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    return parts._replace(netloc=f"***@{host}").geturl()


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` response headers, if given."""
    if headers is None:
        return None
    millis = parse_retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    return parse_retry_after(headers.get("retry-after"))


def _aiohttp_connection_error(exc: BaseException) -> BaseException | None:
    """The aiohttp error behind an SDK timeout error when it is no timeout: the SDK's aiohttp transport
    turns every ``aiohttp.ClientConnectionError`` (connection refused, server disconnected) into a
    connect timeout, which would tell the operator to look at timeouts instead of the server."""
    cause, depth = exc.__cause__, 0
    while cause is not None and depth < 8:
        if is_aiohttp_error(cause) and not isinstance(cause, TimeoutError):
            return cause
        cause, depth = cause.__cause__, depth + 1
    return None


def transport_error(exc: BaseException, provider: str, *, base_url: str, api_key: str) -> ProviderError | None:
    """The router error for an error of the SDK's aiohttp transport that the SDK lets through unmapped
    (a response header over aiohttp's 8190 bytes, a malformed status line or header, a server that is
    not HTTP), or None for any other exception. The httpx transport reports these as connection errors."""
    if not is_aiohttp_error(exc):
        return None
    detail = scrub(f"{type(exc).__name__}: {exc}", api_key)
    return ProviderUnavailable(provider, f"bad HTTP response from {shown_url(base_url)}: {detail} "
                                         "(http_client: httpx accepts longer headers)")


def whole_request_timeout(timeout: float, client: Any, path: str) -> contextlib.AbstractAsyncContextManager[None]:
    """Bound a request to ``path`` of ``client`` (an ``AsyncOpenAI``), its body sent and its response's
    headers received, by ``timeout`` seconds as a whole (:func:`router.sdk_http.until_headers`: the aiohttp
    transport has no write timeout), unless the client retries. Raises the SDK's ``APITimeoutError``, as its own timeouts do (its URL
    is made then only: not on every call)."""

    def timed_out() -> BaseException:
        import httpx2
        import openai

        return openai.APITimeoutError(request=httpx2.Request("POST", f"{client.base_url}{path}"))

    return until_headers(timeout, timed_out, client.max_retries)


def map_error(exc: BaseException, provider: str, *, model: str, base_url: str, api_key: str,
              timeout: float | None = None) -> ProviderError:
    """The router error for an exception raised by the SDK during a call to ``model``."""
    import openai

    shown = shown_url(base_url)
    refused = _aiohttp_connection_error(exc) if isinstance(exc, openai.APITimeoutError) else None
    if isinstance(exc, openai.APITimeoutError) and refused is None:
        after = f" after {timeout:g}s" if timeout else ""
        return ProviderUnavailable(provider, f"request to {model} timed out{after} ({shown})")
    if isinstance(exc, openai.APIConnectionError):
        cause = refused or exc.__cause__ or exc
        detail = scrub(f"{type(cause).__name__}: {cause}", api_key)
        return ProviderUnavailable(provider, f"cannot reach {shown}: {detail}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if 300 <= status < 400:
            return redirect_refused(provider, "the API", base_url, status, exc.response.headers.get("location"),
                                    str(exc.response.request.url))
        message = scrub(_upstream_message(exc), api_key)
        if status == 404:
            message = f"model {model!r} not found at {shown}: {message}"
        else:
            message = f"HTTP {status} from {model}: {message}"
        if status in (400, 422) and "stream_options" in message:  # a compatible server that refuses it
            message += f" (set providers.{provider}.stream_usage: false for a server that refuses stream_options)"
        # a rate limit, or an overload (503) that says when to try again
        retry_after = retry_after_seconds(exc.response.headers) if status == 429 or status >= 500 else None
        return _status_error(exc, provider, status, message, f"HTTP {status}", api_key, retry_after)
    if isinstance(exc, openai.APIError):
        # An error event inside a stream (or a 200 carrying an error): no HTTP status, the provider failed
        # mid-answer; its code or type says which HTTP error it stands for (a compatible server checks
        # the context only once streaming, a gateway rate-limits the stream).
        status = _event_status(exc)
        message = f"{model} failed while answering: {scrub(_upstream_message(exc), api_key)}"
        return _status_error(exc, provider, status, message, "reported in the answer", api_key)
    return ProviderUnavailable(provider, scrub(f"{type(exc).__name__}: {exc}", api_key))


def _status_error(exc: Any, provider: str, status: int | None, message: str, where: str, api_key: str,
                  retry_after: float | None = None) -> ProviderError:
    """The router error for the HTTP status ``status`` (None: unknown, UNAVAILABLE) of ``exc`` with
    ``message``; a refused key gets a message of ours naming the setting (``where`` the refusal was
    seen: "HTTP 401"), as OpenAI's echoes part of the key."""
    if status in (401, 403):
        what = "authentication failed" if status == 401 else "permission denied"
        message = f"{what} ({where}): check {OpenAISettings.refused_key_settings(provider, PLUGIN, api_key)}"
    error = provider_error_from_status(provider, status, message, retry_after=retry_after,
                                       too_large=_too_large(exc), quota=_quota_spent(exc))
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error.with_provider_error_ids(code=body.get("code"), kind=body.get("type"), param=body.get("param"))
    return error.with_provider_request_id(exc)
