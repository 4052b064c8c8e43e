"""PDF text, page by page, with pypdf; pages without a text layer, or scans with a small one, are OCRed."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .pool import JobCancelled, raise_if_cancelled

#: A page whose text layer is shorter than this (in characters, stripped) while its images cover more than
#: :data:`MIN_SCAN_COVER` of it is a scan with a stamp (a Bates number, a "Scanned by ..." footer): its
#: images are OCRed too, their text after the text layer's. Kept short: a slide with a few words over a
#: full-page photo, or a scan with an OCR text layer of its own, is read from its text alone (OCR costs
#: about a second a page).
MAX_STAMP_CHARS = 50
#: The share of a page's area its images must cover for a page with a short text layer to be OCRed.
MIN_SCAN_COVER = 0.8


class PdfError(ValueError):
    """The data is not a readable PDF (corrupt or encrypted)."""


@dataclass
class PdfPage:
    """The text of one page; ``number`` counts from 1. ``ocr`` says the text came from OCR alone (a page
    without a text layer); a scan with a small text layer has its OCR text after that layer's."""

    number: int
    text: str
    ocr: bool = False


def iter_pages(
    source: Path | bytes, ocr_image: Callable[[bytes], list[str]] | None = None
) -> Iterator[PdfPage]:
    """Yield each page's text in order.

    A page with no extractable text (a scan) has its embedded images read by
    ``ocr_image`` (image bytes -> lines) when one is given; so has a page with under
    :data:`MAX_STAMP_CHARS` characters of text whose images cover over :data:`MIN_SCAN_COVER` of it (a scan
    with a stamp), its OCR text after the text layer's. Each image is read once per document
    (see :func:`_image_lines`): a page tree may point at one scanned page 100,000 times, or every page
    show one image.
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
    read: dict[Hashable, list[str]] = {}  # the lines of each image read so far, by its identity
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
        if ocr_image is None or (text and (len(text) >= MAX_STAMP_CHARS or _image_cover(page) <= MIN_SCAN_COVER)):
            yield PdfPage(index + 1, text)
            continue
        try:
            lines = _image_lines(page, ocr_image, read)
        except JobCancelled:
            raise
        except Exception as e:
            lines = [f"(embedded images could not be read: {type(e).__name__})"]
        yield PdfPage(index + 1, "\n".join([text, *lines]) if text else "\n".join(lines), ocr=not text)


def _image_cover(page) -> float:
    """The share of ``page``'s area (a pypdf page) that its images cover: the images its content stream
    draws (XObjects of the page's resources, and inline images), each the unit square scaled by the
    transformation matrix in force, their areas added. Images inside form XObjects are not counted; 0
    when the page's size or content cannot be read."""
    try:
        box = page.mediabox
        page_area = abs(float(box.width) * float(box.height))
        content = page.get_contents()
        if not page_area or content is None:
            return 0.0
        xobjects = {}  # read with [], which resolves indirect objects (get() does not)
        if "/Resources" in page and "/XObject" in page["/Resources"]:
            xobjects = page["/Resources"]["/XObject"]
        # only the matrix's determinant matters for areas: the determinant of a product is the product of theirs
        scale, saved, covered = 1.0, [], 0.0
        for operands, operator in content.operations:
            if operator == b"q":
                saved.append(scale)
            elif operator == b"Q" and saved:
                scale = saved.pop()
            elif operator == b"cm" and len(operands) == 6:
                a, b, c, d = (float(x) for x in operands[:4])
                scale *= a * d - b * c
            elif operator == b"INLINE IMAGE" or (
                    operator == b"Do" and operands and operands[0] in xobjects
                    and xobjects[operands[0]].get("/Subtype") == "/Image"):
                covered += abs(scale)
        return covered / page_area
    except Exception:  # odd content or resources: pypdf raises many types
        return 0.0


def _image_lines(page, ocr_image: Callable[[bytes], list[str]], read: dict[Hashable, list[str]]) -> list[str]:
    """The OCR lines of the images on ``page`` (a pypdf page), in order.

    An image already in ``read`` is not decoded or read again: its lines are reused. An image XObject is
    known by its indirect reference, found before pypdf decodes it; an inline image (it has none) by a
    hash of its bytes. So a PDF whose pages all show one scan costs one OCR, not one per page.
    """
    images = page.images
    lines: list[str] = []
    for key in images.keys():  # noqa: SIM118 (iterating over images decodes each one)
        raise_if_cancelled()
        identity = _xobject_reference(page, key)
        if identity is None or identity not in read:  # not shown before: decode it
            data = images[key].data
            identity = identity or hashlib.sha256(data).hexdigest()
            if identity not in read:
                read[identity] = ocr_image(data)
        lines.extend(read[identity])
    return lines


def _xobject_reference(page, key: str | list[str]) -> tuple[int, int] | None:
    """``(object number, generation)`` of the image XObject named ``key`` on ``page``: a name, or a path of
    names through form XObjects, as ``page.images.keys()`` gives it. None for an inline image, an image not
    stored as an object of its own, or resources pypdf cannot walk (the image is then known by its bytes)."""
    holder, image = page, None
    try:
        for name in [key] if isinstance(key, str) else key:
            holder = image = holder["/Resources"]["/XObject"][name]  # pypdf resolves each reference
    except Exception:  # no such name (an inline image), or odd resources: pypdf raises many types
        return None
    reference = getattr(image, "indirect_reference", None)
    return None if reference is None else (reference.idnum, reference.generation)
