"""Bridging when bridges fail: the embedded hybrid policy with the cloud fakes. A text `local/extract` made
while the cloud bridges were down does not stand in for them once they are back, and a bridge whose text
only goes beside the media (diarized speech of a video the model sees) fails without failing the call."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4
from mmrouter.v1 import router_pb2 as pb
from test_bridge_reuse import TRANSCRIPTIONS, WHISPER_BRIDGE, generate, route_of, sent_texts, upload_wav
from test_hybrid import ALL_KEYS, config_for

from tests.fakes.openai import error_body as openai_error

LOCAL_BRIDGE = "audio->transcript via local/extract"
LOCAL_HEADING = "[Audio standup.wav: transcript, "  # local's section heading: a cloud transcript has none
DOWN = openai_error("down", "server_error")
NO_AUDIO = "Transcoding failed. File does not appear to contain audio."


@pytest.fixture
def daemon(start_daemon, fakes):
    return start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())


def cloud_bridges_down_once(fakes) -> None:
    """whisper-1 and AssemblyAI each fail their next call (503); local/extract comes next for plain audio
    (gpt-4o-transcribe-diarize, after it, bridges diarized audio)."""
    fakes["openai"].fail_next(503, DOWN, path=TRANSCRIPTIONS)  # whisper-1
    fakes["assemblyai"].fail_next(503, {"error": "down"}, path="/v2/upload")


def audio_text(fakes) -> str:
    """The audio transcript part of the last message gpt-4o got."""
    return next(t for t in sent_texts(fakes) if t.startswith("[Audio transcript] standup.wav"))


# -- a stand-in made during an outage ---------------------------------------------------------------------


def test_a_text_local_made_during_an_outage_gives_way_to_the_cloud_bridges_once_back(daemon, fakes) -> None:
    """The cloud bridges fail once: `local/extract` makes the text. The next request, with them healthy
    again, gets Whisper's transcript instead of the offline one, and so do later requests and sessions
    (Whisper's text is kept and reused from then on)."""
    audio = upload_wav(daemon)
    cloud_bridges_down_once(fakes)
    during = generate(daemon, text_request("Summarise this recording", media=[audio]))
    assert list(during.route.bridges) == [LOCAL_BRIDGE]
    assert LOCAL_HEADING in audio_text(fakes)

    after = generate(daemon, text_request("What was decided?", media=[audio]))
    assert route_of(after) == ("general", "openai/gpt-4o")
    assert list(after.route.bridges) == [WHISPER_BRIDGE]
    assert [s.purpose for s in after.route.steps] == [f"bridge:{WHISPER_BRIDGE}", "answer"]
    assert LOCAL_HEADING not in audio_text(fakes) and "Hello there" in audio_text(fakes)

    later = generate(daemon, text_request("Who spoke?", media=[audio], session_id="fresh"))
    assert list(later.route.bridges) == [WHISPER_BRIDGE] and [s.purpose for s in later.route.steps] == ["answer"]
    assert LOCAL_HEADING not in audio_text(fakes)
    assert len([r for r in fakes["openai"].requests if r.path == TRANSCRIPTIONS]) == 2  # 1 failed, 1 kept


def test_the_offline_text_is_still_reused_at_its_turn_and_the_route_says_who_made_it(daemon, fakes) -> None:
    """A second outage: the cloud bridges are tried first again, then the text `local/extract` kept is
    reused at its turn (no second extraction), and the notes name it as the bridge that made the text."""
    audio = upload_wav(daemon)
    cloud_bridges_down_once(fakes)
    generate(daemon, text_request("Summarise this recording", media=[audio]))
    cloud_bridges_down_once(fakes)
    again = generate(daemon, text_request("What was decided?", media=[audio]))
    assert list(again.route.bridges) == [LOCAL_BRIDGE]
    assert [(a.model, a.ok) for a in again.route.attempts] == [
        ("whisper-1", False), ("best", False), ("gpt-4o", True)]
    assert [s.purpose for s in again.route.steps] == ["answer"]
    assert LOCAL_HEADING in audio_text(fakes)
    assert "bridging: the text of standup.wav was made before by local/extract, not by openai/whisper-1" in (
        again.route.notes)


def test_a_reused_text_of_another_bridge_is_named_in_the_notes(daemon, fakes) -> None:
    """A diarized transcription by AssemblyAI serves a later question in place of Whisper: the notes say
    which bridge made the text reused."""
    audio = upload_wav(daemon)
    generate(daemon, text_request("", media=[audio], options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True)))
    asked = generate(daemon, text_request("Summarise this recording", media=[audio]))
    assert fakes["openai"].uploads() == []
    assert "bridging: the text of standup.wav was made before by assemblyai/best, not by openai/whisper-1" in (
        asked.route.notes)


# -- a bridge whose text goes beside the media ------------------------------------------------------------

VIDEO = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=mp4(), filename="screen.mp4")
BESIDE = "video->transcript (beside the media) via assemblyai/best"


def gemini_bodies(fakes) -> list[dict]:
    return [r.json() for r in fakes["gemini"].calls("generate") + fakes["gemini"].calls("stream")]


def test_a_video_without_sound_is_answered_when_its_diarizing_bridge_fails(daemon, fakes) -> None:
    """AssemblyAI finds no audio in the video (a non-retryable bad request): Gemini, which sees the video,
    answers without the speakers' transcript, and the notes say which bridge failed and why; the failed
    bridge's attempt is still in the route."""
    fakes["assemblyai"].statuses = ("queued", "error")
    fakes["assemblyai"].error_message = NO_AUDIO
    request = text_request("What happens on screen, and who says what?", media=[VIDEO],
                           options=pb.Options(diarization=True))
    planned = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert list(planned.bridges) == [BESIDE]
    answer = generate(daemon, request)
    assert route_of(answer) == ("video", "gemini/gemini-2.5-pro") and answer.text
    assert list(answer.route.bridges) == []
    assert [(s.purpose, s.provider) for s in answer.route.steps] == [("answer", "gemini")]  # none billed
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("assemblyai", False), ("gemini", True)]
    assert any(n.startswith("bridging: no video transcript beside screen.mp4: assemblyai/best failed "
                            "(PROVIDER_BAD_REQUEST") and NO_AUDIO in n for n in answer.route.notes), answer.route.notes
    sent = json.dumps(gemini_bodies(fakes)[-1])
    assert "video/mp4" in sent, "Gemini must still get the video"
    assert "[Video transcript]" not in sent
    assert not answer.HasField("transcript") or not answer.transcript.text


def test_a_bridge_that_replaces_the_media_still_fails_the_call(daemon, fakes) -> None:
    """gpt-4o cannot hear: the diarizing bridge's text replaces the audio, so its failure for the media
    (no audio) fails the call as before."""
    fakes["assemblyai"].statuses = ("queued", "error")
    fakes["assemblyai"].error_message = NO_AUDIO
    audio = upload_wav(daemon)
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, text_request("Who said what?", media=[audio], options=pb.Options(diarization=True)))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
    assert NO_AUDIO in caught.value.details()
    assert fakes["openai"].chat_requests() == []


def test_a_video_of_the_history_is_sent_alone_when_its_diarizing_bridge_fails(daemon, fakes) -> None:
    """Turn 1 asks about the video (Gemini sees it); turn 2 asks for speakers, so the history's video
    needs the diarizing bridge, which finds no audio: Gemini gets the video alone again."""
    first = generate(daemon, text_request("What happens on screen?", media=[VIDEO], session_id="screen"))
    assert route_of(first) == ("video", "gemini/gemini-2.5-pro") and list(first.route.bridges) == []
    fakes["assemblyai"].statuses = ("queued", "error")
    fakes["assemblyai"].error_message = NO_AUDIO
    second = generate(daemon, text_request("And who says what?", session_id="screen",
                                           options=pb.Options(diarization=True)))
    assert route_of(second) == ("video", "gemini/gemini-2.5-pro") and list(second.route.bridges) == []
    assert len(fakes["assemblyai"].created) == 1
    assert any(n.startswith("bridging: no video transcript beside screen.mp4") for n in second.route.notes)
    sent = json.dumps(gemini_bodies(fakes)[-1])
    assert "video/mp4" in sent and "[Video transcript]" not in sent


# -- the deadline -----------------------------------------------------------------------------------------


def test_no_next_bridge_is_started_once_the_calls_deadline_has_come(daemon, fakes) -> None:
    """Whisper failing (retryable) within the last 0.25 s before the call's deadline: AssemblyAI, the next
    audio bridge, was started all the same, with milliseconds left, and the recording uploaded there for a
    call its client had already given up (AssemblyAI keeps uploads: no API call deletes one)."""
    warm = generate(daemon, text_request("Warm up", media=[upload_wav(daemon, 1.0, "warm.wav")]))
    assert list(warm.route.bridges) == [WHISPER_BRIDGE]
    fakes["assemblyai"].fail_next(503, {"error": "down"}, path="/v2/upload")  # its SDK imported: a fast start
    fakes["openai"].fail_next(503, DOWN, path=TRANSCRIPTIONS)
    generate(daemon, text_request("Warm up", media=[upload_wav(daemon, 1.5, "warm2.wav")]))
    uploads = len([r for r in fakes["assemblyai"].requests if r.path == "/v2/upload"])

    audio = upload_wav(daemon, 2.0, "late.wav")
    fakes["openai"].fail_next(503, DOWN, path=TRANSCRIPTIONS, body_delay=1.85)  # its error comes at ~1.85 s
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("What was said?", media=[audio])), timeout=2.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len([r for r in fakes["assemblyai"].requests if r.path == "/v2/upload"]) == uploads
