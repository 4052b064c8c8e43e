"""ResetSession deletes what a session left in the data directory: its turns, the texts kept for the media its
calls sent (of a call that stored no turn too), and their copies in the journal; and ``prune --dry-run``
reads a database without copying it anywhere."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for
from test_prune import MMROUTER, _tree, _wal_without_shm

from router.sessions import SessionStore
from tests.fakes.openai import error_body as openai_error

CHAT = "/v1/chat/completions"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
GPT_4O = pb.RoutingHints(provider="openai", model="gpt-4o")  # cannot hear: Whisper bridges the audio


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())


def _on_disk(data_dir: Path, text: str) -> list[str]:
    """The files of the sessions database (the file, its -wal and -shm) that hold ``text``."""
    return [p.name for p in sorted(data_dir.glob("sessions.sqlite*")) if text.encode() in p.read_bytes()]


def _kept_texts(data_dir: Path, media_hash: str) -> list[str]:
    db = sqlite3.connect(f"{(data_dir / 'sessions.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT text FROM bridged WHERE key LIKE ?", (f"{media_hash}|%",))]
    finally:
        db.close()


def _reset(daemon, session: str) -> int:
    return daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=session), timeout=30).turns_removed


def test_a_reset_forgets_the_transcript_of_a_call_that_stored_no_turn(daemon, fakes) -> None:
    """Whisper transcribed the audio, then gpt-4o refused the call: no turn was stored, but the transcript was
    kept (a retry need not pay for it again). ResetSession of that session answered NOT_FOUND and left the
    transcript in sessions.sqlite until a prune; now it removes it, from the file and from its journal."""
    audio = wav(1.7)
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=audio, filename="confession.wav")
    fakes["openai"].fail_next(400, openai_error("Invalid request."), path=CHAT)
    with pytest.raises(grpc.RpcError) as failed:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request(
            "what is said", media=[media], session_id="leo", hints=GPT_4O)), timeout=60)
    assert error_details(failed.value).reason == "PROVIDER_BAD_REQUEST"
    [transcript] = _kept_texts(daemon.data_dir, hashlib.sha256(audio).hexdigest())  # kept for a retry
    assert _on_disk(daemon.data_dir, transcript)

    assert _reset(daemon, "leo") == 0  # found (it left a text), though it stored no turn
    assert _kept_texts(daemon.data_dir, hashlib.sha256(audio).hexdigest()) == []
    assert _on_disk(daemon.data_dir, transcript) == []
    with pytest.raises(grpc.RpcError) as again:  # nothing left of it now
        _reset(daemon, "leo")
    assert error_details(again.value).reason == "SESSION_NOT_FOUND"


def test_a_reset_during_a_call_also_forgets_what_its_bridge_kept_after_it(daemon, fakes) -> None:
    """ResetSession while the call's bridge (Whisper) transcribes: the call's turn is not kept, and neither is
    the transcript its bridge keeps after the reset (it stayed until a second reset or a prune)."""
    audio = wav(1.3)
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=audio, filename="race.wav")
    transcribing = fakes["openai"].hold_next(path=TRANSCRIPTIONS)
    call = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request(
        "what is said", media=[media], session_id="race", hints=GPT_4O)), timeout=60)
    deadline = time.monotonic() + 30
    while not any(r.path == TRANSCRIPTIONS for r in fakes["openai"].requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not call.done()
    assert _reset(daemon, "race") == 0  # nothing stored yet; the call under way is told
    transcribing.set()
    answer = call.result().answer
    assert any("was reset (ResetSession) while the call was under way" in note for note in answer.route.notes)
    assert _kept_texts(daemon.data_dir, hashlib.sha256(audio).hexdigest()) == []


def test_a_reset_leaves_no_copy_of_the_turns_in_the_journal(daemon) -> None:
    """The deleted turns stayed in sessions.sqlite-wal until about 4 MiB of later writes checkpointed it."""
    daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "WALSECRET my bank account is 12345", session_id="bob", hints=GPT_4O)), timeout=60)
    assert _on_disk(daemon.data_dir, "WALSECRET")
    assert _reset(daemon, "bob") == 2
    assert _on_disk(daemon.data_dir, "WALSECRET") == []


def test_a_kept_text_goes_with_the_last_session_whose_calls_made_it(tmp_path) -> None:
    """Two sessions' calls made the text of one media and stored no turn: it stays for the other session's
    retry until that one is reset too. A reset with nothing to remove is not a removal."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        media = "c" * 64
        store.remember(f"{media}|audio|openai/whisper-1", "heard", None, "one")
        store.remember(f"{media}|audio|openai/whisper-1", "heard", None, "two")
        first = store.reset("one")
        assert first.turns == 0 and first.anything  # its link went: something was removed
        assert store.recall(f"{media}|audio|openai/whisper-1") == ("heard", None)
        assert store.reset("two").turns == 0 and store.recall(f"{media}|audio|openai/whisper-1") is None
        assert not store.reset("two").anything
    finally:
        store.close()


def test_prune_forgets_the_links_of_texts_it_removes(tmp_path) -> None:
    """A kept text's link to the session whose call made it goes with the text (and with the session)."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        store.remember(f"{'d' * 64}|audio|openai/whisper-1", "heard", None, "idle")
        store.prune(time.time() + 1)
        assert store._db.execute("SELECT COUNT(*) FROM bridged_for").fetchone() == (0,)
    finally:
        store.close()


def test_the_daemons_connection_overwrites_what_it_deletes(tmp_path) -> None:
    """``secure_delete`` is set whatever the SQLite build's default (off on python.org's and macOS's)."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        assert store._db.execute("PRAGMA secure_delete").fetchone() == (1,)
    finally:
        store.close()


def test_a_dry_run_of_a_wal_without_its_shm_copies_nothing(tmp_path) -> None:
    """It copied the database and its -wal (every user's turns) to $TMPDIR to read them there. Now it reads
    them in place, writing nothing anywhere: with no room to write even 512 bytes, it still answers, and
    leaves TMPDIR (pointed at an empty folder) and the data directory as they were."""
    data, temp = tmp_path / "data", tmp_path / "temp"
    _wal_without_shm(data, rows_in_wal=True)
    temp.mkdir()
    before = _tree(data)
    result = subprocess.run(["sh", "-c", f'ulimit -f 1 && exec "{MMROUTER}" prune --older-than 1 --dry-run '
                                         '--data-dir "$0"', str(data)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "300", "TMPDIR": str(temp)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert " ".join(result.stdout.split()) == ("would remove 1 session(s), 1 statistics row(s) and 0 media file(s) "
                                               "(0.0 MiB); 1 media kept for sessions")
    assert _tree(data) == before
    assert not any(temp.iterdir())


def _older_version_reset(store: SessionStore, session: str) -> None:
    """What ResetSession of a version before ``bridged_for`` did (after a rollback): the turns go, not the links."""
    store._db.execute("DELETE FROM turns WHERE session_id = ?", (session,))


def _turn_with(store: SessionStore, session: str, media: str) -> None:
    store._db.execute("INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, 0, 'user', ?, ?)",
                      (session, f'[{{"media_id": "{media}"}}]', time.time()))


def test_links_left_by_an_older_versions_reset_are_dropped_at_start(tmp_path) -> None:
    """Rolled back to a version that did not know ``bridged_for``, a reset left the session's links; upgraded
    again, that link kept the media's text from the reset of the next session that sent the same media."""
    media, key = "e" * 64, f"{'e' * 64}|audio|k2|openai/whisper-1"
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        _turn_with(store, "S1", media)
        store.remember(key, "heard", None, "S1")
        _older_version_reset(store, "S1")
        store.drop_stale_links()  # the daemon's start
        _turn_with(store, "S2", media)
        store.remember(key, "heard", None, "S2")
        assert store.reset("S2").turns == 1
        assert store.recall(key) is None  # no session refers to it any more
    finally:
        store.close()


def test_the_daemon_drops_stale_links_when_it_starts(start_daemon, fakes, tmp_path) -> None:
    data_dir = tmp_path / "old-data"
    data_dir.mkdir(mode=0o700)
    store = SessionStore(data_dir / "sessions.sqlite")
    try:
        _turn_with(store, "kept", "f" * 64)
        store.remember(f"{'f' * 64}|audio|k2|openai/whisper-1", "heard", None, "kept")
        store.remember(f"{'f' * 64}|audio|k2|openai/whisper-1", "heard", None, "gone")  # its turns reset by then
    finally:
        store.close()
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=(), data_dir=data_dir)
    db = sqlite3.connect(f"{(daemon.data_dir / 'sessions.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT session_id FROM bridged_for").fetchall() == [("kept",)]
    finally:
        db.close()


def test_prune_of_a_database_an_older_version_made_says_how_to_give_its_space_back(tmp_path, caplog) -> None:
    """A database made before the store set ``auto_vacuum`` keeps the pages prune frees: the file never
    shrinks, which nothing said (an operator's 200 MB database grew after halving it)."""
    path = tmp_path / "data dir" / "sessions.sqlite"  # a space: the command must quote it
    path.parent.mkdir()
    old = sqlite3.connect(path)  # made by an older version: a table before any auto_vacuum setting
    old.execute("CREATE TABLE turns (session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, "
                "parts TEXT NOT NULL, PRIMARY KEY (session_id, position))")
    old.executemany("INSERT INTO turns VALUES (?, 0, 'user', ?)", ((f"s{i}", "x" * 4000) for i in range(4000)))
    old.commit()
    old.close()
    store = SessionStore(path)
    try:
        with caplog.at_level("WARNING", logger="router.sessions"):
            sessions, _, _ = store.prune(time.time() + 1)
    finally:
        store.close()
    assert sessions == 4000
    [warning] = [r.getMessage() for r in caplog.records if "made by an older version" in r.getMessage()]
    # the command it names, run as printed (by a shell, without the sqlite3 tool), converts the file
    [command] = re.findall(r"run `([^`]+)`", warning)
    subprocess.run(command, shell=True, check=True, timeout=60)
    converted = sqlite3.connect(path)
    try:
        assert converted.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL: later prunes shrink it
        assert converted.execute("PRAGMA freelist_count").fetchone() == (0,)
    finally:
        converted.close()


def test_prune_of_a_database_that_shrinks_says_nothing_of_vacuum(tmp_path, caplog) -> None:
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        store._db.executemany("INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, 0, 'user', ?, 0)",
                              ((f"s{i}", "x" * 4000) for i in range(4000)))
        with caplog.at_level("WARNING", logger="router.sessions"):
            assert store.prune(time.time() + 1)[0] == 4000
    finally:
        store.close()
    assert not [r for r in caplog.records if "older version" in r.getMessage()]
