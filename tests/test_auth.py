"""Optional client authentication with a bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb

from router.auth import bearer

TOKEN = "tok-0123456789-secret"
CONFIG = """
server:
  auth_token: "${MMROUTER_TEST_TOKEN}"
providers:
  fake: {api_key: k}
routes:
  - name: all
    use: fake/echo
"""


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG, env={"MMROUTER_TEST_TOKEN": TOKEN})


def generate(daemon, **kwargs) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), **kwargs).answer


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)],
                         ids=["none", "wrong", "no-bearer-prefix"])
def test_calls_without_the_token_are_unauthenticated(daemon, metadata) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, metadata=metadata)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert TOKEN not in details.message


def test_every_kind_of_call_is_protected(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi"))))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(chunk=b"x")]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_token_opens_the_api_and_health_stays_open(daemon) -> None:
    assert generate(daemon, metadata=bearer(TOKEN)).text.startswith("fake/echo says: hi")
    health = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert TOKEN not in daemon.logs()


def test_the_cli_sends_the_token_from_the_environment(daemon) -> None:
    mmrouter = Path(sys.executable).parent / "mmrouter"
    env = {**os.environ, "MMROUTER_TOKEN": TOKEN}
    ok = subprocess.run([str(mmrouter), "ask", "--address", daemon.address, "hello"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("fake/echo says: hello"), ok.stderr
    env.pop("MMROUTER_TOKEN")
    refused = subprocess.run([str(mmrouter), "providers", "--address", daemon.address], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
