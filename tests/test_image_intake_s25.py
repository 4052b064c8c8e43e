"""An image cut short or damaged is refused at intake, naming it (round 25: QA a11y F3).

A PNG cut to 300 bytes (a half-finished CMS upload) passed the daemon's checks, which sniff only the magic
bytes, and went to GPT-4o, whose 400 ("You uploaded an unsupported image") failed the whole batch naming no
image, with no fallback tried. The daemon now reads each image's header with Pillow while it measures the
request's media (``router.sniff.measure_media``), checks a PNG's chunks (``verify``) and that a JPEG ends, and
refuses a PNG, JPEG, GIF or WebP it cannot decode before any provider is called: ``INVALID_ARGUMENT`` with a
``BadRequest`` field violation on the part, naming its file (or its ``media_id``), in Generate and ExplainRoute
alike. Whole images, stored ones, those given by URL (no bytes) and formats Pillow does not read go on as before.
The daemon runs the embedded rules on the cloud fakes (``tests/conftest.py``), which the official SDKs call.
"""

from __future__ import annotations

import io

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from PIL import Image
from test_hybrid import generate, upload
from test_image_types_s21 import ftyp, saved

from router.sniff import Measured, measure_media
from router.types import Modality

INVALID = grpc.StatusCode.INVALID_ARGUMENT
#: What a refusal says of an image that cannot be decoded, after its name and why.
DAMAGED = "damaged or cut short; send the whole file"


def photo(fmt: str, size: tuple[int, int] = (320, 240), **options) -> bytes:
    """A noisy picture (its pixel data is most of the file, as a photo's) saved by Pillow in ``fmt``."""
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(out, format=fmt, **options)
    return out.getvalue()


PNG, JPEG, WEBP = photo("PNG"), photo("JPEG", progressive=True), photo("WEBP")


def with_thumbnail_end(jpeg: bytes) -> bytes:
    """``jpeg`` with an APP1 segment after its start marker that holds an end marker (FF D9), as an EXIF
    thumbnail does: a file cut short must not pass for whole by it."""
    payload = b"Exif\0\0" + b"\xff\xd8thumbnail\xff\xd9"
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def image(data: bytes, mime: str, filename: str = "") -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=filename)


def refused(daemon, request: pb.MultimodalRequest, call: str):  # type: ignore[no-untyped-def]
    """The error details of ``request`` sent with ``call`` (Generate or ExplainRoute)."""
    with pytest.raises(grpc.RpcError) as caught:
        if call == "ExplainRoute":
            daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    return error_details(caught.value)


def nothing_sent(fakes: dict) -> bool:
    return not any(fake.requests for fake in fakes.values())


@pytest.mark.parametrize("call", ["Generate", "ExplainRoute"])
def test_a_png_cut_to_300_bytes_among_four_images_is_refused_naming_its_part_and_file(shared, call) -> None:
    daemon, fakes = shared
    batch = [image(PNG, "image/png", "alpha.png"), image(WEBP, "image/webp", "photo.webp"),
             image(JPEG, "image/jpeg", "progressive.jpg"), image(PNG[:300], "image/png", "cut.png")]
    details = refused(daemon, text_request("Alt text for each", media=batch), call)
    field = "request.messages[0].parts[3].media"
    assert details.code is INVALID
    assert details.violations == [(field, f"cut.png: the image cannot be decoded (Truncated File Read): {DAMAGED}")]
    assert details.message.startswith(f"invalid request: {field}: cut.png: "), details.message
    assert nothing_sent(fakes)  # refused before any paid call


@pytest.mark.parametrize("data, mime, why", [
    (JPEG[:len(JPEG) // 2], "image/jpeg", "it ends before its end-of-image marker"),
    (with_thumbnail_end(JPEG)[:-100], "image/jpeg", "it ends before its end-of-image marker"),
    (WEBP[:len(WEBP) // 2], "image/webp", "could not create decoder object"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png", "its PNG header cannot be read"),
], ids=["jpeg-cut-mid-scan", "jpeg-with-thumbnail-cut", "webp-cut", "png-signature-only"])
def test_an_uploaded_image_cut_short_is_refused_naming_its_media_id(shared, data, mime, why) -> None:
    daemon, fakes = shared
    stored = upload(daemon, data, pb.MODALITY_IMAGE, mime, "")
    request = text_request("Describe", media=[image(PNG, "image/png", "whole.png"), stored])
    details = refused(daemon, request, "Generate")
    assert details.code is INVALID
    assert details.violations == [("request.messages[0].parts[1].media",
                                   f"media_id {stored.media_id}: the image cannot be decoded ({why}): {DAMAGED}")]
    assert nothing_sent(fakes)


def test_whole_images_inline_and_stored_reach_gpt_4o(shared) -> None:
    """Whole images of each format checked, inline and uploaded (a JPEG with a thumbnail's end marker and
    bytes after its own end, as a camera's MPO has), and a still GIF, are sent as before."""
    daemon, fakes = shared
    stored = upload(daemon, with_thumbnail_end(JPEG) + b"trailer", pb.MODALITY_IMAGE, "image/jpeg", "camera.jpg")
    batch = [image(PNG, "image/png", "a.png"), image(WEBP, "image/webp"), image(saved("GIF"), "image/gif"),
             image(JPEG, "image/jpeg"), stored]
    answer = generate(daemon, text_request("Alt text for each", media=batch))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]["content"]
    assert sum(part["type"] == "image_url" for part in sent) == 5


@pytest.mark.parametrize("data, mime", [
    (PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (saved("GIF"), "image/gif"),
    (saved("BMP"), "image/bmp"), (saved("TIFF"), "image/tiff"),
], ids=["png", "jpeg", "webp", "gif", "bmp", "tiff"])
def test_a_whole_image_is_measured_by_its_header_bytes_or_stored(tmp_path, data, mime) -> None:
    stored = tmp_path / "stored"
    stored.write_bytes(data)
    expected = Measured(pixels=Image.open(io.BytesIO(data)).size)
    assert measure_media(data, Modality.IMAGE) == measure_media(str(stored), Modality.IMAGE) == expected


@pytest.mark.parametrize("data", [
    ftyp(b"heic") + bytes(200),  # Pillow reads no HEIC here: nothing known, nothing refused
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    saved("BMP")[:40],  # converted to PNG by the router, which says so if it cannot: not refused here
], ids=["heic", "svg", "bmp-cut"])
def test_an_image_pillow_does_not_read_or_the_router_converts_is_not_judged(data) -> None:
    assert measure_media(data, Modality.IMAGE) == Measured()
