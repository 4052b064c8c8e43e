"""A provider that is ready (configured) but whose every call fails shows it in ListProviders and in
`mmrouter providers`: its calls of the last minutes, failed and succeeded, and its last failure's
time, reason and the daemon's own message (the model, the HTTP status, what the reason means); the
provider's message, with the key masked, is in the daemon log only.

The daemon runs for real (tests/conftest.py) against the fake OpenAI and Anthropic servers
(tests/fakes), which the official SDKs call; the OpenAI key has been revoked: the fake answers
every call with 401, quoting the key.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from test_cli import Cli, ok
from test_observability import FALLBACK, stats

from router.health import HEALTH_MINUTES, Failure, ProviderHealth
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import error_body

REVOKED = "sk-REVOKED-key-111111111111"


def test_a_ready_provider_whose_calls_fail_shows_its_failures_in_list_providers_and_the_cli(
        start_daemon, upstreams) -> None:
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": REVOKED, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    untouched = providers_by_name(daemon.stub)
    assert untouched["openai"].state == pb.PROVIDER_STATE_READY
    assert not untouched["openai"].HasField("health"), "a provider never called has no health yet"

    before = time.time()
    for _ in range(3):  # the fallback answers: the client sees nothing wrong
        answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
        assert answer.route.provider == "anthropic"
    after = time.time()
    assert len(openai.requests) == 3

    listed = providers_by_name(daemon.stub)
    failing = listed["openai"]
    assert failing.state == pb.PROVIDER_STATE_READY  # configured: ready, yet...
    health = failing.health
    assert (health.window_seconds, health.succeeded_calls, health.failed_calls) == (HEALTH_MINUTES * 60, 0, 3)
    assert before <= health.last_failure_unix_seconds <= after
    assert health.last_failure_reason == "PROVIDER_AUTH"
    assert health.last_failure_message.startswith("gpt-4o: HTTP 401: the provider refused the credentials")
    assert REVOKED not in str(listed)
    working = listed["anthropic"].health
    assert (working.succeeded_calls, working.failed_calls) == (3, 0)
    assert not working.last_failure_reason and not working.last_failure_unix_seconds
    assert not listed["gemini"].HasField("health")

    shown = ok(Cli("providers", "--address", daemon.address, env={"COLUMNS": "400"}).result()).stdout
    assert REVOKED not in shown
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("│").split("│")]
                                          for line in shown.splitlines() if line.startswith("│"))}
    assert rows["openai"][2:] == ["ready", rows["openai"][3], "", "0 ok, 3 failed"]
    assert rows["anthropic"][-1] == "3 ok, 0 failed"
    assert rows["gemini"][-1] == ""
    [failure] = [line for line in shown.splitlines() if line.startswith("last failure of ")]
    assert failure.startswith("last failure of openai, ")
    assert " s ago: PROVIDER_AUTH: gpt-4o: HTTP 401: the provider refused the credentials" in failure

    # at 80 columns names and states stay whole, the failure wraps as a sentence
    narrow = ok(Cli("providers", "--address", daemon.address, env={"COLUMNS": "80"}).result()).stdout
    assert REVOKED not in narrow
    cells = [[c.strip() for c in line.split("│")[1:4:2]] for line in narrow.splitlines() if line.startswith("│")]
    assert ["openai", "ready"] in cells
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "last failure of openai, " in narrow and "PROVIDER_AUTH: gpt-4o: HTTP 401: the provider" in narrow


LEAKY_KEY = "sk-fake-leaky-key-2222"

LEAKY = f"""
providers:
  fake: {{api_key: "{LEAKY_KEY}"}}
routes:
  - name: all
    use: fake/echo
    fallback: [fake/docs]
"""


def test_a_failure_message_quoting_the_key_is_shown_masked(start_daemon) -> None:
    """A careless plugin's error quotes its key (the testkit's ``LEAK``): ListProviders and `mmrouter
    providers` show the daemon's own message, the log the plugin's with the key masked."""
    daemon = start_daemon(LEAKY)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("LEAK@echo")), timeout=30).answer
    assert answer.route.model == "docs"
    listed = providers_by_name(daemon.stub)
    health = listed["fake"].health
    assert (health.succeeded_calls, health.failed_calls) == (1, 1)
    assert health.last_failure_reason == "PROVIDER_FAILED"
    assert health.last_failure_message == ("echo: the provider's plugin failed (raised an unexpected error); its "
                                           "whole message is in the daemon log")
    assert LEAKY_KEY not in str(listed)
    shown = ok(Cli("providers", "--address", daemon.address, env={"COLUMNS": "400"}).result()).stdout
    assert "PROVIDER_FAILED: echo: the provider's plugin failed" in shown and LEAKY_KEY not in shown
    assert "upstream refused key ***" in daemon.logs() and LEAKY_KEY not in daemon.logs()


def test_the_last_failure_leaves_out_what_another_client_sent(start_daemon, upstreams) -> None:
    """Any client may list the providers: a provider's error quoting a file name or a signed URL of the
    request that failed is shown without them (the daemon log has the message, the URL without its query)."""
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    openai.fail_next(400, error_body("Invalid image 'patient_x_scan.png' fetched from "
                                     "https://bucket.example/scans/x.png?X-Amz-Signature=SIGNED123."))
    with pytest.raises(grpc.RpcError):  # a bad request: not tried on the fallback
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    failure = providers_by_name(daemon.stub)["openai"].health.last_failure_message
    assert failure == "gpt-4o: HTTP 400: the provider refused the request as invalid; its whole message is in the daemon log"
    assert "patient_x_scan.png" in daemon.logs() and "https://bucket.example/scans/x.png?…." in daemon.logs()
    assert "SIGNED123" not in daemon.logs()


def test_an_input_a_model_refuses_for_its_size_or_format_is_no_failure_of_its_provider(start_daemon) -> None:
    """Whisper refuses a file over 25 MB before sending it, and the next target answers: `providers` showed
    OpenAI failing (`5 failed`, last failure INPUT_TOO_LARGE), though it was never called."""
    daemon = start_daemon("providers: {fake: {api_key: k}}\n"
                          "routes: [{name: r, use: fake/echo, fallback: [fake/docs]}]\n")
    for text in ("FAIL:413@echo", "FAIL:503@echo"):
        answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request(text)), timeout=30).answer
        assert [(a.model, a.ok) for a in answer.route.attempts] == [("echo", False), ("docs", True)]
    health = providers_by_name(daemon.stub)["fake"].health
    assert (health.succeeded_calls, health.failed_calls) == (2, 1)  # the 503 counts; the 413 does not
    assert health.last_failure_reason == "PROVIDER_UNAVAILABLE"


def test_health_counts_only_the_last_minutes_and_keeps_the_last_failure() -> None:
    """The ring of minute buckets: calls older than the window leave the counts, the last failure stays,
    and memory does not grow with the calls."""
    now = [1_000_000.0]
    health = ProviderHealth(clock=lambda: now[0])
    assert health.of("openai") is None
    health.failed("openai", Failure(100.0, "PROVIDER_AUTH", "gpt-4o", 401))
    health.succeeded("openai")
    now[0] += 60 * (HEALTH_MINUTES - 1)  # the first minute is still in the window
    for _ in range(1000):
        health.succeeded("openai")
    recent = health.of("openai")
    assert (recent.succeeded, recent.failed) == (1001, 1)
    assert recent.last_failure.reason == "PROVIDER_AUTH"
    assert recent.last_failure.message.startswith("gpt-4o: HTTP 401: the provider refused the credentials")
    now[0] += 60  # the first minute has left the window
    recent = health.of("openai")
    assert (recent.succeeded, recent.failed) == (1000, 0)
    assert recent.last_failure.at == 100.0
    now[0] += 60 * HEALTH_MINUTES
    recent = health.of("openai")
    assert (recent.succeeded, recent.failed) == (0, 0) and recent.last_failure is not None
    ring = health._rings["openai"]
    assert len(ring.minutes) == len(ring.succeeded) == len(ring.failed) == HEALTH_MINUTES


HANGING = """
providers:
  fake: {{api_key: k, marker_dir: "{marks}"}}
routes:
  - name: all
    use: fake/echo
server: {{max_call_seconds: 1}}
"""


def test_a_provider_that_hangs_until_max_call_seconds_is_a_failure_a_client_that_cancels_is_not(
        start_daemon, tmp_path) -> None:
    """The daemon cuts a call at server.max_call_seconds: a provider still silent then failed to answer
    in time, as if its own timeout had fired (a WARNING, a failure in ListProviders and in `stats`).
    A client that cancels before the deadline is no fault of the provider's."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(HANGING.format(marks=marks))
    before = time.time()
    with pytest.raises(grpc.RpcError) as caught:  # the client sets no deadline: the daemon's limit cuts it
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("SLOW:30")))
    assert error_details(caught.value).reason == "CALL_TIMEOUT"
    health = providers_by_name(daemon.stub)["fake"].health
    assert (health.succeeded_calls, health.failed_calls) == (0, 1)
    assert health.last_failure_reason == "PROVIDER_TIMEOUT" and health.last_failure_unix_seconds >= before
    assert health.last_failure_message.startswith("echo: the provider did not answer in time")

    def failed_lines() -> list[str]:
        return [line for line in daemon.logs().splitlines() if "provider call fake/echo failed" in line]
    assert wait_for(failed_lines), daemon.logs()
    [line] = failed_lines()
    assert " WARNING " in line and "PROVIDER_TIMEOUT" in line and "request_id=" in line

    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:30")))
    assert next(stream).HasField("route_chosen")
    assert wait_for(lambda: len(list(marks.glob("started-*"))) == 2)  # its provider call is under way
    stream.cancel()  # long before its deadline
    assert wait_for(lambda: "StreamGenerate CANCELLED" in daemon.logs()), daemon.logs()
    health = providers_by_name(daemon.stub)["fake"].health
    assert (health.succeeded_calls, health.failed_calls) == (0, 1)
    assert len(failed_lines()) == 1

    assert daemon.stop() == 0
    rows = {row["purpose"]: row for row in stats(daemon)}
    assert sorted(rows) == ["answer (cancelled)", "answer (failed)"]  # the cancelled call counted, not as failed
    assert all((row["provider"], row["model"], row["calls"]) == ("fake", "echo", 1) for row in rows.values())


def test_a_plugin_timeout_cut_to_the_deadline_is_the_deadline_s_and_starts_no_fallback(start_daemon) -> None:
    """A plugin that cuts its HTTP timeout to the call's deadline may fail a few ms before it: that was counted
    as PROVIDER_UNAVAILABLE (an outage of a healthy provider) and a fallback was started with no time
    left, which failed too (a second failure, maybe a billed request)."""
    daemon = start_daemon("providers: {fake: {api_key: k}}\nroutes:\n"
                          "  - {name: all, use: fake/echo, fallback: [fake/small]}\n")
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("GIVEUP@echo")), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: providers_by_name(daemon.stub)["fake"].health.failed_calls == 1)
    health = providers_by_name(daemon.stub)["fake"].health
    assert health.last_failure_reason == "PROVIDER_TIMEOUT", health
    assert wait_for(lambda: "provider call fake/echo failed" in daemon.logs())
    assert "PROVIDER_UNAVAILABLE (the API did not answer in time)" in daemon.logs()
    assert "provider call fake/small" not in daemon.logs()  # no fallback was started

    # a refusal at the deadline stays what it is: the request's fault, not the clock's
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("GIVEUP:400@echo")), timeout=1.0)
    assert error_details(caught.value).reason == "PROVIDER_BAD_REQUEST"
