"""What a client receives whichever provider answered: a transcription's text as deltas too, and for a
unary call, a fallback after a model that broke mid-answer (the client had seen nothing of it)."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: speech
    match: {task: [transcribe]}
    use: fake/ears
  - name: everything
    use: fake/echo
    fallback: [fake/docs]
"""


def _stream(daemon, request: pb.MultimodalRequest) -> list[pb.StreamGenerateResponse]:
    return list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=30))


def test_a_streamed_transcription_sends_its_text_as_deltas_as_other_answers_do(start_daemon) -> None:
    """A transcriber that yields only its transcript (OpenAI's Whisper, AssemblyAI) sent no text delta,
    while ``local`` did: a client joining the deltas got "" from the cloud and the text from ``local``."""
    daemon = start_daemon(CONFIG)
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0))
    request = text_request("", media=[audio], options=pb.Options(task=pb.TASK_TRANSCRIBE))
    events = _stream(daemon, request)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done" and "transcript" in kinds, kinds
    assert kinds.index("transcript") < kinds.index("text_delta")
    joined = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    answer = events[-1].done.answer
    assert answer.route.model == "ears" and "bytes heard" in joined
    assert joined == answer.text == answer.transcript.text
    unary = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert unary.text == answer.text  # unchanged for Generate


def test_a_unary_call_falls_back_after_a_model_broke_mid_answer_a_stream_cannot(start_daemon) -> None:
    """Generate's client gets the answer at once: text a model sent before failing never reached it, so
    the fallback answers. A stream's client already has that text: the call fails, as before."""
    daemon = start_daemon(CONFIG)
    request = text_request("PARTIAL:503@echo")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert (answer.route.provider, answer.route.model) == ("fake", "docs")
    assert "began" not in answer.text and "fake/docs says: PARTIAL:503@echo" in answer.text
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("echo", False), ("docs", True)]
    assert any("fake/echo failed" in note for note in answer.route.notes), answer.route.notes

    with pytest.raises(grpc.RpcError) as caught:
        _stream(daemon, request)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(caught.value).reason == "PROVIDER_UNAVAILABLE"
