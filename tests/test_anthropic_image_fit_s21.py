"""Images over Claude's limits are scaled down before sending, not refused (the real ``anthropic`` SDK, through
the daemon, against the fake Messages API, which refuses what the API refuses).

A phone photo of 4000x3000 px is 4-10 MB, over Claude's 5 MB of base64 an image; 21 pages of 2500 px are over
its 2000 px a side in a request of more than 20 images. Claude scales any image to at most 1568 px on its
long side before the model sees it, so the plugin sends them at that size, upright, as JPEG (PNG if
transparent); an image within the limits still goes byte for byte, and one that cannot be decoded is refused
as before (INPUT_TOO_LARGE, "refused before sending"). The answer's route notes each image scaled (a RouteNote
the plugin yields, named after the model by the router), in Generate's answer and StreamGenerate's Done, and
when Claude then fails and a fallback answers.
"""

from __future__ import annotations

import base64
import io
import random

import grpc
import pytest
from grpc_helpers import error_details
from mmrouter.v1 import router_pb2 as pb
from PIL import Image

from tests.fakes.anthropic import API_KEY, MAX_IMAGE_BASE64, FakeAnthropic, media_blocks

CONFIG = """
providers:
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{url}"
    timeout: 30
default: anthropic/claude-sonnet-4-6
"""

#: Claude first, then the test kit's echo model (which takes images): a note of Claude's failed call stays.
WITH_FALLBACK = """
providers:
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{url}"
    timeout: 30
  fake: {{api_key: k}}
routes:
  - name: photos
    use: anthropic/claude-sonnet-4-6
    fallback: [fake/echo]
"""

#: How the route notes the phone photo scaled down (its byte count follows, which Pillow's encoder decides).
PHOTO_NOTE = ("anthropic/claude-sonnet-4-6: messages[0].parts[0] (IMG_0001.jpg) was scaled down to 1176x1568 px "
              "(image/jpeg, ")

#: The EXIF tag of the orientation; 6: the stored pixels are to be turned 90 degrees clockwise to be seen.
ORIENTATION = 0x0112
RED = (255, 0, 0)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def portrait_photo() -> bytes:
    """A 3000x4000 portrait photo, red in its top quarter, noisy below (9 MB: noise compresses badly),
    stored as a phone stores it: the pixels turned sideways (4000x3000) with EXIF orientation 6."""
    noise = Image.frombytes("RGB", (1500, 2000), random.Random(21).randbytes(1500 * 2000 * 3))
    upright = noise.resize((3000, 4000), Image.Resampling.NEAREST)
    upright.paste(RED, (0, 0, 3000, 1000))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return encoded(upright.rotate(90, expand=True), "JPEG", quality=85, exif=exif.tobytes())


def page(width: int = 2500, height: int = 1875, mode: str = "RGB") -> bytes:
    """A scanned page: small as a PNG, but over 2000 px on its long side."""
    image = Image.new(mode, (width, height), "white")
    image.paste((20, 20, 20, 255) if mode == "RGBA" else (20, 20, 20), (200, 200, width - 200, 400))
    if mode == "RGBA":
        image.paste((0, 0, 0, 0), (0, height - 300, width, height))  # a transparent band at the bottom
    return encoded(image, "PNG")


def image_part(data: bytes, mime: str, filename: str = "") -> pb.Part:
    return pb.Part(media=pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=filename))


def ask(*parts: pb.Part) -> pb.GenerateRequest:
    message = pb.Message(role=pb.ROLE_USER, parts=[*parts, pb.Part(text="Extract merchant, date and total as JSON")])
    return pb.GenerateRequest(request=pb.MultimodalRequest(messages=[message]))


def scaling_notes(notes) -> list[str]:
    """The route notes of images scaled down."""
    return [note for note in notes if "was scaled down to" in note]


def assert_photo_noted(notes) -> None:
    """``notes`` say, once, that the photo was scaled down, and why; nothing of the small image."""
    [note] = scaling_notes(notes)
    assert note.startswith(PHOTO_NOTE), note
    assert "bytes) before sending: it was " in note and "over Claude's limit of 5 MB" in note, note


def received(block_data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(block_data))
    image.load()
    return image


@pytest.fixture
def fake():
    with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
def daemon(start_daemon, fake):
    return start_daemon(CONFIG.format(url=fake.url), env={"ANTHROPIC_TEST_KEY": API_KEY})


def test_a_phone_photo_over_5_mb_reaches_claude_scaled_down_and_upright(daemon, fake):
    """The QA case: a 4000x3000 JPEG of 9 MB was refused (over 5 MB of base64) and the app got another
    provider's answer, or an error. It now reaches Claude as a JPEG of 1176x1568 px (portrait: its EXIF
    orientation applied, the red top at the top), within 5 MB; a small image next to it goes as given."""
    photo = portrait_photo()
    assert len(base64.b64encode(photo)) > MAX_IMAGE_BASE64
    small = page(300, 200)
    reply = daemon.stub.Generate(ask(image_part(photo, "image/jpeg", "IMG_0001.jpg"), image_part(small, "image/png")),
                                 timeout=60)
    assert (reply.answer.route.provider, reply.answer.text) == ("anthropic", "Hello from fake Claude.")
    sent, kept = media_blocks(fake.last_body())
    assert sent.media_type == "image/jpeg" and len(base64.b64encode(sent.data)) <= MAX_IMAGE_BASE64
    image = received(sent.data)
    assert (image.format, image.size) == ("JPEG", (1176, 1568))
    assert image.getexif().get(ORIENTATION, 1) == 1  # no viewer turns it again
    top, bottom = image.convert("RGB").getpixel((588, 100)), image.convert("RGB").getpixel((588, 1500))
    assert top[0] > 200 and top[1] < 60 and top[2] < 60, top  # upright: the red quarter is on top
    assert not (bottom[0] > 200 and bottom[1] < 60 and bottom[2] < 60), bottom
    assert (kept.media_type, kept.data) == ("image/png", small)  # within the limits: byte for byte
    assert "was scaled down to 1176x1568 px" in daemon.logs()  # still logged at INFO
    assert_photo_noted(reply.answer.route.notes)


def test_streamgenerates_done_notes_the_photo_scaled_down(daemon, fake):
    """StreamGenerate's Done carries the same route note as Generate's answer, once."""
    request = ask(image_part(portrait_photo(), "image/jpeg", "IMG_0001.jpg"), image_part(page(300, 200), "image/png"))
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request.request), timeout=60))
    done = events[-1].done.answer
    assert (done.route.provider, done.text) == ("anthropic", "Hello from fake Claude.")
    assert_photo_noted(done.route.notes)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_the_note_of_a_photo_scaled_for_claude_stays_when_a_fallback_answers(start_daemon, fake, stream):
    """Claude's call fails (529 overloaded) after the plugin scaled the photo: the fallback answers, and the
    route still says, naming Claude's model, what was done to the photo on the way there."""
    daemon = start_daemon(WITH_FALLBACK.format(url=fake.url), env={"ANTHROPIC_TEST_KEY": API_KEY})
    fake.fail_next_api(529, "overloaded_error", "Overloaded")
    request = ask(image_part(portrait_photo(), "image/jpeg", "IMG_0001.jpg"))
    if stream:
        events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request.request), timeout=60))
        answer = events[-1].done.answer
    else:
        answer = daemon.stub.Generate(request, timeout=60).answer
    assert (answer.route.provider, answer.route.model) == ("fake", "echo")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("anthropic", False), ("fake", True)]
    assert len(fake.message_calls()) == 1
    assert_photo_noted(answer.route.notes)


def test_21_pages_over_2000_px_reach_claude_scaled_down(daemon, fake):
    """21 pages of 2500x1875 px were refused (over 2000 px a side in a request of more than 20 images): they
    now reach Claude at 1568x1176 px, as JPEG, or as PNG for one with transparency; one within 2000 px goes
    byte for byte."""
    opaque, transparent, within = page(), page(mode="RGBA"), page(2000, 1500)
    pages = [opaque] * 19 + [transparent, within]
    reply = daemon.stub.Generate(ask(*(image_part(data, "image/png") for data in pages)), timeout=60)
    assert reply.answer.route.provider == "anthropic"
    blocks = media_blocks(fake.last_body())
    assert len(blocks) == 21
    for block in blocks[:19]:
        image = received(block.data)
        assert (block.media_type, image.format, image.size) == ("image/jpeg", "JPEG", (1568, 1176))
    clear = received(blocks[19].data)
    assert (blocks[19].media_type, clear.format, clear.size) == ("image/png", "PNG", (1568, 1176))
    assert clear.convert("RGBA").getpixel((700, 1170))[3] == 0  # still transparent
    assert (blocks[20].media_type, blocks[20].data) == ("image/png", within)
    # one note counting the 20 pages scaled (the one within 2000 px not), quoting the first: not 20 notes
    [note] = scaling_notes(reply.answer.route.notes)
    assert note.startswith("anthropic/claude-sonnet-4-6: 20 images were scaled down before sending, the first: "
                           "messages[0].parts[0] was scaled down to 1568x1176 px"), note
    assert "in a request of more than 20 images (it holds 21)" in note, note


def test_photos_over_32_mb_as_given_are_sent_once_scaled_down(daemon, fake):
    """Four phone photos of 7 MB are 37 MB as base64, over Claude's 32 MB a request, and were refused before
    any was read; scaled down they are 5 MB, which Claude takes."""
    photo = portrait_photo()
    assert 4 * len(base64.b64encode(photo)) > 32 * 1024 * 1024
    reply = daemon.stub.Generate(ask(*(image_part(photo, "image/jpeg") for _ in range(4))), timeout=60)
    assert reply.answer.route.provider == "anthropic"
    assert [received(block.data).size for block in media_blocks(fake.last_body())] == [(1176, 1568)] * 4


def test_an_image_over_the_limit_that_cannot_be_decoded_is_refused_as_before(daemon, fake):
    """A JPEG's header over 6 MB of bytes no decoder reads (QA regress21 section 4) is refused before any
    provider is called, since session 25 at intake (the router reads every image's header): INVALID_ARGUMENT
    naming the part and why, and nothing is sent."""
    broken = b"\xff\xd8\xff\xe0" + bytes(6 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(ask(image_part(broken, "image/jpeg")), timeout=60)
    details = error_details(info.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == [("request.messages[0].parts[0].media", "the image cannot be decoded (its JPEG "
                                   "header cannot be read): damaged or cut short; send the whole file")]
    assert fake.message_calls() == []


# -- regress21: a request over 32 MB of images each within 5 MB; why an image could not be scaled; logs --------

def noisy_photo(seed: int, width: int = 2000, height: int = 1500, fmt: str = "JPEG") -> bytes:
    """A photo of noise (which compresses badly): 2000x1500 at JPEG quality 95 is 3.5 MB, 4.7 MB as base64,
    within Claude's 5 MB an image; 1200x900 as a PNG is 3.2 MB, within 1568 px but larger than Claude uses."""
    image = Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))
    return encoded(image, fmt, quality=95) if fmt == "JPEG" else encoded(image, fmt)


def test_photos_each_within_5_mb_but_over_32_mb_together_are_scaled_down(daemon, fake):
    """QA regress21 section 2: seven phone photos of 3.5 MB and a 1200x900 PNG photo of 3.2 MB, each within
    5 MB as base64, are 37 MB together, over Claude's 32 MB a request, and were refused (INPUT_TOO_LARGE).
    Claude sees none over 1568 px: each is scaled down (the PNG, within 1568 px but over 1 MB, made a
    JPEG), with a note saying why, and the request goes; a small image within every limit goes byte for byte."""
    photos = [noisy_photo(seed) for seed in range(7)]
    png = noisy_photo(7, 1200, 900, "PNG")
    small = page(300, 200)
    assert all(len(base64.b64encode(data)) <= MAX_IMAGE_BASE64 for data in [*photos, png])
    assert sum(len(base64.b64encode(data)) for data in [*photos, png]) > 32 * 1024 * 1024
    parts = [image_part(data, "image/jpeg", f"IMG_{i}.jpg") for i, data in enumerate(photos)]
    reply = daemon.stub.Generate(ask(image_part(small, "image/png"), *parts, image_part(png, "image/png", "scan.png")),
                                 timeout=120)
    assert (reply.answer.route.provider, reply.answer.text) == ("anthropic", "Hello from fake Claude.")
    kept, *scaled, made_jpeg = media_blocks(fake.last_body())
    assert (kept.media_type, kept.data) == ("image/png", small)
    assert [(block.media_type, received(block.data).size) for block in scaled] == [("image/jpeg", (1568, 1176))] * 7
    assert (made_jpeg.media_type, received(made_jpeg.data).size) == ("image/jpeg", (1200, 900))
    [note] = scaling_notes(reply.answer.route.notes)
    assert note.startswith("anthropic/claude-sonnet-4-6: 8 images were scaled down before sending, the first: "
                           "messages[0].parts[1] (IMG_0.jpg) was scaled down"), note
    assert "before sending: the request was at least " in note and "over Claude's limit of 32 MB" in note, note


def test_a_request_still_over_32_mb_with_its_images_scaled_down_is_refused(daemon, fake):
    """Three PDFs of 10 MB as base64 leave too little room for four photos even scaled down: INPUT_TOO_LARGE,
    naming the request's size, and nothing is sent."""
    pdf = b"%PDF-1.4\n" + bytes(7_500_000) + b"\n%%EOF\n"
    documents = [pb.Part(media=pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=pdf))] * 3
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(ask(*documents, *(image_part(noisy_photo(seed), "image/jpeg") for seed in range(4))),
                             timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value).reason == "INPUT_TOO_LARGE"
    assert "the request is at least " in info.value.details()
    assert "over Claude's limit of 32 MB" in info.value.details()
    assert fake.message_calls() == []


def test_an_image_too_large_to_decode_is_refused_saying_why(daemon, fake):
    """QA regress21 section 4: a 1-bit scan of 8200x5000 px (a small PNG) is over 8000 px, and its 41 million
    pixels are over the 40 million an image may have to be scaled: the refusal says so, not only the limit."""
    scan = Image.new("1", (8200, 5000), 1)
    scan.paste(0, (100, 100, 8100, 200))
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(ask(image_part(encoded(scan, "PNG"), "image/png", "scan.png")), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value).reason == "INPUT_TOO_LARGE"
    assert ("the image is 8200x5000 px, over Claude's limit of 8000x8000 px, and it could not be scaled down: "
            "decoding it takes 8200x5000 px (41,000,000 pixels), over the 40,000,000 pixels an image may have "
            "to be scaled") in info.value.details()
    assert fake.message_calls() == []


def test_a_sessions_photo_is_logged_scaled_once_and_noted_on_every_turn(daemon, fake):
    """QA regress21 section 5: a photo over 5 MB sent on a session's first turn comes back with its history on
    every later turn, its scaled copy reused: the INFO line saying it was scaled is logged once, while every
    answer that sent it notes it (each answer says what its request sent)."""
    photo = portrait_photo()
    for turn in range(3):
        parts = [image_part(photo, "image/jpeg", "IMG_0001.jpg")] if turn == 0 else []
        request = ask(*parts)
        request.request.session_id = "s-photo"
        reply = daemon.stub.Generate(request, timeout=60)
        assert reply.answer.route.provider == "anthropic"
        assert received(media_blocks(fake.last_body())[0].data).size == (1176, 1568)
        assert_photo_noted(reply.answer.route.notes)
    assert len(fake.message_calls()) == 3
    assert daemon.logs().count("was scaled down to 1176x1568 px") == 1


def test_a_photo_cut_short_over_the_limit_is_refused_saying_it_is_damaged(daemon, fake):
    """QA mobile (session 23): a 9 MB phone photo cut to two thirds of its bytes (an upload that ended early)
    was refused saying only that its pixels "could not be decoded or encoded again (the daemon's log says
    why)": the client would shrink the photo when it must send it again. The refusal says it is cut short,
    naming it, before any provider is called."""
    photo = portrait_photo()
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(ask(image_part(photo[:len(photo) * 2 // 3], "image/jpeg", "IMG_cut.jpg")), timeout=60)
    details = error_details(info.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == [("request.messages[0].parts[0].media", "IMG_cut.jpg: the image cannot be decoded "
                                   "(it ends before its end-of-image marker): damaged or cut short; send the whole "
                                   "file")]
    assert fake.message_calls() == []
