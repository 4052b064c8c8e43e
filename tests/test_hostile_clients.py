"""What clients and upstreams send that must not reach logs, records and terminals as it is: control
characters in tags and media types, and terminal escape sequences in provider errors and answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.raw import RawServer

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: all
    use: fake/echo
"""
#: What a hostile client or upstream writes: colours, a new line that looks like the daemon's own.
FORGED = "\x1b[31mRED\x1b[0m\nFAKE WARNING forged line"


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG)


def refused_field(call: grpc.RpcError) -> str:
    """The field the INVALID_REQUEST refusal ``call`` names (its only violation)."""
    details = error_details(call)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), details
    assert len(details.violations) == 1, details.violations
    assert "\x1b" not in details.message and "\nFAKE" not in details.message
    return details.violations[0][0]


@pytest.mark.parametrize("tag", [FORGED, "team\ta", "bidi\u202eevil"], ids=["escapes-and-newline", "tab", "bidi"])
def test_a_tag_that_cannot_be_printed_is_refused(daemon, tag) -> None:
    """Tags are kept with the statistics rows and printed by ``stats --by tag``: they were only bounded."""
    request = text_request("hi", hints=pb.RoutingHints(tags=["ok", tag]))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    assert refused_field(caught.value) == "request.hints.tags[1]"
    assert "\x1b" not in daemon.logs()


@pytest.mark.parametrize("mime_type", ["image/png\n\x1b[31mX", "image/png" + ";x=" + "y" * 250],
                         ids=["control-characters", "too-long"])
@pytest.mark.parametrize("source", ["data", "media_id", "url"])
def test_a_media_type_that_cannot_be_printed_or_is_too_long_is_refused(daemon, mime_type, source) -> None:
    """It was echoed into the NO_ROUTE message and the log as extra lines."""
    media = pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime_type)
    if source == "data":
        media.data = png()
    elif source == "media_id":
        media.media_id = "ab" * 32
    else:
        media.url = "https://example.com/a.png"
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi", media=[media])), timeout=30)
    assert refused_field(caught.value) == "request.messages[0].parts[0].media.mime_type"
    assert "\x1b" not in daemon.logs()


@pytest.mark.parametrize("mime_type", ["text/plain\n\x1b[31mFORGED", "image/png;x=" + "y" * 250],
                         ids=["control-characters", "too-long"])
def test_an_upload_whose_media_type_cannot_be_printed_or_is_too_long_is_refused(daemon, mime_type) -> None:
    """UploadMedia stored such a type and answered it back."""
    messages = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_IMAGE, mime_type=mime_type)),
                pb.UploadMediaRequest(chunk=png())]
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter(messages), timeout=30)
    assert refused_field(caught.value) == "metadata.mime_type"
    assert "\x1b" not in daemon.logs()


def mmrouter(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI; its output as text."""
    env = {k: v for k, v in os.environ.items() if k != "MMROUTER_TOKEN"}
    return subprocess.run([str(Path(sys.executable).parent / "mmrouter"), *args], env={**env, "COLUMNS": "250"},
                          capture_output=True, text=True, timeout=60)


#: What a hostile upstream answers: set the terminal's title, clear the screen, colour, and forge a line.
UPSTREAM_MESSAGE = "upstream \x1b]0;PWNED\x07\x1b[2J\x1b[31mred\nFAKE: all good"


def test_the_cli_shows_the_control_characters_of_provider_errors_escaped(start_daemon) -> None:
    body = json.dumps({"error": {"message": UPSTREAM_MESSAGE, "type": "invalid_request_error"}}).encode()
    upstream = RawServer(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                         + f"content-length: {len(body)}\r\n\r\n".encode() + body, then_close=True)
    try:
        daemon = start_daemon(f"""
        providers:
          openai: {{api_key: sk-test-0009, base_url: "http://127.0.0.1:{upstream.port}/v1", max_retries: 0}}
        default: openai/gpt-4o
        """)
        asked = mmrouter("ask", "hi", "--address", daemon.address)
        listed = mmrouter("providers", "--address", daemon.address)
    finally:
        upstream.close()
    assert asked.returncode == 2 and "PWNED" in asked.stderr, asked.stderr  # PROVIDER_BAD_REQUEST: bad input
    # ListProviders shows a failure in the daemon's words only: nothing of the upstream's text
    assert listed.returncode == 0 and "HTTP 400" in listed.stdout and "PWNED" not in listed.stdout, listed.stdout
    for output in (asked.stdout, asked.stderr, listed.stdout, listed.stderr):
        assert not any(c in output for c in "\x1b\x07"), output
        assert not any(line.startswith("FAKE") for line in output.splitlines()), output
    assert r"upstream \x1b]0;PWNED\x07\x1b[2J\x1b[31mred\nFAKE: all good" in asked.stderr


def test_the_cli_keeps_the_lines_of_an_answer_and_escapes_its_other_control_characters(daemon) -> None:
    asked = mmrouter("ask", "first line\nsecond \x1b[2J line\tend", "--address", daemon.address)
    assert asked.returncode == 0, asked.stderr
    assert "first line\nsecond \\x1b[2J line\tend" in asked.stdout
    assert "\x1b" not in asked.stdout + asked.stderr
