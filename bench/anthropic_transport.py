#!/usr/bin/env python
"""CPU per streamed call of the Anthropic plugin on each of the SDK's transports (``http_client``).

    .venv/bin/python bench/anthropic_transport.py [--calls 600] [--concurrency 10] [--rounds 2] [--chunks 4]

The fake Messages API of the tests (``tests/fakes/anthropic.py``) runs in its own process on the
client core; the plugin (``AnthropicProvider.generate``, the real SDK) runs in this process pinned to
the server core, alternating the transports round by round so that both see the same machine.
Prints CPU ms per call for each; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run  # noqa: E402  (importing it pins this process to the client core; main() moves it)

FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fakes.anthropic import FakeAnthropic
with FakeAnthropic() as fake:
    fake.chunks = [f"tok{{i}} " for i in range({chunks})]
    print(fake.url, flush=True)
    time.sleep(3600)
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(url: str, transport: str, calls: int, concurrency: int) -> float:
    """CPU ms per call of ``calls`` streamed calls, ``concurrency`` at a time, after a warm-up."""
    from mmrouter_anthropic import AnthropicProvider

    from router import CallContext, Message, Part, Request, Role
    from tests.fakes.anthropic import API_KEY

    provider = AnthropicProvider({"api_key": API_KEY, "base_url": url, "http_client": transport})
    model = provider.model("claude-sonnet-4-6")
    assert model is not None
    request = Request([Message(Role.USER, [Part(text="Say something short.")])])

    async def one() -> None:
        async for _event in provider.generate(request, model, CallContext(request_id="bench")):
            pass

    try:
        for _ in range(20):
            await one()
        started = _cpu()

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        return (_cpu() - started) * 1000 / (calls // concurrency * concurrency)
    finally:
        await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=4, help="text deltas per answer")
    opt = parser.parse_args()
    fake = subprocess.Popen(["taskset", "-c", str(run.CLIENT_CORE), sys.executable, "-c", FAKE.format(root=str(ROOT), chunks=opt.chunks)],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = (fake.stdout.readline() if fake.stdout else "").strip()
        if not url:
            raise SystemExit("the fake Messages API did not start")
        os.sched_setaffinity(0, {run.SERVER_CORE})
        print(f"Anthropic plugin, streamed calls of {opt.chunks} text deltas at concurrency {opt.concurrency},"
              f" pinned to core {run.SERVER_CORE}")
        for round_ in range(opt.rounds):
            for transport in ("aiohttp", "httpx"):
                ms = asyncio.run(measure(url, transport, opt.calls, opt.concurrency))
                print(f"  round {round_ + 1}  http_client: {transport:8} {ms:5.2f} ms CPU per call", flush=True)
    finally:
        fake.kill()


if __name__ == "__main__":
    main()
