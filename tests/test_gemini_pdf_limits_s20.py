"""Gemini's limits per PDF (QA report "pdfdocs", section 3): a PDF over 1000 pages (as the router counted them)
or over 50 MB is refused by the Gemini plugin before anything is uploaded or sent, with INPUT_TOO_LARGE, so the
rule's next target (local/extract) answers, with a route note naming Gemini's limit; Gemini's own refusal of a
PDF's size is INPUT_TOO_LARGE too. Through the real google-genai SDK against the fake Gemini API, in the
provider and in the daemon (the embedded ``documents`` rule)."""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from media_factory import paged_pdf, pdf
from mmrouter.v1 import router_pb2 as pb
from mmrouter_gemini import GeminiProvider
from mmrouter_gemini.settings import DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_MAX_DOCUMENT_PAGES, GeminiSettings

from router import Media, Message, Modality, Options, Part, Request, Role, Task
from router.errors import ProviderInputTooLarge
from router.testing import collect
from tests.fakes.gemini import FakeGemini

KEY = "AIza-pdf-limits-s20-0123456789"
PRO = "gemini-2.5-pro"
TEXT = "Quarterly report: revenue grew."


def many_pages(pages: int) -> bytes:
    """A PDF of ``pages`` pages (one of text, then blank ones)."""
    return paged_pdf(pages, TEXT)


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY) as server:
        yield server


def make_provider(fake: FakeGemini, **overrides) -> GeminiProvider:
    settings = {"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.02}
    settings.update(overrides)
    return GeminiProvider.from_settings(settings)


def ask(media: Media) -> Request:
    return Request(messages=[Message(Role.USER, [Part(text="Summarise"), Part(media=media)])],
                   options=Options(task=Task.CHAT))


def document(data: bytes, pages: int | None, mime_type: str = "application/pdf") -> Media:
    return Media(Modality.DOCUMENT, mime_type, data=data, filename="report.pdf", pages=pages)


def sent_nothing(fake: FakeGemini) -> bool:
    return not (fake.calls("upload_start") or fake.calls("stream") or fake.calls("generate"))


# -- the settings ----------------------------------------------------------------------------------------------


def test_the_limits_default_to_gemini_s_documented_ones() -> None:
    settings = GeminiSettings.load("gemini", {"api_key": KEY}, environment=False)
    assert (settings.max_document_pages, settings.max_document_bytes) == (1000, 50 * 1024 * 1024)
    assert (DEFAULT_MAX_DOCUMENT_PAGES, DEFAULT_MAX_DOCUMENT_BYTES) == (1000, 52_428_800)


# -- in the provider -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inline_limit", [0, 8 * 1024 * 1024], ids=["files-api", "inline"])
async def test_a_pdf_over_the_page_limit_is_refused_before_any_upload_or_request(fake, inline_limit) -> None:
    p = make_provider(fake, inline_limit_bytes=inline_limit)
    with pytest.raises(ProviderInputTooLarge) as refused:
        await collect(p, ask(document(pdf([TEXT]), pages=1001)), p.model(PRO))
    assert refused.value.message == ("gemini: the PDF 'report.pdf' has 1001 pages, over Gemini's limit of 1000 pages per "
                                     "document (providers.gemini.max_document_pages); refused before "
                                     "sending")
    assert sent_nothing(fake)
    await p.aclose()


async def test_a_pdf_over_the_size_limit_is_refused_before_its_upload(fake) -> None:
    p = make_provider(fake, inline_limit_bytes=0, max_document_bytes=1000)
    data = pdf([TEXT])
    with pytest.raises(ProviderInputTooLarge, match=rf"the PDF 'report.pdf' is {len(data):,} bytes, over Gemini's "
                                                    r"limit of 1,000 bytes per PDF \(providers.gemini."
                                                    r"max_document_bytes\); refused before sending"):
        await collect(p, ask(document(data, pages=1)), p.model(PRO))
    assert sent_nothing(fake)
    await p.aclose()


async def test_pdfs_within_the_limits_or_of_unknown_pages_and_other_documents_are_sent(fake) -> None:
    """At the limit, or with pages the router could not count, a PDF is sent; a text document is not a PDF."""
    data = pdf([TEXT])
    p = make_provider(fake, max_document_pages=3, max_document_bytes=len(data))
    for media in (document(data, pages=3), document(data, pages=None),
                  document(b"x" * (len(data) + 1), pages=None, mime_type="text/plain")):
        events = await collect(p, ask(media), p.model(PRO))
        assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("stream")) == 3
    await p.aclose()


async def test_gemini_s_refusal_of_a_pdf_s_size_is_input_too_large(fake) -> None:
    """A PDF the plugin could not measure (given by URL, say) that Gemini refuses for its size: INPUT_TOO_LARGE,
    so the router tries the next target, not PROVIDER_BAD_REQUEST, which would end the call."""
    fake.fail_next(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                   "message": "The request's total referenced files bytes are too large to be read"}})
    p = make_provider(fake)
    with pytest.raises(ProviderInputTooLarge, match="too large to be read"):
        await collect(p, ask(document(pdf([TEXT]), pages=None)), p.model(PRO))
    await p.aclose()


# -- through the daemon ----------------------------------------------------------------------------------------


@pytest.fixture
def gemini():
    with FakeGemini(api_key=KEY) as server:
        yield server


def daemon_for(start_daemon, gemini: FakeGemini, settings: str = ""):
    """A daemon on the embedded rules, with Gemini (at its fake) and local configured only."""
    config = "\n".join(["extend_default_routes: true", "providers:",
                        f'  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini.url}", timeout: 20'
                        f"{settings}}}", "  local: {}"])
    return start_daemon(config, env={"GEMINI_API_KEY": KEY}, plugins=())


def generate(daemon, data: bytes) -> pb.Answer:
    document = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=data, filename="big.pdf")
    return daemon.stub.Generate(pb.GenerateRequest(request=text_request("Summarise", media=[document])),
                                timeout=60).answer


def test_a_pdf_over_gemini_s_page_limit_is_answered_by_local_extract_and_never_sent(start_daemon, gemini) -> None:
    """Gemini's models declare the limit (ModelInfo.max_document_pages): routing passes Gemini by, with the
    reason in the trace, and local/extract answers; Gemini is not tried."""
    daemon = daemon_for(start_daemon, gemini)
    answer = generate(daemon, many_pages(1001))
    assert (answer.route.rule, answer.route.provider) == ("documents", "local")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("local", True)]
    assert any("gemini/gemini-2.5-pro: 1001 PDF pages is more than its 1000 per PDF" in t.reason
               for t in answer.route.trace), answer.route.trace
    assert sent_nothing(gemini)


def test_a_pdf_over_gemini_s_size_limit_is_answered_by_local_extract_and_never_uploaded(start_daemon,
                                                                                        gemini) -> None:
    """The size limit lowered through its setting (a PDF over 50 MB is slow to make): not uploaded to the Files
    API, where it would have gone (inline_limit_bytes: 0)."""
    daemon = daemon_for(start_daemon, gemini, ", inline_limit_bytes: 0, max_document_bytes: 1000")
    data = pdf([TEXT])
    answer = generate(daemon, data)
    assert (answer.route.rule, answer.route.provider) == ("documents", "local")
    [refused] = [a for a in answer.route.attempts if not a.ok]
    assert refused.provider == "gemini"
    assert f"is {len(data):,} bytes, over Gemini's limit of 1,000 bytes per PDF" in refused.error
    assert sent_nothing(gemini)
