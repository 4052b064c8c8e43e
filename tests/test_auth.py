"""Optional client authentication with a bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import launch_daemon
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb

from router.auth import TokenAuth, bearer

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


@pytest.fixture(scope="module")
def daemon(plugin_sites, tmp_path_factory):
    """One daemon of CONFIG with the token, shared by the module's tests that only make calls to it (refused or
    answered) and read nothing a call changes: starting one per case took a minute of the suite. Tests sharing it
    must not reload or signal it, read its stats or health, or look in its log for anything but what no call may
    write (the token, a warning given at start); a test needing another token or config starts its own."""
    tmp = tmp_path_factory.mktemp("auth")
    daemon = launch_daemon(CONFIG, tmp=tmp, env={"MMROUTER_TEST_TOKEN": TOKEN}, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


def generate(daemon, **kwargs) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), **kwargs).answer


NEEDS = "this router needs a token: send the metadata 'authorization: Bearer <token>'"
NOT_ACCEPTED = "the token was not accepted: send the daemon's server.auth_token"


@pytest.mark.parametrize("metadata, message", [
    (None, NEEDS), ((("authorization", TOKEN),), NEEDS), ((("authorization", f"Basic {TOKEN}"),), NEEDS),
    ((("authorization", "Bearer wrong"),), NOT_ACCEPTED), ((("authorization", f"Bearer {TOKEN}x"),), NOT_ACCEPTED),
    ((("authorization", f"Bearer {TOKEN} extra"),), NEEDS),
], ids=["none", "no-bearer-prefix", "other-scheme", "wrong", "longer", "two-words"])
def test_calls_without_the_token_are_unauthenticated(daemon, metadata, message) -> None:
    """A wrong token is told apart from none: "needs a token" sent users looking for a missing option."""
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, metadata=metadata)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert details.message.startswith(message) and "(mmrouter CLI: --token or MMROUTER_TOKEN)" in details.message
    assert TOKEN not in details.message


@pytest.mark.parametrize("value", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}", f"Bearer {TOKEN} ",
                                   f"bEaReR  {TOKEN}  "])
def test_the_scheme_is_case_insensitive_and_spaces_are_tolerated(daemon, value) -> None:
    """RFC 7235: the scheme is case-insensitive; libraries and proxies also add spaces."""
    assert generate(daemon, metadata=(("authorization", value),)).text.startswith("fake/echo says: hi")


def test_a_token_read_from_a_secret_file_with_its_newline_works(start_daemon) -> None:
    """``$(cat file)`` keeps no newline but Kubernetes ``--from-file`` and many secret stores do: the
    daemon refused every client, since no gRPC header can carry a newline; so did the CLI's."""
    daemon = start_daemon(CONFIG, env={"MMROUTER_TEST_TOKEN": f"  {TOKEN}\n"})
    assert generate(daemon, metadata=bearer(TOKEN)).text.startswith("fake/echo says: hi")
    mmrouter = Path(sys.executable).parent / "mmrouter"
    asked = subprocess.run([str(mmrouter), "ask", "--address", daemon.address, "hello"],
                           env={**os.environ, "MMROUTER_TOKEN": f"{TOKEN}\n"}, capture_output=True, text=True,
                           timeout=60)
    assert asked.returncode == 0 and asked.stdout.startswith("fake/echo says: hello"), asked.stderr
    bad = subprocess.run([str(mmrouter), "providers", "--address", daemon.address],
                         env={**os.environ, "MMROUTER_TOKEN": "tok\u00e9n"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no gRPC header can carry it" in bad.stderr, bad.stderr
    assert "Invalid metadata" not in bad.stderr and "t\u00e9" not in bad.stderr


@pytest.mark.parametrize("token, problem", [
    (f"{TOKEN[:5]}\u00e9{TOKEN[5:]}", "character 6 of the token is a space, a control character or not ASCII"),
    (f"{TOKEN[:5]} {TOKEN[5:]}", "character 6 of the token is a space"),
    ("\n", "the token is only whitespace"),
], ids=["not-ascii", "inner-space", "only-a-newline"])
def test_a_token_no_client_can_send_stops_the_daemon_naming_the_key_not_the_token(tmp_path, token, problem) -> None:
    """It started, logged "clients need the auth token" and refused every client; a newline alone
    (an empty secret file) would have turned authentication off."""
    config = tmp_path / "router.yaml"
    line = '  auth_token: "${MMROUTER_TEST_TOKEN}"\n'
    config.write_text(CONFIG.replace(line, f"{line}  data_dir: {tmp_path / 'data'}\n  address: 127.0.0.1:0\n"))
    served = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config)],
                            env={**os.environ, "MMROUTER_TEST_TOKEN": token}, capture_output=True, text=True,
                            timeout=60)
    output = " ".join(served.stderr.split())
    assert served.returncode == 2 and "listening" not in output, output
    assert f"server.auth_token: {problem}" in output and "line 3" in output
    assert TOKEN[5:] not in output and TOKEN[:5] not in output


def test_every_kind_of_call_is_protected(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi"))))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(chunk=b"x")]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", ["Generate", "StreamGenerate", "ExplainRoute", "ListProviders"])
def test_a_call_without_the_token_is_refused_before_its_request_arrives(daemon, method) -> None:
    """gRPC received a whole request message before the refusal of a one-request method ran: anyone without
    the token could make the daemon hold 64 MiB a call, or forever a message never finished (2.5 GB from one
    connection). The refusal now comes as the call's headers do: here while no request has been sent."""
    import threading

    never = threading.Event()

    def nothing_yet():
        never.wait(20)  # the request would come later: the refusal must not wait for it
        yield b""

    streaming = method == "StreamGenerate"
    call = (daemon.channel.stream_stream if streaming else daemon.channel.stream_unary)(
        f"/mmrouter.v1.RouterService/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            answer = call(nothing_yet(), timeout=15)
            if streaming:
                list(answer)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        never.set()


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
    assert refused.returncode == 4 and "UNAUTHENTICATED" in refused.stderr  # auth refused


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
    assert refused.returncode == 4  # auth refused
    assert "(mmrouter CLI: --token or MMROUTER_TOKEN)" in refused.stderr
    wrong = run("providers", "--address", daemon.address, "--token", "not-the-" + TOKEN)
    assert wrong.returncode == 4 and "UNAUTHENTICATED" in wrong.stderr and TOKEN not in wrong.stderr

    # --help names the option and its variable, never the token the variable holds.
    for command in ("ask", "explain", "providers"):
        shown = run(command, "--help", MMROUTER_TOKEN=TOKEN)
        assert shown.returncode == 0 and "--token" in shown.stdout and "MMROUTER_TOKEN" in shown.stdout
        assert TOKEN not in shown.stdout + shown.stderr



@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "client-streaming"])
async def test_a_call_without_the_token_is_refused_without_decoding_its_request(streaming) -> None:
    """The refusal decoded the request first (8 calls of 60 MB each took 600 MB before being refused):
    the method's request deserializer is never called for a refused call, only for an accepted one."""
    decoded: list[bytes] = []

    def deserialize(data: bytes) -> bytes:
        decoded.append(data)
        return data

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"ok"

    async def stream(requests, context: grpc.aio.ServicerContext) -> bytes:
        return b"".join([r async for r in requests]) and b"ok"

    handler = (grpc.stream_unary_rpc_method_handler(stream, request_deserializer=deserialize) if streaming
               else grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserialize))
    server = grpc.aio.server(interceptors=[TokenAuth(TOKEN)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("mmrouter.v1.Test", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = "/mmrouter.v1.Test/Call"
            call = channel.stream_unary(method) if streaming else channel.unary_unary(method)

            def request():
                return iter([b"x" * 1024, b"y"]) if streaming else b"x" * 1024

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request(), metadata=(("authorization", "Bearer wrong"),), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert decoded == []
            assert await call(request(), metadata=bearer(TOKEN), timeout=30) == b"ok"  # the test's premise
            assert decoded
    finally:
        await server.stop(None)


def _serve_until_ready(tmp_path: Path, address: str) -> str:
    """Start ``serve`` with the token on ``address``, wait until it listens, stop it; its log."""
    import signal
    import time

    config = tmp_path / "router.yaml"
    config.write_text('server:\n  auth_token: "${MMROUTER_TEST_TOKEN}"\n'
                      "providers:\n  openai: {api_key: sk-test-0010}\ndefault: openai/gpt-4o\n")
    ready, log = tmp_path / "ready", tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config), "--address", address,
                                 "--data-dir", str(tmp_path / "data"), "--ready-file", str(ready)],
                                env={**os.environ, "MMROUTER_TEST_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not (ready.exists() and ready.read_text()) and proc.poll() is None:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return log.read_text()


def test_a_token_served_in_clear_beyond_loopback_is_warned_of_at_start(tmp_path) -> None:
    """Without TLS on 0.0.0.0 every client's token crosses the network in clear: nothing said so."""
    logs = _serve_until_ready(tmp_path, "0.0.0.0:0")
    assert "listening" in logs, logs
    assert "server.auth_token on 0.0.0.0:0 without server.tls: clients send the token" in logs
    assert logs.count("without server.tls") == 1 and TOKEN not in logs


def test_a_token_served_on_loopback_is_not_warned_of(daemon) -> None:
    generate(daemon, metadata=bearer(TOKEN))
    assert "without server.tls" not in daemon.logs()


def test_a_reload_rotates_the_token_and_names_the_server_settings_it_cannot_apply(start_daemon) -> None:
    """A leaked token rotated in the file and SIGHUP: the old one kept working until a restart, and the log
    said only "changes to server take effect only after a restart"."""
    import signal

    from grpc_helpers import wait_for

    new = "tok-rotated-9876543210"
    daemon = start_daemon(CONFIG.replace("${MMROUTER_TEST_TOKEN}", TOKEN))
    assert generate(daemon, metadata=bearer(TOKEN)).text
    daemon.config_path.write_text(CONFIG.replace("${MMROUTER_TEST_TOKEN}", new).replace(
        "server:\n", "server:\n  log_level: DEBUG\n  max_concurrent_calls: 7\n"))
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "rules reloaded" in daemon.logs()), daemon.logs()
    assert generate(daemon, metadata=bearer(new)).text
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, metadata=bearer(TOKEN))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    logs = daemon.logs()
    assert "server.auth_token rotated" in logs
    assert "changes to server.max_concurrent_calls, server.log_level take effect only after a restart" in logs
    assert TOKEN not in logs and new not in logs


def test_the_token_and_log_settings_may_come_from_the_environment_alone(start_daemon) -> None:
    """A container configured by its environment alone could set the address and data directory but not
    the token (nor JSON logs): the embedded default served every client unauthenticated. The token from
    MMROUTER_AUTH_TOKEN stays in force over a reload of a file that has none."""
    import json
    import signal

    from grpc_helpers import wait_for

    daemon = start_daemon("providers:\n  fake: {api_key: k}\ndefault: fake/echo\n",
                          env={"MMROUTER_AUTH_TOKEN": TOKEN, "MMROUTER_LOG_FORMAT": "json",
                               "MMROUTER_LOG_LEVEL": "debug"})
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert generate(daemon, metadata=bearer(TOKEN)).text
    daemon.config_path.write_text("providers:\n  fake: {api_key: k}\ndefault: fake/echo\n# again\n")
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "rules reloaded" in daemon.logs()), daemon.logs()
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    assert lines and any(line.get("level") == "DEBUG" for line in lines)
    assert TOKEN not in daemon.logs()


def test_an_empty_token_variable_is_refused_and_start_failures_are_logged_as_asked(tmp_path) -> None:
    """MMROUTER_AUTH_TOKEN= (compose or a Dockerfile's ENV with the secret unset) replaced the file's token by
    none: every client was served, unwarned. And a failed start was text whatever --log-format or
    MMROUTER_LOG_FORMAT said (only the file's log_format gave JSON)."""
    import json

    config = tmp_path / "router.yaml"
    config.write_text(f"server:\n  auth_token: {TOKEN}\ndefault: fake/echo\n")
    env = {**os.environ, "MMROUTER_AUTH_TOKEN": "", "MMROUTER_LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config), "--address",
                           "127.0.0.1:0", "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2
    record = json.loads(done.stderr.strip().splitlines()[-1])
    assert record["level"] == "CRITICAL"
    assert record["message"].startswith("MMROUTER_AUTH_TOKEN is set but empty")
    assert TOKEN not in done.stderr
