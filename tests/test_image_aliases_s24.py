"""Image types from the alt-text QA report (round 24: a11y F1, F2, F4, F6):

- ``image/apng``, ``image/vnd.mozilla.apng``, ``image/jfif`` and Citrix's names of PNG, JPEG and GIF are
  PNG, JPEG and GIF content: they reach GPT-4o as ``image/png``, ``image/jpeg`` and ``image/gif`` (they were
  refused by every model, NO_ROUTE), and an MPO photo (a JPEG with more frames after its first) as the
  ``image/jpeg`` it is (it was read by the OCR bridge);
- an ICO favicon is converted to a PNG of its largest picture for GPT-4o (it was OCR'd, and no note said so);
- ``route.bridges`` names, on each bridge, only the formats it handled (a BMP converted, a PPM read to text);
- GPT-4o's refusal of an animated GIF sent by ``media_id`` (no file name) names its place in the request;
- the CLI sends ``.apng`` as ``image/png`` and says that it takes no URLs.

The daemon runs for real (tests/conftest.py); the cloud plugins call the fakes of tests/fakes through their
official SDKs, and ``local`` reads the images in the daemon.
"""

from __future__ import annotations

import io

from grpc_helpers import text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from PIL import Image
from test_cli_stdin import mmrouter, text
from test_formats_e2e import bmp, config_for, generate, gif, image, sent_parts, upload
from test_hybrid import ALL_KEYS


def saved(fmt: str, size: tuple[int, int] = (40, 30), **options) -> bytes:
    """A picture saved by Pillow in ``fmt``."""
    out = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(out, format=fmt, **options)
    return out.getvalue()


def apng() -> bytes:
    """An animated PNG of two frames."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def mpo() -> bytes:
    """A camera's MPO: two JPEG frames, the second after the first's end."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="MPO", save_all=True, append_images=frames[1:])
    return out.getvalue()


def favicon(red: int) -> bytes:
    """A favicon of three sizes (16, 32 and 64 px), its largest picture of ``red`` and transparent at a corner."""
    picture = Image.new("RGBA", (64, 64), (red, 30, 30, 255))
    picture.putpixel((0, 0), (0, 0, 0, 0))
    out = io.BytesIO()
    picture.save(out, format="ICO", sizes=[(16, 16), (32, 32), (64, 64)])
    return out.getvalue()


#: (declared type, content, the type GPT-4o gets it as)
RENAMED = [
    ("image/apng", apng(), "image/png"), ("image/vnd.mozilla.apng", apng(), "image/png"),
    ("image/x-citrix-png", png("logo"), "image/png"), ("image/jfif", saved("JPEG"), "image/jpeg"),
    ("image/x-citrix-jpeg", saved("JPEG"), "image/jpeg"), ("image/x-citrix-gif", gif(1), "image/gif"),
    ("image/mpo", mpo(), "image/jpeg"),
]


def test_png_jpeg_and_gif_content_under_another_name_reaches_gpt_4o_under_its_registered_type(start_daemon,
                                                                                               fakes) -> None:
    """Each type passed the content check as PNG, JPEG or GIF content, but no model took it under that name:
    NO_ROUTE (an MPO was OCR'd). It goes to GPT-4o as the registered type, its bytes as they are: inline,
    uploaded (UploadMedia answers and records that type) and, for the names alone, by URL."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic") + "\nserver:\n  allow_urls: true",
                          env=ALL_KEYS, plugins=())
    for declared, data, sent_as in RENAMED:
        request = text_request("Write alt text.", media=[image(declared, data, "picture")])
        route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
        assert (route.provider, route.model, list(route.bridges)) == ("openai", "gpt-4o", []), declared
        answer = generate(daemon, request)
        assert (answer.route.provider, answer.route.model, list(answer.route.bridges)) == ("openai", "gpt-4o", [])
        [sent] = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
        assert (sent.mime_type, sent.data) == (sent_as, data), declared

    stored = [upload(daemon, data, declared, pb.MODALITY_IMAGE, "x")
              for data, declared in ((apng(), "image/apng"), (mpo(), "image/mpo"))]
    assert [s.mime_type for s in stored] == ["image/png", "image/jpeg"]
    answer = generate(daemon, text_request("Write alt text.", media=[
        pb.Media(modality=pb.MODALITY_IMAGE, media_id=s.media_id) for s in stored]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert [p.mime_type for p in sent_parts(fakes["openai"]) if p.kind == "image"] == ["image/png", "image/jpeg"]

    url = "https://cdn.example.com/spinner.apng"
    answer = generate(daemon, text_request("Write alt text.", media=[
        pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/apng", url=url)]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert [p.url for p in sent_parts(fakes["openai"]) if p.kind == "image"] == [url]


def test_a_favicon_reaches_gpt_4o_as_a_png_of_its_largest_picture(start_daemon, fakes) -> None:
    """GPT-4o takes no ICO: the favicon was read by the OCR bridge, the model never saw it, and no note said
    so. It is converted like a BMP: its largest picture (64x64), transparency kept, as a PNG."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=ALL_KEYS, plugins=())
    for red, declared in ((200, "image/vnd.microsoft.icon"), (100, "image/x-icon")):
        answer = generate(daemon, text_request("Write alt text.", media=[image(declared, favicon(red), "fav.ico")]))
        assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
        assert list(answer.route.bridges) == [
            f"image ({declared})->image/png or image/jpeg, else text via local/extract"]
        assert f"converted fav.ico from {declared} to image/png for the model" in answer.route.notes
        [sent] = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
        picture = Image.open(io.BytesIO(sent.data))
        assert (sent.mime_type, picture.format, picture.size) == ("image/png", "PNG", (64, 64))
        rgba = picture.convert("RGBA")
        assert (rgba.getpixel((0, 0))[3], rgba.getpixel((9, 9))) == (0, (red, 30, 30, 255))
        assert not any(s.provider == "local" for s in answer.route.steps)  # the OCR was not called


def test_each_bridge_of_a_mixed_request_names_only_the_formats_it_handled(start_daemon, fakes) -> None:
    """A BMP (converted to PNG) and a PPM (which Pillow is not asked to convert: read by the OCR bridge), one
    bridge planned for both: the route named both formats on each of what was done, which read as if the
    BMP had been OCR'd. Now each names its own, and so does the OCR call's step."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=ALL_KEYS, plugins=())
    request = text_request("Write alt text.", media=[
        image("image/bmp", bmp("SCAN"), "scan.bmp"), image("image/x-portable-pixmap", saved("PPM", (160, 48)), "p.ppm")])
    planned = "image (image/bmp, image/x-portable-pixmap)->image/png or image/jpeg, else text via local/extract"
    assert list(daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route.bridges) == [
        planned]
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == [
        "image (image/bmp)->image/png or image/jpeg, else text via local/extract",
        "image (image/x-portable-pixmap)->text via local/extract"]
    assert [s.purpose for s in answer.route.steps if s.provider == "local"] == [
        "bridge:image (image/x-portable-pixmap)->text via local/extract"]
    assert [p.mime_type for p in sent_parts(fakes["openai"]) if p.kind == "image"] == ["image/png"]


def test_an_animated_gif_sent_by_media_id_is_named_by_its_place(start_daemon, fakes) -> None:
    """A part naming an upload by ``media_id`` has no file name: GPT-4o's refusal said only "the GIF is
    animated"; it names the part now, as the plugin's other refusals do."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=ALL_KEYS, plugins=())
    stored = upload(daemon, gif(3), "image/gif", pb.MODALITY_IMAGE, "wave.gif")
    generate(daemon, text_request("Hello.", session_id="cms"))  # a session's history: places count this turn's
    asked = len(fakes["openai"].chat_requests())
    answer = generate(daemon, text_request("What moves?", session_id="cms", media=[
        image("image/png", png("logo"), "logo.png"), pb.Media(modality=pb.MODALITY_IMAGE, media_id=stored.media_id)]))
    assert answer.route.provider == "anthropic" and len(fakes["openai"].chat_requests()) == asked
    [refused] = [a for a in answer.route.attempts if not a.ok]
    assert "the GIF part 2 of message 1 is animated (refused before sending)" in refused.error, refused.error


def test_the_cli_sends_an_apng_as_a_png(start_daemon, fakes, tmp_path) -> None:
    """``ask --image anim.apng`` sent Python's ``image/apng`` and exited 1 (NO_ROUTE)."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic"), env=ALL_KEYS, plugins=())
    path = tmp_path / "anim.apng"
    path.write_bytes(apng())
    code, _, err = text(mmrouter("ask", "Alt text", "--image", path, "--address", daemon.address))
    assert code == 0, err
    assert "-> openai/gpt-4o" in err, err
    assert [(p.mime_type, p.data) for p in sent_parts(fakes["openai"]) if p.kind == "image"] == [
        ("image/png", path.read_bytes())]


def test_the_cli_says_it_takes_no_urls() -> None:
    """``--image https://...`` said ``no such file: https:/cdn.example.com/a.jpg``: the URL mangled into a path."""
    code, out, err = text(mmrouter("ask", "Alt text", "--image", "https://cdn.example.com/a.jpg", "--json"))
    assert code == 2
    said = err + out
    assert ("https://cdn.example.com/a.jpg is a URL: the CLI sends local files only; download it first, or give the "
            "URL in the url field of the request's Media through the API") in said, said
    assert '"field": "--image https://cdn.example.com/a.jpg"' in said
    code, out, err = text(mmrouter("ask", "Alt text", "--image", "file:///tmp/no-such-dir/a.png"))
    assert code == 2 and "file:///tmp/no-such-dir/a.png is a file URL: give the file's path itself " \
                          "(/tmp/no-such-dir/a.png)" in err, err
