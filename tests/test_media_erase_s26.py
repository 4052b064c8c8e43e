"""Erasing a session's media (``ResetSession`` with ``erase_media``) deletes the providers' copies of them too:
the Gemini plugin deletes the copies it uploaded through the Files API (``Provider.forget_media``) and forgets
them, so the same bytes sent again are uploaded anew; media it never uploaded, or that another session still
refers to, make no deletion; a plugin whose ``forget_media`` raises or hangs fails neither the reset nor the
daemon.

Through the running daemon, with the real google-genai SDK against the fake Gemini API (tests/fakes/gemini.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import fake_fixtures, launch_daemon, make_dist_info
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from test_gemini_e2e import CONFIG, KEY, png_bytes, short_video, upload
from test_gemini_uploads_s25 import noise_png

from router.redact import session_tag
from tests.fakes.gemini import FakeGemini

shared_fake, fake, _ = fake_fixtures(lambda: FakeGemini(api_key=KEY))

#: A plugin of two providers whose ``forget_media`` fails: ``raising`` raises an error quoting its key,
#: ``stuck`` (an instance of it, ``hang: true``) never returns.
FORGETFUL = '''
import asyncio

import router
from router import Modality, ModelInfo


class Forgetful(router.Provider):
    def __init__(self, name, settings):
        self.name = name
        self.settings = settings
        self.models = [ModelInfo("m", frozenset({Modality.TEXT}))]

    async def generate(self, request, model, ctx):
        yield router.TextDelta("unused")
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)

    async def forget_media(self, sha256s):
        if self.settings.get("hang"):
            await asyncio.Event().wait()
        raise RuntimeError(f"upstream refused key {self.settings['api_key']}")


@router.hookimpl
def register_providers(register, settings, name):
    register(Forgetful(name, dict(settings)))
'''
FORGETFUL_KEY = "forget-secret-7c2e9a"
FORGETFUL_PROVIDERS = f"""providers:
  raising:
    api_key: "{FORGETFUL_KEY}"
  stuck:
    plugin: raising
    api_key: "{FORGETFUL_KEY}"
    hang: true
"""


@pytest.fixture(scope="module")
def shared_daemon(shared_fake, tmp_path_factory):
    """One daemon of the Gemini e2e CONFIG for the module's tests of deletions; each uses media of its own."""
    daemon = launch_daemon(CONFIG.format(url=shared_fake.url), tmp=tmp_path_factory.mktemp("erase-s26"),
                           env={"GEMINI_TEST_KEY": KEY}, sites=[])
    yield daemon
    daemon.stop()


def ask(daemon, session: str, *media: pb.Media) -> str:  # type: ignore[no-untyped-def]
    """The answer's text to a question about ``media`` on ``session``."""
    request = text_request("What is this?", media=list(media), session_id=session)
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer.text


def erase(daemon, session: str) -> pb.ResetSessionResponse:  # type: ignore[no-untyped-def]
    return daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=session, erase_media=True), timeout=30)


def deleted(gemini: FakeGemini) -> list[str]:
    """The names of the files the fake was asked to delete (``files/<id>``), in order."""
    return ["files/" + r.path.rsplit("/", 1)[-1] for r in gemini.calls("file_delete")]


def photo(seed: int) -> pb.Media:
    """A PNG over the config's 1 KiB inline limit, sent inline: Gemini uploads it."""
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=noise_png(seed))


def test_erasing_a_sessions_video_deletes_its_gemini_copy_and_sent_again_it_is_uploaded_anew(shared_daemon, fake):
    video = short_video()
    media_id = upload(shared_daemon, video, "video/mp4", pb.MODALITY_VIDEO).media_id
    clip = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=media_id)
    assert ask(shared_daemon, "s26-video", clip) == "Hello from Gemini."
    assert ask(shared_daemon, "s26-video", clip) == "Hello from Gemini."  # the copy is reused
    [copy] = fake.files
    assert len(fake.calls("upload_start")) == 1

    reply = erase(shared_daemon, "s26-video")
    assert (reply.turns_removed, reply.media_removed) == (4, 1)
    assert wait_for(lambda: deleted(fake)) == [copy], "the Files API copy of the erased video was not deleted"
    assert copy not in fake.files

    media_id = upload(shared_daemon, video, "video/mp4", pb.MODALITY_VIDEO).media_id  # the store erased it
    clip = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=media_id)
    assert ask(shared_daemon, "s26-video-again", clip) == "Hello from Gemini."
    assert len(fake.calls("upload_start")) == 2, "the erased video's forgotten copy was used again"
    [new_copy] = fake.files
    assert new_copy != copy
    [*_, body] = [r.json() for r in fake.calls("stream")]
    assert [p["fileData"]["file_uri"].rsplit("/", 1)[-1] for p in body["contents"][0]["parts"] if "fileData" in p] \
        == [new_copy.removeprefix("files/")]


def test_media_never_uploaded_or_still_used_by_another_session_are_not_deleted(shared_daemon, fake):
    """Alice sends a small image (inline to Gemini: no copy), a large one of her own and a large one Bob sends too
    (both uploaded). Her erasure deletes her own image's copy, and only that; Bob's then deletes the shared one's."""
    small = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png_bytes())
    own, shared = photo(2601), photo(2604)
    ask(shared_daemon, "s26-alice", small, own, shared)
    ask(shared_daemon, "s26-bob", shared)
    # the fake names a copy by its display name: the media's sha256 (the request names no file)
    copies = {f.display_name: name for name, f in fake.files.items()}
    own_copy, shared_copy = (copies[hashlib.sha256(m.data).hexdigest()] for m in (own, shared))
    done = "gemini: deleted 1 of the 1 Files API copies of erased media"
    before = shared_daemon.logs().count(done)

    reply = erase(shared_daemon, "s26-alice")
    assert reply.media_removed == 2  # the small image and her own: Bob's session refers to the shared one
    # the line is logged once Gemini's deletions for the reset ended: it counts them all
    assert wait_for(lambda: shared_daemon.logs().count(done) > before), shared_daemon.logs()
    assert deleted(fake) == [own_copy]

    assert erase(shared_daemon, "s26-bob").media_removed == 1
    assert wait_for(lambda: len(deleted(fake)) > 1) and deleted(fake) == [own_copy, shared_copy]


def test_a_copy_whose_delete_fails_is_logged_and_forgotten_all_the_same(shared_daemon, fake):
    """The Files API answers the delete with a 503: a WARNING names the copy, the reset is answered, and the image
    sent again is uploaded anew rather than referred to by its forgotten copy."""
    image = photo(2605)
    ask(shared_daemon, "s26-undeletable", image)
    [copy] = fake.files
    fake.delete_status = 503

    assert erase(shared_daemon, "s26-undeletable").media_removed == 1
    warning = f"could not delete file {copy}, of an erased media"
    assert wait_for(lambda: warning in shared_daemon.logs()), shared_daemon.logs()
    assert copy in fake.files  # still at Google, until it expires
    assert ask(shared_daemon, "s26-undeletable-again", image) == "Hello from Gemini."
    assert len(fake.calls("upload_start")) == 2


def test_a_provider_whose_forget_media_raises_or_hangs_fails_neither_the_reset_nor_the_daemon(
        start_daemon, fake, tmp_path: Path):
    """Beside Gemini, a provider whose ``forget_media`` raises (its error quoting its key) and one whose
    ``forget_media`` never returns: the reset is answered, Gemini's copy is deleted all the same, the failure is
    logged with the key masked, calls are still answered, and the daemon stops cleanly (the hanging one is
    cancelled)."""
    site = tmp_path / "site-forgetful"
    site.mkdir()
    (site / "mmrouter_s26_forgetful.py").write_text(FORGETFUL)
    make_dist_info(site, "mmrouter-s26-forgetful", "raising", "mmrouter_s26_forgetful")
    config = CONFIG.format(url=fake.url).replace("providers:\n", FORGETFUL_PROVIDERS, 1)
    daemon = start_daemon(config, env={"GEMINI_TEST_KEY": KEY}, plugins=(), extra_sites=(site,))
    ask(daemon, "s26-faulty", photo(2602))
    [copy] = fake.files

    reply = erase(daemon, "s26-faulty")
    assert (reply.turns_removed, reply.media_removed) == (2, 1)
    assert wait_for(lambda: deleted(fake)) == [copy]
    tag = session_tag("s26-faulty")
    failed = f"provider raising failed to forget the 1 media erased with session {tag}"
    assert wait_for(lambda: failed in daemon.logs()), daemon.logs()
    assert FORGETFUL_KEY not in daemon.logs()
    assert "s26-faulty" not in daemon.logs()  # the session is named by its tag only
    assert ask(daemon, "s26-after", photo(2603)) == "Hello from Gemini."

    assert daemon.stop() == 0
    logs = daemon.logs()
    assert f"provider stuck had not forgotten the 1 media erased with session {tag} when the daemon stopped" in logs
    assert "did not stop within" not in logs, logs
