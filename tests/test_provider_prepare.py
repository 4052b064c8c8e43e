"""A provider's SDK is imported off the event loop, before its first call (``Provider.prepare``).

Imported on the event loop at the first call, an SDK (1-4 s) held every other call and the health checks,
and its time showed as the provider's latency. The scripted provider of tests/testkit blocks in
``prepare`` as an import does (``prepare_seconds``), in a daemon that runs for real (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
from conftest import make_dist_info
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

#: How long the scripted provider's prepare blocks.
PREPARE_SECONDS = 5.0

CONFIG = """\
providers:
  fake: {{api_key: k, marker_dir: "{markers}", prepare_seconds: {seconds}}}
routes:
  - name: general
    use: fake/echo
"""


def test_the_first_call_waits_for_prepare_in_a_thread_while_the_daemon_serves(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG.format(markers=tmp_path, seconds=PREPARE_SECONDS))
    first = daemon.stub.Generate.future(pb.GenerateRequest(request=text_request("hello")), timeout=60)
    assert wait_for(lambda: (tmp_path / "preparing").exists(), timeout=30)
    assert (tmp_path / "preparing").read_text().startswith("mmrouter-prepare")  # not the event loop's thread

    # while prepare blocks, the daemon answers: a health check, and the providers' list
    health = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert [p.name for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers]
    assert not first.done()  # still waiting for prepare, which the other calls did not wait for

    answer = first.result().answer
    assert answer.text.startswith("fake/echo says: hello")
    assert any(note.startswith("waited ") and "for fake to load its SDK" in note for note in answer.route.notes)
    # the wait is the call's, not the provider's: its attempt is timed from prepare's end
    assert answer.route.latency_ms >= PREPARE_SECONDS * 1000 > answer.route.attempts[0].latency_ms

    second = daemon.stub.Generate(pb.GenerateRequest(request=text_request("again")), timeout=30).answer
    assert not any("load its SDK" in note for note in second.route.notes)  # prepared once


def test_a_call_cancelled_while_prepare_runs_leaves_it_to_the_next(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG.format(markers=tmp_path, seconds=PREPARE_SECONDS))
    started = time.monotonic()
    try:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hello")), timeout=1)
    except grpc.RpcError as exc:  # it waited what the deadline left, less the fallbacks' share
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert "fake: its SDK is still loading: prepare() has not ended after" in exc.details()
    else:
        raise AssertionError("answered before prepare ended")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("again")), timeout=60).answer
    assert answer.text.startswith("fake/echo says: again")
    if time.monotonic() - started < PREPARE_SECONDS:  # it waited for the same prepare, not one begun anew
        assert any("load its SDK" in note for note in answer.route.notes)
    assert "preparing its calls (prepare) failed" not in daemon.logs()


#: A plugin whose ``prepare`` never ends (an import that deadlocks, network I/O in it: a plugin's bug).
HANGING_PLUGIN = """
import time
import router

class Hangs(router.Provider):
    name = "hangs"
    models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

    def prepare(self):
        time.sleep(3600)

    async def generate(self, request, model, ctx):
        yield router.TextDelta("never")
        yield router.UsageReport(router.Usage(1, 1))

@router.hookimpl
def register_providers(register, settings):
    register(Hangs())
"""


def test_a_prepare_that_hangs_fails_its_own_attempts_only_and_the_daemon_still_stops(start_daemon, tmp_path) -> None:
    """The call waits for the hanging prepare only what its deadline leaves for the fallbacks, which answer; a
    provider whose prepare comes after it is not held behind it; SIGTERM ends the daemon (the prepare threads
    are daemon threads)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mmrouter_hangs.py").write_text(textwrap.dedent(HANGING_PLUGIN))
    make_dist_info(site, "mmrouter-hangs", "hangs", "mmrouter_hangs")
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: quick
            match: {tags: [quick]}
            use: fake/echo
          - name: general
            use: hangs/m
            fallback: [fake/echo]
        """, extra_sites=(site,))
    started = time.monotonic()
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hello")), timeout=8).answer
    assert answer.text.startswith("fake/echo says: hello")
    failed = answer.route.attempts[0]
    assert (failed.provider, failed.ok) == ("hangs", False)
    assert "its SDK is still loading: prepare() has not ended after" in failed.error
    assert time.monotonic() - started < 8
    # the fallback's prepare went beside the overdue one at once, not after its 5 s
    assert "provider fake: the prepare of hangs has run" in daemon.logs(), daemon.logs()
    # a later call, without a deadline, does not wait 30 s again: the overdue prepare fails it at once
    later = daemon.stub.Generate(pb.GenerateRequest(request=text_request("later")), timeout=60).answer
    assert later.text.startswith("fake/echo says: later")
    assert "an earlier attempt waited for it in vain" in later.route.attempts[0].error
    tagged = text_request("tagged")
    tagged.hints.tags.append("quick")
    assert daemon.stub.Generate(pb.GenerateRequest(request=tagged), timeout=30).answer.text.startswith("fake/echo")
    assert daemon.stop() == 0


PREPARED_IMPORTS = """
import asyncio, sys
from mmrouter_{plugin} import {cls_name}
provider = {cls}({settings})
assert not [m for m in sys.modules if m.split(".")[0] in {roots}], "imported before prepare"
provider.prepare()
before = set(sys.modules)

async def first_call_setup():
{setup}

asyncio.run(first_call_setup())
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in {roots}))
"""

#: Per cloud plugin: the class, its settings, the SDK's top-level packages, and what its first call makes
#: (the client, and the SDK resources a call reaches).
PLUGINS = {
    "openai": ("OpenAIProvider", "{'api_key': 'sk-test'}", ("openai", "httpx2", "httpcore2", "aiohttp"),
               "    client = provider.client()\n    client.chat.completions, client.audio.transcriptions\n"
               "    await client.close()"),
    "anthropic": ("AnthropicProvider", "{'api_key': 'sk-ant-test'}", ("anthropic", "aiohttp"),
                  "    client = provider.client()\n    client.messages\n    await client.close()"),
    "gemini": ("GeminiProvider.from_settings", "{'api_key': 'gm-test'}", ("google", "aiohttp"),
               "    provider.client().aio.models\n    await provider.aclose()"),
    "assemblyai": ("AssemblyAIProvider",
                   "__import__('mmrouter_assemblyai.settings').settings.AssemblyAISettings.load("
                   "'assemblyai', {'api_key': 'aai-test'}, environment=False)", ("assemblyai", "httpx"),
                   "    provider._sdk()\n    await provider.aclose()"),
}


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_prepare_imports_what_a_first_call_would_import_on_the_event_loop(plugin) -> None:
    """The SDK's packages a first call loads (making the client, reaching its resources) are loaded by
    ``prepare`` already, in its thread, instead of on the event loop."""
    cls, settings, roots, setup = PLUGINS[plugin]
    script = PREPARED_IMPORTS.format(plugin=plugin, cls=cls, cls_name=cls.split(".")[0], settings=settings,
                                     roots=set(roots), setup=setup)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported by the first call, not by prepare: {done.stdout}"


async def test_prepares_queued_behind_others_are_timed_from_their_own_start(monkeypatch, caplog) -> None:
    """Three prepares of 0.3 s with a serial bound of 0.5 s: the third waited 0.6 s in all, and was told the
    second 'has run over' the bound (it had run 0.3 s), then ran beside it. Each is timed from its own start."""
    import asyncio
    import threading

    import router
    from router import prepare
    from router.outcome import RouteInfo

    monkeypatch.setattr(prepare, "SERIAL_WAIT_SECONDS", 0.5)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    class Slow(router.Provider):
        models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

        def __init__(self, name: str) -> None:
            self.name = name

        def prepare(self) -> None:
            began = time.monotonic()
            time.sleep(0.3)
            with lock:
                spans.append((began, time.monotonic()))

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            yield router.TextDelta("hi")

    providers = [Slow(f"slow{i}") for i in range(3)]
    with caplog.at_level("WARNING", logger="router.prepare"):
        await asyncio.gather(*(prepare.prepared(p, RouteInfo("r", p.name, "m"), router.CallContext("t"))
                               for p in providers))
    assert not [r for r in caplog.records if "preparing beside it" in r.getMessage()]
    ordered = sorted(spans)
    assert len(ordered) == 3 and all(one[1] <= two[0] for one, two in itertools.pairwise(ordered))  # one at a time
