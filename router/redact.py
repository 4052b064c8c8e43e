"""Keep secrets out of logs: a logging filter that masks every configured secret."""

from __future__ import annotations

import logging
from collections.abc import Iterable


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler writes it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = frozenset(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = mask(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        return True


def install(secrets: Iterable[str]) -> None:
    """Add a :class:`SecretFilter` to every handler of the root logger."""
    log_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
