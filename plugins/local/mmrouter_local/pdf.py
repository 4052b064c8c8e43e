"""PDF text, page by page, with pypdf; pages without a text layer, or scans with a small one, are OCRed,
each image turned as the page shows it (its ``/Rotate`` and the image's placement). The large images of a
page read from its text layer are named as not read. The values of a filled-in form (AcroForm fields)
follow the text of the page that shows them."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from router.errors import ProviderError

from .memory import memory_cause
from .pool import JobCancelled, raise_if_cancelled

#: A page whose text layer is shorter than this (in characters, stripped) while its images cover more than
#: :data:`MIN_SCAN_COVER` of it is a scan with a stamp (a Bates number, a "Scanned by ..." footer): its
#: images are OCRed too, their text after the text layer's. Kept short: a slide with a few words over a
#: full-page photo, or a scan with an OCR text layer of its own, is read from its text alone (OCR costs
#: about a second a page), saying its large images were not read (see :data:`MIN_NOTED_COVER`).
MAX_STAMP_CHARS = 50
#: The share of a page's area its images must cover for a page with a short text layer to be OCRed.
MIN_SCAN_COVER = 0.8
#: The share of a page's area an image must cover for a page read from its text layer to say it was not read
#: (``[1 image on this page was not read]``): a picture of the problems pasted into a typed worksheet is,
#: a letterhead logo or an icon is not.
MIN_NOTED_COVER = 0.05
#: How an image shown turned is made upright, by where its right and upward directions point on the shown
#: page (each one of (1, 0), (0, 1), (-1, 0), (0, -1), y upward): the name of the ``PIL.Image.Transpose``
#: that turns its pixels so (None: upright already).
_TURNS: dict[tuple[tuple[int, int], tuple[int, int]], str | None] = {
    ((1, 0), (0, 1)): None,
    ((0, 1), (-1, 0)): "ROTATE_90",  # shown turned a quarter counter-clockwise
    ((-1, 0), (0, -1)): "ROTATE_180",
    ((0, -1), (1, 0)): "ROTATE_270",  # shown turned a quarter clockwise (a page fed sideways, /Rotate 90)
    ((-1, 0), (0, 1)): "FLIP_LEFT_RIGHT",
    ((1, 0), (0, -1)): "FLIP_TOP_BOTTOM",
    ((0, -1), (-1, 0)): "TRANSPOSE",
    ((0, 1), (1, 0)): "TRANSVERSE",
}
#: A 2x2 matrix ``(a, b, c, d)``: the linear part of a PDF transformation matrix (row vectors: ``(x, y)``
#: goes to ``(a x + c y, b x + d y)``).
Matrix = tuple[float, float, float, float]
_IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0)
#: The line that starts the form fields of a page, after its text: each field then on a line ``label: value``.
FORM_FIELDS = "Form fields:"
#: Field flags (PDF 32000-1, table 226) of a button field: a radio button, a push button (it has no value).
_RADIO, _PUSHBUTTON = 1 << 15, 1 << 16
#: The most parents a form field's name and inherited entries are looked for through (a cycle stops there).
_MAX_FIELD_DEPTH = 32


class PdfError(ValueError):
    """The data is not a readable PDF (corrupt or encrypted)."""


@dataclass
class PdfPage:
    """The text of one page; ``number`` counts from 1. ``ocr`` says the text came from OCR alone (a page
    without a text layer); a scan with a small text layer has its OCR text after that layer's."""

    number: int
    text: str
    ocr: bool = False


@dataclass
class Placements:
    """What a page's content stream draws of images: the share of the page's area they cover, how many
    distinct images cover at least :data:`MIN_NOTED_COVER` of it each, and how each is turned where it is
    shown (the ``PIL.Image.Transpose`` name making it upright, by its key in ``page.images``: an XObject's
    name, ``~0~`` for the first inline image)."""

    rotation: int = 0
    cover: float = 0.0
    large: int = 0
    turns: dict[str, str | None] = field(default_factory=dict)

    def turn(self, key: str | list[str]) -> str | None:
        """The turn of the image ``key`` (a name, or a path through form XObjects: those are turned by the
        page's ``/Rotate`` alone)."""
        if isinstance(key, str) and key in self.turns:
            return self.turns[key]
        return _turn(_IDENTITY, self.rotation)


def iter_pages(
    source: Path | bytes, ocr_image: Callable[..., list[str]] | None = None
) -> Iterator[PdfPage]:
    """Yield each page's text in order.

    A page with no extractable text (a scan) has its embedded images read by
    ``ocr_image`` (image bytes -> lines) when one is given; so has a page with under
    :data:`MAX_STAMP_CHARS` characters of text whose images cover over :data:`MIN_SCAN_COVER` of it (a scan
    with a stamp), its OCR text after the text layer's. An image shown turned (a page scanned sideways
    carries ``/Rotate``; an image may be placed turned) is given as ``ocr_image(data, turn)``, ``turn`` the
    name of the ``PIL.Image.Transpose`` that makes it upright as shown, so its lines come in reading order.
    Each image is read once per document (see :func:`_image_lines`): a page tree may point at one scanned
    page 100,000 times, or every page show one image. A page read from its text layer alone says how many
    of its images covering at least :data:`MIN_NOTED_COVER` of it each were not read, in a line after its
    text (``[1 image on this page was not read]``): OCR of every picture would cost about a second each.
    The filled-in form fields a page shows come last, after a :data:`FORM_FIELDS` line (see
    :func:`_form_lines`), each field once per document.
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
    fields_seen: set[str] = set()  # the form fields given so far, by their full names
    pages_seen: set[Hashable] = set()  # the page objects whose form fields were looked at
    for index in range(count):
        raise_if_cancelled()  # a page may take seconds of OCR: stop here once nobody waits for it
        try:
            page = pages[index]
        except unreadable as e:
            raise PdfError(f"page {index + 1} of the PDF cannot be read ({type(e).__name__}: {e})") from e
        try:
            text = (page.extract_text() or "").strip()
        except Exception as e:  # pypdf raises many types on odd content streams
            if memory_cause(e) is not None:  # not the page's fault: the call fails, retryably
                raise
            text = f"(text could not be extracted: {type(e).__name__})"
        reference = page.indirect_reference
        identity = (reference.idnum, reference.generation) if reference is not None else index
        fields: list[str] = []
        if identity not in pages_seen:  # a page shown again has had its fields given
            pages_seen.add(identity)
            try:
                fields = _form_lines(page, fields_seen)
            except Exception as e:  # odd annotations: pypdf raises many types
                fields = [f"(form fields could not be read: {type(e).__name__})"]
        form = [FORM_FIELDS, *fields] if fields else []
        if ocr_image is None:
            yield PdfPage(index + 1, "\n".join([text, *form]) if text else "\n".join(form))
            continue
        shown = (_placements(page) if not text or len(text) < MAX_STAMP_CHARS or _has_image_xobject(page)
                 else Placements())
        if text and (len(text) >= MAX_STAMP_CHARS or shown.cover <= MIN_SCAN_COVER):
            yield PdfPage(index + 1, "\n".join([text, *_not_read(shown.large), *form]))
            continue
        try:
            lines = _image_lines(page, ocr_image, read, shown)
        except (JobCancelled, ProviderError):  # the OCR cannot load, or memory ran out: not the page's fault
            raise
        except Exception as e:
            if memory_cause(e) is not None:
                raise
            lines = [f"(embedded images could not be read: {type(e).__name__})"]
        yield PdfPage(index + 1, "\n".join([text, *lines, *form]) if text else "\n".join([*lines, *form]),
                      ocr=not text)


def _form_lines(page, seen: set[str]) -> list[str]:
    """``label: value`` lines of the filled-in form fields whose widgets ``page`` (a pypdf page) shows, in the
    order of its annotations; a field named in ``seen`` (given on an earlier page: a radio group's buttons,
    or a field shown on several pages) is left out, and those given here are added to it.

    pypdf's ``extract_text`` reads the content stream only, not the fields' values. The label is the
    field's user name (``/TU``) if it has one, else its full name (``/T`` of it and its parents, joined by
    dots); a check box is ``checked`` or ``not checked``, a radio group shows the chosen button's name
    (``(none selected)`` if none), a list or combo box its choices, a multi-line text its later lines
    indented by two spaces; empty text fields and push buttons are left out."""
    lines = []
    annotations = page.get("/Annots")
    for annotation in annotations.get_object() if annotations is not None else []:
        widget = annotation.get_object()
        if widget.get("/Subtype") != "/Widget":
            continue
        field = widget  # a widget is its field, or a kid of it (a radio button, a field shown twice)
        for _ in range(_MAX_FIELD_DEPTH):
            if "/T" in field or "/Parent" not in field:
                break
            field = field["/Parent"]
        if "/T" not in field:
            continue
        name = _field_name(field)
        if name in seen:
            continue
        seen.add(name)
        value = _field_value(field)
        if value is not None:
            label = _inherited(field, "/TU")
            lines.append(f"{label if isinstance(label, str) and label.strip() else name}: {value}")
    return lines


def _inherited(field, key: str):
    """The entry ``key`` of a form field (a pypdf dictionary) or, as the PDF lets a kid inherit it, of its
    nearest parent that has it; None if none has."""
    for _ in range(_MAX_FIELD_DEPTH):
        if key in field:
            return field[key]
        if "/Parent" not in field:
            return None
        field = field["/Parent"]
    return None


def _field_name(field) -> str:
    """A form field's full name: the ``/T`` of its parents and its own, joined by dots."""
    parts = []
    for _ in range(_MAX_FIELD_DEPTH):
        if "/T" in field:
            parts.append(str(field["/T"]))
        if "/Parent" not in field:
            break
        field = field["/Parent"]
    return ".".join(reversed(parts))


def _field_value(field) -> str | None:
    """The value of a form field (a pypdf dictionary) as text, or None for an empty field or a push button
    (see :func:`_form_lines`)."""
    kind, value = _inherited(field, "/FT"), _inherited(field, "/V")
    flags = int(_inherited(field, "/Ff") or 0)
    if kind == "/Btn":
        if flags & _PUSHBUTTON:
            return None
        chosen = value is not None and str(value) not in ("/Off", "")
        if flags & _RADIO:
            return str(value).lstrip("/") if chosen else "(none selected)"
        return "checked" if chosen else "not checked"
    if kind == "/Sig":
        return "signed" if value is not None else None
    if value is None:
        return None
    if kind == "/Ch":  # a choice may be given by its export value: the options say what it shows
        shown = {}
        for option in _inherited(field, "/Opt") or []:
            option = option.get_object()
            if isinstance(option, list) and len(option) == 2:
                shown[str(option[0])] = str(option[1])
        values = value if isinstance(value, list) else [value]
        text = ", ".join(shown.get(str(v), str(v)) for v in values)
    elif hasattr(value, "get_data"):  # a long text may be a stream
        text = value.get_data().decode("utf-8", errors="replace")
    else:
        text = str(value)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    return "\n  ".join(lines) if lines[0] else None  # a multi-line value's later lines indented


def _not_read(count: int) -> list[str]:
    """The line saying ``count`` images of a page were not read, in a list (empty for none)."""
    if not count:
        return []
    return ["[1 image on this page was not read]" if count == 1 else f"[{count} images on this page were not read]"]


def _has_image_xobject(page) -> bool:
    """Whether ``page``'s resources (a pypdf page) hold an image XObject (a page without one draws none but
    inline images, which are small: its content stream is not walked)."""
    try:
        xobjects = page["/Resources"]["/XObject"] if "/Resources" in page else {}
        return any(xobjects[name].get("/Subtype") == "/Image" for name in xobjects)
    except Exception:  # odd resources: pypdf raises many types
        return False


def _placements(page) -> Placements:
    """The images ``page``'s content stream draws (a pypdf page): XObjects of the page's resources and inline
    images, each the unit square under the transformation matrix in force (their areas added for the
    cover), turned further by the page's ``/Rotate`` (clockwise) where shown. Images inside form XObjects
    are not counted; no cover when the page's size or content cannot be read."""
    try:
        rotation = int(page.rotation) % 360
    except Exception:  # an odd /Rotate: taken as none
        rotation = 0
    shown = Placements(rotation)
    try:
        box = page.mediabox
        page_area = abs(float(box.width) * float(box.height))
        content = page.get_contents()
        if not page_area or content is None:
            return shown
        xobjects = {}  # read with [], which resolves indirect objects (get() does not)
        if "/Resources" in page and "/XObject" in page["/Resources"]:
            xobjects = page["/Resources"]["/XObject"]
        matrix, saved, covered, inline, large = _IDENTITY, [], 0.0, 0, set()
        for operands, operator in content.operations:
            if operator == b"q":
                saved.append(matrix)
            elif operator == b"Q" and saved:
                matrix = saved.pop()
            elif operator == b"cm" and len(operands) == 6:
                matrix = _product(tuple(float(x) for x in operands[:4]), matrix)
            elif operator == b"INLINE IMAGE" or (
                    operator == b"Do" and operands and operands[0] in xobjects
                    and xobjects[operands[0]].get("/Subtype") == "/Image"):
                if operator == b"Do":
                    key = str(operands[0])
                else:
                    key, inline = f"~{inline}~", inline + 1
                area = abs(matrix[0] * matrix[3] - matrix[1] * matrix[2])
                covered += area
                if area >= MIN_NOTED_COVER * page_area:
                    large.add(key)
                shown.turns.setdefault(key, _turn(matrix, rotation))
        shown.cover, shown.large = covered / page_area, len(large)
    except Exception:  # odd content or resources: pypdf raises many types
        return Placements(rotation)
    return shown


def _product(first: Matrix, second: Matrix) -> Matrix:
    """The matrix applying ``first``, then ``second`` (row vectors, as PDF's ``cm`` concatenates)."""
    a, b, c, d = first
    e, f, g, h = second
    return (a * e + b * g, a * f + b * h, c * e + d * g, c * f + d * h)


def _turn(matrix: Matrix, rotation: int) -> str | None:
    """The ``PIL.Image.Transpose`` name making upright an image drawn with ``matrix`` on a page shown turned
    ``rotation`` degrees clockwise (its ``/Rotate``); None when it is shown upright, or turned by an angle
    other than a multiple of a quarter (read as it is stored)."""
    quarters = rotation // 90 if rotation % 90 == 0 else 0
    for _ in range(quarters):  # a quarter clockwise: (x, y) is shown at (y, -x)
        matrix = _product(matrix, (0.0, -1.0, 1.0, 0.0))
    a, b, c, d = matrix

    def axis(x: float, y: float) -> tuple[int, int]:
        return (1 if x > 0 else -1, 0) if abs(x) >= abs(y) else (0, 1 if y > 0 else -1)

    return _TURNS.get((axis(a, b), axis(c, d)))


def _image_lines(page, ocr_image: Callable[..., list[str]], read: dict[Hashable, list[str]],
                 shown: Placements) -> list[str]:
    """The OCR lines of the images on ``page`` (a pypdf page), in order, each turned as ``shown`` says.

    An image already in ``read`` (turned the same way) is not decoded or read again: its lines are reused.
    An image XObject is known by its indirect reference, found before pypdf decodes it; an inline image
    (it has none) by a hash of its bytes. So a PDF whose pages all show one scan costs one OCR, not one
    per page.
    """
    images = page.images
    lines: list[str] = []
    for key in images.keys():  # noqa: SIM118 (iterating over images decodes each one)
        raise_if_cancelled()
        turn = shown.turn(key)
        reference = _xobject_reference(page, key)
        identity = None if reference is None else (reference, turn)
        if identity is None or identity not in read:  # not shown before: decode it
            data = images[key].data
            identity = identity or (hashlib.sha256(data).hexdigest(), turn)
            if identity not in read:
                read[identity] = ocr_image(data) if turn is None else ocr_image(data, turn)
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
