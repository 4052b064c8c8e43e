"""A session's turn whose media was deleted while its call was under way is not kept.

A call on a session reads its recording (Whisper transcribes it, held by the fake), and meanwhile its client deletes
that media (``DeleteMedia``: no stored turn refers to it yet, so it goes). The call still answers, but its turn is
not kept: kept, it named a media no longer stored, and every later turn of the session failed with
``MEDIA_NOT_FOUND``; for a recording sent inline, the turn stored its bytes again, undoing the deletion. The answer's
route says why, and the session goes on.

Through the running daemon: the embedded hybrid policy with the cloud fakes behind the real SDKs.
"""

from __future__ import annotations

import hashlib

from grpc_helpers import text_request, wait_for
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_bridge_reuse import TRANSCRIPTIONS, generate, upload_wav
from test_delete_media_s26 import DELETED, NOT_FOUND, delete, whisper_calls
from test_erasure_s23 import rows, stored


def turns_of(daemon, session_id: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    return rows(daemon, "SELECT role, parts FROM turns WHERE session_id = ? ORDER BY position", session_id)


def ask_while_deleting(daemon, fakes, session_id: str, audio: pb.Media, media_id: str):  # type: ignore[no-untyped-def]
    """Ask about ``audio`` on the session; while Whisper holds its transcription, delete ``media_id``. The
    DeleteMedia statuses and the call's answer."""
    release = fakes["openai"].hold_next(TRANSCRIPTIONS)
    call = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request(
        "Summarise this recording", media=[audio], session_id=session_id)), timeout=60)
    try:
        assert wait_for(lambda: whisper_calls(fakes) == 1, timeout=60)  # under way, its media read
        statuses = delete(daemon, media_id)
    finally:
        release.set()
    return statuses, call.result(timeout=60).answer


def not_kept_note(answer: pb.Answer) -> str:
    [note] = [n for n in answer.route.notes if "this turn was not kept" in n]
    return note


def test_an_upload_deleted_while_its_session_call_runs_leaves_no_turn_naming_it(shared) -> None:
    daemon, fakes = shared
    audio = upload_wav(daemon, seconds=3.1, filename="board-meeting.wav")
    statuses, answer = ask_while_deleting(daemon, fakes, "s27-upload", audio, audio.media_id)
    assert statuses == [(audio.media_id, DELETED, 0)]
    assert answer.text  # answered: its media was read before the deletion
    note = not_kept_note(answer)
    assert "('board-meeting.wav') was deleted" in note and "DeleteMedia" in note, note
    assert turns_of(daemon, "s27-upload") == [] and stored(daemon, audio.media_id) == []
    follow_up = generate(daemon, text_request("And what was decided?", session_id="s27-upload"))
    assert follow_up.text  # the session goes on: no turn names the deleted media
    assert [role for role, _ in turns_of(daemon, "s27-upload")] == ["user", "assistant"]
    assert "media of a turn on session" in daemon.logs() and audio.media_id not in daemon.logs()


def test_an_inline_recording_deleted_while_its_session_call_runs_is_not_stored_again(shared) -> None:
    daemon, fakes = shared
    data = wav(2.9)
    media_id = hashlib.sha256(data).hexdigest()
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=data, filename="voicemail.wav")
    statuses, answer = ask_while_deleting(daemon, fakes, "s27-inline", audio, media_id)
    assert statuses == [(media_id, NOT_FOUND, 0)]  # inline: not stored until its turn is kept
    assert "('voicemail.wav') was deleted" in not_kept_note(answer)
    assert turns_of(daemon, "s27-inline") == [] and stored(daemon, media_id) == []
