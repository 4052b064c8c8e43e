"""Keep secrets out of logs: a logging filter that masks every configured secret and cuts the query of
every URL (a signed media URL is a live capability); and the JSON log format (one object per line) for
log collectors."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

from .text import escaped

#: Provider settings whose values are secrets, by their name (documented for plugin authors in the README and in
#: ``register_providers``): "tokens" (max_output_tokens, context_tokens) are counts, not secrets; "pat" (a personal
#: access token) only as a whole word of the name (not "path"); "auth" (Authorization, proxy_auth, auth_header) but
#: not "author" nor "authority".
SECRET_SETTING = re.compile(r"key|token(?!s)|secret|passw|passphrase|credential|bearer|cookie|signature|private"
                            r"|(?:^|[_-])pat(?:$|[_-])|auth(?!or(?!iz))", re.IGNORECASE)
#: Every SecretFilter alive, so that :func:`remember` reaches them all.
_FILTERS: weakref.WeakSet[SecretFilter] = weakref.WeakSet()
#: Every secret :func:`remember` was given, for the masking of what clients get (see :func:`remembered`).
_REMEMBERED: set[str] = set()


def session_tag(session_id: str) -> str:
    """How logs name a session: the first 12 hex digits of the sha256 of its id. The id itself is the
    key to the conversation (whoever has it may go on with it), and logs travel further than the daemon;
    an operator finds a user's session with ``printf %s "$id" | sha256sum | cut -c1-12``."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:12] if session_id else ""


def longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    """The non-empty ``secrets``, longest first: the order :func:`mask` needs."""
    return tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


def mask(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each secret replaced by ``***``. Give the secrets :func:`longest_first`, so a
    secret that holds another is masked whole (sorted once, not on every call)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


#: A URL: its scheme, its authority (``user:password@`` included), its path, then its query or fragment.
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^/\s?#'\"<>]*)([^\s?#'\"<>]*)([?#][^\s'\"<>]*)?", re.IGNORECASE)
#: What ends a sentence after a URL, not part of it.
_AFTER_URL = ".,:;!?)]"


def without_url_secrets(text: str) -> str:
    """``text`` with the query and fragment of each URL cut to ``?…`` and its ``user:password@`` left out,
    the punctuation that ends a sentence kept: a signed media URL (``?X-Amz-Signature=...``) that an upstream
    error repeats is a live capability, and logs travel further than the daemon."""
    return _URL.sub(_url_without_secrets, text) if "://" in text else text


def _url_without_secrets(url: re.Match[str]) -> str:
    """A URL matched by :data:`_URL` without its credentials, query and fragment."""
    scheme, authority, path, rest = url.group(1, 2, 3, 4)
    cut = (rest or "").rstrip(_AFTER_URL)
    return f"{scheme}{authority.rpartition('@')[2]}{path}{'?…' if cut else ''}{(rest or '')[len(cut):]}"


def _cleaned(value: object, clean: Callable[[str], str]) -> object:
    """``value`` made ``clean`` when it is a string, or a list, tuple or dict (of such values, keys too);
    anything else as it is."""
    if isinstance(value, str):
        return clean(value)
    if type(value) in (list, tuple):  # not their subclasses (a named tuple is not made of an iterable)
        return type(value)(_cleaned(item, clean) for item in value)
    if type(value) is dict:
        return {_cleaned(key, clean): _cleaned(item, clean) for key, item in value.items()}
    return value


class SecretFilter(logging.Filter):
    """Masks secrets and cuts URLs to their scheme, host and path (:func:`without_url_secrets`) in a
    record's message, traceback and ``extra=`` fields (which the JSON log writes) before any handler
    writes it. Added to the root logger's handlers, it sees the records of every logger."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = longest_first(secrets)
        _FILTERS.add(self)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these secrets too (keys of providers made again by a reload)."""
        self.secrets = longest_first([*self.secrets, *secrets])

    def clean(self, text: str) -> str:
        """``text`` as a log may hold it: the secrets masked, then each URL without its query or login."""
        return without_url_secrets(mask(text, self.secrets))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format: log what there is, not raise
            message = f"{record.msg!r} {record.args!r} (the log call's arguments do not fit its format)"
        record.msg = self.clean(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRIBUTES:
                record.__dict__[key] = _cleaned(value, self.clean)
        return True


#: A user name in a URL this long is taken for a token (some gateways take the key as the user name).
_TOKEN_AS_USER = 16


def basic_auth(user: str, password: str) -> str:
    """The base64 of ``user:password`` as HTTP Basic authentication sends it (httpx makes it of a URL's
    credentials, and an upstream that echoes its request headers in an error shows it)."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def url_credentials(value: object) -> set[str]:
    """Of a URL with credentials: the ``user:password`` part and the password, as written and decoded;
    a user name alone when it is long enough to be a token; and the ``Authorization: Basic`` value an
    HTTP client makes of them (:func:`basic_auth`, of the credentials as written and decoded)."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return set()
    try:
        netloc = urlsplit(value.strip()).netloc
    except ValueError:
        return set()
    userinfo, at, _host = netloc.rpartition("@")
    if not at:
        return set()
    user, _, password = userinfo.partition(":")
    found = {userinfo, password, unquote(password)} if password else set()
    if len(user) >= _TOKEN_AS_USER:  # ``TOKEN@host``, ``TOKEN:@host``, ``TOKEN:x-oauth-basic@host``
        found |= {user, unquote(user)}
    if password or len(user) >= _TOKEN_AS_USER:  # httpx sends ``Basic base64(user:password)``, decoded
        found |= {basic_auth(user, password), basic_auth(unquote(user), unquote(password))}
    return found


def remember(secrets: Iterable[str]) -> None:
    """Mask these secrets too in every log filter alive: keys a plugin resolved itself (say from an
    environment variable named by ``ProviderSettings.api_key_env``), which no config section holds.
    Values are stripped; those under 4 characters are left out (they would mask ordinary words)."""
    found = {s.strip() for s in secrets if isinstance(s, str)}
    found = {s for s in found if len(s) >= 4}
    _REMEMBERED.update(found)
    for log_filter in list(_FILTERS):
        if not found <= set(log_filter.secrets):
            log_filter.add(found)


def remembered() -> frozenset[str]:
    """The secrets :func:`remember` was given so far (a plugin's keys from its environment variables,
    the credentials of an ``OPENAI_BASE_URL``): masked in what clients get too."""
    return frozenset(_REMEMBERED)


def remembered_count() -> int:
    """How many secrets :func:`remember` holds: a cheap test of whether :func:`remembered` grew."""
    return len(_REMEMBERED)


def install(secrets: Iterable[str]) -> SecretFilter:
    """Add a :class:`SecretFilter` to every handler of the root logger; return it (to add secrets later)."""
    log_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
    return log_filter


#: The attributes every LogRecord has; the others were given as ``extra=`` by the log call.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class UtcFormatter(logging.Formatter):
    """A formatter whose times (``%(asctime)s``) are ISO 8601 in UTC, to the millisecond:
    ``2026-11-27T08:45:32.247Z``, whatever the host's time zone (``TZ``)."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return super().formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"


class TextFormatter(UtcFormatter):
    """The text log (times in UTC, as :class:`UtcFormatter` writes them): each record's line with the control characters of its message escaped as Python
    writes them (``\\x1b``, ``\\r``), and the lines after a newline indented, so that text a provider or
    a plugin put in a message (an upstream error body, a provider's name) can neither forge a line of the
    daemon's own nor drive the terminal of whoever reads the log. A traceback follows as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escaped(super().formatMessage(record), keep="\n").replace("\n", "\n  ")


class JsonFormatter(UtcFormatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, with an
    exception ``exception``, and the fields the log call gave as ``extra=`` (e.g. an access line's
    ``method``, ``code``, ``duration_ms``, ``request_id``). Runs after :class:`SecretFilter`, so it sees
    masked text, in the extra fields too."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)
