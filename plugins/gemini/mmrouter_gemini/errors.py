"""Turning google-genai SDK failures into mmrouter provider errors, never leaking the key."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

from router.errors import (
    TRANSIENT_STATUSES,
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    page_answered,
    parse_retry_after,
    provider_error_from_status,
    redirect_refused,
)

from .rest import InvalidModelName, NotUtf8
from .settings import PLUGIN, GeminiSettings
from .transport import PageAnswered, RedirectRefused, redirect_of

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
#: How Gemini words its refusal of every request from a region it does not serve (400 FAILED_PRECONDITION):
#: "User location is not supported for the API use.", "Gemini API free tier is not available in your
#: country. Please enable billing ...".
_REGION = re.compile(r"location is not supported|not available in your (country|region)", re.IGNORECASE)


def redact(text: str, api_key: str) -> str:
    """``text`` with the API key, if it appears, replaced."""
    return text.replace(api_key, "[redacted]") if api_key else text


def _details(error: Any) -> list[dict]:
    body = getattr(error, "details", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        found = body.get("details") if isinstance(body, dict) else None
        if isinstance(found, list):
            return [d for d in found if isinstance(d, dict)]
    return []


def _retry_after(error: Any) -> float | None:
    """Seconds to wait from a Retry-After header, else from a google.rpc.RetryInfo detail."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        seconds = parse_retry_after(headers.get("retry-after"))
        if seconds is not None:
            return seconds
    for detail in _details(error):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match[1])
    return None


def _is_bad_key(error: Any) -> bool:
    """Gemini answers an invalid key with HTTP 400 and ErrorInfo reason API_KEY_INVALID."""
    return any(d.get("reason") == "API_KEY_INVALID" for d in _details(error))


def _error_code(error: Any) -> object:
    """Google's own name of the failure: the reason of its ``google.rpc.ErrorInfo`` detail
    (``API_KEY_INVALID``), else its ``status`` (``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``)."""
    for detail in _details(error):
        if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo") and detail.get("reason"):
            return detail["reason"]
    return getattr(error, "status", None)


def from_api_error(error: Any, provider: str, api_key: str) -> ProviderError:
    """Map a ``google.genai.errors.APIError`` to the error of the provider called ``provider`` for its
    HTTP status: a 402 (``RESOURCE_EXHAUSTED`` "Your prepayment credits are depleted", which Gemini answered
    as a 429 before) is ``ProviderQuotaExhausted``, no rate limit. The error names Google's reason or
    status as ``provider_error_code`` (:meth:`router.errors.ProviderError.with_provider_error_ids`)."""
    return _api_error(error, provider, api_key).with_provider_error_ids(code=_error_code(error))


def _api_error(error: Any, provider: str, api_key: str) -> ProviderError:
    """The :class:`ProviderError` of :func:`from_api_error`, without Google's code."""
    status = int(getattr(error, "code", 0) or 0) or None
    text = redact(str(getattr(error, "message", "") or getattr(error, "status", "") or "no message"), api_key)
    if _is_bad_key(error):
        status = 401
    if status == 400 and _REGION.search(text):
        # not this request's fault: every request from this deployment fails, so another provider must answer
        unserved = ProviderUnavailable(provider, f"Gemini does not serve this deployment's region (HTTP 400: {text}): "
                                                 "the API is not offered where the daemon runs, or only with billing; "
                                                 "enable billing on the key's project, or let another provider answer")
        unserved.http_status = status
        return unserved
    if status in (401, 403):
        message = (f"authentication failed (HTTP {status}: {text}): check "
                   f"{GeminiSettings.refused_key_settings(provider, PLUGIN, api_key)}")
    elif status is None:
        message = f"request failed: {text}"
    else:
        message = f"HTTP {status} {getattr(error, 'status', '') or ''}: {text}".replace("  ", " ")
    return provider_error_from_status(provider, status, message, retry_after=_retry_after(error))


def _http_modules() -> list[Any]:
    """The HTTP stacks google-genai may use (httpx, or its fork httpx2), those installed."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def _aiohttp() -> Any:
    """The aiohttp module if installed (google-genai then uses it for async calls), else None."""
    try:
        return importlib.import_module("aiohttp")
    except ImportError:
        return None


def map_exception(error: Exception, provider: str, api_key: str, base_url: str = "") -> ProviderError | None:
    """The error of the provider called ``provider`` for an exception the SDK (or its HTTP stack) raised,
    or None if not ours; a redirect (never followed) or an HTML page names ``base_url``, where the API was
    called."""
    from google.genai import errors as genai_errors

    if isinstance(error, ProviderError):
        return error
    if isinstance(error, InvalidModelName):
        return ProviderBadRequest(provider, str(error))
    if isinstance(error, NotUtf8):
        return ProviderUnavailable(provider, f"bad answer from the Gemini API: {error}")
    if isinstance(error, (RedirectRefused, genai_errors.APIError)):
        redirect = redirect_of(error)
        if redirect is not None:
            return redirect_refused(provider, "the Gemini API", base_url, *redirect)
    if isinstance(error, PageAnswered):
        expected = "an event stream" if error.streamed else "the API's JSON"
        return page_answered(provider, "the Gemini API", base_url, error.content_type, expected)
    if isinstance(error, genai_errors.APIError):
        return from_api_error(error, provider, api_key)
    if isinstance(error, genai_errors.UnknownApiResponseError):
        return ProviderUnavailable(provider, f"unreadable answer: {redact(str(error), api_key)}")
    for http in _http_modules():
        if isinstance(error, http.TimeoutException):
            return ProviderUnavailable(provider, f"timed out waiting for the Gemini API ({type(error).__name__})")
        if isinstance(error, http.TransportError):
            detail = redact(str(error), api_key) or type(error).__name__
            return ProviderUnavailable(provider, f"could not reach the Gemini API: {detail}")
    aiohttp = _aiohttp()
    if isinstance(error, TimeoutError) or (aiohttp is not None and isinstance(error, aiohttp.ServerTimeoutError)):
        return ProviderUnavailable(provider, f"timed out waiting for the Gemini API ({type(error).__name__})")
    if aiohttp is not None and isinstance(error, aiohttp.ClientConnectorError):  # its text shows an SSLContext repr
        why = error.strerror or type(error.os_error).__name__
        return ProviderUnavailable(provider, f"could not reach the Gemini API: cannot connect to {error.host}:"
                                             f"{error.port} ({why})")
    if aiohttp is not None and isinstance(error, aiohttp.ClientError):  # google-genai uses aiohttp when installed
        detail = redact(str(error), api_key) or type(error).__name__
        return ProviderUnavailable(provider, f"could not reach the Gemini API: {detail}")
    if isinstance(error, (ConnectionError, TimeoutError)):
        return ProviderUnavailable(provider, f"could not reach the Gemini API: {type(error).__name__}")
    if isinstance(error, json.JSONDecodeError):  # the SDK parses a whole (not streamed) reply itself
        return ProviderUnavailable(provider, f"bad answer from the Gemini API: not JSON ({error.msg})")
    if isinstance(error, ValueError) and "upload" in str(error).lower():
        # The SDK's resumable upload raises ValueError when the upload does not finalize.
        return ProviderUnavailable(provider, f"file upload failed: {redact(str(error), api_key)}")
    return None


def is_transient(error: BaseException) -> bool:
    """True for an SDK failure that the same request may not meet again: an ``APIError`` with one of
    :data:`router.errors.TRANSIENT_STATUSES`, or no answer at all (a connection refused, reset or closed, a
    timeout: the transport errors of httpx, httpx2 or aiohttp, ``ConnectionError``, ``TimeoutError``)."""
    from google.genai import errors as genai_errors

    if isinstance(error, genai_errors.APIError):
        return error.code in TRANSIENT_STATUSES
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if any(isinstance(error, http.TransportError) for http in _http_modules()):  # timeouts are TransportErrors
        return True
    aiohttp = _aiohttp()
    return aiohttp is not None and isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def retry_after(error: BaseException) -> float | None:
    """The seconds a failing 429 or 503 asked to wait (its Retry-After header, or a google.rpc.RetryInfo
    detail), or None."""
    return _retry_after(error) if getattr(error, "code", None) in (429, 503) else None


def describe(error: BaseException, api_key: str = "") -> str:
    """A short reason for a failed request, for a log line: the HTTP status and message of an ``APIError``,
    else the exception's type and text; the key, if it appears, redacted."""
    code = getattr(error, "code", None)
    if isinstance(code, int) and hasattr(error, "message"):
        text = f"HTTP {code} {getattr(error, 'status', '') or ''}: {getattr(error, 'message', '') or 'no message'}"
        return redact(text.replace("  ", " "), api_key)
    detail = str(error)
    return redact(f"{type(error).__name__}: {detail}" if detail else type(error).__name__, api_key)
