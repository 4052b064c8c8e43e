"""router.sdk_http: the server-sent event parser the chat plugins read raw streamed answers with, and
the transport setting of plugins whose SDK offers aiohttp and httpx."""

from __future__ import annotations

import json

import pytest
from mmrouter_anthropic.settings import AnthropicSettings
from mmrouter_openai.settings import OpenAISettings

from router.sdk_http import ServerSentEvent, SseParser, sse_events

STREAM = (b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
          b": a comment\r\nevent: ping\r\n\r\n"
          b"data: first line\r\ndata:second line\r\n\r\n"
          + "event: content_block_delta\r\ndata: {\"text\": \"h\u00e9llo \u2603\"}\r\n\r\n".encode()
          + b"data: no blank line at the end")
EXPECTED = [ServerSentEvent("message_start", b'{"a": 1}'), ServerSentEvent("", b"first line\nsecond line"),
            ServerSentEvent("content_block_delta", '{"text": "h\u00e9llo \u2603"}'.encode()),
            ServerSentEvent("", b"no blank line at the end")]


def parse(pieces: list[bytes]) -> list[ServerSentEvent]:
    parser = SseParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.end()


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
def test_events_are_the_same_however_the_body_is_cut(size: int) -> None:
    """Network reads cut lines anywhere: inside a CRLF (a CR at the end of a read is no line end of its
    own) and inside a UTF-8 character (the data stays bytes until json.loads)."""
    pieces = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    assert parse(pieces) == EXPECTED
    assert json.loads(parse(pieces)[2].data) == {"text": "h\u00e9llo \u2603"}


@pytest.mark.parametrize("size", [1, 2, 3, 4, len(STREAM) + 3])
def test_a_byte_order_mark_opening_the_stream_is_dropped(size: int) -> None:
    """A .NET server's stream began with a UTF-8 BOM: its first line was not read as ``data:`` and the first
    chunk of the answer was lost without a word (the SSE spec drops a leading BOM)."""
    body = b"\xef\xbb\xbf" + STREAM
    assert parse([body[i:i + size] for i in range(0, len(body), size)]) == EXPECTED
    assert parse([b"\xef\xbb\xbfdata: only"]) == [ServerSentEvent("", b"only")]  # no line end at all
    assert parse([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"]) == [ServerSentEvent("", b"a")]  # only at the start


def test_a_crlf_cut_between_two_reads_is_one_line_end() -> None:
    assert parse([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [ServerSentEvent("", b"a\nb")]


def test_lf_and_cr_line_ends_and_an_event_name_reset_after_each_event() -> None:
    assert parse([b"event: error\ndata: x\n\ndata: y\r\r"]) == [ServerSentEvent("error", b"x"), ServerSentEvent("", b"y")]


def test_bad_utf8_reaches_json_loads_as_a_value_error() -> None:
    """Decoding is left to json.loads, whose refusal of bad UTF-8 is the ValueError the plugins map."""
    [event] = parse([b'data: {"text": "\xff\xfe"}\n\n'])
    with pytest.raises(ValueError):
        json.loads(event.data)


async def test_sse_events_reads_an_async_body() -> None:
    async def body():  # type: ignore[no-untyped-def]
        for i in range(0, len(STREAM), 5):
            yield STREAM[i:i + 5]

    assert [event async for event in sse_events(body())] == EXPECTED


@pytest.mark.parametrize("settings_class", [OpenAISettings, AnthropicSettings])
def test_sdk_retries_use_httpx(settings_class) -> None:  # type: ignore[no-untyped-def]
    """A bound on the whole call would cut the SDK's retries (and their Retry-After waits), and aiohttp
    has no write timeout to bound each attempt: a client that retries uses httpx."""
    assert settings_class.load("x", {"api_key": "k"}, environment=False).transport == "aiohttp"
    assert settings_class.load("x", {"api_key": "k", "max_retries": 1}, environment=False).transport == "httpx"
    assert settings_class.load("x", {"api_key": "k", "http_client": "httpx"}, environment=False).transport == "httpx"
