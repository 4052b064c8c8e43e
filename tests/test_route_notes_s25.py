"""The answer's route notes say each thing once (QA a11y): a batch of images converted alike is one note, not
one per image, and a note each target tried made again (a conversion reused) is not repeated. Through the
daemon of the embedded config, with the real SDKs against the fakes."""

from __future__ import annotations

import io

from grpc_helpers import text_request
from PIL import Image
from test_formats_e2e import generate, image

from tests.fakes.openai import error_body as openai_error

CHAT = "/v1/chat/completions"


def small_bmp(shade: int) -> bytes:
    """A 12x12 BMP of one grey ``shade`` (each shade its own bytes: no conversion is reused across tests)."""
    out = io.BytesIO()
    Image.new("RGB", (12, 12), (shade, shade, 255 - shade)).save(out, format="BMP")
    return out.getvalue()


def test_a_batch_of_bmps_converted_for_gpt_4o_is_one_note(shared) -> None:
    daemon, fakes = shared
    media = [image("image/bmp", small_bmp(10 + i), f"b{i:02}.bmp") for i in range(20)]
    answer = generate(daemon, text_request("Describe these icons.", media=media))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert len(fakes["openai"].parts(fakes["openai"].chat_requests()[-1]["messages"][-1])) == 21  # 20 PNGs + text
    conversions = [note for note in answer.route.notes if note.startswith("converted ")]
    assert conversions == ["converted 20 images from image/bmp to image/png for the model "
                           "(b00.bmp, b01.bmp, b02.bmp and 17 more)"], answer.route.notes


def test_a_note_each_fallback_makes_again_is_said_once(shared) -> None:
    """GPT-4o and Claude fail: Claude and then Gemini reuse the BMP's PNG, each saying so."""
    daemon, fakes = shared
    fakes["openai"].fail_next(500, openai_error("boom", "server_error"), path=CHAT)
    fakes["anthropic"].fail_next_api(500, "api_error", "boom")
    answer = generate(daemon, text_request("What is it?", media=[image("image/bmp", small_bmp(200), "one.bmp")]))
    assert answer.route.provider == "gemini", answer.route
    assert "reused 1 image(s) converted to another format before" in answer.route.notes
    assert "converted one.bmp from image/bmp to image/png for the model" in answer.route.notes
    assert len(answer.route.notes) == len(set(answer.route.notes)), answer.route.notes
