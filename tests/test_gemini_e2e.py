"""Gemini through the running daemon: the real google-genai SDK talks to a fake Gemini API.

Most tests share one daemon for the module (see :func:`shared_daemon`); those that change or read
daemon-wide state, or need another config, start their own with the ``start_daemon`` fixture of
tests/conftest.py (the real daemon as a subprocess).
"""

from __future__ import annotations

import base64
import hashlib
import io
import wave

import grpc
import pytest
from conftest import fake_fixtures, launch_daemon
from grpc_helpers import assert_instance_listed, error_details, instance_config
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.gemini import FakeGemini

KEY = "AIza-e2e-secret-5f1e"

CONFIG = """
providers:
  gemini:
    api_key: "${{GEMINI_TEST_KEY}}"
    base_url: "{url}"
    api_version: v1beta
    timeout: 10
    inline_limit_bytes: 1024
    poll_interval: 0.02
routes:
  - name: video
    match: {{inputs_any: [video]}}
    use: gemini/gemini-2.5-pro
  - name: everything
    match: {{}}
    use: gemini/gemini-2.5-flash
default: gemini/gemini-2.5-pro
"""


def short_video() -> bytes:
    """A real one-second 32x32 H.264 MP4 (about 2 KB), made with PyAV."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def upload(daemon, data: bytes, mime_type: str, modality: int) -> pb.UploadMediaResponse:
    def chunks():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=modality, mime_type=mime_type, filename="clip.mp4", size_bytes=len(data)))
        for i in range(0, len(data), 512):
            yield pb.UploadMediaRequest(chunk=data[i:i + 512])

    return daemon.stub.UploadMedia(chunks(), timeout=30)


def ask(*parts: pb.Part) -> pb.MultimodalRequest:
    return pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=list(parts))],
                                options=pb.Options(task=pb.TASK_CHAT))


shared_fake, fake, _ = fake_fixtures(lambda: FakeGemini(api_key=KEY))


def start(start_daemon, fake: FakeGemini):
    """A daemon of CONFIG of the test's own, calling ``fake``."""
    return start_daemon(CONFIG.format(url=fake.url), env={"GEMINI_TEST_KEY": KEY})


@pytest.fixture(scope="module")
def shared_daemon(shared_fake, plugin_sites, tmp_path_factory):
    """One daemon of CONFIG for the module's tests that only make calls and check what the fake and the
    client got: starting one per test (and importing the SDK in each) took minutes.

    A test sharing it must not make the fake answer 429, or 503 with Retry-After (the target would cool
    down for 60 s), read the statistics, ListProviders or the log, or need another config or key; it uses a
    session id and media no other test uses (the daemon remembers the files it uploaded)."""
    daemon = launch_daemon(CONFIG.format(url=shared_fake.url), tmp=tmp_path_factory.mktemp("gemini-e2e"),
                           env={"GEMINI_TEST_KEY": KEY}, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(shared_daemon, fake):
    """The module's shared daemon (see :func:`shared_daemon`), its fake reset."""
    return shared_daemon


def test_short_video_is_uploaded_once_polled_referenced_and_reused(daemon, fake):
    video = short_video()
    assert video[4:8] == b"ftyp" and 1024 < len(video) < 200_000
    stored = upload(daemon, video, "video/mp4", pb.MODALITY_VIDEO)
    assert stored.media_id == hashlib.sha256(video).hexdigest()
    fake.processing_polls = 2
    media = pb.Part(media=pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=stored.media_id))

    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="What happens?"), media)),
                                  timeout=30).answer
    assert answer.text == "Hello from Gemini."
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("video", "gemini", "gemini-2.5-pro")
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 7)
    assert answer.usage.cost_usd == pytest.approx(12 * 1.25e-6 + 7 * 10e-6)

    # the resumable upload: start, then the bytes, finalized
    [start] = fake.calls("upload_start")
    assert start.headers["x-goog-upload-protocol"] == "resumable"
    assert start.headers["x-goog-upload-command"] == "start"
    assert start.headers["x-goog-upload-header-content-length"] == str(len(video))
    assert start.headers["x-goog-api-key"] == KEY
    chunks = fake.calls("upload_chunk")
    assert b"".join(c.body for c in chunks) == video
    assert chunks[-1].headers["x-goog-upload-command"] == "upload, finalize"
    [name] = fake.files
    assert bytes(fake.files[name].data) == video
    # polled PROCESSING, PROCESSING, ACTIVE, and only then referenced
    gets = fake.calls("file_get")
    assert [g.path for g in gets] == [f"/v1beta/{name}"] * 3
    assert fake.files[name].state == "ACTIVE"
    [call] = fake.calls("stream")
    assert fake.requests.index(call) > fake.requests.index(gets[-1])
    parts = call.json()["contents"][0]["parts"]
    assert parts[0] == {"text": "What happens?"}
    assert parts[1]["fileData"] == {"file_uri": f"{fake.url}/v1beta/{name}", "mime_type": "video/mp4"}

    # the same media again: referenced, not uploaded or polled again
    seen = len(fake.requests)
    again = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="And then?"), media)),
                                 timeout=30).answer
    assert again.text == "Hello from Gemini."
    later = fake.requests[seen:]
    assert [FakeGemini._kind(r) for r in later] == ["stream"]
    assert later[0].json()["contents"][0]["parts"][1]["fileData"]["file_uri"] == f"{fake.url}/v1beta/{name}"
    assert len(fake.calls("upload_start")) == 1


def test_inline_image_streams_text_deltas_and_usage(daemon, fake):
    png = png_bytes()
    assert len(png) < 1024  # under the inline limit: sent inline
    fake.reply_chunks = ["A ", "small ", "blue ", "square."]
    request = ask(pb.Part(text="What is this?"),
                  pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png)))
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done"
    assert events[0].route_chosen.route.provider == "gemini"
    assert events[0].route_chosen.route.model == "gemini-2.5-flash"
    assert [e.text_delta.text for e in events if e.HasField("text_delta")] == ["A ", "small ", "blue ", "square."]
    # reported in parts: the prompt's, from the first chunk (before its text), then the rest at the end
    assert kinds[1:3] == ["usage", "text_delta"]
    usages = [e.usage for e in events if e.HasField("usage")]
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [(12, 0), (0, 7)]
    assert [u.cost_usd for u in usages] == [pytest.approx(12 * 0.30e-6), pytest.approx(7 * 2.50e-6)]
    done = events[-1].done.answer
    assert done.text == "A small blue square."
    assert (done.usage.input_tokens, done.usage.output_tokens) == (12, 7)  # the parts' sum
    assert done.usage.cost_usd == pytest.approx(12 * 0.30e-6 + 7 * 2.50e-6)
    assert sum(u.cost_usd for u in usages) == pytest.approx(done.usage.cost_usd)

    [call] = fake.calls("stream")
    assert call.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert call.query == {"alt": ["sse"]}
    parts = call.json()["contents"][0]["parts"]
    assert parts[0] == {"text": "What is this?"}
    inline = parts[1]["inlineData"]
    assert base64.b64decode(inline["data"]) == png
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"
    assert fake.calls("upload_start") == []


def tiny_wav() -> bytes:
    """A 50 ms silent WAV (under the inline limit)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 400)
    return buf.getvalue()


def test_prompt_tokens_read_from_the_cache_are_billed_at_the_cached_rate(daemon, fake):
    """Gemini 2.5 caches repeated prompt prefixes by itself: prompt_token_count includes
    cached_content_token_count, billed at the cached price (2.5 Flash: 0.03 instead of 0.30 USD/Mtok);
    the cached audio tokens are not billed again at the audio price (1.00)."""
    fake.usage = {"promptTokenCount": 100_000, "cachedContentTokenCount": 90_000, "candidatesTokenCount": 500,
                  "totalTokenCount": 100_500,
                  "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 99_000},
                                          {"modality": "AUDIO", "tokenCount": 1_000}],
                  "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 89_200},
                                         {"modality": "AUDIO", "tokenCount": 800}]}
    audio = pb.Part(media=pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=tiny_wav()))
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=ask(pb.Part(text="And what did she say next?"), audio)), timeout=30))

    assert events[0].route_chosen.route.model == "gemini-2.5-flash"
    usage = events[-1].done.answer.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.audio_input_tokens) == (100_000, 90_000, 200)
    # 90,000 cached, 200 audio not cached, 9,800 text not cached, 500 out
    billed = 90_000 * 0.03 / 1e6 + 200 * 1.00 / 1e6 + 9_800 * 0.30 / 1e6 + 500 * 2.50 / 1e6
    assert usage.cost_usd == pytest.approx(billed)
    # in parts: the prompt's first (its chunks before the last do not say what was cached: priced all cached,
    # the least it can cost), then the rest (the difference of the totals); they add up to what is billed
    usages = [e.usage for e in events if e.HasField("usage")]
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [(100_000, 0), (0, 500)]
    assert usages[0].cost_usd == pytest.approx(100_000 * 0.03 / 1e6)
    assert sum(u.cost_usd for u in usages) == pytest.approx(billed)


def test_a_gemini_pro_call_past_200k_prompt_tokens_is_billed_at_the_long_context_tier(start_daemon, fake):
    """Gemini 2.5 Pro bills a call over 200k prompt tokens at higher rates, all its tokens; an
    operator's input price override keeps that surcharge in proportion."""
    config = CONFIG.format(url=fake.url).replace("use: gemini/gemini-2.5-flash", "use: gemini/gemini-2.5-pro")
    config = config.replace("    poll_interval: 0.02\n", "    poll_interval: 0.02\n"
                            "    prices: {gemini-2.5-pro: {input_per_mtok: 1.0}}\n")
    daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
    [pro] = [m for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers for m in p.models
             if m.name == "gemini-2.5-pro"]
    # list 1.25 -> 1.00: the long-context input (2.50) and cached (0.25, 0.125) rates follow, output stays
    assert (pro.price.long_context_above_tokens, pro.price.long_context_output_per_mtok) == (200_000, 15.0)
    assert pro.price.long_context_input_per_mtok == pytest.approx(2.0)
    assert pro.price.long_context_cached_input_per_mtok == pytest.approx(0.2)

    def billed(prompt_tokens: int) -> float:
        fake.usage = {"promptTokenCount": prompt_tokens, "cachedContentTokenCount": 50_000,
                      "candidatesTokenCount": 1_000, "totalTokenCount": prompt_tokens + 1_000}
        return daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="Summarise the talk."))),
                                    timeout=30).answer.usage.cost_usd

    assert billed(200_000) == pytest.approx((150_000 * 1.0 + 50_000 * 0.1 + 1_000 * 10.0) / 1e6)
    assert billed(200_001) == pytest.approx((150_001 * 2.0 + 50_000 * 0.2 + 1_000 * 15.0) / 1e6)


def test_a_conversation_gemini_would_refuse_is_sent_alternating_with_registered_mime_types(daemon, fake):
    """A conversation sent whole that starts with the assistant and has two user turns in a row, an
    ``image/jpg`` and a Markdown document: the real API refuses all three as they are (the fake too)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (6, 6), (10, 120, 200)).save(out, format="JPEG")
    jpg = out.getvalue()
    notes = b"# Plan\n* ship it\n"
    request = pb.MultimodalRequest(messages=[
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="Hi, send me your files.")]),
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE,
                                                                      mime_type="image/jpg", data=jpg))]),
        pb.Message(role=pb.ROLE_USER, parts=[
            pb.Part(media=pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/markdown", data=notes)),
            pb.Part(text="Compare them.")]),
    ], options=pb.Options(task=pb.TASK_CHAT))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert answer.text == "Hello from Gemini." and answer.route.provider == "gemini"
    contents = fake.calls("stream")[0].json()["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    user = contents[2]["parts"]
    assert [p.get("inlineData", {}).get("mimeType", p.get("inlineData", {}).get("mime_type")) for p in user] == [
        "image/jpeg", "text/markdown", None]
    assert base64.b64decode(user[1]["inlineData"]["data"]) == notes and user[2] == {"text": "Compare them."}


@pytest.mark.parametrize(
    ("status", "headers", "code", "reason", "retry"),
    [
        (429, {"Retry-After": "9"}, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED", 9.0),
        (403, {}, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH", None),
        (404, {}, grpc.StatusCode.NOT_FOUND, "PROVIDER_MODEL_NOT_FOUND", None),
        (503, {}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", None),
    ],
    ids=["429", "403", "404", "503"],
)
def test_upstream_errors_reach_the_client_mapped(daemon, start_daemon, fake, status, headers, code, reason,
                                                 retry):
    if status == 429:  # on a daemon of its own: a 429 cools gemini-2.5-flash down for 60 s
        daemon = start(start_daemon, fake)
    fake.fail_next(status, {"error": {"code": status, "status": "X", "message": f"upstream said {status}"}}, headers)
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="hi"))), timeout=30)
    err = caught.value
    assert err.code() == code
    assert f"upstream said {status}" in err.details()
    assert KEY not in err.details()
    got = error_details(err)
    assert got.reason == reason
    if retry is not None:
        assert got.retry_delay == pytest.approx(retry)
    if status == 403:
        assert "check providers.gemini.api_key (the key this section gives)" in err.details()


def test_an_extra_instance_with_its_own_key_next_to_gemini(start_daemon, fake):
    """providers.gemini-team with plugin: gemini is a second provider made by the same plugin, with its own
    key and address; GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL stay with the gemini provider."""
    team_key = "AIza-team-e2e-77d0"
    with FakeGemini(api_key=team_key) as team:
        daemon = start_daemon(instance_config("gemini", "gemini-team", team.url, "timeout: 10",
                                              "gemini-team/gemini-2.5-flash", "gemini/gemini-2.5-pro"),
                              env={"GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": fake.url, "INSTANCE_KEY": team_key})
        tagged = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="mine")])],
                                      hints=pb.RoutingHints(tags=["instance"]))
        mine = daemon.stub.Generate(pb.GenerateRequest(request=tagged), timeout=30).answer
        theirs = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="theirs"))), timeout=30).answer
        assert (mine.route.provider, mine.route.model, mine.text) == ("gemini-team", "gemini-2.5-flash",
                                                                      "Hello from Gemini.")
        assert (theirs.route.provider, theirs.route.model) == ("gemini", "gemini-2.5-pro")
        [team_call] = team.calls("stream")
        assert team_call.headers["x-goog-api-key"] == team_key and "gemini-2.5-flash" in team_call.path
        [own_call] = fake.calls("stream")
        assert own_call.headers["x-goog-api-key"] == KEY and "gemini-2.5-pro" in own_call.path

        assert_instance_listed(daemon.stub, "gemini", "gemini-team")


def test_a_configured_newer_model_is_routed_priced_and_capped(start_daemon, fake):
    """``providers.gemini.models`` adds a model the plugin's catalogue does not have: it reads what the
    plugin's models read (video here), is called by name, priced as configured, and a request's
    max_output_tokens is capped at the output limit it takes from the plugin's models (65,536)."""
    config = CONFIG.format(url=fake.url).replace(
        "    poll_interval: 0.02\n",
        "    poll_interval: 0.02\n    models: [{name: gemini-3.5-flash, price: {input_per_mtok: 2, output_per_mtok: 8}}]\n",
    ).replace("use: gemini/gemini-2.5-pro", "use: gemini/gemini-3.5-flash", 1)
    daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
    video = upload(daemon, short_video(), "video/mp4", pb.MODALITY_VIDEO)
    request = ask(pb.Part(media=pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=video.media_id)),
                  pb.Part(text="What is shown?"))
    request.options.max_output_tokens = 100_000
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("video", "gemini", "gemini-3.5-flash")
    usage = answer.usage
    assert usage.input_tokens > 0 and usage.cost_usd == pytest.approx(
        usage.input_tokens * 2 / 1e6 + usage.output_tokens * 8 / 1e6)
    [call] = fake.calls("stream")
    assert "models/gemini-3.5-flash:" in call.path
    assert call.json()["generationConfig"]["maxOutputTokens"] == 65_536


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", pb.FINISH_REASON_STOP), ("MAX_TOKENS", pb.FINISH_REASON_LENGTH),
    ("SAFETY", pb.FINISH_REASON_CONTENT_FILTER), ("MALFORMED_FUNCTION_CALL", pb.FINISH_REASON_OTHER)])
def test_the_finish_reason_reaches_the_client(daemon, fake, reason, finish):
    """The last chunk's finishReason; an answer stopped by the safety filter after some text keeps it."""
    fake.finish_reason = reason
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="hi"))), timeout=30).answer
    assert (answer.text, answer.finish_reason) == ("Hello from Gemini.", finish)


def test_a_stream_cut_before_any_text_falls_back(start_daemon, fake):
    """The body ends cleanly before the first chunk (a dead server behind a proxy): no finishReason, so
    the call failed and the fallback answers, not an empty Done with 0 tokens."""
    config = CONFIG.format(url=fake.url).replace(
        "    use: gemini/gemini-2.5-flash\n", "    use: gemini/gemini-2.5-flash\n    fallback: [gemini/gemini-2.5-pro]\n")
    daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
    fake.truncate_next(0, close=True)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="hi"))), timeout=30).answer
    assert [c.path.split("/")[-1] for c in fake.calls("stream")] == [
        "gemini-2.5-flash:streamGenerateContent", "gemini-2.5-pro:streamGenerateContent"]
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("gemini-2.5-flash", False), ("gemini-2.5-pro", True)]
    assert "no finishReason" in answer.route.attempts[0].error
    assert (answer.route.model, answer.text, answer.finish_reason) == (
        "gemini-2.5-pro", "Hello from Gemini.", pb.FINISH_REASON_STOP)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 7)


def test_a_stream_cut_after_some_text_is_unavailable_and_keeps_no_turn(daemon, fake):
    """The body ends cleanly mid-answer (a proxy closing the chunked body): the client has the deltas,
    then UNAVAILABLE; the cut answer is not stored as the session's assistant turn."""
    fake.truncate_next(2)  # "Hello", " from": the last chunk, with the finishReason, is lost
    request = ask(pb.Part(text="Say hello"))
    request.session_id = "cut"
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for event in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=30):
            received.append(event)
    assert [e.text_delta.text for e in received if e.HasField("text_delta")] == ["Hello", " from"]
    assert not any(e.HasField("done") for e in received)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    got = error_details(info.value)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_UNAVAILABLE", "gemini")
    assert "the stream ended before the answer was complete" in info.value.details()

    again = ask(pb.Part(text="Again?"))
    again.session_id = "cut"
    daemon.stub.Generate(pb.GenerateRequest(request=again), timeout=30)
    assert fake.calls("stream")[-1].json()["contents"] == [{"role": "user", "parts": [{"text": "Again?"}]}]


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
def test_a_blocked_prompt_is_invalid_argument_after_its_billed_usage(start_daemon, fake, streaming):
    """Gemini blocks the prompt (promptFeedback.blockReason) and bills its tokens (usageMetadata): the client
    gets their usage and cost, then INVALID_ARGUMENT as before, whether the plugin streams or not."""
    daemon = start_daemon(with_streaming(CONFIG.format(url=fake.url), streaming), env={"GEMINI_TEST_KEY": KEY})
    fake.block_reason = "PROHIBITED_CONTENT"
    fake.safety_ratings = [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "MEDIUM"}]
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for event in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask(pb.Part(text="bad"))),
                                                timeout=30):
            received.append(event)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = error_details(info.value)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_BAD_REQUEST", "gemini")
    assert got.metadata["provider_error_code"] == "PROHIBITED_CONTENT"  # to branch on, as on the SDK's block_reason
    assert ("the prompt was blocked (PROHIBITED_CONTENT); flagged: HARM_CATEGORY_SEXUALLY_EXPLICIT (MEDIUM)"
            in info.value.details())
    assert KEY not in info.value.details()
    assert not any(e.HasField("text_delta") or e.HasField("done") for e in received)
    [usage] = [e.usage for e in received if e.HasField("usage")]
    assert (usage.input_tokens, usage.output_tokens) == (3, 0)
    assert usage.cost_usd == pytest.approx(3 * 0.30 / 1e6)  # gemini-2.5-flash's input price
    assert len(fake.calls("stream" if streaming else "generate")) == 1


def with_streaming(config: str, streaming: bool) -> str:
    """``config`` with the gemini provider's ``streaming`` setting."""
    return config.replace("    poll_interval: 0.02\n", f"    poll_interval: 0.02\n    streaming: {str(streaming).lower()}\n", 1)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("chunks", [[""], ["Hello", " from", ""]], ids=["whole", "after-text"])
def test_an_answer_withheld_by_the_filter_is_an_answer(start_daemon, fake, streaming, chunks):
    """Gemini's filter withholds the answer (finishReason SAFETY, the last chunk without content), whole or
    after some text: the client gets an OK answer with the text produced so far (maybe none), CONTENT_FILTER
    and the billed usage, as from OpenAI or Claude; the rule's fallback is not tried."""
    config = with_streaming(CONFIG.format(url=fake.url), streaming).replace(
        "    use: gemini/gemini-2.5-flash\n", "    use: gemini/gemini-2.5-flash\n    fallback: [gemini/gemini-2.5-pro]\n")
    daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
    fake.reply_chunks = chunks
    fake.finish_reason = "SAFETY"
    fake.safety_ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=ask(pb.Part(text="Tell me"))),
                                             timeout=30))
    text = "".join(chunks)
    deltas = [e.text_delta.text for e in events if e.HasField("text_delta")]
    assert deltas == (chunks[:-1] if streaming else [text] if text else [])  # sent as they came
    [done] = [e.done for e in events if e.HasField("done")]
    answer = done.answer
    assert (answer.text, answer.finish_reason) == (text, pb.FINISH_REASON_CONTENT_FILTER)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 7)
    assert answer.usage.cost_usd == pytest.approx(12 * 0.30e-6 + 7 * 2.5e-6)  # gemini-2.5-flash
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("gemini-2.5-flash", True)]
    assert len(fake.calls("stream" if streaming else "generate")) == 1

    unary = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="Tell me"))), timeout=30).answer
    assert (unary.text, unary.finish_reason) == (text, pb.FINISH_REASON_CONTENT_FILTER)


def test_an_answer_stopped_for_a_limited_account_goes_to_the_fallback(start_daemon, fake):
    """PUP_LIMITED_DISABLED without text: the key's account is limited, nothing said of the answer; the
    rule's fallback (another key) answers, and the failed call's billed usage is kept."""
    with FakeGemini(api_key=KEY) as backup:
        config = CONFIG.format(url=fake.url).replace(
            "    use: gemini/gemini-2.5-flash\n",
            "    use: gemini/gemini-2.5-flash\n    fallback: [gemini-backup/gemini-2.5-flash]\n", 1,
        ).replace("routes:\n", "  gemini-backup:\n    plugin: gemini\n    api_key: \"${GEMINI_TEST_KEY}\"\n"
                               f"    base_url: \"{backup.url}\"\nroutes:\n", 1)
        daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
        fake.reply_chunks = [""]
        fake.finish_reason = "PUP_LIMITED_DISABLED"
        answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="hi"))), timeout=30).answer
        assert (answer.route.provider, answer.text, answer.finish_reason) == (
            "gemini-backup", "Hello from Gemini.", pb.FINISH_REASON_STOP)
        [failed, answered] = answer.route.attempts
        assert (failed.provider, failed.ok, answered.ok) == ("gemini", False, True)
        assert "account is limited" in failed.error
        assert answer.usage.input_tokens == 24  # the failed call's prompt, billed, and the fallback's


def test_a_media_the_files_api_fails_to_process_goes_to_the_fallback(start_daemon, fake):
    """Processing that ends FAILED (Gemini could not decode a video of a type it takes: an odd codec) is a
    refusal of the media's format, UNSUPPORTED_INPUT: the rule's fallback answers, with the same bytes."""
    with FakeGemini(api_key=KEY) as backup:
        config = CONFIG.format(url=fake.url).replace(
            "    use: gemini/gemini-2.5-pro\n",
            "    use: gemini/gemini-2.5-pro\n    fallback: [gemini-backup/gemini-2.5-flash]\n", 1,
        ).replace("routes:\n", "  gemini-backup:\n    plugin: gemini\n    api_key: \"${GEMINI_TEST_KEY}\"\n"
                               f"    base_url: \"{backup.url}\"\n    poll_interval: 0.02\nroutes:\n", 1)
        daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY})
        fake.processing_polls, fake.fail_processing = 1, True
        video = short_video()
        request = ask(pb.Part(text="What is shown?"),
                      pb.Part(media=pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=video)))
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
        assert (answer.route.rule, answer.route.provider, answer.text) == ("video", "gemini-backup",
                                                                           "Hello from Gemini.")
        [failed, answered] = answer.route.attempts
        assert (failed.provider, failed.ok, answered.ok) == ("gemini", False, True)
        assert "could not process" in failed.error and "The video could not be processed." in failed.error
        assert fake.calls("stream") == [] and fake.files == {}  # the FAILED copy was deleted
        assert len(fake.calls("file_delete")) == 1
        [call] = backup.calls("stream")  # inline there: its inline limit is the default 8 MB
        assert base64.urlsafe_b64decode(call.json()["contents"][0]["parts"][1]["inlineData"]["data"]) == video
