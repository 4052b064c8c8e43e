"""A model's PDF page limit, known to routing (QA report "pdfdocs", section 4): ExplainRoute named Claude for a
700-page PDF that the anthropic plugin always refuses (600 pages for Sonnet, 100 for Haiku), and Generate then
answered from Gemini. A model declares the most pages of one PDF it reads (``ModelInfo.max_document_pages``):
the anthropic plugin from Claude's limits, the gemini plugin from its ``max_document_pages`` setting; routing
passes a model by for a PDF with more pages, with the reason in the trace, and plans the next target.

Pure routing first, then the plugins' declared limits, then through a daemon with the real SDKs against the
fakes of tests/fakes/ (the embedded ``documents`` rule: Claude, then Gemini, then local/extract).
"""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from media_factory import paged_pdf
from mmrouter.v1 import router_pb2 as pb
from mmrouter_anthropic import AnthropicProvider
from mmrouter_gemini import GeminiProvider

from router.config import Match, Rule
from router.errors import NoRoute
from router.routing import Bridge, Decision, ProviderStatus, Router, Target, facts_of
from router.types import (
    FEATURE_EXTRACTION_ONLY,
    Media,
    Message,
    Modality,
    ModelInfo,
    Options,
    Part,
    Request,
    Role,
    Task,
)
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini

DOC, TEXT = Modality.DOCUMENT, Modality.TEXT
GEMINI_KEY = "AIza-page-limits-s20-0123456789"

#: The models as their plugins declare them (the limits only; the rest is routing's defaults).
SONNET = ModelInfo("claude-sonnet-4-6", inputs=frozenset({TEXT, Modality.IMAGE, DOC}), context_tokens=1_000_000,
                   max_document_pages=600)
GEMINI = ModelInfo("gemini-2.5-pro", inputs=frozenset(Modality), context_tokens=1_048_576, max_document_pages=1000)
EXTRACT = ModelInfo("extract", inputs=frozenset(Modality), features=frozenset({FEATURE_EXTRACTION_ONLY}))
CATALOG = {
    "anthropic": ProviderStatus(True, "", {SONNET.name: SONNET}),
    "gemini": ProviderStatus(True, "", {GEMINI.name: GEMINI}),
    "local": ProviderStatus(True, "", {EXTRACT.name: EXTRACT}),
}
DOCUMENTS = Rule(name="documents", match=Match(inputs_any=[DOC]), use="anthropic/claude-sonnet-4-6",
                 fallback=["gemini/gemini-2.5-pro", "local/extract"])


def pdf_part(pages: int | None) -> Part:
    """A PDF of ``pages`` pages as the router measured it (None: it could not count them)."""
    return Part(media=Media(DOC, "application/pdf", data=b"%PDF-1.7", filename="report.pdf", pages=pages))


def ask(*pdfs: Part) -> Request:
    return Request(messages=[Message(Role.USER, [Part(text="Summarise"), *pdfs])], options=Options(task=Task.CHAT))


def decide(*pdfs: Part, router: Router | None = None, catalog=None) -> Decision:
    router = router or Router(rules=[DOCUMENTS])
    return router.decide(facts_of(ask(*pdfs)), catalog or CATALOG)


def planned(decision: Decision) -> list[str]:
    return [str(plan.target) for plan in decision.plans]


# -- routing ---------------------------------------------------------------------------------------------------


def test_facts_keep_the_most_pages_of_one_pdf() -> None:
    facts = facts_of(ask(pdf_part(40), pdf_part(700), pdf_part(None)))
    assert (facts.most_pdf_pages, facts.pdf_pages) == (700, None)  # the total is unknown, the largest known
    assert facts_of(ask(pdf_part(None))).most_pdf_pages == 0


def test_a_pdf_over_a_model_s_pages_is_planned_for_the_next_target_with_the_reason() -> None:
    decision = decide(pdf_part(700))
    assert planned(decision) == ["gemini/gemini-2.5-pro", "local/extract"]
    assert "anthropic/claude-sonnet-4-6: 700 PDF pages is more than its 600 per PDF" in decision.trace[0].reason
    assert planned(decide(pdf_part(1001))) == ["local/extract"]
    over_both = decide(pdf_part(1001)).trace[0].reason
    assert "gemini/gemini-2.5-pro: 1001 PDF pages is more than its 1000 per PDF" in over_both


@pytest.mark.parametrize("pdfs", [[600], [None], [400, 400]], ids=["at-the-limit", "unknown", "each-under"])
def test_pdfs_within_the_limit_per_pdf_or_of_unknown_pages_keep_the_model(pdfs) -> None:
    """Two PDFs of 400 pages are each within 600: the per-request total is the plugin's to check at call time."""
    assert planned(decide(*map(pdf_part, pdfs)))[0] == "anthropic/claude-sonnet-4-6"


def test_a_model_named_by_the_client_refuses_a_longer_pdf_with_the_reason() -> None:
    router = Router(rules=[DOCUMENTS])
    with pytest.raises(NoRoute, match="anthropic/claude-sonnet-4-6: 700 PDF pages is more than its 600 per PDF"):
        router.decide(facts_of(ask(pdf_part(700))), CATALOG, override=Target("anthropic", "claude-sonnet-4-6"))


def test_a_document_bridge_over_its_pages_is_passed_over() -> None:
    """A model without documents gets the PDF as text from the first bridge that reads that many pages."""
    text_only = ModelInfo("gpt-text", inputs=frozenset({TEXT}))
    catalog = {**CATALOG, "openai": ProviderStatus(True, "", {text_only.name: text_only})}
    router = Router(rules=[Rule(name="r", match=Match(), use="openai/gpt-text")],
                    bridges={DOC: ["anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro"]})
    assert decide(pdf_part(700), router=router, catalog=catalog).plan.bridges == [
        Bridge(DOC, Target("gemini", "gemini-2.5-pro"))]
    assert decide(pdf_part(500), router=router, catalog=catalog).plan.bridges == [
        Bridge(DOC, Target("anthropic", "claude-sonnet-4-6"))]


def test_a_model_that_does_not_take_pdfs_is_not_refused_for_their_pages() -> None:
    """Its PDFs are bridged (turned into text) whatever their pages: the limit is of the PDFs it reads."""
    texts_only = ModelInfo("reader", inputs=frozenset({TEXT, DOC}), input_mime_types=frozenset({"text/*"}),
                           context_tokens=1_000_000, max_document_pages=10)
    catalog = {**CATALOG, "openai": ProviderStatus(True, "", {texts_only.name: texts_only})}
    router = Router(rules=[Rule(name="r", match=Match(), use="openai/reader")], bridges={DOC: ["local/extract"]})
    decision = decide(pdf_part(700), router=router, catalog=catalog)
    assert str(decision.plan.target) == "openai/reader"
    assert decision.plan.bridges[0].via == Target("local", "extract")


# -- the plugins' declared limits ------------------------------------------------------------------------------


def test_claude_models_declare_their_pdf_pages_from_their_context() -> None:
    """600 pages with a window over 200k tokens, else 100 (limits.py); a configured model's from its own window."""
    provider = AnthropicProvider({"api_key": ANTHROPIC_KEY, "models": [
        {"name": "claude-next", "context_tokens": 200_000, "price": {"input_per_mtok": 1, "output_per_mtok": 5}}]})
    pages = {m.name: m.max_document_pages for m in provider.models}
    assert pages == {"claude-sonnet-4-6": 600, "claude-sonnet-4-5": 100, "claude-opus-4-5": 100,
                     "claude-haiku-4-5": 100, "claude-next": 100}


def test_gemini_models_declare_the_max_document_pages_setting() -> None:
    assert {m.max_document_pages for m in GeminiProvider.from_settings({"api_key": GEMINI_KEY}).models} == {1000}
    lowered = GeminiProvider.from_settings({"api_key": GEMINI_KEY, "max_document_pages": 500})
    assert {m.max_document_pages for m in lowered.models} == {500}


# -- through the daemon ----------------------------------------------------------------------------------------


def many_pages(pages: int) -> bytes:
    """A PDF of ``pages`` pages (one of text, then blank ones)."""
    return paged_pdf(pages, "Annual report: revenue grew.")


@pytest.fixture
def servers():
    with FakeAnthropic() as anthropic, FakeGemini(api_key=GEMINI_KEY) as gemini:
        yield anthropic, gemini


def daemon_for(start_daemon, anthropic: FakeAnthropic, gemini: FakeGemini, gemini_settings: str = ""):
    """A daemon on the embedded rules, with Claude, Gemini (at their fakes) and local configured only."""
    config = "\n".join([
        "extend_default_routes: true", "providers:",
        f'  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic.url}", timeout: 20}}',
        f'  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini.url}", timeout: 20{gemini_settings}}}',
        "  local: {}"])
    return start_daemon(config, env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": GEMINI_KEY}, plugins=())


def pdf_request(pages: int) -> pb.MultimodalRequest:
    document = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=many_pages(pages),
                        filename="annual.pdf")
    return text_request("Summarise", media=[document])


def documents_reason(route: pb.Route) -> str:
    [entry] = [t for t in route.trace if t.rule == "documents"]
    return entry.reason


def test_explain_and_generate_plan_a_700_page_pdf_for_gemini_not_claude(start_daemon, servers) -> None:
    anthropic, gemini = servers
    daemon = daemon_for(start_daemon, anthropic, gemini)
    request = pdf_request(700)

    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route
    assert (explained.rule, explained.provider, explained.model) == ("documents", "gemini", "gemini-2.5-pro")
    assert list(explained.fallbacks) == ["local/extract"]
    assert "anthropic/claude-sonnet-4-6: 700 PDF pages is more than its 600 per PDF" in documents_reason(explained)

    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("documents", "gemini", "gemini-2.5-pro")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("gemini", True)]
    assert anthropic.message_calls() == [], "Claude was never asked"
    assert answer.text


def test_a_pdf_over_gemini_s_page_setting_too_is_planned_for_local_extract(start_daemon, servers) -> None:
    """Gemini's limit is its plugin's ``max_document_pages`` setting, lowered here to 650."""
    anthropic, gemini = servers
    daemon = daemon_for(start_daemon, anthropic, gemini, ", max_document_pages: 650")
    request = pdf_request(700)

    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route
    assert (explained.provider, explained.model) == ("local", "extract")
    assert "gemini/gemini-2.5-pro: 700 PDF pages is more than its 650 per PDF" in documents_reason(explained)

    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("documents", "local", "extract")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("local", True)]
    assert anthropic.message_calls() == [] and gemini.requests == []


def test_list_providers_gives_each_model_s_pdf_pages(start_daemon, servers) -> None:
    anthropic, gemini = servers
    daemon = daemon_for(start_daemon, anthropic, gemini, ", max_document_pages: 650")
    listed = {(p.name, m.name): m.max_document_pages
              for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers for m in p.models}
    assert listed[("anthropic", "claude-sonnet-4-6")] == 600
    assert listed[("gemini", "gemini-2.5-pro")] == 650
    assert listed[("local", "extract")] == 0


@pytest.mark.parametrize(("pages", "problem"), [(-1, "max_document_pages is -1, not >= 0"),
                                                ("600", "max_document_pages is str, not int")])
def test_the_daemon_s_check_refuses_a_bad_page_limit(pages, problem) -> None:
    from router.plugins import model_problem

    assert (model_problem(ModelInfo("m", frozenset({Modality.TEXT}), max_document_pages=pages)) or "").startswith(
        problem)
