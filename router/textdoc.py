"""Text documents as providers are sent them: without the byte order mark a UTF-8 file may start with.

The daemon takes a ``text/*`` document whose bytes start with UTF-8's byte order mark (``EF BB BF``, as
Windows Notepad and Excel's "CSV UTF-8" write it): the mark says only that the file is UTF-8. Sent on,
it would reach the model as a U+FEFF ZERO WIDTH NO-BREAK SPACE in front of the text (and count as a
token). The plugins that send a text document's text or bytes take it from here, so that every
provider drops the mark the same way; a U+FEFF further in is text and is kept.
"""

from __future__ import annotations

import codecs

#: UTF-8's byte order mark.
UTF8_BOM = codecs.BOM_UTF8


def without_bom(data: bytes) -> bytes:
    """``data`` (a text document's bytes) without a leading UTF-8 byte order mark."""
    return data.removeprefix(UTF8_BOM)


def document_text(data: bytes) -> str:
    """The text of a UTF-8 text document: a leading byte order mark dropped, bytes that are not UTF-8
    replaced with U+FFFD (the daemon refuses such documents on the way in; these are the plugins' last
    guard)."""
    return data.decode("utf-8-sig", errors="replace")


def document_head_text(head: bytes) -> str:
    """:func:`document_text` of ``head``, the first bytes of a longer document: a character the cut ends
    in the middle of is left out (not made a U+FFFD)."""
    return codecs.getincrementaldecoder("utf-8-sig")(errors="replace").decode(head, final=False)
