"""An answer whose provider sent no usage (a proxy or OpenAI-compatible server that leaves out the usage
chunk) is recorded as free: the daemon says so once per model, as it does of a plugin that reports none.
The plugins yield a usage report of zeros then, which hid the router's warning."""

from __future__ import annotations

import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: sk-test-openai-0123456789abcdef, base_url: "{url}"}}
default: openai/gpt-4o
"""

WARNING = "openai answered with gpt-4o with a usage report of nothing (0 tokens, 0 s"


@pytest.fixture
def fake():
    with FakeOpenAI() as upstream:
        upstream.usage = None
        yield upstream


def test_answers_without_usage_from_the_provider_are_said_to_be_recorded_as_free(start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(url=fake.base_url))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
    assert answer.text and answer.usage.input_tokens == 0 and answer.usage.cost_usd == 0
    streamed = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("again")), timeout=30))
    assert streamed[-1].done.answer.usage.cost_usd == 0
    assert wait_for(lambda: WARNING in daemon.logs()), daemon.logs()
    [line] = [line for line in daemon.logs().splitlines() if WARNING in line]  # said once
    assert " WARNING " in line and "recorded as free" in line


def test_answers_with_usage_say_nothing_of_it(start_daemon) -> None:
    with FakeOpenAI() as fake:
        daemon = start_daemon(CONFIG.format(url=fake.base_url))
        answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
    assert answer.usage.input_tokens == 1234
    assert "usage report" not in daemon.logs()


def test_a_stream_cancelled_before_any_usage_is_counted_in_the_statistics(start_daemon) -> None:
    """OpenAI sends a stream's usage at its end: one its client left before was in no statistics row at all
    (an unpaid failed attempt has its row at $0, a cancelled one had none), so stats missed the call."""
    from router.sessions import SessionStore

    with FakeOpenAI() as fake:
        fake.reply_chunks = ["word "] * 200
        fake.chunk_delay = 0.05  # the stream still runs when its client leaves
        daemon = start_daemon(CONFIG.format(url=fake.base_url))
        call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("cut")), timeout=30)
        for event in call:
            if event.HasField("text_delta"):
                call.cancel()
                break
        assert wait_for(lambda: "StreamGenerate CANCELLED" in daemon.logs()), daemon.logs()
        daemon.stop()
    rows = SessionStore(daemon.data_dir / "sessions.sqlite").stats()
    [row] = [row for row in rows if row["purpose"] == "answer (cancelled)"]
    assert (row["provider"], row["model"], row["calls"], row["cost_usd"]) == ("openai", "gpt-4o", 1, 0)
