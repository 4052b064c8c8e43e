"""Small helpers for tests that call the daemon: building requests, reading rich error details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mmrouter.v1 import router_pb2 as pb

#: The testkit's echo model with a paid audio bridge (fake/ears, $0.36 an hour): bridging tests.
PAID_BRIDGE = """
providers:
  fake: {api_key: k}
routes:
  - name: text
    use: fake/echo
    bridging: true
bridges:
  audio: [fake/ears]
"""


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
    metadata: dict[str, str]  # ErrorInfo's, but for request_id
    violations: list[tuple[str, str]]
    retry_delay: float | None
    request_id: str = ""  # every error names its call's (ErrorInfo metadata "request_id")


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
    request_id = metadata.pop("request_id", "")
    return ErrorDetails(error.code(), error.details(), reason, domain, metadata, violations, delay, request_id)


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


def instance_config(plugin: str, instance: str, url: str, own: str, use: str, default: str,
                    extra: str = "") -> str:
    """A config with ``plugin``'s own provider (settings ``own``, keyed by its environment variables),
    an extra instance ``instance`` at ``url`` with the key from ``$INSTANCE_KEY`` (plus the ``extra``
    lines), a keyless ``<plugin>-spare`` instance, a rule ``tags: [instance]`` -> ``use``, and ``default``."""
    more = "".join(f"\n    {line}" for line in extra.splitlines() if line.strip())
    return f"""
providers:
  {plugin}: {{{own}}}
  {instance}:
    plugin: {plugin}
    api_key: "${{INSTANCE_KEY}}"
    base_url: "{url}"{more}
  {plugin}-spare: {{plugin: {plugin}}}
routes:
  - name: instance
    match: {{tags: [instance]}}
    use: {use}
default: {default}
"""


def assert_instance_listed(stub, plugin: str, instance: str) -> None:
    """ListProviders shows ``instance`` made by ``plugin``, ready and with the same models next to the
    plugin's own provider, and the keyless ``<plugin>-spare`` not configured: the plugin's environment
    key is not its key."""
    providers = providers_by_name(stub)
    assert (providers[instance].plugin, providers[instance].state) == (plugin, pb.PROVIDER_STATE_READY)
    assert providers[plugin].state == pb.PROVIDER_STATE_READY
    assert [m.name for m in providers[instance].models] == [m.name for m in providers[plugin].models]
    spare = providers[f"{plugin}-spare"]
    assert (spare.plugin, spare.state) == (plugin, pb.PROVIDER_STATE_NOT_CONFIGURED)
    assert spare.reason == f"no API key: set providers.{plugin}-spare.api_key"
