"""OpenAI through the running daemon: the real ``openai`` SDK talks to the fake OpenAI API.

Most tests share one daemon per config for the module (see :func:`shared_daemon`); those that change
or read daemon-wide state start their own with the ``start_daemon`` fixture of tests/conftest.py (the
real daemon as a subprocess). Asserts both sides: what the fake received and what the gRPC
client got back (text, streamed deltas, transcript, usage, cost, route).
"""

from __future__ import annotations

import email.utils
import io
import struct
import time
import wave

import grpc
import pytest
from conftest import fake_fixtures, launch_daemon
from grpc_helpers import error_details, everything_said, providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb
from PIL import Image

from router.sessions import SessionStore
from tests.fakes.openai import API_KEY, FakeOpenAI, error_body

CONFIG = """
providers:
  openai:
    api_key: "${{OPENAI_TEST_KEY}}"
    base_url: "{url}"
    timeout: {timeout}
    http_client: {transport}
    prices:
      gpt-4o-mini: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
routes:
  - name: transcription
    match: {{inputs_any: [audio], task: [transcribe]}}
    use: openai/whisper-1
  - name: audio-chat
    match: {{inputs_any: [audio], task: [chat]}}
    use: openai/gpt-audio
  - name: cheap
    match: {{tags: [cheap]}}
    use: openai/gpt-4o-mini
  - name: cross-modal
    match: {{inputs_any: [image]}}
    use: openai/gpt-4o
default: openai/gpt-4o
"""

WHISPER_TEXT = "Hello there. General Kenobi."


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.3, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", (i * 131) % 3000 - 1500) for i in range(int(seconds * rate))))
    return buf.getvalue()


def text_part(value: str) -> pb.Part:
    return pb.Part(text=value)


def image_part(data: bytes) -> pb.Part:
    return pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=data))


def audio_part(data: bytes, filename: str = "clip.wav") -> pb.Part:
    return pb.Part(media=pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=data, filename=filename))


def ask(*parts: pb.Part, task: int = pb.TASK_AUTO, tags: tuple[str, ...] = (), session: str = "",
        system: str = "") -> pb.MultimodalRequest:
    messages = [pb.Message(role=pb.ROLE_SYSTEM, parts=[text_part(system)])] if system else []
    messages.append(pb.Message(role=pb.ROLE_USER, parts=list(parts)))
    return pb.MultimodalRequest(messages=messages, options=pb.Options(task=task),
                                hints=pb.RoutingHints(tags=list(tags)), session_id=session)


shared_fake, fake, own_fake = fake_fixtures(FakeOpenAI)


def config(fake: FakeOpenAI, *, timeout: float = 10, transport: str = "") -> str:
    """CONFIG, its openai provider calling ``fake``; ``transport`` is its http_client ("": the default)."""
    return CONFIG.format(url=fake.base_url, timeout=timeout, transport=transport)


def start(start_daemon, fake: FakeOpenAI, *, key: str = API_KEY, timeout: float = 10, transport: str = ""):
    """A daemon of the test's own whose openai provider calls ``fake`` (see :func:`config`)."""
    return start_daemon(config(fake, timeout=timeout, transport=transport), env={"OPENAI_TEST_KEY": key})


@pytest.fixture(scope="module")
def shared_daemon(shared_fake, plugin_sites, tmp_path_factory):
    """One daemon of CONFIG (the default transport) for the module's tests that only make calls and check
    what the fake and the client got: starting one per test (and importing the SDK in each) took minutes.

    A test sharing it must not make the fake answer 429, or 503 with Retry-After (the target would cool
    down for 60 s), read the statistics, ListProviders or log lines not of its own call, or need another
    config or key; it uses a session id and media no other test uses. Such tests start their own daemon."""
    daemon = launch_daemon(config(shared_fake), tmp=tmp_path_factory.mktemp("openai-e2e"),
                           env={"OPENAI_TEST_KEY": API_KEY}, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(shared_daemon, fake):
    """The module's shared daemon (see :func:`shared_daemon`), its fake reset."""
    return shared_daemon


@pytest.fixture(scope="module", params=["aiohttp", "httpx"])
def shared_each_transport(request, shared_fake, plugin_sites, tmp_path_factory):
    """A daemon with each of the SDK transports the plugin offers (aiohttp is the default), shared by the
    module's tests on the same terms as :func:`shared_daemon`."""
    daemon = launch_daemon(config(shared_fake, transport=request.param), env={"OPENAI_TEST_KEY": API_KEY},
                           tmp=tmp_path_factory.mktemp(f"openai-e2e-{request.param}"),
                           sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


@pytest.fixture
def each_transport(shared_each_transport, fake):
    """The module's daemon with each transport (see :func:`shared_each_transport`), its fake reset."""
    return shared_each_transport


def test_images_and_text_through_generate(daemon, fake):
    red, green = png_bytes((255, 0, 0)), png_bytes((0, 255, 0))
    reply = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        text_part("Which is redder?"), image_part(red), text_part("or"), image_part(green),
        system="Answer in one word.")), timeout=30)
    answer = reply.answer

    [body] = fake.chat_requests()
    assert body["model"] == "gpt-4o" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}
    parts = fake.parts(body["messages"][1])
    assert [p.kind for p in parts] == ["text", "image", "text", "image"]
    assert [parts[1].data, parts[3].data] == [red, green]
    assert parts[1].mime_type == "image/png"

    assert answer.text == "Hello from the fake GPT."
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "openai", "gpt-4o")
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (1234, 56)
    assert answer.usage.cost_usd == pytest.approx(1234 * 2.50 / 1e6 + 56 * 10.00 / 1e6)


def test_stream_generate_delivers_deltas_then_usage_and_done(each_transport, fake):
    daemon = each_transport
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=ask(text_part("Say hello"), tags=("cheap",))), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done"
    assert events[0].route_chosen.route.model == "gpt-4o-mini"
    assert [e.text_delta.text for e in events if e.HasField("text_delta")] == ["Hello", " from", " the fake", " GPT."]
    usages = [e.usage for e in events if e.HasField("usage")]
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [(1234, 56)]
    done = events[-1].done.answer
    assert done.text == "Hello from the fake GPT."
    assert (done.route.rule, done.route.provider, done.route.model) == ("cheap", "openai", "gpt-4o-mini")
    # the config's price override for gpt-4o-mini is what the cost is computed from
    assert done.usage.cost_usd == pytest.approx(1234 * 1.0 / 1e6 + 56 * 2.0 / 1e6)
    assert fake.chat_requests()[0]["model"] == "gpt-4o-mini"


def test_the_finish_reason_reaches_the_client(daemon, fake):
    """A finished answer is STOP; one cut at max_tokens is LENGTH with a route note; a refusal
    (``delta.refusal``) is the answer's text, with REFUSAL."""
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"))), timeout=30).answer
    assert answer.finish_reason == pb.FINISH_REASON_STOP
    fake.finish_reason = "length"
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"))), timeout=30).answer
    assert answer.finish_reason == pb.FINISH_REASON_LENGTH and answer.text == "Hello from the fake GPT."
    assert any("the answer was cut at openai/gpt-4o's output limit" in n for n in answer.route.notes)
    fake.finish_reason, fake.refusal = "stop", "I can't help with that."
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask(text_part("hi"))), timeout=30))
    done = events[-1].done.answer
    assert (done.text, done.finish_reason) == ("I can't help with that.", pb.FINISH_REASON_REFUSAL)
    assert [e.text_delta.text for e in events if e.HasField("text_delta")] == ["I can't help with that."]


def test_session_history_reaches_the_model(daemon, fake):
    """The history in order, and this turn's system prompt first (not after the history: chat templates
    of OpenAI-compatible servers refuse a system message in the middle)."""
    for question in ("My name is Ada.", "What is my name?"):
        daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part(question), session="s-1", system="Be terse.")),
                             timeout=30)
    first, second = fake.chat_requests()
    assert [(m["role"], m["content"]) for m in first["messages"]] == [
        ("system", "Be terse."), ("user", "My name is Ada.")]
    assert [(m["role"], m["content"]) for m in second["messages"]] == [
        ("system", "Be terse."), ("user", "My name is Ada."), ("assistant", "Hello from the fake GPT."),
        ("user", "What is my name?")]


def test_whisper_transcription_with_segments_and_cost(each_transport, fake):
    daemon = each_transport
    clip = wav_bytes()
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(audio_part(clip, "standup.wav"))),
                                  timeout=30).answer

    [upload] = fake.uploads()
    assert upload.field("model") == "whisper-1" and upload.field("response_format") == "verbose_json"
    assert upload.fields["timestamp_granularities[]"] == ["word", "segment"]
    assert upload.files["file"] == ("standup.wav", "audio/wav", clip)

    assert (answer.route.rule, answer.route.model) == ("transcription", "whisper-1")
    t = answer.transcript
    assert t.text == WHISPER_TEXT and answer.text == WHISPER_TEXT
    assert [(u.text, u.start_seconds, u.end_seconds) for u in t.utterances] == [
        ("Hello there.", 0.0, 1.2), ("General Kenobi.", 1.2, 2.5)]
    assert [(w.text, w.start_seconds, w.end_seconds) for w in t.words] == [
        ("Hello", 0.0, 0.5), ("there", 0.5, 1.1), ("General", 1.3, 1.8), ("Kenobi", 1.8, 2.4)]
    assert t.duration_seconds == pytest.approx(2.5)
    assert t.language == "en"  # whisper said "english"
    assert answer.usage.audio_seconds == pytest.approx(3.0)
    assert answer.usage.cost_usd == pytest.approx(3.0 * 0.36 / 3600)


def test_whisper_language_names_reach_the_client_as_bcp47_codes(daemon, fake):
    """whisper-1 answers the language's name; the client gets its code, as Transcript.language documents."""
    got = {}
    for name in ("english", "german", "Haitian Creole"):
        fake.language = name
        got[name] = daemon.stub.Generate(pb.GenerateRequest(request=ask(audio_part(wav_bytes()))),
                                         timeout=30).answer.transcript.language
    assert got == {"english": "en", "german": "de", "Haitian Creole": "ht"}


def test_the_requested_language_is_reported_when_the_model_names_none(daemon, fake):
    """gpt-4o-transcribe answers plain json without a language: the client's own tag comes back whole."""
    request = ask(audio_part(wav_bytes()), task=pb.TASK_TRANSCRIBE)
    request.options.language = "pt-BR"
    request.hints.provider, request.hints.model = "openai", "gpt-4o-transcribe"
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert answer.route.model == "gpt-4o-transcribe"
    assert answer.transcript.language == "pt-BR"
    [upload] = fake.uploads()
    assert upload.field("language") == "pt" and "timestamp_granularities[]" not in upload.fields


def test_several_clips_give_one_transcript_with_shifted_word_times(daemon, fake):
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        audio_part(wav_bytes(), "a.wav"), audio_part(wav_bytes(), "b.wav"))), timeout=30).answer
    words = [(w.text, w.start_seconds, w.end_seconds) for w in answer.transcript.words]
    assert words == [("Hello", 0.0, 0.5), ("there", 0.5, 1.1), ("General", 1.3, 1.8), ("Kenobi", 1.8, 2.4),
                     ("Hello", 2.5, 3.0), ("there", 3.0, 3.6), ("General", 3.8, 4.3), ("Kenobi", 4.3, 4.9)]
    assert [u.start_seconds for u in answer.transcript.utterances] == [0.0, 1.2, 2.5, 3.7]
    assert answer.usage.audio_seconds == pytest.approx(6.0)


@pytest.mark.parametrize(("status", "code"), [(500, grpc.StatusCode.UNAVAILABLE),
                                              (400, grpc.StatusCode.INVALID_ARGUMENT)])
def test_a_failing_later_clip_still_reports_the_usage_of_those_transcribed(start_daemon, fake, status, code,
                                                                           tmp_path):
    """Clip 1 was transcribed (and billed) when clip 2 failed: the stream carries its transcript and usage
    before the error, and the statistics keep it as a failed step."""
    daemon = start(start_daemon, fake)  # its own: it reads the statistics
    fake.fail_files["b.wav"] = status
    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask(
        audio_part(wav_bytes(), "a.wav"), audio_part(wav_bytes(), "b.wav"), audio_part(wav_bytes(), "c.wav"))),
        timeout=30)
    events = []
    with pytest.raises(grpc.RpcError) as info:
        events.extend(stream)
    assert info.value.code() == code and "could not transcribe b.wav" in info.value.details()
    assert [e.WhichOneof("event") for e in events] == ["route_chosen", "transcript", "usage"]  # clip 1's
    assert events[2].usage.audio_seconds == pytest.approx(3.0)
    assert events[2].usage.cost_usd == pytest.approx(3.0 * 0.36 / 3600)
    assert [u.files["file"][0] for u in fake.uploads()] == ["a.wav", "b.wav"]
    deadline = time.monotonic() + 10
    while not (rows := _stats(tmp_path / "data")):  # written by the daemon within 50 ms
        assert time.monotonic() < deadline, "the failed call's paid part never reached the statistics"
        time.sleep(0.05)
    [row] = rows
    assert (row["model"], row["purpose"]) == ("whisper-1", "answer (failed)")
    assert row["cost_usd"] == pytest.approx(3.0 * 0.36 / 3600)


def _stats(data_dir) -> list[dict]:
    store = SessionStore(data_dir / "sessions.sqlite")
    try:
        return store.stats()
    finally:
        store.close()


def test_uploaded_audio_is_transcribed_by_media_id(daemon, fake):
    clip = wav_bytes(1.0)
    chunks = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="long.wav", size_bytes=len(clip)))]
    chunks += [pb.UploadMediaRequest(chunk=clip[i:i + 4096]) for i in range(0, len(clip), 4096)]
    uploaded = daemon.stub.UploadMedia(iter(chunks), timeout=30)
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", media_id=uploaded.media_id)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(media=media), task=pb.TASK_TRANSCRIBE)),
                                  timeout=30).answer
    assert answer.transcript.text == WHISPER_TEXT
    filename, _, data = fake.uploads()[0].files["file"]
    assert data == clip and filename.endswith(".wav")


def test_audio_as_chat_input(daemon, fake):
    clip = wav_bytes()
    fake.usage = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                  "prompt_tokens_details": {"audio_tokens": 800, "cached_tokens": 0}}
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        text_part("What is the tone?"), audio_part(clip), task=pb.TASK_CHAT)), timeout=30).answer
    assert (answer.route.rule, answer.route.model) == ("audio-chat", "gpt-audio")
    assert answer.text == "Hello from the fake GPT."
    [body] = fake.chat_requests()
    assert body["model"] == "gpt-audio"
    parts = fake.parts(body["messages"][0])
    assert [(p.kind, p.mime_type) for p in parts] == [("text", ""), ("audio", "wav")]
    assert parts[1].data == clip
    # audio input tokens are billed at the audio rate (32 USD/Mtok), the rest at the text rate
    assert (answer.usage.input_tokens, answer.usage.audio_input_tokens) == (1000, 800)
    assert answer.usage.cost_usd == pytest.approx(200 * 2.50 / 1e6 + 800 * 32.00 / 1e6 + 20 * 10.00 / 1e6)



def test_cached_prompt_tokens_of_a_session_are_billed_at_the_cached_rate(start_daemon, fake, tmp_path):
    """A session re-sends its history, which OpenAI serves from its prompt cache: prompt_tokens include
    cached_tokens, billed at half the input price (gpt-4o: 1.25 instead of 2.50 USD/Mtok)."""
    daemon = start(start_daemon, fake)  # its own: it reads the statistics
    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("Read this long contract."), session="s-c")),
                         timeout=30)
    fake.usage = {"prompt_tokens": 100_000, "completion_tokens": 500, "total_tokens": 100_500,
                  "prompt_tokens_details": {"cached_tokens": 90_000, "audio_tokens": 0}}
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=ask(text_part("What does clause 4 say?"), session="s-c")), timeout=30))

    billed = 10_000 * 2.50 / 1e6 + 90_000 * 1.25 / 1e6 + 500 * 10.00 / 1e6
    [usage] = [e.usage for e in events if e.HasField("usage")]
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (100_000, 90_000, 500)
    assert usage.cost_usd == pytest.approx(billed)
    done = events[-1].done.answer
    assert done.usage.cached_input_tokens == 90_000 and done.usage.cost_usd == pytest.approx(billed)
    first_turn = 1234 * 2.50 / 1e6 + 56 * 10.00 / 1e6
    deadline = time.monotonic() + 10
    while sum(row["calls"] for row in _stats(tmp_path / "data")) < 2:  # written by the daemon within 50 ms
        assert time.monotonic() < deadline, "the calls never reached the statistics"
        time.sleep(0.05)
    assert sum(row["cost_usd"] for row in _stats(tmp_path / "data")) == pytest.approx(first_turn + billed)


def unmeasurable_mp3() -> bytes:
    """An mp3 the router cannot measure (an ID3 tag, then no frame): its duration is unknown."""
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 5000


def test_gpt_transcribe_of_a_clip_of_unknown_length_keeps_its_tokens_and_warns(daemon, fake):
    """gpt-transcribe is priced per audio hour and answers token usage: when the router could not measure
    the clip, the tokens are still reported and the daemon warns that the cost ($0) is a lower bound."""
    clip = pb.Part(media=pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/mpeg", data=unmeasurable_mp3(),
                                  filename="call.mp3"))
    request = ask(clip, task=pb.TASK_TRANSCRIBE)
    request.hints.CopyFrom(pb.RoutingHints(provider="openai", model="gpt-transcribe"))
    logged_before = len(daemon.logs())  # the daemon is shared: only this call's lines count
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer

    assert answer.route.model == "gpt-transcribe" and answer.transcript.text == WHISPER_TEXT
    assert [u.field("model") for u in fake.uploads()] == ["gpt-transcribe"]
    usage = answer.usage
    assert (usage.input_tokens, usage.audio_input_tokens, usage.output_tokens) == (40, 40, 8)
    assert (usage.audio_seconds, usage.cost_usd) == (0.0, 0.0)
    logs = daemon.logs()[logged_before:]
    assert "'call.mp3' is unknown" in logs and "lower bound" in logs


ERRORS = [
    (400, {}, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
    (404, {}, grpc.StatusCode.NOT_FOUND, "PROVIDER_MODEL_NOT_FOUND"),
    (429, {"Retry-After": "7"}, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    (500, {}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (503, {}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (503, {"Retry-After": "7"}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),  # an overload that says when
]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_http_errors_map_to_grpc_statuses(start_daemon, fake, transport):
    # its own daemon: a 429 and a 503 with Retry-After cool gpt-4o down
    daemon = start(start_daemon, fake, transport=transport)
    for status, headers, code, reason in ERRORS:
        fake.fail_next(status, error_body(f"upstream failure {status}"), headers)
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
        err = info.value
        assert err.code() == code, (status, err.details())
        got = error_details(err)
        assert (got.reason, got.metadata["provider"]) == (reason, "openai"), status
        assert f"upstream failure {status}" in err.details()
        assert got.retry_delay == (7 if headers else None)
    assert len(fake.chat_requests()) == len(ERRORS)  # one call each: no SDK retries


def test_a_retry_after_given_as_an_http_date_is_passed_on(start_daemon, fake):
    """RFC 9110 allows an HTTP date as well as seconds; it was dropped."""
    daemon = start(start_daemon, fake)  # its own: a 503 with Retry-After cools gpt-4o
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake.fail_next(503, error_body("overloaded"), {"Retry-After": when})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 100 <= error_details(info.value).retry_delay <= 120


@pytest.mark.parametrize("retry_after", ["99999999999999999999", "inf", "1e400"])
def test_an_absurd_retry_after_is_cut_to_a_day_not_a_crash(start_daemon, fake, retry_after):
    daemon = start(start_daemon, fake)  # its own: a 429 cools gpt-4o
    fake.fail_next(429, error_body("slow down"), {"Retry-After": retry_after})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert error_details(info.value).retry_delay == 86_400


def test_transcription_errors_are_mapped_too(start_daemon, fake):
    daemon = start(start_daemon, fake)  # its own: a 429 cools whisper-1
    fake.fail_next(429, error_body("Rate limit reached for whisper-1"), {"Retry-After": "3"})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=ask(audio_part(wav_bytes()))), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    got = error_details(info.value)
    assert (got.reason, got.retry_delay) == ("PROVIDER_RATE_LIMITED", 3)
    assert fake.requests[0].path == "/v1/audio/transcriptions"


def test_bad_key_is_failed_precondition_and_never_leaks(start_daemon, fake):
    secret = "sk-e2e-wrong-key-do-not-leak-77"
    daemon = start(start_daemon, fake, key=secret)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = error_details(err)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_AUTH", "openai")
    # the section gives the key (api_key: "${OPENAI_TEST_KEY}"): OPENAI_API_KEY was never read
    assert "check providers.openai.api_key (the key this section gives)" in err.details()
    assert "OPENAI_API_KEY" not in err.details()
    assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"  # the fake did get (and echo) it
    everything = everything_said(err, daemon)
    assert secret not in everything and secret[:15] not in everything


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_upstream_timeout_is_unavailable(start_daemon, own_fake, transport):
    daemon = start(start_daemon, own_fake, timeout=0.5, transport=transport)
    own_fake.chunk_delay = 3.0
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(info.value).reason == "PROVIDER_UNAVAILABLE" and "timed out" in info.value.details()


def test_providers_list_shows_the_catalogue(start_daemon, fake):
    daemon = start(start_daemon, fake)  # its own: it reads ListProviders
    providers = providers_by_name(daemon.stub)
    openai = providers["openai"]
    assert openai.state == pb.PROVIDER_STATE_READY
    models = {m.name: m for m in openai.models}
    assert {"gpt-4o", "gpt-4o-mini", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"} <= set(models)
    assert set(models["gpt-4o"].inputs) == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE}
    assert list(models["whisper-1"].outputs) == ["transcript"]
    assert models["gpt-4o-mini"].price.input_per_mtok == pytest.approx(1.0)  # overridden in the config
    # the cached discount follows an overridden input price (list: 0.15 input, 0.075 cached)
    assert models["gpt-4o-mini"].price.cached_input_per_mtok == pytest.approx(0.5)
    assert models["gpt-4o"].price.cached_input_per_mtok == pytest.approx(1.25)
    audio = models["gpt-audio"].price
    assert (audio.input_per_mtok, audio.audio_input_per_mtok) == (pytest.approx(2.50), pytest.approx(32.00))


def test_a_model_named_org_slash_model_is_routed_and_sent_whole(start_daemon, fake):
    """An OpenAI-compatible server (vLLM) serving meta-llama/Llama-3.1-8B-Instruct: the target is
    openai/meta-llama/Llama-3.1-8B-Instruct, and the model name reaches the server whole."""
    fake.chat_models.add("meta-llama/Llama-3.1-8B-Instruct")
    daemon = start_daemon(f"""
providers:
  openai:
    api_key: "${{OPENAI_TEST_KEY}}"
    base_url: "{fake.base_url}"
    models:
      - {{name: meta-llama/Llama-3.1-8B-Instruct, context_tokens: 8192}}
routes:
  - name: self-hosted
    use: openai/meta-llama/Llama-3.1-8B-Instruct
""", env={"OPENAI_TEST_KEY": API_KEY})
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"))), timeout=30).answer
    [body] = fake.chat_requests()
    assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (answer.route.provider, answer.route.model) == ("openai", "meta-llama/Llama-3.1-8B-Instruct")
    assert answer.text == "Hello from the fake GPT."


def test_an_extra_instance_serves_a_local_server_next_to_openai(start_daemon, fake):
    """providers.vllm with plugin: openai is a second provider made by the same plugin: its own
    base_url, models and key; OPENAI_API_KEY from the environment stays with the openai provider."""
    with FakeOpenAI() as vllm:
        vllm.api_key = "sk-no-key-required"  # what the plugin sends a server that needs no key
        vllm.chat_models = {"meta-llama/Llama-3.1-8B-Instruct"}
        daemon = start_daemon(f"""
providers:
  openai: {{base_url: "{fake.base_url}"}}
  vllm:
    plugin: openai
    base_url: "{vllm.base_url}"
    builtin_models: false
    models: [{{name: meta-llama/Llama-3.1-8B-Instruct, context_tokens: 8192}}]
routes:
  - name: private
    match: {{tags: [private]}}
    use: vllm/meta-llama/Llama-3.1-8B-Instruct
default: openai/gpt-4o
""", env={"OPENAI_API_KEY": API_KEY})
        private = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("mine"), tags=("private",))),
                                       timeout=30).answer
        public = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("theirs"))), timeout=30).answer
        assert (private.route.provider, private.route.model) == ("vllm", "meta-llama/Llama-3.1-8B-Instruct")
        assert (public.route.provider, public.route.model) == ("openai", "gpt-4o")
        [local_call] = vllm.requests
        assert local_call.headers["authorization"] == "Bearer sk-no-key-required"  # not the OpenAI key
        assert local_call.json()["model"] == "meta-llama/Llama-3.1-8B-Instruct"
        [cloud_call] = fake.requests
        assert cloud_call.headers["authorization"] == f"Bearer {API_KEY}" and cloud_call.json()["model"] == "gpt-4o"
        providers = providers_by_name(daemon.stub)
        assert (providers["vllm"].plugin, providers["vllm"].state) == ("openai", pb.PROVIDER_STATE_READY)
        assert [m.name for m in providers["vllm"].models] == ["meta-llama/Llama-3.1-8B-Instruct"]
        assert providers["openai"].state == pb.PROVIDER_STATE_READY


def test_a_stream_cut_before_any_text_falls_back(start_daemon, fake):
    """The server dies before answering and its body just ends (delimited by connection close): no
    [DONE], so the call failed and the fallback answers, not an empty Done with 0 tokens."""
    sturdy = config(fake).replace(
        "default: openai/gpt-4o", "  - name: sturdy\n    match: {tags: [sturdy]}\n    use: openai/gpt-4o\n"
                                  "    fallback: [openai/gpt-4o-mini]\ndefault: openai/gpt-4o")
    daemon = start_daemon(sturdy, env={"OPENAI_TEST_KEY": API_KEY})
    fake.truncate_next(1, close=True)  # the role chunk only
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"), tags=("sturdy",))),
                                  timeout=30).answer
    assert [body["model"] for body in fake.chat_requests()] == ["gpt-4o", "gpt-4o-mini"]
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("gpt-4o", False), ("gpt-4o-mini", True)]
    assert "no finish_reason, no [DONE]" in answer.route.attempts[0].error
    assert (answer.route.model, answer.text, answer.finish_reason) == (
        "gpt-4o-mini", "Hello from the fake GPT.", pb.FINISH_REASON_STOP)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (1234, 56)


def test_a_stream_cut_after_some_text_is_unavailable_and_keeps_no_turn(daemon, fake):
    """The body ends cleanly mid-answer (a proxy closing the chunked body): the client has the deltas,
    then UNAVAILABLE; the cut answer is not stored as the session's assistant turn."""
    fake.truncate_next(3)  # the role chunk, "Hello", " from"
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for event in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
                request=ask(text_part("Say hello"), session="cut")), timeout=30):
            received.append(event)
    assert [e.text_delta.text for e in received if e.HasField("text_delta")] == ["Hello", " from"]
    assert not any(e.HasField("done") for e in received)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    got = error_details(info.value)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_UNAVAILABLE", "openai")
    assert "the stream ended before the answer was complete" in info.value.details()

    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("Again?"), session="cut")), timeout=30)
    assert [(m["role"], m["content"]) for m in fake.chat_requests()[-1]["messages"]] == [("user", "Again?")]


def test_a_server_that_sends_no_usage_but_done_answers_whole(daemon, fake):
    """OpenAI-compatible servers may ignore stream_options.include_usage; their [DONE] still ends the
    stream, so the answer is whole (with no token counts), not a cut stream."""
    fake.usage = None
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"))), timeout=30).answer
    assert (answer.text, answer.finish_reason) == ("Hello from the fake GPT.", pb.FINISH_REASON_STOP)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (0, 0)
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("gpt-4o", True)]


def test_a_server_that_ends_with_the_finish_reason_and_no_done_answers_whole(daemon, fake):
    """A few OpenAI-compatible servers end their stream after the finish_reason (and usage) chunk, with
    no [DONE]: the answer is whole, billed and kept in the session, not a cut stream."""
    fake.truncate_next(7)  # role, four deltas, finish_reason, usage: all but [DONE]
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"), session="nodone")),
                                  timeout=30).answer
    assert (answer.text, answer.finish_reason) == ("Hello from the fake GPT.", pb.FINISH_REASON_STOP)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (1234, 56)
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("gpt-4o", True)]
    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("again"), session="nodone")), timeout=30)
    assert [m["role"] for m in fake.chat_requests()[-1]["messages"]] == ["user", "assistant", "user"]


def test_audio_chat_to_gpt_audio_mini_through_the_daemon(start_daemon, fake):
    """gpt-audio-mini replaces the shut-down gpt-4o-mini-audio-preview: routed, sent and priced (0.60 / 2.40
    per Mtok of text, 10 of audio input)."""
    mini = CONFIG.replace("openai/gpt-audio\n", "openai/gpt-audio-mini\n")
    assert mini != CONFIG
    daemon = start_daemon(mini.format(url=fake.base_url, timeout=10, transport=""),
                          env={"OPENAI_TEST_KEY": API_KEY})
    fake.usage = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                  "prompt_tokens_details": {"audio_tokens": 800, "cached_tokens": 0}}
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        text_part("What is the tone?"), audio_part(wav_bytes()), task=pb.TASK_CHAT)), timeout=30).answer
    assert (answer.route.rule, answer.route.model) == ("audio-chat", "gpt-audio-mini")
    assert fake.chat_requests()[0]["model"] == "gpt-audio-mini"
    assert answer.usage.cost_usd == pytest.approx(200 * 0.60 / 1e6 + 800 * 10.00 / 1e6 + 20 * 2.40 / 1e6)
