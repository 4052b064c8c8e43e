"""The access line of streams cut short, through the running daemon: the real ``anthropic`` SDK talks
to the fake Messages API (tests/fakes/anthropic.py).

A StreamGenerate cancelled after its provider reported usage was logged with ``attempts=0
cost_usd=0`` while ``mmrouter stats`` billed it (``answer (cancelled)``): the line was written before
the answer was closed. Costs were rounded to 8 decimals, so the access lines never added up to
``stats`` exactly.
"""

from __future__ import annotations

import json

import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from router.sessions import SessionStore
from tests.fakes.anthropic import API_KEY, FakeAnthropic

#: Prices with more decimals than the access line kept (8): 31 input and 9 output tokens cost 0.0002383333386.
CONFIG = """
providers:
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{url}"
    models:
      - {{name: claude-sonnet-4-6, price: {{input_per_mtok: 3.3333333, output_per_mtok: 15.0000007}}}}
default: anthropic/claude-sonnet-4-6
server: {{log_format: json}}
"""


@pytest.fixture
def fake():
    with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
def daemon(start_daemon, fake):
    return start_daemon(CONFIG.format(url=fake.url), env={"ANTHROPIC_TEST_KEY": API_KEY})


def access_lines(daemon, method: str) -> list[dict]:
    """The daemon's access lines of ``method`` calls, as JSON objects."""
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("method") == method]


def test_a_stream_cancelled_after_its_usage_is_logged_with_its_attempt_and_the_cost_stats_bill(daemon, fake) -> None:
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("whole")), timeout=30).answer
    fake.chunks = ["word "] * 2000  # the daemon is sending them when its client cancels
    for _ in range(3):
        call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("cut")), timeout=30)
        for event in call:
            if event.HasField("text_delta"):
                call.cancel()
                break
    assert wait_for(lambda: len(access_lines(daemon, "StreamGenerate")) == 3)
    generate, = access_lines(daemon, "Generate")
    streams = access_lines(daemon, "StreamGenerate")
    assert generate["cost_usd"] == answer.usage.cost_usd  # whole, not rounded
    assert [(s["code"], s["attempts"]) for s in streams] == [("CANCELLED", 1)] * 3
    assert all(s["cost_usd"] > 0 for s in streams)  # the prompt read, billed as "answer (cancelled)"
    daemon.stop()
    billed = SessionStore(daemon.data_dir / "sessions.sqlite").stats()
    assert {row["purpose"] for row in billed} <= {"answer", "answer (cancelled)"}
    assert sum(line["cost_usd"] for line in [generate, *streams]) == pytest.approx(
        sum(row["cost_usd"] for row in billed), rel=1e-12, abs=0)

