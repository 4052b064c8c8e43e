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
