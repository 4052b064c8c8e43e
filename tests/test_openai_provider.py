"""The OpenAI provider called directly, with the real ``openai`` SDK against the fake OpenAI API."""

from __future__ import annotations

import dataclasses
import io
import socket
import struct
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import grpc
import mmrouter_openai
import pytest
from mmrouter_openai import OpenAIProvider
from mmrouter_openai.settings import NO_KEY_PLACEHOLDER, OpenAISettings
from PIL import Image

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
    TextDelta,
    Transcript,
    TranscriptReady,
    UsageReport,
)
from router.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderInputTooLarge,
    ProviderModelNotFound,
    ProviderNotConfigured,
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderUnsupportedInput,
)
from router.testing import ProviderContract, collect
from tests.fakes.openai import API_KEY, FakeOpenAI, error_body
from tests.fakes.raw import RawServer


# -- media made in the tests -----------------------------------------------------------------
def image_bytes(fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(seconds: float = 0.25, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", (i * 97) % 2000 - 1000) for i in range(int(seconds * rate))))
    return buf.getvalue()


def user(*parts: Part) -> Message:
    return Message(Role.USER, list(parts))


def text(value: str) -> Part:
    return Part(text=value)


def image(data: bytes, mime: str = "image/png") -> Part:
    return Part(media=Media(Modality.IMAGE, mime, data=data))


def audio(data: bytes, mime: str = "audio/wav", **kw: object) -> Part:
    return Part(media=Media(Modality.AUDIO, mime, data=data, **kw))


def model_of(provider: OpenAIProvider, name: str):
    model = provider.model(name)
    assert model is not None, name
    return model


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def make_provider(fake: FakeOpenAI, **settings: object) -> OpenAIProvider:
    return OpenAIProvider({"api_key": API_KEY, "base_url": fake.base_url, "timeout": 10, **settings})


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    p = make_provider(fake)
    yield p
    await p.aclose()


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)


class TestOpenAIContract(ProviderContract):
    """The conformance kit, on gpt-4o (the first model)."""

    @pytest.fixture
    async def provider(self, fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
        p = make_provider(fake)
        yield p
        await p.aclose()


class TestWhisperContract(ProviderContract):
    """The conformance kit, on whisper-1 with an audio clip."""

    @pytest.fixture
    async def provider(self, fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
        p = make_provider(fake)
        yield p
        await p.aclose()

    def contract_model(self, provider):
        return model_of(provider, "whisper-1")

    def sample_request(self, model):
        return Request([user(audio(wav_bytes()))], Options(task=Task.TRANSCRIBE))


# -- models ---------------------------------------------------------------------------------------
def test_catalogue_declares_inputs_outputs_and_prices(provider: OpenAIProvider) -> None:
    names = [m.name for m in provider.models]
    assert names[:2] == ["gpt-4o", "gpt-4o-mini"]
    gpt4o = model_of(provider, "gpt-4o")
    assert gpt4o.inputs == {Modality.TEXT, Modality.IMAGE}
    assert gpt4o.can_do(Task.CHAT) and not gpt4o.can_do(Task.TRANSCRIBE)
    assert (gpt4o.price.input_per_mtok, gpt4o.price.output_per_mtok) == (2.50, 10.00)
    assert gpt4o.context_tokens == 128_000
    assert model_of(provider, "gpt-audio").inputs == {Modality.TEXT, Modality.AUDIO}
    whisper = model_of(provider, "whisper-1")
    assert whisper.inputs == {Modality.AUDIO} and whisper.can_do(Task.TRANSCRIBE)
    assert whisper.price.per_audio_hour == pytest.approx(0.36)
    for name in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"):
        assert model_of(provider, name).can_do(Task.TRANSCRIBE)
    assert "diarization" in model_of(provider, "gpt-4o-transcribe-diarize").features
    assert "diarization" not in whisper.features


def test_a_built_in_model_given_again_keeps_what_the_item_leaves_out() -> None:
    """``models: [{name: gpt-4o, context_tokens: 64000}]`` (to shrink its context) made gpt-4o free and
    text-only: the item's missing price was all zeros, its missing inputs text. What the item gives wins."""
    from mmrouter_openai.models import BUILTIN, catalogue

    builtin = {e.info.name: e.info for e in BUILTIN}
    models = catalogue(True, [{"name": "gpt-4o", "context_tokens": 64000},
                              {"name": "whisper-1"},
                              {"name": "gpt-4o-mini", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}}])
    gpt4o = models["gpt-4o"].info
    assert gpt4o.context_tokens == 64000
    assert (gpt4o.price, gpt4o.inputs, gpt4o.outputs) == (builtin["gpt-4o"].price, builtin["gpt-4o"].inputs,
                                                          builtin["gpt-4o"].outputs)
    assert gpt4o.default_max_output_tokens == builtin["gpt-4o"].default_max_output_tokens
    whisper = models["whisper-1"]
    assert whisper.info.price.per_audio_hour == pytest.approx(0.36) and whisper.transcription_format == "verbose_json"
    mini = models["gpt-4o-mini"].info
    assert (mini.price.input_per_mtok, mini.price.output_per_mtok, mini.price.cached_input_per_mtok) == (0.1, 0.2, 0.0)
    assert mini.inputs == builtin["gpt-4o-mini"].inputs


def test_register_providers_hook_registers_one_configured_provider(fake: FakeOpenAI) -> None:
    registered: list = []
    mmrouter_openai.register_providers(registered.append, {"api_key": API_KEY, "base_url": fake.base_url}, "openai")
    assert len(registered) == 1
    assert registered[0].name == "openai" and registered[0].unconfigured_reason() is None


def test_missing_key_is_reported_with_the_setting_to_fix() -> None:
    p = OpenAIProvider({})
    reason = p.unconfigured_reason()
    assert reason is not None and "OPENAI_API_KEY" in reason and "providers.openai.api_key" in reason


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAI) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    p = OpenAIProvider({})
    assert p.unconfigured_reason() is None
    assert p.settings.key == "sk-from-env" and p.settings.effective_base_url == fake.base_url


def test_an_extra_instance_reads_only_its_own_section(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("OPENAI_API_KEY", "sk-from-env"), ("OPENAI_BASE_URL", "http://env.example/v1"),
                       ("OPENAI_ORG_ID", "org-env"), ("OPENAI_PROJECT_ID", "proj-env")):
        monkeypatch.setenv(var, value)
    vllm = OpenAIProvider({"base_url": "http://gpu-box:8000/v1", "builtin_models": False,
                           "models": [{"name": "qwen"}]}, name="vllm")
    s = vllm.settings
    assert (vllm.name, s.key, s.organization, s.project) == ("vllm", "", "", "")
    assert s.effective_base_url == "http://gpu-box:8000/v1" and s.key_for_client == "sk-no-key-required"
    second_account = OpenAIProvider({}, name="openai-eu")  # OpenAI itself, but without a key of its own
    assert second_account.unconfigured_reason() == "no API key: set providers.openai-eu.api_key"
    assert second_account.settings.effective_base_url == "https://api.openai.com/v1"
    own = OpenAIProvider({})
    assert (own.settings.key, own.settings.organization, own.settings.base_url) == (
        "sk-from-env", "org-env", "http://env.example/v1")
    with pytest.raises(ConfigError, match=r"providers\.vllm\.models\[0\]\.inputs"):
        OpenAIProvider({"models": [{"name": "x", "inputs": ["smell"]}]}, name="vllm")


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"providers\.openai\.timeout"):
        OpenAIProvider({"api_key": "k", "timeout": "soon"})
    with pytest.raises(ConfigError, match=r"providers\.openai\.models\[0\]\.inputs"):
        OpenAIProvider({"api_key": "k", "models": [{"name": "x", "inputs": ["smell"]}]})
    # a typo in a price or model key would have priced the model at 0 without a word
    with pytest.raises(ConfigError, match=r"models\[0\]\.price: unknown key\(s\) input \(known: input_per_mtok"):
        OpenAIProvider({"api_key": "k", "models": [{"name": "x", "price": {"input": 5}}]})
    with pytest.raises(ConfigError, match=r"models\[1\]: unknown key\(s\) pricee"):
        OpenAIProvider({"api_key": "k", "models": [{"name": "x", "price": {"input_per_mtok": 1, "output_per_mtok": 2}},
                                                   {"name": "y", "pricee": {"input_per_mtok": 1}}]})
    tiered = OpenAIProvider({"api_key": "k", "models": [{"name": "x", "price": {
        "input_per_mtok": 1, "long_context_above_tokens": 200000, "long_context_input_per_mtok": 2}}]})
    price = next(m.price for m in tiered.models if m.name == "x")
    assert (price.input_per_mtok, price.long_context_above_tokens, price.long_context_input_per_mtok) == (1, 200000, 2)


def test_a_served_model_name_may_hold_slashes() -> None:
    """vLLM and other OpenAI-compatible servers name models after their repository, org/model (a server
    that is not OpenAI's: its model needs no price)."""
    p = OpenAIProvider({"api_key": "k", "base_url": "http://127.0.0.1:8000/v1",
                        "models": [{"name": "meta-llama/Llama-3.1-8B-Instruct"}]})
    assert "meta-llama/Llama-3.1-8B-Instruct" in {m.name for m in p.models}


async def test_unconfigured_provider_refuses_to_call(fake: FakeOpenAI) -> None:
    p = OpenAIProvider({"api_key": ""})  # default base_url: OpenAI itself needs a key
    with pytest.raises(ProviderNotConfigured):
        await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    assert fake.requests == []


# -- chat -----------------------------------------------------------------------------------------
async def test_chat_streams_deltas_and_usage_with_system_prompt_and_history(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    request = Request(
        [
            Message(Role.SYSTEM, [text("You are terse.")]),
            user(text("What is 2+2?")),
            Message(Role.ASSISTANT, [text("4")]),
            user(text("And times 3?")),
        ],
        Options(task=Task.CHAT, max_output_tokens=50, temperature=0.2),
    )
    events = await collect(provider, request, model_of(provider, "gpt-4o"))

    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["Hello", " from", " the fake", " GPT."]
    usages = [e.usage for e in events if isinstance(e, UsageReport)]
    assert len(usages) == 1 and isinstance(events[-1], UsageReport)
    assert (usages[0].input_tokens, usages[0].output_tokens, usages[0].cost_usd) == (1234, 56, 0.0)

    [body] = fake.chat_requests()
    assert body["model"] == "gpt-4o"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["temperature"] == pytest.approx(0.2)
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And times 3?"),
    ]
    headers = fake.requests[0].headers
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert fake.requests[0].path == "/v1/chat/completions"


async def test_chat_sends_many_images_as_data_urls_in_order(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    red, blue = image_bytes("PNG", (255, 0, 0)), image_bytes("JPEG", (0, 0, 255))
    request = Request([user(text("Compare"), image(red), text("with"), image(blue, "image/jpeg"))])
    events = await collect(provider, request, model_of(provider, "gpt-4o-mini"))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the fake GPT."

    [body] = fake.chat_requests()
    assert body["model"] == "gpt-4o-mini"
    parts = fake.parts(body["messages"][0])
    assert [p.kind for p in parts] == ["text", "image", "text", "image"]
    assert (parts[1].mime_type, parts[1].data) == ("image/png", red)
    assert (parts[3].mime_type, parts[3].data) == ("image/jpeg", blue)
    assert [parts[0].text, parts[2].text] == ["Compare", "with"]


@dataclasses.dataclass
class CountedReads(Media):
    """Stored media that records the threads its bytes are read in."""

    read_in: list[str] = dataclasses.field(default_factory=list)

    def read_bytes(self) -> bytes:
        self.read_in.append(threading.current_thread().name)
        return super().read_bytes()


@pytest.mark.parametrize(("kind", "mime", "model"), [("image", "image/png", "gpt-4o"),
                                                     ("audio", "audio/wav", "gpt-audio")])
async def test_media_named_many_times_is_read_and_encoded_once_off_the_event_loop(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path, kind: str, mime: str, model: str
) -> None:
    data = image_bytes("PNG", (9, 9, 9)) if kind == "image" else wav_bytes()
    (tmp_path / "one").write_bytes(data)
    (tmp_path / "two").write_bytes(data[:-1] + b"\1")
    modality = Modality(kind)
    one = CountedReads(modality, mime, path=tmp_path / "one", media_id="one", size=len(data))
    same = CountedReads(modality, mime, path=tmp_path / "one", media_id="one", size=len(data))  # another reference
    two = CountedReads(modality, mime, path=tmp_path / "two", media_id="two", size=len(data))
    request = Request([user(text("Compare"), *[Part(media=m) for m in (one, two, one, same)])], Options(task=Task.CHAT))
    await collect(provider, request, model_of(provider, model))
    parts = fake.parts(fake.chat_requests()[0]["messages"][0])
    assert [p.data for p in parts[1:]] == [data, data[:-1] + b"\1", data, data]
    reads = one.read_in + same.read_in
    assert len(reads) == 1 and len(two.read_in) == 1  # once per media id
    assert threading.main_thread().name not in reads + two.read_in  # in a worker thread, not on the event loop


async def test_chat_passes_image_urls_through(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    url = "https://example.com/cat.png"
    request = Request([user(text("What is it?"), Part(media=Media(Modality.IMAGE, "image/png", url=url)))])
    await collect(provider, request, model_of(provider, "gpt-4o"))
    parts = fake.parts(fake.chat_requests()[0]["messages"][0])
    assert [(p.kind, p.url) for p in parts] == [("text", ""), ("image", url)]


async def test_chat_reads_uploaded_images_from_the_store(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path
) -> None:
    data = image_bytes("PNG", (1, 2, 3))
    stored = tmp_path / "ab12"
    stored.write_bytes(data)
    media = Media(Modality.IMAGE, "image/png", path=stored, media_id="ab12", size=len(data))
    await collect(provider, Request([user(text("Describe"), Part(media=media))]), model_of(provider, "gpt-4o"))
    parts = fake.parts(fake.chat_requests()[0]["messages"][0])
    assert parts[1].data == data


async def test_audio_chat_sends_input_audio(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    clip = wav_bytes()
    mp3ish = b"ID3\x04\x00\x00\x00\x00\x00\x00fake-mp3"
    request = Request([user(text("What is said?"), audio(clip), audio(mp3ish, "audio/mpeg"))],
                      Options(task=Task.CHAT))
    events = await collect(provider, request, model_of(provider, "gpt-audio"))
    assert any(isinstance(e, TextDelta) for e in events)
    [body] = fake.chat_requests()
    assert body["model"] == "gpt-audio"
    parts = fake.parts(body["messages"][0])
    assert [(p.kind, p.mime_type) for p in parts] == [("text", ""), ("audio", "wav"), ("audio", "mp3")]
    assert parts[1].data == clip and parts[2].data == mp3ish


async def test_audio_chat_refuses_formats_the_api_cannot_take(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    request = Request([user(text("What is said?"), audio(b"OggS fake", "audio/ogg"))], Options(task=Task.CHAT))
    with pytest.raises(ProviderBadRequest, match="wav or mp3"):
        await collect(provider, request, model_of(provider, "gpt-audio"))
    assert fake.requests == []


async def test_audio_chat_refuses_audio_by_url_retryably(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """``input_audio`` carries bytes only: audio given by URL is UNSUPPORTED_INPUT (the next target or
    bridge is tried), while an image URL is passed through (the API fetches images itself)."""
    remote = Part(media=Media(Modality.AUDIO, "audio/mpeg", url="https://example.com/talk.mp3"))
    request = Request([user(text("What is said?"), remote)], Options(task=Task.CHAT))
    with pytest.raises(ProviderUnsupportedInput, match=r"gpt-audio cannot fetch audio by URL") as refused:
        await collect(provider, request, model_of(provider, "gpt-audio"))
    assert refused.value.retryable
    assert fake.requests == []


async def test_chat_normalises_the_image_jpg_alias(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    photo = image_bytes("JPEG", (0, 0, 255))
    request = Request([user(text("What is it?"), image(photo, "image/jpg"))])
    await collect(provider, request, model_of(provider, "gpt-4o"))  # the fake, like the API, refuses image/jpg
    parts = fake.parts(fake.chat_requests()[0]["messages"][0])
    assert (parts[1].mime_type, parts[1].data) == ("image/jpeg", photo)


@pytest.mark.parametrize("legacy", [False, True])
async def test_max_output_tokens_is_capped_at_the_models_output_limit(fake: FakeOpenAI, legacy: bool) -> None:
    p = make_provider(fake, legacy_max_tokens=legacy)
    try:
        request = Request([user(text("write a long essay"))], Options(max_output_tokens=100_000))
        events = await collect(p, request, model_of(p, "gpt-4o"))  # the fake, like the API, refuses > 16384
        assert any(isinstance(e, TextDelta) for e in events)
    finally:
        await p.aclose()
    [body] = fake.chat_requests()
    assert body["max_tokens" if legacy else "max_completion_tokens"] == 16_384


async def test_max_output_tokens_is_capped_only_where_the_limit_is_known(fake: FakeOpenAI) -> None:
    fake.chat_models |= {"org/limited", "org/unknown"}
    p = make_provider(fake, models=[{"name": "org/limited", "max_output_tokens": 2048}, {"name": "org/unknown"}])
    try:
        request = Request([user(text("hi"))], Options(max_output_tokens=9000))
        await collect(p, request, model_of(p, "org/limited"))
        await collect(p, request, model_of(p, "org/unknown"))
    finally:
        await p.aclose()
    assert [b["max_completion_tokens"] for b in fake.chat_requests()] == [2048, 9000]


async def test_legacy_max_tokens_and_organization(fake: FakeOpenAI) -> None:
    p = make_provider(fake, legacy_max_tokens=True, organization="org-123", project="proj_9")
    try:
        await collect(p, Request([user(text("hi"))], Options(max_output_tokens=7)), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    [body] = fake.chat_requests()
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    assert fake.requests[0].headers["openai-organization"] == "org-123"
    assert fake.requests[0].headers["openai-project"] == "proj_9"


async def test_one_client_is_reused_and_closed(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    assert provider._client is None  # made lazily
    model = model_of(provider, "gpt-4o")
    await collect(provider, Request([user(text("one"))]), model)
    first = provider.client()
    await collect(provider, Request([user(text("two"))]), model)
    assert provider.client() is first
    assert len(fake.chat_requests()) == 2
    await provider.aclose()
    assert provider._client is None and first.is_closed()


# -- OpenAI-compatible servers ---------------------------------------------------------------------
async def test_compatible_server_needs_no_key_and_takes_configured_models(fake: FakeOpenAI) -> None:
    p = OpenAIProvider({"base_url": fake.base_url, "builtin_models": False,
                        "models": [{"name": "llama3.2-vision", "inputs": ["text", "image"],
                                    "context_tokens": 8192, "price": {"input_per_mtok": 0.1}},
                                   {"name": "whisper-large-v3", "outputs": ["transcript"]}]})
    try:
        assert p.unconfigured_reason() is None
        assert [m.name for m in p.models] == ["llama3.2-vision", "whisper-large-v3"]
        llama = model_of(p, "llama3.2-vision")
        assert llama.inputs == {Modality.TEXT, Modality.IMAGE} and llama.context_tokens == 8192
        assert llama.price.input_per_mtok == pytest.approx(0.1)
        assert model_of(p, "whisper-large-v3").can_do(Task.TRANSCRIBE)
        with pytest.raises(ProviderAuthError):  # the fake wants the real key: shows what was sent
            await collect(p, Request([user(text("hi"))]), llama)
    finally:
        await p.aclose()
    assert fake.requests[0].headers["authorization"] == f"Bearer {NO_KEY_PLACEHOLDER}"
    assert fake.requests[0].json()["model"] == "llama3.2-vision"


# -- transcription --------------------------------------------------------------------------------
async def test_whisper_transcribes_with_segments(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    clip = wav_bytes()
    request = Request([user(audio(clip, filename="meeting.wav"))], Options(task=Task.TRANSCRIBE, language="en-US"))
    events = await collect(provider, request, model_of(provider, "whisper-1"))

    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    t = ready.transcript
    assert t.text == "Hello there. General Kenobi."
    assert [(u.text, u.start, u.end) for u in t.utterances] == [("Hello there.", 0.0, 1.2),
                                                                 ("General Kenobi.", 1.2, 2.5)]
    assert t.duration_seconds == 2.5 and t.language == "en"  # whisper answers "english"
    assert [(w.text, w.start, w.end) for w in t.words] == [
        ("Hello", 0.0, 0.5), ("there", 0.5, 1.1), ("General", 1.3, 1.8), ("Kenobi", 1.8, 2.4)]
    [usage] = [e.usage for e in events if isinstance(e, UsageReport)]
    assert (usage.audio_seconds, usage.input_tokens, usage.cost_usd) == (3.0, 0, 0.0)

    [upload] = fake.uploads()
    assert upload.field("model") == "whisper-1"
    assert upload.field("response_format") == "verbose_json"
    assert upload.fields.get("timestamp_granularities[]") == ["word", "segment"]
    assert upload.field("language") == "en"
    filename, content_type, data = upload.files["file"]
    assert (filename, content_type, data) == ("meeting.wav", "audio/wav", clip)


async def test_transcription_streams_uploaded_media_from_the_store(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path
) -> None:
    clip = wav_bytes(1.0)
    stored = tmp_path / "c0ffee"
    stored.write_bytes(clip)
    media = Media(Modality.AUDIO, "audio/wav", path=stored, media_id="c0ffee", size=len(clip))
    events = await collect(provider, Request([user(Part(media=media))]), model_of(provider, "whisper-1"))
    assert any(isinstance(e, TranscriptReady) for e in events)
    filename, _, data = fake.uploads()[0].files["file"]
    assert filename == "audio.wav" and data == clip  # the API finds the format by the extension


async def test_gpt4o_transcribe_uses_json_and_reports_tokens(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    request = Request([user(audio(wav_bytes(), "audio/mpeg", duration_seconds=2.0))])
    events = await collect(provider, request, model_of(provider, "gpt-4o-transcribe"))
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert ready.transcript.text == "Hello there. General Kenobi." and ready.transcript.utterances == []
    [usage] = [e.usage for e in events if isinstance(e, UsageReport)]
    assert (usage.input_tokens, usage.output_tokens, usage.audio_seconds) == (40, 8, 0.0)
    assert usage.audio_input_tokens == 40  # input_token_details.audio_tokens: priced at the audio rate
    price = model_of(provider, "gpt-4o-transcribe").price
    assert price.cost(usage) == pytest.approx(40 * 6.00 / 1e6 + 8 * 10.00 / 1e6)
    [upload] = fake.uploads()
    assert upload.field("model") == "gpt-4o-transcribe" and upload.field("response_format") == "json"
    assert "timestamp_granularities[]" not in upload.fields
    assert upload.files["file"][0] == "audio.mp3"


async def test_diarizing_model_labels_speakers(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    request = Request([user(audio(wav_bytes()))], Options(task=Task.TRANSCRIBE, diarization=True))
    events = await collect(provider, request, model_of(provider, "gpt-4o-transcribe-diarize"))
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    t = ready.transcript
    assert [(u.speaker, u.text, u.start, u.end) for u in t.utterances] == [
        ("A", "Hello there.", 0.0, 1.2), ("B", "General Kenobi.", 1.2, 2.5)]
    assert t.text == "Speaker A: Hello there.\nSpeaker B: General Kenobi."
    [upload] = fake.uploads()
    assert upload.field("response_format") == "diarized_json"
    assert upload.field("chunking_strategy") == "auto"


async def test_several_clips_of_the_newest_message_make_one_merged_transcript(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    earlier, first, second = wav_bytes(0.1), wav_bytes(0.2), wav_bytes(0.3)
    request = Request([
        user(audio(earlier)),  # an earlier turn of the session: transcribed (and billed) when it was sent
        Message(Role.ASSISTANT, [text("Hello there. General Kenobi.")]),
        user(audio(first, filename="part1.wav"), audio(second, filename="part2.wav")),
    ], Options(task=Task.TRANSCRIBE))
    events = await collect(provider, request, model_of(provider, "whisper-1"))
    # a transcript and a report per clip, each before the next clip is sent (StreamGenerate sends each)
    assert [type(e) for e in events] == [TranscriptReady, UsageReport, TranscriptReady, UsageReport]
    assert [(u.files["file"][0], u.files["file"][2]) for u in fake.uploads()] == [
        ("part1.wav", first), ("part2.wav", second)]
    assert [(u.start, u.end) for u in events[2].transcript.utterances] == [(0.0, 1.2), (1.2, 2.5)]  # its own times
    t = Transcript.merged([events[0].transcript, events[2].transcript])  # as the router makes the answer's
    assert t.text == "Hello there. General Kenobi. Hello there. General Kenobi."
    # The second clip's segments follow the first clip's 2.5 s.
    assert [(u.start, u.end) for u in t.utterances] == [(0.0, 1.2), (1.2, 2.5), (2.5, 3.7), (3.7, 5.0)]
    assert t.duration_seconds == 5.0
    # so do its words
    assert [(w.text, w.start, w.end) for w in t.words][3:5] == [("Kenobi", 1.8, 2.4), ("Hello", 2.5, 3.0)]
    # 3 s billed per clip, a part per clip: 6.0 in all
    assert [events[1].usage.audio_seconds, events[-1].usage.audio_seconds] == [3.0, 3.0]
    assert events[1].usage.audio_seconds + events[-1].usage.audio_seconds == 6.0


async def test_a_failing_clip_reports_the_usage_of_the_clips_before_it(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """The first clip was transcribed, and billed: its transcript and usage are yielded before the second
    clip's error."""
    fake.fail_files["part2.wav"] = 500
    request = Request([user(audio(wav_bytes(), filename="part1.wav"), audio(wav_bytes(), filename="part2.wav"),
                            audio(wav_bytes(), filename="part3.wav"))], Options(task=Task.TRANSCRIBE))
    ctx = CallContext(request_id="partial", deadline=time.monotonic() + 30)
    events: list[object] = []
    with pytest.raises(ProviderUnavailable, match=r"could not transcribe part2\.wav"):
        async for event in provider.generate(request, model_of(provider, "whisper-1"), ctx):
            events.append(event)
    assert [type(e) for e in events] == [TranscriptReady, UsageReport]
    assert events[1].usage.audio_seconds == 3.0
    assert [u.files["file"][0] for u in fake.uploads()] == ["part1.wav", "part2.wav"]


async def test_a_failing_first_clip_reports_no_usage(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail_files["part1.wav"] = 400
    request = Request([user(audio(wav_bytes(), filename="part1.wav"), audio(wav_bytes(), filename="part2.wav"))])
    ctx = CallContext(request_id="none", deadline=time.monotonic() + 30)
    events = []
    with pytest.raises(ProviderBadRequest):
        async for event in provider.generate(request, model_of(provider, "whisper-1"), ctx):
            events.append(event)
    assert events == []


@pytest.mark.parametrize(("answered", "requested", "reported"), [
    ("german", "", "de"), ("English", "en-US", "en"), ("haitian creole", "", "ht"), ("javanese", "", "jv"),
    ("jw", "", "jv"), ("pt-BR", "", "pt-BR"), ("klingon", "", "klingon"), ("  ", "fr-CA", "fr-CA"),
])
async def test_whisper_reports_the_language_as_a_bcp47_tag(fake: FakeOpenAI, provider: OpenAIProvider,
                                                           answered: str, requested: str, reported: str) -> None:
    """whisper names the language ("german"): the transcript has its code; a code is kept, an unknown
    name kept lower-cased, and with none the requested language is reported as given."""
    fake.language = answered
    events = await collect(provider, Request([user(audio(wav_bytes()))], Options(language=requested)),
                           model_of(provider, "whisper-1"))
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert ready.transcript.language == reported


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-transcribe-diarize"])
async def test_without_a_detected_language_the_requested_one_is_reported_as_given(
    fake: FakeOpenAI, provider: OpenAIProvider, model: str
) -> None:
    """json and diarized_json name no language: the client's BCP-47 tag is reported whole, while the
    API is sent its ISO 639-1 part."""
    request = Request([user(audio(wav_bytes()))], Options(task=Task.TRANSCRIBE, language="pt-BR"))
    events = await collect(provider, request, model_of(provider, model))
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert ready.transcript.language == "pt-BR"
    assert fake.uploads()[0].field("language") == "pt"


async def test_a_clip_given_by_url_is_refused_retryably(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """The API is sent bytes only: a URL is a form whisper-1 does not take, so the router tries a provider
    that fetches URLs (UNSUPPORTED_INPUT, retryable), and nothing is uploaded."""
    remote = Part(media=Media(Modality.AUDIO, "audio/wav", url="https://example.com/b.wav"))
    with pytest.raises(ProviderUnsupportedInput, match="whisper-1 cannot fetch audio by URL") as refused:
        await collect(provider, Request([user(remote, audio(wav_bytes()))]), model_of(provider, "whisper-1"))
    assert refused.value.retryable
    assert fake.requests == []


@pytest.mark.parametrize(("filename", "sent"), [
    ("standup.2024-05-01", "standup.2024-05-01.wav"), ("v1.2 interview", "v1.2 interview.wav"),
    ("memo", "memo.wav"), ("talk.WAV", "talk.WAV"), ("clip.mp3", "clip.mp3"),
])
async def test_the_upload_name_always_ends_with_an_audio_extension(
    fake: FakeOpenAI, provider: OpenAIProvider, filename: str, sent: str
) -> None:
    request = Request([user(audio(wav_bytes(), filename=filename))])
    events = await collect(provider, request, model_of(provider, "whisper-1"))  # the fake refuses other names
    assert any(isinstance(e, TranscriptReady) for e in events)
    assert fake.uploads()[0].files["file"][0] == sent


@pytest.mark.parametrize(("mime", "filename", "sent"), [
    ("audio/opus", "", "audio.ogg"), ("video/ogg", "", "audio.ogg"), ("audio/opus", "rec.opus", "rec.opus.ogg"),
    ("audio/ogg; codecs=opus", "voice.oga", "voice.oga.ogg"), ("audio/x-wav", "", "audio.wav"),
])
async def test_ogg_opus_and_aliases_are_named_with_an_extension_the_api_takes(
    fake: FakeOpenAI, provider: OpenAIProvider, mime: str, filename: str, sent: str
) -> None:
    """The API picks the format by the extension: Ogg/Opus must not go as ``audio.bin`` or ``rec.opus``."""
    events = await collect(provider, Request([user(audio(b"OggS" + b"\0" * 60, mime, filename=filename))]),
                           model_of(provider, "whisper-1"))  # the fake refuses other extensions
    assert any(isinstance(e, TranscriptReady) for e in events)
    assert fake.uploads()[0].files["file"][0] == sent


async def test_gpt_transcribe_is_charged_by_audio_seconds_and_reads_languages(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """gpt-transcribe has only a per-audio-hour price: its token-counted answers are charged by the audio's
    length; the tokens are reported too (they cost nothing)."""
    request = Request([user(audio(wav_bytes(), duration_seconds=60.0))])
    model = model_of(provider, "gpt-transcribe")
    events = await collect(provider, request, model)
    [usage] = [e.usage for e in events if isinstance(e, UsageReport)]
    assert (usage.audio_seconds, usage.input_tokens, usage.output_tokens, usage.audio_input_tokens) == (60.0, 40, 8, 40)
    assert model.price.cost(usage) == pytest.approx(60 * 0.27 / 3600)
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert ready.transcript.language == "en"  # from languages[0]
    assert ready.transcript.duration_seconds == 60.0


async def test_transcription_without_audio_is_a_bad_request(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderBadRequest, match="has none"):
        await collect(provider, Request([user(text("hello"))]), model_of(provider, "whisper-1"))
    assert fake.requests == []


# -- errors ---------------------------------------------------------------------------------------
ERROR_CASES = [
    (400, ProviderBadRequest, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
    (404, ProviderModelNotFound, grpc.StatusCode.NOT_FOUND, "PROVIDER_MODEL_NOT_FOUND"),
    (500, ProviderUnavailable, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (503, ProviderUnavailable, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
]


@pytest.mark.parametrize(("status", "error", "code", "reason"), ERROR_CASES)
async def test_http_errors_are_mapped(fake: FakeOpenAI, provider: OpenAIProvider, status: int, error: type,
                                      code: grpc.StatusCode, reason: str) -> None:
    fake.fail_next(status, error_body(f"upstream says {status}"))
    with pytest.raises(error) as info:
        await collect(provider, Request([user(text("hi"))]), model_of(provider, "gpt-4o"))
    assert type(info.value) is error
    assert info.value.code == code and info.value.reason == reason
    assert info.value.metadata == {"provider": "openai", "provider_error_type": "invalid_request_error"}
    assert f"upstream says {status}" in info.value.message
    assert len(fake.requests) == 1  # no SDK retries: the router does fallbacks


@pytest.mark.parametrize(("status", "body", "expected"), [
    (400, error_body("This model's maximum context length is 128000 tokens. However, your messages resulted "
                     "in 180000 tokens.", code="context_length_exceeded", param="messages"), ProviderInputTooLarge),
    (400, error_body("Input is over the limit.", code="context_length_exceeded"), ProviderInputTooLarge),
    (413, error_body("Maximum content size limit (26214400) exceeded (31457280 bytes read)", "server_error"),
     ProviderInputTooLarge),
    (400, error_body("Invalid value for 'content': expected a string.", code="invalid_value"), ProviderBadRequest),
])
async def test_a_refusal_for_size_lets_the_router_fall_back(fake: FakeOpenAI, provider: OpenAIProvider, status: int,
                                                            body: dict, expected: type) -> None:
    """A context or upload limit is INPUT_TOO_LARGE, retryable on another model (by status, by the
    error's code or by its wording); any other 400 stays a bad request."""
    fake.fail_next(status, body)
    with pytest.raises(expected) as info:
        await collect(provider, Request([user(text("hi"))]), model_of(provider, "gpt-4o"))
    assert type(info.value) is expected and info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.retryable is (expected is ProviderInputTooLarge)


async def test_unknown_model_is_not_found(fake: FakeOpenAI) -> None:
    p = make_provider(fake, models=[{"name": "gpt-9"}])
    try:
        with pytest.raises(ProviderModelNotFound, match="gpt-9") as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-9"))
    finally:
        await p.aclose()
    assert "does not exist" in info.value.message


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_name_the_setting_and_never_the_key(fake: FakeOpenAI, status: int) -> None:
    secret = "sk-wrong-key-that-must-not-leak-42"
    p = make_provider(fake, api_key=secret)
    if status == 403:
        fake.fail_next(403, error_body(f"Project denied for key {secret}"))
    try:
        with pytest.raises(ProviderAuthError) as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "PROVIDER_AUTH"
    # the section gives the key: OPENAI_API_KEY was not read (see the test below)
    assert "check providers.openai.api_key (the key this section gives)" in err.message
    assert secret not in str(err) and secret[:12] not in err.message
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize(("name", "section", "environment", "hint"), [
    pytest.param("openai", {}, "sk-refused", "check OPENAI_API_KEY or providers.openai.api_key", id="from-the-variable"),
    # api_key: "${OPS_OPENAI_KEY}": the plugin sees the key only, not the variable's name
    pytest.param("openai", {"api_key": "sk-refused"}, "", "check providers.openai.api_key (the key this section "
                 "gives)", id="from-the-section"),
    pytest.param("openai", {"api_key": "sk-refused"}, "sk-another", "check providers.openai.api_key (the key this "
                 "section gives)", id="from-the-section-beside-the-variable"),
    pytest.param("openai", {"api_key": "sk-refused"}, "sk-refused", "check OPENAI_API_KEY or providers.openai.api_key",
                 id="the-section-names-the-variable"),
    pytest.param("openai-eu", {"api_key": "sk-refused"}, "sk-refused", "check providers.openai-eu.api_key",
                 id="an-extra-instance"),
])
async def test_a_refused_key_names_where_it_came_from(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, name: str,
                                                      section: dict, environment: str, hint: str) -> None:
    """The 401 hint named OPENAI_API_KEY also when the section gave the key (``api_key: "${OPS_OPENAI_KEY}"``),
    which never reads that variable: the operator was sent to the wrong one."""
    if environment:
        monkeypatch.setenv("OPENAI_API_KEY", environment)
    fake.fail_next(401, error_body("Incorrect API key provided"))
    p = OpenAIProvider({"base_url": fake.base_url, "timeout": 10, **section}, name=name)
    try:
        with pytest.raises(ProviderAuthError) as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    assert info.value.message.endswith(f"authentication failed (HTTP 401): {hint}"), info.value.message
    assert fake.requests[0].headers["authorization"] == f"Bearer {section.get('api_key') or environment}"


async def test_rate_limit_carries_retry_after(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail_next(429, error_body("Rate limit reached for gpt-4o", "requests", "rate_limit_exceeded"),
                   {"Retry-After": "7"})
    with pytest.raises(ProviderRateLimited) as info:
        await collect(provider, Request([user(text("hi"))]), model_of(provider, "gpt-4o"))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.retry_after == 7.0
    assert "Rate limit reached" in info.value.message
    assert len(fake.requests) == 1


async def test_rate_limit_on_transcription_prefers_retry_after_ms(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail_next(429, error_body("slow down"), {"retry-after-ms": "1500", "Retry-After": "9"})
    with pytest.raises(ProviderRateLimited) as info:
        await collect(provider, Request([user(audio(wav_bytes()))]), model_of(provider, "whisper-1"))
    assert info.value.retry_after == 1.5


async def test_timeout_is_unavailable(fake: FakeOpenAI) -> None:
    fake.chunk_delay = 2.0  # each SSE chunk waits longer than the read timeout
    p = make_provider(fake, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(ProviderUnavailable, match="timed out") as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5


async def test_call_deadline_shortens_the_timeout(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.chunk_delay = 2.0
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        async for _ in provider.generate(Request([user(text("hi"))]), model_of(provider, "gpt-4o"), ctx):
            pass
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_connection_refused_is_unavailable(transport) -> None:
    """Not "timed out": the SDK's aiohttp transport reports a refused connection as a connect timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{port}/v1", "timeout": 5,
                        "http_client": transport})
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach") as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    assert API_KEY not in info.value.message


async def test_error_in_the_middle_of_a_stream_is_unavailable(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.stream_error = "The server had an error while processing your request."
    seen: list = []
    with pytest.raises(ProviderUnavailable, match="server had an error"):
        async for event in provider.generate(Request([user(text("hi"))]), model_of(provider, "gpt-4o"),
                                             CallContext(request_id="mid")):
            seen.append(event)
    assert [e.text for e in seen] == ["Hello"]


# -- OpenAI's 25 MB upload limit -------------------------------------------------------------------
UPLOAD_LIMIT = 25 * 1024 * 1024


def big_stored_wav(tmp_path: Path, size: int) -> Media:
    """A stored WAV of ``size`` bytes (a sparse file: a real header, then silence), as the media store holds it."""
    stored = tmp_path / f"big-{size}"
    stored.write_bytes(wav_bytes(0.01))
    with stored.open("r+b") as f:
        f.truncate(size)
    return Media(Modality.AUDIO, "audio/wav", path=stored, media_id="ab" * 32, size=size, filename="all-hands.wav")


@pytest.mark.parametrize("name", ["whisper-1", "gpt-4o-transcribe", "gpt-4o-transcribe-diarize", "gpt-transcribe"])
async def test_a_clip_over_25_mb_is_refused_before_anything_is_uploaded(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path, name: str
) -> None:
    """The API takes at most 25 MB per file: a larger clip is INPUT_TOO_LARGE (the router tries the next
    target) naming the limit and the size, and no clip of the message is uploaded, not even a small one."""
    big = big_stored_wav(tmp_path, UPLOAD_LIMIT + 1)
    request = Request([user(audio(wav_bytes()), Part(media=big))], Options(task=Task.TRANSCRIBE))
    with pytest.raises(ProviderInputTooLarge) as info:
        await collect(provider, request, model_of(provider, name))
    assert str(info.value) == (f"openai: audio clip 2 'all-hands.wav' is 26,214,401 bytes, over {name}'s limit "
                               "of 26,206,208 bytes per file (its 25 MB request limit, 26,214,400 bytes, less "
                               "room for the multipart envelope; refused before uploading)")
    assert info.value.retryable and info.value.reason == "INPUT_TOO_LARGE"
    assert fake.requests == []


async def test_a_clip_just_under_25_mb_that_the_envelope_would_push_over_is_refused_before_uploading(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path
) -> None:
    """OpenAI's 25 MB is the multipart body's: a file 200 bytes under it was uploaded whole, then refused
    (413, the fake counting the body as the API does). It is now refused before anything is sent."""
    big = big_stored_wav(tmp_path, UPLOAD_LIMIT - 200)
    with pytest.raises(ProviderInputTooLarge, match="refused before uploading"):
        await collect(provider, Request([user(Part(media=big))], Options(task=Task.TRANSCRIBE)),
                      model_of(provider, "whisper-1"))
    assert fake.requests == []


async def test_the_largest_clip_taken_fits_the_body_limit_with_the_longest_name(
    fake: FakeOpenAI, provider: OpenAIProvider, tmp_path: Path
) -> None:
    """A clip of MAX_FILE_BYTES, named with the longest name a request may give (255 characters of 4 bytes
    in UTF-8), with every field the plugin sends: its body stays within OpenAI's 25 MB, which the fake enforces."""
    from mmrouter_openai.models import MAX_FILE_BYTES

    big = big_stored_wav(tmp_path, MAX_FILE_BYTES)
    big.filename = "\U0001f3a4" * 251 + ".wav"
    request = Request([user(Part(media=big))], Options(task=Task.TRANSCRIBE, language="en-GB", temperature=0.2))
    events = await collect(provider, request, model_of(provider, "whisper-1"))
    assert isinstance(events[0], TranscriptReady)
    [sent] = [r for r in fake.requests if r.path == "/v1/audio/transcriptions"]
    assert MAX_FILE_BYTES < len(sent.body) <= UPLOAD_LIMIT


async def test_a_configured_models_server_sets_its_own_limit(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A model an operator adds (an OpenAI-compatible server) is not held to OpenAI's limit: the clip is sent,
    and the server's 413 (here the fake's, worded as OpenAI's) is INPUT_TOO_LARGE all the same."""
    p = make_provider(fake, models=[{"name": "whisper-large-v3", "outputs": ["transcript"]}])
    big = Media(Modality.AUDIO, "audio/wav", data=wav_bytes(0.01) + b"\0" * UPLOAD_LIMIT, filename="a.wav")
    try:
        with pytest.raises(ProviderInputTooLarge, match=r"Maximum content size limit \(26214400\) exceeded"):
            await collect(p, Request([user(Part(media=big))]), model_of(p, "whisper-large-v3"))
    finally:
        await p.aclose()
    [sent] = [r for r in fake.requests if r.path == "/v1/audio/transcriptions"]
    assert len(sent.body) > UPLOAD_LIMIT


def test_the_request_body_splices_each_media_once_and_leaves_marker_like_text_alone() -> None:
    """Media are spliced into the serialised JSON at their markers: user text that looks like a
    marker (it cannot know the call's random token) stays text, quotes and all."""
    import base64
    import json

    from mmrouter_openai.chat import build_params, request_body

    from router import Media, Message, Modality, ModelInfo, Part, Request, Role

    image = Media(Modality.IMAGE, "image/png", data=b"\x89PNG\r\n\x1a\n-pixels-")
    tricky = '"mmrouter-media-0123456789abcdef-0" and \\ "quotes"'
    model = ModelInfo("gpt-4o", frozenset({Modality.TEXT, Modality.IMAGE}))
    request = Request([Message(Role.USER, [Part(media=image), Part(text=tricky), Part(media=image)])])
    body = json.loads(request_body(build_params("openai", model, request, legacy_max_tokens=False)))
    first, text_part, second = body["messages"][0]["content"]
    url = "data:image/png;base64," + base64.b64encode(image.data).decode()
    assert first["image_url"]["url"] == url == second["image_url"]["url"]
    assert text_part == {"type": "text", "text": tricky}
    plain = Request([Message(Role.USER, [Part(text=tricky)])])
    assert json.loads(request_body(build_params("openai", model, plain, legacy_max_tokens=False)))[
        "messages"] == [{"role": "user", "content": tricky}]


# -- the catalogue against the installed SDK's model lists ----------------------------------------
#: The date the catalogue was last checked against OpenAI's shutdown dates.
CATALOGUE_CHECKED = "2026-11-30"


def sdk_shutdown_dates(literal_module: ModuleType) -> dict[str, str]:
    """Model id -> shutdown date, from the "Deprecated values" docstring after an SDK model literal
    (``- "a", "b": Announced shutdown date: 2026-05-07.``)."""
    import inspect
    import re

    source = inspect.getsource(literal_module)
    dates: dict[str, str] = {}
    for names, date in re.findall(r'^- ((?:"[^"]+",?\s*)+):\s*Announced shutdown\s+date:\s*(\d{4}-\d{2}-\d{2})',
                                  source, flags=re.MULTILINE):
        dates.update(dict.fromkeys(re.findall(r'"([^"]+)"', names), date))
    return dates


def test_no_built_in_model_is_past_the_shutdown_date_the_sdk_announces() -> None:
    """gpt-4o-audio-preview and gpt-4o-mini-audio-preview were shut down on 2026-05-07 (types/shared/
    chat_model.py): calls to them fail with model_not_found. No built-in model may be past such a date."""
    from mmrouter_openai.models import BUILTIN
    from openai.types import audio_model
    from openai.types.shared import chat_model

    shutdown = sdk_shutdown_dates(chat_model) | sdk_shutdown_dates(audio_model)
    assert shutdown["gpt-4o-audio-preview"] == "2026-05-07"  # the parsing works
    retired = {e.info.name: shutdown[e.info.name] for e in BUILTIN
               if shutdown.get(e.info.name, "9999") <= CATALOGUE_CHECKED}
    assert retired == {}


async def test_audio_chat_with_gpt_audio_mini(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    model = model_of(provider, "gpt-audio-mini")
    assert model.inputs == {Modality.TEXT, Modality.AUDIO}
    assert (model.price.input_per_mtok, model.price.output_per_mtok, model.price.audio_input_per_mtok) == (
        0.60, 2.40, 10.00)
    request = Request([user(text("What is said?"), audio(wav_bytes()))], Options(task=Task.CHAT))
    events = await collect(provider, request, model)
    assert any(isinstance(e, TextDelta) for e in events)
    assert fake.chat_requests()[0]["model"] == "gpt-audio-mini"


def test_the_aiohttp_transport_is_the_default_but_a_url_with_credentials_uses_httpx() -> None:
    """aiohttp refuses credentials in the URL beside the bearer token, so that URL gets httpx."""
    assert OpenAISettings.load("openai", {"api_key": API_KEY}).transport == "aiohttp"
    assert OpenAISettings.load("openai", {"api_key": API_KEY, "http_client": "httpx"}).transport == "httpx"
    with_password = {"api_key": API_KEY, "base_url": "http://svc:pw@127.0.0.1:9/v1"}
    assert OpenAISettings.load("openai", with_password).transport == "httpx"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n",  # a base_url at a port that is not HTTP
    b"HTTP/1.1 200 OK\r\nset-cookie: " + b"a" * 9000 + b"\r\ncontent-length: 0\r\n\r\n",  # over aiohttp's 8190
], ids=["not-http", "long-header"])
async def test_a_malformed_response_is_unavailable_not_a_plugin_failure(transport, reply) -> None:
    """The SDK's aiohttp transport lets aiohttp's own response errors through unmapped: they were
    INTERNAL "the plugin failed", with tracebacks."""
    assert API_KEY not in (await chat_unavailable(reply, transport)).message


async def test_a_stream_event_that_is_not_utf8_is_unavailable() -> None:
    """The events are decoded by json.loads: bad UTF-8 is a bad answer (fallbacks run), not a plugin failure."""
    body = b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe"}}]}\n\n'
    error = await chat_unavailable(raw_reply(body, "text/event-stream"))
    assert "failed while answering" in error.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_connection_broken_mid_answer_is_a_failure_while_answering_not_cannot_reach(transport) -> None:
    """The server answered, sent a chunk, then closed before the body's end: it was reached, so the error
    says the connection broke while the answer was read (it said "cannot reach")."""
    event = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    server = RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 10000\r\n\r\n"
                       + event, then_close=True)
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                        "http_client": transport})
    received: list = []
    try:
        with pytest.raises(ProviderUnavailable) as info:
            async for item in p.generate(Request([user(text("hi"))]), model_of(p, "gpt-4o"), CallContext("t")):
                received.append(item)
    finally:
        await p.aclose()
        server.close()
    assert [e.text for e in received if isinstance(e, TextDelta)] == ["Hel"]
    assert "gpt-4o failed while answering: the connection broke while the answer was read" in info.value.message
    assert "cannot reach" not in info.value.message and API_KEY not in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_an_upload_to_a_server_that_stopped_reading_times_out(transport) -> None:
    """aiohttp has no write timeout (its read timeout starts once the body is sent): a large request to
    a server that stopped reading waited for TCP to give up, not for the configured timeout."""
    server = RawServer(None)
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 1,
                        "http_client": transport})
    big = image_bytes() + bytes(24 * 1024 * 1024)  # base64: 32 MB, more than loopback buffers hold
    try:
        with pytest.raises(ProviderUnavailable, match="timed out after 1s"):
            await collect(p, Request([user(text("What is it?"), image(big))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
        server.close()


# -- transcription answers of the wrong shape ---------------------------------------------------------
def raw_reply(body: bytes, content_type: str = "application/json", status: str = "200 OK") -> bytes:
    """A whole HTTP/1.1 response carrying ``body``."""
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


async def chat_unavailable(reply: bytes, transport: str = "aiohttp") -> ProviderUnavailable:
    """The error of a chat call to a server that answers ``reply`` (raw bytes) to any request."""
    server = RawServer(reply)
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                        "http_client": transport})
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
        server.close()
    return info.value


async def transcribe_from(reply: bytes, model: str, transport: str = "aiohttp",
                          clip: Part | None = None) -> list[object]:
    """The events of transcribing one clip with ``model`` at a server answering ``reply``."""
    server = RawServer(reply)
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                        "http_client": transport})
    try:
        return await collect(p, Request([user(clip or audio(wav_bytes()))], Options(task=Task.TRANSCRIBE)),
                             model_of(p, model))
    finally:
        await p.aclose()
        server.close()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe"])
async def test_a_transcription_answered_with_an_html_page_is_unavailable(transport: str, model: str) -> None:
    """The SDK returns a body that is not JSON as a str: a proxy's login page was a "transcript" of HTML, at $0."""
    page = b"<html><head><title>Sign in</title></head><body>Please log in to the corporate proxy</body></html>"
    with pytest.raises(ProviderUnavailable, match=rf"bad answer from {model} .*not a JSON object") as info:
        await transcribe_from(raw_reply(page, "text/html"), model, transport)
    assert API_KEY not in info.value.message and "<html>" not in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_transcription_answered_with_an_error_envelope_is_unavailable(transport: str) -> None:
    """A 200 carrying {"error": ...} was an empty transcript, with no error."""
    body = b'{"error": {"message": "upstream overloaded", "type": "server_error"}}'
    with pytest.raises(ProviderUnavailable, match="gpt-4o-transcribe failed while answering: upstream overloaded"):
        await transcribe_from(raw_reply(body), "gpt-4o-transcribe", transport)


@pytest.mark.parametrize(("body", "what"), [
    ({"segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": None}]}, "segment 1 has no text"),
    ({"segments": [{"id": 0, "text": "hi"}]}, "segment 1 has no start"),
    ({"segments": [{"id": 0, "start": 0.0, "end": "1.0", "text": "hi"}]}, "segment 1 has no end"),
    ({"segments": ["hi"]}, "segment 1 has no text"),
    ({"segments": "hi"}, "segments is not a list"),
    ({"words": [{"word": None, "start": 0.0, "end": 1.0}]}, "word 1 has no text"),
    ({"text": None}, "the answer has no text"),
    ({"text": 42}, "the answer has no text"),
], ids=["null-segment-text", "no-segment-times", "string-end", "segment-not-object", "segments-not-list",
        "null-word", "null-text", "int-text"])
async def test_a_malformed_verbose_json_is_unavailable_not_a_plugin_failure(body: dict, what: str) -> None:
    """The SDK builds its result without validation: a segment's null text reached .strip() (INTERNAL
    "the plugin failed: AttributeError"), one without times became an Utterance(start=None, end=None)."""
    answer = {"text": "hi", "language": "english", "duration": 1.0, **body}
    with pytest.raises(ProviderUnavailable, match=rf"bad answer from whisper-1 .*: {what}"):
        await transcribe_from(raw_reply(json_bytes(answer)), "whisper-1")


async def test_negative_times_of_a_transcription_are_taken_as_the_clip_s_start() -> None:
    """A compatible server's segment at -0.02 s: the router's contract refuses negative times (the call
    failed as the plugin's fault); the plugin takes them as 0."""
    from router.contract import event_problem

    answer = {"text": "hi there", "language": "english", "duration": 1.0,
              "segments": [{"id": 0, "start": -0.02, "end": 0.5, "text": " hi"},
                           {"id": 1, "start": 0.5, "end": 1.0, "text": " there"}],
              "words": [{"word": "hi", "start": -0.02, "end": -0.01}, {"word": "there", "start": 0.5, "end": 1.0}]}
    events = await transcribe_from(raw_reply(json_bytes(answer)), "whisper-1")
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    assert event_problem(ready) is None
    assert [(u.start, u.end) for u in ready.transcript.utterances] == [(0.0, 0.5), (0.5, 1.0)]
    assert [(w.text, w.start, w.end) for w in ready.transcript.words] == [("hi", 0.0, 0.0), ("there", 0.5, 1.0)]


def json_bytes(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


@pytest.mark.parametrize(("model", "answer", "expected"), [
    ("gpt-4o-transcribe", {"text": "hi", "usage": {"type": "tokens", "input_tokens": "40", "output_tokens": 2.5}},
     (0, 0, 0.0)),
    ("gpt-4o-transcribe", {"text": "hi", "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 8,
                                                   "input_token_details": {"audio_tokens": "x"}}}, (40, 8, 0.0)),
    ("gpt-transcribe", {"text": "hi", "usage": {"type": "duration", "seconds": "abc"}}, (0, 0, 2.0)),
    ("gpt-transcribe", {"text": "hi", "usage": {"type": "duration", "seconds": -3}}, (0, 0, 2.0)),
    ("whisper-1", {"text": "hi", "duration": "abc", "language": 7, "segments": None}, (0, 0, 2.0)),
    ("gpt-transcribe", {"text": "hi", "duration": [], "languages": 5}, (0, 0, 2.0)),
], ids=["string-tokens", "string-audio-tokens", "string-seconds", "negative-seconds", "string-duration", "odd-languages"])
async def test_odd_usage_and_optional_fields_of_a_transcription_are_read_defensively(
    model: str, answer: dict, expected: tuple[int, int, float]
) -> None:
    """Odd counts were kept (a str token count crashed when clips' usages were added: "the plugin failed"),
    or crashed float(). Like the Anthropic plugin, a count that is no number counts as absent: the audio
    length then comes from the answer's duration or the router's measure (2 s here)."""
    clip = audio(wav_bytes(), duration_seconds=2.0)
    events = await transcribe_from(raw_reply(json_bytes(answer)), model, clip=clip)
    [ready] = [e for e in events if isinstance(e, TranscriptReady)]
    [usage] = [e.usage for e in events if isinstance(e, UsageReport)]
    assert ready.transcript.text == "hi" and ready.transcript.duration_seconds == 2.0
    assert (usage.input_tokens, usage.output_tokens, usage.audio_seconds) == expected
    assert type(usage.input_tokens) is int and type(usage.output_tokens) is int
    assert type(usage.audio_input_tokens) is int and type(usage.audio_seconds) is float


# -- a stream whose body is held open after data: [DONE] ------------------------------------------
def _held_open_chat_reply() -> bytes:
    """A chunked Chat Completions stream through ``data: [DONE]``, without the terminating 0-chunk."""
    chunk = '{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}'
    events = [chunk % ('{"role":"assistant","content":"Hel"}', "null"), chunk % ('{"content":"lo"}', "null"),
              chunk % ("{}", '"stop"'),
              '{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1000,'
              '"completion_tokens":5,"total_tokens":1005}}', "[DONE]"]
    body = b""
    for data in events:
        event = f"data: {data}\n\n".encode()
        body += f"{len(event):x}\r\n".encode() + event + b"\r\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_body_held_open_after_done_still_completes_the_answer(transport: str) -> None:
    """A proxy keeps the chunked body open after data: [DONE]: the answer is whole, so the call succeeds
    soon after it instead of failing at the read timeout."""
    from router import FinishReason

    server = RawServer(_held_open_chat_reply())
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 2,
                        "http_client": transport})
    events: list = []
    try:
        ctx = CallContext(request_id="t", deadline=time.monotonic() + 30)
        async for event in p.generate(Request([user(text("hi"))]), model_of(p, "gpt-4o"), ctx):
            events.append(event)
    finally:
        await p.aclose()
        server.close()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    report = events[-1]
    assert isinstance(report, UsageReport) and report.finish_reason is FinishReason.STOP
    assert (report.usage.input_tokens, report.usage.output_tokens) == (1000, 5)


class _ConnectionCountingOpenAI(FakeOpenAI):
    """The fake, noting the client port of each request's connection."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []

    def handle(self, request, reply) -> None:
        self.ports.append(reply._h.client_address[1])
        super().handle(request, reply)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_stream_ended_with_its_body_leaves_the_connection_for_the_next_call(transport: str) -> None:
    with _ConnectionCountingOpenAI() as upstream:
        p = make_provider(upstream, http_client=transport)
        try:
            for _ in range(3):
                events = await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
                assert isinstance(events[-1], UsageReport)
        finally:
            await p.aclose()
    assert len(upstream.ports) == 3 and len(set(upstream.ports)) == 1


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_odd_usage_counts_of_a_chat_answer_count_as_absent(transport: str) -> None:
    """A compatible server's usage with a count that is a string, a negative number or a float: the answer
    is given, its usage counted as absent. Before, the router refused the plugin's event (INTERNAL)."""
    import json

    def sse(payload: object) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    body = (sse({**chunk, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]})
            + sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            + sse({**chunk, "choices": [], "usage": {"prompt_tokens": "12", "completion_tokens": -1,
                                                     "prompt_tokens_details": {"cached_tokens": 2.5}}})
            + b"data: [DONE]\n\n")
    server = RawServer(raw_reply(body, "text/event-stream"))
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                        "http_client": transport})
    try:
        events = await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
        server.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi"]
    usage = events[-1].usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (0, 0, 0)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_server_that_ignores_stream_and_answers_one_completion_is_read_whole(transport: str) -> None:
    """Some OpenAI-compatible servers answer a streamed request with one JSON chat completion. Its text was
    thrown away and the call failed as a cut stream; it is now the answer, with its usage."""
    import json

    completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer."},
                               "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    error = {"error": {"message": "upstream overloaded", "type": "server_error"}}
    from router import FinishReason
    from router.errors import ProviderError

    results: list = []
    for body in (completion, error):
        server = RawServer(raw_reply(json.dumps(body).encode()))
        p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                            "http_client": transport})
        try:
            results.append(await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o")))
        except ProviderError as exc:
            results.append(exc)
        finally:
            await p.aclose()
            server.close()
    answered, failed = results
    assert [e.text for e in answered if isinstance(e, TextDelta)] == ["Whole answer."]
    assert (answered[-1].usage.input_tokens, answered[-1].usage.output_tokens) == (12, 3)
    assert answered[-1].finish_reason is FinishReason.LENGTH
    assert isinstance(failed, ProviderUnavailable) and "upstream overloaded" in failed.message


@pytest.mark.parametrize(("code", "expected"), [("context_length_exceeded", ProviderInputTooLarge),
                                                ("server_error", ProviderUnavailable)])
async def test_an_error_event_refusing_the_size_is_input_too_large(code: str, expected: type) -> None:
    """A compatible server that checks the context only once it streams sends the refusal as an error
    event: INPUT_TOO_LARGE, so a model with a larger context is tried, as for the same refusal as HTTP 400."""
    import json

    event = {"error": {"message": "This model's maximum context length is 8192 tokens", "code": code}}
    server = RawServer(raw_reply(b"data: " + json.dumps(event).encode() + b"\n\n", "text/event-stream"))
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5})
    try:
        with pytest.raises(expected) as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
        server.close()
    assert type(info.value) is expected and "maximum context length" in info.value.message


# -- error events, pages and bodies that are no answer, redirects -------------------------------------
@pytest.mark.parametrize(("code", "err_type", "expected"), [
    ("rate_limit_exceeded", "requests", ProviderRateLimited),
    (None, "tokens", ProviderRateLimited),
    (429, "RateLimitError", ProviderRateLimited),  # vLLM: the HTTP status as the code
    ("429", None, ProviderRateLimited),  # LiteLLM: the same, as a str
    ("invalid_api_key", "invalid_request_error", ProviderAuthError),
    (None, "authentication_error", ProviderAuthError),
    ("context_length_exceeded", "invalid_request_error", ProviderInputTooLarge),
    (None, "invalid_request_error", ProviderBadRequest),
    (None, "server_error", ProviderUnavailable),
    ("something_new", "unheard_of", ProviderUnavailable),
], ids=["rate-limit", "tokens", "vllm-429", "litellm-429", "bad-key", "auth-type", "context", "invalid", "server",
        "unknown"])
async def test_an_error_event_in_a_stream_is_mapped_as_the_http_error_it_stands_for(
        fake: FakeOpenAI, provider: OpenAIProvider, code: str | int | None, err_type: str | None,
        expected: type) -> None:
    """An error event was always UNAVAILABLE: a gateway's rate limit or refused key inside the stream
    showed as an outage. It maps by its code, else its type, as the HTTP error of that kind does."""
    fake.stream_error = f"Incorrect API key provided: {API_KEY}" if expected is ProviderAuthError else "refused"
    fake.stream_error_code, fake.stream_error_type = code, err_type
    with pytest.raises(ProviderError) as info:
        await collect(provider, Request([user(text("hi"))]), model_of(provider, "gpt-4o"))
    assert type(info.value) is expected
    assert API_KEY not in info.value.message
    if expected is ProviderAuthError:
        assert "authentication failed (reported in the answer): check providers.openai.api_key" in info.value.message
    else:
        assert "gpt-4o failed while answering: refused" in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("body", [b'{"text": "Hello th', b"", b'{"text": "\xff\xfe"}'], ids=["cut", "empty", "not-utf8"])
async def test_a_transcription_whose_json_does_not_parse_is_unavailable_not_a_plugin_failure(
        transport: str, body: bytes) -> None:
    """The SDK lets json.JSONDecodeError out for an application/json body that does not parse: it was
    INTERNAL "the plugin failed"; it is worded as chat words it."""
    with pytest.raises(ProviderUnavailable, match=r"bad answer from whisper-1 .*: the server answered with a body "
                                                  r"that is not JSON") as info:
        await transcribe_from(raw_reply(body), "whisper-1", transport)
    assert API_KEY not in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_chat_answered_with_an_html_page_says_so_not_a_cut_stream(transport: str) -> None:
    """A captive portal's 200 text/html was "the stream ended before the answer was complete"."""
    page = b"<html><head><title>Sign in</title></head><body>Please log in to the hotel wifi</body></html>"
    message = (await chat_unavailable(raw_reply(page, "text/html; charset=utf-8"), transport)).message
    assert ("the answer is not an event stream but a page of type text/html (a proxy's or captive portal's login "
            "page") in message
    assert "ended before" not in message and "<html>" not in message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("task", [Task.CHAT, Task.TRANSCRIBE])
async def test_a_redirect_is_never_followed_and_names_where_it_pointed(
        fake: FakeOpenAI, transport: str, status: int, task: Task) -> None:
    """The SDK's clients follow redirects: the call (and the key) went to the other host, and its 404 was
    reported as the model missing at the configured base_url. A 3xx is now UNAVAILABLE (a fallback answers)."""
    with FakeOpenAI() as other:
        fake.fail_next(status, {"moved": True},
                       {"Location": f"http://svc:hunter2@127.0.0.1:{other.url.rsplit(':', 1)[1]}/steal?token=t0k"})
        p = make_provider(fake, http_client=transport)
        model, clip = ("gpt-4o", text("hi")) if task is Task.CHAT else ("whisper-1", audio(wav_bytes()))
        try:
            with pytest.raises(ProviderUnavailable) as info:
                await collect(p, Request([user(clip)], Options(task=task)), model_of(p, model))
        finally:
            await p.aclose()
        assert other.requests == []
    message = info.value.message
    assert message == (f"openai: the API at {fake.base_url} answered HTTP {status} redirecting to "
                       f"{other.url}/steal; redirects are not followed: set providers.openai.base_url to where the "
                       "API is served")
    assert info.value.retryable and len(fake.requests) == 1


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_relative_redirect_is_named_on_the_host_that_answered(fake: FakeOpenAI, transport: str) -> None:
    fake.fail_next(302, {}, {"Location": "/login?next=%2Fv1"})
    p = make_provider(fake, http_client=transport)
    try:
        with pytest.raises(ProviderUnavailable, match=f"HTTP 302 redirecting to {fake.url}/login; ") as info:
            await collect(p, Request([user(text("hi"))]), model_of(p, "gpt-4o"))
    finally:
        await p.aclose()
    assert "next" not in info.value.message and len(fake.requests) == 1
