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


def open_image(source: Path | bytes):  # -> PIL.Image.Image
    """Open an image file or bytes with Pillow (lazily imported)."""
    from PIL import Image

    return Image.open(str(source) if isinstance(source, Path) else io.BytesIO(source))


def image_facts(image) -> ImageFacts:
    """Format, size and mode of an opened Pillow image."""
    return ImageFacts(image.format or "unknown", image.width, image.height, image.mode)


def to_bgr(image) -> np.ndarray:
    """A Pillow image as the BGR uint8 array OCR takes (alpha flattened onto white)."""
    from PIL import Image

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
