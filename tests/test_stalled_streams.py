"""A StreamGenerate whose client stops reading, through the running daemon: the real ``openai`` SDK
talks to the fake OpenAI API (tests/fakes/openai.py).

Past ``server.max_call_seconds`` the daemon blocked in gRPC's send used to give back only the call
slot: the provider call and its upstream connection stayed open, and the session's one-call-at-a-time
turn stayed held, so every later call on that conversation timed out, for as long as the client kept
its connection.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_helpers import error_details, wait_for
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.base import Reply
from tests.fakes.openai import API_KEY, FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{url}", timeout: 30}}
default: openai/gpt-4o
server: {{max_call_seconds: {limit}}}
"""

#: An answer far larger than every buffer between the fake and a client that reads nothing (40 MB).
ENDLESS = ["z" * 2000] * 20_000


class WatchedOpenAI(FakeOpenAI):
    """The fake OpenAI API, telling when a streamed chat answer's writer ended: all sent, or its
    connection closed by the daemon (the fake's writer then stops)."""

    def __init__(self) -> None:
        super().__init__()
        self.stream_ended = threading.Event()

    def _chat(self, body: dict[str, Any], reply: Reply) -> None:
        try:
            super()._chat(body, reply)
        finally:
            if body.get("stream"):
                self.stream_ended.set()


@pytest.fixture
def fake():
    with WatchedOpenAI() as upstream:
        yield upstream


def ask(text: str, session: str = "") -> pb.MultimodalRequest:
    return pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])],
                                session_id=session)


def warm_up(daemon) -> None:
    """One call, so that the first call's SDK import does not count against the short limit below."""
    for _ in range(3):
        try:
            daemon.stub.Generate(pb.GenerateRequest(request=ask("warm")), timeout=30)
            return
        except grpc.RpcError:
            pass


def test_a_stream_whose_client_stops_reading_frees_its_provider_and_session_at_max_call_seconds(
        start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(url=fake.base_url, limit=3), env={"OPENAI_TEST_KEY": API_KEY})
    warm_up(daemon)
    fake.stream_ended.clear()
    fake.reply_chunks = ENDLESS
    stalled = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask("a long answer", "S")), timeout=90)
    assert next(stalled).HasField("route_chosen")
    assert next(stalled).HasField("text_delta")
    # the client reads nothing more, its connection up: the daemon's send blocks, and the limit passes
    assert wait_for(fake.stream_ended.is_set, timeout=30), "the upstream request was not cancelled"
    # the conversation goes on: the stalled call no longer holds the session
    fake.reply_chunks = ["next answer"]
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask("next question", "S")), timeout=30).answer
    assert answer.text == "next answer"
    # the stalled call's turn was not kept: its client never got the whole answer
    sent = json.dumps(fake.chat_requests()[-1]["messages"])
    assert "next question" in sent and "a long answer" not in sent
    # read again, the stalled call ends with the daemon's status, well before all of the answer
    deltas = 0
    with pytest.raises(grpc.RpcError) as caught:
        for event in stalled:
            deltas += event.HasField("text_delta")
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
    assert "while its client was not reading the answer" in details.message
    assert deltas < len(ENDLESS)
    assert "its provider call is closed" in daemon.logs()


def test_cancelled_and_deadline_expired_streams_log_no_failed_send(start_daemon, fake) -> None:
    """gRPC reports the send that its client's cancel or deadline cut as failed: that was logged as a
    client refusing a message over its receive limit, a second WARNING beside the access line (see
    test_server.py for a real refusal, still logged)."""
    daemon = start_daemon(CONFIG.format(url=fake.base_url, limit=60), env={"OPENAI_TEST_KEY": API_KEY})
    warm_up(daemon)
    fake.reply_chunks = ENDLESS
    for _ in range(3):
        call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask("cancel me")), timeout=30)
        next(call), next(call)
        time.sleep(1)  # reading nothing: the daemon's send waits
        call.cancel()
    for _ in range(3):
        call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask("too slow")), timeout=2)
        next(call), next(call)
        time.sleep(3)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    def ended() -> list[str]:
        return re.findall(r"StreamGenerate (CANCELLED|DEADLINE_EXCEEDED) in", daemon.logs())

    assert wait_for(lambda: len(ended()) == 6)
    assert sorted(ended()) == ["CANCELLED"] * 3 + ["DEADLINE_EXCEEDED"] * 3
    time.sleep(0.5)  # gRPC's report of a failed send may come a moment after the access line
    assert "could not send" not in daemon.logs()
