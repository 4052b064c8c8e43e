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
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{url}", timeout: 10, poll_interval: 0.05{extra}}}
default: assemblyai/best
"""

#: How long a test waits for the daemon to send a DELETE it should send (a broken fix fails, never hangs).
WAIT = 15.0


@pytest.fixture
def fake():
    with FakeAssemblyAI(api_key=KEY) as upstream:
        yield upstream


def start(start_daemon, fake: FakeAssemblyAI, extra: str = ""):
    return start_daemon(CONFIG.format(url=fake.url, extra=extra), env={"AAI_TEST_KEY": KEY})


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
    fake.statuses = ("queued", "processing")  # never done: the call's deadline ends it
    daemon = start(start_daemon, fake)

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
