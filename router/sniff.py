"""Cheap content checks: magic bytes -> MIME family, text or binary, media duration, PDF page count,
animated GIFs, an image's pixel size and whether it is cut short."""

from __future__ import annotations

import codecs
import contextlib
import io
import mmap
import os
import re
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .mime import ALIASES, normalise_mime
from .types import Modality

#: How many first bytes :func:`mime_problem` is given: magic numbers need 16, the text check more.
HEAD_BYTES = 4096

#: (offset, magic, mime family) — the family is compared with the declared MIME type. An ``ftyp`` box at
#: byte 4 (mp4, m4a, mov, HEIC, AVIF) and a BMP's header are read by :func:`magic_family` itself.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"fLaC", "audio/flac"),
    (0, b"OggS", "ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"),  # webm / mkv
    (0, b"II*\0", "image/tiff"),
    (0, b"MM\0*", "image/tiff"),
    (0, b"II+\0", "image/tiff"),  # BigTIFF
    (0, b"MM\0+", "image/tiff"),
]

#: The ``ftyp`` brands of HEIF images coded in HEVC (an iPhone's HEIC photos, Android's), of AV1 (AVIF),
#: and of the HEIF structure alone (``mif1``, ``msf1``: the compatible brands then say which coding).
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
#: The sizes of a BMP's DIB header (at byte 14) that Pillow reads: OS/2 1.x and 2.x, BITMAPINFOHEADER to V5.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

#: The families of text with a byte order mark (:func:`_bom_text`): a Windows "Unicode Text" export.
#: No non-text type takes them, and the text types take UTF-8 only.
_BOM_TEXT_FAMILIES = frozenset({"utf-16", "utf-32"})

#: A magic family that is not itself a MIME type -> the MIME types of its content, as messages name it
#: (``adts`` means nothing to a client that declared ``audio/mp4``).
_FAMILY_NAMES: dict[str, str] = {
    "utf-16": "UTF-16 text", "utf-32": "UTF-32 text",
    "wav": "audio/wav", "webp": "image/webp", "adts": "audio/aac (ADTS)", "mpeg-frame": "audio/mpeg",
    "ogg": "Ogg (audio/ogg or video/ogg)", "matroska": "WebM/Matroska (video/webm, audio/webm or video/x-matroska)",
    "mp4": "MP4 (video/mp4, audio/mp4 or video/quicktime)",
    "image/heic": "a HEIC image (image/heic)", "heif": "a HEIF image (image/heif)",
    "image/avif": "an AVIF image (image/avif)", "image/bmp": "a BMP image (image/bmp)",
    "image/tiff": "a TIFF image (image/tiff)",
}


def family_name(family: str) -> str:
    """The magic ``family`` (see :func:`magic_family`) as a message names it: its MIME type(s)."""
    return _FAMILY_NAMES.get(family, family)


#: Declared MIME type -> the magic families that may carry it.
_COMPATIBLE: dict[str, set[str]] = {
    "image/png": {"image/png"}, "image/jpeg": {"image/jpeg"}, "image/jpg": {"image/jpeg"},
    "image/gif": {"image/gif"}, "image/webp": {"webp"}, "application/pdf": {"application/pdf"},
    "audio/wav": {"wav"}, "audio/x-wav": {"wav"}, "audio/wave": {"wav"}, "audio/vnd.wave": {"wav"},
    "audio/flac": {"audio/flac"}, "audio/x-flac": {"audio/flac"},
    "audio/ogg": {"ogg"}, "audio/opus": {"ogg"}, "video/ogg": {"ogg"},
    "audio/mpeg": {"audio/mpeg", "mpeg-frame"}, "audio/mp3": {"audio/mpeg", "mpeg-frame"},
    "audio/webm": {"matroska"}, "video/webm": {"matroska"}, "video/x-matroska": {"matroska"},
    "audio/x-matroska": {"matroska"},
    "audio/mp4": {"mp4"}, "audio/m4a": {"mp4"}, "audio/x-m4a": {"mp4"}, "audio/aac": {"mp4", "adts"},
    "video/mp4": {"mp4"}, "video/quicktime": {"mp4"},
}

#: Declared types (normalised) the router knows no magic of their own for, or reads loosely (a BMP or TIFF
#: variant, a raw photo, a HEIF of a coding not listed above): content of no known format passes, as do these
#: magic families; content of any other known format is refused, as :data:`_OPEN_TOPS` says.
_ALSO: dict[str, set[str]] = {
    "image/bmp": {"image/bmp"}, "image/x-bmp": {"image/bmp"}, "image/x-ms-bmp": {"image/bmp"},
    "image/tiff": {"image/tiff"}, "image/x-tiff": {"image/tiff"}, "image/tiff-fx": {"image/tiff"},
    # raw photos: TIFF structures
    "image/dng": {"image/tiff"}, "image/x-adobe-dng": {"image/tiff"}, "image/x-dng": {"image/tiff"},
    "image/x-canon-cr2": {"image/tiff"}, "image/x-nikon-nef": {"image/tiff"}, "image/x-nikon-nrw": {"image/tiff"},
    "image/x-sony-arw": {"image/tiff"}, "image/x-sony-sr2": {"image/tiff"}, "image/x-pentax-pef": {"image/tiff"},
    "image/x-samsung-srw": {"image/tiff"}, "image/x-epson-erf": {"image/tiff"}, "image/x-kodak-dcr": {"image/tiff"},
    "image/heic": {"image/heic", "heif"}, "image/heif": {"image/heic", "heif", "image/avif"},
    "image/heic-sequence": {"image/heic", "heif"}, "image/heif-sequence": {"image/heic", "heif"},
    "image/avif": {"image/avif"}, "image/avif-sequence": {"image/avif"},
    "image/mpo": {"image/jpeg"}, "image/x-mpo": {"image/jpeg"},
}

#: Magic family -> the top-level types under which its content may come declared with a type the router does
#: not list (:data:`_COMPATIBLE`, :data:`_ALSO`): containers and MPEG audio have more names than it lists
#: (``video/3gpp``, ``audio/mpa``, ``audio/pcm`` for a WAV), and an ISO media file (``ftyp``) may hold a
#: raw photo (``image/x-canon-cr3``). The content of any other family (an image, a PDF, FLAC), each of whose
#: types the router lists, is refused under a type not its own: a PNG declared ``image/bmp`` or ``image/heic``.
_OPEN_TOPS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"audio", "video", "image"}), "ogg": frozenset({"audio", "video"}),
    "matroska": frozenset({"audio", "video"}), "wav": frozenset({"audio", "video"}),
    "audio/mpeg": frozenset({"audio", "video"}), "mpeg-frame": frozenset({"audio", "video"}),
    "adts": frozenset({"audio", "video"}),
}

#: (declared type, normalised; content family) -> the type of that content, where the declared type is
#: compatible with the family but names another format: browsers and phones declare an m4a (AAC in an mp4
#: container) ``audio/aac``, which routing would take for raw AAC (ADTS), a format fewer models take; a
#: camera's MPO (a 3D or multi-frame photo) is a JPEG, its other frames after the first image's end, which
#: every JPEG decoder (the models') reads as that first image. (``image/mpo`` is no alias in
#: :data:`router.mime.ALIASES`: plugins list it as a type of its own, the ``local`` one among them.)
_RETYPE: dict[tuple[str, str], str] = {("audio/aac", "mp4"): "audio/mp4", ("image/mpo", "image/jpeg"): "image/jpeg",
                                       ("image/x-mpo", "image/jpeg"): "image/jpeg"}

#: Declared types that name no format, only "some bytes": what HTTP and S3 libraries send for a file whose
#: type they do not know. No model takes them, so content of a known format declared so is taken as that
#: format (:data:`_FAMILY_TYPE`), and other content is refused, asking for its type.
GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/x-download",
                           "application/force-download"})

#: A magic family -> the one MIME type of its content, for content declared with a :data:`GENERIC_TYPES`
#: type. The containers that hold audio or video (mp4, Ogg, Matroska) have several types (``video/mp4`` or
#: ``audio/mp4``...): content of theirs must be declared.
_FAMILY_TYPE: dict[str, str] = {
    "image/png": "image/png", "image/jpeg": "image/jpeg", "image/gif": "image/gif", "webp": "image/webp",
    "application/pdf": "application/pdf", "audio/flac": "audio/flac", "wav": "audio/wav",
    "audio/mpeg": "audio/mpeg", "mpeg-frame": "audio/mpeg", "adts": "audio/aac", "image/bmp": "image/bmp",
    "image/tiff": "image/tiff", "image/heic": "image/heic", "heif": "image/heif", "image/avif": "image/avif",
}

#: A type of each modality, as a refusal asking for the content's type gives an example.
_EXAMPLE_TYPES = {Modality.IMAGE: "image/png", Modality.AUDIO: "audio/mpeg", Modality.VIDEO: "video/mp4",
                  Modality.DOCUMENT: "application/pdf, or text/plain for text"}

#: Top-level MIME type -> the modality it must be declared as.
MIME_MODALITY = {"image": Modality.IMAGE, "audio": Modality.AUDIO, "video": Modality.VIDEO,
                 "application": Modality.DOCUMENT, "text": Modality.DOCUMENT}


def magic_family(head: bytes) -> str | None:
    """The content family that ``head`` (the first bytes) shows, or None if unknown.

    Text with a UTF-16 or UTF-32 byte order mark (``utf-16``, ``utf-32``) is told before MPEG audio: FF FE,
    UTF-16LE's mark, is also a valid MPEG frame header (MPEG-1 Layer I, with a CRC). It is taken as text only
    when what follows the mark reads as text (see :func:`_bom_text`), which MPEG audio data does not."""
    if encoding := _bom_text(head):
        return encoding.lower()
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":  # RF64/BW64: WAVs over 4 GiB
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _ftyp_family(head)
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "image/bmp"
    for offset, magic, family in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return family
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "adts"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mpeg-frame"
    return None


def _ftyp_family(head: bytes) -> str:
    """The family of content starting with an ISO media file's ``ftyp`` box (``head``): a HEIC, HEIF or AVIF
    image by its major brand, or by its compatible brands when the major one (``mif1``, ``msf1``) names the
    HEIF structure alone; else ``mp4`` (video/mp4, audio/mp4, video/quicktime, 3GPP...)."""
    major = head[8:12]
    size = int.from_bytes(head[:4], "big")
    end = min(size, len(head)) if size >= 16 else 16
    brands = {major, *(head[at:at + 4] for at in range(16, end - 3, 4))}
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and brands & _AVIF_BRANDS and not brands & _HEIC_BRANDS):
        return "image/avif"
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and brands & _HEIC_BRANDS):
        return "image/heic"
    return "heif" if major in _HEIF_BRANDS else "mp4"


def mime_problem(mime_type: str, modality: Modality, head: bytes) -> str | None:
    """Why ``mime_type`` does not fit ``modality`` or the content's first bytes (``head``, up to
    :data:`HEAD_BYTES`), or None."""
    mime = normalise_mime(mime_type)
    if mime in GENERIC_TYPES:
        return _generic_problem(mime_type, modality, head)
    top = mime.split("/")[0]
    if MIME_MODALITY.get(top) is not modality and not (top == "video" and modality is Modality.AUDIO):
        article = "an" if modality.value[0] in "aeiou" else "a"
        return f"MIME type {mime_type!r} is not {article} {modality.value} type"
    if top == "text":
        return _text_problem(mime_type, head)
    accepted = _COMPATIBLE.get(mime)
    found = magic_family(head)
    if accepted is None:  # no magic of its own: refused only as another known format, see _OPEN_TOPS
        if found is None or found in _ALSO.get(mime, ()) or top in _OPEN_TOPS.get(found, ()):
            return None
        return f"declared {mime_type!r} but {_unlike(found, set(), head)}"
    if found is None or found not in accepted:
        return f"declared {mime_type!r} but {_unlike(found, accepted, head)}"
    return None


def _generic_problem(mime_type: str, modality: Modality, head: bytes) -> str | None:
    """Why content declared ``mime_type``, a type naming no format (:data:`GENERIC_TYPES`), cannot be taken
    as the format its first bytes ``head`` show (see :func:`content_mime`), or None: that format is not
    known, has several types, or is not of ``modality``. The refusal names the type to declare. UTF-16 or
    UTF-32 text (a Windows "Unicode Text" export) is named as such (see :func:`magic_family`)."""
    found = magic_family(head)
    if found in _BOM_TEXT_FAMILIES:
        return f"declared {mime_type!r}, which names no format, and {_bom_text_is(found)}"
    real = _FAMILY_TYPE.get(found or "")
    if real is None:
        if found:
            what = f"the content looks like {family_name(found)}"
        elif _text_problem(mime_type, head) is None:
            what = "the content looks like UTF-8 text (declare text/plain, text/markdown, text/csv...)"
        else:
            what = f"the content is not a format the router recognises (e.g. {_EXAMPLE_TYPES.get(modality, '')})"
        return f"declared {mime_type!r}, which names no format, and {what}: declare the file's MIME type"
    real_modality = MIME_MODALITY[real.split("/")[0]]
    if real_modality is not modality:
        article = "an" if modality.value[0] in "aeiou" else "a"
        return (f"declared {mime_type!r} and the content is {real}, not {article} {modality.value}: send it as "
                f"{real_modality.value} with mime_type {real!r}")
    return None


#: How far into a PDF :func:`mime_problem` looks for a misplaced ``%PDF-`` header (pypdf and most viewers
#: accept one within the first 1024 bytes; the router does not).
_PDF_HEADER_WITHIN = 1024
#: The start of a web page (after white space and a byte order mark): what a server's error or login page,
#: saved under the name of the file that was meant, looks like.
_HTML = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*(?:<!--.*?-->\s*|<\?xml[^>]*>\s*)*<(?:!doctype\s+html|html|head|body)[\s>]",
                   re.IGNORECASE | re.DOTALL)


def _unlike(found: str | None, accepted: set[str], head: bytes) -> str:
    """What the content (its first bytes ``head``, of the family ``found``) is, for a MIME_MISMATCH message
    where the declared type takes the families ``accepted``: a PDF whose header is not at byte 0 (a CRLF
    or a byte order mark before it) is told where it is and that it must come first; a web page and UTF-16
    or UTF-32 text are named as such."""
    if found in _BOM_TEXT_FAMILIES:
        return _bom_text_is(found)
    at = head.find(b"%PDF-", 0, _PDF_HEADER_WITHIN + len(b"%PDF-"))
    if found is None and "application/pdf" in accepted and at > 0:
        if head[:at] == codecs.BOM_UTF8:
            before = "a UTF-8 byte order mark"
        elif head[:at].isspace():
            before = f"{at} bytes of white space (line breaks or spaces)"
        else:
            before = f"{at} other bytes"
        return f"its %PDF- header is at byte {at} (after {before}): it must come first; remove what is before it"
    if found is None and _HTML.match(head):
        return "the content looks like HTML (a web page, such as an error or login page saved under the file's name)"
    return f"the content looks like {family_name(found) if found else 'unrecognised bytes'}"


def _bom_text_is(family: str) -> str:
    """What the content of a family of :data:`_BOM_TEXT_FAMILIES` is, and what to do, for a refusal."""
    encoding = family.upper()
    return (f"the content is {encoding} text (it starts with a {encoding} byte order mark): convert it to UTF-8 and "
            "declare text/plain, text/csv...")


def content_mime(mime_type: str, head: bytes) -> str:
    """The MIME type to keep for content declared ``mime_type`` whose first bytes are ``head``: the
    declared one, or the content's real type when the declared one is a compatible but wrong alias
    (``audio/aac`` for an mp4 container: ``audio/mp4``) or names no format (``application/octet-stream``
    for a PDF: ``application/pdf``). A non-standard name of a type (:data:`router.mime.ALIASES`:
    ``application/x-pdf``, ``image/jpg``) is kept as its registered one: stored so, an upload or a session's
    turn reads the same to a daemon of an older version (after a rollback), which may not know the alias.
    Call it on content :func:`mime_problem` passed."""
    mime = normalise_mime(mime_type)
    declared = mime if mime_type.split(";", 1)[0].strip().lower() in ALIASES else mime_type
    family = magic_family(head)
    if not family:
        return declared
    if mime in GENERIC_TYPES:
        return _FAMILY_TYPE.get(family, mime_type)
    return _RETYPE.get((mime, family), declared)


def _bom_text(head: bytes) -> str | None:
    """"UTF-32" or "UTF-16" when ``head`` starts with that encoding's byte order mark and reads as text in it
    (no control character but tab and line breaks), else None."""
    for bom, encoding, codec in ((codecs.BOM_UTF32_LE, "UTF-32", "utf-32-le"), (codecs.BOM_UTF32_BE, "UTF-32", "utf-32-be"),
                                 (codecs.BOM_UTF16_LE, "UTF-16", "utf-16-le"), (codecs.BOM_UTF16_BE, "UTF-16", "utf-16-be")):
        if head.startswith(bom):
            body = head[len(bom):]
            try:  # whole code units only: a full head may end inside a character
                text = codecs.getincrementaldecoder(codec)().decode(body, final=False)
            except UnicodeDecodeError:
                return None
            return encoding if text and all(c.isprintable() or c in "\t\r\n" for c in text) else None
    return None


def _text_problem(mime_type: str, head: bytes) -> str | None:
    """Why ``head`` is not the start of UTF-8 text, or None. Providers and the local extractor read
    text documents as UTF-8, so binary content (or UTF-16, which has NUL bytes) declared as text is
    refused here rather than sent as mojibake; UTF-16 and UTF-32 are named by their byte order mark."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return (f"declared {mime_type!r} but the content is {encoding} text (it starts with a {encoding} byte "
                    f"order mark), not UTF-8: convert it to UTF-8")
    if b"\0" in head:
        return f"declared {mime_type!r} but the content is binary (it has NUL bytes), not UTF-8 text"
    try:  # a full head may end inside a multi-byte character; a shorter one is the whole content
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < HEAD_BYTES)
    except UnicodeDecodeError as exc:
        return (f"declared {mime_type!r} but the content is not UTF-8 text (byte {exc.start} is invalid); "
                "send text documents as UTF-8")
    return None


#: The most steps (blocks, data sub-blocks, runs of stray bytes) a walk of a GIF's blocks (:func:`_gif_blocks`)
#: takes before it answers: a real GIF's first frame takes some thousands (its data comes in sub-blocks of 255
#: bytes), all of a 250 MB one a million; one crafted of 1-byte sub-blocks could take millions.
GIF_MAX_STEPS = 1 << 20
#: What starts a block of a GIF: an extension, an image, the trailer.
_GIF_BLOCK = re.compile(rb"[\x21\x2c\x3b]")


def animated_gif(source: bytes | str | os.PathLike[str]) -> bool:
    """Whether a GIF (bytes or a path) holds more than one image frame: an animation.

    Walks the GIF's blocks (:func:`_gif_blocks`) up to the second image. Content that is not a GIF, or is
    cut short before a second image starts, counts as still; one that takes over :data:`GIF_MAX_STEPS` steps
    counts as animated, so a model that takes still GIFs only refuses it retryably rather than be sent what
    it may refuse for good. Blocking for a path: it maps the file and reads it up to its second frame (all
    of a still one).
    """
    with _mapped(source) as data:
        walked = _gif_blocks(data, stop_at_image=2)
    return walked is None or walked[0] > 1


def _gif_cut_short(source: bytes | str) -> str:
    """Where a GIF (bytes or a path) ends inside one of its blocks (``"frame 2's image data"``), or "" if it
    does not (it may lack its trailer byte, 0x3B, as decoders accept: see :func:`_gif_blocks`). A path is
    mapped, not read; one that takes over :data:`GIF_MAX_STEPS` steps counts as whole."""
    with _mapped(source) as data:
        walked = _gif_blocks(data)
    return walked[1] if walked is not None else ""


def _gif_blocks(data: bytes | mmap.mmap, stop_at_image: int = 0) -> tuple[int, str] | None:
    """Walks the blocks of the GIF ``data`` as Pillow reads them, without decoding a pixel: color tables and
    data sub-blocks are skipped by their lengths, a stray byte between blocks is skipped; the trailer, the
    end of the data or the start of image number ``stop_at_image`` (if not 0) stops it.

    Returns how many images it found (started), and where the data ends inside a block, cut short
    (``"frame 3's image data"``, ``"an extension block after frame 2"``), or "" if it ends between blocks:
    after the trailer, or without it once the last block is whole, which Pillow and ffmpeg read as the end of
    the GIF (browsers show the frames they have read). An image whose data sub-blocks have no empty one after
    them (the block terminator) is cut short, though its LZW data may be whole: telling would take decoding
    it. Content that is not a GIF is (0, ""); None after :data:`GIF_MAX_STEPS` steps (it cannot tell).
    """
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return 0, ""
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # the header, the global color table
    images = 0
    block = "its global color table"  # what is being walked
    in_blocks = False  # walking the data sub-blocks of an extension or image
    for _ in range(GIF_MAX_STEPS):
        if at >= len(data):
            return images, block if in_blocks or at > len(data) else ""
        if in_blocks:
            size = data[at]
            at += size + 1
            in_blocks = size > 0  # an empty sub-block ends them
        elif data[at] == 0x3B:  # the trailer
            return images, ""
        elif data[at] == 0x2C:  # an image: its descriptor, local color table and LZW code size
            images += 1
            block = f"frame {images}'s image data"
            if images == stop_at_image or at + 10 > len(data):
                return images, "" if images == stop_at_image else block
            flags = data[at + 9]
            at += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            in_blocks = True
        elif data[at] == 0x21:  # an extension: its label
            block = f"an extension block after frame {images}" if images else "an extension block before frame 1"
            at += 2
            in_blocks = True
        else:  # a stray byte (some encoders leave them): Pillow skips it and reads the frames that follow
            found = _GIF_BLOCK.search(data, at + 1)
            if found is None:
                return images, ""
            at = found.start()
    return None


@contextlib.contextmanager
def _mapped(source: bytes | str | os.PathLike[str]) -> Iterator[bytes | mmap.mmap]:
    """The bytes of ``source``: itself, or a file (its path) mapped read-only (an empty one is ``b""``: it cannot
    be mapped)."""
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            yield b""
            return
        with mapped:
            yield mapped


_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_PDF_HEAD = 64 * 1024 * 1024


def pdf_pages(source: bytes | str) -> int | None:
    """The page count of a PDF (bytes or a path), or None if it cannot be read (see :func:`_pdf_facts`)."""
    return _pdf_facts(source)[0]


def _pdf_facts(source: bytes | str) -> tuple[int | None, bool]:
    """The page count of a PDF (bytes or a path), or None if it cannot be read, and whether it is locked: it
    opens only with a password (a user password; one with only an owner password opens with the empty one).

    pypdf reads the cross-reference table and the page tree's count, which seeks through a stored
    file rather than reading it all; compressed object streams (PDF 1.5+) and incremental updates
    are counted right. A file pypdf cannot parse, or cannot open without its password, falls back to
    counting the page objects visible in its first 64 MiB.
    """
    import pypdf  # imported on the first PDF, not at start-up
    from pypdf.errors import DependencyError, PyPdfError

    locked = False
    try:
        with contextlib.ExitStack() as stack:
            stream = io.BytesIO(source) if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))
            reader = pypdf.PdfReader(stream, strict=False)
            locked = reader.is_encrypted and not reader.decrypt("")  # as mmrouter-local reads it
            if not locked:
                return len(reader.pages) or None, False
    except (PyPdfError, DependencyError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            OSError):
        pass  # an AES-encrypted one without the cryptography package (pypdf[crypto]) too: locked or not, unknown
    if isinstance(source, bytes):
        head = source[:_PDF_HEAD]
    else:
        with open(source, "rb") as f:
            head = f.read(_PDF_HEAD)
    return len(_PAGE.findall(head)) or None, locked


@dataclass(frozen=True)
class Measured:
    """What :func:`measure_media` found of a media: what routing goes by (its duration and pages, None where
    unknown) and what makes it unusable whatever the route, found as cheaply."""

    seconds: float | None = None
    pages: int | None = None
    #: A container PyAV read holding streams, none of them audio (a silent screen recording): nothing to hear.
    no_audio: bool = False
    #: A PDF that opens only with its (user) password: no provider can read it.
    locked: bool = False
    #: An image's (width, height) in pixels as its header says, where Pillow reads it (see :func:`_image_facts`).
    pixels: tuple[int, int] | None = None
    #: Why an image that models take as it is (PNG, JPEG, GIF, WebP) cannot be decoded: cut short or damaged.
    damaged: str = ""


def measure(media_path_or_bytes: bytes | str, modality: Modality) -> tuple[float | None, int | None]:
    """(duration in seconds, pages) of media where that is cheap to know, else None for each
    (see :func:`measure_media`)."""
    measured = measure_media(media_path_or_bytes, modality)
    return measured.seconds, measured.pages


def measure_media(media_path_or_bytes: bytes | str, modality: Modality) -> Measured:
    """What is cheap to know of media (bytes or a stored file's path) of ``modality``.

    WAV durations come from the header; other audio and video from the
    container's header through PyAV when it is installed (it comes with
    mmrouter-local), which lists its streams too (an audio one or none); PDF pages
    from the page tree (:func:`pdf_pages`), and whether the PDF needs a password;
    an image's pixel size from its header, and whether it is cut short (:func:`_image_facts`).
    Unknown values are None, which rules on durations treat as not matching.
    Blocking: call it from a worker thread.
    """
    if isinstance(media_path_or_bytes, bytes):
        data = media_path_or_bytes
    else:
        with open(media_path_or_bytes, "rb") as f:
            data = f.read(1 << 16)
    if modality in (Modality.AUDIO, Modality.VIDEO):
        if magic_family(data[:16]) == "wav":
            seconds = _wav_seconds(media_path_or_bytes)  # RF64 and odd headers: the container's answer
            if seconds is not None:
                return Measured(seconds)
        seconds, no_audio = _container_facts(media_path_or_bytes)
        return Measured(seconds, no_audio=no_audio)
    if modality is Modality.DOCUMENT and magic_family(data[:8]) == "application/pdf":
        pages, locked = _pdf_facts(media_path_or_bytes)
        return Measured(pages=pages, locked=locked)
    if modality is Modality.IMAGE:
        return _image_facts(media_path_or_bytes, data[:HEAD_BYTES])
    return Measured()


#: The magic families of the images models take as they are -> Pillow's name of the format: one of these that
#: Pillow cannot decode is sent as it is, and its provider refuses the call for it (OpenAI: "You uploaded an
#: unsupported image"), so :func:`_image_facts` checks it.
_CHECKED_IMAGES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "webp": "WEBP"}


def _image_facts(source: bytes | str, head: bytes) -> Measured:
    """The pixel size of an image (bytes or a stored file's path; ``head``, its first bytes) as its header
    says, and, for a PNG, JPEG, GIF or WebP (by ``head``), why it cannot be decoded: Pillow cannot read its
    header, a PNG's chunks are cut short or its critical ones fail their checksums (Pillow's ``verify`` of
    the PNG as libpng reads it: :func:`png_as_read`), a JPEG has no end marker after its first scan starts
    (:func:`_jpeg_cut_short`: Pillow finds it truncated), a GIF ends inside one of its blocks
    (:func:`_gif_cut_short`), a WebP libwebp cannot open.

    No pixel is decoded: a PNG's chunks are checksummed (some ms for 10 MB), a JPEG's end is looked for and a
    GIF's blocks are walked by their lengths (some ms for 10 MB). Nothing is known without Pillow (it comes with
    mmrouter-local), of a format it does not read (HEIC, SVG), or of an image larger than it opens
    (:class:`PIL.Image.DecompressionBombError`)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return Measured()
    checked = _CHECKED_IMAGES.get(magic_family(head) or "")
    if checked == "PNG":
        source = png_as_read(source)
    with contextlib.ExitStack() as stack:  # a stored file that cannot be opened is not a damaged image
        stream = io.BytesIO(source) if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))
        try:
            with Image.open(stream, formats=[checked] if checked else None) as image:
                pixels = image.size
                if checked == "PNG":
                    image.verify()
        except Image.DecompressionBombError:
            return Measured()
        except UnidentifiedImageError:  # its message names the file
            return Measured(damaged=f"its {checked} header cannot be read") if checked else Measured()
        except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...) on bad content
            return Measured(damaged=str(exc)[:80] or type(exc).__name__) if checked else Measured()
    if checked == "JPEG" and _jpeg_cut_short(source):
        return Measured(pixels=pixels, damaged="it ends before its end-of-image marker")
    if checked == "GIF" and (block := _gif_cut_short(source)):
        return Measured(pixels=pixels, damaged=f"it ends inside {block}")
    return Measured(pixels=pixels)


def png_as_read(source: bytes | str) -> bytes | str:
    """A PNG (bytes or a path) as libpng, which providers and browsers decode with, reads it: without its
    ancillary chunks (``tEXt``, ``pHYs``, ``iCCP``...: a lowercase first letter) that fail their checksum,
    which libpng warns of and skips (a bad checksum in a critical chunk, IHDR, PLTE, IDAT, is an error to it),
    where Pillow refuses the image for them. ``source`` itself if there are none, or if it is no PNG. The
    chunks are walked by their lengths up to IEND; a chunk that runs past the end, or has no letters for a
    type, stops the walk (Pillow's ``verify`` finds it). A path is mapped, not read, unless a chunk is left out."""
    with _mapped(source) as data:
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            return source
        dropped, at, end = [], 8, len(data)  # dropped: the (start, end) of each chunk left out
        while at + 12 <= end:
            length, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
            after = at + 12 + length
            if kind == b"IEND" or after > end or not kind.isalpha():
                break
            if kind[0] & 0x20 and zlib.crc32(data[at + 4:after - 4]) != int.from_bytes(data[after - 4:after], "big"):
                dropped.append((at, after))
            at = after
        if not dropped:
            return source
        kept = zip([0, *(stop for _, stop in dropped)], [*(start for start, _ in dropped), end], strict=True)
        return b"".join(data[start:stop] for start, stop in kept)


def _jpeg_cut_short(source: bytes | str) -> bool:
    """Whether a JPEG (bytes or a path) has no end-of-image marker (FF D9) after the start of its first scan,
    which Pillow reads as "image file is truncated": a file cut short. Its segments are walked by their lengths
    up to that scan (an EXIF thumbnail's end marker is in one of them); content that is no JPEG there, or whose
    segments run past its end, counts as whole (Pillow's header reading judges it). A path is mapped, not read."""
    with _mapped(source) as data:
        at = 2
        while at + 4 <= len(data) and data[at] == 0xFF:
            marker = data[at + 1]
            if marker == 0xDA:  # start of scan: its entropy-coded data holds no FF D9 but the end marker
                return data.rfind(b"\xff\xd9", at) < 0
            if marker == 0xFF:  # a fill byte
                at += 1
            elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment
                at += 2
            else:
                at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return False


def _wav_seconds(source: bytes | str) -> float | None:
    """Seconds of a WAV file (bytes or a path) from its header, or None if it is not a readable WAV.

    Any failure to parse counts as unknown: a malformed header must not fail the request that carries it.
    A data size past the file's end (a recorder that streamed its WAV wrote a placeholder, 0x7FFFFFFF or
    0xFFFFFFFF, it never went back to fix) counts the frames the file holds.
    """
    try:
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else source) as wav:
            frame_bytes = wav.getnchannels() * wav.getsampwidth()
            frames = min(wav.getnframes(), max(0, size - _WAV_HEADER_BYTES) // frame_bytes)
            return frames / float(wav.getframerate())
    except Exception:  # the wave module raises more than wave.Error (a bare RuntimeError, struct.error...)
        return None


#: The size of a canonical WAV header (RIFF, fmt and data chunk headers): the least before the samples.
_WAV_HEADER_BYTES = 44


def demux_options(source: bytes | str | Path) -> dict[str, str]:
    """``av.open``'s options for ``source`` (bytes, or a stored file's path): ffmpeg may open nothing but it.
    A client's bytes may be a session description or playlist naming other inputs (SDP, HLS, concat), which
    ffmpeg opens: 300 bytes of SDP declared ``audio/x-sdp`` made the daemon bind UDP ports and wait 10 s in
    a worker thread, and playlists may name URLs or the daemon's files."""
    return {"protocol_whitelist": "none" if isinstance(source, bytes) else "file"}


def _container_facts(source: bytes | str) -> tuple[float | None, bool]:
    """The duration a media container declares (None if unknown), and whether it holds streams but no
    audio one, read by PyAV if installed (opening a container lists its streams: no more is read)."""
    try:
        import av
    except ImportError:
        return None, False
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else source, metadata_errors="ignore",
                     options=demux_options(source)) as box:
            no_audio = bool(box.streams) and not box.streams.audio
            if box.duration:
                return box.duration / av.time_base, no_audio
            stream = next(iter(box.streams), None)
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base), no_audio
            return None, no_audio
    except Exception:  # any container PyAV cannot read: duration and streams unknown
        return None, False
