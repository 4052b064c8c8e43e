"""Shared fixtures: the real daemon in a subprocess, and test-only plugins installed as distributions.

``start_daemon(config_yaml=None, env=None, plugins=("testkit",), data_dir=None)`` starts
``python -m router serve`` (with the embedded default when config_yaml is None)
on a free port with its own data directory and
returns a :class:`Daemon` with a sync stub. Test-only plugins are real
distributions (a ``*.dist-info`` with an ``entry_points.txt``) on the
subprocess's PYTHONPATH, so they are found through entry points exactly as
an installed third-party plugin is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from mmrouter.v1 import router_pb2_grpc

if TYPE_CHECKING:
    from tests.fakes.base import FakeUpstream

TESTKIT = Path(__file__).parent / "testkit"
sys.path.insert(0, str(TESTKIT))  # the test-only plugins import in-process too (contract tests)

#: name -> (distribution name, entry point name, module)
TEST_PLUGINS = {
    "testkit": ("mmrouter-testkit", "fake", "mmrouter_testkit"),
    "broken_import": ("mmrouter-broken-import", "broken_import", "mmrouter_broken_import"),
    "broken_register": ("mmrouter-broken-register", "broken_register", "mmrouter_broken_register"),
}


@pytest.fixture(autouse=True)
def _gemini_copies_do_not_outlive_their_test() -> Iterator[None]:
    """Forget the Gemini Files API copies (and FAILED processings) the in-process providers of a test knew.

    The plugin shares them between live providers with the same key and endpoint (a reload keeps them), and a
    closed provider lives on until the garbage collector frees it: a later test whose fake got the same port
    and which uses the same key would otherwise find a copy, or a refusal, of the earlier test (seen in CI)."""
    yield
    files = sys.modules.get("mmrouter_gemini.files")
    if files is not None:
        files._SHARED.clear()


def make_dist_info(site: Path, dist: str, entry_name: str, module: str) -> None:
    """Write a minimal installed-distribution record with one ``mmrouter`` entry point."""
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[mmrouter]\n{entry_name} = {module}\n")


@pytest.fixture(scope="session")
def plugin_sites(tmp_path_factory) -> dict[str, Path]:
    """One site directory per test-only plugin."""
    sites = {}
    for key, (dist, entry_name, module) in TEST_PLUGINS.items():
        site = tmp_path_factory.mktemp(f"site-{key}")
        make_dist_info(site, dist, entry_name, module)
        sites[key] = site
    return sites


@dataclass
class Daemon:
    """A running daemon subprocess."""

    address: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    channel: grpc.Channel
    stub: router_pb2_grpc.RouterServiceStub
    config_path: Path
    extra: dict = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait for a clean exit, return the exit code."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch_daemon(config_yaml: str | None, *, tmp: Path, env: dict[str, str] | None, sites: list[Path],
                  data_dir: Path | None = None) -> Daemon:
    """Start the daemon and wait until it serves."""
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "router.yaml"
    config_args = []
    if config_yaml is not None:  # None: the embedded default
        config_path.write_text(textwrap.dedent(config_yaml))
        config_args = ["--config", str(config_path)]
    data_dir = data_dir or tmp / "data"
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    log_path = tmp / "daemon.log"
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), str(TESTKIT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", *config_args, "--address", "127.0.0.1:0",
         "--data-dir", str(data_dir), "--ready-file", str(ready)],
        stdout=log, stderr=subprocess.STDOUT, env=full_env,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"daemon did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    address = ready.read_text()
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024),
                                                      ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    return Daemon(address, data_dir, proc, log_path, channel, router_pb2_grpc.RouterServiceStub(channel), config_path)


@pytest.fixture
def start_daemon(tmp_path, plugin_sites) -> Iterator[Callable[..., Daemon]]:
    """Start daemons for a test; all are stopped at its end."""
    started: list[Daemon] = []

    def start(config_yaml: str | None = None, env: dict[str, str] | None = None, plugins: tuple[str, ...] = ("testkit",),
              data_dir: Path | None = None, extra_sites: tuple[Path, ...] = ()) -> Daemon:
        daemon = launch_daemon(config_yaml, tmp=tmp_path / f"daemon{len(started)}", env=env,
                               sites=[*(plugin_sites[p] for p in plugins), *extra_sites],
                               data_dir=data_dir or tmp_path / "data")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def fakes():
    """The four cloud providers' fakes, started, by provider name (``test_hybrid.cloud_fakes``); a module that
    needs other fakes defines its own ``fakes``."""
    from test_hybrid import cloud_fakes

    with cloud_fakes() as servers:
        yield servers


def fake_fixtures(make: Callable[[], FakeUpstream]):
    """The fixtures of one provider's fake for a module whose tests share it (and a daemon calling it):
    ``shared_fake`` (module-scoped, started by ``make()``), ``fake`` (the same, reset as it was started before each
    test: nothing recorded or queued, no answer scripted by an earlier test) and ``own_fake`` (one of the test's own,
    for a test whose fake still answers after it ended, late, past the daemon's timeout: the shared one would serve
    that answer with a later test's script). Use: ``shared_fake, fake, own_fake = fake_fixtures(FakeOpenAI)``."""

    @pytest.fixture(scope="module", name="shared_fake")
    def shared_fake() -> Iterator[FakeUpstream]:
        with make() as upstream:
            yield upstream

    @pytest.fixture(name="fake")
    def fake(shared_fake: FakeUpstream) -> FakeUpstream:
        shared_fake.reset()
        return shared_fake

    @pytest.fixture(name="own_fake")
    def own_fake() -> Iterator[FakeUpstream]:
        with make() as upstream:
            yield upstream

    return shared_fake, fake, own_fake


@pytest.fixture(scope="module")
def shared_fakes():
    """The four cloud providers' fakes for a module whose tests share a daemon, and the function that puts them
    back as they were started (``test_hybrid.resetter``), for each test to call: ``(fakes, reset)``."""
    from test_hybrid import cloud_fakes, resetter

    with cloud_fakes() as servers:
        yield servers, resetter(servers)


@pytest.fixture(scope="module")
def shared_cloud_daemon(shared_fakes, tmp_path_factory) -> Iterator[Daemon]:
    """One daemon of the embedded config on :func:`shared_fakes`, with every key (``test_hybrid.config_for``,
    ``ALL_KEYS``), for a module's tests that only need that: starting one per test (and importing its SDKs) took
    minutes of the suite. Tests sharing it (through :func:`shared`) must not make a fake answer with a retry delay
    (a 429, or a 503/529 with Retry-After: a cool-down), read its health, stats or logs, use another test's
    session id, depend on what its media store holds, or bridge media another test sends (bridged texts are kept
    by content: such a test sends bytes of its own)."""
    from test_hybrid import ALL_KEYS, config_for

    servers, _reset = shared_fakes
    daemon = launch_daemon(config_for(servers), tmp=tmp_path_factory.mktemp("shared"), env=ALL_KEYS, sites=[])
    yield daemon
    daemon.stop()


@pytest.fixture
def shared(shared_cloud_daemon, shared_fakes) -> tuple[Daemon, dict]:
    """The module's :func:`shared_cloud_daemon` and its fakes, reset as they were started: ``(daemon, fakes)``."""
    servers, reset = shared_fakes
    reset()
    return shared_cloud_daemon, servers


@pytest.fixture
def upstreams():
    """The fake OpenAI and Anthropic servers, started (for a primary and its fallback)."""
    from tests.fakes.anthropic import FakeAnthropic
    from tests.fakes.openai import FakeOpenAI

    servers = FakeOpenAI().start(), FakeAnthropic().start()
    yield servers
    for server in servers:
        server.stop()
