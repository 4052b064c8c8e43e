"""An input too large for its targets, and an answer cut by the model's context window (QA report "migrate",
F1 and F5).

F1: an input the router found too large for every target it could go to (its estimated tokens over each
model's context, a PDF's pages or a media's bytes over each model's limit) was FAILED_PRECONDITION NO_ROUTE
with no ErrorInfo metadata: the reason of a misconfiguration, while the same input refused by the provider
is INVALID_ARGUMENT INPUT_TOO_LARGE. It is now INPUT_TOO_LARGE too, with what was measured against the
largest limit in the metadata, for Generate, ExplainRoute and an override alike; a request one of whose
targets was ruled out for another reason stays NO_ROUTE.

F5: Claude's stop_reason ``model_context_window_exceeded`` was reported with the route note "the answer was cut
at ...'s output limit (max_output_tokens)" and `mmrouter ask`'s advice to ask again with a larger --max-tokens,
which cannot help; nor can it when max_output_tokens is already the model's most.

Through the daemon, with the real SDKs against the fakes of tests/fakes."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import paged_pdf
from mmrouter.v1 import router_pb2 as pb
from mmrouter_openai.models import MAX_FILE_BYTES
from test_cli import run_cli
from test_hybrid import ALL_KEYS, TRANSCRIBE, big_wav, upload

from router.types import NO_LARGER_LIMIT
from tests.fakes.openai import error_body as openai_error

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
routes:
  - name: gpt
    match: {{tags: [gpt]}}
    use: openai/gpt-4o
  - name: claude
    match: {{tags: [claude]}}
    use: anthropic/claude-sonnet-4-6
default: openai/gpt-4o
"""

#: ~175,000 tokens by the router's estimate (4 characters a token), over gpt-4o's context of 128,000.
LONG_TEXT = "word " * 140_000
TOO_LARGE = (grpc.StatusCode.INVALID_ARGUMENT, "INPUT_TOO_LARGE")
NO_ROUTE = (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")


@pytest.fixture
def daemon(start_daemon, upstreams):
    openai, anthropic = upstreams
    return start_daemon(CONFIG.format(openai=openai.base_url, anthropic=anthropic.url), env=ALL_KEYS, plugins=())


def refusal(call, request: pb.MultimodalRequest):
    """The details of ``call`` (one of :func:`calls`) failing on ``request``."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return error_details(caught.value)


def calls(daemon) -> list:
    """Generate, StreamGenerate (read to its end) and ExplainRoute of ``daemon``, each taking a request."""
    stub = daemon.stub
    return [lambda request: stub.Generate(pb.GenerateRequest(request=request), timeout=60),
            lambda request: list(stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60)),
            lambda request: stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60)]


# -- F1: too large for every target, by the router's estimate -----------------------------------------------------


def test_a_prompt_over_every_targets_context_is_input_too_large_with_the_sizes(daemon, upstreams) -> None:
    """The rule's target and the default (both gpt-4o) cannot hold ~175k tokens: INPUT_TOO_LARGE, as when
    OpenAI refuses it (context_length_exceeded), with the estimate and the context as metadata; alike through
    an override of the provider and model, or of the provider alone (its transcribers are no candidates)."""
    openai, _ = upstreams
    hints = [pb.RoutingHints(tags=["gpt"]), pb.RoutingHints(provider="openai", model="gpt-4o"),
             pb.RoutingHints(provider="openai")]
    for hint in hints:
        for call in calls(daemon):
            details = refusal(call, text_request(LONG_TEXT, hints=hint))
            assert (details.code, details.reason) == TOO_LARGE, (hint, details)
            assert details.metadata == {"estimated_tokens": "175000", "context_tokens": "128000"}, details
            assert "by the router's estimate (no provider was called)" in details.message, details.message
            assert "openai/gpt-4o: input of ~175000 tokens exceeds its context of 128000" in details.message
            assert details.violations == []
    assert openai.requests == [], "nothing was sent to OpenAI"

    # the same size, refused by OpenAI itself: the same code and reason
    openai.fail_next(400, openai_error("This model's maximum context length is 128000 tokens.",
                                       "invalid_request_error", "context_length_exceeded"))
    generate = calls(daemon)[0]
    provider = refusal(generate, text_request("word " * 90_000, hints=pb.RoutingHints(tags=["gpt"])))
    assert (provider.code, provider.reason) == TOO_LARGE


def test_a_pdf_over_claudes_pages_is_input_too_large_unless_another_target_is_unusable(daemon, upstreams) -> None:
    """A 700-page PDF for Claude Sonnet (600 pages a PDF) through an override: INPUT_TOO_LARGE with the pages.
    Through the rules, the default (gpt-4o, which takes no PDF and has no bridge for it) is ruled out for
    another reason: NO_ROUTE, as before."""
    _, anthropic = upstreams
    report = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=paged_pdf(700, "Annual"),
                      filename="annual.pdf")
    claude = pb.RoutingHints(provider="anthropic", model="claude-sonnet-4-6")
    for call in calls(daemon):
        details = refusal(call, text_request("Summarise", media=[report], hints=claude))
        assert (details.code, details.reason) == TOO_LARGE, details
        assert details.metadata == {"pdf_pages": "700", "max_document_pages": "600"}, details
        assert "anthropic/claude-sonnet-4-6: 700 PDF pages is more than its 600 per PDF" in details.message

        mixed = refusal(call, text_request("Summarise", media=[report], hints=pb.RoutingHints(tags=["claude"])))
        assert (mixed.code, mixed.reason) == NO_ROUTE, mixed
        assert mixed.metadata == {}
        assert "700 PDF pages is more than its 600 per PDF" in mixed.message
        assert "openai/gpt-4o: does not take document" in mixed.message, mixed.message
    assert anthropic.requests == [], "nothing was sent to Anthropic"


def test_audio_over_whispers_upload_limit_is_input_too_large_with_the_bytes(daemon, upstreams) -> None:
    """A 26 MiB recording for whisper-1 (25 MiB a file): INPUT_TOO_LARGE with the bytes and the limit."""
    openai, _ = upstreams
    data = big_wav(26 * 1024 * 1024)
    size = len(data)
    audio = upload(daemon, data, pb.MODALITY_AUDIO, "audio/wav", "all-hands.wav")
    request = text_request("", media=[audio], options=TRANSCRIBE,
                           hints=pb.RoutingHints(provider="openai", model="whisper-1"))
    details = refusal(calls(daemon)[0], request)
    assert (details.code, details.reason) == TOO_LARGE, details
    assert details.metadata == {"media_bytes": str(size), "max_media_bytes": str(MAX_FILE_BYTES)}, details
    assert "openai/whisper-1: 26 MiB of audio is larger than its 25 MiB per file" in details.message
    assert openai.requests == [], "nothing was uploaded to OpenAI"


# -- F5: an answer cut by the context window, or at the model's most ------------------------------------------------


def cut_answer(daemon, max_tokens: int, stream: bool = False) -> pb.Answer:
    """Claude's answer to a short question, asked with ``max_tokens`` (Generate, or StreamGenerate's Done)."""
    request = text_request("hi", hints=pb.RoutingHints(tags=["claude"]),
                           options=pb.Options(max_output_tokens=max_tokens))
    if stream:
        events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))
        return events[-1].done.answer
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def cut_notes(answer: pb.Answer) -> list[str]:
    return [note for note in answer.route.notes if note.startswith("the answer was cut")]


def test_an_answer_cut_by_the_context_window_says_so_not_the_output_limit(daemon, upstreams) -> None:
    """stop_reason model_context_window_exceeded: still FINISH_REASON_LENGTH, but the note names the context
    window and says a larger max_output_tokens will not help; `mmrouter ask` does not advise --max-tokens."""
    _, anthropic = upstreams
    anthropic.stop_reason = "model_context_window_exceeded"
    for max_tokens in (128_000, 1000):
        for stream in (False, True):
            answer = cut_answer(daemon, max_tokens, stream)
            assert answer.finish_reason == pb.FINISH_REASON_LENGTH
            assert cut_notes(answer) == [
                "the answer was cut when anthropic/claude-sonnet-4-6's context window filled (the prompt and the "
                f"answer); {NO_LARGER_LIMIT}: shorten the conversation"], answer.route.notes
    result = run_cli("ask", "hi", "--tag", "claude", "--max-tokens", "1000", "--address", daemon.address)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "context window filled" in said and "ask again with a larger --max-tokens" not in said, said


def test_an_answer_cut_at_the_models_most_tokens_does_not_advise_raising_it(daemon, upstreams) -> None:
    """stop_reason max_tokens with max_output_tokens at Claude Sonnet 4.6's most (128,000): the note says so;
    below it, the note is the output limit's as before, and `mmrouter ask` still advises --max-tokens."""
    _, anthropic = upstreams
    anthropic.stop_reason = "max_tokens"
    at_most = cut_answer(daemon, 128_000)
    assert at_most.finish_reason == pb.FINISH_REASON_LENGTH
    assert cut_notes(at_most) == [
        "the answer was cut at anthropic/claude-sonnet-4-6's output limit (max_output_tokens 128000, the most it "
        f"writes); {NO_LARGER_LIMIT}: ask for a shorter answer, or for the rest in a follow-up turn"]
    below = cut_answer(daemon, 1000)
    assert cut_notes(below) == ["the answer was cut at anthropic/claude-sonnet-4-6's output limit (max_output_tokens)"]

    most = " ".join(run_cli("ask", "hi", "--tag", "claude", "--max-tokens", "128000", "--address",
                            daemon.address).stderr.split())
    assert "the most it writes" in most and "ask again with a larger --max-tokens" not in most, most
    raisable = " ".join(run_cli("ask", "hi", "--tag", "claude", "--max-tokens", "1000", "--address",
                                daemon.address).stderr.split())
    assert "ask again with a larger --max-tokens" in raisable, raisable
