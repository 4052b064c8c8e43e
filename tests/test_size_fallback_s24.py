"""A session whose contract Claude refuses for its size (QA legal, findings 2 and 3).

A PDF of 25 MB is over Claude's 32 MB per request once base64-encoded: Claude declares the limit
(``ModelInfo.max_request_bytes``), so routing passes it by and the documents rule's fallback, Gemini, answers
(``test_request_bytes_s25``). The session's follow-ups must keep the contract: they go to Gemini, which holds the
whole conversation, rather than to Claude with the contract dropped, also after a restart; dropping the history
stays the last resort when no other target can take it: Claude, sent the whole history, refuses it before
sending (the plugin's own check) and is tried again with less. The real daemon runs the embedded rules on the
cloud fakes (``test_hybrid``), which the official SDKs call.
"""

from __future__ import annotations

import io

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import pdf
from mmrouter.v1 import router_pb2 as pb
from pypdf import PdfReader, PdfWriter
from test_hybrid import ALL_KEYS, config_for, generate, upload

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY

SESSION = "big"
MB = 1024 * 1024
#: Claude's limit per request, as the plugin counts it (its media base64-encoded).
MAX_REQUEST_BYTES = 32 * MB


def big_contract() -> bytes:
    """A well-formed 2-page PDF of about 25 MB (an attached scan): over 32 MB as base64, not as a file."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(["Master services agreement", "Liability cap: 1M"]))))
    writer.add_attachment("scan.bin", bytes(25 * MB))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


CONTRACT = big_contract()


def contract(daemon) -> pb.Media:  # type: ignore[no-untyped-def]
    """The contract, uploaded to ``daemon`` (it is over the inline limit)."""
    return upload(daemon, CONTRACT, pb.MODALITY_DOCUMENT, "application/pdf", "scanned-msa.pdf")


def ask(text: str, *media: pb.Media, session: str = SESSION) -> pb.MultimodalRequest:
    return text_request(text, media=list(media), session_id=session)


def explain(daemon, request: pb.MultimodalRequest) -> pb.RouteInfo:  # type: ignore[no-untyped-def]
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route


def target(route: pb.RouteInfo) -> str:
    return f"{route.provider}/{route.model}"


def tries(answer: pb.Answer) -> list[tuple[str, bool]]:
    return [(f"{a.provider}/{a.model}", a.ok) for a in answer.route.attempts]


def gemini_received(fakes) -> list[tuple[str, list[str]]]:  # type: ignore[no-untyped-def]
    """The roles of the last Gemini call's contents, each with its kinds of parts (``fileData``, ``text``)."""
    calls = fakes["gemini"].calls("stream") + fakes["gemini"].calls("generate")
    contents = calls[-1].json()["contents"]
    return [(c["role"], [k for part in c["parts"] for k in part if k in ("text", "fileData", "inlineData")])
            for c in contents]


def first_turn(daemon, fakes, session: str = SESSION) -> None:  # type: ignore[no-untyped-def]
    """Turn 1 of ``session``: routing passes Claude by for the contract's size; Gemini answers."""
    answer = generate(daemon, ask("Extract the indemnity clauses.", contract(daemon), session=session))
    assert target(answer.route) == "gemini/gemini-2.5-pro"
    assert tries(answer) == [("gemini/gemini-2.5-pro", True)]
    assert fakes["anthropic"].message_calls() == []


WHOLE = [("user", ["fileData", "text"]), ("model", ["text"]), ("user", ["text"])]


def test_a_follow_up_on_a_contract_claude_refused_goes_to_gemini_with_it(start_daemon, fakes) -> None:
    """QA legal finding 2: turn 2 went back to Claude, which refused again and answered with the contract
    dropped. The history is over Claude's request limit: ExplainRoute plans Gemini for the follow-up, saying
    why, and Gemini answers it with the contract; Claude is never sent anything."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    first_turn(daemon, fakes)
    follow_up = ask("What is the liability cap in that contract?")

    planned = explain(daemon, follow_up)
    assert target(planned) == "gemini/gemini-2.5-pro", planned
    reason = next(t.reason for t in planned.trace if t.rule == "documents")
    assert "anthropic/claude-sonnet-4-6 would drop the session's oldest messages (~33.3 MiB as sent with the " \
           "history, over its request limit of 32 MiB)" in reason, reason
    assert not any(note.startswith("history") for note in planned.notes), planned.notes

    answer = generate(daemon, follow_up)
    assert tries(answer) == [("gemini/gemini-2.5-pro", True)]
    assert not any(note.startswith("history") for note in answer.route.notes), answer.route.notes
    assert gemini_received(fakes) == WHOLE
    assert fakes["anthropic"].message_calls() == []


def test_after_a_restart_claude_refuses_and_gemini_answers_with_the_contract(start_daemon, fakes) -> None:
    """QA legal s7c: after a restart the router still knows that Claude would refuse the sessions (their history
    is over its request limit): a follow-up is answered by Gemini with the contract (not by Claude with the
    contract dropped), and so is the session's next turn. The last resort stays: in a second session, with
    Gemini failing (HTTP 500), Claude is sent the whole history, refuses it before sending, and answers the
    follow-up without the contract, as before, and the route says so; local/extract (which reads no history)
    comes after it."""
    config = config_for(fakes)
    daemon = start_daemon(config, env=ALL_KEYS, plugins=())
    first_turn(daemon, fakes, "big")
    first_turn(daemon, fakes, "failing")
    daemon.stop()
    daemon = start_daemon(config, env=ALL_KEYS, plugins=())

    answer = generate(daemon, ask("What is the liability cap in that contract?"))
    assert tries(answer) == [("gemini/gemini-2.5-pro", True)]
    assert not any(note.startswith(("history", "anthropic")) for note in answer.route.notes), answer.route.notes
    assert gemini_received(fakes) == WHOLE
    assert fakes["anthropic"].message_calls() == []

    after = generate(daemon, ask("And the governing law?"))
    assert tries(after) == [("gemini/gemini-2.5-pro", True)]
    assert len(gemini_received(fakes)) == 5

    fakes["gemini"].fail_next(500, {"error": {"code": 500, "status": "INTERNAL", "message": "Internal error."}})
    answer = generate(daemon, ask("What is the liability cap in that contract?", session="failing"))
    assert tries(answer) == [("gemini/gemini-2.5-pro", False), ("anthropic/claude-sonnet-4-6", False),
                             ("anthropic/claude-sonnet-4-6", True)]
    assert target(answer.route) == "anthropic/claude-sonnet-4-6" and list(answer.route.fallbacks) == ["local/extract"]
    [note] = [note for note in answer.route.notes if note.startswith("history")]
    assert note.startswith("history trimmed: dropped the 2 oldest message(s) of session 'failing' because "
                           "anthropic/claude-sonnet-4-6 refused the request for its size (anthropic: the request is "
                           "at least "), note
    assert [m["role"] for m in fakes["anthropic"].last_body()["messages"]] == ["user"]


CLAUDE_ONLY = """
providers:
  anthropic: {{api_key: "${{ANTHROPIC_TEST_KEY}}", base_url: "{url}", timeout: 20}}
default: anthropic/claude-sonnet-4-6
"""


def test_the_refusal_says_the_size_is_base64_and_gives_it_as_metadata(start_daemon, fakes) -> None:
    """QA legal finding 3: a 25 MB file was reported as "at least 34,9.. bytes" with no word of base64 and no
    metadata. Routing refuses it before calling Claude (its only target): the message says the media are counted
    base64-encoded, and ErrorInfo metadata gives ``request_bytes`` (the media as sent and the text) and
    ``max_request_bytes``. (The plugin's own refusal, of a history, says the same: see the test above.)"""
    daemon = start_daemon(CLAUDE_ONLY.format(url=fakes["anthropic"].url), env={"ANTHROPIC_TEST_KEY": ANTHROPIC_KEY},
                          plugins=())
    with pytest.raises(grpc.RpcError) as info:
        generate(daemon, text_request("Extract the clauses.", media=[contract(daemon)]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(info.value)
    assert details.reason == "INPUT_TOO_LARGE"
    encoded = 4 * ((len(CONTRACT) + 2) // 3)
    assert "(no provider was called): default: anthropic/claude-sonnet-4-6: input of ~33.3 MiB as sent (media " \
           "base64-encoded) exceeds its request limit of 32 MiB" in info.value.details(), info.value.details()
    assert {key: details.metadata[key] for key in ("request_bytes", "max_request_bytes")} == {
        "request_bytes": str(encoded + len("Extract the clauses.")), "max_request_bytes": str(MAX_REQUEST_BYTES)}, \
        details.metadata
    assert fakes["anthropic"].message_calls() == []
