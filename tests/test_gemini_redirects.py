"""No call of the Gemini provider follows a redirect: through the real google-genai SDK against the fake
Gemini API answering 302/307 to another server, which must never see a request (so never the key). And
a 200 HTML page (a captive portal's) is reported as such."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
from mmrouter_gemini import GeminiProvider
from mmrouter_gemini.errors import map_exception
from mmrouter_gemini.transport import HTTPX_ARGS

from router import Media, Message, Options, Part, Request, Role, Task
from router.config import parse_config
from router.core import App
from router.errors import ProviderUnavailable
from router.outcome import Done
from router.testing import collect
from tests.fakes.gemini import FakeGemini
from tests.test_gemini_provider import stored_video

KEY = "AIza-redirect-secret-0123456789"


@pytest.fixture
def api():
    """The configured base_url: a Gemini API that redirects what a test tells it to."""
    with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
def other():
    """Where the redirects point: another host (by name) and port, which would accept the key."""
    with FakeGemini(api_key=KEY) as server:
        yield server


def elsewhere(other: FakeGemini) -> str:
    """``other``'s URL as a redirect names it: another host name, with a userinfo part."""
    return other.url.replace("http://127.0.0.1", "http://mallory:pw@localhost")


def make_provider(api: FakeGemini, **overrides) -> GeminiProvider:
    settings = {"api_key": KEY, "base_url": api.url, "timeout": 10, "poll_interval": 0.02}
    settings.update(overrides)
    return GeminiProvider.from_settings(settings)


def ask(*media: Media) -> Request:
    parts = [Part(text="What happens?"), *(Part(media=m) for m in media)]
    return Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.CHAT))


async def refused(p: GeminiProvider, request: Request) -> str:
    """The message of the ProviderUnavailable that ends ``request`` (bounded: a hang fails the test)."""
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(p, request, p.model("gemini-2.5-flash"), timeout=20)
    finally:
        await p.aclose()
    return caught.value.message


def check_message(message: str, api: FakeGemini, other: FakeGemini, status: int, path: str) -> None:
    """The message names the configured base_url, the status and where it pointed (no userinfo, no
    query), says redirects are not followed and which setting to fix; the key is not in it."""
    port = other.url.rsplit(":", 1)[1]
    assert (f"the Gemini API at {api.url} answered HTTP {status} redirecting to "
            f"http://localhost:{port}{path}; redirects are not followed: set providers.gemini.base_url "
            "to where the API is served") in message
    assert KEY not in message
    assert "mallory" not in message and "pw@" not in message and "?" not in message


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_a_redirected_generate_call_is_not_followed(api, other, status, streaming):
    kind = "stream" if streaming else "generate"
    api.redirect(kind, status, elsewhere(other))
    message = await refused(make_provider(api, streaming=streaming), ask())
    assert len(api.calls(kind)) == 1
    assert other.requests == []  # not followed: the key never went there
    method = "streamGenerateContent" if streaming else "generateContent"
    check_message(message, api, other, status, f"/v1beta/models/gemini-2.5-flash:{method}")


@pytest.mark.parametrize("kind", ["upload_start", "upload_chunk"])
async def test_a_redirected_files_api_upload_is_not_followed(api, other, kind, tmp_path):
    """Neither the upload's start (with the key) nor its chunks (the media) go to the other host."""
    api.redirect(kind, 307, elsewhere(other))
    message = await refused(make_provider(api, inline_limit_bytes=0), ask(stored_video(tmp_path)))
    assert len(api.calls(kind)) == 1
    assert other.requests == []
    assert api.calls("stream") == []
    check_message(message, api, other, 307, "/upload/v1beta/files")


async def test_a_redirected_file_status_poll_is_not_followed(api, other, tmp_path):
    api.redirect("file_get", 302, elsewhere(other))
    message = await refused(make_provider(api, inline_limit_bytes=0), ask(stored_video(tmp_path)))
    assert len(api.calls("file_get")) == 1  # a bad answer, not a failure in passing: not polled again
    assert other.requests == []
    check_message(message, api, other, 302, f"/v1beta/{next(iter(api.files))}")


async def test_the_httpx_clients_of_the_sdk_do_not_follow_redirects_either(api, other):
    """Without aiohttp google-genai uses httpx (made to here by a transport of ours): with the plugin's
    client args a 3xx is an ``APIError``, which the plugin maps as it maps the aiohttp session's refusal."""
    from google import genai
    from google.genai import types

    api.redirect("generate", 307, elsewhere(other))
    options = types.HttpOptions(base_url=api.url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1),
                                client_args=dict(HTTPX_ARGS),
                                async_client_args={**HTTPX_ARGS, "transport": httpx.AsyncHTTPTransport()})
    client = genai.Client(api_key=KEY, vertexai=False, http_options=options)
    try:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi"), 20)
    finally:
        await client.aio.aclose()
        client.close()
    assert other.requests == []
    error = map_exception(caught.value, "gemini", KEY, api.url)
    assert isinstance(error, ProviderUnavailable)
    check_message(error.message, api, other, 307, "/v1beta/models/gemini-2.5-flash:generateContent")


PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body>Log in to use the Wi-Fi</body></html>\n"


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
async def test_a_page_answered_instead_of_the_api_is_named_so(api, streaming):
    """A 200 HTML page (a captive portal's) is neither "a stream that ended early" nor "unparsable JSON"."""
    api.pages["stream" if streaming else "generate"] = ("text/html; charset=utf-8", PAGE)
    message = await refused(make_provider(api, streaming=streaming), ask())
    expected = "an event stream" if streaming else "the API's JSON"
    assert message == (f"gemini: the Gemini API at {api.url} answered HTTP 200 with a page of type text/html, "
                       f"not {expected} (a proxy's or captive portal's page?): check providers.gemini.base_url "
                       "and the network on the way")


CONFIG = """
providers:
  gemini: {api_key: "%(key)s", base_url: "%(api)s", timeout: 10}
  gemini-backup: {plugin: gemini, api_key: "%(key)s", base_url: "%(backup)s", timeout: 10}
plugins:
  disabled: [openai, anthropic, assemblyai, local]
routes:
  - name: chat
    match: {task: chat}
    use: gemini/gemini-2.5-flash
    fallback: [gemini-backup/gemini-2.5-flash]
default: gemini/gemini-2.5-flash
server:
  data_dir: "%(data)s"
"""


async def test_the_fallback_answers_a_redirected_call(api, other, tmp_path: Path):
    api.redirect("stream", 307, elsewhere(other))
    with FakeGemini(api_key=KEY) as backup:
        app = App(parse_config(CONFIG % {"key": KEY, "api": api.url, "backup": backup.url,
                                         "data": tmp_path / "data"}, "t.yaml"))
        try:
            async with aclosing(app.answer(ask(), None)) as events:
                done = [e async for e in events if isinstance(e, Done)]
        finally:
            await app.aclose()
    assert done[0].answer.text == "Hello from Gemini."
    assert done[0].answer.route.provider == "gemini-backup"
    assert len(api.calls("stream")) == 1 and other.requests == []
