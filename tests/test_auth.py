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


def test_the_cli_takes_the_token_as_an_option_and_never_shows_it(daemon) -> None:
    """The UNAUTHENTICATED message advertises ``--token``: every command that calls the daemon has it."""
    mmrouter = Path(sys.executable).parent / "mmrouter"
    env = {k: v for k, v in os.environ.items() if k != "MMROUTER_TOKEN"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(mmrouter), *args], env={**env, "COLUMNS": "250", **extra},
                              capture_output=True, text=True, timeout=60)

    listed = run("providers", "--address", daemon.address, "--token", TOKEN)
    assert listed.returncode == 0 and "fake" in listed.stdout, listed.stderr
    asked = run("ask", "hello", "--address", daemon.address, "--token", TOKEN)
    assert asked.returncode == 0 and asked.stdout.startswith("fake/echo says: hello"), asked.stderr
    explained = run("explain", "hello", "--address", daemon.address, "--token", TOKEN)
    assert explained.returncode == 0 and "route: rule all -> fake/echo" in explained.stdout, explained.stderr

    refused = run("providers", "--address", daemon.address)
    assert refused.returncode == 1
    assert "(mmrouter CLI: --token or MMROUTER_TOKEN)" in refused.stderr
    wrong = run("providers", "--address", daemon.address, "--token", "not-the-" + TOKEN)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr and TOKEN not in wrong.stderr

    # --help names the option and its variable, never the token the variable holds.
    for command in ("ask", "explain", "providers"):
        shown = run(command, "--help", MMROUTER_TOKEN=TOKEN)
        assert shown.returncode == 0 and "--token" in shown.stdout and "MMROUTER_TOKEN" in shown.stdout
        assert TOKEN not in shown.stdout + shown.stderr
