#!/usr/bin/env python
"""Health checks while long AssemblyAI transcripts complete (QA callcenter finding 1).

    .venv/bin/python bench/long_transcript.py                   # 1, then 10 calls at once (~30 s)
    .venv/bin/python bench/long_transcript.py --at-once 5 --turns 1800

The AssemblyAI fake of the tests (tests/fakes/assemblyai.py, in this process) answers every transcript with
a one-hour call by default: ``--turns`` turns of 5-25 words (600: about 9,000 words, 1.8 MB of JSON, as an
hour of conversation). ``--at-once`` diarized Generate calls run together (after one alone), while health
checks are sent one after another, 20 ms apart: prints how long each call took and the health checks'
latency (p50, max) during the calls. The SDK's parse of a completed transcript (pydantic, every word twice)
and its conversion used to run on the event loop, holding every health check and other call for seconds.

The daemon runs on core 0 (taskset), this process and the fake on core 1, as bench/run.py. Loopback only,
the daemon on ``--port`` (43160); every wait is bounded. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from mmrouter.v1 import router_pb2 as pb
from run import PY, SERVER_CORE, beside_health_checks, spawn

from tests.fakes.assemblyai import FakeAssemblyAI
from tests.media_factory import wav

KEY = "aai-bench-key"
OPTIONS = [("grpc.max_receive_message_length", 256 << 20)]


def conversation(turns: int) -> list[tuple[str, int, int, str]]:
    """``turns`` turns of 5-25 words, two speakers, 400 ms a word (the same each run)."""
    rng = random.Random(2)
    out, at = [], 0
    for i in range(turns):
        n = rng.randint(5, 25)
        text = " ".join(rng.choice(["yes", "the", "bill", "refund", "please", "account"]) for _ in range(n)) + "."
        out.append(("A" if i % 2 == 0 else "B", at, at + n * 400, text))
        at += n * 400 + 500
    return out


async def measure(address: str, at_once: int) -> None:
    """``at_once`` diarized calls together, health checks sent meanwhile; prints their figures."""
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5, 8000), filename="call.wav")
    request = pb.GenerateRequest(request=pb.MultimodalRequest(
        messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(media=media)])],
        options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True)))
    async def one(stub) -> tuple[float, str]:
        sent = time.perf_counter()
        try:
            answer = (await stub.Generate(request, timeout=120)).answer
            outcome = f"{len(answer.transcript.words)} words"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        return time.perf_counter() - sent, outcome

    async def calls(stub) -> list[tuple[float, str]]:
        return await asyncio.gather(*(one(stub) for _ in range(at_once)))

    results, latencies = await beside_health_checks(address, OPTIONS, calls)
    print(f"{at_once} call(s) at once: took (s) {', '.join(f'{s:.2f}' for s, _ in results)}; "
          f"{sorted({o for _, o in results})}")
    if latencies:
        print(f"  health checks during the calls: n={len(latencies)}, p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--at-once", type=int, default=10)
    parser.add_argument("--port", type=int, default=43160)
    opt = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-long-transcript-"))
    fake = FakeAssemblyAI(api_key=KEY, turns=conversation(opt.turns), audio_duration=3600).start()
    router = None
    try:
        config = workdir / "router.yaml"
        config.write_text(f"""\
server: {{log_level: warning}}
providers:
  assemblyai: {{api_key: {KEY}, base_url: "{fake.url}", poll_interval: 0.1}}
routes:
  - name: diarization
    match: {{inputs_any: [audio], diarization: true}}
    use: assemblyai/best
default: assemblyai/best
""")
        router = spawn("router", [PY, "-m", "router", "serve", "--config", str(config), "--address",
                                  f"127.0.0.1:{opt.port}", "--data-dir", str(workdir / "data")], SERVER_CORE, workdir)
        words = sum(len(t[3].split()) for t in fake.turns)
        print(f"AssemblyAI fake answers {opt.turns} turns, {words} words; the daemon on core {SERVER_CORE}")
        asyncio.run(measure(router.address, 1))
        asyncio.run(measure(router.address, opt.at_once))
    finally:
        if router is not None:
            router.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
