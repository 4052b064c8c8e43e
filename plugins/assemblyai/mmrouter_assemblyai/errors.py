"""Turning the assemblyai SDK's exceptions (and failed transcripts) into mmrouter's ``Provider*`` errors."""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from router.errors import (
    TRANSIENT_STATUSES,
    ProviderBadRequest,
    ProviderError,
    ProviderInputTooLarge,
    ProviderTimeout,
    ProviderUnavailable,
    parse_retry_after,
    provider_error_from_status,
    public_url,
    redirect_refused,
)

from .settings import PLUGIN, AssemblyAISettings


def _scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` blanked out (defence in depth: messages should never hold it)."""
    return text.replace(secret, "***") if secret else text


def bad_request(provider: str, message: str) -> ProviderBadRequest:
    """A request the provider called ``provider`` cannot send, found before calling the API."""
    return ProviderBadRequest(provider, message)


#: A failed transcript's error text (lower case) blaming the media or its URL: AssemblyAI's documented
#: texts ("Transcoding failed. File does not appear to contain audio.", "Download error, unable to
#: download ...", "Audio duration is too short.") and the like. It wins over any sign of a transient
#: failure in the same text (a download that timed out is the URL's host's doing).
_MEDIA_FAULT = re.compile(
    r"does not appear to contain|no (spoken )?audio|no speech|transcoding failed|download error"
    r"|unable to (download|access)|too short|too long|too large|too big|exceeds|maximum|unsupported"
    r"|not supported|corrupt|invalid|could not (decode|read|open)|unreadable|not available in this language"
)
#: A failed transcript's error text (lower case) saying the media is over AssemblyAI's limits (its
#: length or size): INPUT_TOO_LARGE, so a fallback with larger limits is tried on the same media.
_TOO_LARGE = re.compile(r"too long|too large|too big|exceeds|maximum")
#: A failed transcript's error text (lower case) blaming AssemblyAI: its documented "Server error,
#: developers have been alerted." (resubmitting it is what AssemblyAI advises) and other clearly transient
#: wordings. Any other text stays the media's fault, as it always was.
_SERVER_FAULT = re.compile(
    r"server error|internal (server )?error|developers have been alerted|timed out|timeout"
    r"|temporar(y|ily)|try again|unavailable|overloaded|capacity"
)


#: How AssemblyAI words its refusal of a request from an account without funds (lower case): HTTP 400 "Your
#: current account balance is negative. Please top up to continue using the API." (its guide to common errors).
_NO_FUNDS = re.compile(r"account balance is negative|top up to continue")


def transcript_failed(provider: str, transcript_id: str | None, error: str | None,
                      api_key: str) -> ProviderError:
    """The error (of the provider called ``provider``) for a transcript that ended with status ``error``,
    carrying AssemblyAI's message.

    AssemblyAI mostly fails a transcript for what it was given (no audio stream, an unsupported,
    unreachable or too short file): INVALID_ARGUMENT, not worth a fallback to another model on the
    same media. An error on its side (a server error, a timeout) is UNAVAILABLE, so the rule's
    fallback is tried; only a text that says so clearly and does not blame the media counts as one
    (see :data:`_SERVER_FAULT`), an unknown text stays INVALID_ARGUMENT. Media over AssemblyAI's limits
    (too long, too large: :data:`_TOO_LARGE`) is INPUT_TOO_LARGE: a fallback with larger limits may take it.
    """
    detail = (error or "no reason given").strip()
    where = f"transcript {transcript_id}" if transcript_id else "transcript"
    message = _scrub(f"transcription failed ({where}): {detail}", api_key)
    lowered = detail.lower()
    if _SERVER_FAULT.search(lowered) and not _MEDIA_FAULT.search(lowered):
        return ProviderUnavailable(provider, f"{message} (an error on AssemblyAI's side)")
    if _TOO_LARGE.search(lowered):
        return ProviderInputTooLarge(provider, message)
    return ProviderBadRequest(provider, message)


class TranscriptTimeout(ProviderTimeout):
    """A transcript still running at AssemblyAI when the call's deadline came: no fallback is tried (not
    retryable), as none would have the time either."""

    retryable = False


def poll_timed_out(provider: str, model: str, transcript_id: str | None, status: str,
                   waited: float) -> TranscriptTimeout:
    """The error (of the provider called ``provider``, transcribing with ``model``) when the call's deadline
    comes before the transcript is done: its id and status in the message and the ErrorInfo metadata
    (``model``, ``transcript_id``, ``transcript_status``)."""
    error = TranscriptTimeout(
        provider,
        f"transcript {transcript_id} ({model}) still {status} after {waited:.1f}s of polling, when the call's "
        "deadline came: the job needs more time; give the call a longer deadline (its client's, and the "
        "daemon's server.max_call_seconds)",
    )
    error.metadata.update(model=model, transcript_id=str(transcript_id), transcript_status=status)
    return error


#: The last HTTP response received in the current task (set by :func:`remember_response`).
_task_response: ContextVar[Any] = ContextVar("mmrouter_assemblyai_response", default=None)


async def remember_response(response: Any) -> None:
    """An httpx ``response`` event hook: remember ``response`` in the calling task's context.

    The SDK's ``AssemblyAIError`` carries only the status, and ``AsyncClient.last_response`` is shared by
    every call on the client, so a concurrent call overwrites it. The hook runs in the task that sent
    the request, so each call sees its own failing response (the SDK raises right after receiving it).
    """
    _task_response.set(response)


def _failing_response(status: int | None) -> Any:
    """This task's last response, when it is the one of ``status`` being mapped; else None."""
    last = _task_response.get()
    return last if last is not None and getattr(last, "status_code", None) == status else None


def _retry_after(status: int) -> float | None:
    """Retry-After of this task's last response, when that response is the one of ``status`` being mapped."""
    last = _failing_response(status)
    return None if last is None else parse_retry_after(last.headers.get("retry-after"))


#: The most characters of an SDK error's text (what failed, and AssemblyAI's reason or the body) quoted.
MAX_DETAIL = 300


def _sdk_detail(exc: BaseException, api_key: str) -> str:
    """An SDK error's text on one line, without ``api_key``: what failed and why, cut to :data:`MAX_DETAIL`.

    For a body that is not JSON the SDK's text is ``"<what failed>: \\nReason: <body>\\nRequest: <repr>"``;
    the request's repr is dropped and the body (a proxy's page, say) quoted with whitespace collapsed.
    """
    text = str(exc)
    what, marker, rest = text.partition("\nReason:")
    if marker:
        reason = rest.rpartition("\nRequest:")[0] if "\nRequest:" in rest else rest
        what = what.strip().rstrip(":")
        text = f"{what}: {reason}" if reason.strip() else what
    text = _scrub(" ".join(text.split()), api_key) or type(exc).__name__  # the key out before the cut
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def map_sdk_error(exc: BaseException, provider: str, api_key: str, base_url: str = "") -> ProviderError:
    """The :class:`ProviderError` of the provider called ``provider`` (whose API is at ``base_url``) for an
    exception raised while calling the assemblyai SDK (in the current task).

    HTTP failures (``AssemblyAIError`` with a ``status_code``) map by status, with one line saying what
    failed and AssemblyAI's reason (or the body, cut short); connection failures and timeouts are
    UNAVAILABLE. A 429 or 5xx keeps the Retry-After of the failing response (see
    :func:`remember_response`). A 402, or the 400 of an account whose balance is negative
    (:data:`_NO_FUNDS`), is ``ProviderQuotaExhausted``: no bad request, and the rule's fallback answers.
    No AssemblyAI call takes a model in its URL, so a 404 is no unknown model: the API is not at
    ``base_url`` (a wrong one, say ending in ``/v2``): UNAVAILABLE, as a 3xx is (the SDK never follows a
    redirect), so the rule's fallback answers while base_url is fixed. The message never holds
    ``api_key``, nor credentials of a URL.
    """
    import assemblyai as aai
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return ProviderUnavailable(provider, "the AssemblyAI API did not answer in time")
    if isinstance(exc, httpx.TransportError):
        return ProviderUnavailable(
            provider, f"cannot reach the AssemblyAI API ({type(exc).__name__}: connection failed)"
        )
    if isinstance(exc, aai.types.AssemblyAIError):
        status = exc.status_code
        detail = _sdk_detail(exc, api_key)
        if status is not None and 300 <= status < 400:
            last = _failing_response(status)
            return redirect_refused(provider, "the AssemblyAI API", base_url, status,
                                    last.headers.get("location") if last is not None else None,
                                    str(last.request.url) if last is not None else "")
        if status == 404:
            return _with_status(ProviderUnavailable(provider, _scrub(
                f"the AssemblyAI API was not found at {public_url(base_url)} (HTTP 404: {detail}): check "
                "base_url (the API's root, such as https://api.assemblyai.com, without /v2)", api_key)), status)
        if status in (401, 403):
            message = (f"authentication failed ({detail}): check "
                       f"{AssemblyAISettings.refused_key_settings(provider, PLUGIN, api_key)}")
        elif status is None:
            message = detail
        else:
            message = f"HTTP {status}: {detail}"
        # A rate limit, or a 503/529 that said when to try again.
        retry_after = _retry_after(status) if status is not None and (status == 429 or status >= 500) else None
        # No status means the SDK failed without an HTTP answer: treat as unavailable.
        return provider_error_from_status(provider, status, _scrub(message, api_key), retry_after=retry_after,
                                          quota=status is not None and bool(_NO_FUNDS.search(detail.lower())))
    return ProviderUnavailable(
        provider, _scrub(f"bad answer from the AssemblyAI API ({type(exc).__name__}): {exc}", api_key)
    )


def _with_status(error: ProviderError, status: int) -> ProviderError:
    """``error`` with the HTTP ``status`` AssemblyAI answered (``ProviderError.http_status``), which
    ``ListProviders`` shows with the last failure, for an error not made by ``provider_error_from_status``."""
    error.http_status = status
    return error


def is_mappable(exc: BaseException) -> bool:
    """True for exceptions :func:`map_sdk_error` turns into provider errors."""
    import assemblyai as aai
    import httpx
    import pydantic

    # ValueError covers malformed JSON and pydantic validation; KeyError a missing field.
    return isinstance(exc, (aai.types.AssemblyAIError, httpx.HTTPError, pydantic.ValidationError, ValueError, KeyError))


def is_transient(exc: BaseException) -> bool:
    """True for an SDK failure that the same request may not meet again: a status of
    :data:`router.errors.TRANSIENT_STATUSES`, or no answer at all (a connection refused, reset or closed, a
    timeout: ``httpx.TransportError``)."""
    import assemblyai as aai
    import httpx

    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, aai.types.AssemblyAIError) and exc.status_code in TRANSIENT_STATUSES


def answer_lost(exc: BaseException) -> bool:
    """True when a request was sent whole but its answer never came (a read timeout, the connection reset or
    closed while waiting for it): AssemblyAI may have carried it out. A connection never made, or a request
    whose body was not all sent, was not."""
    import httpx

    return isinstance(exc, (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError))


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After seconds of the failing response behind ``exc`` (of a status polls are retried on,
    :data:`router.errors.TRANSIENT_STATUSES`, which may say how long to wait), received in the current task;
    None if it gave none."""
    status = getattr(exc, "status_code", None)
    return _retry_after(status) if status in TRANSIENT_STATUSES else None


def poll_failed(exc: BaseException, provider: str, transcript_id: str, api_key: str,
                base_url: str = "") -> ProviderError:
    """The error of the provider called ``provider`` for a failed status poll of ``transcript_id``.

    As :func:`map_sdk_error`, but a 404 is no unknown model: the transcript id is unknown to the account
    (deleted, or made with another key or in another region). That is UNAVAILABLE, so the router may
    transcribe the media elsewhere, and names the transcript.
    """
    import assemblyai as aai

    if isinstance(exc, aai.types.AssemblyAIError) and exc.status_code == 404:
        return _with_status(ProviderUnavailable(provider, _scrub(
            f"AssemblyAI does not know transcript {transcript_id} (HTTP 404: {_sdk_detail(exc, api_key)}): it was "
            "deleted, or belongs to another account or region than the configured api_key and base_url", api_key)),
            404)
    return map_sdk_error(exc, provider, api_key, base_url)


def hide_media_url(error: ProviderError, url: str) -> ProviderError:
    """``error`` with the media ``url`` in its message shown as :func:`router.errors.public_url` shows it
    (without credentials, query or fragment); its query, fragment or password found elsewhere (a
    re-encoded copy) is blanked out too, when long enough to be a secret (``?a=1`` garbles nothing).

    The SDK writes a URL it was given whole ("failed to transcribe url <url>: ..."), and AssemblyAI may
    quote it in a failed transcript's error ("unable to download <url>"); a signed URL's query
    (``X-Amz-Signature=...``) is a credential to the object, and the message goes to the daemon's log
    and the route's attempts."""
    message = error.message.replace(url, public_url(url) or "the media URL")
    parts = urlsplit(url)
    for secret in (parts.query, parts.fragment, parts.password or ""):
        if len(secret) >= 8:
            message = _scrub(message, secret)
    error.message = message
    error.args = (message,)
    return error


def detail(error: ProviderError) -> str:
    """``error``'s message without the ``<provider>: `` it starts with."""
    return error.message.removeprefix(f"{error.provider}: ")


def with_note(error: ProviderError, note: str) -> ProviderError:
    """``error`` with `` (note)`` added to its message."""
    error.message = f"{error.message} ({note})"
    error.args = (error.message,)
    return error
