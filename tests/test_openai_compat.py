"""The OpenAI plugin behind OpenAI-compatible servers (vLLM, Ollama, llama.cpp, LiteLLM, gateways): their
odd answers and settings, with the real ``openai`` SDK against the fake OpenAI API or raw servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from mmrouter_openai import OpenAIProvider

from router import FinishReason, Message, Part, Request, Role, TextDelta, UsageReport
from router.contract import event_problem
from router.errors import (
    ConfigError,
    ProviderBadRequest,
    ProviderError,
    ProviderInputTooLarge,
    ProviderUnavailable,
)
from router.testing import collect
from tests.fakes.openai import API_KEY, FakeOpenAI
from tests.fakes.raw import RawServer

TRANSPORTS = ["aiohttp", "httpx"]


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def hi() -> Request:
    return Request([Message(Role.USER, [Part(text="hi")])])


def raw_reply(body: bytes, content_type: str, status: str = "200 OK") -> bytes:
    """A whole HTTP/1.1 response carrying ``body``."""
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def sse(*chunks: str) -> bytes:
    """An event stream of ``chunks`` (raw JSON texts, as a server wrote them), ended by ``[DONE]``."""
    return b"".join(f"data: {chunk}\n\n".encode() for chunk in (*chunks, "[DONE]"))


async def answer_of(reply: bytes, transport: str, **settings: object) -> list[object]:
    """The events of a chat call to gpt-4o at a server that answers ``reply`` (raw bytes) to any request."""
    server = RawServer(reply)
    p = OpenAIProvider({"api_key": API_KEY, "base_url": f"http://127.0.0.1:{server.port}/v1", "timeout": 5,
                        "http_client": transport, **settings})
    try:
        return await collect(p, hi(), p.model("gpt-4o"))
    finally:
        await p.aclose()
        server.close()


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# -- 1. content as a list of parts; chunks and completions of odd shapes ---------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_content_of_a_stream_is_taken_as_its_text_parts(transport: str) -> None:
    """Mistral's reasoning models (and LiteLLM passing them on) send ``content`` as a list of parts: it was
    given to TextDelta as a list, and the router refused the plugin's event (INTERNAL PROVIDER_FAILED)."""
    events = await answer_of(raw_reply(sse(
        '{"choices":[{"index":0,"delta":{"role":"assistant","content":[{"type":"thinking","thinking":'
        '[{"type":"text","text":"let me see"}]},{"type":"text","text":"Hel"}]},"finish_reason":null}]}',
        '{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"lo"},{"type":"text","text":"!"}]},'
        '"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    ), "text/event-stream"), transport)
    assert all(event_problem(e) is None for e in events)
    assert text_of(events) == "Hello!"
    report = events[-1]
    assert isinstance(report, UsageReport) and report.finish_reason is FinishReason.STOP
    assert report.usage.output_tokens == 4


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_content_of_a_whole_completion_is_taken_as_its_text_parts(transport: str) -> None:
    """A server that ignores "stream" and answers one completion whose content is a list: its text was
    dropped without a word (an empty answer, finish STOP, usage billed)."""
    completion = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "list "}, {"type": "text", "text": "content"}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    events = await answer_of(raw_reply(json.dumps(completion).encode(), "application/json"), transport)
    assert text_of(events) == "list content"
    assert events[-1].finish_reason is FinishReason.STOP


#: Chunks of odd shapes, as broken or odd upstreams send them (the QA kit's RAW table), and what the error says.
ODD_CHUNKS = {
    "choices-dict": ('{"choices": {"0": {"delta": {"content": "x"}}}}', "choices are not a list"),
    "delta-str": ('{"choices":[{"index":0,"delta":"hello","finish_reason":null}]}', "choices are not a list"),
    "choice-null": ('{"choices":[null]}', "choices are not a list"),
    "usage-list": ('{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":"stop"}], "usage": [1,2]}',
                   "usage is not an object: [1, 2]"),
    "finish-dict": ('{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":{"type":"stop"}}]}',
                    'finish_reason is not a string: {"type": "stop"}'),
    "content-num": ('{"choices":[{"index":0,"delta":{"content":42},"finish_reason":"stop"}]}',
                    "delta.content is neither text nor a list of text parts: 42"),
    "content-list-of-str": ('{"choices":[{"index":0,"delta":{"content":["a"]},"finish_reason":"stop"}]}',
                            "delta.content is neither text nor a list of text parts"),
    "refusal-dict": ('{"choices":[{"index":0,"delta":{"refusal":{"r":1}},"finish_reason":"stop"}]}',
                     'delta.refusal is not text: {"r": 1}'),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", list(ODD_CHUNKS))
async def test_a_chunk_of_an_odd_shape_is_a_bad_answer_not_a_plugin_failure(transport: str, case: str) -> None:
    """Each was INTERNAL "the plugin failed" (a KeyError, an AttributeError, an unhashable finish_reason) or
    an event the router refused (TextDelta of an int or a dict); it is UNAVAILABLE, so the fallbacks run."""
    chunk, what = ODD_CHUNKS[case]
    follow = '{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":"stop"}]}'
    with pytest.raises(ProviderError) as info:
        await answer_of(raw_reply(sse(chunk, follow), "text/event-stream"), transport)
    assert type(info.value) is ProviderUnavailable
    assert "openai: bad answer from gpt-4o (http://127.0.0.1:" in info.value.message
    assert what in info.value.message


@pytest.mark.parametrize(("message", "usage", "what"), [
    ({"content": 42}, None, "message.content is neither text nor a list of text parts: 42"),
    ({"content": "hi", "refusal": {"r": 1}}, None, "message.refusal is not text"),
    ({"content": "hi"}, [1, 2], "usage is not an object"),
    (None, None, "the answer holds no message"),
], ids=["content-num", "refusal-dict", "usage-list", "no-message"])
async def test_a_whole_completion_of_an_odd_shape_is_a_bad_answer(message: object, usage: object, what: str) -> None:
    """A numeric content was dropped without a word (an empty answer at full price), a list usage ignored."""
    completion = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                  "usage": usage}
    with pytest.raises(ProviderError) as info:
        await answer_of(raw_reply(json.dumps(completion).encode(), "application/json"), "aiohttp")
    assert type(info.value) is ProviderUnavailable
    assert "openai: bad answer from gpt-4o (http" in info.value.message and what in info.value.message


# -- 2. inputs the plugin cannot send -------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["document", "video"])
def test_a_model_declared_to_take_what_the_plugin_cannot_send_is_refused(modality: str) -> None:
    """``inputs: [text, document]`` was accepted: routing sent PDFs there (no bridge through local/extract),
    and the call failed "does not take document input", contradicting the config."""
    with pytest.raises(ConfigError, match=rf"providers\.vllm\.models\[1\]\.inputs: this plugin cannot send "
                                          rf"{modality} \(it sends audio, image, text\)"):
        OpenAIProvider({"builtin_models": False, "base_url": "http://127.0.0.1:8000/v1",  # a vLLM: no price needed
                        "models": [{"name": "ok", "inputs": ["text", "image"]}, {"name": "m", "inputs": ["text", modality]}]},
                       name="vllm")


# -- 3. stream_options, which some servers refuse ----------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_usage_false_leaves_out_stream_options_and_its_refusal_says_so(
        fake: FakeOpenAI, transport: str) -> None:
    """Azure with an older api-version, older LocalAI builds: 400 "Unrecognized request argument supplied:
    stream_options", with no setting to leave it out and no hint."""
    fake.refused_fields = {"stream_options"}
    base = {"api_key": API_KEY, "base_url": fake.base_url, "timeout": 10, "http_client": transport}
    refused = OpenAIProvider(base, name="gw")
    fixed = OpenAIProvider({**base, "stream_usage": False}, name="gw")
    try:
        with pytest.raises(ProviderBadRequest) as info:
            await collect(refused, hi(), refused.model("gpt-4o"))
        events = await collect(fixed, hi(), fixed.model("gpt-4o"))
    finally:
        await refused.aclose()
        await fixed.aclose()
    assert "Unrecognized request argument supplied: stream_options" in info.value.message
    assert "set providers.gw.stream_usage: false" in info.value.message
    assert text_of(events) == "Hello from the fake GPT." and events[-1].finish_reason is FinishReason.STOP
    assert [("stream_options" in body) for body in fake.chat_requests()] == [True, False]


# -- 4. llama.cpp's context overflow ------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("where", ["http-400", "error-event"])
@pytest.mark.parametrize("message", ["the request exceeds the available context size, try increasing it",
                                     "n_prompt_tokens (5000) > n_ctx (4096)"], ids=["worded", "type-only"])
async def test_llamacpp_s_context_overflow_is_input_too_large(transport: str, where: str, message: str) -> None:
    """llama.cpp's refusal names its kind in ``type`` (its ``code`` is the status): it was
    PROVIDER_BAD_REQUEST, so a model with a larger context was never tried. The type is enough, whatever
    the wording (the router knows llama.cpp's usual words)."""
    body = json.dumps({"error": {"code": 400, "message": message, "type": "exceed_context_size_error",
                                 "n_prompt_tokens": 5000, "n_ctx": 4096}}).encode()
    reply = (raw_reply(body, "application/json", "400 Bad Request") if where == "http-400"
             else raw_reply(b"data: " + body + b"\n\n", "text/event-stream"))
    with pytest.raises(ProviderError) as info:
        await answer_of(reply, transport)
    assert type(info.value) is ProviderInputTooLarge
    assert message in info.value.message


# -- 5. finish reasons of compatible servers ----------------------------------------------------------------
@pytest.mark.parametrize("reason", ["eos", "eos_token"])
async def test_eos_finish_reasons_are_stop(fake: FakeOpenAI, reason: str) -> None:
    """TGI and llama.cpp wrappers end with ``eos`` / ``eos_token``: the model simply stopped (it was OTHER)."""
    fake.finish_reason = reason
    p = OpenAIProvider({"api_key": API_KEY, "base_url": fake.base_url, "timeout": 10})
    try:
        events = await collect(p, hi(), p.model("gpt-4o"))
    finally:
        await p.aclose()
    assert events[-1].finish_reason is FinishReason.STOP


# -- 6. a base_url with a query ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://gw.example/v1?api-version=2024-02-01", "http://gw.example/v1#frag"])
def test_a_base_url_with_a_query_or_fragment_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """The SDK appends /chat/completions after the query: every call was "model 'x' not found"."""
    with pytest.raises(ConfigError, match=r"providers\.vllm\.base_url: .*cannot send query parameters"):
        OpenAIProvider({"base_url": url}, name="vllm")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ConfigError, match=r"providers\.openai\.base_url \(from the environment variable "
                                          r"OPENAI_BASE_URL\): .*cannot send query parameters"):
        OpenAIProvider({"api_key": "k"})


# -- 7. the environment's OpenAI key sent to another host ------------------------------------------------------
ENV_KEY = "sk-proj-REALSECRET1234567890"


async def test_the_environment_s_key_sent_to_another_host_is_warned_about_once(
        fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """providers.openai with a base_url elsewhere sends OPENAI_API_KEY there (the README said a placeholder
    was sent): a warning says so, without the key, once, and names the ways out."""
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    fake.api_key = ENV_KEY
    caplog.set_level(logging.WARNING, logger="mmrouter_openai")
    p = OpenAIProvider({"base_url": fake.base_url, "timeout": 10})
    try:
        for _ in range(2):
            await collect(p, hi(), p.model("gpt-4o"))
    finally:
        await p.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "providers.openai sends the OPENAI_API_KEY of the environment to http://127.0.0.1:" in warnings[0]
    assert "plugin: openai" in warnings[0] and "providers.openai.api_key" in warnings[0]
    assert ENV_KEY not in caplog.text
    assert fake.requests[0].headers["authorization"] == f"Bearer {ENV_KEY}"  # what the warning is about


def test_no_warning_for_openai_itself_an_explicit_key_or_an_extra_instance(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    caplog.set_level(logging.WARNING, logger="mmrouter_openai")
    OpenAIProvider({})
    OpenAIProvider({"base_url": "https://eu.api.openai.com/v1"})
    OpenAIProvider({"base_url": "http://gpu-box:8000/v1", "api_key": "sk-local"})
    OpenAIProvider({"base_url": "http://gpu-box:8000/v1"}, name="vllm")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

