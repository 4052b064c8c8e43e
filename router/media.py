"""The media store: chunked uploads, content-addressed on disk (sha256) under the data directory.

Layout: ``<data_dir>/media/<id[:2]>/<id>`` holds the bytes and
``<id>.json`` beside it the MIME type, modality and size. No file name is kept: one record serves every
client that sends the same bytes, and one client's name for them is none of another's (a part names its
media itself, see ``router.wire``). Uploads are
written to ``<data_dir>/media/tmp`` while hashed, then renamed into place,
so memory stays bounded by the chunk size whatever the file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from .errors import (
    DataDirGone,
    FieldViolation,
    InvalidRequest,
    MimeMismatch,
    PayloadTooLarge,
    StorageFailed,
    StorageFull,
    UnknownMedia,
)
from .mime import normalise_mime
from .sniff import GENERIC_TYPES, HEAD_BYTES, content_mime, mime_problem
from .types import Media, Modality

_ID = re.compile(r"[0-9a-f]{64}")
_HEAD = HEAD_BYTES
#: Temp files older than this are left over from a daemon killed mid-upload, for ``mmrouter prune``, which
#: takes no lock and may run beside a daemon that is uploading (the daemon itself removes them all at start).
STALE_TEMP_SECONDS = 3600.0
#: Media uploaded or used this recently are never pruned, whatever age ``prune`` is given (``--older-than 0``
#: included): a call under way marked its media used when it started and reads them for up to
#: server.max_call_seconds (an hour by default), and a client names its upload in a request after it is stored.
PRUNE_GRACE_SECONDS = 3600.0
#: The write errors that mean "no room": disk full (bytes or inodes), quota exceeded, file size limit.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: The write errors that mean the data directory is broken, not full, each with a guess at the cause for the
#: operator: a read-only file system, permissions, a failing disk, something else in the store's place. Any other
#: OSError (too many open files, say) is no fault of the directory and stays the daemon's own.
BROKEN = {
    errno.EROFS: "a disk the kernel remounted read-only after errors?",
    errno.EACCES: "the daemon's user may not write there",
    errno.EPERM: "the daemon's user may not write there",
    errno.EIO: "a failing disk? see the kernel's log",
    errno.EUCLEAN: "a damaged file system? see the kernel's log",
    errno.ESTALE: "a network file system that lost it?",
    errno.ENOTDIR: "a file where the store needs a folder",
    errno.EEXIST: "a file where the store needs a folder",  # mkdir(exist_ok=True) of a shard folder
    errno.EISDIR: "a folder where the store needs a file",
}

log = logging.getLogger(__name__)


def broken_guess(error: int | None) -> str:
    """`` (what may be wrong)`` for an errno of :data:`BROKEN`, to add to a message; empty for another."""
    return f" ({BROKEN[error]})" if error in BROKEN else ""


def is_media_id(text: str) -> bool:
    """Whether ``text`` has the form of a media id: a sha256 digest, 64 lower-case hex digits."""
    return _ID.fullmatch(text) is not None


def stored_type_problem(declared: str, stored: Media) -> str | None:
    """Why the MIME type ``declared`` by a part naming the stored media ``stored`` (by media_id) does not
    fit its content, or None: the check inline media get (:func:`mime_problem` on the first bytes, read
    only when ``declared`` is not the recorded type). A type that fits but is not the recorded one is no
    problem: the bytes are stored once, under the type of their first upload, which another client may
    have sent as another type; the recorded type is the one used."""
    if normalise_mime(declared) == normalise_mime(stored.mime_type) or stored.path is None:
        return None
    try:
        with open(stored.path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:  # reported where the bytes are read for use
        return None
    problem = mime_problem(declared, stored.modality, head)
    if not problem:
        return None
    return (f"{problem} (media {stored.media_id} was uploaded as {stored.mime_type!r}): send that type, "
            "or leave mime_type empty")


@contextlib.contextmanager
def _storing(what: str, folder: Path) -> Iterator[None]:
    """Turn the write errors of the media store in ``folder`` into the client's: "no room left"
    (:data:`NO_ROOM`) into :class:`StorageFull`, a broken data directory (:data:`BROKEN`) into
    :class:`StorageFailed`; other OSErrors stay as they are."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise StorageFull(f"cannot store {what}: {exc.strerror} in the daemon's data directory; "
                              "nothing was kept, retry once there is room") from None
        if exc.errno in BROKEN:
            raise StorageFailed(f"cannot store {what}: the data directory's media folder {folder} cannot be "
                                f"written: {exc.strerror}{broken_guess(exc.errno)}; nothing was kept, the operator "
                                "must repair it") from None
        raise


def _holds(path: Path, media_id: str) -> bool:
    """Whether the file at ``path`` holds the bytes of ``media_id`` (their sha256); False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == media_id
    except OSError:
        return False


#: Bytes of an upload written between two starts of their writeback to the disk.
_WRITEBACK_STEP = 4 << 20


def _start_writeback(out: IO, start: int, length: int) -> None:
    """Have the kernel start writing ``length`` bytes of ``out`` from ``start`` to the disk, without waiting.

    ``POSIX_FADV_DONTNEED`` starts the writeback of dirty pages and drops only clean ones, so the
    bytes just written stay cached; the final ``fsync`` then waits for less (bench/ figure 4a).
    It is advice: a file system that refuses it costs nothing but the wait.
    """
    out.flush()
    with contextlib.suppress(OSError):
        os.posix_fadvise(out.fileno(), start, length, os.POSIX_FADV_DONTNEED)


def _sync(out: IO) -> None:
    """Flush ``out`` and have its bytes on the disk (``fsync``)."""
    out.flush()
    os.fsync(out.fileno())


def _sync_directory(folder: Path) -> None:
    """Have the renames into ``folder`` on the disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a file system that cannot sync directories
            raise
    finally:
        os.close(fd)


@dataclass
class StoredMedia:
    """What the store knows of one media file."""

    media_id: str
    path: Path
    mime_type: str
    modality: Modality
    size: int

    def as_media(self) -> Media:
        """The stored media as a request's media, without a file name (the part naming it gives its own)."""
        return Media(self.modality, self.mime_type, path=self.path, media_id=self.media_id, size=self.size)


#: The media modalities as a client sends them: by the names of the wire API's enum values.
MEDIA_MODALITIES = "MODALITY_IMAGE, MODALITY_AUDIO, MODALITY_VIDEO or MODALITY_DOCUMENT"


def modality_name(modality: Modality) -> str:
    """``modality`` by the name of its value in the wire API's enum (``MODALITY_IMAGE``), as errors name it:
    a client sends that name (protobufjs, in Node.js, sends a name it does not know, such as ``IMAGE``, as 0)."""
    return f"MODALITY_{modality.name}"


#: A MIME type of each media modality, as the refusal of an upload without one gives an example.
_EXAMPLE_TYPES = {Modality.IMAGE: "image/png", Modality.AUDIO: "audio/mpeg", Modality.VIDEO: "video/mp4",
                  Modality.DOCUMENT: "application/pdf"}


class MediaStore:
    """Content-addressed media files under ``root``."""

    def __init__(self, root: Path, max_upload_bytes: int, *, clear_temp: bool = True, create: bool = True) -> None:
        """``clear_temp``: remove every temp file now, for the daemon, which holds the data directory
        (see :func:`router.server.lock_data_dir`), so no upload is under way; ``prune`` passes False.
        ``create``: make the store's folders; ``prune``, which only lists and deletes, passes False."""
        self.root = Path(root)
        self.max_upload_bytes = max_upload_bytes
        self._utime_failed = False
        #: Held while an id's record is checked and committed (see :meth:`_keep`).
        self._commit_lock = threading.RLock()  # get() takes it too (an old record rewritten), also within _keep
        self._storing = True  # until stop_storing()
        if create:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        if clear_temp:
            removed, _ = self.remove_temp_files(0.0)
            if removed:
                log.info("removed %d temp file(s) left by interrupted uploads in %s", removed, self.root / "tmp")

    def stop_storing(self) -> None:
        """Store nothing from now on: the data directory was removed or replaced, so what is stored would be
        lost at the daemon's restart. Uploads and inline media kept for a session raise :class:`DataDirGone`;
        stored media are still read."""
        self._storing = False

    def _refuse_if_gone(self) -> None:
        """:class:`DataDirGone` once :meth:`stop_storing` was called."""
        if not self._storing:
            raise DataDirGone

    def remove_temp_files(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete the temp files of interrupted uploads not written to for ``older_than`` seconds;
        return (files, bytes) deleted, or that would be."""
        cutoff = time.time() - older_than
        files = size = 0
        for entry in os.scandir(self.root / "tmp"):
            with contextlib.suppress(OSError):
                stat = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False) and (not older_than or stat.st_mtime < cutoff):
                    if not dry_run:
                        os.unlink(entry.path)
                    files, size = files + 1, size + stat.st_size
        return files, size

    def _path(self, media_id: str) -> Path:
        return self.root / media_id[:2] / media_id

    def get(self, media_id: str) -> StoredMedia:
        """The stored media ``media_id``; :class:`UnknownMedia` if absent."""
        if not _ID.fullmatch(media_id):
            raise UnknownMedia(f"media id {media_id!r} is not a sha256 hex digest; use the id UploadMedia returned")
        path = self._path(media_id)
        record = path.with_suffix(".json")
        try:  # a record that is missing, unreadable or names no bytes counts as absent
            meta = json.loads(record.read_text())
            stored = StoredMedia(media_id, path, meta["mime_type"], Modality(meta["modality"]),
                                 path.stat().st_size)  # a "filename" older versions kept is never read
        except (OSError, ValueError, KeyError, TypeError):
            raise UnknownMedia(f"no media with id {media_id}: upload it with UploadMedia first",
                               metadata={"media_id": media_id}) from None
        expected = meta.get("size", stored.size)  # records written before sizes were kept: unchecked
        if stored.size != expected:  # cut short (a power cut before the bytes reached the disk, a hand edit)
            raise UnknownMedia(f"media {media_id} is damaged: its file holds {stored.size} of its {expected} "
                               "bytes; upload the same file again with UploadMedia to repair it",
                               metadata={"media_id": media_id})
        if "filename" in meta:  # a record of an older version keeps its first uploader's name: not any more
            self._forget_name(stored)
        if normalise_mime(stored.mime_type) in GENERIC_TYPES:  # an older version kept application/octet-stream
            stored = self._retyped(stored)
        self._mark_used(media_id, record)
        return stored

    def _retyped(self, stored: StoredMedia) -> StoredMedia:
        """``stored``, recorded by an older version under a type that names no format (``GENERIC_TYPES``),
        with the type of its content when that is a known format of its modality (as an upload now records
        it, see :func:`router.sniff.content_mime`), its record written again (best effort: one that cannot
        be written is corrected again when next read). Other content keeps the type, which a request naming
        it is refused for (``router.core``), and the next upload of its bytes replaces (see :meth:`_keep`)."""
        try:
            with open(stored.path, "rb") as f:
                head = f.read(HEAD_BYTES)
        except OSError:  # reported where the bytes are read for use
            return stored
        if mime_problem(stored.mime_type, stored.modality, head):
            return stored
        stored = replace(stored, mime_type=content_mime(stored.mime_type, head))
        try:
            with self._commit_lock:
                self._write_record(stored.path, stored.mime_type, stored.modality, stored.size)
        except OSError as exc:
            log.info("could not write media %s's record with its content's type %s (%s)", stored.media_id,
                     stored.mime_type, exc.strerror or exc)
        return stored

    def _forget_name(self, stored: StoredMedia) -> None:
        """Write ``stored``'s record again without the file name an older version kept in it (best effort: a
        record that cannot be written keeps it, never read)."""
        try:
            with self._commit_lock:
                self._write_record(stored.path, stored.mime_type, stored.modality, stored.size)
        except OSError as exc:
            log.info("could not write media %s's record without its file name (%s)", stored.media_id,
                     exc.strerror or exc)

    def _mark_used(self, media_id: str, record: Path) -> None:
        """Set the record's time to now: prune() keeps media in use. Best effort: media that can be read
        is served even when its time cannot be set (a read-only file system, another owner)."""
        try:
            os.utime(record)
        except OSError as exc:
            if not self._utime_failed:  # once: a read-only disk would otherwise log every request
                self._utime_failed = True
                log.warning("cannot mark media %s as used (%s): prune may take media in use for unused; "
                            "further such failures are not logged", media_id, exc.strerror or exc)

    def prune(self, before: float, keep: set[str], *, dry_run: bool = False) -> tuple[int, int]:
        """Delete media last uploaded or used before ``before`` (a time.time()), and before the last
        :data:`PRUNE_GRACE_SECONDS`, that are not in ``keep`` (the ids sessions refer to); return
        (files, bytes) deleted, or that would be."""
        before = min(before, time.time() - PRUNE_GRACE_SECONDS)
        files = size = 0
        for folder in self.root.iterdir():
            if folder.name == "tmp" or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.suffix or not _ID.match(path.name) or path.name in keep:
                    continue
                record = path.with_suffix(".json")
                try:
                    last_used = (record if record.exists() else path).stat().st_mtime
                    if last_used >= before:
                        continue
                    length = path.stat().st_size
                    if not dry_run:
                        record.unlink(missing_ok=True)  # the record first: a reader then sees no media, not half
                        path.unlink()
                except OSError:
                    continue
                files, size = files + 1, size + length
        return files, size

    def erase(self, media_ids: Iterable[str]) -> int:
        """Delete the stored media ``media_ids`` now (their record first, then their bytes), without
        :meth:`prune`'s grace: ``ResetSession`` with ``erase_media``. Returns how many were stored.
        Ids not stored (or not media ids) are skipped. A file that cannot be deleted is
        :class:`StorageFailed` (those deleted before it stay deleted)."""
        return len(self.erase_each(media_ids, "the session was left as it was"))

    def erase_each(self, media_ids: Iterable[str],
                   left: str = "it, the media after it and the texts kept for any were left as they were") -> set[str]:
        """:meth:`erase`, in the order given (``DeleteMedia``), returning the ids that were stored. The
        :class:`StorageFailed` of a file that cannot be deleted says what was ``left`` as it was."""
        erased: set[str] = set()
        with self._commit_lock:  # not while an upload of the same bytes checks what is stored
            for media_id in media_ids:
                if not _ID.fullmatch(media_id):
                    continue
                path = self._path(media_id)
                try:
                    path.with_suffix(".json").unlink(missing_ok=True)  # a reader then sees no media, not half
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageFailed(f"could not erase media {media_id} in {self.root}: {exc.strerror or exc}"
                                        f"{broken_guess(exc.errno)}; {left}, retry once the daemon's operator "
                                        "repaired the media folder") from None
                erased.add(media_id)
        return erased

    def _stored(self, media_id: str) -> StoredMedia | None:
        """The record of ``media_id`` if it is stored (bytes and metadata), else None."""
        try:
            return self.get(media_id)
        except UnknownMedia:
            return None

    def put_bytes(self, data: bytes, mime_type: str, modality: Modality, media_id: str = "") -> StoredMedia:
        """Store bytes already in memory (inline media kept for a session); ``media_id``: their sha256 (hex), if
        the caller hashed them already.

        If the same content is already stored, whole, its record is kept as it is and returned (its
        modality and MIME type may differ from the arguments'): the bytes are what a session needs,
        and an upload's record must not change under its client. No file name is kept (see the
        module's docstring): the session's turn keeps its part's own.
        """
        self._refuse_if_gone()
        media_id = media_id or hashlib.sha256(data).hexdigest()
        stored = self._stored(media_id)
        if stored is not None and stored.size == len(data) and _holds(stored.path, media_id):
            return stored
        # new, or stored damaged: these bytes replace it
        with _storing(f"{len(data)} bytes of {mime_type}", self.root), self._temp_file() as (fd, tmp):
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                _sync(out)
            with _storing(f"the record of media {media_id}", self.root):
                return self._keep(tmp, media_id, mime_type, modality)[0]

    def _keep(self, tmp: Path, media_id: str, mime_type: str, modality: Modality) -> tuple[StoredMedia, bool]:
        """Commit ``tmp`` as ``media_id``, unless the same content is stored already, whole: then its record
        is returned as it is. Returns the record and whether ``tmp`` was committed. A stored file of the
        right length is hashed first: one damaged on the disk without a change of length (which :meth:`get`
        does not see: it would hash every file at every use) is replaced, as a shorter one is. One at a time: two
        uploads of the same bytes at once both found nothing stored, and the last record written won, so
        that one client was given an id whose record named another modality.

        Bytes stored as audio and now stored as video (the same file: a recording uploaded first for its
        sound) take the video's record, which serves both (a request may name a stored video as audio):
        the first record stood, and the video could never be asked about. So do bytes an older version
        recorded under a type that names no format (which no model takes) and that are now uploaded with
        their type: the record of the first upload stood, and the bytes could never be used."""
        with self._commit_lock:
            stored = self._stored(media_id)
            if stored is not None and stored.size == tmp.stat().st_size and _holds(stored.path, media_id):
                if (stored.modality is Modality.AUDIO and modality is Modality.VIDEO) or (
                        normalise_mime(stored.mime_type) in GENERIC_TYPES):
                    self._write_record(stored.path, mime_type, modality, stored.size)
                    return StoredMedia(media_id, stored.path, mime_type, modality, stored.size), False
                return stored, False
            return self._commit(tmp, media_id, mime_type, modality), True

    @contextlib.contextmanager
    def _temp_file(self, suffix: str = "") -> Iterator[tuple[int, Path]]:
        """A new file in ``tmp``, as its descriptor and path; removed on exit unless moved into place.
        ``tmp`` (and the store's folder) is made again if it is gone (a cleaner of old files, an operator,
        removed it while the daemon ran): every upload failed as INTERNAL until a restart. The data
        directory itself is never made again (:class:`DataDirGone`): removed, it holds no sessions
        database, and a new one would hide that the daemon's own is gone."""
        folder = self.root / "tmp"
        try:
            fd, name = tempfile.mkstemp(dir=folder, suffix=suffix)
        except FileNotFoundError:
            try:
                self.root.mkdir(mode=0o700, exist_ok=True)
            except FileNotFoundError:
                raise DataDirGone from None
            folder.mkdir(mode=0o700, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, suffix=suffix)
        path = Path(name)
        try:
            yield fd, path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _commit(self, tmp: Path, media_id: str, mime_type: str, modality: Modality) -> StoredMedia:
        """Move the content ``tmp`` into place as ``media_id`` and write its metadata; return the record.

        The bytes go first, the metadata after, each by an atomic rename: a reader never sees a
        half-written record, and a record never names missing bytes. ``tmp`` must be synced already
        (:func:`_sync`): after a power cut, a renamed file whose bytes were not on disk is empty. The
        record keeps the size, so that bytes cut short anyway are found (see :meth:`get`).

        When the record cannot be written (a disk that is full, or went read-only, in between), the bytes
        moved into place are removed again, so that "nothing was kept" holds: never served without a record,
        they would hold their room until ``prune``. Not if a record written before serves them (a damaged
        copy these bytes replaced): that media stays stored, now whole.
        """
        path = self._path(media_id)
        path.parent.mkdir(exist_ok=True)  # not the store's folder, which holds tmp: never the data directory
        size = tmp.stat().st_size
        os.replace(tmp, path)
        try:
            self._write_record(path, mime_type, modality, size)
        except OSError:
            if self._stored(media_id) is None:
                with contextlib.suppress(OSError):  # a read-only disk keeps them: prune removes them later
                    path.unlink()
            raise
        return StoredMedia(media_id, path, mime_type, modality, size)

    def _write_record(self, path: Path, mime_type: str, modality: Modality, size: int) -> None:
        """Write the record of the bytes at ``path`` (its ``.json`` beside it) by an atomic rename, synced."""
        meta = json.dumps({"mime_type": mime_type, "modality": modality.value, "size": size})
        with self._temp_file(".json") as (fd, meta_tmp):
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(meta)
                _sync(out)
            os.replace(meta_tmp, path.with_suffix(".json"))
        _sync_directory(path.parent)  # the renames themselves survive a power cut

    async def upload(self, mime_type: str, modality: Modality, expected_size: int,
                     chunks: AsyncIterator[bytes]) -> StoredMedia:
        """Write ``chunks`` to disk while hashing; check the MIME type on the first bytes.

        Content is stored once, under its sha256. Uploading content that is already stored returns
        the existing record unchanged (its MIME type is that of the first upload; a stored copy damaged
        on the disk is replaced, see :meth:`_keep`); no file name is
        kept (see the module's docstring: a request's part gives its own);
        under another modality it is refused with :class:`InvalidRequest` naming the media id and the
        modality it is stored as, since one id has one modality.

        A full disk is :class:`StorageFull`; a data directory that cannot be written for another reason (a
        read-only or failing disk, permissions) :class:`StorageFailed`, logged as an ERROR (one line: the
        operator must act, and a traceback per upload would say nothing more).
        """
        self._refuse_if_gone()
        if modality is Modality.TEXT:
            problem = f"must be {MEDIA_MODALITIES}, not {modality_name(modality)}"
            raise InvalidRequest("an upload must be media, not text",
                                 violations=[FieldViolation("metadata.modality", problem)])
        if not mime_type:
            example = _EXAMPLE_TYPES.get(modality, "video/mp4")
            raise InvalidRequest(f"the upload's MIME type is missing (e.g. {example})",
                                 violations=[FieldViolation("metadata.mime_type", f"required, e.g. {example}")])
        if expected_size < 0:
            raise InvalidRequest(f"metadata.size_bytes is {expected_size}",
                                 violations=[FieldViolation("metadata.size_bytes", "cannot be negative (0: not said)")])
        if expected_size > self.max_upload_bytes:
            raise self._too_large(expected_size, declared=True)
        try:
            return await self._receive(mime_type, modality, expected_size, chunks)
        except StorageFailed as exc:
            log.error("an upload failed: %s", exc.message)
            raise

    async def _receive(self, mime_type: str, modality: Modality, expected_size: int,
                       chunks: AsyncIterator[bytes]) -> StoredMedia:
        """Store the upload :meth:`upload` checked the metadata of."""
        digest = hashlib.sha256()
        size = flushed = 0
        head = b""
        with _storing(f"the upload of {mime_type}", self.root), self._temp_file() as (fd, tmp):
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    if len(head) < _HEAD:  # check the type as soon as the first bytes are in
                        head += chunk[: _HEAD - len(head)]
                        if len(head) >= _HEAD:
                            mime_type = self._check_mime(mime_type, modality, head)
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise self._too_large(size, declared=False)
                    if expected_size and size > expected_size:  # refused now, not after reading the rest
                        raise InvalidRequest(
                            f"received more than the {expected_size} bytes metadata.size_bytes said",
                            violations=[FieldViolation("metadata.size_bytes", "does not match the bytes sent")])
                    digest.update(chunk)
                    out.write(chunk)
                    if size - flushed >= _WRITEBACK_STEP:  # the disk writes start now, not all at the fsync
                        _start_writeback(out, flushed, size - flushed)
                        flushed = size
                await asyncio.to_thread(_sync, out)  # a GiB takes seconds to reach the disk: not on the loop
            if size == 0:
                raise InvalidRequest("the upload has no bytes",
                                     violations=[FieldViolation("chunk", "send the file's bytes after the metadata")])
            if len(head) < _HEAD:  # a file shorter than the head: checked only now
                mime_type = self._check_mime(mime_type, modality, head)
            if expected_size and size != expected_size:
                raise InvalidRequest(f"received {size} bytes but metadata.size_bytes said {expected_size}",
                                     violations=[FieldViolation("metadata.size_bytes", "does not match the bytes sent")])
            media_id = digest.hexdigest()  # new, or stored damaged: this upload replaces it
            stored, committed = await asyncio.to_thread(self._keep, tmp, media_id, mime_type, modality)
            # the same bytes stored before as another modality: its record stands. A video's is answered for
            # an upload as audio (a request may name a stored video as audio, for its sound), audio's became
            # a video's (see _keep); another modality is refused (an id naming a document is no video)
            if not committed and stored.modality is not modality and not (
                    stored.modality is Modality.VIDEO and modality is Modality.AUDIO):
                problem = (f"media {media_id} (the same bytes) is already stored as {stored.modality.value}"
                           f" ({stored.mime_type}); refer to it by that id with modality "
                           f"{modality_name(stored.modality)}")
                raise InvalidRequest(problem, violations=[FieldViolation("metadata.modality", problem)],
                                     metadata={"media_id": media_id, "stored_modality": stored.modality.value})
            return stored

    def _too_large(self, size: int, *, declared: bool) -> PayloadTooLarge:
        """The refusal of an upload over ``server.max_upload_bytes``: of the ``size`` its metadata.size_bytes
        said (``declared``), or of the ``size`` bytes received so far. Its ErrorInfo metadata names the
        setting, its limit and the size, as for inline media over theirs."""
        limit = self.max_upload_bytes
        problem = f"over server.max_upload_bytes ({limit} bytes)"
        said = f"metadata.size_bytes says {size} bytes" if declared else f"{size} bytes received so far"
        return PayloadTooLarge(
            f"the upload is too large ({said}, {problem}): send a smaller file, or raise "
            "server.max_upload_bytes in the daemon's configuration (takes effect after a restart)",
            violations=[FieldViolation("metadata.size_bytes" if declared else "chunk", problem)],
            metadata={"limit": "max_upload_bytes", "limit_bytes": str(limit), "size_bytes": str(size)},
        )

    @staticmethod
    def _check_mime(mime_type: str, modality: Modality, head: bytes) -> str:
        """The type to record (and answer) for content declared ``mime_type``: :func:`content_mime`'s, as
        :func:`normalise_mime` gives it (lower case, without parameters: ``audio/webm;codecs=opus`` is
        ``audio/webm``, as an alias is its registered name); raises :class:`MimeMismatch` when it does not
        fit the content."""
        problem = mime_problem(mime_type, modality, head)
        if problem:
            raise MimeMismatch(problem, violations=[FieldViolation("metadata.mime_type", problem)])
        return normalise_mime(content_mime(mime_type, head))
