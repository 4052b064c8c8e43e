"""The ``mmrouter`` command in shell scripts and CI: exit codes, errors a script can read, --json that
keeps every field and the whole text, output that neither wraps nor breaks when piped, --timeout, --wait,
--raw, and ``config check`` as a gate.

The real CLI (tests/test_cli.py's ``mmrouter``) against the real daemon (tests/conftest.py), whose scripted
``fake`` provider fails, sleeps or streams as the question says (tests/testkit/mmrouter_testkit.py); the
real OpenAI plugin and SDK against tests/fakes/openai.py where an answer must be long.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cli import CONFIG, MMROUTER, Cli, echo, free_port, ok, run_cli
from test_cli_stdin import mmrouter

from tests.fakes.openai import API_KEY, FakeOpenAI

#: The token of the daemon of :data:`SCRIPTED` (clients send it as MMROUTER_TOKEN).
TOKEN = "s3cret-token"
#: tests/test_cli.py's rules, with a token and a short server.max_call_seconds (the daemon's CALL_TIMEOUT).
SCRIPTED = CONFIG + f"""
server:
  auth_token: {TOKEN}
  max_call_seconds: 3
"""
#: Where no daemon listens.
NOWHERE = "127.0.0.1:1"


def cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``mmrouter *args`` with the daemon's token, waited for at most ``timeout`` seconds."""
    return Cli(*args, env={"MMROUTER_TOKEN": TOKEN, **(env or {})}).result(timeout)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_each_kind_of_failure_has_its_exit_code_and_a_line_a_script_can_read(start_daemon):
    daemon = start_daemon(SCRIPTED)
    a = ("--address", daemon.address)
    cases = {  # question or options -> (exit code, gRPC code)
        "FAIL:429": (5, "RESOURCE_EXHAUSTED"),  # rate limited: try again later
        "FAIL:503": (5, "UNAVAILABLE"),  # the provider is down (the daemon's UNAVAILABLE, with ErrorInfo)
        "FAIL:400": (2, "INVALID_ARGUMENT"),  # the request's fault
        "CRASH": (1, "INTERNAL"),
        "SLOW:30": (6, "DEADLINE_EXCEEDED"),  # the daemon's CALL_TIMEOUT (server.max_call_seconds)
    }
    runs = {question: Cli("ask", question, *a, env={"MMROUTER_TOKEN": TOKEN}) for question in cases}
    for question, (code, status) in cases.items():
        result = runs[question].result()
        assert result.returncode == code, (question, result.stderr)
        assert result.stderr.startswith(f"{status}: "), result.stderr
        assert "Traceback" not in result.stderr
    # the last line says the reason, the retry delay and the request id, the one in the daemon's log
    rate_limited = cli("ask", "FAIL:429", *a)
    line = last_line(rate_limited.stderr)
    assert line.startswith("reason PROVIDER_RATE_LIMITED; retry in 7 s; request id "), rate_limited.stderr
    assert line.rpartition(" ")[2] in daemon.logs()
    assert last_line(cli("ask", "SLOW:30", *a).stderr).startswith("reason CALL_TIMEOUT; request id ")

    assert cli("ask", "hi", "--address", NOWHERE).returncode == 3  # gRPC's own UNAVAILABLE: not reached
    refused = cli("ask", "hi", *a, env={"MMROUTER_TOKEN": "wrong"})
    assert refused.returncode == 4 and refused.stderr.startswith("UNAUTHENTICATED"), refused.stderr
    assert cli("providers", *a, env={"MMROUTER_TOKEN": "wrong"}).returncode == 4
    # --timeout (or MMROUTER_TIMEOUT): the CLI's own deadline
    for given in (("--timeout", "1"), ()):
        timed_out = cli("ask", "SLOW:30", *given, *a, env={} if given else {"MMROUTER_TIMEOUT": "1"})
        assert timed_out.returncode == 6, timed_out.stderr
        assert timed_out.stderr.startswith("DEADLINE_EXCEEDED"), timed_out.stderr
    explained = cli("explain", "x", "--timeout", "0.000001", *a)
    assert explained.returncode == 6, explained.stderr


def test_json_errors_are_one_object_on_stdout(start_daemon):
    daemon = start_daemon(SCRIPTED)
    result = cli("ask", "FAIL:429", "--json", "--address", daemon.address)
    assert result.returncode == 5
    error = json.loads(result.stdout)["error"]
    assert set(error) == {"code", "reason", "message", "retry_after_seconds", "request_id", "metadata",
                          "field_violations"}
    assert (error["code"], error["reason"], error["retry_after_seconds"]) == ("RESOURCE_EXHAUSTED",
                                                                              "PROVIDER_RATE_LIMITED", 7.0)
    assert error["request_id"] and error["request_id"] in daemon.logs()
    assert "scripted failure 429" in error["message"]
    assert result.stderr.startswith("RESOURCE_EXHAUSTED: ")  # the human line stays on stderr
    # bad input: the field violations, as the daemon names them; stderr names the options instead
    bad = cli("ask", "hi", "--tag", "", "--json", "--address", daemon.address)
    assert bad.returncode == 2, bad.stderr
    error = json.loads(bad.stdout)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["request.hints.tags[0]"]
    assert "--tag #1" in bad.stderr and "request.hints" not in bad.stderr, bad.stderr
    # gRPC's own errors: no reason, no request id
    unreached = cli("explain", "hi", "--json", "--address", NOWHERE)
    assert unreached.returncode == 3
    error = json.loads(unreached.stdout)["error"]
    assert (error["code"], error["reason"], error["request_id"]) == ("UNAVAILABLE", "", "")
    assert json.loads(cli("providers", "--json", "--address", NOWHERE).stdout)["error"]["code"] == "UNAVAILABLE"


LONG_CONFIG = """
server: {{max_message_bytes: 2097152, inline_limit_bytes: 1048576}}
providers:
  openai:
    api_key: "${{OPENAI_TEST_KEY}}"
    base_url: "{url}"
default: openai/gpt-4o
"""


def test_ask_json_has_the_whole_text_when_done_leaves_it_out(start_daemon):
    """Over server.max_message_bytes, Done leaves the text out (the deltas carried it): --json rebuilds it."""
    with FakeOpenAI() as upstream:
        upstream.reply_chunks = [f"{i:04d}" + "x" * 60_000 + "\n" for i in range(40)]  # 2.4 MB
        daemon = start_daemon(LONG_CONFIG.format(url=upstream.base_url), env={"OPENAI_TEST_KEY": API_KEY})
        result = ok(run_cli("ask", "a long one", "--json", "--address", daemon.address))
    answer = json.loads(result.stdout)
    assert any("left out of Done" in note for note in answer["route"]["notes"])  # the daemon did leave it out
    assert answer["text"] == "".join(upstream.reply_chunks)


def test_json_prints_every_field_in_protobufs_json_mapping(start_daemon):
    daemon = start_daemon(CONFIG)
    answer = json.loads(ok(run_cli("ask", "hi", "--json", "--address", daemon.address)).stdout)
    assert answer["usage"]["cachedInputTokens"] == "0"  # at its default, and an int64: a string
    assert answer["usage"]["audioSeconds"] == 0
    assert "transcript" not in answer  # a message field, which has presence: only when there is one
    listing = json.loads(ok(run_cli("providers", "--json", "--address", daemon.address)).stdout)
    fake = next(p for p in listing["providers"] if p["name"] == "fake")
    assert fake["reason"] == "" and "health" in fake
    route = json.loads(ok(run_cli("explain", "hi", "--json", "--address", daemon.address)).stdout)
    assert (route["rule"], route["provider"], route["model"]) == ("chat", "fake", "echo")
    assert route["fallbacks"] == [] and route["notes"] == []
    assert [t["rule"] for t in route["trace"]][-1] == "chat"


def test_route_tables_and_the_ok_line_stay_one_line_each_when_piped(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG)
    piped = {"COLUMNS": ""}  # no terminal, no COLUMNS: a CI log
    explained = ok(run_cli("explain", "hi", "--address", daemon.address, env=piped)).stdout
    asked = ok(run_cli("ask", "hi", "--address", daemon.address, env=piped)).stderr
    for printed in (explained, asked):  # this row is over 80 columns: it wrapped there
        [row] = [line.split() for line in printed.splitlines() if line.split()[:1] == ["media"]]
        assert " ".join(row) == "media not matched needs any of [audio, document, image, video], request has [text]"
    deep = tmp_path / ("deploy/environments/production/eu-west-1/" + "mmrouter-routing/" * 3)
    deep.mkdir(parents=True)
    (deep / "router-production.yaml").write_text("default: local/extract\n")
    checked = run_cli("config", "check", deep / "router-production.yaml", env=piped)
    assert checked.stdout == f"{deep / 'router-production.yaml'}: OK — 0 rule(s), default local/extract\n"


def test_a_reader_that_goes_away_ends_ask_with_141_and_no_traceback(start_daemon):
    daemon = start_daemon(CONFIG)
    proc = subprocess.Popen([str(MMROUTER), "ask", "ENDLESS", "--address", daemon.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100_000)  # as `head -c` would, then it goes away
    proc.stdout.close()
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("ask went on writing to a closed pipe")
    assert code == 141
    assert proc.stderr.read() == b""


def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_1(start_daemon):
    daemon = start_daemon(CONFIG)
    for redirect in ("> /dev/full", ">&-"):
        for json_flag in ("", "--json"):
            result = subprocess.run(f'exec "{MMROUTER}" ask hi {json_flag} --address {daemon.address} {redirect}',
                                    shell=True, capture_output=True, text=True, timeout=60, check=False)
            assert result.returncode == 1, (redirect, result.stderr)
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, (redirect, result.stderr)
            expected = ("cannot write to standard output: No space left on device" if "full" in redirect else
                        "standard output is closed")
            assert lines[0].startswith(expected), result.stderr


def test_an_empty_mmrouter_address_is_refused_as_an_empty_address_is():
    for command in (("ask", "hi"), ("providers",), ("explain", "hi"), ("reset", "s1")):
        result = run_cli(*command, env={"MMROUTER_ADDRESS": ""})
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith("MMROUTER_ADDRESS is set but empty"), result.stderr


def test_wait_waits_for_a_daemon_still_starting(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    waiting = Cli("providers", "--json", "--wait", "60", "--address", address)
    time.sleep(1)  # the daemon starts after the command
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--address", address, "--data-dir",
                              str(tmp_path / "data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        listing = json.loads(ok(waiting.result(90)).stdout)
    finally:
        serve.terminate()
        serve.wait(30)
    assert "local" in {p["name"] for p in listing["providers"]}


def test_raw_prints_the_text_as_received_and_plain_output_escapes_it(start_daemon):
    daemon = start_daemon(CONFIG)
    question = "red \x1b[31mRED\x1b[0m and a\rCR"
    raw = mmrouter("ask", question, "--raw", "--address", daemon.address)  # bytes: a CR stays a CR
    assert raw.returncode == 0 and raw.stdout == (echo("echo", question) + "\n").encode()
    plain = ok(run_cli("ask", question, "--address", daemon.address))
    assert "\x1b" not in plain.stdout and "\\x1b[31m" in plain.stdout
    both = run_cli("ask", question, "--raw", "--json", "--address", daemon.address)
    assert both.returncode == 2


def test_a_file_that_grows_during_its_upload_is_refused_naming_it(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG)
    log = tmp_path / "grow.txt"
    log.write_bytes(b"log line 12345 lorem ipsum\n" * 1_000_000)  # 27 MB: uploaded in 1 MiB chunks
    done = threading.Event()

    def append() -> None:  # a log still being written
        while not done.is_set():
            with log.open("ab") as f:
                f.write(b"appended\n")
            time.sleep(0.002)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        result = run_cli("ask", "summarise", "--pdf", log, "--inline-limit", "0", "--address", daemon.address)
    finally:
        done.set()
        writer.join()
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{log} changed while it was being uploaded (") and line.endswith(
        " bytes): send a finished copy"), line


def test_config_check_as_a_ci_gate(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert run_cli("config", "check", empty).returncode == 0  # a warning only
    strict = run_cli("config", "check", "--strict", empty)
    assert strict.returncode == 1 and "every request will be refused" in strict.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"default: caf\xe9/x\n")
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("routes: [\n")
    for broken in (latin, syntax):
        assert run_cli("config", "check", broken).returncode == 1, broken  # the content: 1, as a schema error
    assert run_cli("config", "check", tmp_path / "missing.yaml").returncode == 2  # no file at that path
    bad_url = tmp_path / "url.yaml"
    bad_url.write_text('providers:\n  openai:\n    api_key: sk-x\n    base_url: "htp://user:pw-1234@gw"\n'
                       "default: openai/gpt-4o\n")
    result = run_cli("config", "check", bad_url)
    assert result.returncode == 1
    assert "providers.openai.base_url" in result.stderr and "http:// or https://" in result.stderr
    assert "pw-1234" not in result.stderr


@pytest.mark.parametrize("option", ["--timeout", "--wait"])
@pytest.mark.parametrize("value", ["inf", "1e10"])
def test_a_timeout_or_wait_too_long_for_grpc_is_a_usage_error(option: str, value: str) -> None:
    """``--timeout inf`` failed at once as timed out (exit 6) with the daemon up; ``--wait inf`` raised an
    OverflowError traceback."""
    refused = run_cli("ask", "hi", option, value, "--address", f"127.0.0.1:{free_port()}")
    assert refused.returncode == 2, refused
    assert "Traceback" not in refused.stderr and "less than or equal to 1000000" in refused.stderr, refused.stderr


def test_a_base_url_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    """OPENAI_BASE_URL without a scheme was blamed on providers.openai.base_url of the file, which sets none."""
    config = tmp_path / "router.yaml"
    config.write_text("providers:\n  openai: {api_key: sk-x}\ndefault: openai/gpt-4o\n")
    checked = run_cli("config", "check", config, env={"OPENAI_BASE_URL": "localhost:8000/v1"})
    assert checked.returncode == 1, checked
    assert ("providers.openai.base_url (from the environment variable OPENAI_BASE_URL): Value error, must start "
            "with http:// or https:// (it has no scheme)") in " ".join(checked.stderr.split()), checked.stderr
