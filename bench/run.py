#!/usr/bin/env python
"""mmrouter benchmark (issue #9): one command, every figure with its target and pass/fail.

    .venv/bin/python bench/run.py            # everything, ~5-8 minutes
    .venv/bin/python bench/run.py --quick    # smaller/shorter, ~1.5 minutes (figures labelled)
    .venv/bin/python bench/run.py --only unary,stream   # sections: unary stream upload startup rss slow

Layout (2 cores): the servers under test (mmrouter, the bare grpc.aio echo server) are pinned to
core 0 with taskset; this process (the grpc.aio load generator) and the fake OpenAI upstream run on
core 1. Server CPU is read from /proc/<pid>/stat (utime+stime, all threads), memory from
/proc/<pid>/status (VmRSS, VmHWM; the peak is reset through /proc/<pid>/clear_refs). Loopback only;
every loop is bounded by a duration, a count or a timeout. See bench/README.md.
"""

from __future__ import annotations

import os

SERVER_CORE, CLIENT_CORE = 0, 1
if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() >= 2:
    os.sched_setaffinity(0, {CLIENT_CORE})  # before grpc starts its threads: they inherit it

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.metadata import entry_points  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from mmrouter.v1 import router_pb2 as pb  # noqa: E402
from mmrouter.v1 import router_pb2_grpc  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024
LIMIT = 64 * MiB
CHANNEL_OPTIONS = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]
SECTIONS = ("unary", "stream", "upload", "startup", "rss", "slow")
SDK_MODULES = ("openai", "anthropic", "google.genai", "assemblyai", "httpx", "httpx2", "aiohttp")
STREAM_CHUNKS = 50


# -- /proc -----------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- processes -------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, argv: list[str], core: int, workdir: Path, *, env: dict | None = None,
          timeout: float = 60) -> Proc:
    """Start ``argv`` pinned to ``core``; wait for it to write its ready file (address or port)."""
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env.update(env or {})
    popen = subprocess.Popen(["taskset", "-c", str(core), *argv, "--ready-file", str(ready)],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not (ready.exists() and ready.read_text()):
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{name} did not start in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    return Proc(name, popen, log, ready.read_text().strip())


def router_config(upstream_port: int, extra_openai: str = "") -> str:
    return f"""\
providers:
  openai: {{base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: "sk-bench-not-a-key", timeout: 60{extra_openai}}}
routes:
  - name: bench
    use: openai/gpt-4o
default: openai/gpt-4o
"""


#: Extra providers.openai settings of every router under test (--openai).
OPENAI_EXTRA = ""


def spawn_router(name: str, workdir: Path, upstream_port: int, extra_openai: str | None = None,
                 python_flags: tuple[str, ...] = ()) -> Proc:
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(router_config(upstream_port, OPENAI_EXTRA if extra_openai is None else extra_openai))
    data = workdir / f"{name}-data"
    shutil.rmtree(data, ignore_errors=True)
    daemon = [str(BENCH / "whatif.py")] if os.environ.get("MMROUTER_WHATIF") else ["-m", "router"]
    proc = spawn(name, [PY, *python_flags, *daemon, "serve", "--config", str(cfg),
                        "--address", "127.0.0.1:0", "--data-dir", str(data)], SERVER_CORE, workdir)
    return proc


def spawn_fake(name: str, workdir: Path, delay: float = 0.0) -> Proc:
    return spawn(name, [PY, str(BENCH / "fake_upstream.py"), "--port", "0", "--delay", str(delay)],
                 CLIENT_CORE, workdir)


# -- requests --------------------------------------------------------------------------------------

def chat_request(chunks: int = 0) -> pb.MultimodalRequest:
    return pb.MultimodalRequest(
        messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Say something short.")])],
        options=pb.Options(max_output_tokens=chunks),
    )


class Target:
    """One gRPC server under test."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.channel = grpc.aio.insecure_channel(proc.address, options=CHANNEL_OPTIONS)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.unary_req = pb.GenerateRequest(request=chat_request())
        self.stream_req = pb.StreamGenerateRequest(request=chat_request(STREAM_CHUNKS))

    async def unary(self) -> int:
        await self.stub.Generate(self.unary_req, timeout=60)
        return 1

    async def stream(self) -> int:
        n = 0
        async for event in self.stub.StreamGenerate(self.stream_req, timeout=60):
            if event.HasField("text_delta"):
                n += 1
        if n != STREAM_CHUNKS:
            raise RuntimeError(f"got {n} chunks, expected {STREAM_CHUNKS}")
        return n

    async def close(self) -> None:
        await self.channel.close()


class DirectHTTP:
    """Calls the fake upstream directly: raw HTTP/1.1 keep-alive, one connection per worker."""

    BODY = json.dumps({"messages": [{"role": "user", "content": "Say something short."}], "model": "gpt-4o",
                       "stream": True, "stream_options": {"include_usage": True}}).encode()

    def __init__(self, port: int) -> None:
        self.port = port
        self.conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                        f"content-type: application/json\r\ncontent-length: {len(self.BODY)}\r\n\r\n").encode() + self.BODY

    async def call(self, worker: int) -> int:
        if worker not in self.conns:
            self.conns[worker] = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.conns[worker]
        writer.write(self.request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 30)
        if b"[DONE]" not in body:
            raise RuntimeError("bad upstream answer")
        return 1

    async def close(self) -> None:
        for _, writer in self.conns.values():
            writer.close()
        self.conns.clear()


# -- load ------------------------------------------------------------------------------------------

@dataclass
class Run:
    requests: int
    items: int
    seconds: float
    cpu: float  # server CPU seconds during the run
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_req(self) -> float:
        return self.cpu * 1000 / max(1, self.requests)

    @property
    def cpu_ms_per_item(self) -> float:
        return self.cpu * 1000 / max(1, self.items)

    @property
    def util(self) -> float:
        return self.cpu / self.seconds


async def load(call, concurrency: int, seconds: float, pid: int | None, warmup: float) -> Run:
    """Run ``call(worker)`` from ``concurrency`` workers for ``seconds`` (after a warm-up)."""
    latencies: list[float] = []
    counters = {"requests": 0, "items": 0}

    async def worker(i: int, until: float, record: bool) -> None:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            items = await call(i)
            if record:
                latencies.append(time.perf_counter() - t0)
                counters["requests"] += 1
                counters["items"] += items

    if warmup > 0:
        await asyncio.gather(*(worker(i, time.perf_counter() + warmup, False) for i in range(concurrency)))
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i, t0 + seconds, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid) if pid else 0.0
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return Run(counters["requests"], counters["items"], elapsed, cpu1 - cpu0, p(0.5), p(0.99))


async def count_load(call, concurrency: int, total: int, timeout: float) -> float:
    """Make exactly ``total`` calls from ``concurrency`` workers; return the seconds taken."""
    remaining = [total]
    deadline = time.monotonic() + timeout

    async def worker(i: int) -> None:
        while remaining[0] > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{total} calls did not finish in {timeout}s")
            remaining[0] -= 1
            await call(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - t0


# -- results ---------------------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    if len(values) < 2:
        return ""
    return f" [{fmt.format(min(values))}-{fmt.format(max(values))}]"


@dataclass
class Results:
    figures: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, value, target, result
    details: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def figure(self, name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        result = "" if ok is None else ("PASS" if ok else "FAIL")
        self.figures.append((name, value, target, result))
        print(f"  -> {name}: {value}  {target}  {result}", flush=True)

    def detail(self, line: str) -> None:
        self.details.append(line)
        print("  " + line, flush=True)

    def table(self) -> str:
        widths = [max(len(row[i]) for row in [("Figure", "Value", "Target", "Result"), *self.figures])
                  for i in range(4)]
        lines = []
        header = ("Figure", "Value", "Target", "Result")
        for row in [header, tuple("-" * w for w in widths), *self.figures]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(lines)


# -- sections --------------------------------------------------------------------------------------

async def section_unary(opt, res: Results, echo: Target, router: Target, direct: DirectHTTP,
                        forwarder: Target) -> None:
    print("== unary Generate: echo vs mmrouter (OpenAI plugin -> fake upstream) vs a bare forwarder", flush=True)
    by: dict[tuple[str, int], list[Run]] = {}
    for c in opt.concurrency:
        for _rep in range(opt.reps):
            for name, target in (("echo", echo), ("router", router), ("fwd", forwarder)):
                run = await load(lambda i, t=target: t.unary(), c, opt.seconds, target.proc.pid, opt.warmup)
                by.setdefault((name, c), []).append(run)
            if c == 1:
                run = await load(direct.call, 1, opt.seconds, None, opt.warmup)
                by.setdefault(("direct", 1), []).append(run)
        for name in ("echo", "router", "fwd", "direct"):
            runs = by.get((name, c))
            if not runs:
                continue
            rps = [r.rps for r in runs]
            res.detail(f"{name:>6} c={c:<3} req/s {med(rps):7.0f}{spread(rps)}  p50 {med([r.p50_ms for r in runs]):6.2f} ms"
                       f"  p99 {med([r.p99_ms for r in runs]):6.2f} ms"
                       + (f"  server CPU {med([r.cpu_ms_per_req for r in runs]):.3f} ms/req"
                          f"  core util {med([r.util for r in runs]) * 100:.0f}%" if name != "direct" else ""))
    res.raw["unary"] = {f"{k[0]}@{k[1]}": [r.__dict__ for r in v] for k, v in by.items()}
    top = max(opt.concurrency)
    ratios = [r.rps / e.rps for r, e in zip(by[("router", top)], by[("echo", top)], strict=True)]
    res.figure(f"1. unary req/s at c={top}: router / echo", f"{med(ratios) * 100:.1f}%{spread([x * 100 for x in ratios], '{:.1f}')}"
               f" ({med([r.rps for r in by[('router', top)]]):.0f} vs {med([r.rps for r in by[('echo', top)]]):.0f} req/s)",
               ">= 50%", med(ratios) >= 0.5)
    for c in opt.concurrency:
        runs = by[("router", c)]
        res.figure(f"   router server CPU per request, c={c}", f"{med([r.cpu_ms_per_req for r in runs]):.3f} ms"
                   f"{spread([r.cpu_ms_per_req for r in runs], '{:.3f}')}"
                   f" (echo {med([r.cpu_ms_per_req for r in by[('echo', c)]]):.3f},"
                   f" bare forwarder {med([r.cpu_ms_per_req for r in by[('fwd', c)]]):.3f} ms)")
    fwd = [f.rps / e.rps for f, e in zip(by[("fwd", top)], by[("echo", top)], strict=True)]
    res.figure(f"   reference: bare grpc.aio -> aiohttp forwarder / echo, c={top}",
               f"{med(fwd) * 100:.1f}%{spread([x * 100 for x in fwd], '{:.1f}')} (no SDK, no routing)")
    if ("direct", 1) in by:
        added = [r.p50_ms - d.p50_ms for r, d in zip(by[("router", 1)], by[("direct", 1)], strict=True)]
        res.figure("2. added p50 latency at c=1 (router - direct upstream)",
                   f"{med(added):.2f} ms{spread(added, '{:.2f}')} (router {med([r.p50_ms for r in by[('router', 1)]]):.2f},"
                   f" direct {med([r.p50_ms for r in by[('direct', 1)]]):.2f}, echo {med([r.p50_ms for r in by[('echo', 1)]]):.2f})",
                   "<= 1.5 ms", med(added) <= 1.5)
        fwd_added = [f.p50_ms - d.p50_ms for f, d in zip(by[("fwd", 1)], by[("direct", 1)], strict=True)]
        res.figure("   reference: bare forwarder added p50 latency at c=1", f"{med(fwd_added):.2f} ms"
                   f"{spread(fwd_added, '{:.2f}')}")


async def section_stream(opt, res: Results, echo: Target, router: Target, forwarder: Target) -> None:
    print(f"== StreamGenerate, {STREAM_CHUNKS} chunks per answer: echo vs mmrouter vs a bare forwarder", flush=True)
    by: dict[tuple[str, int], list[Run]] = {}
    for c in opt.stream_concurrency:
        for _rep in range(opt.reps):
            for name, target in (("echo", echo), ("router", router), ("fwd", forwarder)):
                run = await load(lambda i, t=target: t.stream(), c, opt.seconds, target.proc.pid, opt.warmup)
                by.setdefault((name, c), []).append(run)
        for name in ("echo", "router", "fwd"):
            runs = by[(name, c)]
            res.detail(f"{name:>6} c={c:<3} answers/s {med([r.rps for r in runs]):6.0f}{spread([r.rps for r in runs])}"
                       f"  p50 {med([r.p50_ms for r in runs]):6.2f} ms"
                       f"  server CPU {med([r.cpu_ms_per_item for r in runs]) * 1000:.1f} us/chunk"
                       f"  core util {med([r.util for r in runs]) * 100:.0f}%")
    res.raw["stream"] = {f"{k[0]}@{k[1]}": [r.__dict__ for r in v] for k, v in by.items()}
    c = 16 if 16 in opt.stream_concurrency else opt.stream_concurrency[0]
    ratios = [r.cpu_ms_per_item / e.cpu_ms_per_item for r, e in zip(by[("router", c)], by[("echo", c)], strict=True)]
    per = "" if STREAM_CHUNKS == 50 else f", {STREAM_CHUNKS} chunks per answer (the target is for 50)"
    res.figure(f"3. stream server CPU per chunk at c={c}{per}: router / echo",
               f"{med(ratios):.2f}x{spread(ratios, '{:.2f}')} ({med([r.cpu_ms_per_item for r in by[('router', c)]]) * 1000:.1f}"
               f" vs {med([r.cpu_ms_per_item for r in by[('echo', c)]]) * 1000:.1f} us)", "<= 2x", med(ratios) <= 2)
    fwd = [f.cpu_ms_per_item / e.cpu_ms_per_item for f, e in zip(by[("fwd", c)], by[("echo", c)], strict=True)]
    res.figure(f"   reference: bare grpc.aio -> aiohttp streaming forwarder / echo, c={c}",
               f"{med(fwd):.2f}x{spread(fwd, '{:.2f}')} ({med([r.cpu_ms_per_item for r in by[('fwd', c)]]) * 1000:.1f} us)")


def upload_messages(size: int, chunk: int = MiB):
    """UploadMediaRequest messages: metadata, then ``size`` bytes in ``chunk`` pieces (video/mp4 magic)."""
    first = bytearray(os.urandom(min(chunk, size)))
    first[4:8] = b"ftyp"
    body = bytes(os.urandom(chunk))
    yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_VIDEO, mime_type="video/mp4",
                                                           filename="bench.mp4", size_bytes=size))
    sent = len(first)
    yield pb.UploadMediaRequest(chunk=bytes(first))
    while sent < size:  # bounded by size
        piece = body[: min(chunk, size - sent)]
        sent += len(piece)
        yield pb.UploadMediaRequest(chunk=piece)


async def upload_once(target: Target, size: int) -> tuple[float, float, float, float]:
    """Upload ``size`` bytes; return (MiB/s, peak RSS growth MiB, RSS growth after MiB, server CPU ms/MiB)."""
    pid = target.proc.pid
    can_reset = reset_peak(pid)
    base = status_mib(pid, "VmRSS")
    base_peak = status_mib(pid, "VmHWM")
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    answer = await target.stub.UploadMedia(upload_messages(size), timeout=600)
    seconds = time.perf_counter() - t0
    cpu_ms_per_mib = (cpu_seconds(pid) - cpu0) * 1000 / (size / MiB)
    if answer.size_bytes != size:
        raise RuntimeError(f"uploaded {answer.size_bytes} of {size} bytes")
    peak = status_mib(pid, "VmHWM") - (base if can_reset else base_peak)
    return size / MiB / seconds, max(0.0, peak), status_mib(pid, "VmRSS") - base, cpu_ms_per_mib


#: 20 MiB takes ~60 ms: each repetition uploads it this many times (one figure per repetition).
UPLOADS_PER_REP = 5


async def upload_series(target: Target, size: int, count: int) -> tuple[float, float, float, float]:
    """``count`` uploads back to back: (MiB/s over all, max peak RSS growth, last RSS growth, CPU ms/MiB over all)."""
    runs = [await upload_once(target, size) for _ in range(count)]
    seconds = sum(size / MiB / r[0] for r in runs)
    cpu_ms = sum(r[3] * size / MiB for r in runs)
    return count * size / MiB / seconds, max(r[1] for r in runs), runs[-1][2], cpu_ms / (count * size / MiB)


async def store_cpu_ms_per_mib(workdir: Path, size: int, count: int) -> float:
    """CPU ms per MiB of the router's media store alone (sha256, temp file write, rename), in this thread."""
    from router.media import MediaStore
    from router.types import Modality

    store = MediaStore(workdir / "store-alone", 1 << 40)

    pieces = [m.chunk for m in upload_messages(size) if m.WhichOneof("payload") == "chunk"]

    async def chunks():
        for piece in pieces:
            yield piece

    started = time.thread_time()
    for _ in range(count):
        await store.upload("video/mp4", Modality.VIDEO, size, chunks())
    spent = time.thread_time() - started
    shutil.rmtree(workdir / "store-alone", ignore_errors=True)
    return spent * 1000 / (count * size / MiB)


async def section_upload(opt, res: Results, echo: Target, router: Target) -> None:
    size = 20 * MiB
    print(f"== UploadMedia {size // MiB} MiB in 1 MiB chunks ({UPLOADS_PER_REP} per repetition): echo sink vs mmrouter",
          flush=True)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"echo": [], "router": []}
    for target in (echo, router):  # warm up both
        await upload_once(target, 2 * MiB)
    for _ in range(opt.reps):
        for name, target in (("echo", echo), ("router", router)):
            rows[name].append(await upload_series(target, size, UPLOADS_PER_REP))
    for name, r in rows.items():
        res.detail(f"{name:>6} {med([x[0] for x in r]):7.0f} MiB/s{spread([x[0] for x in r])}"
                   f"  peak RSS growth {med([x[1] for x in r]):5.1f} MiB"
                   f"  server CPU {med([x[3] for x in r]):.2f} ms/MiB")
    alone = await store_cpu_ms_per_mib(router.proc.log.parent, size, UPLOADS_PER_REP)
    res.detail(f"media store alone (sha256 + temp file write + fsync + rename, no gRPC): {alone:.2f} ms CPU/MiB")
    ratios = [r[0] / e[0] for r, e in zip(rows["router"], rows["echo"], strict=True)]
    res.figure(f"4a. upload {size // MiB} MiB: router / echo MiB/s",
               f"{med(ratios) * 100:.1f}%{spread([x * 100 for x in ratios], '{:.1f}')}"
               f" ({med([x[0] for x in rows['router']]):.0f} vs {med([x[0] for x in rows['echo']]):.0f} MiB/s)",
               ">= 75%", med(ratios) >= 0.75)
    peak = med([x[1] for x in rows["router"]])
    res.figure(f"4b. upload {size // MiB} MiB: router peak RSS growth (VmHWM)", f"{peak:.1f} MiB"
               f" (echo {med([x[1] for x in rows['echo']]):.1f} MiB)", f"<= {3 * size // MiB} MiB", peak <= 3 * size / MiB)
    big = opt.big_upload_mib * MiB
    print(f"== UploadMedia {opt.big_upload_mib} MiB through mmrouter", flush=True)
    speed, peak, after, _ = await upload_once(router, big)
    res.detail(f"router {opt.big_upload_mib} MiB upload: {speed:.0f} MiB/s, peak RSS growth {peak:.1f} MiB,"
               f" RSS growth after {after:.1f} MiB")
    label = "1 GiB" if opt.big_upload_mib == 1024 else f"{opt.big_upload_mib} MiB (quick; target is for 1 GiB)"
    res.figure(f"4c. upload {label}: router peak RSS growth", f"{peak:.1f} MiB ({speed:.0f} MiB/s)", "< 100 MiB",
               peak < 100)
    for media in (router.proc.log.parent / "router-data" / "media").glob("*/*"):
        if media.is_file() and media.stat().st_size >= big:
            media.unlink()  # do not keep a GiB on disk


async def health_serving(address: str, deadline: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.005)
    raise TimeoutError("health never SERVING")


async def beside_health_checks(address: str, options: list, work, settle: float = 0.0):
    """Run ``await work(stub)`` (a RouterService stub on its own channel, with ``options``) while health checks
    are sent one after another, 20 ms apart, on another channel; returns its result and the health checks'
    latencies (seconds) of those sent after ``settle`` seconds of probing an idle daemon."""
    async with grpc.aio.insecure_channel(address, options=options) as calls, \
            grpc.aio.insecure_channel(address) as probes:
        health = health_pb2_grpc.HealthStub(probes)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        latencies: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                sent = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                latencies.append(time.perf_counter() - sent)
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(settle)
        idle = len(latencies)
        try:
            result = await work(router_pb2_grpc.RouterServiceStub(calls))
        finally:
            done.set()
            await prober
    return result, latencies[idle:]


async def section_startup(opt, res: Results, workdir: Path, upstream_port: int) -> None:
    eps = sorted(e.name for e in entry_points(group="mmrouter"))
    missing = sorted({"openai", "anthropic", "gemini", "assemblyai", "local"} - set(eps))
    print(f"== start-up to health SERVING (plugins installed: {', '.join(eps)})", flush=True)
    times = []
    for i in range(opt.reps):
        t0 = time.monotonic()
        proc = spawn_router(f"startup{i}", workdir, upstream_port)
        try:
            await health_serving(proc.address, time.monotonic() + 60)
            times.append(time.monotonic() - t0)
        finally:
            proc.stop()
    res.detail(f"start-up seconds: {', '.join(f'{t:.2f}' for t in times)}")
    proc = spawn_router("importtime", workdir, upstream_port, python_flags=("-X", "importtime"))
    proc.stop()
    imported = set()
    for line in proc.log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            for sdk in SDK_MODULES:
                if module == sdk:
                    imported.add(sdk)
    res.detail(f"SDK/HTTP modules imported by `serve` before any request: {', '.join(sorted(imported)) or 'none'}")
    plugins = f"{len(eps)} plugins: {','.join(eps)}" + (f"; NOT installed: {','.join(missing)}" if missing else "")
    res.figure("5a. start-up to health SERVING", f"{med(times):.2f} s{spread(times, '{:.2f}')} ({plugins})",
               "< 2 s, all 5 plugins", med(times) < 2 and not missing)
    res.figure("5b. SDKs imported at start-up", ", ".join(sorted(imported)) or "none", "none (lazy)", not imported)


async def section_rss(opt, res: Results, workdir: Path, upstream_port: int) -> None:
    first, second = opt.rss_counts
    print(f"== RSS of a fresh mmrouter after {first} and {second} unary requests (c=64)", flush=True)
    proc = spawn_router("rss", workdir, upstream_port)
    target = Target(proc)
    try:
        start = status_mib(proc.pid, "VmRSS")
        t = await count_load(lambda i: target.unary(), 64, first, timeout=600)
        at_first = status_mib(proc.pid, "VmRSS")
        t2 = await count_load(lambda i: target.unary(), 64, second - first, timeout=1200)
        at_second = status_mib(proc.pid, "VmRSS")
    finally:
        await target.close()
        proc.stop()
    res.detail(f"RSS at start {start:.1f} MiB, after {first}: {at_first:.1f} MiB ({first / t:.0f} req/s),"
               f" after {second}: {at_second:.1f} MiB ({(second - first) / t2:.0f} req/s)")
    quick = "" if (first, second) == (10_000, 50_000) else " (quick counts)"
    res.figure(f"5c. RSS after {first} requests{quick}", f"{at_first:.1f} MiB (at start {start:.1f})", "< 120 MiB",
               at_first < 120)
    growth = at_second - at_first
    res.figure(f"5d. RSS growth {first} -> {second} requests{quick}", f"{growth:+.1f} MiB", "flat: <= 5 MiB",
               growth <= 5)


async def fake_stats(port: int, path: str = "/stats") -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    return json.loads(body)


def describe(exc: BaseException) -> str:
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    return f"{type(exc).__name__}: {details}"[:120]


async def section_slow(opt, res: Results, workdir: Path) -> None:
    n = opt.slow_calls
    print(f"== {n} concurrent StreamGenerate calls against a slow upstream (1 s per answer)", flush=True)
    slow = spawn_fake("slow-upstream", workdir, delay=1.0)
    proc = spawn_router("slow-router", workdir, int(slow.address))
    target = Target(proc)
    target.stream_req = pb.StreamGenerateRequest(request=chat_request(5))
    try:
        await target.unary()  # warm: the SDK is imported on first use
        await fake_stats(int(slow.address), "/stats/reset")
        reset_peak(proc.pid)
        base = status_mib(proc.pid, "VmRSS")
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()

        async def one() -> bool:
            n_chunks = 0
            async for event in target.stub.StreamGenerate(target.stream_req, timeout=120):
                n_chunks += event.HasField("text_delta")
            return n_chunks == 5

        outcomes = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        ok = sum(1 for o in outcomes if o is True)
        errors = sorted({describe(o) for o in outcomes if isinstance(o, BaseException)})
        peak = status_mib(proc.pid, "VmHWM")
        after = status_mib(proc.pid, "VmRSS")
        stats = await fake_stats(int(slow.address))
    finally:
        await target.close()
        proc.stop()
        slow.stop()
    res.detail(f"{ok}/{n} complete in {wall:.2f} s, server CPU {cpu:.2f} s; RSS before {base:.1f}, peak {peak:.1f},"
               f" after {after:.1f} MiB; upstream connections: peak open {stats['peak']}, opened {stats['accepted']},"
               f" open after {stats['open']}" + (f"; errors: {errors[:3]}" if errors else ""))
    res.figure(f"6. {n} concurrent streams, slow upstream", f"{ok}/{n} completed in {wall:.2f} s", "all complete",
               ok == n)
    res.figure("   server RSS during the 1,000 streams", f"peak {peak:.1f} MiB (before {base:.1f}, after {after:.1f})")
    res.figure("   upstream connections", f"peak open {stats['peak']}, opened {stats['accepted']},"
               f" still open after {stats['open']}")


# -- main ------------------------------------------------------------------------------------------

def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mmrouter benchmark (issue #9); see bench/README.md")
    parser.add_argument("--quick", action="store_true", help="short runs, 1 repetition, smaller counts (~1.5 min)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 4; --quick 1.5)")
    parser.add_argument("--openai", default="",
                        help="extra providers.openai settings (YAML flow-mapping items) for the routers under test;"
                             " default none (the plugin's default transport, aiohttp); 'http_client: httpx' for the"
                             " SDK's own default transport")
    parser.add_argument("--whatif", default="", help="measure candidate router/ changes monkeypatched in by"
                                                     " bench/whatif.py, e.g. sync_normal,quiet_http_logs")
    parser.add_argument("--stream-chunks", type=int, default=STREAM_CHUNKS, metavar="N",
                        help=f"text deltas per streamed answer (default {STREAM_CHUNKS}, figure 3's); another N shows"
                             " how the per-chunk CPU splits into a per-answer and a per-chunk part")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    opt = parser.parse_args(argv)
    if opt.whatif:
        os.environ["MMROUTER_WHATIF"] = opt.whatif
    opt.sections = [s.strip() for s in opt.only.split(",") if s.strip()]
    unknown = set(opt.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    opt.reps = opt.reps or (1 if opt.quick else 3)
    opt.seconds = opt.seconds or (1.5 if opt.quick else 4.0)
    opt.warmup = 0.5 if opt.quick else 1.0
    opt.concurrency = [1, 16, 64]
    opt.stream_concurrency = [16] if opt.quick else [1, 16, 64]
    opt.big_upload_mib = 256 if opt.quick else 1024
    opt.rss_counts = (2_000, 10_000) if opt.quick else (10_000, 50_000)
    opt.slow_calls = 1000
    return opt


async def amain(opt: argparse.Namespace) -> Results:
    res = Results()
    workdir = Path(tempfile.mkdtemp(prefix="mmrouter-bench-"))
    global OPENAI_EXTRA
    OPENAI_EXTRA = extra = f", {opt.openai}" if opt.openai else ""
    procs: list[Proc] = []
    targets: list[Target] = []
    try:
        fake = spawn_fake("upstream", workdir)
        procs.append(fake)
        port = int(fake.address)
        if {"unary", "stream", "upload"} & set(opt.sections):
            echo_proc = spawn("echo", [PY, str(BENCH / "echo_server.py"), "--address", "127.0.0.1:0"],
                              SERVER_CORE, workdir)
            router_proc = spawn_router("router", workdir, port, extra)
            fwd_proc = spawn("fwd", [PY, str(BENCH / "echo_server.py"), "--address", "127.0.0.1:0",
                                     "--forward-to", str(port)], SERVER_CORE, workdir)
            procs += [echo_proc, router_proc, fwd_proc]
            echo, router, forwarder = Target(echo_proc), Target(router_proc), Target(fwd_proc)
            targets += [echo, router, forwarder]
            await forwarder.unary()
            await forwarder.stream()
            for t in (echo, router):  # first call: connection, and the router imports the SDK lazily
                await t.unary()
                await t.stream()
            direct = DirectHTTP(port)
            if "unary" in opt.sections:
                await section_unary(opt, res, echo, router, direct, forwarder)
            if "stream" in opt.sections:
                await section_stream(opt, res, echo, router, forwarder)
            if "upload" in opt.sections:
                await section_upload(opt, res, echo, router)
            await direct.close()
            res.detail(f"mmrouter RSS after the throughput sections: {status_mib(router_proc.pid, 'VmRSS'):.1f} MiB")
        if "startup" in opt.sections:
            await section_startup(opt, res, workdir, port)
        if "rss" in opt.sections:
            await section_rss(opt, res, workdir, port)
        if "slow" in opt.sections:
            await section_slow(opt, res, workdir)
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                await t.close()
        for p in reversed(procs):
            p.stop()
        if opt.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    global STREAM_CHUNKS
    opt = options(argv)
    STREAM_CHUNKS = opt.stream_chunks
    if shutil.which("taskset") is None:
        print("taskset (util-linux) is required", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"mmrouter bench: servers on core {SERVER_CORE}, load generator + fake upstream on core {CLIENT_CORE};"
          f" reps {opt.reps}, {opt.seconds:g} s per run, concurrency {opt.concurrency}"
          + (f"; openai settings: {opt.openai}" if opt.openai else "")
          + (f"; WHAT-IF router patches: {opt.whatif}" if opt.whatif else ""), flush=True)
    res = asyncio.run(amain(opt))
    print("\n" + "\n".join(res.details))
    print(f"\nmmrouter bench results (median of {opt.reps}{', [min-max]' if opt.reps > 1 else ''};"
          f" {time.monotonic() - started:.0f} s)\n")
    print(res.table())
    if opt.json:
        opt.json.write_text(json.dumps({"figures": res.figures, "details": res.details, "raw": res.raw}, indent=1))
    failed = [f for f in res.figures if f[3] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
