"""What a Gemini stream that ends before its last chunk costs, through the running daemon: the real
google-genai SDK talks to the fake Gemini API (tests/fakes/gemini.py).

A stream cut short was billed its whole prompt at the uncached rate (up to 10 times the price of a cached
prompt, more than the whole answer), while one its client cancelled was billed $0 and left no trace in the
statistics. Both are now billed the same: the prompt, reported from the first chunk's ``promptTokenCount``
before any text, at the input rate when it is too short for Google's cache, else at the cached rate (the
chunks before the last do not say how much was cached): never more than the whole answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from router.sessions import SessionStore
from tests.fakes.base import Recorded, Reply
from tests.fakes.gemini import FakeGemini

KEY = "AIza-cut-usage-7d3b"

CONFIG = """
providers:
  gemini: {{api_key: "${{GEMINI_TEST_KEY}}", base_url: "{url}", api_version: v1beta, timeout: 30}}
default: gemini/gemini-2.5-pro
server: {{log_format: json}}
"""

#: A long prompt mostly read from Google's cache: 10,000 tokens at 1.25 USD/Mtok, 90,000 at 0.125, 10 out at 10.
CACHED = {"promptTokenCount": 100_000, "cachedContentTokenCount": 90_000, "candidatesTokenCount": 10,
          "totalTokenCount": 100_010}
CACHED_WHOLE = 10_000 * 1.25 / 1e6 + 90_000 * 0.125 / 1e6 + 10 * 10.0 / 1e6
#: What its cut or cancelled stream costs: the prompt as if all cached (the chunks before the last do not
#: count the cached part), the least it can cost.
CACHED_CUT = 100_000 * 0.125 / 1e6
#: A prompt too short for the cache (12 tokens), billed at the input rate, what it costs.
SHORT = {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17}
SHORT_CUT = 12 * 1.25 / 1e6

PROMPTS = [pytest.param(CACHED, CACHED_CUT, id="cached-prompt"), pytest.param(SHORT, SHORT_CUT, id="short-prompt")]

#: How long a held stream waits at most for the test to release it (so a broken test never hangs the fake).
HOLD_SECONDS = 30.0


class HoldingGemini(FakeGemini):
    """The fake Gemini API, which holds a stream after its first chunk while :attr:`hold` (until
    :attr:`release` is set, or :data:`HOLD_SECONDS`)."""

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key=api_key)
        self.hold = False
        self.release = threading.Event()

    def handle(self, request: Recorded, reply: Reply) -> None:
        if self.hold:
            send = reply.sse

            def held(events: Iterable[str | tuple[str, Any]], delay: float = 0.0) -> None:
                def first_then_wait() -> Iterator[str | tuple[str, Any]]:
                    for n, event in enumerate(events):
                        if n == 1:
                            self.release.wait(HOLD_SECONDS)
                        yield event

                send(first_then_wait(), delay)

            reply.sse = held  # type: ignore[method-assign]
        super().handle(request, reply)


@pytest.fixture
def fake() -> Iterator[HoldingGemini]:
    server = HoldingGemini(KEY).start()
    server.reply_chunks = ["One", " two", " three."]
    yield server
    server.release.set()
    server.stop()


@pytest.fixture
def daemon(start_daemon, fake):
    return start_daemon(CONFIG.format(url=fake.url), env={"GEMINI_TEST_KEY": KEY})


def access_lines(daemon, method: str) -> list[dict]:
    """The daemon's JSON access lines of ``method`` calls."""
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("method") == method]


def stats_row(daemon, purpose: str) -> dict:
    """The one statistics row of ``purpose`` (the daemon writes it within moments of the call's end)."""
    store = SessionStore(daemon.data_dir / "sessions.sqlite")
    try:
        rows = wait_for(lambda: [row for row in store.stats() if row["purpose"] == purpose])
        assert rows, f"no {purpose!r} row in the statistics"
        [row] = rows
        return row
    finally:
        store.close()


def test_a_whole_streamed_answer_costs_its_usage_exactly_reported_in_parts(daemon, fake) -> None:
    fake.usage = CACHED
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.index("usage") < kinds.index("text_delta")  # the prompt's part, before any text
    total = events[-1].done.answer.usage
    assert total.cost_usd == pytest.approx(CACHED_WHOLE)
    assert (total.input_tokens, total.cached_input_tokens, total.output_tokens) == (100_000, 90_000, 10)
    parts = [e.usage for e in events if e.HasField("usage")]
    assert [p.cost_usd for p in parts] == [pytest.approx(CACHED_CUT), pytest.approx(CACHED_WHOLE - CACHED_CUT)]
    unary = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer.usage
    assert unary.cost_usd == pytest.approx(CACHED_WHOLE)
    daemon.stop()
    [row] = SessionStore(daemon.data_dir / "sessions.sqlite").stats()
    assert row["cost_usd"] == pytest.approx(2 * CACHED_WHOLE)


@pytest.mark.parametrize(("usage", "billed"), PROMPTS)
def test_a_stream_cut_short_is_billed_its_prompt_never_more_than_the_whole_answer(daemon, fake, usage, billed):
    fake.usage = usage
    fake.truncate_next(2)  # two chunks of text, no finishReason
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    row = stats_row(daemon, "answer (failed)")
    assert row["cost_usd"] == pytest.approx(billed)
    assert row["input_tokens"] == usage["promptTokenCount"]
    assert wait_for(lambda: access_lines(daemon, "Generate"))
    [line] = access_lines(daemon, "Generate")
    assert line["cost_usd"] == pytest.approx(billed)


@pytest.mark.parametrize(("usage", "billed"), PROMPTS)
def test_a_stream_its_client_cancels_is_billed_as_one_cut_short(daemon, fake, usage, billed) -> None:
    fake.usage = usage
    fake.hold = True  # the first chunk, then nothing until the test ends
    call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")), timeout=30)
    seen = []
    for event in call:
        seen.append(event.WhichOneof("event"))
        if event.HasField("text_delta"):
            call.cancel()
            break
    assert seen == ["route_chosen", "usage", "text_delta"]
    assert wait_for(lambda: access_lines(daemon, "StreamGenerate"))
    [line] = access_lines(daemon, "StreamGenerate")
    assert line["code"] == "CANCELLED"
    assert line["cost_usd"] == pytest.approx(billed)
    row = stats_row(daemon, "answer (cancelled)")
    assert row["cost_usd"] == pytest.approx(billed)
    assert row["input_tokens"] == usage["promptTokenCount"]
