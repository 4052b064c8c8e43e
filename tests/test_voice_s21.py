"""Voice clips during outages and silence (QA report "voice", sections 2, 4 and 5).

- A clip ``local/extract`` transcribed as the bridge of a model that then failed (the cloud down) is not
  decoded again by the fallback ``local/extract`` that answers with it: its transcript is taken, the answer
  is what a fresh extraction makes, and the clip's seconds are counted once.
- A transcription of silence answers an empty text, whichever transcriber made it, with a route note.
- The route note of a bridge refusing a media reads "an audio", not "a audio".

Speech comes from espeak-ng and is decoded by the real pocketsphinx decoder; the cloud providers are the
fakes in tests/fakes, spoken to by their real SDKs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import socket
import time

import pytest
from grpc_helpers import text_request
from media_factory import png, wav_of
from mmrouter.v1 import router_pb2 as pb
from mmrouter_local import LocalProvider
from test_bridge_errors import PROVIDERS, TRANSCRIPTIONS
from test_hybrid import ALL_KEYS

from router import (
    CallContext,
    Media,
    Message,
    Modality,
    Options,
    Part,
    ProviderEvent,
    Request,
    Role,
    Task,
    TextDelta,
    TranscriptReady,
    UsageReport,
)
from tests.fakes import local as media

needs_espeak = pytest.mark.skipif(media.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

SPEECH = "please call me tomorrow morning at nine"
#: The longest a call below is waited for: a broken fix fails the test instead of hanging it.
BOUND = 120.0


def closed_port() -> int:
    """A port of this test's range (42300-42399) on which nothing listens: a cloud provider that is down."""
    for port in range(42399, 42299, -1):
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("every port of 42300-42399 is in use")


# -- the same clip, a bridge then the fallback that answers ---------------------------------------------------


async def events_of(provider: LocalProvider, request: Request, ctx: CallContext) -> list[ProviderEvent]:
    async def run() -> list[ProviderEvent]:
        return [event async for event in provider.generate(request, provider.models[0], ctx)]
    return await asyncio.wait_for(run(), BOUND)


def answer_parts(events: list[ProviderEvent]) -> tuple[str, list, float]:
    """The text, transcripts and audio seconds of a call's events."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    transcripts = [e.transcript for e in events if isinstance(e, TranscriptReady)]
    seconds = sum(e.usage.audio_seconds for e in events if isinstance(e, UsageReport))
    return text, transcripts, seconds


def speech_media(modality: Modality, filename: str = "") -> Media:
    """The spoken :data:`SPEECH` as a WAV, or as the sound of a short video with on-screen text."""
    if modality is Modality.AUDIO:
        return Media(Modality.AUDIO, "audio/wav", data=media.speech_wav(SPEECH), filename=filename)
    return Media(Modality.VIDEO, "video/mp4", data=media.video([(2.0, "MENU")], media.speech_wav(SPEECH)),
                 filename=filename)


@needs_espeak
@pytest.mark.parametrize("modality", [Modality.AUDIO, Modality.VIDEO])
async def test_the_fallback_takes_the_transcript_its_bridge_made_in_the_same_call(modality: Modality) -> None:
    """The router gives local the clip alone (a bridge), then the question with the clip and a photo (the
    fallback answering): the second call of the same call context decodes nothing, answers what a call of
    its own answers, and counts no audio seconds; another call decodes the clip again."""
    clip = speech_media(modality, "q")
    photo = Media(Modality.IMAGE, "image/png", data=png("menu"), filename="photo.png")
    bridge = Request([Message(Role.USER, [Part(media=dataclasses.replace(clip, filename=""))])], Options(task=Task.CHAT))
    question = Request([Message(Role.USER, [Part(media=clip), Part(media=photo), Part(text="What did I say?")])])
    provider = LocalProvider(workers=1)
    try:
        ctx = CallContext("voice-s21", time.monotonic() + BOUND)
        _, (heard,), bridged_seconds = answer_parts(await events_of(provider, bridge, ctx))
        decoded = provider.extractor.asr.pieces_decoded
        text, transcripts, seconds = answer_parts(await events_of(provider, question, ctx))
        assert provider.extractor.asr.pieces_decoded == decoded  # not decoded again
        assert transcripts == [heard] and seconds == 0.0 and bridged_seconds == heard.duration_seconds > 0

        alone_text, alone_transcripts, alone_seconds = answer_parts(
            await events_of(provider, question, CallContext("another", time.monotonic() + BOUND)))
        assert provider.extractor.asr.pieces_decoded > decoded  # another call: decoded
        assert text == alone_text and alone_transcripts == [heard] and alone_seconds == heard.duration_seconds
        assert f"[{modality.value.title()} q: " in text and heard.text and all(
            f"] {u.text}" in text for u in heard.utterances)
        del ctx
        gc.collect()
        assert len(provider.heard) == 0  # kept for their call only
    finally:
        await provider.aclose()


def down_cloud_config() -> str:
    """GPT-4o for media with an image, its audio bridged by Whisper else local; OpenAI down (nothing
    listens at its address); the rule's fallback local/extract."""
    return f"""
providers:
  openai: {{api_key: sk-down, base_url: "http://127.0.0.1:{closed_port()}/v1", timeout: 5}}
  local: {{}}
routes:
  - name: cross-modal
    match: {{inputs_any: [image]}}
    use: openai/gpt-4o
    fallback: [local/extract]
bridges:
  audio: [openai/whisper-1, local/extract]
default: local/extract
"""


@needs_espeak
def test_with_the_cloud_down_a_voice_question_is_decoded_once(start_daemon) -> None:
    """QA: 9.6 s for a 7.6 s clip, usage.audio_seconds twice its length. local's bridge text for GPT-4o is
    made, GPT-4o is down, and local answering takes that transcript: one decode, the seconds counted once,
    the answer's text and transcript those of the extraction."""
    daemon = start_daemon(down_cloud_config(), plugins=())
    request = text_request("What did I say?", media=[
        pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=media.speech_wav(SPEECH), filename="q.wav"),
        pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("menu"), filename="photo.png")])
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=BOUND).answer
    assert (answer.route.provider, answer.route.model) == ("local", "extract")
    steps = {step.purpose: step for step in answer.route.steps if step.provider == "local"}
    assert list(steps) == ["bridge:audio->transcript via local/extract", "answer"], answer.route.steps
    heard = steps["bridge:audio->transcript via local/extract"].usage.audio_seconds
    assert heard > 0 and steps["answer"].usage.audio_seconds == 0.0
    assert answer.usage.audio_seconds == pytest.approx(heard)
    assert answer.transcript.duration_seconds == pytest.approx(heard) and answer.transcript.text
    assert f"[Audio q.wav: transcript, {heard:.1f}s]" in answer.text
    assert all(f"] {u.text}" in answer.text for u in answer.transcript.utterances)


# -- silence, transcribed --------------------------------------------------------------------------------------


def silent_transcription() -> pb.MultimodalRequest:
    silence = wav_of(b"\0\0" * 16000 * 2)
    return text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=silence,
                                            filename="quiet.wav")], options=pb.Options(task=pb.TASK_TRANSCRIBE))


def test_silence_transcribed_by_local_answers_an_empty_text_with_a_note(start_daemon) -> None:
    """local answered "(no speech found)" as the text, which an app shows as said; Whisper answers ''. The
    text is empty, as the transcript's, and a route note says no speech was found (a stream too)."""
    daemon = start_daemon("providers: {local: {}}\ndefault: local/extract\n", plugins=())
    request = silent_transcription()
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=BOUND).answer
    assert (answer.text, answer.transcript.text) == ("", "")
    assert answer.transcript.duration_seconds == pytest.approx(2.0)
    assert "local/extract found no speech: the transcript and the answer's text are empty" in answer.route.notes
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=BOUND))
    assert not [e for e in events if e.WhichOneof("event") == "text_delta"]
    (done,) = [e.done for e in events if e.WhichOneof("event") == "done"]
    assert done.answer.text == ""


def test_silence_transcribed_by_whisper_has_the_same_note(start_daemon, fakes) -> None:
    """Whisper hearing nothing answers an empty text too: the same note, whichever transcriber it was."""
    config = PROVIDERS.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                              assemblyai=fakes["assemblyai"].url) + "default: openai/whisper-1\n"
    daemon = start_daemon(config, env=ALL_KEYS, plugins=())
    fakes["openai"].fail_next(200, {"task": "transcribe", "language": "english", "duration": 2.0, "text": "",
                                    "segments": [], "words": []}, path=TRANSCRIPTIONS)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=silent_transcription()), timeout=BOUND).answer
    assert (answer.route.provider, answer.text, answer.transcript.text) == ("openai", "", "")
    assert "openai/whisper-1 found no speech: the transcript and the answer's text are empty" in answer.route.notes


# -- the note of a bridge's refusal ------------------------------------------------------------------------------


def test_a_bridge_refusing_an_audio_is_named_with_its_article(start_daemon, fakes) -> None:
    """local refuses a clip sampled at 2 kHz for GPT-4o; Gemini, the fallback, hears it itself. The note
    said "its bridge refused a audio"."""
    config = (f'providers:\n  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{fakes["openai"].base_url}"}}\n'
              f'  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{fakes["gemini"].url}"}}\n  local: {{}}\n'
              "routes:\n  - name: chat\n    use: openai/gpt-4o\n    fallback: [gemini/gemini-2.5-pro]\n"
              "bridges:\n  audio: [local/extract]\ndefault: local/extract\n")
    daemon = start_daemon(config, env=ALL_KEYS, plugins=())
    slow = wav_of(b"\x10\x00\xf0\xff" * 2000, rate=2000)  # two seconds at 2 kHz: local refuses it for good
    request = text_request("What did I say?", media=[
        pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=slow, filename="slow.wav")])
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=BOUND).answer
    assert answer.route.provider == "gemini"
    (note,) = [n for n in answer.route.notes if "its bridge refused" in n]
    assert note.startswith("openai/gpt-4o failed: its bridge refused an audio (PROVIDER_BAD_REQUEST: "), note
    assert note.endswith("as a later one takes the audio itself"), note
