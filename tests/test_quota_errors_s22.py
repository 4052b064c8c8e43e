"""A spent quota or credit (OpenAI's 429 ``insufficient_quota``, a 402 from Anthropic, Gemini or AssemblyAI,
AssemblyAI's negative balance) is PROVIDER_QUOTA_EXHAUSTED: FAILED_PRECONDITION without RetryInfo, the rule's
fallbacks still tried, described by ListProviders and the CLI as a spent quota, not an outage or a rate limit.
And a call whose targets all failed tells its client the soonest any of them may answer (RetryInfo) and which
failed (its message, ErrorInfo metadata ``attempts``), not only the last one's error and delay.

Through the daemon, with the real SDKs against the fakes of tests/fakes."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_cli import run_cli
from test_hybrid import ALL_KEYS

from tests.fakes.openai import error_body as openai_error

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{assemblyai}", timeout: 20, poll_interval: 0.02}}
routes:
  - name: openai
    match: {{tags: [openai]}}
    use: openai/gpt-4o
  - name: claude
    match: {{tags: [claude]}}
    use: anthropic/claude-sonnet-4-6
  - name: gemini
    match: {{tags: [gemini]}}
    use: gemini/gemini-2.5-flash
  - name: three
    match: {{tags: [three]}}
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6, gemini/gemini-2.5-flash]
  - name: transcription
    match: {{inputs_any: [audio], task: [transcribe]}}
    use: assemblyai/best
    fallback: [openai/whisper-1]
  - name: two
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6]
default: openai/gpt-4o
"""

OPENAI_QUOTA = openai_error("You exceeded your current quota, please check your plan and billing details.",
                            "insufficient_quota", "insufficient_quota")
OPENAI_RATE_LIMIT = openai_error("Rate limit reached for gpt-4o", "requests", "rate_limit_exceeded")
CREDIT_TOO_LOW = "Your credit balance is too low to access the Anthropic API."
NO_BALANCE = "Your current account balance is negative. Please top up to continue using the API."
QUOTA = (grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_QUOTA_EXHAUSTED")


def google_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    """Google's error envelope, as the Gemini API answers."""
    return {"error": {"code": code, "status": status, "message": message, **({"details": details} if details else {})}}


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                                      gemini=fakes["gemini"].url, assemblyai=fakes["assemblyai"].url),
                        env=ALL_KEYS, plugins=())


def ask(tag: str = "") -> pb.MultimodalRequest:
    return text_request("hello", hints=pb.RoutingHints(tags=[tag] if tag else []))


def failure(daemon, request: pb.MultimodalRequest, stream: bool = False):
    """The details of the failed Generate (or StreamGenerate) of ``request``."""
    with pytest.raises(grpc.RpcError) as caught:
        if stream:
            list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    return error_details(caught.value)


# -- a spent quota or credit ----------------------------------------------------------------------------------


def test_a_spent_quota_is_failed_precondition_without_retry_info_and_listed_as_such(daemon, fakes) -> None:
    """OpenAI's 429 insufficient_quota (with a Retry-After), Anthropic's 402 billing_error and Gemini's 402 were
    RESOURCE_EXHAUSTED / UNAVAILABLE ("try again later"), and ListProviders called Anthropic's an outage."""
    fakes["openai"].fail_next(429, OPENAI_QUOTA, {"retry-after": "20"})
    fakes["anthropic"].fail_next_api(402, "billing_error", CREDIT_TOO_LOW)
    fakes["gemini"].fail_next(402, google_error(402, "RESOURCE_EXHAUSTED", "Your prepayment credits are depleted."))
    for provider, tag in [("openai", "openai"), ("anthropic", "claude"), ("gemini", "gemini")]:
        details = failure(daemon, ask(tag))
        assert (details.code, details.reason) == QUOTA, details
        assert details.retry_delay is None
        assert details.metadata["provider"] == provider
        assert "attempts" not in details.metadata  # one target: its error alone
    for provider, health in [(name, p.health) for name, p in providers_by_name(daemon.stub).items()
                             if name in ("openai", "anthropic", "gemini")]:
        assert health.last_failure_reason == "PROVIDER_QUOTA_EXHAUSTED", provider
        assert "quota or credit" in health.last_failure_message
        assert "rate-limited" not in health.last_failure_message and "overloaded" not in health.last_failure_message


def test_the_cli_does_not_say_try_again_later_for_a_spent_quota(daemon, fakes) -> None:
    """`mmrouter ask` exited 5 ("try again later") for OpenAI's insufficient_quota; `providers` described it
    as a rate limit."""
    fakes["openai"].fail_next(429, OPENAI_QUOTA)
    result = run_cli("ask", "hello", "--tag", "openai", "--address", daemon.address)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("FAILED_PRECONDITION: openai: HTTP 429"), result.stderr
    assert "PROVIDER_QUOTA_EXHAUSTED" in result.stderr.splitlines()[-1] and "retry in" not in result.stderr
    listed = run_cli("providers", "--address", daemon.address)
    assert listed.returncode == 0, listed.stderr
    assert "PROVIDER_QUOTA_EXHAUSTED: gpt-4o: HTTP 429: the account's quota or credit" in listed.stdout, listed.stdout


def test_a_spent_quota_falls_back_and_after_a_rate_limit_keeps_its_delay(daemon, fakes) -> None:
    """The next target is still tried after a spent quota. Spent quotas alone are no "try again", even with a
    Retry-After. OpenAI rate-limited (Retry-After 3), then Claude's credit spent: the call ended UNAVAILABLE
    about the 402, with OpenAI's 3 s as if Claude might answer then. OpenAI may answer in 3 s: the client is
    told that, and that Claude's credit is spent."""
    fakes["openai"].fail_next(429, OPENAI_QUOTA)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask()), timeout=60).answer
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("openai", False), ("anthropic", True)]
    assert any(note.startswith("openai/gpt-4o failed (PROVIDER_QUOTA_EXHAUSTED: ") for note in answer.route.notes)

    fakes["openai"].fail_next(429, OPENAI_QUOTA, {"retry-after": "3"})
    fakes["anthropic"].fail_next_api(402, "billing_error", CREDIT_TOO_LOW)
    both = failure(daemon, ask())
    assert (both.code, both.reason) == QUOTA and both.retry_delay is None
    assert both.message.startswith("every target failed (2 tried): anthropic: HTTP 402"), both.message

    # last: its Retry-After has later calls try OpenAI after Claude for 3 s
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": "3"})
    fakes["anthropic"].fail_next_api(402, "billing_error", CREDIT_TOO_LOW)
    details = failure(daemon, ask())
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert details.retry_delay == 3
    assert details.metadata["attempts"] == ("openai/gpt-4o PROVIDER_RATE_LIMITED; "
                                            "anthropic/claude-sonnet-4-6 PROVIDER_QUOTA_EXHAUSTED")
    assert CREDIT_TOO_LOW in details.message


def test_assemblyais_negative_balance_is_a_spent_quota_and_whisper_answers(daemon, fakes) -> None:
    """AssemblyAI refuses an account without funds with a 400 (its guide to common errors): that was
    PROVIDER_BAD_REQUEST, which ended the call without trying the rule's fallback."""
    request = text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0))],
                           options=pb.Options(task=pb.TASK_TRANSCRIBE))
    fakes["assemblyai"].fail_next(400, {"error": NO_BALANCE})
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("assemblyai", False), ("openai", True)]
    assert any(note.startswith("assemblyai/best failed (PROVIDER_QUOTA_EXHAUSTED: ") for note in answer.route.notes)
    fakes["assemblyai"].fail_next(402, {"error": NO_BALANCE})
    fakes["openai"].fail_next(429, OPENAI_QUOTA, path="/v1/audio/transcriptions")
    details = failure(daemon, request)
    assert (details.code, details.reason) == QUOTA and details.retry_delay is None


# -- every target failed: the soonest delay, and which failed -----------------------------------------------


def test_the_retry_delay_is_the_soonest_any_target_gave(daemon, fakes) -> None:
    """Both rate-limited: the client got the last target's delay (60 s when OpenAI would be back after 2)."""
    for openai_after, claude_after in [("2", "60"), ("60", "2")]:
        fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": openai_after})
        fakes["anthropic"].fail_next_api(429, "rate_limit_error", "tokens per minute exceeded",
                                         {"retry-after": claude_after})
        details = failure(daemon, ask())
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
        assert details.retry_delay == 2


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_call_whose_every_target_failed_says_which_and_when_the_first_may_answer(daemon, fakes, stream) -> None:
    """OpenAI 429 (retry-after-ms 1500), Claude 529, Gemini 429 with a RetryInfo of 20 s: the client got Gemini's
    error and 20 s alone, nothing saying the others failed too or that OpenAI is back in 1.5 s."""
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after-ms": "1500"})
    fakes["anthropic"].fail_next_api(529, "overloaded_error", "Overloaded")
    fakes["gemini"].fail_next(429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for requests per minute.", [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}]))
    details = failure(daemon, ask("three"), stream)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert details.retry_delay == 1.5
    assert details.message.startswith("every target failed (3 tried): gemini: HTTP 429"), details.message
    assert details.metadata["attempts"] == ("openai/gpt-4o PROVIDER_RATE_LIMITED; anthropic/claude-sonnet-4-6 "
                                            "PROVIDER_UNAVAILABLE; gemini/gemini-2.5-flash PROVIDER_RATE_LIMITED")
