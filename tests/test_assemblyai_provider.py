"""The AssemblyAI provider against a fake of AssemblyAI's API, through the real ``assemblyai`` SDK."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from pathlib import Path

import pytest
from mmrouter_assemblyai import AssemblyAIProvider, AssemblyAISettings, register_providers
from mmrouter_assemblyai.provider import DEADLINE_HEADROOM_SECONDS
from mmrouter_assemblyai.transcripts import audio_source, language_code

from router import (
    CallContext,
    Media,
    Message,
    Modality,
    Options,
    Part,
    Request,
    Role,
    Task,
    Transcript,
    TranscriptReady,
    UsageReport,
)
from router.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderInputTooLarge,
    ProviderModelNotFound,
    ProviderNotConfigured,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from router.polling import MAX_POLL_FAILURES
from router.testing import ProviderContract, collect
from tests.fakes.assemblyai import FakeAssemblyAI

KEY = "aai-test-key-5f2e"


def wav_bytes(seconds: float = 0.2, rate: int = 8000) -> bytes:
    """A tiny silent mono WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * int(seconds * rate))
    return buf.getvalue()


def audio_request(media: Media | None = None, **options) -> Request:
    media = media or Media(Modality.AUDIO, "audio/wav", data=wav_bytes())
    opts = Options(task=Task.TRANSCRIBE, **options)
    return Request(messages=[Message(Role.USER, [Part(media=media)])], options=opts)


def make_provider(fake: FakeAssemblyAI, **settings) -> AssemblyAIProvider:
    mapping = {"api_key": KEY, "base_url": fake.url, "timeout": 5, "poll_interval": 0.01, **settings}
    return AssemblyAIProvider(AssemblyAISettings.load("assemblyai", mapping))


@pytest.fixture
def fake():
    with FakeAssemblyAI(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture
async def provider(fake):
    p = make_provider(fake)
    yield p
    await p.aclose()


class TestAssemblyAIContract(ProviderContract):
    @pytest.fixture
    async def provider(self, fake):
        p = make_provider(fake)
        yield p
        await p.aclose()

    def sample_request(self, model):
        return audio_request()


# -- the happy path ----------------------------------------------------------------------------


async def test_transcribes_with_speaker_labels_and_maps_utterances(fake, provider):
    audio = wav_bytes()
    req = audio_request(Media(Modality.AUDIO, "audio/wav", data=audio), diarization=True,
                        speakers_expected=2, language="en-US")
    events = await collect(provider, req, provider.model("best"))

    # What AssemblyAI received: the audio bytes, then a config asking for speaker labels.
    assert fake.uploads == [audio]
    assert fake.requests[0].headers["authorization"] == KEY
    (created,) = fake.created
    assert created["audio_url"] == "https://cdn.assemblyai.com/upload/fake-1"
    assert created["speaker_labels"] is True
    assert created["speakers_expected"] == 2
    assert created["language_code"] == "en_us"
    assert "language_detection" not in created
    assert created["speech_models"] == ["assemblyai-stt-3-7", "universal-2"]  # best: the default list
    assert "speech_model" not in created  # the singular, which AssemblyAI refuses
    # queued (create) -> processing -> completed: polled until done, then stopped.
    (job,) = fake.transcripts.values()
    assert job.history == ["processing", "completed"]

    # What the caller got.
    assert [type(e) for e in events] == [TranscriptReady, UsageReport]
    transcript = events[0].transcript
    assert [(u.speaker, u.start, u.end, u.text) for u in transcript.utterances] == [
        ("A", 0.24, 2.1, "Hello, thanks for joining the call."),
        ("B", 2.3, 4.02, "Happy to be here."),
        ("A", 4.2, 6.48, "Let us start with the budget."),
    ]
    assert all(u.confidence == pytest.approx(0.93) for u in transcript.utterances)
    assert transcript.text == (
        "Speaker A: Hello, thanks for joining the call.\n"
        "Speaker B: Happy to be here.\n"
        "Speaker A: Let us start with the budget."
    )
    assert transcript.words[0].text == "Hello,"
    assert transcript.words[0].start == pytest.approx(0.24)
    assert transcript.words[0].speaker == "A"
    assert transcript.words[-1].text == "budget."
    assert transcript.words[-1].speaker == "A"
    assert len(transcript.words) == 16
    assert transcript.language == "en-US"  # AssemblyAI's en_us, as BCP-47
    assert transcript.duration_seconds == 7
    usage = events[1].usage
    assert usage.audio_seconds == 7
    assert usage.cost_usd == 0  # priced per audio hour: the router computes it


async def test_without_language_asks_for_detection(fake, provider):
    events = await collect(provider, audio_request(), provider.model("best"))
    (created,) = fake.created
    assert created["language_detection"] is True
    assert "language_code" not in created
    assert "speakers_expected" not in created
    assert created["speaker_labels"] is True  # diarizes by default
    assert events[0].transcript.language == "en-US"  # the detected language, as BCP-47


@pytest.mark.parametrize(("detected", "tag"), [("en_uk", "en-GB"), ("en_au", "en-AU"), ("en_us", "en-US"),
                                               ("fr", "fr"), ("pt", "pt")])
async def test_the_language_found_is_a_bcp47_tag(fake, provider, detected, tag):
    """AssemblyAI's ``en_uk`` is ``en-GB`` (UK is no ISO 3166 region), as _ENGLISH_REGIONS maps it the other
    way: a client comparing with the ``en-GB`` it asked for, or a library validating regions, takes it."""
    fake.detected_language = detected
    events = await collect(provider, audio_request(), provider.model("best"))
    assert events[0].transcript.language == tag


async def test_the_language_asked_comes_back_as_asked(fake, provider):
    events = await collect(provider, audio_request(language="en-GB", diarization=True), provider.model("best"))
    assert fake.created[0]["language_code"] == "en_uk"
    assert events[0].transcript.language == "en-GB"  # it was en-UK


async def test_speaker_labels_off_unless_asked_when_configured(fake):
    provider = make_provider(fake, speaker_labels=False)
    try:
        events = await collect(provider, audio_request(), provider.model("best"))
        assert "speaker_labels" not in fake.created[0]
        transcript = events[0].transcript
        assert transcript.utterances == []
        assert transcript.text.startswith("Hello, thanks for joining the call. Happy to be here.")
        assert transcript.words[0].speaker == ""

        await collect(provider, audio_request(diarization=True), provider.model("best"))
        assert fake.created[1]["speaker_labels"] is True
    finally:
        await provider.aclose()


@pytest.mark.parametrize("name", ["universal-2", "nano"])
async def test_universal_2_and_its_deprecated_alias_nano_send_universal_2(fake, provider, name):
    await collect(provider, audio_request(), provider.model(name))
    assert fake.created[0]["speech_models"] == ["universal-2"]
    assert "speech_model" not in fake.created[0]


async def test_stored_media_is_streamed_from_its_file(fake, provider, tmp_path: Path):
    data = wav_bytes(1.0)
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    media = Media(Modality.AUDIO, "audio/wav", path=path, media_id="ab" * 32, size=len(data))
    await collect(provider, audio_request(media), provider.model("best"))
    assert fake.uploads == [data]
    assert fake.upload_headers[0]["content-length"] == str(len(data))
    # Handed to the SDK as a path, which it streams from disk instead of reading it whole.
    assert audio_source(media) == str(path)


async def test_video_is_sent_as_is(fake, provider):
    video = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
    media = Media(Modality.VIDEO, "video/mp4", data=video)
    events = await collect(provider, audio_request(media), provider.model("best"))
    assert fake.uploads == [video]
    assert events[0].transcript.utterances


async def test_url_media_is_not_uploaded(fake, provider):
    media = Media(Modality.AUDIO, "audio/mpeg", url="https://example.com/talk.mp3")
    await collect(provider, audio_request(media), provider.model("best"))
    assert fake.uploads == []
    assert fake.created[0]["audio_url"] == "https://example.com/talk.mp3"


#: A signed media URL: its query is a credential to the object, never to be logged.
SIGNED = "https://user:PASSWORDSECRET@bucket.s3.amazonaws.com/talk.mp3?X-Amz-Signature=SIGSECRET123&X-Amz-Expires=60"
SIGNED_PUBLIC = "https://bucket.s3.amazonaws.com/talk.mp3"


def assert_url_hidden(message: str) -> None:
    """``message`` names the signed URL without its credentials or query."""
    assert SIGNED_PUBLIC in message
    assert "SIGSECRET" not in message and "PASSWORDSECRET" not in message and "X-Amz" not in message


async def test_a_refused_url_is_named_without_its_query_or_credentials(fake, provider):
    """The SDK's message quotes the URL whole ("failed to transcribe url <url>: ..."): the error (logged,
    and kept in the route's attempts) shows it without the signed query or the credentials."""
    fake.fail_next(400, {"error": "Invalid audio_url"})
    with pytest.raises(ProviderBadRequest) as info:
        await collect(provider, audio_request(Media(Modality.AUDIO, "audio/mpeg", url=SIGNED)), provider.model("best"))
    assert fake.created == [] and "Invalid audio_url" in info.value.message
    assert f"failed to transcribe url {SIGNED_PUBLIC}: " in info.value.message
    assert_url_hidden(info.value.message)
    assert_url_hidden(str(info.value))


async def test_a_failed_transcript_quoting_the_url_names_it_without_its_query(fake, provider):
    """AssemblyAI's "Download error, unable to download <url>" quotes the URL it was given."""
    fake.statuses = ("queued", "error")
    fake.error_message = f"Download error, unable to download {SIGNED}. Please make sure the file exists."
    with pytest.raises(ProviderBadRequest) as info:
        await collect(provider, audio_request(Media(Modality.AUDIO, "audio/mpeg", url=SIGNED)), provider.model("best"))
    assert fake.created[0]["audio_url"] == SIGNED  # sent whole: AssemblyAI needs the signature
    assert f"unable to download {SIGNED_PUBLIC}. Please" in info.value.message
    assert_url_hidden(info.value.message)
    assert_url_hidden(str(info.value))


async def test_clips_of_one_message_make_a_transcript_each_which_merge_and_usage_adds_up(fake, provider):
    parts = [Part(text="what was said?"),
             Part(media=Media(Modality.AUDIO, "audio/wav", data=wav_bytes(0.1), duration_seconds=7.6)),
             Part(media=Media(Modality.AUDIO, "audio/wav", data=wav_bytes(0.3)))]
    req = Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.TRANSCRIBE))
    events = await collect(provider, req, provider.model("best"))
    # a transcript and a report per clip, each before the next clip is sent (StreamGenerate sends each)
    assert [type(e) for e in events] == [TranscriptReady, UsageReport, TranscriptReady, UsageReport]
    assert fake.uploads == [wav_bytes(0.1), wav_bytes(0.3)]  # in order
    first, second = events[0].transcript, events[2].transcript
    assert [(u.speaker, u.start) for u in second.utterances] == [("A", 0.24), ("B", 2.3), ("A", 4.2)]  # its own
    transcript = Transcript.merged([first, second])  # as the router makes the answer's
    # The second clip's turns follow the first's, shifted by its measured 7.6 s (AssemblyAI's
    # audio_duration is whole seconds: 7), and its speakers are not the first clip's.
    assert [(u.speaker, u.start) for u in transcript.utterances] == [
        ("A", 0.24), ("B", 2.3), ("A", 4.2), ("C", 7.84), ("D", 9.9), ("C", 11.8)]
    assert transcript.text.count("Hello, thanks for joining the call.") == 2
    assert "Speaker C: Hello, thanks for joining the call." in transcript.text
    assert len(transcript.text.splitlines()) == 6
    assert transcript.duration_seconds == 14.6  # 7.6 measured + 7 (the second clip is not measured)
    # billed by AssemblyAI's durations (whole seconds: 7 each), a part per clip, which add up
    assert [events[1].usage.audio_seconds, events[-1].usage.audio_seconds] == [7, 7]
    assert events[1].usage.audio_seconds + events[-1].usage.audio_seconds == 14


async def test_a_time_before_the_clip_s_start_is_taken_as_its_start(fake, provider):
    """A transcript whose first turn starts at -20 ms (a proxy's rounding): the times are kept >= 0, so the
    router's contract takes the transcript instead of failing the call as the plugin's fault."""
    from router.contract import event_problem

    fake.turns = [("A", -20, 900, "hello there"), ("B", 1000, 2000, "hi")]
    events = await collect(provider, audio_request(diarization=True), provider.model("best"))
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert event_problem(ready) is None
    assert [(u.speaker, u.start, u.end) for u in ready.transcript.utterances] == [("A", 0.0, 0.9), ("B", 1.0, 2.0)]
    assert ready.transcript.words[0].start == 0.0


async def test_only_the_newest_messages_clips_are_transcribed(fake, provider):
    """In a session the earlier turns' clips come first in the messages; they were transcribed (and billed)
    when sent."""
    old, new = wav_bytes(0.1), wav_bytes(0.2)
    req = Request(messages=[
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=old))]),
        Message(Role.ASSISTANT, [Part(text="Speaker A: earlier")]),
        Message(Role.USER, [Part(media=Media(Modality.AUDIO, "audio/wav", data=new))]),
    ], options=Options(task=Task.TRANSCRIBE))
    events = await collect(provider, req, provider.model("best"))
    assert fake.uploads == [new]
    assert [type(e) for e in events] == [TranscriptReady, UsageReport]
    assert len(events[0].transcript.utterances) == 3
    assert events[-1].usage.audio_seconds == 7


@pytest.mark.parametrize("url", ["{path}", "file://{path}", "ftp://example.com/a.wav", "s3://bucket/a.wav"])
async def test_a_url_other_than_http_is_refused_and_no_local_file_is_read(fake, provider, tmp_path: Path, url):
    # The SDK takes any string that is not an http(s) URL for a local path and uploads that file.
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"DB_PASSWORD=hunter2")
    media = Media(Modality.AUDIO, "audio/wav", url=url.format(path=secret))
    with pytest.raises(ProviderBadRequest, match="must use http:// or https://"):
        await collect(provider, audio_request(media), provider.model("best"))
    assert fake.requests == []


async def test_a_bad_url_among_clips_is_refused_before_any_upload(fake, provider, tmp_path: Path):
    parts = [Part(media=Media(Modality.AUDIO, "audio/wav", data=wav_bytes())),
             Part(media=Media(Modality.AUDIO, "audio/wav", url=str(tmp_path / "x.wav")))]
    req = Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.TRANSCRIBE))
    with pytest.raises(ProviderBadRequest, match="must use http:// or https://"):
        await collect(provider, req, provider.model("best"))
    assert fake.requests == []


@pytest.mark.parametrize(("modality", "mime"), [(Modality.AUDIO, "audio/wav"), (Modality.VIDEO, "video/mp4")])
async def test_a_file_over_the_upload_limit_is_refused_before_any_upload(fake, provider, tmp_path: Path,
                                                                         modality, mime):
    """/v2/upload takes at most 2.2 GB: a larger stored file (sparse here) is INPUT_TOO_LARGE, naming the limit
    and the size, and no clip of the message is uploaded."""
    stored = tmp_path / "huge"
    stored.write_bytes(wav_bytes())
    with stored.open("r+b") as f:
        f.truncate(2_200_000_001)
    parts = [Part(media=Media(Modality.AUDIO, "audio/wav", data=wav_bytes())),
             Part(media=Media(modality, mime, path=stored, filename="town-hall", size=2_200_000_001))]
    req = Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.TRANSCRIBE))
    with pytest.raises(ProviderInputTooLarge) as info:
        await collect(provider, req, provider.model("best"))
    assert str(info.value) == ("assemblyai: the file 'town-hall' is 2,200,000,001 bytes, over AssemblyAI's upload "
                               "limit of 2.2 GB (2,200,000,000 bytes) (refused before uploading)")
    assert info.value.retryable and info.value.reason == "INPUT_TOO_LARGE"
    assert fake.requests == []


async def test_an_upload_the_api_refuses_for_its_size_is_input_too_large(fake, provider):
    """AssemblyAI's 413 on an upload (the fake's limit lowered) lets the router fall back too."""
    fake.max_upload_bytes = 100
    with pytest.raises(ProviderInputTooLarge, match="HTTP 413"):
        await collect(provider, audio_request(), provider.model("best"))
    assert fake.created == []


async def test_audio_seconds_falls_back_to_measured_duration(fake, provider):
    fake.audio_duration = None
    media = Media(Modality.AUDIO, "audio/wav", data=wav_bytes(), duration_seconds=12.5)
    events = await collect(provider, audio_request(media), provider.model("best"))
    assert events[-1].usage.audio_seconds == 12.5


async def test_request_without_media_is_rejected_before_any_call(fake, provider):
    req = Request(messages=[Message(Role.USER, [Part(text="hi")])])
    with pytest.raises(ProviderBadRequest, match="no audio or video"):
        await collect(provider, req, provider.model("best"))
    assert fake.requests == []


# -- failures ----------------------------------------------------------------------------------


async def test_transcript_error_status_carries_assemblyai_message(fake, provider):
    fake.statuses = ("queued", "processing", "error")
    fake.error_message = "Transcoding failed. File does not appear to contain audio."
    with pytest.raises(ProviderBadRequest) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert "File does not appear to contain audio" in info.value.message
    assert info.value.message.startswith("assemblyai: transcription failed (transcript tr-1)")
    assert fake.polls() == 2


#: Failed transcripts' error texts: AssemblyAI's documented ones and the like, by whose fault they are.
SERVER_FAULTS = [
    "Server error, developers have been alerted.",  # AssemblyAI's documented text: resubmit the file
    "Internal server error",
    "Failed to transcribe audio due to an internal error.",
    "Transcription timed out, please try again.",
]
MEDIA_FAULTS = [
    "Transcoding failed. File does not appear to contain audio.",
    "File does not appear to contain audio. File type is text/html (HTML document, ASCII text).",
    "Download error, unable to download https://foo.bar. Please make sure the file exists and is "
    "accessible from the internet.",
    "Download error, the connection timed out.",  # the URL's host, not AssemblyAI: no retry elsewhere
    "Audio duration is too short.",
    "Failed to transcribe.",  # unknown: as before, the media's fault
    "",
]


@pytest.mark.parametrize("text", SERVER_FAULTS)
async def test_a_transcript_failed_on_assemblyais_side_is_unavailable(fake, provider, text):
    """AssemblyAI advises resubmitting a transcript its servers failed: UNAVAILABLE, so a fallback is tried."""
    fake.statuses = ("queued", "error")
    fake.error_message = text
    with pytest.raises(ProviderUnavailable) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert info.value.retryable
    assert text in info.value.message and "transcription failed (transcript tr-1)" in info.value.message


@pytest.mark.parametrize("text", MEDIA_FAULTS)
async def test_a_transcript_failed_for_its_media_stays_a_bad_request(fake, provider, text):
    fake.statuses = ("queued", "error")
    fake.error_message = text
    with pytest.raises(ProviderBadRequest) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert type(info.value) is ProviderBadRequest and not info.value.retryable
    assert (text or "no reason given") in info.value.message


@pytest.mark.parametrize("text", [
    "Audio duration of 12.5 hours exceeds the maximum allowed duration of 10 hours.",
    "File is too large to be processed.",
    "Audio file is too long.",
])
async def test_a_transcript_failed_for_media_over_assemblyais_limits_is_input_too_large(fake, provider, text):
    """Media too long or too large for AssemblyAI is INPUT_TOO_LARGE (retryable): a fallback with larger
    limits (Gemini, say) is tried on it; other faults of the media stay INVALID_ARGUMENT."""
    fake.statuses = ("queued", "error")
    fake.error_message = text
    with pytest.raises(ProviderInputTooLarge) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert info.value.reason == "INPUT_TOO_LARGE" and info.value.retryable
    assert text in info.value.message and "transcription failed (transcript tr-1)" in info.value.message


async def test_auth_failure_names_the_setting_and_never_the_key(fake, provider):
    fake.fail_next(401, {"error": f"Authentication error, API token {KEY} invalid"})
    with pytest.raises(ProviderAuthError) as info:
        await collect(provider, audio_request(), provider.model("best"))
    message = info.value.message
    assert "check providers.assemblyai.api_key (the key this section gives)" in message
    assert KEY not in message and KEY not in str(info.value)
    assert fake.created == []  # stopped at the upload


async def test_wrong_key_is_refused_by_the_fake_as_auth_error(fake):
    provider = AssemblyAIProvider(AssemblyAISettings.load(
        "assemblyai", {"api_key": "wrong-key-123", "base_url": fake.url, "poll_interval": 0.01}))
    try:
        with pytest.raises(ProviderAuthError) as info:
            await collect(provider, audio_request(), provider.model("best"))
        assert "wrong-key-123" not in str(info.value)
    finally:
        await provider.aclose()


async def test_rate_limit_keeps_retry_after(fake, provider):
    fake.fail_next(429, {"error": "Too many requests"}, {"Retry-After": "17"})
    with pytest.raises(ProviderRateLimited) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert info.value.retry_after == 17
    assert "Too many requests" in info.value.message


async def test_rate_limit_retry_after_is_the_failing_calls_own_while_another_call_polls(fake):
    """The SDK's client keeps only its last response, which a concurrent call's polls overwrite while the 429's
    body is still arriving; the Retry-After must come from the failing call's own response."""
    fake.statuses = ("queued",) + ("processing",) * 1000
    provider = make_provider(fake, poll_interval=0.01)
    polling = asyncio.ensure_future(collect(provider, audio_request(), provider.model("best")))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if fake.polls() >= 2:
                break
        fake.fail_next(429, {"error": "Too many requests"}, {"Retry-After": "30"}, path="/v2/upload",
                       body_delay=0.5)
        seen = fake.polls()
        with pytest.raises(ProviderRateLimited) as info:
            await collect(provider, audio_request(), provider.model("best"))
        assert fake.polls() > seen  # the other call's responses arrived in between
        assert info.value.retry_after == 30
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await provider.aclose()


@pytest.mark.parametrize(("status", "error_type"), [
    (400, ProviderBadRequest), (404, ProviderUnavailable), (500, ProviderUnavailable),
    (503, ProviderUnavailable),
])
async def test_http_errors_on_create_map_like_other_providers(fake, provider, status, error_type):
    # The upload succeeds; the transcript create fails.
    fake.fail_next(200, {"upload_url": "https://cdn.assemblyai.com/upload/x"})
    fake.fail_next(status, {"error": f"upstream says {status}"})
    with pytest.raises(error_type) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert f"upstream says {status}" in info.value.message
    assert [r.path for r in fake.requests] == ["/v2/upload", "/v2/transcript"]


async def test_http_error_while_polling_is_mapped(fake, provider):
    fake.fail_next(200, {"upload_url": "https://cdn.assemblyai.com/upload/x"})
    fake.fail_next(200, {"id": "tr-x", "status": "queued", "audio_url": "https://cdn.assemblyai.com/upload/x"})
    fake.fail_next(502, {"error": "bad gateway"})
    with pytest.raises(ProviderUnavailable, match="bad gateway"):
        await collect(provider, audio_request(), provider.model("best"))
    assert fake.requests[-1].path == "/v2/transcript/tr-x"


async def test_unreachable_api_is_unavailable(fake):
    url = fake.url
    fake.stop()
    provider = AssemblyAIProvider(AssemblyAISettings.load("assemblyai", {"api_key": KEY, "base_url": url}))
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach the AssemblyAI API"):
            await collect(provider, audio_request(), provider.model("best"))
    finally:
        await provider.aclose()


async def test_malformed_answer_is_unavailable(fake, provider):
    fake.fail_next(200, {"unexpected": True})
    with pytest.raises(ProviderUnavailable, match="bad answer"):
        await collect(provider, audio_request(), provider.model("best"))


# -- polling, deadlines and cancellation -------------------------------------------------------


async def test_polling_stops_at_the_deadline_without_blocking_the_loop(fake):
    fake.statuses = ("queued", "processing")  # never finishes
    provider = make_provider(fake, poll_interval=0.05)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    provider._sdk()  # the SDK imported first: on a loaded machine its import alone may outlast the deadline
    ticking = asyncio.ensure_future(ticker())
    ctx = CallContext(request_id="deadline", deadline=time.monotonic() + 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ProviderTimeout, match="still processing"):
            async for _ in provider.generate(audio_request(), provider.model("best"), ctx):
                pass
    finally:
        ticking.cancel()
        await provider.aclose()
    elapsed = time.monotonic() - started
    assert 0.95 - DEADLINE_HEADROOM_SECONDS <= elapsed < 3  # the deadline's 1 s (less the headroom), with room for a loaded machine
    assert fake.polls() >= 5  # about 20 at 50 ms apiece
    assert ticks >= 20  # the event loop kept running while we polled


async def test_cancelling_the_call_stops_polling(fake):
    fake.statuses = ("queued", "processing")
    provider = make_provider(fake, poll_interval=0.02)
    ctx = CallContext(request_id="cancel", deadline=time.monotonic() + 30)

    async def consume():
        async for _ in provider.generate(audio_request(), provider.model("best"), ctx):
            pass

    task = asyncio.ensure_future(consume())
    for _ in range(200):
        await asyncio.sleep(0.02)
        if fake.polls() >= 3:
            break
    assert fake.polls() >= 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    seen = fake.polls()
    await asyncio.sleep(0.2)
    assert fake.polls() == seen
    await provider.aclose()


# -- configuration -----------------------------------------------------------------------------


async def test_two_providers_keep_their_own_key_and_url():
    import assemblyai as aai

    global_key = aai.settings.api_key
    with FakeAssemblyAI(api_key="key-one") as one, FakeAssemblyAI(api_key="key-two") as two:
        p1 = AssemblyAIProvider(AssemblyAISettings.load(
            "assemblyai", {"api_key": "key-one", "base_url": one.url, "poll_interval": 0.01}))
        p2 = AssemblyAIProvider(AssemblyAISettings.load(
            "assemblyai", {"api_key": "key-two", "base_url": two.url, "poll_interval": 0.01}))
        try:
            r1, r2 = await asyncio.gather(
                collect(p1, audio_request(), p1.model("best")),
                collect(p2, audio_request(), p2.model("universal-2")),
            )
        finally:
            await p1.aclose()
            await p2.aclose()
        assert isinstance(r1[0], TranscriptReady) and isinstance(r2[0], TranscriptReady)
        assert {r.headers["authorization"] for r in one.requests} == {"key-one"}
        assert {r.headers["authorization"] for r in two.requests} == {"key-two"}
        assert one.created[0]["speech_models"][0] == "assemblyai-stt-3-7"
        assert two.created[0]["speech_models"] == ["universal-2"]
    assert aai.settings.api_key == global_key  # the SDK's globals were not touched


async def test_one_sdk_client_is_reused_and_closed(fake, provider):
    await collect(provider, audio_request(), provider.model("best"))
    client = provider._client
    await collect(provider, audio_request(), provider.model("best"))
    assert provider._client is client
    await provider.aclose()
    assert client.http_client.is_closed


def test_settings_come_from_env_when_not_configured(monkeypatch):
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "env-key")
    monkeypatch.setenv("ASSEMBLYAI_BASE_URL", "http://127.0.0.1:9/")
    s = AssemblyAISettings.load("assemblyai", {})
    assert (s.key, s.base_url, s.timeout, s.poll_interval) == ("env-key", "http://127.0.0.1:9", 30.0, 3.0)
    s = AssemblyAISettings.load("assemblyai", {"api_key": "cfg-key", "timeout": "12", "poll_interval": 0.5})
    assert (s.key, s.timeout, s.poll_interval) == ("cfg-key", 12.0, 0.5)
    assert s.base_url == "http://127.0.0.1:9"


def test_bad_setting_names_the_key():
    with pytest.raises(ConfigError, match=r"providers\.assemblyai\.poll_interval"):
        AssemblyAISettings.load("assemblyai", {"poll_interval": "often"})
    with pytest.raises(ConfigError, match=r"providers\.assemblyai\.timeout: Input should be greater than 0"):
        AssemblyAISettings.load("assemblyai", {"timeout": 0})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/?code=AAIQUERYSECRET", "http://127.0.0.1:9/#AAIQUERYSECRET"])
def test_a_base_url_with_a_query_or_fragment_is_refused_naming_the_key(monkeypatch, url):
    """The SDK's httpx client appends /v2/... after the query (``/?code=.../v2/upload``, logged whole by
    httpx): refused as the OpenAI plugin refuses it, naming the key, never quoting the query."""
    with pytest.raises(ConfigError, match=r"providers\.assemblyai-eu\.base_url: .*cannot send query parameters") as c:
        AssemblyAISettings.load("assemblyai-eu", {"base_url": url}, environment=False)
    assert "QUERYSECRET" not in str(c.value)
    monkeypatch.setenv("ASSEMBLYAI_BASE_URL", url)
    with pytest.raises(ConfigError, match=r"providers\.assemblyai\.base_url \(from the environment variable "
                                          r"ASSEMBLYAI_BASE_URL\): .*cannot send query parameters") as c:
        AssemblyAISettings.load("assemblyai", {"api_key": "k"})
    assert "QUERYSECRET" not in str(c.value)


async def test_without_key_it_is_unconfigured(monkeypatch, fake):
    monkeypatch.delenv("ASSEMBLYAI_API_KEY", raising=False)
    provider = AssemblyAIProvider(AssemblyAISettings.load("assemblyai", {"api_key": "", "base_url": fake.url}))
    reason = provider.unconfigured_reason()
    assert reason == "no API key: set ASSEMBLYAI_API_KEY or providers.assemblyai.api_key"
    with pytest.raises(ProviderNotConfigured):
        await collect(provider, audio_request(), provider.model("best"))
    assert fake.requests == []


async def test_an_extra_instance_reads_only_its_own_section(monkeypatch, fake):
    """providers.assemblyai-eu with plugin: assemblyai gets nothing of the ASSEMBLYAI_* environment (which
    aai.Settings reads too), and its errors name it."""
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", KEY)  # the key the fake accepts: the instance must not send it
    monkeypatch.setenv("ASSEMBLYAI_BASE_URL", fake.url)
    registered: list = []
    register_providers(registered.append, {}, "assemblyai-eu")
    register_providers(registered.append, {"api_key": "aai-eu-key-31", "base_url": fake.url, "poll_interval": 0.01},
                       "assemblyai-eu")
    register_providers(registered.append, {"poll_interval": 0.01}, "assemblyai")
    keyless, eu, own = registered
    try:
        assert [p.name for p in registered] == ["assemblyai-eu", "assemblyai-eu", "assemblyai"]
        assert (keyless.settings.key, keyless.settings.base_url) == ("", "https://api.assemblyai.com")
        assert keyless.unconfigured_reason() == "no API key: set providers.assemblyai-eu.api_key"
        with pytest.raises(ProviderNotConfigured) as refused:
            await collect(keyless, audio_request(), keyless.model("best"))
        assert refused.value.metadata["provider"] == "assemblyai-eu"
        assert fake.requests == []

        with pytest.raises(ProviderAuthError) as caught:
            await collect(eu, audio_request(), eu.model("best"))
        assert (caught.value.provider, caught.value.metadata["provider"]) == ("assemblyai-eu", "assemblyai-eu")
        assert "providers.assemblyai-eu.api_key" in caught.value.message
        assert "ASSEMBLYAI_API_KEY" not in caught.value.message
        assert [r.headers["authorization"] for r in fake.requests] == ["aai-eu-key-31"]  # its own key only
        nothing = Request(messages=[Message(Role.USER, [Part(text="hi")])], options=Options(task=Task.TRANSCRIBE))
        with pytest.raises(ProviderBadRequest) as bad:
            await collect(eu, nothing, eu.model("best"))
        assert bad.value.provider == "assemblyai-eu"

        assert (own.settings.key, own.settings.base_url) == (KEY, fake.url)  # the own provider reads the environment
        events = await collect(own, audio_request(), own.model("best"))
        assert any(isinstance(e, TranscriptReady) for e in events)
        assert fake.requests[-1].headers["authorization"] == KEY
    finally:
        for provider in registered:
            await provider.aclose()


def test_registers_one_provider_with_diarizing_transcription_models(fake):
    registered = []
    register_providers(registered.append, {"api_key": KEY, "base_url": fake.url}, "assemblyai")
    (provider,) = registered
    assert provider.name == "assemblyai"
    assert [m.name for m in provider.models] == ["best", "universal-2", "nano"]
    for model in provider.models:
        assert model.inputs == {Modality.AUDIO, Modality.VIDEO}
        assert model.outputs == {"transcript"}
        assert "diarization" in model.features
        assert model.price.per_audio_hour > 0
        assert model.can_do(Task.TRANSCRIBE) and not model.can_do(Task.CHAT)


def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="mmrouter") if e.name == "assemblyai"]
    assert ep.value == "mmrouter_assemblyai"
    assert ep.load().register_providers is register_providers


@pytest.mark.parametrize(("tag", "code"), [
    ("en", "en"), ("en-US", "en_us"), ("en-GB", "en_uk"), ("en_AU", "en_au"), ("en-IN", "en"),
    ("fr-FR", "fr"), ("de", "de"), ("", ""), ("  ", ""),
])
def test_language_codes(tag, code):
    assert language_code(tag) == code


def test_fake_bodies_are_json():  # guards the fake: create answers parse as JSON transcripts
    with FakeAssemblyAI(api_key=KEY) as upstream:
        import urllib.request

        req = urllib.request.Request(f"{upstream.url}/v2/transcript", method="POST",
                                     data=json.dumps({"audio_url": "https://x/y",
                                                      "speech_models": ["universal-2"]}).encode(),
                                     headers={"authorization": KEY, "content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            assert json.loads(resp.read())["status"] == "queued"


# -- speech models (AssemblyAI refuses the singular speech_model and the best/nano tiers) ---------


async def test_configured_speech_models_are_sent_for_best_in_their_order(fake):
    provider = make_provider(fake, speech_models=["universal-3-5-pro", "universal-2"])
    try:
        await collect(provider, audio_request(), provider.model("best"))
        await collect(provider, audio_request(), provider.model("universal-2"))  # not touched by the setting
    finally:
        await provider.aclose()
    assert [c["speech_models"] for c in fake.created] == [["universal-3-5-pro", "universal-2"], ["universal-2"]]
    assert all("speech_model" not in c for c in fake.created)


def test_speech_models_setting_is_checked():
    load = AssemblyAISettings.load
    assert load("assemblyai", {}).speech_models == ("assemblyai-stt-3-7", "universal-2")
    assert load("assemblyai", {"speech_models": "universal-3-5-pro, universal-2"}).speech_models == (
        "universal-3-5-pro", "universal-2")  # a comma-separated string, as from ${VAR}
    for bad, message in [
        (["nano"], "AssemblyAI no longer takes 'nano'"),
        (["assemblyai-stt-3-7", "best"], "AssemblyAI no longer takes 'best'"),
        ([], "give at least one AssemblyAI speech model id"),
        (["Universal 2"], "'Universal 2' is not a speech model id"),
        (["universal-2", "universal-2"], "a speech model is listed twice"),
    ]:
        with pytest.raises(ConfigError, match=rf"providers\.assemblyai\.speech_models: .*{message}"):
            load("assemblyai", {"speech_models": bad})


def test_fake_refuses_the_singular_speech_model_and_unknown_ids_like_assemblyai():
    import urllib.error
    import urllib.request

    with FakeAssemblyAI(api_key=KEY) as upstream:
        def create(body: dict) -> tuple[int, str]:
            req = urllib.request.Request(f"{upstream.url}/v2/transcript", method="POST",
                                         data=json.dumps({"audio_url": "https://x/y", **body}).encode(),
                                         headers={"authorization": KEY, "content-type": "application/json"})
            try:
                with urllib.request.urlopen(req) as resp:
                    return resp.status, ""
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())["error"]

        assert create({"speech_model": "best"})[0] == 400
        assert create({"speech_models": ["universal-2"], "speech_model": "nano"})[0] == 400
        assert create({"speech_models": ["nano"]}) == (400, "Invalid speech_models ['nano']: accepted values are "
                                                            "assemblyai-stt-3-7, universal-2, universal-3-5-pro")
        assert create({"speech_models": ["universal-3-pro"]})[0] == 400
        assert create({"speech_models": []})[0] == 400
        assert create({})[0] == 400
        assert create({"speech_models": ["assemblyai-stt-3-7", "universal-2"]})[0] == 200


async def test_a_speech_model_assemblyai_refuses_is_a_bad_request(fake):
    provider = make_provider(fake, speech_models=["universal-9"])
    try:
        with pytest.raises(ProviderBadRequest) as refused:
            await collect(provider, audio_request(), provider.model("best"))
    finally:
        await provider.aclose()
    assert "universal-9" in refused.value.message
    assert fake.transcripts == {}


# -- failed status polls: retried while the transcript runs on at AssemblyAI ---------------------


async def generate_with(provider, ctx: CallContext, request: Request | None = None) -> list:
    """Every event of ``provider.generate`` under ``ctx`` (no deadline with ``deadline=None``), within 5 s."""

    async def run() -> list:
        return [e async for e in provider.generate(request or audio_request(), provider.model("best"), ctx)]

    return await asyncio.wait_for(run(), timeout=5)


@pytest.mark.parametrize("failure", [500, 502, 503, 504, "disconnect"])
async def test_transient_poll_failures_are_retried_without_a_second_submit(fake, provider, failure):
    """A status poll answered 5xx, or a connection closed without an answer, does not end the call: the job
    runs on (and is billed) at AssemblyAI, so it is polled again and its transcript returned."""
    fake.poll_failures = [failure, failure]
    events = await collect(provider, audio_request(), provider.model("best"))
    assert [type(e) for e in events] == [TranscriptReady, UsageReport]
    assert events[0].transcript.utterances
    assert len(fake.uploads) == 1 and len(fake.created) == 1  # submitted once
    (job,) = fake.transcripts.values()
    label = failure if failure == "disconnect" else f"HTTP {failure}"
    assert job.history == [label, label, "processing", "completed"]


async def test_each_retried_poll_failure_is_logged_as_a_warning_without_the_key(fake, provider, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="mmrouter_assemblyai")
    fake.poll_failures = [502, "disconnect"]
    await collect(provider, audio_request(), provider.model("best"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("mmrouter_assemblyai")]
    assert len(warnings) == 2
    texts = [r.getMessage() for r in warnings]
    assert all("tr-1" in t for t in texts)
    assert "HTTP 502" in texts[0] and "cannot reach the AssemblyAI API" in texts[1]
    assert not any(KEY in t for t in texts)


@pytest.mark.parametrize(("status", "error_type"), [
    (400, ProviderBadRequest), (401, ProviderAuthError), (403, ProviderAuthError),
])
async def test_a_non_transient_poll_failure_fails_at_once_even_after_a_retried_one(fake, provider, status,
                                                                                    error_type):
    fake.poll_failures = [502, status, 502]
    with pytest.raises(error_type) as info:
        await collect(provider, audio_request(), provider.model("best"))
    assert type(info.value) is error_type
    assert fake.polls() == 2  # the 502 retried, then no more polls
    assert len(fake.created) == 1
    assert KEY not in str(info.value)


async def test_without_a_deadline_consecutive_poll_failures_end_the_call_at_the_bound(fake, provider):
    fake.poll_failures = [503] * (MAX_POLL_FAILURES + 3)
    with pytest.raises(ProviderUnavailable) as info:
        await generate_with(provider, CallContext(request_id="no-deadline", deadline=None))
    assert type(info.value) is ProviderUnavailable and info.value.reason == "PROVIDER_UNAVAILABLE"
    assert fake.polls() == MAX_POLL_FAILURES
    assert "HTTP 503" in info.value.message and "tr-1" in info.value.message
    assert f"{MAX_POLL_FAILURES} failed status polls in a row" in info.value.message
    assert len(fake.created) == 1


async def test_a_successful_poll_resets_the_count_of_failed_polls(fake, provider):
    bad = [503] * (MAX_POLL_FAILURES - 1)
    fake.poll_failures = [*bad, None, *bad]  # None: answered normally ("processing")
    events = await generate_with(provider, CallContext(request_id="reset", deadline=None))
    assert isinstance(events[0], TranscriptReady)
    (job,) = fake.transcripts.values()
    assert job.history == [*["HTTP 503"] * len(bad), "processing", *["HTTP 503"] * len(bad), "completed"]


async def test_with_a_near_deadline_failing_polls_are_retried_until_it_passes(fake):
    """A deadline that passes before the bound of failed polls in a row: the polls are retried until the
    deadline, then the last poll error (the API's failure, not a "still processing" the plugin cannot know)
    ends the call."""
    fake.poll_failures = [503] * 10_000
    provider = make_provider(fake, poll_interval=0.4)  # at most 4 polls (0, 0.4, 0.8, 1.0 s) before the deadline
    provider._sdk()  # imported before the clock starts
    started = time.monotonic()
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await generate_with(provider, CallContext(request_id="deadline", deadline=started + 1.0))
    finally:
        await provider.aclose()
    assert time.monotonic() - started >= 0.95 - DEADLINE_HEADROOM_SECONDS  # the deadline's, less the headroom
    assert 1 <= fake.polls() < MAX_POLL_FAILURES
    assert "HTTP 503" in info.value.message and "the call's deadline passed" in info.value.message
    assert len(fake.created) == 1


async def test_with_a_far_deadline_consecutive_poll_failures_end_the_call_at_the_bound(fake, provider):
    """The bound of failed polls in a row holds whatever the deadline (it used to apply only to a call without
    one): an outage makes the router fall back instead of polling until a far deadline."""
    fake.poll_failures = [503] * (MAX_POLL_FAILURES + 3)
    ctx = CallContext(request_id="far-deadline", deadline=time.monotonic() + 3600)
    with pytest.raises(ProviderUnavailable) as info:
        await generate_with(provider, ctx)
    assert type(info.value) is ProviderUnavailable and info.value.reason == "PROVIDER_UNAVAILABLE"
    assert fake.polls() == MAX_POLL_FAILURES
    (job,) = fake.transcripts.values()
    assert job.history == ["HTTP 503"] * MAX_POLL_FAILURES
    assert "HTTP 503" in info.value.message and "tr-1" in info.value.message
    assert f"{MAX_POLL_FAILURES} failed status polls in a row" in info.value.message
    assert KEY not in info.value.message
    assert len(fake.created) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_a_poll_failure_with_retry_after_waits_it(fake, provider, status):
    fake.poll_failures = [(status, {"Retry-After": "1"})]
    started = time.monotonic()
    events = await collect(provider, audio_request(), provider.model("best"))
    elapsed = time.monotonic() - started
    assert isinstance(events[0], TranscriptReady)
    assert 1.0 <= elapsed < 10  # waited the Retry-After (polled every 10 ms otherwise)
    (job,) = fake.transcripts.values()
    assert job.history == [f"HTTP {status}", "processing", "completed"]


async def test_a_retry_after_past_the_deadline_is_cut_to_the_deadline(fake):
    """A Retry-After of 30 s with 1 s left: the plugin waits until just before the deadline (its headroom) and
    polls once more there."""
    fake.statuses = ("queued", "completed")
    fake.poll_failures = [(429, {"Retry-After": "30"})]
    provider = make_provider(fake)
    provider._sdk()
    started = time.monotonic()
    try:
        events = await generate_with(provider, CallContext(request_id="cut", deadline=started + 1.0))
    finally:
        await provider.aclose()
    elapsed = time.monotonic() - started
    assert isinstance(events[0], TranscriptReady)
    assert 0.95 - DEADLINE_HEADROOM_SECONDS <= elapsed < 10  # the deadline's (less the headroom), not the Retry-After's 30 s
    assert fake.polls() == 2


async def test_a_404_on_a_poll_is_unavailable_and_names_the_transcript(fake, provider):
    """The model exists; the transcript id is unknown (deleted, another account or region): UNAVAILABLE, so the
    router may fall back, and not PROVIDER_MODEL_NOT_FOUND. Not retried."""
    fake.poll_failures = [404]
    with pytest.raises(ProviderUnavailable) as info:
        await collect(provider, audio_request(), provider.model("best"))
    err = info.value
    assert type(err) is ProviderUnavailable and not isinstance(err, ProviderModelNotFound)
    assert err.reason == "PROVIDER_UNAVAILABLE" and err.retryable
    assert "transcript tr-1" in err.message and "HTTP 404" in err.message
    assert fake.polls() == 1
