"""What a newcomer trips on first: files without their extension, a suggested port that is taken too,
no Python example, ``ask --language`` and ``reset`` missing, and tables broken mid-word in a CI log.

The real CLI (tests/test_cli.py's ``Cli``) and the Python example (a subprocess) against the real daemon
(tests/conftest.py's ``start_daemon``, with the scripted ``fake`` provider or the offline ``local`` one).
TCP ports held by these tests are chosen free, under the kernel's ephemeral range (see ``free_ports``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from test_cli import CONFIG, MMROUTER, Cli, make_mp4, make_pdf, make_png, make_wav, make_webm, ok, run_cli

from router.cli import PORTS_TO_TRY

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python-client" / "client.py"


def make_image(path: Path, fmt: str) -> Path:
    """A small image in Pillow's format ``fmt`` (BMP, TIFF) at ``path``."""
    from PIL import Image

    Image.new("RGB", (6, 4), (9, 8, 7)).save(path, format=fmt)
    return path


def stored_type(daemon, data: bytes) -> tuple[str, str]:
    """(MIME type, modality) the daemon's media store recorded for uploaded ``data``."""
    sha = hashlib.sha256(data).hexdigest()
    meta = json.loads((daemon.data_dir / "media" / sha[:2] / f"{sha}.json").read_text())
    return meta["mime_type"], meta["modality"]


# -- a. files without their extension ---------------------------------------------------------------


def test_media_without_an_extension_of_their_kind_are_sent_by_their_content(start_daemon, tmp_path) -> None:
    """A PNG saved as ``receipt`` or ``receipt.xyz``, a WAV as ``call``: the CLI sent the extension's type
    (application/octet-stream, chemical/x-xyz) and the daemon refused it ("is not an image type"); the
    content's type is sent, as the daemon's magic-byte check knows it."""
    daemon = start_daemon(CONFIG)
    files = {  # name, option -> the type it is sent as
        ("receipt", "--image"): (make_png(tmp_path / "a.png", (1, 2, 3)), "image/png", "image"),
        ("receipt.xyz", "--image"): (make_png(tmp_path / "b.png", (4, 5, 6)), "image/png", "image"),
        ("call", "--audio"): (make_wav(tmp_path / "c.wav", 0.2), "audio/wav", "audio"),
        ("voice-note.bin", "--audio"): (make_webm(tmp_path / "d.webm"), "audio/webm", "audio"),
        ("talk", "--video"): (make_mp4(tmp_path / "e.mp4"), "video/mp4", "video"),
        ("scan", "--image"): (make_image(tmp_path / "f.bmp", "BMP"), "image/bmp", "image"),
        ("fax.bin", "--image"): (make_image(tmp_path / "g.tif", "TIFF"), "image/tiff", "image"),
    }
    calls = {}
    for (name, option), (made, _, _) in files.items():
        (tmp_path / name).write_bytes(made.read_bytes())
        # --inline-limit 0: uploaded, so the daemon's media store records the type it was sent as
        calls[name] = Cli("explain", "what is it", option, tmp_path / name, "--inline-limit", "0",
                          "--address", daemon.address)
    for (name, _), (made, mime, modality) in files.items():
        result = ok(calls[name].result())
        assert "route: rule media -> fake/omni" in result.stdout, result.stdout
        assert stored_type(daemon, made.read_bytes()) == (mime, modality), name

    answered = ok(Cli("ask", "what is it", "--image", tmp_path / "receipt", "--address", daemon.address).result())
    assert "image=1" in answered.stdout, answered.stdout


def test_media_whose_content_is_not_of_their_kind_are_refused_saying_to_rename_them(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG)
    (tmp_path / "notes").write_text("plain text, no picture\n")
    (tmp_path / "scan.dat").write_bytes(make_pdf(tmp_path / "scan.pdf", "Scanned").read_bytes())
    (tmp_path / "clip").write_bytes(make_png(tmp_path / "still.png", (0, 0, 0)).read_bytes())
    cases = {
        ("--image", "notes"): "it has no extension, and its content is not an image the CLI knows by its first "
                              "bytes; rename it with its extension (e.g. .png, .jpg or .heic)",
        ("--image", "scan.dat"): "its extension .dat names no known type, and its content is not an image the CLI "
                                 "knows by its first bytes (it looks like application/pdf); rename it with its "
                                 "extension (e.g. .png, .jpg or .heic)",
        ("--video", "clip"): "it has no extension, and its content is not a video the CLI knows by its first bytes "
                             "(it looks like image/png); rename it with its extension (e.g. .mp4 or .mov)",
    }
    for (option, name), why in cases.items():
        result = run_cli("ask", "what is it", option, tmp_path / name, "--address", daemon.address)
        assert (result.returncode, result.stdout) == (2, ""), result
        assert result.stderr.splitlines() == [f"cannot send {tmp_path / name} with {option}: {why}"], result.stderr


# -- b. serve on an address in use ------------------------------------------------------------------


@contextmanager
def listening(*ports: int) -> Iterator[None]:
    """Listen on each of ``ports`` of 127.0.0.1 meanwhile (as another daemon would)."""
    with ExitStack() as stack:
        for port in ports:
            held = stack.enter_context(socket.socket())
            held.bind(("127.0.0.1", port))
            held.listen()
        yield


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports of 127.0.0.1 free now, below the kernel's ephemeral range
    (fixed ports in it were taken by other connections' local ends: a CI run failed so)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, low - count)
        try:
            with ExitStack() as stack:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports under {low}")


def test_serve_on_an_address_in_use_suggests_a_port_that_is_free(tmp_path) -> None:
    """The next port was suggested unchecked (the tester's was taken too): a free one is, or only ``:0``
    when none of the next few (PORTS_TO_TRY) is."""
    first = free_ports(3 + 1 + PORTS_TO_TRY)
    some, all_ = first, first + 3  # some: its next port taken, the one after free; all_: its next ones taken
    with listening(some, some + 1, *range(all_, all_ + 1 + PORTS_TO_TRY)):
        next_taken = Cli("serve", "--address", f"127.0.0.1:{some}", "--data-dir", tmp_path / "data1")
        all_taken = Cli("serve", "--address", f"127.0.0.1:{all_}", "--data-dir", tmp_path / "data2")
        results = next_taken.result(60), all_taken.result(60)
    for result, suggested in zip(results, (f"127.0.0.1:{some + 2}, or 127.0.0.1:0", "127.0.0.1:0"), strict=True):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1].endswith(f"a free host:port, e.g. {suggested} for any free port"), \
            result.stderr


# -- c. the Python client example -------------------------------------------------------------------

EXAMPLE_CONFIG = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/omni
"""


def test_the_python_client_example_runs_against_the_daemon(start_daemon, tmp_path) -> None:
    daemon = start_daemon(EXAMPLE_CONFIG)
    image = make_png(tmp_path / "receipt.png", (200, 10, 10))
    env = {k: v for k, v in os.environ.items() if k != "MMROUTER_TOKEN"}
    result = subprocess.run([sys.executable, str(EXAMPLE), daemon.address, str(image)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert (result.returncode, result.stderr) == (0, ""), result
    lines = result.stdout.splitlines()
    asked = "fake/omni says: What does this say? [history=0 image=1 audio=0 video=0 document=0]"
    assert lines[0].startswith(f"inline: {asked}"), lines
    assert lines[1].startswith("  route: rule everything -> fake/omni, $0.000"), lines
    media_id = hashlib.sha256(image.read_bytes()).hexdigest()
    assert lines[2].startswith(f"uploaded {media_id[:12]}…: {asked}"), lines
    assert lines[3].startswith("session: fake/omni says: My name is Ada. [history=0"), lines
    assert lines[4].startswith("session: fake/omni says: What is my name? [history=1"), lines
    assert lines[5] == lines[4].replace("session: ", "session, asked again: ", 1), lines  # the kept answer
    assert "its kept answer is sent again; no provider was called and no turn added" in lines[6], lines
    assert lines[7] == "session reset: 4 stored message(s) removed", lines  # the retry added no turn
    streamed, done = lines[8], lines[9]
    assert streamed.startswith("stream: fake/omni says: ") and streamed.count("|") > 3, streamed
    assert done == "  done: fake/omni", lines
    assert lines[10].startswith("error: INVALID_ARGUMENT: "), lines
    assert lines[11].startswith("  reason: INVALID_REQUEST (request id "), lines
    assert lines[12].startswith("  field request.options.temperature: "), lines
    assert len(lines) == 13, lines


# -- d. ask --language and reset ----------------------------------------------------------------------


def test_ask_and_explain_send_the_language(start_daemon, tmp_path) -> None:
    """--language sets options.language: the offline transcriber takes no language other than English, so
    routing finds no route for French speech (nothing is decoded), and the daemon checks the tag."""
    local = start_daemon(None, plugins=())
    call = make_wav(tmp_path / "call.wav", 0.5)
    refused = run_cli("ask", "--audio", call, "--task", "transcribe", "--language", "fr", "--address", local.address)
    assert refused.returncode == 1, refused  # NO_ROUTE, FAILED_PRECONDITION: nothing can take it
    assert "local/extract: does not transcribe language 'fr' (takes en, eng)" in refused.stderr, refused.stderr

    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data2")
    ok(run_cli("ask", "hi", "--language", "pt-BR", "--address", daemon.address))
    ok(run_cli("explain", "hi", "--language", "pt-BR", "--address", daemon.address))
    for command in ("ask", "explain"):
        bad = run_cli(command, "hi", "--language", "not a tag", "--address", daemon.address)
        assert bad.returncode == 2 and bad.stderr.startswith("INVALID_ARGUMENT: "), bad
        assert "--language" in bad.stderr, bad.stderr  # the option given, not the request's field


def test_reset_forgets_a_session_and_says_what_it_removed(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    session = {"MMROUTER_SESSION": "newcomer-session-1"}
    for turn in ("first", "second"):
        ok(run_cli("ask", turn, "--address", daemon.address, env=session))
    assert "[history=2 " in ok(run_cli("ask", "third", "--address", daemon.address, env=session)).stdout

    reset = ok(run_cli("reset", "--address", daemon.address, env=session))  # the id from the environment
    assert reset.stdout == "session reset: 6 stored message(s) removed\n", reset
    assert "[history=0 " in ok(run_cli("ask", "again", "--address", daemon.address, env=session)).stdout
    assert ok(run_cli("reset", "newcomer-session-1", "--address", daemon.address)).stdout == \
        "session reset: 2 stored message(s) removed\n"

    unknown = run_cli("reset", "no-such-session", "--address", daemon.address)
    assert (unknown.returncode, unknown.stdout) == (1, ""), unknown
    assert unknown.stderr == (f"NOT_FOUND: the daemon at {daemon.address} has no such session (no stored turn, no "
                              "call under way): nothing to reset; check the id\n"), unknown.stderr
    missing = run_cli("reset", "--address", daemon.address)
    assert (missing.returncode, missing.stderr) == (2, "give the session to reset: mmrouter reset SESSION_ID, or "
                                                       "export MMROUTER_SESSION\n"), missing


# -- e. tables in a CI log --------------------------------------------------------------------------


def piped(*args: str | Path, columns: str | None = None) -> subprocess.CompletedProcess:
    """``mmrouter *args`` with stdout a pipe, as in a CI log: without COLUMNS unless ``columns`` is given."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "MMROUTER_ADDRESS", "FORCE_COLOR",
                                                            "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    if columns is not None:
        env["COLUMNS"] = columns
    return ok(subprocess.run([str(MMROUTER), *map(str, args)], capture_output=True, text=True, timeout=60, env=env))


def test_tables_piped_without_columns_keep_each_row_on_one_line(start_daemon) -> None:
    """Piped, rich drew 80 columns and broke model and rule names mid-word (``claude-so`` / ``nnet-4-6``)."""
    long_rule = "video-transcription-of-the-weekly-all-hands-meetings-of-the-whole-company"
    daemon = start_daemon(CONFIG.replace("name: chat", f"name: {long_rule}"),
                          plugins=("testkit", "broken_import"))
    ok(run_cli("ask", "hello", "--address", daemon.address))

    listing = piped("providers", "--address", daemon.address).stdout
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if line.startswith("│")}
    assert "echo, docs, omni, small, ears, diarizer" in rows["fake"], listing
    assert "this plugin needs a library that is not installed (on purpose)" in rows["broken_import"], listing
    assert "OPENAI_API_KEY" in rows["openai"], listing

    stats = piped("stats", "--data-dir", daemon.data_dir).stdout
    assert any(line.startswith(f"│ {long_rule} │ fake/echo ") for line in stats.splitlines()), stats

    # COLUMNS set: as wide as it says (names fold, see test_cli)
    narrow = piped("stats", "--data-dir", daemon.data_dir, columns="60").stdout
    assert long_rule not in narrow and all(len(line) <= 60 for line in narrow.splitlines()), narrow
