"""What the AssemblyAI plugin leaves at AssemblyAI: each transcript is deleted once read (``delete_transcripts``).

The real daemon (``start_daemon`` of tests/conftest.py) with the real ``assemblyai`` SDK against the fake
AssemblyAI API of tests/fakes/assemblyai.py, which answers ``DELETE /v2/transcript/<id>`` as AssemblyAI does
and records it. The delete runs after the call's answer: the fake holds it (:attr:`FakeAssemblyAI.delete_hold`)
until the test has the answer, and records whether it was released or timed out (5 s, below the plugin's
HTTP timeout of 10 s here: a plugin that waited for the delete before answering meets the fake's timeout).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.assemblyai import FakeAssemblyAI
from tests.test_assemblyai_e2e import SPEAKER_TEXT, request_for, wav_bytes, wav_media

KEY = "aai-retention-key-5e0b"

CONFIG = """
providers:
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{url}", timeout: {timeout}, poll_interval: 0.05{extra}}}
default: assemblyai/best
"""

#: How long a test waits for the daemon to send a DELETE it should send (a broken fix fails, never hangs).
WAIT = 15.0

#: What the daemon logs once it has cancelled a provider call at the call's deadline (router/invoke.py).
DEADLINE_LOG = "no answer before the deadline of the call"


@pytest.fixture
def fake():
    with FakeAssemblyAI(api_key=KEY) as upstream:
        yield upstream


def start(start_daemon, fake: FakeAssemblyAI, extra: str = "", timeout: float = 10):
    return start_daemon(CONFIG.format(url=fake.url, extra=extra, timeout=timeout), env={"AAI_TEST_KEY": KEY})


def generate(daemon, timeout: float = 30) -> pb.GenerateResponse:
    request = request_for(wav_media(wav_bytes()))
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=timeout)


def wait_for_delete(fake: FakeAssemblyAI) -> None:
    assert fake.delete_answered.wait(WAIT), "no DELETE of the transcript reached AssemblyAI"


def wait_for_log(daemon, text: str) -> str:
    """The daemon's log once it holds ``text`` (or as it is after :data:`WAIT` seconds)."""
    deadline = time.monotonic() + WAIT
    while text not in (logs := daemon.logs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return logs


def warm_up(daemon, fake: FakeAssemblyAI) -> None:
    """One whole call, its transcript deleted: the plugin has imported the SDK and connected, so a short
    deadline of the next call is spent on the step a test holds, not on the daemon's first-call work."""
    generate(daemon)
    wait_for_delete(fake)
    fake.delete_answered.clear()


def test_a_transcript_is_deleted_after_the_answer(start_daemon, fake):
    daemon = start(start_daemon, fake)
    fake.delete_hold = threading.Event()  # DELETEs wait until the test has its answer

    answer = generate(daemon).answer
    fake.delete_hold.set()

    assert answer.transcript.text == SPEAKER_TEXT  # read before the delete
    wait_for_delete(fake)
    (transcript_id,) = fake.transcripts
    assert fake.deleted == [transcript_id]
    assert fake.deletes_released == [True]  # the answer did not wait for the delete
    delete = next(r for r in fake.requests if r.method == "DELETE")
    assert (delete.path, delete.headers["authorization"]) == (f"/v2/transcript/{transcript_id}", KEY)
    assert fake.transcripts[transcript_id].deleted


def test_no_delete_when_the_setting_is_off(start_daemon, fake):
    daemon = start(start_daemon, fake, ", delete_transcripts: false")

    assert generate(daemon).answer.transcript.text == SPEAKER_TEXT
    daemon.stop()  # a delete still running would end before the daemon exits (the provider's aclose)

    assert len(fake.transcripts) == 1
    assert fake.delete_requests == []


def test_a_failed_transcript_is_deleted_too(start_daemon, fake):
    fake.statuses = ("queued", "error")
    daemon = start(start_daemon, fake)
    fake.delete_hold = threading.Event()

    with pytest.raises(grpc.RpcError) as info:
        generate(daemon)
    fake.delete_hold.set()

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_for_delete(fake)
    assert fake.deleted == list(fake.transcripts)
    assert fake.deletes_released == [True]


def test_a_call_given_up_while_transcribing_deletes_its_transcript(start_daemon, fake):
    daemon = start(start_daemon, fake)
    warm_up(daemon, fake)
    fake.statuses = ("queued", "processing")  # never done: the call's deadline ends it

    with pytest.raises(grpc.RpcError) as info:
        generate(daemon, timeout=1.5)

    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    wait_for_delete(fake)
    assert fake.deleted == list(fake.transcripts)


def test_a_failing_delete_does_not_fail_the_call(start_daemon, fake):
    fake.delete_failure = 500
    daemon = start(start_daemon, fake)

    answer = generate(daemon).answer

    assert answer.transcript.text == SPEAKER_TEXT
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("assemblyai", True)]
    wait_for_delete(fake)
    (transcript_id,) = fake.transcripts
    logs = wait_for_log(daemon, f"could not delete transcript {transcript_id}")
    line = next(line for line in logs.splitlines() if f"could not delete transcript {transcript_id}" in line)
    assert "WARNING" in line
    assert "scripted delete failure" in line  # AssemblyAI's reason
    assert KEY not in logs
    assert fake.deleted == []


def test_a_delete_still_running_at_shutdown_is_named_and_the_daemon_stops_cleanly(start_daemon, fake):
    """A DELETE that AssemblyAI does not answer (held past the daemon's stop bound) is given up after
    DELETE_WAIT_SECONDS, named in a WARNING; the daemon exits 0 with every other provider and the sessions
    database closed (a close waiting the HTTP timeout ran past the stop bound: exit 1, the database left open)."""
    fake.delete_hold = threading.Event()  # never set: the fake answers after delete_hold_timeout
    fake.delete_hold_timeout = 12.0
    daemon = start(start_daemon, fake)
    generate(daemon)
    deadline = time.monotonic() + WAIT
    while not any(r.method == "DELETE" for r in fake.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    (transcript_id,) = fake.transcripts

    assert daemon.stop() == 0
    logs = daemon.logs()
    assert f"closing before transcript {transcript_id} was deleted at AssemblyAI" in logs, logs
    assert "did not stop within" not in logs
    assert not (daemon.data_dir / "sessions.sqlite-wal").exists()  # the database was closed
    fake.delete_hold.set()


def test_a_call_given_up_during_the_create_deletes_the_transcript_it_made(start_daemon, fake):
    """The client's deadline passes while ``POST /v2/transcript`` is in flight (the fake holds it): the
    create is let finish, AssemblyAI makes the transcript, and the plugin deletes it."""
    daemon = start(start_daemon, fake)
    warm_up(daemon, fake)
    release = fake.hold_next("/v2/transcript")
    try:
        with pytest.raises(grpc.RpcError) as info:
            generate(daemon, timeout=2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [r.path for r in fake.requests if r.method == "POST"][2:] == ["/v2/upload", "/v2/transcript"]
        # the daemon gave the call up (cancelled the plugin's generate) before AssemblyAI answers the create
        assert DEADLINE_LOG in wait_for_log(daemon, DEADLINE_LOG)
    finally:
        release.set()

    wait_for_delete(fake)
    assert list(fake.transcripts) == ["tr-1", "tr-2"]
    assert fake.deleted == ["tr-1", "tr-2"]


LEFT = "a transcript may have been left at AssemblyAI, its id unknown"


def log_line(logs: str, text: str) -> str:
    """The first line of ``logs`` holding ``text`` (empty if none)."""
    return next((line for line in logs.splitlines() if text in line), "")


def test_a_create_unanswered_after_the_call_was_given_up_is_named_in_a_warning(start_daemon, fake):
    """The create is still unanswered when the plugin's HTTP timeout (4 s) passes, after the call's deadline
    (2 s): no transcript id is known, so nothing can be deleted; a WARNING says a transcript may be left."""
    daemon = start(start_daemon, fake, timeout=4)
    warm_up(daemon, fake)
    release = fake.hold_next("/v2/transcript")
    try:
        with pytest.raises(grpc.RpcError) as info:
            generate(daemon, timeout=2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        logs = wait_for_log(daemon, LEFT)
    finally:
        release.set()

    line = log_line(logs, LEFT)
    assert "WARNING" in line and "no answer to the transcript create (ReadTimeout)" in line, logs
    assert KEY not in logs
    assert fake.delete_requests == ["tr-1"]  # the warm-up's only


def test_a_create_whose_answer_never_came_is_named_in_a_warning(start_daemon, fake):
    """Not cancelled: the create meets the plugin's HTTP timeout (1 s), the call fails (UNAVAILABLE), and a
    WARNING says a transcript may have been made at AssemblyAI, its id unknown."""
    daemon = start(start_daemon, fake, timeout=1)
    release = fake.hold_next("/v2/transcript")
    try:
        with pytest.raises(grpc.RpcError) as info:
            generate(daemon)
        logs = wait_for_log(daemon, LEFT)
    finally:
        release.set()

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "WARNING" in log_line(logs, LEFT), logs


def test_a_create_of_a_given_up_call_still_running_at_shutdown_is_named(start_daemon, fake):
    """The daemon stops while the create of a call given up is still unanswered: the plugin waits for it
    no longer than for a delete (DELETE_WAIT_SECONDS), names the request in a WARNING, and the daemon exits 0."""
    daemon = start(start_daemon, fake)
    warm_up(daemon, fake)
    release = fake.hold_next("/v2/transcript")
    try:
        with pytest.raises(grpc.RpcError):
            generate(daemon, timeout=2)
        assert DEADLINE_LOG in wait_for_log(daemon, DEADLINE_LOG)
        assert daemon.stop() == 0
    finally:
        release.set()

    logs = daemon.logs()
    line = log_line(logs, LEFT)
    assert "WARNING" in line and "closing before the transcript create of a cancelled call answered" in line, logs
    assert "did not stop within" not in logs


def test_an_upload_given_up_is_named_in_a_warning(start_daemon, fake):
    """The call's deadline passes while ``POST /v2/upload`` is in flight: AssemblyAI may keep the file (no call
    deletes an upload), which a WARNING says."""
    daemon = start(start_daemon, fake)
    warm_up(daemon, fake)
    release = fake.hold_next("/v2/upload")
    try:
        with pytest.raises(grpc.RpcError) as info:
            generate(daemon, timeout=2)
        logs = wait_for_log(daemon, "while uploading its media")
    finally:
        release.set()

    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "WARNING" in log_line(logs, "while uploading its media"), logs
    assert len(fake.created) == 1  # the warm-up's only
