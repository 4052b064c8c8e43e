"""Optional client authentication: a shared bearer token in the ``authorization`` metadata.

With ``server.auth_token`` set, every RouterService call must carry
``authorization: Bearer <token>``; others get UNAUTHENTICATED. Health checks
and reflection stay open so load balancers and tools can probe the daemon.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections import namedtuple
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .address import parse_address

log = logging.getLogger(__name__)

#: Only calls to these services need the token.
PROTECTED_PREFIX = "/mmrouter."


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)


NEEDS_TOKEN = ("this router needs a token: send the metadata 'authorization: Bearer <token>' "
               "(mmrouter CLI: --token or MMROUTER_TOKEN)")
WRONG_TOKEN = ("the token was not accepted: send the daemon's server.auth_token "
               "(mmrouter CLI: --token or MMROUTER_TOKEN)")


def _denied(message: str, request_id: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED", domain="mmrouter",
                                          metadata={"request_id": request_id}))
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.UNAUTHENTICATED, details=[info], message=message))


def sent_token(authorization: str) -> str | None:
    """The token of an ``authorization`` value, or None when it is not ``Bearer <token>``.

    The scheme is case-insensitive (RFC 7235) and extra whitespace is allowed around both parts."""
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses RouterService calls without the configured bearer token."""

    def __init__(self, token: str | Callable[[], str]) -> None:
        """``token``: the token, or a function that gives the one in force (a reload may rotate it)."""
        self._token = token if callable(token) else (lambda: token)

    def _refusal(self, details: grpc.HandlerCallDetails) -> tuple[str, str] | None:
        """Why the call is refused (the message for its client, and for the log which refusal it is),
        or None if it may go on."""
        if not details.method.startswith(PROTECTED_PREFIX):
            return None
        authorization = dict(details.invocation_metadata or ()).get("authorization")
        if authorization is None:
            return NEEDS_TOKEN, "no authorization metadata"
        sent = sent_token(str(authorization))
        if sent is None:
            return NEEDS_TOKEN, "authorization is not 'Bearer <token>'"
        return None if hmac.compare_digest(sent.encode(), self._token().encode()) else (WRONG_TOKEN, "wrong token")

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        refusal = None if handler is None else self._refusal(details)
        if handler is None or refusal is None:
            return handler

        message, which = refusal

        async def deny(requests: Any, context: grpc.aio.ServicerContext) -> None:
            from .core import REQUEST_ID_KEY, new_request_id  # the daemon's (core is not for clients to load)

            request_id = new_request_id()
            # the token is never logged: a wrong one may be another service's real secret
            # its JSON fields as an access line's (router.server.CallLog): the method's name, its code and reason
            log.warning("refused %s from %s: %s (UNAUTHENTICATED) request_id=%s", details.method, context.peer(),
                        which, request_id,
                        extra={"method": details.method.rpartition("/")[2], "code": "UNAUTHENTICATED",
                               "reason": "UNAUTHENTICATED", "peer": context.peer(), "refusal": which,
                               "request_id": request_id})
            status = _denied(message, request_id)
            await context.abort(status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_KEY, request_id)))

        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        # The request is refused unread, for every method as a request stream never read: for a handler of one
        # request gRPC receives the whole message before the handler runs, so anyone without the token could
        # make the daemon hold 64 MiB a call (2.5 GB from one connection), or forever a message never finished.
        make = kinds[(True, handler.response_streaming)]
        return make(deny, request_deserializer=_discard, response_serializer=handler.response_serializer)


def _discard(data: bytes) -> None:
    """The request deserializer of a refused call: the request is never decoded."""
    return None


def loopback_only(address: str) -> bool:
    """Whether a listening ``address`` is reached from this machine only: a unix socket, or a host
    whose every address is a loopback one (``127.0.0.1``, ``[::1]``, ``localhost``). A host that does
    not resolve counts as loopback (the daemon cannot listen on it anyway)."""
    try:
        parsed = parse_address(address)
        if parsed is None:
            return True
        found = {info[4][0] for info in socket.getaddrinfo(parsed[0], None, proto=socket.IPPROTO_TCP)}
    except (ValueError, OSError):
        return True
    return all(ipaddress.ip_address(ip.partition("%")[0]).is_loopback for ip in found)


def warn_if_token_in_clear(address: str, token: str, tls: bool) -> None:
    """Warn when clients would send the auth ``token`` in clear over the network: set, without TLS, on
    an ``address`` others can reach (``0.0.0.0``, a LAN address). Whoever sees the traffic has the token."""
    if token and not tls and not loopback_only(address):
        log.warning("server.auth_token on %s without server.tls: clients send the token (and their requests) "
                    "in clear over the network, where anyone who sees the traffic can take it; set server.tls, "
                    "or listen on loopback behind a TLS proxy", address)


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    """Client call details with replaced metadata (grpc's own class is not constructible)."""


class _AddToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor):
    """Adds the bearer token to every call of a (sync) client channel."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), *self._metadata],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` sending ``token`` on every call (unchanged when the token is empty)."""
    return grpc.intercept_channel(channel, _AddToken(token)) if token else channel
