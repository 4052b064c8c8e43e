"""Which characters names may hold, and text made fit to send.

The daemon keeps, logs and answers back names a client or a configuration gives: session ids, tags,
file names, MIME types, rule names and tag conditions. It refuses in them only the characters that
break a log line or mislead whoever reads it (:func:`refused_at`):

- the C0 and C1 control characters (U+0000-U+001F, U+007F-U+009F), the tab and newline included;
- the line and paragraph separators U+2028 and U+2029;
- the bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder how
  the text after them is shown (``invoice_\u202egnp.exe`` shows as ``invoice_exe.png``);
- lone surrogates (U+D800-U+DFFF), which are no characters: no UTF-8 holds them.

Everything else is taken, whatever the Python's Unicode tables say of it: the spaces of every script
(U+00A0 NO-BREAK SPACE, U+202F NARROW NO-BREAK SPACE in every macOS screenshot's name, U+3000
IDEOGRAPHIC SPACE), the joiners of Persian, Hindi and emoji sequences (U+200C, U+200D), the marks Hebrew
and Arabic keyboards insert (U+200E, U+200F, U+061C), U+FEFF, noncharacters and code points unassigned in
the running Python's Unicode version (emoji newer than it). None of them breaks a line, and the JSON log
writes each as it is. ``str.isprintable()``, which refuses every space but U+0020, every format character
and every code point it does not know, is not the test.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

#: The characters refused in names (see the module's docstring).
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

#: Names of control characters, which the Unicode database names none of.
_CONTROL_NAMES = {
    "\x00": "NULL", "\x07": "BELL", "\x08": "BACKSPACE", "\t": "CHARACTER TABULATION", "\n": "LINE FEED",
    "\x0b": "LINE TABULATION", "\x0c": "FORM FEED", "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE", "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def refused_at(text: str) -> int | None:
    """The index of the first character of ``text`` that names may not hold, or None."""
    found = _REFUSED.search(text)
    return None if found is None else found.start()


def describe(char: str) -> str:
    """A character as a message names it: ``U+202E RIGHT-TO-LEFT OVERRIDE``, ``U+000A LINE FEED``;
    one without a name in the Unicode database is said by its kind (``U+0091 (a control character)``)."""
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "")
    if not name:
        code = ord(char)
        name = ("(a control character)" if code < 0xA0 else "(a lone surrogate)" if 0xD800 <= code < 0xE000
                else "(unnamed)")
    return f"U+{ord(char):04X} {name}"


def name_problem(text: str) -> str | None:
    """Why a name may not hold ``text`` (``has U+000A LINE FEED at character 4, which breaks a log
    line``; characters are counted from 1), or None when it may."""
    index = refused_at(text)
    if index is None:
        return None
    char = text[index]
    why = ("which reorders how the text after it is shown" if "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069"
           else "which no UTF-8 text holds" if "\ud800" <= char <= "\udfff" else "which breaks a log line")
    return f"has {describe(char)} at character {index + 1}, {why}"


def python_escape(char: str) -> str:
    """``char`` as Python escapes it: ``\\x1b``, ``\\n``, ``\\u202e``, ``\\ud83d``."""
    return char.encode("unicode_escape").decode("ascii")


def json_escape(char: str) -> str:
    """``char`` as JSON escapes it: ``\\uXXXX`` (a lone surrogate too), a surrogate pair beyond U+FFFF."""
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))


def escaped(text: str, keep: str = "", escape: Callable[[str], str] = python_escape) -> str:
    """``text`` with each character names may not hold (:func:`refused_at`) but those in ``keep`` written
    as ``escape`` writes it (Python's escapes, or :func:`json_escape`), every other character as it is:
    text a provider or a plugin wrote can neither drive a terminal nor forge a line of a log or of the
    CLI's output, and answers in any script are shown as written."""
    if _REFUSED.search(text) is None:
        return text
    return _REFUSED.sub(lambda m: m[0] if m[0] in keep else escape(m[0]), text)


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: lone surrogates (a PDF's odd text map read by pypdf, a JSON ``"\\ud83d"``
    escape in an answer or a provider's error message) become U+FFFD, and a surrogate pair the character it
    stands for. Protobuf cannot send them, nor a UTF-8 log write them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def held_back(text: str) -> tuple[str, str]:
    """``text`` split into what may be sent now (made valid, see :func:`valid_text`) and its last character
    when that is a high surrogate, whose low half a next piece of a stream may bring (a server that cuts
    its text by UTF-16 units, as JavaScript's ``substring`` does): ``("smile ", "\\ud83d")``."""
    if text and "\ud800" <= text[-1] <= "\udbff":
        return valid_text(text[:-1]), text[-1]
    return valid_text(text), ""


def composed(text: str) -> str:
    """``text`` in Unicode's composed form (NFC): a tag typed on a Mac (NFD, ``e`` + U+0301) is the same tag
    as one typed elsewhere (``é``), in rules and in statistics. ASCII text is returned as it is, at once."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)
