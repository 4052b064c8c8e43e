"""The offline path end to end: a fresh install (embedded default config, no API keys, no plugins
but the installed ones) answers PDFs, images, audio and video with local extraction, through the
real ``mmrouter`` CLI and the real daemon; ``explain`` says why local was chosen; diarization is
refused with the provider to configure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import media_factory
import pytest
from grpc_helpers import error_details, text_request
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


def extract(daemon, modality: int, mime: str, data: bytes, filename: str, timeout: float = 120) -> str:
    """The local provider's extraction of one inline media, through the daemon."""
    media_item = pb.Media(modality=modality, mime_type=mime, data=data, filename=filename)
    request = text_request("What is in it?", media=[media_item])
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=timeout).answer.text


def refusal(daemon, modality: int, mime: str, data: bytes, filename: str):
    """The error details of a call the daemon must refuse (a clear, prompt INVALID_ARGUMENT)."""
    with pytest.raises(grpc.RpcError) as err:
        extract(daemon, modality, mime, data, filename, timeout=60)
    details = error_details(err.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT, (filename, details)
    assert details.reason == "PROVIDER_BAD_REQUEST" and details.metadata.get("provider") == "local", details
    return details


def test_a_4k_video_has_its_text_read(fresh) -> None:
    """Frames are scaled down to 1920 px before OCR (measured: 8K peak RSS 874 -> 759 MB); text still reads."""
    video = media.video([(4.0, "BIG SCREEN TEXT")], None, fps=1, size=(3840, 2160))
    text = extract(fresh, pb.MODALITY_VIDEO, "video/mp4", video, "4k.mp4")
    assert "[Video 4k.mp4 frames at 0.0s-2.0s]\nBIG SCREEN TEXT" in text, text


def test_a_video_over_the_pixel_limit_is_refused_before_decoding(fresh) -> None:
    """A 1 KB raw video declaring 16000x16000 frames (384 MB each) is refused from its header."""
    details = refusal(fresh, pb.MODALITY_VIDEO, "video/x-yuv4mpeg", media_factory.y4m_declaring(16000, 16000),
                      "huge.y4m")
    assert "cannot read huge.y4m: the video is 16000x16000 pixels, over the 40,000,000" in details.message


@needs_espeak
def test_broken_and_hostile_containers_are_refused_cleanly(fresh) -> None:
    """Truncated and random-bodied containers get INVALID_ARGUMENT with details; the daemon stays up."""
    real = media.video([(2.0, "HELLO VIDEO"), (2.0, "SECOND SCENE")], media.speech_wav("one two three four five"))
    streamable = media_factory.faststart(real)
    cases = [  # (file name, data, what the message says)
        ("cut.mp4", real[:len(real) * 3 // 10], "not a decodable"),  # its index (moov) is at the end: gone
        ("cut-faststart.mp4", streamable[:len(streamable) * 3 // 10], "decoding failed"),
        ("noise.mp4", media_factory.with_random_body(real, 32), "not a decodable"),
        ("noise-faststart.mp4", media_factory.with_random_body(streamable, len(streamable) // 2),
         "decoding failed"),
    ]
    for name, data, says in cases:
        started = time.monotonic()
        details = refusal(fresh, pb.MODALITY_VIDEO, "video/mp4", data, name)
        assert f"cannot read {name}: " in details.message and says in details.message, details.message
        assert time.monotonic() - started < 30, name
    assert fresh.proc.poll() is None
    assert "HELLO VIDEO" in extract(fresh, pb.MODALITY_VIDEO, "video/mp4", real, "real.mp4")


def test_a_wav_of_noise_is_transcribed_and_one_declaring_1_hz_is_refused(fresh) -> None:
    """Random samples behind a real WAV header are just (noisy) audio. At 1 Hz, 200 KB of them resampled to
    16 kHz were 28 hours of audio for the recognizer: under 4 kHz is refused."""
    text = extract(fresh, pb.MODALITY_AUDIO, "audio/wav", media_factory.wav_declaring_rate(8000), "noise.wav")
    assert "[Audio noise.wav: transcript, 12.5s]" in text, text
    started = time.monotonic()
    details = refusal(fresh, pb.MODALITY_AUDIO, "audio/wav", media_factory.wav_declaring_rate(1), "slow.wav")
    assert "cannot read slow.wav: the audio is sampled at 1 Hz, under the 4,000 Hz" in details.message
    assert time.monotonic() - started < 30


def test_a_video_claiming_a_huge_duration_is_read_promptly(fresh) -> None:
    """A frame stamped 35,000 years in: sampling used to step there 2 s at a time (hung forever)."""
    video = media_factory.mkv_frames_at([0, 2**50], "LATE FRAME")
    started = time.monotonic()
    text = extract(fresh, pb.MODALITY_VIDEO, "video/x-matroska", video, "long.mkv", timeout=60)
    assert "[Video long.mkv frames at 0.0s]\nLATE FRAME" in text, text
    assert "[Video long.mkv frames at 1125899906842.6s]\nLATE FRAME" in text, text
    assert time.monotonic() - started < 30


def test_audio_of_days_in_a_small_flac_is_refused_as_too_large(fresh) -> None:
    """235 KB of FLAC constant subframes stand for 3 days of audio: it was all decoded and fed to the speech
    recognizer until the call's time ran out. Over the default hour it is refused as INPUT_TOO_LARGE, from
    the header, or where decoding reaches the hour when the header does not say; the daemon stays up."""
    from media_factory import constant_flac

    cases = [  # (file name, task, what the message says)
        ("days.flac", pb.TASK_TRANSCRIBE, "the audio is 259,200 seconds (72:00:00) long, over the 3,600 seconds "
                                          "(1:00:00) the local provider transcribes"),
        ("unsaid.flac", pb.TASK_AUTO, "the audio goes on past 3,600 seconds (1:00:00), the most the local "
                                      "provider transcribes (decoding stopped there)"),
    ]
    for name, task, says in cases:
        audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/flac", filename=name,
                         data=constant_flac(3 * 86400, rate=4000, declared=name == "days.flac"))
        request = text_request("", media=[audio], options=pb.Options(task=task))
        with pytest.raises(grpc.RpcError) as err:  # the timeout bounds a call that would run for minutes
            fresh.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
        details = error_details(err.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INPUT_TOO_LARGE"), details
        assert f"cannot transcribe {name}: {says}: send a shorter clip, or raise providers.local.max_audio_seconds" \
            in details.message, details.message
    assert fresh.proc.poll() is None
LOCAL_FIRST = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
  local: {{max_audio_seconds: 3}}
routes:
  - name: local-first
    use: local/extract
    fallback: [openai/gpt-audio, openai/gpt-4o]
    bridging: true
bridges:
  audio: [openai/whisper-1]
"""


@pytest.fixture
def local_first(start_daemon):
    """A daemon whose one rule is local/extract with OpenAI (the fake) as its fallback, and the fake."""
    from tests.fakes.openai import API_KEY, FakeOpenAI

    with FakeOpenAI() as fake:
        yield start_daemon(LOCAL_FIRST.format(key=API_KEY, url=fake.base_url), plugins=()), fake


def test_a_stream_falls_back_when_local_refuses_audio_over_its_limit(local_first) -> None:
    """Local sent its header before extracting anything, so in a stream its failure came after text and the
    rule's fallback was never tried (Generate did fall back). The header now comes with the first section:
    8 s of FLAC whose header does not give its length (routing cannot skip local for it) is refused by local
    as INPUT_TOO_LARGE before any text, and the fallback answers the stream, as it answers Generate."""
    from media_factory import constant_flac

    daemon, fake = local_first
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/flac", filename="long.flac",
                     data=constant_flac(8, declared=False))
    request = text_request("What is said?", media=[audio])
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))
    text = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
    assert text == "Hello from the fake GPT.", text
    (done,) = [e.done for e in events if e.WhichOneof("event") == "done"]
    route = done.answer.route
    assert (route.provider, route.model) == ("openai", "gpt-audio") and "openai/whisper-1" in str(route.bridges), route
    assert any("local/extract failed (INPUT_TOO_LARGE: local: cannot transcribe long.flac" in note
               for note in route.notes), route.notes
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer  # the same route
    assert (answer.text, answer.route.provider, answer.route.model) == (text, "openai", "gpt-audio")
    assert len(fake.chat_requests()) == 2


#: OpenAI (the fake) ready and answering every request by the rules; local only when a client asks for it.
OPENAI_BY_RULE = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
  local: {{}}
routes:
  - name: general
    use: openai/gpt-4o
"""


@pytest.mark.parametrize(("hints", "named"), [(pb.RoutingHints(provider="local"), "hints.provider=local"),
                                             (pb.RoutingHints(model="extract"), "hints.model=extract")],
                         ids=["provider", "model"])
def test_a_question_sent_to_local_by_the_client_says_the_client_chose_it(start_daemon, hints, named) -> None:
    """The client chose local itself while a language model was ready: the answer says so, and does not
    send the user looking for a provider that is not configured or failed."""
    from tests.fakes.openai import API_KEY, FakeOpenAI

    with FakeOpenAI() as fake:
        daemon = start_daemon(OPENAI_BY_RULE.format(key=API_KEY, url=fake.base_url), plugins=())
        request = text_request("What is the capital of France?", hints=hints)
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
        assert (answer.route.rule, answer.route.provider) == ("override", "local")
        assert answer.text.startswith(HEADER)
        assert f"the client asked for the local provider ({named}), which only extracts text" in answer.text
        assert "configured" not in answer.text and "failed" not in answer.text, answer.text
        assert fake.chat_requests() == []


def test_a_question_local_answers_by_rule_says_the_route_tells_why(local_first) -> None:
    """Without a hint, local cannot tell a rule's choice from a fallback: its answer points at the route."""
    daemon, fake = local_first
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("What is 2 + 2?")), timeout=60).answer
    assert (answer.route.rule, answer.route.provider) == ("local-first", "local")
    assert "the route says why the local provider was used (a rule or the default that names it" in answer.text
    assert "the client asked" not in answer.text
    assert fake.chat_requests() == []


#: GPT-4o (the fake OpenAI) answers everything; it takes no documents, so a PDF is bridged through local.
GPT_WITH_DOCUMENT_BRIDGE = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
  local: {{}}
routes:
  - name: general
    use: openai/gpt-4o
    bridging: true
bridges:
  document: [local/extract]
"""


def test_a_filled_in_form_bridged_to_a_model_keeps_its_values(start_daemon) -> None:
    """A filled-in PDF form sent to GPT-4o through the document bridge: the model was given the form's
    labels alone ("Name:\\nIBAN:"), and said it was blank. It now gets the fields' values too."""
    from test_local_provider import filled_form_pdf

    from tests.fakes.openai import API_KEY, FakeOpenAI

    with FakeOpenAI() as fake:
        daemon = start_daemon(GPT_WITH_DOCUMENT_BRIDGE.format(key=API_KEY, url=fake.base_url), plugins=())
        answer = extract(daemon, pb.MODALITY_DOCUMENT, "application/pdf", filled_form_pdf(), "form.pdf")
        assert answer == "Hello from the fake GPT."
        (sent,) = fake.chat_requests()
        text = "\n".join(part.text for message in sent["messages"] for part in fake.parts(message)
                         if part.kind == "text")
    # the part's name heads the text; the bridge got none (its text is kept for any client sending the bytes)
    assert "[Document text] form.pdf\n" in text, text
    assert "[PDF form.pdf, page 1]\nName:\nIBAN:\nForm fields:\nname: Jane Q Public\n" \
           "Bank account (IBAN): DE89370400440532013000\nagree: checked\n" in text, text
