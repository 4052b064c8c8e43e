"""MIME types as providers expect them: lower case, no parameters, common aliases resolved.

Clients send the non-standard names operating systems and browsers use
(``image/jpg``, ``audio/x-wav``, ``audio/webm; codecs=opus``); provider APIs
check the type against a list of registered names and refuse the others. Every
plugin sends :func:`normalise_mime` of the declared type.
"""

from __future__ import annotations

#: Non-standard MIME types clients send, and the registered type providers expect instead.
ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
    "image/x-jpeg": "image/jpeg", "image/jpe": "image/jpeg", "image/pjp": "image/jpeg", "image/x-jfif": "image/jpeg",
    # an animated PNG and a JFIF as browsers name them, and Citrix's clipboard names of PNG, JPEG and GIF: PNG,
    # JPEG and GIF content (router.sniff checks it), which every model taking those reads
    "image/apng": "image/png", "image/vnd.mozilla.apng": "image/png", "image/x-citrix-png": "image/png",
    "image/jfif": "image/jpeg", "image/x-citrix-jpeg": "image/jpeg", "image/x-citrix-gif": "image/gif",
    "image/x-gif": "image/gif", "image/x-webp": "image/webp",
    "image/x-windows-bmp": "image/bmp", "image/ms-bmp": "image/bmp", "image/x-bitmap": "image/bmp",
    "image/x-win-bitmap": "image/bmp", "image/dib": "image/bmp", "image/tif": "image/tiff", "image/x-tif": "image/tiff",
    "audio/x-ms-flac": "audio/flac",
    "audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg", "audio/x-mp3": "audio/mpeg", "audio/x-mpeg": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg", "audio/x-mpeg-3": "audio/mpeg", "audio/mpg": "audio/mpeg",
    "audio/x-m4a": "audio/mp4", "audio/m4a": "audio/mp4",
    "audio/x-flac": "audio/flac", "audio/x-aac": "audio/aac",
    # older and browser names of PDF (freedesktop.org's shared-mime-info lists them as its aliases)
    "application/x-pdf": "application/pdf", "application/acrobat": "application/pdf",
    "applications/vnd.pdf": "application/pdf", "text/pdf": "application/pdf", "text/x-pdf": "application/pdf",
}


def normalise_mime(mime_type: str) -> str:
    """The lower-case MIME type without parameters, with common aliases resolved
    (``Image/JPG`` -> ``image/jpeg``, ``audio/x-wav; codecs=1`` -> ``audio/wav``)."""
    base = mime_type.split(";", 1)[0].strip().lower()
    return ALIASES.get(base, base)
