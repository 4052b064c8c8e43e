"""The grpc.aio servicer, thin: convert, delegate to :class:`App`, map errors.

Errors leave as ``google.rpc.Status`` with details: ``ErrorInfo`` (domain
``mmrouter``, the error's reason, the provider when there is one),
``BadRequest`` field violations for bad input, ``RetryInfo`` when a
provider rate-limited or too many uploads are under way, and for a request
no rule could route (NO_ROUTE) a ``mmrouter.v1.Route`` with each rule's
outcome and why (see :func:`_trace_detail`). Unexpected
exceptions become INTERNAL with a request id to find in the log; nothing
takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import gc
import ipaddress
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

from . import invoke, redact, wire
from .auth import TokenAuth, warn_if_token_in_clear
from .config import Config, parse_address, parse_config, read_config_file, replaced_default_rules
from .config_warnings import refused_sections
from .core import (
    REQUEST_ID_KEY,
    App,
    log_warnings,
    missing_models,
    monotonic_deadline,
    new_request_id,
    secrets_of,
)
from .dispatch import RouterEvent
from .errors import (
    AnswerTooLarge,
    CallTimeout,
    ConfigError,
    DaemonStopping,
    FieldViolation,
    InvalidRequest,
    ProviderTimeout,
    RouterError,
    TooManyCalls,
    TooManyUploads,
    UploadIdle,
)
from .health import Health as RecentHealth
from .loopwatch import LoopWatch
from .memory import address_space_limit, give_back_when_idle
from .outcome import Done, RouteChosen, RouteInfo, StepUsage
from .registration import add_guarded_service, add_router_service, parsed
from .routing import TraceEntry
from .sessions import file_identity
from .tls import ServerCertificates, warn_if_key_open
from .types import TextDelta, TranscriptReady
from .version import version

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
DOMAIN = "mmrouter"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


#: Bounds on what an error sends: its status travels in the trailers (twice: ``grpc-message`` and
#: the base64 ``grpc-status-details-bin``), and gRPC clients refuse trailers over 8 KiB by default,
#: which would turn the error into a bare RESOURCE_EXHAUSTED. Errors may quote client input.
MAX_ERROR_MESSAGE_BYTES = 768
MAX_ENTRIES = 8  # field violations, and ErrorInfo metadata entries
MAX_DETAIL_BYTES = 200
#: The longest error message the access log keeps (the client's is cut at MAX_ERROR_MESSAGE_BYTES).
MAX_LOGGED_ERROR_BYTES = 8192
#: The most bytes a refusal's status takes with its rule trace (a ``mmrouter.v1.Route`` detail, see
#: :func:`_trace_detail`): base64 in ``grpc-status-details-bin`` (4/3 of it), beside ``grpc-message``, the trailers
#: stay under those 8 KiB.
MAX_TRACED_STATUS_BYTES = 4096


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (at a character boundary), marked with "..."."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def error_status(error: RouterError, redact: Callable[[str], str], request_id: str = "") -> status_pb2.Status:
    """The google.rpc.Status for a router error, with its details, bounded in size; ``request_id``
    (the call's, in the daemon's log) goes in the ErrorInfo metadata."""
    metadata = {k: clip(redact(v), MAX_DETAIL_BYTES) for k, v in list(error.metadata.items())[:MAX_ENTRIES]}
    if request_id:
        metadata["request_id"] = request_id
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))]
    message = redact(error.message)
    if error.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=clip(v.field, MAX_DETAIL_BYTES),
                                                        description=clip(redact(v.description), MAX_DETAIL_BYTES))
            for v in error.violations[:MAX_ENTRIES]
        ])))
        if len(error.violations) > MAX_ENTRIES:
            message = f"{len(error.violations)} problems, the first {MAX_ENTRIES} listed: {message}"
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=error.code.value[0], message=clip(message, MAX_ERROR_MESSAGE_BYTES),
                               details=details)
    trace = getattr(error, "trace", ())  # a NoRoute's: each rule's outcome and why (router.routing sets it)
    if trace and (detail := _trace_detail(trace, redact, MAX_TRACED_STATUS_BYTES - status.ByteSize())) is not None:
        status.details.append(detail)
    return status


def _trace_detail(trace: Sequence[TraceEntry], redact: Callable[[str], str], room: int) -> any_pb2.Any | None:
    """A refusal's rule ``trace`` (NO_ROUTE: no rule, default or fallback could take the request) as a
    ``mmrouter.v1.Route`` detail with no rule, provider or model: each rule's outcome and why, as ExplainRoute's
    route gives them, packed in at most ``room`` bytes. When they do not all fit, each reason is cut to
    MAX_DETAIL_BYTES and the rules that still do not fit are left out, a note in the Route saying how many;
    None when not even that fits."""
    route = wire.route_to_proto(RouteInfo("", "", "", trace=list(trace)), redact)
    if (packed := _pack(route)).ByteSize() <= room:
        return packed
    total = len(route.trace)

    def note(left_out: int) -> str:
        rules = f", and the last {left_out} of its {total} rule outcomes are left out" if left_out else ""
        return f"each reason is cut to {MAX_DETAIL_BYTES} bytes{rules}, for the error to fit in gRPC's trailers"

    used, kept = _pack(pb.Route(notes=[note(total)])).ByteSize(), 0
    for entry in route.trace:
        entry.reason = clip(entry.reason, MAX_DETAIL_BYTES)
        used += entry.ByteSize() + 3  # with its field's tag and length
        if used > room:
            break
        kept += 1
    if not kept:
        return None
    del route.trace[kept:]
    route.notes.append(note(total - kept))
    return _pack(route)


def _internal_status(app: App, exc: BaseException, request_id: str) -> status_pb2.Status:
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s: %s [request_id=%s]", incident, app.redact(repr(exc)), request_id, exc_info=exc)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error {incident}; the daemon log has the details",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN,
                                                   metadata={"request_id": request_id}))],
    )




#: A call ended this close to its deadline is logged as DEADLINE_EXCEEDED, not CANCELLED.
DEADLINE_MARGIN_SECONDS = 0.25


def dollars(amount: float) -> str:
    """``amount`` in decimal notation to 12 places, without trailing zeros (``0.0000007``,
    ``0.003645``): the text access lines of many tiny calls add up to what ``mmrouter stats`` keeps."""
    return f"{amount:.12f}".rstrip("0").rstrip(".")


#: A request id a client may send in ``x-mmrouter-request-id``: one word the access log can hold (a UUID, a
#: W3C trace id, base64).
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class CallLog:
    """One call's facts, filled in as it goes, for the one line logged when it ends (the access log):
    INFO when it succeeded, WARNING when it failed, was cancelled or its deadline passed. In JSON logs
    the fields are keys of their own (see :class:`redact.JsonFormatter`)."""

    __slots__ = ("method", "redact", "request_id", "route", "sending", "session", "started")

    def __init__(self, method: str, redact: Callable[[str], str]) -> None:
        self.method = method
        self.redact = redact
        self.request_id = new_request_id()
        self.started = time.perf_counter()
        self.session = ""
        self.route: RouteInfo | None = None
        #: A stream's message handed to gRPC last: the one being sent when a send fails (see SendFailedFilter).
        self.sending: Any = None

    def adopt_client_id(self, context: grpc.aio.ServicerContext) -> None:
        """Take the request id its client sent in ``x-mmrouter-request-id`` (the first, if sent more than once),
        so that the client knows it before any answer: a unary call cut by its client's deadline gets no
        trailers. InvalidRequest for one that the log could not hold as one word (see ``CLIENT_REQUEST_ID``)."""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                if not isinstance(value, str) or CLIENT_REQUEST_ID.fullmatch(value) is None:
                    why = (f"has {len(value)} characters (at most 128)" if len(value) > 128 else "is empty" if not value
                           else "holds characters other than letters, digits and . _ : / + = -")
                    raise InvalidRequest(f"the request metadata {REQUEST_ID_KEY} (a request id of the client's own) "
                                         f"must be 1 to 128 letters, digits or . _ : / + = -; it {why}",
                                         violations=[FieldViolation(REQUEST_ID_KEY, why)])
                self.request_id = value
                return

    async def announce(self, context: grpc.aio.ServicerContext) -> None:
        """Send the request id in a stream's response headers (initial metadata), just before its first message:
        a stream that then ends with no status (its client's deadline passed, its client cancelled or lost its
        connection) gets no trailers, and its client still has the id to find the call in the log. Not sooner:
        gRPC's retry policies never retry a call whose headers came (a refusal before the first message, such as
        TOO_MANY_CALLS or SHUTTING_DOWN, stays retryable), and a stream's first message would send headers
        anyway. Nor for unary calls, which send theirs with their answer: headers of their own would cost one
        more gRPC batch each and make every failure of theirs final to a retry policy. Raises CancelledError if
        the call is already gone."""
        try:
            await context.send_initial_metadata(((REQUEST_ID_KEY, self.request_id),))
        except asyncio.CancelledError:
            raise
        except Exception:  # gRPC's failed batch (ExecuteBatchError) or its server-stopped error: both private
            raise asyncio.CancelledError("the call ended before its response headers were sent") from None

    def succeeded(self, context: grpc.aio.ServicerContext) -> None:
        """Tell the client the request id in the trailers too (where clients have long read it), and log the call."""
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        if log.isEnabledFor(logging.INFO):
            self._log(logging.INFO, "OK")

    def ended_early(self, context: grpc.aio.ServicerContext, stopped: bool = False, in_send: bool = False) -> None:
        """Log a call cancelled by its client or by gRPC at its deadline (its client gets nothing more), or
        ``stopped`` by the daemon's stop while gRPC was sending to a client that read nothing (no status
        could be sent). ``in_send``: gRPC ended the stream while sending its message :attr:`sending`; one
        over CLIENT_RECEIVE_LIMIT is logged as a unary answer's failed send is (see :class:`SendFailedFilter`):
        clients that keep gRPC's default receive limit refuse it."""
        if stopped:
            self._log(logging.WARNING, "UNAVAILABLE", "SHUTTING_DOWN", "the daemon stopped while the call ran; its "
                      "client was not reading the answer, so no status could be sent")
            return
        remaining = context.time_remaining()
        # the client's reset at its deadline may come a little before gRPC's own: within the margin it is that
        if remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS:
            self._log(logging.WARNING, "DEADLINE_EXCEEDED", "", "the client's deadline passed")
        elif in_send and (size := _refusable_size(self.sending)):
            self._log(logging.WARNING, "CANCELLED", "", f"could not send a message of {size} bytes: {REFUSED}")
        else:
            self._log(logging.WARNING, "CANCELLED", "", "the client cancelled the call or left, or the daemon stopped")

    def failed(self, status: status_pb2.Status, reason: str, message: str = "") -> None:
        """Log a call that ends with ``status``: its ``message`` whole when given (redacted; the client's is
        clipped), else the status's (the client's, already redacted)."""
        self._log(logging.WARNING, code_pb2.Code.Name(status.code), reason, message or status.message)

    def _target(self, ok: bool) -> tuple[str, str]:
        """The provider and model: those that answered; of a failed call the last one tried."""
        route = self.route
        if route is None:
            return "", ""
        if not ok:  # none when no provider was called (the deadline came first): the plan blames nobody
            return (route.attempts[-1].provider, route.attempts[-1].model) if route.attempts else ("", "")
        return route.provider, route.model

    def _log(self, level: int, code: str, reason: str = "", error: str = "") -> None:
        route = self.route
        attempts = route.attempts if route is not None else []
        provider, model = self._target(code == "OK")
        duration_ms = round((time.perf_counter() - self.started) * 1000, 1)
        cost = sum(step.usage.cost_usd for step in route.steps) if route is not None else 0  # as stats keeps it
        facts = {"rule": route.rule if route is not None else "", "provider": provider, "model": model,
                 "attempts": len(attempts), "cost_usd": cost, "session": redact.session_tag(self.session),
                 # an answer sent again for a turn asked again: no provider was called this time
                 "kept_turn": route.kept_turn if route is not None else "", "request_id": self.request_id}
        line = " ".join([self.method, code, *([reason] if reason else []), f"in {duration_ms:.0f} ms",
                         *(f"{k}={dollars(v)}" if k == "cost_usd" else f"{k}={v}" for k, v in facts.items() if v)])
        if error:
            line += f": {error}"
        failed = [a for a in attempts if not a.ok]  # a bridge that answered before the targets failed: not one
        if len(failed) > 1 and code != "OK":  # every target failed: each one's error, not the last alone
            tried = "; ".join(f"{a.provider}/{a.model}: {a.error}" for a in failed)
            line += f" (attempts: {self.redact(tried)})"
        if self.session and error:  # a message naming the session (quoted, as the router's do) names its tag
            line = line.replace(repr(self.session), f"<{facts['session']}>")
        log.log(level, "%s", line, extra={"method": self.method, "code": code, "reason": reason,
                                          "duration_ms": duration_ms, **facts})


async def _abort(context: grpc.aio.ServicerContext, app: App, call: CallLog, exc: BaseException) -> None:
    """End the call with the status for ``exc``, which names its request id; log it (one line)."""
    reason, whole = "INTERNAL", ""
    if isinstance(exc, RouterError):
        try:
            status, reason = error_status(exc, app.redact, call.request_id), exc.reason
            whole = clip(app.redact(str(exc.message)), MAX_LOGGED_ERROR_BYTES)  # the client's copy is clipped sooner
        except Exception as broken:  # a plugin's odd error (metadata, retry_after) must not become UNKNOWN
            status = _internal_status(app, broken, call.request_id)
    else:
        status = _internal_status(app, exc, call.request_id)
    call.failed(status, reason, whole)
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details,
                        (*grpc_status.trailing_metadata, (REQUEST_ID_KEY, call.request_id)))


#: A text delta longer than this goes out in pieces, so that no client's receive limit (4 MiB by
#: default in most gRPC libraries) refuses it: 256 Ki characters are at most 1 MiB of UTF-8.
MAX_DELTA_CHARS = 256 * 1024


def text_pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters."""
    return [text[i:i + size] for i in range(0, len(text), size)]


def within_limit(message: Any, limit: int) -> Any:
    """``message`` when gRPC can send it under ``limit`` bytes, else :class:`AnswerTooLarge`."""
    size = message.ByteSize()
    if size > limit:
        raise AnswerTooLarge(
            f"the answer is {size} bytes, over server.max_message_bytes ({limit}); it was produced and counted"
            " but cannot be sent. Ask for a shorter answer (options.max_output_tokens) or raise"
            " server.max_message_bytes and the client's receive limit",
            metadata={"size_bytes": str(size), "limit_bytes": str(limit)},
        )
    return message


def _streamed_within_limit(message: pb.StreamGenerateResponse, limit: int) -> pb.StreamGenerateResponse:
    """A streamed event as :func:`within_limit` lets it through; of a ``Done`` over ``limit``, the answer's
    text is left out (the text deltas before it carried it all) and a route note says so, so that its
    client still gets the route, usage and finish reason of an answer it has read whole."""
    if message.WhichOneof("event") == "done" and message.done.answer.text and message.ByteSize() > limit:
        answer = message.done.answer
        answer.route.notes.append(f"the answer's text ({len(answer.text)} characters) is left out of Done: it is "
                                  f"over server.max_message_bytes ({limit}), and the text deltas above carried it")
        answer.text = ""
    return within_limit(message, limit)


#: The receive limit most gRPC clients keep (4 MiB): a larger answer is refused by such a client.
CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024
#: Why a message over CLIENT_RECEIVE_LIMIT that gRPC could not send did not reach its client.
REFUSED = ("its client refused it (a gRPC client refuses a message over its receive limit, 4 MiB by default) "
           "or its connection failed")


def _refusable_size(message: Any) -> int:
    """The size of ``message`` when it is over CLIENT_RECEIVE_LIMIT (clients that keep gRPC's default
    receive limit refuse it), else 0 (also for no message)."""
    size = message.ByteSize() if message is not None else 0
    return size if size > CLIENT_RECEIVE_LIMIT else 0


def _log_if_large(response: Any) -> Any:
    """``response``; a unary answer over CLIENT_RECEIVE_LIMIT is logged first: if its client refuses
    it, gRPC can only report a failed send, naming neither size nor cause."""
    if size := _refusable_size(response):
        log.info("sending an answer of %d bytes: clients that keep gRPC's default receive limit (%d bytes) "
                 "refuse it (RESOURCE_EXHAUSTED on their side)", size, CLIENT_RECEIVE_LIMIT)
    return response


#: The streamed calls being handled, by the task that handles each: gRPC reports a failed send in that task.
_STREAMING: weakref.WeakKeyDictionary[asyncio.Task, tuple[CallLog, grpc.aio.ServicerContext]] = weakref.WeakKeyDictionary()


def _ended_by_its_client() -> bool:
    """Whether the send gRPC reports as failed (in the task of its call) is that of a stream whose deadline
    passed, or whose client cancelled or left (its message was one any client takes): its access line,
    logged next, says so. gRPC tells neither apart from a refused message, and sees the client's cancel
    only after it reports the failed send. (A unary call's access line was logged OK before the send.)"""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return False
    streaming = _STREAMING.get(task) if task is not None else None
    if streaming is None:
        return False
    call, context = streaming
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS:
        return True
    return call.sending is not None and not _refusable_size(call.sending)


class SendFailedFilter(logging.Filter):
    """gRPC logs a response it could not send (a client that refused it, a connection that died) as
    an ERROR with a traceback of its internals: make it one WARNING line that says what it means.
    A stream whose deadline passed, or whose client cancelled or left, gets none: its access line says
    so (see :func:`_ended_by_its_client`)."""

    PREFIX = "ExecuteBatchError raised in core by servicer method "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            if _ended_by_its_client():
                return False
            record.msg = "could not send the answer of %s: %s"
            record.args = (message.removeprefix(self.PREFIX).strip("[]"), REFUSED)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


#: Where a call the stopping daemon refused or ended may go again: sessions and uploads live in its data directory.
_SEND_AGAIN = ("once the daemon is back; a call naming no session and no uploaded media id may go to another "
               "instance at once")


@contextlib.contextmanager
def _handling(app: App) -> Iterator[asyncio.Task]:
    """Count the current task among ``app``'s calls being handled while in the block (see :func:`stop_calls`)."""
    if app.stopping:  # health says NOT_SERVING: a client that sends it now gets a status it can retry on
        raise DaemonStopping(f"the daemon is stopping: this call was not started; send it again ({_SEND_AGAIN})",
                             retry_after=SHUTDOWN_RETRY_SECONDS)
    task = asyncio.current_task()
    assert task is not None
    app.call_tasks.add(task)
    try:
        yield task
    finally:
        app.call_tasks.discard(task)
        app.calls_ended += 1


def stop_calls(app: App, at_once: bool = False) -> int:
    """Cancel every call ``app`` is still handling, as the daemon stops (``at_once``: told to by a second
    signal, before the end of the grace): each ends with SHUTTING_DOWN and its request id (cut by gRPC at
    the end of the grace, it would end with no status at all). Returns how many there were."""
    app.stopped_at_once = at_once
    for task in app.call_tasks:
        app.stopped_calls.add(task)
        task.cancel("the daemon is stopping")
    return len(app.call_tasks)


def _stopping(app: App) -> DaemonStopping:
    """The error of a call the stopping daemon ended (see :func:`stop_calls`), saying why it was ended
    then: a client told "at the end of the grace" of a call cut by a second signal would raise the grace."""
    when = ("the daemon was told to stop at once (a second SIGTERM or SIGINT) while this call was running"
            if app.stopped_at_once else
            "the daemon is stopping and this call was still running at the end of its server.shutdown_grace_seconds")
    return DaemonStopping(f"{when}: nothing of it was kept; send it again ({_SEND_AGAIN})")


def unary(method: Callable) -> Callable:
    """Map exceptions of a unary servicer method to rich gRPC statuses; give it a :class:`CallLog`
    (its last argument), logged when the call ends, whose request id the client gets."""

    @functools.wraps(method)
    async def wrapper(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = CallLog(method.__name__, self.app.redact)
        task: asyncio.Task | None = None  # set once the call is counted (see _handling)
        try:
            call.adopt_client_id(context)
            with _handling(self.app) as task:
                response = await method(self, parsed(request), context, call)
        except asyncio.CancelledError:
            if task in self.app.stopped_calls:
                await _abort(context, self.app, call, _stopping(self.app))
            call.ended_early(context)
            raise
        except grpc.aio.AbortError:
            raise
        except BaseException as exc:  # a KeyboardInterrupt or SystemExit that got this far must not stop the daemon
            await _abort(context, self.app, call, exc)
        else:
            call.succeeded(context)
            return response

    return wrapper


def streaming(method: Callable) -> Callable:
    """Map exceptions of a server-streaming servicer method to rich gRPC statuses; give it a
    :class:`CallLog` (its last argument), logged when the call ends, whose request id the client gets.

    The method is closed before its call is logged, however the call ends: closing it records what
    its provider calls cost (a stream its client cancelled during a send is closed, not cancelled)."""

    @functools.wraps(method)
    async def wrapper(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
        call = CallLog(method.__name__, self.app.redact)
        task: asyncio.Task | None = None  # set once the call is counted (see _handling)
        try:
            call.adopt_client_id(context)
            with _handling(self.app) as task:
                _STREAMING[task] = call, context
                async with aclosing(method(self, parsed(request), context, call)) as items:
                    async for item in items:
                        if call.sending is None:  # the first message: the headers before it name the call
                            await call.announce(context)
                        call.sending = item
                        yield item
        except asyncio.CancelledError:
            if task in self.app.stopped_calls:
                await _abort(context, self.app, call, _stopping(self.app))
            call.ended_early(context)
            raise
        except GeneratorExit:  # gRPC closed us: the send of the message yielded last failed
            call.ended_early(context, stopped=task in self.app.stopped_calls, in_send=True)
            raise
        except grpc.aio.AbortError:
            raise
        except BaseException as exc:  # a KeyboardInterrupt or SystemExit that got this far must not stop the daemon
            await _abort(context, self.app, call, exc)
        else:
            call.succeeded(context)

    return wrapper


#: How long before the end of server.shutdown_grace_seconds the daemon ends the calls still running
#: itself (see :func:`stop_calls`), so that they get its status before gRPC cuts them.
STOP_NOTICE_SECONDS = 0.5
#: How often a stopping daemon looks whether its calls have ended.
DRAIN_POLL_SECONDS = 0.05
#: When a call refused by a stopping daemon is told to try again (RetryInfo).
SHUTDOWN_RETRY_SECONDS = 1.0

#: Longest pause between two messages of an upload before it is cut (DEADLINE_EXCEEDED).
UPLOAD_IDLE_SECONDS = 60.0
#: When a client refused for too many uploads or calls is told to try again (RetryInfo).
SLOT_RETRY_SECONDS = 1.0


class Slots:
    """At most ``limit`` holders at once; ``refuse(limit)`` makes the error for one more.

    Uploads each hold a temp file (a file descriptor) and disk space: thousands at once would leave
    the daemon no descriptors for anything else. Calls each hold their request and its media in
    memory (about three times its size): without a bound, a burst of large ones takes all memory.
    """

    def __init__(self, limit: int, refuse: Callable[[int], RouterError]) -> None:
        self.limit = limit
        self.in_use = 0
        self._refuse = refuse

    @contextmanager
    def hold(self) -> Iterator[Callable[[], None]]:
        """Hold a slot for the block, however it ends; the refusal at once if none is free. The block gets
        a function that gives the slot back before the block ends (once, however often it is called).

        The servicer runs on one event loop thread, so counting needs no lock.
        """
        if self.in_use >= self.limit:
            raise self._refuse(self.limit)
        self.in_use += 1
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self.in_use -= 1
        try:
            yield release
        finally:
            release()


def _over_limit(error: type[RouterError], what: str, setting: str) -> Callable[[int], RouterError]:
    """The refusal of one more of ``what`` ("uploads", "calls") than ``server.<setting>`` allows."""
    def refusal(limit: int) -> RouterError:
        under_way = f"1 {what.removesuffix('s')} is" if limit == 1 else f"{limit} {what} are"
        return error(f"{under_way} under way, as many as server.{setting} allows: retry in "
                     f"{SLOT_RETRY_SECONDS:g} s, or raise server.{setting} in the daemon's configuration "
                     "(takes effect after a restart)",
                     retry_after=SLOT_RETRY_SECONDS, metadata={"limit": setting, f"limit_{what}": str(limit)})
    return refusal


async def _within_idle(messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``messages``, cut with :class:`UploadIdle` when the client sends nothing for UPLOAD_IDLE_SECONDS:
    a client that goes quiet must not hold its upload slot and temp file (a file descriptor) forever.
    One that sent every byte its metadata's ``size_bytes`` announced is told it never ended its stream."""
    iterator = aiter(messages)
    declared = received = 0
    while True:
        try:
            async with asyncio.timeout(UPLOAD_IDLE_SECONDS):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise _idle(declared, received) from None
        if isinstance(message, pb.UploadMediaRequest):
            declared = message.metadata.size_bytes if message.HasField("metadata") else declared
            received += len(message.chunk)
        yield message


def _idle(declared: int, received: int) -> UploadIdle:
    """The refusal of an upload whose client sent nothing for UPLOAD_IDLE_SECONDS, after ``received`` chunk
    bytes of the ``declared`` size (0: none declared)."""
    if declared and received >= declared:
        return UploadIdle(f"the upload's {received} bytes (its size_bytes) arrived, but its client did not end its "
                          f"request stream within {UPLOAD_IDLE_SECONDS:g} s: end (half-close) the stream after the "
                          "last chunk (grpc-js: call.end(); Python: the request iterator returns), then the daemon "
                          "stores the upload and answers")
    return UploadIdle(f"the upload sent nothing for {UPLOAD_IDLE_SECONDS:g} s (no whole message arrived): "
                      "send its chunks without pausing, each small enough to arrive within that time "
                      "(1 MiB chunks are best)")


async def _upload_chunks(messages: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """The chunks of the UploadMedia messages after the metadata; InvalidRequest for any other payload.
    They end only when the client ended its stream: a cancelled call raises CancelledError instead."""
    async for message in messages:
        payload = parsed(message).WhichOneof("payload")
        if payload == "metadata":
            raise InvalidRequest("metadata may only be sent once, first",
                                 violations=[FieldViolation("metadata", "sent again: only the first message carries it, the chunks follow")])
        if payload is None:
            raise InvalidRequest("an UploadMedia message after the metadata carries no chunk",
                                 violations=[FieldViolation("chunk", "required in every message after the first")])
        yield message.chunk
    await _client_finished(context)


async def _client_finished(context: grpc.aio.ServicerContext) -> None:
    """Return if the client ended its request stream itself; raise CancelledError if the call is gone.

    grpc.aio ends a request stream alike when the client half-closes it and when the call is cancelled
    (the client cancelled or left, its deadline passed, the daemon stopped): the servicer's task is
    cancelled only a moment later, by then an upload cut short would be stored as if whole (without
    ``size_bytes`` nothing tells it apart), an orphan nobody has the id of. Reading once more tells the
    two apart: gRPC answers that read (the end of the stream again) after the call's cancellation, which
    cancels this task meanwhile. (A send of the response headers did too, but they went out as the call
    started: see :meth:`CallLog.announce`.)
    """
    try:
        await context.read()
    except asyncio.CancelledError:
        raise
    except Exception:  # gRPC's errors for a call that ended (the server stopped): private
        raise asyncio.CancelledError("the call was cancelled before its client ended the upload") from None


def cut_attempt(route: RouteInfo | None, limit: float) -> invoke.FailedAttempt | None:
    """The provider attempt of ``route`` that the call's cut at ``limit`` (a ``time.time()``: its start plus
    server.max_call_seconds) ended: its last, recorded by :func:`router.invoke.call_model` as a PROVIDER_TIMEOUT
    when the cut came (within :data:`DEADLINE_MARGIN_SECONDS`). None when no provider was answering then."""
    last = route.attempts[-1] if route is not None and route.attempts else None
    if (isinstance(last, invoke.FailedAttempt) and last.reason == ProviderTimeout.reason
            and last.at >= limit - DEADLINE_MARGIN_SECONDS):
        return last
    return None


async def _close_answer(events: AsyncGenerator[RouterEvent, None], call: CallLog) -> None:
    """Close the answer ``events`` of ``call`` (its provider call, its session's turn); what that raises is logged."""
    try:
        await events.aclose()
    except Exception:
        log.exception("%s %s: closing its answer failed", call.method, call.request_id)


async def _finished(task: asyncio.Task[None]) -> None:
    """Wait until ``task`` is done, even if the current task is cancelled meanwhile (raised once it is)."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
    if cancelled:
        raise asyncio.CancelledError


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """mmrouter.v1.RouterService over an :class:`App`."""

    def __init__(self, app: App) -> None:
        self.app = app
        server = app.config.server
        self.limits = wire.Limits(server.inline_limit_bytes, server.allow_urls, server.max_request_media_bytes)
        self.max_message_bytes = server.max_message_bytes
        self.max_call_seconds = server.max_call_seconds
        self.uploads = Slots(server.max_concurrent_uploads, _over_limit(TooManyUploads, "uploads", "max_concurrent_uploads"))
        self.calls = Slots(server.max_concurrent_calls, _over_limit(TooManyCalls, "calls", "max_concurrent_calls"))
        #: UTF-8 takes up to 4 bytes a character; 64 bytes leave room for the message's framing.
        self.delta_chars = max(1, min(MAX_DELTA_CHARS, (server.max_message_bytes - 64) // 4))

    def _request(self, message: pb.MultimodalRequest):
        return wire.request_from_proto(message, self.limits, self.app.load_media)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The call's time.monotonic() deadline: the client's, or server.max_call_seconds from now if sooner."""
        own = time.monotonic() + self.max_call_seconds
        client = monotonic_deadline(context.time_remaining())
        return own if client is None else min(own, client)

    def _call_timeout(self, call: CallLog, since: float) -> CallTimeout:
        """The error of ``call``, bounded from ``since`` (a ``time.time()``), cut at server.max_call_seconds.

        When a provider was answering then, the error names it (message and ErrorInfo metadata ``provider``
        and ``model``): its attempt, cut, is counted as its PROVIDER_TIMEOUT (see :func:`cut_attempt`), and
        the usual cause is a job that takes longer than the limit (a long recording's transcript), not a hang.
        """
        limit = f"server.max_call_seconds ({self.max_call_seconds:g} s)"
        cut = cut_attempt(call.route, since + self.max_call_seconds)
        if cut is None:
            return CallTimeout(f"the call ran longer than {limit}; a provider may hang: set a deadline on the call, "
                               "or raise the limit")
        target = f"{cut.provider}/{cut.model}"
        return CallTimeout(f"the call ran longer than {limit} while {target} was still answering (counted as its "
                           f"PROVIDER_TIMEOUT): a long job (a long recording's transcript, a long answer) needs a "
                           f"higher server.max_call_seconds in the daemon's configuration; if {target} hangs, "
                           "its health in `mmrouter providers` shows it",
                           metadata={"provider": cut.provider, "model": cut.model})

    @asynccontextmanager
    async def _bounded(self, call: CallLog) -> AsyncIterator[None]:
        """Cut a unary call at server.max_call_seconds (gRPC itself cuts it at its client's deadline)."""
        since = time.time()
        try:
            async with asyncio.timeout(self.max_call_seconds):
                yield
        except TimeoutError:
            raise self._call_timeout(call, since) from None

    async def _bounded_events(self, events: AsyncGenerator[RouterEvent, None], release: Callable[[], None],
                              call: CallLog) -> AsyncIterator[RouterEvent]:
        """``events`` cut at server.max_call_seconds, for a streamed call.

        A timeout around the whole stream would also fire while gRPC sends an event (to a client
        reading slowly): the cancellation then lands in gRPC's own code, which ends the call with no
        status at all, and its client, if it reads again, waits for one forever (gRPC cannot send a
        status either while the client reads nothing). So the call is cancelled only while it waits for
        the answer's next event; past the limit during a send, ``events`` (suspended at its yield, not
        running) is closed from a task of its own: its provider call ends (the upstream request is
        cancelled), the session it holds is free for the next call (its turn is not kept: the client never
        got the whole answer), and its call slot (server.max_concurrent_calls) is given back with
        ``release``, so clients that stop reading hold neither a provider nor every slot. The call ends
        with CALL_TIMEOUT as soon as the send is done.
        """
        task = asyncio.current_task()
        assert task is not None
        since = time.time()
        state = {"waiting": False, "expired": False}
        closing: list[asyncio.Task[None]] = []  # the task closing ``events`` past the limit, while a send blocks

        def expire() -> None:
            state["expired"] = True
            if state["waiting"]:
                task.cancel()
            else:
                release()
                closing.append(asyncio.get_running_loop().create_task(_close_answer(events, call)))
                log.warning("%s %s: its client has read nothing for a while past server.max_call_seconds "
                            "(%g s): its provider call is closed and its call slot given back; the call ends "
                            "when its client reads again or leaves", call.method, call.request_id,
                            self.max_call_seconds)

        timer = asyncio.get_running_loop().call_later(self.max_call_seconds, expire)
        try:
            while True:
                state["waiting"] = True
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if state["expired"] and task.uncancel() == 0:  # our timer's, not the client's
                        raise self._call_timeout(call, since) from None
                    raise
                finally:
                    state["waiting"] = False
                yield event
                if state["expired"]:
                    raise CallTimeout(f"the call ran longer than server.max_call_seconds ({self.max_call_seconds:g} s) "
                                      "while its client was not reading the answer")
        finally:
            timer.cancel()
            if closing:  # nothing may touch ``events`` (its caller closes it again) before it is closed
                await _finished(closing[0])

    @unary
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext,
                       call: CallLog) -> pb.GenerateResponse:
        with self.calls.hold():  # before the request (its media) is processed
            req = self._request(request.request)
            call.session = req.session_id
            answer = self.app.answer(req, self._deadline(context), call.request_id, held=True)
            async with self._bounded(call), aclosing(answer) as events:
                async for event in events:
                    if isinstance(event, Done):
                        response = pb.GenerateResponse(answer=wire.answer_to_proto(event.answer, self.app.redact))
                        return _log_if_large(within_limit(response, self.max_message_bytes))
                    if isinstance(event, RouteChosen):
                        call.route = event.route
        raise RuntimeError("the answer ended without a Done event")

    @streaming
    async def StreamGenerate(self, request: pb.StreamGenerateRequest, context: grpc.aio.ServicerContext,
                             call: CallLog) -> AsyncIterator[pb.StreamGenerateResponse]:
        with self.calls.hold() as release:
            req = self._request(request.request)
            call.session = req.session_id
            async with aclosing(self.app.answer(req, self._deadline(context), call.request_id)) as answer, \
                    aclosing(self._bounded_events(answer, release, call)) as events:
                async for event in events:
                    if not isinstance(event, TextDelta):
                        if isinstance(event, RouteChosen):
                            call.route = event.route
                        yield _streamed_within_limit(_event_to_proto(event, self.app.redact), self.max_message_bytes)
                    elif len(event.text) <= self.delta_chars:
                        yield pb.StreamGenerateResponse(text_delta=pb.TextDelta(text=event.text))
                    else:
                        for piece in text_pieces(event.text, self.delta_chars):
                            yield pb.StreamGenerateResponse(text_delta=pb.TextDelta(text=piece))

    @unary
    async def UploadMedia(self, request_iterator: AsyncIterator[pb.UploadMediaRequest],
                          context: grpc.aio.ServicerContext, call: CallLog) -> pb.UploadMediaResponse:
        with self.uploads.hold():  # before anything is read or a temp file made
            async with aclosing(_within_idle(request_iterator)) as messages:
                return await self._upload(messages, context)

    async def _upload(self, messages: AsyncIterator[pb.UploadMediaRequest],
                      context: grpc.aio.ServicerContext) -> pb.UploadMediaResponse:
        """Store the upload of ``messages``: the metadata first, then the chunks."""
        first = parsed(await anext(messages, None))
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidRequest("the first UploadMedia message must carry metadata",
                                 violations=[FieldViolation("metadata", "send metadata first, then chunks")])
        meta = first.metadata
        modality = wire.modality_from_proto(meta.modality)
        if modality is None:
            raise InvalidRequest(f"the upload's modality is {'missing' if not meta.modality else meta.modality}",
                                 violations=[FieldViolation("metadata.modality", wire.modality_problem(meta.modality))])
        # stored with the upload, answered back and logged: bounded and without control characters, as in requests
        problems = [*wire.filename_problems(meta.filename, "metadata.filename"),
                    *wire.mime_type_problems(meta.mime_type, "metadata.mime_type")]
        if problems:
            raise InvalidRequest("invalid upload metadata: " + "; ".join(f"{p.field}: {p.description}" for p in problems),
                                 violations=problems)
        async with aclosing(_upload_chunks(messages, context)) as chunks:
            stored = await self.app.media.upload(meta.mime_type, modality, meta.size_bytes, chunks)
        return pb.UploadMediaResponse(media_id=stored.media_id, size_bytes=stored.size,
                                      mime_type=stored.mime_type, modality=wire.modality_to_proto(stored.modality))

    @unary
    async def ExplainRoute(self, request: pb.ExplainRouteRequest, context: grpc.aio.ServicerContext,
                           call: CallLog) -> pb.ExplainRouteResponse:
        with self.calls.hold():
            req = self._request(request.request)
            call.session = req.session_id
            route = await self.app.explain(req)
        return pb.ExplainRouteResponse(route=wire.route_to_proto(route, self.app.redact))

    @unary
    async def ListProviders(self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext,
                            call: CallLog) -> pb.ListProvidersResponse:
        providers = []
        cooling = self.app.cooldowns.left()
        for entry in self.app.providers():
            info = wire.provider_to_proto(entry, self.app.redact)
            _health_to_proto(self.app.health.of(entry.name), info.health)
            for model in info.models:
                model.cooldown_seconds, model.cooldown_reason = cooling.get(f"{entry.name}/{model.name}", (0.0, ""))
            providers.append(info)
        return pb.ListProvidersResponse(providers=providers)

    @unary
    async def ResetSession(self, request: pb.ResetSessionRequest, context: grpc.aio.ServicerContext,
                           call: CallLog) -> pb.ResetSessionResponse:
        if not request.session_id:
            raise InvalidRequest("session_id is required",
                                 violations=[FieldViolation("session_id", "required")])
        problems = wire.session_id_problems(request.session_id, "session_id")
        if problems:  # not logged: the access log would carry it
            raise InvalidRequest(f"invalid session_id: {problems[0].description}", violations=problems)
        call.session = request.session_id
        removed = await self.app.areset_session(request.session_id, erase_media=request.erase_media)
        return pb.ResetSessionResponse(turns_removed=removed.turns, media_removed=removed.media)

    @unary
    async def DeleteMedia(self, request: pb.DeleteMediaRequest, context: grpc.aio.ServicerContext,
                          call: CallLog) -> pb.DeleteMediaResponse:
        problems = wire.media_ids_problems(request.media_ids)
        if problems:  # no id quoted back: a typo may be anything
            raise InvalidRequest(f"invalid media_ids: {problems[0].field} {problems[0].description}",
                                 violations=problems)
        done = await self.app.adelete_media(list(request.media_ids))

        def deletion(media_id: str) -> pb.MediaDeletion:
            """What was done with ``media_id``, as the client gets it."""
            if media_id in done.deleted:
                return pb.MediaDeletion(media_id=media_id, status=pb.MEDIA_DELETION_STATUS_DELETED)
            if media_id in done.kept:
                return pb.MediaDeletion(media_id=media_id, status=pb.MEDIA_DELETION_STATUS_KEPT_IN_SESSION,
                                        sessions=done.kept[media_id])
            return pb.MediaDeletion(media_id=media_id, status=pb.MEDIA_DELETION_STATUS_NOT_FOUND)

        return pb.DeleteMediaResponse(media=[deletion(media_id) for media_id in request.media_ids])


def _health_to_proto(recent: RecentHealth | None, into: pb.ProviderHealth) -> None:
    """Fill ``into`` with a provider's recent health (left empty for a provider never called); the
    failure's message is the daemon's own (:attr:`router.health.Failure.message`): any client may read it."""
    if recent is None:
        return
    into.window_seconds, into.succeeded_calls, into.failed_calls = recent.window_seconds, recent.succeeded, recent.failed
    failure = recent.last_failure
    if failure is not None:
        into.last_failure_unix_seconds, into.last_failure_reason, into.last_failure_message = (
            failure.at, failure.reason, failure.message)


def _event_to_proto(event: object, redact: Callable[[str], str]) -> pb.StreamGenerateResponse:
    if isinstance(event, TextDelta):
        return pb.StreamGenerateResponse(text_delta=pb.TextDelta(text=event.text))
    if isinstance(event, TranscriptReady):
        return pb.StreamGenerateResponse(transcript=wire.transcript_to_proto(event.transcript))
    if isinstance(event, StepUsage):
        return pb.StreamGenerateResponse(usage=wire.usage_to_proto(event.usage))
    if isinstance(event, RouteChosen):
        return pb.StreamGenerateResponse(route_chosen=pb.RouteChosen(
            route=wire.route_to_proto(event.route, redact, every_rule=False)))
    if isinstance(event, Done):
        return pb.StreamGenerateResponse(done=pb.Done(answer=wire.answer_to_proto(event.answer, redact)))
    raise TypeError(f"unknown event {type(event).__name__}")


#: Larger TCP reads for media uploads: fewer reads and slices per MiB (bench/ figure 4a). gRPC sizes
#: each read between the min and the max by what arrived last, so small calls keep small reads.
TCP_READ_OPTIONS = [
    ("grpc.experimental.tcp_read_chunk_size", 4 * 1024 * 1024),
    ("grpc.experimental.tcp_max_read_chunk_size", 16 * 1024 * 1024),
]

#: The most bytes of headers (metadata) a call may send: the same soft and hard limit, so a call is
#: refused or not by its size alone. gRPC's defaults (8 KiB soft, 16 KiB hard) refused a growing random
#: share of calls between the two (a 12 KB tracing header: 4 calls in 10).
MAX_METADATA_BYTES = 16 * 1024
METADATA_OPTIONS = [
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
]


#: Keepalive (gRFC A8, A9). The daemon pings a connection that has been quiet for
#: server.keepalive_seconds, so that NAT and load balancer idle timers do not drop a long silent call,
#: and closes it when the ping goes unanswered for KEEPALIVE_TIMEOUT_SECONDS (a client that vanished
#: would otherwise hold its descriptor for gRPC's default of 2 h). Clients may ping as often as every
#: CLIENT_PING_SECONDS, idle or not: gRPC's default (once in 5 min) answers the 10 s keepalive many
#: grpc-js, Go and Java clients use with GOAWAY too_many_pings, which kills their calls.
KEEPALIVE_TIMEOUT_SECONDS = 10.0
CLIENT_PING_SECONDS = 5.0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def transport_options(keepalive_seconds: float, max_concurrent_streams: int) -> list[tuple[str, int]]:
    """The HTTP/2 keepalive and ping policy, and the streams (calls) one connection may have open at
    once; a daemon that pings more often than every CLIENT_PING_SECONDS lets its clients do as much
    (their network drops idle connections as soon)."""
    return [
        # advertised in the HTTP/2 SETTINGS: a client queues its calls past it, so one connection
        # cannot hold every slot of server.max_concurrent_calls (or uploads) while others are refused
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.keepalive_time_ms", _ms(keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_SECONDS)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(min(CLIENT_PING_SECONDS, keepalive_seconds))),
    ]


#: The service of server reflection's stable protocol, which newer tools (grpc-java's and grpc-go's
#: reflection clients, GUI clients) speak alone; grpcio-reflection serves only v1alpha.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _declare_reflection_v1() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to the default descriptor pool, made from v1alpha's
    (grpcio-reflection ships no v1 module; the two files differ only in their package), so that tools
    can describe the v1 service they find listed."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    file.ClearField("options")

    def in_v1(type_name: str) -> str:  # references are fully qualified: they named v1alpha's messages
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.", 1)

    for message in file.message_type:
        for one in message.field:
            if one.type_name:  # set only for message and enum fields (setting it makes it present)
                one.type_name = in_v1(one.type_name)
    for method in file.service[0].method:
        method.input_type, method.output_type = in_v1(method.input_type), in_v1(method.output_type)
    pool.Add(file)


class _Reflection(reflection.aio.ReflectionServicer):
    """grpcio-reflection's servicer, which also finds the file of a method's full name
    (``mmrouter.v1.RouterService.Generate``), as ``grpcurl describe <Service>.<Method>`` asks: upb's
    descriptor pool finds no method by name (grpc/grpc#34743), so the servicer answered NOT_FOUND."""

    def _file_containing_symbol(self, request: reflection_pb2.ServerReflectionRequest,
                                fully_qualified_name: str) -> reflection_pb2.ServerReflectionResponse:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):  # a method of a service: the service's file
            service, _, method = fully_qualified_name.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                return response
            if method in found.methods_by_name:
                return super()._file_containing_symbol(request, service)
        return response


def _add_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve server reflection for ``service_names`` and for itself, as ``grpc.reflection.v1alpha``
    (grpcio-reflection's) and as ``grpc.reflection.v1``: the two protocols' messages are the same field
    for field, so v1's method is the same servicer with the same (de)serializers."""
    _declare_reflection_v1()
    servicer = _Reflection((*service_names, REFLECTION_V1))
    for service in (reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
                    descriptor_pool.Default().FindServiceByName(REFLECTION_V1)):
        add_guarded_service(servicer, server, service, reflection_pb2, _refuse)


class HealthServicer(health.aio.HealthServicer):
    """grpcio-health-checking's servicer, with ``List`` (added to health.proto in 2024; the servicer answers
    it UNIMPLEMENTED, logging an ERROR), and ``Watch`` streams the stopping daemon ends itself (see
    :meth:`end_watches`)."""

    def __init__(self) -> None:
        super().__init__()
        self._watches_ended = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        """The status of ``request.service`` now and at each change (as grpcio-health-checking's ``Watch``,
        on its conditions), until :meth:`end_watches`: then the stream ends with UNAVAILABLE (SHUTTING_DOWN)
        once its last status (NOT_SERVING) is sent. Its own loop, not the servicer's cancelled: a cancel could
        land before NOT_SERVING was written, or in gRPC's send of it."""
        condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        sent = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != sent:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        sent = status
                    if self._watches_ended:
                        break
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]
        await _refuse(context, DaemonStopping("the daemon is stopping: this health watch ends; watch again once "
                                              "the daemon is back", retry_after=SHUTDOWN_RETRY_SECONDS))

    async def end_watches(self) -> None:
        """End every ``Watch`` stream, and any that starts later, after its last status: left open, gRPC's
        stop cut them with an HTTP/2 GOAWAY of INTERNAL_ERROR, which grpc-js clients report as INTERNAL."""
        self._watches_ended = True
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()

    async def List(self, request: health_pb2.HealthListRequest,
                   context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        """The status of every service the daemon reports on."""
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()})


async def _refuse(context: grpc.aio.ServicerContext, error: RouterError) -> None:
    """End a health or reflection call with ``error`` (a request that cannot be parsed, the daemon's stop), as
    RouterService's calls end."""
    status = rpc_status.to_status(error_status(error, str))
    await context.abort(status.code, status.details, status.trailing_metadata)


async def start_server(app: App, address: str, certificates: ServerCertificates | None = None,
                       ) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Start serving ``app`` on ``address`` (port 0 picks a free one), over TLS with ``certificates``;
    return the server, port and health."""
    limit = app.config.server.max_message_bytes
    token = app.config.server.auth_token
    # the token in force: a reload may rotate it (App.reload)
    server = grpc.aio.server(interceptors=[TokenAuth(lambda: app.config.server.auth_token)] if token else [], options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # gRPC sets SO_REUSEPORT by default: a second daemon on a port in use would start and share
        # the connections with the first (another config, another data directory). Refuse it instead.
        ("grpc.so_reuseport", 0),
        *TCP_READ_OPTIONS,
        *METADATA_OPTIONS,
        *transport_options(app.config.server.keepalive_seconds, app.config.server.max_concurrent_streams),
    ])
    add_router_service(RouterServicer(app), server)
    health_servicer = HealthServicer()
    add_guarded_service(health_servicer, server, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2,
                        _refuse)
    _add_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                             reflection.SERVICE_NAME))
    port = _listen(server, address, certificates)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def _listen(server: grpc.aio.Server, address: str, certificates: ServerCertificates | None) -> int:
    """Bind ``address``; return the port. A host name is bound on each of its addresses, and refused
    (OSError) when one of them is in use: gRPC would serve the others alone, beside the process that
    holds it."""
    credentials = certificates.credentials() if certificates is not None else None  # one for every port:
    # a reloaded certificate is handed to one credentials object only

    def add(one: str) -> int:
        return server.add_insecure_port(one) if credentials is None else server.add_secure_port(one, credentials)

    parsed_address = parse_address(address)
    if parsed_address is None:  # a unix socket
        _refuse_a_socket_in_use(address)
        return add(address)
    host, port = parsed_address
    resolved = _addresses_of(host)
    if not resolved:  # an IP address, or a name gRPC will report it cannot resolve
        return add(address)
    bound = False
    for family, ip in resolved:
        one = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        problem = _bind_errno(family, ip, port)
        if problem in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # gRPC skips these too
            log.warning("not listening on %s: this machine has no such address", one)
        elif problem is not None:
            raise OSError(problem, f"cannot listen on {address}: it resolves to {' and '.join(ip for _, ip in resolved)}, "
                          f"and {one} cannot be bound ({os.strerror(problem)}; another daemon?): free it, or set "
                          "server.address (--address) to one IP address and port")
        else:
            port, bound = add(one), True  # port 0: the next addresses take the port the first one got
    return port if bound else add(address)  # none usable: gRPC says why


def _refuse_a_socket_in_use(address: str) -> None:
    """Refuse (OSError, EADDRINUSE) a ``unix:`` socket another process accepts connections on: gRPC replaces
    the file of the socket it binds, and the other daemon would go on serving, unreachable, until either
    stops and takes the file away from both. A file nothing listens on (left by a daemon killed) is
    replaced, as before."""
    path = address.removeprefix("unix:").removeprefix("//") if address.startswith("unix:") else ""
    if not path or not stat.S_ISSOCK(_mode_of(path)):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:  # refused: nobody listens
            return
    raise OSError(errno.EADDRINUSE, f"cannot listen on {address}: another process listens on it (another "
                                    "daemon?): stop it, or set server.address (--address) to another path")


def _mode_of(path: str) -> int:
    """The file mode of ``path``, 0 when there is none."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


#: What gRPC's own resolver makes of ``localhost`` whatever /etc/hosts says: both loopbacks.
_LOCALHOST = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def _addresses_of(host: str) -> list[tuple[int, str]]:
    """The IP addresses (family, address) the host name ``host`` resolves to; [] for an IP address or a
    name that does not resolve (gRPC reports it). Each is bound by itself, so gRPC never resolves the
    name again (for ``localhost`` it finds ::1 even where the system's resolver does not)."""
    try:
        ipaddress.ip_address(host)
        return []
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    families = (socket.AF_INET, socket.AF_INET6)
    found = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos if family in families]
    if host.lower().rstrip(".") == "localhost":
        found += _LOCALHOST
    return list(dict.fromkeys(found))


def _bind_errno(family: int, ip: str, port: int) -> int | None:
    """Why ``ip``:``port`` cannot be bound now (an errno), or None."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT does not count
            probe.bind((ip, port))
    except OSError as exc:
        return exc.errno
    return None


def reload_config(app: App, config_path: Path | None, certificates: ServerCertificates | None = None,
                  log_filter: redact.SecretFilter | None = None,
                  server_overrides: Mapping[str, Any] | None = None) -> None:
    """Read the configuration file again and serve it; a bad file changes nothing.

    Rules, providers and plugins are swapped in (see :meth:`App.reload`); a TLS daemon also reads
    its certificate, key and client CA files again (a rotated certificate is served from the next
    connection on). Server settings need a restart; those the command line set (``server_overrides``,
    e.g. ``--address``) keep its values. The file is read once: its errors' lines are those of the text
    served, whatever a writer does meanwhile. All of it runs here, on the caller's thread: SIGHUP reads
    and parses the file off the event loop (see :func:`reload_off_loop`)."""
    _serve_read(app, config_path, _read_for_reload(config_path, server_overrides), certificates, log_filter)


async def reload_off_loop(app: App, config_path: Path | None, certificates: ServerCertificates | None = None,
                          log_filter: redact.SecretFilter | None = None,
                          server_overrides: Mapping[str, Any] | None = None) -> None:
    """SIGHUP: :func:`reload_config`, the file read and parsed in a thread of its own (a 2,000-rule file takes
    seconds: calls and health checks are served meanwhile); only the swap (:meth:`App.reload`, which makes
    the providers) and the logging after it run on the event loop."""
    read = await _in_own_thread(_read_for_reload, config_path, server_overrides)
    _serve_read(app, config_path, read, certificates, log_filter)


#: a configuration file read for a reload: its text, its configuration (the command line's server settings
#: in it) and the secrets it holds (see :func:`router.core.secrets_of`)
ReadConfig = tuple[str, Config, set[str]]


def _read_for_reload(config_path: Path | None,
                     server_overrides: Mapping[str, Any] | None) -> ReadConfig | ConfigError | None:
    """``config_path`` read and parsed, touching nothing the daemon runs (a reload runs it in a thread); the
    error of a file that cannot be served, or None without a file (the daemon runs the embedded default)."""
    from .core import config_names

    if config_path is None:
        return None
    try:
        text = read_config_file(config_path)  # before the pause: a read may hang (a FIFO, a hung network mount)
        with _no_cyclic_gc():
            config = parse_config(text, str(config_path))
    except ConfigError as exc:
        return exc
    if server_overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=server_overrides)})
    return text, config, secrets_of(config.providers, config.server.auth_token, names=config_names(config))


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused meanwhile (in the whole process): parsing a large file makes hundreds
    of thousands of YAML objects, whose allocations set off full collections of the daemon's heap, each holding
    the GIL, so the event loop too, for up to a second (a 2,000-rule file: 1-2 s of such pauses; see
    bench/README.md, "Reloads of a large routing file"). Those objects are freed by their reference counts;
    other cyclic garbage waits the few seconds of the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _serve_read(app: App, config_path: Path | None, read: ReadConfig | ConfigError | None,
                certificates: ServerCertificates | None, log_filter: redact.SecretFilter | None) -> None:
    """Swap in the configuration :func:`_read_for_reload` ``read`` (see :func:`reload_config`) and log what
    changed; on the event loop."""
    from .config_warnings import NO_ROUTE_WARNING, routes_nothing
    from .core import log_refused_reload, reload_changes, reload_losses

    if read is None:
        log.warning("SIGHUP: nothing to reload, the daemon runs the embedded default (start it with --config)")
        return
    if isinstance(read, ConfigError):
        log_refused_reload(app.redact(read.message))
        return
    text, config, secrets = read
    masked = log_filter.secrets if log_filter is not None else ()
    if log_filter is not None:  # before anything logs the new keys' providers
        log_filter.add(secrets)
    before, providers_before = app.config, dict(app.registry.entries)
    reloaded = app.reload(config, text, str(config_path))
    if reloaded is None:  # refused, and said why: its keys, never used, are not masked from now on
        if log_filter is not None:
            log_filter.secrets = masked
        return
    if log_filter is not None:
        unmask_names(log_filter, config)
    remade, needs_restart = reloaded
    log.info("SIGHUP: rules reloaded from %s (%d rules, default %s)", config_path, len(config.routes),
             config.default or "none")
    for change in reload_changes(before, config, providers_before, app.registry.entries):
        log.info("SIGHUP: %s", change)
    if (losses := reload_losses(before, config)) is not None:
        log.warning("SIGHUP: %s", losses)
    if routes_nothing(config):
        log.warning("%s", NO_ROUTE_WARNING)
    _log_replaced_rules(config)
    if remade:
        log.info("SIGHUP: providers made again (calls under way finish on the old ones)")
        _log_providers(app)
    tls = config.server.tls
    if (tls is None) != (certificates is None):
        needs_restart.append("server.tls (switching between TLS and plaintext)")
    elif certificates is not None and tls is not None:
        try:
            certificates.reload(tls)
        except ConfigError as exc:
            log.error("SIGHUP: TLS certificate not reloaded, the running one stays: %s", exc.message)
        else:
            log.info("SIGHUP: TLS certificate reloaded from %s (used from the next connection on)", tls.cert_file)
    if needs_restart:
        log.warning("SIGHUP: changes to %s take effect only after a restart", ", ".join(needs_restart))


async def _in_own_thread(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)``, run in a daemon thread of its own. ``asyncio.to_thread``'s threads are waited for
    when ``asyncio.run`` ends: a daemon stopping during a reload would wait for its parse, or forever for a
    file whose read hangs (a FIFO, a hung network mount). Cancelled, this drops its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():  # not cancelled meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the daemon stopped)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=f"mmrouter-{getattr(func, '__name__', 'work')}", daemon=True).start()
    return await future


class Reloads:
    """SIGHUP's reloads (:func:`reload_off_loop`), one at a time and in order, so that the file's last state is
    served: a SIGHUP that comes while a reload runs is not lost, it makes one more once that one ended (several
    such make just the one: it reads the file as it is then)."""

    def __init__(self, reload: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._reload = reload
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """The SIGHUP handler (on the event loop): reload now, or once the reload under way ended."""
        if self._task is not None and not self._task.done():
            self._again = True
        else:
            self._task = asyncio.create_task(self._run(), name="mmrouter-reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._reload()
            except Exception:  # a SIGHUP's callback that raised was logged by the loop: so is this reload
                log.exception("SIGHUP: the reload failed")
            if not self._again:
                return

    async def aclose(self) -> None:
        """Cancel the reload under way (the daemon stops): a file still being read or parsed is not swapped in,
        and no reload runs after; the swap itself, on the loop, is never cut."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])


def unmask_names(log_filter: redact.SecretFilter, config: Config) -> None:
    """Mask no name ``config`` uses in the log (see :func:`router.core.config_secrets`): a plugin remembers the
    key it resolved in every log filter (:func:`redact.remember`), a placeholder ``api_key: ollama`` too."""
    from .core import config_names

    names = config_names(config)
    if any(secret in names for secret in log_filter.secrets):
        log_filter.secrets = redact.longest_first(s for s in log_filter.secrets if s not in names)


def _log_replaced_rules(config: Config) -> None:
    for index, name in replaced_default_rules(config):
        log.info("routes.%d %r replaces the embedded rule of that name (extend_default_routes): the embedded one "
                 "is not used", index, name)


def _log_providers(app: App) -> None:
    for entry in app.providers():
        log.info("provider %-12s %s%s", entry.name, entry.state.value, f" ({entry.reason})" if entry.reason else "")


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold the data directory for this daemon (an exclusive lock on ``daemon.lock``, released when
    the process ends): two daemons on one directory would number a session's turns over each other.
    ``mmrouter prune`` and ``stats`` take no lock and stay usable beside it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "daemon.lock", "a+", encoding="utf-8")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise ConfigError(f"another mmrouter daemon{f' (pid {owner})' if owner else ''} already uses the data "
                          f"directory {data_dir}: if it is stopping (a restart), start this one once it has exited "
                          "(at most its server.shutdown_grace_seconds); else give this one its own --data-dir "
                          "(server.data_dir): a new one holds none of the sessions and uploads of this one") from None
    except OSError as exc:  # a file system without locks (some network mounts): serve, but say so
        log.warning("cannot lock the data directory %s (%s): make sure no other daemon uses it", data_dir,
                    exc.strerror or exc)
        return handle
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


#: How often the daemon looks whether its data directory, ``daemon.lock`` and ``sessions.sqlite`` are still the
#: files it opened (see :func:`watch_data_dir`): three stat() calls off the event loop, nothing per call.
DATA_DIR_CHECK_SECONDS = 2.0

#: A file the daemon holds: its identity (device, inode) when opened, None when it was already gone.
Held = dict[Path, tuple[int, int] | None]


def held_files(data_dir: Path, data_lock: IO[str], app: App) -> Held:
    """The data directory, its ``daemon.lock`` and ``sessions.sqlite``, each with the identity of what the
    daemon opened (see :func:`data_dir_change`)."""
    try:
        directory: tuple[int, int] | None = file_identity(data_dir)
    except OSError:  # removed since the daemon made it: the first look says so
        directory = None
    lock = os.fstat(data_lock.fileno())
    return {data_dir: directory, data_dir / "daemon.lock": (lock.st_dev, lock.st_ino),
            app.sessions.path: app.sessions.identity}


def data_dir_change(held: Held) -> str | None:
    """What became of the first of the ``held`` files that is no longer the one the daemon opened ("<path> was
    removed", "<path> was replaced": by a new directory, a restored backup), or None while all are."""
    for path, identity in held.items():
        try:
            if file_identity(path) != identity:
                return f"{path} was replaced"
        except (FileNotFoundError, NotADirectoryError):
            return f"{path} was removed"
        except OSError:  # unreadable just now (permissions, an I/O error): not known to be gone
            continue
    return None


async def watch_data_dir(app: App, held: Held, health_servicer: health.aio.HealthServicer,
                         every: float = DATA_DIR_CHECK_SECONDS) -> None:
    """Look every ``every`` seconds whether the ``held`` files are still those the daemon opened. Once one was
    removed or replaced (an operator's ``rm -rf``, a cleanup job, a re-provisioned volume), the daemon's
    database and lock are files no longer in its data directory: what it stored from then on would be lost at
    its restart, unsaid. So it logs an ERROR, stores nothing more (:meth:`App.stop_storing`: calls on a
    session, uploads and ResetSession are refused with DATA_DIR_GONE; calls without a session are still
    answered) and its health says NOT_SERVING, until it is restarted. A second daemon may then take the
    directory (its lock is another file): this one writes nothing there."""
    while (change := await asyncio.to_thread(data_dir_change, held)) is None:
        await asyncio.sleep(every)
    app.stop_storing()
    log.error("the data directory was removed or replaced while the daemon ran (%s): the daemon stores nothing "
              "from now on (calls on a session, uploads and ResetSession are refused with DATA_DIR_GONE; statistics "
              "are not kept) and its health says NOT_SERVING; what it stored since then is lost. Restart it", change)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def warn_if_open_to_others(data_dir: Path) -> None:
    """Warn when the data directory, its media or its sessions database can be read or entered by
    other local users: the daemon's umask 077 covers what it creates, not what an older version or an
    operator's umask made before."""
    open_ = []
    for path in (data_dir, data_dir / "media", data_dir / "sessions.sqlite"):
        with contextlib.suppress(OSError):
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                open_.append(f"{path} ({mode:04o})")
    if open_:
        log.warning("other local users may read the conversations and media: %s; if not meant, run "
                    "chmod -R go-rwx %s", ", ".join(open_), shlex.quote(str(data_dir)))


def _config_text(config_path: Path | None) -> str | None:
    """The text of the file at ``config_path`` (read already, so the lines of its errors can be told);
    None without a file or when it cannot be read again."""
    if config_path is None:
        return None
    try:
        return read_config_file(config_path)
    except (OSError, ConfigError):
        return None


#: Fewer open files than this, even at the hard limit, is warned of at start.
LOW_OPEN_FILES = 4096


def raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard one: each client connection, upload and upstream
    connection takes a descriptor, and at the usual soft limit of 1024, 1,100 idle connections (no token
    needed to open them) left the daemon unreachable. Warn when even the hard limit is low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILES:
        log.warning("the daemon may open at most %d files (ulimit -n): each client connection, upload and "
                    "provider connection takes one, so a few hundred idle connections can make it unreachable; "
                    "raise the limit (LimitNOFILE= in a systemd unit, ulimits in a container)", soft)


class StartInterrupted(Exception):
    """A SIGINT came while the daemon started (held until it could stop cleanly): it stopped without serving."""


class _HeldInterrupt:
    """The SIGINT handler while the daemon starts: it notes the signal, for :func:`serve` to stop the start
    where it can stop cleanly. A handler of Python's runs in the main thread, whichever thread the signal
    reached (the log's writer thread, gRPC's), and in place of asyncio's, which cancels the start wherever it
    is: in gRPC's server start too, which then fails on the closed loop with errors logged."""

    received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True


_start_up_interrupt = _HeldInterrupt()


def hold_start_up_interrupts() -> None:
    """Hold SIGINT until :func:`serve` serves (or stops the start on it): called by ``mmrouter serve`` right
    before the event loop starts. A SIGINT the command was started to ignore stays ignored until then."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _start_up_interrupt)


#: Less address space than this (ulimit -v, RLIMIT_AS) is warned of at start: the daemon maps about 0.7 GiB
#: once serving with every plugin (VmPeak 0.70-0.76 GiB on 2 cores; mostly thread stacks and malloc arenas,
#: never touched, and more with more cores), and gRPC aborts (SIGABRT) when it cannot start its threads.
LOW_ADDRESS_SPACE = 1024**3
#: Less address space than this is warned of once the ``local`` provider is ready: its first OCR, speech or
#: video call maps 1.1-2.0 GiB in all (VmPeak after one OCR 1.8, one video 2.0), and under a lower limit those
#: calls fail (UNAVAILABLE, saying so) while PDFs and the cloud providers work.
LOCAL_ADDRESS_SPACE = 2150 * 1024**2


def warn_if_address_space_low() -> None:
    """Warn when the address space (``ulimit -v``) is limited under :data:`LOW_ADDRESS_SPACE`: gRPC's threads
    may then fail to start, and the daemon aborts with only gRPC's own lines (``pthread_create failed``)."""
    soft = address_space_limit()
    if soft is not None and soft < LOW_ADDRESS_SPACE:
        log.warning("the daemon's address space is limited to %d MiB (ulimit -v): it maps about 700 MiB once "
                    "serving, and gRPC aborts when it cannot start a thread (\"pthread_create failed\"); raise "
                    "the limit to %d MiB or more, or lift it (LimitAS= in a systemd unit)", soft // 1024**2,
                    LOW_ADDRESS_SPACE // 1024**2)


def warn_if_address_space_low_for_local(app: App) -> None:
    """Warn when the ``local`` provider is ready under an address-space limit of less than
    :data:`LOCAL_ADDRESS_SPACE` (but at least :data:`LOW_ADDRESS_SPACE`, warned of already)."""
    soft = address_space_limit()
    if soft is not None and LOW_ADDRESS_SPACE <= soft < LOCAL_ADDRESS_SPACE and app.registry.ready("local"):
        log.warning("the daemon's address space is limited to %d MiB (ulimit -v): the local provider's OCR, speech "
                    "and video calls need up to %d MiB and fail under it (PDF text and the cloud providers work); "
                    "raise the limit, lift it (LimitAS= in a systemd unit), or disable local (plugins.disabled)",
                    soft // 1024**2, LOCAL_ADDRESS_SPACE // 1024**2)


async def serve(config: Config, *, ready_file: Path | None = None, config_path: Path | None = None,
                extra_plugins: Mapping[str, object] | None = None,
                server_overrides: Mapping[str, Any] | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT, then drain in-flight calls and exit.

    SIGHUP re-reads ``config_path`` and swaps in its rules, providers and TLS certificate (see
    :func:`reload_off_loop`, one at a time: :class:`Reloads`); ``server_overrides`` are the server settings
    the command line gave. Once the shutdown begins, SIGHUP is ignored until the process exits (see
    :func:`_ignore_reloads`).
    """
    from .config_warnings import NO_ROUTE_WARNING, routes_nothing
    from .core import config_names

    try:  # the command line's --address is not validated with the file
        parse_address(config.server.address)
    except ValueError as exc:
        raise ConfigError(f"server.address (--address): {exc}") from None
    if ready_file is not None:
        check_ready_file(ready_file)
    log_filter = redact.install(secrets_of(config.providers, config.server.auth_token, names=config_names(config)))
    logging.getLogger("grpc._cython.cygrpc").addFilter(SendFailedFilter())
    # what the daemon writes (conversations, media, the sessions database) is its users' data: other
    # local users may not read it, whatever the operator's umask (022 made sessions.sqlite readable)
    os.umask(0o077)
    raise_open_files_limit()
    warn_if_address_space_low()
    data_dir = Path(config.server.data_dir).expanduser()
    made_data_dir = not data_dir.exists()  # removed again if the daemon does not start (a mistyped data_dir)
    data_lock = lock_data_dir(data_dir)
    if ready_file is not None:  # a stopped daemon's address must not be read as this one's (removed only
        _remove_ready_file(ready_file)  # now: a second daemon refused the data directory leaves it alone)
    warn_if_open_to_others(data_dir)
    warn_if_token_in_clear(config.server.address, config.server.auth_token, config.server.tls is not None)
    if config.server.tls:
        warn_if_key_open(config.server.tls)
    app = App(config, extra_plugins=extra_plugins)
    unmask_names(log_filter, config)
    warn_if_address_space_low_for_local(app)
    # refused as by `config check`: a section its plugin refused breaks its provider (every request to it
    # fails), and routing would skip a target naming a model its provider lacks on every request, unsaid
    text = _config_text(config_path)
    refused, warnings = missing_models(config, app.registry)
    problems = [*refused_sections(config, app.registry, text, str(config_path)), *refused]
    if problems:
        await app.aclose()
        _unlock(data_lock, data_dir if made_data_dir else None)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    log_warnings(warnings)
    if routes_nothing(config):
        log.warning("%s", NO_ROUTE_WARNING)
    _log_replaced_rules(config)
    try:
        certificates = ServerCertificates(config.server.tls) if config.server.tls else None
        server, port, health_servicer = await start_server(app, config.server.address, certificates)
    except BaseException:
        await app.aclose()
        _unlock(data_lock, data_dir if made_data_dir else None)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads = Reloads(functools.partial(reload_off_loop, app, config_path, certificates, log_filter, server_overrides))
    loop.add_signal_handler(signal.SIGHUP, reloads.request)
    # `mmrouter serve` holds SIGINT and SIGHUP while the daemon starts (see hold_start_up_interrupts; SIGHUP's
    # default action would end it): a SIGINT sent since ends the start here, a SIGHUP is a reload
    if _start_up_interrupt.received:
        await server.stop(0)
        await app.aclose()
        _unlock(data_lock, data_dir if made_data_dir else None)
        raise StartInterrupted  # not KeyboardInterrupt: raised from a task, it would stop the loop at once,
        # before gRPC's stop ends (its tasks then fail on the closed loop, with errors logged)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    bound = _bound_address(config.server.address, port)
    _log_providers(app)
    tls = config.server.tls
    security = "plaintext" if tls is None else "TLS, client certificates required" if tls.client_ca_file else "TLS"
    log.info("mmrouter %s listening on %s (%s; data in %s%s)", version(), bound, security, config.server.data_dir,
             "; clients need the auth token" if config.server.auth_token else "")
    if ready_file is not None:  # only once signals are handled: a SIGHUP right after must not kill the daemon
        try:
            ready_file.write_text(bound)
        except BaseException as exc:  # a gRPC server left to the garbage collector writes tracebacks
            _ignore_reloads(loop)
            await reloads.aclose()
            await server.stop(0)
            await app.aclose()
            _unlock(data_lock, data_dir if made_data_dir else None)
            if isinstance(exc, OSError):  # without its errno: ENOSPC would be taken for the data directory's
                raise OSError(None, f"the --ready-file cannot be written ({exc.strerror or exc})",
                              str(ready_file)) from None
            raise
    watch = asyncio.create_task(_report_stuck_calls(max(config.server.shutdown_grace_seconds, 0.1)))
    data_watch = asyncio.create_task(watch_data_dir(app, held_files(data_dir, data_lock, app), health_servicer))
    # the memory a burst of calls freed, given back to the system once none is under way
    trimmer = asyncio.create_task(give_back_when_idle(lambda: app.calls_ended, lambda: len(app.call_tasks)))
    stalls = LoopWatch()
    stalls.start()
    await stop.wait()
    _ignore_reloads(loop)
    await reloads.aclose()
    watch.cancel()
    data_watch.cancel()
    trimmer.cancel()
    stalls.stop()
    grace = config.server.shutdown_grace_seconds
    log.info("shutting down: draining in-flight calls for up to %gs", grace)
    await health_servicer.enter_graceful_shutdown()
    app.stopping = True  # calls arriving from now on are refused with SHUTTING_DOWN (see _handling)
    hurry = asyncio.Event()  # a second SIGTERM or SIGINT: end the calls under way now
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hurry.set)
    await _drain(app, grace, hurry)
    await health_servicer.end_watches()
    await server.stop(CLOSE_SECONDS)
    stuck = await _finish_within(STOP_SECONDS, app)
    data_lock.close()
    if ready_file is not None:
        _remove_ready_file(ready_file, bound)
    if stuck:
        log.error("stopped, but %s: exiting without waiting for it", "; ".join(stuck))
        logging.shutdown()
        os._exit(1)  # asyncio.run would wait for those calls forever
    log.info("stopped")


def _ignore_reloads(loop: asyncio.AbstractEventLoop) -> None:
    """Ignore SIGHUP from now until the process exits: the daemon is stopping. A reload during the drain
    made providers again that were closed seconds later (or never, when it came while they were being
    closed), and the loop's handler, removed when ``asyncio.run`` closes the loop, gives SIGHUP back its
    default action, which ended the stopped daemon (status 129) in the last moments of its exit.
    SIGHUP is blocked meanwhile: one that comes between the handler's removal (which sets the default
    action) and SIG_IGN waits, then is discarded."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


async def _drain(app: App, grace: float, hurry: asyncio.Event) -> None:
    """Let the calls under way end, for up to ``grace`` seconds (or until ``hurry`` is set: a second
    signal); those still running then are ended by the daemon (:func:`stop_calls`: SHUTTING_DOWN, with
    their request id), given :data:`STOP_NOTICE_SECONDS` (at least) to send their status. The server keeps
    serving meanwhile, so that a call sent on an open connection is refused with a status of the daemon's
    (see :func:`_handling`), not cancelled bare by gRPC's own stop."""
    loop = asyncio.get_running_loop()
    end = loop.time() + max(grace, STOP_NOTICE_SECONDS)
    while app.call_tasks and loop.time() < end - STOP_NOTICE_SECONDS and not hurry.is_set():
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    if hurry.is_set():
        end = min(end, loop.time() + STOP_NOTICE_SECONDS)
    if count := stop_calls(app, at_once=hurry.is_set()):
        when = "on a second signal" if hurry.is_set() else "at the end of the shutdown grace"
        log.info("%d call(s) still running %s: ended (SHUTTING_DOWN)", count, when)
        while app.call_tasks and loop.time() < end:
            await asyncio.sleep(DRAIN_POLL_SECONDS)


async def _report_stuck_calls(every: float) -> None:
    """Log an error, once each, for provider calls cancelled (client gone, deadline passed) at least
    ``every`` seconds ago that still run: a plugin that ignores cancellation holds the call's slot
    (``server.max_concurrent_calls``), which nothing else shows until the daemon stops. A look every
    ``every`` seconds at the calls under way, nothing per call."""
    reported: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
    cancelled_before: set[asyncio.Task] = set()
    while True:
        await asyncio.sleep(every)
        cancelled = {task for task in invoke.calls_under_way() if task.cancelling() and not task.done()}
        for task in cancelled & cancelled_before:
            if task not in reported:
                reported.add(task)
                log.error("a call to %s still runs over %gs after it was cancelled: the plugin ignores cancellation "
                          "(catches CancelledError?) and holds a call slot until the daemon stops",
                          " and ".join(invoke.providers_running([task])), every)
        cancelled_before = cancelled


def _remove_ready_file(path: Path, holding: str | None = None) -> None:
    """Remove the ``--ready-file`` (only if it still says ``holding``, when given: a daemon started since
    may have written its own): a stopped daemon's address must not be taken for a running one's. Only a
    regular file is removed (``/dev/stdout``, a FIFO a supervisor reads, ``/dev/full`` in a test, stay)."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return
        if holding is None or path.read_text() == holding:
            path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove the --ready-file %s (%s): it may still name a daemon that is gone", path,
                    exc.strerror or exc)


def _unlock(data_lock: IO[str], made: Path | None) -> None:
    """Release the data directory of a daemon that did not start; ``made``: the directory it created, removed
    again (it holds only what the start made: an empty database, the lock)."""
    data_lock.close()
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def check_ready_file(path: Path) -> None:
    """Refuse (OSError) a ``--ready-file`` the daemon cannot write, before anything starts: found only
    once serving, the failure would stop a daemon that had already said it listens."""
    directory = path.parent
    if path.is_dir():
        problem = errno.EISDIR
    elif not directory.is_dir():
        problem = errno.ENOTDIR if directory.exists() else errno.ENOENT
    elif not os.access(path if path.exists() else directory, os.W_OK):
        problem = errno.EACCES
    else:
        return
    raise OSError(problem, f"the --ready-file cannot be written ({os.strerror(problem)})", str(path))


def _bound_address(address: str, port: int) -> str:
    """The address clients reach: ``address`` with the port gRPC bound (port 0 picks one); a unix
    socket as given (gRPC reports port 1 for it)."""
    if parse_address(address) is None:
        return address
    return f"{address.rsplit(':', 1)[0]}:{port}"


#: After the drain, how long closing the providers and cancelling the calls left may take (each provider's
#: ``aclose`` is cancelled after :data:`~router.core.PROVIDER_CLOSE_SECONDS` of it).
STOP_SECONDS = 5.0
#: After the drain, how long gRPC's stop waits for the calls ended to send their status (health watches: see
#: :meth:`HealthServicer.end_watches`) and for clients to close their connections on its GOAWAY (NO_ERROR)
#: before it cuts what is left: with a GOAWAY of INTERNAL_ERROR, reported as INTERNAL by grpc-js on a call still open.
CLOSE_SECONDS = 1.0


async def _finish_within(seconds: float, app: App) -> list[str]:
    """Close ``app`` (each provider's close is cancelled after :data:`~router.core.PROVIDER_CLOSE_SECONDS`) and
    cancel the provider calls still under way, for at most ``seconds`` in all. Returns what did not end, said for
    the log (the calls, and the closes, that went on after they were cancelled); a failure of closing is raised."""
    close = asyncio.ensure_future(app.aclose())
    calls = invoke.calls_under_way()
    for task in calls:
        task.cancel()
    _, pending = await asyncio.wait([close, *calls], timeout=seconds)
    stuck = [f"provider {name} did not stop within {seconds:g}s of being cancelled (a plugin that catches "
             "CancelledError?)" for name in invoke.providers_running(pending)]
    if close not in pending:
        close.result()
    elif app.closes_cut:
        stuck.append(f"closing provider {' and '.join(dict.fromkeys(app.closes_cut))} did not end after it was "
                     "cancelled (its aclose catches CancelledError?)")
    else:
        stuck.append(f"closing the providers and the sessions database did not end within {seconds:g}s")
    return stuck
