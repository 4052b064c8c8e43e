"""AssemblyAI through the running daemon: the real SDK talks to a fake AssemblyAI API.

Uses the ``start_daemon`` fixture of tests/conftest.py, which starts the real
daemon as a subprocess with the given config.
"""

from __future__ import annotations

import io
import time
import wave

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import (
    assert_instance_listed,
    error_details,
    instance_config,
    providers_by_name,
    text_request,
    wait_for,
)
from grpc_status import rpc_status
from mmrouter.v1 import router_pb2 as pb

from router.sessions import SessionStore
from tests.fakes.assemblyai import FakeAssemblyAI

KEY = "aai-e2e-key-9c1d"

CONFIG = """
providers:
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{url}", timeout: 10, poll_interval: 0.05}}
routes:
  - name: diarization
    match: {{inputs_any: [audio, video], diarization: true}}
    use: assemblyai/best
default: assemblyai/nano
"""

SPEAKER_TEXT = (
    "Speaker A: Hello, thanks for joining the call.\n"
    "Speaker B: Happy to be here.\n"
    "Speaker A: Let us start with the budget."
)


def wav_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x02\x00" * int(seconds * rate))
    return buf.getvalue()


def request_for(media: pb.Media, *, diarization: bool = True, speakers: int = 2) -> pb.MultimodalRequest:
    options = pb.Options(task=pb.TASK_TRANSCRIBE, diarization=diarization, speakers_expected=speakers)
    return text_request("", media=[media], options=options)


def wav_media(data: bytes) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=data, filename="call.wav")


@pytest.fixture(scope="module")
def module_fake():
    with FakeAssemblyAI(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture
def fake(module_fake):
    """The module's fake, put back as it was started, but for its transcript ids, which go on counting; at the
    end of the test, once the daemon deleted the transcripts it read (it does so in the background): a late
    delete reaches no other test."""
    module_fake.reset(keep={"_ids"})
    yield module_fake
    wait_for(lambda: set(module_fake.delete_requests) >= set(module_fake.transcripts), timeout=10)


def module_daemon(config: str, module_fake, plugin_sites, tmp_path_factory):
    """A daemon of ``config`` (CONFIG's placeholders) on the module's fake, for the tests of the module that
    share it (starting one per test took most of the module's time); its fixture says what they must not do."""
    daemon = launch_daemon(config.format(url=module_fake.url), tmp=tmp_path_factory.mktemp("assemblyai"),
                           env={"AAI_TEST_KEY": KEY}, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def config_daemon(module_fake, plugin_sites, tmp_path_factory):
    """One daemon of CONFIG for the tests that only transcribe (or fail to) and check what they got and what
    the fake received. Tests sharing it must not read its statistics, log or provider listing (health), nor
    make AssemblyAI answer with a retry delay (a cool-down)."""
    yield from module_daemon(CONFIG, module_fake, plugin_sites, tmp_path_factory)


@pytest.fixture
def daemon(config_daemon, fake):
    return config_daemon


def test_diarized_transcript_through_the_daemon(daemon, fake):
    audio = wav_bytes()
    resp = daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(audio))), timeout=30)

    # What AssemblyAI received.
    assert fake.uploads == [audio]
    assert {r.headers["authorization"] for r in fake.requests} == {KEY}
    (created,) = fake.created
    assert created["speaker_labels"] is True
    assert created["speakers_expected"] == 2
    assert created["speech_models"] == ["assemblyai-stt-3-7", "universal-2"]
    assert "speech_model" not in created
    assert created["language_detection"] is True
    assert next(iter(fake.transcripts.values())).history == ["processing", "completed"]

    # What the client got.
    answer = resp.answer
    assert [(u.speaker, u.start_seconds, u.end_seconds, u.text) for u in answer.transcript.utterances] == [
        ("A", 0.24, 2.1, "Hello, thanks for joining the call."),
        ("B", 2.3, 4.02, "Happy to be here."),
        ("A", 4.2, 6.48, "Let us start with the budget."),
    ]
    assert answer.transcript.utterances[1].confidence == pytest.approx(0.93)
    assert answer.transcript.words[0].text == "Hello,"
    assert answer.transcript.words[0].speaker == "A"
    assert answer.transcript.text == SPEAKER_TEXT
    assert answer.text == SPEAKER_TEXT
    assert answer.transcript.language == "en-US"
    assert answer.usage.audio_seconds == 7
    assert answer.usage.cost_usd == pytest.approx(7 * 0.21 / 3600)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("diarization", "assemblyai", "best")
    assert [(a.provider, a.model, a.ok) for a in answer.route.attempts] == [("assemblyai", "best", True)]


def test_uploaded_media_reaches_assemblyai_intact(daemon, fake):
    audio = wav_bytes(2.0)

    def chunks():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="long.wav", size_bytes=len(audio)))
        for i in range(0, len(audio), 4096):
            yield pb.UploadMediaRequest(chunk=audio[i:i + 4096])

    uploaded = daemon.stub.UploadMedia(chunks(), timeout=30)
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", media_id=uploaded.media_id)
    resp = daemon.stub.Generate(pb.GenerateRequest(request=request_for(media, speakers=0)), timeout=30)
    assert fake.uploads == [audio]
    assert "speakers_expected" not in fake.created[0]
    assert resp.answer.transcript.utterances[0].speaker == "A"


def test_video_without_diarization_goes_to_the_default_nano(daemon, fake):
    video = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 256
    media = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=video)
    resp = daemon.stub.Generate(
        pb.GenerateRequest(request=request_for(media, diarization=False, speakers=0)), timeout=30)
    assert fake.uploads == [video]
    assert fake.created[0]["speech_models"] == ["universal-2"]  # nano: a deprecated alias of universal-2
    assert (resp.answer.route.provider, resp.answer.route.model) == ("assemblyai", "nano")
    assert resp.answer.usage.cost_usd == pytest.approx(7 * 0.15 / 3600)
    assert resp.answer.text == SPEAKER_TEXT


def test_streamed_transcript(daemon, fake):
    events = list(daemon.stub.StreamGenerate(
        pb.StreamGenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done"
    assert "transcript" in kinds and "usage" in kinds
    transcript = next(e.transcript for e in events if e.WhichOneof("event") == "transcript")
    assert transcript.text == SPEAKER_TEXT
    assert events[-1].done.answer.usage.audio_seconds == 7
    assert events[0].route_chosen.route.provider == "assemblyai"
    assert fake.created[0]["speaker_labels"] is True


def test_failed_transcript_is_a_clear_grpc_error(daemon, fake):
    fake.statuses = ("queued", "processing", "error")
    fake.error_message = "Transcoding failed. File does not appear to contain audio."
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "File does not appear to contain audio" in err.details()
    assert "assemblyai" in err.details()
    assert error_details(err).reason == "PROVIDER_BAD_REQUEST"
    assert fake.polls() == 2


#: CONFIG with a fallback for diarized transcription: another AssemblyAI model (a second transcript).
FALLBACK_CONFIG = CONFIG.replace("    use: assemblyai/best\n",
                                 "    use: assemblyai/best\n    fallback: [assemblyai/universal-2]\n")


@pytest.fixture(scope="module")
def fallback_daemon(module_fake, plugin_sites, tmp_path_factory):
    """One daemon of FALLBACK_CONFIG for the tests of a transcript failing: AssemblyAI's failed transcripts carry
    no retry delay (no cool-down). Tests sharing it must not read its statistics, log or health either."""
    yield from module_daemon(FALLBACK_CONFIG, module_fake, plugin_sites, tmp_path_factory)


def test_a_transcript_failed_on_assemblyais_side_falls_back_to_the_next_target(fallback_daemon, fake):
    """AssemblyAI's "Server error, developers have been alerted." is its fault, and resubmitting is what it
    advises: UNAVAILABLE, so the rule's fallback is tried and answers."""
    assert FALLBACK_CONFIG != CONFIG
    daemon = fallback_daemon
    fake.statuses = ("queued", "processing", "error")
    fake.error_message = "Server error, developers have been alerted."
    fake.later_statuses = ("queued", "processing", "completed")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30).answer
    assert (answer.route.provider, answer.route.model, answer.text) == ("assemblyai", "universal-2", SPEAKER_TEXT)
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("best", False), ("universal-2", True)]
    assert "Server error, developers have been alerted." in answer.route.attempts[0].error
    assert any("assemblyai/best failed (PROVIDER_UNAVAILABLE" in n and "trying the next target" in n
               for n in answer.route.notes), answer.route.notes
    assert [t.history[-1] for t in fake.transcripts.values()] == ["error", "completed"]
    assert [c["speech_models"] for c in fake.created][1] == ["universal-2"]


def test_a_transcript_failed_on_assemblyais_side_without_fallback_is_unavailable(daemon, fake):
    fake.statuses = ("queued", "error")
    fake.error_message = "Internal server error"
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(info.value).reason == "PROVIDER_UNAVAILABLE"
    assert "Internal server error" in info.value.details() and KEY not in info.value.details()


@pytest.mark.parametrize("text", [
    "Download error, unable to download https://foo.bar. Please make sure the file exists and is accessible "
    "from the internet.",
    "Audio duration is too short.",
    "Failed to transcribe.",  # unknown: the media's fault, as before
])
def test_a_transcript_failed_for_its_media_does_not_fall_back(fallback_daemon, fake, text):
    """The media is at fault: another model would fail on it too (and be billed): INVALID_ARGUMENT at once."""
    daemon = fallback_daemon
    fake.statuses = ("queued", "error")
    fake.error_message = text
    fake.later_statuses = ("queued", "completed")
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value).reason == "PROVIDER_BAD_REQUEST"
    assert text in info.value.details()
    assert len(fake.created) == 1  # the fallback was not tried


def test_a_failing_later_clip_keeps_the_cost_of_the_clips_before_it(start_daemon, fake, tmp_path):
    """Clip 1 was transcribed (and billed by AssemblyAI) when clip 2 failed: its audio seconds and cost
    reach the statistics as a failed step."""
    daemon = start_daemon(CONFIG.format(url=fake.url), env={"AAI_TEST_KEY": KEY})  # its own: it reads the stats
    fake.later_statuses = ("queued", "error")
    request = request_for(wav_media(wav_bytes()))
    request.messages[0].parts.append(pb.Part(media=wav_media(wav_bytes(0.7))))
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [t.history[-1] for t in fake.transcripts.values()] == ["completed", "error"]
    store = SessionStore(tmp_path / "data" / "sessions.sqlite")
    try:
        deadline = time.monotonic() + 10
        while not (rows := store.stats()):  # written by the daemon within 50 ms
            assert time.monotonic() < deadline, "the billed clip never reached the statistics"
            time.sleep(0.05)
    finally:
        store.close()
    [row] = rows
    assert (row["provider"], row["purpose"]) == ("assemblyai", "answer (failed)")
    assert row["audio_seconds"] == pytest.approx(fake.audio_duration)
    assert row["cost_usd"] > 0


def test_refused_key_names_the_setting_not_the_key(start_daemon, fake):
    daemon = start_daemon(CONFIG.format(url=fake.url), env={"AAI_TEST_KEY": "wrong-secret-771"})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # the key came from the section (api_key: ${AAI_TEST_KEY}), which never reads ASSEMBLYAI_API_KEY
    assert "check providers.assemblyai.api_key (the key this section gives)" in err.details()
    assert "wrong-secret-771" not in err.details()
    assert "wrong-secret-771" not in str(rpc_status.from_call(err))
    assert "wrong-secret-771" not in daemon.logs()
    assert fake.requests[0].headers["authorization"] == "wrong-secret-771"


def test_listed_as_a_ready_diarizing_provider(start_daemon, fake):
    daemon = start_daemon(CONFIG.format(url=fake.url), env={"AAI_TEST_KEY": KEY})  # its own: it reads the health
    providers = providers_by_name(daemon.stub, timeout=10)
    info = providers["assemblyai"]
    assert info.state == pb.PROVIDER_STATE_READY
    models = {m.name: m for m in info.models}
    assert set(models) == {"best", "universal-2", "nano"}
    assert "diarization" in models["best"].features
    assert set(models["best"].inputs) == {pb.MODALITY_AUDIO, pb.MODALITY_VIDEO}
    assert models["best"].price.per_audio_hour == pytest.approx(0.21)
    assert models["universal-2"].price.per_audio_hour == pytest.approx(0.15)


def test_an_extra_instance_with_its_own_key_next_to_assemblyai(start_daemon, fake):
    """providers.assemblyai-eu with plugin: assemblyai is a second provider made by the same plugin, with its
    own key and address; ASSEMBLYAI_API_KEY and ASSEMBLYAI_BASE_URL stay with the assemblyai provider."""
    eu_key = "aai-eu-e2e-key-40b7"
    with FakeAssemblyAI(api_key=eu_key) as eu:
        daemon = start_daemon(instance_config("assemblyai", "assemblyai-eu", eu.url, "timeout: 10, poll_interval: 0.05",
                                              "assemblyai-eu/best", "assemblyai/universal-2", extra="poll_interval: 0.05"),
                              env={"ASSEMBLYAI_API_KEY": KEY, "ASSEMBLYAI_BASE_URL": fake.url, "INSTANCE_KEY": eu_key})
        audio = wav_bytes()
        eu_request = request_for(wav_media(audio))
        eu_request.hints.tags.append("instance")
        mine = daemon.stub.Generate(pb.GenerateRequest(request=eu_request), timeout=30).answer
        theirs = daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(audio))), timeout=30).answer
        assert (mine.route.provider, mine.route.model) == ("assemblyai-eu", "best")
        assert (theirs.route.provider, theirs.route.model) == ("assemblyai", "universal-2")
        assert eu.uploads == [audio] and fake.uploads == [audio]
        assert {r.headers["authorization"] for r in eu.requests} == {eu_key}
        assert {r.headers["authorization"] for r in fake.requests} == {KEY}
        assert [c["speech_models"] for c in eu.created] == [["assemblyai-stt-3-7", "universal-2"]]
        assert [c["speech_models"] for c in fake.created] == [["universal-2"]]

        assert_instance_listed(daemon.stub, "assemblyai", "assemblyai-eu")


def test_speech_models_setting_reaches_assemblyai_through_the_daemon(start_daemon, fake):
    """providers.assemblyai.speech_models is what assemblyai/best sends (as AssemblyAI's plural
    speech_models, never the singular speech_model it refuses), so operators follow AssemblyAI's models
    without a release."""
    config = CONFIG.replace("poll_interval: 0.05}", "poll_interval: 0.05, speech_models: [universal-3-5-pro, universal-2]}")
    daemon = start_daemon(config.format(url=fake.url), env={"AAI_TEST_KEY": KEY})
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=30).answer
    assert (answer.route.provider, answer.route.model) == ("assemblyai", "best")
    (created,) = fake.created
    assert created["speech_models"] == ["universal-3-5-pro", "universal-2"]
    assert "speech_model" not in created
    assert answer.transcript.text == SPEAKER_TEXT


def test_a_refused_speech_models_setting_stops_serve_naming_the_key(start_daemon, fake):
    """A provider section its plugin refuses is a configuration error: serve refuses to start, as config
    check fails (it started and listed the provider broken, so every request to it failed)."""
    config = CONFIG.replace("poll_interval: 0.05}", "poll_interval: 0.05, speech_models: [nano]}")
    with pytest.raises(RuntimeError, match="daemon exited") as info:
        start_daemon(config.format(url=fake.url), env={"AAI_TEST_KEY": KEY})
    assert "providers.assemblyai.speech_models" in str(info.value)
    assert "no longer takes 'nano'" in str(info.value) and KEY not in str(info.value)
