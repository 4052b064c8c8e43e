"""The Gemini provider against a fake Gemini API, through the real google-genai SDK."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import socket
import time
import tomllib
from datetime import timedelta
from pathlib import Path

import mmrouter_gemini.files
import pluggy
import pytest
from mmrouter_gemini import GeminiProvider, GeminiSettings
from mmrouter_gemini.files import EXPIRY_MARGIN, upload_key
from mmrouter_gemini.models import TYPICAL
from mmrouter_gemini.settings import GEMINI_API_URL

from router import (
    CallContext,
    FinishReason,
    Media,
    Message,
    Modality,
    Options,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
    Usage,
    UsageReport,
)
from router.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderModelNotFound,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnsupportedInput,
)
from router.testing import ProviderContract, collect
from tests.fakes.gemini import FakeGemini

KEY = "AIza-test-secret-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY) as server:
        yield server


def make_provider(fake: FakeGemini, **overrides) -> GeminiProvider:
    settings = {"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.02}
    settings.update(overrides)
    return GeminiProvider.from_settings(settings)


@pytest.fixture
async def provider(fake):
    p = make_provider(fake)
    yield p
    await p.aclose()


def ask(*parts: Part, system: str = "") -> Request:
    messages = [Message(Role.SYSTEM, [Part(text=system)])] if system else []
    messages.append(Message(Role.USER, list(parts)))
    return Request(messages=messages, options=Options(task=Task.CHAT))


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def stored_video(tmp_path: Path, size: int = 3000) -> Media:
    """A 'video' in a content-addressed store, as the router hands uploaded media to providers."""
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * (size // 256)
    digest = hashlib.sha256(data).hexdigest()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / digest
    path.write_bytes(data)
    return Media(Modality.VIDEO, "video/mp4", path=path, media_id=digest, size=len(data), filename="clip.mp4")


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def usage_of(events) -> Usage:
    """The whole answer's usage: the sum of its reports (the router adds them up). A streamed answer reports
    in parts: the prompt's as soon as a chunk before the last counts it (before that chunk's text; input
    tokens only, no finish reason), then the rest with the finish reason, last; an answer in one chunk, or
    not streamed, reports once, at its end."""
    reports = [e for e in events if isinstance(e, UsageReport)]
    assert 1 <= len(reports) <= 2 and reports[-1] is events[-1]
    if len(reports) == 2:
        prompt = reports[0]
        assert prompt.finish_reason is None and prompt.usage.input_tokens > 0 and prompt.usage.output_tokens == 0
        deltas = [i for i, e in enumerate(events) if isinstance(e, TextDelta)]
        assert not deltas or events.index(prompt) < deltas[0]
    total = Usage()
    for report in reports:
        total.add(report.usage)
    return total


def model(provider, name="gemini-2.5-pro"):
    return provider.model(name)


class TestGeminiContract(ProviderContract):
    @pytest.fixture
    def provider(self, fake):
        return make_provider(fake)


# -- models and configuration ------------------------------------------------------------------


def test_models_declare_every_input_long_context_and_prices(fake):
    p = make_provider(fake)
    names = {m.name for m in p.models}
    assert {"gemini-2.5-pro", "gemini-2.5-flash"} <= names
    for m in p.models:
        assert m.inputs == {Modality.TEXT, Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT}
        assert m.context_tokens >= 1_048_576
        assert m.price.input_per_mtok > 0 and m.price.output_per_mtok > m.price.input_per_mtok
    pro, flash = p.model("gemini-2.5-pro"), p.model("gemini-2.5-flash")
    assert pro.price.input_per_mtok > flash.price.input_per_mtok


def test_key_comes_from_config_then_env(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    p = GeminiProvider.from_settings({})
    assert "GEMINI_API_KEY" in p.unconfigured_reason()
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    assert GeminiProvider.from_settings({}).settings.key == "from-google-env"
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini-env")
    assert GeminiProvider.from_settings({}).settings.key == "from-gemini-env"
    assert GeminiProvider.from_settings({"api_key": "from-config"}).settings.key == "from-config"
    assert GeminiProvider.from_settings({"api_key": "x"}).unconfigured_reason() is None


async def test_an_extra_instance_reads_only_its_own_section(monkeypatch, fake, tmp_path):
    """providers.gemini-team with plugin: gemini gets nothing of the environment the SDK or the plugin
    reads for the gemini provider (the keys, GOOGLE_GEMINI_BASE_URL, Vertex AI), and its errors name it."""
    for var, value in (("GEMINI_API_KEY", KEY), ("GOOGLE_API_KEY", KEY), ("GOOGLE_GEMINI_BASE_URL", fake.url),
                       ("GOOGLE_GENAI_USE_VERTEXAI", "true"), ("GOOGLE_CLOUD_PROJECT", "env-project")):
        monkeypatch.setenv(var, value)  # KEY is the key the fake accepts: the instance must not send it
    keyless = GeminiProvider.from_settings({}, "gemini-team")
    assert (keyless.name, keyless.settings.key) == ("gemini-team", "")
    assert keyless.unconfigured_reason() == "no API key: set providers.gemini-team.api_key"
    with pytest.raises(ProviderAuthError) as refused:
        await collect(keyless, ask(Part(text="hi")), model(keyless))
    assert refused.value.metadata["provider"] == "gemini-team" and "GEMINI" not in refused.value.message
    assert fake.requests == []

    team = GeminiProvider.from_settings({"api_key": "AIza-team-key-4242"}, "gemini-team")
    api = team.client()._api_client  # the public API, not GOOGLE_GEMINI_BASE_URL; not Vertex AI
    assert (api._http_options.base_url.rstrip("/"), api.vertexai) == ("https://generativelanguage.googleapis.com", False)
    await team.aclose()

    wrong = GeminiProvider.from_settings({"api_key": "AIza-team-key-4242", "base_url": fake.url}, "gemini-team")
    with pytest.raises(ProviderAuthError) as caught:
        await collect(wrong, ask(Part(text="hi")), model(wrong))
    await wrong.aclose()
    assert (caught.value.provider, caught.value.metadata["provider"]) == ("gemini-team", "gemini-team")
    assert "providers.gemini-team.api_key" in caught.value.message and "GEMINI_API_KEY" not in caught.value.message
    assert [r.headers["x-goog-api-key"] for r in fake.requests] == ["AIza-team-key-4242"]  # its own key only
    fake.processing_polls, fake.fail_processing = 1, True
    uploader = GeminiProvider.from_settings({"api_key": KEY, "base_url": fake.url, "inline_limit_bytes": 0,
                                             "poll_interval": 0.02}, "gemini-team")
    with pytest.raises(ProviderBadRequest) as failed:
        await collect(uploader, ask(Part(text="?"), Part(media=stored_video(tmp_path))), model(uploader))
    await uploader.aclose()
    assert failed.value.provider == "gemini-team" and "could not process" in failed.value.message  # Files API

    own = GeminiProvider.from_settings({})  # the plugin's own provider still reads the environment
    assert text_of(await collect(own, ask(Part(text="hi")), model(own))) == "Hello from Gemini."
    await own.aclose()
    assert fake.requests[-1].headers["x-goog-api-key"] == KEY


def test_settings_are_checked():
    s = GeminiSettings.load("gemini", {"api_key": "k", "inline_limit_bytes": "1024", "timeout": 5,
                                     "api_version": "v1alpha", "streaming": "false"})
    assert (s.inline_limit_bytes, s.timeout, s.api_version, s.streaming) == (1024, 5.0, "v1alpha", False)
    with pytest.raises(ConfigError, match="inline_limit_bytes"):
        GeminiSettings.load("gemini", {"inline_limit_bytes": "lots"})
    with pytest.raises(ConfigError, match="timeout"):
        GeminiSettings.load("gemini", {"timeout": 0})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/gem?key=AIzaQUERYSECRET", "http://127.0.0.1:9/gem#AIzaQUERYSECRET"])
def test_a_base_url_with_a_query_or_fragment_is_refused_naming_the_key(monkeypatch, url):
    """The SDK appends /v1beta/models/... after the query (``?key=...`` then sent nowhere useful, and logged
    at INFO by httpx): refused as the OpenAI plugin refuses it, naming the key, never quoting the query."""
    with pytest.raises(ConfigError, match=r"providers\.gemini-team\.base_url: .*cannot send query parameters") as c:
        GeminiProvider.from_settings({"base_url": url}, "gemini-team")
    assert "QUERYSECRET" not in str(c.value)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", url)  # read by the SDK for the plugin's own provider
    with pytest.raises(ConfigError, match=r"GOOGLE_GEMINI_BASE_URL \(read for providers\.gemini\.base_url\): "
                                          r".*cannot send query parameters") as c:
        GeminiProvider.from_settings({"api_key": "k"})
    assert "QUERYSECRET" not in str(c.value)
    # not read when a base_url is given, nor by an extra instance
    assert GeminiProvider.from_settings({"base_url": "http://127.0.0.1:9/"}).settings.base_url == "http://127.0.0.1:9"
    assert GeminiProvider.from_settings({}, "gemini-team").settings.client_base_url == GEMINI_API_URL


@pytest.mark.parametrize("name", ["weird..name", "models/../files", "gemini?alt=x", "gemini&x"])
def test_a_configured_model_name_the_sdk_refuses_is_refused_naming_the_key(name):
    """google.genai refuses a model name with ``..``, ``?`` or ``&`` in every call (ValueError, then
    INTERNAL): refused with the settings, so ``config check`` and ``serve`` say so."""
    spec = {"name": name, "price": {"input_per_mtok": 1, "output_per_mtok": 2}}
    with pytest.raises(ConfigError, match=r"providers\.gemini\.models: .*cannot be called"):
        GeminiProvider.from_settings({"api_key": KEY, "models": [spec]})


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_model_name_the_sdk_refuses_is_a_bad_request_not_internal(fake, streaming):
    """The safety net behind the settings' check: a model given in code with such a name is
    PROVIDER_BAD_REQUEST, nothing sent (it was an unmapped ValueError: INTERNAL, with a traceback)."""
    weird = dataclasses.replace(TYPICAL, name="weird..name")
    p = GeminiProvider(GeminiSettings.load("gemini", {"api_key": KEY, "base_url": fake.url, "streaming": streaming}),
                       models=[weird])
    try:
        with pytest.raises(ProviderBadRequest, match=r"the model name 'weird\.\.name' cannot be called") as caught:
            await collect(p, ask(Part(text="hi")), p.model("weird..name"))
    finally:
        await p.aclose()
    assert type(caught.value) is ProviderBadRequest
    assert fake.requests == []


def test_the_wheel_has_the_readme_as_its_description():
    """The plugin's pyproject names its README, as the other plugins do (the wheel had no description)."""
    project = tomllib.loads((ROOT / "plugins" / "gemini" / "pyproject.toml").read_text())["project"]
    assert project["readme"] == "README.md"
    assert (ROOT / "plugins" / "gemini" / project["readme"]).is_file()


async def test_plugin_registers_through_its_entry_point(fake):
    from router import hookspecs

    pm = pluggy.PluginManager("mmrouter")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints("mmrouter", name="gemini")
    got = []
    pm.hook.register_providers(register=got.append, settings={"api_key": KEY, "base_url": fake.url}, name="gemini")
    assert [p.name for p in got] == ["gemini"]
    assert isinstance(got[0], GeminiProvider) and got[0].settings.base_url == fake.url
    events = await collect(got[0], ask(Part(text="hi")), got[0].model("gemini-2.5-flash"))
    assert text_of(events) == "Hello from Gemini."
    assert fake.calls("stream")[0].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    await got[0].aclose()


# -- text, streaming, inline media ---------------------------------------------------------------


async def test_streams_text_deltas_and_one_usage(provider, fake):
    fake.reply_chunks = ["The ", "answer ", "is ", "42."]
    request = Request(
        messages=[
            Message(Role.SYSTEM, [Part(text="Be terse.")]),
            Message(Role.USER, [Part(text="What is six times seven?")]),
            Message(Role.ASSISTANT, [Part(text="Let me think.")]),
            Message(Role.USER, [Part(text="Well?")]),
        ],
        options=Options(task=Task.CHAT, max_output_tokens=64, temperature=0.25),
    )
    events = await collect(provider, request, model(provider))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["The ", "answer ", "is ", "42."]
    assert isinstance(events[-1], UsageReport)
    reports = [e.usage for e in events if isinstance(e, UsageReport)]
    assert [(u.input_tokens, u.output_tokens) for u in reports] == [(12, 0), (0, 7)]  # the prompt's, then the rest
    assert isinstance(events[0], UsageReport) and isinstance(events[1], TextDelta)  # the prompt's before any text
    usage = usage_of(events)
    assert (usage.input_tokens, usage.output_tokens) == (12, 7)  # 5 answer + 2 thinking tokens
    # the prompt's part is priced by the router (cost 0: short, not cached), the rest as the difference of
    # the totals: the parts, priced, add up to the whole answer's price
    price = model(provider).price
    assert reports[0].cost_usd == 0
    assert reports[1].cost_usd == pytest.approx(price.cost(usage) - price.cost(reports[0]))
    assert sum(u.cost_usd or price.cost(u) for u in reports) == pytest.approx(price.cost(usage))

    [sent] = fake.calls("stream")
    assert sent.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert sent.query == {"alt": ["sse"]}
    assert sent.headers["x-goog-api-key"] == KEY
    body = sent.json()
    assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
        ("user", "What is six times seven?"), ("model", "Let me think."), ("user", "Well?")]
    assert body["systemInstruction"]["parts"][0]["text"] == "Be terse."
    assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.25}
    assert fake.calls("generate") == []


async def test_unary_generate_content_when_streaming_is_off(fake):
    p = make_provider(fake, streaming=False, api_version="v1alpha")
    events = await collect(p, ask(Part(text="hi")), model(p, "gemini-2.5-flash"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello from Gemini."]
    assert usage_of(events).output_tokens == 7
    [sent] = fake.calls("generate")
    assert sent.path == "/v1alpha/models/gemini-2.5-flash:generateContent"
    assert fake.calls("stream") == []
    await p.aclose()


async def test_inline_image_audio_and_pdf_are_sent_as_inline_data(provider, fake):
    png = png_bytes()
    pdf = b"%PDF-1.4\n%tiny\n"
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "
    fake.usage = {"promptTokenCount": 2000, "candidatesTokenCount": 5, "totalTokenCount": 2005,
                  "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 300}, {"modality": "AUDIO", "tokenCount": 900},
                                          {"modality": "IMAGE", "tokenCount": 800}]}
    events = await collect(provider, ask(
        Part(text="Describe these."),
        Part(media=Media(Modality.IMAGE, "image/png", data=png)),
        Part(media=Media(Modality.DOCUMENT, "application/pdf", data=pdf)),
        Part(media=Media(Modality.AUDIO, "audio/wav", data=wav)),
    ), model(provider))
    assert text_of(events) == "Hello from Gemini."
    parts = fake.calls("stream")[0].json()["contents"][0]["parts"]
    assert parts[0] == {"text": "Describe these."}
    inline = [p["inlineData"] for p in parts[1:]]
    assert [base64.b64decode(d["data"]) for d in inline] == [png, pdf, wav]
    assert [d.get("mimeType", d.get("mime_type")) for d in inline] == ["image/png", "application/pdf", "audio/wav"]
    assert fake.calls("upload_start") == []
    usage = usage_of(events)  # the AUDIO part of the prompt is reported apart, for its higher price
    assert (usage.input_tokens, usage.audio_input_tokens) == (2000, 900)
    flash = model(provider, "gemini-2.5-flash").price
    assert flash.cost(usage) == pytest.approx(1100 * 0.30 / 1e6 + 900 * 1.00 / 1e6 + 5 * 2.50 / 1e6)


def _mime_of(part: dict) -> str:
    data = part.get("inlineData") or part.get("fileData")
    return data.get("mimeType", data.get("mime_type"))


async def test_mime_aliases_and_parameters_are_normalised_inline_and_uploaded(fake):
    """The API refuses aliases (400 "Unsupported MIME type: image/jpg"): what is sent is the registered type."""
    fake.processing_polls = 0
    p = make_provider(fake, inline_limit_bytes=2000)
    jpg = b"\xff\xd8\xff\xe0" + b"\0" * 100
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\0" * 5000  # over the inline limit: uploaded
    notes = b"# Notes\nsome *markdown*"
    log = b"2024-05-01 started"
    await collect(p, ask(Part(text="Look"), Part(media=Media(Modality.IMAGE, "Image/JPG", data=jpg)),
                         Part(media=Media(Modality.DOCUMENT, "text/markdown; charset=utf-8", data=notes)),
                         Part(media=Media(Modality.DOCUMENT, "text/x-log", data=log)),
                         Part(media=Media(Modality.AUDIO, "audio/x-wav; codecs=1", data=wav))), model(p))
    parts = fake.calls("stream")[0].json()["contents"][0]["parts"]
    assert [_mime_of(part) for part in parts[1:]] == ["image/jpeg", "text/markdown", "text/plain", "audio/wav"]
    assert [f.mime_type for f in fake.files.values()] == ["audio/wav"]
    assert base64.b64decode(parts[2]["inlineData"]["data"]) == notes
    await p.aclose()


def _turn(role: Role, text: str) -> Message:
    return Message(role, [Part(text=text)])


LEAD = "(The conversation so far follows.)"


@pytest.mark.parametrize(("history", "sent"), [
    # a trimmed session history that starts with the model's answer
    ([_turn(Role.ASSISTANT, "a1"), _turn(Role.USER, "q2"), _turn(Role.ASSISTANT, "a2")],
     [("user", [LEAD]), ("model", ["a1"]), ("user", ["q2"]), ("model", ["a2"]), ("user", ["q3"])]),
    # an empty stored answer (left out) between two questions
    ([_turn(Role.USER, "q1"), _turn(Role.ASSISTANT, ""), _turn(Role.USER, "q2")], [("user", ["q1", "q2", "q3"])]),
    # two answers in a row
    ([_turn(Role.USER, "q1"), _turn(Role.ASSISTANT, "a1"), _turn(Role.ASSISTANT, "a1b")],
     [("user", ["q1"]), ("model", ["a1", "a1b"]), ("user", ["q3"])]),
], ids=["model-first", "empty-answer", "two-answers"])
async def test_turns_alternate_between_user_and_model(provider, fake, history, sent):
    """The real API refuses contents that do not alternate (the fake does too): same-role turns are
    merged, and a conversation that starts with the model gets a short user turn in front."""
    request = Request(messages=[*history, _turn(Role.USER, "q3")], options=Options(task=Task.CHAT))
    events = await collect(provider, request, model(provider))
    assert text_of(events) == "Hello from Gemini."
    contents = fake.calls("stream")[0].json()["contents"]
    assert [(c["role"], [part["text"] for part in c["parts"]]) for c in contents] == sent


async def test_the_fake_refuses_turns_that_do_not_alternate(fake):
    """The fake checks alternation like the real API, so the tests above prove something."""
    from google import genai
    from google.genai import errors, types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.url))
    contents = [types.Content(role="user", parts=[types.Part.from_text(text="q1")]),
                types.Content(role="user", parts=[types.Part.from_text(text="q2")])]
    with pytest.raises(errors.ClientError, match="alternate between user and model"):
        await client.aio.models.generate_content(model="gemini-2.5-pro", contents=contents)


async def test_media_by_url_is_referenced_not_fetched(provider, fake):
    url = "https://example.com/talk.mp4"
    await collect(provider, ask(Part(text="Sum up"), Part(media=Media(Modality.VIDEO, "video/mp4", url=url))),
                  model(provider))
    part = fake.calls("stream")[0].json()["contents"][0]["parts"][1]
    assert part["fileData"]["file_uri"] == url
    assert fake.calls("upload_start") == []


async def test_thoughts_are_not_part_of_the_answer(fake):
    class Thinking(FakeGemini):
        def _generate(self, request, reply, *, stream):
            reply.sse([(None, {"candidates": [{"content": {"role": "model", "parts": [
                {"text": "secret musing", "thought": True}, {"text": "Visible."}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "thoughtsTokenCount": 9}})])

    with Thinking(api_key=KEY) as thinking:
        p = make_provider(thinking)
        events = await collect(p, ask(Part(text="hi")), model(p))
        await p.aclose()
    assert text_of(events) == "Visible."
    assert usage_of(events).output_tokens == 10


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_blocked_prompt_is_a_bad_request_after_reporting_its_billed_usage(fake, streaming):
    """Gemini bills the tokens of a prompt it blocks (promptFeedback.blockReason, with usageMetadata): the usage
    is reported, then the call fails as before; the router keeps it as the failed call's paid step."""
    from contextlib import aclosing

    from router.invoke import call_model
    from router.outcome import RouteInfo

    fake.block_reason = "SAFETY"
    fake.safety_ratings = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                           {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
                           {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "LOW", "blocked": True}]
    p = make_provider(fake, streaming=streaming)
    events = []
    with pytest.raises(ProviderBadRequest, match=r"blocked \(SAFETY\)") as caught:
        async for event in p.generate(ask(Part(text="something bad")), model(p), CallContext(request_id="t")):
            events.append(event)
    assert type(caught.value) is ProviderBadRequest and KEY not in caught.value.message
    assert caught.value.message == ("gemini: the prompt was blocked (SAFETY); flagged: "
                                    "HARM_CATEGORY_DANGEROUS_CONTENT (HIGH), HARM_CATEGORY_HATE_SPEECH (LOW, blocked)")
    [report] = events
    assert isinstance(report, UsageReport) and report.finish_reason is None
    assert (report.usage.input_tokens, report.usage.output_tokens) == (3, 0)

    route = RouteInfo("default", p.name, "gemini-2.5-pro")
    with pytest.raises(ProviderBadRequest, match=r"blocked \(SAFETY\)"):
        async with aclosing(call_model(p, model(p), ask(Part(text="something bad")), CallContext(request_id="t"),
                                       route, "answer")) as calls:
            async for _ in calls:
                pass
    await p.aclose()
    [step] = route.steps
    assert (step.purpose, step.usage.input_tokens) == ("answer (failed)", 3)
    assert step.usage.cost_usd == pytest.approx(3 * 1.25 / 1e6)  # gemini-2.5-pro's input price
    assert [(a.ok, "blocked (SAFETY)" in a.error) for a in route.attempts] == [(False, True)]
    assert len(fake.calls("stream" if streaming else "generate")) == 2


# -- the Files API ---------------------------------------------------------------------------------


async def test_large_video_is_uploaded_once_polled_and_referenced(fake, tmp_path):
    fake.processing_polls = 2
    p = make_provider(fake, inline_limit_bytes=1024)
    video = stored_video(tmp_path)
    events = await collect(p, ask(Part(text="What happens?"), Part(media=video)), model(p))
    assert text_of(events) == "Hello from Gemini."

    [start] = fake.calls("upload_start")
    assert start.path == "/upload/v1beta/files"
    assert start.headers["x-goog-upload-protocol"] == "resumable"
    assert start.headers["x-goog-upload-header-content-length"] == str(video.size)
    assert start.headers["x-goog-upload-header-content-type"] == "video/mp4"
    chunks = fake.calls("upload_chunk")
    assert chunks[-1].headers["x-goog-upload-command"] == "upload, finalize"
    assert b"".join(c.body for c in chunks) == video.path.read_bytes()
    [name] = fake.files
    assert fake.files[name].data == video.path.read_bytes()
    gets = fake.calls("file_get")
    assert len(gets) == 3 and {g.path for g in gets} == {f"/v1beta/{name}"}  # PROCESSING, PROCESSING, ACTIVE
    [sent] = fake.calls("stream")
    # the file was referenced only after it became ACTIVE (the fake refuses otherwise)
    assert fake.requests.index(sent) > fake.requests.index(gets[-1])
    file_part = sent.json()["contents"][0]["parts"][1]["fileData"]
    assert file_part == {"file_uri": f"{fake.url}/v1beta/{name}", "mime_type": "video/mp4"}

    # the same media again: no upload, no poll, same reference
    before = len(fake.requests)
    events = await collect(p, ask(Part(text="And then?"), Part(media=video)), model(p))
    assert text_of(events) == "Hello from Gemini."
    later = fake.requests[before:]
    assert [FakeGemini._kind(r) for r in later] == ["stream"]
    assert later[0].json()["contents"][0]["parts"][1]["fileData"]["file_uri"] == file_part["file_uri"]
    await p.aclose()


async def test_inline_bytes_over_the_limit_are_uploaded_and_remembered_by_sha256(fake):
    fake.processing_polls = 0
    p = make_provider(fake, inline_limit_bytes=2000)
    small = png_bytes()
    big = b"%PDF-1.4\n" + b"x" * 5000
    request = ask(Part(media=Media(Modality.IMAGE, "image/png", data=small)),
                  Part(media=Media(Modality.DOCUMENT, "application/pdf", data=big)), Part(text="Compare"))
    await collect(p, request, model(p))
    await collect(p, request, model(p))
    assert len(fake.calls("upload_start")) == 1
    assert bytes(next(iter(fake.files.values())).data) == big
    for sent in fake.calls("stream"):
        parts = sent.json()["contents"][0]["parts"]
        assert "inlineData" in parts[0] and "fileData" in parts[1]
    await p.aclose()


async def test_concurrent_calls_with_the_same_media_upload_it_once(fake, tmp_path):
    fake.processing_polls = 3
    p = make_provider(fake, inline_limit_bytes=0)
    video = stored_video(tmp_path)
    results = await asyncio.gather(*(collect(p, ask(Part(text=f"q{i}"), Part(media=video)), model(p))
                                     for i in range(3)))
    assert all(text_of(r) == "Hello from Gemini." for r in results)
    assert len(fake.calls("upload_start")) == 1
    assert len(fake.calls("stream")) == 3
    assert p.files._locks == {}  # the per-media lock goes with the last call that used it
    await p.aclose()


async def test_expired_copies_are_forgotten_not_kept_forever(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(mmrouter_gemini.files, "PRUNE_INTERVAL_SECONDS", 0.0)
    fake.processing_polls = 0
    fake.file_ttl = EXPIRY_MARGIN - timedelta(minutes=1)  # unusable as soon as uploaded
    p = make_provider(fake, inline_limit_bytes=0)
    first, second = stored_video(tmp_path / "a", 3000), stored_video(tmp_path / "b", 4000)
    await collect(p, ask(Part(text="?"), Part(media=first)), model(p))
    assert set(p.files._files) == {(first.media_id, "video/mp4")}
    await collect(p, ask(Part(text="?"), Part(media=second)), model(p))
    assert set(p.files._files) == {(second.media_id, "video/mp4")}  # the first one's expired copy was dropped
    await p.aclose()


async def test_failed_processing_is_a_clear_error_and_its_copy_is_not_kept(fake, tmp_path):
    fake.processing_polls = 1
    fake.fail_processing = True
    p = make_provider(fake, inline_limit_bytes=0)
    video = stored_video(tmp_path)
    with pytest.raises(ProviderUnsupportedInput) as err:  # a format refusal: the router tries the next target
        await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    message = str(err.value)
    assert "could not process" in message and "video/mp4" in message
    assert "The video could not be processed." in message
    assert fake.calls("stream") == []
    assert p.files.cached(upload_key(video, video.media_id)) is None and fake.files == {}  # deleted at Google
    # the FAILED result is remembered instead (tests/test_gemini_video_s20.py): refused again, not uploaded
    with pytest.raises(ProviderUnsupportedInput, match="refused before"):
        await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert len(fake.calls("upload_start")) == 1
    await p.aclose()


async def test_polling_is_bounded_by_the_deadline_and_resumes_later(fake, tmp_path):
    fake.processing_polls = 10_000
    p = make_provider(fake, inline_limit_bytes=0, poll_interval=0.05)
    video = stored_video(tmp_path)
    # 2 s leaves room for the SDK's first import and the upload on a loaded machine
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 2.0)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="PROCESSING"):
        [e async for e in p.generate(ask(Part(text="?"), Part(media=video)), model(p), ctx)]
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4.0
    polls = len(fake.calls("file_get"))
    assert 3 <= polls < 30  # backoff: fewer polls than 2 s / 0.05 s (40) would make without it
    # the upload is kept: the next call only polls on
    fake.processing_polls = 0
    events = await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert text_of(events) == "Hello from Gemini."
    assert len(fake.calls("upload_start")) == 1
    await p.aclose()


async def test_copies_about_to_expire_are_uploaded_again(fake, tmp_path):
    fake.processing_polls = 0
    fake.file_ttl = EXPIRY_MARGIN - timedelta(minutes=1)
    p = make_provider(fake, inline_limit_bytes=0)
    video = stored_video(tmp_path)
    await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert len(fake.calls("upload_start")) == 2
    await p.aclose()


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_a_file_the_api_forgot_is_uploaded_again_within_the_call(fake, tmp_path, streaming):
    fake.processing_polls = 0
    p = make_provider(fake, inline_limit_bytes=0, streaming=streaming)
    video = stored_video(tmp_path)
    await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    fake.files.clear()  # deleted upstream: the API answers 403 "... the File files/... may not exist"
    events = await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert text_of(events) == "Hello from Gemini."
    assert len(fake.calls("upload_start")) == 2
    await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert len(fake.calls("upload_start")) == 2  # the new copy is remembered
    await p.aclose()


async def test_a_refused_key_with_a_remembered_file_is_not_retried(fake, tmp_path):
    fake.processing_polls = 0
    p = make_provider(fake, inline_limit_bytes=0)
    video = stored_video(tmp_path)
    await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    fake.fail_next(403, google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."))
    with pytest.raises(ProviderAuthError, match="unregistered callers"):
        await collect(p, ask(Part(text="?"), Part(media=video)), model(p))
    assert len(fake.calls("upload_start")) == 1
    await p.aclose()


# -- error mapping ------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    body = {"error": {"code": code, "status": status, "message": message}}
    if details:
        body["error"]["details"] = details
    return body


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retry_after"),
    [
        (400, google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), {},
         ProviderBadRequest, None),
        (401, google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), {},
         ProviderAuthError, None),
        (403, google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."), {},
         ProviderAuthError, None),
        (404, google_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"), {},
         ProviderModelNotFound, None),
        (429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."), {"Retry-After": "7"},
         ProviderRateLimited, 7.0),
        (429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]), {},
         ProviderRateLimited, 12.0),
        (500, google_error(500, "INTERNAL", "An internal error has occurred."), {}, ProviderUnavailable, None),
        (503, google_error(503, "UNAVAILABLE", "The model is overloaded."), {}, ProviderUnavailable, None),
    ],
    ids=["400", "401", "403", "404", "429-retry-after", "429-retry-info", "500", "503"],
)
async def test_http_errors_map_like_every_provider(fake, streaming, status, body, headers, error, retry_after):
    p = make_provider(fake, streaming=streaming)
    fake.fail_next(status, body, headers)
    with pytest.raises(error) as caught:
        await collect(p, ask(Part(text="hi")), model(p))
    assert type(caught.value) is error
    assert caught.value.provider == "gemini"
    assert body["error"]["message"] in caught.value.message
    assert KEY not in caught.value.message
    if status in (401, 403):
        assert "check providers.gemini.api_key (the key this section gives)" in caught.value.message
    if retry_after is not None:
        assert caught.value.retry_after == retry_after
    assert len(fake.calls("stream" if streaming else "generate")) == 1  # the SDK did not retry
    await p.aclose()


async def test_invalid_key_answered_400_is_an_auth_error_that_names_the_setting(fake):
    p = GeminiProvider.from_settings({"api_key": "AIza-wrong-key-987654", "base_url": fake.url})
    with pytest.raises(ProviderAuthError) as caught:
        await collect(p, ask(Part(text="hi")), model(p))
    assert "API key not valid" in caught.value.message
    assert "check providers.gemini.api_key (the key this section gives)" in caught.value.message
    assert "AIza-wrong-key-987654" not in caught.value.message
    assert fake.requests[0].headers["x-goog-api-key"] == "AIza-wrong-key-987654"
    await p.aclose()


async def test_errors_during_upload_are_mapped_too(fake, tmp_path):
    p = make_provider(fake, inline_limit_bytes=0)
    fake.fail_next(429, google_error(429, "RESOURCE_EXHAUSTED", "Too many uploads."), {"Retry-After": "3"})
    with pytest.raises(ProviderRateLimited) as caught:
        await collect(p, ask(Part(text="?"), Part(media=stored_video(tmp_path))), model(p))
    assert caught.value.retry_after == 3.0
    assert [FakeGemini._kind(r) for r in fake.requests] == ["upload_start"]
    await p.aclose()


async def test_unreachable_api_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": f"http://127.0.0.1:{port}", "timeout": 5})
    with pytest.raises(ProviderUnavailable, match="could not reach") as caught:
        await collect(p, ask(Part(text="hi")), model(p))
    assert KEY not in caught.value.message
    assert f"127.0.0.1:{port}" in caught.value.message and "SSLContext" not in caught.value.message
    await p.aclose()


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_sdk_timeout_is_unavailable(fake, streaming):
    fake.delay = 5
    p = make_provider(fake, timeout=0.3, streaming=streaming)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await collect(p, ask(Part(text="hi")), model(p))
    assert time.monotonic() - started < 4  # not the fake's 5 s (room for the SDK's import on a loaded machine)
    await p.aclose()


async def test_the_call_deadline_shortens_the_http_timeout(fake):
    fake.delay = 5
    p = make_provider(fake, timeout=30)
    p.client()  # the SDK imported first: on a loaded machine its import alone may outlast the deadline
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 0.4)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        [e async for e in p.generate(ask(Part(text="hi")), model(p), ctx)]
    assert time.monotonic() - started < 4  # not the fake's 5 s, nor the configured 30
    assert fake.calls("stream")[0].headers["x-server-timeout"] == "1"
    await p.aclose()


async def test_one_client_per_provider_closed_on_aclose(fake):
    p = make_provider(fake)
    await collect(p, ask(Part(text="a")), model(p))
    client = p.client()
    await collect(p, ask(Part(text="b")), model(p))
    assert p.client() is client
    await p.aclose()
    assert p._client is None
    await p.aclose()


async def test_a_dropped_connection_is_not_sent_again_by_the_sdk() -> None:
    """Without retry options google-genai sleeps 1-10 s and sends the request again after a dropped
    connection (a request maybe billed twice); the router does fallbacks, so the SDK tries once."""
    accepted = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = GeminiProvider.from_settings({"api_key": KEY, "base_url": f"http://127.0.0.1:{port}", "timeout": 10})
    try:
        with pytest.raises(ProviderUnavailable):
            await collect(provider, ask(Part(text="hi")), model(provider))
        assert len(accepted) == 1
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()


async def test_no_automatic_function_calling_loop_or_its_log_line(provider, fake, caplog) -> None:
    caplog.set_level("INFO")
    events = await collect(provider, ask(Part(text="hi")), model(provider))
    assert text_of(events) and "AFC" not in caplog.text


# -- finish reasons ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "RECITATION", "BLOCKLIST", "SPII",
                                    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE",
                                    "ESCALATION", "MODEL_ARMOR"])
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_an_answer_withheld_whole_is_an_empty_content_filter_answer(fake, reason, streaming):
    """An answer Gemini's filters withheld whole (its last chunk has no content) is an answer, as OpenAI's
    ``content_filter`` and Claude's ``refusal`` are: no text, CONTENT_FILTER, its usage billed."""
    fake.reply_chunks = [""]
    fake.finish_reason = reason
    fake.safety_ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
    p = make_provider(fake, streaming=streaming)
    events = await collect(p, ask(Part(text="hi")), model(p))
    await p.aclose()
    [report] = events
    assert isinstance(report, UsageReport) and report.finish_reason is FinishReason.CONTENT_FILTER
    assert (report.usage.input_tokens, report.usage.output_tokens) == (12, 7)
    assert len(fake.calls("stream" if streaming else "generate")) == 1


async def test_a_stream_stopped_by_the_safety_filter_keeps_the_text_sent(fake):
    """The filter stops a streamed answer after some text (the last chunk has the finishReason, no content):
    the deltas sent stay sent, then the finish is CONTENT_FILTER."""
    fake.reply_chunks = ["Hello", " from", ""]
    fake.finish_reason = "SAFETY"
    p = make_provider(fake)
    events = await collect(p, ask(Part(text="hi")), model(p))
    await p.aclose()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " from"]
    assert isinstance(events[-1], UsageReport) and events[-1].finish_reason is FinishReason.CONTENT_FILTER
    assert (usage_of(events).input_tokens, usage_of(events).output_tokens) == (12, 7)  # the parts add up


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_an_answer_stopped_for_a_limited_account_is_retryable_after_its_billed_usage(fake, streaming):
    """PUP_LIMITED_DISABLED without text: the key's account is limited for policy violations, which says
    nothing of this answer; a PROVIDER_AUTH error, after the billed usage, that the rule's next target takes."""
    fake.reply_chunks = [""]
    fake.finish_reason = "PUP_LIMITED_DISABLED"
    p = make_provider(fake, streaming=streaming)
    events = []
    with pytest.raises(ProviderAuthError, match=r"account is limited .*\(finish reason PUP_LIMITED_DISABLED\)") \
            as caught:
        async for event in p.generate(ask(Part(text="hi")), model(p), CallContext(request_id="t")):
            events.append(event)
    await p.aclose()
    assert caught.value.retryable
    [report] = events
    assert isinstance(report, UsageReport) and report.usage.input_tokens == fake.usage["promptTokenCount"] > 0


@pytest.mark.parametrize(("reason", "finish"), [("CONTINUATION", FinishReason.LENGTH),
                                                ("MAX_TOKENS", FinishReason.LENGTH),
                                                ("LANGUAGE", FinishReason.CONTENT_FILTER),
                                                ("PUP_LIMITED_DISABLED", FinishReason.CONTENT_FILTER),
                                                ("STOP", FinishReason.STOP),
                                                ("MALFORMED_RESPONSE", FinishReason.OTHER)])
async def test_finish_reasons_are_mapped(provider, fake, reason, finish):
    """CONTINUATION ("reached the per-request token limit, but generation is not yet complete") is a cut
    answer, like MAX_TOKENS: the client learns the text is incomplete."""
    fake.finish_reason = reason
    events = await collect(provider, ask(Part(text="hi")), model(provider))
    assert text_of(events) == "Hello from Gemini."
    reports = [e for e in events if isinstance(e, UsageReport)]
    assert [r.finish_reason for r in reports] == [None, finish]  # the prompt's part, then the rest with it
    assert reports[-1] is events[-1]
    assert (usage_of(events).input_tokens, usage_of(events).output_tokens) == (12, 7)


# -- replies a proxy or gateway may give ----------------------------------------------------------


def _sse_http(chunks: list, end: bool = True) -> bytes:
    """A whole chunked SSE response of ``chunks`` (JSON payloads); ``end=False`` leaves its body open."""
    import json

    body = b""
    for chunk in chunks:
        data = f"data: {json.dumps(chunk)}\r\n\r\n".encode()
        body += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + body + (b"0\r\n\r\n" if end else b"")


def _http(body: bytes, content_type: str = "application/json") -> bytes:
    """A whole HTTP 200 response of ``body``, its end the connection's."""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def _candidate(text: str, finish: str | None = None) -> dict:
    cand: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return cand


@pytest.mark.parametrize("late_usage", [False, True], ids=["usage-with-finish", "usage-in-a-later-chunk"])
async def test_a_body_held_open_after_the_finish_reason_still_completes_the_answer(late_usage):
    """A proxy keeps the chunked body open after the chunk with the finishReason: the answer is whole, so
    the call ends soon after it (reading on for at most router.sdk_http.END_OF_BODY_WAIT, 1 s, for a later
    chunk's usage) with its usage report, instead of failing at the read timeout (2 s here)."""
    from tests.fakes.raw import RawServer

    usage = {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17}
    chunks = [{"candidates": [_candidate("Hello")], "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}},
              {"candidates": [_candidate(" world.", "STOP")], **({} if late_usage else {"usageMetadata": usage})}]
    if late_usage:
        chunks.append({"usageMetadata": usage})
    server = RawServer(_sse_http(chunks, end=False))
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 2})
    p.client()
    events: list = []
    try:
        ctx = CallContext(request_id="t", deadline=time.monotonic() + 30)
        async for event in p.generate(ask(Part(text="hi")), model(p), ctx):
            events.append(event)
    finally:
        await p.aclose()
        server.close()
    assert text_of(events) == "Hello world."
    report = events[-1]
    assert isinstance(report, UsageReport) and report.finish_reason is FinishReason.STOP
    assert [(e.usage.input_tokens, e.usage.output_tokens) for e in events if isinstance(e, UsageReport)] == [
        (12, 0), (0, 5)]  # the prompt's part from the first chunk, then the rest
    assert (usage_of(events).input_tokens, usage_of(events).output_tokens) == (12, 5)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize(("body", "content_type"), [
    (b"{}", "application/json"), (b'{"foo": 1}', "application/json"), (b"[]", "application/json"),
    (b'"x"', "application/json"), (b"<html><body>Welcome to the proxy</body></html>", "text/html"),
], ids=["empty-object", "other-object", "list", "string", "html"])
async def test_a_200_that_is_no_answer_is_unavailable(streaming, body, content_type):
    """A gateway's 200 that holds no answer (no candidate with a finishReason) or is not JSON is a failed
    call the router can fall back on, streamed or not: not an empty answer, nor a plugin failure."""
    from tests.fakes.raw import RawServer

    server = RawServer(_http(body, content_type))
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5,
                                      "streaming": streaming})
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(p, ask(Part(text="hi")), model(p))
    finally:
        await p.aclose()
        server.close()
    assert type(caught.value) is ProviderUnavailable and KEY not in caught.value.message
    if content_type == "text/html":  # a page, streamed or not, says so
        assert "answered HTTP 200 with a page of type text/html" in caught.value.message
    elif not streaming:
        assert "no answer" in caught.value.message


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_a_unary_answer_without_a_finish_reason_is_unavailable_but_billed(fake, streaming):
    """Like a stream cut short, a reply whose candidate has no finishReason is a failed call, billed all the
    same: the unary reply its whole usage; the stream, cut before its end, its prompt only, reported from its
    first chunk (plugins/gemini/README.md, "What a cut stream costs")."""
    class Unfinished(FakeGemini):
        def _generate(self, request, reply, *, stream):
            body = {"candidates": [_candidate("Hel")], "usageMetadata": {"promptTokenCount": 9,
                                                                         "candidatesTokenCount": 1}}
            return reply.sse([(None, body)]) if stream else reply.json(body)

    with Unfinished(api_key=KEY) as unfinished:
        p = make_provider(unfinished, streaming=streaming)
        events = []
        with pytest.raises(ProviderUnavailable, match="finishReason"):
            async for event in p.generate(ask(Part(text="hi")), model(p), CallContext(request_id="t")):
                events.append(event)
        await p.aclose()
    [report] = [e for e in events if isinstance(e, UsageReport)]
    assert (report.usage.input_tokens, report.usage.output_tokens) == ((9, 0) if streaming else (9, 1))
    assert report.finish_reason is None


@pytest.mark.parametrize("message", [
    "User location is not supported for the API use.",
    "Gemini API free tier is not available in your country. Please enable billing on your project in Google "
    "AI Studio.",
], ids=["location", "free-tier"])
async def test_a_region_refusal_is_unavailable_so_the_fallbacks_run(fake, message):
    """Gemini refuses every request from a deployment in a region it does not serve (400
    FAILED_PRECONDITION): retryable, so the router tries the other providers, and the message says why."""
    p = make_provider(fake)
    fake.fail_next(400, google_error(400, "FAILED_PRECONDITION", message))
    with pytest.raises(ProviderUnavailable) as caught:
        await collect(p, ask(Part(text="hi")), model(p))
    await p.aclose()
    assert caught.value.retryable and message in caught.value.message
    assert "region" in caught.value.message and "billing" in caught.value.message


async def test_another_failed_precondition_stays_a_bad_request(fake):
    p = make_provider(fake)
    fake.fail_next(400, google_error(400, "FAILED_PRECONDITION", "The File files/x is not in an ACTIVE state."))
    with pytest.raises(ProviderBadRequest) as caught:
        await collect(p, ask(Part(text="hi")), model(p))
    await p.aclose()
    assert type(caught.value) is ProviderBadRequest


async def test_media_in_a_system_message_is_refused_before_sending(provider, fake):
    """Gemini's system instruction takes the system messages' text: media there would be dropped
    silently, so the request is refused (as the Anthropic plugin refuses it), nothing sent."""
    logo = Media(Modality.IMAGE, "image/png", data=png_bytes())
    request = Request(messages=[Message(Role.SYSTEM, [Part(text="Use this logo:"), Part(media=logo)]),
                                Message(Role.USER, [Part(text="Describe the logo")])],
                      options=Options(task=Task.CHAT))
    with pytest.raises(ProviderBadRequest, match=r"messages\[0\]: a system message can hold only text") as caught:
        await collect(provider, request, model(provider))
    assert type(caught.value) is ProviderBadRequest
    assert fake.requests == []


async def test_the_generate_timeout_is_what_is_left_once_the_media_are_uploaded(fake, tmp_path):
    """The media are uploaded and waited for first; the generate call gets the time left of the call
    (x-server-timeout), not the time left before the upload."""
    fake.processing_polls = 1  # PROCESSING, then ACTIVE: 0.4 + 0.6 s of waiting
    p = make_provider(fake, inline_limit_bytes=0, poll_interval=0.4, timeout=30)
    p.client()
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 4)
    events = [e async for e in p.generate(ask(Part(text="?"), Part(media=stored_video(tmp_path))), model(p), ctx)]
    await p.aclose()
    assert text_of(events) == "Hello from Gemini."
    assert int(fake.calls("stream")[0].headers["x-server-timeout"]) <= 3  # 4 s less 1 s of processing
