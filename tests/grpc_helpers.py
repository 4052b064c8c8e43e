"""Small helpers for tests that call the daemon: building requests, reading rich error details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mmrouter.v1 import router_pb2 as pb


def text_request(text: str, *, media: list[pb.Media] | None = None, **fields) -> pb.MultimodalRequest:
    """A one-message request: the media parts first, then the text."""
    parts = [pb.Part(media=m) for m in media or []]
    if text:
        parts.append(pb.Part(text=text))
    return pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=parts)], **fields)


@dataclass
class ErrorDetails:
    """What a failed call carried."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay: float | None


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Unpack google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo) from a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details on {error.code()}: {error.details()}"
    reason, domain, metadata, violations, delay = "", "", {}, [], None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(error.code(), error.details(), reason, domain, metadata, violations, delay)


def wait_for(condition, timeout: float = 10, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


def providers_by_name(stub, timeout: float = 30) -> dict[str, pb.ProviderInfo]:
    """ListProviders as a mapping from provider name to its info."""
    return {p.name: p for p in stub.ListProviders(pb.ListProvidersRequest(), timeout=timeout).providers}


def everything_said(err: grpc.RpcError, daemon) -> str:
    """All a failed call told anyone: its message, its rich status and the daemon's log (for leak checks)."""
    return err.details() + str(rpc_status.from_call(err)) + daemon.logs()
