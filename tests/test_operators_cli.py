"""What the CLI prints, seen by an operator: a refused file named as given, no empty line left by the
upload progress bar when stderr is no terminal, prune's summary within 80 columns, no empty
``transcript`` header for a silent video, a call cut by the daemon's shutdown said so, and ``ask``
with nothing to send a usage error.

The real CLI (tests/test_cli.py's ``Cli``) against the real daemon (tests/conftest.py).
"""

from __future__ import annotations

import os
import signal
import time

from grpc_helpers import wait_for
from media_factory import mp4
from test_cli import CONFIG, Cli, make_png, ok


def test_a_refused_file_is_named_as_the_user_gave_it_not_by_its_field_path(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG)
    good = make_png(tmp_path / "good.png", (1, 2, 3))
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"%PDF-1.4 not a picture at all")
    # with a system message first and a good image before it, the bad one is messages[1].parts[1]
    asked = Cli("ask", "what is it", "--system", "be brief", "--image", good, "--image", fake,
                "--address", daemon.address).result()
    explained = Cli("explain", "what is it", "--image", fake, "--address", daemon.address).result()
    for result in asked, explained:
        assert result.returncode == 2  # INVALID_ARGUMENT: bad input
        first, details = result.stderr.split("\n", 1)
        assert first == (f"INVALID_ARGUMENT: --image {fake}: declared 'image/png' but the content looks "
                         "like application/pdf"), result.stderr
        assert details.startswith("reason MIME_MISMATCH; request id "), result.stderr


def test_an_upload_to_a_stderr_that_is_no_terminal_leaves_no_empty_line(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG)
    png = make_png(tmp_path / "p.png", (9, 9, 9))
    result = ok(Cli("ask", "pic", "--image", png, "--inline-limit", "0", "--address", daemon.address).result())
    assert result.stdout.startswith("fake/omni says: pic")
    assert result.stderr.startswith("route: rule media -> fake/omni"), repr(result.stderr)
    assert "" not in result.stderr.splitlines()


def test_prunes_summary_is_broken_into_lines_that_fit_80_columns(start_daemon, tmp_path) -> None:
    daemon = start_daemon(CONFIG)
    ok(Cli("ask", "hi", "--address", daemon.address).result())
    temp = daemon.data_dir / "media" / "tmp" / "tmpcut"  # an upload cut short two hours ago
    temp.write_bytes(b"x" * 3 * 2**20)
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    assert daemon.stop() == 0

    result = ok(Cli("prune", "--older-than", "0", "--dry-run", "--data-dir", daemon.data_dir,
                    env={"COLUMNS": "80"}).result())
    assert result.stdout.splitlines() == [
        "would remove 0 session(s), 1 statistics row(s) and",
        "0 media file(s) (0.0 MiB),",
        "1 temp file(s) of interrupted uploads (3.0 MiB);",
        "0 media kept for sessions",
    ]


SILENT = """
routes:
  - name: all
    use: local/extract
"""


def test_a_silent_videos_answer_has_no_empty_transcript_header(start_daemon, tmp_path) -> None:
    daemon = start_daemon(SILENT, plugins=())
    video = tmp_path / "silent.mp4"
    video.write_bytes(mp4())
    result = ok(Cli("ask", "what is shown?", "--video", video, "--address", daemon.address).result(timeout=120))
    assert result.stderr.startswith("route: rule all -> local/extract"), result.stderr
    assert "transcript" not in result.stderr.splitlines()


def test_a_call_cut_by_the_daemons_shutdown_says_it_stopped_and_to_retry(start_daemon, tmp_path) -> None:
    """SIGTERM while a call ran (gRPC's UNAVAILABLE "Cancelling all calls") printed "is the daemon running
    at ...? start it with `mmrouter serve`", though it had been running a moment before."""
    markers = tmp_path / "markers"
    markers.mkdir()
    daemon = start_daemon(f"providers:\n  fake: {{api_key: k, marker_dir: '{markers}'}}\n"
                          "server: {shutdown_grace_seconds: 0}\nroutes:\n  - {name: chat, use: fake/echo}\n")
    call = Cli("ask", "SLOW:60", "--address", daemon.address)
    assert wait_for(lambda: list(markers.glob("started-*")), timeout=30), "the call never reached the provider"
    daemon.proc.send_signal(signal.SIGTERM)
    result = call.result(timeout=60)
    assert result.returncode == 5, result.stderr  # try again later
    # the daemon ends the call itself (SHUTTING_DOWN), even with no grace: gRPC's bare "Cancelling all
    # calls" (of daemons before, or of a call the daemon could not end) gets the hint below
    assert result.stderr.startswith("UNAVAILABLE: the daemon is stopping and this call was still running"), result.stderr
    assert "mmrouter serve" not in result.stderr
    from router.cli_calls import unreachable_hint

    assert unreachable_hint("Cancelling all calls", daemon.address) == (
        f"the daemon at {daemon.address} stopped while the call ran (it was shut down): retry once it is back")


def test_ask_with_nothing_to_send_is_a_usage_error(start_daemon) -> None:
    """``mmrouter ask`` alone sent a request and printed the daemon's INVALID_ARGUMENT about
    ``request.messages[0].parts``."""
    daemon = start_daemon(CONFIG)
    for command in ("ask", "explain"):
        result = Cli(command, "--address", daemon.address).result()
        assert result.returncode == 2, result.stderr
        assert result.stderr == "nothing to send: give a question, or a file with --image, --audio, --video or --pdf\n"
