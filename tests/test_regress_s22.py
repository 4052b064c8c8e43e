"""Regressions of the cool-downs, the ``attempts`` metadata and local's banner (review regress22).

- A target moved last for its cool-down is still tried when a target the rule puts after it refuses the request
  (a 400): the call no longer ends INVALID_ARGUMENT without asking the model that would have been first; a
  refusal by a target the rule puts first still ends the call.
- A failed call's cool-down is learnt as the failure is caught, not when the fallback sends its first event:
  a call made while a slow fallback answers goes to that fallback first.
- ErrorInfo ``attempts`` names the provider calls that failed: a bridge's under the bridge's target, never
  the answering targets it bridged for, which were not called.
- A text ``local/extract`` bridged before this version (kept with local's banner for people, "[Extracted by
  local provider — no language model was used]") reaches the answering model without it.

Through the daemon, with the real SDKs against the fakes of tests/fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from media_factory import pdf, wav
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS
from test_quota_errors_s22 import OPENAI_RATE_LIMIT, ask, failure, google_error

from router.bridging import media_prefix
from router.sessions import SessionStore, StoredBridges
from router.types import Media, Modality, Request
from tests.fakes.openai import API_KEY, FakeOpenAI
from tests.fakes.openai import error_body as openai_error

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
routes:
  - name: three
    match: {{tags: [three]}}
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6, gemini/gemini-2.5-flash]
  - name: heard
    match: {{tags: [heard]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [openai/gpt-4o]
  - name: two
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6]
bridges:
  audio: [openai/whisper-1]
"""

REFUSED = "messages.0: some field Claude does not take"
OVERLOADED = openai_error("The server is overloaded", "server_error")


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                                      gemini=fakes["gemini"].url), env=ALL_KEYS, plugins=())


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def attempts(answer: pb.Answer) -> list[tuple[str, bool]]:
    return [(attempt.provider, attempt.ok) for attempt in answer.route.attempts]


def cool_openai(fakes, daemon) -> None:
    """OpenAI answers 429 with a Retry-After of 30 s and Claude answers: gpt-4o cools down."""
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": "30"})
    assert attempts(generate(daemon, ask())) == [("openai", False), ("anthropic", True)]


# -- a refusal while a target cools down ------------------------------------------------------------------


def test_a_refusal_by_the_fallback_tried_first_still_tries_the_cooling_target(daemon, fakes) -> None:
    """gpt-4o cooling, Claude (tried first) answered 400: the call ended INVALID_ARGUMENT and OpenAI, first in
    the rule, got no request."""
    cool_openai(fakes, daemon)
    fakes["anthropic"].fail_next_api(400, "invalid_request_error", REFUSED)
    answer = generate(daemon, ask())
    assert attempts(answer) == [("anthropic", False), ("openai", True)]
    assert any(note.startswith("anthropic/claude-sonnet-4-6 failed (PROVIDER_BAD_REQUEST: ")
               and note.endswith("trying openai/gpt-4o, which the rule puts before it (tried last for its cool-down)")
               for note in answer.route.notes), list(answer.route.notes)

    # its success ended the cool-down; cooling again, then rate-limited again after Claude's refusal: the client
    # is told to retry (the rule's first target may answer then), as without a cool-down
    cool_openai(fakes, daemon)
    fakes["anthropic"].fail_next_api(400, "invalid_request_error", REFUSED)
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": "20"})
    details = failure(daemon, ask())
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert details.retry_delay == 20
    assert details.message.startswith("every target failed (2 tried): openai: HTTP 429"), details.message
    assert details.metadata["attempts"] == ("anthropic/claude-sonnet-4-6 PROVIDER_BAD_REQUEST; "
                                            "openai/gpt-4o PROVIDER_RATE_LIMITED")


def test_only_a_target_the_rule_puts_before_the_refusing_one_is_tried_after_its_refusal(daemon, fakes) -> None:
    """Rule gpt-4o, Claude, Gemini with Claude cooling: gpt-4o, Gemini, Claude. A refusal by gpt-4o ends the call
    (Claude comes after it in the rule); one by Gemini tries Claude."""
    fakes["openai"].fail_next(503, OVERLOADED)  # no Retry-After: no cool-down
    fakes["anthropic"].fail_next_api(429, "rate_limit_error", "tokens per minute exceeded", {"retry-after": "30"})
    assert attempts(generate(daemon, ask("three"))) == [("openai", False), ("anthropic", False), ("gemini", True)]
    claude_calls = len(fakes["anthropic"].message_calls())

    fakes["openai"].fail_next(400, openai_error("Invalid 'messages[0]'", "invalid_request_error"))
    details = failure(daemon, ask("three"))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
    assert len(fakes["anthropic"].message_calls()) == claude_calls

    fakes["openai"].fail_next(503, OVERLOADED)
    fakes["gemini"].fail_next(400, google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    answer = generate(daemon, ask("three"))
    assert attempts(answer) == [("openai", False), ("gemini", False), ("anthropic", True)]


# -- the cool-down reaches other calls as the failure is caught -------------------------------------------


def test_a_call_made_while_a_slow_fallback_answers_goes_to_that_fallback_first(daemon, fakes) -> None:
    """The cool-down was recorded when the fallback sent its first event: meanwhile every call sent the
    throttled provider another request."""
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": "30"})
    release = fakes["anthropic"].hold_next()
    first = daemon.stub.Generate.future(pb.GenerateRequest(request=ask()), timeout=60)
    try:
        assert wait_for(lambda: fakes["anthropic"].message_calls(), timeout=30), "Claude was not called"
        openai_calls = len(fakes["openai"].chat_requests())
        second = generate(daemon, ask())  # while the first call's fallback still answers
        assert attempts(second) == [("anthropic", True)]
        assert len(fakes["openai"].chat_requests()) == openai_calls
    finally:
        release.set()
    assert attempts(first.result().answer) == [("openai", False), ("anthropic", True)]


# -- attempts names the calls that failed ------------------------------------------------------------------


def test_attempts_names_the_bridge_that_failed_not_the_targets_it_bridged_for(daemon, fakes) -> None:
    """Whisper (bridging the audio for both targets) answered 429: attempts said Claude and gpt-4o were
    rate-limited, though neither was called."""
    fakes["openai"].fail_next(429, OPENAI_RATE_LIMIT, {"retry-after": "20"}, path="/v1/audio/transcriptions")
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="call.wav", data=wav(0.5))
    details = failure(daemon, text_request("Summarise the call.", media=[clip],
                                           hints=pb.RoutingHints(tags=["heard"])))
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert details.retry_delay == 20
    assert details.message.startswith(
        "every target failed (2 planned, none called: the bridge openai/whisper-1 failed for "
        "anthropic/claude-sonnet-4-6, openai/gpt-4o): openai: bridging call.wav: HTTP 429"), details.message
    assert details.metadata["attempts"] == "openai/whisper-1 PROVIDER_RATE_LIMITED"
    assert not fakes["anthropic"].message_calls() and not fakes["openai"].chat_requests()


# -- a text bridged by local before this version ----------------------------------------------------------

LOCAL = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{url}", timeout: 20}}
  local: {{}}
default: openai/gpt-4o
bridges:
  document: [local/extract]
"""

#: The line local's texts began with before this version, a blank line after it (plugins/local at f4b841b).
OLD_BANNER = "[Extracted by local provider — no language model was used]"


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def prompt(fake: FakeOpenAI) -> str:
    """The text parts of every message of the last chat request, one a line."""
    return "\n".join(p.text for m in fake.chat_requests()[-1]["messages"] for p in fake.parts(m) if p.kind == "text")


def add_old_banner(data_dir, keys: list[tuple[Media, Request]]) -> None:
    """Give the texts kept of each media (named in its request) the banner local wrote before this version,
    as the store keeps them: the banner, a blank line, the text."""
    memo = StoredBridges(store := SessionStore(data_dir / "sessions.sqlite"))

    async def rewrite() -> None:
        for media, request in keys:
            prefix = media_prefix(media, request)
            assert prefix is not None
            found = await memo.recall_any(prefix, False)
            assert found is not None, f"nothing kept of {media}"
            key, text, transcript = found
            assert not text.startswith(OLD_BANNER)
            memo.remember(key, f"{OLD_BANNER}\n\n{text}", transcript)
        assert (await memo.recall(key))[0].startswith(OLD_BANNER + "\n\n")

    try:
        asyncio.run(rewrite())
    finally:
        store.close()


def test_a_text_local_bridged_before_this_version_reaches_the_model_without_its_banner(
        start_daemon, openai, tmp_path) -> None:
    """Texts kept by the previous version (an upload asked about by id, a session's document) were reused with
    the banner, telling the answering model on every turn that no language model was used."""
    data_dir = tmp_path / "kept"

    def start():
        return start_daemon(LOCAL.format(url=openai.base_url), env={"OPENAI_API_KEY": API_KEY}, plugins=(),
                            data_dir=data_dir)

    report = pdf(["Quarterly revenue rose 12%"])
    minutes = pdf(["The board approved the budget"])
    daemon = start()
    metadata = pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf",
                                 filename="report.pdf", size_bytes=len(report))
    media_id = daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(metadata=metadata),
                                             pb.UploadMediaRequest(chunk=report)]), timeout=60).media_id
    uploaded = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", media_id=media_id,
                        filename="report.pdf")
    inline = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="minutes.pdf",
                      data=minutes)
    for request in (text_request("What changed?", media=[uploaded]),
                    text_request("What was decided?", media=[inline], session_id="board")):
        assert list(generate(daemon, request).route.bridges) == ["document->text via local/extract"]
    daemon.stop()
    add_old_banner(data_dir, [
        (Media(Modality.DOCUMENT, "application/pdf", media_id=media_id), Request([])),
        (Media(Modality.DOCUMENT, "application/pdf", data=minutes), Request([], session_id="board"))])

    daemon = start()
    answer = generate(daemon, text_request("What changed?", media=[uploaded]))
    assert [s.purpose for s in answer.route.steps] == ["answer"]  # the kept text, not local again
    sent = prompt(openai)
    assert "[Document text] report.pdf\n[PDF report.pdf, page 1]\nQuarterly revenue rose 12%" in sent, sent
    assert "no language model was used" not in sent, sent

    answer = generate(daemon, text_request("And who approved it?", session_id="board"))  # the history's document
    assert [s.purpose for s in answer.route.steps] == ["answer"]
    sent = prompt(openai)
    assert "[Document text] minutes.pdf\n[PDF minutes.pdf, page 1]\nThe board approved the budget" in sent, sent
    assert "no language model was used" not in sent, sent

