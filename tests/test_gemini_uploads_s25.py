"""Gemini's Files API uploads of one call run several at once (QA a11y: 80 photos falling back to Gemini were
uploaded and polled one after another, minutes in all), through the real google-genai SDK against the fake
Gemini API, with the parts still in the request's order; a failed upload ends the call with its error."""

from __future__ import annotations

import io
import threading
import time

import grpc
import pytest
from grpc_helpers import error_details
from mmrouter.v1 import router_pb2 as pb
from test_gemini_e2e import CONFIG, KEY, ask

from tests.fakes.gemini import FakeGemini

#: How long the test waits for the second upload while the first is held (a serial upload never sends it).
WAIT_SECONDS = 10.0
UPLOAD_START = "/upload/v1beta/files"


def noise_png(seed: int) -> bytes:
    """A PNG of random pixels, larger than the config's 1 KiB inline limit (so it is uploaded)."""
    import random

    from PIL import Image

    pixels = random.Random(seed).randbytes(24 * 24 * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (24, 24), pixels).save(buf, format="PNG")
    assert len(buf.getvalue()) > 1024
    return buf.getvalue()


def photos(count: int) -> list[pb.Part]:
    return [pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=noise_png(i),
                                   filename=f"photo{i}.png")) for i in range(count)]


@pytest.fixture
def gemini():
    with FakeGemini(api_key=KEY) as upstream:
        yield upstream


def test_a_calls_uploads_run_at_once_and_its_parts_keep_their_order(start_daemon, gemini) -> None:
    daemon = start_daemon(CONFIG.format(url=gemini.url), env={"GEMINI_TEST_KEY": KEY})
    release = gemini.hold_next(UPLOAD_START)  # the first upload waits until another one has started
    answer: list = []
    call = threading.Thread(target=lambda: answer.append(
        daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="Describe them."), *photos(5))),
                             timeout=60)))
    call.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(gemini.calls("upload_start")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    started_while_held = len(gemini.calls("upload_start"))
    release.set()
    call.join(60)
    assert started_while_held >= 2, "the second upload waited for the first"
    assert answer and answer[0].answer.text == "Hello from Gemini."
    assert len(gemini.calls("upload_start")) == 5
    # each file part names the upload of its own photo, in the request's order
    names = {f"{gemini.url}/v1beta/{f.name}": f.display_name for f in gemini.files.values()}
    [call_body] = [r.json() for r in gemini.calls("stream")]
    uris = [part["fileData"]["file_uri"] for part in call_body["contents"][0]["parts"] if "fileData" in part]
    assert [names[uri] for uri in uris] == [f"photo{i}.png" for i in range(5)]


def test_a_failed_upload_ends_the_call_with_its_error_and_sends_nothing(start_daemon, gemini) -> None:
    daemon = start_daemon(CONFIG.format(url=gemini.url), env={"GEMINI_TEST_KEY": KEY})
    gemini.fail_next(400, {"error": {"code": 400, "message": "Unsupported file", "status": "INVALID_ARGUMENT"}},
                     path=UPLOAD_START)
    with pytest.raises(grpc.RpcError) as err:
        daemon.stub.Generate(pb.GenerateRequest(request=ask(pb.Part(text="Describe them."), *photos(3))), timeout=60)
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "Unsupported file" in details.message, details.message
    assert gemini.calls("stream") == [] and gemini.calls("generate") == []
