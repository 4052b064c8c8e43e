"""Large media through the Gemini Files API: upload once, poll until ACTIVE, remember.

The cache maps a media's sha256 and the MIME type it is sent as to the provider's copy
(file name, URI, expiry): the same bytes sent as another type (an .mp4 as audio/mp4, then
as video/mp4) are another upload, as Gemini reads a file by the type it was uploaded with.
A media is uploaded again only once its copy has expired (or is about to) or the
API has forgotten it. A media whose processing FAILED is remembered too, for as long as its copy would
have lived, and refused again at once, without an upload; its useless copy is deleted (best effort).
A media erased by a session's reset or by DeleteMedia (:meth:`FileStore.forget_media`) is forgotten, whatever its MIME types,
and its copies deleted (best effort): sent again, it is uploaded anew. Its copies the cache does not know (uploaded
before a restart of the daemon) are found by listing the project's files (:meth:`FileStore.listed`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import logging
import time
import weakref
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from router import CallContext, Media, ProviderBadRequest, ProviderTimeout
from router.errors import ProviderInputTooLarge, ProviderUnavailable, ProviderUnsupportedInput
from router.polling import MAX_POLL_FAILURES, PollFailures  # the policy of failed status polls (5 in a row)

from . import errors
from .convert import media_mime, media_size
from .transport import UploadCut

log = logging.getLogger(__name__)

#: A copy this close to its expiry is not used any more (it must outlive the call).
EXPIRY_MARGIN = timedelta(minutes=15)
#: The longest wait between two polls of a PROCESSING file.
MAX_POLL_INTERVAL = 10.0
#: How often expired copies (and FAILED results) are forgotten.
PRUNE_INTERVAL_SECONDS = 60.0
#: How long a copy lives at Google when the API does not say (the Files API keeps a file 48 hours).
FILE_LIFETIME = timedelta(hours=48)
#: The longest wait for the deletion of a copy whose processing FAILED (best effort: the call is refused anyway)
#: or of an erased media (within router.provider.FORGET_MEDIA_SECONDS).
DELETE_SECONDS = 5.0
#: The largest page of ``files.list`` the API serves ("Maximum pageSize is 100"; it defaults to 10).
LIST_PAGE_SIZE = 100
#: The most pages of ``files.list`` read to find the copies of erased media the cache does not know: the first
#: 1000 files of the project (a project holding more is rare; the copies beyond expire by themselves).
MAX_LIST_PAGES = 10
#: The longest the listing may take, all its pages: with the deletions after it (:data:`DELETE_SECONDS`), within
#: router.provider.FORGET_MEDIA_SECONDS (10 s).
LIST_SECONDS = 4.0


class UploadKey(NamedTuple):
    """What a Files API copy is remembered by: the media's sha256 and the MIME type it was uploaded as
    (:func:`media_mime`: a video named as audio is uploaded as its audio type), as Gemini reads the file by
    that type."""

    sha256: str
    mime_type: str


def upload_key(media: Media, sha256: str) -> UploadKey:
    """The key of ``media``'s copy, given its ``sha256`` (:func:`media_key`)."""
    return UploadKey(sha256, media_mime(media))


@dataclass
class RemoteFile:
    """The provider's copy of one media."""

    name: str
    uri: str
    mime_type: str
    expires: datetime | None
    state: str
    #: The API's explanation when processing FAILED.
    error: str = ""

    def usable(self, now: datetime | None = None) -> bool:
        """Not expired, nor about to."""
        if self.expires is None:
            return True
        return (now or datetime.now(UTC)) + EXPIRY_MARGIN < self.expires


@dataclass(frozen=True)
class Failed:
    """A media whose copy's processing FAILED: refused again, without an upload, until ``until`` (when the
    copy would have expired)."""

    #: The refusal's message when processing FAILED.
    message: str
    until: datetime

    def again(self) -> str:
        """The message refusing the media again."""
        return (f"{self.message} (refused before: not uploaded again until "
                f"{self.until:%Y-%m-%d %H:%M} UTC, when its copy would have expired)")


def media_key(media: Media) -> str:
    """The media's sha256 hex: its id when stored, else computed from its bytes (blocking: use a thread)."""
    if media.media_id:
        return media.media_id
    if media.data is None and media.path is not None:
        with media.path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.sha256(media.read_bytes()).hexdigest()


def check_file_size(media: Media, limit: int, provider: str) -> None:
    """Refuse ``media`` over ``limit`` bytes (the Files API's per-file limit) with :class:`ProviderInputTooLarge`,
    before anything is read or uploaded: retryable, so the rule's next target (or a bridge) takes it."""
    size = media_size(media)
    if size > limit:
        name = f" {media.filename!r}" if media.filename else ""
        raise ProviderInputTooLarge(provider, f"the media{name} is {size} bytes, over the Files API's limit of {limit} "
                                              "bytes per file (providers.gemini.max_file_bytes); refused before "
                                              "uploading")


#: The states the API gives a File it has: PROCESSING, then ACTIVE or FAILED. The SDK's ``FileState`` also
#: has STATE_UNSPECIFIED, the enum's default value, which the API's JSON leaves out: no file is in it.
STATES = ("PROCESSING", "ACTIVE", "FAILED")


def _state(file: Any) -> str:
    """The file's state as the API named it ("" when it has none; any name, known or not)."""
    state = getattr(file, "state", None)
    return str(getattr(state, "value", state) or "")


def _remote(file: Any, mime_type: str) -> RemoteFile:
    error = getattr(file, "error", None)
    return RemoteFile(
        name=file.name, uri=file.uri or "", mime_type=file.mime_type or mime_type,
        expires=file.expiration_time, state=_state(file),
        error=str(getattr(error, "message", "") or "") if error is not None else "",
    )


def listed_sha256(value: str | None) -> str | None:
    """The sha256 hex digest a listed File's ``sha256Hash`` stands for, or None: base64 of the lower-case hex
    digest, as the Files API sends it, or of the 32 raw bytes of the digest."""
    try:
        raw = base64.b64decode(value or "", validate=True)
        if len(raw) == 32:
            return raw.hex()
        digest = raw.decode("ascii").lower()
        bytes.fromhex(digest)
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return digest if len(digest) == 64 else None


class Forgotten(NamedTuple):
    """What :meth:`FileStore.forget_media` forgot: the copies to delete, and the media it knew no copy of."""

    copies: list[RemoteFile]
    #: The sha256s of the erased media without a remembered copy (never uploaded, or before a restart).
    unknown: set[str]


@dataclass(eq=False)
class Uploads:
    """The copies held at one Files API (one key, one endpoint): (sha256, MIME type) -> copy, and the
    per-copy locks."""

    files: dict[UploadKey, RemoteFile] = field(default_factory=dict)
    #: (sha256, MIME type) -> the FAILED processing of its copy, remembered as long as the copy would live.
    failed: dict[UploadKey, Failed] = field(default_factory=dict)
    #: (sha256, MIME type) -> (lock, how many calls hold or wait for it); dropped when the last one leaves.
    locks: dict[UploadKey, tuple[asyncio.Lock, int]] = field(default_factory=dict)


#: (sha256 of the key, base_url) -> the uploads of the live providers using them. A provider made again
#: on reload with the same key and endpoint finds the copies of the one it replaces (alive until then);
#: weak, so an entry goes with the last provider that uses it.
_SHARED: weakref.WeakValueDictionary[tuple[str, str], Uploads] = weakref.WeakValueDictionary()


def shared_uploads(api_key: str, base_url: str) -> Uploads:
    """The uploads of every live provider with this key and endpoint (the key itself is not kept)."""
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()
    uploads = _SHARED.get((fingerprint, base_url))
    if uploads is None:
        uploads = _SHARED[(fingerprint, base_url)] = Uploads()
    return uploads


class FileStore:
    """Uploads media to the Files API and remembers the copies, keyed by sha256 and MIME type
    (:class:`UploadKey`), for the provider called ``provider`` (named in its errors); ``uploads`` may be
    shared with other providers (see :func:`shared_uploads`)."""

    def __init__(self, provider: str, poll_interval: float = 1.0, max_processing_seconds: float = 600.0,
                 uploads: Uploads | None = None, api_key: str = "") -> None:
        """``api_key``: the provider's key, kept out of the log lines of failed polls."""
        self.provider = provider
        self.api_key = api_key
        self.poll_interval = poll_interval
        self.max_processing_seconds = max_processing_seconds
        self.uploads = uploads or Uploads()
        self._files = self.uploads.files
        self._failed = self.uploads.failed
        self._locks = self.uploads.locks
        self._next_prune = 0.0

    def cached(self, key: UploadKey) -> RemoteFile | None:
        """The usable copy of the media with this sha256 and MIME type, or None."""
        entry = self._files.get(key)
        if entry is not None and not entry.usable():
            del self._files[key]
            return None
        return entry

    def failed(self, key: UploadKey) -> Failed | None:
        """The FAILED processing of the media with this sha256 and MIME type, while its copy would live, or
        None."""
        entry = self._failed.get(key)
        if entry is not None and entry.until <= datetime.now(UTC):
            del self._failed[key]
            return None
        return entry

    def forget(self, key: UploadKey) -> None:
        """Drop the copy of one media (e.g. the API no longer knows it)."""
        self._files.pop(key, None)

    def forget_uris(self, uris: set[str]) -> None:
        """Drop the copies with these URIs."""
        for key in [k for k, f in self._files.items() if f.uri in uris]:
            del self._files[key]

    def forget_media(self, sha256s: Collection[str]) -> Forgotten:
        """Forget the media ``sha256s`` (erased by a session's reset or by DeleteMedia): every copy, whatever MIME type it was uploaded
        as, and every FAILED result, so that the same bytes sent again are uploaded anew. Returns the copies that
        may still live at Google, to :meth:`delete`, and the media of which no copy was remembered (to look for
        with :meth:`listed`)."""
        for key in [k for k in self._failed if k.sha256 in sha256s]:
            del self._failed[key]
        keys = [k for k in self._files if k.sha256 in sha256s]
        forgotten = [self._files.pop(key) for key in keys]
        now = datetime.now(UTC)
        return Forgotten([copy for copy in forgotten if copy.expires is None or copy.expires > now],
                         set(sha256s) - {key.sha256 for key in keys})

    async def listed(self, client: Any, sha256s: Collection[str], skip: Collection[str]) -> list[RemoteFile]:
        """The copies at the Files API of the media ``sha256s`` (by their ``sha256Hash``: :func:`listed_sha256`)
        but those named in ``skip`` (deleted already): copies the cache does not know, uploaded before a restart
        of the daemon. Reads at most :data:`MAX_LIST_PAGES` pages of :data:`LIST_PAGE_SIZE` files, for at most
        :data:`LIST_SECONDS` all in all; a failure is logged (the key masked) with the copies found until then,
        never raised."""
        found: dict[str, RemoteFile] = {}  # by name: a file listed twice (as files come and go) is deleted once
        pages = 0
        try:
            async with asyncio.timeout(LIST_SECONDS):
                pager = await client.aio.files.list(config={"page_size": LIST_PAGE_SIZE})
                while True:
                    pages += 1
                    found.update((file.name, _remote(file, "")) for file in pager.page
                                 if file.name and file.name not in skip and listed_sha256(file.sha256_hash) in sha256s)
                    if not pager.config.get("page_token"):
                        break
                    if pages == MAX_LIST_PAGES:
                        log.info("%s: looked for copies of erased media among the first %d files of the Files API "
                                 "only; any later one expires by itself", self.provider, pages * LIST_PAGE_SIZE)
                        break
                    await pager.next_page()
        except Exception as exc:  # best effort: the reset is done already
            reason = (f"no answer in {LIST_SECONDS:g} s" if isinstance(exc, TimeoutError)
                      else errors.describe(exc, self.api_key))
            log.warning("%s: could not list the Files API's files (page %d) to find copies of erased media uploaded "
                        "before the daemon started: %s; those not found stay at Google until they expire",
                        self.provider, pages + 1, reason)
        return list(found.values())

    async def delete(self, client: Any, copies: Collection[RemoteFile]) -> None:
        """Delete ``copies`` (of erased media) at Google, all at once, best effort (:meth:`_delete`, each for at
        most :data:`DELETE_SECONDS`); one INFO line counts them."""
        done = await asyncio.gather(*(self._delete(client, copy, DELETE_SECONDS, "of an erased media")
                                      for copy in copies))
        log.info("%s: deleted %d of the %d Files API copies of erased media", self.provider, sum(done), len(copies))

    def _prune(self) -> None:
        """Forget expired copies and FAILED results (at most once a minute), so a long-running daemon does
        not keep one entry per media it ever sent."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
        now = datetime.now(UTC)
        for key in [k for k, entry in self._files.items() if not entry.usable(now)]:
            del self._files[key]
        for key in [k for k, failed in self._failed.items() if failed.until <= now]:
            del self._failed[key]

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: UploadKey) -> AsyncIterator[None]:
        """One call at a time per copy (media and MIME type: one upload even for concurrent calls); the
        lock is dropped when no call holds or waits for it."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def ensure(self, client: Any, media: Media, key: UploadKey, ctx: CallContext) -> RemoteFile:
        """The ACTIVE copy of ``media`` (its :func:`upload_key` is ``key``): cached, or uploaded now as
        ``key.mime_type`` and polled until ACTIVE. A copy still processing that the API no longer has
        (403/404 on its poll: deleted or purged upstream), remembered or uploaded in this call, is forgotten
        and uploaded again, once; gone again, the call fails with :class:`ProviderUnavailable` naming it. A
        media whose processing FAILED before (:meth:`failed`) is refused at once with
        :class:`ProviderUnsupportedInput`, as then, without an upload."""
        from google.genai import errors as genai_errors

        self._prune()
        async with self._exclusive(key):
            failed = self.failed(key)
            if failed is not None:
                raise ProviderUnsupportedInput(self.provider, failed.again())
            entry = self.cached(key)
            lost_once = False
            while True:
                if entry is None:
                    entry = await self._upload(client, media, key)
                    self._files[key] = entry
                try:
                    return await self._settle(client, entry, key, ctx)
                except genai_errors.APIError as exc:
                    if exc.code not in (403, 404):
                        raise
                    self.forget(key)
                    if lost_once:
                        lost = ProviderUnavailable(
                            self.provider, f"the Files API lost {entry.name} (media {key.sha256[:12]}) while it was "
                                           f"processing, after uploading it again (HTTP {exc.code}: {exc.message})")
                        lost.http_status = exc.code  # shown by ListProviders with the last failure
                        raise lost from exc
                    lost_once, entry = True, None

    async def _settle(self, client: Any, entry: RemoteFile, key: UploadKey, ctx: CallContext) -> RemoteFile:
        """``entry`` once ACTIVE, remembered; a copy whose processing FAILED is forgotten (its FAILED result
        is remembered: see :meth:`_wait_active`)."""
        if entry.state == "ACTIVE":
            return entry
        try:
            entry = await self._wait_active(client, entry, key, ctx)
        except ProviderBadRequest:
            self.forget(key)
            raise
        self._files[key] = entry
        return entry

    async def _upload(self, client: Any, media: Media, key: UploadKey) -> RemoteFile:
        """Upload ``media`` (resumable) as ``key.mime_type``; an answer that is not the Files API's (a gateway
        that does not speak it) is :class:`ProviderUnavailable`, "file upload failed: bad answer"."""
        from google.genai import types

        mime = key.mime_type
        config = types.UploadFileConfig(mime_type=mime, display_name=media.filename or key.sha256)
        # a stored media is streamed from the media store, never loaded whole
        source = str(media.path) if media.path is not None else io.BytesIO(media.read_bytes())
        try:
            file = await client.aio.files.upload(file=source, config=config)
        except UploadCut as exc:
            # the API was reached, the upload started: say how far it got rather than "could not reach"
            reason = errors.describe(exc.__cause__ or exc, self.api_key)
            raise ProviderUnavailable(self.provider, f"the file upload was cut after {exc.offset} of "
                                                     f"{media_size(media)} bytes ({reason})") from exc
        except (KeyError, TypeError) as exc:
            # The SDK indexes the answers as it expects them: a start answered without X-Goog-Upload-URL (a
            # gateway's base_url) or a finalize without its "file" is a KeyError, a non-object a TypeError.
            raise ProviderUnavailable(self.provider, f"file upload failed: bad answer from the Files API "
                                                     f"({type(exc).__name__}: {exc})") from exc
        if not file.name or not file.uri:
            raise ProviderUnavailable(self.provider, "file upload failed: bad answer from the Files API (the "
                                                     "uploaded file has no name or URI)")
        return _remote(file, mime)

    async def _wait_active(self, client: Any, entry: RemoteFile, key: UploadKey, ctx: CallContext) -> RemoteFile:
        """Poll with backoff until ACTIVE, for at most ``max_processing_seconds`` and within the call's
        deadline: whichever ends first is named in the :class:`ProviderTimeout`. FAILED (Gemini could not
        decode a media of a type it declares it takes: an odd codec, say) is a refusal of the media's format,
        :class:`ProviderUnsupportedInput`, so that the router tries the next target or bridge; it is
        remembered for as long as the copy would live (:meth:`failed`), and the copy is deleted
        (:meth:`_delete`)."""
        give_up = time.monotonic() + self.max_processing_seconds
        delay = self.poll_interval
        try:
            while True:
                if entry.state == "ACTIVE":
                    return entry
                if entry.state == "FAILED":
                    refusal = ProviderUnsupportedInput(
                        self.provider,
                        f"the Files API could not process media {key.sha256[:12]} ({entry.mime_type}, "
                        f"{entry.name}): {entry.error or 'processing FAILED'}; check that the file is a valid, "
                        f"supported {entry.mime_type}",
                    )
                    until = entry.expires or datetime.now(UTC) + FILE_LIFETIME
                    self._failed[key] = Failed(refusal.message.removeprefix(f"{self.provider}: "), until)
                    remaining = ctx.time_remaining()
                    seconds = DELETE_SECONDS if remaining is None else min(DELETE_SECONDS, remaining)
                    await self._delete(client, entry, seconds, f"whose processing FAILED (request {ctx.request_id})")
                    raise refusal
                left = self._time_left(give_up, ctx)
                if left <= 0:
                    raise ProviderTimeout(self.provider, self._timed_out(entry, give_up))
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 1.5, MAX_POLL_INTERVAL)
                entry = await self._poll(client, entry, give_up, ctx)
        except asyncio.CancelledError:
            # the call ended (its client left, or the daemon's max_call_seconds passed): say where it was
            if entry.state == "PROCESSING":
                log.warning("%s: file %s (media %s) was still PROCESSING at Google when the call ended "
                            "(request %s)", self.provider, entry.name, key.sha256[:12], ctx.request_id)
            raise

    def _timed_out(self, entry: RemoteFile, give_up: float) -> str:
        """Why the wait for ``entry`` ended: ``max_processing_seconds`` (past ``give_up``), else the call's
        deadline."""
        state = entry.state or "not ACTIVE"
        if time.monotonic() >= give_up:
            return (f"file {entry.name} was still {state} after {self.max_processing_seconds:g} s, the longest wait "
                    f"for processing (providers.{self.provider}.max_processing_seconds)")
        return f"file {entry.name} was still {state} when the call's deadline ran out"

    async def _delete(self, client: Any, entry: RemoteFile, seconds: float, what: str) -> bool:
        """Delete ``entry`` (a copy of no use, or of an erased media) at Google, best effort: for at most
        ``seconds``; a failure is logged (``what`` says which copy it was, after its name), never raised (the copy
        then expires by itself). Returns whether it was deleted."""
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await client.aio.files.delete(name=entry.name)
        except Exception as exc:  # best effort: the call (or the reset) goes on all the same
            reason = f"no answer in {seconds:g} s" if isinstance(exc, TimeoutError) else errors.describe(exc, self.api_key)
            log.warning("%s: could not delete file %s, %s: %s; it stays at Google until it expires", self.provider,
                        entry.name, what, reason)
            return False
        return True

    @staticmethod
    def _time_left(give_up: float, ctx: CallContext) -> float:
        """Seconds left to wait for processing: to the call's deadline, and at most to ``give_up``."""
        left = give_up - time.monotonic()
        remaining = ctx.time_remaining()
        return left if remaining is None else min(left, remaining)

    async def _poll(self, client: Any, entry: RemoteFile, give_up: float, ctx: CallContext) -> RemoteFile:
        """``entry`` as ``files.get`` now answers it. A poll that fails in passing (5xx, 429, no answer:
        :func:`errors.is_transient`) is logged and made again as :class:`router.polling.PollFailures` says:
        after the poll interval, or the Retry-After of a 429 or 503 when longer, never past the call's
        deadline (or ``give_up``); its error is raised once :data:`MAX_POLL_FAILURES` polls in a row failed
        or no time is left. Any other failure (a 403/404 for a file the API no longer has, a refused key) is
        raised at once, and so is an answer without one of the :data:`STATES` (:class:`ProviderUnavailable`,
        "bad answer from the Files API")."""
        failures = PollFailures(self.poll_interval)
        while True:
            try:
                file = await client.aio.files.get(name=entry.name)
            except Exception as exc:
                if not errors.is_transient(exc):
                    raise
                left = self._time_left(give_up, ctx)
                wait = failures.failed(errors.retry_after(exc), left)
                reason = errors.describe(exc, self.api_key)
                if wait is None:
                    log.warning("%s: status poll of file %s failed (%d in a row, request %s): %s; giving up (%s)",
                                self.provider, entry.name, failures.in_a_row, ctx.request_id, reason,
                                "no time left" if failures.out_of_time(left)
                                else f"{MAX_POLL_FAILURES} failed polls in a row")
                    raise
                log.warning("%s: status poll of file %s failed (%d in a row, request %s): %s; polling again "
                            "in %.2fs", self.provider, entry.name, failures.in_a_row, ctx.request_id, reason, wait)
                await asyncio.sleep(wait)
                continue
            state = _state(file)
            if state not in STATES:
                # Not the Files API's answer (a gateway's "200 {}", say): waiting for it to change would last
                # until the call's deadline, and the fallbacks would never run.
                what = f"the state {state} (not PROCESSING, ACTIVE or FAILED)" if state else "no state"
                raise ProviderUnavailable(self.provider, f"bad answer from the Files API: the status of "
                                                         f"{entry.name} has {what}")
            return _remote(file, entry.mime_type)
