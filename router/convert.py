"""Image formats a model cannot take, converted to PNG by the router, keeping them images.

GPT-4o, Claude and Gemini take PNG but not BMP or TIFF (scanners and old Windows tools write them).
When Pillow is installed (it comes with mmrouter-local), such an image is converted to PNG for a model
that takes PNG, rather than replaced by the text an OCR bridge reads in it; routing still plans that
bridge, which converts the images the conversion could not (see ``Bridge.convert_to`` in routing).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging

from .mime import normalise_mime
from .types import Media, Modality, ModelInfo

#: The format images are converted to.
PNG = "image/png"
#: The formats converted (normalised MIME types): those Pillow reads and few models take.
CONVERTIBLE = frozenset({"image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/tiff", "image/x-tiff"})
#: Pillow's names of those formats: no other decoder is tried on the bytes.
_PILLOW_FORMATS = ["BMP", "TIFF"]
#: The most pixels an image may have to be converted: decoding takes up to 4 bytes a pixel, and a small
#: file can declare a huge image (a decompression bomb). As many as the local OCR reads.
MAX_PIXELS = 40_000_000
#: The longest side of a converted image: larger ones are scaled down to it. The models scale larger
#: images down anyway (OpenAI first fits them in 2048 x 2048), and the PNG stays small enough to send.
MAX_SIDE = 2048

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """Whether Pillow is installed (looked up once, not imported)."""
    return importlib.util.find_spec("PIL") is not None


def target_format(model: ModelInfo, modality: Modality, formats: frozenset[str]) -> str:
    """The format to convert media of ``formats`` (normalised types ``model`` does not take) to, or ""
    when none of them can be converted for it."""
    if modality is not Modality.IMAGE or not formats & CONVERTIBLE or not available():
        return ""
    return PNG if model.takes_mime(PNG, modality) else ""


def convertible(media: Media) -> bool:
    """Whether ``media`` is in a format :func:`to_png` converts, with bytes the router holds."""
    return (media.modality is Modality.IMAGE and normalise_mime(media.mime_type) in CONVERTIBLE
            and (media.data is not None or media.path is not None))


def to_png(media: Media, max_pixels: int = MAX_PIXELS) -> Media | None:
    """``media`` converted to a PNG (its first frame, at most :data:`MAX_SIDE` pixels a side), or None
    when it cannot be: Pillow missing, content it cannot read, or more than ``max_pixels`` pixels (checked
    from the header, before anything is decoded). Blocking: decodes the image."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        source = io.BytesIO(media.data) if media.data is not None else media.path
        with Image.open(source, formats=_PILLOW_FORMATS) as image:
            if image.width * image.height > max_pixels:
                log.info("not converting %s to PNG: %dx%d pixels is over %d", media.filename or "an image",
                         image.width, image.height, max_pixels)
                return None
            image.load()
            picture = image if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA") else image.convert(
                "RGBA" if "A" in image.getbands() else "RGB")
            picture.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            picture.save(out, format="PNG")
    except Exception as exc:  # Pillow raises many kinds (OSError, ValueError, SyntaxError...) on bad content
        log.info("cannot convert %s to PNG: %s", media.filename or "an image", exc)
        return None
    data = out.getvalue()
    return Media(Modality.IMAGE, PNG, data=data, filename=media.filename, size=len(data))
