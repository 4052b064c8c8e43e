"""``ask`` and ``explain`` errors name the CLI's options, and ``--json`` prints every refusal as one object.

The daemon's errors name the request's fields (``request.turn_id``, ``request.messages``); the CLI shows them as
the options that filled them (``--turn-id``, the question, ``--task``, ``MMROUTER_SESSION``), as the README says.
With ``--json``, the CLI's own refusals (``--turn-id`` without ``--session``, a missing file, nothing on
standard input, a value it or typer refuses) print ``{"error": ...}`` on stdout in the shape of the daemon's
refusals, keeping their stderr line and exit code.

The real CLI (tests/test_cli_stdin.py's ``mmrouter``) against the real daemon (tests/conftest.py) and its
scripted ``fake`` provider.
"""

from __future__ import annotations

import json

from test_cli import CONFIG
from test_cli_stdin import mmrouter, text

#: The keys of every ``{"error": ...}`` that ``--json`` prints (tests/test_cli_scripting.py).
ERROR_KEYS = {"code", "reason", "message", "retry_after_seconds", "request_id", "metadata", "field_violations"}


def refused(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run ``mmrouter *args``, which the daemon refuses as bad input: its stdout and stderr."""
    code, out, err = text(mmrouter(*args, stdin=stdin, env=env))
    assert code == 2, (args, out, err)
    assert "Traceback" not in err
    return out, err


def test_daemon_errors_name_the_options_that_filled_the_requests_fields(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    a = ("--address", daemon.address)
    long_id = "x" * 129
    _, err = refused("ask", "hi", "--session", "s-long", "--turn-id", long_id, *a)
    assert "invalid request: --turn-id: 129 characters; at most 128" in err, err
    # a turn id given again with another question
    code, _, err = text(mmrouter("ask", "hi", "--session", "s-again", "--turn-id", "t1", *a))
    assert code == 0, err
    _, err = refused("ask", "another question", "--session", "s-again", "--turn-id", "t1", *a)
    assert "--turn-id: names a turn of this session that asked something else" in err, err
    # a blank question, from standard input or as the argument (after a system prompt: its own message)
    _, err = refused("ask", "-", *a, stdin=b"\n\n")
    assert ("the question from standard input (-): the request has no content: all text parts are empty"
            in err), err
    _, err = refused("ask", "  ", "--system", "be brief", *a)
    assert "invalid request: the question: a user message needs text or media" in err, err
    # the task, and a session id from the environment (named as the variable)
    _, err = refused("explain", "hi", "--task", "transcribe", *a)
    assert "invalid request: --task: TASK_TRANSCRIBE transcribes the audio or video" in err, err
    _, err = refused("ask", "hi", *a, env={"MMROUTER_SESSION": "s" * 300})
    assert "invalid request: MMROUTER_SESSION: 300 characters; at most 256" in err, err
    _, err = refused("ask", "hi", "--session", "s" * 300, *a)
    assert "invalid request: --session: 300 characters; at most 256" in err, err
    # --json keeps the daemon's fields, as it sent them; stderr names the option
    out, err = refused("ask", "hi", "--json", "--session", "s-long", "--turn-id", long_id, *a)
    error = json.loads(out)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["reason"] == "INVALID_REQUEST", error
    assert [v["field"] for v in error["field_violations"]] == ["request.turn_id"]
    assert "--turn-id: 129 characters" in err and "request." not in err, err


def _json_refusal(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """The ``{"error": ...}`` that ``mmrouter *args`` (with ``--json``), refused by the CLI itself, prints,
    and its stderr."""
    out, err = refused(*args, stdin=stdin, env=env)
    error = json.loads(out)["error"]
    assert set(error) == ERROR_KEYS, error
    assert (error["code"], error["reason"], error["request_id"], error["retry_after_seconds"]) == (
        "INVALID_ARGUMENT", "CLI_USAGE", "", None), error
    assert error["message"] in " ".join(err.split()), (error, err)  # the stderr line, as it was
    return error, err


def _fields(error: dict) -> list[str]:
    return [v["field"] for v in error["field_violations"]]


def test_the_clis_own_refusals_print_one_json_error_with_json(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG)
    a = ("--address", daemon.address)
    error, err = _json_refusal("ask", "--json", "--turn-id", "x", "hi", *a)
    assert _fields(error) == ["--turn-id"]
    assert err.startswith("--turn-id names a turn of a session: give --session"), err
    error, _ = _json_refusal("ask", "--json", "--pdf", "/nonexistent.pdf", "hi", *a)
    assert (_fields(error), error["message"]) == (["--pdf /nonexistent.pdf"], "no such file: /nonexistent.pdf")
    error, _ = _json_refusal("explain", "--json", "--image", str(tmp_path), "hi", *a)
    assert _fields(error) == [f"--image {tmp_path}"] and "is a directory" in error["message"]
    error, _ = _json_refusal("ask", "--json", "-", *a, stdin=b"")
    assert _fields(error) == ["PROMPT"] and error["message"].startswith("nothing to send"), error
    error, _ = _json_refusal("ask", "--json", "-", *a, stdin=b"\xff question")
    assert _fields(error) == ["PROMPT"] and "is not UTF-8 text" in error["message"], error
    error, _ = _json_refusal("explain", "--json", "--task", "bogus", "hi", *a)
    assert _fields(error) == ["--task"]
    error, _ = _json_refusal("ask", "--json", "--raw", "hi", *a)
    assert _fields(error) == ["--raw"]
    error, _ = _json_refusal("providers", "--json", "--address", "127.0.0.1:0")
    assert _fields(error) == ["--address"]
    # refused as typer parses the command: a value out of range, an empty MMROUTER_ADDRESS
    error, err = _json_refusal("ask", "hi", "--speakers", "-1", "--json", *a)
    assert _fields(error) == ["--speakers"] and "Invalid value for '--speakers'" in err, err
    error, _ = _json_refusal("ask", "--json", "hi", env={"MMROUTER_ADDRESS": ""})
    assert _fields(error) == ["MMROUTER_ADDRESS"]
    # without --json, stdout stays empty; an option typer does not know is typer's usage error alone
    assert refused("ask", "--turn-id", "x", "hi", *a)[0] == ""
    assert refused("ask", "--json", "--bogus", "hi", *a)[0] == ""
