"""With ``max_retries`` over 0 the official SDKs retry a 429 or 5xx themselves, after its Retry-After (or their own
backoff). A retry whose wait would end at or past the call's deadline (less the margin the router keeps for
fallbacks) is not waited for: the attempt fails at once with the provider's answer, the rule's fallback answers
within the deadline, and the route's attempts and ListProviders name what the provider said (a rate limit, an
overload), not a timeout. A retry that fits in the deadline still happens.

The daemon runs for real (tests/conftest.py) against the fake OpenAI and Anthropic servers (tests/fakes), which
the official SDKs call; the retry waits are the SDKs' own.
"""

from __future__ import annotations

import pytest
from anthropic import _constants as anthropic_constants
from grpc_helpers import providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb
from openai import _constants as openai_constants

from router.sdk_http import (
    SDK_INITIAL_RETRY_DELAY,
    SDK_MAX_RETRY_DELAY,
    response_hooks,
    sdk_retry_wait,
)
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import error_body

#: Both providers retry (the SDKs' own); ``main`` goes to OpenAI first, ``claude`` (the tag) to Anthropic first.
RETRYING = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 20, max_retries: 4}}
  anthropic: {{api_key: "${{ANTHROPIC_TEST_KEY}}", base_url: "{anthropic}", timeout: 20, max_retries: 4}}
routes:
  - name: claude
    match: {{tags: [claude]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [openai/gpt-4o]
  - name: main
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6]
"""
RATE_LIMITED = error_body("Rate limit reached for gpt-4o on requests per min (RPM)", "requests", "rate_limit_exceeded")
#: The client's deadline, in seconds: far shorter than the Retry-After the providers answer.
DEADLINE = 10
#: What the providers ask to be given before the next request, in seconds (the OpenAI SDK waits up to 120).
RETRY_AFTER = "30"


@pytest.fixture
def daemon(start_daemon, upstreams):
    """The daemon, each SDK loaded by a first call (on a loaded machine an import takes seconds of a short
    deadline); the fakes' requests are forgotten then."""
    openai, anthropic = upstreams
    daemon = start_daemon(RETRYING.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    generate(daemon, timeout=60)
    generate(daemon, "claude", timeout=60)
    openai.requests.clear()
    anthropic.requests.clear()
    return daemon


def generate(daemon, *tags: str, timeout: float = DEADLINE) -> pb.Answer:
    request = text_request("hello", hints=pb.RoutingHints(tags=list(tags)))
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=timeout).answer


def attempts(answer: pb.Answer) -> list[tuple[str, bool]]:
    return [(attempt.provider, attempt.ok) for attempt in answer.route.attempts]


def test_a_retry_after_past_the_deadline_is_not_waited_for_the_fallback_answers(daemon, upstreams) -> None:
    """OpenAI's 429 asks for 30 s, the client gives 10: the SDK does not sleep them out (the call used to end in a
    bare DEADLINE_EXCEEDED, recorded as OpenAI's timeout), Anthropic answers, and the rate limit is what is said."""
    openai, _ = upstreams
    for _ in range(5):  # one for each attempt the SDK could make
        openai.fail_next(429, RATE_LIMITED, {"retry-after": RETRY_AFTER})

    answer = generate(daemon)

    assert attempts(answer) == [("openai", False), ("anthropic", True)]
    assert answer.route.attempts[0].error.startswith("openai: HTTP 429 from gpt-4o: Rate limit reached")
    assert len(openai.requests) == 1  # no retry was made
    health = providers_by_name(daemon.stub)["openai"].health
    assert (health.failed_calls, health.last_failure_reason) == (1, "PROVIDER_RATE_LIMITED")


def test_an_anthropic_overload_whose_retry_after_passes_the_deadline_falls_back_at_once(daemon, upstreams) -> None:
    """The same for the Anthropic SDK (which waits out any Retry-After) and a 529: recorded as unavailable."""
    _, anthropic = upstreams
    for _ in range(5):
        anthropic.fail_next_api(529, "overloaded_error", "Overloaded", headers={"retry-after": RETRY_AFTER})

    answer = generate(daemon, "claude")

    assert attempts(answer) == [("anthropic", False), ("openai", True)]
    assert answer.route.attempts[0].error.startswith("anthropic: overloaded (Overloaded)")
    assert len(anthropic.requests) == 1
    health = providers_by_name(daemon.stub)["anthropic"].health
    assert (health.failed_calls, health.last_failure_reason) == (1, "PROVIDER_UNAVAILABLE")


def test_the_sdks_backoff_is_not_waited_for_past_the_deadline(daemon, upstreams) -> None:
    """500s without Retry-After: the SDK's backoff (0.5, 1, 2 s, then 4 s) is waited for while it fits in the
    deadline (6 s), not the 4 s after the fourth answer: the fallback answers, and the 500 is recorded."""
    openai, _ = upstreams
    for _ in range(5):
        openai.fail_next(500, error_body("The server had an error while processing your request.", "server_error"))

    answer = generate(daemon, timeout=6)

    assert attempts(answer) == [("openai", False), ("anthropic", True)]
    assert answer.route.attempts[0].error.startswith("openai: HTTP 500 from gpt-4o: The server had an error")
    assert [r.headers.get("x-stainless-retry-count") for r in openai.requests] == ["0", "1", "2", "3"]
    health = providers_by_name(daemon.stub)["openai"].health
    assert (health.failed_calls, health.last_failure_reason) == (1, "PROVIDER_UNAVAILABLE")


def test_a_retry_that_fits_in_the_deadline_still_happens(daemon, upstreams) -> None:
    """A 429 with ``retry-after: 0`` (the SDK's short backoff then) and a 200: one answer, from the first target."""
    openai, _ = upstreams
    openai.fail_next(429, RATE_LIMITED, {"retry-after": "0"})

    answer = generate(daemon)

    assert attempts(answer) == [("openai", True)]
    assert len(openai.requests) == 2
    assert [r.headers.get("x-stainless-retry-count") for r in openai.requests] == ["0", "1"]
    assert providers_by_name(daemon.stub)["openai"].health.failed_calls == 0


@pytest.mark.parametrize("sdk", [openai_constants, anthropic_constants])
def test_the_backoff_assumed_is_the_sdks(sdk) -> None:  # type: ignore[no-untyped-def]
    """The wait a retry without Retry-After is given is the installed SDKs' backoff (before their jitter)."""
    assert (SDK_INITIAL_RETRY_DELAY, SDK_MAX_RETRY_DELAY) == (sdk.INITIAL_RETRY_DELAY, sdk.MAX_RETRY_DELAY)


@pytest.mark.parametrize(("headers", "retries_taken", "wait"), [
    ({"retry-after": "30"}, 0, 30.0),
    ({"retry-after-ms": "1500", "retry-after": "30"}, 0, 1.5),  # the milliseconds win, as in the SDKs
    ({"retry-after": "0"}, 0, 0.5),  # no delay: the SDK's backoff
    ({"retry-after": "soon"}, 1, 1.0),
    ({}, 2, 2.0),
    ({}, 40, 8.0),
])
def test_the_sdk_retry_wait(headers: dict[str, str], retries_taken: int, wait: float) -> None:
    assert sdk_retry_wait(headers, retries_taken) == wait


def test_a_client_without_retries_gets_no_retry_hook() -> None:
    """The default (max_retries 0) costs nothing more: only the error-body bound is installed."""
    import httpx2

    assert len(response_hooks(httpx2, 0)["response"]) == 1
    assert len(response_hooks(httpx2, 2)["response"]) == 2
