#!/usr/bin/env python
"""The daemon's resident memory after a burst of calls with large images, and once it has idled.

    .venv/bin/python bench/memory_trim.py [--calls 96] [--concurrency 16] [--mib 6]

A router (one rule to openai/gpt-4o, the OpenAI plugin pointed at bench/fake_upstream.py) gets ``--calls``
Generate calls, ``--concurrency`` at a time, each with an inline PNG of about ``--mib`` MiB. Printed: RSS before,
its peak (VmHWM), RSS right after the burst, and RSS after the daemon idled past router.memory.TRIM_SECONDS
(when it gives the freed memory back, see router/memory.py). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import run  # pins this process to the client core (before grpc starts threads)
from mmrouter.v1 import router_pb2 as pb

from router.memory import TRIM_SECONDS


def noisy_png(mib: float) -> bytes:
    """A PNG of about ``mib`` MiB that does not compress (random pixels), so the request is that large."""
    side = int((mib * (1 << 20) / 3) ** 0.5)
    raw = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


async def burst(target: run.Target, image: bytes, calls: int, concurrency: int) -> None:
    request = pb.GenerateRequest(request=pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[
        pb.Part(text="What is in this picture?"),
        pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=image))])]))
    queue = list(range(calls))

    async def worker() -> None:
        while queue:
            queue.pop()
            await target.stub.Generate(request, timeout=120)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mib", type=float, default=6.0)
    opt = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-trim-"))
    fake = run.spawn_fake("upstream", workdir)
    router = run.spawn_router("router", workdir, int(fake.address), "")
    image = noisy_png(opt.mib)

    async def go() -> None:
        target = run.Target(router)
        await target.unary()  # warm up (the SDK's import)
        before = run.status_mib(router.pid, "VmRSS")
        started = time.monotonic()
        await burst(target, image, opt.calls, opt.concurrency)
        took = time.monotonic() - started
        peak, after = run.status_mib(router.pid, "VmHWM"), run.status_mib(router.pid, "VmRSS")
        await asyncio.sleep(TRIM_SECONDS * 1.5 + 1)
        idle = run.status_mib(router.pid, "VmRSS")
        await target.close()
        print(f"{opt.calls} calls with a {len(image) / (1 << 20):.1f} MiB image, {opt.concurrency} at a time, "
              f"in {took:.1f} s")
        print(f"router RSS before {before:.0f} MiB, peak {peak:.0f} MiB, right after {after:.0f} MiB, "
              f"after {TRIM_SECONDS * 1.5 + 1:.0f} s idle {idle:.0f} MiB")

    try:
        asyncio.run(go())
    finally:
        router.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
