"""Routing facts through the running daemon: what ExplainRoute plans is what Generate follows, for a media a
model declares it cannot take (over its file size, ``max_media_bytes``, or its length, ``max_audio_seconds``).

The real SDKs talk to the fakes of tests/fakes/ (OpenAI, and AssemblyAI as the next audio bridge).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import providers_by_name, text_request
from media_factory import wav_of
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.openai import API_KEY, FakeOpenAI

AAI_KEY = "aai-routing-key"

SIZES = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}", timeout: 30}}
  assemblyai: {{api_key: "{aai_key}", base_url: "{aai_url}", timeout: 30, poll_interval: 0.02}}
default: openai/gpt-4o
bridges:
  audio: [openai/whisper-1, assemblyai/best]
"""



@pytest.fixture
def fake():
    """The fake OpenAI API, started."""
    with FakeOpenAI() as server:
        yield server


def upload(daemon, data: bytes, filename: str) -> pb.Media:
    """``data`` (audio/wav) sent with UploadMedia, as a Media to refer to it."""
    metadata = pb.UploadMetadata(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename=filename,
                                 size_bytes=len(data))
    chunks = [pb.UploadMediaRequest(metadata=metadata)]
    chunks += [pb.UploadMediaRequest(chunk=data[i:i + 1024 * 1024]) for i in range(0, len(data), 1024 * 1024)]
    media_id = daemon.stub.UploadMedia(iter(chunks), timeout=60).media_id
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", media_id=media_id, filename=filename)


def test_audio_over_whisper_s_25_mb_is_planned_for_the_next_bridge_by_explain_and_generate(start_daemon, fake):
    """ExplainRoute planned Whisper for a recording over its 25 MB upload limit, which the plugin then
    refused: the two disagreed. whisper-1 declares the limit (``max_media_bytes``), so both plan the next
    audio bridge, and Whisper is never tried."""
    assemblyai = FakeAssemblyAI(api_key=AAI_KEY)
    with assemblyai:
        daemon = start_daemon(SIZES.format(key=API_KEY, url=fake.base_url, aai_key=AAI_KEY, aai_url=assemblyai.url),
                              plugins=())
        check_size_plan(daemon, fake, assemblyai)


def check_size_plan(daemon, fake: FakeOpenAI, assemblyai: FakeAssemblyAI) -> None:
    """The over-limit recording goes to AssemblyAI in ExplainRoute's plan and in Generate's route."""
    models = {m.name: m for m in providers_by_name(daemon.stub)["openai"].models}
    assert "whisper-1" in models
    audio = wav_of(b"\0\0" * (13 * 1024 * 1024 + 8000), rate=8000)  # 26 MiB and a bit: ~27 minutes
    assert len(audio) > 25 * 1024 * 1024
    request = text_request("Summarise the meeting", media=[upload(daemon, audio, "all-hands.wav")])

    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route
    assert (explained.provider, explained.model) == ("openai", "gpt-4o")
    assert list(explained.bridges) == ["audio->transcript via assemblyai/best"], explained.bridges

    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=120).answer
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == list(explained.bridges)
    assert not any("whisper-1" in note for note in answer.route.notes), answer.route.notes
    assert fake.uploads() == [] and len(assemblyai.uploads) == 1


def test_a_later_bridge_over_its_size_is_not_tried_when_the_first_fails(start_daemon, fake):
    """The first audio bridge (AssemblyAI) is down; the next, Whisper, declares a 25 MB limit the recording is
    over: it is passed over (no attempt, no upload), as routing passes over a first bridge, rather than tried
    and refused; the call ends with AssemblyAI's outage."""
    assemblyai = FakeAssemblyAI(api_key=AAI_KEY)
    with assemblyai:
        config = SIZES.replace("audio: [openai/whisper-1, assemblyai/best]", "audio: [assemblyai/best, openai/whisper-1]")
        daemon = start_daemon(config.format(key=API_KEY, url=fake.base_url, aai_key=AAI_KEY, aai_url=assemblyai.url),
                              plugins=())
        audio = wav_of(b"\0\0" * (13 * 1024 * 1024 + 8000), rate=8000)  # 26 MiB and a bit
        request = text_request("Summarise the meeting", media=[upload(daemon, audio, "all-hands.wav")])
        assemblyai.fail_next(503, {"error": "Service unavailable"})
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=120)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "whisper" not in caught.value.details(), caught.value.details()
    assert fake.uploads() == [] and fake.chat_requests() == []
