"""Converting BMP and TIFF images for a model that takes PNG, in a running App: each image once (a session's
history comes back on every turn, a multi-page TIFF with every page), only those of the history the model will
get, a few at a time."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading

import pytest
from PIL import Image

import router
import router.convert
from router import Modality, ModelInfo
from router.config import parse_config
from router.core import App
from router.types import Media, Message, Part, Request, Role, RoutingHints

IMAGE = Modality.IMAGE


class Viewer(router.Provider):
    """A model that takes any image (omni), a 2000-token one that takes PNG only and says which images it got
    (tiny), and an OCR that reads any image (ocr)."""

    name = "cv"
    models = [ModelInfo("omni", frozenset({Modality.TEXT, IMAGE})),
              ModelInfo("tiny", frozenset({Modality.TEXT, IMAGE}), context_tokens=2000, default_max_output_tokens=100,
                        input_mime_types=frozenset({"image/png"})),
              ModelInfo("ocr", frozenset({IMAGE}))]

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        if model.name == "ocr":
            yield router.TextDelta(f"read {request.media()[0].filename}")
        elif model.name == "tiny":
            yield router.TextDelta("got " + ",".join(f"{m.mime_type} {m.filename}" for m in request.media()))
        else:
            yield router.TextDelta("seen")


@pytest.fixture(autouse=True)
def nothing_converted_before():
    router.convert.forget()  # the conversions are kept by the process: each test starts without them
    yield
    router.convert.forget()


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    """The names of the images converted (decoded and encoded again), as they are."""
    made: list[str] = []
    convert = router.convert.to_pages

    def counted(media: Media, *args):  # type: ignore[no-untyped-def]
        made.append(media.filename)
        return convert(media, *args)

    monkeypatch.setattr(router.convert, "to_pages", counted)
    return made


@pytest.fixture
async def app(tmp_path):
    provider = Viewer()

    class Plugin:
        @router.hookimpl
        def register_providers(self, register, settings):  # type: ignore[no-untyped-def]
            register(provider)

    app = App(parse_config(f"""
providers: {{cv: {{}}}}
plugins: {{disabled: [openai, anthropic, gemini, assemblyai, local]}}
routes:
  - name: native
    match: {{tags: [native]}}
    use: cv/omni
  - name: png
    use: cv/tiny
    bridging: true
bridges: {{image: [cv/ocr]}}
server: {{data_dir: '{tmp_path}'}}
""", "t.yaml"), extra_plugins={"cv": Plugin()})
    yield app
    await app.aclose()


def bmp(shade: int) -> bytes:
    """A 1024x768 BMP of one colour: 765 tokens for routing (an image's tokens follow its pixel size)."""
    out = io.BytesIO()
    Image.new("RGB", (1024, 768), (shade, 90, 30)).save(out, format="BMP")
    return out.getvalue()


async def ask(app: App, text: str, *images: Media, session: str = "s", tags: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    request = Request(messages=[Message(Role.USER, [*(Part(media=m) for m in images), Part(text=text)])],
                      session_id=session, hints=RoutingHints(tags=list(tags)))
    return [e async for e in app.answer(request, None)][-1].answer


async def test_a_sessions_bmp_is_converted_once_not_again_on_every_turn(app, conversions) -> None:
    scan = Media(IMAGE, "image/bmp", data=bmp(200), filename="scan.bmp")
    first = await ask(app, "what is it?", scan)
    assert first.text == "got image/png scan.bmp" and conversions == ["scan.bmp"]
    assert "converted scan.bmp from image/bmp to image/png for the model" in first.route.notes
    second = await ask(app, "and its colour?")
    assert second.text == "got image/png scan.bmp", "the history's BMP still reaches the model as a PNG"
    assert conversions == ["scan.bmp"], "the history's BMP was converted again"
    assert "reused 1 image(s) converted to another format before" in second.route.notes
    assert not any(n.startswith("converted scan.bmp") for n in second.route.notes)
    # the same picture sent again under another name, outside any session: converted once still, named anew
    again = await ask(app, "what is it?", Media(IMAGE, "image/bmp", data=bmp(200), filename="copy.bmp"), session="")
    assert again.text == "got image/png copy.bmp" and conversions == ["scan.bmp"]


async def test_a_sessions_multi_page_tiff_is_converted_once_and_every_page_comes_back_on_later_turns(
        app, conversions) -> None:
    """A 2-page TIFF reaches the model as 2 PNGs, on its turn and on the next, decoded once; kept with both
    pages (the cache holds them all, their bytes counted)."""
    out = io.BytesIO()
    pages = [Image.new("L", (60, 40), shade) for shade in (30, 220)]
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    fax = Media(IMAGE, "image/tiff", data=out.getvalue(), filename="fax.tif")
    first = await ask(app, "what does it say?", fax)
    assert first.text == "got image/png fax.tif,image/png fax.tif" and conversions == ["fax.tif"]
    assert "converted fax.tif from image/tiff to image/png for the model: its 2 pages, an image each" in (
        first.route.notes)
    second = await ask(app, "and the second page?")
    assert second.text == "got image/png fax.tif,image/png fax.tif", "the history's TIFF lost pages"
    assert conversions == ["fax.tif"], "the history's TIFF was converted again"
    assert "reused 1 image(s) converted to another format before" in second.route.notes
    [kept] = router.convert._KEPT._images.values()
    assert kept is not None and len(kept.images) == 2 and router.convert._KEPT._bytes == kept.size


async def test_only_the_history_images_the_model_will_get_are_converted(app, conversions) -> None:
    """Six BMPs a model took natively, then a turn to a 2000-token model that takes PNG (765 tokens an
    image): only the two newest fit, and only they are converted; the history's other images are not
    decoded to be dropped after. An image that cannot be converted is read by the OCR, whose short text
    leaves room for one more image."""
    for i in range(6):
        shot = Media(IMAGE, "image/bmp", data=bmp(40 * i), filename=f"{i}.bmp")
        assert (await ask(app, f"turn {i}", shot, tags=("native",))).text == "seen"
    assert conversions == [], "omni takes BMP"
    answer = await ask(app, "compare them")
    assert answer.text == "got image/png 4.bmp,image/png 5.bmp"
    assert sorted(conversions) == ["4.bmp", "5.bmp"], "an image the model did not get was converted"
    assert any(n.startswith("history trimmed: dropped the 8 oldest message(s)") for n in answer.route.notes), (
        answer.route.notes)

    broken = Media(IMAGE, "image/bmp", data=b"BM" + bytes(80), filename="broken.bmp")
    assert (await ask(app, "turn 6", broken, tags=("native",))).text == "seen"
    router.convert.forget()
    conversions.clear()
    answer = await ask(app, "compare them")
    assert answer.text == "got image/png 4.bmp,image/png 5.bmp", "4.bmp was read by the OCR"
    assert sorted(conversions) == ["4.bmp", "5.bmp", "broken.bmp"]
    assert any(s.purpose.startswith("bridge:image") for s in answer.route.steps)


async def test_conversions_run_a_few_at_a_time_and_once_per_image(monkeypatch) -> None:
    """Each conversion decodes a whole image (up to some 200 MB): however many requests convert at once,
    at most MAX_CONVERSIONS run; requests converting the same image wait for one conversion."""
    limit = router.convert.MAX_CONVERSIONS
    more = threading.Barrier(limit + 1, timeout=2)  # passed only if more than the limit run at once
    lock = threading.Lock()
    running, peak, calls = 0, 0, []

    def converting(media: Media, *args):  # type: ignore[no-untyped-def]
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            calls.append(media.filename)
        with contextlib.suppress(threading.BrokenBarrierError):
            more.wait()
        with lock:
            running -= 1
        png = b"png of " + media.data
        return router.convert.Pages((Media(IMAGE, "image/png", data=png, filename=media.filename, size=len(png)),), 1)

    monkeypatch.setattr(router.convert, "to_pages", converting)
    images = [Media(IMAGE, "image/bmp", data=bmp(i), filename=f"{i}.bmp") for i in range(limit + 2)]
    results = await asyncio.gather(*(router.convert.convert(m) for m in images))
    assert peak == limit, f"{peak} conversions ran at once"
    assert [(pages.images[0].data, before) for pages, before in results] == [(b"png of " + m.data, False)
                                                                              for m in images]

    calls.clear()
    router.convert.forget()
    same = [Media(IMAGE, "image/bmp", data=bmp(7), filename=f"{name}.bmp") for name in ("a", "b", "c")]
    results = await asyncio.gather(*(router.convert.convert(m) for m in same))
    assert len(calls) == 1
    assert [(pages.images[0].filename, before) for pages, before in results] == [("a.bmp", False), ("b.bmp", True),
                                                                                 ("c.bmp", True)]
