"""``mmrouter prune``: idle sessions, old statistics and unused media leave the data directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_helpers import error_details, text_request, wait_for
from media_factory import png
from mmrouter.v1 import router_pb2 as pb

MMROUTER = Path(sys.executable).parent / "mmrouter"
DAY = 86_400
CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: everything
    use: fake/omni
"""


def _image(tag: str) -> tuple[pb.Media, str]:
    data = png(tag)
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=data), hashlib.sha256(data).hexdigest()


def _upload(daemon, tag: str) -> str:
    data = png(tag)
    messages = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_IMAGE, mime_type="image/png",
                                                                  size_bytes=len(data))),
                pb.UploadMediaRequest(chunk=data)]
    return daemon.stub.UploadMedia(iter(messages), timeout=30).media_id


def _ask(daemon, text: str, session: str = "", media: list[pb.Media] | None = None) -> pb.Answer:
    request = text_request(text, session_id=session, media=media or [])
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer


def _age(daemon, media_ids: list[str], days: float) -> None:
    for media_id in media_ids:
        record = daemon.data_dir / "media" / media_id[:2] / f"{media_id}.json"
        then = time.time() - days * DAY
        os.utime(record, (then, then))


def _prune(daemon, *args: str) -> str:
    result = subprocess.run([str(MMROUTER), "prune", "--data-dir", str(daemon.data_dir), *args],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def _media_ids(daemon) -> set[str]:
    return {p.stem for p in (daemon.data_dir / "media").glob("*/*.json")}


def test_prune_removes_idle_sessions_old_statistics_and_media_nobody_uses(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    old_image, old_id = _image("in an idle session")
    fresh_image, fresh_id = _image("in a live session")
    _ask(daemon, "look", session="idle", media=[old_image])
    _ask(daemon, "look", session="live", media=[fresh_image])
    forgotten, reused = _upload(daemon, "uploaded, never used"), _upload(daemon, "uploaded, used today")

    db = sqlite3.connect(daemon.data_dir / "sessions.sqlite")
    assert wait_for(lambda: db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 2)  # stats rows are batched
    with db:  # three days pass for the idle session, the statistics and three of the media
        db.execute("UPDATE turns SET at = at - ? WHERE session_id = 'idle'", (3 * DAY,))
        db.execute("UPDATE calls SET at = at - ?", (3 * DAY,))
    db.close()
    _age(daemon, [old_id, forgotten, reused, fresh_id], days=3)
    used_today = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=reused)
    assert "image=1" in _ask(daemon, "this one again", media=[used_today]).text  # use counts as fresh

    before = _media_ids(daemon)
    assert _prune(daemon, "--older-than", "1", "--dry-run") == (
        "would remove 1 session(s), 2 statistics row(s) and 2 media file(s) (0.0 MiB); 1 media kept for sessions")
    assert _media_ids(daemon) == before

    assert _prune(daemon, "--older-than", "1").startswith(
        "removed 1 session(s), 2 statistics row(s) and 2 media file(s)")
    assert _media_ids(daemon) == {fresh_id, reused}  # the live session's image and the media used today
    assert "[history=0 " in _ask(daemon, "anyone there?", session="idle").text
    assert "[history=1 image=1" in _ask(daemon, "still here", session="live").text
    gone = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=forgotten)
    with pytest.raises(grpc.RpcError) as caught:
        _ask(daemon, "and this?", media=[gone])
    assert error_details(caught.value).reason == "MEDIA_NOT_FOUND"
    assert daemon.proc.poll() is None


def test_media_uploaded_or_used_within_the_hour_are_kept_whatever_age_prune_is_given(start_daemon) -> None:
    """prune takes no lock: `--older-than 0` (or a fraction of a day) removed an upload its client was
    about to name, and the media of calls under way, which then failed with MEDIA_NOT_FOUND. Media
    uploaded or used within the last hour stay; older ones go as before."""
    daemon = start_daemon(CONFIG)
    fresh, aged, used = _upload(daemon, "new"), _upload(daemon, "aged"), _upload(daemon, "used")
    _age(daemon, [aged, used], days=2 / 24)  # uploaded two hours ago; one of them is used now
    used_now = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=used)
    assert "image=1" in _ask(daemon, "look", media=[used_now]).text

    assert _prune(daemon, "--older-than", "0").startswith("removed 0 session(s), 1 statistics row(s) and 1 media file(s)")
    assert _media_ids(daemon) == {fresh, used}
    just_uploaded = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=fresh)
    assert "image=1" in _ask(daemon, "and now this", media=[just_uploaded]).text


def test_prune_refuses_a_directory_that_holds_no_data(tmp_path) -> None:
    result = subprocess.run([str(MMROUTER), "prune", "--older-than", "30", "--data-dir", str(tmp_path / "nothing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no data at" in result.stderr and not (tmp_path / "nothing").exists()


def _old_data(daemon) -> str:
    """An idle session with an image, an upload nobody uses and a live session's image, all three days
    old but the live session; returns the id of the live session's image."""
    idle_image, idle_id = _image("idle, on a full disk")
    live_image, live_id = _image("live, on a full disk")
    _ask(daemon, "look", session="idle", media=[idle_image])
    _ask(daemon, "look", session="live", media=[live_image])
    unused = _upload(daemon, "never used, on a full disk")
    db = sqlite3.connect(daemon.data_dir / "sessions.sqlite")
    with db:
        db.execute("UPDATE turns SET at = at - ? WHERE session_id = 'idle'", (3 * DAY,))
    db.close()
    _age(daemon, [idle_id, unused, live_id], days=3)
    assert _media_ids(daemon) == {idle_id, unused, live_id}
    return live_id


def _prune_on_a_full_disk(daemon) -> subprocess.CompletedProcess:
    """prune with no room to write: a file size limit of 0 makes every write fail (EFBIG), as on a full
    disk (the limit needs no privileges; Python ignores SIGXFSZ, so writes fail instead of killing it)."""
    return subprocess.run(["sh", "-c", f'ulimit -f 0 && exec "{MMROUTER}" prune --older-than 1 --data-dir "$0"',
                           str(daemon.data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})


def _sessions_left(daemon) -> set[str]:
    db = sqlite3.connect(daemon.data_dir / "sessions.sqlite")
    try:
        return {row[0] for row in db.execute("SELECT DISTINCT session_id FROM turns")}
    finally:
        db.close()


FULL = ("the data directory's disk is full (File too large; {}): free space on it (a smaller --older-than removes "
        "more media), then prune again")


def test_prune_on_a_full_disk_frees_the_media_while_the_daemon_runs(start_daemon) -> None:
    """On a full disk the sessions' deletes fail (they need room in the WAL) but deleting media needs none:
    the media go first, and the sessions' failure is a warning saying the disk is full."""
    daemon = start_daemon(CONFIG)
    live_id = _old_data(daemon)

    result = _prune_on_a_full_disk(daemon)
    assert result.returncode == 0, result.stderr
    assert " ".join(result.stderr.split()) == ("sessions and statistics rows were not all pruned: "
                                               + FULL.format(daemon.data_dir))
    assert " ".join(result.stdout.split()).startswith("removed 2 media file(s)")
    assert _media_ids(daemon) == {live_id}
    assert _sessions_left(daemon) == {"idle", "live"}

    assert _prune(daemon, "--older-than", "1").startswith("removed 1 session(s)")  # room again
    assert _sessions_left(daemon) == {"live"}
    assert "[history=1 image=1" in _ask(daemon, "still here", session="live").text


def test_prune_on_a_full_disk_frees_the_media_while_the_daemon_is_stopped(start_daemon) -> None:
    """A stopped daemon removed its -shm file, which sqlite must re-create (it needs room) to open the
    database for writing: prune then reads it read-only and prunes the media all the same."""
    daemon = start_daemon(CONFIG)
    live_id = _old_data(daemon)
    assert daemon.stop() == 0
    assert not (daemon.data_dir / "sessions.sqlite-shm").exists()

    result = _prune_on_a_full_disk(daemon)
    assert result.returncode == 0, result.stderr
    assert " ".join(result.stderr.split()) == ("sessions and statistics rows are not pruned, media are: "
                                               + FULL.format(daemon.data_dir))
    assert " ".join(result.stdout.split()) == "removed 2 media file(s) (0.0 MiB); 1 media kept for sessions"
    assert _media_ids(daemon) == {live_id}
    assert _prune(daemon, "--older-than", "1").startswith("removed 1 session(s)")
    assert _sessions_left(daemon) == {"live"}


def test_prune_removes_and_counts_temp_files_of_interrupted_uploads(tmp_path) -> None:
    """prune takes no lock and may run beside a daemon that is uploading: only temp files unchanged for
    an hour go, and the summary counts them."""
    tmp = tmp_path / "data" / "media" / "tmp"
    tmp.mkdir(parents=True)
    old, young = tmp / "tmpold", tmp / "tmpyoung"
    old.write_bytes(b"x" * 3 * 2**20)
    young.write_bytes(b"an upload under way")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    def prune(*args: str) -> str:
        result = subprocess.run([str(MMROUTER), "prune", "--older-than", "30", "--data-dir", str(tmp_path / "data"),
                                 *args], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    summary = "0 session(s), 0 statistics row(s) and 0 media file(s) (0.0 MiB), 1 temp file(s) of interrupted uploads"
    assert prune("--dry-run") == f"would remove {summary} (3.0 MiB); 0 media kept for sessions"
    assert old.exists()
    assert prune() == f"removed {summary} (3.0 MiB); 0 media kept for sessions"
    assert not old.exists() and young.exists()


def _tree(root: Path) -> dict[str, tuple[bytes | None, float]]:
    """Every file and folder under ``root``: its bytes (None for a folder) and modification time."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


#: A sessions database as the oldest versions made it: turns without a time, bridged texts without transcripts.
OLDEST_SCHEMA = """
CREATE TABLE turns (session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, parts TEXT NOT NULL,
                    PRIMARY KEY (session_id, position));
CREATE TABLE bridged (key TEXT PRIMARY KEY, text TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE calls (
    at REAL NOT NULL, rule TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, purpose TEXT NOT NULL,
    latency_ms REAL NOT NULL, cost_usd REAL NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, audio_seconds REAL NOT NULL
);
"""


def test_a_dry_run_writes_nothing_to_the_data_directory(tmp_path) -> None:
    """--dry-run only says what would go: it created sessions.sqlite where there was none and media/tmp,
    and migrated an old database (its turns' times set to now). A database of the oldest schema counts
    its sessions as used now, as the migration would."""
    media_only = tmp_path / "media-only"
    (media_only / "media" / "ab").mkdir(parents=True)
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "sessions.sqlite")
    db.executescript(OLDEST_SCHEMA)
    media_id = "ab" * 32
    with db:
        db.execute("INSERT INTO turns VALUES ('s', 0, 'user', ?)", (f'[{{"media_id": "{media_id}"}}]',))
        db.execute("INSERT INTO calls VALUES (?, 'chat', 'fake', 'echo', 'answer', 1, 0, 1, 1, 0)",
                   (time.time() - 3 * DAY,))
    db.close()
    expected = {media_only: "would remove 0 session(s), 0 statistics row(s) and 0 media file(s) (0.0 MiB); "
                            "0 media kept for sessions",
                old: "would remove 0 session(s), 1 statistics row(s) and 0 media file(s) (0.0 MiB); "
                     "1 media kept for sessions"}
    for data, summary in expected.items():
        before = _tree(data)
        result = subprocess.run([str(MMROUTER), "prune", "--older-than", "1", "--dry-run", "--data-dir", str(data)],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert " ".join(result.stdout.split()) == summary
        assert _tree(data) == before


@pytest.mark.parametrize("dry_run", [False, True], ids=["prune", "dry-run"])
@pytest.mark.parametrize("folder", ["media", "media/tmp"])
def test_a_media_folder_that_is_a_file_is_a_one_line_error(tmp_path, folder, dry_run) -> None:
    data = tmp_path / "data"
    (data / folder).parent.mkdir(parents=True, exist_ok=True)
    (data / folder).write_text("not a folder")
    sqlite3.connect(data / "sessions.sqlite").close()
    result = subprocess.run([str(MMROUTER), "prune", "--older-than", "1", "--data-dir", str(data),
                             *(["--dry-run"] if dry_run else [])],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"{data / folder} must be a directory, not a file: point --data-dir "
                                          "(or server.data_dir) at the daemon's data directory"], result.stderr


def _wal_without_shm(data: Path, rows_in_wal: bool) -> None:
    """A sessions database in ``data`` with its -wal and no -shm, as a copy of a daemon's data directory
    (or a deleted -shm) leaves it: an idle session of three days ago and a live one, each with a media,
    and a statistics row of three days ago and one of now. The rows are in the -wal's frames only when
    ``rows_in_wal``, else in the file beside an empty -wal."""
    from router.sessions import SessionStore

    live = data.parent / f"{data.name}-live"
    SessionStore(live / "sessions.sqlite").close()  # the schema, in WAL mode
    db = sqlite3.connect(live / "sessions.sqlite")
    db.execute("PRAGMA wal_autocheckpoint=0")  # the rows stay in the -wal
    now = time.time()
    with db:
        db.executemany("INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, 0, 'user', ?, ?)",
                       [("idle", json.dumps([{"media_id": "aa" * 32}]), now - 3 * DAY),
                        ("live", json.dumps([{"media_id": "bb" * 32}]), now)])
        db.executemany("INSERT INTO calls VALUES (?, 'chat', 'fake', 'echo', 'answer', 1, 0, 1, 1, 0)",
                       [(now - 3 * DAY,), (now,)])
    if not rows_in_wal:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data.mkdir()
    for name in ("sessions.sqlite", "sessions.sqlite-wal"):  # while it is open: the -wal as it is
        shutil.copyfile(live / name, data / name)
    db.close()
    assert sorted(p.name for p in data.iterdir()) == ["sessions.sqlite", "sessions.sqlite-wal"]
    assert ((data / "sessions.sqlite-wal").stat().st_size > 0) is rows_in_wal


@pytest.mark.parametrize("rows_in_wal", [True, False], ids=["rows-in-the-wal", "empty-wal"])
def test_a_dry_run_of_a_wal_without_its_shm_writes_nothing_and_counts_the_wals_rows(tmp_path, rows_in_wal) -> None:
    """A -wal without its -shm was read read-only, which made sqlite create the -shm beside them; read
    immutable, the -wal's rows would not count. The folder stays as it was, and the rows count."""
    data = tmp_path / "data"
    _wal_without_shm(data, rows_in_wal)
    before = _tree(data)
    result = subprocess.run([str(MMROUTER), "prune", "--older-than", "1", "--dry-run", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert " ".join(result.stdout.split()) == ("would remove 1 session(s), 1 statistics row(s) and 0 media file(s) "
                                               "(0.0 MiB); 1 media kept for sessions")
    assert _tree(data) == before
