"""Image formats a model cannot take, converted to PNG (or JPEG) by the router, keeping them images.

GPT-4o, Claude and Gemini take PNG but not BMP or TIFF (scanners and old Windows tools write them), nor ICO
(favicons), and GPT-4o and Claude not AVIF (phones and web pages save photos as AVIF; Gemini takes it).
When Pillow is installed (it comes with mmrouter-local), such an image is converted to PNG for a model
that takes PNG, rather than replaced by the text an OCR bridge reads in it; routing still plans that
bridge, which converts the images the conversion could not (see ``Bridge.convert_to`` in routing).
A TIFF of several pages (a fax, a scanner's batch) becomes one image per page, in order, up to
:data:`MAX_PAGES` pages and :data:`MAX_PAGES_BYTES` bytes (:func:`to_pages`).

An image a model takes in its format but refuses for its size (a phone photo over Claude's 5 MB, or
over its 2000 pixels a side in a request of many images) is scaled down by :func:`fit` (for a plugin:
:func:`fit_image`), upright as its EXIF orientation says, and encoded as a JPEG (PNG if it has transparency).

A session's history comes back on every turn, and a client without sessions sends its history again
each time: :func:`convert` and :func:`fit_image` keep the images they made lately (by content), and run at
most :data:`MAX_CONVERSIONS` at once, each of which may take a few hundred MB.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import io
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .mime import normalise_mime
from .sniff import png_as_read
from .types import Media, Modality, ModelInfo

#: The format images are converted to.
PNG = "image/png"
#: The format a picture too large as a PNG is converted to, for a model that takes it.
JPEG = "image/jpeg"
#: Its quality: a noisy scan of 2000 x 2000 pixels stays under :data:`MAX_BYTES`.
JPEG_QUALITY = 85
#: The formats converted (normalised MIME types): those Pillow reads and few models take. An icon (a site's
#: favicon or logo, ICO) becomes its largest picture, which Pillow opens it at.
CONVERTIBLE = frozenset({"image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/tiff", "image/x-tiff", "image/avif",
                         "image/vnd.microsoft.icon", "image/x-icon"})
#: Pillow's names of those formats: no other decoder is tried on the bytes.
_PILLOW_FORMATS = ["BMP", "TIFF", "AVIF", "ICO"]
#: Pillow's names of the formats :func:`fit` scales down: those the models take.
_FITTED_FORMATS = ["JPEG", "PNG", "GIF", "WEBP"]
#: The most pixels an image may have to be converted: decoding takes up to 4 bytes a pixel, and a small
#: file can declare a huge image (a decompression bomb). As many as the local OCR reads.
MAX_PIXELS = 40_000_000
#: The longest side of a converted image: larger ones are scaled down to it. Claude takes at most 2000
#: pixels a side in a request of more than 20 images, and the others scale larger images down anyway
#: (OpenAI first fits them in 2048 x 2048).
MAX_SIDE = 2000
#: The largest converted image: Claude takes 5 MiB of base64 an image, which this stays under (4/3 of it).
MAX_BYTES = 3_700_000
#: The most pages of one image (a multi-page TIFF) converted, each to an image of its own: those after
#: them are left out, and the model and the route are told. Claude takes 100 images a request.
MAX_PAGES = 20
#: The most bytes of the pages of one image converted: the pages after them are left out too. As
#: base64 it stays under Claude's 32 MB a request, with room for the rest of it.
MAX_PAGES_BYTES = 16 * 1024 * 1024
#: How many conversions run at once (each decodes a whole image: up to some 200 MB for the largest).
MAX_CONVERSIONS = 2
#: How many bytes of converted images are kept for the next turns and requests, and how many images.
KEPT_BYTES = 64 * 1024 * 1024
KEPT_IMAGES = 256
#: Pillow's modes of more than 8 bits a channel (16-bit scans, 32-bit integers, floats), which
#: ``Image.convert`` clips rather than scales to 8 bits.
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """Whether Pillow is installed (looked up once, not imported)."""
    return importlib.util.find_spec("PIL") is not None


def target_formats(model: ModelInfo, modality: Modality, formats: frozenset[str]) -> tuple[str, ...]:
    """The formats to convert media of ``formats`` (normalised types ``model`` does not take) to, in
    order of preference (``Bridge.convert_to``): PNG, and JPEG when the model takes it too (for a
    picture too large as a PNG); none when they cannot be converted for it."""
    if modality is not Modality.IMAGE or not formats & CONVERTIBLE or not available():
        return ()
    if not model.takes_mime(PNG, modality):
        return ()
    return (PNG, JPEG) if model.takes_mime(JPEG, modality) else (PNG,)


def convertible(media: Media) -> bool:
    """Whether ``media`` is in a format :func:`to_pages` converts, with bytes the router holds."""
    return (media.modality is Modality.IMAGE and normalise_mime(media.mime_type) in CONVERTIBLE
            and (media.data is not None or media.path is not None))


@dataclass(frozen=True)
class Pages:
    """An image converted by :func:`to_pages`: an image of each page converted, in order, and how many
    pages the file has (a BMP or most TIFFs: one; a fax or a scanner's batch: several). The pages after
    the first ``len(images)`` were left out (:data:`MAX_PAGES`, :data:`MAX_PAGES_BYTES`)."""

    images: tuple[Media, ...]
    total: int

    @property
    def size(self) -> int:
        """The bytes of the converted images."""
        return sum(image.size for image in self.images)

    @property
    def left_out(self) -> int:
        """How many pages were not converted, past the first ones."""
        return self.total - len(self.images)


def to_pages(media: Media, formats: Sequence[str] = (PNG,), max_pixels: int = MAX_PIXELS) -> Pages | None:
    """``media`` converted, each page (frame) to a PNG of at most :data:`MAX_SIDE` pixels a side and 8 bits
    a channel, or to a JPEG when the PNG is over :data:`MAX_BYTES` and ``formats`` has JPEG: its first
    :data:`MAX_PAGES` pages, fewer when they would be over :data:`MAX_PAGES_BYTES` together. None when it
    cannot be: Pillow missing, content it cannot read, a page of more than ``max_pixels`` pixels (checked
    from its header, before it is decoded), or one still over :data:`MAX_BYTES` (the OCR bridge, which
    reads every page, reads it then). Blocking: decodes the pages one after the other.
    """
    try:
        from PIL import Image
    except ImportError:
        return None
    name = media.filename or "an image"
    images: list[Media] = []
    try:
        source = io.BytesIO(media.data) if media.data is not None else media.path
        with Image.open(source, formats=_PILLOW_FORMATS) as image:
            # a BMP has one frame; an animated AVIF's frames are no pages: its first stands for it
            total = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
            for page in range(min(total, MAX_PAGES)):
                image.seek(page)
                data, mime = _page(image, formats, max_pixels, f"page {page + 1}: " if total > 1 else "")
                if images and sum(i.size for i in images) + len(data) > MAX_PAGES_BYTES:
                    break
                images.append(Media(Modality.IMAGE, mime, data=data, filename=media.filename, size=len(data)))
    except Exception as exc:  # Pillow raises many kinds (OSError, ValueError, SyntaxError...) on bad content
        log.info("cannot convert %s: %s", name, exc)
        return None
    if len(images) < total:
        log.info("converted the first %d of the %d pages of %s", len(images), total, name)
    return Pages(tuple(images), total)


def _page(image: Any, formats: Sequence[str], max_pixels: int, page: str) -> tuple[bytes, str]:
    """The page ``image`` is on (seeked to, not decoded yet) encoded, and its format; raises ValueError,
    its message starting with ``page``, when it cannot be (too many pixels, too many bytes)."""
    _check_pixels(image, max_pixels, page)
    image.load()
    image = _scaled_down(image, MAX_SIDE)  # first: a 16-bit image is scaled to 8 bits through floats
    return _within(eight_bits(image), (PNG, *formats), MAX_BYTES, page)


def _scaled_down(image: Any, max_side: int) -> Any:
    """``image`` (decoded) scaled down, its aspect ratio kept, to at most ``max_side`` pixels a side, with a
    smooth filter: a palette or 1-bit image is made RGB(A) or grey first (Pillow scales those modes by
    nearest neighbour, which garbles text and digits: "1,234.56" read "1,334.68"), and a 16-bit or float one
    is scaled without Pillow's ``reduce`` step, which refuses those modes. Within ``max_side``: as it is."""
    if max(image.size) <= max_side:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    image.thumbnail((max_side, max_side), reducing_gap=None if image.mode in _WIDE_MODES else 2.0)
    return image


def _check_pixels(image: Any, max_pixels: int, page: str = "") -> None:
    """Raise ValueError when ``image`` (not decoded yet) has more than ``max_pixels`` pixels."""
    if image.width * image.height > max_pixels:
        raise ValueError(f"{page}{image.width}x{image.height} pixels is over {max_pixels}")


def _within(picture: Any, formats: Sequence[str], max_bytes: int, page: str = "") -> tuple[bytes, str]:
    """``picture`` encoded in the first of ``formats`` (PNG, or JPEG laid on white) that takes at most
    ``max_bytes``, and that format; raises ValueError, its message starting with ``page``, when none does."""
    data, mime = b"", PNG
    for mime in dict.fromkeys(formats):
        if mime == PNG:
            data = _encoded(picture, "PNG")
        else:
            data = _encoded(_flattened(picture), "JPEG", quality=JPEG_QUALITY)
        if len(data) <= max_bytes:
            return data, mime
    raise ValueError(f"{page}{len(data)} bytes as {mime} is over {max_bytes}")


def fit(media: Media, max_side: int, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Media | None:
    """``media``, a PNG, JPEG, GIF or WebP image, scaled down (its aspect ratio kept) to at most ``max_side``
    pixels a side, turned upright as its EXIF orientation says (a phone stores a portrait photo sideways,
    with orientation 6), and encoded as a JPEG, or as a PNG if it has transparency (then a JPEG laid on
    white if that PNG is over ``max_bytes``), for a model that refuses it as it is (too many bytes or
    pixels). None when it cannot be: Pillow missing, content it cannot read, more than ``max_pixels``
    pixels decoded, or still over ``max_bytes``. A JPEG is decoded at 1/2, 1/4 or 1/8 of its size when that
    is still at least the size it is scaled to (a 50 MP photo takes little memory and time). Blocking.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    try:
        with Image.open(pillow_source(media), formats=_FITTED_FORMATS) as image:
            image.draft(None, _scaled_size(image.size, max_side))  # a no-op but for JPEG
            _check_pixels(image, max_pixels)
            image.load()
            image = _scaled_down(image, max_side)
            picture = eight_bits(ImageOps.exif_transpose(image))
            formats = (PNG, JPEG) if picture.has_transparency_data else (JPEG,)
            data, mime = _within(picture, formats, max_bytes)
    except Exception as exc:  # Pillow raises many kinds (OSError, ValueError, SyntaxError...) on bad content
        log.info("cannot scale %s down: %s", media.filename or "an image", exc)
        return None
    return Media(Modality.IMAGE, mime, data=data, filename=media.filename, size=len(data))


def pillow_source(media: Media) -> Any:
    """What Pillow opens ``media`` from: its bytes or its stored file, a PNG as libpng reads it (without its
    ancillary chunks that fail their checksum, which Pillow refuses: :func:`router.sniff.png_as_read`)."""
    readable = png_as_read(media.data if media.data is not None else str(media.path))
    return io.BytesIO(readable) if isinstance(readable, bytes) else readable


def fit_problem(media: Media, max_side: int, max_pixels: int = MAX_PIXELS) -> str:
    """Why :func:`fit` could not scale ``media`` down to ``max_side`` (which it logs, at INFO, but does not
    return), for a refusal to say: Pillow missing, content it cannot read as one of the formats it scales, or
    more than ``max_pixels`` pixels decoded (at the size :func:`fit` decodes a JPEG at). Reads only the
    image's header. Blocking."""
    try:
        from PIL import Image
    except ImportError:
        return "Pillow, which scales images, is not installed"
    def opened() -> Any:
        return Image.open(pillow_source(media), formats=_FITTED_FORMATS)

    try:
        with opened() as image:
            image.draft(None, _scaled_size(image.size, max_side))  # as fit() decodes it
            width, height = image.size
    except Image.DecompressionBombError:
        return f"it has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, which Pillow refuses to open"
    except Exception:  # Pillow raises many kinds (OSError, ValueError, SyntaxError...) on bad content
        return "Pillow cannot read it as a PNG, JPEG, GIF or WebP image"
    if width * height > max_pixels:
        return (f"decoding it takes {width}x{height} px ({width * height:,} pixels), over the {max_pixels:,} "
                "pixels an image may have to be scaled")
    try:  # the header is fine: decode its pixels to say what is wrong with them (a file cut short, say)
        with opened() as image:
            image.draft(None, _scaled_size(image.size, max_side))
            image.load()
    except Exception as exc:
        said = str(exc).replace(str(media.path), "the file") if media.path is not None else str(exc)
        return f"its pixels could not be decoded ({said[:200]}): the file is damaged or cut short"
    return "its pixels could not be encoded again (the daemon's log says why)"


def _scaled_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down, its aspect ratio kept, to at most ``max_side`` a side."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def eight_bits(image: Any) -> Any:
    """``image`` in a mode PNG and the models take with 8 bits a channel. A 16-bit, 32-bit or float
    grayscale image is stretched from its lowest to its highest value (``convert`` would clip it to
    white or black); one of a single value keeps it, as a 16-bit one seen on 8 bits."""
    if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return image
    if image.mode not in _WIDE_MODES:
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    sixteen = image.mode.startswith("I;16")
    if image.mode in ("I;16B", "I;16L", "I;16N"):  # Pillow finds no extrema of these byte orders
        image = image.convert("I")
    low, high = image.getextrema()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("the image has pixels that are not numbers")
    if high > low:
        scale, offset = 255 / (high - low), -low * 255 / (high - low)
    else:
        scale, offset = 0.0, min(max(low / 257 if sixteen else low, 0), 255)
    return image.convert("F").point(lambda value: value * scale + offset).convert("L")


def _flattened(picture: Any) -> Any:
    """``picture`` without transparency (laid on white) in a mode JPEG takes."""
    from PIL import Image

    if picture.mode in ("L", "RGB"):
        return picture
    if picture.mode == "1":
        return picture.convert("L")
    rgba = picture.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _encoded(picture: Any, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    picture.save(out, format=fmt, **options)
    return out.getvalue()


# -- converting at most MAX_CONVERSIONS at once, each image once ------------------------------------

Key = tuple[str, tuple[str, ...]]


class _Kept:
    """The images converted lately (None: those that could not be), by content and formats, least
    recently used dropped first past :data:`KEPT_BYTES` or :data:`KEPT_IMAGES` (a multi-page one counts
    once, with the bytes of all its pages)."""

    def __init__(self) -> None:
        self._images: OrderedDict[Key, Pages | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # each daemon has one event loop, but a process may run several

    def get(self, key: Key) -> tuple[bool, Pages | None]:
        with self._lock:
            if key not in self._images:
                return False, None
            self._images.move_to_end(key)
            return True, self._images[key]

    def put(self, key: Key, image: Pages | None) -> None:
        size = image.size if image is not None else 0
        if size > KEPT_BYTES:
            return
        with self._lock:
            old = self._images.pop(key, None)
            self._bytes += size - (old.size if old is not None else 0)
            self._images[key] = image
            while self._bytes > KEPT_BYTES or len(self._images) > KEPT_IMAGES:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= dropped.size if dropped is not None else 0

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._bytes = 0


_KEPT = _Kept()


@dataclass
class _Running:
    """The conversions of one event loop: the slots they take, and those under way by key."""

    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONVERSIONS))
    under_way: dict[Key, asyncio.Task[Pages | None]] = field(default_factory=dict)


_RUNNING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Running] = weakref.WeakKeyDictionary()


def forget() -> None:
    """Forget the images converted so far (the next request converts them again)."""
    _KEPT.clear()


def _key(media: Media, how: tuple[str, ...]) -> Key | None:
    """What a conversion of ``media`` is kept under: its content and how it is converted (the formats);
    None for a stored file of unknown content."""
    if media.media_id:
        return media.media_id, how
    if media.data is not None:
        return hashlib.sha256(media.data).hexdigest(), how
    return None


async def convert(media: Media, formats: Sequence[str] = (PNG,)) -> tuple[Pages | None, bool]:
    """``media`` converted (:func:`to_pages`, in a worker thread) or None, and whether it was converted
    before (kept from an earlier turn or request, or being converted for another one, which this waits
    for). At most :data:`MAX_CONVERSIONS` run at once in the event loop.

    A conversion goes on when its caller is cancelled (a client left): its thread cannot be stopped, so it
    keeps its slot until it ends, and what it makes is kept for the next request.
    """
    formats = tuple(formats)
    return await _once(media, formats, functools.partial(to_pages, media, formats))


async def fit_image(media: Media, max_side: int, max_bytes: int = MAX_BYTES) -> tuple[Media | None, bool]:
    """``media`` scaled down by :func:`fit` (in a worker thread) or None, and whether it was before: kept
    and run at most :data:`MAX_CONVERSIONS` at once with the conversions, as :func:`convert` does."""
    def made() -> Pages | None:
        image = fit(media, max_side, max_bytes)
        return None if image is None else Pages((image,), 1)

    pages, before = await _once(media, ("fit", str(max_side), str(max_bytes)), made)
    return (pages.images[0] if pages is not None else None), before


async def _once(media: Media, how: tuple[str, ...], make: Callable[[], Pages | None]) -> tuple[Pages | None, bool]:
    """What ``make`` (blocking) makes of ``media``, kept by content and ``how``, and whether it was made
    before: see :func:`convert`."""
    key = _key(media, how)
    if key is not None:
        found, image = _KEPT.get(key)
        if found:
            return _named(image, media), True
    running = _RUNNING.setdefault(asyncio.get_running_loop(), _Running())
    if key is not None and key in running.under_way:
        return _named(await asyncio.shield(running.under_way[key]), media), True
    task = asyncio.ensure_future(_convert(make, running.slots, key))
    if key is not None:
        running.under_way[key] = task
        task.add_done_callback(lambda _: running.under_way.pop(key, None))
    return await asyncio.shield(task), False


async def _convert(make: Callable[[], Pages | None], slots: asyncio.Semaphore, key: Key | None) -> Pages | None:
    async with slots:
        image = await asyncio.to_thread(make)
    if key is not None:
        _KEPT.put(key, image)
    return image


def _named(pages: Pages | None, media: Media) -> Pages | None:
    """A kept conversion, named as ``media`` is now (the same picture may come under another name)."""
    if pages is None:
        return None
    return replace(pages, images=tuple(replace(image, filename=media.filename) for image in pages.images))
