"""The size limits the Messages API documents, checked before a request is sent.

A request over one of them is refused by the API only after it was uploaded; refused here it costs
nothing, and :class:`router.errors.ProviderInputTooLarge` lets the router try the rule's fallbacks.

Sources (checked 2026):

- Images and vision (platform.claude.com/docs/en/build-with-claude/vision): at most 8000x8000 px per
  image, 2000x2000 px when a request holds more than 20 images; at most 100 images per request for
  models with a 200k-token context window, 600 for the others.
- The same page: an image whose long edge is over 1568 px (or of more than about 1,600 tokens) is
  scaled down, its aspect ratio kept, before the model sees it. An image over a limit is therefore
  scaled down to :data:`FIT_SIDE` px on its long side before sending (``router.convert.fit``): the model
  sees no less of it than it would have.
- The 5 MB per image is counted on the base64 text, not the decoded bytes: the API answers
  ``image exceeds 5 MB maximum: N bytes > 5242880 bytes`` with N the base64 length
  (github.com/anthropics/claude-code issue 14887; Claude Code's ``API_IMAGE_MAX_BASE64_SIZE``).
- PDF support (platform.claude.com/docs/en/build-with-claude/pdf-support): at most 100 PDF pages per
  request (600 for models with a context window over 200k tokens) and 32 MB per request, both over
  the entire request.
- The anthropic 2.x SDK names the refusals: ``ImageDimensionsTooLargeError`` (400,
  ``image_dimensions_too_large``) and ``ContentTooLargeError`` (413, ``request_too_large``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Any

from router import Media, Modality, ModelInfo
from router.errors import ProviderInputTooLarge
from router.routing import base64_length, sent_bytes

MB = 1024 * 1024
#: The largest image, as base64 text.
MAX_IMAGE_BASE64_BYTES = 5 * MB
#: The longest side of an image; of each image, in a request holding more than MANY_IMAGES of them.
MAX_IMAGE_SIDE = 8000
MAX_IMAGE_SIDE_MANY = 2000
MANY_IMAGES = 20
#: The long side an image over a limit is scaled down to: the most Claude's models see of any image.
FIT_SIDE = 1568
#: The most bytes an image scaled down may take: 5 MB as base64.
MAX_IMAGE_BYTES = MAX_IMAGE_BASE64_BYTES // 4 * 3
#: An image of more bytes than this is larger than Claude uses even within FIT_SIDE (a PNG photo, a JPEG of
#: high quality: a 1568 px photo takes some 0.2-1 MB as a JPEG), and is scaled down in a request over
#: MAX_REQUEST_BYTES (:func:`larger_than_used`).
LARGE_IMAGE_BYTES = 1 * MB
#: The largest request body. Counted in MiB and on a lower bound of the body (its media and text),
#: so a request refused here is refused by the API whichever megabyte it means. The models declare it
#: (``ModelInfo.max_request_bytes``, :mod:`.models`), so that routing passes Claude by for a request the router
#: already knows to be larger; what it cannot know (images as scaled, a session's history) is checked here.
MAX_REQUEST_BYTES = 32 * MB
#: Context windows up to this take at most SMALL_CONTEXT_ITEMS pages and images; larger ones LARGE_CONTEXT_ITEMS.
SMALL_CONTEXT = 200_000
SMALL_CONTEXT_ITEMS = 100
LARGE_CONTEXT_ITEMS = 600

#: Where each image of a request is and its (width, height), if known.
ImageSizes = list[tuple[str, tuple[int, int] | None]]


def _too_large(provider: str, message: str, **measured: int) -> ProviderInputTooLarge:
    """The refusal, before sending, of a request over a limit (``message``); ``measured`` (the size and its limit)
    goes to the error's ErrorInfo metadata, as the router's own size refusals give theirs."""
    error = ProviderInputTooLarge(provider, f"{message} (refused before sending)")
    error.metadata.update({key: str(value) for key, value in measured.items()})
    return error


def items_allowed(model: ModelInfo | None) -> int:
    """How many PDF pages, and how many images, one request to ``model`` may hold (unknown model:
    those of a 200k-token context window, the catalogue's)."""
    if model is not None and model.context_tokens > SMALL_CONTEXT:
        return LARGE_CONTEXT_ITEMS
    return SMALL_CONTEXT_ITEMS


def stored_size(media: Media) -> int:
    """The media's size in bytes, without reading it (0 for media given by URL)."""
    if media.data is not None:
        return len(media.data)
    if media.path is not None:
        return media.path.stat().st_size
    return 0


def check_image_size(media: Media, where: str, provider: str) -> None:
    """Refuse an image whose base64 text is over 5 MB, before it is read."""
    if why := _bytes_over(stored_size(media)):
        raise image_too_large(where, why, provider)


def check_image_sides(data: bytes, where: str, provider: str) -> tuple[int, int] | None:
    """Refuse an image over 8000 px on a side; return its (width, height) if its header says."""
    size = image_size(data)
    check_sides(size, where, provider)
    return size


def max_side(images: int) -> int:
    """The longest side Claude takes of each image of a request holding ``images`` images."""
    return MAX_IMAGE_SIDE_MANY if images > MANY_IMAGES else MAX_IMAGE_SIDE


def check_sides(size: tuple[int, int] | None, where: str, provider: str, images: int = 1) -> None:
    """Refuse an image of ``size`` (None: unknown, taken) over 8000 px on a side, or over 2000 px in a
    request holding more than 20 ``images``."""
    if why := _sides_over(size, images):
        raise image_too_large(where, why, provider)


def over_limits(stored: int, size: tuple[int, int] | None, images: int) -> str:
    """Why an image of ``stored`` bytes and ``size`` (None: unknown) is over Claude's limits in a
    request holding ``images`` images ("the image is <why>"), or "" if it is within them."""
    return _bytes_over(stored) or _sides_over(size, images)


def larger_than_used(stored: int, size: tuple[int, int] | None) -> bool:
    """Whether an image of ``stored`` bytes and ``size`` (None: unknown) is larger than Claude uses of it: over
    :data:`FIT_SIDE` px on a side, or over :data:`LARGE_IMAGE_BYTES`. Those are scaled down in a request
    over :data:`MAX_REQUEST_BYTES`."""
    return (size is not None and max(size) > FIT_SIDE) or stored > LARGE_IMAGE_BYTES


def image_too_large(where: str, why: str, provider: str) -> ProviderInputTooLarge:
    """The error refusing the image at ``where`` for ``why`` (:func:`over_limits`)."""
    return _too_large(provider, f"{where}: the image is {why}")


def _bytes_over(stored: int) -> str:
    """Why an image of ``stored`` bytes is over 5 MB as base64, or ""."""
    encoded = base64_length(stored)
    if encoded <= MAX_IMAGE_BASE64_BYTES:
        return ""
    return f"{encoded:,} bytes as base64, over Claude's limit of 5 MB ({MAX_IMAGE_BASE64_BYTES:,} bytes) per image"


def _sides_over(size: tuple[int, int] | None, images: int) -> str:
    """Why an image of ``size`` (None: unknown) is over the sides Claude takes in a request of ``images``
    images, or ""."""
    if size is None or max(size) <= max_side(images):
        return ""
    if images <= MANY_IMAGES:
        return f"{size[0]}x{size[1]} px, over Claude's limit of {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} px"
    return (f"{size[0]}x{size[1]} px, over Claude's limit of {MAX_IMAGE_SIDE_MANY}x{MAX_IMAGE_SIDE_MANY} px in a "
            f"request of more than {MANY_IMAGES} images (it holds {images})")


def check_media(media: Iterable[Media], model: ModelInfo | None, provider: str) -> None:
    """Refuse, before any is read, the media of a request over its PDF pages (where the router counted
    them) or whose documents alone, as sent, are over the request size (its images may be scaled down
    before sending: :func:`check_body` counts them as sent)."""
    media = list(media)
    allowed = items_allowed(model)
    pages = sum(m.pages or 0 for m in media if m.modality is Modality.DOCUMENT)
    if pages > allowed:
        raise _too_large(provider, f"the request holds {pages} PDF pages, over Claude's limit of {allowed} "
                                   "pages per request")
    sent = sum(sent_bytes(m) for m in media)  # what routing counts against max_request_bytes
    check_body(sent, provider, sum(stored_size(m) for m in media if m.modality is not Modality.IMAGE))


def check_images(images: ImageSizes, model: ModelInfo | None, provider: str) -> None:
    """Refuse a request over the image count, or with an image over the sides it takes (2000 px with more
    than 20 images: :func:`check_sides`)."""
    allowed = items_allowed(model)
    if len(images) > allowed:
        raise _too_large(provider, f"the request holds {len(images)} images, over Claude's limit of "
                                   f"{allowed} per request")
    for where, size in images:
        check_sides(size, where, provider, len(images))


def request_over(size: int, given: int = 0) -> str:
    """Why a request body of (at least) ``size`` bytes is over 32 MB ("the request is <why>"), or "". The API
    counts the body as sent, its media base64-encoded (a third larger than the files): the reason says so, with
    the media's own bytes (``given``) when known, so that a 25 MB file is not read as a 33 MB one."""
    if size <= MAX_REQUEST_BYTES:
        return ""
    before = f" ({given:,} bytes before encoding)" if given else ""
    return (f"at least {size:,} bytes, over Claude's limit of 32 MB ({MAX_REQUEST_BYTES:,} bytes) per request, "
            f"counting its media base64-encoded as they are sent{before}")


def check_body(size: int, provider: str, given: int = 0) -> None:
    """Refuse a request body of (at least) ``size`` bytes over 32 MB, its media ``given`` bytes before they were
    base64-encoded (0: not known). ErrorInfo metadata gives ``request_bytes`` (``size``) and ``max_request_bytes``."""
    if why := request_over(size, given):
        raise _too_large(provider, f"the request is {why}", request_bytes=size, max_request_bytes=MAX_REQUEST_BYTES)


def body_bytes(system: str, turns: list[dict[str, Any]]) -> int:
    """A lower bound of the request body's size: the bytes of its text and base64 data."""
    total = len(system.encode())
    for turn in turns:
        for block in turn["content"]:
            total += len(block.get("text", "").encode())
            source = block.get("source") or {}
            data = source.get("data") or source.get("url") or ""
            total += len(data.encode())
    return total


# -- image headers -------------------------------------------------------------------------------

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


#: A PNG's signature, and what follows it in every PNG: the length (13) and type of its IHDR chunk.
_PNG = b"\x89PNG\r\n\x1a\n"
_IHDR = b"\x00\x00\x00\x0dIHDR"
#: The largest width or height a PNG's IHDR may hold (2^31 - 1).
_PNG_MAX_SIDE = 0x7FFFFFFF


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, JPEG or WebP image from its header; None if it cannot tell. A header
    that is not one (a PNG's signature followed by anything but a well-formed IHDR chunk: garbage, a file
    cut short) gives None, never a size read from other bytes: such an image, within 5 MB, is sent as given
    for the API to judge (it refuses one it cannot read: PROVIDER_BAD_REQUEST), as the other plugins send
    every image, not refused as too large for a size it does not have."""
    if data.startswith(_PNG):
        return _png_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """The size in a PNG's IHDR chunk, which must come first after the signature, of 13 bytes, with its
    CRC right and both sides within 1 and 2^31 - 1 px (as the PNG specification, and Pillow, want)."""
    if data[8:16] != _IHDR or len(data) < 33:
        return None
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        return None
    width, height = struct.unpack(">II", data[16:24])
    if not (0 < width <= _PNG_MAX_SIDE and 0 < height <= _PNG_MAX_SIDE):
        return None
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's start-of-frame segment, found by walking the segments."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size of a lossy (VP8), lossless (VP8L) or extended (VP8X) WebP."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None
