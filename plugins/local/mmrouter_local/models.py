"""The formats the local provider reads: its model's ``input_mime_types``."""

from __future__ import annotations

#: Images Pillow opens (``PIL.Image.MIME`` and the aliases clients send): not HEIC or SVG, which it cannot
#: read, so routing sends those to a model that takes them (Gemini takes HEIC) instead of this OCR.
IMAGE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/x-bmp", "image/x-ms-bmp",
    "image/tiff", "image/x-tiff", "image/avif", "image/jp2", "image/jpx", "image/x-icon",
    "image/vnd.microsoft.icon", "image/icns", "image/x-pcx", "image/x-portable-anymap", "image/x-portable-bitmap",
    "image/x-portable-graymap", "image/x-portable-pixmap", "image/x-tga", "image/x-targa", "image/xbm",
    "image/x-xbitmap", "image/xpm", "image/x-xpixmap", "image/sgi", "image/vnd.adobe.photoshop", "image/mpo",
    "image/palm",
})
#: Documents ``extract.Extractor.document`` reads: PDF and UTF-8 text. Audio and video: any PyAV decodes.
EXTRACT_MIME_TYPES = IMAGE_TYPES | {"application/pdf", "text/*"}
