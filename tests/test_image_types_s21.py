"""Images declared with another image type, and how bridged texts name unnamed images (round 21: QA receipts
§2, §3, §4).

The content's magic refuses a PNG or JPEG declared ``image/bmp``, ``image/tiff`` or ``image/heic`` as it does
one declared ``image/jpeg`` (MIME_MISMATCH), and names BMP, TIFF, HEIC/HEIF and AVIF content as what it is; a
BMP the router cannot convert leaves a route note; an unnamed image's bridged text names its place in its
message. The daemon runs for real (tests/conftest.py); the cloud plugins call the fakes of tests/fakes
through their official SDKs, and ``local`` reads the images in the daemon.
"""

from __future__ import annotations

import base64
import io

import av
import grpc
import numpy as np
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp3_tone, mp4, pdf, png, wav
from mmrouter.v1 import router_pb2 as pb
from PIL import Image
from test_formats_e2e import config_for
from test_hybrid import ALL_KEYS

from router.sniff import content_mime, magic_family, mime_problem
from router.types import Modality

IMAGE, AUDIO, VIDEO, DOCUMENT = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT


def short(value: object) -> str | None:
    """A test id for bytes: their first 12 (pytest spells out all of a bytes parameter)."""
    return repr(value[:12]) if isinstance(value, bytes) else None


def saved(fmt: str, mode: str = "RGB", **options) -> bytes:
    """A small picture saved by Pillow in ``fmt``."""
    out = io.BytesIO()
    Image.new(mode, (40, 30), 90 if mode in ("1", "L") else (200, 120, 40)).save(out, format=fmt, **options)
    return out.getvalue()


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO media file: its ``ftyp`` box with these brands, then some bytes."""
    body = major + bytes(4) + b"".join(compatible)
    return (len(body) + 8).to_bytes(4, "big") + b"ftyp" + body + bytes(64)


def audio_in(container: str, codec: str) -> bytes:
    """A second of a tone encoded by PyAV in ``container``."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as box:
        stream = box.add_stream(codec, rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.sin(np.arange(16000) / 3) * 9000).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            box.mux(packet)
    return out.getvalue()


IPHONE_HEIC = ftyp(b"heic", b"mif1", b"MiHE", b"miaf", b"heic")
ANDROID_HEIF = ftyp(b"mif1", b"mif1", b"heic")
HEIF = ftyp(b"mif1", b"mif1", b"miaf")
AVIF = saved("AVIF")
BMP, TIFF = saved("BMP"), saved("TIFF")
BIG_ENDIAN_TIFF = b"MM\0*\0\0\0\x08" + bytes(64)


# -- the content's family, by its magic -------------------------------------------------------------------------

@pytest.mark.parametrize(("head", "family"), [
    (IPHONE_HEIC, "image/heic"), (ANDROID_HEIF, "image/heic"), (ftyp(b"heix", b"mif1"), "image/heic"),
    (ftyp(b"msf1", b"hevc"), "image/heic"), (HEIF, "heif"), (AVIF, "image/avif"),
    (ftyp(b"mif1", b"miaf", b"avif"), "image/avif"), (ftyp(b"avis", b"msf1"), "image/avif"),
    (ftyp(b"isom", b"isom", b"avc1"), "mp4"), (ftyp(b"M4A ", b"M4A ", b"mp42"), "mp4"), (ftyp(b"qt  "), "mp4"),
    (BMP, "image/bmp"), (saved("BMP", "1"), "image/bmp"), (saved("BMP", "RGBA"), "image/bmp"),
    (TIFF, "image/tiff"), (BIG_ENDIAN_TIFF, "image/tiff"), (b"II+\0\x08\0\0\0" + bytes(16), "image/tiff"),
    (b"BM" + bytes(80), None),  # "BM" alone is no BMP (its header size is not one)
    (b"BMW 320i service invoice", None),
], ids=short)
def test_magic_names_bmp_tiff_and_the_image_brands_of_an_ftyp_box(head: bytes, family: str | None) -> None:
    assert magic_family(head) == family


# -- every type the router takes still passes with real content ---------------------------------------------

VALID = [
    (png("ok"), IMAGE, ["image/png", "image/x-png", "image/apng", "image/x-citrix-png"]),
    (saved("JPEG"), IMAGE, ["image/jpeg", "image/jpg", "image/pjpeg", "image/jfif", "image/mpo", "image/x-jpeg",
                            "image/jpe", "image/pjp", "image/x-jfif", "image/x-mpo"]),
    (saved("MPO", save_all=True), IMAGE, ["image/mpo", "image/jpeg"]),
    (saved("GIF"), IMAGE, ["image/gif", "image/x-gif", "image/x-citrix-gif"]),
    (saved("WEBP"), IMAGE, ["image/webp", "image/x-webp"]),
    (BMP, IMAGE, ["image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/x-windows-bmp", "image/ms-bmp",
                  "image/x-bitmap", "image/x-win-bitmap", "image/dib"]), (saved("BMP", "1"), IMAGE, ["image/bmp"]),
    (TIFF, IMAGE, ["image/tiff", "image/x-tiff", "image/x-adobe-dng", "image/x-canon-cr2", "image/tif",
                   "image/x-tif", "image/x-dng", "image/x-nikon-nrw", "image/x-samsung-srw", "image/x-sony-sr2",
                   "image/x-epson-erf", "image/x-kodak-dcr"]),
    (saved("TIFF", "1", compression="group4"), IMAGE, ["image/tiff"]), (BIG_ENDIAN_TIFF, IMAGE, ["image/tiff"]),
    (IPHONE_HEIC, IMAGE, ["image/heic", "image/heif", "image/heic-sequence"]),
    (ANDROID_HEIF, IMAGE, ["image/heic", "image/heif"]), (HEIF, IMAGE, ["image/heif", "image/heic"]),
    (AVIF, IMAGE, ["image/avif", "image/heif"]), (ftyp(b"crx ", b"crx ", b"isom"), IMAGE, ["image/x-canon-cr3"]),
    *((saved(fmt, mode), IMAGE, [mime]) for fmt, mode, mime in [
        ("PPM", "RGB", "image/x-portable-pixmap"), ("ICO", "RGB", "image/x-icon"), ("ICO", "RGB", "image/vnd.microsoft.icon"),
        ("ICNS", "RGB", "image/icns"), ("TGA", "RGB", "image/x-tga"), ("PCX", "RGB", "image/x-pcx"),
        ("SGI", "RGB", "image/sgi"), ("JPEG2000", "RGB", "image/jp2"), ("XBM", "1", "image/xbm"),
        ("PALM", "1", "image/palm")]),
    (b"BM" + bytes(80), IMAGE, ["image/bmp"]),  # a broken BMP: left to the converter and the OCR, as before
    (pdf(["a page"]), DOCUMENT, ["application/pdf", "application/x-pdf", "application/x-download",
                                 "application/force-download"]),
    (wav(0.2), AUDIO, ["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/pcm"]),
    (mp3_tone(16000, 0.3), AUDIO, ["audio/mpeg", "audio/mp3", "audio/mpga", "audio/mpeg3"]),
    (audio_in("ipod", "aac"), AUDIO, ["audio/mp4", "audio/m4a", "audio/x-m4a", "audio/aac", "audio/3gpp"]),
    (audio_in("adts", "aac"), AUDIO, ["audio/aac", "audio/aacp"]),
    (audio_in("flac", "flac"), AUDIO, ["audio/flac", "audio/x-flac", "audio/x-ms-flac"]),
    (audio_in("ogg", "libopus"), AUDIO, ["audio/ogg", "audio/opus"]),
    (audio_in("webm", "libopus"), AUDIO, ["audio/webm"]),
    (mp4(frames=3), VIDEO, ["video/mp4", "video/quicktime", "video/3gpp", "video/x-m4v"]),
    (mp4(frames=3), AUDIO, ["video/mp4"]),
]


@pytest.mark.parametrize(("data", "modality", "mime"), [(d, m, t) for d, m, types in VALID for t in types], ids=short)
def test_real_content_of_each_type_the_router_takes_passes(data: bytes, modality: Modality, mime: str) -> None:
    assert mime_problem(mime, modality, data[:4096]) is None


# -- content of another known format is refused, and named ------------------------------------------------------

@pytest.mark.parametrize(("data", "mime", "says"), [
    (png("receipt"), "image/bmp", "image/png"), (png("receipt"), "image/tiff", "image/png"),
    (png("receipt"), "image/heic", "image/png"), (png("receipt"), "image/avif", "image/png"),
    (saved("JPEG"), "image/tiff", "image/jpeg"), (saved("JPEG"), "image/x-ms-bmp", "image/jpeg"),
    (saved("JPEG"), "image/heif", "image/jpeg"), (saved("GIF"), "image/x-icon", "image/gif"),
    (IPHONE_HEIC, "image/jpeg", "a HEIC image (image/heic)"), (HEIF, "image/png", "a HEIF image (image/heif)"),
    (AVIF, "image/heic", "an AVIF image (image/avif)"), (AVIF, "image/webp", "an AVIF image (image/avif)"),
    (BMP, "image/png", "a BMP image (image/bmp)"), (TIFF, "image/jpeg", "a TIFF image (image/tiff)"),
    (TIFF, "image/bmp", "a TIFF image (image/tiff)"), (mp4(frames=3), "image/heic", None),
], ids=short)
def test_content_of_another_known_format_is_refused_naming_it(data: bytes, mime: str, says: str | None) -> None:
    problem = mime_problem(mime, IMAGE, data[:4096])
    if says is None:  # an ISO media file may hold a raw photo: not refused as an image type
        assert problem is None
        return
    assert problem == f"declared {mime!r} but the content looks like {says}"


@pytest.mark.parametrize(("data", "mime"), [(IPHONE_HEIC, "image/heic"), (ANDROID_HEIF, "image/heic"),
                                            (HEIF, "image/heif"), (AVIF, "image/avif"), (BMP, "image/bmp"),
                                            (TIFF, "image/tiff")], ids=short)
def test_octet_stream_images_take_their_contents_type(data: bytes, mime: str) -> None:
    assert mime_problem("application/octet-stream", IMAGE, data[:4096]) is None
    assert content_mime("application/octet-stream", data[:4096]) == mime
    assert mime_problem("application/octet-stream", DOCUMENT, data[:4096]) == (
        f"declared 'application/octet-stream' and the content is {mime}, not a document: send it as image "
        f"with mime_type {mime!r}")


# -- through the daemon -----------------------------------------------------------------------------------------

def image(mime: str, data: bytes, name: str = "") -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=name)


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


@pytest.mark.parametrize(("data", "mime", "says"), [
    (png("TOTAL 42.17", size=(160, 48)), "image/bmp", "image/png"),
    (png("TOTAL 42.17", size=(160, 48)), "image/heic", "image/png"),
    (IPHONE_HEIC, "image/jpeg", "a HEIC image (image/heic)"),
], ids=short)
def test_a_mislabelled_image_is_refused_as_mime_mismatch_before_any_provider_call(start_daemon, fakes, data, mime,
                                                                                 says) -> None:
    """A PNG declared image/bmp went to the OCR bridge in place of GPT-4o's picture, one declared image/heic
    to Gemini labelled HEIC; an iPhone photo declared image/jpeg was called an MP4."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic", "gemini"), env=ALL_KEYS, plugins=())
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, text_request("Extract the total", media=[image(mime, data, "receipt")]))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert details.violations == [("request.messages[0].parts[0].media.mime_type",
                                   f"declared {mime!r} but the content looks like {says}")]
    assert fakes["openai"].chat_requests() == [] and fakes["gemini"].requests == []


def test_an_octet_stream_heic_photo_goes_to_gemini_as_image_heic(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai", "anthropic", "gemini"), env=ALL_KEYS, plugins=())
    answer = generate(daemon, text_request("What is in the photo?",
                                           media=[image("application/octet-stream", IPHONE_HEIC)]))
    assert (answer.route.provider, answer.route.model) == ("gemini", "gemini-2.5-pro")
    [call] = fakes["gemini"].calls("stream")
    [inline] = [p["inlineData"] for p in call.json()["contents"][0]["parts"] if "inlineData" in p]
    assert (inline.get("mimeType", inline.get("mime_type")), base64.b64decode(inline["data"])) == (
        "image/heic", IPHONE_HEIC)


def test_an_image_that_cannot_be_converted_says_so_in_the_route(start_daemon, fakes) -> None:
    """A "BMP" Pillow cannot read as one (a PPM, whose magic the router does not check) is read by the planned
    OCR bridge: the route notes that GPT-4o got its text, not the picture."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=ALL_KEYS, plugins=())
    out = io.BytesIO()
    Image.open(io.BytesIO(png("INVOICE", size=(160, 48)))).convert("RGB").save(out, format="PPM")
    answer = generate(daemon, text_request("What does the scan say?", media=[image("image/bmp", out.getvalue(),
                                                                                 "scan.bmp")]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["image (image/bmp)->text via local/extract"]
    assert ("could not convert scan.bmp from image/bmp to image/png or image/jpeg for the model (not a readable "
            "image of its type, or too large): the model gets the text local/extract reads from it, not the "
            "picture") in answer.route.notes, answer.route.notes
    parts = fakes["openai"].parts(fakes["openai"].chat_requests()[-1]["messages"][-1])
    assert [p.kind for p in parts].count("image") == 0


TEXT_ONLY = """
providers:
  textonly: {{plugin: openai, api_key: "${{OPENAI_API_KEY}}", base_url: "{url}", builtin_models: false,
              models: [{{name: gpt-4o-mini, inputs: [text], price: {{input_per_mtok: 1, output_per_mtok: 2}}}}]}}
  local: {{}}
routes:
  - name: receipts
    use: textonly/gpt-4o-mini
bridges:
  image: [local/extract]
"""


def test_an_unnamed_images_text_names_its_place_in_its_message_on_every_turn(start_daemon, fakes) -> None:
    """The third photo, sent without a file name, is "image 3 of this message" in its bridged text (not
    its content's hash), so the model can tell which photo "the third photo" is; the session's next turn
    sends that text unchanged (a provider's prompt cache needs the same prefix)."""
    daemon = start_daemon(TEXT_ONLY.format(url=fakes["openai"].base_url), env=ALL_KEYS, plugins=())
    photos = [image("image/png", png(f"TOTAL {n}.00", size=(200, 48)), name) for n, name in
              ((1, "first.png"), (2, "second.png"), (3, ""))]
    generate(daemon, text_request("What is the total on the third photo?", media=photos, session_id="receipts"))
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]
    [text] = [p.text for p in fakes["openai"].parts(sent) if p.kind == "text" and "image 3 of this message" in p.text]
    third = text[text.index("[Image text] image 3 of this message"):]
    assert third.startswith("[Image text] image 3 of this message\n") and "[Image 3 of this message: PNG 200x48]" in third
    assert "[Image text] first.png" in text and "[Image text] second.png" in text
    generate(daemon, text_request("And the first?", session_id="receipts"))
    history = fakes["openai"].chat_requests()[-1]["messages"]
    assert any(third in p.text for m in history for p in fakes["openai"].parts(m) if p.kind == "text")


@pytest.mark.parametrize("generic", ["application/x-download", "application/force-download"])
def test_a_download_type_is_taken_as_naming_no_format(generic: str) -> None:
    """Servers send these for any file to download: a PDF so declared was refused as MIME_MISMATCH."""
    data = pdf(["a page"])
    assert mime_problem(generic, DOCUMENT, data[:4096]) is None
    assert content_mime(generic, data[:4096]) == "application/pdf"
