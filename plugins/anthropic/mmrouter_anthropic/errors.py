"""Turning the anthropic SDK's exceptions into mmrouter's ``Provider*`` errors.

An HTTP error names Anthropic's request id (the ``request-id`` header), in the message and as
``provider_request_id`` in the error's metadata, for a support ticket; an HTTP error or an ``error`` event
names Anthropic's ``error.type`` (``invalid_request_error``, ``overloaded_error``) as ``provider_error_type``
and its ``error.details.error_code`` (``image_dimensions_too_large``), if any, as ``provider_error_code``.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from router.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    parse_retry_after,
    provider_error_from_status,
    public_url,
    redirect_refused,
)
from router.sdk_http import is_aiohttp_error

from .settings import PLUGIN, AnthropicSettings, key_setting_hint

#: HTTP status for each Anthropic error type, for errors that arrive inside a 200 stream.
_STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def key_hint(provider: str) -> str:
    """Where ``provider``'s key comes from, named in authentication errors."""
    return f"check {key_setting_hint(provider)}"


def bad_request(provider: str, message: str) -> ProviderBadRequest:
    """A request the provider called ``provider`` cannot send, found before calling the API."""
    return ProviderBadRequest(provider, message)


def _scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` blanked out (defence in depth: messages should never hold it)."""
    return text.replace(secret, "***") if secret else text


#: The most characters of an error body that is not Anthropic's JSON envelope quoted in a message.
MAX_BODY_QUOTE = 300


def _error_body(exc: Any, api_key: str) -> tuple[str, str]:
    """(error type, error message) from an SDK status error's body, either possibly empty, without
    ``api_key``. A body that is not Anthropic's error envelope (a proxy's HTML page, other JSON) gives
    its text, whitespace collapsed and cut to :data:`MAX_BODY_QUOTE` characters, as the message."""
    body = getattr(exc, "body", None)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), _scrub(str(err.get("message") or ""), api_key)
    text = _scrub(" ".join(str(body).split()), api_key) if body else ""  # the key out before the cut
    return "", text if len(text) <= MAX_BODY_QUOTE else text[:MAX_BODY_QUOTE - 3] + "..."


def _error_code(exc: Any) -> object:
    """``error.details.error_code`` of an SDK status error's body (the anthropic SDK's ``error_code``), or None."""
    body = getattr(exc, "body", None)
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return details.get("error_code") if isinstance(details, dict) else None


def map_sdk_error(exc: BaseException, provider: str, api_key: str) -> ProviderError:
    """The :class:`ProviderError` of the provider called ``provider`` for an exception raised by the
    anthropic SDK.

    Status errors map by HTTP status (or, for an ``error`` event inside a stream, whose
    HTTP status is 200, by the error's type); a request refused for its size (413, "prompt is too
    long", over the PDF page or image limits) is ``ProviderInputTooLarge``, so the router tries a
    fallback; a credit balance too low (402 ``billing_error``) is ``ProviderQuotaExhausted``
    (FAILED_PRECONDITION: no outage, and no wait mends it; the fallbacks run); connection failures and timeouts are
    UNAVAILABLE. The message never contains ``api_key``.
    """
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderUnavailable(provider, "the Anthropic API did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        bad = _bad_response(exc)
        if bad:
            return ProviderUnavailable(provider, _scrub(f"bad HTTP response from the Anthropic API: {bad}", api_key))
        return ProviderUnavailable(provider, f"cannot reach the Anthropic API{_where(exc)} (connection failed)")
    if isinstance(exc, anthropic.APIStatusError):
        if 300 <= exc.status_code < 400:
            url = str(exc.response.request.url)
            return redirect_refused(provider, "the Anthropic API", api_root(url), exc.status_code,
                                    exc.response.headers.get("location"), url)
        err_type, err_message = _error_body(exc, api_key)
        status = exc.status_code
        if status < 400:
            status = _STATUS_BY_TYPE.get(err_type, 500)
        detail = err_message or err_type
        if status in (401, 403):
            message = (f"authentication failed ({detail or f'HTTP {status}'}): "
                       f"check {AnthropicSettings.refused_key_settings(provider, PLUGIN, api_key)}")
        elif status == 529 or err_type == "overloaded_error":
            message = f"overloaded ({detail or f'HTTP {status}'})"
        else:
            message = f"HTTP {status}: {detail}" if detail else f"HTTP {status} (no error body)"
        retry_after = None
        if exc.status_code == 429 or exc.status_code >= 500:  # a rate limit, or an overload (529) that says when
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        error = provider_error_from_status(
            provider, status, _scrub(message, api_key), retry_after=retry_after,
            too_large=err_type == "request_too_large",
        )
        error.with_provider_error_ids(code=_error_code(exc), kind=err_type)
        return error.with_provider_request_id(exc)
    if isinstance(exc, transport_errors()):
        if isinstance(exc, transport_errors("TimeoutException")):  # a body that stalled past the read timeout
            return ProviderUnavailable(provider, "the Anthropic API did not answer in time (its answer stalled)")
        return ProviderUnavailable(provider, f"the connection to the Anthropic API failed or its reply could not "
                                             f"be read ({type(exc).__name__})")
    return ProviderUnavailable(provider, _scrub(f"bad answer from the Anthropic API: {exc}", api_key))


#: The path the plugin calls under the configured base_url.
MESSAGES_PATH = "/v1/messages"


def api_root(request_url: Any) -> str:
    """The base_url a call to ``request_url`` (a Messages API URL) went to, without credentials or query."""
    return public_url(str(request_url)).removesuffix(MESSAGES_PATH)


def _where(exc: BaseException) -> str:
    """`` at <scheme>://<host>[:port]``, the server a failed request went to (no credentials, no path), or ""."""
    try:
        parts = urlsplit(str(exc.request.url))  # type: ignore[attr-defined]
        host, port = parts.hostname, parts.port
    except (AttributeError, RuntimeError, ValueError):  # no request kept, or an unreadable URL
        return ""
    if not host:
        return ""
    shown = f"[{host}]" if ":" in host else host
    return f" at {parts.scheme}://{shown}" + (f":{port}" if port else "")


def _bad_response(exc: BaseException) -> str:
    """What was wrong with the reply, when the SDK's aiohttp transport reports a reply it could not parse
    (a header over aiohttp's 8190 bytes, a server that does not speak HTTP) as a connection error; else ""."""
    cause = exc.__cause__
    if cause is None or not is_aiohttp_error(cause):
        return ""
    import aiohttp

    if not isinstance(cause, aiohttp.ClientResponseError):
        return ""
    too_long, inner, depth = False, cause.__cause__ or cause.__context__, 0
    while inner is not None and depth < 4:  # aiohttp's parser error is a cause or two below
        too_long = too_long or isinstance(inner, aiohttp.http_exceptions.LineTooLong)
        inner, depth = inner.__cause__ or inner.__context__, depth + 1
    return " ".join(cause.message.split())[:200] + (" (http_client: httpx accepts longer headers)" if too_long else "")


def transport_errors(kind: str = "RequestError") -> tuple[type[BaseException], ...]:
    """The HTTP library's request errors: network errors, and a body that cannot be decoded (bad gzip);
    the SDK does not wrap them while a stream is read. ``kind`` names a subclass to take instead
    (``"TimeoutException"``: its timeouts)."""
    found: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(getattr(module, kind))
    return tuple(found)


def is_mappable(exc: BaseException) -> bool:
    """True for exceptions :func:`map_sdk_error` turns into provider errors."""
    import anthropic

    return isinstance(exc, (anthropic.AnthropicError, *transport_errors()))
