"""A reader of the daemon's stderr that stops reading (a stalled log shipper, docker's blocking log mode,
a supervisor that no longer reads the pipe) must not stop the daemon: the log is written by a thread of
its own through a bounded queue (router/logsink.py), lines are dropped and counted while nobody reads,
and SIGTERM still ends the daemon.

Each test runs the real daemon with its stderr a pipe that the test does not read: one access line per
call fills the pipe (64 KiB) and then the queue within a few thousand calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from conftest import TESTKIT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

from router.logsink import QUEUE_RECORDS

CONFIG = """\
providers:
  fake: {api_key: k}
routes:
  - name: general
    use: fake/echo
"""

#: Calls enough to fill the pipe (an access line is about 100 bytes: some 650 fill 64 KiB) and the queue,
#: with lines to spare that can only be dropped.
CALLS = QUEUE_RECORDS + 1600
#: The calls sent at once (the log line of each is written as it ends).
WAVE = 100


@contextmanager
def stalled_daemon(tmp_path: Path, sites: dict[str, Path], *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A daemon and its address; its stderr is a pipe nobody reads (until a test does). Killed at the end
    if still running."""
    (tmp_path / "router.yaml").write_text(CONFIG)
    ready = tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(sites["testkit"]), str(TESTKIT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "router.yaml"), "--address",
         "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--ready-file", str(ready), *options],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text():
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        yield proc, ready.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def fill_the_log(address: str) -> grpc.Channel:
    """Make :data:`CALLS` calls (bounded waits each): they all answer though nobody reads the log."""
    channel = grpc.insecure_channel(address)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    for start in range(0, CALLS, WAVE):
        calls = [stub.ListProviders.future(pb.ListProvidersRequest(), timeout=10) for _ in range(WAVE)]
        for number, call in enumerate(calls, start):
            try:
                call.result()
            except grpc.RpcError as exc:
                pytest.fail(f"call {number} of {CALLS} failed with the log unread: {exc.code()}")
    return channel


def test_a_log_nobody_reads_stops_neither_calls_nor_health_nor_sigterm(tmp_path, plugin_sites) -> None:
    """A pipe that fills (~570 lines) froze the event loop in write(2): every call and health check hung,
    and SIGTERM was ignored until SIGKILL."""
    with stalled_daemon(tmp_path, plugin_sites) as (daemon, address):
        channel = fill_the_log(address)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answer = router_pb2_grpc.RouterServiceStub(channel).Generate(
            pb.GenerateRequest(request=text_request("still here")), timeout=10)
        assert "still here" in answer.answer.text
        channel.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)  # it flushes for a bounded time, then exits, the pipe still unread
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the daemon while its stderr was not read")
        assert code == 0


def test_when_the_reader_reads_again_one_warning_says_how_many_lines_were_dropped(tmp_path, plugin_sites) -> None:
    """Lines that did not fit are counted; the count is written once writing resumes (as a JSON log line
    in json mode), and the log goes on: every call's access line is written or counted."""
    with stalled_daemon(tmp_path, plugin_sites, "--log-format", "json") as (daemon, address):
        channel = fill_the_log(address)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in daemon.stderr), daemon=True)
        reader.start()  # the reader resumes: what is queued is written, then the next line brings the count
        stub = router_pb2_grpc.RouterServiceStub(channel)
        calls, deadline = CALLS, time.monotonic() + 30
        while not any('"router.logsink"' in line for line in lines) and time.monotonic() < deadline:
            stub.ListProviders(pb.ListProvidersRequest(), timeout=10)
            calls += 1
            time.sleep(0.1)
        channel.close()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        reader.join(10)
    records = [json.loads(line) for line in lines]
    dropped = [r for r in records if r["logger"] == "router.logsink"]
    assert len(dropped) == 1, dropped
    assert dropped[0]["level"] == "WARNING"
    count = int(dropped[0]["message"].split()[0])
    assert dropped[0]["message"] == f"{count} log line(s) dropped: stderr was not being read fast enough (or at all)"
    assert count > 0
    written = sum(r.get("method") == "ListProviders" for r in records)
    assert written + count == calls  # no line lost unsaid
    assert records[-1]["message"] == "stopped"


def test_a_calls_access_line_is_in_the_log_when_its_client_has_the_answer(start_daemon) -> None:
    """The log written by a thread of its own is not written later than the answer: while the writer keeps
    up, each call's access line is in the log file before the call returns (tests and operators read the
    log right after a call)."""
    daemon = start_daemon(CONFIG)
    for _ in range(300):
        call = daemon.stub.ListProviders.with_call(pb.ListProvidersRequest(), timeout=10)[1]
        request_id = dict(call.trailing_metadata())["x-mmrouter-request-id"]
        assert any(line.startswith("ListProviders OK in ", line.find(": ") + 2) and line.endswith(request_id)
                   for line in daemon.logs().splitlines()[-3:]), daemon.logs()[-500:]
