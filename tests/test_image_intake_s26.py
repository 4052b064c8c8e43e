"""A GIF cut short is refused at intake; a PNG whose ancillary chunk fails its checksum is not (round 26).

Round 25 refused a PNG, JPEG, GIF or WebP that cannot be decoded (``tests/test_image_intake_s25.py``), but a GIF
cut short passed (its header reads) and went to the provider, and a PNG was refused for a bad checksum in any
chunk, where libpng (what providers and browsers decode with) warns of a bad one in an ancillary chunk (``tEXt``,
``pHYs``, ``iCCP``...), skips that chunk and decodes the image: only the critical chunks' (IHDR, PLTE, IDAT) are
errors. ``router.sniff`` now walks a GIF's blocks by their lengths (no pixel decoded) and refuses one that ends
inside a block, naming where; a GIF whole but for its trailer byte, which Pillow and ffmpeg read, passes. A PNG is
checked as libpng reads it, without its ancillary chunks that fail their checksum. Through the daemon
(Generate and ExplainRoute) on the cloud fakes, which the official SDKs call; images are made by Pillow here.
"""

from __future__ import annotations

import io
import zlib

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from PIL import Image, ImageCms, PngImagePlugin
from test_hybrid import generate, upload
from test_image_intake_s25 import DAMAGED, INVALID, image, nothing_sent, refused

from router.sniff import Measured, measure_media
from router.types import Modality


def gif(frames: int = 1, **options) -> bytes:
    """A noisy GIF of ``frames`` frames (each its own picture) of 96 x 64 pixels, saved by Pillow, which
    interlaces it unless ``interlace=False``."""
    pictures = [Image.effect_noise((96, 64), 40 + 20 * i).convert("P") for i in range(frames)]
    out = io.BytesIO()
    pictures[0].save(out, format="GIF", save_all=frames > 1, append_images=pictures[1:], **options)
    return out.getvalue()


STILL = gif()
#: Three frames, with a comment extension and the NETSCAPE application extension (looping) before them.
ANIMATED = gif(3, duration=80, loop=0, comment=b"made by the s26 tests")
#: Whole GIFs of each kind: a still one comes to gpt-4o as it is.
STILL_GIFS = {"static": STILL, "not-interlaced": gif(interlace=False), "transparent": gif(transparency=0),
              "commented": gif(comment=b"a comment extension"), "looping-still": gif(loop=0),
              "static-without-trailer": STILL[:-1]}


def blocks(data: bytes) -> list[tuple[str, int, int]]:
    """The (kind: "extension" or "image", start, end) of each block of the whole GIF ``data``."""
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    found = []
    while data[at] != 0x3B:
        start = at
        if data[at] == 0x2C:
            flags = data[at + 9]
            at += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        else:
            at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
        found.append(("image" if data[start] == 0x2C else "extension", start, at))
    return found


IMAGES = [(start, end) for kind, start, end in blocks(ANIMATED) if kind == "image"]
#: The control extension of the second frame: after the first frame's data, before the second's descriptor.
[SECOND_CONTROL] = [start for kind, start, end in blocks(ANIMATED) if kind == "extension" and start == IMAGES[0][1]]

#: A GIF cut short -> where it ends, as the refusal says.
CUT_GIFS = {
    "static-mid-data": (STILL[:len(STILL) // 2], "frame 1's image data"),
    "not-interlaced-mid-data": (STILL_GIFS["not-interlaced"][:900], "frame 1's image data"),
    "static-without-block-terminator": (STILL[:-2], "frame 1's image data"),
    "animated-mid-first-frame": (ANIMATED[:(IMAGES[0][0] + IMAGES[0][1]) // 2], "frame 1's image data"),
    "animated-inside-second-control-extension": (ANIMATED[:SECOND_CONTROL + 4], "an extension block after frame 1"),
    "animated-inside-second-descriptor": (ANIMATED[:IMAGES[1][0] + 5], "frame 2's image data"),
    "animated-mid-last-frame": (ANIMATED[:IMAGES[2][1] - 300], "frame 3's image data"),
}


@pytest.mark.parametrize("call", ["Generate", "ExplainRoute"])
@pytest.mark.parametrize("name", list(CUT_GIFS))
def test_a_gif_cut_short_is_refused_naming_where_it_ends(shared, name, call) -> None:
    daemon, fakes = shared
    data, where = CUT_GIFS[name]
    batch = [image(STILL, "image/gif", "whole.gif"), image(data, "image/gif", "cut.gif")]
    details = refused(daemon, text_request("Alt text for each", media=batch), call)
    assert details.code is INVALID
    assert details.violations == [("request.messages[0].parts[1].media",
                                   f"cut.gif: the image cannot be decoded (it ends inside {where}): {DAMAGED}")]
    assert nothing_sent(fakes)  # refused before any paid call


def test_an_uploaded_gif_cut_short_is_refused_naming_its_media_id(shared) -> None:
    daemon, fakes = shared
    stored = upload(daemon, ANIMATED[:-700], pb.MODALITY_IMAGE, "image/gif", "")
    details = refused(daemon, text_request("What moves?", media=[stored]), "Generate")
    assert details.violations == [("request.messages[0].parts[0].media", f"media_id {stored.media_id}: the image "
                                   f"cannot be decoded (it ends inside frame 3's image data): {DAMAGED}")]
    assert nothing_sent(fakes)


def test_whole_still_gifs_of_each_kind_and_one_without_its_trailer_reach_gpt_4o_as_sent(shared) -> None:
    daemon, fakes = shared
    stored = upload(daemon, STILL_GIFS["transparent"][:-1], pb.MODALITY_IMAGE, "image/gif", "stored.gif")
    batch = [image(data, "image/gif", f"{name}.gif") for name, data in STILL_GIFS.items()]
    request = text_request("Alt text for each", media=[*batch, stored])
    daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    sent = fakes["openai"].parts(fakes["openai"].chat_requests()[-1]["messages"][-1])
    assert [part.data for part in sent if part.kind == "image"] == [*STILL_GIFS.values(), STILL_GIFS["transparent"][:-1]]


@pytest.mark.parametrize("data", [ANIMATED, ANIMATED[:-1]], ids=["whole", "without-trailer"])
def test_a_whole_animated_gif_is_not_refused_at_intake_and_claude_reads_it(shared, data) -> None:
    """gpt-4o takes still GIFs only (refused before sending, retryably): Claude, the rule's next model, answers."""
    daemon, fakes = shared
    request = text_request("What moves?", media=[image(data, "image/gif", "spinner.gif")])
    daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert fakes["openai"].chat_requests() == [] and len(fakes["anthropic"].message_calls()) == 1


def chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with its checksum."""
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def png_with_chunks() -> bytes:
    """A paletted PNG with the ancillary chunks cameras and editors write: an ICC profile (iCCP), gamma (gAMA),
    resolution (pHYs), time (tIME), text (tEXt, zTXt, iTXt), and a tEXt after its pixel data (IDAT)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "s26")
    info.add_text("Comment", "compressed " * 20, zip=True)
    info.add_itxt("Title", "Grüße")
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    info.add(b"tIME", bytes.fromhex("07e80b1c0a0000"))
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    Image.effect_noise((96, 64), 60).convert("P").save(out, format="PNG", pnginfo=info, dpi=(300, 300),
                                                       icc_profile=profile)
    data = out.getvalue()
    end = data.rindex(b"IEND") - 4
    return data[:end] + chunk(b"tEXt", b"Author\0after the pixels") + data[end:]


PNG = png_with_chunks()


def bad_checksum(data: bytes, kind: bytes, nth: int = 0) -> bytes:
    """``data`` (a PNG) with the checksum of its ``nth`` chunk of ``kind`` flipped by one bit."""
    at, seen = 8, 0
    while True:
        length = int.from_bytes(data[at:at + 4], "big")
        if data[at + 4:at + 8] == kind:
            if seen == nth:
                crc = at + 8 + length
                return data[:crc] + bytes([data[crc] ^ 1]) + data[crc + 1:]
            seen += 1
        at += 12 + length


ANCILLARY = {"tEXt": bad_checksum(PNG, b"tEXt"), "tEXt-after-IDAT": bad_checksum(PNG, b"tEXt", 1),
             **{kind: bad_checksum(PNG, kind.encode()) for kind in ("zTXt", "iTXt", "pHYs", "gAMA", "iCCP", "tIME")}}


def test_pngs_with_a_bad_checksum_in_an_ancillary_chunk_reach_gpt_4o_as_sent(shared) -> None:
    """libpng skips such a chunk (with a warning) and decodes the image: the router sends it as it is."""
    daemon, fakes = shared
    stored = upload(daemon, ANCILLARY["iCCP"], pb.MODALITY_IMAGE, "image/png", "profile.png")
    batch = [image(data, "image/png", f"{kind}.png") for kind, data in ANCILLARY.items()]
    request = text_request("Alt text for each", media=[*batch, stored])
    daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    sent = fakes["openai"].parts(fakes["openai"].chat_requests()[-1]["messages"][-1])
    assert [part.data for part in sent if part.kind == "image"] == [*ANCILLARY.values(), ANCILLARY["iCCP"]]


@pytest.mark.parametrize("call", ["Generate", "ExplainRoute"])
@pytest.mark.parametrize("kind, why", [
    ("IHDR", "its PNG header cannot be read"), ("PLTE", "its PNG header cannot be read"),
    ("IDAT", "broken PNG file (bad header checksum in b'IDAT')"),
])
def test_a_png_with_a_bad_checksum_in_a_critical_chunk_is_still_refused(shared, kind, why, call) -> None:
    daemon, fakes = shared
    damaged = bad_checksum(ANCILLARY["tEXt"], kind.encode())  # an ancillary chunk's bad checksum hides nothing
    batch = [image(PNG, "image/png", "whole.png"), image(damaged, "image/png", "bad.png")]
    details = refused(daemon, text_request("Alt text for each", media=batch), call)
    assert details.code is INVALID
    assert details.violations == [("request.messages[0].parts[1].media",
                                   f"bad.png: the image cannot be decoded ({why}): {DAMAGED}")]
    assert nothing_sent(fakes)


def test_a_png_is_measured_as_libpng_reads_it_and_a_gif_by_its_blocks(tmp_path) -> None:
    """Bytes and a stored file alike: the pixel size of a PNG whose ancillary chunk fails its checksum, and a
    cut GIF's damage with its pixel size (its header reads)."""
    stored = tmp_path / "stored"
    for data, expected in [(ANCILLARY["pHYs"], Measured(pixels=(96, 64))),
                           (ANIMATED[:-1], Measured(pixels=(96, 64))),
                           (ANIMATED[:-2], Measured(pixels=(96, 64), damaged="it ends inside frame 3's image data"))]:
        stored.write_bytes(data)
        assert measure_media(data, Modality.IMAGE) == measure_media(str(stored), Modality.IMAGE) == expected


def with_text_chunk(data: bytes) -> bytes:
    """``data`` (a PNG) with a tEXt chunk after its header (IHDR), whose checksum is then flipped by one bit."""
    after_header = 8 + 12 + int.from_bytes(data[8:12], "big")
    return bad_checksum(data[:after_header] + chunk(b"tEXt", b"Comment\0scanned") + data[after_header:], b"tEXt")


def test_a_png_with_a_bad_ancillary_checksum_is_scaled_down_as_libpng_reads_it(tmp_path) -> None:
    """Accepted at intake, such a PNG must also be scalable for a model that needs it smaller: Pillow refused to
    open it, so ``fit`` gave up and ``fit_problem`` called it unreadable."""
    from router.convert import fit, fit_problem
    from router.types import Media

    stored = tmp_path / "stored.png"
    stored.write_bytes(ANCILLARY["tEXt"])
    for media in (Media(Modality.IMAGE, "image/png", data=ANCILLARY["tEXt"], filename="a.png"),
                  Media(Modality.IMAGE, "image/png", path=stored, filename="a.png")):
        scaled = fit(media, max_side=48)
        assert scaled is not None, fit_problem(media, 48)
        assert Image.open(io.BytesIO(scaled.data)).size == (48, 32)


def test_local_ocr_reads_a_png_whose_ancillary_chunk_fails_its_checksum(start_daemon, tmp_path) -> None:
    """The local provider (a fresh install's only one) opened the image with Pillow, which refused it."""
    from tests.fakes import local as media

    daemon = start_daemon(None, plugins=())
    scan = with_text_chunk(media.encode_image(media.text_image([((20, 20), "Invoice number 4711")])))
    answer = generate(daemon, text_request("What is in it?", media=[image(scan, "image/png", "scan.png")]))
    assert (answer.route.provider, answer.route.model) == ("local", "extract")
    assert "Invoice number 4711" in answer.text
