"""Offline OCR with rapidocr-onnxruntime (its ONNX models ship in the wheel).

Results come back as lines in reading order: boxes are grouped into rows by
vertical overlap, rows go top to bottom and boxes within a row left to right.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

# numpy is imported at start-up, not where images are read: its OpenBLAS, first loaded under an address-space
# limit (ulimit -v, LimitAS) with little room left, exits or raises SIGINT in the daemon ("Memory allocation still
# failed after 10 retries"), which no Python code can catch; loaded at start, it has its room (test_local_memory_limits)
import numpy as np

from router.errors import ProviderUnavailable
from router.sniff import png_as_read

from .memory import OutOfMemory, ensure_address_space, memory_cause, one_line, raise_if_out_of_memory
from .pool import raise_if_cancelled

#: The most pixels an image or a video frame may have for OCR: decoding takes several bytes a pixel,
#: and RapidOCR shrinks it to 2,000 px on its longer side anyway (a 700 KB PNG can declare 13,300 x 13,300
#: pixels).
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


class OcrUnavailable(ProviderUnavailable):
    """The OCR cannot be loaded: RapidOCR depends on opencv-python, whose wheel loads system libraries a
    slim container image lacks (libGL.so.1, libglib). The call fails as retryable UNAVAILABLE (a fallback
    may answer), instead of INTERNAL, saying what to install when the loader found a library missing
    ("cannot open shared object file"). A lack of memory is :class:`OutOfMemory` instead (see
    :func:`ocr_load_error`)."""

    def __init__(self, cause: BaseException) -> None:
        message = f"the local OCR cannot be loaded ({one_line(cause)})"
        if _MISSING_LIBRARY in str(cause):
            message += (": install the system libraries OpenCV needs (Debian/Ubuntu: apt-get install libgl1 "
                        "libglib2.0-0), or replace opencv-python by opencv-python-headless")
        super().__init__("local", message)


#: How the dynamic loader says a library a module needs is not installed (ENOENT).
_MISSING_LIBRARY = "cannot open shared object file"


def ocr_load_error(exc: BaseException) -> ProviderUnavailable:
    """The error for the OCR failing to load with ``exc``: :class:`OutOfMemory` when memory or address space
    ran out (the loader's "failed to map segment from shared object" under ``ulimit -v``, ONNX Runtime's
    ``bad_alloc``), else :class:`OcrUnavailable`."""
    cause = memory_cause(exc)
    return OutOfMemory("loading its OCR", cause) if cause is not None else OcrUnavailable(exc)


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
    try:
        # a PNG as libpng reads it: an ancillary chunk failing its checksum skipped, which Pillow refuses
        readable = png_as_read(str(source) if isinstance(source, Path) else source)
        return Image.open(io.BytesIO(readable) if isinstance(readable, bytes) else readable)
    except Image.DecompressionBombError:  # over Pillow's own limit (~179 Mpx), far over ours: say its size
        size = declared_size(source)
        if size is None:
            raise
        raise ImageTooLarge(*size) from None


def declared_size(source: Path | bytes) -> tuple[int, int] | None:
    """The size an image's header declares, read as :func:`PIL.Image.open` reads it but without Pillow's
    decompression-bomb check (which refuses a header declaring over ~179 Mpx without saying its size);
    None if no format Pillow knows reads the header. Reads headers only: nothing is decoded."""
    import struct

    from PIL import Image

    Image.init()
    with _binary(source) as fp:
        prefix = fp.read(16)
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            accepted = accept(prefix) if accept is not None else True
            if not accepted or isinstance(accepted, str):  # a str is Pillow's warning: not this format
                continue
            fp.seek(0)
            try:  # what Image.open tries, format by format (it skips a format on these errors too)
                return factory(fp, "").size
            except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError, struct.error):
                continue
    return None


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


#: An image whose longer side is over this many times its shorter side is a strip, read in tiles: RapidOCR
#: shrinks an image whole so its longer side is at most 2,000 px, so a strip's text shrinks
#: with it, unread; past about 125:1 its shorter side rounds to 0 px and RapidOCR fails (``ResizeImgError``).
STRIP_RATIO = 16
#: The length of a strip's tiles (along the strip): under RapidOCR's 2,000 px, so a tile is read unshrunk.
TILE_LENGTH = 960
#: How far consecutive tiles overlap, so that text cut by one tile's edge is whole in the next.
TILE_OVERLAP = 240
#: The most tiles a strip is read in; a longer one is scaled down to fit (a 40 Mpx image may be 1 px high
#: and 40 million long).
MAX_TILES = 64
#: The shorter side a tile is padded to (white): RapidOCR enlarges an image under 30 px to 30 px on that side,
#: and a 960x1 tile enlarged 30 times and letterboxed made a 28,800 x 7,200 image.
MIN_TILE_SIDE = 32
#: A tile whose darkest and lightest values differ by less than this is one colour: it holds no text.
_BLANK_CONTRAST = 16


@dataclass
class Tile:
    """A piece ``start:end`` along a strip; its boxes centred in ``keep_from:keep_to`` are its own."""

    start: int
    end: int
    keep_from: float
    keep_to: float


def strip_tiles(width: int, height: int) -> list[Tile] | None:
    """The tiles a ``width`` x ``height`` image is read in, along its longer side, or None when it is not
    a strip (see :data:`STRIP_RATIO`) and is read whole. Tiles are :data:`TILE_LENGTH` long and overlap
    by :data:`TILE_OVERLAP`; at most :data:`MAX_TILES` (the image is scaled down to fit first: see
    :func:`fit_strip`)."""
    length, side = max(width, height), max(1, min(width, height))
    if length <= STRIP_RATIO * side or length <= TILE_LENGTH:
        return None
    step = TILE_LENGTH - TILE_OVERLAP
    tiles: list[Tile] = []
    start = 0
    while True:
        end = min(start + TILE_LENGTH, length)
        last = end == length
        keep_from = 0.0 if not tiles else start + TILE_OVERLAP / 2
        tiles.append(Tile(start, end, keep_from, float("inf") if last else end - TILE_OVERLAP / 2))
        if last:
            return tiles
        start += step


def fit_strip(bgr: np.ndarray) -> np.ndarray:
    """``bgr`` scaled down, if it is a strip longer than :data:`MAX_TILES` tiles, so that it is not."""
    height, width = bgr.shape[:2]
    longest = TILE_LENGTH + (MAX_TILES - 1) * (TILE_LENGTH - TILE_OVERLAP)
    if strip_tiles(width, height) is None or max(width, height) <= longest:
        return bgr
    _ensure_room_for_opencv()
    try:
        import cv2
    except ImportError as exc:
        raise ocr_load_error(exc) from exc

    scale = longest / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def _padded(bgr: np.ndarray) -> np.ndarray:
    """``bgr`` with white added below or to the right so both sides are at least :data:`MIN_TILE_SIDE`."""
    height, width = bgr.shape[:2]
    below, right = max(0, MIN_TILE_SIDE - height), max(0, MIN_TILE_SIDE - width)
    if not below and not right:
        return bgr
    return np.pad(bgr, ((0, below), (0, right), (0, 0)), constant_values=255)


def _onnxruntime_offline() -> None:
    """Turn ONNX Runtime's telemetry off, before its first import in this process.

    Left on, onnxruntime (1.32, on Linux too) writes a device id and queues 1DS telemetry events under
    ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` (outside the data directory, so never pruned) and,
    with no writable home, prints an ANSI-coloured warning to stderr that breaks ``log_format: json``. It
    starts that when imported, so ``ORT_DISABLE_TELEMETRY`` must be set before; ``disable_telemetry_events``
    then stops the events of an onnxruntime imported earlier by something else, or too old for the variable.
    """
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime

    onnxruntime.disable_telemetry_events()


#: The address space loading the OCR maps (OpenCV's wheel about 350 MiB, ONNX Runtime 45 MiB), and some
#: room for its first allocations: with less left, OpenCV's libraries crashed the daemon (SIGSEGV while
#: they initialised) instead of failing to load, so loading is refused (:func:`ensure_address_space`).
OCR_LOAD_BYTES = 450 * 2**20


def _ensure_room_for_opencv() -> None:
    """Raise :class:`OutOfMemory` if OpenCV is not loaded yet and there is not room for the OCR's libraries
    under the process's address-space limit (see :data:`OCR_LOAD_BYTES`)."""
    if "cv2" not in sys.modules:
        ensure_address_space(OCR_LOAD_BYTES, "loading its OCR")


class TextReader:
    """One RapidOCR engine, loaded on first use and shared (calls are serialised)."""

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._engine = None
        self._lock = threading.Lock()
        #: Images read so far, over all calls (an image a PDF shows on many pages is read once).
        self.images_read = 0

    def _load(self):  # -> rapidocr_onnxruntime.RapidOCR
        """RapidOCR, imported and its ONNX sessions made. Raises :class:`OcrUnavailable` when a library is
        missing (a slim image without the system libraries OpenCV's wheel loads), :class:`OutOfMemory` when
        memory or address space ran out (see :func:`ocr_load_error`)."""
        _ensure_room_for_opencv()
        try:
            _onnxruntime_offline()  # before rapidocr_onnxruntime imports onnxruntime and makes its sessions
            from rapidocr_onnxruntime import RapidOCR

            # Limit type "max": detect on the image as it is, up to the 2,000 px RapidOCR shrinks every image
            # to (the default "min" scales the *shorter* side up to 736 px: slower, and it merges words on
            # small images). RapidOCR 1.4 does not read det_limit_side_len with "max": it picks 960, 1,500 or
            # 2,000 by the image's size, which never shrinks it; a 2,000 x 2,000 page takes seconds to detect.
            return RapidOCR(det_limit_type="max", det_limit_side_len=960)
        except ImportError as exc:
            raise ocr_load_error(exc) from exc
        except Exception as exc:  # making a session: ONNX Runtime's bad_alloc is memory, anything else a bug
            raise_if_out_of_memory(exc, "loading its OCR")
            raise

    def read_boxes(self, bgr: np.ndarray) -> list[OcrBox]:
        """Every text box found in a BGR image. A long thin strip (a receipt, a banner) is read in tiles
        (see :func:`strip_tiles`); RapidOCR shrinks it whole until its text is too small to read, or, past
        about 125:1, fails to resize it at all (``ResizeImgError``)."""
        tiles = strip_tiles(bgr.shape[1], bgr.shape[0])
        if tiles is None:
            return self._read_tile(bgr)
        original = bgr.shape[:2]
        bgr = fit_strip(bgr)
        tiles = strip_tiles(bgr.shape[1], bgr.shape[0]) or [Tile(0, max(bgr.shape[:2]), 0.0, float("inf"))]
        boxes: list[OcrBox] = []
        vertical = bgr.shape[0] > bgr.shape[1]
        for tile in tiles:
            raise_if_cancelled()  # a long strip is many OCRs
            part = bgr[tile.start:tile.end] if vertical else bgr[:, tile.start:tile.end]
            if int(part.max()) - int(part.min()) < _BLANK_CONTRAST:  # one colour: no text to find
                continue
            for box in self._read_tile(_padded(part)):
                if vertical:
                    box.top, box.bottom = box.top + tile.start, box.bottom + tile.start
                else:
                    box.left, box.right = box.left + tile.start, box.right + tile.start
                centre = (box.top + box.bottom) / 2 if vertical else (box.left + box.right) / 2
                if tile.keep_from <= centre < tile.keep_to:  # a box in an overlap is kept by one tile
                    boxes.append(box)
        if bgr.shape[:2] != original:  # scaled down to fit MAX_TILES: boxes in the image's own pixels
            down, across = original[0] / bgr.shape[0], original[1] / bgr.shape[1]
            for box in boxes:
                box.left, box.right = box.left * across, box.right * across
                box.top, box.bottom = box.top * down, box.bottom * down
        return boxes

    def _read_tile(self, bgr: np.ndarray) -> list[OcrBox]:
        """Every text box RapidOCR finds in ``bgr`` (none if it cannot resize it)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            # Imported only once loaded: importing rapidocr_onnxruntime imports onnxruntime (see _load).
            from rapidocr_onnxruntime.ch_ppocr_det.utils import ResizeImgError as DetResizeError
            from rapidocr_onnxruntime.utils.process_img import ResizeImgError

            try:
                result, _elapsed = self._engine(bgr)
            except (ResizeImgError, DetResizeError):  # a shape tiling did not foresee: nothing read
                result = None
            except Exception as exc:  # ONNX Runtime's bad_alloc (RapidOCR wraps it with its traceback as text)
                raise_if_out_of_memory(exc, "running its OCR")
                raise
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
