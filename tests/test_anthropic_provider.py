"""The Anthropic provider called directly, with the real SDK against the fake Messages API."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
from collections.abc import Iterator
from typing import Any

import mmrouter_anthropic
import pytest
from mmrouter_anthropic import AnthropicProvider
from mmrouter_anthropic.convert import LEADING_USER_TURN
from mmrouter_anthropic.settings import AnthropicSettings
from PIL import Image
from reportlab.pdfgen import canvas

import router
from router import (
    Media,
    Message,
    Modality,
    Options,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
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
    ProviderUnavailable,
)
from router.testing import ProviderContract, collect
from tests.fakes.anthropic import API_KEY, FakeAnthropic, media_blocks, sent_key
from tests.fakes.raw import RawServer


# -- media made in the tests -----------------------------------------------------------------
def image_bytes(fmt: str, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format=fmt)
    return buf.getvalue()


def pdf_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    page = canvas.Canvas(buf)
    page.drawString(72, 720, text)
    page.save()
    return buf.getvalue()


def user(*parts: Part) -> Message:
    return Message(Role.USER, list(parts))


def text(value: str) -> Part:
    return Part(text=value)


def media(modality: Modality, mime: str, data: bytes, filename: str = "") -> Part:
    return Part(media=Media(modality, mime, data=data, filename=filename, size=len(data)))


def chat(*messages: Message, **options: object) -> Request:
    return Request(messages=list(messages), options=Options(task=Task.CHAT, **options))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
async def provider(fake: FakeAnthropic):
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10})
    yield prov
    await prov.aclose()


def sonnet(prov: AnthropicProvider) -> router.ModelInfo:
    model = prov.model("claude-sonnet-4-6")
    assert model is not None
    return model


async def run(prov: AnthropicProvider, request: Request, model_name: str = "claude-sonnet-4-6") -> list:
    model = prov.model(model_name)
    assert model is not None
    return await collect(prov, request, model)


def usage_total(events: list) -> router.Usage:
    """The usage of a call's reports, which add up (the prompt's at message_start, the rest at the end)."""
    total = router.Usage()
    for event in events:
        if isinstance(event, UsageReport):
            total.add(event.usage)
    return total


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


class TestAnthropicContract(ProviderContract):
    """The conformance kit, against the fake."""

    @pytest.fixture
    async def provider(self, fake: FakeAnthropic):
        prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10})
        yield prov
        await prov.aclose()


# -- models and configuration ----------------------------------------------------------------
def test_models_declare_inputs_context_and_prices() -> None:
    prov = AnthropicProvider({"api_key": "k"})
    assert prov.models[0].name == "claude-sonnet-4-6"
    expected = {"claude-sonnet-4-6": (3.0, 15.0, 1_000_000, 128_000), "claude-opus-4-5": (5.0, 25.0, 200_000, 64_000),
                "claude-haiku-4-5": (1.0, 5.0, 200_000, 64_000)}
    for name, (price_in, price_out, context, max_output) in expected.items():
        model = prov.model(name)
        assert model is not None, name
        assert model.inputs == {Modality.TEXT, Modality.IMAGE, Modality.DOCUMENT}
        assert not model.can_take({Modality.AUDIO})
        assert (model.context_tokens, model.max_output_tokens) == (context, max_output)
        assert (model.price.input_per_mtok, model.price.output_per_mtok) == (price_in, price_out)
        assert model.default_max_output_tokens > 0


def test_unconfigured_without_key_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    reason = AnthropicProvider({}).unconfigured_reason()
    assert reason is not None and "ANTHROPIC_API_KEY" in reason and "providers.anthropic.api_key" in reason


async def test_key_from_environment_reaches_the_api(monkeypatch: pytest.MonkeyPatch, fake: FakeAnthropic) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    prov = AnthropicProvider({"base_url": fake.url})
    try:
        assert prov.unconfigured_reason() is None
        events = await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert text_of(events) == "Hello from fake Claude."
    assert sent_key(fake.message_calls()[-1]) == API_KEY


async def test_generate_without_key_raises_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    prov = AnthropicProvider({})
    with pytest.raises(ProviderNotConfigured, match="ANTHROPIC_API_KEY"):
        await run(prov, chat(user(text("hi"))))


def test_register_hook_and_entry_point() -> None:
    from importlib.metadata import entry_points

    assert [ep.value for ep in entry_points(group="mmrouter", name="anthropic")] == ["mmrouter_anthropic"]
    registered: list[router.Provider] = []
    mmrouter_anthropic.register_providers(registered.append, {"api_key": "k", "timeout": "5"}, "anthropic")
    mmrouter_anthropic.register_providers(registered.append, {"api_key": "k2"}, "claude-eu")
    assert [p.name for p in registered] == ["anthropic", "claude-eu"]
    assert registered[0].unconfigured_reason() is None


async def test_an_extra_instance_reads_only_its_own_section(monkeypatch: pytest.MonkeyPatch,
                                                            fake: FakeAnthropic) -> None:
    """providers.claude-eu with plugin: anthropic gets nothing of the ANTHROPIC_* environment (the key,
    the token, the base URL, the custom headers the SDK reads itself), and its errors name it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)  # the key the fake accepts: the instance must not send it
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "env-auth-token")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", f"X-Gateway-Key: env-gateway-secret\nAuthorization: Bearer {API_KEY}")
    keyless = AnthropicProvider({}, name="claude-eu")
    try:
        assert (keyless.name, keyless.settings.key) == ("claude-eu", "")
        assert keyless.unconfigured_reason() == "no API key: set providers.claude-eu.api_key"
        with pytest.raises(ProviderNotConfigured) as refused:
            await run(keyless, chat(user(text("hi"))))
        assert refused.value.metadata["provider"] == "claude-eu"
        assert "providers.claude-eu.api_key" in refused.value.message and "ANTHROPIC" not in refused.value.message
        assert str(keyless.client().base_url).rstrip("/") == "https://api.anthropic.com"  # not ANTHROPIC_BASE_URL
    finally:
        await keyless.aclose()

    eu = AnthropicProvider({"api_key": "sk-ant-eu-0123456789", "base_url": fake.url}, name="claude-eu")
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await run(eu, chat(user(text("hi"))))
    finally:
        await eu.aclose()
    assert (caught.value.provider, caught.value.metadata["provider"]) == ("claude-eu", "claude-eu")
    assert "providers.claude-eu.api_key" in caught.value.message and "ANTHROPIC_API_KEY" not in caught.value.message
    [call] = fake.message_calls()
    assert sent_key(call) == "sk-ant-eu-0123456789"  # its own key, not the environment's
    assert "x-gateway-key" not in call.headers

    own, own_elsewhere = AnthropicProvider({"base_url": fake.url}), AnthropicProvider({})
    try:  # the plugin's own provider still reads the environment
        assert own.settings.key == API_KEY
        assert str(own_elsewhere.client().base_url).rstrip("/") == "http://127.0.0.1:9"
        assert text_of(await run(own, chat(user(text("hi"))))) == "Hello from fake Claude."
    finally:
        await own.aclose()
        await own_elsewhere.aclose()
    assert fake.message_calls()[-1].headers["x-gateway-key"] == "env-gateway-secret"


async def test_base_url_with_v1_suffix_is_accepted(fake: FakeAnthropic) -> None:
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url + "/v1/"})
    try:
        events = await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert text_of(events) == "Hello from fake Claude."
    assert fake.message_calls()[-1].path == "/v1/messages"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/?code=AZQUERYSECRET", "http://127.0.0.1:9/#AZQUERYSECRET"])
def test_a_base_url_with_a_query_or_fragment_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch,
                                                                      url: str) -> None:
    """The SDK appends /v1/messages after the query (``/?code=.../v1/messages``, logged whole at INFO by
    httpx): refused as the OpenAI plugin refuses it, naming the key, never quoting the query."""
    with pytest.raises(ConfigError, match=r"providers\.claude-eu\.base_url: .*cannot send query parameters") as c:
        AnthropicProvider({"api_key": "k", "base_url": url}, name="claude-eu")
    assert "QUERYSECRET" not in str(c.value)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)  # read by the SDK for the plugin's own provider
    with pytest.raises(ConfigError, match=r"ANTHROPIC_BASE_URL \(read for providers\.anthropic\.base_url\): "
                                          r".*cannot send query parameters") as c:
        AnthropicProvider({"api_key": "k"})
    assert "QUERYSECRET" not in str(c.value)
    # not read when a base_url is given, nor by an extra instance
    assert AnthropicProvider({"api_key": "k", "base_url": "http://127.0.0.1:9/v1"}).settings.base_url == \
        "http://127.0.0.1:9"
    assert AnthropicProvider({"api_key": "k"}, name="claude-eu").settings.client_base_url == "https://api.anthropic.com"


async def test_one_client_reused_and_closed(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    await run(provider, chat(user(text("one"))))
    client = provider.client()
    await run(provider, chat(user(text("two"))))
    assert provider.client() is client
    assert len(fake.message_calls()) == 2
    await provider.aclose()
    assert client.is_closed()


# -- streaming, usage, max_tokens ------------------------------------------------------------
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_streams_deltas_then_usage(fake: FakeAnthropic, transport: str) -> None:
    provider = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10, "http_client": transport})
    fake.chunks = ["Bon", "jour", "!"]
    fake.input_tokens, fake.output_tokens = 123, 45
    try:
        events = await run(provider, chat(user(text("Say hello in French."))))
    finally:
        await provider.aclose()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Bon", "jour", "!"]
    assert isinstance(events[-1], UsageReport) and isinstance(events[0], UsageReport)
    # the prompt's usage as message_start reports it (billed if the call is cancelled then), the rest at the end
    assert [(e.usage.input_tokens, e.usage.output_tokens) for e in events if isinstance(e, UsageReport)] == [
        (123, 1), (0, 44)]
    usage = usage_total(events)
    assert (usage.input_tokens, usage.output_tokens) == (123, 45)
    assert usage.cost_usd == pytest.approx(sonnet(provider).price.cost(usage))  # each part priced as the whole
    call = fake.message_calls()[-1]
    assert sent_key(call) == API_KEY and call.headers["anthropic-version"]
    body = call.json()
    assert body["model"] == "claude-sonnet-4-6" and body["stream"] is True
    assert body["max_tokens"] == sonnet(provider).default_max_output_tokens == 8192
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello in French."}]}]
    assert "system" not in body and "temperature" not in body


async def test_max_output_tokens_overrides_and_is_capped(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    await run(provider, chat(user(text("short")), max_output_tokens=256))
    assert fake.last_body()["max_tokens"] == 256
    await run(provider, chat(user(text("long")), max_output_tokens=1_000_000))
    assert fake.last_body()["max_tokens"] == 128_000  # claude-sonnet-4-6 writes up to 128K
    await run(provider, chat(user(text("long")), max_output_tokens=1_000_000), "claude-haiku-4-5")
    assert fake.last_body()["max_tokens"] == 64_000
    await run(provider, chat(user(text("default"))), "claude-haiku-4-5")
    assert fake.last_body()["max_tokens"] == 8192


async def test_temperature_is_not_sent(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    # API version 2026-10-21 (anthropic SDK 2.x) refuses sampling parameters; the fake does too.
    events = await run(provider, chat(user(text("a")), temperature=0.25))
    assert text_of(events) == "Hello from fake Claude."
    assert "temperature" not in fake.last_body()



class CachingAnthropic(FakeAnthropic):
    """The fake behind a proxy that turns prompt caching on: 10,000 prompt tokens read from the cache,
    1,500 written to a 5-minute entry and 500 to a one-hour one (``input_tokens`` leaves them out).
    With ``cumulative_delta``, message_delta repeats the input counts, as the API does."""

    cumulative_delta = False

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {**super()._usage(output_tokens), "cache_read_input_tokens": 10_000, "cache_creation_input_tokens": 2_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1_500, "ephemeral_1h_input_tokens": 500}}

    def _events(self, model: str) -> list[tuple[str, Any]]:
        events = super()._events(model)
        if self.cumulative_delta:
            for name, data in events:
                if name == "message_delta":
                    data["usage"] = {key: value for key, value in self._usage(self.output_tokens).items()
                                     if key != "cache_creation"}
        return events


@pytest.mark.parametrize("cumulative_delta", [False, True])
def test_prompt_cache_reads_and_writes_are_counted_once_and_priced(start_daemon, cumulative_delta: bool) -> None:
    """Cache reads and writes are not in the API's input_tokens: they are added to it (once, whatever
    message_delta repeats), reads priced at 0.1x the input price, writes at 1.25x (5 minutes) or 2x (1 hour)."""
    from mmrouter.v1 import router_pb2 as pb

    with CachingAnthropic() as upstream:
        upstream.cumulative_delta = cumulative_delta
        daemon = start_daemon(f"""
providers:
  anthropic: {{api_key: "{API_KEY}", base_url: "{upstream.url}", timeout: 10}}
default: anthropic/claude-sonnet-4-6
""")
        request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Go on.")])])
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer

    usage = answer.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (31 + 2_000 + 10_000, 10_000, 9)
    reads, writes_5m, writes_1h = 10_000 * 0.30, 1_500 * 3.0 * 1.25, 500 * 3.0 * 2
    assert usage.cost_usd == pytest.approx((31 * 3.0 + reads + writes_5m + writes_1h + 9 * 15.0) / 1e6)


# -- media -----------------------------------------------------------------------------------
async def test_images_of_every_type_go_as_base64_with_media_type(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    images = {
        "image/png": image_bytes("PNG"),
        "image/jpeg": image_bytes("JPEG"),
        "image/gif": image_bytes("GIF"),
        "image/webp": image_bytes("WEBP"),
    }
    parts = [media(Modality.IMAGE, mime, data) for mime, data in images.items()]
    events = await run(provider, chat(user(text("Compare these."), *parts)))
    assert text_of(events) == "Hello from fake Claude."
    got = media_blocks(fake.last_body())
    assert [(b.type, b.source_type, b.media_type) for b in got] == [
        ("image", "base64", mime) for mime in images
    ]
    assert [b.data for b in got] == list(images.values())
    content = fake.last_body()["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Compare these."}


async def test_jpg_alias_is_sent_as_jpeg(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    data = image_bytes("JPEG")
    await run(provider, chat(user(media(Modality.IMAGE, "image/jpg", data), text("What colour?"))))
    (block,) = media_blocks(fake.last_body())
    assert (block.media_type, block.data) == ("image/jpeg", data)


async def test_several_pdfs_go_as_document_blocks_bytes_intact(
    provider: AnthropicProvider, fake: FakeAnthropic, tmp_path
) -> None:
    first, second = pdf_bytes("Invoice 1 total 10 EUR"), pdf_bytes("Invoice 2 total 20 EUR")
    stored = tmp_path / "second.pdf"
    stored.write_bytes(second)
    uploaded = Media(Modality.DOCUMENT, "application/pdf", path=stored, media_id="ab" * 32, size=len(second))
    request = chat(user(
        media(Modality.DOCUMENT, "application/pdf", first, filename="invoice-1.pdf"),
        Part(media=uploaded),
        text("Sum the totals."),
    ))
    await run(provider, request)
    got = media_blocks(fake.last_body())
    assert [(b.type, b.source_type, b.media_type, b.title) for b in got] == [
        ("document", "base64", "application/pdf", "invoice-1.pdf"),
        ("document", "base64", "application/pdf", None),
    ]
    assert got[0].data == first and got[1].data == second


async def test_plain_text_document_and_url_image(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    notes = "Réunion notes: ship on Friday.\n".encode()
    url_image = Part(media=Media(Modality.IMAGE, "image/png", url="https://example.com/cat.png"))
    await run(provider, chat(user(media(Modality.DOCUMENT, "text/plain", notes, "notes.txt"), url_image,
                                  text("Summarise."))))
    content = fake.last_body()["messages"][0]["content"]
    assert content[0] == {"type": "document", "title": "notes.txt",
                          "source": {"type": "text", "media_type": "text/plain", "data": notes.decode()}}
    assert content[1] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}


@pytest.mark.parametrize("mime", ["text/markdown", "text/csv; charset=utf-8", "Text/Plain"])
async def test_any_text_document_goes_as_a_plain_text_document(
    provider: AnthropicProvider, fake: FakeAnthropic, mime: str
) -> None:
    """The API's text source takes only text/plain; Markdown or CSV is text all the same."""
    notes = "| a | b |\n|---|---|\n| é | 2 |\n".encode()
    await run(provider, chat(user(media(Modality.DOCUMENT, mime, notes, "table"), text("Summarise."))))
    content = fake.last_body()["messages"][0]["content"]
    assert content[0] == {"type": "document", "title": "table",
                          "source": {"type": "text", "media_type": "text/plain", "data": notes.decode()}}


async def test_png_aliases_are_sent_as_png(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    data = image_bytes("PNG")
    await run(provider, chat(user(media(Modality.IMAGE, "image/x-png", data), text("What colour?"))))
    (block,) = media_blocks(fake.last_body())
    assert (block.media_type, block.data) == ("image/png", data)


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (media(Modality.IMAGE, "image/bmp", b"BM0000"), "png, jpeg, gif or webp"),
        (media(Modality.AUDIO, "audio/wav", b"RIFF0000WAVE"), "not audio"),
        (media(Modality.DOCUMENT, "application/msword", b"\xd0\xcf"), "PDF or text documents"),
        (Part(media=Media(Modality.DOCUMENT, "text/plain", url="https://example.com/a.txt")), "not by URL"),
    ],
)
async def test_unsupported_media_refused_before_calling(
    provider: AnthropicProvider, fake: FakeAnthropic, part: Part, match: str
) -> None:
    with pytest.raises(ProviderBadRequest, match=match) as info:
        await run(provider, chat(user(text("look"), part)))
    assert info.value.code.name == "INVALID_ARGUMENT"
    assert fake.message_calls() == []


# -- conversations ---------------------------------------------------------------------------
async def test_system_prompts_and_multi_turn_history(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    png = image_bytes("PNG")
    request = chat(
        Message(Role.SYSTEM, [text("You are terse.")]),
        Message(Role.ASSISTANT, [text("Hi! How can I help?")]),
        user(text("Look at this:"), media(Modality.IMAGE, "image/png", png)),
        user(text("   "), text("What is it?")),
        Message(Role.SYSTEM, [text("Answer in English.")]),
        Message(Role.ASSISTANT, [text("A red square.")]),
        Message(Role.ASSISTANT, [text("Anything else?")]),
        user(text("How big is it?")),
    )
    await run(provider, request)
    body = fake.last_body()
    assert body["system"] == "You are terse.\n\nAnswer in English."
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": LEADING_USER_TURN}]
    merged_user = body["messages"][2]["content"]
    assert [b["type"] for b in merged_user] == ["text", "image", "text"]
    assert merged_user[2]["text"] == "What is it?"
    assert [b["text"] for b in body["messages"][3]["content"]] == ["A red square.", "Anything else?"]
    assert media_blocks(body)[0].data == png


async def test_final_assistant_prefill_is_trimmed(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    """A Claude 4.5 model still takes prefill: sent as the final assistant turn, trimmed."""
    await run(provider, chat(user(text("Name a colour.")), Message(Role.ASSISTANT, [text("The colour is ")])),
              "claude-haiku-4-5")
    body = fake.last_body()
    assert body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The colour is"}]}


async def test_request_without_user_content_is_refused(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    with pytest.raises(ProviderBadRequest, match="no user content"):
        await run(provider, chat(Message(Role.SYSTEM, [text("Be nice.")]), user(text(" "))))
    assert fake.message_calls() == []


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "err_type", "expected", "grpc_code"),
    [
        (400, "invalid_request_error", ProviderBadRequest, "INVALID_ARGUMENT"),
        (401, "authentication_error", ProviderAuthError, "FAILED_PRECONDITION"),
        (403, "permission_error", ProviderAuthError, "FAILED_PRECONDITION"),
        (404, "not_found_error", ProviderModelNotFound, "NOT_FOUND"),
        (413, "request_too_large", ProviderInputTooLarge, "INVALID_ARGUMENT"),
        (429, "rate_limit_error", ProviderRateLimited, "RESOURCE_EXHAUSTED"),
        (500, "api_error", ProviderUnavailable, "UNAVAILABLE"),
        (503, "api_error", ProviderUnavailable, "UNAVAILABLE"),
        (529, "overloaded_error", ProviderUnavailable, "UNAVAILABLE"),
    ],
)
async def test_http_errors_map_to_provider_errors(
    provider: AnthropicProvider, fake: FakeAnthropic, status: int, err_type: str, expected: type, grpc_code: str
) -> None:
    fake.fail_next_api(status, err_type, f"upstream says {err_type}")
    with pytest.raises(expected) as info:
        await run(provider, chat(user(text("hi"))))
    err = info.value
    assert type(err) is expected and err.code.name == grpc_code
    assert err.provider == "anthropic"
    assert API_KEY not in str(err) and API_KEY not in err.message
    assert f"upstream says {err_type}" in err.message
    if status in (401, 403):
        assert "check providers.anthropic.api_key (the key this section gives)" in err.message
    assert len(fake.message_calls()) == 1  # max_retries 0: no SDK retries


@pytest.mark.parametrize(("message", "expected"), [
    ("prompt is too long: 215000 tokens > 200000 maximum", ProviderInputTooLarge),
    ("A maximum of 100 PDF pages may be provided.", ProviderInputTooLarge),
    ("input length and `max_tokens` exceed context limit: 197626 + 8192 > 200000, decrease input length or "
     "`max_tokens` and try again", ProviderInputTooLarge),
    ("messages.0.content.1.image.source.base64: image exceeds 5 MB maximum: 7381232 bytes > 5242880 bytes",
     ProviderInputTooLarge),
    ("messages: roles must alternate between \"user\" and \"assistant\"", ProviderBadRequest),
])
async def test_a_400_refusing_the_size_lets_the_router_fall_back(
    provider: AnthropicProvider, fake: FakeAnthropic, message: str, expected: type
) -> None:
    """Too long, too many pages, too big an image: another model may take it. A malformed request
    stays a bad request that no fallback is tried for."""
    fake.fail_next_api(400, "invalid_request_error", message)
    with pytest.raises(expected) as info:
        await run(provider, chat(user(text("hi"))))
    assert type(info.value) is expected and info.value.code.name == "INVALID_ARGUMENT"
    assert info.value.retryable is (expected is ProviderInputTooLarge)


async def test_rate_limit_carries_retry_after(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    fake.fail_next_api(429, "rate_limit_error", "slow down", headers={"retry-after": "7"})
    with pytest.raises(ProviderRateLimited) as info:
        await run(provider, chat(user(text("hi"))))
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("header", ["-5", "-inf", "soon"])
async def test_a_retry_after_that_is_no_delay_gives_no_retry_delay(provider: AnthropicProvider, fake: FakeAnthropic,
                                                                   header: str) -> None:
    """A negative delta became a delay of 0 s: a client honouring RetryInfo retried at once."""
    fake.fail_next_api(429, "rate_limit_error", "slow down", headers={"retry-after": header})
    with pytest.raises(ProviderRateLimited) as info:
        await run(provider, chat(user(text("hi"))))
    assert info.value.retry_after is None


async def test_wrong_key_is_rejected_by_the_fake_and_never_leaked(fake: FakeAnthropic) -> None:
    secret = "sk-ant-WRONG-secret-key-xyz"
    prov = AnthropicProvider({"api_key": secret, "base_url": fake.url})
    try:
        with pytest.raises(ProviderAuthError) as info:
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert secret not in str(info.value)
    assert "invalid x-api-key" in info.value.message
    assert "check providers.anthropic.api_key (the key this section gives)" in info.value.message
    assert sent_key(fake.message_calls()[-1]) == secret


@pytest.mark.parametrize(
    ("err_type", "expected"),
    [("overloaded_error", ProviderUnavailable), ("rate_limit_error", ProviderRateLimited),
     ("api_error", ProviderUnavailable)],
)
async def test_error_event_mid_stream_maps_by_type(
    provider: AnthropicProvider, fake: FakeAnthropic, err_type: str, expected: type
) -> None:
    fake.stream_error = (err_type, "mid-stream trouble")
    received: list = []
    with pytest.raises(expected) as info:
        model = sonnet(provider)
        ctx = router.CallContext(request_id="t")
        async for event in provider.generate(chat(user(text("hi"))), model, ctx):
            received.append(event)
    assert type(info.value) is expected
    assert [e.text for e in received if isinstance(e, TextDelta)] == ["Hello"]
    assert usage_total(received).input_tokens  # the prompt was billed
    assert "mid-stream trouble" in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_timeout_maps_to_unavailable(fake: FakeAnthropic, transport: str) -> None:
    fake.delay = 1.5
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 0.3, "http_client": transport})
    try:
        with pytest.raises(ProviderUnavailable, match="did not answer in time"):
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()


async def test_call_deadline_shortens_the_timeout(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    import time

    fake.delay = 5
    ctx = router.CallContext(request_id="t", deadline=time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        async for _ in provider.generate(chat(user(text("hi"))), sonnet(provider), ctx):
            pass
    assert time.monotonic() - started < 4  # not the fake's 5 s (room for the SDK's import on a loaded machine)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_connection_refused_maps_to_unavailable(transport: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{port}", "http_client": transport})
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach") as info:
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert API_KEY not in str(info.value)
    assert f"cannot reach the Anthropic API at http://127.0.0.1:{port} (connection failed)" in info.value.message


async def test_a_refused_connection_names_the_server_without_its_credentials() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://user:pw-secret@127.0.0.1:{port}"})
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach") as info:
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert f"at http://127.0.0.1:{port} " in info.value.message and "pw-secret" not in info.value.message


def test_the_aiohttp_transport_is_the_default_but_a_url_with_credentials_uses_httpx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp refuses credentials in the URL beside an Authorization header, so that URL gets httpx;
    for the plugin's own provider without a base_url, the SDK's ANTHROPIC_BASE_URL is the URL."""
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert AnthropicSettings.load("anthropic", {"api_key": API_KEY}).transport == "aiohttp"
    assert AnthropicSettings.load("anthropic", {"api_key": API_KEY, "http_client": "HTTPX"}).transport == "httpx"
    with_password = {"api_key": API_KEY, "base_url": "http://svc:pw@127.0.0.1:9"}
    assert AnthropicSettings.load("anthropic", with_password).transport == "httpx"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://svc:pw@127.0.0.1:9")
    assert AnthropicSettings.load("anthropic", {"api_key": API_KEY}).transport == "httpx"
    assert AnthropicSettings.load("claude-eu", {"api_key": API_KEY}, environment=False).transport == "aiohttp"
    with pytest.raises(ConfigError, match=r"providers\.anthropic\.http_client"):
        AnthropicSettings.load("anthropic", {"api_key": API_KEY, "http_client": "curl"})


LONG_HEADER = b"HTTP/1.1 200 OK\r\nset-cookie: " + b"a" * 9000 + b"\r\ncontent-length: 0\r\n\r\n"  # over aiohttp's 8190


@pytest.mark.parametrize("transport", ["aiohttp", "httpx", None], ids=["aiohttp", "httpx", "default"])
@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.6\r\n", LONG_HEADER], ids=["not-http", "long-header"])
async def test_a_malformed_response_is_unavailable_not_a_plugin_failure(transport: str | None, reply: bytes) -> None:
    """The SDK's aiohttp transport lets aiohttp's own response errors through unmapped; the plugin makes
    them UNAVAILABLE (a fallback answers) instead of a plugin failure. By default the transport is
    aiohttp, whose header limit the long header is over."""
    server = RawServer(reply)
    settings = {"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5}
    prov = AnthropicProvider(settings | ({"http_client": transport} if transport else {}))
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
        server.close()
    assert API_KEY not in info.value.message
    if transport != "httpx":  # not "cannot reach": the server answered
        assert "bad HTTP response from the Anthropic API" in info.value.message
        assert ("http_client: httpx accepts longer headers" in info.value.message) == (reply == LONG_HEADER)


def sse_reply(body: bytes) -> bytes:
    """A whole HTTP response of ``body`` as a server-sent event stream."""
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"type":"content_block_delta","delta":{"type":"text_delta","text":"\xff\xfe"}}'],
                         ids=["not-json", "not-an-object", "not-utf8"])
async def test_a_stream_event_that_is_not_a_json_object_is_unavailable(data: bytes) -> None:
    """The plugin decodes the events itself: a broken one is a bad answer (a fallback may answer), not
    the plugin's failure."""
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,'
             b'"output_tokens":1}}}\n\n')
    server = RawServer(sse_reply(start + b"event: content_block_delta\ndata: " + data + b"\n\n"))
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5})
    try:
        with pytest.raises(ProviderUnavailable, match="not a JSON object"):
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
        server.close()


@pytest.mark.parametrize(("err_type", "expected"), [("overloaded_error", ProviderUnavailable),
                                                     ("request_too_large", ProviderInputTooLarge)])
async def test_an_error_event_is_mapped_by_its_error_type_even_without_a_type_field(err_type: str, expected) -> None:
    """A proxy may send ``event: error`` with only the ``error`` object: the SSE event name makes it the
    error it is (a size refusal lets the router try a model with room), not a stream cut short."""
    body = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7}}}\n\n'
            b'event: error\ndata: {"error":{"type":"' + err_type.encode() + b'","message":"busy or big"}}\n\n')
    server = RawServer(sse_reply(body))
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5})
    try:
        with pytest.raises(ProviderUnavailable if expected is ProviderUnavailable else ProviderInputTooLarge) as info:
            await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
        server.close()
    assert type(info.value) is expected
    assert "busy or big" in info.value.message


async def test_sdk_retries_are_not_cut_by_the_whole_call_bound(fake: FakeAnthropic) -> None:
    """With max_retries the SDK waits out a Retry-After and asks again: that is no timeout."""
    fake.fail_next_api(529, "overloaded_error", "busy", headers={"retry-after": "1.2"})
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 1, "max_retries": 1})
    try:
        events = await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
    assert text_of(events) == "".join(fake.chunks)
    assert len(fake.message_calls()) == 2


async def test_events_without_text_or_of_unknown_types_are_skipped() -> None:
    """Pings, thinking deltas and event types newer than the plugin carry no answer text; the stop reason
    and the usage still count."""
    body = b"".join(b"event: x\ndata: " + json_event + b"\n\n" for json_event in [
        b'{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}',
        b'{"type":"ping"}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}',
        b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}',
        b'{"type":"some_new_event","delta":{"text":"not text"}}',
        b'{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}',
        b'{"type":"message_stop"}',
    ])
    server = RawServer(sse_reply(body))
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5})
    try:
        events = await run(prov, chat(user(text("hi"))))
    finally:
        await prov.aclose()
        server.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi"]
    report = events[-1]
    assert isinstance(report, UsageReport)
    assert (usage_total(events).input_tokens, usage_total(events).output_tokens) == (7, 9)
    assert report.finish_reason is router.FinishReason.LENGTH


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_an_upload_to_a_server_that_stopped_reading_times_out(transport: str) -> None:
    """aiohttp has no write timeout (its read timeout starts once the body is sent): a large request to
    a server that stopped reading would wait for TCP to give up, not for the configured timeout."""
    server = RawServer(None)
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 1,
                              "http_client": transport})
    try:  # 20 MB of PDF, 27 MB as base64: below the API's 32 MB, more than loopback buffers hold
        with pytest.raises(ProviderUnavailable, match="did not answer in time"):
            await run(prov, chat(user(text("Summarise it"), pdf_part(1, 20 * MB))))
    finally:
        await prov.aclose()
        server.close()


# -- the API's size limits, refused before calling ---------------------------------------------
MB = 1024 * 1024


def sized_image(width: int, height: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def pdf_part(pages: int | None, padding: int = 0) -> Part:
    """A small real PDF that the router measured at ``pages`` pages, ``padding`` bytes longer."""
    data = pdf_bytes("Annual report") + b"\0" * padding
    return Part(media=Media(Modality.DOCUMENT, "application/pdf", data=data, size=len(data), pages=pages))


def undecodable(data: bytes) -> bytes:
    """An image cut in half: its header still gives its size, but it cannot be decoded, so it cannot be
    scaled down (an image over the limits that can be is sent scaled: test_anthropic_image_fit_s21.py)."""
    return data[:len(data) // 2]


def big_png() -> Part:
    """A PNG of 4 MB: 5.3 MB as base64, over the 5 MB the API counts on the base64 text."""
    return media(Modality.IMAGE, "image/png", undecodable(sized_image(8, 8)) + b"\0" * (4 * MB))


OVER_THE_LIMITS = {
    "image over 5 MB of base64": ([big_png()], r"is 5,592,\d{3} bytes as base64, over Claude's limit of 5 MB"),
    "image wider than 8000 px": ([media(Modality.IMAGE, "image/png", undecodable(sized_image(8001, 2)))],
                                 "is 8001x2 px, over Claude's limit of 8000x8000 px"),
    "jpeg taller than 8000 px": ([media(Modality.IMAGE, "image/jpeg", undecodable(sized_image(2, 8100, "JPEG")))],
                                 "is 2x8100 px, over"),
    "webp wider than 8000 px": ([media(Modality.IMAGE, "image/webp", undecodable(sized_image(8200, 2, "WEBP")))],
                                "is 8200x2 px, over"),
    "more than 20 images, one over 2000 px": (
        [*(media(Modality.IMAGE, "image/gif", sized_image(4, 4, "GIF")) for _ in range(20)),
         media(Modality.IMAGE, "image/png", undecodable(sized_image(2001, 3)))],
        r"parts\[20\]: the image is 2001x3 px, over Claude's limit of 2000x2000 px in a request of more than "
        r"20 images \(it holds 21\)"),
    "101 images": ([media(Modality.IMAGE, "image/gif", sized_image(2, 2, "GIF")) for _ in range(101)],
                   "holds 101 images, over Claude's limit of 100 per request"),
    "120 PDF pages": ([pdf_part(120)], "holds 120 PDF pages, over Claude's limit of 100 pages per request"),
    "two PDFs of 60 pages": ([pdf_part(60), pdf_part(60)], "holds 120 PDF pages"),
    "request over 32 MB": ([pdf_part(1, padding=25 * MB)],
                           r"at least 34,\d{3},\d{3} bytes, over Claude's limit of 32 MB \(33,554,432 bytes\)"),
}


@pytest.mark.parametrize("case", OVER_THE_LIMITS)
async def test_content_over_the_api_limits_is_refused_before_calling(
    provider: AnthropicProvider, fake: FakeAnthropic, case: str
) -> None:
    """Over a documented limit: INPUT_TOO_LARGE (the router tries the fallbacks), naming the limit and
    the size, and nothing is sent."""
    parts, match = OVER_THE_LIMITS[case]
    with pytest.raises(ProviderInputTooLarge, match=match) as info:  # a 200k-token model: 100 pages and images
        await run(provider, chat(user(*parts, text("Describe."))), "claude-haiku-4-5")
    assert info.value.retryable and info.value.reason == "INPUT_TOO_LARGE"
    assert "refused before sending" in str(info.value)
    assert fake.requests == []


async def test_content_at_the_limits_is_sent(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    """Exactly 8000 px, 20 images (one of 8000 px), 100 pages, a PDF of unknown pages, an image by URL: all sent."""
    parts = [
        media(Modality.IMAGE, "image/png", sized_image(8000, 2)),
        *(media(Modality.IMAGE, "image/png", sized_image(2000, 1)) for _ in range(18)),
        Part(media=Media(Modality.IMAGE, "image/png", url="https://example.com/huge.png")),
        pdf_part(100),
        pdf_part(None),
    ]
    await run(provider, chat(user(*parts, text("Describe."))))
    assert len(media_blocks(fake.last_body())) == 22


async def test_a_model_with_a_larger_context_takes_600_pages() -> None:
    """The page and image counts are 600 for models whose context window is over 200k tokens."""
    from mmrouter_anthropic.convert import prepare

    request = chat(user(pdf_part(120), text("Summarise.")))
    large = dataclasses.replace(AnthropicProvider({"api_key": "k"}).models[0], context_tokens=1_000_000)
    prepared = await prepare(request, "anthropic", large)
    assert prepared.messages[0]["content"][0]["type"] == "document"
    with pytest.raises(ProviderInputTooLarge, match="limit of 600 pages"):
        await prepare(chat(user(pdf_part(601), text("Summarise."))), "anthropic", large)


def over_the_limit_body(case: str) -> list[dict]:
    """Content blocks the real API refuses for their size, built without the plugin's checks."""
    import base64

    def image(data: bytes) -> dict:
        return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": base64.b64encode(data).decode()}}

    def pdf(data: bytes) -> dict:
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                               "data": base64.b64encode(data).decode()}}

    blocks = {
        "image over 5 MB": [image(sized_image(8, 8) + b"\0" * (4 * MB))],
        "image over 8000 px": [image(sized_image(8001, 2))],
        "21 images, one over 2000 px": [*(image(sized_image(2, 2)) for _ in range(20)), image(sized_image(2001, 2))],
        "101 pages": [pdf(many_pages(101))],
        "body over 32 MB": [pdf(pdf_bytes("big") + b"\0" * (25 * MB))],
    }[case]
    return [*blocks, {"type": "text", "text": "Describe."}]


def many_pages(count: int) -> bytes:
    buf = io.BytesIO()
    doc = canvas.Canvas(buf)
    for n in range(count):
        doc.drawString(72, 720, f"page {n + 1}")
        doc.showPage()
    doc.save()
    return buf.getvalue()


@pytest.mark.parametrize("case", ["image over 5 MB", "image over 8000 px", "21 images, one over 2000 px",
                                  "101 pages", "body over 32 MB"])
async def test_the_fake_refuses_what_the_api_refuses_and_it_maps_to_input_too_large(
    fake: FakeAnthropic, case: str
) -> None:
    """The fake refuses like the API (status, error type, details), and what the SDK raises for it maps to
    INPUT_TOO_LARGE: a refusal the plugin's checks miss still lets the router fall back."""
    from anthropic import AsyncAnthropic
    from mmrouter_anthropic.errors import map_sdk_error

    client = AsyncAnthropic(api_key=API_KEY, base_url=fake.url, max_retries=0)
    try:
        with pytest.raises(Exception) as raised:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                         messages=[{"role": "user", "content": over_the_limit_body(case)}])
    finally:
        await client.close()
    assert raised.value.status_code in (400, 413)
    assert isinstance(map_sdk_error(raised.value, "anthropic", API_KEY), ProviderInputTooLarge)
    if case.endswith("px"):
        assert raised.value.error_code == "image_dimensions_too_large"


def test_a_configured_model_replacing_a_built_in_one_keeps_its_limits() -> None:
    """Repricing claude-opus-4-5 keeps its output limit (64,000) and context (200k), not those of the
    plugin's typical model (128,000, 1M): max_tokens over the model's limit is refused by the API."""
    provider = AnthropicProvider({"api_key": "k", "models": [
        {"name": "claude-opus-4-5", "price": {"input_per_mtok": 4, "output_per_mtok": 20}}]})
    opus = provider.model("claude-opus-4-5")
    assert opus is not None and (opus.max_output_tokens, opus.context_tokens) == (64_000, 200_000)
    assert (opus.price.input_per_mtok, opus.price.output_per_mtok) == (4.0, 20.0)
    assert [m.name for m in provider.models].count("claude-opus-4-5") == 1


# -- prefill (a final assistant turn), which Claude 4.6 and later refuse with 400 ------------------
PREFILL_NOTE = "(Your answer so far follows. Continue it from exactly where it stops, without repeating it.)"


async def test_prefill_to_a_model_without_prefill_becomes_user_text(provider: AnthropicProvider,
                                                                    fake: FakeAnthropic) -> None:
    """claude-sonnet-4-6 (the default target) answers 400 to a final assistant turn: the partial answer
    goes into the last user turn instead, asking Claude to continue it, and the call succeeds."""
    events = await run(provider, chat(user(text("Name a colour.")),
                                      Message(Role.ASSISTANT, [text("The colour is ")])))
    assert text_of(events) == "Hello from fake Claude."
    messages = fake.last_body()["messages"]
    assert messages == [{"role": "user", "content": [
        {"type": "text", "text": "Name a colour."},
        {"type": "text", "text": f"{PREFILL_NOTE}\n\nThe colour is"}]}]


async def test_prefill_after_a_longer_conversation_keeps_the_turns_before_it(provider: AnthropicProvider,
                                                                             fake: FakeAnthropic) -> None:
    await run(provider, chat(user(text("Hi.")), Message(Role.ASSISTANT, [text("Hello!")]), user(text("A poem?")),
                             Message(Role.ASSISTANT, [text("Roses are red,")]),
                             Message(Role.ASSISTANT, [text("violets")])))
    messages = fake.last_body()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[2]["content"][-1]["text"] == f"{PREFILL_NOTE}\n\nRoses are red,\n\nviolets"


async def test_a_conversation_of_only_the_assistant_is_one_user_turn(provider: AnthropicProvider,
                                                                     fake: FakeAnthropic) -> None:
    await run(provider, chat(Message(Role.ASSISTANT, [text("Once upon a time")])))
    assert fake.last_body()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": f"{PREFILL_NOTE}\n\nOnce upon a time"}]}]


async def test_prefill_goes_to_a_dated_4_5_snapshot_but_not_to_a_configured_newer_model(fake: FakeAnthropic) -> None:
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10, "models": [
        {"name": "claude-haiku-4-5-20251001", "price": {"input_per_mtok": 1, "output_per_mtok": 5}},
        {"name": "claude-opus-4-7", "price": {"input_per_mtok": 5, "output_per_mtok": 25}}]})
    try:
        request = chat(user(text("Name a colour.")), Message(Role.ASSISTANT, [text("The colour is")]))
        await run(prov, request, "claude-haiku-4-5-20251001")
        assert fake.last_body()["messages"][-1] == {"role": "assistant",
                                                    "content": [{"type": "text", "text": "The colour is"}]}
        await run(prov, request, "claude-opus-4-7")
        assert [m["role"] for m in fake.last_body()["messages"]] == ["user"]
    finally:
        await prov.aclose()


async def test_fake_refuses_prefill_on_claude_4_6_like_the_api(fake: FakeAnthropic) -> None:
    from anthropic import AsyncAnthropic, BadRequestError

    client = AsyncAnthropic(api_key=API_KEY, base_url=fake.url, max_retries=0)
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "The colour is"}]
    try:
        with pytest.raises(BadRequestError, match="does not support assistant message prefill"):
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=messages)
        answer = await client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=messages)
    finally:
        await client.close()
    assert answer.content[0].text == "Hello from fake Claude."


def test_every_built_in_model_is_one_the_installed_sdk_names() -> None:
    """Anthropic removes retired models from the SDK's model list (claude-opus-4-1, retired 2026-08-05, is
    gone from anthropic 2.14): a built-in model missing there would answer 404 not_found_error."""
    import typing

    from anthropic.types.model_param import ModelParam

    sdk_models = {name for arg in typing.get_args(ModelParam) for name in typing.get_args(arg)}
    assert {m.name for m in AnthropicProvider({"api_key": "k"}).models} <= sdk_models


# -- a stream that breaks, or that is held open after message_stop ----------------------------
CHUNKED_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
MESSAGE_START = b'{"type":"message_start","message":{"usage":{"input_tokens":1000,"output_tokens":1}}}'
HELLO_DELTA = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}'
MESSAGE_DELTA = b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}'
MESSAGE_STOP = b'{"type":"message_stop"}'


def chunked_events(*events: bytes) -> bytes:
    """The stream events as chunks of a chunked body, without the terminating 0-chunk."""
    import json

    pieces = []
    for data in events:
        event = b"event: " + json.loads(data)["type"].encode() + b"\ndata: " + data + b"\n\n"
        pieces.append(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    return b"".join(pieces)


async def events_then_error(prov: AnthropicProvider) -> tuple[list, Exception]:
    """What ``generate`` yields before it raises, and what it raises."""
    import time

    received: list = []
    ctx = router.CallContext(request_id="t", deadline=time.monotonic() + 30)
    with pytest.raises(router.errors.ProviderError) as info:
        async for event in prov.generate(chat(user(text("hi"))), sonnet(prov), ctx):
            received.append(event)
    return received, info.value


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("how", ["cut", "stalled"])
async def test_a_stream_broken_after_message_start_reports_the_usage_before_failing(transport: str, how: str) -> None:
    """The prompt was read (message_start's usage), then the body is cut (the server closes without the
    terminating chunk) or stalls past the read timeout: the usage counted comes before the error, so
    the router keeps the billed part as a failed step."""
    import threading

    server = RawServer(CHUNKED_SSE_HEAD + chunked_events(MESSAGE_START, HELLO_DELTA))
    if how == "cut":  # the end of the connection, after 0.5 s, instead of the body's last chunk
        threading.Timer(0.5, lambda: [conn.shutdown(socket.SHUT_WR) for conn in server.held]).start()
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}",
                              "timeout": 5 if how == "cut" else 1, "http_client": transport})
    try:
        received, error = await events_then_error(prov)
    finally:
        await prov.aclose()
        server.close()
    assert isinstance(error, ProviderUnavailable)
    if how == "stalled":
        assert "did not answer in time" in error.message
    assert [type(e) for e in received] == [UsageReport, TextDelta]  # the prompt billed from message_start
    assert received[1].text == "Hello"
    report = received[0]
    assert (report.usage.input_tokens, report.usage.output_tokens, report.finish_reason) == (1000, 1, None)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_an_error_event_after_message_start_reports_the_usage_before_failing(fake: FakeAnthropic,
                                                                                   transport: str) -> None:
    fake.stream_error = ("overloaded_error", "boom")
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10, "http_client": transport})
    try:
        received, error = await events_then_error(prov)
    finally:
        await prov.aclose()
    assert isinstance(error, ProviderUnavailable) and "boom" in error.message
    assert [type(e) for e in received] == [UsageReport, TextDelta]  # the prompt billed from message_start
    assert (received[0].usage.input_tokens, received[0].usage.output_tokens) == (fake.input_tokens, 1)


async def test_a_failed_stream_s_usage_is_kept_by_the_router_as_a_failed_step(fake: FakeAnthropic) -> None:
    from contextlib import aclosing

    from router.invoke import call_model
    from router.outcome import RouteInfo

    fake.stream_error = ("overloaded_error", "boom")
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": fake.url, "timeout": 10})
    route = RouteInfo("default", prov.name, "claude-sonnet-4-6")
    try:
        with pytest.raises(ProviderUnavailable):
            async with aclosing(call_model(prov, sonnet(prov), chat(user(text("hi"))), router.CallContext("t"),
                                           route, "answer")) as calls:
                async for _ in calls:
                    pass
    finally:
        await prov.aclose()
    [step] = route.steps
    assert (step.purpose, step.usage.input_tokens) == ("answer (failed)", fake.input_tokens)
    assert step.usage.cost_usd > 0


async def test_a_call_cancelled_after_message_start_keeps_the_prompt_billed() -> None:
    """A client that cancels mid-answer (here: after the first text delta; the server then holds the body
    open) was billed for the prompt message_start reported, but the plugin reported usage only at the
    end: the router recorded nothing. It now has the prompt's usage as a step ``answer (cancelled)``."""
    from contextlib import aclosing

    from router.invoke import call_model
    from router.outcome import RouteInfo

    server = RawServer(CHUNKED_SSE_HEAD + chunked_events(MESSAGE_START, HELLO_DELTA))
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 30})
    route = RouteInfo("default", prov.name, "claude-sonnet-4-6")

    async def answer() -> None:
        async with aclosing(call_model(prov, sonnet(prov), chat(user(text("hi"))), router.CallContext("t"),
                                       route, "answer")) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    asyncio.current_task().cancel()  # the client leaves once text came
                    await asyncio.sleep(0)

    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(answer())
    finally:
        await prov.aclose()
        server.close()
    [step] = route.steps
    assert (step.purpose, step.usage.input_tokens, step.usage.output_tokens) == ("answer (cancelled)", 1000, 1)
    assert step.usage.cost_usd == pytest.approx(sonnet(prov).price.cost(step.usage))


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_body_held_open_after_message_stop_still_completes_the_answer(transport: str) -> None:
    """A proxy keeps the chunked body open after message_stop: the answer is whole, so the call succeeds
    soon after it instead of failing at the read timeout."""
    import time

    server = RawServer(CHUNKED_SSE_HEAD + chunked_events(MESSAGE_START, HELLO_DELTA, MESSAGE_DELTA, MESSAGE_STOP))
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 2,
                              "http_client": transport})
    events: list = []
    try:
        ctx = router.CallContext(request_id="t", deadline=time.monotonic() + 30)
        async for event in prov.generate(chat(user(text("hi"))), sonnet(prov), ctx):
            events.append(event)
    finally:
        await prov.aclose()
        server.close()
    assert text_of(events) == "Hello"
    report = events[-1]
    assert isinstance(report, UsageReport) and report.finish_reason is router.FinishReason.STOP
    assert (usage_total(events).input_tokens, usage_total(events).output_tokens) == (1000, 5)


class ConnectionCountingAnthropic(FakeAnthropic):
    """The fake, noting the client port of each request's connection."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[int] = []

    def handle(self, request: Any, reply: Any) -> None:
        self.ports.append(reply._h.client_address[1])
        super().handle(request, reply)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_stream_ended_with_its_body_leaves_the_connection_for_the_next_call(transport: str) -> None:
    with ConnectionCountingAnthropic() as upstream:
        prov = AnthropicProvider({"api_key": API_KEY, "base_url": upstream.url, "timeout": 10,
                                  "http_client": transport})
        try:
            for _ in range(3):
                assert text_of(await run(prov, chat(user(text("hi"))))) == "Hello from fake Claude."
        finally:
            await prov.aclose()
    assert len(upstream.ports) == 3 and len(set(upstream.ports)) == 1


async def test_a_text_document_given_by_url_is_a_form_claude_does_not_take_and_retryable() -> None:
    """Claude takes PDFs and images by URL but text documents only as bytes: the refusal was a bad request,
    so a text file given by URL failed the call instead of going to a fallback that fetches URLs."""
    from mmrouter_anthropic.convert import media_block

    from router import Media, Modality
    from router.errors import ProviderUnsupportedInput

    notes = Media(Modality.DOCUMENT, "text/markdown", url="https://example.com/notes.md")
    with pytest.raises(ProviderUnsupportedInput, match="Claude takes text documents as bytes, not by URL") as refused:
        await media_block(notes, "messages[0].parts[0]", "anthropic")
    assert refused.value.retryable
    pdf = await media_block(Media(Modality.DOCUMENT, "application/pdf", url="https://example.com/a.pdf"), "x", "anthropic")
    assert pdf["source"] == {"type": "url", "url": "https://example.com/a.pdf"}
