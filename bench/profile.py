#!/usr/bin/env python
"""Profile mmrouter under the benchmark's load with py-spy; print where the server's time goes.

    .venv/bin/pip install py-spy          # not a project dependency
    .venv/bin/python bench/profile.py                     # unary Generate, c=64, 10 s
    .venv/bin/python bench/profile.py --mode stream --openai 'http_client: aiohttp'

Writes the collapsed stacks (``--out``, default /tmp/mmrouter-profile.txt; flamegraph.pl or
speedscope read them) and prints the top frames by inclusive and by self samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import run  # pins this process to the client core (before grpc starts threads)


def summarise(collapsed: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # py-spy can print a garbled frame name across a line break
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        self_[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in self_.most_common(top)]
    return "\n".join(out)


async def drive(target: run.Target, mode: str, concurrency: int, seconds: float) -> run.Run:
    call = (lambda i: target.unary()) if mode == "unary" else (lambda i: target.stream())
    return await run.load(call, concurrency, seconds, target.proc.pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--openai", default="", help="extra providers.openai settings, e.g. 'http_client: aiohttp'")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mmrouter-profile.txt"))
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--native", action="store_true", help="include native frames (py-spy --native)")
    opt = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(run.PY).parent / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-profile-"))
    fake = run.spawn_fake("upstream", workdir)
    router = run.spawn_router("router", workdir, int(fake.address), f", {opt.openai}" if opt.openai else "")

    async def go() -> run.Run:
        target = run.Target(router)
        await drive(target, opt.mode, opt.concurrency, 1.0)  # warm up (lazy SDK import)
        spy = subprocess.Popen([py_spy, "record", "--pid", str(router.pid), "--rate", "250", "--format", "raw",
                                "--duration", str(int(opt.seconds)), "--output", str(opt.out)]
                               + (["--native"] if opt.native else ["--nonblocking"]),  # native needs blocking
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        result = await drive(target, opt.mode, opt.concurrency, opt.seconds)
        spy.wait(60)
        await target.close()
        return result

    try:
        result = asyncio.run(go())
    finally:
        router.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{opt.mode} c={opt.concurrency}: {result.rps:.0f} req/s, server CPU {result.cpu_ms_per_req:.3f} ms/req,"
          f" {result.cpu_ms_per_item * 1000:.1f} us/item")
    print(summarise(opt.out, opt.top))


if __name__ == "__main__":
    main()
