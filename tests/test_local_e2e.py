"""The offline path end to end: a fresh install (embedded default config, no API keys, no plugins
but the installed ones) answers PDFs, images, audio and video with local extraction, through the
real ``mmrouter`` CLI and the real daemon; ``explain`` says why local was chosen; diarization is
refused with the provider to configure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes import local as media

MMROUTER = Path(sys.executable).parent / "mmrouter"
HEADER = "[Extracted by local provider — no language model was used]"
needs_espeak = pytest.mark.skipif(media.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def cli(address: str, *args: str | Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "MMROUTER_ADDRESS"}
    env["COLUMNS"] = "250"
    result = subprocess.run([str(MMROUTER), *map(str, args), "--address", address], capture_output=True,
                            text=True, env=env, timeout=120)
    return result


@pytest.fixture
def fresh(start_daemon):
    """The daemon as a fresh install starts it: embedded default, no keys, no test plugins."""
    return start_daemon(None, plugins=())


@needs_espeak
def test_fresh_install_answers_every_kind_offline(fresh, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(media.pdf([["Quarterly report", "Revenue grew by ten percent"], ["Appendix zebra"]]))
    image = tmp_path / "scan.png"
    image.write_bytes(media.encode_image(media.text_image([((20, 20), "Invoice number 4711")])))
    audio = tmp_path / "call.mp3"
    audio.write_bytes(media.transcode(media.speech_wav("please call me tomorrow morning at nine"),
                                      "mp3", "libmp3lame"))
    video = tmp_path / "demo.mp4"
    video.write_bytes(media.video([(2.0, "HELLO VIDEO")], media.speech_wav("one two three four five")))

    out = cli(fresh.address, "ask", "--pdf", pdf, "What is in it?")
    assert out.returncode == 0, out.stderr
    assert HEADER in out.stdout and "not answered" in out.stdout
    assert "[PDF report.pdf, page 1]" in out.stdout and "Revenue grew by ten percent" in out.stdout
    assert "[PDF report.pdf, page 2]" in out.stdout and "Appendix zebra" in out.stdout
    assert "local/extract" in out.stdout + out.stderr

    out = cli(fresh.address, "ask", "--image", image, "What is in it?")
    assert out.returncode == 0, out.stderr
    assert "[Image scan.png: PNG 640x240]" in out.stdout and "Invoice number 4711" in out.stdout

    out = cli(fresh.address, "ask", "--audio", audio)
    assert out.returncode == 0, out.stderr
    assert "call me tomorrow morning" in out.stdout
    assert "rule transcription -> local/extract" in out.stdout + out.stderr

    out = cli(fresh.address, "ask", "--video", video, "What happens?")
    assert out.returncode == 0, out.stderr
    assert "[Video demo.mp4: audio transcript," in out.stdout and "one two three four five" in out.stdout
    assert "[Video demo.mp4 frames at 0.0s" in out.stdout and "HELLO VIDEO" in out.stdout

    out = cli(fresh.address, "explain", "--pdf", pdf, "What is in it?")
    assert out.returncode == 0, out.stderr
    assert "rule documents -> local/extract" in out.stdout
    assert "no API key: set ANTHROPIC_API_KEY" in out.stdout and "no API key: set GEMINI_API_KEY" in out.stdout


@needs_espeak
def test_grpc_transcript_has_timed_words_and_route_says_local(fresh) -> None:
    wav = media.speech_wav("the quick brown fox jumps over the lazy dog")
    request = text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav,
                                               filename="fox.wav")], options=pb.Options(task=pb.TASK_TRANSCRIBE))
    answer = fresh.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert (answer.route.provider, answer.route.model) == ("local", "extract")
    assert media.word_error_rate("the quick brown fox jumps over the lazy dog", answer.transcript.text) <= 0.4
    assert answer.transcript.words and all(w.end_seconds > w.start_seconds for w in answer.transcript.words)
    assert answer.usage.cost_usd == 0 and answer.usage.audio_seconds > 2


@needs_espeak
def test_diarization_without_a_diarizing_provider_is_failed_precondition(fresh) -> None:
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=media.speech_wav("hello there"))
    request = text_request("", media=[audio], options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True))
    with pytest.raises(grpc.RpcError) as err:
        fresh.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "configure assemblyai" in err.value.details()
