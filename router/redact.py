"""Keep secrets out of logs: a logging filter that masks every configured secret; and the JSON log
format (one object per line) for log collectors."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Iterable

#: Every SecretFilter alive, so that :func:`remember` reaches them all.
_FILTERS: weakref.WeakSet[SecretFilter] = weakref.WeakSet()


def longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    """The non-empty ``secrets``, longest first: the order :func:`mask` needs."""
    return tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


def mask(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each secret replaced by ``***``. Give the secrets :func:`longest_first`, so a
    secret that holds another is masked whole (sorted once, not on every call)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler writes it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = longest_first(secrets)
        _FILTERS.add(self)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these secrets too (keys of providers made again by a reload)."""
        self.secrets = longest_first([*self.secrets, *secrets])

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format: log what there is, not raise
            message = f"{record.msg!r} {record.args!r} (the log call's arguments do not fit its format)"
        record.msg = mask(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        return True


def remember(secrets: Iterable[str]) -> None:
    """Mask these secrets too in every log filter alive: keys a plugin resolved itself (say from an
    environment variable named by ``ProviderSettings.api_key_env``), which no config section holds.
    Values are stripped; those under 4 characters are left out (they would mask ordinary words)."""
    found = {s.strip() for s in secrets if isinstance(s, str)}
    found = {s for s in found if len(s) >= 4}
    for log_filter in list(_FILTERS):
        if not found <= set(log_filter.secrets):
            log_filter.add(found)


def install(secrets: Iterable[str]) -> SecretFilter:
    """Add a :class:`SecretFilter` to every handler of the root logger; return it (to add secrets later)."""
    log_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
    return log_filter


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and,
    with an exception, ``exception``. Runs after :class:`SecretFilter`, so it sees masked text."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)

    converter = time.gmtime
