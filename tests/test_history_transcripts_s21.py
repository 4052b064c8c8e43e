"""A transcription turn in a session's history: the embedded hybrid policy with the cloud fakes. Its transcript,
kept as the turn's reply, is what the later turns give of its recording: once (the recording's place says the reply
gives it), and never transcribed again, whichever transcriber made it, `local/extract` during an outage too."""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from media_factory import pdf
from mmrouter.v1 import router_pb2 as pb
from test_bridge_degraded import LOCAL_BRIDGE, cloud_bridges_down_once
from test_bridge_reuse import TRANSCRIPTIONS, generate, route_of
from test_hybrid import ALL_KEYS, config_for

from tests.fakes.local import ESPEAK, speech_wav

GIVEN_BY_REPLY = "[Audio transcript] audio 1 of this message\n(given in full by the reply that follows)\n" \
                 "[End of audio transcript]"

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed")


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())


def voice_note() -> pb.Media:
    """A voice note sent inline, without a file name, as a phone sends it."""
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=speech_wav("hello there general"))


def document() -> pb.Media:
    return pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=pdf(["Quarterly report"]),
                    filename="q.pdf")


def claude_history(fakes) -> list[tuple[str, list[str]]]:
    """The role and text blocks of each message of Claude's last request but the question."""
    return [(m["role"], [b["text"] for b in m["content"] if b.get("type") == "text"])
            for m in fakes["anthropic"].last_body()["messages"][:-1]]


def whisper_calls(fakes) -> int:
    return len([r for r in fakes["openai"].requests if r.path == TRANSCRIPTIONS])


def test_an_offline_transcription_turn_gives_its_transcript_once_and_is_not_transcribed_again(
        daemon, fakes) -> None:
    """Whisper and AssemblyAI fail: `local/extract` transcribes the voice note, and the session keeps its
    transcript as the turn's reply. The next turns (a PDF to Claude, then a question) send the recording as
    given by that reply, and Whisper, up again, is not paid for it: no second, different transcript."""
    cloud_bridges_down_once(fakes)
    first = generate(daemon, text_request("", media=[voice_note()], session_id="chat"))
    assert route_of(first)[1] == "local/extract" and first.text
    assert whisper_calls(fakes) == 1  # failed

    second = generate(daemon, text_request("Summarise this", media=[document()], session_id="chat"))
    assert route_of(second) == ("documents", "anthropic/claude-sonnet-4-6")
    assert whisper_calls(fakes) == 1, "the history's recording was transcribed again"
    assert [s.purpose for s in second.route.steps] == ["answer"]
    assert list(second.route.bridges) == [LOCAL_BRIDGE]  # the route names who made the text reused
    assert any("reused the kept text of 1 media" in n for n in second.route.notes)
    assert claude_history(fakes) == [("user", [GIVEN_BY_REPLY]), ("assistant", [first.text])]

    third = generate(daemon, text_request("And?", session_id="chat"))
    assert [s.purpose for s in third.route.steps] == ["answer"] and whisper_calls(fakes) == 1
    assert claude_history(fakes)[:2] == [("user", [GIVEN_BY_REPLY]), ("assistant", [first.text])]


def test_a_cloud_transcription_turn_gives_its_transcript_once(daemon, fakes) -> None:
    """The usual path: Whisper transcribes the voice note; the next turn reuses that transcript, as the reply."""
    first = generate(daemon, text_request("", media=[voice_note()], session_id="chat"))
    assert route_of(first)[1] == "openai/whisper-1"
    generate(daemon, text_request("Summarise this", media=[document()], session_id="chat"))
    assert whisper_calls(fakes) == 1
    assert claude_history(fakes) == [("user", [GIVEN_BY_REPLY]), ("assistant", [first.text])]
