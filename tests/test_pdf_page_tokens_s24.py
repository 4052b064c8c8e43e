"""A model's own tokens per PDF page (QA report "legal", finding 1): a session's follow-ups lost a 650-1000-page
contract. Turn 1's PDF, over Claude's 600 pages, went whole to Gemini (the turn is checked at 258 tokens a page,
what Gemini counts), but on every later turn the history was counted at the router's 1,500 a page (1.05M tokens
for 700 pages) and trimmed "to fit Gemini's context": Gemini got the new question without the contract. Likewise
a 400-page MSA then a 300-page amendment: Claude was asked to compare them without the MSA.

A model now declares its rate (``ModelInfo.pdf_page_tokens``; the gemini plugin 258, as Google documents), and
both the check whether a target holds the whole conversation and the history trimming for it count its PDFs at
that rate, in ExplainRoute as in Generate. Through the daemon on the embedded ``documents`` rule (Claude, then
Gemini, then local/extract), with the real SDKs against the fakes of tests/fakes/.
"""

from __future__ import annotations

import base64

from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_gemini import GeminiProvider
from test_page_limits_s20 import GEMINI_KEY, daemon_for, many_pages, servers  # noqa: F401 (a fixture)

from router.routing import TOKENS_PER_PDF_PAGE, estimate_tokens, pdf_page_tokens
from router.types import Media, Message, Modality, ModelInfo, Part, Role
from tests.fakes.gemini import FakeGemini


def test_gemini_models_count_258_tokens_a_pdf_page_and_others_the_router_s_estimate() -> None:
    models = GeminiProvider.from_settings({"api_key": GEMINI_KEY, "models": [
        {"name": "gemini-3-pro", "price": {"input_per_mtok": 2, "output_per_mtok": 12}}]}).models
    assert {m.name: pdf_page_tokens(m) for m in models} == {
        "gemini-2.5-pro": 258, "gemini-2.5-flash": 258, "gemini-2.5-flash-lite": 258, "gemini-3-pro": 258}
    other = ModelInfo("m", frozenset({Modality.TEXT, Modality.DOCUMENT}))
    assert pdf_page_tokens(other) == pdf_page_tokens(None) == TOKENS_PER_PDF_PAGE
    contract = [Message(Role.USER, [Part(media=Media(Modality.DOCUMENT, "application/pdf", pages=700))])]
    assert estimate_tokens(contract, model=models[0]) == 700 * 258
    assert estimate_tokens(contract, model=other) == estimate_tokens(contract) == 700 * TOKENS_PER_PDF_PAGE


def pdf_turn(data: bytes, name: str, question: str, session: str) -> pb.MultimodalRequest:
    document = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=data, filename=name)
    return text_request(question, media=[document], session_id=session)


def sent_pdfs(gemini: FakeGemini) -> list[bytes]:
    """The PDFs of the last request Gemini got, in order (inline: these PDFs are under its inline limit)."""
    body = (gemini.calls("generate") + gemini.calls("stream"))[-1].json()
    return [base64.urlsafe_b64decode(part["inlineData"]["data"]) for content in body["contents"]
            for part in content["parts"] if part.get("inlineData", {}).get("mime_type") == "application/pdf"]


def trimmed(route: pb.Route) -> list[str]:
    return [note for note in route.notes if "trimmed" in note or "drop" in note]


def follow_up(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    """ExplainRoute then Generate of ``request``: both plan Gemini, keeping the whole history."""
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route
    assert (explained.provider, explained.model, trimmed(explained)) == ("gemini", "gemini-2.5-pro", []), explained
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert (answer.route.provider, answer.route.model, trimmed(answer.route)) == ("gemini", "gemini-2.5-pro", [])
    return answer


def test_a_700_page_contract_gemini_took_whole_stays_in_its_follow_ups(start_daemon, servers) -> None:  # noqa: F811
    anthropic, gemini = servers
    daemon = daemon_for(start_daemon, anthropic, gemini)
    contract = many_pages(700)
    first = daemon.stub.Generate(pb.GenerateRequest(request=pdf_turn(
        contract, "msa.pdf", "Extract the indemnity clauses", "g")), timeout=60).answer
    assert (first.route.provider, first.route.model) == ("gemini", "gemini-2.5-pro")  # over Claude's 600 pages
    assert sent_pdfs(gemini) == [contract]

    for question in ("What is the liability cap?", "And the governing law?"):
        follow_up(daemon, text_request(question, session_id="g"))
        assert sent_pdfs(gemini) == [contract], "the contract is in the history Gemini gets"
    assert anthropic.message_calls() == []


def test_a_second_pdf_that_adds_up_past_claude_goes_to_gemini_with_both(start_daemon, servers) -> None:  # noqa: F811
    """400 pages then 300: Claude counts 1,050,000 tokens and would drop the MSA; Gemini holds both (180,600)."""
    anthropic, gemini = servers
    daemon = daemon_for(start_daemon, anthropic, gemini)
    msa, amendment = many_pages(400), many_pages(300)
    first = daemon.stub.Generate(pb.GenerateRequest(request=pdf_turn(
        msa, "msa.pdf", "Extract the indemnity clauses", "m")), timeout=60).answer
    assert first.route.provider == "anthropic"

    answer = follow_up(daemon, pdf_turn(amendment, "amendment.pdf", "Compare the amendment with the MSA", "m"))
    assert sent_pdfs(gemini) == [msa, amendment]
    assert len(anthropic.message_calls()) == 1, "Claude answered turn 1 only"
    assert any("anthropic/claude-sonnet-4-6 would drop the session's oldest messages" in t.reason
               for t in answer.route.trace), list(answer.route.trace)
