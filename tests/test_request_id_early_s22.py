"""A stream's request id reaches its client however the stream ends, and reflection resolves method names.

- The request id went out only in the trailers (``x-mmrouter-request-id``), which a stream cut by its
  client's deadline, cancelled, or cut off by a lost connection never receives: its client could not find
  the call in the daemon's log. A stream now sends it in its response headers too (initial metadata), just
  before its first message; the trailers keep it. Not sooner, nor for unary calls: a call whose headers came
  is final to a gRPC retry policy, so a refusal before the first message (TOO_MANY_CALLS) must send none.
  Checked with grpc's Python client through the daemon, the real OpenAI SDK and plugin against
  tests/fakes/openai.py made slow, and the testkit's provider.
- Server reflection answered NOT_FOUND for a method's full name (``file_containing_symbol`` of
  ``mmrouter.v1.RouterService.Generate``: upb's descriptor pool finds no methods, grpc/grpc#34743), so
  ``grpcurl describe mmrouter.v1.RouterService.Generate`` failed; it now answers with the service's file,
  on both protocols (v1 and v1alpha).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_helpers import error_details, text_request, wait_for
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc as pb_grpc

from tests.fakes.openai import API_KEY, FakeOpenAI

REQUEST_ID = "x-mmrouter-request-id"
#: The client's deadline of a call cut short: the fake provider answers far later (or never).
DEADLINE = 2.0

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{url}", timeout: 60}}
default: openai/gpt-4o
server: {{log_format: json}}
"""

#: A daemon whose provider is the testkit's (no SDK to load): for what needs no slow provider.
PLAIN = """
providers:
  fake: {api_key: k}
default: fake/echo
"""


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def daemon(start_daemon, fake):
    """The daemon, its OpenAI SDK loaded (by a first call): a call cut short is then cut by its deadline."""
    started = start_daemon(CONFIG.format(url=fake.base_url), env={"OPENAI_API_KEY": API_KEY}, plugins=())
    started.stub.Generate(pb.GenerateRequest(request=text_request("warm up")), timeout=60)
    return started


def header_id(call: grpc.Call) -> str:
    """The request id in the response headers (initial metadata) of ``call``; ``""`` if none."""
    return dict(call.initial_metadata() or ()).get(REQUEST_ID, "")


def logged(daemon, request_id: str) -> dict:
    """The access line the daemon logged for the call ``request_id`` (waits for it)."""
    def find() -> dict | None:
        lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
        return next((line for line in lines if line.get("request_id") == request_id and "code" in line), None)

    line = wait_for(find)
    assert line is not None, f"no access line with request_id={request_id}:\n{daemon.logs()}"
    return line


def test_streams_cut_short_have_their_request_id_in_their_headers(daemon, fake) -> None:
    fake.reply_chunks, fake.chunk_delay = ["word "] * 200, 0.25  # a minute of answer: the deadline comes first
    call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("slow one")), timeout=DEADLINE)
    events = []
    with pytest.raises(grpc.RpcError):
        for event in call:
            events.append(event.WhichOneof("event"))
    assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED and events[0] == "route_chosen"
    assert not dict(call.trailing_metadata() or ()).get(REQUEST_ID)  # no trailers: gRPC ended it on this side
    request_id = header_id(call)
    assert request_id, call.initial_metadata()
    line = logged(daemon, request_id)
    assert (line["method"], line["code"]) == ("StreamGenerate", "DEADLINE_EXCEEDED")

    cancelled = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("cut")), timeout=30)
    assert next(cancelled).HasField("route_chosen")
    cancelled.cancel()
    assert header_id(cancelled) not in ("", request_id)
    line = logged(daemon, header_id(cancelled))
    assert (line["method"], line["code"]) == ("StreamGenerate", "CANCELLED")


def test_unary_calls_send_their_request_id_with_their_answer_only(daemon, fake) -> None:
    """A unary call's headers go out with its answer and carry no id (its trailers do): headers of their own,
    sent sooner, would make every failure of the call final to a gRPC retry policy."""
    whole = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("quick")), timeout=30)
    assert whole.result().answer.text == "Hello from the fake GPT."
    assert header_id(whole) == "" and dict(whole.trailing_metadata())[REQUEST_ID]


#: A daemon taking one call at a time, its provider the testkit's (``SLOW:<s>`` holds the call).
ONE_CALL = PLAIN + "server: {max_concurrent_calls: 1, log_format: json}\n"

#: A gRPC retry policy, as a client's service config sets it: TOO_MANY_CALLS is RESOURCE_EXHAUSTED.
RETRIES = json.dumps({"methodConfig": [{
    "name": [{"service": "mmrouter.v1.RouterService"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]})


def test_a_refusal_before_the_first_message_is_retried_by_a_grpc_retry_policy(start_daemon) -> None:
    """A call refused before any message (TOO_MANY_CALLS here; SHUTTING_DOWN, SESSION_BUSY alike) has sent no
    headers, so a client's gRPC retry policy retries it: each attempt is refused and logged by the daemon."""
    daemon = start_daemon(ONE_CALL)
    holding = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:30")), timeout=60)
    try:
        assert next(holding).HasField("route_chosen")  # the one slot is taken
        with grpc.insecure_channel(daemon.address, options=[("grpc.enable_retries", 1),
                                                            ("grpc.service_config", RETRIES)]) as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
            assert error_details(refused.value).reason == "TOO_MANY_CALLS"
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")), timeout=30))
            assert error_details(refused.value).reason == "TOO_MANY_CALLS"

        def refusals() -> list[str] | None:
            lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
            methods = [line.get("method") for line in lines if line.get("reason") == "TOO_MANY_CALLS"]
            return methods if len(methods) >= 6 else None

        assert sorted(wait_for(refusals) or []) == ["Generate"] * 3 + ["StreamGenerate"] * 3, daemon.logs()
    finally:
        holding.cancel()


#: Methods and the file that declares their service.
METHODS = {"mmrouter.v1.RouterService.Generate": "mmrouter/v1/router.proto",
           "mmrouter.v1.RouterService.UploadMedia": "mmrouter/v1/router.proto",
           "grpc.health.v1.Health.Check": "grpc_health/v1/health.proto",
           "grpc.reflection.v1.ServerReflection.ServerReflectionInfo": "grpc/reflection/v1/reflection.proto"}


def test_reflection_finds_the_file_of_a_method(start_daemon) -> None:
    daemon = start_daemon(PLAIN)
    symbols = [*METHODS, "mmrouter.v1.RouterService.Nothing", "mmrouter.v1.Nothing.Generate", "Generate"]
    for protocol in ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"):
        info = daemon.channel.stream_stream(
            f"/{protocol}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = info(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols]),
                       timeout=10)
        for symbol, reply in zip(symbols, replies, strict=True):
            assert reply.original_request.file_containing_symbol == symbol
            if symbol not in METHODS:
                assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], (protocol, symbol)
                continue
            assert reply.HasField("file_descriptor_response"), (protocol, symbol, reply.error_response)
            declaring = descriptor_pb2.FileDescriptorProto.FromString(  # the file first, then its dependencies
                reply.file_descriptor_response.file_descriptor_proto[0])
            service, _, method = symbol.rpartition(".")
            assert declaring.name == METHODS[symbol], (protocol, symbol)
            assert method in {m.name for s in declaring.service if f"{declaring.package}.{s.name}" == service
                              for m in s.method}, (protocol, symbol)

    # grpcio-reflection's own client (v1alpha), as a tool resolving a method it was given
    found = ProtoReflectionDescriptorDatabase(daemon.channel).FindFileContainingSymbol(
        "mmrouter.v1.RouterService.StreamGenerate")
    assert found.name == "mmrouter/v1/router.proto"
    assert "StreamGenerate" in {m.name for m in found.service[0].method}


def test_the_cli_names_the_request_id_of_a_call_cut_by_its_timeout(start_daemon) -> None:
    """``mmrouter ask --timeout`` on a call the provider answers too late: ``--json`` and the last stderr
    line name the call's request id (from the response headers; the call got no trailers)."""
    from test_cli import CONFIG, Cli

    daemon = start_daemon(CONFIG + "server: {log_format: json}\n")
    result = Cli("ask", "SLOW:30", "--address", daemon.address, "--timeout", "2", "--json").result(60)
    assert result.returncode == 6, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "DEADLINE_EXCEEDED" and error["request_id"], error
    assert logged(daemon, error["request_id"])["code"] == "DEADLINE_EXCEEDED"
    plain = Cli("ask", "SLOW:30", "--address", daemon.address, "--timeout", "2").result(60)
    assert plain.returncode == 6 and "request id " in plain.stderr.strip().splitlines()[-1], plain.stderr
