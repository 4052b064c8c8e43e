"""Calls waiting for their session's turn: a session's calls run one at a time, each waiting call holding a
call slot (server.max_concurrent_calls). One client's queue on one session must not take every slot
(server.max_waiting_per_session bounds it: SESSION_BUSY), and a call whose deadline comes while it waits is
told so, no provider being called, blamed or counted for it.

Each test runs the real daemon (tests/conftest.py) with the testkit's scripted plugin: ``SLOW:<seconds>``
holds a session's turn, and writes ``started-<request id>`` into ``marker_dir`` when its provider call begins.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from pydantic import ValidationError

from router.config import ServerSettings

REQUEST_ID = "x-mmrouter-request-id"

CONFIG = """
providers:
  fake: {{api_key: k, marker_dir: "{marks}"}}
routes:
  - name: general
    use: fake/echo
server: {{{server}}}
"""


def started(marks: Path) -> set[str]:
    """The request ids of the provider calls started so far."""
    return {path.name.removeprefix("started-") for path in marks.glob("started-*")}


def request_id_of(error: grpc.RpcError) -> str:
    """The request id the daemon sent with a failed call."""
    [found] = [value for key, value in error.trailing_metadata() or () if key == REQUEST_ID]
    return found


def generate(daemon, text: str, session: str, timeout: float | None = 60) -> grpc.Future:
    """A Generate call under way."""
    return daemon.stub.Generate.future(pb.GenerateRequest(request=text_request(text, session_id=session)),
                                       timeout=timeout)


def test_max_waiting_per_session_defaults_to_4_and_takes_no_negative_value() -> None:
    assert ServerSettings().max_waiting_per_session == 4
    assert ServerSettings(max_waiting_per_session=0).max_waiting_per_session == 0
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ServerSettings(max_waiting_per_session=-1)


def test_one_sessions_queue_is_bounded_and_other_sessions_are_answered(start_daemon, tmp_path) -> None:
    """The QA run: one client sent 60 calls on one session, which filled all 50 call slots with calls
    waiting for the session's turn, so every other session was refused TOO_MANY_CALLS. Now calls past
    server.max_waiting_per_session are refused at once with SESSION_BUSY; the others keep their order."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.format(marks=marks, server="max_concurrent_calls: 10, max_waiting_per_session: 2"))
    holder = generate(daemon, "SLOW:60", "heavy")
    assert wait_for(lambda: started(marks)), daemon.logs()  # it has the session's turn
    queued = [generate(daemon, f"turn {i}", "heavy") for i in range(6)]
    assert wait_for(lambda: sum(call.done() for call in queued) == 4, timeout=30), (
        [call.exception() for call in queued if call.done()], daemon.logs())
    for call in (call for call in queued if call.done()):
        details = error_details(call.exception())
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SESSION_BUSY")
        assert details.retry_delay == 1.0
        assert details.metadata == {"limit": "max_waiting_per_session", "limit_waiting_calls": "2"}
        assert "2 calls already wait" in details.message and "server.max_waiting_per_session" in details.message
        assert "heavy" not in details.message  # the session id is the key to the conversation: never told
    # the session holds 3 call slots (its call and the 2 waiting): the 7 others serve other sessions at once
    others = [generate(daemon, "hi", f"light-{i}") for i in range(7)]
    assert all("[history=0" in call.result(timeout=30).answer.text for call in others)

    holder.cancel()  # its turn is not kept; the two waiting calls answer one after the other
    waiting = [call.result(timeout=30).answer.text for call in queued if call.exception(timeout=30) is None]
    assert sorted(int(re.search(r"\[history=(\d+)", text)[1]) for text in waiting) == [0, 1]


def test_a_call_whose_client_deadline_comes_while_it_waits_for_its_session_says_so(start_daemon, tmp_path) -> None:
    """Ended by gRPC at its deadline, it got a bare DEADLINE_EXCEEDED; now the daemon ends it a moment
    before, saying it waited for the call before it on its session, and calls no provider for it."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.format(marks=marks, server=""))
    holder = generate(daemon, "SLOW:60", "s")
    assert wait_for(lambda: started(marks)), daemon.logs()
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, "SLOW:60", "s", timeout=1.5).result(timeout=30)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
    assert re.match(r"the call waited \d+\.\d s for the call before it on its session", details.message), details.message
    assert "no provider was called" in details.message and "provider may hang" not in details.message
    assert request_id_of(caught.value) not in started(marks)
    holder.cancel()


def test_calls_queued_on_a_session_until_max_call_seconds_blame_no_provider(start_daemon, tmp_path) -> None:
    """The QA run: calls that waited for their session until server.max_call_seconds were told "a provider may
    hang", and those given the turn with no time left started a provider call cut after 2 ms, counted as that
    provider's PROVIDER_TIMEOUT (log, ListProviders). Now only provider calls really started are blamed."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.format(marks=marks, server="max_call_seconds: 2"))
    calls = [generate(daemon, "SLOW:60", "queue", timeout=None) for _ in range(3)]  # sent at once
    errors = [call.exception(timeout=30) for call in calls]
    assert all(errors), errors
    waited, blamed = [], []
    for error in errors:
        details = error_details(error)
        assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
        (waited if "before it on its session" in details.message else blamed).append(request_id_of(error))
    assert waited, "every call was cut as if its provider hung"  # they came within ms: the first holds the turn
    assert started(marks) == set(blamed)  # a call that waited for its session called no provider

    def timeouts() -> list[str]:
        return [line for line in daemon.logs().splitlines() if "provider call fake/echo failed" in line]
    assert wait_for(lambda: len(timeouts()) == len(blamed)), daemon.logs()
    assert not [line for line in timeouts() if any(request_id in line for request_id in waited)]
    assert providers_by_name(daemon.stub)["fake"].health.failed_calls == len(blamed)


def test_no_provider_call_is_started_within_the_deadline_margin(start_daemon, tmp_path) -> None:
    """A call with less than 0.25 s left (as no fallback is started then) starts no first attempt either:
    it would be cut at once and counted as the provider's PROVIDER_TIMEOUT."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.format(marks=marks, server=""))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("SLOW:60")), timeout=0.2)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
    assert "before any provider was called" in details.message
    assert not started(marks)
    assert not providers_by_name(daemon.stub)["fake"].HasField("health")  # never called: neither ok nor failed
    # its access line blames no provider either: the planned target was never called
    assert wait_for(lambda: "Generate DEADLINE_EXCEEDED CALL_TIMEOUT" in daemon.logs()), daemon.logs()
    [line] = [line for line in daemon.logs().splitlines() if "Generate DEADLINE_EXCEEDED CALL_TIMEOUT" in line]
    assert "rule=" in line and "provider=" not in line and "model=" not in line, line
