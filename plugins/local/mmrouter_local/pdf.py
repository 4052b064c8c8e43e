"""PDF text, page by page, with pypdf; pages without a text layer are OCRed."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .pool import JobCancelled, raise_if_cancelled


class PdfError(ValueError):
    """The data is not a readable PDF (corrupt or encrypted)."""


@dataclass
class PdfPage:
    """The text of one page; ``number`` counts from 1. ``ocr`` says the text came from OCR."""

    number: int
    text: str
    ocr: bool = False


def iter_pages(
    source: Path | bytes, ocr_image: Callable[[bytes], list[str]] | None = None
) -> Iterator[PdfPage]:
    """Yield each page's text in order.

    A page with no extractable text (a scan) has its embedded images read by
    ``ocr_image`` (image bytes -> lines) when one is given.
    """
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    # pypdf raises its own errors (PdfReadError, and LimitReachedError for a page tree deeper than 100),
    # and ValueError, KeyError or RecursionError on odd structures (as router.sniff.pdf_pages finds).
    unreadable = (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)
    try:
        reader = PdfReader(str(source) if isinstance(source, Path) else io.BytesIO(source))
        if reader.is_encrypted and not reader.decrypt(""):
            raise PdfError("the PDF is encrypted")
        pages = reader.pages
        count = len(pages)
    except PdfError:
        raise
    except unreadable as e:
        raise PdfError(f"not a readable PDF ({type(e).__name__}: {e})") from e
    for index in range(count):
        raise_if_cancelled()  # a page may take seconds of OCR: stop here once nobody waits for it
        try:
            page = pages[index]
        except unreadable as e:
            raise PdfError(f"page {index + 1} of the PDF cannot be read ({type(e).__name__}: {e})") from e
        try:
            text = (page.extract_text() or "").strip()
        except Exception as e:  # pypdf raises many types on odd content streams
            text = f"(text could not be extracted: {type(e).__name__})"
        if text or ocr_image is None:
            yield PdfPage(index + 1, text)
            continue
        lines: list[str] = []
        try:
            for image in page.images:
                raise_if_cancelled()
                lines.extend(ocr_image(image.data))
        except JobCancelled:
            raise
        except Exception as e:
            lines.append(f"(embedded images could not be read: {type(e).__name__})")
        yield PdfPage(index + 1, "\n".join(lines), ocr=True)

