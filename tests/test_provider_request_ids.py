"""Provider request ids reach the client and the log: what a support ticket to OpenAI or Anthropic needs.

The real daemon runs against the fake OpenAI and Anthropic APIs, which answer a failure with the
request id header of the real API (OpenAI ``x-request-id``, Anthropic ``request-id``). The client
finds the id in the error's message and as ``provider_request_id`` in its ErrorInfo metadata, a
fallback's route names it in the failed attempt, and the daemon's log line of the failure holds it.
"""

from __future__ import annotations

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes import anthropic as fake_anthropic
from tests.fakes import openai as fake_openai

CONFIG = """
providers:
  openai:
    api_key: "${{OPENAI_TEST_KEY}}"
    base_url: "{openai_url}"
    timeout: 10
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{anthropic_url}"
    timeout: 10
routes:
  - name: claude
    match: {{tags: [claude]}}
    use: anthropic/claude-haiku-4-5
  - name: with-fallback
    match: {{tags: [fallback]}}
    use: openai/gpt-4o
    fallback: [anthropic/claude-haiku-4-5]
default: openai/gpt-4o
"""


@pytest.fixture(scope="module")
def module_fakes():
    with fake_openai.FakeOpenAI() as openai_api, fake_anthropic.FakeAnthropic() as anthropic_api:
        yield openai_api, anthropic_api


@pytest.fixture(scope="module")
def shared_daemon(module_fakes, plugin_sites, tmp_path_factory):
    """One daemon for the module: starting one per case (and importing both SDKs in it) took most of the
    module's time. Its cases make a provider fail without a retry delay (no Retry-After: no cool-down) and
    read only the log lines written since their own call (:func:`logs_since`)."""
    openai_api, anthropic_api = module_fakes
    daemon = launch_daemon(CONFIG.format(openai_url=openai_api.base_url, anthropic_url=anthropic_api.url),
                           tmp=tmp_path_factory.mktemp("request-ids"), sites=[plugin_sites["testkit"]],
                           env={"OPENAI_TEST_KEY": fake_openai.API_KEY,
                                "ANTHROPIC_TEST_KEY": fake_anthropic.API_KEY})
    yield daemon
    daemon.stop()


@pytest.fixture
def fakes(module_fakes):
    """The module's fakes, put back as they were started (recorded requests and queued failures forgotten)."""
    for fake in module_fakes:
        fake.reset()
    return module_fakes


@pytest.fixture
def daemon(shared_daemon, fakes):
    return shared_daemon


def logs_since(daemon, mark: int) -> str:
    """What the daemon logged after its log was ``mark`` characters long (``len(daemon.logs())`` before a call)."""
    return daemon.logs()[mark:]


def failed_call(daemon, *tags: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi", hints=pb.RoutingHints(tags=list(tags)))),
                             timeout=30)
    return info.value


@pytest.mark.parametrize(("status", "reason"), [(500, "PROVIDER_UNAVAILABLE"), (429, "PROVIDER_RATE_LIMITED"),
                                                (401, "PROVIDER_AUTH")])
def test_an_openai_failure_names_openais_request_id(daemon, fakes, status, reason):
    openai_api, _ = fakes
    request_id = f"req_oai_{status}_0a1b2c"
    openai_api.fail_next(status, fake_openai.error_body("upstream trouble"), {"x-request-id": request_id})
    mark = len(daemon.logs())
    err = failed_call(daemon)
    got = error_details(err)
    assert got.reason == reason, err.details()
    assert f"(request id {request_id})" in err.details()
    assert got.metadata["provider_request_id"] == request_id
    assert got.metadata["provider"] == "openai"
    assert request_id in logs_since(daemon, mark)  # the operator's log line of the failure quotes it too


def test_an_anthropic_failure_names_anthropics_request_id(daemon, fakes):
    _, anthropic_api = fakes
    anthropic_api.fail_next_api(529, "overloaded_error", "Overloaded", {"request-id": "req_011CAnthropic42"})
    mark = len(daemon.logs())
    err = failed_call(daemon, "claude")
    got = error_details(err)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_UNAVAILABLE", "anthropic"), err.details()
    assert err.details() == "anthropic: overloaded (Overloaded) (request id req_011CAnthropic42)"
    assert got.metadata["provider_request_id"] == "req_011CAnthropic42"
    assert "req_011CAnthropic42" in logs_since(daemon, mark)


def test_a_failed_attempt_before_a_fallback_keeps_the_request_id_in_the_route(daemon, fakes):
    openai_api, _ = fakes
    openai_api.fail_next(503, fake_openai.error_body("busy", "server_error"), {"x-request-id": "req_oai_503_fb"})
    reply = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "hi", hints=pb.RoutingHints(tags=["fallback"]))), timeout=30)
    route = reply.answer.route
    assert route.provider == "anthropic"
    [failed] = [a for a in route.attempts if not a.ok]
    assert failed.provider == "openai" and "(request id req_oai_503_fb)" in failed.error


def test_a_failure_without_a_request_id_claims_none(daemon, fakes):
    openai_api, _ = fakes
    openai_api.fail_next(500, fake_openai.error_body("upstream trouble"))
    err = failed_call(daemon)
    assert "request id" not in err.details()
    assert "provider_request_id" not in error_details(err).metadata
