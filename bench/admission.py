#!/usr/bin/env python
"""Admission and event-loop figures: a burst of large calls over server.max_concurrent_calls, requests of
many messages while health checks are sent, and reloads (SIGHUP) of a large routing file meanwhile.

    .venv/bin/python bench/admission.py                       # every section (~1.5 minutes)
    .venv/bin/python bench/admission.py --only burst --calls 300 --mib 7
    .venv/bin/python bench/admission.py --only bigconv --messages 99999 --at-once 8
    .venv/bin/python bench/admission.py --only reload --rules 2000 --reloads 3

- ``burst``: a daemon with ``max_concurrent_calls: 2`` whose upstream (bench/fake_upstream.py) answers after
  20 s; ``--calls`` Generate calls at once, each on its own connection, each with an inline ``--mib`` MiB PNG.
  Prints the outcomes, the daemon's peak RSS (VmHWM, and RSS polled every 0.1 s) and when the refusals came
  (seconds from the first call). A refusal before the request is read keeps the peak near that of the two
  admitted calls; one after it grows with the calls refused.
- ``bigconv``: ``--at-once`` Generate calls of ``--messages`` messages each (100,000 is within every limit),
  while health checks are sent one after another: prints the health checks' latency (p50, p99, max) during
  the calls, and how long the calls took. Their conversion on the event loop held the health checks for
  seconds.
- ``reload``: ``--reloads`` SIGHUPs, one after another, each reloading a routing file of ``--rules`` rules (each
  with conditions, a target and fallbacks, as an operator's large file), while health checks are sent: prints how
  long each reload took (SIGHUP to its "rules reloaded" line) and the health checks' latency meanwhile (p50,
  max: the longest wait). Reading and parsing the file on the event loop held every call and health check
  for as long (seconds).

The daemon runs on core 0 (taskset), this process and the fake upstream on core 1, as bench/run.py.
Loopback only, on ports 43150-43151 (``--port``); every wait is bounded. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from mmrouter.v1 import router_pb2 as pb
from PIL import Image
from run import BENCH, CLIENT_CORE, PY, SERVER_CORE, Proc, beside_health_checks, reset_peak, spawn, status_mib

OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
           ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel


def png(size: int) -> bytes:
    """A valid PNG of ``size`` bytes: a 5x4 image with a private chunk of padding."""
    out = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 20, 30)).save(out, format="PNG")
    small = out.getvalue()
    pad = max(0, size - len(small) - 12)
    data = bytes(pad)
    chunk = struct.pack(">I", pad) + b"prIv" + data + struct.pack(">I", zlib.crc32(b"prIv" + data))
    return small[:-12] + chunk + small[-12:]


def start(workdir: Path, port: int, calls: int, delay: float, log_level: str = "warning") -> tuple[Proc, Proc]:
    """The fake upstream (answering after ``delay`` s) on ``port + 1`` and the daemon on ``port``, its
    configuration in ``workdir / "router.yaml"``."""
    fake = spawn("fake", [PY, str(BENCH / "fake_upstream.py"), "--port", str(port + 1), "--delay", str(delay)],
                 CLIENT_CORE, workdir)
    config = workdir / "router.yaml"
    config.write_text(f"""\
server:
  max_concurrent_calls: {calls}
  max_message_bytes: 67108864
  inline_limit_bytes: 33554432
  log_level: {log_level}
providers:
  openai: {{base_url: "http://127.0.0.1:{port + 1}/v1", api_key: "sk-bench-not-a-key", timeout: 120}}
default: openai/gpt-4o
""")
    router = spawn("router", [PY, "-m", "router", "serve", "--config", str(config), "--address",
                              f"127.0.0.1:{port}", "--data-dir", str(workdir / "data")], SERVER_CORE, workdir)
    return fake, router


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call, else its code."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return error.code().name


async def burst(opt: argparse.Namespace, workdir: Path) -> None:
    fake, router = start(workdir, opt.port, 2, 20.0)
    try:
        pid = router.popen.pid
        rss_before = status_mib(pid, "VmRSS")
        peak_reset = reset_peak(pid)
        image = png(int(opt.mib * (1 << 20)))
        request = pb.GenerateRequest(request=pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[
            pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=image)),
            pb.Part(text="what is it?")])]))
        serialized = request.SerializeToString()  # once: the client's own work stays small
        channels = [grpc.aio.insecure_channel(router.address, options=OPTIONS) for _ in range(opt.calls)]
        outcomes: collections.Counter[str] = collections.Counter()
        refused_at: list[float] = []
        polled = [0.0]

        async def poll() -> None:
            while True:
                polled[0] = max(polled[0], status_mib(pid, "VmRSS"))
                await asyncio.sleep(0.1)

        async def one(channel: grpc.aio.Channel, started: float) -> None:
            try:
                generate = channel.unary_unary("/mmrouter.v1.RouterService/Generate",
                                               request_serializer=bytes, response_deserializer=pb.GenerateResponse.FromString)
                await generate(serialized, timeout=120)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                reason = reason_of(exc)
                outcomes[reason] += 1
                if reason == "TOO_MANY_CALLS":
                    refused_at.append(time.monotonic() - started)

        poller = asyncio.create_task(poll())
        started = time.monotonic()
        await asyncio.gather(*(one(channel, started) for channel in channels))
        poller.cancel()
        for channel in channels:
            await channel.close()
        print(f"burst: {opt.calls} calls with a {opt.mib:g} MiB image each, at max_concurrent_calls: 2")
        print(f"  outcomes {dict(outcomes)}")
        peak = f"VmHWM {status_mib(pid, 'VmHWM'):.0f} MiB, " if peak_reset else ""
        print(f"  daemon RSS before {rss_before:.0f} MiB; peak {peak}polled {polled[0]:.0f} MiB; "
              f"after {status_mib(pid, 'VmRSS'):.0f} MiB")
        if refused_at:
            refused_at.sort()
            print(f"  refusals after (s): first {refused_at[0]:.2f}, median {statistics.median(refused_at):.2f}, "
                  f"last {refused_at[-1]:.2f}")
    finally:
        router.stop()
        fake.stop()


async def bigconv(opt: argparse.Namespace, workdir: Path) -> None:
    fake, router = start(workdir, opt.port, 1024, 0.0)
    try:
        messages = [pb.Message(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT, parts=[pb.Part(text=f"m{i}")])
                    for i in range(opt.messages - 1)]
        messages.append(pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="last?")]))
        request = pb.GenerateRequest(request=pb.MultimodalRequest(messages=messages))

        async def one(stub) -> tuple[float, str]:
            sent = time.perf_counter()
            try:
                await stub.Generate(request, timeout=120)
                outcome = "OK"
            except grpc.aio.AioRpcError as exc:
                outcome = reason_of(exc)
            return time.perf_counter() - sent, outcome

        async def calls(stub) -> list[tuple[float, str]]:
            return await asyncio.gather(*(one(stub) for _ in range(opt.at_once)))

        results, latencies = await beside_health_checks(router.address, OPTIONS, calls, settle=0.5)
        during = sorted(latency * 1000 for latency in latencies)
        print(f"bigconv: {opt.at_once} calls at once of {opt.messages} messages ({request.ByteSize() / 1e6:.1f} MB each)")
        print(f"  calls took (s): {', '.join(f'{s:.2f} {o}' for s, o in results)}")
        if during:
            p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
            print(f"  health checks during the calls: n={len(during)} p50 {statistics.median(during):.1f} ms, "
                  f"p99 {p99:.1f} ms, max {during[-1]:.1f} ms")
    finally:
        router.stop()
        fake.stop()


def routing_file(port: int, rules: int, version: int) -> str:
    """A routing file of ``rules`` rules, each with conditions, a target and fallbacks (``version`` is in every
    rule's metadata condition: each version changes every rule), on the fake upstream at ``port + 1``."""
    modalities, targets = ("image", "audio", "video", "document"), ("openai/gpt-4o", "openai/gpt-4o-mini")
    lines = ["server: {log_level: info}", "providers:",
             f'  openai: {{base_url: "http://127.0.0.1:{port + 1}/v1", api_key: "sk-bench-not-a-key", timeout: 120}}',
             "routes:"]
    for i in range(rules):
        lines += [f"  - name: team-{i}-{modalities[i % 4]}",
                  "    match:",
                  f"      inputs_any: [{modalities[i % 4]}, text]",
                  "      task: [chat]",
                  f"      tags: [team-{i}]",
                  f"      metadata: {{tenant: t{i}, version: v{version}}}",
                  f"      input_tokens: {{max: {1000 + i}}}",
                  f"    use: {targets[i % 2]}",
                  f"    fallback: [{targets[(i + 1) % 2]}, local/extract]"]
    return "\n".join([*lines, "default: openai/gpt-4o", ""])


async def reload(opt: argparse.Namespace, workdir: Path) -> None:
    fake, router = start(workdir, opt.port, 1024, 0.0, log_level="info")
    config = workdir / "router.yaml"
    try:
        async def reloads(stub) -> list[float]:
            took = []
            for version in range(opt.reloads):
                new = workdir / "router.yaml.new"  # replaced atomically, as the README asks
                new.write_text(routing_file(opt.port, opt.rules, version))
                new.replace(config)
                seen = router.log.read_text().count("rules reloaded")
                sent = time.perf_counter()
                os.kill(router.pid, signal.SIGHUP)
                deadline = time.monotonic() + 300
                while router.log.read_text().count("rules reloaded") == seen:
                    if time.monotonic() > deadline or "reload refused" in router.log.read_text():
                        raise RuntimeError(f"the reload did not end:\n{router.log.read_text()[-3000:]}")
                    await asyncio.sleep(0.02)
                took.append(time.perf_counter() - sent)
                await asyncio.sleep(1)  # probes answered between reloads: none waits across two
            return took

        took, latencies = await beside_health_checks(router.address, OPTIONS, reloads, settle=0.5)
        during = sorted(latency * 1000 for latency in latencies)
        print(f"reload: {opt.reloads} SIGHUPs, each of a {opt.rules}-rule file ({config.stat().st_size / 1e3:.0f} kB)")
        print(f"  reloads took (s): {', '.join(f'{s:.2f}' for s in took)}")
        if during:
            print(f"  health checks during the reloads: n={len(during)} p50 {statistics.median(during):.1f} ms, "
                  f"max {during[-1]:.1f} ms")
    finally:
        router.stop()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("burst", "bigconv", "reload"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--mib", type=float, default=7.0)
    parser.add_argument("--messages", type=int, default=99_999)
    parser.add_argument("--at-once", type=int, default=8)
    parser.add_argument("--rules", type=int, default=2000)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--port", type=int, default=43150)
    opt = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-admission-"))
    try:
        if opt.only in (None, "burst"):
            asyncio.run(burst(opt, workdir))
        if opt.only in (None, "bigconv"):
            (workdir / "bigconv").mkdir()
            asyncio.run(bigconv(opt, workdir / "bigconv"))
        if opt.only in (None, "reload"):
            (workdir / "reload").mkdir()
            asyncio.run(reload(opt, workdir / "reload"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
