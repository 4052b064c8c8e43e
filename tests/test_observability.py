"""What an operator finds in the daemon's log and statistics, and the request id that ties a client's
call to them: failed provider calls behind a fallback, one access line per call (successes,
errors, deadlines, cancellations), authentication refusals, and a --ready-file that cannot be written.

Each test runs the real daemon (tests/conftest.py); the provider failures come from the fake
OpenAI and Anthropic servers (tests/fakes) or the testkit's scripted plugin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys

import grpc
import pytest
from conftest import Daemon, launch_daemon
from grpc_helpers import error_details, text_request, wait_for
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_auth import CONFIG as AUTH_CONFIG
from test_auth import TOKEN

from router.auth import bearer
from router.sessions import SessionStore
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY

REQUEST_ID = "x-mmrouter-request-id"

#: A key the fake OpenAI no longer accepts (revoked): it answers every call with 401, quoting the key.
REVOKED = "sk-REVOKED-key-000000000000"

FALLBACK = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_TEST_KEY}}", base_url: "{anthropic}", timeout: 20}}
routes:
  - name: main
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6]
"""

SCRIPTED = """
providers:
  fake: {{api_key: k, marker_dir: "{marker_dir}"}}
routes:
  - name: with-fallback
    match: {{tags: [fallback]}}
    use: fake/echo
    fallback: [fake/docs]
  - name: general
    use: fake/echo
server:
  log_format: {log_format}
"""


def request_id_of(call: grpc.Call) -> str:
    """The request id the daemon sent in the call's trailing metadata."""
    found = [value for key, value in call.trailing_metadata() or () if key == REQUEST_ID]
    assert len(found) == 1, call.trailing_metadata()
    return found[0]


def json_entries(daemon) -> list[dict]:
    """The daemon's JSON log lines (gRPC's C core may add its own plain lines, skipped)."""
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


def access_entry(daemon, request_id: str) -> dict:
    """The one access log line of the call with ``request_id``, once it is written."""
    def find() -> list[dict]:
        return [e for e in json_entries(daemon) if e.get("request_id") == request_id and "code" in e]
    assert wait_for(find), f"no access line for {request_id}:\n{daemon.logs()}"
    [entry] = find()
    return entry


def stats(daemon) -> list[dict]:
    """What `mmrouter stats` shows of the daemon's data directory."""
    store = SessionStore(daemon.data_dir / "sessions.sqlite")
    try:
        return store.stats()
    finally:
        store.close()


def test_a_provider_failing_behind_a_fallback_is_logged_and_counted(start_daemon, upstreams) -> None:
    """The OpenAI key was revoked (every call gets 401) and Anthropic answers each call: each failed
    attempt is a WARNING naming the provider, model, reason and the call's request id, and
    `stats` has an `answer (failed)` row for them at no cost."""
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": REVOKED, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    ids = []
    for _ in range(3):
        response, call = daemon.stub.Generate.with_call(pb.GenerateRequest(request=text_request("hi")), timeout=30)
        assert response.answer.route.provider == "anthropic"
        ids.append(request_id_of(call))
    assert len(set(ids)) == 3 and len(openai.requests) == 3

    def failed_lines() -> list[str]:
        return [line for line in daemon.logs().splitlines() if "provider call openai/gpt-4o failed" in line]
    assert wait_for(lambda: len(failed_lines()) == 3), daemon.logs()
    for line, request_id in zip(failed_lines(), ids, strict=True):
        assert " WARNING " in line and "PROVIDER_AUTH" in line and f"request_id={request_id}" in line
        assert re.search(r"after \d+ ms", line)
    assert REVOKED not in daemon.logs()

    assert daemon.stop() == 0
    rows = {(r["provider"], r["purpose"]): r for r in stats(daemon)}
    assert set(rows) == {("openai", "answer (failed)"), ("anthropic", "answer")}
    failed = rows["openai", "answer (failed)"]
    assert (failed["model"], failed["calls"], failed["cost_usd"]) == ("gpt-4o", 3, 0)
    assert rows["anthropic", "answer"]["calls"] == 3


def test_text_log_times_are_utc_with_their_zone_whatever_the_host_zone(start_daemon, upstreams) -> None:
    """The text log wrote the host's local time without its zone ('2026-11-27 03:45:32,247' under New York
    time), five hours from the JSON log's UTC times; both now write UTC, saying so."""
    import datetime

    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY,
                               "TZ": "EST+5"})  # a POSIX zone: no tzdata needed
    daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert wait_for(lambda: "Generate OK" in daemon.logs())
    line = next(line for line in daemon.logs().splitlines() if "Generate OK" in line)
    stamp = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO router\.server: Generate OK", line)
    assert stamp, line
    logged = datetime.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - logged).total_seconds()) < 600


def test_an_upstream_error_cannot_forge_a_line_of_the_text_log(start_daemon, upstreams) -> None:
    """An upstream error body (which the plugins quote) or a plugin's provider name with a newline and a
    line of its own wrote a line that looked like the daemon's, and its ESC codes reached the terminal."""
    openai, anthropic = upstreams
    forged = "2026-11-26 22:00:00,000 INFO router.server: FORGED"
    openai.fail_next(503, {"error": {"message": f"overloaded\n{forged} \x1b[2J", "type": "server_error"}})
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer.route.provider
    assert wait_for(lambda: "FORGED" in daemon.logs()), daemon.logs()
    assert not any(line.startswith(forged) for line in daemon.logs().splitlines()), daemon.logs()
    assert "\x1b" not in daemon.logs() and "\\x1b[2J" in daemon.logs()  # written as Python escapes it


TRANSCRIBE = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 20}}
routes:
  - name: transcription
    use: openai/whisper-1
"""


def test_a_failed_attempt_that_was_paid_is_counted_once(start_daemon, upstreams) -> None:
    """Clip a.wav was transcribed (billed) when b.wav failed: that paid `answer (failed)` step is the
    statistics row of the failed attempt, not one more beside it."""
    openai, _ = upstreams
    openai.fail_files["b.wav"] = 500
    daemon = start_daemon(TRANSCRIBE.format(openai=openai.base_url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY})
    clips = [pb.Part(media=pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.3), filename=name))
             for name in ("a.wav", "b.wav")]
    request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=clips)],
                                   options=pb.Options(task=pb.TASK_TRANSCRIBE))
    with pytest.raises(grpc.RpcError):
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    assert wait_for(lambda: "provider call openai/whisper-1 failed" in daemon.logs())
    assert daemon.stop() == 0
    [row] = stats(daemon)
    assert (row["purpose"], row["calls"]) == ("answer (failed)", 1) and row["cost_usd"] > 0


class LogSince:
    """A shared daemon as one test sees it: ``logs()`` is only what the daemon wrote since the test began."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon, self.start = daemon, daemon.log_path.stat().st_size
        self.stub, self.marker_dir = daemon.stub, daemon.extra["marker_dir"]

    def logs(self) -> str:
        with self.daemon.log_path.open("rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")


@pytest.fixture(scope="module")
def shared_json_daemon(plugin_sites, tmp_path_factory):
    """One daemon of SCRIPTED with a JSON log, shared by the module's tests of access lines (``json_daemon``):
    starting one per test took seconds each. Each test reads only the log written since it began (``LogSince``)
    and the markers of its own calls; tests sharing it must not read its stats or health, use another test's
    session id, make a target cool down (``FAIL:429``) or leave a call under way when they end."""
    tmp = tmp_path_factory.mktemp("json-log")
    (tmp / "markers").mkdir()
    daemon = launch_daemon(SCRIPTED.format(marker_dir=tmp / "markers", log_format="json"), tmp=tmp, env=None,
                           sites=[plugin_sites["testkit"]])
    daemon.extra["marker_dir"] = tmp / "markers"
    yield daemon
    daemon.stop()


@pytest.fixture
def json_daemon(shared_json_daemon) -> LogSince:
    """The shared JSON-log daemon, its log read from where the test began."""
    return LogSince(shared_json_daemon)


def test_every_call_gets_a_request_id_and_one_access_line(json_daemon) -> None:
    daemon = json_daemon
    response, call = daemon.stub.Generate.with_call(
        pb.GenerateRequest(request=text_request("hello", session_id="s-1")), timeout=30)
    entry = access_entry(daemon, request_id_of(call))
    assert entry["level"] == "INFO" and entry["logger"] == "router.server"
    assert {k: entry[k] for k in ("method", "code", "rule", "provider", "model", "attempts", "session")} == {
        "method": "Generate", "code": "OK", "rule": "general", "provider": "fake", "model": "echo",
        "attempts": 1, "session": hashlib.sha256(b"s-1").hexdigest()[:12]}
    # the session id is the key to the conversation: in no line of the log, a failed call's message included
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="sk-session-never-logged"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    seeded = text_request("again", session_id="s-1")
    seeded.messages.append(pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="an old reply")]))
    with pytest.raises(grpc.RpcError) as caught:  # a whole conversation sent again on a session that holds it
        daemon.stub.Generate(pb.GenerateRequest(request=seeded), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "s-1" not in daemon.logs() and "sk-session-never-logged" not in daemon.logs()
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] > 0
    assert response.answer.text.startswith("fake/echo says")
    assert entry["cost_usd"] > 0 and entry["cost_usd"] == pytest.approx(response.answer.usage.cost_usd)  # per call

    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("stream it")), timeout=30)
    assert list(stream)[-1].HasField("done")
    entry = access_entry(daemon, request_id_of(stream))
    assert (entry["method"], entry["code"], entry["provider"]) == ("StreamGenerate", "OK", "fake")

    _, call = daemon.stub.ListProviders.with_call(pb.ListProvidersRequest(), timeout=30)
    assert access_entry(daemon, request_id_of(call))["method"] == "ListProviders"


def test_a_failed_call_names_its_request_id_and_every_failed_target(json_daemon) -> None:
    """Both targets fail: the client's error carries the request id (trailers and ErrorInfo), and the
    call's one WARNING line has the code, reason and each target's failure, not only the last."""
    daemon = json_daemon
    request = text_request("FAIL:503", hints=pb.RoutingHints(tags=["fallback"]))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    details = error_details(caught.value)
    request_id = request_id_of(caught.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE and details.request_id == request_id
    entry = access_entry(daemon, request_id)
    assert (entry["level"], entry["code"], entry["reason"], entry["attempts"]) == (
        "WARNING", "UNAVAILABLE", "PROVIDER_UNAVAILABLE", 2)
    assert (entry["rule"], entry["provider"], entry["model"]) == ("with-fallback", "fake", "docs")
    assert "fake/echo: " in entry["message"] and "fake/docs: " in entry["message"]
    assert not [e for e in json_entries(daemon) if e["message"].startswith("request failed")]  # said once

    with pytest.raises(grpc.RpcError) as caught:  # refused before routing: an id all the same
        daemon.stub.ResetSession(pb.ResetSessionRequest(), timeout=30)
    request_id = request_id_of(caught.value)
    assert error_details(caught.value).request_id == request_id
    entry = access_entry(daemon, request_id)
    assert (entry["method"], entry["code"], entry["reason"]) == ("ResetSession", "INVALID_ARGUMENT", "INVALID_REQUEST")


def test_a_deadline_and_a_cancellation_are_logged(json_daemon) -> None:
    daemon = json_daemon
    for _ in range(4):  # the client's reset and gRPC's own deadline race: each must be logged as the deadline
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.Generate(pb.GenerateRequest(request=text_request("SLOW:30")), timeout=0.6)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def ended(method: str, code: str) -> list[dict]:
        return [e for e in json_entries(daemon) if e.get("method") == method and e.get("code") == code]
    assert wait_for(lambda: len(ended("Generate", "DEADLINE_EXCEEDED")) == 4), daemon.logs()
    assert not ended("Generate", "CANCELLED")
    entry = ended("Generate", "DEADLINE_EXCEEDED")[0]
    assert entry["level"] == "WARNING" and entry["duration_ms"] >= 500 and entry["provider"] == "fake"

    def markers() -> set[str]:  # request ids of the provider calls started (the deadline calls' too)
        return {p.name.removeprefix("started-") for p in daemon.marker_dir.glob("started-*")}

    before = markers()
    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:30")))
    assert next(stream).HasField("route_chosen")
    assert wait_for(lambda: markers() - before)  # this call's provider call is under way
    stream.cancel()
    assert wait_for(lambda: ended("StreamGenerate", "CANCELLED")), daemon.logs()
    [entry] = ended("StreamGenerate", "CANCELLED")
    assert entry["level"] == "WARNING" and entry["rule"] == "general"
    assert {entry["request_id"]} == markers() - before


def test_text_logs_have_the_access_line_readable(start_daemon, tmp_path) -> None:
    daemon = start_daemon(SCRIPTED.format(marker_dir=tmp_path, log_format="text"))
    _, call = daemon.stub.Generate.with_call(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    request_id = request_id_of(call)
    assert wait_for(lambda: f"request_id={request_id}" in daemon.logs())
    [line] = [line for line in daemon.logs().splitlines() if f"request_id={request_id}" in line]
    assert re.search(r" INFO router\.server: Generate OK in \d+ ms rule=general provider=fake model=echo "
                     r"attempts=1 cost_usd=0\.0000\d+ request_id=", line), line


WRONG = "wrong-token-ab12cd34ef"


def test_authentication_refusals_are_logged_without_the_token(start_daemon) -> None:
    daemon = start_daemon(AUTH_CONFIG, env={"MMROUTER_TEST_TOKEN": TOKEN})
    ids = []
    for metadata in (None, bearer(WRONG), (("authorization", f"Basic {WRONG}"),)):
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.ListProviders(pb.ListProvidersRequest(), metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ids.append(request_id_of(caught.value))  # a refused call has its request id too
        assert error_details(caught.value).request_id == ids[-1]
    daemon.stub.ListProviders(pb.ListProvidersRequest(), metadata=bearer(TOKEN), timeout=30)

    def refusals() -> list[str]:
        return [line for line in daemon.logs().splitlines() if "refused /mmrouter.v1.RouterService/" in line]
    assert wait_for(lambda: len(refusals()) == 3), daemon.logs()
    for line, which, request_id in zip(refusals(), ("no authorization metadata", "wrong token",
                                                    "is not 'Bearer <token>'"), ids, strict=True):
        assert " WARNING " in line and "/ListProviders from ipv" in line and which in line, line
        assert line.endswith(f"request_id={request_id}"), line
    assert WRONG not in daemon.logs() and TOKEN not in daemon.logs()


def test_an_authentication_refusal_in_the_json_log_has_the_fields_of_an_access_line(start_daemon) -> None:
    """Its "method" was the whole path ("/mmrouter.v1.RouterService/ListProviders") and it had no "code": a
    dashboard grouping by method and code split or dropped it."""
    daemon = start_daemon(AUTH_CONFIG.replace("server:\n", "server:\n  log_format: json\n"),
                          env={"MMROUTER_TEST_TOKEN": TOKEN})
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.ListProviders(pb.ListProvidersRequest(), metadata=bearer(WRONG), timeout=30)
    entry = access_entry(daemon, request_id_of(caught.value))
    assert (entry["method"], entry["code"], entry["reason"], entry["refusal"]) == (
        "ListProviders", "UNAUTHENTICATED", "UNAUTHENTICATED", "wrong token")


@pytest.mark.parametrize("ready", ["missing-dir/ready", "is-a-dir"])
def test_an_unwritable_ready_file_stops_start_up_with_one_json_line(tmp_path, ready) -> None:
    (tmp_path / "is-a-dir").mkdir()
    config = tmp_path / "router.yaml"
    config.write_text("server:\n  log_format: json\n")
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config), "--address",
                             "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--ready-file",
                             str(tmp_path / ready)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "CRITICAL" and "--ready-file" in entry["message"] and ready in entry["message"]


def test_a_ready_file_that_fails_to_be_written_stops_the_server_cleanly(tmp_path) -> None:
    """/dev/full passes every check and fails the write itself (ENOSPC), once the server runs: it is
    stopped before the exit, so no gRPC or asyncio complaint breaks the JSON log."""
    config = tmp_path / "router.yaml"
    config.write_text("server:\n  log_format: json\n")
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config), "--address",
                             "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--ready-file", "/dev/full"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    entries = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    assert entries[-1]["level"] == "CRITICAL" and "/dev/full" in entries[-1]["message"]
    assert not (tmp_path / "data").exists()  # the data directory this start made is gone with it
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # a ready file that is no regular file is never removed


def test_the_access_line_of_a_call_whose_targets_all_failed_lists_only_the_failed_attempts(caplog) -> None:
    """A bridge that answered (a transcription) was listed among the failures with an empty error:
    "(attempts: openai/whisper-1: ; openai/gpt-4o: ...)"."""
    import logging

    from google.rpc import code_pb2, status_pb2

    from router.invoke import FailedAttempt
    from router.outcome import Attempt, RouteInfo
    from router.server import CallLog

    call = CallLog("Generate", lambda text: text)
    call.route = RouteInfo("audio", "anthropic", "claude")
    call.route.attempts = [Attempt("openai", "whisper-1", True, "", 300.0),
                           FailedAttempt("openai", "gpt-4o", False, "openai: HTTP 500", 20.0),
                           FailedAttempt("anthropic", "claude", False, "anthropic: overloaded", 20.0)]
    with caplog.at_level(logging.WARNING, logger="router.server"):
        call.failed(status_pb2.Status(code=code_pb2.UNAVAILABLE, message="all failed"), "PROVIDER_UNAVAILABLE")
    assert "(attempts: openai/gpt-4o: openai: HTTP 500; anthropic/claude: anthropic: overloaded)" in caplog.text
    assert "whisper-1" not in caplog.text


def test_a_rate_limits_retry_delay_outlives_a_fallback_that_failed_without_one(start_daemon, upstreams) -> None:
    """gpt-4o answered 429 with Retry-After: 7, then the fallback Claude 503 with none: the call ended
    UNAVAILABLE without a RetryInfo, and the client did not learn when the preferred target may answer."""
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    openai.fail_next(429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {"Retry-After": "7"})
    anthropic.fail_next(503, {"type": "error", "error": {"type": "api_error", "message": "down"}})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    details = error_details(info.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert details.retry_delay == 7


def test_text_access_line_costs_add_up_to_what_stats_keep() -> None:
    """The text line's cost of a tiny call is not rounded to $0.000001 (300 calls of $0.0000007 summed 43% high)."""
    from router.server import dollars

    costs = [3 * 0.1e-6 + 1 * 0.4e-6] * 300  # gemini-2.5-flash-lite: 3 input tokens and 1 output token
    shown = [dollars(cost) for cost in costs]
    assert shown[0] == "0.0000007"
    assert abs(sum(map(float, shown)) - sum(costs)) < 1e-12
    assert (dollars(0.003645), dollars(12.5), dollars(0.1 + 0.2)) == ("0.003645", "12.5", "0.3")
