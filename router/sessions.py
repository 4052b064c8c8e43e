"""The conversation store: sqlite in the data directory, media kept by reference.

Each turn is one row: the session id, its position, the role, and the parts
as JSON, where media are stored as media-store ids (never their bytes), so a
long conversation about one video does not copy it per turn; media given by
URL are kept as the URL with their MIME type and modality. The same
database records one row per answered call for ``mmrouter stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import re
import resource
import shlex
import sqlite3
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

from .errors import DataDirGone, RouterError, StorageBusy, StorageFailed, StorageFull
from .invoke import unpaid_failures
from .media import NO_ROOM, broken_guess
from .outcome import Answer
from .redact import session_tag
from .types import Media, Message, Modality, Part, Role, Transcript, Utterance, Word

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, parts TEXT NOT NULL, at REAL,
    turn_id TEXT, answer TEXT,
    PRIMARY KEY (session_id, position)
);
CREATE TABLE IF NOT EXISTS bridged (key TEXT PRIMARY KEY, text TEXT NOT NULL, transcript TEXT, at REAL NOT NULL);
-- the sessions whose calls made a kept bridged text of a media (its id, as its keys start), so that their
-- ResetSession forgets it even when no turn of theirs was stored (the call failed after the bridge)
CREATE TABLE IF NOT EXISTS bridged_for (session_id TEXT NOT NULL, media TEXT NOT NULL, PRIMARY KEY (session_id, media));
CREATE INDEX IF NOT EXISTS bridged_for_media ON bridged_for (media);
CREATE TABLE IF NOT EXISTS calls (
    at REAL NOT NULL, rule TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, purpose TEXT NOT NULL,
    latency_ms REAL NOT NULL, cost_usd REAL NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, audio_seconds REAL NOT NULL
);
-- the request tags of a calls row (its rowid): a table of their own, so that the calls table keeps the
-- columns older versions insert (a daemon not yet restarted after an upgrade, a rollback)
CREATE TABLE IF NOT EXISTS call_tags (call INTEGER NOT NULL, tag TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS call_tags_of_call ON call_tags (call);
"""

#: Indexes the media of a turn (``NEW`` in a trigger), or of every turn (``turns``, with ``rows``: ``turns, ``):
#: a row per media part, as :meth:`SessionStore._media_of` reads them (a media twice in a turn is two rows).
_INDEX_TURN = """INSERT INTO turn_media (media_id, session_id, position)
        SELECT json_extract(item.value, '$.media_id'), {turn}.session_id, {turn}.position
        FROM {rows}json_each({turn}.parts) AS item
        WHERE {turn}.parts LIKE '%"media_id"%' AND item.type = 'object'
            AND json_extract(item.value, '$.media_id') IS NOT NULL"""
#: Which turns hold which media: a row per media id in a turn's parts (see :func:`_part_record`), so that the
#: sessions referring to a media are found by its id, not by reading every turn holding media. It is kept by
#: triggers on ``turns``, not by the store's code: the turns an older version writes (a rollback, a daemon not
#: yet restarted after an upgrade, sharing the file) are indexed too, or DeleteMedia would delete a media one of
#: their sessions refers to. Made and filled in one transaction by :meth:`SessionStore._index_turn_media`.
_MEDIA_INDEX = (
    "CREATE TABLE turn_media (media_id TEXT NOT NULL, session_id TEXT NOT NULL, position INTEGER NOT NULL)",
    _INDEX_TURN.format(turn="turns", rows="turns, "),  # before the indexes, which are then made sorted: 2-3x faster
    "CREATE INDEX turn_media_by_media ON turn_media (media_id)",
    "CREATE INDEX turn_media_of_turn ON turn_media (session_id, position)",
    f"""CREATE TRIGGER turn_media_insert AFTER INSERT ON turns WHEN NEW.parts LIKE '%"media_id"%' BEGIN
        {_INDEX_TURN.format(turn="NEW", rows="")};
    END""",
    """CREATE TRIGGER turn_media_delete AFTER DELETE ON turns WHEN OLD.parts LIKE '%"media_id"%' BEGIN
        DELETE FROM turn_media WHERE session_id = OLD.session_id AND position = OLD.position;
    END""",
    # no version updates a turn's parts, session or position (a sqlite3 shell might)
    f"""CREATE TRIGGER turn_media_update AFTER UPDATE OF session_id, position, parts ON turns BEGIN
        DELETE FROM turn_media WHERE session_id = OLD.session_id AND position = OLD.position;
        {_INDEX_TURN.format(turn="NEW", rows="")};
    END""",
)
#: The index's table, its indexes and its triggers: a database that lacks any of them has no index of media.
_MEDIA_INDEX_PARTS = ("turn_media", "turn_media_by_media", "turn_media_of_turn", "turn_media_insert",
                      "turn_media_delete", "turn_media_update")
#: The turns that may hold media, found without parsing them (a text part's quotes are escaped in the JSON).
_HOLDS_MEDIA = '%"media_id"%'


def _indexes_media(db: sqlite3.Connection) -> bool:
    """Whether the sessions database ``db`` has the index of media (:data:`_MEDIA_INDEX`), whole."""
    marks = ",".join("?" * len(_MEDIA_INDEX_PARTS))
    (found,) = db.execute(f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})", _MEDIA_INDEX_PARTS).fetchone()
    return found == len(_MEDIA_INDEX_PARTS)


def _media_in_turns(db: sqlite3.Connection, indexed: bool, but: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The media ids the turns of ``db`` refer to, but those of the sessions ``but``: from the index of media when
    ``indexed`` (see :func:`_indexes_media`), else read from every turn holding media."""
    if indexed and not but:
        return {media_id for (media_id,) in db.execute("SELECT DISTINCT media_id FROM turn_media")}
    if indexed:
        return {media_id for session, media_id in db.execute("SELECT session_id, media_id FROM turn_media")
                if session not in but}
    kept = db.execute("SELECT session_id, parts FROM turns WHERE parts LIKE ?", (_HOLDS_MEDIA,))
    return SessionStore._media_of((parts,) for session, parts in kept if session not in but)


#: The formats a bridge chosen for some formats names in its step's purpose
#: (``bridge:audio (audio/webm)->transcript via openai/whisper-1``; see :class:`router.routing.Bridge`).
_BRIDGE_FORMATS = re.compile(r"^(bridge:\w+) \([^()]*\)(?=->)")


def stats_step(purpose: str) -> str:
    """The step a call's ``purpose`` counts under in :meth:`SessionStore.stats`: a bridge without the
    formats it was chosen for (``bridge:audio->transcript via openai/whisper-1``), so one bridge is one row
    whatever formats it converted; any other purpose as it is. The route itself names the formats."""
    return _BRIDGE_FORMATS.sub(r"\1", purpose)


#: A statistics row, in the columns every version has written (see call_tags).
_INSERT_CALL = ("INSERT INTO calls (at, rule, provider, model, purpose, latency_ms, cost_usd, input_tokens,"
                " output_tokens, audio_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")

log = logging.getLogger(__name__)

#: Stores media in the media store and returns its id (for inline media in a turn).
StoreMedia = Callable[[Media], str]
#: Loads media by id from the media store.
LoadMedia = Callable[[str], Media]
#: Deletes media by id from the media store; returns how many were stored (see ``MediaStore.erase``).
EraseMedia = Callable[[set[str]], int]
#: Deletes media by id from the media store, in order; returns those that were stored (``MediaStore.erase_each``).
EraseEach = Callable[[list[str]], set[str]]


#: The WAL is cut back to this size after a checkpoint (the steady state is about 4 MiB).
JOURNAL_SIZE_LIMIT = 8 << 20

#: Sessions (or statistics rows) removed per write transaction by prune.
PRUNE_BATCH = 500

#: Statistics rows wait in memory at most this long (or until this many wait), then go in one transaction.
STATS_FLUSH_SECONDS = 0.05
STATS_BATCH_ROWS = 512
#: How much parsed history is kept in memory, over all sessions (see :meth:`SessionStore.history`), as
#: :func:`_parsed_size` estimates it.
HISTORY_CACHE_BYTES = 32 << 20

#: When a client refused because the sessions database stayed locked by another process is told to retry.
STORAGE_RETRY_SECONDS = 5.0

def vacuum_command(path: Path) -> str:
    """The shell command that turns on ``auto_vacuum`` in the database at ``path`` (made by an older
    version) and rewrites it: this Python's sqlite3 module, as the ``sqlite3`` tool may not be installed;
    the path quoted for the shell."""
    script = ('import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); '
              'db.execute("PRAGMA auto_vacuum=INCREMENTAL"); db.execute("VACUUM")')
    return shlex.join([sys.executable, "-c", script, str(path)])


#: Free pages a prune leaves in a database an older version made worth a VACUUM, said then (8 MiB).
FREE_BYTES_WORTH_A_VACUUM = 8 << 20

T = TypeVar("T")


def file_identity(path: Path) -> tuple[int, int]:
    """The device and inode of the file at ``path`` (``OSError`` when it is not there): another file put in
    its place (a restored backup, a new directory) has another."""
    found = os.stat(path)
    return found.st_dev, found.st_ino


class Trouble(enum.Enum):
    """What kind of trouble the sessions database met (see :class:`Fault`)."""

    #: Locked by another process (``mmrouter prune``, a backup) past the busy timeout: passes by itself.
    BUSY = "busy"
    #: No room: the disk (bytes or inodes), a quota, a file size limit.
    FULL = "full"
    #: The data directory (or the database file) cannot be written for another reason: a file system the
    #: kernel remounted read-only after errors, permissions, an I/O error. Only an operator mends it.
    UNWRITABLE = "unwritable"
    #: The file is damaged (SQLite's "database disk image is malformed", "file is not a database").
    DAMAGED = "damaged"


@dataclasses.dataclass(frozen=True)
class Fault:
    """Why the sessions database failed, when it is no bug of the daemon's (see :func:`storage_fault`):
    its kind and ``cause``, SQLite's error with what it means when that is known ("disk I/O error: the
    data directory cannot be written: Read-only file system (...)")."""

    kind: Trouble
    cause: str

    def error(self, doing: str) -> RouterError:
        """The client's error for a call that could not ``doing`` ("reset the session") for this fault:
        :class:`StorageBusy` (retryable), :class:`StorageFull`, or :class:`StorageFailed` for a data directory
        that cannot be written or a damaged database, which retrying does not mend."""
        failed = f"could not {doing}: the daemon's sessions database"
        if self.kind is Trouble.BUSY:
            return StorageBusy(f"{failed} stayed locked by another process (e.g. `mmrouter prune` or a backup) too "
                               "long; nothing was changed, try again", retry_after=STORAGE_RETRY_SECONDS)
        if self.kind is Trouble.FULL:
            return StorageFull(f"{failed} could not be written ({self.cause}) in its data directory; nothing was "
                               "changed, retry once there is room")
        if self.kind is Trouble.UNWRITABLE:
            return StorageFailed(f"{failed} could not be written ({self.cause}); nothing was changed, and retrying "
                                 "does not help until the daemon's operator repairs its data directory (the "
                                 "daemon's log says how)")
        return StorageFailed(f"{failed} is damaged ({self.cause}); nothing was changed, and retrying does not help "
                             "until the daemon's operator repairs it (the daemon's log says how)")

    @property
    def note(self) -> str:
        """Why a session's turn was not kept, for the answer's route note."""
        if self.kind is Trouble.BUSY:
            return "the sessions database stayed locked by another process (e.g. `mmrouter prune`) too long"
        if self.kind is Trouble.FULL:
            return f"the sessions database could not be written ({self.cause})"
        if self.kind is Trouble.UNWRITABLE:
            return (f"the sessions database could not be written ({self.cause}); the daemon's operator must repair "
                    "its data directory")
        return f"the sessions database is damaged ({self.cause}); the daemon's operator must repair it"


#: Bytes written to find out whether a folder's disk has room: more than sqlite needs to re-create its -shm file.
ROOM_PROBE_BYTES = 64 << 10


def write_problem(folder: Path) -> OSError | None:
    """The error that writing :data:`ROOM_PROBE_BYTES` to a new file in ``folder`` (synced, then removed) met,
    None when it worked: ENOSPC, EDQUOT or EFBIG (:data:`router.media.NO_ROOM`) for a disk with no room, EROFS
    for a read-only file system (one the kernel remounted read-only after errors too, which ``statvfs`` may
    not show), EACCES, EIO..."""
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(ROOM_PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return exc
    return None


def _size_limited() -> bool:
    """Whether this process may write files only up to a size (``ulimit -f``), which SQLite meets as an I/O error."""
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def storage_fault(exc: sqlite3.Error, path: Path | None = None) -> Fault | None:
    """Why the sessions database ``path`` raised ``exc``, when it is no bug of the daemon's; None for any other
    failure.

    SQLite says "database or disk is full" for most writes that found no room, but a write to the ``-shm`` file
    (or one past a file size limit, or a quota) is a "disk I/O error", as is any write to a file system the
    kernel remounted read-only after errors; a database file that cannot be opened for writing is "attempt to
    write a readonly database". For those, a write to a new file beside ``path`` (:func:`write_problem`) tells
    a full disk from a data directory that cannot be written. Without ``path`` an I/O error is taken for a full
    disk, as it mostly is."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
        return Fault(Trouble.BUSY, str(exc))
    if code == sqlite3.SQLITE_FULL:
        return Fault(Trouble.FULL, str(exc))
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return Fault(Trouble.DAMAGED, str(exc))
    if code not in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return None
    if path is None:
        return Fault(Trouble.FULL, f"{exc}; is the disk full?") if code == sqlite3.SQLITE_IOERR else \
            Fault(Trouble.UNWRITABLE, str(exc))
    problem = write_problem(path.parent)
    if problem is not None and problem.errno in NO_ROOM:
        return Fault(Trouble.FULL, f"{exc}: {problem.strerror}")
    if problem is not None:
        return Fault(Trouble.UNWRITABLE, f"{exc}: the data directory cannot be written: {problem.strerror}"
                                         f"{broken_guess(problem.errno)}")
    if code == sqlite3.SQLITE_IOERR and _size_limited():  # past the daemon's file size limit: EFBIG
        return Fault(Trouble.FULL, f"{exc}; is the disk full?")
    if code == sqlite3.SQLITE_IOERR:
        return Fault(Trouble.UNWRITABLE, f"{exc}, although the data directory can be written and has room (a "
                                         "failing disk? see the kernel's log)")
    return Fault(Trouble.UNWRITABLE, f"{exc}: the data directory can be written, the database file cannot (its "
                                     "owner or permissions?)")


def storage_error(exc: sqlite3.Error, doing: str, path: Path | None = None) -> RouterError | None:
    """The client's error for ``exc``, raised by the sessions database ``path`` while ``doing`` ("reset the
    session"), when it is no bug of the daemon's (see :func:`storage_fault` and :meth:`Fault.error`); None for
    any other failure."""
    fault = storage_fault(exc, path)
    return None if fault is None else fault.error(doing)


def damaged_fix(path: Path) -> str:
    """What an operator does with the damaged sessions database ``path``, the daemon stopped: a backup in its
    place, else a new database made at the next start; the media are kept (their files and records are in
    ``media/``; a session's turns only name them)."""
    name = path.name
    return (f"move {name}, {name}-wal and {name}-shm out of {path.parent} (a backup's {name} may take their place; "
            "without one, the sessions, statistics and kept transcripts are lost, the uploaded media are kept)")


#: The ERROR saying that the data directory became unwritable, or that the sessions database is damaged, is
#: logged again at most this often while it lasts (each failed call says it in its own line too).
FAULT_LOG_SECONDS = 60.0


def _left_to_later(exc: sqlite3.OperationalError) -> bool:
    """Whether a write the store makes at start (a migration, an index, a clean-up) that failed with ``exc`` may
    be left to a later start: a full disk, an I/O error, the database locked by another process past the busy
    timeout. Neither must stop the daemon (or ``prune``) from opening the database."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY)


@dataclasses.dataclass(frozen=True)
class KeptAnswer:
    """The answer to a session's turn that its client named (``Request.turn_id``), kept with the turn, so
    that the turn asked again (its client never got the answer) is answered with it, not a second time."""

    turn_id: str
    text: str
    rule: str
    provider: str
    model: str
    #: The answering model's finish reason (``FinishReason.value``), "" when unknown.
    finish_reason: str = ""
    #: A digest of what the turn asked (``router.core._asked``), "" when unknown: the same id with another
    #: question is refused.
    asked: str = ""


class Removed(NamedTuple):
    """What :meth:`SessionStore.reset` removed: the session's turns (``ResetSession``'s ``turns_removed``)
    and the other rows (kept bridged texts of its media, its links to them). A session whose calls
    stored no turn but left a kept text is found: it removed something. Asked to erase its media, also
    the stored media deleted (``media_removed``) and those kept because another session refers to them."""

    turns: int
    others: int = 0
    media: int = 0
    media_kept: int = 0

    @property
    def anything(self) -> bool:
        """Whether the reset removed any row."""
        return self.turns > 0 or self.others > 0


class MediaDeleted(NamedTuple):
    """What :meth:`SessionStore.delete_media` did: the media it deleted (their bytes, or the texts bridges kept
    for them), and how many sessions refer to each of those it kept; any other was not found."""

    deleted: frozenset[str]
    kept: dict[str, int]


class SessionStore:
    """Conversation history and call statistics in one sqlite file.

    Turns are written at once. Statistics rows are batched: one transaction per
    :data:`STATS_FLUSH_SECONDS` instead of one per call, which is most of what
    recording costs under load; :meth:`stats` and :meth:`close` write what waits.

    The methods block (sqlite waits up to ``busy_timeout`` for another process's write lock, e.g. a
    ``mmrouter prune``): on an event loop, call them through :meth:`run`, which does them on the
    store's own thread, and close with :meth:`aclose`.
    """

    def __init__(self, path: Path, busy_timeout: float = 5.0, *, frozen: bool = False,
                 longest_call_seconds: float = 3600.0) -> None:
        """``frozen``: only read a database that no process writes (no daemon runs) and whose ``-wal``
        is empty, without the ``-shm`` file, whose re-creation needs room a full disk does not have.
        ``longest_call_seconds``: the longest a call may run (``server.max_call_seconds``), for which the texts
        of media erased meanwhile are not kept again (see :meth:`remember`)."""
        self._pending_calls: list[tuple] = []
        self.longest_call_seconds = longest_call_seconds
        #: When (time.monotonic()) the kept texts of each media were last deleted (a reset, DeleteMedia), while
        #: calls that started before may still bridge it: see :meth:`remember`.
        self._forgotten_at: dict[str, float] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        # one thread: the connection is shared, and jobs must run in the order asked (a call's
        # history read before the turn a later call appends); started at the first job
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessions")
        self._histories: OrderedDict[str, _Parsed] = OrderedDict()  # session -> its history read last, newest last
        self._cached_bytes = 0
        self.path = path
        #: The file opened (see :func:`file_identity`), which the daemon's watch of its data directory compares.
        self.identity: tuple[int, int] | None = None
        self._storing = True  # until stop_storing()
        self._fault_logged: dict[Trouble, float] = {}  # when (time.monotonic()) each fault was logged last
        #: Whether the turns table has the turn id columns (see :meth:`_add_turn_ids`).
        self._turn_ids = True
        #: Whether the database has the index of media (see :meth:`_index_turn_media`).
        self._media_index = True
        if frozen:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False)
            self._db.create_function("stats_step", 1, stats_step, deterministic=True)
            self._media_index = _indexes_media(self._db)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        self._db.create_function("stats_step", 1, stats_step, deterministic=True)  # stats' step names
        self.identity = file_identity(path)
        # pages freed by prune can be given back to the file system (see _give_back_free_pages); it must be
        # said before the first table is made, so a database made by an older version keeps its pages (and
        # only a new one is told: on an existing one it is a write, which fails on a full disk)
        if self._db.execute("PRAGMA page_count").fetchone()[0] == 0:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync stays consistent after a crash and spares the event loop an fsync per call;
        # a power cut may lose the last statistics rows and turns, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # the WAL grows to the largest transaction (a long turn, a prune) and would keep that size
        # while the daemon runs: cut it back after each checkpoint
        self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        # what is deleted (a reset session, a pruned one) is overwritten with zeros, not left in free pages
        # (some SQLite builds, python.org's and macOS's among them, do not do it by default)
        self._db.execute("PRAGMA secure_delete=ON")
        self._busy_timeout = busy_timeout
        self._db.executescript(_SCHEMA)
        self._add_turn_times()
        self._add_turn_ids()
        self._add_bridged_transcripts()
        self._index_call_times()
        self._index_turn_media()

    def stop_storing(self) -> None:
        """Store nothing from now on: the data directory holding the database was removed or replaced, so what
        is written would be lost at the daemon's restart. Reading a session's history, appending to it and
        resetting it raise :class:`DataDirGone`; statistics rows are dropped."""
        self._storing = False

    def fault_of(self, exc: sqlite3.Error) -> Fault | None:
        """:func:`storage_fault` of ``exc``, raised by this database (call it on the store's thread: it may write
        a probe file). A data directory that became unwritable, or a damaged database, is logged as one ERROR
        saying what the operator must do, again at most every :data:`FAULT_LOG_SECONDS` while it lasts."""
        fault = storage_fault(exc, self.path)
        if fault is None or fault.kind in (Trouble.BUSY, Trouble.FULL):
            return fault
        now = time.monotonic()
        last = self._fault_logged.get(fault.kind)
        if last is None or now - last >= FAULT_LOG_SECONDS:
            self._fault_logged[fault.kind] = now
            if fault.kind is Trouble.UNWRITABLE:
                log.error("the data directory %s became unwritable: the sessions database could not be written (%s). "
                          "Session turns, ResetSession and statistics fail until it can be written again: make it "
                          "writable (a file system the kernel remounted read-only after errors: stop the daemon, "
                          "unmount it, run fsck, mount it again, then start the daemon)", self.path.parent, fault.cause)
            else:
                log.error("the sessions database %s is damaged (%s): calls on the sessions it holds, ResetSession and "
                          "statistics fail until it is repaired: stop the daemon, %s, then start it again",
                          self.path, fault.cause, damaged_fix(self.path))
        return fault

    def _refusal(self, exc: sqlite3.Error, doing: str) -> RouterError | None:
        """The client's error for ``exc``, raised by this database while ``doing`` (see :meth:`fault_of`), or None."""
        fault = self.fault_of(exc)
        return None if fault is None else fault.error(doing)

    def _refuse_if_gone(self) -> None:
        """:class:`DataDirGone` once :meth:`stop_storing` was called."""
        if not self._storing:
            raise DataDirGone

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Start ``fn(*args)`` on the store's thread, after the jobs asked before."""
        return self._worker.submit(fn, *args)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` done on the store's thread (see :meth:`submit`), the event loop free meanwhile.

        A job once asked is done even if the caller is cancelled: a turn or a reset is never half-known.
        """
        return await asyncio.shield(asyncio.wrap_future(self.submit(fn, *args)))

    def _add_turn_times(self) -> None:
        """Databases made before turns had a time get the column; their turns count as written now."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(turns)")}
        if "at" not in columns:
            with self._writing():
                self._db.execute("ALTER TABLE turns ADD COLUMN at REAL")
                self._db.execute("UPDATE turns SET at = ?", (time.time(),))

    def _add_turn_ids(self) -> None:
        """Databases made before turns had their client's id get the columns (empty: no turn of theirs is
        answered again, see :meth:`answered`). Columns that cannot be added now (a full disk; the database
        locked by another process past the busy timeout) are left to a later start, as the index of
        :meth:`_index_call_times` is: until then no turn id is kept (:attr:`_turn_ids`), and a turn asked
        again is answered again."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(turns)")}
        if "turn_id" in columns:
            return
        try:
            with self._writing():
                self._db.execute("ALTER TABLE turns ADD COLUMN turn_id TEXT")
                self._db.execute("ALTER TABLE turns ADD COLUMN answer TEXT")
        except sqlite3.OperationalError as exc:
            if not _left_to_later(exc):
                raise
            log.warning("the sessions database could not be given its turn id columns (%s): turns asked again "
                        "with their turn_id are answered again until a later start adds them", exc)
            self._turn_ids = False

    def _add_bridged_transcripts(self) -> None:
        """Kept bridged texts from before they kept their transcript get the column (empty)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(bridged)")}
        if "transcript" not in columns:
            with self._writing():
                self._db.execute("ALTER TABLE bridged ADD COLUMN transcript TEXT")

    def _index_call_times(self) -> None:
        """The statistics rows get an index by time (made when missing, in a database of an older version
        too), so that :meth:`prune` finds the old rows without reading every row while it holds the write
        lock. An index that cannot be made now (a full disk; the database locked by another process past the
        busy timeout) is left to a later start: prune is slower without it, not wrong, and neither must stop
        the daemon (or ``prune``) from opening the database. Once made, the statement writes nothing."""
        try:
            self._db.execute("CREATE INDEX IF NOT EXISTS calls_at ON calls (at)")
        except sqlite3.OperationalError as exc:
            if not _left_to_later(exc):
                raise
            log.warning("the statistics rows could not be indexed by time (%s): prune reads them all until they "
                        "are, at a later start", exc)

    def _index_turn_media(self) -> None:
        """A database without the index of media (:data:`_MEDIA_INDEX`: made by an older version, or before a
        start that could not make it) gets it, filled from its turns, in one transaction (the turns another
        process writes meanwhile wait, then are indexed by its triggers). An index that cannot be made now (a
        full disk; the database locked by another process past the busy timeout) is left to a later start, as
        the columns of :meth:`_add_turn_ids` are: until then the turns holding media are read whole to find
        a media's sessions (:attr:`_media_index`), slower, not wrong."""
        if _indexes_media(self._db):
            return
        try:
            with self._writing():
                if _indexes_media(self._db):  # made by another process meanwhile
                    return
                # what is left of one (a trigger dropped by hand) may not be right: made anew
                for trigger in _MEDIA_INDEX_PARTS[3:]:
                    self._db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                self._db.execute("DROP TABLE IF EXISTS turn_media")
                for statement in _MEDIA_INDEX:
                    self._db.execute(statement)
        except sqlite3.OperationalError as exc:
            if not _left_to_later(exc):
                raise
            log.warning("the sessions database could not be given its index of media (%s): DeleteMedia, resets "
                        "erasing media and prune read every turn holding media until a later start makes it", exc)
            self._media_index = False

    def drop_stale_links(self) -> None:
        """Drop the ``bridged_for`` links of sessions that hold no turn (the daemon does it at start, before any
        call could make a link of its own), left by an older version (before the
        table, which it does not know) that reset those sessions after a rollback: each would keep its media's
        text from every later reset of a session that sent the same media. A link of a session whose only
        call failed after its bridge goes too (the text stays, until a reset or prune forgets it). Nothing
        is written when there is none; what cannot be written now (a full disk, a busy database) waits for a
        later start."""
        stale = "FROM bridged_for WHERE NOT EXISTS (SELECT 1 FROM turns WHERE turns.session_id = bridged_for.session_id)"
        if self._db.execute(f"SELECT 1 {stale} LIMIT 1").fetchone() is None:
            return
        try:
            with self._writing():
                dropped = self._db.execute(f"DELETE {stale}").rowcount
        except sqlite3.OperationalError as exc:
            if not _left_to_later(exc):
                raise
            log.warning("the links of reset sessions to kept texts could not be dropped (%s): at a later start", exc)
            return
        log.info("dropped %d link(s) to kept texts of sessions that hold no turn (reset by an older version?)", dropped)

    def history(self, session_id: str, load_media: LoadMedia) -> list[Message]:
        """The session's messages, oldest first (empty for a new session).

        A session's turns are only ever appended (or all deleted), so the history read last is kept
        parsed, up to :data:`HISTORY_CACHE_BYTES` for the sessions used last, and only the turns added
        since are read: a long session no longer costs its whole history's parsing on every turn. The
        session's first row (its rowid and time) tells it from one reset and started again, by this
        daemon or another process. The stored media of every turn are loaded again each time, as
        before (``load_media``: a deleted or damaged file is refused, and the media is marked used
        for the media store's prune).

        A session call is refused here, before any provider is called, once nothing is stored
        (:meth:`stop_storing`); a database another process keeps locked, or a disk too full for SQLite's
        shared memory file, a data directory that cannot be written or a damaged database, is
        :meth:`Fault.error`'s error (see :meth:`fault_of`)."""
        self._refuse_if_gone()
        try:
            return self._history(session_id, load_media)
        except sqlite3.Error as exc:
            raise self._refusal(exc, "read the session's history") or exc from None

    def _history(self, session_id: str, load_media: LoadMedia) -> list[Message]:
        """The body of :meth:`history`."""
        origin = self._db.execute("SELECT rowid, at FROM turns WHERE session_id = ? AND position = 0",
                                  (session_id,)).fetchone()
        cached = self._forget_history(session_id)
        if origin is None:
            return []
        if cached is None or cached.origin != tuple(origin):
            cached = _Parsed(tuple(origin), [], {}, 0)
        rows = self._db.execute("SELECT role, parts FROM turns WHERE session_id = ? AND position >= ? ORDER BY position",
                                (session_id, len(cached.messages))).fetchall()
        with_media = cached.with_media  # the entry was taken out: a failure below leaves nothing half-made kept
        messages = [_message(*with_media[i], load_media) if i in with_media else m
                    for i, m in enumerate(cached.messages)]
        size = cached.size
        for role, parts_json in rows:
            items = json.loads(parts_json)
            if any("media_id" in item for item in items):
                with_media[len(messages)] = (role, items)
            messages.append(_message(role, items, load_media))
            size += _parsed_size(items)
        if size <= HISTORY_CACHE_BYTES:
            self._histories[session_id] = _Parsed(cached.origin, messages, with_media, size)
            self._cached_bytes += size
            while self._cached_bytes > HISTORY_CACHE_BYTES:
                _, dropped = self._histories.popitem(last=False)
                self._cached_bytes -= dropped.size
        return list(messages)

    def _forget_history(self, session_id: str) -> _Parsed | None:
        """Drop the session's kept history (see :meth:`history`); return it."""
        cached = self._histories.pop(session_id, None)
        if cached is not None:
            self._cached_bytes -= cached.size
        return cached

    def turn_count(self, session_id: str) -> int:
        """How many messages the session holds."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()
        return count

    def append(self, session_id: str, messages: list[Message], store_media: StoreMedia,
               wanted: Callable[[], bool] | None = None, reply: KeptAnswer | None = None) -> bool:
        """Add turns to the end of the session; return whether they were. ``wanted`` is asked once the write
        lock is held (which may take up to the busy timeout): when it says no, nothing is written. ``reply``:
        the answer of a turn its client named (``turn_id``), kept with the last message (the reply) for
        :meth:`answered`."""
        self._refuse_if_gone()  # before its media are stored
        now = time.time()
        turns = [(message.role.value, json.dumps([_part_record(p, store_media) for p in message.parts]), None, None)
                 for message in messages]
        if reply is not None and turns and self._turn_ids:
            turns[-1] = (*turns[-1][:2], reply.turn_id, json.dumps(dataclasses.asdict(reply)))
        with self._writing():
            if wanted is not None and not wanted():
                return False
            # numbered under the write lock: read before it, a prune deleting the session meanwhile left
            # the new turns at positions after a gap, and the session read as empty from then on
            (start,) = self._db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM turns WHERE session_id = ?", (session_id,)
            ).fetchone()
            if self._turn_ids:
                self._db.executemany(
                    "INSERT INTO turns (session_id, position, role, parts, at, turn_id, answer) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(session_id, start + offset, role, parts, now, turn_id, answer)
                     for offset, (role, parts, turn_id, answer) in enumerate(turns)])
            else:
                self._db.executemany("INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, ?, ?, ?, ?)",
                                     [(session_id, start + offset, role, parts, now)
                                      for offset, (role, parts, _, _) in enumerate(turns)])
        return True

    def answered(self, session_id: str, turn_id: str) -> tuple[KeptAnswer, float] | None:
        """The answer kept for the session's turn its client named ``turn_id``, and when it was kept (a
        ``time.time()``), or None when the session keeps no such turn (never answered, not kept, reset or
        pruned since). Errors as :meth:`history`'s."""
        self._refuse_if_gone()
        if not self._turn_ids:
            return None
        try:
            row = self._db.execute("SELECT answer, at FROM turns WHERE session_id = ? AND turn_id = ? "
                                   "ORDER BY position DESC LIMIT 1", (session_id, turn_id)).fetchone()
        except sqlite3.Error as exc:
            raise self._refusal(exc, "read the session's turns") or exc from None
        if row is None:
            return None
        try:
            return KeptAnswer(**json.loads(row[0])), row[1] or 0.0
        except (ValueError, TypeError) as exc:  # written by a later version: answered anew
            log.warning("the kept answer of a turn of session %s cannot be read back (%s): answering it again",
                        session_tag(session_id), exc)
            return None

    def recall(self, key: str) -> tuple[str, Transcript | None] | None:
        """A bridged text and its transcript kept by :meth:`remember` (see
        :class:`router.bridging.BridgeMemo`); a use counts as recent for :meth:`prune`."""
        try:  # a kept text only saves a call: never fail the request for it
            row = self._db.execute("SELECT text, transcript FROM bridged WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            log.warning("could not read a kept bridged text: %s", exc)
            return None
        if row is None:
            return None
        text, stored = row
        try:
            transcript = _transcript_from_json(stored) if stored else None
        except (ValueError, TypeError, KeyError) as exc:  # bridged again, and kept anew
            log.warning("a kept bridged transcript cannot be read back (%s): bridging again", exc)
            return None
        try:
            with self._writing():
                self._db.execute("UPDATE bridged SET at = ? WHERE key = ?", (time.time(), key))
        except sqlite3.Error as exc:  # still used; prune may take it a little early
            log.warning("could not mark a kept bridged text as used: %s", exc)
        return text, transcript

    def recall_any(self, prefix: str, diarized: bool,
                   accept: Callable[[str], bool] | None = None) -> tuple[str, str, Transcript | None] | None:
        """The key, bridged text and transcript used last of those kept under a key starting with ``prefix``
        (a media and its modality, see :func:`router.bridging.media_prefix`), whatever bridge and options
        made it; only a diarized one when ``diarized``, and only one whose key ``accept`` takes, if given."""
        try:  # a range on the primary key: the keys of one media, read from the index
            rows = self._db.execute("SELECT key FROM bridged WHERE key >= ? AND key < ? ORDER BY at DESC",
                                    (prefix, prefix + "\uffff")).fetchall()
        except sqlite3.Error as exc:
            log.warning("could not read a kept bridged text: %s", exc)
            return None
        keys = [key for (key,) in rows
                if (not diarized or "|diarization=True|" in key) and (accept is None or accept(key))]
        for key in keys:
            kept = self.recall(key)
            if kept is not None:
                return key, *kept
        return None

    def remember(self, key: str, text: str, transcript: Transcript | None, session_id: str = "") -> None:
        """Keep a bridged text (a transcript, a PDF's text) for the later turns of a session: that of the
        call that made it, ``session_id`` (if any), whose :meth:`reset` forgets it even when the call
        failed and stored no turn (a retry reuses it meanwhile).

        Not kept when the texts of its media were deleted (a session's reset, DeleteMedia) within the longest a
        call may run (``longest_call_seconds``): the call that made it may have started before, and the client
        was told its media's texts were gone (a text of a later call is not kept either: the next turn bridges
        again)."""
        media = key.split("|", 1)[0]
        if media in self._forgotten_at:
            if time.monotonic() - self._forgotten_at[media] < self.longest_call_seconds:
                log.info("a bridged text is not kept: its media's kept texts were deleted while its call ran")
                return
            del self._forgotten_at[media]
        try:  # numbers from numpy and the like are floats to JSON
            stored = json.dumps(dataclasses.asdict(transcript), default=float) if transcript is not None else None
        except (TypeError, ValueError) as exc:
            log.warning("a bridged transcript cannot be kept (%s): the next turn bridges again", exc)
            return
        try:
            with self._writing():
                self._db.execute("INSERT OR REPLACE INTO bridged (key, text, transcript, at) VALUES (?, ?, ?, ?)",
                                 (key, text, stored, time.time()))
                if session_id:
                    self._db.execute("INSERT OR IGNORE INTO bridged_for (session_id, media) VALUES (?, ?)",
                                     (session_id, key.split("|", 1)[0]))
        except sqlite3.Error as exc:  # the answer goes on; the next turn bridges again
            log.warning("could not keep a bridged text: %s", exc)

    def reset(self, session_id: str, erase: EraseMedia | None = None) -> Removed:
        """Forget a session; return how many turns were removed (and, beside, how many other rows).

        The bridged texts (transcripts) of the media its calls sent go too, those of calls that stored
        no turn included, unless another session refers to them (a turn of its, or a call of its that
        made them). With ``erase`` (:meth:`router.media.MediaStore.erase`), those media themselves are
        deleted from the media store too, in the same transaction: a media file that cannot be deleted
        rolls the reset back. What was removed is then overwritten in the file (``secure_delete``) and the
        journal emptied (:meth:`_empty_journal`): no copy of it is left in the data directory.

        A database that cannot be written is :meth:`Fault.error`'s error (see :meth:`fault_of`).
        """
        self._refuse_if_gone()
        try:
            removed = self._reset(session_id, erase)
        except sqlite3.Error as exc:
            raise self._refusal(exc, "reset the session") or exc from None
        if removed.anything:
            self._empty_journal("a reset")
        return removed

    def _reset(self, session_id: str, erase: EraseMedia | None) -> Removed:
        """The deletes of :meth:`reset`, in one transaction (the media's too, with ``erase``)."""
        with self._writing():
            used_here = self._media_in_session(session_id)
            used_here |= {row[0] for row in self._db.execute("SELECT media FROM bridged_for WHERE session_id = ?",
                                                             (session_id,))}
            removed = self._db.execute("DELETE FROM turns WHERE session_id = ?", (session_id,)).rowcount
            others = self._db.execute("DELETE FROM bridged_for WHERE session_id = ?", (session_id,)).rowcount
            self._forget_history(session_id)
            unused = self._unreferenced(used_here)
            others += self._forget_texts_of(unused)
            if erase is None:
                return Removed(removed, others)
            return Removed(removed, others, erase(unused), len(used_here) - len(unused))

    def forget_kept(self, session_id: str) -> int:
        """Forget the texts bridges kept for the media of ``session_id``'s calls that no stored turn refers
        to, unless another session's call made them too: those of a call that ran while its session was
        reset (its turn is not kept; the reset ran before its bridge kept the text). Returns the rows removed."""
        self._refuse_if_gone()
        with self._writing():
            linked = {row[0] for row in self._db.execute("SELECT media FROM bridged_for WHERE session_id = ?",
                                                         (session_id,))}
            unused = {media_id for media_id in linked if not self._in_a_turn(media_id)}
            removed = sum(self._db.execute("DELETE FROM bridged_for WHERE session_id = ? AND media = ?",
                                           (session_id, media_id)).rowcount for media_id in unused)
            removed += self._forget_texts_of(self._unreferenced(unused))
        if removed:
            self._empty_journal("a reset")
        return removed

    def delete_media(self, media_ids: list[str], erase: EraseEach) -> MediaDeleted:
        """Delete the media ``media_ids`` (``DeleteMedia``) that no session refers to (a stored turn, or a call of
        its that made a kept text: see :meth:`_sessions_of`): the texts bridges kept for them, and with ``erase``
        (:meth:`router.media.MediaStore.erase_each`) the media themselves, in one transaction, as :meth:`reset`
        erases a session's; a media file that cannot be deleted rolls the texts' deletes back. Those a session
        refers to are kept, with their texts. What was removed is then overwritten in the file and the journal
        emptied. A database that cannot be written is :meth:`Fault.error`'s error (see :meth:`fault_of`)."""
        self._refuse_if_gone()
        try:
            with self._writing():
                kept = {media_id: len(sessions) for media_id, sessions in self._sessions_of(set(media_ids)).items()}
                unused = [media_id for media_id in media_ids if media_id not in kept]
                texts = {media_id for media_id in unused if self._forget_texts_of([media_id])}
                deleted = MediaDeleted(frozenset(erase(unused) | texts), kept)
        except sqlite3.Error as exc:
            raise self._refusal(exc, "delete the media") or exc from None
        if texts:
            self._empty_journal("a media deletion")
        return deleted

    def _sessions_of(self, media_ids: set[str]) -> dict[str, set[str]]:
        """The sessions that refer to each of ``media_ids`` that any refers to: a stored turn of theirs holds it,
        or a call of theirs made a kept text of it (``bridged_for``). Each media looked up in the index of media;
        without it (see :meth:`_index_turn_media`) the turns holding media are read once."""
        if self._media_index:
            pairs = [(media_id, session_id) for media_id in media_ids for (session_id,) in self._db.execute(
                "SELECT session_id FROM turn_media WHERE media_id = ?", (media_id,))]
        else:
            pairs = [(media_id, session_id) for session_id, parts in self._db.execute(
                "SELECT session_id, parts FROM turns WHERE parts LIKE ?", (_HOLDS_MEDIA,))
                for media_id in self._media_of([(parts,)]) & media_ids]
        pairs += [(media_id, session_id) for media_id in media_ids for (session_id,) in self._db.execute(
            "SELECT session_id FROM bridged_for WHERE media = ?", (media_id,))]
        found: dict[str, set[str]] = {}
        for media_id, session_id in pairs:
            found.setdefault(media_id, set()).add(session_id)
        return found

    def deleted_since(self, media_ids: Iterable[str], since: float) -> list[str]:
        """Those of ``media_ids`` deleted (``DeleteMedia``, a reset erasing its session's media: their kept texts
        forgotten) at ``since`` (a ``time.monotonic()``) or later, within ``longest_call_seconds``: a call that
        started at ``since`` must not keep a turn naming them. On the store's thread."""
        return sorted({media_id for media_id in media_ids if self._forgotten_at.get(media_id, -math.inf) >= since})

    def _in_a_turn(self, media_id: str) -> bool:
        """Whether a stored turn (of any session) holds the media ``media_id``: looked up in the index of media,
        or without it (see :meth:`_index_turn_media`) found in the turns' JSON."""
        if self._media_index:
            query, args = "SELECT 1 FROM turn_media WHERE media_id = ? LIMIT 1", (media_id,)
        else:
            query, args = "SELECT 1 FROM turns WHERE parts LIKE ? LIMIT 1", (f'%"media_id": "{media_id}"%',)
        return self._db.execute(query, args).fetchone() is not None

    def _media_in_session(self, session_id: str) -> set[str]:
        """The media ids the stored turns of ``session_id`` refer to."""
        if self._media_index:
            return {media_id for (media_id,) in self._db.execute(
                "SELECT media_id FROM turn_media WHERE session_id = ?", (session_id,))}
        return self._media_of(self._db.execute("SELECT parts FROM turns WHERE session_id = ? AND parts LIKE ?",
                                               (session_id, _HOLDS_MEDIA)))

    def _unreferenced(self, media_ids: Iterable[str]) -> set[str]:
        """Those of ``media_ids`` that no stored turn holds and no session's call made a kept text of (see
        ``bridged_for``). Each media looked up, not every turn of every session."""
        return {media_id for media_id in media_ids if not self._in_a_turn(media_id) and not self._db.execute(
            "SELECT 1 FROM bridged_for WHERE media = ? LIMIT 1", (media_id,)).fetchone()}

    def _forget_texts_of(self, media_ids: Iterable[str]) -> int:
        """Delete the kept texts of each of ``media_ids`` (see :meth:`_unreferenced`); return the rows deleted.
        Calls under way may bridge them again: :meth:`remember` keeps none of theirs."""
        now = time.monotonic()
        self._forgotten_at = {media: at for media, at in self._forgotten_at.items()
                              if now - at < self.longest_call_seconds}  # those no call under way can bridge
        self._forgotten_at.update((media_id, now) for media_id in media_ids)
        # a range of the primary key (as recall_any reads them): "key LIKE 'id|%'" read every kept text per media
        return sum(self._db.execute("DELETE FROM bridged WHERE key >= ? AND key < ?",
                                    (f"{media_id}|", f"{media_id}|\uffff")).rowcount for media_id in media_ids)

    def _empty_journal(self, after: str, *, wait: bool = False) -> None:
        """Write the journal's pages into the file and cut the journal to nothing, so that the rows just
        deleted (by ``after``: "a reset", "a prune") leave no copy there (it holds them until a checkpoint,
        which comes after about 4 MiB of later writes). It does not wait for other connections (a
        ``mmrouter stats`` reading), unless ``wait`` (up to the busy timeout: ``prune``, which no client
        waits for): when one is in the way, a warning says so and the next checkpoint empties it."""
        if not wait:
            self._db.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            busy = exc
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        if busy:
            log.warning("the sessions database's journal could not be emptied after %s (%s): what it deleted may "
                        "stay readable in sessions.sqlite and its journal until the next checkpoint", after,
                        busy if isinstance(busy, sqlite3.Error) else "another connection is reading")

    def prune(self, before: float, *, tags: Iterable[str] = (), dry_run: bool = False) -> tuple[int, int, set[str]]:
        """Forget sessions whose newest turn is older than ``before`` (a time.time()), statistics rows
        and bridged texts older than it, and the statistics rows of requests tagged one of ``tags``, of
        any age. Returns the sessions and rows removed (or, with ``dry_run``, that would be) and the media
        ids the remaining turns refer to. What was deleted is overwritten (``secure_delete``) and the
        journal emptied (a warning says when another process reading the database is in the way).

        Safe while a daemon uses the file: the work is done in short write transactions of
        :data:`PRUNE_BATCH` sessions or rows, each taking the write lock first, so the daemon's
        writes wait milliseconds, not the whole prune; a session that got a turn meanwhile is kept.
        """
        self.flush()
        tags = sorted(set(tags))
        if dry_run:
            return _prune_preview(self._db, before, tags)
        stale = [row[0] for row in self._db.execute(
            "SELECT session_id FROM turns GROUP BY session_id HAVING MAX(at) < ?", (before,))]
        sessions = calls = 0
        for i in range(0, len(stale), PRUNE_BATCH):
            batch = stale[i:i + PRUNE_BATCH]
            marks = ",".join("?" * len(batch))
            with self._writing():
                still = [row[0] for row in self._db.execute(
                    f"SELECT session_id FROM turns WHERE session_id IN ({marks}) GROUP BY session_id"
                    " HAVING MAX(at) < ?", (*batch, before))]
                self._db.executemany("DELETE FROM turns WHERE session_id = ?", [(s,) for s in still])
                self._db.executemany("DELETE FROM bridged_for WHERE session_id = ?", [(s,) for s in still])
                for session in still:
                    self._forget_history(session)
            sessions += len(still)
        while True:
            with self._writing():
                ids = [(row[0],) for row in self._db.execute("SELECT rowid FROM calls WHERE at < ? LIMIT ?",
                                                              (before, PRUNE_BATCH))]
                # their tags first: a calls rowid may be given again once the newest rows are gone
                self._db.executemany("DELETE FROM call_tags WHERE call = ?", ids)
                removed = self._db.executemany("DELETE FROM calls WHERE rowid = ?", ids).rowcount
            calls += removed
            if removed < PRUNE_BATCH:
                break
        calls += self._prune_tagged(tags)
        with self._writing():
            self._db.execute("DELETE FROM bridged WHERE at < ?", (before,))
            # the links of media no text is kept for any more (a range of the bridged keys, by the index)
            self._db.execute("DELETE FROM bridged_for WHERE NOT EXISTS (SELECT 1 FROM bridged WHERE"
                             " key >= bridged_for.media || '|' AND key < bridged_for.media || '|' || char(65535))")
        self._give_back_free_pages()
        return sessions, calls, self.media_in_use()

    def _prune_tagged(self, tags: list[str]) -> int:
        """Delete the statistics rows of requests tagged one of ``tags`` (all their tags with them), of any
        age, :data:`PRUNE_BATCH` at a time; return how many were removed."""
        if not tags:
            return 0
        marks = ",".join("?" * len(tags))
        calls = 0
        while True:
            with self._writing():
                ids = [(row[0],) for row in self._db.execute(
                    f"SELECT DISTINCT call FROM call_tags WHERE tag IN ({marks}) LIMIT ?", (*tags, PRUNE_BATCH))]
                self._db.executemany("DELETE FROM call_tags WHERE call = ?", ids)
                calls += self._db.executemany("DELETE FROM calls WHERE rowid = ?", ids).rowcount
            if not ids:
                return calls

    def _give_back_free_pages(self) -> None:
        """Shrink the file by the pages the deletes freed (SQLite keeps them for later writes), a
        :data:`PRUNE_BATCH` pages per write transaction, so the daemon's writes wait milliseconds, then
        empty the journal (:meth:`_empty_journal`). A database made before its store set ``auto_vacuum``
        keeps them (only a VACUUM, which rewrites the whole file under the write lock, would free them)."""
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if mode != 2:  # 2: INCREMENTAL
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            if (free := self._free_pages() * page_size) >= FREE_BYTES_WORTH_A_VACUUM:
                log.warning("%s was made by an older version of mmrouter, which keeps the %d MiB that prune freed "
                            "for later writes instead of giving them back to the disk: once, with the daemon stopped, "
                            "run `%s` (it rewrites the file, and needs as much free disk again); later prunes then "
                            "shrink it", self.path, free >> 20, vacuum_command(self.path))
        else:
            free, before = self._free_pages(), None
            while free and free != before:  # (a round that frees nothing ends it)
                with self._writing():
                    self._db.execute(f"PRAGMA incremental_vacuum({PRUNE_BATCH})").fetchall()  # a page freed per row
                free, before = self._free_pages(), free
        # the zeroed pages (and the file's new end) are written back now, in every format: until then the
        # file still holds what was deleted
        self._empty_journal("a prune", wait=True)

    def _free_pages(self) -> int:
        return self._db.execute("PRAGMA freelist_count").fetchone()[0]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction that takes the write lock at its start (waiting up to the busy
        timeout): a deferred one that read first fails at once when another connection wrote meanwhile.

        On an error the transaction is rolled back and the error raised. SQLite has already rolled it
        back after some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM): a ROLLBACK then fails with
        "cannot rollback - no transaction is active", which must not hide the error that says why (a
        full disk)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")  # a COMMIT that fails (no room for the WAL) is rolled back too
        except BaseException:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error as exc:  # the error being raised says more
                    log.warning("rolling back a sessions database transaction failed: %s", exc)
            raise

    def media_in_use(self) -> set[str]:
        """The media store ids that session turns refer to (kept by :meth:`MediaStore.prune`)."""
        return _media_in_turns(self._db, self._media_index)

    @staticmethod
    def _media_of(rows: Iterable[tuple[str]]) -> set[str]:
        """The media store ids in turns' ``parts`` JSON."""
        return {item["media_id"] for (parts_json,) in rows for item in json.loads(parts_json) if "media_id" in item}

    def record(self, answer: Answer, tags: Iterable[str] = ()) -> None:
        """Record every step of a request, for statistics (written within 50 ms): those of its route and,
        as ``<purpose> (failed)`` at no cost, its failed provider calls that no step counts; each with the
        request's ``tags`` (its routing hints), by which :meth:`stats` can group and filter."""
        route = answer.route
        now = time.time()
        steps = [*route.steps, *unpaid_failures(route)]
        unique = tuple(sorted(set(tags)))
        self._pending_calls.extend(
            (now, route.rule, s.provider, s.model, s.purpose, s.latency_ms, s.usage.cost_usd,
             s.usage.input_tokens, s.usage.output_tokens, s.usage.audio_seconds, unique) for s in steps)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script using the store): write now
            self.flush()
            return
        if len(self._pending_calls) >= STATS_BATCH_ROWS:
            self._flush_in_background()
        elif self._flush_timer is None:
            self._flush_timer = loop.call_later(STATS_FLUSH_SECONDS, self._flush_in_background)

    def _flush_in_background(self) -> None:
        """Hand the rows that wait to the store's thread (from the event loop)."""
        rows = self._take_pending()
        if rows:
            self.submit(self._write_calls_or_log, rows)

    def _take_pending(self) -> list[tuple]:
        """The statistics rows that wait, no longer waiting (their timer cancelled)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        rows, self._pending_calls = self._pending_calls, []
        return rows

    def _write_calls(self, rows: list[tuple]) -> None:
        """Insert statistics rows (each ends with its request's tags) in one transaction; none once nothing is
        stored (:meth:`stop_storing`, which the daemon's log says)."""
        if not rows or not self._storing:
            return
        with self._writing():
            untagged = [row[:-1] for row in rows if not row[-1]]
            if untagged:
                self._db.executemany(_INSERT_CALL, untagged)
            for *row, tags in (row for row in rows if row[-1]):
                call = self._db.execute(_INSERT_CALL, row).lastrowid
                self._db.executemany("INSERT INTO call_tags (call, tag) VALUES (?, ?)", [(call, t) for t in tags])

    def _write_calls_or_log(self, rows: list[tuple]) -> None:
        """:meth:`_write_calls` on the store's thread, a failure logged: the rows are lost."""
        try:
            self._write_calls(rows)
        except sqlite3.Error as exc:  # a full disk, a locked database: one line a batch, no traceback
            self.fault_of(exc)  # a data directory that became unwritable, a damaged database: said once
            log.error("writing call statistics failed; those rows are lost: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.exception("writing call statistics failed; those rows are lost")

    def flush(self) -> None:
        """Write the statistics rows that wait (here and now: not on an event loop)."""
        self._write_calls(self._take_pending())

    def stats(self, since: float = 0.0, *, by_tag: bool = False, tag: str | None = None) -> list[dict]:
        """Per rule (or, ``by_tag``, per request tag), provider, model and step (a bridge's without the
        formats it was chosen for, see :func:`stats_step`): calls, mean and max latency, total cost and
        usage; of the calls made at ``since`` (a ``time.time()``) or later, and only of requests tagged
        ``tag`` when given.

        By tag, a call of a request with several tags counts under each (so the tags' costs may add up
        to more than the total), and one with none under the tag ``None`` (rows recorded before tags
        were kept too)."""
        self.flush()
        group = "t.tag" if by_tag else "rule"
        tagged = ("t.tag = ?" if by_tag
                  else "EXISTS (SELECT 1 FROM call_tags WHERE call_tags.call = calls.rowid AND call_tags.tag = ?)")
        rows = self._db.execute(
            f"SELECT {group}, provider, model, stats_step(purpose) AS step, COUNT(*), AVG(latency_ms), MAX(latency_ms),"
            " SUM(cost_usd),"
            " SUM(input_tokens), SUM(output_tokens), SUM(audio_seconds) FROM calls"
            + (" LEFT JOIN call_tags AS t ON t.call = calls.rowid" if by_tag else "")
            # all of them: "+at" keeps SQLite from reading the rows through the index on at (in its order)
            + (" WHERE at >= ?" if since > 0 else " WHERE +at >= ?") + (f" AND {tagged}" if tag is not None else "")
            + f" GROUP BY {group}, provider, model, step ORDER BY {group} IS NULL, {group}, provider, model",
            (since,) if tag is None else (since, tag),
        ).fetchall()
        keys = ["tag" if by_tag else "rule", "provider", "model", "purpose", "calls", "mean_latency_ms",
                "max_latency_ms", "cost_usd", "input_tokens", "output_tokens", "audio_seconds"]
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Write what waits and close the database (after the jobs asked of the store's thread)."""
        rows = self._take_pending()
        self._worker.shutdown()
        self._write_calls(rows)
        self._db.close()

    async def aclose(self) -> None:
        """:meth:`close` from the event loop, which stays free while the last writes wait for a lock."""
        self._flush_in_background()
        await asyncio.to_thread(self.close)


class StoredBridges:
    """The session store as a :class:`router.bridging.BridgeMemo`, read and written on its thread."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    async def recall(self, key: str) -> tuple[str, Transcript | None] | None:
        return await self._store.run(self._store.recall, key)

    async def recall_any(self, prefix: str, diarized: bool,
                         accept: Callable[[str], bool] | None = None) -> tuple[str, str, Transcript | None] | None:
        return await self._store.run(self._store.recall_any, prefix, diarized, accept)

    def remember(self, key: str, text: str, transcript: Transcript | None, session_id: str = "") -> None:
        try:  # queued: a later recall runs after it on the same thread
            self._store.submit(self._store.remember, key, text, transcript, session_id)
        except RuntimeError:  # the store is closed (the daemon stops): the next run bridges again
            log.info("the daemon is closing: a bridged text is not kept")


def preview_prune(path: Path, before: float, tags: Iterable[str] = ()) -> tuple[int, int, set[str]]:
    """What :meth:`SessionStore.prune` of the database ``path`` would remove, as ``prune(before, tags=tags,
    dry_run=True)`` says, read without writing anything: no -wal or -shm file made, an old database
    not migrated (the turns of one too old to have times count as used now, as its migration dates
    them), nor copied elsewhere. Raises ``sqlite3.Error`` for a file that is no sessions database
    (or that cannot be read)."""
    wal, shm = (path.with_name(f"{path.name}{suffix}") for suffix in ("-wal", "-shm"))
    # A -wal and its -shm: a connection may have the database open (a daemon): read it read-only,
    # through both.
    tags = sorted(set(tags))
    if wal.exists() and shm.exists():
        return _read_preview(path, "mode=ro", before, tags)
    # Without a -wal, or with one that holds no frame, nobody writes it and the file holds every row:
    # read it immutable, which makes no -wal or -shm (read-only would).
    if not _holds_frames(wal):
        return _read_preview(path, "immutable=1", before, tags)
    # A -wal without its -shm: no connection has the database open (the first makes the -shm). Read-only
    # would make the -shm, and immutable does not read the -wal; exclusive locking mode keeps the index of
    # the -wal in memory instead, and without locks (the unix-none VFS) it needs no write access to take
    # them: nothing is written, there or elsewhere (no copy of the database is made).
    return _read_preview(path, "mode=ro&vfs=unix-none", before, tags, exclusive=True)


#: The size of a -wal file's header: a -wal no larger holds no frame (no rows the database file lacks).
_WAL_HEADER_BYTES = 32


def _holds_frames(wal: Path) -> bool:
    """Whether the -wal file ``wal`` may hold rows its database file lacks: it is there, past its header."""
    try:
        return wal.stat().st_size > _WAL_HEADER_BYTES
    except FileNotFoundError:
        return False


def _read_preview(path: Path, mode: str, before: float, tags: list[str],
                  exclusive: bool = False) -> tuple[int, int, set[str]]:
    """:func:`_prune_preview` of the database ``path`` opened with the URI parameters ``mode`` (in
    exclusive locking mode when ``exclusive``)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    try:
        if exclusive:  # before the first read
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        return _prune_preview(db, before, tags)
    finally:
        db.close()


def _prune_preview(db: sqlite3.Connection, before: float, tags: list[str]) -> tuple[int, int, set[str]]:
    """The sessions whose newest turn is older than ``before``, the statistics rows older than it or of
    requests tagged one of ``tags`` (their numbers) and the media ids the other sessions' turns refer to,
    in the database ``db``; a database made before turns had times has no stale session."""
    columns = {table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
               for table in ("turns", "calls", "call_tags")}
    stale: set[str] = set()
    if "at" in columns["turns"]:
        stale = {row[0] for row in db.execute(
            "SELECT session_id FROM turns GROUP BY session_id HAVING MAX(at) < ?", (before,))}
    calls = 0
    if "at" in columns["calls"]:
        tagged, marks = (tags, ",".join("?" * len(tags))) if tags and columns["call_tags"] else ([], "")
        calls = db.execute("SELECT COUNT(*) FROM calls WHERE at < ?"
                           + (f" OR rowid IN (SELECT call FROM call_tags WHERE tag IN ({marks}))" if tagged else ""),
                           (before, *tagged)).fetchone()[0]
    keep = _media_in_turns(db, _indexes_media(db), stale) if columns["turns"] else set()
    return len(stale), calls, keep


def _transcript_from_json(stored: str) -> Transcript:
    """A transcript kept by :meth:`SessionStore.remember` (fields a plugin's subclass added are left out)."""
    data = json.loads(stored)

    def only_fields(cls: type, values: dict) -> dict:
        return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}

    return Transcript(data["text"], [Utterance(**only_fields(Utterance, u)) for u in data["utterances"]],
                      [Word(**only_fields(Word, w)) for w in data["words"]], data["language"], data["duration_seconds"])


@dataclasses.dataclass
class _Parsed:
    """A session's history as read last: its first row (rowid, time), its messages, the stored rows of
    those with stored media (role and parts, by position: their media are loaded again on each read),
    and their size as :data:`HISTORY_CACHE_BYTES` counts it."""

    origin: tuple[int, float]
    messages: list[Message]
    with_media: dict[int, tuple[str, list[dict]]]
    size: int


def _parsed_size(items: list[dict]) -> int:
    """About the memory a stored turn of parts ``items`` takes parsed (a Message, its parts, and their
    texts at up to 4 bytes a character), and its stored row for a turn with media."""
    size = 300
    for item in items:
        text = item.get("text")
        size += 200 + (4 * len(text) if isinstance(text, str) else 1500)
    return size


def _message(role: str, items: list[dict], load_media: LoadMedia) -> Message:
    """A stored turn: its role and parts, stored media loaded."""
    parts = []
    for item in items:
        if "text" in item:
            parts.append(Part(text=item["text"]))
        elif "url" in item:
            parts.append(Part(media=Media(Modality(item["modality"]), item["mime_type"], url=item["url"],
                                          filename=item.get("filename", ""))))
        else:
            media = load_media(item["media_id"])
            media.filename = item.get("filename", media.filename)
            # as the turn sent it: the same bytes may be stored under another modality
            if "modality" in item:
                media.modality, media.mime_type = Modality(item["modality"]), item["mime_type"]
            parts.append(Part(media=media))
    return Message(Role(role), parts)


def _part_record(part: Part, store_media: StoreMedia) -> dict:
    """One part as stored in a turn's JSON: its text, its URL, or its media store id (with the modality and
    MIME type the turn gave it)."""
    media = part.media
    if media is None:
        return {"text": part.text}
    if media.url is not None:  # nothing local to store: keep the reference itself
        return {"url": media.url, "mime_type": media.mime_type, "modality": media.modality.value,
                "filename": media.filename}
    return {"media_id": store_media(media), "filename": media.filename, "modality": media.modality.value,
            "mime_type": media.mime_type}


def trim_history(history: list[Message], current: list[Message], budget_tokens: int,
                 estimate: Callable[[list[Message]], int]) -> tuple[list[Message], int]:
    """Drop the oldest history messages until history + current fit ``budget_tokens``.

    Returns the kept history and how many messages were dropped. The current
    turn is never dropped. A trimmed history starts with a user message (an
    answer whose question was dropped goes too: providers want a conversation
    to start with the user). Each message is estimated once and the estimates
    are added up, so a session of thousands of turns costs linear time.
    """
    costs = [estimate([message]) for message in history]
    total = sum(costs) + estimate(current)
    dropped = 0
    while dropped < len(history) and total > budget_tokens:
        total -= costs[dropped]
        dropped += 1
    while 0 < dropped < len(history) and history[dropped].role is not Role.USER:
        dropped += 1
    return history[dropped:], dropped
