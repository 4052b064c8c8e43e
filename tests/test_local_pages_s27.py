"""The local provider streams a document page by page: a StreamGenerate client (and ``mmrouter ask``) gets
the first page's text while later pages are still being read (a 6-page scan took about 35 s, and nothing
came until the end), the deltas adding up to the unary answer. A page that fails after earlier pages were
sent ends the stream with a clear error; a cancelled call stops reading (OCR) the pages left."""

from __future__ import annotations

import asyncio
import io

import grpc
import media_factory
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_local import LocalProvider

from router import CallContext, Media, Message, Modality, Options, Part, Request, Role, TextDelta
from tests.fakes import local as media

#: The words on the pages of a long scan (one word a page: OCR may join two words into one).
SHEETS = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL")


@pytest.fixture
def fresh(start_daemon):
    """The daemon as a fresh install starts it: embedded default (local answers), no keys, no test plugins."""
    return start_daemon(None, plugins=())


def scan_image(text: str):
    """A white image with ``text`` in large print, as a scanner makes a page."""
    return media.text_image([((20, 20), text)], size=(640, 120))


def mixed_pdf(pages: list[tuple[str, bool]]) -> bytes:
    """A PDF of ``(text, scanned)`` pages: a scanned page is its text as an image only (no text layer)."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    doc = canvas.Canvas(out)
    for text, scanned in pages:
        if scanned:
            doc.drawImage(ImageReader(io.BytesIO(media.encode_image(scan_image(text)))), 72, 500, width=480, height=90)
        else:
            doc.drawString(72, 720, text)
        doc.showPage()
    doc.save()
    return out.getvalue()


def stream(daemon, item: pb.Media) -> list[pb.StreamGenerateResponse]:
    """Every event of a StreamGenerate of one media with a question."""
    request = pb.StreamGenerateRequest(request=text_request("What is in it?", media=[item]))
    return list(daemon.stub.StreamGenerate(request, timeout=120))


def deltas_of(events: list[pb.StreamGenerateResponse]) -> list[str]:
    return [e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta"]


def assert_page_by_page(daemon, item: pb.Media, pages: list[str]) -> None:
    """The stream of ``item`` sends each of ``pages`` (text on each page, in order) in a later delta than the
    one before, and its deltas add up to the unary Generate answer."""
    deltas = deltas_of(stream(daemon, item))
    first = next(i for i, d in enumerate(deltas) if pages[0] in d)
    assert not any(page in "".join(deltas[:first + 1]) for page in pages[1:]), deltas
    where = [next(i for i, d in enumerate(deltas) if page in d) for page in pages]
    assert where == sorted(set(where)), (where, deltas)  # each page in a delta of its own, in order
    unary = daemon.stub.Generate(pb.GenerateRequest(request=text_request("What is in it?", media=[item])),
                                 timeout=120).answer
    assert "".join(deltas) == unary.text


def test_a_pdf_of_text_and_scanned_pages_is_streamed_page_by_page(fresh) -> None:
    pdf = mixed_pdf([("Alpha typed page", False), ("BRAVO", True), ("Charlie typed page", False)])
    item = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=pdf, filename="mixed.pdf")
    assert_page_by_page(fresh, item, ["Alpha typed page", "BRAVO", "Charlie typed page"])


def test_a_multi_page_tiff_is_streamed_page_by_page(fresh) -> None:
    tiff = media_factory.multipage_tiff([scan_image(t) for t in ("FIRST", "SECOND", "THIRD")])
    item = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/tiff", data=tiff, filename="fax.tiff")
    assert_page_by_page(fresh, item, ["FIRST", "SECOND", "THIRD"])


def test_a_page_failing_after_others_were_sent_ends_the_stream_with_a_clear_error(fresh) -> None:
    """Once a page's text is sent no fallback can answer: the client gets the error, after the text read."""
    from PIL import Image

    huge = Image.new("1", (6400, 6400), 1)  # over the OCR's pixel limit: refused when its page comes
    tiff = media_factory.multipage_tiff([scan_image("FIRST").convert("1"), huge])
    item = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/tiff", data=tiff, filename="bad.tiff")
    request = pb.StreamGenerateRequest(request=text_request("What is in it?", media=[item]))
    received: list[pb.StreamGenerateResponse] = []
    with pytest.raises(grpc.RpcError) as err:
        for event in fresh.stub.StreamGenerate(request, timeout=120):
            received.append(event)
    assert "FIRST" in "".join(deltas_of(received))  # the page read was sent before the failure
    details = error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"), details
    assert "cannot read bad.tiff: the image is 6400x6400 pixels" in details.message, details.message
    assert fresh.proc.poll() is None


async def test_a_call_left_after_its_first_page_stops_reading_the_others() -> None:
    """The pages are read by one pool job, page after page: a call closed after its first delta cancels it, and
    the pages left are not OCRed (distinct scans: each would be read)."""
    provider = LocalProvider(workers=1)
    try:
        pdf = mixed_pdf([(word, True) for word in SHEETS])
        item = Media(Modality.DOCUMENT, "application/pdf", data=pdf, filename="long.pdf")
        request = Request([Message(Role.USER, [Part(media=item)])], Options())
        events = provider.generate(request, provider.models[0], CallContext(request_id="s27"))
        first = await anext(events)
        assert isinstance(first, TextDelta) and SHEETS[0] in first.text and SHEETS[1] not in first.text
        await events.aclose()
        for _ in range(400):  # the job ends on its own thread, at its next page: wait for it, bounded
            if provider.pool.cancelled_jobs:
                break
            await asyncio.sleep(0.05)
        assert provider.pool.cancelled_jobs == 1
        assert provider.extractor.ocr.images_read < len(SHEETS), provider.extractor.ocr.images_read
    finally:
        await provider.aclose()
