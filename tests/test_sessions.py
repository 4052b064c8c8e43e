"""Conversations: history kept by session id, media by reference, survives restarts, reset, trimming."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: short-memory
    match: {tags: [small]}
    use: fake/small
  - name: everything
    use: fake/omni
"""


def ask(daemon, text: str, session: str = "s1", **fields) -> pb.Answer:
    request = text_request(text, session_id=session, **fields)
    return daemon.stub.Generate(pb.GenerateRequest(request=request)).answer


def test_history_and_media_survive_a_restart_and_reset_clears_them(start_daemon, tmp_path) -> None:
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("hi"))
    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data")
    first = ask(daemon, "first question", media=[image])
    assert "[history=0 image=1" in first.text
    second = ask(daemon, "second question")
    assert "[history=1 image=1" in second.text, "the image of turn 1 was not carried by reference"
    assert "first question" in second.text and "fake/omni says: first question" in second.text
    stored = [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file() and p.suffix != ".json"
              and p.parent.name != "tmp"]
    assert len(stored) == 1, "inline media of a session must be stored once, by content"
    assert daemon.stop() == 0

    restarted = start_daemon(CONFIG, data_dir=tmp_path / "data")
    third = ask(restarted, "third question")
    assert "[history=2 image=1" in third.text
    assert "second question" in third.text
    assert ask(restarted, "other session", session="s2").text.count("[history=0") == 1

    removed = restarted.stub.ResetSession(pb.ResetSessionRequest(session_id="s1")).turns_removed
    assert removed == 6  # three questions and three answers
    assert "[history=0 image=0" in ask(restarted, "after reset").text


def test_a_history_longer_than_the_context_is_trimmed_oldest_first(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    for i in range(4):
        ask(daemon, f"turn {i} " + "words " * 20, session="long")
    answer = ask(daemon, "last", session="long", hints=pb.RoutingHints(tags=["small"]))
    assert answer.route.model == "small"
    assert any("history trimmed" in note and "oldest" in note for note in answer.route.notes)
    assert "turn 0" not in answer.text and "last" in answer.text


def test_session_turns_are_not_stored_when_the_call_fails(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    with pytest.raises(grpc.RpcError) as caught:
        ask(daemon, "FAIL:500", session="broken")
    assert error_details(caught.value).code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="broken"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
