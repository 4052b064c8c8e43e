"""The OpenAI models declare their output limit to the router (``ModelInfo.max_output_tokens``).

They kept it to themselves: a session turn asking for more than the model writes (``max_output_tokens`` of 200,000
on gpt-4o, which writes at most 16,384) had its whole history dropped "to make room" for an answer that was never
going to be asked for, with no note that the request was capped; ListProviders showed 0.
"""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import API_KEY, FakeOpenAI

CONFIG = """
providers:
  openai:
    api_key: "{key}"
    base_url: "{url}"
    models:
      - {{name: local-llm, inputs: [text], context_tokens: 32000, max_output_tokens: 2048,
         price: {{input_per_mtok: 0, output_per_mtok: 0}}}}
default: openai/gpt-4o
"""


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeOpenAI() as server:
        yield server


def asked(text: str, session: str, max_output_tokens: int = 0, model: str = "") -> pb.GenerateRequest:
    request = text_request(text)
    request.session_id = session
    request.options.max_output_tokens = max_output_tokens
    if model:
        request.hints.provider, request.hints.model = "openai", model
    return pb.GenerateRequest(request=request)


def test_a_session_asking_for_more_than_the_model_writes_keeps_its_history(start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    for n in range(3):
        daemon.stub.Generate(asked(f"fact number {n} is {'x' * 400}", "s1"))
    answer = daemon.stub.Generate(asked("What were the facts?", "s1", max_output_tokens=200_000)).answer
    sent = fake.chat_requests()[-1]
    assert len(sent["messages"]) == 7, sent["messages"]  # three turns and their answers, then the question
    assert sent["max_completion_tokens"] == 16_384
    assert "max_output_tokens 200000 capped to 16384, the most openai/gpt-4o writes" in answer.route.notes, \
        answer.route.notes
    assert not any("history trimmed" in note for note in answer.route.notes), answer.route.notes


def test_list_providers_gives_the_output_limits_of_built_in_and_configured_models(start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    [openai] = [p for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers if p.name == "openai"]
    limits = {m.name: m.max_output_tokens for m in openai.models}
    assert limits["gpt-4o"] == limits["gpt-4o-mini"] == 16_384
    assert limits["local-llm"] == 2048
    assert limits["whisper-1"] == 0  # a transcriber writes what was said
    fake.chat_models.add("local-llm")
    answer = daemon.stub.Generate(asked("Hi", "", max_output_tokens=5000, model="local-llm")).answer
    assert fake.chat_requests()[-1]["max_completion_tokens"] == 2048
    assert "max_output_tokens 5000 capped to 2048, the most openai/local-llm writes" in answer.route.notes
