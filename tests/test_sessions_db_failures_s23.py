"""The sessions database failing for a reason other than room: a data directory that went read-only (a disk the
kernel remounted read-only after errors) or a damaged ``sessions.sqlite`` is UNAVAILABLE ``STORAGE_FAILED`` saying
so (not ``STORAGE_FULL`` "retry once there is room", not INTERNAL with a traceback per call), with one ERROR in the
log that says what the operator must do; the CLI says the file is damaged (not that the path is wrong); and
``prune`` on a full disk gives a next step that exists."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_helpers import wait_for
from mmrouter.v1 import router_pb2 as pb
from test_data_dir_failures import _refused, _reset
from test_prune import CONFIG, MMROUTER, _ask, _upload

from router.errors import StorageFailed
from router.sessions import Trouble, storage_error, storage_fault

DAMAGED_NOTE = "the sessions database is damaged (database disk image is malformed); the daemon's operator must repair it"


def _damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of ``table`` in the (closed) database ``path`` with garbage, as a bad sector or
    a torn write would."""
    db = sqlite3.connect(path)
    try:
        (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xde\xad\xbe\xef" * (size // 4))


def _damage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"garbagegarbagegarbage")


def _run(*args: str | Path, limit_files: bool = False) -> subprocess.CompletedProcess:
    """The ``mmrouter`` command; with ``limit_files``, under a file size limit of 0 (every write fails with EFBIG,
    as on a full disk; no privileges needed)."""
    command = [str(MMROUTER), *map(str, args)]
    if limit_files:
        command = ["sh", "-c", 'ulimit -f 0 && exec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- a damaged sessions database ------------------------------------------------------------------------------


def test_a_damaged_sessions_database_is_storage_failed_logged_once_and_media_survive_its_removal(start_daemon) -> None:
    """Every call on an existing session and every ResetSession was INTERNAL ("internal error ...") with a
    traceback per call; a new session's turn was noted "could not be written". Now UNAVAILABLE STORAGE_FAILED
    saying the database is damaged, one ERROR line saying how to recover, no traceback; prune says the file is
    damaged, not that --data-dir is wrong. Recovering as said (the files moved aside) keeps the uploaded media."""
    daemon = start_daemon(CONFIG)
    data = daemon.data_dir
    media_id = _upload(daemon, "kept")
    assert _ask(daemon, "turn 1", "c1").text and _ask(daemon, "turn 2", "c1").text
    assert daemon.stop() == 0
    _damage_table(data / "sessions.sqlite", "turns")

    daemon = start_daemon(CONFIG, data_dir=data)
    for call in (lambda: _ask(daemon, "turn 3", "c1"), lambda: _reset(daemon, "c1")):
        details = _refused(call)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_FAILED"), details
        assert "the daemon's sessions database is damaged (database disk image is malformed); nothing was changed" \
            in details.message, details.message
        assert "until the daemon's operator repairs it (the daemon's log says how)" in details.message
    answer = _ask(daemon, "hi", "c2")
    assert "[history=0" in answer.text
    assert list(answer.route.notes) == [f"this turn was not kept in session 'c2': {DAMAGED_NOTE}"]
    assert wait_for(lambda: "ResetSession UNAVAILABLE STORAGE_FAILED" in daemon.logs()), daemon.logs()
    logs = daemon.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs
    [line] = [line for line in logs.splitlines() if "is damaged (database disk image is malformed):" in line
              and "router.sessions" in line]  # once, though three calls met it
    database = data / "sessions.sqlite"
    assert line.endswith(f"ERROR router.sessions: the sessions database {database} is damaged (database disk image "
                         "is malformed): calls on the sessions it holds, ResetSession and statistics fail until it is "
                         "repaired: stop the daemon, move sessions.sqlite, sessions.sqlite-wal and sessions.sqlite-shm "
                         f"out of {data} (a backup's sessions.sqlite may take their place; without one, the sessions, "
                         "statistics and kept transcripts are lost, the uploaded media are kept), then start it "
                         "again"), line
    assert daemon.stop() == 0

    pruned = _run("prune", "--older-than", "30", "--data-dir", data)
    assert pruned.returncode == 1, pruned
    assert _one_line(pruned.stderr).startswith(f"the sessions database {database} is damaged (database disk image "
                                               "is malformed): stop the daemon, move sessions.sqlite,"), pruned.stderr
    assert "point --data-dir" not in pruned.stderr

    # the recovery the message and the README give: the files moved aside, the media still served
    aside = data.parent / "aside"
    aside.mkdir()
    for path in data.glob("sessions.sqlite*"):
        shutil.move(path, aside / path.name)
    daemon = start_daemon(CONFIG, data_dir=data)
    stored = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=media_id)
    assert "[history=0 image=1" in _ask(daemon, "look again", "c1", media=[stored]).text


def test_serve_and_prune_say_a_database_with_a_damaged_header_is_damaged(start_daemon) -> None:
    """"file is not a database" in the daemon's own data directory: the hint was "point --data-dir at the daemon's
    data directory", the right one. Now both say the file is damaged and how to recover."""
    daemon = start_daemon(CONFIG)
    data = daemon.data_dir
    assert _ask(daemon, "hello", "s").text
    assert daemon.stop() == 0
    database = data / "sessions.sqlite"
    _damage_header(database)
    moved = (f"move sessions.sqlite, sessions.sqlite-wal and sessions.sqlite-shm out of {data} (a backup's "
             "sessions.sqlite may take their place; without one, the sessions, statistics and kept transcripts are "
             "lost, the uploaded media are kept)")

    served = _run("serve", "--address", "127.0.0.1:0", "--data-dir", data)
    assert served.returncode == 1, served
    assert _one_line(served.stderr).endswith(f"the sessions database {database} is damaged (file is not a database): "
                                             f"{moved}, then start the daemon again"), served.stderr
    pruned = _run("prune", "--older-than", "1", "--data-dir", data)
    assert pruned.returncode == 1, pruned
    assert _one_line(pruned.stderr) == (f"the sessions database {database} is damaged (file is not a database): stop "
                                        f"the daemon, {moved}, then start it again and run this command again")


def test_sqlite_errors_of_a_damaged_or_unwritable_database_are_storage_failed(tmp_path) -> None:
    """The mapping, on errors SQLite really raised (no mount needed): a damaged page ("database disk image is
    malformed"), a damaged header ("file is not a database"), and a database file that cannot be written where
    its folder can ("attempt to write a readonly database": its owner or permissions) are STORAGE_FAILED; they were
    INTERNAL (re-raised) or, for an I/O error, STORAGE_FULL."""
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 20)
    db.close()
    readonly = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as read_only:
        readonly.execute("INSERT INTO t VALUES ('y')")
    readonly.close()
    _damage_table(path, "t")
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError) as malformed:
        db.execute("SELECT COUNT(*) FROM t").fetchall()
    db.close()
    _damage_header(path)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError) as not_a_database:
        db.execute("SELECT * FROM t").fetchall()
    db.close()

    for exc in (malformed.value, not_a_database.value):
        assert storage_fault(exc, path).kind is Trouble.DAMAGED
        error = storage_error(exc, "do it", path)
        assert isinstance(error, StorageFailed)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_FAILED")
        assert error.message.startswith(f"could not do it: the daemon's sessions database is damaged ({exc}); ")
    fault = storage_fault(read_only.value, path)
    assert fault.kind is Trouble.UNWRITABLE
    assert fault.cause == ("attempt to write a readonly database: the data directory can be written, the database "
                           "file cannot (its owner or permissions?)")
    error = storage_error(read_only.value, "do it", path)
    assert isinstance(error, StorageFailed) and "retry once there is room" not in error.message
    assert error.message == (f"could not do it: the daemon's sessions database could not be written ({fault.cause}); "
                             "nothing was changed, and retrying does not help until the daemon's operator repairs "
                             "its data directory (the daemon's log says how)")


# -- a data directory that went read-only (needs root: a loop-mounted ext4 the kernel remounts read-only) ------


@pytest.fixture
def failing_disk(tmp_path):
    """A small ext4 file system mounted with ``errors=remount-ro``, and a function that makes the kernel take it
    for failing (``trigger_fs_error``): from then on every write fails with EROFS, as on a disk with errors.
    Skipped where it cannot be made (not root, no loop devices, no ext4)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 (a loop mount)")
    image, mount = tmp_path / "disk.img", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"cannot mount an ext4 image: {made.stderr}")
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True, text=True).stdout
    trigger = Path("/sys/fs/ext4") / Path(device.strip()).name / "trigger_fs_error"
    try:
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger}")
        yield mount, lambda: trigger.write_text("1")
    finally:
        subprocess.run(["umount", str(mount)], check=True)  # the daemon is stopped by then (see the test)


def test_a_data_directory_that_went_read_only_is_storage_failed_not_full(start_daemon, failing_disk) -> None:
    """ext4 remounted read-only after errors (df shows free space): a turn was noted "disk I/O error; is the disk
    full?" and ResetSession was RESOURCE_EXHAUSTED STORAGE_FULL "retry once there is room". Now both name the
    read-only file system, the reset is UNAVAILABLE STORAGE_FAILED, and one ERROR says the data directory became
    unwritable and what to do."""
    mount, fail = failing_disk
    daemon = start_daemon(CONFIG, data_dir=mount / "data")
    try:
        assert not _ask(daemon, "before", "ro").route.notes
        fail()
        answer = _ask(daemon, "after", "ro")
        assert "[history=1" in answer.text, "the question was not answered"
        cause = ("disk I/O error: the data directory cannot be written: Read-only file system (a disk the kernel "
                 "remounted read-only after errors?)")
        assert list(answer.route.notes) == [f"this turn was not kept in session 'ro': the sessions database could not "
                                            f"be written ({cause}); the daemon's operator must repair its data directory"]
        details = _refused(lambda: _reset(daemon, "ro"))
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_FAILED"), details
        assert details.message == (f"could not reset the session: the daemon's sessions database could not be written "
                                   f"({cause}); nothing was changed, and retrying does not help until the daemon's "
                                   "operator repairs its data directory (the daemon's log says how)")
        assert wait_for(lambda: "ResetSession UNAVAILABLE STORAGE_FAILED" in daemon.logs()), daemon.logs()
        logs = daemon.logs()
        [line] = [line for line in logs.splitlines() if "became unwritable" in line]  # once, though calls met it
        assert f"ERROR router.sessions: the data directory {mount / 'data'} became unwritable: the sessions database " \
               f"could not be written ({cause})" in line, line
        assert "stop the daemon, unmount it, run fsck, mount it again, then start the daemon" in line
        assert "is the disk full" not in logs and "STORAGE_FULL" not in logs and "Traceback" not in logs, logs
    finally:
        daemon.stop()


# -- prune on a full disk -------------------------------------------------------------------------------------


def test_prune_older_than_zero_on_a_full_disk_does_not_advise_a_smaller_older_than(start_daemon) -> None:
    """With --older-than 0 nothing smaller exists: what kept the media is the hour prune always keeps. The
    message said "a smaller --older-than removes more media"; now it says to free space otherwise or wait."""
    daemon = start_daemon(CONFIG)
    media_id = _upload(daemon, "fresh")
    assert _ask(daemon, "hello", "s").text
    result = _run("prune", "--older-than", "0", "--data-dir", daemon.data_dir, limit_files=True)
    assert result.returncode == 0, result.stderr
    assert _one_line(result.stderr) == (
        "sessions and statistics rows were not all pruned: the data directory's disk is full (File too large; "
        f"{daemon.data_dir}): free space on it by other means, or prune again in an hour: the media left were used "
        "within the last hour, which prune always keeps (calls under way may still read them)")
    assert _one_line(result.stdout).startswith("removed 0 media file(s)")
    assert (daemon.data_dir / "media" / media_id[:2] / media_id).exists()
