"""A long AssemblyAI transcript is parsed and converted off the daemon's event loop (QA callcenter finding 1).

The SDK's ``get_transcript`` validates every word with pydantic (twice: ``words`` and each utterance's):
1.5-2 s of CPU for an hour of conversation, and the plugin's ``to_transcript`` adds a tenth of that. Run on
the event loop, they stalled every other call and the health checks meanwhile. The daemon (a subprocess,
with the real SDK talking to tests/fakes' AssemblyAI) runs a probe installed by a ``sitecustomize`` module:
a profile hook that holds the SDK's parse of a long completed transcript, then the plugin's conversion of
it, each where it starts, until the test releases it. While each is held, a health check (and, during the
parse, a second transcription) must be answered; on the event loop they could not be (the health check
would meet its deadline instead). Nothing is timed: each stage is held for as long as the test needs.
"""

from __future__ import annotations

import signal
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from mmrouter.v1 import router_pb2 as pb
from test_assemblyai_e2e import CONFIG, KEY, SPEAKER_TEXT, request_for, wav_bytes, wav_media

from tests.fakes.assemblyai import DEFAULT_TURNS, FakeAssemblyAI

#: The long conversation's size: 400 turns of 10 words (about 25 minutes of talk).
TURNS, WORDS_PER_TURN = 400, 10

#: Installed in the daemon as ``sitecustomize``: a profile hook in every thread the daemon starts, and in
#: its main thread (the event loop's) once it gets SIGUSR1 (which writes ``armed`` in the probe directory; not
#: from the start, as the daemon's start would then take seconds more). It holds, once each, the stages of
#: :data:`STAGES` for a transcript of at least ``MIN_WORDS`` words: the SDK's parse of the completed answer
#: (``BaseModel.parse_obj``, which ``TranscriptResponse.parse_obj`` is) and the plugin's ``to_transcript``.
#: A stage held writes ``held-<stage>`` in the probe directory, saying whether its thread runs the event
#: loop, and waits for the file ``release-<stage>``.
PROBE = """
import os
import signal
import sys
import threading
import time

DIR = os.environ["MMROUTER_TEST_PARSE_PROBE"]
MIN_WORDS = 1000


def long_answer(frame):
    obj = frame.f_locals.get("obj")
    return isinstance(obj, dict) and obj.get("status") == "completed" and len(obj.get("words") or ()) >= MIN_WORDS


def long_response(frame):
    return len(getattr(frame.f_locals.get("response"), "words", None) or ()) >= MIN_WORDS


STAGES = {"parse_obj": long_answer, "to_transcript": long_response}
held = set()
lock = threading.Lock()


def hook(frame, event, arg):
    name = frame.f_code.co_name
    if event != "call" or name not in STAGES or name in held or not STAGES[name](frame):
        return
    with lock:
        held.add(name)
        if len(held) == len(STAGES):
            threading.setprofile(None)
    asyncio = sys.modules.get("asyncio")
    on_loop = asyncio is not None and asyncio._get_running_loop() is not None
    with open(os.path.join(DIR, "tmp-" + name), "w") as out:
        out.write("event loop" if on_loop else "worker thread")
    os.replace(os.path.join(DIR, "tmp-" + name), os.path.join(DIR, "held-" + name))
    for _ in range(6000):  # at most a minute, so a failed test never leaves the daemon stuck
        if os.path.exists(os.path.join(DIR, "release-" + name)):
            break
        time.sleep(0.01)


def arm(signum, frame):
    sys.setprofile(hook)
    open(os.path.join(DIR, "armed"), "w").close()


signal.signal(signal.SIGUSR1, arm)
threading.setprofile(hook)
"""

#: The stages the probe holds, in the order they run.
STAGES = ("parse_obj", "to_transcript")


def long_turns() -> list[tuple[str, int, int, str]]:
    """A long two-speaker conversation: :data:`TURNS` turns of :data:`WORDS_PER_TURN` words, 4 s each."""
    return [("A" if i % 2 == 0 else "B", i * 4000, i * 4000 + 3800,
             " ".join(f"word{i}-{j}" for j in range(WORDS_PER_TURN))) for i in range(TURNS)]


def wait_for(path: Path, give_up: float = 60.0) -> bool:
    """Whether ``path`` appears within ``give_up`` seconds (a bound for a failing test, no timing check)."""
    deadline = time.monotonic() + give_up
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_long_transcript_is_parsed_while_health_checks_and_other_calls_are_answered(start_daemon, tmp_path):
    site, probe = tmp_path / "probe-site", tmp_path / "probe"
    site.mkdir()
    probe.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(PROBE))
    with FakeAssemblyAI(api_key=KEY, turns=long_turns()) as fake:
        daemon = start_daemon(CONFIG.format(url=fake.url), extra_sites=(site,),
                              env={"AAI_TEST_KEY": KEY, "MMROUTER_TEST_PARSE_PROBE": str(probe)})
        health = health_pb2_grpc.HealthStub(daemon.channel)
        daemon.proc.send_signal(signal.SIGUSR1)
        assert wait_for(probe / "armed"), "the probe was not armed"
        with ThreadPoolExecutor(1) as pool:
            long_call = pool.submit(daemon.stub.Generate,
                                    pb.GenerateRequest(request=request_for(wav_media(wav_bytes()))), timeout=120)
            try:
                for stage in STAGES:
                    assert wait_for(probe / f"held-{stage}"), f"the long transcript never reached {stage}"
                    checked = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    assert checked.status == health_pb2.HealthCheckResponse.SERVING
                    if stage == "parse_obj":  # another call is answered meanwhile, from start to end
                        fake.turns = list(DEFAULT_TURNS)  # its transcript: the long one's was already sent
                        short = daemon.stub.Generate(
                            pb.GenerateRequest(request=request_for(wav_media(wav_bytes(0.3)))), timeout=30).answer
                        assert short.transcript.text == SPEAKER_TEXT
                    assert (probe / f"held-{stage}").read_text() == "worker thread"
                    assert not long_call.done()  # held all along
                    (probe / f"release-{stage}").touch()
            finally:
                for stage in STAGES:
                    (probe / f"release-{stage}").touch()
            answer = long_call.result(timeout=120).answer
    assert len(answer.transcript.words) == TURNS * WORDS_PER_TURN
    assert len(answer.transcript.utterances) == TURNS
    assert answer.transcript.utterances[-1].text == long_turns()[-1][3]
    assert answer.transcript.text.startswith("Speaker A: word0-0 word0-1")
