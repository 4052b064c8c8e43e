"""Signals and environment mistakes while ``mmrouter serve`` starts: the real command in a subprocess.

A start takes 1-3 s on a loaded host (imports, plugins, then the server). A SIGHUP in that window ended
the daemon with no line (SIGHUP's default action) and left a lone ``daemon.lock``; a SIGINT printed a
KeyboardInterrupt traceback (breaking a JSON log) or gRPC's own errors. An empty ``MMROUTER_DATA_DIR``
was taken for unset, the environment's log settings were refused under their options' names, and under a
low ``ulimit -v`` gRPC aborted with only its own lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import launched

from router.server import LOCAL_ADDRESS_SPACE, LOW_ADDRESS_SPACE

#: How long a start may take before a test gives up (a loaded host: imports and plugins take seconds).
START_SECONDS = 60


def _launch(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            address_space: int | None = None) -> tuple[subprocess.Popen, Path, Path, Path]:
    """Start ``python -m router serve`` on a free port, with signals as a shell or supervisor leaves them
    and the address-space limit when given (see :func:`launch.launched`); return it, its data directory,
    ready file and log."""
    data, ready, log = tmp_path / "data", tmp_path / "ready", tmp_path / "daemon.log"
    full_env = {k: v for k, v in os.environ.items()
                if not k.endswith("_API_KEY") and not k.startswith(("MMROUTER_", "GRPC_"))}
    full_env.update(env or {})
    command = [sys.executable, "-m", "router", "serve", "--address", "127.0.0.1:0", "--data-dir", str(data),
               "--ready-file", str(ready), *args]
    limits = {"RLIMIT_AS": (address_space, address_space)} if address_space is not None else None
    with log.open("wb") as out:
        proc = subprocess.Popen(launched(command, limits=limits, default_signals=True), stdout=out,
                                stderr=subprocess.STDOUT, env=full_env)
    proc.log_path = log  # type: ignore[attr-defined]  # shown when it exits early (see _wait_for)
    return proc, data, ready, log


def _wait_for(proc: subprocess.Popen, done, what: str) -> None:
    """Wait (at most START_SECONDS) until ``done()``; fail if the daemon exits first."""
    deadline = time.monotonic() + START_SECONDS
    while not done():
        if proc.poll() is not None:
            log = getattr(proc, "log_path", None)
            raise AssertionError(f"the daemon exited ({proc.returncode}) before {what}; its output:\n"
                                 + (log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no {what} within {START_SECONDS}s")
        time.sleep(0.002)


def _execed(proc: subprocess.Popen) -> bool:
    """Whether json mode's serve has started itself again with GRPC_VERBOSITY=NONE (its new image imports)."""
    try:
        return b"GRPC_VERBOSITY=NONE" in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _moment(proc: subprocess.Popen, data: Path, moment: str) -> None:
    """Wait for a moment of the start: ``lock`` (the data directory is locked: plugins load next) or
    ``exec`` (json mode's new image imports its modules)."""
    if moment == "lock":
        _wait_for(proc, (data / "daemon.lock").exists, "daemon.lock")
    else:
        _wait_for(proc, lambda: _execed(proc), "exec with GRPC_VERBOSITY=NONE")


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM the daemon; its exit code (killed after START_SECONDS)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(START_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the daemon did not stop on SIGTERM")


def _ready(ready: Path) -> bool:
    return ready.exists() and bool(ready.read_text())


@pytest.mark.parametrize(("log_format", "moment"), [("text", "lock"), ("json", "lock"), ("json", "exec")])
def test_a_sighup_while_starting_does_not_end_the_daemon_which_reloads_once_serving(
        tmp_path, log_format, moment) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("default: local/extract\n")
    proc, data, ready, log = _launch(tmp_path, "--config", str(config), "--log-format", log_format)
    _moment(proc, data, moment)
    proc.send_signal(signal.SIGHUP)
    _wait_for(proc, lambda: _ready(ready), "ready file")
    _wait_for(proc, lambda: "SIGHUP: rules reloaded" in log.read_text(), "reload after the start")
    assert _stop(proc) == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(("log_format", "moment"), [("text", "lock"), ("json", "lock"), ("json", "exec")])
def test_a_sigint_while_starting_ends_it_with_exit_130_and_one_line(tmp_path, log_format, moment) -> None:
    proc, data, ready, log = _launch(tmp_path, "--log-format", log_format)
    _moment(proc, data, moment)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(START_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the daemon went on after SIGINT")
    lines = log.read_text().splitlines()
    assert code == 130, lines
    assert len(lines) == 1, lines
    message = json.loads(lines[0])["message"] if log_format == "json" else lines[0]
    assert message == "interrupted (SIGINT) while starting: the daemon did not start"
    assert not ready.exists() and not data.exists()  # the directory the start made is removed again


def test_an_empty_data_dir_variable_is_refused_naming_it(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([sys.executable, "-m", "router", "serve", "--address", "127.0.0.1:0"], capture_output=True,
                          text=True, timeout=START_SECONDS, env={**os.environ, "MMROUTER_DATA_DIR": "", "HOME": str(home),
                                                                 "XDG_DATA_HOME": ""})
    assert done.returncode == 2
    assert done.stderr.startswith("MMROUTER_DATA_DIR is set but empty"), done.stderr
    assert list(home.iterdir()) == []  # nothing written to ~/.local/share/mmrouter


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({"MMROUTER_LOG_LEVEL": "verbose"}, [], "server.log_level (MMROUTER_LOG_LEVEL): Input should be 'DEBUG'"),
    ({}, ["--log-level", "verbose"], "server.log_level (--log-level): Input should be 'DEBUG'"),
    ({"MMROUTER_LOG_FORMAT": "xml"}, [], "server.log_format (MMROUTER_LOG_FORMAT): Input should be 'text' or 'json'"),
    ({}, ["--log-format", "xml"], "server.log_format (--log-format): Input should be 'text' or 'json'"),
    ({"MMROUTER_LOG_LEVEL": "WARN"}, [], "server.log_level (MMROUTER_LOG_LEVEL): Input should be 'DEBUG', 'INFO', "
                                         "'WARNING', 'ERROR' or 'CRITICAL'; did you mean 'WARNING'?"),
])
def test_a_log_setting_refused_is_named_as_it_was_given(tmp_path, env, args, expected) -> None:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MMROUTER_")}
    done = subprocess.run([sys.executable, "-m", "router", "serve", "--address", "127.0.0.1:0", "--data-dir",
                           str(tmp_path / "data"), *args], capture_output=True, text=True, timeout=START_SECONDS,
                          env={**full_env, **env})
    assert done.returncode == 2
    assert expected in done.stderr, done.stderr


def test_log_format_json_is_taken_in_any_case_and_a_low_address_space_is_warned_of(tmp_path) -> None:
    """``JSON`` is what ``json`` is (as ``log_level`` takes any case), and an address space limited under
    LOW_ADDRESS_SPACE (still enough to start) gets a warning naming ulimit -v."""
    limit = LOW_ADDRESS_SPACE - 100 * 1024**2
    proc, _, ready, log = _launch(tmp_path, env={"MMROUTER_LOG_FORMAT": "JSON"}, address_space=limit)
    _wait_for(proc, lambda: _ready(ready), "ready file")
    assert _stop(proc) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    warnings = [r["message"] for r in records if r["level"] == "WARNING" and "ulimit -v" in r["message"]]
    assert warnings and f"limited to {limit // 1024**2} MiB" in warnings[0], records


def test_an_address_space_too_small_for_the_local_providers_media_is_warned_of(tmp_path) -> None:
    """Between LOW_ADDRESS_SPACE and LOCAL_ADDRESS_SPACE the daemon starts, but the local provider's OCR, speech
    and video calls fail: nothing said so at start (the warning began below 1 GiB only)."""
    limit = (LOW_ADDRESS_SPACE + LOCAL_ADDRESS_SPACE) // 2
    proc, _, ready, log = _launch(tmp_path, env={"MMROUTER_LOG_FORMAT": "json"}, address_space=limit)
    _wait_for(proc, lambda: _ready(ready), "ready file")
    assert _stop(proc) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    warnings = [r["message"] for r in records if r["level"] == "WARNING" and "ulimit -v" in r["message"]]
    assert len(warnings) == 1, records
    assert f"limited to {limit // 1024**2} MiB" in warnings[0] and "local provider's OCR" in warnings[0]


def test_log_format_text_in_any_case_and_no_address_space_warning_without_a_limit(tmp_path) -> None:
    proc, _, ready, log = _launch(tmp_path, "--log-format", "Text")
    _wait_for(proc, lambda: _ready(ready), "ready file")
    assert _stop(proc) == 0
    assert "ulimit -v" not in log.read_text()
