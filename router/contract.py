"""What a provider's events must be: checked by the daemon on every event a plugin yields, and by
the plugin authors' test kit (:mod:`router.testing`)."""

from __future__ import annotations

import dataclasses
import math
import reprlib

from .text import held_back, valid_text
from .types import (
    MAX_ROUTE_NOTE_CHARS,
    FinishReason,
    RouteNote,
    TextDelta,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
    Utterance,
    Word,
)

#: The largest integer the wire (int64) carries: of token counts, and of a model's counts (router.plugins).
MAX_INT64 = 2**63 - 1

#: Usage's fields, and whether each is a count (an int) rather than an amount (a float).
_USAGE_FIELDS = tuple((f.name, f.type in ("int", int)) for f in dataclasses.fields(Usage))


def event_problem(event: object) -> str | None:
    """What is wrong with one event ``generate`` yielded, or None if it keeps the contract."""
    if isinstance(event, TextDelta):
        return None if isinstance(event.text, str) else f"TextDelta.text is {type(event.text).__name__}, not str"
    if isinstance(event, TranscriptReady):
        return transcript_problem(event.transcript)
    if isinstance(event, UsageReport):
        return usage_report_problem(event)
    if isinstance(event, RouteNote):
        return route_note_problem(event)
    return (f"unexpected event {type(event).__name__}: generate yields TextDelta, TranscriptReady, UsageReport "
            "and RouteNote")


def route_note_problem(note: RouteNote) -> str | None:
    """What is wrong with a :class:`RouteNote` a plugin yielded (its text not a str, blank, or over
    :data:`router.types.MAX_ROUTE_NOTE_CHARS` characters), or None if it keeps the contract."""
    text = note.text
    if not isinstance(text, str):
        return f"RouteNote.text is {type(text).__name__}, not str"
    if not text.strip():
        return "RouteNote.text is empty: yield a note only when there is something to say"
    if len(text) > MAX_ROUTE_NOTE_CHARS:
        return f"RouteNote.text has {len(text):,} characters, over the {MAX_ROUTE_NOTE_CHARS:,} a note may have"
    return None


def transcript_problem(transcript: object) -> str | None:
    """What is wrong with a TranscriptReady's transcript: not a router.Transcript, or a field of it or of
    one of its utterances or words not of the type router/types.py declares (times, confidences and the
    duration: finite numbers >= 0). Protobuf, bridging and ``with_valid_text`` would fail on it later."""
    if not isinstance(transcript, Transcript):
        return f"TranscriptReady.transcript is {type(transcript).__name__}, not a router.Transcript"
    problem = _fields_problem(transcript, Transcript)
    return f"Transcript.{problem}" if problem else None


def _fields_problem(item: object, cls: type) -> str | None:
    """What is wrong with the fields of ``item``, a ``cls``: ``"<field> is ..."``, or None. The field's
    path is written only for a problem: a long transcript has thousands of words to check."""
    for name, declared in _SPEECH_FIELDS[cls]:
        value = getattr(item, name)
        if declared is str:
            if not isinstance(value, str):
                return f"{name} is {type(value).__name__}, not str"
        elif declared is float:
            if not _is_amount(value):
                return f"{name} is {reprlib.repr(value)}, not a finite number >= 0"
        else:
            problem = _list_problem(value, declared)
            if problem:
                return f"{name}{problem}"
    return None


def _list_problem(items: object, cls: type) -> str | None:
    """What is wrong with a list of ``cls`` (Utterance or Word): ``" is ..."`` or ``"[2]..."``, or None."""
    if not isinstance(items, list):
        return f" is {type(items).__name__}, not a list of router.{cls.__name__}"
    for index, item in enumerate(items):
        if not isinstance(item, cls):
            return f"[{index}] is {type(item).__name__}, not a router.{cls.__name__}"
        problem = _fields_problem(item, cls)
        if problem:
            return f"[{index}].{problem}"
    return None


def _is_amount(value: object) -> bool:
    """Whether ``value`` is a finite number >= 0 (an int or a float, not a bool) that a double holds."""
    if type(value) is float:  # nearly always
        return 0 <= value < math.inf  # NaN is not
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return 0 <= float(value) < math.inf
    except OverflowError:  # an int too large for a float
        return False


#: What a transcript's field holds, by the type router/types.py declares for it (a field of another type
#: fails the import: teach :func:`_fields_problem` to check it).
_DECLARED = {"str": str, "float": float, "list[Utterance]": Utterance, "list[Word]": Word}
#: The fields of Transcript, Utterance and Word, each with what it holds (str, float, or the class of
#: its list's items).
_SPEECH_FIELDS = {cls: tuple((f.name, _DECLARED[f.type]) for f in dataclasses.fields(cls))
                  for cls in (Transcript, Utterance, Word)}


def usage_count(value: object) -> int:
    """A token count a provider reported, as :class:`Usage` takes it: ``value`` when it is an int in
    0..2**63-1, else 0 (absent: a str, a float, a negative number from a compatible server). For plugins
    reading usage from JSON, which the contract would otherwise refuse as a bad event (INTERNAL)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64 else 0


def with_valid_text(event: object) -> object:
    """``event`` (one that keeps the contract) with its texts made valid (see :func:`valid_text`); the
    same object when they are, as nearly always."""
    if isinstance(event, TextDelta):
        text = valid_text(event.text)
        return event if text is event.text else TextDelta(text)
    if isinstance(event, TranscriptReady):
        transcript = event.transcript
        for item in (transcript, *transcript.utterances, *transcript.words):
            for name in ("text", "speaker", "language"):
                value = getattr(item, name, None)
                if isinstance(value, str) and not value.isascii():
                    setattr(item, name, valid_text(value))
    return event


class PairJoiner:
    """Joins the halves of a surrogate pair that two TextDeltas of one stream split (a server that cuts its
    text by UTF-16 units, as JavaScript's ``substring`` does): a delta's trailing high surrogate is held
    back and put before the next delta's text; held at the end of the text (another event, the stream's
    end), it is U+FFFD, as any lone surrogate is (see :func:`valid_text`)."""

    def __init__(self) -> None:
        self.held = ""

    def joined(self, delta: TextDelta) -> TextDelta:
        """``delta`` to send: after the half held back, made valid, without a trailing high surrogate
        (held for the next delta); its text may be empty. The same object when nothing changes."""
        text, self.held = held_back(self.held + delta.text if self.held else delta.text)
        return delta if text is delta.text else TextDelta(text)

    def flush(self) -> TextDelta | None:
        """The delta of the half held back (U+FFFD, its pair never came), or None when none is."""
        if not self.held:
            return None
        self.held = ""
        return TextDelta("\ufffd")


def usage_report_problem(report: UsageReport) -> str | None:
    """What is wrong with a UsageReport: its counts, its amounts or its finish reason."""
    if report.finish_reason is not None and not isinstance(report.finish_reason, FinishReason):
        return f"UsageReport.finish_reason is {report.finish_reason!r}, not None or a router.FinishReason"
    usage = report.usage
    if not isinstance(usage, Usage):
        return f"UsageReport.usage is {type(usage).__name__}, not a router.Usage"
    for name, is_count in _USAGE_FIELDS:
        value = getattr(usage, name)
        if is_count:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
                return f"Usage.{name} is {value!r}, not an int in 0..2**63-1"
        elif not _is_amount(value):
            return f"Usage.{name} is {reprlib.repr(value)}, not a finite number >= 0"
    return None
