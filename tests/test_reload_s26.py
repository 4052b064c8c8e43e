"""SIGHUP reads and parses the file off the event loop (a 2,000-rule file takes seconds), one reload at a time.

The reloads here read a FIFO put in place of the daemon's ``--config``: the daemon's read of it waits until this
test has written the text and closed its end, so "while a reload reads its file" is a state the test holds, not
a race against a timer. Before, the read ran on the event loop: a health check or a call sent meanwhile was
not answered until the file was read and parsed, nor was SIGTERM handled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import fake_fixtures
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import wait_for
from test_reload import OPENAI, route_of

from tests.fakes.openai import FakeOpenAI

shared_fake, fake, own_fake = fake_fixtures(FakeOpenAI)

REFUSED = "SIGHUP: reload refused, the running configuration stays: "


def rules(fake: FakeOpenAI, name: str) -> str:
    """A configuration whose one rule, ``name``, sends every request to OpenAI's fake (the real SDK)."""
    return OPENAI.format(key=fake.api_key, url=fake.base_url).replace("name: all", f"name: {name}")


def replace(path: Path, text: str) -> None:
    """Replace the file at ``path`` atomically with one holding ``text`` (as the README asks)."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


@contextmanager
def reload_held(daemon) -> Iterator[int]:
    """SIGHUP the daemon with a FIFO in place of its file, and hold its reload in the read of that FIFO: yields
    the FIFO's write end once the daemon opened it (its reload waits for the text and the end of the file
    written there); closed at the end, which ends the read."""
    fifo = daemon.config_path.with_suffix(".fifo")
    os.mkfifo(fifo)
    os.replace(fifo, daemon.config_path)
    os.kill(daemon.proc.pid, signal.SIGHUP)

    def writer() -> int | None:
        try:  # fails (ENXIO) until a reader has the FIFO open
            return os.open(daemon.config_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return None

    fd = wait_for(writer)
    assert fd is not None, f"the daemon never opened its file for the reload:\n{daemon.logs()}"
    os.set_blocking(fd, True)
    try:
        yield fd
    finally:
        os.close(fd)


def health(daemon) -> str:
    """The daemon's health status, asked with a deadline: a daemon whose event loop is held never answers."""
    status = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_calls_and_health_checks_are_answered_while_a_reload_reads_its_file(start_daemon, fake) -> None:
    daemon = start_daemon(rules(fake, "first"))
    with reload_held(daemon) as fifo:
        assert health(daemon) == "SERVING"
        assert route_of(daemon) == ("first", "openai/gpt-4o")  # on the running rules, through the SDK
        assert "rules reloaded" not in daemon.logs()
        os.write(fifo, rules(fake, "second").encode())
    assert wait_for(lambda: "rules reloaded" in daemon.logs()), daemon.logs()
    assert route_of(daemon) == ("second", "openai/gpt-4o")


def test_sighups_in_quick_succession_reload_one_at_a_time_and_serve_the_last_file(start_daemon, fake) -> None:
    daemon = start_daemon(rules(fake, "v1"))
    with reload_held(daemon) as fifo:  # the first SIGHUP's reload reads the FIFO
        replace(daemon.config_path, rules(fake, "v3"))
        os.kill(daemon.proc.pid, signal.SIGHUP)
        replace(daemon.config_path, rules(fake, "v4"))
        os.kill(daemon.proc.pid, signal.SIGHUP)
        assert health(daemon) == "SERVING"
        assert route_of(daemon) == ("v1", "openai/gpt-4o"), "a later SIGHUP swapped in its file meanwhile"
        os.write(fifo, rules(fake, "v2").encode())
    assert wait_for(lambda: route_of(daemon)[0] == "v4"), daemon.logs()
    logs = daemon.logs()
    assert "SIGHUP: rules added: v2" in logs, logs  # the first reload served its own text, then v4 came
    assert logs.index("SIGHUP: rules added: v2") < logs.index("SIGHUP: rules added: v4")
    assert "reload refused" not in logs and "reload failed" not in logs


def test_a_bad_file_after_a_good_one_keeps_the_good_one(start_daemon, fake) -> None:
    daemon = start_daemon(rules(fake, "v1"))
    with reload_held(daemon) as fifo:
        replace(daemon.config_path, "routes: [unclosed\n")  # read by the SIGHUP that comes during the reload
        os.kill(daemon.proc.pid, signal.SIGHUP)
        assert health(daemon) == "SERVING"
        os.write(fifo, rules(fake, "v2").encode())
    assert wait_for(lambda: f"{REFUSED}{daemon.config_path}: not valid YAML" in daemon.logs()), daemon.logs()
    assert "rules added: v2" in daemon.logs()
    assert route_of(daemon) == ("v2", "openai/gpt-4o")

    replace(daemon.config_path, rules(fake, "v3").replace("use:", "match: {taks: [chat]}\n    use:"))
    os.kill(daemon.proc.pid, signal.SIGHUP)  # a bad rule: refused with its key, line and a did-you-mean
    assert wait_for(lambda: "routes.0.match.taks: Extra inputs are not permitted" in daemon.logs()), daemon.logs()
    assert f"{REFUSED}invalid configuration:" in daemon.logs()
    assert "did you mean 'task'?" in daemon.logs() and "rules added: v3" not in daemon.logs()
    assert route_of(daemon) == ("v2", "openai/gpt-4o") and daemon.proc.poll() is None


def test_sigterm_during_a_reload_stops_the_daemon_cleanly(start_daemon, fake) -> None:
    daemon = start_daemon(rules(fake, "v1"))
    with reload_held(daemon):
        assert health(daemon) == "SERVING"  # the reload is under way: the daemon reads the FIFO
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.stop() == 0, daemon.logs()  # the read still waits: the stop neither waits for it nor fails
    logs = daemon.logs()
    assert "stopped" in logs and "rules reloaded" not in logs and "Traceback" not in logs, logs
