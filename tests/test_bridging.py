"""Bridging end to end: a text-only model gets a PDF's text and an audio transcript from `local`."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import pdf, wav
from mmrouter.v1 import router_pb2 as pb

CONFIG = """
providers:
  fake: {{api_key: k}}
  local: {{}}
routes:
  - name: text-only
    use: fake/small
    bridging: {bridging}
bridges:
  document: [local/extract]
  audio: [local/extract]
"""

DOCUMENT = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="memo.pdf",
                    data=pdf(["Budget approved for Tuesday", "Second page text"]))


def test_a_pdf_reaches_a_text_only_model_as_its_text(start_daemon) -> None:
    daemon = start_daemon(CONFIG.format(bridging="true"), plugins=("testkit",))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("Summarise", media=[DOCUMENT]))).answer
    assert (answer.route.provider, answer.route.model) == ("fake", "small")
    assert list(answer.route.bridges) == ["document->text via local/extract"]
    assert "document=0" in answer.text, "the model must receive text, not the PDF"
    assert "[Document text] memo.pdf" in answer.text and "Budget approved for Tuesday" in answer.text
    assert [(s.purpose, s.provider) for s in answer.route.steps] == [
        ("bridge:document->text via local/extract", "local"), ("answer", "fake")]


def test_audio_is_bridged_to_an_audio_transcript_part(start_daemon) -> None:
    daemon = start_daemon(CONFIG.format(bridging="true"), plugins=("testkit",))
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5), filename="tone.wav")
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=text_request("What was said?", media=[audio]))))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and "transcript" in kinds and kinds[-1] == "done"
    answer = events[-1].done.answer
    assert "[Audio transcript] tone.wav" in answer.text and "audio=0" in answer.text


def test_bridging_can_be_switched_off_per_rule(start_daemon) -> None:
    daemon = start_daemon(CONFIG.format(bridging="false"), plugins=("testkit",))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("Summarise", media=[DOCUMENT])))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
    assert "does not take document" in details.message


PAID_BRIDGE = """
providers:
  fake: {api_key: k}
routes:
  - name: text
    use: fake/echo
    bridging: true
bridges:
  audio: [fake/ears]
"""


def test_a_sessions_audio_is_transcribed_once_not_on_every_turn(start_daemon, tmp_path) -> None:
    """The history's media come back on every turn; a paid bridge must not transcribe them again."""
    daemon = start_daemon(PAID_BRIDGE, data_dir=tmp_path / "data")
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5), filename="call.wav")

    def ask(d, text, media=()):
        return d.stub.Generate(pb.GenerateRequest(request=text_request(text, media=list(media), session_id="s"))).answer

    first = ask(daemon, "what was said?", [audio])
    assert [s.purpose for s in first.route.steps] == ["bridge:audio->transcript via fake/ears", "answer"]
    assert first.usage.audio_seconds == 2.0
    second = ask(daemon, "and who said it?")
    assert [s.purpose for s in second.route.steps] == ["answer"]
    assert second.usage.audio_seconds == 0 and "[Audio transcript] call.wav\nhello there" in second.text
    assert any("reused the text of 1 media" in n for n in second.route.notes)
    assert daemon.stop() == 0

    restarted = start_daemon(PAID_BRIDGE, data_dir=tmp_path / "data")
    third = ask(restarted, "anything else?")
    assert [s.purpose for s in third.route.steps] == ["answer"] and "bytes heard" in third.text
    # without a session the same inline clip is not kept: each request pays for its own transcript
    plain = restarted.stub.Generate(pb.GenerateRequest(request=text_request("said?", media=[audio]))).answer
    assert [s.purpose for s in plain.route.steps] == ["bridge:audio->transcript via fake/ears", "answer"]


def test_the_answer_carries_one_transcript_of_every_bridged_clip(start_daemon) -> None:
    daemon = start_daemon(PAID_BRIDGE)
    clips = [pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(s), filename=f"{s}.wav")
             for s in (0.5, 0.25)]
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("what was said?", media=clips))).answer
    transcript = answer.transcript
    assert [u.text for u in transcript.utterances] == [
        "hello there", f"{len(clips[0].data)} bytes heard", "hello there", f"{len(clips[1].data)} bytes heard"]
    assert [u.start_seconds for u in transcript.utterances] == [0.0, 1.0, 2.0, 3.0]  # the second clip after the first
    assert transcript.duration_seconds == 4.0
