"""The clips of a transcription are billed as each one is transcribed, through the running daemon: the real
``openai`` and ``assemblyai`` SDKs talk to the fakes (tests/fakes/openai.py, tests/fakes/assemblyai.py).

A two-clip transcription cut by its deadline, or cancelled by its client, while its second clip was being
transcribed recorded $0, although the first clip had been transcribed and billed: both plugins kept the
clips' usage to the end, or to an ``except Exception`` that a cancellation (a BaseException) never reaches.
Each clip's usage is now reported as soon as it is transcribed; the reports add up to the whole call's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

from router.sessions import SessionStore
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.base import Recorded, Reply
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

AAI_KEY = "aai-usage-key-4e2a"

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 30}}
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{aai}", timeout: 30, poll_interval: 0.05}}
routes:
  - {{name: whisper, match: {{tags: [whisper]}}, use: openai/whisper-1}}
  - {{name: gpt4o, match: {{tags: [gpt4o]}}, use: openai/gpt-4o-transcribe}}
  - {{name: aai, match: {{tags: [aai]}}, use: assemblyai/best}}
default: assemblyai/best
server: {{log_format: json}}
"""

#: The routes (by tag) of the transcribers under test.
TAGS = ["whisper", "gpt4o", "aai"]

#: How long a held clip waits at most for the test to release it (so a broken test never hangs the fake).
HOLD_SECONDS = 30.0


class HoldingOpenAI(FakeOpenAI):
    """The fake OpenAI API, which holds the transcriptions after the first :attr:`answer_first` (each answered
    once :attr:`release` is set, or after :data:`HOLD_SECONDS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer_first: int | None = None
        self.release = threading.Event()
        self.transcriptions = 0
        self._count = threading.Lock()

    def handle(self, request: Recorded, reply: Reply) -> None:
        if request.method == "POST" and request.path == "/v1/audio/transcriptions":
            with self._count:
                self.transcriptions += 1
                held = self.answer_first is not None and self.transcriptions > self.answer_first
            if held:
                self.release.wait(HOLD_SECONDS)
        super().handle(request, reply)


@pytest.fixture
def openai_fake() -> Iterator[HoldingOpenAI]:
    server = HoldingOpenAI().start()
    yield server
    server.release.set()
    server.stop()


@pytest.fixture
def aai_fake() -> Iterator[FakeAssemblyAI]:
    with FakeAssemblyAI(api_key=AAI_KEY) as server:
        yield server


@pytest.fixture
def daemon(start_daemon, openai_fake, aai_fake):
    return start_daemon(CONFIG.format(openai=openai_fake.base_url, aai=aai_fake.url),
                        env={"OPENAI_TEST_KEY": OPENAI_KEY, "AAI_TEST_KEY": AAI_KEY})


def hold_second_clip(tag: str, openai_fake: HoldingOpenAI, aai_fake: FakeAssemblyAI) -> None:
    """Make the transcriber of ``tag`` transcribe the first clip of the next call and hold its second."""
    if tag == "aai":  # the transcripts after the first of those the fake holds never complete
        assert wait_for(lambda: len(aai_fake.deleted) == len(aai_fake.transcripts))  # the calls before: done
        aai_fake.transcripts.clear()
        aai_fake.later_statuses = ("queued",) + ("processing",) * 100_000
    else:
        openai_fake.transcriptions = 0
        openai_fake.answer_first = 1


def transcription(tag: str, clips: int) -> pb.MultimodalRequest:
    """A transcription of ``clips`` audio clips (2 s, 5 s, ...), routed by ``tag``."""
    media = [pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(2.0 + 3 * n)) for n in range(clips)]
    return text_request("", media=media, options=pb.Options(task=pb.TASK_TRANSCRIBE),
                        hints=pb.RoutingHints(tags=[tag]))


def access_lines(daemon, method: str) -> list[dict]:
    """The daemon's JSON access lines of ``method`` calls."""
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("method") == method]


def stats_rows(daemon, purpose: str) -> list[dict]:
    """The statistics rows of ``purpose`` (the daemon writes them within moments of the call's end)."""
    store = SessionStore(daemon.data_dir / "sessions.sqlite")
    try:
        found: list[dict] = []

        def written() -> bool:
            found[:] = [row for row in store.stats() if row["purpose"] == purpose]
            return bool(found)

        assert wait_for(written), f"no {purpose!r} row in the statistics"
        return found
    finally:
        store.close()


def one_clip_usage(daemon, tag: str) -> pb.Usage:
    """The usage of a whole one-clip transcription (what the first clip of a longer one costs)."""
    usage = daemon.stub.Generate(pb.GenerateRequest(request=transcription(tag, 1)), timeout=30).answer.usage
    assert usage.cost_usd > 0
    return usage


@pytest.mark.parametrize("tag", TAGS)
def test_a_whole_multi_clip_transcription_costs_the_sum_of_its_clips_counted_once(daemon, tag) -> None:
    clip = one_clip_usage(daemon, tag)
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=transcription(tag, 2)), timeout=30))
    total = events[-1].done.answer.usage
    assert total.cost_usd == pytest.approx(2 * clip.cost_usd)
    assert total.audio_seconds == pytest.approx(2 * clip.audio_seconds)
    assert total.input_tokens == 2 * clip.input_tokens
    parts = [e.usage for e in events if e.HasField("usage")]
    assert len(parts) == 2  # one per clip, as each was transcribed
    assert sum(p.cost_usd for p in parts) == pytest.approx(total.cost_usd)


@pytest.mark.parametrize("tag", TAGS)
def test_a_transcription_cancelled_during_its_second_clip_keeps_the_first_clip_s_cost(
        daemon, openai_fake, aai_fake, tag) -> None:
    clip = one_clip_usage(daemon, tag)
    hold_second_clip(tag, openai_fake, aai_fake)
    call = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=transcription(tag, 2)), timeout=30)
    for event in call:
        if event.HasField("usage"):  # the first clip's, reported once transcribed: the second is held
            assert event.usage.cost_usd == pytest.approx(clip.cost_usd)
            call.cancel()
            break
    else:
        pytest.fail("no usage event before the end of the call")

    assert wait_for(lambda: len(access_lines(daemon, "StreamGenerate")) == 1)
    [line] = access_lines(daemon, "StreamGenerate")
    assert line["code"] == "CANCELLED"
    assert line["cost_usd"] == pytest.approx(clip.cost_usd)
    [row] = stats_rows(daemon, "answer (cancelled)")
    assert row["cost_usd"] == pytest.approx(clip.cost_usd)
    assert row["audio_seconds"] == pytest.approx(clip.audio_seconds)


@pytest.mark.parametrize("tag", TAGS)
def test_a_transcription_past_its_deadline_during_its_second_clip_keeps_the_first_clip_s_cost(
        daemon, openai_fake, aai_fake, tag) -> None:
    clip = one_clip_usage(daemon, tag)
    hold_second_clip(tag, openai_fake, aai_fake)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=transcription(tag, 2)), timeout=4)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    [row] = stats_rows(daemon, "answer (failed)")  # PROVIDER_TIMEOUT: the deadline is the provider's failure
    assert row["cost_usd"] == pytest.approx(clip.cost_usd)
    assert row["audio_seconds"] == pytest.approx(clip.audio_seconds)
    assert wait_for(lambda: len(access_lines(daemon, "Generate")) == 2)
    cut = access_lines(daemon, "Generate")[-1]
    assert cut["code"] == "DEADLINE_EXCEEDED"
    assert cut["cost_usd"] == pytest.approx(clip.cost_usd)
