"""The index of which turns hold which media (``turn_media``): the sessions that refer to a media are found by its
id, not by reading every turn holding media under the database's write lock (DeleteMedia, a reset erasing its
session's media, prune).

It is kept by triggers, so that the turns an older version writes (a rollback, a daemon not yet restarted after
an upgrade, sharing the file) are indexed too: otherwise DeleteMedia would delete a media their sessions refer to.
A database of an older version gets it at open; one that cannot be given it then (locked by another process) is
still answered right, by reading the turns as before.

The store directly, and through the running daemon with the OpenAI SDK against the fake OpenAI server.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from test_bridge_reuse import generate
from test_delete_media_s26 import DELETED, KEPT, delete, image, picture, upload_png
from test_erasure_s23 import rows
from test_turn_ids import CONFIG, fake  # noqa: F401 (a fixture)

from router import sessions
from router.sessions import SessionStore, preview_prune
from router.types import Media, Message, Modality, Part, Role
from tests.fakes.openai import API_KEY

A, B, C, D = (c * 64 for c in "abcd")
DAY = 86_400.0


def asked(*media_ids: str) -> Message:
    """A user turn: a text, then an image per id (stored under that id)."""
    parts = [Part(text='"media_id": "not a media, a text quoting one"')]
    parts += [Part(media=Media(Modality.IMAGE, "image/png", data=media_id.encode())) for media_id in media_ids]
    return Message(Role.USER, parts)


def store_media(media: Media) -> str:
    return media.data.decode()


def indexed(path: Path) -> list[tuple[str, str, int]]:
    """The index's rows: (media, session, position), sorted."""
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT media_id, session_id, position FROM turn_media"))


def old_database(path: Path, turns: list[tuple[str, int, list[str]]]) -> None:
    """A sessions database as the versions before the index made it, holding ``turns``: (session, position, the
    media ids of a user turn), each written as those versions wrote them (a plain INSERT)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(sessions._SCHEMA)
        db.execute("CREATE INDEX calls_at ON calls (at)")
        for session_id, position, media_ids in turns:
            insert_turn(db, session_id, position, media_ids)
    assert index_parts(path) == []


def insert_turn(db: sqlite3.Connection, session_id: str, position: int, media_ids: list[str]) -> None:
    """A user turn of ``media_ids`` inserted as an older version does: nothing but the turns table written."""
    parts = json.dumps([sessions._part_record(p, store_media) for p in asked(*media_ids).parts])
    db.execute("INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, ?, 'user', ?, ?)",
               (session_id, position, parts, time.time()))


def index_parts(path: Path) -> list[str]:
    """The names of the index's table, indexes and triggers in the database ``path``."""
    with sqlite3.connect(path) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'turn_media%'"))


def test_the_index_follows_the_turns_appended_reset_and_pruned(tmp_path) -> None:
    path = tmp_path / "sessions.sqlite"
    store = SessionStore(path)
    store.append("alice", [asked(A, B), Message(Role.ASSISTANT, [Part(text="Two photos.")])], store_media)
    store.append("alice", [asked(A, A)], store_media)  # the same media twice in a turn
    store.append("bob", [asked(B)], store_media)
    store.append("carol", [asked(C)], store_media)
    assert indexed(path) == [(A, "alice", 0), (A, "alice", 2), (A, "alice", 2), (B, "alice", 0), (B, "bob", 0),
                             (C, "carol", 0)]
    assert store.media_in_use() == {A, B, C}
    assert store.delete_media([A, B, C, D], lambda ids: set(ids)) == (frozenset({D}), {A: 1, B: 2, C: 1})

    assert store.reset("alice", len) == (3, 0, 1, 1)  # A erased, B kept for bob
    assert indexed(path) == [(B, "bob", 0), (C, "carol", 0)]
    assert store.delete_media([A, B], lambda ids: set(ids)) == (frozenset({A}), {B: 1})

    store._db.execute("UPDATE turns SET at = at - ? WHERE session_id = 'bob'", (3 * DAY,))
    assert store.prune(time.time() - DAY) == (1, 0, {C})
    assert indexed(path) == [(C, "carol", 0)]
    store.close()


def test_a_database_of_an_older_version_gets_its_index_at_open(tmp_path) -> None:
    path = tmp_path / "sessions.sqlite"
    old_database(path, [("alice", 0, [A, B]), ("bob", 0, []), ("bob", 2, [B])])
    store = SessionStore(path)
    assert indexed(path) == [(A, "alice", 0), (B, "alice", 0), (B, "bob", 2)]
    assert store.delete_media([A, B, C], lambda ids: set(ids)) == (frozenset({C}), {A: 1, B: 2})
    store.close()


def test_the_turns_an_older_version_writes_and_deletes_are_indexed_by_the_triggers(tmp_path) -> None:
    """An older daemon sharing the file writes turns without a word of the index (as it does a reset): DeleteMedia
    keeps the media they refer to, and deletes them once they are gone."""
    path = tmp_path / "sessions.sqlite"
    store = SessionStore(path)
    older = sqlite3.connect(path, isolation_level=None)
    insert_turn(older, "old-daemon", 0, [A])
    assert store.delete_media([A], lambda ids: set(ids)) == (frozenset(), {A: 1})
    older.execute("UPDATE turns SET parts = ? WHERE session_id = 'old-daemon'",
                  (json.dumps([{"media_id": B, "filename": "", "modality": "image", "mime_type": "image/png"}]),))
    assert indexed(path) == [(B, "old-daemon", 0)]
    older.execute("DELETE FROM turns WHERE session_id = 'old-daemon'")  # its ResetSession
    older.close()
    assert indexed(path) == []
    assert store.delete_media([A, B], lambda ids: set(ids)) == (frozenset({A, B}), {})
    store.close()


def test_an_index_that_cannot_be_made_at_open_waits_and_the_turns_are_read_meanwhile(tmp_path, caplog) -> None:
    """Another process holding the write lock as the daemon opens the database of an older version (a backup, a
    sqlite3 shell): it opens all the same, without the index, and finds the sessions of a media by reading the
    turns, as before; a later start makes it."""
    path = tmp_path / "sessions.sqlite"
    old_database(path, [("alice", 0, [A, B]), ("bob", 0, [B]), ("carol", 0, [C]), ("dave", 0, [D])])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        store = SessionStore(path, busy_timeout=0.2)
    finally:
        holder.rollback()
        holder.close()
    assert "could not be given its index of media" in caplog.text
    assert index_parts(path) == []
    store.append("erin", [asked(D)], store_media)
    assert store.delete_media([A, B, C, "e" * 64], lambda ids: set(ids)) == (frozenset({"e" * 64}),
                                                                              {A: 1, B: 2, C: 1})
    assert store.reset("alice", len) == (1, 0, 1, 1)  # A erased, B kept for bob
    assert store.media_in_use() == {B, C, D}
    store._db.execute("UPDATE turns SET at = at - ? WHERE session_id = 'carol'", (3 * DAY,))
    assert store.prune(time.time() - DAY, dry_run=True) == (1, 0, {B, D})
    assert preview_prune(path, time.time() - DAY) == (1, 0, {B, D})
    store.close()

    store = SessionStore(path)  # a later start makes it
    assert indexed(path) == [(B, "bob", 0), (C, "carol", 0), (D, "dave", 0), (D, "erin", 0)]
    assert preview_prune(path, time.time() - DAY) == (1, 0, {B, D})
    assert store.prune(time.time() - DAY) == (1, 0, {B, D})
    store.close()


def test_delete_media_keeps_what_an_older_version_s_turns_refer_to(start_daemon, fake, tmp_path) -> None:  # noqa: F811
    """A daemon started on the database of an older version, whose session refers to an image: DeleteMedia of that
    image, and of one a session of today's refers to, keeps both (KEPT_IN_SESSION); once each session is reset,
    its image is deleted."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    photo = picture("turn_media older session")
    old_id = hashlib.sha256(photo).hexdigest()
    old_database(data_dir / "sessions.sqlite", [("s27-index-old", 0, [old_id])])
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=(), data_dir=data_dir)
    assert upload_png(daemon, photo) == old_id
    assert rows(daemon, "SELECT session_id FROM turn_media WHERE media_id = ?", old_id) == [("s27-index-old",)]
    new_id = upload_png(daemon, picture("turn_media new session"))
    assert generate(daemon, text_request("What is this?", media=[image(new_id)], session_id="s27-index-new")).text

    assert delete(daemon, old_id, new_id) == [(old_id, KEPT, 1), (new_id, KEPT, 1)]
    for session_id, media_id in (("s27-index-old", old_id), ("s27-index-new", new_id)):
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=session_id), timeout=30)
        assert delete(daemon, media_id) == [(media_id, DELETED, 0)]
    assert rows(daemon, "SELECT * FROM turn_media") == []
