"""Media formats through the daemon on the embedded hybrid rules, against the providers' fakes: a model is
never sent a format it does not take; a model that reads it (or a bridge) does the work, and the route says so.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from grpc_helpers import text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from PIL import Image

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

AAI_KEY = "aai-formats-key"
GEMINI_KEY = "gemini-formats-key"
KEYS = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ASSEMBLYAI_API_KEY": AAI_KEY,
        "GEMINI_API_KEY": GEMINI_KEY}


@pytest.fixture
def fakes():
    servers = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic(), "assemblyai": FakeAssemblyAI(api_key=AAI_KEY),
               "gemini": FakeGemini(api_key=GEMINI_KEY)}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def config_for(fakes, *providers: str) -> str:
    """The embedded rules with ``providers`` pointed at their fakes (and local); the others unconfigured."""
    lines = {
        "openai": f'  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{fakes["openai"].base_url}", timeout: 20}}',
        "anthropic": f'  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{fakes["anthropic"].url}", '
                     "timeout: 20}",
        "assemblyai": f'  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{fakes["assemblyai"].url}", '
                      "timeout: 20, poll_interval: 0.02}",
        "gemini": f'  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{fakes["gemini"].url}", timeout: 20}}',
    }
    return "\n".join(["extend_default_routes: true", "providers:", *(lines[p] for p in providers),
                      "  local: {}"])


def bmp(text: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(text, size=(160, 48)))).convert("RGB").save(out, format="BMP")
    return out.getvalue()


def aac(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """An AAC clip in an ADTS stream (what a ``.aac`` file holds), encoded with PyAV."""
    out = io.BytesIO()
    with av.open(out, "w", format="adts") as box:
        stream = box.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        frame = av.AudioFrame.from_ndarray((np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            box.mux(packet)
    return out.getvalue()


def image(mime: str, data: bytes, name: str) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=name)


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def sent_parts(fake: FakeOpenAI) -> list:
    return fake.parts(fake.chat_requests()[-1]["messages"][-1])


def test_a_bmp_is_read_by_the_local_ocr_and_only_its_text_reaches_gpt_4o(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=KEYS, plugins=())
    request = text_request("What does the scan say?", media=[image("image/bmp", bmp("INVOICE"), "scan.bmp"),
                                                              image("image/png", png("chart"), "chart.png")])
    answer = generate(daemon, request)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "openai", "gpt-4o")
    assert list(answer.route.bridges) == ["image (image/bmp)->text via local/extract"]
    parts = sent_parts(fakes["openai"])
    assert [p.kind for p in parts].count("image") == 1  # the PNG, as it is; the BMP as its text
    assert any(p.kind == "text" and p.text.startswith("[Image text] scan.bmp") for p in parts)
    assert len(fakes["openai"].chat_requests()) == 1  # no refused call before


def test_a_png_still_goes_to_gpt_4o_as_an_image(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=KEYS, plugins=())
    answer = generate(daemon, text_request("What does the chart show?",
                                           media=[image("image/png", png("chart"), "chart.png")]))
    assert (answer.route.provider, answer.route.model, list(answer.route.bridges)) == ("openai", "gpt-4o", [])
    assert [p.kind for p in sent_parts(fakes["openai"])].count("image") == 1


def test_an_aac_clip_is_transcribed_by_assemblyai_and_explain_says_why_not_whisper(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai", "assemblyai"), env=KEYS, plugins=())
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/aac", data=aac(), filename="voice.aac")
    request = text_request("", media=[clip], options=pb.Options(task=pb.TASK_TRANSCRIBE))
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert (route.rule, route.provider, route.model) == ("transcription", "assemblyai", "best")
    reason = next(t.reason for t in route.trace if t.rule == "transcription")
    assert "openai/whisper-1: does not take audio/aac" in reason
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("assemblyai", "best")
    assert fakes["openai"].uploads() == [] and len(fakes["assemblyai"].created) == 1


def test_list_providers_shows_each_models_formats_and_length_cap(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai"), env=KEYS, plugins=())
    providers = {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers}
    models = {m.name: m for m in providers["openai"].models}
    assert set(models["gpt-4o"].input_mime_types) == {"image/png", "image/jpeg", "image/webp", "image/gif"}
    assert models["gpt-4o-transcribe-diarize"].max_audio_seconds == 1400
    assert "audio/aac" not in models["whisper-1"].input_mime_types
    assert "text/*" in {t for m in providers["anthropic"].models for t in m.input_mime_types}
    assert list(providers["assemblyai"].models[0].input_mime_types) == []  # any format


def test_when_the_bridge_fails_the_next_one_is_one_that_takes_the_format(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai", "assemblyai"), env=KEYS, plugins=())
    for _ in range(6):  # AssemblyAI is down (its SDK may retry)
        fakes["assemblyai"].fail_next(503, {"error": "service unavailable"})
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/aac", data=aac(), filename="voice.aac")
    answer = generate(daemon, text_request("What is said here?", media=[clip]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["audio->transcript via local/extract"]
    notes = " ".join(answer.route.notes)
    assert "assemblyai/best failed" in notes and "gpt-4o-transcribe-diarize" not in notes  # it takes no AAC
    assert fakes["openai"].uploads() == []


def test_a_heic_photo_goes_to_gemini_which_reads_it_not_through_an_ocr_that_cannot(start_daemon, fakes) -> None:
    """Neither gpt-4o nor Claude takes HEIC (the iPhone's format), and the local OCR cannot read it:
    the rule's fallback Gemini, which takes it, answers; no provider is sent what it would refuse."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic", "gemini"), env=KEYS, plugins=())
    photo = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)
    request = text_request("What is in the photo?", media=[image("image/heic", photo, "IMG_0001.HEIC")])
    answer = generate(daemon, request)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "gemini", "gemini-2.5-pro")
    assert list(answer.route.bridges) == []
    assert fakes["openai"].chat_requests() == [] and fakes["anthropic"].message_calls() == []
