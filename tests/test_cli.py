"""The ``mmrouter`` command end to end: the real CLI as a subprocess against the real daemon.

Every test runs ``.venv/bin/mmrouter`` (the installed console script) with
``--address`` pointing at a daemon from the ``start_daemon`` fixture (or the module's
``shared_daemon``), which serves the scripted ``fake`` provider of tests/testkit. The fake echoes
``fake/<model> says: <text> [history=N image=N audio=N video=N document=N] <<all text>>``
in 16-character deltas, so what the CLI prints shows what the provider saw.
Transcription models (``ears``) answer ``hello there`` and ``<N> bytes heard``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import pytest
from conftest import launch_daemon
from PIL import Image
from reportlab.pdfgen import canvas

MMROUTER = Path(sys.executable).parent / "mmrouter"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n%%EOF\n"

# A rule whose target's provider (openai, a plugin of this project) is installed but has no key
# (start_daemon drops every *_API_KEY), one whose provider is not installed at all, then rules
# that send documents, transcriptions, other media and plain chat to different fake models.
CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: needs-openai
    match: {tags: [premium]}
    use: openai/gpt-4o
  - name: ghost
    match: {tags: [premium, ghost]}
    use: ghost/model-1
  - name: pdf-only
    match: {inputs_any: [document], inputs_none: [image, audio, video]}
    use: fake/docs
  - name: transcription
    match: {inputs_any: [audio], task: [transcribe]}
    use: fake/ears
  - name: media
    match: {inputs_any: [image, audio, video, document]}
    use: fake/omni
  - name: chat
    use: fake/echo
"""


class Cli:
    """``mmrouter *args`` started in the background (so independent calls run side by side).

    Output is wide and uncoloured unless ``env`` says otherwise; ``without`` names more variables to unset.
    """

    def __init__(self, *args: str | Path, env: dict[str, str] | None = None, without: tuple[str, ...] = ()) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("MMROUTER_ADDRESS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", *without)}
        full_env["COLUMNS"] = "250"
        full_env.update(env or {})
        self.args = [str(MMROUTER), *map(str, args)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=full_env)
        self.done: subprocess.CompletedProcess | None = None

    def result(self, timeout: float = 30) -> subprocess.CompletedProcess:
        """The finished call (the same one when asked again)."""
        if self.done is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                stdout, stderr = self.proc.communicate()
                pytest.fail(f"{self.args} did not finish in {timeout} s:\n{stdout}\n{stderr}")
            self.done = subprocess.CompletedProcess(self.args, self.proc.returncode, stdout, stderr)
        return self.done


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``mmrouter *args`` and wait for it."""
    return Cli(*args, env=env).result()


@functools.cache
def help_of(*command: str) -> Cli:
    """``mmrouter *command --help``, started once per worker: several tests read the same help text."""
    return Cli(*command, "--help")


@functools.cache
def unreachable() -> tuple[str, list[Cli]]:
    """``ask x``, ``explain x`` and ``providers`` against an address nobody listens at, for a user who never set
    GRPC_VERBOSITY: ``(address, calls)``, started once per worker for the tests that read what they print."""
    address = f"127.0.0.1:{free_port()}"
    return address, [Cli(*command, "--address", address, env={"COLUMNS": "300"}, without=("GRPC_VERBOSITY",))
                      for command in (("ask", "x"), ("explain", "x"), ("providers",))]


@pytest.fixture(scope="module")
def shared_daemon(plugin_sites, tmp_path_factory):
    """One daemon of :data:`CONFIG` for the tests that only ask or explain through it: starting one per test
    cost a daemon start each. The fake provider keeps no state between calls; a failure without a retry delay
    (``PARTIAL:500``) cools nothing down. Tests sharing it must not read its stats (only ``stats --tag`` of a
    tag no other test sends), health (``mmrouter providers``), log or media store as a whole (only the
    records of bytes no other test sends), use a session, make the fake fail with a retry delay
    (``FAIL:429``), or stop it."""
    daemon = launch_daemon(CONFIG, tmp=tmp_path_factory.mktemp("cli-shared"), env=None,
                           sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def without_details(stderr: str) -> str:
    """``stderr`` of a failed call without its last line, the error's reason, retry delay and request id."""
    lines = stderr.splitlines(keepends=True)
    return "".join(lines[:-1]) if lines and lines[-1].startswith("reason ") else stderr


def echo(model: str, text: str, *, image=0, audio=0, video=0, document=0, all_text: str | None = None) -> str:
    """What the fake provider answers."""
    return (f"fake/{model} says: {text} [history=0 image={image} audio={audio} video={video} "
            f"document={document}] <<{text if all_text is None else all_text}>>")


def echo_cost(text: str, reply: str, price_in: float, price_out: float) -> tuple[int, int, float]:
    """(input tokens, output tokens, cost) the fake reports for a reply, as the daemon prices it."""
    tokens_in, tokens_out = len(text) // 4 + 1, len(reply) // 4
    return tokens_in, tokens_out, (tokens_in * price_in + tokens_out * price_out) / 1e6


# -- files -----------------------------------------------------------------------------------


def make_png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (6, 4), color).save(path, format="PNG")
    return path


def make_pdf(path: Path, text: str) -> Path:
    doc = canvas.Canvas(str(path))
    doc.drawString(72, 720, text)
    doc.showPage()
    doc.save()
    return path


def make_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack("<h", 1000) * int(seconds * rate))
    return path


def make_mp4(path: Path) -> Path:
    """An ISO-BMFF file: an ``ftyp`` box and an empty ``mdat`` box (right magic, no frames)."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + b"isom" + struct.pack(">I", 512) + b"isommp41"
    path.write_bytes(ftyp + struct.pack(">I", 8 + 256) + b"mdat" + bytes(256))
    return path


def make_webm(path: Path) -> Path:
    """An EBML header as WebM starts (right magic, no frames)."""
    path.write_bytes(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes(64))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a boxed rich table printed wide enough for one line per row, by first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def route_rows(text: str) -> dict[str, tuple[str, str]]:
    """The rule table of ``explain`` / ``ask``: rule -> (outcome, why)."""
    outcomes = ("not evaluated", "not matched", "matched", "skipped")
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^ (\S+)\s+(" + "|".join(outcomes) + r")\s+(.*?)\s*$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


# -- help --------------------------------------------------------------------------------------


def test_help_tells_a_newcomer_how_to_start():
    calls = help_of(), help_of("ask"), help_of("explain")
    main = ok(calls[0].result()).stdout
    for needed in ("mmrouter serve", "mmrouter ask", "--image", "--audio", "--video", "--pdf", "--address",
                   "MMROUTER_ADDRESS", "explain", "providers", "stats"):
        assert needed in main, f"{needed!r} missing from `mmrouter --help`:\n{main}"

    ask_help = ok(calls[1].result()).stdout
    for needed in ("--image", "--audio", "--video", "--pdf", "repeat", "--address", "MMROUTER_ADDRESS",
                   "127.0.0.1:50051", "--inline-limit", "UploadMedia", "--json", "--provider", "--model",
                   "--task", "transcribe", "--diarize", "--session"):
        assert needed in ask_help, f"{needed!r} missing from `mmrouter ask --help`:\n{ask_help}"

    explain_help = " ".join(ok(calls[2].result()).stdout.split())
    assert "without calling any provider" in explain_help
    assert "--image" in explain_help and "--address" in explain_help
    # explain keeps nothing in a session (its --session said "Keep a conversation under this id", as ask's)
    assert "nothing is added to it" in explain_help and "Keep a conversation" not in explain_help


def test_serve_help_names_the_defaults_it_reads():
    """serve's --data-dir gave no default, its --address no unix: socket, and SIGHUP said every server
    setting needs a restart, though a rotated auth_token is served at once."""
    shown = " ".join(ok(help_of("serve").result()).stdout.replace("│", " ").split())
    for needed in ("MMROUTER_DATA_DIR", "~/.local/share/mmrouter", "unix:/path", "rotated server.auth_token"):
        assert needed in shown, f"{needed!r} missing from `mmrouter serve --help`:\n{shown}"


def test_version_is_the_installed_distributions() -> None:
    """There was no way to tell what a container runs but ``pip show``; the start-up line names it too."""
    from importlib.metadata import version

    assert ok(run_cli("--version")).stdout.strip() == f"mmrouter {version('mmrouter-daemon')}"


def test_a_data_directory_under_a_folder_that_cannot_be_made_is_named(tmp_path) -> None:
    """A default data directory under a HOME that does not exist (a container's arbitrary user) said only
    "cannot start: /nonexistent: Permission denied": the folder the start failed to make is above the
    data directory, and the hint naming the data directory was left out."""
    data = "/proc/no-such-folder/mmrouter"  # /proc takes no new folder, for root too
    done = subprocess.run([str(MMROUTER), "serve", "--address", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MMROUTER_DATA_DIR": data}, cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot start: /proc/no-such-folder:" in done.stderr
    assert f"(server.data_dir, else $MMROUTER_DATA_DIR) {data} must be a directory the daemon can write" in done.stderr


def test_sdk_loggers_stay_at_info_when_the_daemon_logs_debug() -> None:
    """At log_level debug, Anthropic's SDK logged each request's whole body ("Request options": the
    conversation, each PDF and image in base64, one line of many MB)."""
    import logging

    from router.cli import SDK_LOGGERS, _log_to_stderr

    root = logging.getLogger()
    saved = root.level, list(root.handlers), {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    try:
        _log_to_stderr("DEBUG", False)
        for name in ("anthropic._base_client", "openai._base_client", "google_genai._api_client", "assemblyai"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
            assert logging.getLogger(name).isEnabledFor(logging.INFO), name
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


# -- ask ---------------------------------------------------------------------------------------


def test_a_stream_that_fails_after_text_puts_its_error_on_a_line_of_its_own(shared_daemon):
    """The error of a stream broken mid-answer was printed right after the text already shown
    ("...began INTERNAL: ..."), reading as part of the answer."""
    daemon = shared_daemon
    result = run_cli("ask", "PARTIAL:500", "--address", daemon.address)
    assert result.returncode == 5, result.stderr  # the provider is down: try again later
    assert result.stdout == "fake/echo began \n"
    assert result.stderr.startswith("UNAVAILABLE: fake: scripted failure 500 mid-answer"), result.stderr


def test_ask_streams_the_answer_and_reports_route_usage_and_cost(shared_daemon):
    daemon = shared_daemon
    # Markup and emoji codes must reach stdout as the provider wrote them.
    prompt = "hello :smile: [bold]there[/bold]"
    long_word = "a-long-unbroken-word-" * 4
    main = Cli("ask", prompt, "--address", daemon.address)
    narrow = Cli("ask", long_word, "--address", daemon.address, env={"COLUMNS": "10"})
    via_env = Cli("ask", "from env", env={"MMROUTER_ADDRESS": daemon.address})
    result = ok(main.result())
    reply = echo("echo", prompt)
    assert result.stdout == reply + "\n"  # the answer only, exactly; everything else is on stderr

    tokens_in, tokens_out, cost = echo_cost(prompt, reply, 1.0, 2.0)  # fake/echo: $1 / $2 per Mtok
    err = result.stderr
    assert "route: rule chat -> fake/echo" in err
    assert route_rows(err)["chat"] == ("matched", "conditions hold; using fake/echo")
    assert "step answer: fake/echo " in err and f"${cost:.6f}" in err
    assert re.search(rf"usage: {tokens_in} in, {tokens_out} out, 0\.0s audio, \${cost:.6f}, \d+ ms", err), err
    assert "says:" not in err

    # A long answer is not re-wrapped at the terminal width (the fake streams 16-character deltas).
    assert ok(narrow.result()).stdout == echo("echo", long_word) + "\n"

    # The address may come from the environment instead of --address.
    assert ok(via_env.result()).stdout == echo("echo", "from env") + "\n"


def test_ask_sends_max_tokens_and_says_when_the_answer_was_cut(shared_daemon):
    daemon = shared_daemon
    cut = ok(run_cli("ask", "CUT this short", "--max-tokens", "3", "--address", daemon.address))
    assert cut.stdout == echo("echo", "CUT this short")[:12] + "\n"  # 3 tokens of the testkit's 4 characters
    assert "the answer was cut at the output limit" in " ".join(cut.stderr.split())
    assert "note: the answer was cut at fake/echo's output limit" in " ".join(cut.stderr.split())
    whole = ok(run_cli("ask", "not cut", "--address", daemon.address))
    assert "cut" not in whole.stderr
    as_json = json.loads(ok(run_cli("ask", "CUT", "--max-tokens", "2", "--json", "--address", daemon.address)).stdout)
    assert as_json["finishReason"] == "FINISH_REASON_LENGTH" and len(as_json["text"]) == 8


def test_ask_json_escapes_characters_a_terminal_would_misread(shared_daemon):
    """JSON escapes only C0 controls: a provider's C1 control (U+009B, CSI to some terminals) or a
    bidirectional override was printed raw. They are escaped now, and the JSON reads back the same."""
    daemon = shared_daemon
    question = "csi \x9b2J and \u202eevil and \x1b[31m and \u00e9t\u00e9"
    result = ok(run_cli("ask", question, "--json", "--address", daemon.address))
    assert not any(c in result.stdout for c in "\x9b\u202e\x1b"), repr(result.stdout)
    assert "\u00e9t\u00e9" in result.stdout  # printable text stays as it is
    assert json.loads(result.stdout)["text"] == echo("echo", question)


def test_ask_json_prints_the_whole_answer(shared_daemon):
    daemon = shared_daemon
    result = ok(run_cli("ask", "as json please", "--json", "--address", daemon.address))
    answer = json.loads(result.stdout)
    reply = echo("echo", "as json please")
    tokens_in, tokens_out, cost = echo_cost("as json please", reply, 1.0, 2.0)
    assert answer["text"] == reply
    assert answer["usage"]["inputTokens"] == str(tokens_in)
    assert answer["usage"]["outputTokens"] == str(tokens_out)
    assert answer["usage"]["costUsd"] == pytest.approx(cost)
    route = answer["route"]
    assert (route["rule"], route["provider"], route["model"]) == ("chat", "fake", "echo")
    assert [t["rule"] for t in route["trace"]] == ["needs-openai", "ghost", "pdf-only", "transcription", "media",
                                                   "chat"]
    assert route["trace"][-1]["outcome"] == "RULE_OUTCOME_MATCHED"
    assert route["attempts"] == [{"provider": "fake", "model": "echo", "ok": True, "error": "",
                                  "latencyMs": route["attempts"][0]["latencyMs"]}]
    assert route["steps"][0]["purpose"] == "answer"
    assert route["latencyMs"] > 0
    # JSON mode prints nothing but the JSON: no streamed text, no route on stderr.
    assert "route:" not in result.stderr and "usage:" not in result.stderr


def test_ask_sends_images_pdfs_audio_and_video(shared_daemon, tmp_path):
    daemon = shared_daemon
    files = [
        "--image", make_png(tmp_path / "red.png", (255, 0, 0)),
        "--image", make_png(tmp_path / "blue.png", (0, 0, 255)),
        "--pdf", make_pdf(tmp_path / "report.pdf", "Quarterly report"),
        "--pdf", make_pdf(tmp_path / "annex.pdf", "Annex"),
        "--audio", make_wav(tmp_path / "clip.wav", 0.25),
        "--video", make_mp4(tmp_path / "movie.mp4"),
        "--video", make_webm(tmp_path / "clip.webm"),
    ]
    mixed = Cli("ask", "compare these", *files, "--address", daemon.address)
    pdfs = Cli("ask", "summarise", "--pdf", tmp_path / "report.pdf", "--pdf", tmp_path / "annex.pdf",
               "--system", "be brief", "--address", daemon.address)
    heard = Cli("ask", "--audio", tmp_path / "clip.wav", "--task", "transcribe", "--address", daemon.address)
    result = ok(mixed.result())
    assert result.stdout == echo("omni", "compare these", image=2, audio=1, video=2, document=2) + "\n"
    assert "route: rule media -> fake/omni" in result.stderr
    rows = route_rows(result.stderr)
    # (the brackets in reasons must survive rich's markup)
    assert rows["pdf-only"] == ("not matched",
                                "needs none of [audio, image, video], request has [audio, document, image, text, video]")
    assert rows["media"] == ("matched", "conditions hold; using fake/omni")

    # PDFs alone go to the documents model; several of them, with a system prompt.
    pdfs = ok(pdfs.result())
    assert pdfs.stdout == echo("docs", "summarise", document=2, all_text="be brief | summarise") + "\n"
    assert "route: rule pdf-only -> fake/docs" in pdfs.stderr

    # A transcription: the transcript is the answer on stdout, with timings on stderr.
    heard = ok(heard.result())
    size = (tmp_path / "clip.wav").stat().st_size
    assert heard.stdout == f"hello there {size} bytes heard\n"
    assert "transcript" in heard.stderr
    assert "[   0.00s] hello there" in heard.stderr
    assert f"[   1.00s] {size} bytes heard" in heard.stderr
    assert "route: rule transcription -> fake/ears" in heard.stderr
    assert re.search(r"usage: 0 in, 0 out, 2\.0s audio, \$0\.000200, \d+ ms", heard.stderr), heard.stderr


def test_a_file_over_the_inline_limit_is_uploaded_and_sent_by_id(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG)
    big = make_wav(tmp_path / "long-interview.wav", 160)  # 2.56 MB: three 1 MiB chunks
    data = big.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    stored = daemon.data_dir / "media" / sha[:2] / sha
    assert not stored.exists()

    png = make_png(tmp_path / "small.png", (0, 255, 0))
    png_sha = hashlib.sha256(png.read_bytes()).hexdigest()
    # FORCE_COLOR makes rich draw its live progress display even though stderr is a pipe.
    upload = Cli("ask", "--audio", big, "--task", "transcribe", "--inline-limit", "1000000",
                 "--address", daemon.address, env={"FORCE_COLOR": "1"})
    mixed = Cli("ask", "what is this", "--audio", big, "--image", png, "--inline-limit", "1000000",
                "--address", daemon.address, env={"FORCE_COLOR": "1"})
    result = ok(upload.result())
    assert result.stdout == f"hello there {len(data)} bytes heard\n"  # every byte reached the provider
    err = ANSI.sub("", result.stderr)
    assert "uploading long-interview.wav" in err
    assert re.search(r"2\.6/2\.6 MB", err), err  # the finished progress bar
    assert stored.read_bytes() == data  # content-addressed: media/<sha[:2]>/<sha256>
    meta = json.loads(stored.with_suffix(".json").read_text())
    assert meta == {"mime_type": "audio/wav", "modality": "audio", "size": len(data)}  # no file name is kept

    # Beside it, a small image under the limit goes inline (not through the store).
    mixed = ok(mixed.result())
    assert mixed.stdout == echo("omni", "what is this", image=1, audio=1) + "\n"
    assert "uploading long-interview.wav" in ANSI.sub("", mixed.stderr)
    assert "uploading small.png" not in ANSI.sub("", mixed.stderr)
    assert not (daemon.data_dir / "media" / png_sha[:2] / png_sha).exists()
    assert sorted(p.name for p in (daemon.data_dir / "media" / sha[:2]).iterdir()) == [sha, f"{sha}.json"]


def test_when_the_daemon_takes_less_inline_media_the_cli_uploads_and_retries(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG + "server:\n  inline_limit_bytes: 2000\n")
    png = tmp_path / "photo.png"
    Image.frombytes("RGB", (40, 40), os.urandom(40 * 40 * 3)).save(png, format="PNG")  # noise: ~5 KB
    assert png.stat().st_size > 2000  # inline for the CLI (4 MiB), too large for this daemon
    sha = hashlib.sha256(png.read_bytes()).hexdigest()
    asked = Cli("ask", "what is this", "--image", png, "--json", "--address", daemon.address)
    explained = Cli("explain", "what is this", "--image", png, "--address", daemon.address)
    answer = json.loads(ok(asked.result()).stdout)
    assert answer["text"] == echo("omni", "what is this", image=1)
    assert (daemon.data_dir / "media" / sha[:2] / sha).read_bytes() == png.read_bytes()
    explained = ok(explained.result())
    assert "takes less inline media" in explained.stderr and "route: rule" in explained.stdout


def test_over_the_requests_media_limit_the_cli_does_not_upload_in_vain(start_daemon, tmp_path):
    """``max_request_media_bytes`` counts uploads too: the CLI reports it instead of uploading the files
    to be refused again."""
    daemon = start_daemon(CONFIG + "server:\n  max_request_media_bytes: 8000\n")
    png = tmp_path / "photo.png"
    Image.frombytes("RGB", (40, 40), os.urandom(40 * 40 * 3)).save(png, format="PNG")  # noise: ~5 KB
    result = run_cli("ask", "twice", "--image", png, "--image", png, "--address", daemon.address)
    assert result.returncode != 0 and "PAYLOAD_TOO_LARGE" not in result.stdout
    assert "max_request_media_bytes" in " ".join(result.stderr.split())
    assert "takes less inline media" not in result.stderr
    assert not list((daemon.data_dir / "media").rglob("*.json")), "files were uploaded in vain"


def _run_while_the_only_upload_place_is_held(daemon, *args: str | Path,
                                             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmrouter *args`` while another client's upload holds the only upload place of ``daemon``
    (``max_concurrent_uploads: 1``): its metadata and a first chunk, then a pause until the CLI says it
    waits for a place (or ends); then it ends, stored. The CLI's stderr comes without ANSI codes."""
    from mmrouter.v1 import router_pb2 as pb

    release = threading.Event()

    def held_upload():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", size_bytes=len(PDF)))
        yield pb.UploadMediaRequest(chunk=PDF[:10])
        release.wait(60)
        yield pb.UploadMediaRequest(chunk=PDF[10:])

    held = daemon.stub.UploadMedia.future(held_upload(), timeout=90)
    tmp = daemon.data_dir / "media" / "tmp"
    deadline = time.monotonic() + 10
    while not (tmp.is_dir() and any(tmp.iterdir())):  # the held upload has the only place
        assert time.monotonic() < deadline, "the held upload never started"
        time.sleep(0.05)
    cli = Cli(*args, env=env)
    lines: list[str] = []

    def read_stderr() -> None:
        for line in cli.proc.stderr:
            lines.append(ANSI.sub("", line))
            if "waiting to upload" in line:
                release.set()
        release.set()  # it ended without waiting

    reader = threading.Thread(target=read_stderr)
    reader.start()
    try:
        cli.proc.wait(60)
    except subprocess.TimeoutExpired:
        cli.proc.kill()
        pytest.fail(f"{cli.args} did not finish in 60 s:\n{''.join(lines)}")
    finally:
        release.set()
        reader.join(60)
    assert held.result(30).size_bytes == len(PDF)
    return subprocess.CompletedProcess(cli.args, cli.proc.returncode, cli.proc.stdout.read(), "".join(lines))


def test_when_the_daemon_runs_all_the_uploads_it_takes_the_cli_waits_and_uploads(start_daemon, tmp_path):
    """Over server.max_concurrent_uploads the daemon refuses an upload with TOO_MANY_UPLOADS and a
    RetryInfo: the CLI waits as told (saying so once) and uploads when a place is free."""
    daemon = start_daemon(CONFIG + "server:\n  max_concurrent_uploads: 1\n  inline_limit_bytes: 1024\n")
    png = tmp_path / "photo.png"
    Image.frombytes("RGB", (40, 40), os.urandom(40 * 40 * 3)).save(png, format="PNG")  # noise: ~5 KB
    sha = hashlib.sha256(png.read_bytes()).hexdigest()
    result = ok(_run_while_the_only_upload_place_is_held(daemon, "ask", "what is this", "--image", png,
                                                          "--address", daemon.address))
    assert result.stdout == echo("omni", "what is this", image=1) + "\n"
    assert result.stderr.count("the daemon has as many uploads under way as it takes: waiting to upload "
                               "photo.png (up to 30 s)") == 1, result.stderr
    assert (daemon.data_dir / "media" / sha[:2] / sha).read_bytes() == png.read_bytes()


def test_an_uploaded_file_name_ending_in_a_backslash_is_shown_as_it_is(start_daemon, tmp_path):
    r"""rich's escape() adds a backslash to text ending in one (for a tag that may follow): the upload's
    progress label and the message saying the upload waits showed a file ``scan\`` as ``scan\\``."""
    daemon = start_daemon(CONFIG + "server:\n  max_concurrent_uploads: 1\n")
    scan = tmp_path / "scan\\"
    scan.write_bytes(PDF)
    # FORCE_COLOR makes rich draw its live progress display even though stderr is a pipe.
    result = ok(_run_while_the_only_upload_place_is_held(daemon, "ask", "read it", "--pdf", scan, "--inline-limit",
                                                          "0", "--address", daemon.address, env={"FORCE_COLOR": "1"}))
    assert result.stdout == echo("docs", "read it", document=1) + "\n"
    assert "waiting to upload scan\\ (up to 30 s)" in result.stderr, result.stderr
    assert re.search(r"uploading scan\\ +━", result.stderr), result.stderr  # the label, then the bar
    assert "scan\\\\" not in result.stderr, result.stderr


# -- explain -----------------------------------------------------------------------------------


def test_explain_shows_every_rule_and_calls_no_provider(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG)
    texts = Cli("explain", "hello", "--tag", "premium", "--tag", "ghost", "--address", daemon.address)
    files = Cli("explain", "look", "--image", make_png(tmp_path / "a.png", (1, 2, 3)),
                "--audio", make_wav(tmp_path / "a.wav", 0.1), "--video", make_mp4(tmp_path / "a.mp4"),
                "--address", daemon.address)
    override = Cli("explain", "hi", "--provider", "fake", "--model", "small", "--address", daemon.address)
    result = ok(texts.result())
    out = result.stdout
    assert "route: rule chat -> fake/echo" in out
    rows = route_rows(out)
    assert list(rows) == ["needs-openai", "ghost", "pdf-only", "transcription", "media", "chat"]
    outcome, why = rows["needs-openai"]
    assert outcome == "skipped"
    assert why.startswith("no usable target: openai/gpt-4o: provider 'openai' is not usable: ")
    assert "OPENAI_API_KEY" in why  # the provider's own reason
    assert rows["ghost"] == ("skipped", "no usable target: ghost/model-1: provider 'ghost' is not installed")
    assert rows["pdf-only"] == ("not matched", "needs any of [document], request has [text]")
    assert rows["transcription"] == ("not matched", "needs any of [audio], request has [text]")
    assert rows["media"] == ("not matched", "needs any of [audio, document, image, video], request has [text]")
    assert rows["chat"] == ("matched", "conditions hold; using fake/echo")
    assert "says:" not in out + result.stderr  # fake/echo was not called...
    assert "step answer" not in out

    # ... with files, the same flags as ask: the media rule wins, later rules are not evaluated.
    files = ok(files.result())
    rows = route_rows(files.stdout)
    assert rows["needs-openai"] == ("not matched", "missing tags: premium")
    assert rows["pdf-only"] == ("not matched", "needs any of [document], request has [audio, image, text, video]")
    assert rows["transcription"] == ("not matched", "task is chat, rule wants transcribe")
    assert rows["media"] == ("matched", "conditions hold; using fake/omni")
    assert rows["chat"] == ("not evaluated", "rule 'media' already chose")
    assert "says:" not in files.stdout + files.stderr

    # ... and an override is explained too.
    override = ok(override.result())
    assert "route: rule override -> fake/small" in override.stdout
    assert route_rows(override.stdout) == {"override": ("matched", "the client chose fake/small")}

    # The daemon recorded no call at all.
    assert json.loads(ok(run_cli("stats", "--data-dir", daemon.data_dir, "--json")).stdout) == []


def test_a_request_no_rule_matches_without_a_default_says_so(start_daemon, tmp_path):
    """With no default, a request no rule matched got "no provider can take this request (text, task
    chat). " (trailing off when there were no rules): it says no rule matched and no default is set,
    with each rule's reason."""
    with_rules = start_daemon("providers: {fake: {api_key: k}}\n"
                              "routes:\n  - {name: pictures, match: {inputs_any: [image]}, use: fake/omni}\n")
    without_rules = start_daemon("server: {log_level: info}\n", data_dir=tmp_path / "data2")
    fix = "no rule matched and no default is set: add a `default:` target or a rule that matches this request"
    for command in ("ask", "explain"):
        result = Cli(command, "hi", "--address", with_rules.address).result()
        assert result.returncode == 1, result.stderr
        assert without_details(result.stderr) == (f"FAILED_PRECONDITION: {fix} (text, task chat): pictures: needs any of [image], "
                                 "request has [text]\n"), result.stderr
    result = Cli("ask", "hi", "--address", without_rules.address).result()
    assert result.returncode == 1, result.stderr
    assert without_details(result.stderr) == f"FAILED_PRECONDITION: {fix} (text, task chat) (there are no rules)\n", result.stderr


# -- providers ---------------------------------------------------------------------------------


def test_providers_lists_states_models_and_broken_plugins(start_daemon):
    daemon = start_daemon(CONFIG, plugins=("testkit", "broken_import", "broken_register"))
    wide = Cli("providers", "--address", daemon.address, env={"COLUMNS": "1000"})
    narrow = Cli("providers", "--address", daemon.address, env={"COLUMNS": "80"})
    result = ok(wide.result())
    rows = table_rows(result.stdout)
    assert rows["fake"] == ["fake", "fake", "ready", "echo, docs, omni, small, ears, diarizer", "", ""]
    _, plugin, state, models, reason, _ = rows["broken_import"]
    assert (plugin, state, models) == ("broken_import", "broken", "")
    assert "mmrouter-broken-import" in reason and "ImportError" in reason
    assert "this plugin needs a library that is not installed (on purpose)" in reason
    _, plugin, state, models, reason, _ = rows["broken_register"]
    assert (plugin, state, models) == ("broken_register", "broken", "")
    assert "RuntimeError: cannot start: on purpose" in reason
    assert rows["openai"][2] == "not_configured" and "OPENAI_API_KEY" in rows["openai"][4]
    assert list(rows) == sorted(rows)

    # At a plain 80 columns, names and states are still whole.
    narrow = ok(narrow.result())
    firsts = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
              for line in narrow.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert firsts["broken_register"] == ["broken_register", "broken"]
    assert firsts["broken_import"] == ["broken_import", "broken"]
    assert firsts["fake"] == ["fake", "ready"]
    assert firsts["openai"] == ["openai", "not_configured"]

    # --json, for monitoring: the whole listing, parsed
    listed = {p["name"]: p for p in json.loads(ok(run_cli("providers", "--json", "--address", daemon.address)).stdout)
              ["providers"]}
    assert listed["fake"]["state"] == "PROVIDER_STATE_READY" and listed["broken_import"]["state"] == "PROVIDER_STATE_BROKEN"
    assert [m["name"] for m in listed["fake"]["models"]][:2] == ["echo", "docs"]
    assert "OPENAI_API_KEY" in listed["openai"]["reason"]


# -- errors ------------------------------------------------------------------------------------


def test_errors_exit_non_zero_with_the_code_and_a_readable_message(shared_daemon, tmp_path):
    daemon = shared_daemon
    fake_png = tmp_path / "photo.png"  # bytes that are not what the name says
    fake_png.write_bytes(b"%PDF-1.4 not a picture at all")
    unknown = Cli("ask", "hi", "--provider", "nope", "--address", daemon.address)
    no_model = Cli("explain", "hi", "--provider", "fake", "--model", "nope", "--address", daemon.address)
    bad = Cli("ask", "what is it", "--image", fake_png, "--address", daemon.address)
    missing = Cli("ask", "hi", "--image", tmp_path / "nowhere.png", "--address", daemon.address)
    bad_task = Cli("ask", "hi", "--task", "sing", "--address", daemon.address)
    _, down = unreachable()  # nobody listens there
    no_records = Cli("stats", "--data-dir", tmp_path / "empty-data")

    unknown = unknown.result()
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.startswith("NOT_FOUND: unknown provider 'nope' (known: ")
    assert "fake" in unknown.stderr and "Traceback" not in unknown.stderr

    no_model = no_model.result()
    assert no_model.returncode == 1
    assert no_model.stderr.startswith("NOT_FOUND: provider 'fake' has no model 'nope'")

    # INVALID_ARGUMENT naming the file at fault as given, once (its BadRequest field violation says the same).
    bad = bad.result()
    assert bad.returncode == 2  # bad input, as the CLI's own usage errors
    assert without_details(bad.stderr) == (f"INVALID_ARGUMENT: --image {fake_png}: declared 'image/png' but the "
                          "content looks like application/pdf\n"), bad.stderr
    assert "Traceback" not in bad.stderr

    # Mistakes caught before any call.
    missing = missing.result()
    assert missing.returncode == 2 and f"no such file: {tmp_path / 'nowhere.png'}" in missing.stderr
    bad_task = bad_task.result()
    assert bad_task.returncode == 2 and "--task must be auto, chat or transcribe" in bad_task.stderr

    # Nobody listening: a clean UNAVAILABLE, for each command that talks to the daemon.
    for call in down:
        result = call.result(timeout=20)
        assert result.returncode == 3, result  # the daemon was not reached
        assert result.stdout == ""
        assert result.stderr.startswith("UNAVAILABLE: "), result.stderr
        assert "Traceback" not in result.stderr

    no_records = no_records.result()
    assert no_records.returncode == 1
    assert "no records at" in no_records.stderr and "Traceback" not in no_records.stderr


# -- stats -------------------------------------------------------------------------------------


def test_stats_shows_calls_and_cost_per_rule_provider_and_model(start_daemon, tmp_path):
    daemon = start_daemon(CONFIG)
    costs: dict[str, float] = {"chat": 0.0, "media": 0.0}
    png = make_png(tmp_path / "p.png", (9, 9, 9))
    asks = [(rule, Cli("ask", *args, "--json", "--address", daemon.address))
            for rule, args in (("chat", ("one",)), ("chat", ("two two",)), ("media", ("pic", "--image", png)))]
    for rule, call in asks:
        answer = json.loads(ok(call.result()).stdout)
        assert answer["route"]["rule"] == rule
        costs[rule] += answer["usage"]["costUsd"]

    as_json, as_table = Cli("stats", "--data-dir", daemon.data_dir, "--json"), Cli("stats", "--data-dir", daemon.data_dir)
    rows = json.loads(ok(as_json.result()).stdout)
    by_rule = {r["rule"]: r for r in rows}
    assert set(by_rule) == {"chat", "media"}
    chat, media = by_rule["chat"], by_rule["media"]
    assert (chat["provider"], chat["model"], chat["purpose"], chat["calls"]) == ("fake", "echo", "answer", 2)
    assert (media["provider"], media["model"], media["purpose"], media["calls"]) == ("fake", "omni", "answer", 1)
    assert chat["cost_usd"] == pytest.approx(costs["chat"])
    assert media["cost_usd"] == pytest.approx(costs["media"])
    assert chat["cost_usd"] > 0 and chat["mean_latency_ms"] > 0 and chat["max_latency_ms"] >= chat["mean_latency_ms"]

    table = table_rows(ok(as_table.result()).stdout)
    assert table["chat"][:4] == ["chat", "fake/echo", "answer", "2"]
    assert table["chat"][6] == f"{costs['chat']:.6f}"
    assert table["media"][:4] == ["media", "fake/omni", "answer", "1"]
    assert table["media"][6] == f"{costs['media']:.6f}"

    # --since: the calls of the last days only (an hour ago, none; a day ago, all three)
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:  # the chats were two hours ago
        db.execute("UPDATE calls SET at = at - 7200 WHERE rule = 'chat'")
    recent = json.loads(ok(Cli("stats", "--data-dir", daemon.data_dir, "--since", "0.04", "--json").result()).stdout)
    assert [(r["rule"], r["calls"]) for r in recent] == [("media", 1)]
    today = json.loads(ok(Cli("stats", "--data-dir", daemon.data_dir, "--since", "1", "--json").result()).stdout)
    assert {r["rule"]: r["calls"] for r in today} == {"chat": 2, "media": 1}



# -- explain takes ask's request options -------------------------------------------------------


def test_explain_takes_the_request_options_of_ask(start_daemon, tmp_path):
    """explain shows the route ask would take with the same options: a system prompt and a session count."""
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: documents
            match: {inputs_any: [document]}
            use: fake/docs
          - name: long-prompt
            match: {input_tokens: {min: 1000}}
            use: fake/omni
          - name: chat
            use: fake/echo
    """)
    system = "Answer in the voice of a careful archivist. " * 100  # ~1100 tokens
    help_text = help_of("explain")
    with_system = Cli("explain", "hi", "--system", system, "--address", daemon.address)
    bad_task = Cli("explain", "hi", "--task", "sing", "--address", daemon.address)
    ok(run_cli("ask", "read this", "--pdf", make_pdf(tmp_path / "r.pdf", "Report"), "--session", "s1",
               "--address", daemon.address))
    in_session = Cli("explain", "and now?", "--session", "s1", "--address", daemon.address)
    alone = Cli("explain", "and now?", "--address", daemon.address)

    help_text = ok(help_text.result()).stdout
    for needed in ("--system", "--session", "--speakers", "--task", "--diarize", "--token"):
        assert needed in help_text, f"{needed!r} missing from `mmrouter explain --help`:\n{help_text}"
    assert "route: rule long-prompt -> fake/omni" in ok(with_system.result()).stdout
    # the session's earlier PDF counts, as it would for `ask --session s1`
    assert "route: rule documents -> fake/docs" in ok(in_session.result()).stdout
    assert "route: rule chat -> fake/echo" in ok(alone.result()).stdout
    bad_task = bad_task.result()
    assert bad_task.returncode == 2 and "--task must be auto, chat or transcribe" in bad_task.stderr
    assert "Traceback" not in bad_task.stderr


# -- media types -------------------------------------------------------------------------------


def test_media_types_python_does_not_know_are_sent_by_extension(shared_daemon, tmp_path):
    """Python's mimetypes lacks .mka and .weba (and varies by system): the CLI names them itself, else the
    daemon refuses application/octet-stream for audio."""
    daemon = shared_daemon
    ebml = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska"
    files = {"talk.mka": (ebml + b"\x01" * 64, "audio/x-matroska"),
             "talk.weba": (ebml + b"\x02" * 64, "audio/webm"),
             "talk.opus": (b"OggS" + b"\x03" * 64, "audio/ogg")}
    calls = {}
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
        # --inline-limit 0: uploaded, so the daemon's media store records the type it was sent as
        calls[name] = Cli("explain", "what is it", "--audio", tmp_path / name, "--inline-limit", "0", "--address", daemon.address)
    for name, (data, mime) in files.items():
        result = ok(calls[name].result())
        assert "route: rule media -> fake/omni" in result.stdout
        sha = hashlib.sha256(data).hexdigest()
        meta = json.loads((daemon.data_dir / "media" / sha[:2] / f"{sha}.json").read_text())
        assert meta["mime_type"] == mime, name


def test_a_container_given_with_video_is_sent_as_a_video_whatever_its_extension_says(shared_daemon, tmp_path):
    """``.ogg`` (and ``.oga``, ``.weba``, ``.mka``, ``.m4a``) name audio types: a video in such a file,
    given with --video, was sent as audio/ogg and refused ("not a video type")."""
    daemon = shared_daemon
    ebml = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska"
    files = {"clip.ogg": (b"OggS" + b"\x04" * 64, "video/ogg"), "clip.mka": (ebml + b"\x05" * 64, "video/x-matroska")}
    calls = {}
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
        calls[name] = Cli("explain", "what is it", "--video", tmp_path / name, "--inline-limit", "0",
                          "--address", daemon.address)
    for name, (data, mime) in files.items():
        result = ok(calls[name].result())
        assert "route: rule media -> fake/omni" in result.stdout
        sha = hashlib.sha256(data).hexdigest()
        meta = json.loads((daemon.data_dir / "media" / sha[:2] / f"{sha}.json").read_text())
        assert (meta["mime_type"], meta["modality"]) == (mime, "video"), name


# -- operator mistakes: one line, no traceback -------------------------------------------------


def test_serve_stats_and_prune_mistakes_are_one_line_errors(tmp_path):
    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("x")
    (tmp_path / "notdb").mkdir()
    (tmp_path / "notdb" / "sessions.sqlite").write_text("garbage")
    (tmp_path / "isdir" / "sessions.sqlite").mkdir(parents=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    cases = {  # side by side: each daemon its own data directory, which a daemon holds while it starts
        Cli("serve", "--address", busy, "--data-dir", tmp_path / "data2"):
            f"cannot listen on {busy}: the address is in use or invalid; give --address (or server.address) "
            f"a free host:port, e.g. 127.0.0.1:{taken.getsockname()[1] + 1}, or 127.0.0.1:0 for any free port",
        Cli("serve", "--address", "127.0.0.1:0", "--data-dir", not_a_dir):
            f"cannot start: {not_a_dir}: Not a directory; --data-dir (server.data_dir, else $MMROUTER_DATA_DIR) "
            f"{not_a_dir} "
            "must be a directory the daemon can write",
        Cli("stats", "--data-dir", tmp_path / "notdb"):
            f"the sessions database {tmp_path}/notdb/sessions.sqlite cannot be used (file is not a database): "
            "point --data-dir (or server.data_dir) at the daemon's data directory",
        Cli("prune", "--older-than", "1", "--data-dir", tmp_path / "notdb"):
            f"the sessions database {tmp_path}/notdb/sessions.sqlite cannot be used (file is not a database): "
            "point --data-dir (or server.data_dir) at the daemon's data directory",
        Cli("stats", "--data-dir", tmp_path / "isdir"):
            f"the sessions database {tmp_path}/isdir/sessions.sqlite is a directory: "
            "point --data-dir (or server.data_dir) at the daemon's data directory",
        Cli("prune", "--older-than", "1", "--data-dir", tmp_path / "isdir"):
            f"the sessions database {tmp_path}/isdir/sessions.sqlite is a directory: "
            "point --data-dir (or server.data_dir) at the daemon's data directory",
    }
    nonsense = Cli("serve", "--address", "nonsense", "--data-dir", tmp_path / "data1")
    try:
        for call, message in cases.items():
            result = call.result(timeout=60)
            assert result.returncode == 1, result
            assert "Traceback" not in result.stderr, result.stderr
            # (gRPC's C core logs its own line about the failed bind before ours)
            assert result.stderr.splitlines()[-1] == message, result.stderr
        result = nonsense.result(timeout=60)  # a usage error, like a bad configuration: exit 2
        assert result.returncode == 2 and "Traceback" not in result.stderr, result
        assert result.stderr.strip() == ("server.address (--address): 'nonsense' is not host:port: write e.g. "
                                         "127.0.0.1:50051, [::1]:50051 or unix:/run/mmrouter/sock"), result.stderr
    finally:
        taken.close()


#: Runs argv[3:] under a file size limit of argv[1] bytes (no privileges needed): every write past it fails
#: with EFBIG, as writes on a full disk fail with ENOSPC (Python ignores SIGXFSZ, so it is not killed).
UNDER_A_FILE_SIZE_LIMIT = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2);"
                           " os.execv(sys.argv[2], sys.argv[2:])")


@pytest.mark.parametrize("room", [0, 4096], ids=["no-room-for-the-lock-file", "no-room-for-the-sessions-shm"])
def test_serve_on_a_full_disk_says_the_disk_is_full(start_daemon, tmp_path, room):
    """A daemon restarted while its disk is full cannot re-create sessions.sqlite-shm (nor, with no room at
    all, write its pid to daemon.lock): it says the disk is full, not that --data-dir is wrong."""
    data = tmp_path / "data"
    daemon = start_daemon(CONFIG, data_dir=data)
    assert "fake/echo says" in ok(run_cli("ask", "hi", "--session", "s", "--address", daemon.address)).stdout
    assert daemon.stop() == 0  # a clean stop removes the -shm file
    result = subprocess.run([sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(room), str(MMROUTER), "serve",
                             "--address", "127.0.0.1:0", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"the data directory's disk is full (File too large; {data}): "
                                              "free space, e.g. with `mmrouter prune`, and try again")


def test_serve_start_up_errors_in_json_mode_are_json_lines(tmp_path):
    """With server.log_format: json, every stderr line of a failed start is a JSON object, gRPC's own
    bind messages included (the start-up error is one of them)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    config = tmp_path / "json.yaml"
    config.write_text("server:\n  log_format: json\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  log_format: json\nroutes:\n  - name: a\n    use: fake/echo\n    match: {inputs: [smell]}\n")
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}  # as an operator who never heard of it
    try:
        in_use = subprocess.run([str(MMROUTER), "serve", "-c", config, "-a", busy, "--data-dir", tmp_path / "data"],
                                capture_output=True, text=True, timeout=60, env=env)
    finally:
        taken.close()
    invalid = subprocess.run([str(MMROUTER), "serve", "-c", bad, "-a", "127.0.0.1:0", "--data-dir", tmp_path / "data"],
                             capture_output=True, text=True, timeout=60, env=env)
    for result, code, message in ((in_use, 1, f"cannot listen on {busy}: the address is in use"),
                                  (invalid, 2, "routes.0.match.inputs.0")):
        assert result.returncode == code, result.stderr
        entries = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
        assert any(e["level"] == "CRITICAL" and message in e["message"] for e in entries), result.stderr


#: A plugin that breaks the daemon's start on purpose when it is imported: start_server raises what no
#: start-up error handling expects (a bug).
SABOTAGE = '''"""Breaks the daemon's start on purpose."""
import router.server


def _fail(*args, **kwargs):
    raise LookupError("start_server broken on purpose")


router.server.start_server = _fail
'''


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_serve_logs_an_unexpected_start_up_error_as_one_record_in_its_log_format(tmp_path, log_format):
    """An exception serve did not expect printed a rich traceback box, which broke a JSON log: it is one
    CRITICAL record with the traceback (in JSON, in the object's exception field), and exit 1."""
    from conftest import make_dist_info

    site = tmp_path / "site"
    make_dist_info(site, "mmrouter-sabotage", "sabotage", "mmrouter_sabotage")
    (site / "mmrouter_sabotage.py").write_text(SABOTAGE)
    config = tmp_path / "router.yaml"
    config.write_text(f"server: {{log_format: {log_format}}}\ndefault: local/extract\n")
    result = subprocess.run([str(MMROUTER), "serve", "-c", config, "-a", "127.0.0.1:0", "--data-dir", tmp_path / "data"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "300"})
    assert result.returncode == 1, result.stderr
    message = ("the daemon stopped on an unexpected error (a bug: please report it with the traceback): "
               "LookupError: start_server broken on purpose")
    assert "╭" not in result.stderr and "listening" not in result.stderr, result.stderr
    if log_format == "json":
        records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
        assert (records[-1]["level"], records[-1]["message"]) == ("CRITICAL", message), result.stderr
        assert records[-1]["exception"].endswith("LookupError: start_server broken on purpose")
    else:
        assert f"CRITICAL router.cli: {message}" in result.stderr
        assert result.stderr.rstrip().endswith("LookupError: start_server broken on purpose")


# -- stats and prune --config ------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_call_daemon(plugin_sites, tmp_path_factory):
    """A daemon of :data:`CONFIG` that answered one chat (``count me``), its statistics row written, for the
    tests that read its data directory with ``stats`` and ``prune --dry-run``: they must change nothing in it
    (no call, no prune that removes)."""
    from grpc_helpers import wait_for

    daemon = launch_daemon(CONFIG, tmp=tmp_path_factory.mktemp("cli-one-call"), env=None,
                           sites=[plugin_sites["testkit"]])
    ok(run_cli("ask", "count me", "--address", daemon.address))
    db = sqlite3.connect(daemon.data_dir / "sessions.sqlite")
    assert wait_for(lambda: db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1)  # rows are batched
    db.close()
    yield daemon
    daemon.stop()


def test_stats_and_prune_find_the_data_dir_in_config_as_serve_does(one_call_daemon, tmp_path):
    daemon = one_call_daemon
    config = tmp_path / "router.yaml"
    config.write_text(f"server:\n  data_dir: {daemon.data_dir}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  data_dir: [x]\n")
    env = {"MMROUTER_DATA_DIR": str(tmp_path / "elsewhere")}  # the default data directory: empty
    from_config = Cli("stats", "--config", config, "--json", env=env)
    pruned = Cli("prune", "--older-than", "0", "--dry-run", "--config", config, env=env)
    overridden = Cli("stats", "--config", config, "--data-dir", tmp_path / "empty", env=env)
    default = Cli("stats", env=env)
    broken = Cli("prune", "--older-than", "1", "-c", bad, env=env)

    rows = json.loads(ok(from_config.result()).stdout)
    assert [(r["rule"], r["calls"]) for r in rows] == [("chat", 1)]
    assert "would remove 0 session(s), 1 statistics row(s)" in ok(pruned.result()).stdout
    overridden = overridden.result()  # --data-dir wins over the file's server.data_dir
    assert overridden.returncode == 1 and f"no records at {tmp_path / 'empty'}" in overridden.stderr
    default = default.result()
    assert default.returncode == 1 and f"no records at {tmp_path / 'elsewhere'}" in default.stderr
    broken = broken.result()
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "server.data_dir: Input is not a valid path" in broken.stderr and str(bad) in broken.stderr


def _config_check(path: Path) -> tuple[subprocess.CompletedProcess, str, dict[str, str]]:
    """``mmrouter config check path``: the result, its output without colours, and its lines by key."""
    result = subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "400"})
    output = ANSI.sub("", result.stdout + result.stderr)
    return result, output, {line.split(":")[0]: line for line in output.splitlines() if ":" in line}


def test_config_check_suggests_the_name_meant_by_a_typo(tmp_path):
    """A misspelled provider section, provider or model in a target is pointed at the installed name it is
    closest to; a name like no other gets no guess."""
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "providers:\n  opneai: {api_key: sk-y}\n"
        "routes:\n  - name: pictures\n    match: {inputs_any: [image]}\n    use: openai/gpt4o\n"
        "    fallback: [antropic/claude-sonnet-4-6, anthropic/claude-sonet-4-6, zzz/model]\n"
        "default: local/extract\n")
    result, output, lines = _config_check(typo)
    assert result.returncode == 1, output
    assert lines["providers.opneai"].endswith("did you mean 'openai'?")
    assert lines["routes.0.use 'pictures'"].endswith(f"({typo}, line 6); did you mean 'gpt-4o'?")
    assert lines["routes.0.fallback.0 'pictures'"].endswith(f"({typo}, line 7); did you mean 'anthropic'?")
    assert lines["routes.0.fallback.1 'pictures'"].endswith(f"({typo}, line 7); did you mean 'claude-sonnet-4-6'?")
    assert "did you mean" not in lines["routes.0.fallback.2 'pictures'"]
    assert "sk-y" not in output


def test_config_check_warns_of_provider_and_plugin_names_no_installed_plugin_offers(tmp_path):
    """A provider named in a target or in overrides.providers, or a plugin in plugins.disabled, that
    nothing installed offers is a warning with the closest installed name (the file may be meant for a
    host with more plugins, so the check still passes)."""
    typos = tmp_path / "typos.yaml"
    typos.write_text(
        "routes:\n  - name: a\n    use: opeani/gpt-4o\n"
        "default: local/extract\n"
        "overrides: {providers: [opeanai, local]}\n"
        "plugins: {disabled: [openia, gemini]}\n")
    result, output, lines = _config_check(typos)
    assert result.returncode == 0 and "OK — 1 rule(s)" in result.stdout, output
    elsewhere = "(a warning only: it may be installed where the daemon runs)"
    assert lines["routes.0.use 'a'"] == (f"routes.0.use 'a': no provider 'opeani' here: no installed plugin offers "
                                         f"it {elsewhere} ({typos}, line 3); did you mean 'openai'?")
    assert lines["overrides.providers.0"] == (f"overrides.providers.0: no provider 'opeanai' here: no installed "
                                              f"plugin offers it {elsewhere} ({typos}, line 5); did you mean 'openai'?")
    assert lines["plugins.disabled.0"] == (f"plugins.disabled.0: no installed plugin is called 'openia' "
                                           f"{elsewhere} ({typos}, line 6); did you mean 'openai'?")
    assert not {"overrides.providers.1", "plugins.disabled.1", "default"} & set(lines), output


# -- text from files and the daemon is printed as written, never read as markup ------------------


def test_config_check_prints_yaml_errors_and_names_with_brackets_as_written(tmp_path):
    """A YAML error says where it is (it no longer quotes the faulty line, which may hold a key); a target
    like ``local/[/b]`` is echoed as is, not taken for a closing tag (a MarkupError traceback)."""
    flow = tmp_path / "flow.yaml"
    flow.write_text("routes:\n  - name: x\n    match: {inputs_any: [audio]}\n    use: local/extract\n"
                    "  fallback: [openai/whisper-1]\n")
    tag = tmp_path / "tag.yaml"
    tag.write_text('routes:\n  - name: x\n    matc: {tags: [a]}\n    use: "local/[/b]"\n')
    result, output, _ = _config_check(flow)
    assert result.returncode == 1 and "Traceback" not in output, output
    assert "not valid YAML" in output and "line 5, column 3" in output and "whisper" not in output, output
    result, output, lines = _config_check(tag)
    assert result.returncode == 1 and "Traceback" not in output, output
    assert lines["  routes.0.use"].startswith("  routes.0.use: 'local/[/b]' is not a target"), output


def folded_rows(text: str) -> list[list[str]]:
    """The rows of a boxed rich table whose first cells may fold onto more lines (those lines have an
    empty fourth cell), each cell's lines joined without spaces."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[3] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def test_stats_shows_whole_rule_and_model_names_at_80_columns(start_daemon):
    """Piped at 80 columns, stats folds long names instead of cutting them with "…", and prints rule
    names with brackets as they are (``[/beta]`` is no closing tag)."""
    long_rule = "video-transcription-of-the-weekly-all-hands-meetings"
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: "[/beta]"
            match: {tags: [beta]}
            use: fake/echo
          - name: "pdfs [v2]"
            match: {tags: [v2]}
            use: fake/docs
          - name: LONG
            use: fake/omni
    """.replace("LONG", long_rule))
    calls = [Cli("ask", "a", "--tag", "beta", "--address", daemon.address),
             Cli("ask", "b", "--tag", "v2", "--address", daemon.address),
             Cli("ask", "c", "--address", daemon.address)]
    for call in calls:
        ok(call.result())
    result = ok(run_cli("stats", "--data-dir", daemon.data_dir, env={"COLUMNS": "80"}))
    assert "…" not in result.stdout, result.stdout
    rows = {(r[0].replace(" ", ""), r[1]) for r in folded_rows(result.stdout)}  # (a fold at a space drops it)
    assert rows == {("[/beta]", "fake/echo"), ("pdfs[v2]", "fake/docs"), (long_rule, "fake/omni")}, result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout


def test_the_route_is_printed_with_brackets_in_names_as_written():
    """Rule, provider, model and step names come from configs and plugins (an OpenAI-compatible server
    names its own models): each is printed as sent, none read as rich markup."""
    from io import StringIO

    from mmrouter.v1 import router_pb2 as pb
    from rich.console import Console

    from router.cli_calls import print_route

    route = pb.Route(rule="pdfs [v2]", provider="vllm", model="[/b]llama [8B]", steps=[
        pb.Step(purpose="answer [retry]", provider="vllm", model="[/b]llama [8B]", latency_ms=12,
                usage=pb.Usage(cost_usd=0.5))])
    console = Console(file=StringIO(), width=200)
    print_route(route, console)
    printed = console.file.getvalue().splitlines()
    assert printed[0] == "route: rule pdfs [v2] -> vllm/[/b]llama [8B]"
    assert printed[-1] == "step answer [retry]: vllm/[/b]llama [8B] 12 ms $0.500000"


# -- many files under the inline limit ---------------------------------------------------------


def test_many_files_under_the_inline_limit_are_inlined_only_up_to_a_budget(start_daemon, tmp_path):
    """17 files of about 4 MB, each under --inline-limit, are 68 MB together: more than a gRPC message
    may be (64 MiB). The largest are uploaded once the inline ones would pass 48 MiB."""
    daemon = start_daemon(CONFIG)
    files = [make_wav(tmp_path / f"part{i}.wav", 250 - i / 1000) for i in range(17)]  # 4,000,044 - 16i bytes
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    args = [arg for f in files for arg in ("--audio", f)]
    result = ok(run_cli("explain", "transcribe all", *args, "--address", daemon.address))
    assert "route: rule media -> fake/omni" in result.stdout
    assert "uploading the files" not in result.stderr  # no retry: it fit the first time
    stored = {p.name for p in (daemon.data_dir / "media").rglob("*") if p.is_file() and p.suffix != ".json"}
    assert stored == set(shas[:5]), "the 5 largest files (48 MB inline is 12 of them) should be uploaded"


def test_a_request_over_the_daemons_message_limit_is_sent_again_with_the_files_uploaded(start_daemon, tmp_path):
    """A daemon with a smaller server.max_message_bytes refuses the whole message (gRPC's own
    RESOURCE_EXHAUSTED, no ErrorInfo): the CLI uploads the files and asks again, as it does for the
    daemon's smaller inline_limit_bytes."""
    daemon = start_daemon(CONFIG + "server:\n  max_message_bytes: 2097152\n  inline_limit_bytes: 1572864\n")
    files = [make_wav(tmp_path / f"part{i}.wav", 62 + i) for i in range(3)]  # ~1 MB each, 3 MB together
    args = [arg for f in files for arg in ("--audio", f)]
    result = ok(run_cli("ask", "--task", "transcribe", *args, "--json", "--address", daemon.address))
    assert "larger than a gRPC message may be" in result.stderr and "uploading the files" in result.stderr
    assert json.loads(result.stdout)["route"]["rule"] == "transcription"
    stored = {p.name for p in (daemon.data_dir / "media").rglob("*") if p.is_file() and p.suffix != ".json"}
    assert stored == {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# -- serve's address -----------------------------------------------------------------------------


def test_serve_takes_its_address_from_mmrouter_address_and_make_serve_from_args(tmp_path):
    """serve reads MMROUTER_ADDRESS as the client commands do (an address in use then says so and
    suggests another), and `make serve ARGS=...` passes options on."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = Cli("serve", "--data-dir", tmp_path / "data", env={"MMROUTER_ADDRESS": f"127.0.0.1:{port}"}).result(60)
    finally:
        taken.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"cannot listen on 127.0.0.1:{port}: ")
    # the suggestion is the next free port above (another test may hold port + 1 meanwhile)
    suggested = re.search(r"e\.g\. 127\.0\.0\.1:(\d+), or 127\.0\.0\.1:0 for any free port$", result.stderr.splitlines()[-1])
    assert suggested and int(suggested.group(1)) > port, result.stderr
    assert "MMROUTER_ADDRESS" in ok(help_of("serve").result()).stdout
    make = subprocess.run(["make", "-n", "serve", "ARGS=--address 127.0.0.1:50052"], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent.parent)
    # (under `make test` the inner make also prints the directories it enters and leaves)
    assert make.returncode == 0, make.stderr
    assert [line for line in make.stdout.splitlines() if "mmrouter serve" in line] == [
        ".venv/bin/mmrouter serve --address 127.0.0.1:50052"], make.stdout


# -- bad input on the command line -----------------------------------------------------------------


def test_numbers_over_int32_are_usage_errors():
    """--speakers and --max-tokens go in int32 fields: a larger value is a usage error, not a traceback."""
    calls = {option: Cli(command, "x", option, str(2**31), "--address", "127.0.0.1:1")
             for command, option in (("ask", "--speakers"), ("ask", "--max-tokens"), ("explain", "--speakers"))}
    negative = Cli("ask", "x", "--inline-limit", "-1", "--address", "127.0.0.1:1")
    for option, call in [*calls.items(), ("--inline-limit", negative)]:
        result = call.result()
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"Invalid value for '{option}'" in result.stderr, result.stderr


def test_a_directory_or_device_given_as_a_file_says_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    cases = {tmp_path: f"{tmp_path} is a directory, not a file",
             Path("/dev/null"): "/dev/null is not a regular file (a device, a pipe or a socket)",
             fifo: f"{fifo} is not a regular file (a device, a pipe or a socket)",
             tmp_path / "gone.png": f"no such file: {tmp_path / 'gone.png'}"}
    calls = {path: Cli("explain", "x", "--image", path, "--address", "127.0.0.1:1") for path in cases}
    for path, message in cases.items():
        result = calls[path].result()
        assert result.returncode == 2 and result.stderr.strip() == message, result.stderr


# -- an unreachable daemon -----------------------------------------------------------------------


def _without_grpc_verbosity() -> dict[str, str]:
    """The environment of a user who never set GRPC_VERBOSITY."""
    return {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "MMROUTER_ADDRESS")} | {"COLUMNS": "300"}


def test_no_daemon_says_how_to_start_one_and_bad_tls_files_are_named(shared_daemon, tmp_path):
    """No daemon at the address: a hint to start one. A CA file that is no certificate names
    MMROUTER_TLS_CA, a key that is none names MMROUTER_TLS_KEY, before gRPC's C core could add log
    lines of its own."""
    address, calls = unreachable()
    for call in calls:
        result = call.result(timeout=60)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines() == [
            result.stderr.splitlines()[0],
            f"is the daemon running at {address}? start it with `mmrouter serve`, or give --address "
            "(or MMROUTER_ADDRESS) where it listens"], result.stderr
        assert result.stderr.startswith("UNAVAILABLE: failed to connect")

    daemon = shared_daemon
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_self_signed_ca())
    bad_ca = subprocess.run([str(MMROUTER), "providers", "--address", daemon.address], capture_output=True, text=True,
                            timeout=60, env=_without_grpc_verbosity() | {"MMROUTER_TLS_CA": str(garbage)})
    assert bad_ca.returncode == 2
    assert bad_ca.stderr.strip() == (f"MMROUTER_TLS_CA {garbage} holds no valid PEM certificate: give the "
                                     "certificate of the CA that signed the daemon's server.tls certificate")
    bad_key = subprocess.run([str(MMROUTER), "providers", "--address", daemon.address], capture_output=True,
                             text=True, timeout=60,
                             env=_without_grpc_verbosity() | {"MMROUTER_TLS_CA": str(ca), "MMROUTER_TLS_CERT": str(ca),
                                                              "MMROUTER_TLS_KEY": str(garbage)})
    assert bad_key.returncode == 2
    lines = " ".join(bad_key.stderr.split())
    assert lines.startswith(f"MMROUTER_TLS_CERT {ca} and MMROUTER_TLS_KEY {garbage} are not a client certificate "
                            "and its private key ("), bad_key.stderr  # and no "E1126 ... ssl_utils.cc" line


#: Addresses no daemon can be at, and what the CLI says of each after ``--address (or MMROUTER_ADDRESS): ``.
NOT_HOST_PORT = "is not host:port: write e.g. 127.0.0.1:50051, [::1]:50051 or unix:/run/mmrouter/sock"
MALFORMED_ADDRESSES = [
    pytest.param("", f"'' {NOT_HOST_PORT}", id="empty"),
    pytest.param(" ", f"' ' {NOT_HOST_PORT}", id="a-space"),
    pytest.param(":", f"':' {NOT_HOST_PORT}", id="a-colon"),
    pytest.param("host:notaport", f"'host:notaport' {NOT_HOST_PORT}", id="not-a-port"),
    pytest.param("host:1:2", f"'host:1:2' {NOT_HOST_PORT}", id="two-ports"),
    pytest.param("localhost", f"'localhost' {NOT_HOST_PORT}", id="no-port"),
    pytest.param("localhost:99999", "port 99999 is over 65535 in 'localhost:99999'", id="port-over-65535"),
    pytest.param("127.0.0.1:0", "port 0 in '127.0.0.1:0' names no daemon: give the port it listens on", id="port-0"),
    pytest.param("[nope]:1", "[nope] is not an IPv6 address in '[nope]:1'", id="not-ipv6"),
    pytest.param("unix:", "'unix:' names no socket: write e.g. unix:/run/mmrouter/sock", id="no-socket"),
]


@pytest.mark.parametrize(("address", "problem"), MALFORMED_ADDRESSES)
def test_a_malformed_address_is_a_one_line_usage_error(address, problem):
    """An empty --address printed gRPC's C-core log lines and a raw UNKNOWN error; a malformed one was
    blamed on a daemon not running, and a port over 65535 was taken modulo 65536 (another port). Each
    is now one line naming the option, exit 2, before any channel is made."""
    commands = [[str(MMROUTER), *command, "--address", address] for command in (["ask", "x"], ["explain", "x"],
                                                                                 ["providers"])]
    calls = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_without_grpc_verbosity()) for command in commands]
    for call in calls:
        stdout, stderr = call.communicate(timeout=60)
        assert (call.returncode, stdout) == (2, ""), stderr
        assert stderr == f"--address (or MMROUTER_ADDRESS): {problem}\n"


def _self_signed_ca() -> bytes:
    """A CA certificate as PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


# -- text that is not UTF-8 on the command line ------------------------------------------------------

EXTRACT = """
routes:
  - name: all
    use: local/extract
"""


def test_a_file_name_that_is_not_utf8_is_sent_with_its_bad_bytes_replaced(start_daemon, tmp_path):
    """A POSIX file name is bytes: one that is not UTF-8 (a Latin-1 name) is sent with U+FFFD for its bad
    bytes, inline or uploaded, by ask and explain (a protobuf string must be UTF-8: it was a traceback)."""
    daemon = start_daemon(EXTRACT, plugins=())
    path = tmp_path / os.fsdecode(b"na\xffme.txt")
    path.write_text("hello bytes\n")
    inline = Cli("ask", "x", "--pdf", path, "--address", daemon.address)
    uploaded = Cli("ask", "x", "--pdf", path, "--inline-limit", "0", "--address", daemon.address)
    explained = Cli("explain", "x", "--pdf", path, "--address", daemon.address)
    for call in (inline, uploaded):
        assert "[Document na\ufffdme.txt]" in ok(call.result()).stdout
    assert "route: rule all -> local/extract" in ok(explained.result()).stdout
    records = [json.loads(p.read_text()) for p in (daemon.data_dir / "media").glob("*/*.json")]
    assert len(records) == 1 and "filename" not in records[0]  # the store keeps no client's file name


def test_text_options_that_are_not_utf8_are_usage_errors():
    """A prompt, system prompt, session id, tag, provider or model that is not UTF-8 text (bytes a shell
    passed as they were) is a one-line usage error before anything is sent, not a protobuf traceback."""
    bad = os.fsdecode(b"bad\xff")
    cases = {("ask", bad): "the prompt", ("explain", bad): "the prompt", ("ask", "x", "--system", bad): "--system",
             ("explain", "x", "--session", bad): "--session", ("ask", "x", "--tag", "ok", "--tag", bad): "--tag",
             ("ask", "x", "--provider", bad): "--provider", ("explain", "x", "--model", bad): "--model"}
    calls = {args: Cli(*args, "--address", "127.0.0.1:1") for args in cases}
    calls["stats", "--tag", bad] = Cli("stats", "--tag", bad, "--data-dir", "/nonexistent")  # sqlite's traceback
    cases["stats", "--tag", bad] = "--tag"
    for args, what in cases.items():
        result = calls[args].result()
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"{what} is not UTF-8 text: byte 4 is 0xff; give it as UTF-8"], \
            result.stderr


# -- a TLS daemon reached without TLS or without a client certificate --------------------------------


def test_a_tls_daemon_reached_without_tls_or_a_client_certificate_says_what_to_export(start_daemon, tmp_path):
    """A TLS daemon closes a plaintext connection ("Socket closed"), and an mTLS daemon one without a client
    certificate it accepts: the hint names the variables to export, not only `mmrouter serve`."""
    from test_tls import _issue

    pem = _issue(tmp_path, "daemon", "a CA")
    other = _issue(tmp_path, "other", "another CA")
    tls = f"server:\n  tls:\n    cert_file: {pem['cert']}\n    key_file: {pem['key']}\n"
    plain = start_daemon(CONFIG + tls, data_dir=tmp_path / "d1")
    mutual = start_daemon(CONFIG + tls + f"    client_ca_file: {pem['ca']}\n", data_dir=tmp_path / "d2")
    ca = {"MMROUTER_TLS_CA": str(pem["ca"])}
    cases = [
        (plain, {}, f"the daemon at {plain.address} closed the connection: if it serves TLS (server.tls), export "
                    "MMROUTER_TLS_CA (the CA that signed its certificate), and MMROUTER_TLS_CERT and MMROUTER_TLS_KEY "
                    "if it asks for a client certificate (server.tls.client_ca_file); else is the daemon running "
                    f"at {plain.address}? start it with `mmrouter serve`"),
        (mutual, ca, f"the daemon at {mutual.address} closed the connection in the TLS handshake: if it asks for a "
                     "client certificate (server.tls.client_ca_file), export MMROUTER_TLS_CERT and MMROUTER_TLS_KEY "
                     "(a certificate that CA signed, and its key)"),
        (mutual, ca | {"MMROUTER_TLS_CERT": str(other["cert"]), "MMROUTER_TLS_KEY": str(other["key"])},
         f"the daemon at {mutual.address} closed the connection in the TLS handshake: it may not accept the client "
         "certificate of MMROUTER_TLS_CERT (it must be signed by the CA of its server.tls.client_ca_file)"),
    ]
    calls = [(hint, subprocess.Popen([str(MMROUTER), *command, "--address", daemon.address], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_without_grpc_verbosity() | env))
             for daemon, env, hint in cases for command in (["providers"], ["ask", "x"])]  # side by side
    for hint, call in calls:
        _, stderr = call.communicate(timeout=60)
        assert call.returncode == 3, stderr
        assert "Socket closed" in stderr.splitlines()[-2], stderr
        assert stderr.splitlines()[-1] == hint, stderr


# -- stats and prune read only server.data_dir of --config --------------------------------------------


def test_stats_and_prune_read_only_the_data_dir_of_the_config_file(one_call_daemon, tmp_path):
    """stats and prune need only server.data_dir: a token variable unset on this host (the README's
    auth_token: "${MMROUTER_TOKEN}") or TLS files that are elsewhere no longer stop them; data_dir's own
    ${VAR} is expanded (and must be set), and a file that cannot be read or is no YAML is still an error."""
    daemon = one_call_daemon
    config = tmp_path / "router.yaml"
    config.write_text('server:\n  auth_token: "${MMROUTER_UNSET_TOKEN}"\n  data_dir: "${MMROUTER_THE_DATA}"\n'
                      "  tls:\n    cert_file: /nowhere/server.pem\n    key_file: /nowhere/server.key\n"
                      'providers:\n  openai: {api_key: "${MMROUTER_UNSET_KEY}"}\n')
    env = {"MMROUTER_THE_DATA": str(daemon.data_dir), "MMROUTER_DATA_DIR": str(tmp_path / "elsewhere")}
    from_config = Cli("stats", "--config", config, "--json", env=env)
    pruned = Cli("prune", "--older-than", "0", "--dry-run", "-c", config, env=env)
    unset = Cli("stats", "--config", config, env={"MMROUTER_DATA_DIR": str(tmp_path / "elsewhere")})
    missing = Cli("prune", "--older-than", "1", "--config", tmp_path / "gone.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  data_dir: [unclosed\n")
    not_yaml = Cli("stats", "--config", bad)

    assert [(r["rule"], r["calls"]) for r in json.loads(ok(from_config.result()).stdout)] == [("chat", 1)]
    assert "would remove 0 session(s), 1 statistics row(s)" in ok(pruned.result()).stdout
    for result, message in ((unset.result(), f"server.data_dir: ${{MMROUTER_THE_DATA}} is not set (or empty) ({config}, "
                                             "line 3): set MMROUTER_THE_DATA"),
                            (missing.result(), f"cannot read config file {tmp_path / 'gone.yaml'}: No such file"),
                            (not_yaml.result(), f"{bad}: not valid YAML: ")):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in " ".join(result.stderr.split()), result.stderr


# -- names ending in a backslash ------------------------------------------------------------------------


def test_table_cells_ending_in_a_backslash_are_printed_as_they_are(tmp_path):
    r"""rich's escape() adds a backslash to text ending in one (for a tag that may follow): in a table cell
    alone, ``a\`` was shown ``a\\``. stats (by rule and by tag) and the route's trace show it once."""
    from io import StringIO

    from mmrouter.v1 import router_pb2 as pb
    from rich.console import Console

    from router.cli_calls import print_route
    from router.sessions import SessionStore

    data = tmp_path / "data"
    SessionStore(data / "sessions.sqlite").close()
    db = sqlite3.connect(data / "sessions.sqlite")
    with db:
        call = db.execute("INSERT INTO calls (at, rule, provider, model, purpose, latency_ms, cost_usd, input_tokens,"
                          " output_tokens, audio_seconds) VALUES (?, 'rule\\', 'fake', 'echo\\', 'answer\\', 1, 0, 1, 1, 0)",
                          (time.time(),)).lastrowid
        db.execute("INSERT INTO call_tags (call, tag) VALUES (?, 'a\\')", (call,))
    db.close()
    by_rule = table_rows(ok(run_cli("stats", "--data-dir", data)).stdout)
    assert by_rule["rule\\"][:4] == ["rule\\", "fake/echo\\", "answer\\", "1"], by_rule
    by_tag = table_rows(ok(run_cli("stats", "--data-dir", data, "--by", "tag")).stdout)
    assert by_tag["a\\"][:4] == ["a\\", "fake/echo\\", "answer\\", "1"], by_tag

    route = pb.Route(rule="r", provider="p", model="m", trace=[
        pb.RuleTrace(rule="dir\\", outcome=pb.RULE_OUTCOME_NOT_MATCHED, reason="needs C:\\")])
    console = Console(file=StringIO(), width=200)
    print_route(route, console)
    assert console.file.getvalue().splitlines()[2].split() == ["dir\\", "not", "matched", "needs", "C:\\"]


def test_providers_prints_a_reason_ending_in_a_backslash_as_it_is(monkeypatch):
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc
    from typer.testing import CliRunner

    from router.cli import app

    class Stub:
        def __init__(self, channel) -> None:
            pass

        def ListProviders(self, request):
            return pb.ListProvidersResponse(providers=[pb.ProviderInfo(
                name="p", plugin="plug", state=pb.PROVIDER_STATE_BROKEN, reason="cannot read C:\\")])

    monkeypatch.setattr(router_pb2_grpc, "RouterServiceStub", Stub)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["providers", "--address", "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    assert "cannot read C:\\ " in result.output and "C:\\\\" not in result.output, result.output


def test_pdf_sends_utf8_text_of_any_extension_as_text_and_refuses_other_files_itself(start_daemon, tmp_path):
    """A log, a README without an extension, XML or RTF given with --pdf was sent as its extension's type
    (application/octet-stream when it has none) and refused with every route's reason (NO_ROUTE): UTF-8 text
    is sent as text/plain, a PDF without its extension as a PDF; any other file is refused by the CLI in
    one line naming it and its extension, without a call."""
    daemon = start_daemon(EXTRACT, plugins=())
    texts = {"app.log": "app started\nERROR disk full\n", "README": "plain UTF-8 notes, café\n",
             "data.xml": "<?xml version='1.0'?><rows><row>42</row></rows>\n", "letter.rtf": "{\\rtf1 Dear Sir}\n"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "scan").write_bytes(make_pdf(tmp_path / "scan.pdf", "Scanned contract").read_bytes())
    calls = {name: Cli("ask", "Any errors?", "--pdf", tmp_path / name, "--inline-limit", "0", "--address",
                       daemon.address) for name in [*texts, "scan"]}
    for name, text in texts.items():
        result = ok(calls[name].result())
        assert f"[Document {name}]\n{text}" in result.stdout, result.stdout
        sha = hashlib.sha256(text.encode()).hexdigest()
        assert json.loads((daemon.data_dir / "media" / sha[:2] / f"{sha}.json").read_text())["mime_type"] == "text/plain"
    assert "[PDF scan, page 1]\nScanned contract" in ok(calls["scan"].result()).stdout

    binary = {"blob.bin": "its extension .bin names no known type",
              "photo": "it has no extension",
              "report.docx": "its extension .docx names application/vnd.openxmlformats-officedocument."
                             "wordprocessingml.document",
              "notes.log": "its extension .log names no known type"}
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    make_png(tmp_path / "photo", (0, 128, 0))
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40)
    (tmp_path / "notes.log").write_bytes("UTF-16 notes".encode("utf-16"))
    refused = {(name, command): Cli(command, "read it", "--pdf", tmp_path / name, "--address", daemon.address)
               for name in binary for command in ("ask", "explain")}  # side by side
    for (name, _), call in refused.items():
        result = call.result()
        assert (result.returncode, result.stdout) == (2, ""), result
        assert result.stderr.splitlines() == [f"cannot send {tmp_path / name} with --pdf: {binary[name]}, and it is "
                                              "not UTF-8 text; --pdf sends PDF files and UTF-8 text"], result.stderr


def test_a_tag_counts_alike_in_its_composed_and_decomposed_forms(shared_daemon):
    """A tag typed on a Mac (NFD: e + U+0301) is the tag typed elsewhere (NFC: é): in statistics as in rules."""
    daemon = shared_daemon
    decomposed, composed = "e\u0301te\u0301", "\u00e9t\u00e9"
    ok(Cli("ask", "a", "--tag", decomposed, "--address", daemon.address).result())
    ok(Cli("ask", "b", "--tag", composed, "--address", daemon.address).result())
    for asked in (composed, decomposed):
        result = ok(run_cli("stats", "--data-dir", daemon.data_dir, "--tag", asked, "--json"))
        assert sum(row["calls"] for row in json.loads(result.stdout)) == 2, result.stdout
