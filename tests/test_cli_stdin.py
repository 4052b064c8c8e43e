"""Secrets off the command line: ``mmrouter ask -`` / ``explain -`` read the question from standard input,
and --session comes from $MMROUTER_SESSION when not given (a command line is visible in ``ps`` and kept in
the shell history; the session id is the key to a conversation).

The real CLI (tests/test_cli.py's ``mmrouter``) against the real daemon (tests/conftest.py), whose fake
provider echoes what it was asked and how many earlier turns (``history=N``) it saw.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from test_cli import CONFIG, MMROUTER, echo

#: Where no daemon listens: for usage errors, which must come before any call.
NOWHERE = "127.0.0.1:1"


def mmrouter(*args: str | Path, stdin: bytes | int | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``mmrouter *args`` with ``stdin`` (bytes to pipe in, or a file descriptor) and wait for it, at
    most ``timeout`` seconds (a CLI that waits for a stdin never closed fails the test, not hangs it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MMROUTER_")}
    full_env.update({"COLUMNS": "250", **(env or {})})
    piped = isinstance(stdin, bytes)
    try:
        return subprocess.run([str(MMROUTER), *map(str, args)], input=stdin if piped else None,
                              stdin=None if piped else (subprocess.DEVNULL if stdin is None else stdin),
                              capture_output=True, env=full_env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mmrouter {args} did not finish in {timeout} s")


def text(result: subprocess.CompletedProcess) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of ``result``, decoded."""
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_a_question_given_as_dash_is_read_from_standard_input(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    code, out, err = text(mmrouter("ask", "-", "--address", daemon.address, stdin=b"what is it?\n"))
    assert code == 0, err
    assert out == echo("echo", "what is it?") + "\n"  # echo's final newline is not part of the question
    assert "route: rule chat -> fake/echo" in err
    # explain too; with nothing on stdin (and no file) there is nothing to send, as for `explain` alone
    code, out, err = text(mmrouter("explain", "-", "--address", daemon.address, stdin=b"a question"))
    assert code == 0 and "route: rule chat -> fake/echo" in out, err
    for command in ("ask", "explain"):
        code, _, err = text(mmrouter(command, "-", "--address", daemon.address, stdin=b""))
        assert code == 2, err
        assert err == "nothing to send: give a question, or a file with --image, --audio, --video or --pdf\n"


def test_a_multi_line_utf8_question_from_stdin_arrives_whole(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    question = "Première ligne : ünïcödé, 日本語, emoji 🎉\n\n  indented second paragraph\n\ttab and [bold]markup[/bold]"
    code, out, err = text(mmrouter("ask", "-", "--address", daemon.address,
                                   stdin=(question + "\n").encode("utf-8")))
    assert code == 0, err
    assert out == echo("echo", question) + "\n"  # the provider saw every line, byte for byte (<<...>>)


def test_stdin_that_is_not_utf8_or_too_large_is_a_usage_error() -> None:
    code, _, err = text(mmrouter("ask", "-", "--address", NOWHERE, stdin=b"caf\xe9\n"))
    assert (code, err) == (2, "the question from standard input (-) is not UTF-8 text: byte 4 is 0xe9; "
                              "give it as UTF-8\n")
    # an endless stdin is read only up to what a request may carry, not until memory runs out
    with open("/dev/zero", "rb") as zero:
        code, _, err = text(mmrouter("explain", "-", "--address", NOWHERE, stdin=zero.fileno()))
    assert code == 2, err
    assert err.startswith("the question from standard input (-) is over 64 MiB"), err


def test_stdin_is_read_only_for_dash(start_daemon) -> None:
    """Without ``-`` stdin is left alone: a script's loop that feeds questions on its own stdin keeps
    them (the CLI would swallow the rest), and no question with an open stdin is still "nothing to send"."""
    daemon = start_daemon(CONFIG)
    loop = subprocess.run(["sh", "-c", f'while read -r q; do "{MMROUTER}" ask "$q" --address {daemon.address}; done'],
                          input=b"first\nsecond\n", capture_output=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MMROUTER_")})
    assert loop.returncode == 0, loop.stderr
    assert loop.stdout.decode() == echo("echo", "first") + "\n" + echo("echo", "second") + "\n"
    code, _, err = text(mmrouter("ask", "--address", daemon.address, stdin=b"not a question\n"))
    assert (code, err) == (2, "nothing to send: give a question, or a file with --image, --audio, --video or --pdf\n")


def test_at_a_terminal_dash_reads_until_ctrl_d_and_nothing_given_is_a_usage_error(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    master, terminal = pty.openpty()
    try:
        os.write(master, "typed at a terminal ✓\n\x04".encode())  # a line, then Ctrl-D at the start of the next
        code, out, err = text(mmrouter("ask", "-", "--address", daemon.address, stdin=terminal))
        assert code == 0, err
        assert out == echo("echo", "typed at a terminal ✓") + "\n"
        assert err.startswith("reading the question from standard input: end it with Ctrl-D\n"), err
        # an interactive terminal with no question: the usage error, at once (nothing is read)
        code, _, err = text(mmrouter("ask", "--address", daemon.address, stdin=terminal))
        assert (code, err) == (2, "nothing to send: give a question, or a file with --image, --audio, --video or "
                                  "--pdf\n")
    finally:
        os.close(master)
        os.close(terminal)


def test_the_session_comes_from_mmrouter_session_and_the_option_wins(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    env = {"MMROUTER_SESSION": "conversation-key-3f9a"}

    def history(*args: str, **kwargs) -> str:
        code, out, err = text(mmrouter("ask", *args, "--address", daemon.address, **kwargs))
        assert code == 0, err
        return out.split("[", 1)[1].split(" ", 1)[0]

    assert history("one", env=env) == "history=0"
    assert history("two", env=env) == "history=1"  # the first ask's turn, kept under the variable's session
    assert history("elsewhere", "--session", "other", env=env) == "history=0"  # --session wins over the variable
    assert history("three", env=env) == "history=2"  # ...and added nothing to the variable's session
    assert history("none", env={"MMROUTER_SESSION": ""}) == "history=0"  # an empty variable is no session
    assert history("-", env=env, stdin=b"four\n") == "history=3"  # both secrets off the command line

    # --help names the variable, never its value
    for command in ("ask", "explain"):
        code, out, _ = text(mmrouter(command, "--help", env=env))
        assert code == 0 and "MMROUTER_SESSION" in out and "conversation-key-3f9a" not in out, out


def test_a_session_variable_that_is_not_utf8_is_named() -> None:
    bad = os.fsdecode(b"bad\xff")
    for command in ("ask", "explain"):
        code, _, err = text(mmrouter(command, "x", "--address", NOWHERE, env={"MMROUTER_SESSION": bad}))
        assert (code, err) == (2, "MMROUTER_SESSION is not UTF-8 text: byte 4 is 0xff; give it as UTF-8\n")


def test_an_answer_the_terminal_cannot_encode_is_printed_escaped_not_lost(start_daemon) -> None:
    """A Latin-1 (or Shift-JIS, cp1252) console cannot show an emoji: the answer, already paid for, is
    printed with such characters as ``\\U`` escapes, not lost to a UnicodeEncodeError traceback."""
    daemon = start_daemon(CONFIG)
    result = mmrouter("ask", "café 🎉 日本", "--address", daemon.address, env={"PYTHONIOENCODING": "latin-1"})
    code, err = result.returncode, result.stderr.decode("latin-1")
    assert code == 0, err
    printed = result.stdout.decode("latin-1")
    assert printed == echo("echo", "café \\U0001f389 \\u65e5\\u672c") + "\n"  # é is Latin-1: kept as it is
    assert "route: rule chat -> fake/echo" in err and "Traceback" not in err


def test_an_answer_in_any_script_is_printed_as_written(start_daemon) -> None:
    """Spaces of every script, joiners, direction marks and new emoji are the answer's text: the CLI prints
    them as they are (it once wrote U+3000 as ``\\u3000``); a control character or a bidi override from
    upstream is still escaped."""
    daemon = start_daemon(CONFIG)
    question = "東京\u3000大阪 Bonjour\u202f! Ça va\xa0? می\u200cخواهم 🏳️\u200d🌈 שלום \u200fעולם \U0001fa77"  # noqa: RUF001 (the scripts are the point)
    code, out, err = text(mmrouter("ask", "-", "--address", daemon.address, stdin=question.encode()))
    assert code == 0, err
    assert out == echo("echo", question) + "\n"
    code, out, err = text(mmrouter("ask", "-", "--address", daemon.address, stdin="evil\x1b[2J\u202e".encode()))
    assert code == 0, err
    assert out == echo("echo", "evil\\x1b[2J\\u202e") + "\n"


def test_json_on_a_console_that_cannot_show_the_answer_stays_json(start_daemon) -> None:
    """``--json`` on a Latin-1 or Shift-JIS console: the Python escapes used for what the console cannot
    show are not JSON, so the answer's non-ASCII characters are JSON escapes there (a script parses it)."""
    daemon = start_daemon(CONFIG)
    question = "café 🎉 日本"
    for encoding in ("latin-1", "ascii", "shift_jis"):
        result = mmrouter("ask", question, "--json", "--address", daemon.address, env={"PYTHONIOENCODING": encoding})
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout.decode(encoding))
        assert answer["text"] == echo("echo", question), encoding
