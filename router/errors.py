"""Every error the router raises, each with its gRPC code and ErrorInfo reason.

::

    RouterError                      INTERNAL             INTERNAL
    ├── InvalidRequest               INVALID_ARGUMENT     INVALID_REQUEST   (+ BadRequest field violations)
    │   ├── PayloadTooLarge          INVALID_ARGUMENT     PAYLOAD_TOO_LARGE
    │   └── MimeMismatch             INVALID_ARGUMENT     MIME_MISMATCH
    ├── UnknownMedia                 NOT_FOUND            MEDIA_NOT_FOUND
    ├── UnknownSession               NOT_FOUND            SESSION_NOT_FOUND
    ├── UnknownTarget                NOT_FOUND            UNKNOWN_TARGET    (override names no provider/model)
    ├── OverrideNotAllowed           PERMISSION_DENIED    OVERRIDE_NOT_ALLOWED
    ├── NoRoute                      FAILED_PRECONDITION  NO_ROUTE
    │   ├── DiarizationUnavailable   FAILED_PRECONDITION  DIARIZATION_UNAVAILABLE
    │   └── InputTooLarge            INVALID_ARGUMENT     INPUT_TOO_LARGE   (every target ruled out for the
    │                                                                     input's size, before any call)
    ├── ConfigError                  INVALID_ARGUMENT     INVALID_CONFIG
    ├── StorageFull                  RESOURCE_EXHAUSTED   STORAGE_FULL      (the data directory's disk is full)
    ├── StorageBusy                  UNAVAILABLE          STORAGE_BUSY      (the sessions database stayed locked; + RetryInfo)
    ├── DataDirGone                  UNAVAILABLE          DATA_DIR_GONE     (the data directory was removed or replaced)
    ├── StorageFailed                UNAVAILABLE          STORAGE_FAILED    (the data directory cannot be written: read-only,
    │                                                                     permissions, I/O error, a damaged database)
    ├── TooManyUploads               RESOURCE_EXHAUSTED   TOO_MANY_UPLOADS  (server.max_concurrent_uploads; + RetryInfo)
    ├── TooManyCalls                 RESOURCE_EXHAUSTED   TOO_MANY_CALLS    (server.max_concurrent_calls; + RetryInfo)
    ├── SessionBusy                  RESOURCE_EXHAUSTED   SESSION_BUSY      (server.max_waiting_per_session; + RetryInfo)
    ├── AnswerTooLarge               RESOURCE_EXHAUSTED   ANSWER_TOO_LARGE  (over server.max_message_bytes)
    ├── DaemonStopping               UNAVAILABLE          SHUTTING_DOWN     (the daemon stops: a call sent or still running)
    ├── CallTimeout                  DEADLINE_EXCEEDED    CALL_TIMEOUT      (over server.max_call_seconds)
    │   ├── NoTimeLeft               DEADLINE_EXCEEDED    CALL_TIMEOUT      (the deadline came before any provider call)
    │   └── UploadIdle               DEADLINE_EXCEEDED    UPLOAD_IDLE       (an upload that sent nothing for 60 s)
    └── ProviderError                UNAVAILABLE          PROVIDER_ERROR    (one provider call failed)
        ├── ProviderBadRequest       INVALID_ARGUMENT     PROVIDER_BAD_REQUEST
        │   ├── ProviderInputTooLarge INVALID_ARGUMENT    INPUT_TOO_LARGE   (413, context or media limit: retryable)
        │   └── ProviderUnsupportedInput INVALID_ARGUMENT UNSUPPORTED_INPUT (a media format it does not take: retryable)
        ├── ProviderAuthError        FAILED_PRECONDITION  PROVIDER_AUTH
        ├── ProviderQuotaExhausted   FAILED_PRECONDITION  PROVIDER_QUOTA_EXHAUSTED (402, a spent quota or credit:
        │                                                                     never RetryInfo; fallbacks still run)
        ├── ProviderNotConfigured    FAILED_PRECONDITION  PROVIDER_NOT_CONFIGURED
        ├── ProviderModelNotFound    NOT_FOUND            PROVIDER_MODEL_NOT_FOUND
        ├── ProviderRateLimited      RESOURCE_EXHAUSTED   PROVIDER_RATE_LIMITED (+ RetryInfo)
        ├── ProviderUnavailable      UNAVAILABLE          PROVIDER_UNAVAILABLE (5xx, overload, network; + RetryInfo
        │                                                                     when the provider said when)
        ├── ProviderTimeout          DEADLINE_EXCEEDED    PROVIDER_TIMEOUT
        └── ProviderFailed           INTERNAL             PROVIDER_FAILED   (the plugin itself raised)

Besides these, router/auth.py refuses a call without the right token with UNAUTHENTICATED, reason
``UNAUTHENTICATED``. ``INVALID_CONFIG`` is for the configuration file (``config check``, start-up, reloads)
and never reaches a client.

Messages name the thing, the cause and the fix. They never contain a secret.
Provider plugins raise the ``Provider*`` classes, usually through
:func:`provider_error_from_status`, so every provider maps HTTP failures alike, and pass the provider's
own error code, type and param on to the client with :meth:`ProviderError.with_provider_error_ids`.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import grpc

from .text import refused_at, valid_text


@dataclass
class FieldViolation:
    """One bad field of a request: its path (e.g. ``messages[0].parts[1].media``) and why."""

    field: str
    description: str


class RouterError(Exception):
    """Base of all router errors. Its message, violations and metadata are made valid Unicode
    (:func:`router.text.valid_text`) when it is made: a provider's message cut by UTF-16 units may end in
    half a surrogate pair, which neither protobuf nor a UTF-8 log could write."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    #: Whether dispatch may try the next fallback after this error.
    retryable: bool = False
    #: Seconds after which the client may try again (sent as RetryInfo), None if unknown.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        message = valid_text(message)  # a provider's message may hold a lone surrogate, which no UTF-8 holds
        super().__init__(message)
        self.message = message
        self.violations = [FieldViolation(valid_text(v.field), valid_text(v.description)) for v in violations or ()]
        self.metadata = {key: valid_text(value) for key, value in (metadata or {}).items()}


class InvalidRequest(RouterError):
    """The request is malformed; ``violations`` say which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"


class PayloadTooLarge(InvalidRequest):
    """Inline media over the inline limit (use UploadMedia), or an upload over its limit."""

    reason = "PAYLOAD_TOO_LARGE"


class MimeMismatch(InvalidRequest):
    """The declared MIME type does not match the content's magic bytes."""

    reason = "MIME_MISMATCH"


class UnknownMedia(RouterError):
    """A media id that the media store does not hold."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "MEDIA_NOT_FOUND"


class UnknownSession(RouterError):
    """A session id that the session store does not hold."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "SESSION_NOT_FOUND"


class UnknownTarget(RouterError):
    """A provider/model override that names no known provider or model."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "UNKNOWN_TARGET"


class OverrideNotAllowed(RouterError):
    """The client asked for an override the configuration does not allow."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "OVERRIDE_NOT_ALLOWED"


class NoRoute(RouterError):
    """No rule, default or fallback gives a usable target for the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_ROUTE"
    #: Each rule's outcome and why (router.routing's TraceEntry), as explain gives them; set by the router when
    #: rules were tried (not for an override). The error's status carries it (a ``mmrouter.v1.Route`` detail).
    trace: Sequence[Any] = ()


class DiarizationUnavailable(NoRoute):
    """Diarization was asked for and no configured provider can diarize."""

    reason = "DIARIZATION_UNAVAILABLE"


class InputTooLarge(NoRoute):
    """Every target the request could go to was ruled out for the input's size alone, as the router estimates
    or measures it before calling any provider: its estimated tokens over each model's context, or a media's
    bytes, seconds or PDF pages over its limit (``ModelInfo.max_media_bytes``, ``max_audio_seconds``,
    ``max_document_pages``), or the whole request's bytes as sent over ``max_request_bytes``. The reason of a provider's own refusal for size (:class:`ProviderInputTooLarge`),
    so that a client handles "too large" once; ErrorInfo metadata says what was measured against the largest
    limit of those targets (``estimated_tokens`` and ``context_tokens``; ``media_bytes`` and ``max_media_bytes``;
    ``media_seconds`` and ``max_audio_seconds``; ``pdf_pages`` and ``max_document_pages``; ``request_bytes`` and
    ``max_request_bytes``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INPUT_TOO_LARGE"


class ConfigError(RouterError):
    """The configuration file is invalid; the message names the key and the problem."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_CONFIG"


class StorageFull(RouterError):
    """The daemon could not write media to its data directory: the disk (or quota, or file size
    limit) is full. Nothing was stored; the client may retry once an operator made room."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "STORAGE_FULL"


class StorageBusy(RouterError):
    """The sessions database stayed locked by another process (a ``mmrouter prune``, a backup script, a
    ``sqlite3`` shell) for longer than the busy timeout. Nothing was changed; the client may retry after
    ``retry_after`` seconds."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "STORAGE_BUSY"
    retryable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = clamp_retry_after(retry_after)


class DataDirGone(RouterError):
    """The daemon's data directory (or its ``daemon.lock`` or ``sessions.sqlite``) was removed or replaced
    while the daemon ran: what it would store now would be lost at its restart, so calls that store
    something (session turns, uploads, ResetSession) are refused until it is restarted."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DATA_DIR_GONE"

    def __init__(self) -> None:
        super().__init__("the daemon's data directory was removed or replaced while the daemon ran: nothing can be "
                         "stored any more (session calls, uploads and ResetSession are refused; calls without a "
                         "session are still answered); the daemon must be restarted")


class StorageFailed(RouterError):
    """The daemon's data directory could not be written (or read) for a reason other than room: a read-only
    file system (a disk the kernel remounted read-only after errors), permissions, an I/O error, or a damaged
    sessions database. Nothing was stored; trying again helps only once an operator repaired it, which the
    message says how to do."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "STORAGE_FAILED"


class TooManyUploads(RouterError):
    """As many uploads as ``server.max_concurrent_uploads`` are under way (each holds a file open),
    so a new one is refused at once; the client may try again after ``retry_after`` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_UPLOADS"

    def __init__(self, message: str, *, retry_after: float, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = clamp_retry_after(retry_after)


class TooManyCalls(RouterError):
    """As many Generate, StreamGenerate and ExplainRoute calls as ``server.max_concurrent_calls`` are
    under way, so a new one is refused before its request is processed; the client may try again
    after ``retry_after`` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_CALLS"

    def __init__(self, message: str, *, retry_after: float, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = clamp_retry_after(retry_after)


class SessionBusy(RouterError):
    """As many calls as ``server.max_waiting_per_session`` already wait for the call under way on the same
    session (a session's calls run one at a time), so one more is refused at once, before it waits: the
    waiting calls each hold a call slot (``server.max_concurrent_calls``), and one client's queue on one
    session would take them all from the other sessions. The client may try again after ``retry_after``
    seconds, better once the session's earlier answers came."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "SESSION_BUSY"

    def __init__(self, message: str, *, retry_after: float, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = clamp_retry_after(retry_after)


class AnswerTooLarge(RouterError):
    """The answer was produced (and counted) but its message is larger than ``server.max_message_bytes``,
    so gRPC cannot send it. ``metadata`` has its ``size_bytes`` and the ``limit_bytes``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "ANSWER_TOO_LARGE"


class DaemonStopping(RouterError):
    """The daemon stops: a call still running at the end of ``server.shutdown_grace_seconds`` is ended, and
    a call that arrives while it drains is refused (with RetryInfo)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else clamp_retry_after(retry_after)


class CallTimeout(RouterError):
    """The call ran longer than ``server.max_call_seconds`` (its client set no shorter deadline)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "CALL_TIMEOUT"


class NoTimeLeft(CallTimeout):
    """The call's deadline (its client's, or ``server.max_call_seconds``) passed, or came within
    ``router.invoke.DEADLINE_MARGIN_SECONDS``, before any provider was called: while the call waited for the
    earlier calls on its session, or before its first target. No provider is blamed: none was called (a
    provider call started with no time left would be cut at once and counted as its ``PROVIDER_TIMEOUT``)."""


class UploadIdle(CallTimeout):
    """An upload whose client sent nothing for a while (``server.UPLOAD_IDLE_SECONDS``): a stalled client,
    not a call over ``server.max_call_seconds``."""

    reason = "UPLOAD_IDLE"


class ProviderError(RouterError):
    """A provider call failed. Carries the provider's name in ``metadata['provider']``."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PROVIDER_ERROR"
    retryable = True
    #: The HTTP status the provider answered (None: none known, or no HTTP answer); set by
    #: :func:`provider_error_from_status`, and shown by ``ListProviders`` with the last failure.
    http_status: int | None = None

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{provider}: {message}", metadata={"provider": provider})
        self.provider = provider
        self.retry_after = clamp_retry_after(retry_after)

    def with_provider_request_id(self, sdk_error: BaseException) -> ProviderError:
        """This error naming the provider's id of the failed request, which its support asks for:
        in the message and as ``metadata['provider_request_id']``. The id is the ``request_id`` an
        SDK keeps on its errors (OpenAI's ``x-request-id``, Anthropic's ``request-id`` header); an
        error without a usable one is returned unchanged."""
        request_id = getattr(sdk_error, "request_id", None)
        request_id = request_id.strip() if isinstance(request_id, str) else ""
        if request_id and refused_at(request_id) is None and len(request_id) <= _MAX_REQUEST_ID:
            self.message = f"{self.message} (request id {request_id})"
            self.args = (self.message,)
            self.metadata["provider_request_id"] = request_id
        return self

    def with_provider_error_ids(self, *, code: object = None, kind: object = None,
                                param: object = None) -> ProviderError:
        """This error naming the failure as the provider's own API does, for a client that branched on it
        with the provider's SDK (``err.code == "invalid_image_format"``), as ErrorInfo metadata:
        ``provider_error_code`` (OpenAI's ``error.code``: ``invalid_image_format``, ``content_filter``;
        Anthropic's ``error.details.error_code``; Gemini's ErrorInfo reason, else its ``error.status``),
        ``provider_error_type`` (OpenAI's and Anthropic's ``error.type``: ``invalid_request_error``,
        ``overloaded_error``) and ``provider_error_param`` (OpenAI's ``error.param``, a field of the request
        the provider was sent, such as ``messages.[1].content``). Each is set only when it is an identifier
        (:func:`provider_error_id`): never free text, which the message carries. Returns the error."""
        for key, value in (("provider_error_code", code), ("provider_error_type", kind),
                           ("provider_error_param", param)):
            if ident := provider_error_id(value):
                self.metadata[key] = ident
        return self

    def with_history_urls(self, count: int) -> ProviderError:
        """This error, of a call whose session history sent ``count`` media URLs of earlier turns again:
        said first after the provider's name (its own words, which may quote a long URL, follow unchanged,
        and the client's message is clipped), as ``metadata['history_urls']``, and as a field violation on
        ``request.session_id``. Nothing is guessed of what the provider meant: only what the history sent and
        what the client can do."""
        if count <= 0:
            return self
        urls = f"{count} media URL{'' if count == 1 else 's'}"
        hint = (f"this turn's session history sent again {urls} given on earlier turns, which must stay valid for "
                "the session's life; if one no longer is, ResetSession starts the session over")
        own = self.message.removeprefix(f"{self.provider}: ")
        self.message = f"{self.provider}: ({hint}) {own}"
        self.args = (self.message,)
        self.metadata["history_urls"] = str(count)
        self.violations.append(FieldViolation("request.session_id", f"its history sent again {urls} of earlier "
                                              "turns, which must stay valid: ResetSession starts over"))
        return self


#: The longest provider request id quoted; a longer header value is not an id.
_MAX_REQUEST_ID = 200

#: What a provider's error code, type or param must look like to be passed on: a short identifier
#: (``invalid_image_format``, ``INVALID_ARGUMENT``, ``messages.[1].content``, a vLLM's ``400``), not text.
_PROVIDER_ERROR_ID = re.compile(r"[A-Za-z0-9._:\[\]-]{1,64}")


def provider_error_id(value: object) -> str:
    """``value`` (a provider's error code, type or param, as its JSON gave it) as an identifier for ErrorInfo
    metadata: a string or integer of at most 64 letters, digits and ``._:-[]``; "" for anything else (free
    text, a null, a list), which is dropped."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    text = str(value)
    return text if _PROVIDER_ERROR_ID.fullmatch(text) else ""


class ProviderBadRequest(ProviderError):
    """The provider rejected the request as invalid (HTTP 400/422)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "PROVIDER_BAD_REQUEST"
    retryable = False


class ProviderInputTooLarge(ProviderBadRequest):
    """The provider refused the request for its size: HTTP 413, a prompt over the model's context,
    a file, image or page count over its limits. Another target (a fallback, the next bridge) may
    take it, so dispatch tries the next one; raised to the client only when every target refused."""

    reason = "INPUT_TOO_LARGE"
    retryable = True


class ProviderUnsupportedInput(ProviderBadRequest):
    """Media in a format the model does not take (see :attr:`router.ModelInfo.input_mime_types`),
    refused by the plugin before sending. Routing normally sends such media elsewhere; when it comes
    anyway (an override, a type the catalogue did not foresee), dispatch tries the next target or
    bridge, as after a refusal for size; raised to the client only when no target took it."""

    reason = "UNSUPPORTED_INPUT"
    retryable = True


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (HTTP 401/403)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_AUTH"


class ProviderQuotaExhausted(ProviderError):
    """The account's quota or credit with the provider is spent: HTTP 402 (Anthropic's ``billing_error``,
    Gemini's depleted prepayment), OpenAI's 429 ``insufficient_quota``, AssemblyAI's negative balance.
    No wait mends it: someone must add credit or raise the quota. Dispatch still tries the rule's next
    target (another provider bills another account), but a call that ends with it is FAILED_PRECONDITION,
    never with a retry delay (:func:`provider_error_from_status` gives it none, whatever Retry-After came)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_QUOTA_EXHAUSTED"


class ProviderNotConfigured(ProviderError):
    """The provider lacks configuration such as an API key."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_NOT_CONFIGURED"


class ProviderModelNotFound(ProviderError):
    """The provider does not know the model (HTTP 404)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "PROVIDER_MODEL_NOT_FOUND"


class ProviderRateLimited(ProviderError):
    """The provider rate-limited the call (HTTP 429); ``retry_after`` in seconds if it said."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "PROVIDER_RATE_LIMITED"


class ProviderUnavailable(ProviderError):
    """The provider failed or is overloaded (HTTP 5xx, 529) or could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PROVIDER_UNAVAILABLE"


class ProviderTimeout(ProviderError):
    """The provider did not answer within the call's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "PROVIDER_TIMEOUT"


class ProviderFailed(ProviderError):
    """The provider plugin itself raised an unexpected exception."""

    code = grpc.StatusCode.INTERNAL
    reason = "PROVIDER_FAILED"


#: How providers word a refusal for size in a 400/422 (OpenAI, Anthropic, Gemini, whisper), lower case.
_TOO_LARGE = re.compile(
    r"context[ _]length|context window|maximum context|exceed context limit|prompt is too long|too many tokens"
    r"|exceeds the available context size"  # llama.cpp's server, run with a smaller window (-c) than the model's
    r"|exceeds the maximum number of tokens|input token count|request_too_large|request too large"
    r"|payload size exceeds|content size limit|maximum of \d+ pdf pages|pdf pages may be provided"
    r"|image exceeds|image dimensions exceed|file is too large|file too large|string_above_max_length"
    r"|longer than [\d.]+ seconds which is the maximum"  # a transcription model's duration cap
    r"|files bytes are too large to be read"  # Gemini, for files past its per-request bytes (a PDF over ~50 MB)
)


def is_input_too_large(message: str) -> bool:
    """Whether a provider's 400/422 error text refuses the request for its size (not its form)."""
    return bool(_TOO_LARGE.search(message.lower()))


def provider_error_from_status(
    provider: str, status: int | None, message: str, *, retry_after: float | None = None,
    too_large: bool = False, quota: bool = False,
) -> ProviderError:
    """Map an HTTP status from a provider to the matching :class:`ProviderError`.

    ``status`` None means no HTTP answer (connection failed): UNAVAILABLE.
    A 402, or any status that the plugin marks ``quota`` (from the provider's error code or text: OpenAI's
    429 ``insufficient_quota``), is :class:`ProviderQuotaExhausted`, without ``retry_after``.
    A 413, or a 400/422 whose ``message`` refuses the size (:func:`is_input_too_large`) or that the
    plugin marks ``too_large`` (from the provider's error code), is :class:`ProviderInputTooLarge`.
    ``message`` must not contain the API key; plugins pass the provider's
    error text, which never echoes it.
    """
    if status is None:
        return ProviderUnavailable(provider, message)
    error = _error_for_status(provider, status, message, retry_after, too_large, quota)
    error.http_status = status
    return error


def _error_for_status(provider: str, status: int, message: str, retry_after: float | None,
                      too_large: bool, quota: bool) -> ProviderError:
    """The :class:`ProviderError` class for the HTTP ``status`` (see :func:`provider_error_from_status`)."""
    if status == 402 or quota:  # a Retry-After (a 429's) is no promise: waiting adds no credit
        return ProviderQuotaExhausted(provider, message)
    if status == 413 or (status in (400, 422) and (too_large or is_input_too_large(message))):
        return ProviderInputTooLarge(provider, message)
    if status in (400, 422):
        return ProviderBadRequest(provider, message)
    if status in (401, 403):
        return ProviderAuthError(provider, message)
    if status == 404:
        return ProviderModelNotFound(provider, message)
    if status == 429:
        return ProviderRateLimited(provider, message, retry_after=retry_after)
    # a 503 or 529 may say when; a 408 is a server that gave up waiting for the request, at once: a passing
    # failure (the fallbacks run), not PROVIDER_TIMEOUT, which says the call's own deadline passed
    return ProviderUnavailable(provider, message, retry_after=retry_after)


#: HTTP statuses worth asking again for the same thing (a status poll of a job that goes on): a rate limit
#: and the server or gateway failures a provider (or a proxy before it) answers in passing. Any other status
#: (a refused key, a bad request, an unknown id) would fail again, and 501/505 are no passing state.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


#: The longest wait a RetryInfo detail passes on; a provider's larger (or infinite) Retry-After is cut to it.
MAX_RETRY_AFTER_SECONDS = 86_400.0


def clamp_retry_after(seconds: float | None) -> float | None:
    """``seconds`` within 0 and :data:`MAX_RETRY_AFTER_SECONDS`; None for none or NaN."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, float(seconds)), MAX_RETRY_AFTER_SECONDS)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, delta-seconds or an HTTP date (RFC 9110), at most a day; None
    when it has neither."""
    if not value:
        return None
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        pass
    else:  # delta-seconds are never negative: a "-5" is as unreadable as "soon" (retrying at once is no advice)
        return clamp_retry_after(seconds) if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is in GMT
        when = when.replace(tzinfo=datetime.UTC)
    return clamp_retry_after((when - datetime.datetime.now(datetime.UTC)).total_seconds())


def public_url(url: str) -> str:
    """``url`` as ``scheme://host[:port]/path``, for messages: without its credentials (``user:password@``),
    query (a ``?key=``) or fragment; "" when it is no URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if not parts.scheme or not parts.netloc:
        return ""
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def redirect_refused(provider: str, api: str, base_url: str, status: int, location: str | None,
                     request_url: str = "") -> ProviderUnavailable:
    """The error of an API call answered with HTTP ``status`` redirecting to ``location`` (relative to
    ``request_url``), by ``api`` ("the OpenAI API") at the configured ``base_url``.

    Plugins follow no redirect: a provider API does not redirect its calls, following one may take the
    key (or the media) to another host, and it hides a wrong ``base_url``. UNAVAILABLE, so a fallback
    answers; the message shows neither URL's credentials nor query."""
    target = public_url(urljoin(request_url, location)) if location else ""
    error = ProviderUnavailable(provider, f"{api} at {public_url(base_url) or base_url} answered HTTP {status} "
                                          f"redirecting to {target or 'nowhere (no Location header)'}; redirects "
                                          f"are not followed: set providers.{provider}.base_url to where the API "
                                          "is served")
    error.http_status = status
    return error


def page_answered(provider: str, api: str, base_url: str, content_type: str, expected: str) -> ProviderUnavailable:
    """The error of an API call answered HTTP 200 with a page of ``content_type`` (a proxy's or captive
    portal's login page) instead of ``expected`` ("an event stream", "JSON"), by ``api`` at ``base_url``."""
    return ProviderUnavailable(provider, f"{api} at {public_url(base_url) or base_url} answered HTTP 200 with a "
                                         f"page of type {content_type}, not {expected} (a proxy's or captive "
                                         f"portal's page?): check providers.{provider}.base_url and the network "
                                         "on the way")
