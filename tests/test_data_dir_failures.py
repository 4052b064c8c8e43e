"""The data directory failing under a running daemon: ResetSession on a full disk or a locked sessions database
answers what the turn path and UploadMedia say (not INTERNAL), and a data directory removed or replaced while the
daemon runs stops it storing anything (health NOT_SERVING, DATA_DIR_GONE) instead of losing all it writes."""

from __future__ import annotations

import resource
import shutil
import sqlite3

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import error_details, text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from router.errors import StorageBusy, StorageFull
from router.server import SERVICE_NAME
from router.sessions import STORAGE_RETRY_SECONDS, storage_error

CONFIG = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/echo
"""

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG)


def _ask(daemon, text: str, session: str = "") -> pb.Answer:
    request = text_request(text, session_id=session)
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer


def _reset(daemon, session: str) -> pb.ResetSessionResponse:
    return daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=session), timeout=30)


def _upload(daemon, data: bytes = PNG) -> pb.UploadMediaResponse:
    def messages():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_IMAGE, mime_type="image/png",
                                                               filename="x.png", size_bytes=len(data)))
        yield pb.UploadMediaRequest(chunk=data)

    return daemon.stub.UploadMedia(messages(), timeout=30)


def _refused(call) -> object:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return error_details(caught.value)


def _health(daemon, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(daemon.channel)
    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


# -- ResetSession on a full disk, on a locked database ---------------------------------------------------------


def test_reset_on_a_full_disk_is_storage_full_not_internal(daemon) -> None:
    """The daemon may grow no file any more (a file size limit set on it: as a full disk, without root): the
    reset's delete, which SQLite writes to the journal, fails. It was INTERNAL with a traceback logged as a bug;
    now RESOURCE_EXHAUSTED STORAGE_FULL, as UploadMedia answers, and the session is kept as it was."""
    assert _ask(daemon, "hello " + "x" * 200_000, "a").text  # the journal grows larger than the daemon's log
    data = daemon.data_dir
    largest = max((data / name).stat().st_size for name in ("sessions.sqlite", "sessions.sqlite-wal"))
    assert daemon.log_path.stat().st_size < largest // 4  # its lines still fit
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
    try:
        details = _refused(lambda: _reset(daemon, "a"))
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL"), details
        assert details.message.startswith("could not reset the session: the daemon's sessions database could not be "
                                          "written"), details.message
        assert "retry once there is room" in details.message
    finally:
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert wait_for(lambda: "ResetSession RESOURCE_EXHAUSTED STORAGE_FULL" in daemon.logs()), daemon.logs()
    assert "internal error" not in daemon.logs() and "Traceback" not in daemon.logs()
    assert _reset(daemon, "a").turns_removed == 2  # room again: the session was all there


def test_reset_on_a_database_another_process_keeps_locked_is_retryable_unavailable(daemon) -> None:
    """A backup script (or a sqlite3 shell) holds the write lock past the busy timeout: UNAVAILABLE
    STORAGE_BUSY with a RetryInfo, as the turn path notes it, and the reset works once the lock is let go."""
    assert _ask(daemon, "hello", "locked").text
    other = sqlite3.connect(daemon.data_dir / "sessions.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        details = _refused(lambda: _reset(daemon, "locked"))
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_BUSY"), details
    assert details.retry_delay == STORAGE_RETRY_SECONDS
    assert "stayed locked by another process" in details.message and "nothing was changed" in details.message
    assert wait_for(lambda: "ResetSession UNAVAILABLE STORAGE_BUSY" in daemon.logs()), daemon.logs()
    assert "internal error" not in daemon.logs() and "Traceback" not in daemon.logs()
    assert _reset(daemon, "locked").turns_removed == 2


def test_sqlite_full_and_locked_errors_are_the_clients_errors(tmp_path) -> None:
    """SQLite's own "database or disk is full" (as on a full disk: ENOSPC) and "database is locked" map to
    STORAGE_FULL and STORAGE_BUSY; any other failure stays the daemon's (INTERNAL)."""
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None, timeout=0)
    db.execute("CREATE TABLE t (x TEXT)")
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    other = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        db.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as other_failure:
        db.execute("SELECT * FROM missing")
    other.close()
    db.close()

    assert isinstance(storage_error(full.value, "do it"), StorageFull)
    busy = storage_error(locked.value, "do it")
    assert isinstance(busy, StorageBusy) and busy.retry_after == STORAGE_RETRY_SECONDS
    assert storage_error(other_failure.value, "do it") is None


# -- the data directory removed or replaced under the daemon ---------------------------------------------------


def _not_serving(daemon) -> bool:
    return _health(daemon) == "NOT_SERVING"


@pytest.mark.parametrize("how", ["renamed", "deleted", "replaced"])
def test_a_data_directory_removed_under_the_daemon_stops_it_storing(daemon, start_daemon, tmp_path, how) -> None:
    """The sessions database and the lock were files no longer in the data directory: turns, uploads and
    statistics went on into them, health said SERVING, all of it vanished at the restart, and a second daemon
    could start on the same path. Now the daemon notices within seconds: one ERROR, health NOT_SERVING,
    session calls, uploads and resets refused with DATA_DIR_GONE; calls without a session still answered."""
    assert _ask(daemon, "before", "keep").text
    assert _health(daemon) == _health(daemon, SERVICE_NAME) == "SERVING"
    data = daemon.data_dir
    if how == "renamed":
        data.rename(tmp_path / "moved")
    else:
        shutil.rmtree(data)
        if how == "replaced":  # a restored backup, a new volume: another directory at the same path
            data.mkdir()

    assert wait_for(lambda: _not_serving(daemon), timeout=20), "health still SERVING"
    assert _health(daemon, SERVICE_NAME) == "NOT_SERVING"
    for call in (lambda: _ask(daemon, "after", "keep"), lambda: _ask(daemon, "new", "fresh"),
                 lambda: _reset(daemon, "keep"), lambda: _upload(daemon)):
        details = _refused(call)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATA_DIR_GONE"), details
        assert "data directory was removed or replaced" in details.message
        assert "the daemon must be restarted" in details.message
    assert "hello" in _ask(daemon, "hello").text  # no session: answered
    assert data.exists() is (how == "replaced")  # never made again by the daemon
    if how == "replaced":
        assert list(data.iterdir()) == []
    [line] = wait_for(lambda: [line for line in daemon.logs().splitlines() if " ERROR " in line])  # once
    assert "ERROR router.server: the data directory was removed or replaced while the daemon ran" in line
    assert f"({data} was {'replaced' if how == 'replaced' else 'removed'})" in line
    assert "Traceback" not in daemon.logs()


def test_an_upload_right_after_the_removal_does_not_make_the_directory_again(daemon) -> None:
    """An upload (or a turn's media) before the daemon noticed made media/ again with parents, so a data
    directory holding media and no sessions database: refused now, whoever notices first."""
    shutil.rmtree(daemon.data_dir)
    details = _refused(lambda: _upload(daemon))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATA_DIR_GONE"), details
    assert not daemon.data_dir.exists()


def test_a_second_daemon_may_take_the_new_directory_once_the_first_stores_nothing(start_daemon) -> None:
    """The first daemon's lock is on a file no longer in the directory, so a second daemon can lock the path
    again: allowed, since the first stores nothing there (it says NOT_SERVING and refuses); the second serves
    sessions in the new directory, and they survive its restart."""
    first = start_daemon(CONFIG)
    data = first.data_dir
    shutil.rmtree(data)
    assert wait_for(lambda: _not_serving(first), timeout=20)
    second = start_daemon(CONFIG, data_dir=data)
    assert _health(second) == "SERVING"
    assert _ask(second, "kept", "s").text
    assert _refused(lambda: _ask(first, "lost", "s")).reason == "DATA_DIR_GONE"
    second.stop()
    third = start_daemon(CONFIG, data_dir=data)
    assert _reset(third, "s").turns_removed == 2


def test_health_stays_serving_while_the_data_directory_is_there(daemon) -> None:
    """The watch says nothing of a directory that is only written to (turns, uploads, a reset)."""
    assert _ask(daemon, "one", "s").text
    assert _upload(daemon).media_id
    assert _reset(daemon, "s").turns_removed == 2
    assert wait_for(lambda: _not_serving(daemon), timeout=3) is None
    assert "removed or replaced" not in daemon.logs()
