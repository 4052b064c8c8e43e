"""What a provider's events must be: checked by the daemon on every event a plugin yields, and by
the plugin authors' test kit (:mod:`router.testing`)."""

from __future__ import annotations

import dataclasses
import math

from .types import FinishReason, TextDelta, Transcript, TranscriptReady, Usage, UsageReport

#: The largest integer the wire (int64) carries: of token counts, and of a model's counts (router.plugins).
MAX_INT64 = 2**63 - 1

#: Usage's fields, and whether each is a count (an int) rather than an amount (a float).
_USAGE_FIELDS = tuple((f.name, f.type in ("int", int)) for f in dataclasses.fields(Usage))


def event_problem(event: object) -> str | None:
    """What is wrong with one event ``generate`` yielded, or None if it keeps the contract."""
    if isinstance(event, TextDelta):
        return None if isinstance(event.text, str) else f"TextDelta.text is {type(event.text).__name__}, not str"
    if isinstance(event, TranscriptReady):
        transcript = event.transcript
        if not isinstance(transcript, Transcript) or not isinstance(transcript.text, str):
            return f"TranscriptReady.transcript must be a router.Transcript with str text, not {type(transcript).__name__}"
        return None
    if isinstance(event, UsageReport):
        return usage_report_problem(event)
    return f"unexpected event {type(event).__name__}: generate yields TextDelta, TranscriptReady and UsageReport"


def usage_count(value: object) -> int:
    """A token count a provider reported, as :class:`Usage` takes it: ``value`` when it is an int in
    0..2**63-1, else 0 (absent: a str, a float, a negative number from a compatible server). For plugins
    reading usage from JSON, which the contract would otherwise refuse as a bad event (INTERNAL)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64 else 0


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: lone surrogates (a PDF's odd text map read by pypdf, a JSON ``"\\ud83d"``
    escape) become U+FFFD, and a surrogate pair the character it stands for. Protobuf cannot send them,
    so an answer holding one failed as INTERNAL after it was produced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


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
        elif isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
            return f"Usage.{name} is {value!r}, not a finite number >= 0"
    return None
