"""Kept bridged texts reused across requests and turns, whatever bridge made them: the embedded hybrid
policy with the cloud fakes, a transcript paid for once, and the route naming the bridge that made it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc_helpers import text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for

from router.bridging import media_prefix, memo_key
from router.routing import Bridge, Target
from router.sessions import SessionStore, StoredBridges
from router.types import Media, Message, Modality, Options, Part, Request, Role, Transcript, Utterance
from tests.fakes.openai import error_body as openai_error

TRANSCRIPTIONS = "/v1/audio/transcriptions"
WHISPER_TOO_LARGE = openai_error("Maximum content size limit (26214400) exceeded (31457280 bytes read)",
                                 "server_error")
DIARIZED = pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True)
ASSEMBLYAI_BRIDGE = "audio->transcript via assemblyai/best"
WHISPER_BRIDGE = "audio->transcript via openai/whisper-1"


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def upload_wav(daemon, seconds: float = 5.0, filename: str = "standup.wav") -> pb.Media:
    """A recording sent with UploadMedia, as a Media naming it by its id."""
    data = wav(seconds)
    metadata = pb.UploadMetadata(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename=filename,
                                 size_bytes=len(data))
    chunks = [pb.UploadMediaRequest(metadata=metadata), pb.UploadMediaRequest(chunk=data)]
    media_id = daemon.stub.UploadMedia(iter(chunks), timeout=60).media_id
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", media_id=media_id, filename=filename)


def route_of(answer: pb.Answer) -> tuple[str, str]:
    return answer.route.rule, f"{answer.route.provider}/{answer.route.model}"


def sent_texts(fakes) -> list[str]:
    """The text parts of the last message gpt-4o got."""
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]
    return [p.text for p in fakes["openai"].parts(sent) if p.kind == "text"]


def transcribe_with_speakers(daemon, fakes, audio: pb.Media, **options) -> pb.Answer:
    """A one-off diarized transcription of ``audio`` (AssemblyAI), whose transcript is kept."""
    answer = generate(daemon, text_request("", media=[audio], options=pb.Options(
        task=pb.TASK_TRANSCRIBE, diarization=True, **options)))
    assert route_of(answer) == ("diarization", "assemblyai/best")
    assert len(fakes["assemblyai"].created) == 1
    return answer


def test_a_kept_diarized_transcript_of_uploaded_audio_serves_a_later_request(daemon, fakes) -> None:
    """A diarized transcription keeps AssemblyAI's transcript; a new session asking gpt-4o (which cannot
    hear) about the same uploaded recording reuses it: Whisper, first in `bridges.audio`, is not paid."""
    audio = upload_wav(daemon)
    transcribe_with_speakers(daemon, fakes, audio)
    asked = generate(daemon, text_request("Summarise this recording", media=[audio], session_id="later"))
    assert route_of(asked) == ("general", "openai/gpt-4o")
    assert fakes["openai"].uploads() == [], "the recording was transcribed a second time, by Whisper"
    assert len(fakes["assemblyai"].created) == 1
    assert [s.purpose for s in asked.route.steps] == ["answer"]
    assert list(asked.route.bridges) == [ASSEMBLYAI_BRIDGE]
    assert any("reused the kept text of 1 media" in n for n in asked.route.notes)
    assert any(t.startswith("[Audio transcript] standup.wav") and "Speaker A:" in t for t in sent_texts(fakes))
    assert asked.transcript.text, "the kept transcript is still passed on with the answer"

    # and no session at all: the same
    plain = generate(daemon, text_request("What was decided?", media=[audio]))
    assert fakes["openai"].uploads() == [] and list(plain.route.bridges) == [ASSEMBLYAI_BRIDGE]


def test_a_kept_transcript_is_reused_before_a_bridge_that_would_refuse_the_file(daemon, fakes) -> None:
    """Whisper would refuse the file (too large): the kept AssemblyAI text is taken first, so Whisper is
    not tried (and failed) at all."""
    audio = upload_wav(daemon)
    transcribe_with_speakers(daemon, fakes, audio)
    fakes["openai"].fail_next(413, WHISPER_TOO_LARGE, path=TRANSCRIPTIONS)
    asked = generate(daemon, text_request("Summarise this recording", media=[audio]))
    assert route_of(asked) == ("general", "openai/gpt-4o")
    assert [r.path for r in fakes["openai"].requests if r.path == TRANSCRIPTIONS] == [], "Whisper was tried"
    assert not any("whisper-1 failed" in n for n in asked.route.notes), asked.route.notes
    assert len(fakes["assemblyai"].created) == 1 and list(asked.route.bridges) == [ASSEMBLYAI_BRIDGE]
    assert [(a.provider, a.model, a.ok) for a in asked.route.attempts] == [("openai", "gpt-4o", True)]


def test_a_kept_transcript_in_another_language_is_not_taken(daemon, fakes) -> None:
    """A request naming a language takes only a text kept in that language: one kept in French serves a
    French question, not one asking for English, which is transcribed again (exactly keyed, as before)."""
    audio = upload_wav(daemon)
    transcribe_with_speakers(daemon, fakes, audio, language="fr")
    french = generate(daemon, text_request("Résume cet enregistrement", media=[audio],
                                           options=pb.Options(language="fr")))
    assert fakes["openai"].uploads() == [] and list(french.route.bridges) == [ASSEMBLYAI_BRIDGE]
    english = generate(daemon, text_request("Summarise this recording", media=[audio],
                                            options=pb.Options(language="en")))
    assert [u.field("language") for u in fakes["openai"].uploads()] == ["en"]
    assert list(english.route.bridges) == [WHISPER_BRIDGE]
    assert len(fakes["assemblyai"].created) == 1


def test_a_kept_transcript_for_another_speaker_count_is_not_taken(daemon, fakes) -> None:
    """speakers_expected changes a diarized transcript: a request naming 3 speakers does not take the text
    diarized with the count guessed; a request naming none does."""
    audio = upload_wav(daemon)
    transcribe_with_speakers(daemon, fakes, audio)
    three = generate(daemon, text_request("Who said what?", media=[audio],
                                          options=pb.Options(diarization=True, speakers_expected=3)))
    assert list(three.route.bridges) == [ASSEMBLYAI_BRIDGE]
    assert [r.get("speakers_expected") for r in fakes["assemblyai"].created] == [None, 3]
    guessed = generate(daemon, text_request("Who said what?", media=[audio], options=pb.Options(diarization=True)))
    assert list(guessed.route.bridges) == [ASSEMBLYAI_BRIDGE] and len(fakes["assemblyai"].created) == 2
    assert fakes["openai"].uploads() == []


def test_a_follow_up_names_the_bridge_that_made_the_kept_text(daemon, fakes) -> None:
    """Turn 1 is a diarized transcription (AssemblyAI); turn 2 goes to gpt-4o with turn 1's audio bridged
    from the kept text: its route names AssemblyAI, which made it, not Whisper, which was not called."""
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0), filename="call.wav")
    first = generate(daemon, text_request("", media=[audio], session_id="s", options=DIARIZED))
    assert route_of(first) == ("diarization", "assemblyai/best")
    second = generate(daemon, text_request("Who agreed to what?", session_id="s"))
    assert route_of(second) == ("general", "openai/gpt-4o")
    assert [s.purpose for s in second.route.steps] == ["answer"] and fakes["openai"].uploads() == []
    assert list(second.route.bridges) == [ASSEMBLYAI_BRIDGE]
    assert any("reused the kept text of 1 media" in n for n in second.route.notes)


def test_a_follow_up_names_the_bridge_of_a_text_kept_by_a_bridge_after_a_failure(daemon, fakes) -> None:
    """Turn 1's Whisper refuses the file and AssemblyAI bridges it; turn 2's route names AssemblyAI."""
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0), filename="call.wav")
    fakes["openai"].fail_next(413, WHISPER_TOO_LARGE, path=TRANSCRIPTIONS)
    first = generate(daemon, text_request("What was said?", media=[audio], session_id="s"))
    assert list(first.route.bridges) == [ASSEMBLYAI_BRIDGE]
    second = generate(daemon, text_request("And then?", session_id="s"))
    assert [s.purpose for s in second.route.steps] == ["answer"]
    assert list(second.route.bridges) == [ASSEMBLYAI_BRIDGE]
    assert len(fakes["openai"].uploads()) == 1 and len(fakes["assemblyai"].created) == 1


# -- the memo itself --------------------------------------------------------------------------------------


def test_the_stored_memo_gives_the_key_of_what_it_recalls_any(tmp_path: Path) -> None:
    """recall_any returns the key of the text it found (its bridge can be read back from it), only a
    diarized one when asked, and only one its ``accept`` takes."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    memo = StoredBridges(store)
    clip = Media(Modality.AUDIO, "audio/wav", media_id="abc")
    request = Request([Message(Role.USER, [Part(media=clip)])])
    heard = Transcript("hi", [Utterance("hi", 0.0, 1.0, "A")])
    plain_key = memo_key(clip, request, Bridge(Modality.AUDIO, Target("openai", "whisper-1")),
                         Options(language="en"))
    diarized_key = memo_key(clip, request, Bridge(Modality.AUDIO, Target("assemblyai", "best")),
                            Options(diarization=True))
    assert plain_key is not None and diarized_key is not None
    prefix = media_prefix(clip, request)
    assert prefix is not None

    async def scenario() -> None:
        memo.remember(plain_key, "hi", None)
        memo.remember(diarized_key, "Speaker A: hi", heard)
        assert await memo.recall_any(prefix, True) == (diarized_key, "Speaker A: hi", heard)
        assert await memo.recall_any(prefix, False, accept=lambda key: key.endswith("|language=en")) == (
            plain_key, "hi", None)
        assert await memo.recall_any(prefix, True, accept=lambda key: key.endswith("|language=en")) is None
        assert await memo.recall_any("other|audio|", False) is None

    try:
        asyncio.run(scenario())
    finally:
        store.close()
