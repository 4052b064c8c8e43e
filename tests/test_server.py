"""The daemon end to end: RPCs, standard services, errors with details, deadlines, shutdown."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import launch_daemon
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import error_details, providers_by_name, text_request, wait_for
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from launch import launched
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

SECRET = "sk-test-secret-key-0123456789"


def config(marker_dir: Path | str = "", extra: str = "") -> str:
    return f"""
providers:
  fake: {{api_key: {SECRET}, marker_dir: "{marker_dir}"}}
routes:
  - name: docs
    match: {{inputs_any: [document]}}
    use: fake/docs
  - name: with-fallback
    match: {{tags: [fallback]}}
    use: fake/echo
    fallback: [fake/docs]
  - name: cloud-only
    match: {{tags: [cloud]}}
    use: openai/gpt-4o
  - name: general
    use: fake/echo
server:
  inline_limit_bytes: 4096
{extra}
"""


def generate(daemon, request: pb.MultimodalRequest, timeout: float = 30) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=timeout).answer


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.fixture
def daemon(start_daemon, tmp_path):
    return start_daemon(config(tmp_path))


@pytest.fixture(scope="module")
def refusing_daemon(plugin_sites, tmp_path_factory):
    """One daemon for the module's cases that only send requests it refuses, or explains, before any provider
    call, and read none of its state: starting one per case took a minute of the suite."""
    tmp = tmp_path_factory.mktemp("refusing")
    daemon = launch_daemon(config(tmp), tmp=tmp, env=None, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


def test_generate_answers_with_route_usage_and_cost(daemon) -> None:
    answer = generate(daemon, text_request("hello"))
    assert answer.text.startswith("fake/echo says: hello")
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("general", "fake", "echo")
    assert answer.usage.output_tokens == len(answer.text) // 4
    expected_cost = (answer.usage.input_tokens * 1.0 + answer.usage.output_tokens * 2.0) / 1e6
    assert answer.usage.cost_usd == pytest.approx(expected_cost)
    assert [s.purpose for s in answer.route.steps] == ["answer"]
    assert answer.route.latency_ms > 0
    outcomes = {t.rule: t.outcome for t in answer.route.trace}
    assert outcomes == {"docs": pb.RULE_OUTCOME_NOT_MATCHED, "with-fallback": pb.RULE_OUTCOME_NOT_MATCHED,
                        "cloud-only": pb.RULE_OUTCOME_NOT_MATCHED, "general": pb.RULE_OUTCOME_MATCHED}


def test_stream_generate_sends_route_deltas_usage_and_done_in_order(daemon) -> None:
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("stream me please"))))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done"
    assert kinds.count("text_delta") > 1 and kinds.count("usage") == 1
    assert kinds.index("usage") > max(i for i, k in enumerate(kinds) if k == "text_delta")
    assert events[0].route_chosen.route.provider == "fake"
    streamed = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert streamed == events[-1].done.answer.text
    assert events[-1].done.answer.usage.cost_usd > 0


def test_health_and_reflection(daemon) -> None:
    health = health_pb2_grpc.HealthStub(daemon.channel)
    for service in ("", "mmrouter.v1.RouterService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"mmrouter.v1.RouterService", "grpc.health.v1.Health"} <= names
    # grpc.reflection.v1 too (its messages are v1alpha's, field for field), which newer tools speak alone
    v1 = daemon.channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                      request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                      response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    asked = [reflection_pb2.ServerReflectionRequest(list_services=""),
             reflection_pb2.ServerReflectionRequest(file_containing_symbol="mmrouter.v1.RouterService"),
             reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection")]
    listed, described, described_v1 = list(v1(iter(asked), timeout=10))
    assert {s.name for s in listed.list_services_response.service} == names
    # both protocols are listed (tools show what is listed), and each can be described
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # the proto file that declares it
    v1_file = descriptor_pb2.FileDescriptorProto.FromString(described_v1.file_descriptor_response.file_descriptor_proto[0])
    assert (v1_file.package, [s.name for s in v1_file.service]) == ("grpc.reflection.v1", ["ServerReflection"])
    method = v1_file.service[0].method[0]  # its own messages (they named v1alpha's, which its file does not import)
    assert (method.input_type, method.output_type) == (".grpc.reflection.v1.ServerReflectionRequest",
                                                       ".grpc.reflection.v1.ServerReflectionResponse")


def test_explain_lists_every_rule_and_calls_no_provider(daemon) -> None:
    request = text_request("FAIL:500", hints=pb.RoutingHints(tags=["cloud"]))
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request)).route
    trace = {t.rule: (t.outcome, t.reason) for t in route.trace}
    assert list(trace) == ["docs", "with-fallback", "cloud-only", "general"]
    assert trace["docs"][0] == pb.RULE_OUTCOME_NOT_MATCHED and "document" in trace["docs"][1]
    assert trace["with-fallback"][0] == pb.RULE_OUTCOME_NOT_MATCHED and "fallback" in trace["with-fallback"][1]
    assert trace["cloud-only"][0] == pb.RULE_OUTCOME_SKIPPED and "OPENAI_API_KEY" in trace["cloud-only"][1]
    assert trace["general"][0] == pb.RULE_OUTCOME_MATCHED
    assert (route.provider, route.model, list(route.attempts)) == ("fake", "echo", [])


def test_retryable_failure_moves_to_the_fallback(daemon) -> None:
    answer = generate(daemon, text_request("FAIL:503@echo", hints=pb.RoutingHints(tags=["fallback"])))
    assert answer.route.model == "docs"
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("echo", False), ("docs", True)]
    assert "503" in answer.route.attempts[0].error


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_fallbacks_refusal_after_an_outage_ends_the_call_as_the_outage(daemon, stream) -> None:
    """The first target down (503), its fallback refusing the input (400): the call ended with the last error
    alone, INVALID_ARGUMENT, so clients did not retry a request the first target answers once it is back
    (a PDF local could not read, after Claude answered 529). It ends as the outage now, naming both."""
    request = text_request("FAIL:503@echo,400@docs", hints=pb.RoutingHints(tags=["fallback"]))
    if stream:
        details = error_details(failure(lambda: list(daemon.stub.StreamGenerate(
            pb.StreamGenerateRequest(request=request), timeout=30))))
    else:
        details = error_details(failure(lambda: generate(daemon, request)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert "scripted failure 503" in details.message and "(then fake: scripted failure 400" in details.message
    # a refusal with no outage before it is still the refusal
    alone = error_details(failure(lambda: generate(daemon, text_request("FAIL:400", hints=pb.RoutingHints(
        tags=["fallback"])))))
    assert (alone.code, alone.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")


def test_list_providers_shows_ready_not_configured_and_broken(start_daemon, tmp_path) -> None:
    daemon = start_daemon(config(tmp_path), plugins=("testkit", "broken_import", "broken_register"))
    providers = {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers}
    assert providers["fake"].state == pb.PROVIDER_STATE_READY
    assert {m.name for m in providers["fake"].models} >= {"echo", "docs", "omni"}
    assert providers["openai"].state == pb.PROVIDER_STATE_NOT_CONFIGURED
    assert "OPENAI_API_KEY" in providers["openai"].reason
    assert providers["broken_import"].state == pb.PROVIDER_STATE_BROKEN
    assert "not installed (on purpose)" in providers["broken_import"].reason
    assert providers["broken_register"].state == pb.PROVIDER_STATE_BROKEN
    assert "cannot start: on purpose" in providers["broken_register"].reason
    assert generate(daemon, text_request("still serving")).route.provider == "fake"


def test_disabled_plugins_are_not_loaded(start_daemon, tmp_path) -> None:
    daemon = start_daemon(config(tmp_path, "plugins:\n  disabled: [openai]\n"))
    providers = {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers}
    assert providers["openai"].state == pb.PROVIDER_STATE_DISABLED
    assert providers["openai"].models == []


# -- bad input: the right code and details, never a crash -----------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64
WAV = b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 64


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (pb.MultimodalRequest(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages"),
        (pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part()])]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0]"),
        (text_request("   "), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=JPEG)]),
         grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH", "request.messages[0].parts[0].media.mime_type"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="image/png", data=PNG)]),
         grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH", "request.messages[0].parts[0].media.mime_type"),
        (text_request("x", media=[pb.Media(mime_type="image/png", data=PNG)]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.modality"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG * 100)]),
         grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE", "request.messages[0].parts[0].media.data"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, url="https://example.com/a.png",
                                           mime_type="image/png")]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.url"),
        (text_request("x", options=pb.Options(temperature=5)),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.options.temperature"),
        # a field of the proto, not its oneof ("source"), which descriptors do not list as a field
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png")]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media"),
        # tags are kept with every statistics row: bounded, and none empty (a blank group in stats --by tag)
        (text_request("x", hints=pb.RoutingHints(tags=[f"t{i}" for i in range(33)])),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.hints.tags"),
        (text_request("x", hints=pb.RoutingHints(tags=["team-a", ""])),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.hints.tags[1]"),
        (text_request("x", hints=pb.RoutingHints(tags=["t" * 129])),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.hints.tags[0]"),
        # strings kept with sessions or matched by rules are bounded
        (text_request("x", session_id="s" * 257), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST",
         "request.session_id"),
        (text_request("x", session_id="chat\n1"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST",
         "request.session_id"),
        (text_request("x", metadata={f"k{i}": "v" for i in range(65)}), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REQUEST", "request.metadata"),
        (text_request("x", metadata={"k" * 129: "v"}), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST",
         "request.metadata"),
        (text_request("x", metadata={"team": "v" * 1025}), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST",
         'request.metadata["team"]'),
        (text_request("x", options=pb.Options(language="zz-!!-??")), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REQUEST", "request.options.language"),
        (text_request("x", options=pb.Options(language="en-" + "a" * 64)), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REQUEST", "request.options.language"),
        # a media id is UploadMedia's as it returned it (64 lower-case hex digits), not a path
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, media_id="../../etc/passwd")]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.media_id"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, media_id="AB" * 32)]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.media_id"),
        # names that are logged, answered back or sent to providers are bounded and printable
        (text_request("x", hints=pb.RoutingHints(provider="p" * 257)), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REQUEST", "request.hints.provider"),
        (text_request("x", hints=pb.RoutingHints(model="gpt-4o\nFAKE LOG LINE")), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_REQUEST", "request.hints.model"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG,
                                           filename="f" * 256 + ".png")]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.filename"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG,
                                           filename="a\r\nb.png")]),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "request.messages[0].parts[0].media.filename"),
    ],
    ids=["empty", "empty-part", "blank-text", "mime-vs-bytes", "mime-vs-modality", "no-modality", "oversize",
         "url-not-allowed", "bad-temperature", "no-source", "too-many-tags", "empty-tag", "long-tag",
         "long-session-id", "session-id-with-newline", "too-much-metadata", "long-metadata-key",
         "long-metadata-value", "bad-language", "long-language", "media-id-a-path", "media-id-upper-case",
         "long-provider-hint", "model-hint-with-newline", "long-filename", "filename-with-newline"],
)
def test_bad_requests_get_invalid_argument_with_field_violations(refusing_daemon, request_, code, reason, field) -> None:
    details = error_details(failure(lambda: generate(refusing_daemon, request_)))
    assert (details.code, details.reason, details.domain) == (code, reason, "mmrouter")
    assert field in [f for f, _ in details.violations]


@pytest.mark.parametrize("language", ["", "en", "en-US", "zh-Hant-TW", "sgn-BE-FR", "de-CH-1901"])
def test_language_tags_and_bounded_strings_are_accepted(refusing_daemon, language) -> None:
    request = text_request("x", options=pb.Options(language=language), session_id="é" * 256,
                           metadata={f"k{i}" + "k" * 120: "v" * 1024 for i in range(64)})
    assert refusing_daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route.model == "echo"


def _system_media() -> pb.MultimodalRequest:
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG)
    return pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="Logo:"), pb.Part(media=image)]),
                                          pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Is this ours?")])])


@pytest.mark.parametrize(("request_", "field", "hint"), [
    (text_request("say hi", options=pb.Options(task=pb.TASK_TRANSCRIBE)), "request.options.task", "send the recording"),
    (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG)],
                  options=pb.Options(task=pb.TASK_TRANSCRIBE)), "request.options.task", "send the recording"),
    (_system_media(), "request.messages[0].parts[1].media", "send the media in a user message"),
], ids=["transcribe-text", "transcribe-an-image", "system-media"])
def test_shapes_no_provider_takes_are_refused_by_the_router_before_routing(start_daemon, request_, field, hint) -> None:
    """They went to the first target, which refused them (local: "transcribe needs audio or video input",
    OpenAI: "only user messages may carry media") as PROVIDER_BAD_REQUEST: no fallback was tried, the
    failure counted against the provider's health, and ExplainRoute accepted them."""
    daemon = start_daemon("""
providers: {fake: {api_key: k}}
routes:
  - name: speech
    match: {task: [transcribe]}
    use: local/extract
    fallback: [fake/ears]
default: local/extract
""")
    calls = {"Generate": lambda: generate(daemon, request_),
             "ExplainRoute": lambda: daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request_), timeout=30)}
    for name, call in calls.items():
        details = error_details(failure(call))
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), (name, details)
        assert [f for f, _ in details.violations] == [field], name
        assert hint in details.violations[0][1]
    health = providers_by_name(daemon.stub)["local"].health
    assert (health.succeeded_calls, health.failed_calls) == (0, 0)


def test_a_transcription_in_a_session_may_send_no_media(start_daemon) -> None:
    """The session's history may hold the recording (the wire layer does not see it): not refused as a shape."""
    daemon = start_daemon("""
providers: {fake: {api_key: k}}
routes:
  - name: speech
    match: {task: [transcribe]}
    use: fake/ears
default: fake/echo
""")
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=WAV)
    transcribe = pb.Options(task=pb.TASK_TRANSCRIBE)
    first = generate(daemon, text_request("", media=[audio], options=transcribe, session_id="dictation"))
    again = generate(daemon, text_request("once more", options=transcribe, session_id="dictation"))
    assert first.transcript.text and again.transcript.text == first.transcript.text


def test_oversize_inline_media_points_to_upload_media(daemon) -> None:
    request = text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PNG * 100)])
    assert "UploadMedia" in error_details(failure(lambda: generate(daemon, request))).message


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_IMAGE, media_id="0" * 64)]),
         grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND"),
        (text_request("x", hints=pb.RoutingHints(provider="nope")), grpc.StatusCode.NOT_FOUND, "UNKNOWN_TARGET"),
        (text_request("x", hints=pb.RoutingHints(provider="fake", model="nope")),
         grpc.StatusCode.NOT_FOUND, "UNKNOWN_TARGET"),
        (text_request("x", hints=pb.RoutingHints(provider="openai")),
         grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_NOT_CONFIGURED"),
        (text_request("x", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=WAV)]),
         grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE"),
    ],
    ids=["unknown-media", "unknown-provider", "unknown-model", "override-not-configured", "no-route"],
)
def test_unknown_things_get_clear_codes(refusing_daemon, request_, code, reason) -> None:
    details = error_details(failure(lambda: generate(refusing_daemon, request_)))
    assert (details.code, details.reason) == (code, reason)


@pytest.mark.parametrize("hints, field, meant", [
    (pb.RoutingHints(provider="Fake"), "request.hints.provider", "'fake'"),
    (pb.RoutingHints(provider=" fake"), "request.hints.provider", "'fake'"),
    (pb.RoutingHints(provider="fak"), "request.hints.provider", "'fake'"),
    (pb.RoutingHints(provider="fake", model="ecoh"), "request.hints.model", "'echo'"),
    (pb.RoutingHints(model="Echo"), "request.hints.model", "'echo'"),
])
def test_an_unknown_hint_names_its_field_and_the_name_meant(refusing_daemon, hints, field, meant) -> None:
    """UNKNOWN_TARGET came without a field violation, and names are matched as given (case, spaces) with
    no "did you mean", as config check has."""
    details = error_details(failure(lambda: generate(refusing_daemon, text_request("x", hints=hints))))
    assert details.reason == "UNKNOWN_TARGET" and f"did you mean {meant}?" in details.message
    [(named, problem)] = details.violations
    assert named == field and f"did you mean {meant}?" in problem


def test_an_override_that_cannot_take_the_request_names_the_hints(daemon) -> None:
    request = text_request("x", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=WAV)],
                           hints=pb.RoutingHints(provider="fake", model="small"))
    details = error_details(failure(lambda: generate(daemon, request)))
    assert details.reason == "NO_ROUTE" and details.violations[0][0] == "request.hints"


def test_unknown_session_reset_is_not_found(daemon) -> None:
    details = error_details(failure(lambda: daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="nope"))))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


@pytest.mark.parametrize("session_id", ["s" * 257, "chat\n1"], ids=["too-long", "newline"])
def test_reset_session_checks_the_id_as_a_request_does(refusing_daemon, session_id) -> None:
    """No such id can hold turns: INVALID_REQUEST names the field, as Generate does, not SESSION_NOT_FOUND."""
    details = error_details(failure(lambda: refusing_daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=session_id))))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in details.violations] == ["session_id"]


def test_overrides_can_be_forbidden(start_daemon, tmp_path) -> None:
    daemon = start_daemon(config(tmp_path, "overrides:\n  allow: false\n"))
    details = error_details(failure(lambda: generate(daemon, text_request("x", hints=pb.RoutingHints(provider="fake")))))
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OVERRIDE_NOT_ALLOWED")


def test_rate_limit_becomes_resource_exhausted_with_retry_info(daemon) -> None:
    details = error_details(failure(lambda: generate(daemon, text_request("FAIL:429"))))
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert details.retry_delay == 7
    assert details.metadata["provider"] == "fake"


def test_a_crashing_plugin_gets_internal_and_the_daemon_keeps_serving(daemon) -> None:
    details = error_details(failure(lambda: generate(daemon, text_request("CRASH"))))
    assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "PROVIDER_FAILED")
    assert "scripted crash" in details.message
    assert generate(daemon, text_request("after the crash")).text.startswith("fake/echo says")


def test_secrets_never_reach_errors_or_logs(daemon) -> None:
    details = error_details(failure(lambda: generate(daemon, text_request("LEAK"))))
    assert SECRET not in details.message and "***" in details.message
    assert SECRET not in daemon.logs()
    assert "upstream refused key ***" in daemon.logs()


def test_a_secret_in_a_failed_attempt_is_masked_in_the_answer_of_its_fallback(daemon) -> None:
    """The first target's plugin quotes its key in an exception; the fallback answers. The answer's
    route lists the failed attempt, and its error must not carry the key (unary and streamed)."""
    request = text_request("LEAK@echo", hints=pb.RoutingHints(tags=["fallback"]))
    answer = generate(daemon, request)
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=20))
    streamed = [e.done.answer for e in events if e.HasField("done")]
    for a in (answer, *streamed):
        assert [(x.model, x.ok) for x in a.route.attempts] == [("echo", False), ("docs", True)]
        assert "upstream refused key ***" in a.route.attempts[0].error
    assert len(streamed) == 1 and SECRET not in str(answer) and all(SECRET not in str(e) for e in events)


def _not_utf8(message) -> bytes:
    """``message`` serialized, with its placeholder text "\u00a7\u00a7" replaced by bytes that are not UTF-8."""
    data = message.SerializeToString()
    assert "§§".encode() in data
    return data.replace("§§".encode(), b"\xff\xfe")


def test_a_request_with_a_string_that_is_not_utf8_is_invalid_argument_not_unknown(daemon) -> None:
    raw = {name: daemon.channel.unary_unary(f"/mmrouter.v1.RouterService/{name}") for name in ("Generate", "ExplainRoute")}
    generate_bytes = _not_utf8(pb.GenerateRequest(request=text_request("§§")))
    explain_bytes = _not_utf8(pb.ExplainRouteRequest(request=text_request("§§")))
    stream = daemon.channel.unary_stream("/mmrouter.v1.RouterService/StreamGenerate")
    upload = daemon.channel.stream_unary("/mmrouter.v1.RouterService/UploadMedia")
    metadata = pb.UploadMediaRequest(metadata=pb.UploadMetadata(mime_type="image/png", modality=pb.MODALITY_IMAGE,
                                                                filename="§§"))
    calls = {
        "Generate": lambda: raw["Generate"](generate_bytes, timeout=10),
        "ExplainRoute": lambda: raw["ExplainRoute"](explain_bytes, timeout=10),
        "StreamGenerate": lambda: list(stream(_not_utf8(pb.StreamGenerateRequest(request=text_request("§§"))),
                                              timeout=10)),
        "UploadMedia first": lambda: upload(iter([_not_utf8(metadata)]), timeout=10),
        "UploadMedia later": lambda: upload(iter([metadata.SerializeToString().replace("§§".encode(), b"x"),
                                                  _not_utf8(metadata)]), timeout=10),
    }
    for name, call in calls.items():
        details = error_details(failure(call))
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), (name, details)
        assert "cannot be parsed" in details.message and details.violations[0][0] == "request", name
        assert "a string field is not UTF-8" in details.violations[0][1], name
    assert generate(daemon, text_request("still serving")).text.startswith("fake/echo says")


def test_a_request_whose_wire_format_is_corrupt_is_invalid_argument_saying_so(daemon) -> None:
    raw = daemon.channel.unary_unary("/mmrouter.v1.RouterService/Generate")
    details = error_details(failure(lambda: raw(b"\xff\xff\xff\xff\x0f", timeout=10)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations[0][0] == "request" and "its wire format is corrupt" in details.violations[0][1]
    assert generate(daemon, text_request("still serving")).text.startswith("fake/echo says")


def test_health_and_reflection_refuse_a_request_they_cannot_parse_as_the_router_does(daemon) -> None:
    """They need no token, and their generated handlers parsed with FromString: a garbled request was
    UNKNOWN with Python's exception text (reflection v1's naming the v1alpha type), and an ERROR with a
    traceback in the log, for anyone. Health's List, newer than the servicer, was UNIMPLEMENTED the same way."""
    def raw(method: str, streaming: bool = False):
        path = daemon.channel.stream_stream if streaming else daemon.channel.unary_unary
        return path(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    calls = {
        "health check": (lambda: raw("/grpc.health.v1.Health/Check")(b"\xff\xff\xff", timeout=10),
                         "grpc.health.v1.HealthCheckRequest"),
        "health watch": (lambda: list(daemon.channel.unary_stream("/grpc.health.v1.Health/Watch")(
            b"\x0a\x02\xff\xfe", timeout=10)), "grpc.health.v1.HealthCheckRequest"),
        "reflection v1alpha": (lambda: list(raw("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                                True)(iter([b"\xff\xff\xff"]), timeout=10)),
                               "grpc.reflection.v1alpha.ServerReflectionRequest"),
        "reflection v1": (lambda: list(raw("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True)(
            iter([b"\x0a\x02\xff\xfe"]), timeout=10)), "grpc.reflection.v1.ServerReflectionRequest"),
    }
    for name, (call, message_type) in calls.items():
        details = error_details(failure(call))
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), (name, details)
        assert f"the {message_type} message cannot be parsed" in details.message, (name, details.message)
        assert details.violations[0][0] == "request", name
    listed = health_pb2_grpc.HealthStub(daemon.channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING, "mmrouter.v1.RouterService": health_pb2.HealthCheckResponse.SERVING}
    assert "Traceback" not in daemon.logs() and "ERROR" not in daemon.logs()
    test_health_and_reflection(daemon)  # a good request is still answered


def test_headers_up_to_16_kib_are_always_taken_and_larger_ones_always_refused(daemon) -> None:
    """gRPC's default soft limit (8 KiB) refused a random share of calls with headers between 8 and 16 KiB
    (4 calls in 10 with a 12 KB header): the same call got different statuses."""
    stub = router_pb2_grpc.RouterServiceStub(daemon.channel)
    for _ in range(20):
        assert stub.ListProviders(pb.ListProvidersRequest(), metadata=[("x-trace", "v" * 15_000)], timeout=10)
    for _ in range(5):
        too_large = failure(lambda: stub.ListProviders(pb.ListProvidersRequest(),
                                                       metadata=[("x-trace", "v" * 17_000)], timeout=10))
        assert too_large.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_lower_case_log_level_is_understood(start_daemon, tmp_path) -> None:
    daemon = start_daemon(config(tmp_path, "  log_level: debug"))
    assert generate(daemon, text_request("quietly")).text.startswith("fake/echo says")
    assert "DEBUG" in daemon.logs() and daemon.proc.poll() is None


def test_json_logs_are_one_masked_object_per_line(start_daemon, tmp_path) -> None:
    import json
    import re
    from importlib.metadata import version

    daemon = start_daemon(config(tmp_path, "  log_format: json"))
    failure(lambda: generate(daemon, text_request("LEAK")))
    crashed = error_details(failure(lambda: generate(daemon, text_request("CRASH"))))
    assert wait_for(lambda: "scripted crash" in daemon.logs())
    entries = []
    for line in daemon.logs().splitlines():
        if re.match(r"^[IWEF]\d{4} ", line):  # gRPC's C core writes its own lines
            continue
        entries.append(json.loads(line))
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["level"] == "INFO" and e["message"].startswith(f"mmrouter {version('mmrouter-daemon')} listening on") for e in entries)
    crash = next(e for e in entries if "exception" in e and "scripted crash" in e["exception"])
    assert crash["level"] == "ERROR" and "Traceback" in crash["exception"]
    # the traceback names its call, as the call's other lines do: one of many interleaved is told apart
    assert (crash["request_id"], crash["provider"], crash["model"]) == (crashed.request_id, "fake", "echo")
    assert crashed.request_id in crash["message"]
    assert any("upstream refused key ***" in e["message"] for e in entries)
    assert SECRET not in daemon.logs()


def test_invalid_config_stops_serve_with_the_key_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: a\n    use: fake/echo\n    match:\n      inputs_any: [smell]\n")
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(bad), "--address",
                             "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "routes.0.match.inputs_any.0" in result.stderr and "line 5" in result.stderr


# -- deadlines, cancellation, shutdown ---------------------------------------------------------------


def test_client_deadline_cancels_the_provider_call(daemon, tmp_path) -> None:
    started = time.monotonic()
    error = failure(lambda: generate(daemon, text_request("SLOW:30"), timeout=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    assert wait_for(lambda: list(tmp_path.glob("cancelled-*")), timeout=10), "the provider call was not cancelled"


def test_client_cancellation_reaches_the_provider(daemon, tmp_path) -> None:
    call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:30")))
    first = next(call)
    assert first.HasField("route_chosen")
    assert wait_for(lambda: list(tmp_path.glob("started-*")), timeout=10), "the provider call did not start"
    call.cancel()
    assert wait_for(lambda: list(tmp_path.glob("cancelled-*")), timeout=10), "the provider call was not cancelled"
    assert generate(daemon, text_request("still alive")).text.startswith("fake/echo says")


def test_other_calls_are_answered_while_a_slow_one_runs(daemon) -> None:
    slow = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("SLOW:3")), timeout=30)
    quick = generate(daemon, text_request("quick"))
    assert quick.text.startswith("fake/echo says: quick")
    assert not slow.done(), "the quick call should not have waited for the slow one"
    assert slow.result().answer.text.startswith("fake/echo says: SLOW:3")


def test_sigterm_drains_in_flight_calls_and_exits_cleanly(daemon) -> None:
    result: dict = {}

    def call() -> None:
        result["answer"] = generate(daemon, text_request("SLOW:2"))

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.7)
    daemon.proc.send_signal(signal.SIGTERM)
    # a call sent while it drains, on the open connection, is refused with a status a client can retry on
    # (gRPC's own stop cancelled it bare: no details, no request id, no log line)
    assert wait_for(lambda: "draining" in daemon.logs())
    details = error_details(failure(lambda: generate(daemon, text_request("late"))))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), details
    assert "this call was not started; send it again" in details.message and details.retry_delay == 1
    # not to another daemon when it names a session or an upload: those live in this one's data directory
    assert "once the daemon is back; a call naming no session and no uploaded media id may go to another instance" \
        in details.message, details.message
    assert details.request_id and details.request_id in daemon.logs()
    worker.join(30)
    assert result["answer"].text.startswith("fake/echo says: SLOW:2")
    assert daemon.proc.wait(20) == 0
    assert "draining" in daemon.logs() and "stopped" in daemon.logs()


def test_a_call_still_running_at_the_end_of_the_shutdown_grace_gets_the_daemons_status(start_daemon, tmp_path) -> None:
    """gRPC cut such calls with UNAVAILABLE "Cancelling all calls", no details and no request id: the client
    could not tell a stopping daemon from a network error, nor find the call in the log."""
    markers = tmp_path / "markers"
    markers.mkdir()
    daemon = start_daemon(f"providers:\n  fake: {{api_key: k, marker_dir: '{markers}'}}\n"
                          "server: {shutdown_grace_seconds: 2}\ndefault: fake/echo\n")
    for call in (lambda: daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("SLOW:60")), timeout=60),
                 lambda: daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:60")), timeout=60)):
        daemon.extra.setdefault("calls", []).append(call())
    assert wait_for(lambda: len(list(markers.glob("started-*"))) == 2, timeout=30), "the calls never reached the provider"
    daemon.proc.send_signal(signal.SIGTERM)
    unary, stream = daemon.extra["calls"]
    failures = [failure(unary.result), failure(lambda: list(stream))]
    for caught in failures:
        details = error_details(caught)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), details
        assert "the daemon is stopping" in details.message and "send it again" in details.message
        assert "at the end of its server.shutdown_grace_seconds" in details.message
        assert details.request_id and details.request_id in daemon.logs()
    assert daemon.proc.wait(20) == 0
    assert "2 call(s) still running at the end of the shutdown grace" in daemon.logs()


def test_a_second_signal_ends_the_drain_at_once(start_daemon, tmp_path) -> None:
    """A second Ctrl-C or SIGTERM while the daemon drained did nothing: it waited out the whole grace."""
    markers = tmp_path / "markers"
    markers.mkdir()
    daemon = start_daemon(f"providers:\n  fake: {{api_key: k, marker_dir: '{markers}'}}\n"
                          "server: {shutdown_grace_seconds: 600}\ndefault: fake/echo\n")
    slow = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("SLOW:600")), timeout=600)
    assert wait_for(lambda: list(markers.glob("started-*")), timeout=30), "the call never reached the provider"
    daemon.proc.send_signal(signal.SIGINT)
    assert wait_for(lambda: "draining" in daemon.logs())
    daemon.proc.send_signal(signal.SIGINT)
    details = error_details(failure(lambda: slow.result(timeout=60)))  # not after the 600 s of the grace
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    # its client is not told the grace ran out (it would raise it for nothing)
    assert details.message.startswith("the daemon was told to stop at once (a second SIGTERM or SIGINT)")
    assert "shutdown_grace_seconds" not in details.message
    assert daemon.proc.wait(60) == 0
    assert "1 call(s) still running on a second signal: ended (SHUTTING_DOWN)" in daemon.logs()


def test_the_access_log_keeps_an_error_message_the_client_gets_clipped(daemon) -> None:
    """The client's copy of a message is cut at 768 bytes (trailers are bounded); the log line kept only
    that copy, so the operator could not read the rest from the request id either."""
    request = text_request("hi", hints=pb.RoutingHints(tags=[f"bad\ntag {i}" for i in range(20)]))
    details = error_details(failure(lambda: generate(daemon, request)))
    assert len(details.message.encode()) <= 768 and "request.hints.tags[19]" not in details.message
    [line] = [line for line in daemon.logs().splitlines() if details.request_id in line and "INVALID_REQUEST" in line]
    assert "request.hints.tags[19]: has U+000A LINE FEED at character 4" in line


def test_diarization_without_a_diarizing_provider_says_which_to_configure(start_daemon) -> None:
    daemon = start_daemon(None, plugins=())  # the embedded default, no keys: only `local` is ready
    request = text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=WAV)],
                           options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True))
    details = error_details(failure(lambda: generate(daemon, request)))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DIARIZATION_UNAVAILABLE")
    assert "assemblyai" in details.message and "ASSEMBLYAI_API_KEY" in details.message


@pytest.mark.parametrize("url", ["/etc/passwd", "file:///etc/passwd", "ftp://host/a.png", "https://", "http//x",
                                 "C:\\secrets\\a.png", "http://[::1"])
def test_allowed_media_urls_must_be_http_with_a_host(url) -> None:
    """Some SDKs upload a string that is not an http(s) URL as a file of the daemon's host."""
    from router import wire
    from router.errors import InvalidRequest

    request = text_request("x", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", url=url)])
    with pytest.raises(InvalidRequest) as refused:
        wire.request_from_proto(request, wire.Limits(1 << 20, allow_urls=True), resolve=lambda media_id: None)
    assert [v.field for v in refused.value.violations] == ["request.messages[0].parts[0].media.url"]
    accepted = text_request("x", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav",
                                                 url="HTTPS://example.com/a.wav?sig=1")])
    assert wire.request_from_proto(accepted, wire.Limits(1 << 20, True), lambda media_id: None).media()[0].url


def test_errors_that_quote_huge_input_keep_their_code_and_details(daemon) -> None:
    """Statuses travel in trailers, which clients refuse over 8 KiB: a bare RESOURCE_EXHAUSTED without details."""
    empty_parts = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part()])] * 2000)
    calls = [
        (lambda: daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="é" * 20_000)), "INVALID_REQUEST"),
        (lambda: generate(daemon, text_request("hi", hints=pb.RoutingHints(model="m" * 50_000))), "INVALID_REQUEST"),
        (lambda: generate(daemon, text_request("hi", media=[pb.Media(modality=pb.MODALITY_IMAGE,
                                                                     media_id="x" * 50_000)])), "INVALID_REQUEST"),
        (lambda: generate(daemon, text_request("hi", media=[pb.Media(modality=pb.MODALITY_IMAGE, data=PNG,
                                                                     mime_type="audio/" + "x" * 50_000)])),
         "INVALID_REQUEST"),
        (lambda: generate(daemon, empty_parts), "INVALID_REQUEST"),
    ]
    for call, reason in calls:
        details = error_details(failure(call))
        assert details.reason == reason
        assert len(details.message.encode()) <= 768 and len(details.violations) <= 8
    assert error_details(failure(calls[-1][0])).message.startswith("2000 problems, the first 8 listed")


def test_a_second_daemon_on_a_port_in_use_refuses_to_start(daemon, tmp_path) -> None:
    """gRPC's default SO_REUSEPORT let both listen and split the connections between them."""
    second = subprocess.run([sys.executable, "-m", "router", "serve", "--address", daemon.address,
                             "--data-dir", str(tmp_path / "other-data")],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert daemon.address in second.stdout + second.stderr
    assert generate(daemon, text_request("still me")).text.startswith("fake/echo says")


def _serve(tmp_path: Path, plugin_sites, address: str) -> tuple[subprocess.Popen, Path, Path]:
    """``mmrouter serve --address address`` with the testkit's fake provider; the process, its ready
    file and its log."""
    import os

    from conftest import TESTKIT

    config_file = tmp_path / "router.yaml"
    config_file.write_text("providers: {fake: {api_key: k}}\ndefault: fake/echo\n")
    ready, log = tmp_path / "ready", tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_sites["testkit"]), str(TESTKIT)])}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config_file),
                                 "--address", address, "--data-dir", str(tmp_path / "data"),
                                 "--ready-file", str(ready)], stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, ready, log


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_daemon_on_a_unix_socket_reports_the_socket_in_its_ready_file_and_log(tmp_path, plugin_sites) -> None:
    """It wrote ``unix:1`` (gRPC's port for a socket), an address no client can reach."""
    from mmrouter.v1 import router_pb2_grpc

    socket_path = tmp_path / "mm.sock"
    proc, ready, log = _serve(tmp_path, plugin_sites, f"unix:{socket_path}")
    try:
        assert wait_for(lambda: (ready.exists() and ready.read_text()) or proc.poll() is not None, 60)
        assert ready.read_text() == f"unix:{socket_path}", log.read_text()
        assert f"listening on unix:{socket_path} (plaintext" in log.read_text()
        with grpc.insecure_channel(ready.read_text()) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            answer = stub.Generate(pb.GenerateRequest(request=text_request("over the socket")), timeout=20).answer
        assert answer.text.startswith("fake/echo says")
    finally:
        _stop(proc)


def test_a_second_daemon_on_a_unix_socket_in_use_is_refused_and_a_stale_one_replaced(tmp_path, plugin_sites) -> None:
    """gRPC replaces the file of the socket it binds: a second daemon on the first's socket took it over, and the
    first went on serving, unreachable. It is refused now; a socket file nothing listens on is taken as before."""
    import socket as sockets

    socket_path = tmp_path / "mm.sock"
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
    first, ready, log = _serve(tmp_path / "one", plugin_sites, f"unix:{socket_path}")
    try:
        assert wait_for(lambda: ready.exists() or first.poll() is not None, 60), log.read_text()
        second, _, second_log = _serve(tmp_path / "two", plugin_sites, f"unix:{socket_path}")
        assert second.wait(60) != 0
        assert f"cannot listen on unix:{socket_path}: another process listens on it" in second_log.read_text()
        assert first.poll() is None and socket_path.is_socket()  # the first still serves, on its socket
    finally:
        _stop(first)
    stale = tmp_path / "stale.sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as left:  # bound, never listening: as a daemon killed
        left.bind(str(stale))
    third, ready, log = _serve(tmp_path / "three", plugin_sites, f"unix:{stale}")
    try:
        assert wait_for(lambda: ready.exists() or third.poll() is not None, 60)
        assert ready.read_text() == f"unix:{stale}", log.read_text()
    finally:
        _stop(third)


def _name_for_both_loopbacks() -> str | None:
    """A host name this machine resolves to both 127.0.0.1 and ::1, if it has one."""
    import socket

    for name in ("localhost", "localhost6", "ip6-localhost"):
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if {"127.0.0.1", "::1"} <= found:
            return name
    return None


def _held(host: str, family: int):
    """A socket listening on a free port of ``host``."""
    import socket

    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.bind((host, 0))
    holder.listen()
    return holder


@pytest.mark.parametrize("name", ["localhost", _name_for_both_loopbacks()], ids=["localhost", "a-name-for-both"])
def test_a_host_name_with_one_of_its_addresses_in_use_refuses_to_start(tmp_path, plugin_sites, name) -> None:
    """With 127.0.0.1:PORT taken by another daemon, ``localhost:PORT`` started anyway on [::1] alone:
    clients got one daemon or the other by the address family they tried. gRPC resolves ``localhost``
    to both loopbacks even where the system's resolver gives only 127.0.0.1."""
    import socket

    if name is None:
        pytest.skip("no host name resolves to 127.0.0.1 and ::1 here")
    with _held("127.0.0.1", socket.AF_INET) as holder:
        port = holder.getsockname()[1]
        proc, ready, log = _serve(tmp_path, plugin_sites, f"{name}:{port}")
        try:
            assert wait_for(lambda: proc.poll() is not None or ready.exists(), 60)
            assert proc.poll() == 1, f"it started on some of {name}'s addresses:\n{log.read_text()}"
        finally:
            _stop(proc)
    output = " ".join(log.read_text().split())
    assert f"cannot listen on {name}:{port}" in output and f"127.0.0.1:{port} cannot be bound" in output
    assert not ready.exists() and "listening on" not in output


async def test_a_host_name_is_listened_on_at_every_address_or_not_at_all(tmp_path, monkeypatch) -> None:
    """The same, without a host name of two addresses on this machine: one is made up."""
    import socket

    import mmrouter_testkit

    from router.config import parse_config
    from router.core import App
    from router.server import start_server

    try:
        _held("::1", socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1 here")
    real = socket.getaddrinfo

    def both(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "both.mmrouter.test":
            return real(host, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    app = App(parse_config(f"providers: {{fake: {{api_key: k}}}}\nserver: {{data_dir: '{tmp_path}'}}\n"),
              extra_plugins={"fake": mmrouter_testkit})
    try:
        with _held("127.0.0.1", socket.AF_INET) as holder:
            port = holder.getsockname()[1]
            with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port} cannot be bound \(Address already in use"):
                await start_server(app, f"both.mmrouter.test:{port}")
        server, port, _ = await start_server(app, "both.mmrouter.test:0")
        try:
            for address in (f"127.0.0.1:{port}", f"[::1]:{port}"):
                async with grpc.aio.insecure_channel(address) as channel:
                    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                    assert (await check).status == health_pb2.HealthCheckResponse.SERVING, address
        finally:
            await server.stop(0)
    finally:
        await app.aclose()


def test_a_model_named_alone_goes_to_a_provider_that_is_ready(start_daemon) -> None:
    """Both have gpt-4o; `openai`, listed first, has no key."""
    daemon = start_daemon("""
providers:
  openai: {}
  work: {plugin: openai, api_key: sk-work-123456, base_url: "http://127.0.0.1:9/v1"}
  fake: {api_key: k}
default: fake/echo
""")
    request = text_request("hi", hints=pb.RoutingHints(model="gpt-4o"))
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request)).route
    assert (route.provider, route.model) == ("work", "gpt-4o")


def test_a_second_daemon_on_a_data_directory_in_use_refuses_to_start(daemon) -> None:
    """Two daemons numbered a session's turns over each other and lost answered turns."""
    second = subprocess.run([sys.executable, "-m", "router", "serve", "--address", "127.0.0.1:0",
                             "--data-dir", str(daemon.data_dir)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"already uses the data directory {daemon.data_dir}" in second.stderr
    assert str(daemon.proc.pid) in second.stderr
    # a restart's new daemon, started while the old one drains, is told to wait for it, not to start afresh
    assert "if it is stopping (a restart), start this one once it has exited" in second.stderr, second.stderr
    assert generate(daemon, text_request("still me")).text.startswith("fake/echo says")


def test_a_call_is_cut_at_max_call_seconds_when_its_client_sets_no_deadline(start_daemon, tmp_path) -> None:
    """A provider that hangs must not hold a call (and its provider) forever."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(f"""
providers:
  fake: {{api_key: k, marker_dir: '{marks}'}}
server: {{max_call_seconds: 1}}
default: fake/echo
""")
    for call in (lambda r: daemon.stub.Generate(pb.GenerateRequest(request=r)),
                 lambda r: list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=r)))):
        details = error_details(failure(lambda call=call: call(text_request("SLOW:30"))))
        assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
        assert "max_call_seconds (1 s)" in details.message
    assert wait_for(lambda: len(list(marks.glob("cancelled-*"))) == 2)  # the provider calls were cancelled
    assert generate(daemon, text_request("quick")).text.startswith("fake/echo says")


def test_a_data_directory_that_cannot_be_locked_is_served_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    """Some network file systems refuse locks: the daemon still starts, and says so."""
    import errno
    import fcntl

    from router.server import lock_data_dir

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    lock_data_dir(tmp_path / "data").close()
    assert "cannot lock the data directory" in caplog.text and "No locks available" in caplog.text


async def test_a_stream_to_a_slow_reader_is_cut_at_max_call_seconds_with_its_status(tmp_path) -> None:
    """The limit may pass while gRPC waits to send to a client that reads slowly: the call must still
    end with CALL_TIMEOUT (it used to end with no status at all, hanging the client)."""
    import asyncio

    from mmrouter.v1 import router_pb2_grpc

    import router
    from router.config import parse_config
    from router.core import App
    from router.server import start_server

    class Fast(router.Provider):
        name = "st"
        models = [router.ModelInfo("fast", frozenset({router.Modality.TEXT}))]

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            for _ in range(2000):
                yield router.TextDelta("z" * 10_000)

    class Plugin:
        @router.hookimpl
        def register_providers(self, register, settings):  # type: ignore[no-untyped-def]
            register(Fast())

    config = f"""
providers: {{st: {{}}}}
plugins: {{disabled: [openai, anthropic, gemini, assemblyai, local]}}
default: st/fast
server: {{data_dir: '{tmp_path}', max_call_seconds: 1, max_concurrent_calls: 1}}
"""
    app = App(parse_config(config, "t.yaml"), extra_plugins={"st": Plugin()})
    server, port, _ = await start_server(app, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            call = stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")))
            assert (await call.read()).HasField("route_chosen")
            await asyncio.sleep(2)  # reading slowly: the server waits in gRPC's send when the limit passes
            # past the limit, a client that reads nothing no longer holds the only call slot
            other = stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("other")))
            assert (await other.read()).HasField("route_chosen")
            other.cancel()

            async def drain() -> None:
                while await call.read() is not grpc.aio.EOF:
                    pass

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(drain(), 20)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "max_call_seconds (1 s) while its client was not reading the answer" in caught.value.details()
    finally:
        await server.stop(0)
        await app.aclose()


def test_what_the_daemon_writes_is_its_own_to_read(start_daemon, tmp_path) -> None:
    """Conversations are private: with the usual umask 022, sessions.sqlite was readable by every local user."""
    import os
    import stat

    old = os.umask(0o022)  # the daemon inherits it
    try:
        daemon = start_daemon("providers: {fake: {api_key: k}}\ndefault: fake/echo\n", data_dir=tmp_path / "data")
    finally:
        os.umask(old)
    generate(daemon, text_request("my private question", session_id="mine"))
    written = [daemon.data_dir, *daemon.data_dir.rglob("*")]
    assert any(p.name == "sessions.sqlite" for p in written)
    readable = [p for p in written if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert readable == [], [(str(p), oct(p.stat().st_mode)) for p in readable]
    assert "other local users may read" not in daemon.logs()


def test_a_data_dir_other_users_can_read_is_warned_of_at_start(start_daemon, tmp_path) -> None:
    """The umask covers what the daemon creates: a data directory an older version (or the operator's
    umask 022) made readable stays so, and the operator is told how to close it."""
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    data.chmod(0o755)
    (data / "media").chmod(0o755)
    daemon = start_daemon("providers: {fake: {api_key: k}}\ndefault: fake/echo\n", data_dir=data)
    generate(daemon, text_request("hello"))
    logs = daemon.logs()
    assert "other local users may read the conversations and media" in logs
    assert f"{data} (0755)" in logs and f"{data / 'media'} (0755)" in logs
    assert f"chmod -R go-rwx {data}" in logs


async def test_an_upload_whose_client_never_ends_its_stream_is_told_so(tmp_path, monkeypatch) -> None:
    """Every byte size_bytes announced arrived, but the stream was never half-closed (grpc-js write() without
    end()): the refusal says so, rather than to send chunks without pausing."""
    import asyncio

    from mmrouter.v1 import router_pb2_grpc

    from router import server as server_module
    from router.config import parse_config
    from router.core import App

    monkeypatch.setattr(server_module, "UPLOAD_IDLE_SECONDS", 0.5)
    app = App(parse_config(f"server: {{data_dir: '{tmp_path}'}}\ndefault: local/extract\n", "t.yaml"))
    server, port, _ = await server_module.start_server(app, "127.0.0.1:0")
    content = b"%PDF-1.4\n%%EOF\n"

    async def never_ended(size: int):  # type: ignore[no-untyped-def]
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", size_bytes=size))
        yield pb.UploadMediaRequest(chunk=content[:6])
        yield pb.UploadMediaRequest(chunk=content[6:])
        await asyncio.sleep(30)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for size, told in [(len(content), "15 bytes (its size_bytes) arrived, but its client did not end its "
                                              "request stream within 0.5 s"),
                               (len(content) + 1, "sent nothing for 0.5 s (no whole message arrived)")]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await asyncio.wait_for(stub.UploadMedia(never_ended(size)), 20)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert told in caught.value.details()
                assert error_details(caught.value).reason == "UPLOAD_IDLE"
    finally:
        await server.stop(0)
        await app.aclose()


@pytest.mark.parametrize("quiet_after", [0, 2], ids=["before-the-metadata", "after-a-chunk"])
async def test_an_upload_that_goes_quiet_is_cut_and_frees_its_file_and_slot(tmp_path, monkeypatch, quiet_after) -> None:
    """Idle uploads each held a temp file: enough of them used up the daemon's file descriptors. A cut
    upload also gives back its place under server.max_concurrent_uploads, even one that never said
    what it uploads (it would otherwise hold its place forever)."""
    import asyncio

    from mmrouter.v1 import router_pb2_grpc

    from router import server as server_module
    from router.config import parse_config
    from router.core import App

    monkeypatch.setattr(server_module, "UPLOAD_IDLE_SECONDS", 0.5)
    config = f"server: {{data_dir: '{tmp_path}', max_concurrent_uploads: 1}}\ndefault: local/extract\n"
    app = App(parse_config(config, "t.yaml"))
    server, port, _ = await server_module.start_server(app, "127.0.0.1:0")
    metadata = pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                                mime_type="application/pdf"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)

            async def quiet():  # type: ignore[no-untyped-def]
                for message in [metadata, pb.UploadMediaRequest(chunk=b"%PDF-1.4\n")][:quiet_after]:
                    yield message
                await asyncio.sleep(30)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(stub.UploadMedia(quiet()), 20)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "sent nothing for 0.5 s" in caught.value.details()
            assert error_details(caught.value).reason == "UPLOAD_IDLE"  # not CALL_TIMEOUT: max_call_seconds was not the cause
            assert not [p for p in (tmp_path / "media" / "tmp").iterdir()], "the temp file was left behind"

            async def whole():  # type: ignore[no-untyped-def]
                yield metadata
                yield pb.UploadMediaRequest(chunk=b"%PDF-1.4\n%%EOF\n")

            assert (await asyncio.wait_for(stub.UploadMedia(whole()), 20)).size_bytes == 15
    finally:
        await server.stop(0)
        await app.aclose()


async def test_an_upload_slot_is_given_back_when_its_call_is_cancelled() -> None:
    """gRPC cancels an upload's task when its client goes away mid-call: its slot must come back."""
    import asyncio

    from router.errors import TooManyUploads
    from router.server import Slots, _over_limit

    slots = Slots(1, _over_limit(TooManyUploads, "uploads", "max_concurrent_uploads"))
    holding = asyncio.Event()

    async def upload() -> None:
        with slots.hold():
            holding.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(upload())
    await holding.wait()
    with pytest.raises(TooManyUploads) as refused, slots.hold():
        pass
    assert refused.value.message.startswith("1 upload is under way, as many as server.max_concurrent_uploads allows")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.in_use == 0
    with slots.hold():
        assert slots.in_use == 1


def test_speakers_to_expect_ask_for_diarization(start_daemon) -> None:
    """``speakers_expected`` without ``diarization`` went to a model that cannot tell speakers apart
    (Whisper), which dropped it silently; it asks for diarization."""
    daemon = start_daemon("""
providers: {fake: {api_key: k}}
routes:
  - name: meetings
    match: {inputs_any: [audio], diarization: true}
    use: fake/diarizer
  - name: speech
    match: {inputs_any: [audio]}
    use: fake/ears
""")
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=WAV)

    def rule(**options) -> str:
        request = text_request("", media=[audio], options=pb.Options(task=pb.TASK_TRANSCRIBE, **options))
        return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request)).route.rule

    assert (rule(), rule(speakers_expected=3), rule(diarization=True)) == ("speech", "meetings", "meetings")


class H2Probe:
    """A bare HTTP/2 client: it pings when told (no gRPC library throttles it) and records every frame
    the daemon sends as (type, flags, stream, payload); it acknowledges SETTINGS and PINGs."""

    DATA, HEADERS, SETTINGS, PING, GOAWAY = 0, 1, 4, 6, 7

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.received: list[tuple[float, int, int]] = []  # (time, type, flags)
        self._buffer = b""
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(self.SETTINGS, 0, 0))

    @staticmethod
    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def call(self, method: str, request) -> None:
        """Start a unary call on stream 1 (headers as HPACK literals without indexing)."""
        def literal(name: str, value: str) -> bytes:
            return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "probe"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        body = request.SerializeToString()
        self.sock.sendall(self.frame(self.HEADERS, 0x4, 1, b"".join(literal(k, v) for k, v in headers))
                          + self.frame(self.DATA, 0x1, 1, b"\x00" + struct.pack(">I", len(body)) + body))

    def ping(self) -> None:
        with contextlib.suppress(OSError):  # the daemon closed the connection (its GOAWAY is in the frames)
            self.sock.sendall(self.frame(self.PING, 0, 0, b"probe123"))

    def read(self, seconds: float) -> None:
        """Take what the daemon sends for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return
            self._buffer += chunk
            while len(self._buffer) >= 9 and len(self._buffer) >= 9 + (size := int.from_bytes(self._buffer[:3], "big")):
                kind, flags = self._buffer[3], self._buffer[4]
                stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
                payload, self._buffer = self._buffer[9:9 + size], self._buffer[9 + size:]
                self.frames.append((kind, flags, stream, payload))
                self.received.append((time.monotonic(), kind, flags))
                if kind in (self.SETTINGS, self.PING) and not flags & 0x1:
                    self.sock.sendall(self.frame(kind, 0x1, 0, payload if kind == self.PING else b""))


def test_clients_may_ping_every_few_seconds_and_the_daemon_pings_quiet_connections(start_daemon, tmp_path) -> None:
    """gRPC's default ping policy answered a client's keepalive (grpc-js, Go and Java users commonly
    ping every 10 s) with GOAWAY too_many_pings, which ended its calls; and the daemon never pinged,
    so a NAT or load balancer dropped a long silent call. With keepalive_seconds: 1 the daemon takes
    a ping every 1.2 s during a silent call and after it, and pings the connection itself."""
    daemon = start_daemon(config(tmp_path, "  keepalive_seconds: 1"))
    probe = H2Probe(daemon.address)
    probe.call("/mmrouter.v1.RouterService/Generate", pb.GenerateRequest(request=text_request("SLOW:5")))
    started = time.monotonic()
    for _ in range(7):
        probe.read(1.2)
        probe.ping()
    probe.read(0.5)
    assert not [p for k, _, _, p in probe.frames if k == probe.GOAWAY], "the daemon sent GOAWAY"
    answer = b"".join(p for k, _, stream, p in probe.frames if k == probe.DATA and stream == 1)
    assert b"fake/echo says: SLOW:5" in answer
    own_pings = [t for t, k, f in probe.received if k == probe.PING and not f & 0x1 and t > started + 0.5]
    assert len(own_pings) >= 3, f"the daemon pinged {len(own_pings)} times in 8 s"
    probe.sock.close()


def test_calls_over_max_concurrent_calls_are_refused_until_one_ends(start_daemon, tmp_path) -> None:
    """Every call in flight holds its request and media in memory: past server.max_concurrent_calls
    one more is refused at once, with a reason and when to retry."""
    daemon = start_daemon(config(tmp_path, "  max_concurrent_calls: 2"))
    unary = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("SLOW:3")), timeout=30)
    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:3")), timeout=30)
    assert wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2), "the two slow calls did not start"
    for third in (lambda: generate(daemon, text_request("third")),
                  lambda: list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("third")))),
                  lambda: daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("third")))):
        details = error_details(failure(third))
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS")
        assert details.retry_delay == 1.0 and details.metadata["limit"] == "max_concurrent_calls"
        assert "server.max_concurrent_calls" in details.message
    assert len(list(tmp_path.glob("started-*"))) == 2, "a refused call reached the provider"
    assert unary.result().answer.text.startswith("fake/echo says: SLOW:3")
    assert list(stream)[-1].HasField("done")
    assert generate(daemon, text_request("after")).text.startswith("fake/echo says: after")
    assert len(list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("x"))))) > 1


def test_an_answer_over_the_clients_receive_limit_is_logged_as_one_line_that_says_why(daemon) -> None:
    """gRPC logged a refused answer as an ERROR traceback of its internals, naming no size or cause."""
    channel = grpc.insecure_channel(daemon.address)  # gRPC's default receive limit: 4 MiB
    try:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        big = "x" * (3 * 1024 * 1024)  # the echo repeats the prompt: an answer of over 6 MiB
        request = text_request(big, hints=pb.RoutingHints(provider="fake", model="omni"))  # a 1M-token context
        error = failure(lambda: stub.Generate(pb.GenerateRequest(request=request), timeout=30))
    finally:
        channel.close()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # said before the answer is sent, whatever happens to it then
    assert wait_for(lambda: "sending an answer of 6291" in daemon.logs())
    assert "gRPC's default receive limit (4194304 bytes)" in daemon.logs()
    # gRPC reports the failed send a moment later, as one line (no traceback), when it sees it fail: on a
    # loaded machine the message may be in the socket's buffers before the client's reset comes, and
    # gRPC then sees no failure at all (so this line is waited for, not required)
    failed_send = "could not send the answer of /mmrouter.v1.RouterService/Generate: its client refused it"
    wait_for(lambda: failed_send in daemon.logs(), timeout=5)
    logs = daemon.logs()
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


def test_the_ready_file_names_only_a_running_daemon(tmp_path, plugin_sites) -> None:
    """The --ready-file outlived its daemon: after a clean stop it still named the stopped daemon's address,
    a supervisor starting the next one read that address until the new one was written, and a start that
    failed left it naming a daemon that was gone."""
    proc, ready, log = _serve(tmp_path, plugin_sites, "127.0.0.1:0")
    try:
        assert wait_for(lambda: (ready.exists() and ready.read_text()) or proc.poll() is not None, 60)
        address = ready.read_text()
        assert address.startswith("127.0.0.1:"), log.read_text()
        second, _, _ = _serve(tmp_path, plugin_sites, "127.0.0.1:0")  # refused: the data directory is taken
        assert second.wait(60) != 0
        assert ready.read_text() == address  # the running daemon's file stays
    finally:
        _stop(proc)
    assert proc.returncode == 0 and not ready.exists(), log.read_text()

    ready.write_text(address)  # a stale file (a daemon killed without its clean stop), then a start that fails:
    with socket.socket() as taken:  # its address is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, ready, log = _serve(tmp_path, plugin_sites, f"127.0.0.1:{taken.getsockname()[1]}")
        assert proc.wait(60) == 1
    assert not ready.exists(), log.read_text()

    proc, ready, log = _serve(tmp_path, plugin_sites, "127.0.0.1:0")  # its file removed by someone else:
    try:                                                               # nothing to say at the stop
        assert wait_for(lambda: (ready.exists() and ready.read_text()) or proc.poll() is not None, 60)
        ready.unlink()
    finally:
        _stop(proc)
    assert proc.returncode == 0 and "--ready-file" not in log.read_text().split(" stopped")[-1]
    assert "cannot remove the --ready-file" not in log.read_text()


def test_a_start_refused_for_its_configuration_leaves_no_data_directory(tmp_path, plugin_sites) -> None:
    """serve made the data directory (and an empty sessions database) before refusing the file: a mistyped
    data_dir was left behind."""
    import os

    from conftest import TESTKIT

    config_file = tmp_path / "router.yaml"
    config_file.write_text("providers: {fake: {api_key: k}}\ndefault: fake/no-such-model\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_sites["testkit"]), str(TESTKIT)])}
    data = tmp_path / "mistyped" / "data"
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config_file), "--address",
                             "127.0.0.1:0", "--data-dir", str(data)], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode != 0 and "invalid configuration" in result.stderr, result.stderr
    assert not data.exists()


def test_the_daemon_raises_its_open_files_limit_and_warns_when_it_stays_low(tmp_path) -> None:
    """At the usual soft limit of 1024 descriptors, 1,100 idle connections (no token needed to open them)
    left the daemon unreachable. It takes its hard limit at start, and warns when even that is low."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cases = [(min(512, hard), hard)] + ([(512, 1024)] if hard >= 1024 else [])
    for limits in cases:
        ready, log = tmp_path / f"ready{limits}", tmp_path / f"log{limits}"
        with log.open("wb") as out:
            proc = subprocess.Popen(launched(
                [sys.executable, "-m", "router", "serve", "--address", "127.0.0.1:0",  # the embedded default
                 "--data-dir", str(tmp_path / f"data{limits[1]}"), "--ready-file", str(ready)],
                limits={"RLIMIT_NOFILE": limits}),
                stdout=out, stderr=subprocess.STDOUT)
        try:
            assert wait_for(lambda ready=ready: ready.exists() and ready.read_text(), timeout=60), log.read_text()
            line = next(x for x in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
                        if x.startswith("Max open files"))
            assert line.split()[3:5] == [str(limits[1])] * 2, line  # soft raised to the hard limit
            low = "the daemon may open at most 1024 files" in log.read_text()
            assert low == (limits[1] == 1024), log.read_text()
        finally:
            proc.terminate()
            proc.wait(30)
