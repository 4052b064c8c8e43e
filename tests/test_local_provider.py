"""The ``local`` provider called directly on real media: PDF text, OCR, speech to text, video.

Speech comes from espeak-ng (voice en-us+f2, see tests/fakes/local.py) and is
recognised by pocketsphinx's shipped en-US model. Word error rates measured on
this machine: the pangram 0.22 (it hears "the weak brown fox jumped over the
lazy dog"); "please call me tomorrow morning at nine" 0.0-0.14 in every
format. The bounds below leave room for that and no more than about one
extra error.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
import threading
import time
import wave
from collections.abc import Iterator

import pytest
from media_factory import repeated_wav
from mmrouter_local import LocalProvider, register_providers
from mmrouter_local.pool import JobCancelled, WorkerPool, raise_if_cancelled
from mmrouter_local.provider import HEADER

from router import (
    FEATURE_DIARIZATION,
    FEATURE_EXTRACTION_ONLY,
    OUTPUT_TRANSCRIPT,
    CallContext,
    Media,
    Message,
    Modality,
    Options,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
    Transcript,
    TranscriptReady,
    UsageReport,
)
from router.errors import ConfigError, ProviderBadRequest, ProviderInputTooLarge, ProviderUnsupportedInput
from router.testing import ProviderContract, collect
from tests.fakes import local as media

needs_espeak = pytest.mark.skipif(media.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

PANGRAM = "the quick brown fox jumps over the lazy dog"
PANGRAM_MAX_WER = 0.4
CALL = "please call me tomorrow morning at nine"
CALL_MAX_WER = 0.3


@pytest.fixture(scope="module")
def local() -> Iterator[LocalProvider]:
    """One provider for the module, so the OCR and speech models load once; closed at the end (its speech
    decoder's process ends then, not with the test worker)."""
    provider = LocalProvider(workers=2, frame_interval=1.0)
    yield provider
    asyncio.run(provider.aclose())


def ask(*media_items: Media, question: str = "What does it say?", task: Task = Task.AUTO) -> Request:
    parts = ([Part(text=question)] if question else []) + [Part(media=m) for m in media_items]
    return Request([Message(Role.USER, parts)], Options(task=task))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def transcripts_of(events: list) -> list:
    return [e.transcript for e in events if isinstance(e, TranscriptReady)]


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:  # espeak-ng's header does not hold the length: count the frames
        frames = w.readframes(w.getnframes())
        return len(frames) / (w.getsampwidth() * w.getnchannels() * w.getframerate())


class TestLocalContract(ProviderContract):
    @pytest.fixture
    def provider(self, local: LocalProvider) -> LocalProvider:
        return local


def test_model_declares_extraction_and_no_diarization(local: LocalProvider) -> None:
    (model,) = local.models
    assert local.name == "local" and model.name == "extract"
    assert model.inputs == frozenset(Modality)
    assert OUTPUT_TRANSCRIPT in model.outputs
    assert FEATURE_EXTRACTION_ONLY in model.features
    assert FEATURE_DIARIZATION not in model.features
    assert model.price.input_per_mtok == model.price.output_per_mtok == model.price.per_audio_hour == 0


def test_register_hook_reads_settings_and_rejects_bad_ones() -> None:
    registered: list = []
    register_providers(registered.append, {"workers": 3, "ocr_frame_interval_seconds": 0.5, "max_audio_seconds": 90})
    (provider,) = registered
    assert provider.pool.workers == 3 and provider.extractor.frame_interval == 0.5
    assert provider.extractor.max_audio_seconds == 90
    with pytest.raises(ConfigError, match=r"providers\.local\.workers"):
        register_providers(registered.append, {"workers": 0})
    with pytest.raises(ConfigError, match=r"providers\.local\.max_audio_seconds"):
        register_providers(registered.append, {"max_audio_seconds": 0})
    with pytest.raises(ConfigError, match="ocr_frame_interval_seconds"):
        register_providers(registered.append, {"ocr_frame_interval_seconds": "often"})
    for key, value in (("api_key", "sk-1"), ("base_url", "http://x"), ("timeout", 5)):  # keys it has no use for
        with pytest.raises(ConfigError, match=rf"providers\.local\.{key}: .*does not use it"):
            register_providers(registered.append, {key: value})


def encrypted_pdf() -> bytes:
    """A one-page PDF that opens only with a user password."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(media.pdf([["Secret plans"]]))))
    writer.encrypt("user-password")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def test_the_first_text_comes_with_the_first_media_extracted(local: LocalProvider) -> None:
    """The header was sent before any media was read, so a failure came after text and the router (which
    falls back only before any text) could not try the rule's fallback in a stream. Now nothing is sent
    before the first media is extracted: an unreadable one fails with no event sent; a readable one comes
    with the header in the first text, each later media in a text of its own."""
    ctx = CallContext(request_id="first-text", deadline=time.monotonic() + 60)
    events: list = []
    secret = Media(Modality.DOCUMENT, "application/pdf", data=encrypted_pdf(), filename="secret.pdf")
    with pytest.raises(ProviderBadRequest, match=r"cannot read secret\.pdf: the PDF is encrypted"):
        async for event in local.generate(ask(secret), local.models[0], ctx):
            events.append(event)
    assert events == []
    first = Media(Modality.DOCUMENT, "application/pdf", data=media.pdf([["Alpha page"]]), filename="a.pdf")
    second = Media(Modality.DOCUMENT, "application/pdf", data=media.pdf([["Beta page"]]), filename="b.pdf")
    texts = [e.text for e in await collect(local, ask(first, second), local.models[0]) if isinstance(e, TextDelta)]
    assert len(texts) == 2 and texts[0].startswith(HEADER), texts
    assert texts[0].endswith("\n\n[PDF a.pdf, page 1]\nAlpha page") and texts[1] == "\n\n[PDF b.pdf, page 1]\nBeta page"


async def test_pdf_text_page_by_page(local: LocalProvider) -> None:
    pdf = media.pdf([["Quarterly report", "Revenue grew by ten percent"], ["Appendix with zebra tables"]])
    events = await collect(local, ask(Media(Modality.DOCUMENT, "application/pdf", data=pdf,
                                            filename="report.pdf")), local.models[0])
    text = text_of(events)
    assert text.startswith(HEADER)
    assert "not answered" in text
    page1 = text.index("[PDF report.pdf, page 1]")
    page2 = text.index("[PDF report.pdf, page 2]")
    assert page1 < text.index("Revenue grew by ten percent") < page2 < text.index("Appendix with zebra tables")
    assert isinstance(events[-1], UsageReport) and events[-1].usage.cost_usd == 0


@pytest.mark.parametrize("mime", ["text/markdown; charset=utf-8", "text/csv", "Text/Plain"])
async def test_text_documents_are_given_as_they_are(local: LocalProvider, mime: str) -> None:
    notes = "# Plan\nShip the zebra release, café included.\n"
    events = await collect(local, ask(Media(Modality.DOCUMENT, mime, data=notes.encode(), filename="plan.md")),
                           local.models[0])
    assert "[Document plan.md]" in text_of(events) and notes.strip() in text_of(events)


async def test_a_pdf_with_mime_parameters_is_read_as_a_pdf(local: LocalProvider) -> None:
    pdf = media.pdf([["Parameters do not change the type"]])
    events = await collect(local, ask(Media(Modality.DOCUMENT, "Application/PDF; version=1.4", data=pdf,
                                            filename="p.pdf")), local.models[0])
    assert "Parameters do not change the type" in text_of(events)


async def test_image_ocr_in_reading_order_with_format_and_size(local: LocalProvider) -> None:
    image = media.text_image([((20, 20), "Invoice number 4711"), ((20, 100), "Total due 42 EUR"),
                              ((380, 170), "right"), ((20, 170), "left")])
    events = await collect(local, ask(Media(Modality.IMAGE, "image/png", data=media.encode_image(image),
                                            filename="scan.png")), local.models[0])
    text = text_of(events)
    assert "[Image scan.png: PNG 640x240]" in text
    body = text.split("[Image scan.png: PNG 640x240]\n", 1)[1]
    lines = [line.replace(" ", "") for line in body.strip().splitlines()]
    assert lines == ["Invoicenumber4711", "Totaldue42EUR", "leftright"], body


@needs_espeak
async def test_transcribe_wav_within_word_error_bound(local: LocalProvider) -> None:
    wav = media.speech_wav(PANGRAM)
    events = await collect(local, ask(Media(Modality.AUDIO, "audio/wav", data=wav), question=""),
                           local.models[0])
    (transcript,) = transcripts_of(events)
    assert media.word_error_rate(PANGRAM, transcript.text) <= PANGRAM_MAX_WER, transcript.text
    assert text_of(events) == ""  # the router makes the answer's text of the transcripts (one per recording)
    assert 2.5 < transcript.duration_seconds < 4.5
    assert transcript.utterances and transcript.words
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start < w.end <= transcript.duration_seconds + 0.3 for w in transcript.words)
    assert all(w.speaker == "" for w in transcript.words)  # no diarization
    assert {"brown", "fox", "lazy", "dog"} <= {w.text for w in transcript.words}
    (usage,) = [e for e in events if isinstance(e, UsageReport)]
    assert usage.usage.audio_seconds == transcript.duration_seconds


@needs_espeak
async def test_transcribes_the_newest_messages_clips_each_with_its_own_times(local: LocalProvider) -> None:
    """In a session the earlier turns' media come first; they were transcribed when sent. The newest
    message's clips are transcribed in order, a transcript each with its own times, which merged (as the
    router merges them) have the second clip's times shifted."""
    earlier, first, second = (media.speech_wav(t) for t in ("one two three four five", CALL, PANGRAM))
    request = Request([
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=earlier))]),
        Message(Role.ASSISTANT, [Part(text="one two three four five")]),
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=first)),
                            Part(media=Media(Modality.AUDIO, "audio/wav", data=second))]),
    ], Options(task=Task.TRANSCRIBE))
    events = await collect(local, request, local.models[0])
    own = transcripts_of(events)
    assert [t.duration_seconds for t in own] == pytest.approx([wav_seconds(first), wav_seconds(second)], abs=0.05)
    transcript = Transcript.merged(own)
    length = wav_seconds(first) + wav_seconds(second)
    assert transcript.duration_seconds == pytest.approx(length, abs=0.05)
    (usage,) = [e.usage for e in events if isinstance(e, UsageReport)]
    assert usage.audio_seconds == transcript.duration_seconds
    assert media.word_error_rate(f"{CALL} {PANGRAM}", transcript.text) <= PANGRAM_MAX_WER, transcript.text
    assert any(w.start >= wav_seconds(first) for w in transcript.words)  # the second clip's words come after
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)


async def test_extraction_in_a_session_extracts_only_this_turns_media(local: LocalProvider) -> None:
    """The history's audio is not decoded again: its text went with its own turn's answer, which the
    session keeps; a follow-up with no media says so."""
    earlier, now = (media.speech_wav(t) for t in ("one two three four five", CALL))
    request = Request([
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=earlier)), Part(text="what is said?")]),
        Message(Role.ASSISTANT, [Part(text="numbers")]),
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=now)), Part(text="and here?")]),
    ], Options(task=Task.CHAT), history_length=2)
    events = await collect(local, request, local.models[0])
    (transcript,) = transcripts_of(events)
    assert transcript.duration_seconds == pytest.approx(wav_seconds(now), abs=0.05)
    assert "five" not in text_of(events).lower()  # the earlier clip is not extracted again
    (usage,) = [e.usage for e in events if isinstance(e, UsageReport)]
    assert usage.audio_seconds == pytest.approx(wav_seconds(now), abs=0.05)

    follow_up = Request([*request.messages, Message(Role.ASSISTANT, [Part(text="a call")]),
                         Message(Role.USER, [Part(text="thanks")])], Options(task=Task.CHAT), history_length=4)
    events = await collect(local, follow_up, local.models[0])
    assert not transcripts_of(events) and "[No new media to extract]" in text_of(events)


def scanned_pdf(pages: int) -> bytes:
    """A PDF whose pages are images only (no text layer), as a scanner makes them."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    image = ImageReader(io.BytesIO(media.encode_image(media.text_image([((20, 20), "scanned page")]))))
    out = io.BytesIO()
    doc = canvas.Canvas(out)
    for _ in range(pages):
        doc.drawImage(image, 72, 500, width=320, height=120)
        doc.showPage()
    doc.save()
    return out.getvalue()


async def test_a_cancelled_scan_ocr_stops_at_the_next_page_and_closing_the_pool_stops_jobs() -> None:
    from mmrouter_local.pdf import iter_pages

    pool = WorkerPool(1)
    first, read = threading.Event(), []

    def slow_ocr(image: bytes) -> list[str]:
        first.set()
        read.append(image)
        time.sleep(0.05)
        return ["text"]

    task = asyncio.ensure_future(pool.run(lambda: list(iter_pages(scanned_pdf(40), slow_ocr))))
    await asyncio.to_thread(first.wait, 10)
    task.cancel()
    for _ in range(200):  # the job ends on its own thread: wait for it, bounded
        if pool.cancelled_jobs:
            break
        await asyncio.sleep(0.05)
    assert pool.cancelled_jobs == 1 and len(read) < 5, len(read)

    def endless() -> None:
        while True:
            raise_if_cancelled()
            time.sleep(0.01)

    running = asyncio.ensure_future(pool.run(endless))
    await asyncio.sleep(0.1)
    pool.close()  # shutting down: a running job stops too, so the process can exit
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(running, 10)


async def test_a_cancelled_pool_job_stops_at_its_next_check() -> None:
    pool = WorkerPool(1)
    started, steps = threading.Event(), []

    def job() -> None:
        started.set()
        for _ in range(2000):
            raise_if_cancelled()
            steps.append(1)
            time.sleep(0.005)

    task = asyncio.ensure_future(pool.run(job))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pool.run(lambda: "next job") == "next job"  # the one worker is free again
    assert pool.cancelled_jobs == 1
    assert len(steps) < 2000
    pool.close()


@needs_espeak
@pytest.mark.parametrize("paused", [True, False], ids=["many-utterances", "one-long-utterance"])
async def test_a_cancelled_transcription_stops_and_frees_the_decoder(paused: bool) -> None:
    """A cancelled (or timed-out) call's job stops between utterances, and between the pieces of one long
    utterance (speech without pauses), so the next transcription does not wait for it."""
    provider = LocalProvider(workers=2)
    short = media.speech_wav(CALL)
    if paused:
        long = repeated_wav(media.speech_wav(PANGRAM), 30)
    else:
        long = media.speech_wav(", ".join([PANGRAM] * 30))
    asr = provider.extractor.asr
    try:
        await collect(provider, ask(Media(Modality.AUDIO, "audio/wav", data=short), task=Task.TRANSCRIBE),
                      provider.models[0])  # the decoder is loaded
        before = asr.pieces_decoded
        request = ask(Media(Modality.AUDIO, "audio/wav", data=long), task=Task.TRANSCRIBE)
        long_call = asyncio.ensure_future(collect(provider, request, provider.models[0]))
        while asr.pieces_decoded == before and not long_call.done():  # the long job holds the decoder
            await asyncio.sleep(0.01)
        long_call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_call
        events = await collect(provider, ask(Media(Modality.AUDIO, "audio/wav", data=short), task=Task.TRANSCRIBE),
                               provider.models[0])
        (transcript,) = transcripts_of(events)
        assert media.word_error_rate(CALL, transcript.text) <= CALL_MAX_WER, transcript.text
        # The long job stopped when its call was cancelled, long before all of its audio was decoded
        # (30 utterances, or about 4 pieces a second of one long utterance).
        assert provider.pool.cancelled_jobs == 1
        assert asr.pieces_decoded - before < 15
    finally:
        await provider.aclose()


@needs_espeak
def test_speech_without_pauses_is_held_and_decoded_in_bounded_pieces(monkeypatch) -> None:
    """Five minutes of speech with no pause (one VAD segment) reach the decoder in pieces of at most
    MAX_SEGMENT_BYTES, one after another with no gap, and memory stays flat (pocketsphinx's Segmenter
    buffered the whole segment: 9.6 MB here, 115 MB an hour). The audio ends mid-speech on a whole number of VAD frames,
    where pocketsphinx's Segmenter dropped the last segment: none of it is lost. The decoder is stubbed
    (decoding five minutes takes minutes); the next test decodes real pieces."""
    import tracemalloc

    from media_factory import looped_pcm
    from mmrouter_local import asr as asr_module
    from mmrouter_local.audio import BYTES_PER_SECOND, iter_pcm16k

    clip = b"".join(iter_pcm16k(media.speech_wav(", ".join([PANGRAM] * 5))))
    seconds = 300  # 10,000 VAD frames of 30 ms
    decoded: list[tuple[float, int]] = []
    recognizer = asr_module.SpeechRecognizer()
    monkeypatch.setattr(recognizer, "_load", lambda: None)
    monkeypatch.setattr(recognizer, "_decode", lambda _decoder, pcm, offset: decoded.append((offset, len(pcm))) or [])
    tracemalloc.start()
    try:
        transcript = recognizer.transcribe(looped_pcm(clip, seconds))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cap = asr_module.MAX_SEGMENT_BYTES
    assert transcript.duration_seconds == seconds
    assert peak < 4 * cap, peak  # a piece and its copy, not the whole segment
    assert max((size for _, size in decoded), default=0) <= cap, decoded
    assert recognizer.largest_segment_bytes <= cap
    assert sum(size for _, size in decoded) >= (seconds - 1) * BYTES_PER_SECOND  # all of it but a leading pause
    for (offset, size), (next_offset, _) in itertools.pairwise(decoded):
        assert next_offset == pytest.approx(offset + size / BYTES_PER_SECOND)


@needs_espeak
def test_speech_cut_into_pieces_is_still_transcribed_with_times(monkeypatch) -> None:
    """Speech without pauses longer than the cap (lowered to 3 s here) is decoded piece by piece: one
    utterance per piece, one after another, each word inside its utterance. Accuracy holds (WER 0.30
    measured; the same audio decoded as one 9.7 s utterance: 0.63)."""
    from mmrouter_local import asr as asr_module
    from mmrouter_local.audio import iter_pcm16k

    cap = 3 * 32000
    monkeypatch.setattr(asr_module, "MAX_SEGMENT_BYTES", cap)
    recognizer = asr_module.SpeechRecognizer()
    transcript = recognizer.transcribe(iter_pcm16k(repeated_wav(media.speech_wav(PANGRAM), 3, pause=0)))
    assert len(transcript.utterances) >= 3, transcript.utterances
    assert recognizer.largest_segment_bytes <= cap
    assert media.word_error_rate(" ".join([PANGRAM] * 3), transcript.text) <= PANGRAM_MAX_WER, transcript.text
    for before, after in itertools.pairwise(transcript.utterances):
        assert after.start == pytest.approx(before.end, abs=0.01)
    for utterance in transcript.utterances:
        inside = [w for w in transcript.words if utterance.start <= w.start and w.end <= utterance.end + 0.01]
        assert " ".join(w.text for w in inside) == utterance.text
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start < w.end <= transcript.duration_seconds + 0.3 for w in transcript.words)


@needs_espeak
def test_a_transcript_does_not_depend_on_what_earlier_calls_decoded() -> None:
    """Speech without pauses longer than one batch-normalised call (FULL_UTT_BYTES) is decoded with the
    decoder's running acoustic normalisation. A recognizer that decoded other speech first gives the same
    transcript of it as a fresh one: before the decoder was reset per call, the same audio gave three
    different texts after three different histories."""
    from mmrouter_local import asr as asr_module
    from mmrouter_local.audio import iter_pcm16k

    long = repeated_wav(media.speech_wav(PANGRAM), 2, pause=0)
    assert len(b"".join(iter_pcm16k(long))) > asr_module.FULL_UTT_BYTES  # the running normalisation is used
    other = media.speech_wav(", ".join([CALL] * 3))

    def transcript_after(*earlier: bytes) -> tuple:
        recognizer = asr_module.SpeechRecognizer()
        for clip in earlier:
            recognizer.transcribe(iter_pcm16k(clip))
        transcript = recognizer.transcribe(iter_pcm16k(long))
        return transcript.text, transcript.words

    fresh = transcript_after()
    assert fresh[0]
    assert transcript_after(other) == fresh
    assert transcript_after(long, other) == fresh


@needs_espeak
@pytest.mark.parametrize(("container", "codec", "mime", "rate"), [
    ("mp3", "libmp3lame", "audio/mpeg", 44100),
    ("ogg", "libopus", "audio/ogg", 48000),
    ("ipod", "aac", "audio/mp4", 44100),
    ("flac", "flac", "audio/flac", 44100),
])
async def test_compressed_audio_formats_decode(local: LocalProvider, container: str, codec: str,
                                               mime: str, rate: int) -> None:
    data = media.transcode(media.speech_wav(CALL), container, codec, rate)
    assert not data.startswith(b"RIFF")
    events = await collect(local, ask(Media(Modality.AUDIO, mime, data=data), task=Task.TRANSCRIBE),
                           local.models[0])
    (transcript,) = transcripts_of(events)
    assert media.word_error_rate(CALL, transcript.text) <= CALL_MAX_WER, transcript.text


@needs_espeak
async def test_video_audio_track_and_frame_text_with_times(local: LocalProvider) -> None:
    video = media.video([(2.0, "HELLO VIDEO"), (2.0, "SECOND SCENE")],
                        media.speech_wav("one two three four five"))
    events = await collect(local, ask(Media(Modality.VIDEO, "video/mp4", data=video, filename="demo.mp4")),
                           local.models[0])
    (transcript,) = transcripts_of(events)
    assert media.word_error_rate("one two three four five", transcript.text) <= 0.2, transcript.text
    text = text_of(events)
    assert text.startswith(HEADER)
    assert "[Video demo.mp4: audio transcript," in text
    # Frames every second (frame_interval=1.0): equal text merges into one span.
    assert "[Video demo.mp4 frames at 0.0s-1.0s]\nHELLO VIDEO" in text
    assert "[Video demo.mp4 frames at 2.0s-3.0s]\nSECOND SCENE" in text


async def test_silent_webm_video_frames_only(local: LocalProvider) -> None:
    video = media.video([(1.0, "ONLY PICTURES")], None, container="webm")
    events = await collect(local, ask(Media(Modality.VIDEO, "video/webm", data=video)), local.models[0])
    text = text_of(events)
    assert "ONLY PICTURES" in text
    assert "no audio track" in text and not transcripts_of(events)  # no sound: no (empty) transcript


async def test_text_only_chat_is_labelled_and_not_answered(local: LocalProvider) -> None:
    events = await collect(local, ask(question="What is the capital of France?"), local.models[0])
    text = text_of(events)
    assert text.startswith(HEADER) and "not answered" in text
    assert "Paris" not in text


async def test_transcribe_without_audio_is_a_bad_request(local: LocalProvider) -> None:
    pdf = media.pdf([["x"]])
    with pytest.raises(ProviderBadRequest, match="transcribe needs audio or video"):
        await collect(local, ask(Media(Modality.DOCUMENT, "application/pdf", data=pdf), task=Task.TRANSCRIBE),
                      local.models[0])


@pytest.mark.parametrize(("item", "message"), [
    (Media(Modality.AUDIO, "audio/mpeg", data=b"not really an mp3", filename="broken.mp3"), "cannot read broken.mp3"),
    (Media(Modality.DOCUMENT, "application/pdf", data=b"%PDF-1.4 garbage", filename="bad.pdf"), "cannot read bad.pdf"),
    (Media(Modality.IMAGE, "image/png", data=b"\x89PNG nope", filename="bad.png"), "cannot read bad.png"),
])
async def test_unreadable_media_is_invalid_argument(local: LocalProvider, item: Media, message: str) -> None:
    with pytest.raises(ProviderBadRequest, match=message):
        await collect(local, ask(item), local.models[0])


@pytest.mark.parametrize(("item", "task"), [
    (Media(Modality.IMAGE, "image/png", url="https://example.com/a.png"), Task.AUTO),
    (Media(Modality.AUDIO, "audio/mpeg", url="https://example.com/talk.mp3"), Task.AUTO),
    (Media(Modality.AUDIO, "audio/mpeg", url="https://example.com/talk.mp3?sig=SECRET"), Task.TRANSCRIBE),
], ids=["image", "audio", "transcribe"])
async def test_media_given_by_url_is_refused_retryably(local: LocalProvider, item: Media, task: Task) -> None:
    """Offline, a URL is a form local cannot take: UNSUPPORTED_INPUT, so the route's next target or bridge
    (a provider that fetches URLs) is tried. The message names the URL without its query (a signed URL's
    token would be in the route's attempts and the log)."""
    with pytest.raises(ProviderUnsupportedInput, match="is given by URL; the local provider works offline") as refused:
        await collect(local, ask(item, task=task), local.models[0])
    assert refused.value.retryable
    assert "https://example.com/" in refused.value.message and "SECRET" not in refused.value.message


@pytest.mark.parametrize("keep", ["half", "header"])
@pytest.mark.parametrize("stored", [False, True], ids=["inline", "stored"])
async def test_a_wav_file_cut_short_is_invalid_argument(local: LocalProvider, tmp_path, keep: str, stored: bool) -> None:
    """A WAV whose header announces more sound than the file holds (a recording cut off) was transcribed as far
    as it went, or as an empty transcript for its header alone: ffmpeg takes its length from the file's size."""
    from media_factory import wav

    whole = wav(1.0)
    data = whole[:len(whole) // 2] if keep == "half" else whole[:44]
    item = Media(Modality.AUDIO, "audio/wav", data=data, filename="cut.wav")
    if stored:
        (tmp_path / "cut.wav").write_bytes(data)
        item = Media(Modality.AUDIO, "audio/wav", path=tmp_path / "cut.wav", filename="cut.wav")
    present = len(data) - 44
    with pytest.raises(ProviderBadRequest, match=rf"cannot read cut\.wav: the WAV file is cut short: its header "
                                                 rf"announces 32,000 bytes of sound, {present:,} are there"):
        await collect(local, ask(item, task=Task.TRANSCRIBE), local.models[0])


@pytest.mark.parametrize("placeholder", [0, 0x7FFFF000, 0xFFFFFFFF])
async def test_a_wav_file_whose_writer_did_not_know_its_length_is_read(local: LocalProvider, placeholder: int) -> None:
    """A placeholder data size (ffmpeg writing to a pipe puts 0xFFFFFFFF, espeak-ng 0x7FFFF000) is not a cut file."""
    from media_factory import wav

    data = bytearray(wav(1.0))
    data[40:44] = struct.pack("<I", placeholder)
    events = await collect(local, ask(Media(Modality.AUDIO, "audio/wav", data=bytes(data), filename="pipe.wav"),
                                      task=Task.TRANSCRIBE), local.models[0])
    (transcript,) = transcripts_of(events)
    assert transcript.duration_seconds == 1.0


async def test_event_loop_keeps_serving_while_ocr_runs(local: LocalProvider) -> None:
    big = media.text_image([((40, 40 + 60 * i), f"Line number {i} of a long page") for i in range(12)],
                           size=(1600, 900), font_size=40)
    request = ask(Media(Modality.IMAGE, "image/png", data=media.encode_image(big)))
    await collect(local, ask(Media(Modality.IMAGE, "image/png", data=media.encode_image(media.text_image([])))),
                  local.models[0])  # the OCR engine is loaded before we measure
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.ensure_future(ticker())
    started = time.monotonic()
    ctx = CallContext("loop-test", deadline=time.monotonic() + 60)
    events = [e async for e in local.generate(request, local.models[0], ctx)]
    elapsed = time.monotonic() - started
    done.set()
    await tick_task
    assert text_of(events).count("of a long page") >= 10
    assert elapsed > 0.3, "the OCR was too quick to show anything"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= elapsed / 0.05, f"{len(ticks)} ticks in {elapsed:.2f}s"
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.2f}s"


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC
    return bytes(data)


async def test_an_image_too_large_to_decode_is_refused_before_decoding(local: LocalProvider) -> None:
    """A 100-byte PNG may declare 13,300 x 13,300 pixels: decoding it for OCR took 4 GB."""
    request = ask(Media(Modality.IMAGE, "image/png", data=png_declaring(8000, 6000)), question="read it")
    with pytest.raises(ProviderBadRequest, match="8000x6000 pixels, over the 40,000,000"):
        await collect(local, request, local.models[0])


async def test_a_long_text_document_is_read_up_to_a_bound(local: LocalProvider, monkeypatch) -> None:
    import mmrouter_local.extract

    monkeypatch.setattr(mmrouter_local.extract, "MAX_TEXT_BYTES", 1000)
    request = ask(Media(Modality.DOCUMENT, "text/plain", data=b"x" * 5000), question="")
    text = text_of(await collect(local, request, local.models[0]))
    assert "x" * 1000 in text and "x" * 1001 not in text
    assert "cut: the local provider reads the first 1000 bytes" in text


async def test_a_text_document_cut_mid_character_and_its_byte_order_mark_leave_no_trace(local: LocalProvider,
                                                                                        monkeypatch) -> None:
    """The bound falls inside a 3-byte character: the cut leaves it out, not a U+FFFD; a UTF-8 byte order
    mark is not text."""
    import mmrouter_local.extract

    monkeypatch.setattr(mmrouter_local.extract, "MAX_TEXT_BYTES", 1000)
    data = "\ufeff".encode() + "あ".encode() * 2000  # 1000 bytes: the BOM and 332 characters and 1 byte
    text = text_of(await collect(local, ask(Media(Modality.DOCUMENT, "text/plain", data=data), question=""),
                                 local.models[0]))
    assert "あ" * 332 in text and "あ" * 333 not in text
    assert "\ufffd" not in text and "\ufeff" not in text
    short = text_of(await collect(local, ask(Media(Modality.DOCUMENT, "text/plain", data=data[:30]), question=""),
                                  local.models[0]))
    assert "あ" * 9 in short and "\ufeff" not in short


def test_video_frames_are_scaled_down_for_ocr_keeping_their_shape() -> None:
    """A 4K frame reaches OCR at 1920x1080 (25 MB of BGR becomes 6 MB); small frames stay as they are."""
    from mmrouter_local.video import iter_sampled_frames

    big = media.video([(1.0, "BIG")], None, fps=1, size=(3840, 2160))
    assert [frame.shape for _, frame in iter_sampled_frames(big, 1.0)] == [(1080, 1920, 3)]
    tall = media.video([(1.0, "TALL")], None, fps=1, size=(1080, 2400))
    assert [frame.shape for _, frame in iter_sampled_frames(tall, 1.0)] == [(1920, 864, 3)]
    small = media.video([(1.0, "SMALL")], None, fps=1, size=(640, 360))
    assert [frame.shape for _, frame in iter_sampled_frames(small, 1.0)] == [(360, 640, 3)]


def test_frame_sampling_jumps_over_gaps_in_time() -> None:
    """The next sample time after a frame is computed, whatever the gap (it used to be stepped to)."""
    from media_factory import mkv_frames_at
    from mmrouter_local.video import iter_sampled_frames

    video = mkv_frames_at([0, 500, 2000, 2100, 9000, 2**50], "T")
    times = [round(t, 1) for t, _ in iter_sampled_frames(video, 2.0)]
    assert times == [0.0, 2.0, 9.0, 1125899906842.6]


async def test_a_video_whose_sound_fails_stops_its_picture_job() -> None:
    """Sound and pictures of a video are two jobs: when one fails, the other is told to stop rather than
    keeping a worker busy for an answer nobody will read."""
    from mmrouter_local.audio import DecodeError

    provider = LocalProvider(workers=2)
    frames_read: list[int] = []

    def broken_sound(*args: object) -> None:
        time.sleep(0.2)
        raise DecodeError("audio decoding failed (corrupt packet)")

    def slow_pictures(*args: object) -> list:
        for i in range(50):  # 5 s of OCR, checking for cancellation between frames
            raise_if_cancelled()
            time.sleep(0.1)
            frames_read.append(i)
        return []

    provider.extractor.audio = broken_sound  # type: ignore[method-assign]
    provider.extractor.video_frames = slow_pictures  # type: ignore[method-assign]
    try:
        video = Media(Modality.VIDEO, "video/mp4", data=b"\0" * 16, filename="v.mp4")
        with pytest.raises(ProviderBadRequest, match="audio decoding failed"):
            await collect(provider, ask(video, task=Task.CHAT), provider.models[0])
        await asyncio.sleep(1.0)
        assert provider.pool.cancelled_jobs == 1
        assert len(frames_read) < 10, "the picture job ran on after the call had failed"
    finally:
        await provider.aclose()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_a_truncated_image_is_invalid_argument(local: LocalProvider, fmt: str) -> None:
    """Pillow opens lazily: a cut PNG or JPEG fails when its pixels are decoded, which is INVALID_ARGUMENT
    (it was 'image file is truncated' from outside the error handling: INTERNAL)."""
    image = media.text_image([((40, 40), "HELLO TRUNCATED WORLD")], size=(800, 200), font_size=40)
    data = media.encode_image(image, fmt)
    item = Media(Modality.IMAGE, f"image/{fmt.lower()}", data=data[: len(data) // 2], filename="cut.img")
    with pytest.raises(ProviderBadRequest, match=r"cannot read cut\.img: .*cannot be decoded"):
        await collect(local, ask(item), local.models[0])


@pytest.fixture(scope="module")
def five_seconds() -> Iterator[LocalProvider]:
    """A provider that transcribes at most 5 s of audio (``max_audio_seconds``), closed at the end."""
    provider = LocalProvider.from_settings({"workers": 1, "max_audio_seconds": 5})
    yield provider
    asyncio.run(provider.aclose())


def long_audio(name: str) -> bytes:
    """The audio ``name`` of the limit tests: 60 s of FLAC silence whose header gives its length or not,
    8 s of a tone as WAV or MP3."""
    from media_factory import constant_flac, mp3_tone, wav

    makers = {"declared.flac": lambda: constant_flac(60), "undeclared.flac": lambda: constant_flac(60, declared=False),
              "tone.wav": lambda: wav(8, rate=8000), "tone.mp3": lambda: mp3_tone(8000, seconds=8)}
    return makers[name]()


OVER_FIVE_SECONDS = "over the 5 seconds (0:00:05) the local provider transcribes"


@pytest.mark.parametrize(("name", "mime", "says"), [
    ("declared.flac", "audio/flac", f"the audio is 60 seconds (0:01:00) long, {OVER_FIVE_SECONDS}"),
    ("undeclared.flac", "audio/flac", "the audio goes on past 5 seconds (0:00:05), the most the local provider "
                                      "transcribes (decoding stopped there)"),
    ("tone.wav", "audio/wav", f"the audio is 8 seconds (0:00:08) long, {OVER_FIVE_SECONDS}"),
    ("tone.mp3", "audio/mpeg", f"the audio is 8 seconds (0:00:08) long, {OVER_FIVE_SECONDS}"),
], ids=["flac-declared", "flac-undeclared", "wav", "mp3"])
async def test_audio_over_max_audio_seconds_is_refused_as_too_large(five_seconds: LocalProvider, name: str,
                                                                    mime: str, says: str) -> None:
    """A 1 MB FLAC of constant subframes can stand for days of audio, all decoded and fed to the recognizer
    until the call's time ran out: audio over the limit is refused from its header, or where decoding
    reaches the limit (a header may not say), with its length and the limit; audio under it is read."""
    item = Media(Modality.AUDIO, mime, data=long_audio(name), filename=name)
    for task in (Task.TRANSCRIBE, Task.AUTO):
        with pytest.raises(ProviderInputTooLarge) as info:
            await collect(five_seconds, ask(item, task=task), five_seconds.models[0])
        assert info.value.reason == "INPUT_TOO_LARGE" and info.value.retryable
        assert info.value.message == (f"local: cannot transcribe {name}: {says}: send a shorter clip, or raise "
                                      "providers.local.max_audio_seconds")
    from media_factory import constant_flac

    short = Media(Modality.AUDIO, "audio/flac", data=constant_flac(4.5, declared=False), filename="short.flac")
    (transcript,) = transcripts_of(await collect(five_seconds, ask(short, task=Task.TRANSCRIBE),
                                                 five_seconds.models[0]))
    assert transcript.duration_seconds == pytest.approx(4.5, abs=0.05)


def test_audio_whose_sample_rate_changes_midstream_is_decoded() -> None:
    """Two MP3s joined (44.1 then 22.05 kHz) are one legal stream: the resampler is set up again where the
    rate changes, nothing lost (it raised 'Frame does not match AudioResampler setup': INTERNAL)."""
    from media_factory import mp3_tone
    from mmrouter_local.audio import BYTES_PER_SECOND, iter_pcm16k

    data = mp3_tone(44100) + mp3_tone(22050)
    seconds = sum(len(chunk) for chunk in iter_pcm16k(data)) / BYTES_PER_SECOND
    assert seconds == pytest.approx(2.0, abs=0.15)


async def test_audio_whose_sample_rate_changes_midstream_is_transcribed(local: LocalProvider) -> None:
    from media_factory import mp3_tone

    item = Media(Modality.AUDIO, "audio/mpeg", data=mp3_tone(44100) + mp3_tone(22050), filename="joined.mp3")
    (transcript,) = transcripts_of(await collect(local, ask(item, task=Task.TRANSCRIBE), local.models[0]))
    assert transcript.duration_seconds == pytest.approx(2.0, abs=0.15)


async def test_a_pdf_pypdf_refuses_to_walk_is_invalid_argument(local: LocalProvider) -> None:
    """pypdf stops at a page tree deeper than 100 levels with LimitReachedError (a PyPdfError, not a
    PdfReadError): the PDF is unreadable, INVALID_ARGUMENT, not INTERNAL."""
    from media_factory import pdf_with_deep_page_tree
    from mmrouter_local.pdf import PdfError, iter_pages

    data = pdf_with_deep_page_tree(150)
    with pytest.raises(PdfError, match="not a readable PDF"):
        list(iter_pages(data))
    item = Media(Modality.DOCUMENT, "application/pdf", data=data, filename="deep.pdf")
    with pytest.raises(ProviderBadRequest, match=r"cannot read deep\.pdf: not a readable PDF"):
        await collect(local, ask(item), local.models[0])


def pdf_showing_its_first_page(pdf: bytes, times: int) -> bytes:
    """``pdf`` with its page tree pointing ``times`` times at its first page (one page object)."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import ArrayObject, NameObject, NumberObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    tree = writer.root_object["/Pages"]
    tree[NameObject("/Kids")] = ArrayObject([tree["/Kids"][0]] * times)
    tree[NameObject("/Count")] = NumberObject(times)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("layout", ["one-image-on-every-page", "one-page-many-times"])
async def test_an_image_a_pdf_shows_on_many_pages_is_read_once(local: LocalProvider, layout: str) -> None:
    """Every page of a scanned PDF may show one image XObject, or its page tree point many times at one
    page: the image is read once and its text given on every page (it was one OCR per page, up to 100,000)."""
    pages = 12
    pdf = scanned_pdf(pages) if layout == "one-image-on-every-page" else pdf_showing_its_first_page(
        scanned_pdf(1), pages)
    item = Media(Modality.DOCUMENT, "application/pdf", data=pdf, filename="scan.pdf")
    before = local.extractor.ocr.images_read
    text = text_of(await collect(local, ask(item), local.models[0]))
    for number in range(1, pages + 1):
        assert f"[PDF scan.pdf, page {number}, OCR of a page without a text layer]\nscanned page" in text, text
    assert local.extractor.ocr.images_read - before == 1


def stamped_scan_pdf() -> bytes:
    """Page 1: a scan covering the page, with an 8-pt Bates stamp as its text layer (as legal workflows and
    scanner apps add); page 2: a short title and a small picture (a logo), a sixth of the page; page 3: a
    slide, a sentence over a full-page photo."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    scan = media.text_image([((40, 60), "Scanned page number 1"), ((40, 140), "Meeting at nine oclock")],
                            size=(600, 800))
    logo = media.text_image([((20, 20), "SMALL LOGO")], size=(400, 100))
    out = io.BytesIO()
    doc = canvas.Canvas(out)  # A4: 595 x 842 points
    doc.drawImage(ImageReader(io.BytesIO(media.encode_image(scan))), 0, 0, width=595, height=842)
    doc.setFont("Helvetica", 8)
    doc.drawString(480, 20, "BATES-000123")
    doc.showPage()
    doc.drawString(72, 760, "Quarterly report")
    doc.drawImage(ImageReader(io.BytesIO(media.encode_image(logo))), 72, 400, width=400, height=200)
    doc.showPage()
    doc.drawImage(ImageReader(io.BytesIO(media.encode_image(logo))), 0, 0, width=595, height=842)
    doc.drawString(72, 760, "Revenue grew in all of the regions where we sell, once again")
    doc.showPage()
    doc.save()
    return out.getvalue()


async def test_a_scan_with_a_small_text_layer_is_read_too(local: LocalProvider) -> None:
    """A page's images were OCRed only when its text layer was empty: a scanned page with a Bates stamp
    gave the stamp alone. Under 50 characters of text with images over 80% of the page: the images are read
    too, after the text layer. A short title with a small picture, and a slide's sentence over a photo, are
    left as their text (OCR costs about a second a page: a deck took 17.5 s instead of 0.3)."""
    item = Media(Modality.DOCUMENT, "application/pdf", data=stamped_scan_pdf(), filename="stamped.pdf")
    before = local.extractor.ocr.images_read
    text = text_of(await collect(local, ask(item), local.models[0]))
    page1 = text.split("[PDF stamped.pdf, page 1]\n", 1)[1].split("\n\n[PDF stamped.pdf, page 2]\n")[0]
    assert page1.splitlines() == ["BATES-000123", "Scanned page number 1", "Meeting at nine oclock"], text
    assert "[PDF stamped.pdf, page 2]\nQuarterly report\n[1 image on this page was not read]\n\n" in text, text
    assert text.endswith("[PDF stamped.pdf, page 3]\nRevenue grew in all of the regions where we sell, once again"
                         "\n[1 image on this page was not read]"), text
    assert local.extractor.ocr.images_read - before == 1  # the scan, not the logo nor the slide's photo


async def test_a_16_bit_grayscale_scan_is_read(local: LocalProvider) -> None:
    """A 16-bit scan's values (here 5000 ink on a 30000 page, of 65535) are stretched to 8 bits as the
    router's conversion does; Pillow's convert clipped them all to white, and OCR found nothing."""
    from media_factory import gray16_png

    image = media.text_image([((40, 40), "HELLO SIXTEEN BITS")], size=(800, 200), font_size=40)
    item = Media(Modality.IMAGE, "image/png", data=gray16_png(image), filename="scan16.png")
    text = text_of(await collect(local, ask(item), local.models[0]))
    assert "[Image scan16.png: PNG 800x200]" in text
    assert "HELLOSIXTEENBITS" in text.replace(" ", ""), text


@pytest.mark.parametrize("kind", ["ico", "icns"])
async def test_an_icon_holding_a_huge_image_is_refused_before_decoding(monkeypatch, kind: str) -> None:
    """An icon's directory may say 16x16 (ICO) or 1024x1024 (ICNS) and hold a PNG of 6400x6400: Pillow
    decoded it whole (inside Image.open for ICO), before the pixel limit was checked."""
    from media_factory import blank_png, icns_holding, ico_holding
    from mmrouter_local.extract import Extractor, UnreadableMedia
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):  # self: a Pillow ImageFile
        if self.width * self.height > 40_000_000:
            decoded.append(self.size)
            raise MemoryError("the test does not decode huge images")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    data = (ico_holding if kind == "ico" else icns_holding)(blank_png(6400, 6400))
    extractor = Extractor()
    extractor.ocr.read_lines = lambda bgr: []  # type: ignore[method-assign]  # no OCR model needed
    with pytest.raises(UnreadableMedia, match="6400x6400 pixels, over the 40,000,000"):
        extractor.image(Media(Modality.IMAGE, f"image/{kind}", data=data), "icon")
    assert decoded == []


def test_video_frames_over_the_pixel_limit_are_refused_after_a_small_first_frame(monkeypatch) -> None:
    """A video's header and first frame may be small and later frames huge (an MJPEG of 64x64, then
    15000x15000 took 1.4 GB): frames over the limit are refused by the decoder, sampled or not."""
    import mmrouter_local.video
    from media_factory import mjpeg_mkv
    from mmrouter_local.audio import DecodeError
    from mmrouter_local.video import iter_sampled_frames

    monkeypatch.setattr(mmrouter_local.video, "MAX_OCR_PIXELS", 100_000)
    video = mjpeg_mkv([(64, 64), (640, 480), (640, 480)])
    with pytest.raises(DecodeError, match=r"decoding failed.*over the 100,000"):  # by the decoder
        list(iter_sampled_frames(video, 2.0))
    assert [t for t, _ in iter_sampled_frames(mjpeg_mkv([(64, 64), (320, 240)]), 0.01)] == [0.0, 0.04]


def on_screen(text: str):
    return media.text_image([((20, 30), text)], size=(320, 120), font_size=40)


def test_raw_h264_frames_without_timestamps_are_sampled(local: LocalProvider) -> None:
    """A raw H.264 elementary stream has no timestamps (every frame.time is None): frames are timed by
    their count at the stream's rate (they were all skipped, and no text was found)."""
    from media_factory import video_stream
    from mmrouter_local.video import iter_sampled_frames

    video = video_stream(on_screen("ON SCREEN"), 3.0, fps=25, container="h264")
    assert [t for t, _ in iter_sampled_frames(video, 1.0)] == [0.0, 1.0, 2.0]
    sections = local.extractor.video_frames(Media(Modality.VIDEO, "video/h264", data=video), "cam.h264")
    assert [(s.heading, s.text) for s in sections] == [("Video cam.h264 frames at 0.0s-2.0s", "ON SCREEN")]


async def test_a_cancelled_video_job_stops_while_skipping_frames() -> None:
    """Frames between samples are decoded and skipped: the job checks for cancellation on every frame,
    not only on the sampled ones (a cancelled call decoded a long stream to its end)."""
    from media_factory import video_stream
    from mmrouter_local.video import iter_sampled_frames

    video = video_stream(on_screen("T"), 4.0, fps=25, container="h264")
    pool = WorkerPool(1)
    sampled, go = threading.Event(), threading.Event()

    def job() -> list:
        frames = iter_sampled_frames(video, 1000.0)  # one sample, then 99 frames skipped
        next(frames)
        sampled.set()
        go.wait(10)
        return list(frames)

    task = asyncio.ensure_future(pool.run(job))
    await asyncio.to_thread(sampled.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go.set()
    for _ in range(200):
        if pool.cancelled_jobs or not pool._running:
            break
        await asyncio.sleep(0.05)
    assert pool.cancelled_jobs == 1
    pool.close()


def test_video_frame_times_count_from_the_start_of_the_clip() -> None:
    """A transport stream cut from a live stream starts at, say, 3600 s: its frames are timed from the
    clip's start, as its audio transcript is (they said 'frames at 3600.0s-3602.0s')."""
    from media_factory import video_stream
    from mmrouter_local.video import iter_sampled_frames

    video = video_stream(on_screen("LIVE"), 3.0, fps=25, container="mpegts", start_seconds=3600)
    assert [round(t, 2) for t, _ in iter_sampled_frames(video, 1.0)] == [0.0, 1.0, 2.0]


async def test_every_page_of_a_multipage_tiff_is_read(local: LocalProvider, monkeypatch) -> None:
    """A fax or scanner TIFF has several pages: each is read, headed with its number (only the first
    was, silently); past MAX_IMAGE_PAGES the rest are named as not read."""
    import mmrouter_local.extract
    from media_factory import multipage_tiff

    pages = [media.text_image([((40, 40), f"PAGE {word}")], size=(500, 140), font_size=40)
             for word in ("ONE", "TWO", "THREE")]
    item = Media(Modality.IMAGE, "image/tiff", data=multipage_tiff(pages), filename="fax.tif")
    monkeypatch.setattr(mmrouter_local.extract, "MAX_IMAGE_PAGES", 2)
    text = text_of(await collect(local, ask(item), local.models[0]))
    first = text.index("[Image fax.tif: TIFF 500x140, page 1 of 3]")
    second = text.index("[Image fax.tif: TIFF 500x140, page 2 of 3]")
    assert first < text.index("PAGE ONE") < second < text.index("PAGE TWO")
    assert "PAGE THREE" not in text and "page 3 of 3 not read" in text, text


@pytest.mark.parametrize(("fmt", "orientation"), [("JPEG", 3), ("JPEG", 6), ("JPEG", 8), ("TIFF", 6)])
async def test_a_picture_is_read_as_its_orientation_tag_shows_it(local: LocalProvider, fmt: str,
                                                                  orientation: int) -> None:
    """A phone stores a photo as the camera was held and says in EXIF how to turn it. OCR read such a photo's
    lines bottom to top (or each rotated line on its own), and the heading gave the stored size. Pillow turns
    a TIFF itself as it opens it: that one is not turned a second time."""
    from PIL import Image

    upright = media.text_image([((20, 40), "Invoice number 4711"), ((20, 150), "Total due 42 EUR")]).convert("L")
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = io.BytesIO()
    upright.transpose(turn).save(stored, format=fmt, exif=exif)
    name = f"picture.{fmt.lower()}"
    events = await collect(local, ask(Media(Modality.IMAGE, f"image/{fmt.lower()}", data=stored.getvalue(),
                                            filename=name)), local.models[0])
    text = text_of(events)
    heading = f"[Image {name}: {fmt} 640x240]\n"
    assert heading in text, text
    lines = [line.replace(" ", "") for line in text.split(heading, 1)[1].strip().splitlines()]
    assert lines == ["Invoicenumber4711", "Totaldue42EUR"], text


OCR_IN_A_FRESH_PROCESS = """
import asyncio
from mmrouter_local import LocalProvider
from router import Media, Message, Modality, Options, Part, Request, Role
from router.testing import collect
from tests.fakes import local as media

image = media.encode_image(media.text_image([((20, 20), "Invoice number 4711")]))
request = Request([Message(Role.USER, [Part(media=Media(Modality.IMAGE, "image/png", data=image))])], Options())
provider = LocalProvider(workers=1)
events = asyncio.run(collect(provider, request, provider.models[0]))
print("".join(getattr(e, "text", "") for e in events))
"""


@pytest.mark.parametrize("home", ["a home", "no home"])
def test_ocr_leaves_onnxruntime_telemetry_off(tmp_path, home: str) -> None:
    """onnxruntime wrote a device id and queued telemetry events in ~/.cache/Microsoft (outside the data
    directory) and, with no usable home, an ANSI-coloured warning into the daemon's stderr (its JSON log).
    The OCR runs in a process of its own (onnxruntime starts its telemetry when first imported), with HOME
    and the working directory in tmp_path."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    if home == "a home":
        (tmp_path / "home").mkdir()
    else:  # a file where the home should be: nothing can be made under it, even by root
        (tmp_path / "home").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join(filter(None, [str(root),
                                                                                     env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", OCR_IN_A_FRESH_PROCESS], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Invoicenumber4711" in done.stdout.replace(" ", ""), done.stdout
    assert "telemetry" not in done.stderr.lower() and "\x1b" not in done.stderr, done.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["home", "work"]


def filled_form_pdf() -> bytes:
    """A two-page AcroForm PDF, filled in: page 1 has text fields (one left empty, the IBAN with a user name,
    a tooltip), two check boxes (one ticked), a radio group and a combo box; page 2 a multi-line text field
    and, again, the name field (a field may be shown on several pages)."""
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    doc = canvas.Canvas(out)
    form = doc.acroForm
    doc.drawString(72, 720, "Name:")
    form.textfield(name="name", value="Jane Q Public", x=130, y=710, width=200, height=20)
    doc.drawString(72, 680, "IBAN:")
    form.textfield(name="iban", value="DE89370400440532013000", x=130, y=670, width=250, height=20,
                   tooltip="Bank account (IBAN)")
    form.textfield(name="fax", value="", x=130, y=640, width=250, height=20)
    form.checkbox(name="agree", checked=True, x=72, y=600)
    form.checkbox(name="newsletter", checked=False, x=100, y=600)
    form.radio(name="colour", value="red", selected=False, x=72, y=560)
    form.radio(name="colour", value="blue", selected=True, x=100, y=560)
    form.choice(name="country", value="France", options=["Germany", "France"], x=72, y=520, width=100, height=20)
    doc.showPage()
    doc.drawString(72, 720, "Remarks:")
    form.textfield(name="remarks", value="first line\nsecond line", x=130, y=680, width=300, height=40,
                   fieldFlags="multiline")
    form.textfield(name="name", value="Jane Q Public", x=130, y=600, width=200, height=20)
    doc.showPage()
    doc.save()
    return out.getvalue()


async def test_the_values_of_a_filled_in_form_are_read(local: LocalProvider) -> None:
    """pypdf's text layer has a form's labels, not its fields' values: a model fed through the document
    bridge was told the form was blank ("Name:\\nIBAN:"). The fields a page shows follow its text, after a
    "Form fields:" line, each once, labelled by its user name if it has one; a check box reads checked or
    not checked, a radio group its choice; an empty field is left out."""
    item = Media(Modality.DOCUMENT, "application/pdf", data=filled_form_pdf(), filename="form.pdf")
    text = text_of(await collect(local, ask(item), local.models[0]))
    page1 = text.split("[PDF form.pdf, page 1]\n", 1)[1].split("\n\n[PDF form.pdf, page 2]\n")[0]
    assert page1.splitlines() == ["Name:", "IBAN:", "Form fields:", "name: Jane Q Public",
                                  "Bank account (IBAN): DE89370400440532013000", "agree: checked",
                                  "newsletter: not checked", "colour: blue", "country: France"], text
    page2 = text.split("[PDF form.pdf, page 2]\n", 1)[1]
    assert page2.splitlines() == ["Remarks:", "Form fields:", "remarks: first line", "  second line"], text
    assert text.count("Jane Q Public") == 1, text
