"""Through the running daemon: what a stopping daemon does to its open health watches, and how a stream whose
last message its client refused is logged.

On SIGTERM, gRPC's stop cut the open ``grpc.health.v1.Health/Watch`` streams with an HTTP/2 GOAWAY of
INTERNAL_ERROR: grpc-js reported INTERNAL ("Received RST_STREAM with code 2 triggered by internal client error:
Session closed with error code 2"), Python's client UNAVAILABLE "Cancelling all calls", often without the
NOT_SERVING the daemon had just set. A ``StreamGenerate`` whose ``Done`` was over its client's receive limit was
logged as "the client cancelled the call or left", where ``Generate`` names the size and the receive limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from conftest import fake_fixtures
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import error_details, wait_for
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc
from test_data_dir_failures import CONFIG  # a daemon of the testkit plugin's echo model

from tests.fakes.openai import API_KEY, FakeOpenAI

shared_fake, fake, own_fake = fake_fixtures(FakeOpenAI)

NODE_MODULES = Path(__file__).resolve().parent.parent / "examples" / "node-client" / "node_modules"
#: health.proto's Watch, for the Node client (proto-loader reads a .proto file).
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse); }
"""
#: A grpc-js client watching the daemon's health: one line per status, then how the watch ended.
WATCH_JS = """
const [proto, address] = process.argv.slice(2);
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const health = grpc.loadPackageDefinition(loader.loadSync(proto, {keepCase: true, enums: String})).grpc.health.v1;
const client = new health.Health(address, grpc.credentials.createInsecure());
const watch = client.Watch({service: 'mmrouter.v1.RouterService'});
watch.on('data', d => console.log(d.status));
watch.on('error', e => {
  console.log('ended ' + Object.keys(grpc.status).find(k => grpc.status[k] === e.code) + ': ' + e.details);
  client.close();
});
"""


def test_a_health_watch_gets_not_serving_then_the_daemons_unavailable_on_sigterm(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    channel = grpc.insecure_channel(daemon.address)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        statuses = [next(watch).status]
        daemon.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as caught:
            for response in watch:
                statuses.append(response.status)
    finally:
        channel.close()
    assert statuses == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), details
    assert "this health watch ends" in details.message
    assert daemon.proc.wait(20) == 0, daemon.logs()


def test_a_grpc_js_health_watch_ends_unavailable_not_internal_on_sigterm(start_daemon, tmp_path) -> None:
    """grpc-js reports a GOAWAY of INTERNAL_ERROR on an open call as INTERNAL, which its users and retry
    policies take for a server bug: the daemon now ends the watch itself, then closes with NO_ERROR."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "@grpc" / "grpc-js").exists():
        pytest.skip("node and the Node example's npm packages are needed (make test installs them)")
    (tmp_path / "health.proto").write_text(HEALTH_PROTO)
    (tmp_path / "watch.js").write_text(WATCH_JS)
    daemon = start_daemon(CONFIG)
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "GRPC_TRACE": "transport", "GRPC_VERBOSITY": "DEBUG"}
    client = subprocess.Popen([node, str(tmp_path / "watch.js"), str(tmp_path / "health.proto"), daemon.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "SERVING"
        daemon.proc.send_signal(signal.SIGTERM)
        out, trace = client.communicate(timeout=30)
    finally:
        client.kill()
    lines = out.splitlines()
    assert lines[0] == "NOT_SERVING", out
    assert lines[1].startswith("ended UNAVAILABLE: the daemon is stopping: this health watch ends"), out
    assert "connection closed by GOAWAY with code 0" in trace, trace
    # gRPC's stop cut the connection with a GOAWAY of INTERNAL_ERROR (code 2) after its NO_ERROR one
    assert "error code 2" not in trace, trace
    assert daemon.proc.wait(20) == 0, daemon.logs()


def test_a_stream_whose_done_its_client_refused_is_logged_with_its_size_and_the_receive_limit(start_daemon,
                                                                                              fake) -> None:
    daemon = start_daemon(f'providers:\n  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{fake.base_url}", '
                          'timeout: 30}\ndefault: openai/gpt-4o\n', env={"OPENAI_TEST_KEY": API_KEY})
    fake.reply_chunks = ["y" * 100_000] * 80  # deltas any client takes; a Done of 8 MB, over 4 MiB
    request = pb.StreamGenerateRequest(request=pb.MultimodalRequest(
        messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="a long answer")])]))
    channel = grpc.insecure_channel(daemon.address)  # gRPC's default receive limit: 4 MiB
    kinds: list[str] = []
    try:
        with pytest.raises(grpc.RpcError) as caught:
            for event in router_pb2_grpc.RouterServiceStub(channel).StreamGenerate(request, timeout=30):
                kinds.append(str(event.WhichOneof("event")))
    finally:
        channel.close()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert kinds.count("text_delta") == 80 and "done" not in kinds
    assert wait_for(lambda: "StreamGenerate CANCELLED" in daemon.logs()), daemon.logs()
    line = next(line for line in daemon.logs().splitlines() if "StreamGenerate CANCELLED" in line)
    assert "could not send a message of 8000" in line and "bytes: its client refused it" in line, line
    assert "over its receive limit, 4 MiB by default" in line, line
    assert "cancelled the call or left" not in line, line
