#!/usr/bin/env python
"""The floor under figure 1: CPU per request of the HTTP call alone, without gRPC or the router.

    .venv/bin/python bench/sdk_floor.py [--requests 4000] [--concurrency 64]

Each client runs in its own process pinned to the server core (as the daemon is in run.py) and
sends ``POST /v1/chat/completions`` (streamed, one chunk) to the fake upstream on the other core:

- ``aiohttp``: a bare aiohttp session, raw bytes in and out (what a hand-written forwarder costs);
- ``sdk+aiohttp``: the OpenAI SDK the way the plugin calls it, ``client.post(..., stream=True)``
  with ``DefaultAioHttpClient`` (the plugin's ``http_client: aiohttp``);
- ``sdk+httpx``: the same with the SDK's default transport.

The echo server's CPU per request (figure 1's baseline) is in run.py's output; the router can
be no cheaper than echo + the SDK line. Prints one line per client; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import run

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say something short."}], "stream": True,
        "stream_options": {"include_usage": True}}
CLIENTS = ("aiohttp", "sdk+aiohttp", "sdk+httpx")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _client(kind: str, port: int, requests: int, concurrency: int) -> dict:
    base = f"http://127.0.0.1:{port}/v1"
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()
        raw = json.dumps(BODY).encode()
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

        async def one() -> None:
            async with session.post(f"{base}/chat/completions", data=raw, headers=headers) as response:
                await response.read()

        close = session.close
    else:
        import httpx2
        import openai

        http_client = openai.DefaultAioHttpClient(timeout=60) if kind == "sdk+aiohttp" else None
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base, http_client=http_client, max_retries=0)

        async def one() -> None:
            response = await client.post("/chat/completions", cast_to=httpx2.Response, body=BODY,
                                         options={"timeout": 60.0}, stream=True)
            async for _ in response.aiter_bytes():
                pass
            await response.aclose()

        close = client.close
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> None:
        async with gate:
            await one()

    await asyncio.gather(*(gated() for _ in range(min(500, requests))))  # warm up: connections, imports
    t0, c0 = time.perf_counter(), _cpu()
    await asyncio.gather(*(gated() for _ in range(requests)))
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    await close()
    return {"client": kind, "rps": requests / seconds, "cpu_ms": cpu * 1000 / requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opt = parser.parse_args()
    if opt.client:
        os.sched_setaffinity(0, {run.SERVER_CORE})  # importing run pinned this process to the client core
        print(json.dumps(asyncio.run(_client(opt.client, opt.port, opt.requests, opt.concurrency))))
        return
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-floor-"))
    fake = run.spawn_fake("upstream", workdir)
    try:
        print(f"HTTP call alone, c={opt.concurrency}, {opt.requests} requests, client pinned to core {run.SERVER_CORE}")
        for kind in CLIENTS:
            out = subprocess.run([run.PY, __file__, "--client", kind,
                                  "--port", fake.address, "--requests", str(opt.requests),
                                  "--concurrency", str(opt.concurrency)],
                                 capture_output=True, text=True, timeout=600, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {kind:12s} {result['rps']:7.0f} req/s   {result['cpu_ms']:.3f} ms CPU per request")
    finally:
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
