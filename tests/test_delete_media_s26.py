"""Deleting media by id at once (``DeleteMedia``, ``mmrouter delete-media``): an upload used without a session
(a one-off question about a recording) goes with the text its bridge kept and the providers' copies of it;
media a session refers to are kept and said so; unknown ids are said so; bad ids are refused whole.

Through the running daemon: the embedded hybrid policy with the cloud fakes behind the real SDKs (the OpenAI
SDK's Whisper transcribing), the google-genai SDK against the fake Gemini API for the Files API copy, and the
CLI as a subprocess against a daemon with a token. What is deleted is checked in the data directory's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import error_details, text_request, wait_for
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1.router_pb2_grpc import RouterServiceStub
from test_auth import CONFIG as TOKEN_CONFIG
from test_auth import TOKEN
from test_bridge_reuse import TRANSCRIPTIONS, WHISPER_BRIDGE, generate, upload_wav
from test_data_dir_failures import CONFIG as ECHO_CONFIG
from test_data_dir_failures import _health
from test_erasure_s23 import rows, stored
from test_gemini_e2e import CONFIG as GEMINI_CONFIG
from test_gemini_e2e import KEY as GEMINI_KEY
from test_gemini_e2e import short_video
from test_gemini_e2e import upload as upload_to
from test_media_erase_s26 import deleted as gemini_deleted

from router.auth import with_token
from tests.fakes.gemini import FakeGemini

MMROUTER = os.path.join(os.path.dirname(sys.executable), "mmrouter")
DELETED, NOT_FOUND, KEPT = (pb.MEDIA_DELETION_STATUS_DELETED, pb.MEDIA_DELETION_STATUS_NOT_FOUND,
                            pb.MEDIA_DELETION_STATUS_KEPT_IN_SESSION)
#: A media id nothing was stored under.
UNKNOWN = "0" * 64


def delete(daemon, *media_ids: str, **kwargs) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    """DeleteMedia of ``media_ids``: each id's (media_id, status, sessions), in order."""
    reply = daemon.stub.DeleteMedia(pb.DeleteMediaRequest(media_ids=list(media_ids)), timeout=30, **kwargs)
    return [(m.media_id, m.status, m.sessions) for m in reply.media]


def kept_texts(daemon, media_id: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    """The bridged texts the daemon keeps for ``media_id``."""
    return rows(daemon, "SELECT key FROM bridged WHERE key LIKE ?", f"{media_id}|%")


def whisper_calls(fakes) -> int:  # type: ignore[no-untyped-def]
    return len([r for r in fakes["openai"].requests if r.path == TRANSCRIPTIONS])


def summarise(daemon, audio: pb.Media) -> pb.Answer:  # type: ignore[no-untyped-def]
    """gpt-4o (which cannot hear) asked about ``audio`` without a session: Whisper bridges it."""
    answer = generate(daemon, text_request("Summarise this recording", media=[audio]))
    assert list(answer.route.bridges) == [WHISPER_BRIDGE]
    return answer


def picture(label: str) -> bytes:
    """A PNG of its own, ``label`` drawn on it whole."""
    return png(label, size=(320, 24))


def upload_png(daemon, data: bytes) -> str:  # type: ignore[no-untyped-def]
    return upload_to(daemon, data, "image/png", pb.MODALITY_IMAGE).media_id


def image(media_id: str) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, media_id=media_id)


def test_an_upload_used_without_a_session_is_deleted_with_its_kept_transcript(shared) -> None:
    """A recording uploaded and asked about once, without a session: its transcript is kept (a second question
    is not transcribed again). DeleteMedia removes its bytes, record and transcript: the id is then
    MEDIA_NOT_FOUND, and the same recording uploaded again is transcribed anew."""
    daemon, fakes = shared
    audio = upload_wav(daemon, seconds=2.6, filename="contract.wav")
    media_id = audio.media_id
    summarise(daemon, audio)
    summarise(daemon, audio)
    assert whisper_calls(fakes) == 1  # the kept transcript served the second question
    assert kept_texts(daemon, media_id) and stored(daemon, media_id) == [media_id, f"{media_id}.json"]

    assert delete(daemon, media_id) == [(media_id, DELETED, 0)]

    assert stored(daemon, media_id) == [] and kept_texts(daemon, media_id) == []
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, text_request("Summarise this recording", media=[audio]))
    details = error_details(caught.value)
    assert (details.code, details.reason, details.metadata["media_id"]) == (
        grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND", media_id)
    assert delete(daemon, media_id) == [(media_id, NOT_FOUND, 0)]  # nothing left of it

    again = upload_wav(daemon, seconds=2.6, filename="contract.wav")
    assert again.media_id == media_id
    summarise(daemon, again)
    assert whisper_calls(fakes) == 2, "the deleted recording's transcript was used again"


def test_media_a_session_refers_to_are_kept_and_unknown_ids_are_not_found(shared) -> None:
    """An upload two sessions sent, and an image one session sent inline: kept (each with how many sessions refer
    to it), their sessions still answered; an unknown id is NOT_FOUND; each id is answered in the request's
    order, one given twice twice. Once its session is reset (without erase_media), the inline image goes."""
    daemon, _ = shared
    shared_id = upload_png(daemon, picture("DeleteMedia shared upload"))
    inline = picture("DeleteMedia inline image")
    generate(daemon, text_request("What is this?", media=[image(shared_id)], session_id="s26-delete-alice"))
    generate(daemon, text_request("And this?", media=[image(shared_id)], session_id="s26-delete-bob"))
    generate(daemon, text_request("This?", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png",
                                                           data=inline)], session_id="s26-delete-carol"))
    inline_id = hashlib.sha256(inline).hexdigest()
    assert stored(daemon, inline_id)  # kept for the session

    assert delete(daemon, shared_id, UNKNOWN, inline_id, shared_id) == [
        (shared_id, KEPT, 2), (UNKNOWN, NOT_FOUND, 0), (inline_id, KEPT, 1), (shared_id, KEPT, 2)]

    assert stored(daemon, shared_id) and stored(daemon, inline_id)
    assert generate(daemon, text_request("Again?", session_id="s26-delete-alice")).text  # its history reads it
    daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="s26-delete-carol"), timeout=30)
    assert stored(daemon, inline_id)  # a reset without erase_media keeps it
    assert delete(daemon, inline_id) == [(inline_id, DELETED, 0)]
    assert stored(daemon, inline_id) == []


@pytest.mark.parametrize(("media_ids", "violations"), [
    ([], [("media_ids", "0 media ids; give 1 to 1000")]),
    ([UNKNOWN] * 1000, [("media_ids", "1001 media ids; give 1 to 1000")]),  # with the upload
    (["nope", UNKNOWN, UNKNOWN.upper().replace("0", "A"), f" {UNKNOWN}"],
     [(f"media_ids[{i}]", "is not a media id (64 lower-case hex digits): send the media_id UploadMedia returned, "
                          "as it returned it") for i in (0, 2, 3)]),
], ids=["none", "too-many", "malformed"])
def test_bad_media_ids_are_refused_whole(shared, media_ids, violations) -> None:
    """A call naming no id, too many, or ids of another form is INVALID_ARGUMENT with a field violation each,
    and deletes nothing, not even its well-formed ids."""
    daemon, _ = shared
    media_id = upload_png(daemon, picture(f"DeleteMedia refused {len(media_ids)}"))
    with pytest.raises(grpc.RpcError) as caught:
        delete(daemon, *media_ids, *([media_id] if media_ids else []))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == violations
    assert "nope" not in details.message
    assert stored(daemon, media_id)


def test_deleting_an_upload_deletes_its_gemini_copy(start_daemon) -> None:
    """A video uploaded and asked about without a session, which Gemini was sent through its Files API: its
    deletion deletes that copy too, in the background; one INFO line counts what was done, naming no id."""
    with FakeGemini(api_key=GEMINI_KEY) as gemini:
        daemon = start_daemon(GEMINI_CONFIG.format(url=gemini.url), env={"GEMINI_TEST_KEY": GEMINI_KEY}, plugins=())
        media_id = upload_to(daemon, short_video(), "video/mp4", pb.MODALITY_VIDEO).media_id
        clip = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=media_id)
        assert generate(daemon, text_request("What happens here?", media=[clip])).text == "Hello from Gemini."
        [copy] = gemini.files

        assert delete(daemon, media_id, UNKNOWN) == [(media_id, DELETED, 0), (UNKNOWN, NOT_FOUND, 0)]
        assert wait_for(lambda: gemini_deleted(gemini)) == [copy], "the Files API copy was not deleted"
        assert copy not in gemini.files
        line = next(line for line in daemon.logs().splitlines() if "media deleted on request" in line)
        assert "1 deleted, 1 not found, 0 kept" in line and media_id not in line, line



def test_deleting_media_sent_inline_without_a_session_deletes_its_gemini_copy(start_daemon) -> None:
    """An image sent inline without a session is not stored by the daemon, but the Gemini plugin uploaded it (over
    its inline limit) and reuses that copy: DeleteMedia of its sha256 says it is not found in the store, and has the
    copy deleted all the same, so the image sent again is uploaded anew."""
    with FakeGemini(api_key=GEMINI_KEY) as gemini:
        daemon = start_daemon(GEMINI_CONFIG.format(url=gemini.url), env={"GEMINI_TEST_KEY": GEMINI_KEY}, plugins=())
        photo = picture("DeleteMedia inline Gemini copy")
        inline = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=photo, filename="customer.png")
        for _ in range(2):  # the second call reuses the plugin's copy
            assert generate(daemon, text_request("Describe this", media=[inline])).text == "Hello from Gemini."
        [copy] = gemini.files
        media_id = hashlib.sha256(photo).hexdigest()

        assert delete(daemon, media_id) == [(media_id, NOT_FOUND, 0)]
        assert wait_for(lambda: gemini_deleted(gemini)) == [copy], "the Files API copy was not deleted"
        generate(daemon, text_request("Describe this", media=[inline]))
        assert len(gemini.files) == 1 and copy not in gemini.files  # uploaded anew


def test_a_deletion_is_refused_as_a_reset_is_once_the_data_directory_is_gone(start_daemon, tmp_path) -> None:
    """The data directory renamed under the daemon: DeleteMedia is UNAVAILABLE DATA_DIR_GONE, as ResetSession
    is, and deletes nothing."""
    daemon = start_daemon(ECHO_CONFIG)
    media_id = upload_png(daemon, picture("DeleteMedia data directory gone"))
    daemon.data_dir.rename(tmp_path / "moved")
    assert wait_for(lambda: _health(daemon) == "NOT_SERVING", timeout=20), "the daemon did not notice"
    with pytest.raises(grpc.RpcError) as caught:
        delete(daemon, media_id)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DATA_DIR_GONE"), details
    assert (tmp_path / "moved" / "media" / media_id[:2] / media_id).exists()


@pytest.fixture(scope="module")
def token_daemon(plugin_sites, tmp_path_factory):
    """A daemon with server.auth_token (``test_auth``'s) and the testkit's echo, which answers about images; its
    ``stub`` sends the token."""
    daemon = launch_daemon(TOKEN_CONFIG, tmp=tmp_path_factory.mktemp("delete-media"),
                           env={"MMROUTER_TEST_TOKEN": TOKEN}, sites=[plugin_sites["testkit"]])
    yield dataclasses.replace(daemon, stub=RouterServiceStub(with_token(daemon.channel, TOKEN)))
    daemon.stop()


def cli(daemon, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """``mmrouter delete-media --address <daemon> *args``, with ``token`` in MMROUTER_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"MMROUTER_TOKEN": token}  # piped: no width
    return subprocess.run([MMROUTER, "delete-media", "--address", daemon.address, *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_call_needs_the_token(token_daemon) -> None:
    media_id = upload_png(token_daemon, picture("DeleteMedia token"))
    without = RouterServiceStub(token_daemon.channel)
    with pytest.raises(grpc.RpcError) as caught:
        without.DeleteMedia(pb.DeleteMediaRequest(media_ids=[media_id]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stored(token_daemon, media_id)
    assert delete(token_daemon, media_id) == [(media_id, DELETED, 0)]


def test_the_cli_says_what_was_done_with_each_id_and_exits_1_unless_all_were_deleted(token_daemon) -> None:
    gone, kept, other = (upload_png(token_daemon, picture(f"DeleteMedia CLI {n}")) for n in range(3))
    generate(token_daemon, text_request("What is this?", media=[image(kept)], session_id="s26-cli"))

    result = cli(token_daemon, gone, kept, UNKNOWN)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"{gone}: deleted",
        f"{kept}: kept: 1 session(s) refer to it; `mmrouter reset --erase-media` of each deletes it",
        f"{UNKNOWN}: not found: nothing is stored under this id (the providers were asked to delete their copies "
        "all the same)"]  # a line each, however long: piped, the CLI knows no width to wrap at
    assert stored(token_daemon, gone) == [] and stored(token_daemon, kept)

    result = cli(token_daemon, "--json", other)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "media": [{"mediaId": other, "status": "MEDIA_DELETION_STATUS_DELETED", "sessions": 0}]}
    assert stored(token_daemon, other) == []

    refused = cli(token_daemon, UNKNOWN, "not-an-id")
    assert refused.returncode == 2 and "MEDIA_ID #2 is not a media id" in refused.stderr, refused.stderr
    unauthenticated = cli(token_daemon, kept, token="")
    assert unauthenticated.returncode == 4 and "UNAUTHENTICATED" in unauthenticated.stderr
    assert stored(token_daemon, kept)



def test_a_call_under_way_that_reads_a_deleted_media_fails_with_media_not_found(shared) -> None:
    """A question about a recording and an image, both uploaded: while Whisper transcribes the recording, the image
    is deleted. The answer, which reads it next, fails with MEDIA_NOT_FOUND naming it (as for any deleted id), not
    with every target blamed for a plugin failure, and no fallback is tried for it."""
    daemon, fakes = shared
    audio = upload_wav(daemon, seconds=3.3, filename="meeting.wav")
    photo_id = upload_png(daemon, picture("DeleteMedia under way"))
    release = fakes["openai"].hold_next(TRANSCRIPTIONS)
    call = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request(
        "Summarise this", media=[audio, image(photo_id)])), timeout=60)
    try:
        assert wait_for(lambda: whisper_calls(fakes) == 1, timeout=60)  # under way, its media read from the store
        assert delete(daemon, photo_id) == [(photo_id, DELETED, 0)]
    finally:
        release.set()
    details = error_details(call.exception(timeout=60))
    assert (details.code, details.reason, details.metadata["media_id"]) == (
        grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND", photo_id), details
    assert "was deleted while this call was under way" in details.message
    assert fakes["openai"].chat_requests() == [] and fakes["anthropic"].requests == []


def test_a_transcript_made_by_a_call_under_way_is_not_kept_again_once_its_media_was_deleted(shared) -> None:
    """The recording is deleted (DELETED: its kept texts gone) while a call without a session waits for Whisper's
    transcript of it. That call still answers, but its transcript is not written back: the deletion stands, and the
    same bytes uploaded again are transcribed anew."""
    daemon, fakes = shared
    audio = upload_wav(daemon, seconds=3.7, filename="customer-call.wav")
    release = fakes["openai"].hold_next(TRANSCRIPTIONS)
    call = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request(
        "Summarise this recording", media=[audio])), timeout=60)
    try:
        assert wait_for(lambda: whisper_calls(fakes) == 1, timeout=60)
        assert delete(daemon, audio.media_id) == [(audio.media_id, DELETED, 0)]
    finally:
        release.set()
    assert list(call.result(timeout=60).answer.route.bridges) == [WHISPER_BRIDGE]  # answered: its media was read before
    assert wait_for(lambda: "a bridged text is not kept: its media's kept texts were deleted" in daemon.logs())
    assert kept_texts(daemon, audio.media_id) == [] and stored(daemon, audio.media_id) == []
    again = upload_wav(daemon, seconds=3.7, filename="customer-call.wav")
    assert again.media_id == audio.media_id
    summarise(daemon, again)
    assert whisper_calls(fakes) == 2  # transcribed anew: nothing was kept
