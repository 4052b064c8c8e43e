"""Claude's 32 MB per request, known to routing (``ModelInfo.max_request_bytes``).

Claude refuses a request body over 32 MB, its media counted base64-encoded. The Anthropic plugin declares the
limit on its models, so routing passes Claude by for a document request that is surely larger (a 25 MB scan is
over 33 MB as sent), with the reason in ExplainRoute's trace, and the documents rule's fallback, Gemini, answers
without Claude being called; a session whose history makes the request larger ranks Claude as one that would drop
its oldest messages. A request under the limit still goes to Claude. The real daemon runs the embedded rules on
the cloud fakes, which the official SDKs call.
"""

from __future__ import annotations

from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import DOCUMENT, generate, upload
from test_size_fallback_s24 import CONTRACT, explain, target, tries

CLAUDE = "anthropic/claude-sonnet-4-6"
GEMINI = "gemini/gemini-2.5-pro"
#: The contract (a PDF of about 25 MB, :data:`test_size_fallback_s24.CONTRACT`) as sent, base64-encoded, in MiB.
AS_SENT = f"{4 * ((len(CONTRACT) + 2) // 3) / 2**20:.1f}"


def documents_reason(route: pb.RouteInfo) -> str:
    """Why the documents rule chose its target (ExplainRoute's trace)."""
    return next(entry.reason for entry in route.trace if entry.rule == "documents")


def test_a_document_request_over_claude_s_32_mb_goes_to_gemini_without_calling_claude(shared) -> None:
    """The documents rule names Claude first, but a 25 MB PDF is over its 32 MB per request once base64-encoded:
    ExplainRoute plans Gemini and says why Claude was skipped; Generate is answered by Gemini alone (no refused
    attempt, no route note of it) and Claude's API is never called. The session's follow-up, a question alone,
    would send the contract again with the history: Claude would drop it, so Gemini answers that too."""
    daemon, fakes = shared
    contract = upload(daemon, CONTRACT, pb.MODALITY_DOCUMENT, "application/pdf", "scanned-msa.pdf")
    request = text_request("Extract the indemnity clauses.", media=[contract], session_id="s25-contract")

    planned = explain(daemon, request)
    assert target(planned) == GEMINI, planned
    assert f"(skipped {CLAUDE}: input of ~{AS_SENT} MiB as sent (media base64-encoded) exceeds its request limit " \
           "of 32 MiB)" in documents_reason(planned), documents_reason(planned)

    answer = generate(daemon, request)
    assert tries(answer) == [(GEMINI, True)]
    assert not any(note.startswith(CLAUDE) for note in answer.route.notes), answer.route.notes
    assert fakes["anthropic"].message_calls() == []

    follow_up = text_request("What is the liability cap in that contract?", session_id="s25-contract")
    planned = explain(daemon, follow_up)
    assert target(planned) == GEMINI, planned
    assert f"{CLAUDE} would drop the session's oldest messages (~{AS_SENT} MiB as sent with the history, over its " \
           "request limit of 32 MiB)" in documents_reason(planned), documents_reason(planned)
    assert tries(generate(daemon, follow_up)) == [(GEMINI, True)]
    assert fakes["anthropic"].message_calls() == []


def test_a_document_request_under_the_limit_still_goes_to_claude(shared) -> None:
    """A small PDF is far under 32 MB: the documents rule's Claude plans and answers it, skipping nothing."""
    daemon, fakes = shared
    request = text_request("Summarise the report.", media=[DOCUMENT])

    planned = explain(daemon, request)
    assert target(planned) == CLAUDE, planned
    assert "skipped" not in documents_reason(planned), documents_reason(planned)

    answer = generate(daemon, request)
    assert tries(answer) == [(CLAUDE, True)]
    assert len(fakes["anthropic"].message_calls()) == 1
