"""A third-party provider slow to close, or whose ``prepare`` hangs, through the daemon (QA plugin27, findings 2, 3).

Each provider's ``aclose`` is cancelled once it has run ``PROVIDER_CLOSE_SECONDS`` (3 s), with a warning naming it,
at the daemon's stop and after a reload; a SIGTERM whose closes were cut so still exits 0, and only a close that
goes on after it was cancelled makes it exit 1, said as such. A call that gives up on a hanging ``prepare`` logs one
warning naming the provider, and its fallback on the same provider is not told of "a call before this one".
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from test_plugin_faults import site_with

#: A plugin whose provider misbehaves as its section says: ``close: slow`` (an ``aclose`` that awaits an hour),
#: ``close: swallow`` (one that catches CancelledError, in a loop), ``prepare: hang`` (an SDK import that hangs).
CLOSING = '''
import asyncio
import time

import router


class Closing(router.Provider):
    name = "closing"
    models = [router.ModelInfo(m, inputs=frozenset({router.Modality.TEXT})) for m in ("m", "m2")]

    def __init__(self, settings):
        self.settings = settings

    def prepare(self):
        if self.settings.get("prepare") == "hang":
            time.sleep(3600)

    async def generate(self, request, model, ctx):
        yield router.TextDelta("hi")
        yield router.UsageReport(router.Usage(1, 1))

    async def aclose(self):
        if self.settings.get("close") == "slow":
            await asyncio.sleep(3600)
        while self.settings.get("close") == "swallow":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass


@router.hookimpl
def register_providers(register, settings):
    register(Closing(settings))
'''

CONFIG = """
providers:
  closing: {{{settings}}}
server: {{shutdown_grace_seconds: 0.5}}
routes:
  - name: general
    use: closing/m
    fallback: [closing/m2]
"""

CUT = "closing provider closing did not end within 3 s: cancelled"


@pytest.fixture
def start_closing(start_daemon, tmp_path):
    """Start a daemon serving the ``closing`` provider with the given section (flow YAML, without braces)."""
    site = site_with(tmp_path, {"closing": CLOSING})
    return lambda settings: start_daemon(CONFIG.format(settings=settings), plugins=(), extra_sites=(site,))


def sigterm(daemon) -> tuple[int, float]:
    """SIGTERM the daemon and wait for it to exit: its status, and how long it took."""
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    status = daemon.proc.wait(30)
    return status, time.monotonic() - started


def test_a_slow_aclose_is_cancelled_with_a_warning_and_sigterm_still_exits_0(start_closing) -> None:
    daemon = start_closing("close: slow")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
    assert answer.text == "hi"
    # a reload that makes the provider anew closes the old instance: cut after its 3 s too, not left until the stop
    daemon.config_path.write_text(CONFIG.format(settings="close: slow, again: 1"))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: CUT in daemon.logs(), timeout=20), daemon.logs()
    status, took = sigterm(daemon)
    logs = daemon.logs()
    assert status == 0, logs
    assert took < 15, logs  # STOP_SECONDS (5) plus a generous margin: not the hour the close awaits
    assert logs.count(CUT) == 2 and " WARNING " in next(line for line in logs.splitlines() if CUT in line), logs
    assert "CancelledError" not in logs and "did not stop within" not in logs, logs
    assert logs.rstrip().endswith("stopped"), logs


def test_an_aclose_that_swallows_cancellation_still_ends_the_daemon_with_status_1(start_closing) -> None:
    daemon = start_closing("close: swallow")
    status, took = sigterm(daemon)
    logs = daemon.logs()
    assert status == 1, logs
    assert took < 20, logs
    assert CUT in logs, logs
    assert ("stopped, but closing provider closing did not end after it was cancelled (its aclose catches "
            "CancelledError?): exiting without waiting for it") in logs, logs


def test_a_hanging_prepare_is_logged_once_and_a_fallback_is_not_told_of_an_earlier_call(start_closing) -> None:
    daemon = start_closing("prepare: hang")
    for timeout in (7, 2):  # the first waits past SERIAL_WAIT_SECONDS (5): its fallback, then the next call, fail at once
        with pytest.raises(grpc.RpcError) as failed:
            daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=timeout)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
        message = failed.value.details()
        assert "closing: its SDK is still loading: prepare() has not ended, and an earlier attempt waited for it in " \
               "vain" in message, message
        assert "a call before this one" not in message, message
    given_up = [line for line in daemon.logs().splitlines() if "a call gave up waiting for its prepare()" in line]
    assert len(given_up) == 1, daemon.logs()
    assert " WARNING " in given_up[0] and "provider closing: " in given_up[0], given_up
    assert "its thread mmrouter-prepare-closing is at:" in given_up[0], given_up
    assert "time.sleep(3600)" in daemon.logs()  # the stack shows where it hangs
