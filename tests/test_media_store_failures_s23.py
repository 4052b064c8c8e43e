"""The media store on a data directory that went bad (QA report "diskfull", findings 1, 4 and 5): an upload into a
store that cannot be written (read-only, a file in its way) is UNAVAILABLE STORAGE_FAILED naming the cause with one
ERROR line, out of inodes it is STORAGE_FULL like a full disk (both were INTERNAL with a traceback); a session turn's
inline media says why it was not kept; a stored file damaged without a change of length is replaced by the next
upload of its bytes (it was kept, damaged, with an OK); and bytes whose record could not be written are not left
behind without one.

The tests that need a read-only or inode-less file system mount one (a read-only bind mount, a tmpfs): they are
skipped where mounting is impossible (not root, no privilege); the others provoke the same failures without."""

from __future__ import annotations

import errno
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import wait_for
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_data_dir_failures import CONFIG, _refused, _upload
from test_sessions import ask

from router.redact import session_tag


def _mount(*args: str) -> None:
    """Run ``mount`` with ``args``; skip the test where it cannot (not root, a container without the privilege)."""
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"no mount command here: {exc}")
    if done.returncode:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


def _umount(where: Path) -> None:
    """Unmount ``where`` (lazily if something still holds it)."""
    if subprocess.run(["umount", str(where)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG)


@pytest.fixture
def read_only_media(daemon) -> Iterator[Path]:
    """The running daemon's ``media`` folder made read-only (a bind mount of itself, remounted read-only: writes
    fail with EROFS, as on a disk the kernel remounted read-only after errors); its path. Writable again at the
    end, or when the test unmounts it (``_umount``)."""
    media = daemon.data_dir / "media"
    _mount("--bind", str(media), str(media))
    try:
        _mount("-o", "remount,bind,ro", str(media))
        yield media
    finally:
        if subprocess.run(["mountpoint", "-q", str(media)]).returncode == 0:
            _umount(media)


@pytest.fixture
def daemon_on_tmpfs(start_daemon, tmp_path) -> Iterator[Callable[[str], object]]:
    """Start a daemon whose data directory is on a tmpfs mounted with the given options; it is stopped, and the
    tmpfs unmounted, at the end."""
    mounted: list[tuple[object, Path]] = []

    def start(options: str) -> object:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        _mount("-t", "tmpfs", "-o", options, "mmrouter-test", str(where))
        daemon = start_daemon(CONFIG, data_dir=where / "data")
        mounted.append((daemon, where))
        return daemon

    yield start
    for started, where in mounted:
        started.stop()
        _umount(where)


def _stored(daemon, media_id: str) -> Path:
    return daemon.data_dir / "media" / media_id[:2] / media_id


def _errors(daemon) -> list[str]:
    return [line for line in daemon.logs().splitlines() if " ERROR " in line]


def _inline(image: bytes) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=image)


def _assert_storage_failed(daemon, details, cause: str) -> None:
    """``details`` are of an upload refused as UNAVAILABLE STORAGE_FAILED for ``cause`` (an errno's text and the
    hint at it), logged as one ERROR line and no traceback."""
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_FAILED"), details
    media = daemon.data_dir / "media"
    assert details.message == (f"cannot store the upload of image/png: the data directory's media folder {media} "
                               f"cannot be written: {cause}; nothing was kept, the operator must repair it")
    assert wait_for(lambda: "UploadMedia UNAVAILABLE STORAGE_FAILED" in daemon.logs()), daemon.logs()
    [line] = [line for line in _errors(daemon) if "router.media" in line]
    assert f"ERROR router.media: an upload failed: {details.message}" in line
    assert "internal error" not in daemon.logs() and "Traceback" not in daemon.logs()


# -- finding 1: a store that cannot be written, out of inodes ------------------------------------------------------


def test_an_upload_into_a_store_with_a_file_in_its_way_is_storage_failed(daemon) -> None:
    """A file where the store's temp folder should be (as an operator's slip, or a damaged file system, leaves
    it): the upload's temp file cannot be made (ENOTDIR). It was INTERNAL with a traceback; now STORAGE_FAILED
    naming the cause, and the upload works once the folder is free again."""
    tmp = daemon.data_dir / "media" / "tmp"
    tmp.rmdir()
    tmp.write_text("in the way")
    details = _refused(lambda: _upload(daemon))
    _assert_storage_failed(daemon, details, "Not a directory (a file where the store needs a folder)")

    tmp.unlink()
    assert _upload(daemon).media_id  # repaired: no restart needed


def test_an_upload_with_a_file_where_its_shard_folder_goes_is_storage_failed(daemon) -> None:
    """QA regress23: a file where the upload's shard folder (``media/<first 2 hex digits>``) should be made the
    upload INTERNAL with a FileExistsError traceback (EEXIST); now STORAGE_FAILED as for any file in the way."""
    from test_data_dir_failures import PNG

    shard = daemon.data_dir / "media" / hashlib.sha256(PNG).hexdigest()[:2]
    shard.write_text("in the way")
    details = _refused(lambda: _upload(daemon))
    _assert_storage_failed(daemon, details, "File exists (a file where the store needs a folder)")
    shard.unlink()
    assert _upload(daemon).media_id


def test_inline_media_of_a_turn_the_store_cannot_keep_says_why(daemon) -> None:
    """A session turn's inline media that the store cannot write: the turn's note said "storing it failed
    (OSError, see the daemon's log)" with a traceback each time; now it names the cause, logged in one line."""
    tmp = daemon.data_dir / "media" / "tmp"
    tmp.rmdir()
    tmp.write_text("in the way")
    answer = ask(daemon, "look", session="blocked", media=[_inline(png("blocked"))])
    assert "[history=0 image=1" in answer.text  # answered all the same
    [note] = answer.route.notes
    assert note.startswith("this turn was not kept in session 'blocked': cannot store "), note
    assert "cannot be written: Not a directory (a file where the store needs a folder)" in note
    assert wait_for(lambda: f"saving this turn of session {session_tag('blocked')} failed" in daemon.logs())
    assert "Traceback" not in daemon.logs()


def test_an_upload_onto_a_read_only_disk_is_storage_failed(daemon, read_only_media) -> None:
    """The media folder went read-only (EROFS): STORAGE_FAILED saying so and that the operator must repair it,
    one ERROR line per upload, no traceback; inline media of a session turn say the same in the turn's note;
    once the disk is writable again, uploads work without a restart."""
    details = _refused(lambda: _upload(daemon))
    _assert_storage_failed(daemon, details,
                           "Read-only file system (a disk the kernel remounted read-only after errors?)")

    answer = ask(daemon, "look", session="ro", media=[_inline(png("ro"))])
    [note] = answer.route.notes
    assert note.startswith("this turn was not kept in session 'ro': cannot store "), note
    assert "cannot be written: Read-only file system" in note
    assert wait_for(lambda: f"saving this turn of session {session_tag('ro')} failed" in daemon.logs())
    assert "Traceback" not in daemon.logs()

    _umount(read_only_media)
    assert _upload(daemon).media_id


def test_an_upload_on_a_disk_out_of_inodes_is_storage_full(daemon_on_tmpfs) -> None:
    """Bytes to spare but no inode left: the upload's temp file cannot be made (ENOSPC). It was INTERNAL with a
    traceback; now RESOURCE_EXHAUSTED STORAGE_FULL, as on a disk full of bytes, and it works once there is room."""
    daemon = daemon_on_tmpfs("size=20m,nr_inodes=64")
    filler = daemon.data_dir.parent / "filler"
    filler.mkdir()
    with pytest.raises(OSError) as full:
        for n in range(1000):
            (filler / str(n)).touch()
    assert full.value.errno == errno.ENOSPC

    details = _refused(lambda: _upload(daemon))
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL"), details
    assert details.message == ("cannot store the upload of image/png: No space left on device in the daemon's data "
                               "directory; nothing was kept, retry once there is room")
    assert wait_for(lambda: "UploadMedia RESOURCE_EXHAUSTED STORAGE_FULL" in daemon.logs()), daemon.logs()
    assert "internal error" not in daemon.logs() and "Traceback" not in daemon.logs()

    for path in filler.iterdir():
        path.unlink()
    assert _upload(daemon).media_id


# -- finding 4: a stored file damaged without a change of length ----------------------------------------------------


def _damage(path: Path) -> None:
    """Flip 4 bytes in the middle of ``path``, its length unchanged (as a bad sector does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))


def test_uploading_the_same_bytes_again_repairs_a_file_damaged_in_place(daemon) -> None:
    """The store took a file of the right length for the right bytes: the upload of the good file answered OK
    and kept the damaged one, which every request naming the id then sent. Now the upload replaces it, and the
    same for inline media of a session turn; an intact file is left as it is."""
    image = png("bitrot", size=(200, 200))
    media_id = hashlib.sha256(image).hexdigest()
    assert _upload(daemon, image).media_id == media_id
    path = _stored(daemon, media_id)
    inode = path.stat().st_ino
    assert _upload(daemon, image).media_id == media_id
    assert path.stat().st_ino == inode, "an intact file was replaced"

    _damage(path)
    again = _upload(daemon, image)
    assert (again.media_id, again.size_bytes) == (media_id, len(image))
    assert path.read_bytes() == image, "the damaged bytes were kept"

    _damage(path)
    assert "[history=0 image=1" in ask(daemon, "look", session="s", media=[_inline(image)]).text
    assert path.read_bytes() == image, "the damaged bytes were kept for the session"


# -- finding 5: bytes whose record cannot be written ---------------------------------------------------------------


def test_bytes_whose_record_cannot_be_written_are_not_left_behind(daemon) -> None:
    """The bytes are moved into place before their record is written: when the record could not be (here a
    folder in its place), the upload said "nothing was kept" and left the bytes, never served, holding their
    room until prune. Now they are removed again."""
    image = png("orphan")
    media_id = hashlib.sha256(image).hexdigest()
    record = _stored(daemon, media_id).with_suffix(".json")
    record.mkdir(parents=True)
    details = _refused(lambda: _upload(daemon, image))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_FAILED"), details
    assert "cannot be written: Is a directory (a folder where the store needs a file)" in details.message
    assert not _stored(daemon, media_id).exists(), "the bytes were left without a record"
    assert not list((daemon.data_dir / "media" / "tmp").iterdir())

    record.rmdir()
    assert _upload(daemon, image).media_id == media_id
    assert _stored(daemon, media_id).read_bytes() == image
