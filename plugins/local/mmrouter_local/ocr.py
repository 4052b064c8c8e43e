"""Offline OCR with rapidocr-onnxruntime (its ONNX models ship in the wheel).

Results come back as lines in reading order: boxes are grouped into rows by
vertical overlap, rows go top to bottom and boxes within a row left to right.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The most pixels an image or a video frame may have for OCR: decoding takes several bytes a pixel,
#: and the detector reads it shrunk to 960 px anyway (a 700 KB PNG can declare 13,300 x 13,300 pixels).
MAX_OCR_PIXELS = 40_000_000


@dataclass
class OcrBox:
    """One recognised run of text and where it is (pixels)."""

    text: str
    left: float
    top: float
    right: float
    bottom: float
    score: float


@dataclass
class ImageFacts:
    """What is cheaply true of an image."""

    format: str
    width: int
    height: int
    mode: str

    def describe(self) -> str:
        return f"{self.format} {self.width}x{self.height}"


class ImageTooLarge(ValueError):
    """An image (or the image an icon holds) has more pixels than :data:`MAX_OCR_PIXELS`."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"the image is {width}x{height} pixels, over the {MAX_OCR_PIXELS:,} the local OCR reads")
        self.width, self.height = width, height


def check_pixels(width: int, height: int) -> None:
    """Raise :class:`ImageTooLarge` if ``width`` x ``height`` is over :data:`MAX_OCR_PIXELS`."""
    if width * height > MAX_OCR_PIXELS:
        raise ImageTooLarge(width, height)


def open_image(source: Path | bytes):  # -> PIL.Image.Image
    """Open an image file or bytes with Pillow (lazily imported), not yet decoded.

    Raises :class:`ImageTooLarge` if it is an icon holding an image over :data:`MAX_OCR_PIXELS`: an icon's
    directory may say 16x16 and hold a 13,300 x 13,300 PNG, which Pillow decodes while opening an ICO
    (and loading an ICNS), before its size can be checked."""
    from PIL import Image

    with _binary(source) as fp:
        size = held_icon_size(fp)
    if size is not None:
        check_pixels(*size)
    return Image.open(str(source) if isinstance(source, Path) else io.BytesIO(source))


def _binary(source: Path | bytes):  # -> a binary file object (a context manager)
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def held_icon_size(fp) -> tuple[int, int] | None:  # fp: a seekable binary file at its start
    """The size of the image Pillow would decode from an ICO or ICNS file, read from that image's own
    header (an icon's directory may say otherwise); None for other files and for icons Pillow cannot
    read either (it raises then). Reads headers only: nothing is decoded."""
    from PIL import IcnsImagePlugin, IcoImagePlugin

    head = fp.read(4)
    fp.seek(0)
    try:
        if head == b"\0\0\1\0":
            ico = IcoImagePlugin.IcoFile(fp)
            if not ico.entry:
                return None
            entry = ico.entry[0]  # the largest the directory lists: what Image.open decodes
            width, height = _embedded_size(fp, entry.offset, entry.size)
            return width, height if _is_png(fp, entry.offset) else height // 2  # a DIB holds its mask too
        if head == b"icns":
            icns = IcnsImagePlugin.IcnsFile(fp)
            largest: tuple[int, int] | None = None
            for code, reader in icns.SIZES[icns.bestsize()]:  # the size load() decodes
                if code in icns.dct and reader is IcnsImagePlugin.read_png_or_jpeg2000:
                    size = _embedded_size(fp, *icns.dct[code])
                    if largest is None or size[0] * size[1] > largest[0] * largest[1]:
                        largest = size
            return largest
    except Exception:  # not a readable icon: Image.open says so
        return None
    return None


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(fp, offset: int) -> bool:
    fp.seek(offset)
    return fp.read(8) == _PNG_MAGIC


def _embedded_size(fp, offset: int, length: int) -> tuple[int, int]:
    """The declared size of the PNG, JPEG 2000 or DIB image at ``offset`` in ``fp`` (headers only)."""
    from PIL import BmpImagePlugin, Jpeg2KImagePlugin, PngImagePlugin

    fp.seek(offset)
    signature = fp.read(12)
    fp.seek(offset)
    if signature.startswith(_PNG_MAGIC):
        return PngImagePlugin.PngImageFile(fp).size
    if signature.startswith((b"\xff\x4f\xff\x51", b"\x0d\x0a\x87\x0a", b"\x00\x00\x00\x0cjP  ")):
        return Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(fp.read(length))).size
    return BmpImagePlugin.DibImageFile(fp).size


def orientation_of(image) -> int:  # image: an opened Pillow image
    """The EXIF orientation of ``image`` (1 to 8; 1, upright, when it has none or an odd one)."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block: taken as upright
        return 1
    return value if 1 <= value <= 8 else 1


def upright(image):  # -> PIL.Image.Image
    """``image`` turned as its EXIF orientation says (a phone stores a photo as the camera was held), so
    that OCR reads its lines in order; ``image`` itself when it needs no turn. Decodes it. (Pillow turns
    a TIFF itself as it opens it, and drops the tag as it decodes it: nothing is turned twice.)"""
    from PIL import ImageOps

    return image if orientation_of(image) == 1 else ImageOps.exif_transpose(image)


def image_facts(image) -> ImageFacts:
    """Format, size and mode of an opened Pillow image."""
    return ImageFacts(image.format or "unknown", image.width, image.height, image.mode)


def to_bgr(image) -> np.ndarray:
    """A Pillow image as the BGR uint8 array OCR takes (alpha flattened onto white). A 16-bit, 32-bit or
    float image is stretched to 8 bits as the router converts it (``convert`` clipped a 16-bit scan to
    white); one with pixels that are not numbers raises ``ValueError``."""
    from PIL import Image

    from router.convert import eight_bits

    image = eight_bits(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def reading_order(boxes: list[OcrBox]) -> list[str]:
    """Lines of text: boxes grouped into rows (vertical overlap), rows top-down, boxes left-right."""
    rows: list[list[OcrBox]] = []
    for box in sorted(boxes, key=lambda b: (b.top + b.bottom) / 2):
        centre = (box.top + box.bottom) / 2
        row = rows[-1] if rows else None
        if row is not None and min(b.top for b in row) <= centre <= max(b.bottom for b in row):
            row.append(box)
        else:
            rows.append([box])
    return [" ".join(b.text for b in sorted(row, key=lambda b: b.left)) for row in rows]


class TextReader:
    """One RapidOCR engine, loaded on first use and shared (calls are serialised)."""

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._engine = None
        self._lock = threading.Lock()
        #: Images read so far, over all calls (an image a PDF shows on many pages is read once).
        self.images_read = 0

    def _load(self):  # -> rapidocr_onnxruntime.RapidOCR
        from rapidocr_onnxruntime import RapidOCR

        # Detect on the image scaled so its longer side is at most 960 px (the
        # default scales the *shorter* side up to 736 px: slower, and it merges
        # words on small images).
        return RapidOCR(det_limit_type="max", det_limit_side_len=960)

    def read_boxes(self, bgr: np.ndarray) -> list[OcrBox]:
        """Every text box found in a BGR image."""
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            result, _elapsed = self._engine(bgr)
            self.images_read += 1
        boxes = []
        for points, text, score in result or []:
            if float(score) < self.min_score or not str(text).strip():
                continue
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            boxes.append(OcrBox(str(text).strip(), min(xs), min(ys), max(xs), max(ys), float(score)))
        return boxes

    def read_lines(self, bgr: np.ndarray) -> list[str]:
        """The text of a BGR image as lines in reading order."""
        return reading_order(self.read_boxes(bgr))
