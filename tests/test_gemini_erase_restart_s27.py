"""Erasing media deletes the Gemini Files API copies uploaded before a restart of the daemon too: the plugin, which
remembers no such copy, lists the project's files (``files.list``, paged) and deletes those whose ``sha256Hash`` is
that of an erased media; copies of other media stay. Copies it remembers are deleted without a listing, and a
listing that fails is logged (the key masked) without failing the reset.

Through the running daemon, restarted on the same data directory, with the real google-genai SDK against the fake
Gemini API (tests/fakes/gemini.py), which keeps its files across the restart.
"""

from __future__ import annotations

import hashlib

from conftest import Daemon
from grpc_helpers import wait_for
from mmrouter.v1 import router_pb2 as pb
from test_delete_media_s26 import NOT_FOUND
from test_delete_media_s26 import delete as delete_media
from test_gemini_e2e import CONFIG, KEY, short_video, upload
from test_media_erase_s26 import ask, deleted, erase, photo

from tests.fakes.gemini import FakeGemini


def start(start_daemon, gemini: FakeGemini) -> Daemon:  # type: ignore[no-untyped-def]
    """A daemon of the Gemini e2e CONFIG calling ``gemini`` (a fake of the test's own, whose files outlive the
    daemon), on the test's data directory (the same for each daemon of the test)."""
    return start_daemon(CONFIG.format(url=gemini.url), env={"GEMINI_TEST_KEY": KEY}, plugins=())


def copy_of(gemini: FakeGemini, data: bytes) -> str:
    """The name (``files/<id>``) of the one copy of ``data`` the fake holds."""
    sha256 = hashlib.sha256(data).hexdigest()
    [name] = [name for name, f in gemini.files.items() if hashlib.sha256(f.data).hexdigest() == sha256]
    return name


def sent_video(daemon: Daemon, session: str = "") -> str:
    """The media id of a video uploaded to the daemon and asked about (in ``session``, if any): Gemini gets it
    through its Files API."""
    media_id = upload(daemon, short_video(), "video/mp4", pb.MODALITY_VIDEO).media_id
    clip = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=media_id)
    assert ask(daemon, session, clip) == "Hello from Gemini."
    return media_id


def test_a_reset_after_a_restart_deletes_the_copy_uploaded_before_found_by_listing_the_files(start_daemon):
    """Before the restart: an erased photo whose copy the plugin remembers is deleted without a listing. After it:
    the session's video, uploaded before, is found on the second page of the listing and deleted; the copy of
    another session's photo stays."""
    with FakeGemini(api_key=KEY) as gemini:
        daemon = start(start_daemon, gemini)
        kept, remembered = photo(2701), photo(2702)
        ask(daemon, "s27-kept", kept)
        ask(daemon, "s27-remembered", remembered)
        sent_video(daemon, "s27-video")
        kept_copy, remembered_copy = copy_of(gemini, kept.data), copy_of(gemini, remembered.data)
        video_copy = copy_of(gemini, short_video())

        assert erase(daemon, "s27-remembered").media_removed == 1
        assert wait_for(lambda: deleted(gemini)) == [remembered_copy]
        assert gemini.calls("file_list") == [], "a copy the plugin remembers was looked for in the listing"
        assert daemon.stop() == 0

        daemon = start(start_daemon, gemini)
        gemini.max_page_size = 1  # the kept photo's copy on the first page, the video's on the second
        assert erase(daemon, "s27-video").media_removed == 1
        assert wait_for(lambda: len(deleted(gemini)) > 1), daemon.logs()
        assert deleted(gemini) == [remembered_copy, video_copy]
        assert list(gemini.files) == [kept_copy]
        pages = gemini.calls("file_list")
        assert [(r.query.get("pageSize"), r.query.get("pageToken")) for r in pages] == [(["100"], None),
                                                                                       (["100"], ["1"])]
        assert wait_for(lambda: "gemini: deleted 1 of the 1 Files API copies of erased media" in daemon.logs())


def test_a_listing_that_fails_is_logged_and_delete_media_then_deletes_the_copy_uploaded_before(start_daemon):
    """After the restart the Files API answers the listing with a 500: the reset is answered, a WARNING says the
    listing failed (without the key), the session's video's copy stays at Google and the daemon answers calls. Once
    the listing works again, DeleteMedia of the video's id (no longer in the store) deletes the copy."""
    with FakeGemini(api_key=KEY) as gemini:
        daemon = start(start_daemon, gemini)
        media_id = sent_video(daemon, "s27-unlisted")
        [copy] = gemini.files
        assert daemon.stop() == 0

        daemon = start(start_daemon, gemini)
        gemini.list_status = 500
        reply = erase(daemon, "s27-unlisted")
        assert (reply.turns_removed, reply.media_removed) == (2, 1)
        warning = ("gemini: could not list the Files API's files (page 1) to find copies of erased media uploaded "
                   "before the daemon started: HTTP 500")
        assert wait_for(lambda: warning in daemon.logs()), daemon.logs()
        assert KEY not in daemon.logs()
        assert len(gemini.calls("file_list")) == 1 and deleted(gemini) == []
        assert copy in gemini.files  # until it expires, or another erasure finds it
        assert ask(daemon, "s27-after", photo(2703)) == "Hello from Gemini."

        gemini.list_status = None
        assert delete_media(daemon, media_id) == [(media_id, NOT_FOUND, 0)]
        assert wait_for(lambda: deleted(gemini)) == [copy], daemon.logs()
        assert copy not in gemini.files
