"""The Anthropic provider when something before the API answers instead of it: a proxy's error page, a
redirect (never followed), a captive portal's 200 page; with the real SDK, on both transports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mmrouter_anthropic import AnthropicProvider

from router import Message, Options, Part, Request, Role, Task
from router.errors import ProviderUnavailable
from router.testing import collect
from tests.fakes.anthropic import API_KEY, FakeAnthropic

TRANSPORTS = ["aiohttp", "httpx"]

#: An nginx 502 page, spread over lines and indented, echoing the key (a proxy logging the request), and long.
NGINX_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             "  <center><h1>502 Bad Gateway</h1></center>\n\n\t<hr><center>nginx</center>\r\n"
             f"<!-- upstream refused x-api-key {API_KEY} -->\n" + "<!-- padding -->\n" * 200 + "</body>\r\n</html>\r\n")


def hello() -> Request:
    return Request(messages=[Message(Role.USER, [Part(text="hi")])], options=Options(task=Task.CHAT))


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
def elsewhere() -> Iterator[FakeAnthropic]:
    """Another host, where a redirect points: it answers like the API, and records what reaches it."""
    with FakeAnthropic() as upstream:
        yield upstream


async def call(fake: FakeAnthropic, transport: str, base_url: str | None = None) -> ProviderUnavailable:
    """The error of one call to ``base_url`` (the fake's by default) through ``transport``."""
    prov = AnthropicProvider({"api_key": API_KEY, "base_url": base_url or fake.url, "timeout": 10,
                              "http_client": transport})
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await collect(prov, hello(), prov.model("claude-sonnet-4-6"))
    finally:
        await prov.aclose()
    assert type(info.value) is ProviderUnavailable and info.value.retryable  # a fallback answers
    assert API_KEY not in str(info.value)
    return info.value


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [500, 502])
async def test_an_error_page_that_is_not_json_is_quoted_short_on_one_line(fake: FakeAnthropic, transport: str,
                                                                          status: int) -> None:
    fake.page_next(status, NGINX_502, "text/html")
    message = (await call(fake, transport)).message
    assert message.startswith(f"anthropic: HTTP {status}: <html> <head><title>502 Bad Gateway</title></head> "
                              "<body> <center><h1>502 Bad Gateway</h1></center> <hr><center>nginx</center> "
                              "<!-- upstream refused x-api-key *** -->")
    assert f"HTTP {status}: HTTP {status}" not in message
    assert "\n" not in message and "\t" not in message and "  " not in message
    assert message.endswith("...") and len(message) < 400  # cut short: not the 3.6 kB page


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_error_page_of_plain_text_is_quoted(fake: FakeAnthropic, transport: str) -> None:
    fake.page_next(503, "upstream connect error or disconnect/reset before headers\n", "text/plain",
                   {"retry-after": "4"})
    error = await call(fake, transport)
    assert error.message == "anthropic: HTTP 503: upstream connect error or disconnect/reset before headers"
    assert error.retry_after == 4.0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_empty_error_body_does_not_say_the_status_twice(fake: FakeAnthropic, transport: str) -> None:
    fake.page_next(502, "", "text/html")
    assert (await call(fake, transport)).message == "anthropic: HTTP 502 (no error body)"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_names_both_ends(fake: FakeAnthropic, elsewhere: FakeAnthropic,
                                                              transport: str, status: int) -> None:
    """The key never goes to the other host (it would answer, as the API), and the message says what happened
    and what to fix: not an authentication failure or a connection error of the host that redirected."""
    port = elsewhere.url.rsplit(":", 1)[1]
    fake.page_next(status, "", "text/plain",
                   {"Location": f"http://user:pw-secret@127.0.0.1:{port}/v1/messages?token=q-secret#frag"})
    error = await call(fake, transport)
    assert elsewhere.requests == []
    assert error.message == (f"anthropic: the Anthropic API at {fake.url} answered HTTP {status} redirecting to "
                             f"http://127.0.0.1:{port}/v1/messages; redirects are not followed: set providers.anthropic.base_url to "
                             "where the API is served")
    assert len(fake.message_calls()) == 1


async def test_a_relative_redirect_names_the_full_target_and_a_base_url_s_credentials_are_not_shown(
        fake: FakeAnthropic) -> None:
    """A base_url with credentials (which takes httpx) is shown without them; a relative Location is shown whole."""
    port = fake.url.rsplit(":", 1)[1]
    fake.page_next(302, "<p>Moved</p>", "text/html", {"Location": "/gateway/v1/messages?x=1"})
    error = await call(fake, "httpx", f"http://svc:pw-secret@127.0.0.1:{port}/anthropic")
    assert error.message == (f"anthropic: the Anthropic API at http://127.0.0.1:{port}/anthropic answered HTTP 302 "
                             f"redirecting to http://127.0.0.1:{port}/gateway/v1/messages; redirects are not "
                             "followed: set providers.anthropic.base_url to where the API is served")
    assert [r.path for r in fake.requests] == ["/anthropic/v1/messages"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_200_page_is_not_taken_for_a_stream_cut_short(fake: FakeAnthropic, transport: str) -> None:
    fake.page_next(200, "<html><body><h1>Please log in to use this network</h1></body></html>",
                   "text/html; charset=utf-8")
    error = await call(fake, transport)
    assert error.message == (f"anthropic: the Anthropic API at {fake.url} answered HTTP 200 with a page of type "
                             "text/html, not an event stream (a proxy's or captive portal's page?): check providers.anthropic.base_url "
                             "and the network on the way")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_event_stream_cut_short_is_still_said_so(fake: FakeAnthropic, transport: str) -> None:
    fake.truncate_next(2)
    error = await call(fake, transport)
    assert "the stream ended before the answer was complete (no message_stop)" in error.message
