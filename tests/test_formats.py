"""Media formats and lengths in routing: ModelInfo.takes_mime, the catalogues' formats, Router.plan skipping
or bridging a model for a format (or a speech length) it does not take, and the plugins' own refusals.

Routing is pure: requests are built from ``router.types``, catalogs from the plugins' real catalogues.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import struct

import grpc
import numpy as np
import pytest
from mmrouter_anthropic import limits as claude_limits
from mmrouter_anthropic.convert import media_block
from mmrouter_anthropic.models import MODELS as CLAUDE_MODELS
from mmrouter_assemblyai.models import MODELS as AAI_MODELS
from mmrouter_gemini.convert import check_format
from mmrouter_gemini.models import MODELS as GEMINI_MODELS
from mmrouter_local.provider import EXTRACT_MODEL
from mmrouter_openai.chat import refuse_animated_gifs
from mmrouter_openai.models import BUILTIN
from mmrouter_openai.models import catalogue as openai_catalogue
from mmrouter_openai.transcribe import check_formats, upload_name
from PIL import Image

import router.convert
from router.config import embedded_default
from router.convert import JPEG, PNG, convertible, to_pages
from router.errors import (
    NoRoute,
    ProviderInputTooLarge,
    ProviderUnavailable,
    ProviderUnsupportedInput,
    is_input_too_large,
    provider_error_from_status,
)
from router.routing import Bridge, Plan, ProviderStatus, Router, Target, facts_of
from router.sniff import GIF_MAX_STEPS, animated_gif, content_mime, mime_problem
from router.types import Media, Message, Modality, ModelInfo, Options, Part, Price, Request, Role, Task
from router.wire import model_to_proto

IMAGE, AUDIO, VIDEO, DOC = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT
OPENAI = {e.info.name: e for e in BUILTIN}
GPT_4O = OPENAI["gpt-4o"].info
WHISPER = OPENAI["whisper-1"]
DIARIZE = OPENAI["gpt-4o-transcribe-diarize"]


def catalog(*ready: str) -> dict[str, ProviderStatus]:
    """The built-in providers with their real catalogues; those in ``ready`` (default: all) are configured."""
    models = {"openai": [e.info for e in BUILTIN], "anthropic": CLAUDE_MODELS, "gemini": GEMINI_MODELS,
              "assemblyai": AAI_MODELS, "local": [EXTRACT_MODEL]}
    ready = ready or tuple(models)
    return {name: ProviderStatus(name in ready, "" if name in ready else "no key", {m.name: m for m in found})
            for name, found in models.items()}


@functools.cache
def hybrid() -> Router:
    config = embedded_default()
    return Router(rules=config.routes, default=config.default, bridges=config.bridges)


def media(modality: Modality, mime: str, seconds: float | None = None, name: str = "") -> Media:
    return Media(modality, mime, data=b"x", duration_seconds=seconds, filename=name)


def ask(*items: Media, question: str = "What is this?", task: Task = Task.AUTO,
        diarization: bool = False) -> Request:
    parts = ([Part(text=question)] if question else []) + [Part(media=m) for m in items]
    return Request([Message(Role.USER, parts)], Options(task=task, diarization=diarization))


def decide(req: Request, *ready: str):
    return hybrid().decide(facts_of(req), catalog(*ready))


def trace_of(decision, rule: str) -> str:
    return next(t.reason for t in decision.trace if t.rule == rule)


# -- ModelInfo.takes_mime ----------------------------------------------------------------------


def test_a_model_with_no_formats_takes_every_type() -> None:
    model = ModelInfo("any", inputs=frozenset(Modality))
    assert model.takes_mime("image/bmp", IMAGE) and model.takes_mime("application/x-anything", DOC)


def test_takes_mime_matches_exact_types_after_normalising_and_wildcards() -> None:
    model = ModelInfo("m", inputs=frozenset(Modality), input_mime_types=frozenset({"image/jpeg", "audio/mpeg",
                                                                                    "text/*"}))
    assert model.takes_mime("Image/JPG", IMAGE)
    assert model.takes_mime("audio/mp3; rate=44100", AUDIO)
    for mp3 in ("audio/mpeg3", "audio/x-mpeg-3", "audio/mpg"):  # older names of MP3: Whisper takes them
        assert model.takes_mime(mp3, AUDIO), mp3
    assert model.takes_mime("text/markdown", DOC)
    assert not model.takes_mime("image/bmp", IMAGE)
    assert not model.takes_mime("audio/aac", AUDIO)


def test_a_kind_of_media_the_list_says_nothing_of_stays_allowed() -> None:
    images_only = ModelInfo("m", inputs=frozenset(Modality), input_mime_types=frozenset({"image/png"}))
    assert images_only.takes_mime("audio/aac", AUDIO)
    assert images_only.takes_mime("video/x-matroska", VIDEO)
    assert images_only.takes_mime("application/pdf", DOC)


def test_a_document_list_speaks_of_text_documents_too() -> None:
    pdf_only = ModelInfo("m", inputs=frozenset(Modality), input_mime_types=frozenset({"application/pdf"}))
    assert not pdf_only.takes_mime("text/plain", DOC)
    assert not pdf_only.takes_mime("application/vnd.openxmlformats-officedocument.wordprocessingml.document", DOC)


def test_video_declared_as_audio_is_checked_against_the_audio_list() -> None:
    assert WHISPER.info.takes_mime("video/mp4", AUDIO)
    assert not WHISPER.info.takes_mime("video/x-matroska", AUDIO)
    assert not WHISPER.info.takes_mime("video/quicktime", AUDIO)


# -- the catalogues ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "modality", "taken", "refused"), [
    (GPT_4O, IMAGE, ["image/png", "image/jpg", "image/webp", "image/gif"], ["image/bmp", "image/tiff", "image/heic"]),
    (OPENAI["gpt-audio"].info, AUDIO, ["audio/wav", "audio/x-wav", "audio/mp3"], ["audio/ogg", "audio/aac"]),
    (WHISPER.info, AUDIO, ["audio/flac", "audio/mpeg", "audio/m4a", "audio/ogg", "audio/wav", "audio/webm",
                           "video/mp4"], ["audio/aac", "audio/amr", "audio/aiff", "audio/x-matroska"]),
    (CLAUDE_MODELS[0], IMAGE, ["image/png", "image/jpeg", "image/gif", "image/webp"], ["image/bmp", "image/heic"]),
    (CLAUDE_MODELS[0], DOC, ["application/pdf", "text/plain", "text/csv"],
     ["application/vnd.openxmlformats-officedocument.wordprocessingml.document"]),
    (GEMINI_MODELS[0], IMAGE, ["image/png", "image/heic", "image/heif"], ["image/bmp", "image/tiff", "image/svg+xml"]),
    (GEMINI_MODELS[0], AUDIO, ["audio/wav", "audio/mp3", "audio/aiff", "audio/aac", "audio/ogg", "audio/flac",
                               "audio/m4a"], ["audio/amr"]),
    (GEMINI_MODELS[0], VIDEO, ["video/mp4", "video/quicktime", "video/webm", "video/3gpp"], ["video/x-matroska"]),
    (GEMINI_MODELS[0], DOC, ["application/pdf", "text/markdown"], []),
    (AAI_MODELS[0], AUDIO, ["audio/aac", "audio/amr", "audio/aiff", "audio/x-matroska"], []),
])
def test_each_catalogue_declares_what_its_models_take(model, modality, taken, refused) -> None:
    assert [m for m in taken if not model.takes_mime(m, modality)] == []
    assert [m for m in refused if model.takes_mime(m, modality)] == []


def test_the_transcription_models_declare_their_length_caps() -> None:
    caps = {name: OPENAI[name].info.max_audio_seconds for name in
            ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize")}
    assert caps == {"whisper-1": 0, "gpt-4o-transcribe": 1500, "gpt-4o-mini-transcribe": 1500,
                    "gpt-4o-transcribe-diarize": 1400}


def test_list_providers_shows_the_formats_and_the_cap() -> None:
    shown = model_to_proto(DIARIZE.info)
    assert "audio/wav" in shown.input_mime_types and "audio/aac" not in shown.input_mime_types
    assert list(shown.input_mime_types) == sorted(shown.input_mime_types)
    assert shown.max_audio_seconds == 1400


# -- routing -----------------------------------------------------------------------------------


def test_a_png_still_goes_to_gpt_4o_unbridged() -> None:
    decision = decide(ask(media(IMAGE, "image/png")))
    assert (decision.rule, str(decision.plan.target), decision.plan.bridges) == ("cross-modal", "openai/gpt-4o", [])


def test_a_bmp_is_converted_to_png_for_gpt_4o_and_else_bridged_by_a_model_that_reads_it() -> None:
    decision = decide(ask(media(IMAGE, "image/bmp")))
    assert str(decision.plan.target) == "openai/gpt-4o"
    assert decision.plan.bridges == [Bridge(IMAGE, Target("local", "extract"), mime_types=frozenset({"image/bmp"}),
                                            convert_to=("image/png", "image/jpeg"))]
    assert str(decision.plan.bridges[0]) == "image (image/bmp)->image/png or image/jpeg, else text via local/extract"


def test_without_pillow_a_bmp_is_only_bridged(monkeypatch) -> None:
    monkeypatch.setattr(router.convert, "available", lambda: False)
    decision = decide(ask(media(IMAGE, "image/bmp")))
    assert str(decision.plan.bridges[0]) == "image (image/bmp)->text via local/extract"


def test_a_model_that_takes_no_png_gets_no_conversion() -> None:
    jpeg_only = ModelInfo("m", inputs=frozenset({Modality.TEXT, IMAGE}), input_mime_types=frozenset({"image/jpeg"}))
    assert router.convert.target_formats(jpeg_only, IMAGE, frozenset({"image/bmp"})) == ()
    assert router.convert.target_formats(GPT_4O, IMAGE, frozenset({"image/bmp", "image/heic"})) == (
        "image/png", "image/jpeg")
    png_only = ModelInfo("m", inputs=frozenset({Modality.TEXT, IMAGE}), input_mime_types=frozenset({"image/png"}))
    assert router.convert.target_formats(png_only, IMAGE, frozenset({"image/bmp"})) == ("image/png",)
    assert router.convert.target_formats(GPT_4O, IMAGE, frozenset({"image/heic"})) == ()


def to_image(media: Media, *args, **kwargs) -> Media | None:  # type: ignore[no-untyped-def]
    """The one image a single-page ``media`` is converted to (:func:`to_pages`), or None."""
    pages = to_pages(media, *args, **kwargs)
    if pages is None:
        return None
    assert pages.total == 1 and len(pages.images) == 1
    return pages.images[0]


def multi_page_tiff(pages: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    return out.getvalue()


def test_a_multi_page_tiff_becomes_an_image_per_page_in_order() -> None:
    """A fax or a scanner's batch: every page is converted (it was the first only), each as a single page
    is (its own size, mode and depth), in order."""
    deep = np.full((30, 50), 30000, dtype=np.uint16)
    deep[10:20, 20:30] = 5000
    fax = multi_page_tiff([Image.new("L", (120, 80), 10), Image.fromarray(deep), Image.new("RGB", (4000, 100), "red")])
    pages = to_pages(Media(IMAGE, "image/tiff", data=fax, filename="fax.tif"))
    assert pages is not None and (pages.total, pages.left_out) == (3, 0)
    assert [(i.mime_type, i.filename, i.size) for i in pages.images] == [("image/png", "fax.tif", len(i.data))
                                                                        for i in pages.images]
    backs = [Image.open(io.BytesIO(i.data)) for i in pages.images]
    assert [(b.size, b.mode) for b in backs] == [((120, 80), "L"), ((50, 30), "L"), ((2000, 50), "RGB")]
    assert (backs[0].getpixel((5, 5)), backs[1].getpixel((25, 15)), backs[1].getpixel((2, 2))) == (10, 0, 255)
    assert backs[2].getpixel((5, 5)) == (255, 0, 0)
    # a page of too many pixels (checked before it is decoded) leaves the whole file to the OCR bridge, which
    # reads every page
    assert to_pages(Media(IMAGE, "image/tiff", data=fax), max_pixels=120 * 80) is None


def test_a_tiff_of_more_pages_than_the_cap_gives_its_first_pages_and_how_many_it_has(monkeypatch) -> None:
    many = multi_page_tiff([Image.new("L", (20, 10), shade) for shade in range(router.convert.MAX_PAGES + 3)])
    pages = to_pages(Media(IMAGE, "image/tiff", data=many, filename="batch.tif"))
    assert pages is not None and (len(pages.images), pages.total, pages.left_out) == (20, 23, 3)
    assert [Image.open(io.BytesIO(i.data)).getpixel((1, 1)) for i in pages.images] == list(range(20))
    # and no more bytes than MAX_PAGES_BYTES: the pages after those are left out
    one = len(pages.images[0].data)
    monkeypatch.setattr(router.convert, "MAX_PAGES_BYTES", 2 * one + one // 2)
    pages = to_pages(Media(IMAGE, "image/tiff", data=many, filename="batch.tif"))
    assert pages is not None and (len(pages.images), pages.total) == (2, 23)


def test_an_animated_gif_webp_or_png_is_never_split_into_its_frames() -> None:
    """Only the formats the router converts (BMP, TIFF) are split into pages: an animation a model takes is
    sent as it is, and routing plans no conversion of it."""
    frames = [Image.new("RGB", (40, 30), (80 * i, 120, 200)) for i in range(3)]
    for fmt, mime in (("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/png")):
        out = io.BytesIO()
        frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert Image.open(io.BytesIO(out.getvalue())).n_frames == 3
        assert not convertible(Media(IMAGE, mime, data=out.getvalue()))
        assert router.convert.target_formats(GPT_4O, IMAGE, frozenset({mime})) == ()
        assert to_pages(Media(IMAGE, mime, data=out.getvalue())) is None  # not read as a BMP or TIFF either


def test_a_bmp_or_tiff_becomes_a_png_of_the_same_picture_and_a_bomb_or_garbage_does_not() -> None:
    picture = Image.new("RGB", (120, 80), (200, 30, 60))
    for fmt, mime in (("BMP", "image/bmp"), ("TIFF", "image/tiff")):
        out = io.BytesIO()
        picture.save(out, format=fmt)
        png = to_image(Media(IMAGE, mime, data=out.getvalue(), filename=f"scan.{fmt.lower()}"))
        assert png is not None and (png.mime_type, png.filename) == ("image/png", f"scan.{fmt.lower()}")
        with Image.open(io.BytesIO(png.data)) as back:
            assert (back.format, back.size, back.convert("RGB").getpixel((5, 5))) == ("PNG", (120, 80), (200, 30, 60))
        assert to_image(Media(IMAGE, mime, data=out.getvalue()), max_pixels=120 * 80 - 1) is None
    # a BMP header declaring 100,000 x 100,000 pixels on a few bytes: refused before decoding
    bomb = b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 100_000, 100_000, 1, 24,
                                                                     0, 0, 0, 0, 0, 0) + bytes(16)
    assert to_image(Media(IMAGE, "image/bmp", data=bomb)) is None
    assert to_image(Media(IMAGE, "image/bmp", data=b"BM" + bytes(80))) is None
    big = Image.new("L", (4000, 1000), 128)
    out = io.BytesIO()
    big.save(out, format="BMP")
    with Image.open(io.BytesIO(to_image(Media(IMAGE, "image/bmp", data=out.getvalue())).data)) as back:
        assert back.size == (2000, 500)  # scaled down as the models would, to Claude's side for many images


def tiff(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="TIFF")
    return out.getvalue()


@pytest.mark.parametrize(("dtype", "mode", "page", "ink"), [(np.uint16, "I;16", 30000, 5000),
                                                          (np.dtype(">u2"), "I;16B", 30000, 5000),
                                                          (np.int32, "I", 70000, -20), (np.float32, "F", 0.8, 0.1)])
def test_a_16_bit_32_bit_or_float_tiff_becomes_the_same_picture_on_8_bits_not_a_blank_one(dtype, mode, page,
                                                                                           ink) -> None:
    """Image.convert clips such values (a 16-bit scan became all white, a float one all black): they are
    stretched from the lowest to the highest."""
    values = np.full((90, 120), page, dtype=dtype)
    values[30:60, 40:80] = ink
    data = tiff(values)
    assert Image.open(io.BytesIO(data)).mode == mode
    png = to_image(Media(IMAGE, "image/tiff", data=data))
    with Image.open(io.BytesIO(png.data)) as back:
        assert (back.mode, back.size, back.getpixel((60, 45)), back.getpixel((5, 5))) == ("L", (120, 90), 0, 255)
    # a page of one value keeps it (as 8 bits), whatever the mode
    plain = to_image(Media(IMAGE, "image/tiff", data=tiff(np.full((10, 10), 25700, dtype=np.uint16))))
    assert Image.open(io.BytesIO(plain.data)).getextrema() == (100, 100)
    nan = to_image(Media(IMAGE, "image/tiff", data=tiff(np.full((10, 10), np.nan, dtype=np.float32))))
    assert nan is None  # left to the OCR bridge


def test_a_noisy_picture_too_large_as_a_png_becomes_a_jpeg_claude_takes_or_is_left_to_the_ocr() -> None:
    """A noisy 2048 x 2048 BMP made a 12.6 MB PNG, over Claude's 5 MB of base64 an image, and over its 2000
    pixels a side in a request of more than 20 images."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)).save(out, format="BMP")
    noisy = Media(IMAGE, "image/bmp", data=out.getvalue(), filename="noise.bmp")
    jpeg = to_image(noisy, (PNG, JPEG))
    assert (jpeg.mime_type, jpeg.filename, jpeg.size) == ("image/jpeg", "noise.bmp", len(jpeg.data))
    claude_limits.check_image_size(jpeg, "image 1", "anthropic")  # raises over 5 MB of base64
    many = [("image", claude_limits.check_image_sides(jpeg.data, "image", "anthropic"))] * 21
    claude_limits.check_images(many, CLAUDE_MODELS[0], "anthropic")  # raises over 2000 px a side
    with Image.open(io.BytesIO(jpeg.data)) as back:
        assert (back.format, back.size) == ("JPEG", (2000, 2000))
    assert to_image(noisy, (PNG,)) is None  # a model that takes PNG only: the OCR bridge reads it
    assert to_image(noisy) is None
    # a transparent picture too large as a PNG is laid on white
    rgba = np.random.default_rng(4).integers(0, 256, (1200, 1200, 4), dtype=np.uint8)
    rgba[:100, :100, 3] = 0
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="TIFF")
    with Image.open(io.BytesIO(to_image(Media(IMAGE, "image/tiff", data=out.getvalue()), (PNG, JPEG)).data)) as back:
        assert back.mode == "RGB" and min(back.getpixel((50, 50))) > 240


def test_only_the_media_in_a_format_the_model_cannot_take_are_bridged() -> None:
    png, bmp = media(IMAGE, "image/png"), media(IMAGE, "image/bmp")
    bridge = decide(ask(png, bmp)).plan.bridges[0]
    assert (bridge.converts(png), bridge.converts(bmp)) == (False, True)


def test_without_bridging_a_format_skips_the_target_and_names_the_format() -> None:
    router = Router(rules=[*hybrid().rules], bridges={})  # no bridges: formats can only be skipped
    decision = router.decide(facts_of(ask(media(IMAGE, "image/heic"))), catalog())
    assert str(decision.plan.target) == "gemini/gemini-2.5-pro"
    reason = trace_of(decision, "cross-modal")
    assert "openai/gpt-4o: does not take image/heic and no bridge is usable" in reason
    assert "anthropic/claude-sonnet-4-6: does not take image/heic" in reason


def test_a_bridge_that_cannot_take_the_format_is_passed_over() -> None:
    # bridges.audio lists whisper-1 first, which takes no AAC: AssemblyAI transcribes it for gpt-4o
    decision = decide(ask(media(AUDIO, "audio/aac", 30)))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]
    decision = decide(ask(media(AUDIO, "audio/wav", 30)))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]


def test_an_aac_clip_to_transcribe_goes_to_assemblyai_not_whisper() -> None:
    decision = decide(ask(media(AUDIO, "audio/aac", 30), question="", task=Task.TRANSCRIBE))
    assert (decision.rule, str(decision.plan.target)) == ("transcription", "assemblyai/best")
    assert "openai/whisper-1: does not take audio/aac" in trace_of(decision, "transcription")


def test_a_docx_is_not_planned_for_claude() -> None:
    docx = media(DOC, "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    router = Router(rules=[*hybrid().rules], bridges={})
    with pytest.raises(NoRoute, match=re.escape("does not take application/vnd.openxml")):
        router.decide(facts_of(ask(docx)), catalog("anthropic"))


def test_a_matroska_video_is_not_sent_to_gemini() -> None:
    decision = decide(ask(media(VIDEO, "video/x-matroska", 20)), "gemini", "local")
    assert decision.rule == "video"
    bridges = decision.plan.bridges
    assert str(decision.plan.target) == "gemini/gemini-2.5-pro" and bridges[0].via == Target("local", "extract")
    assert bridges[0].mime_types == {"video/x-matroska"}


def test_a_long_meeting_is_not_planned_for_the_diarizing_model() -> None:
    meeting = ask(media(AUDIO, "audio/wav", 1830.5), question="", task=Task.TRANSCRIBE, diarization=True)
    with pytest.raises(NoRoute, match=re.escape("1830.5 s of audio is longer than its 1400 s")):
        decide(meeting, "openai", "local")
    short = ask(media(AUDIO, "audio/wav", 600), question="", task=Task.TRANSCRIBE, diarization=True)
    assert str(decide(short, "openai", "local").plan.target) == "openai/gpt-4o-transcribe-diarize"


def test_a_long_clip_passes_over_a_capped_bridge() -> None:
    router = Router(rules=[*hybrid().rules],
                    bridges={AUDIO: ["openai/gpt-4o-transcribe", "openai/whisper-1"]})
    long_clip = ask(media(AUDIO, "audio/wav", 1600))
    assert router.decide(facts_of(long_clip), catalog()).plan.bridges[0].via == Target("openai", "whisper-1")
    short = ask(media(AUDIO, "audio/wav", 60))
    assert router.decide(facts_of(short), catalog()).plan.bridges[0].via == Target("openai", "gpt-4o-transcribe")


def test_a_partial_bridge_leaves_the_other_media_counted_against_the_context() -> None:
    small = ModelInfo("small", inputs=frozenset({Modality.TEXT, IMAGE}), context_tokens=1000,
                      input_mime_types=frozenset({"image/png"}))
    cat = {**catalog(), "tiny": ProviderStatus(True, "", {"small": small})}
    router = Router(rules=[], default="tiny/small", bridges={IMAGE: ["local/extract"]})
    req = ask(media(IMAGE, "image/bmp"), media(IMAGE, "image/png"), media(IMAGE, "image/png"))
    with pytest.raises(NoRoute, match="exceeds its context of 1000"):
        router.decide(facts_of(req), cat)  # two PNGs (765 tokens each) stay, though the BMP is bridged
    assert isinstance(router.plan(Target("tiny", "small"), facts_of(ask(media(IMAGE, "image/bmp"))), cat, True),
                      Plan)


# -- the plugins' own checks -------------------------------------------------------------------


def test_whisper_refuses_a_format_it_does_not_take_with_a_retryable_error() -> None:
    with pytest.raises(ProviderUnsupportedInput, match="audio/aac") as caught:
        check_formats("openai", WHISPER, [media(AUDIO, "audio/aac", name="voice.aac")])
    assert caught.value.retryable and caught.value.reason == "UNSUPPORTED_INPUT"
    check_formats("openai", WHISPER, [media(AUDIO, "audio/x-m4a", 3000)])  # whisper-1 has no length cap


def test_the_diarizing_model_refuses_audio_over_its_cap_before_uploading() -> None:
    with pytest.raises(ProviderInputTooLarge, match=re.escape("1830.5 s long, over gpt-4o-transcribe-diarize's limit of 1400")):
        check_formats("openai", DIARIZE, [media(AUDIO, "audio/wav", 1830.5)])


def test_an_mpeg_video_soundtrack_is_uploaded_under_an_extension_whisper_knows() -> None:
    assert upload_name(media(AUDIO, "video/mpeg")) == "audio.mpeg"
    assert upload_name(media(AUDIO, "audio/mpeg", name="talk")) == "talk.mp3"


def test_claude_refuses_a_bmp_with_a_retryable_error() -> None:
    with pytest.raises(ProviderUnsupportedInput, match="image/bmp") as caught:
        asyncio.run(media_block(media(IMAGE, "image/bmp"), "messages[0].parts[0]", "anthropic"))
    assert caught.value.retryable


def test_gemini_refuses_a_tiff_with_a_retryable_error() -> None:
    with pytest.raises(ProviderUnsupportedInput, match="image/tiff") as caught:
        check_format(media(IMAGE, "image/tiff"), "gemini")
    assert caught.value.retryable
    check_format(media(IMAGE, "image/heic"), "gemini")


def test_the_duration_refusal_counts_as_too_large() -> None:
    text = "audio duration 1830.5 seconds is longer than 1400 seconds which is the maximum for this model"
    assert is_input_too_large(text)
    assert isinstance(provider_error_from_status("openai", 400, text), ProviderInputTooLarge)


def test_a_408_is_a_passing_unavailable_not_the_calls_deadline() -> None:
    """A 408 is a server that gave up waiting for the request, answered at once: UNAVAILABLE (the fallbacks
    run), not DEADLINE_EXCEEDED PROVIDER_TIMEOUT, which says the call's deadline passed during a job."""
    error = provider_error_from_status("openai", 408, "Request Timeout")
    assert isinstance(error, ProviderUnavailable)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")


def test_gemini_takes_video_mov_the_name_its_docs_use() -> None:
    """Gemini's video docs name ``video/mov``: routing must not bridge such a video away from Gemini."""
    pro = next(m for m in GEMINI_MODELS if m.name == "gemini-2.5-pro")
    assert pro.takes_mime("video/mov", Modality.VIDEO) and pro.takes_mime("video/quicktime", Modality.VIDEO)
    decision = decide(ask(media(Modality.VIDEO, "video/mov", 2.0)), "gemini", "local")
    assert (str(decision.plan.target), decision.plan.bridges) == ("gemini/gemini-2.5-pro", [])


def test_an_audio_format_a_chat_model_cannot_send_is_refused_retryably() -> None:
    """A configured audio chat model takes any format by its catalogue, but the chat API takes wav
    and mp3 only: the refusal lets the whisper bridge or the rule's next target take the audio."""
    from mmrouter_openai.chat import _media_part

    model = ModelInfo("my-audio-chat", frozenset({Modality.TEXT, Modality.AUDIO}))
    with pytest.raises(ProviderUnsupportedInput, match="wav or mp3 only") as caught:
        _media_part("openai", model, media(Modality.AUDIO, "audio/mp4"), "messages[0].parts[1]")
    assert caught.value.retryable


def test_a_long_context_size_over_four_billion_tokens_still_goes_on_the_wire() -> None:
    model = ModelInfo("big", frozenset({Modality.TEXT}), price=Price(long_context_above_tokens=5_000_000_000))
    assert model_to_proto(model).price.long_context_above_tokens == 5_000_000_000


def test_configured_openai_models_take_what_the_plugin_can_send() -> None:
    """A configured audio chat model gets audio as wav or mp3 only (what chat.py sends), a configured
    transcriber the upload formats; a built-in given again keeps its formats and length cap."""
    from mmrouter_openai.models import catalogue

    models = {name: e.info for name, e in catalogue(True, [
        {"name": "my-audio-chat", "inputs": ["text", "audio"]},
        {"name": "my-stt", "outputs": ["transcript"]},
        {"name": "gpt-4o-transcribe-diarize", "outputs": ["transcript"], "transcription_format": "diarized_json",
         "price": {"per_audio_hour": 0.3}},
    ]).items()}
    assert not models["my-audio-chat"].takes_mime("audio/mp4", Modality.AUDIO)
    assert models["my-audio-chat"].takes_mime("audio/wav", Modality.AUDIO)
    assert models["my-stt"].takes_mime("audio/mp4", Modality.AUDIO)
    assert not models["my-stt"].takes_mime("audio/aac", Modality.AUDIO)
    diarize = models["gpt-4o-transcribe-diarize"]
    assert diarize.max_audio_seconds == 1400 and not diarize.takes_mime("audio/aac", Modality.AUDIO)
    assert diarize.price.per_audio_hour == 0.3


# -- what clients send: declared types re-typed by content, animated GIFs, files over the Files API limit ----


def m4a_head() -> bytes:
    return b"\0\0\0\x1cftypM4A \0\0\x02\0M4A isomiso2" + bytes(64)


def test_an_m4a_declared_aac_is_retyped_by_its_content_and_raw_aac_is_not() -> None:
    assert mime_problem("audio/aac", AUDIO, m4a_head()) is None
    assert content_mime("audio/aac", m4a_head()) == "audio/mp4"
    assert content_mime("Audio/X-AAC; codecs=mp4a.40.2", m4a_head()) == "audio/mp4"
    adts = b"\xff\xf1\x50\x80" + bytes(64)
    assert content_mime("audio/aac", adts) == "audio/aac"
    assert content_mime("audio/mp4", m4a_head()) == "audio/mp4"
    assert content_mime("video/quicktime", m4a_head()) == "video/quicktime"  # a type of its own: kept


def still_and_animated_gifs() -> tuple[bytes, bytes]:
    images = [Image.new("RGB", (300, 200), (60 * i, 90, 30)) for i in range(3)]
    still, animated = io.BytesIO(), io.BytesIO()
    images[0].save(still, format="GIF", loop=0)  # with a NETSCAPE looping extension, yet one frame
    images[0].save(animated, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=80)
    return still.getvalue(), animated.getvalue()


def test_an_animated_gif_is_told_from_a_still_one_by_its_frames(tmp_path) -> None:
    still, animated = still_and_animated_gifs()
    assert b"NETSCAPE2.0" in still and not animated_gif(still)
    assert animated_gif(animated)
    (tmp_path / "a.gif").write_bytes(animated)
    assert animated_gif(tmp_path / "a.gif")
    for broken in (animated[:40], b"GIF89a", b"\x89PNG\r\n\x1a\n" + bytes(32), b""):
        assert not animated_gif(broken)


def test_a_gif_with_stray_bytes_between_its_blocks_is_read_as_pillow_reads_it(tmp_path) -> None:
    """Pillow skips a byte between blocks that starts none (some encoders pad) and reads on to the trailer:
    OpenAI does too, so such an animation must not pass for a still GIF."""
    still, animated = still_and_animated_gifs()
    first = animated.index(b"\x21\xf9\x04")  # the frames' control extensions
    second = animated.index(b"\x21\xf9\x04", first + 1)
    trailer = len(still) - 1
    cases = {
        "one stray byte before the second frame": (animated[:second] + b"\x00" + animated[second:], True),
        "three": (animated[:second] + b"\x00\x07\xff" + animated[second:], True),
        "before the first frame": (animated[:first] + b"\x01" + animated[first:], True),
        "a still one padded before its trailer": (still[:trailer] + b"\x00\x00" + still[trailer:], False),
        "a still one whose trailer is followed by another image": (still + animated[second:], False),
    }
    for name, (gif, moving) in cases.items():
        assert (Image.open(io.BytesIO(gif)).n_frames > 1) is moving, name
        assert animated_gif(gif) is moving, name
        (tmp_path / "g.gif").write_bytes(gif)
        assert animated_gif(tmp_path / "g.gif") is moving, name
    (tmp_path / "empty.gif").write_bytes(b"")
    assert not animated_gif(tmp_path / "empty.gif")
    # one image of a million 1-byte sub-blocks: the walk stops, and takes it for animated
    endless = b"GIF89a" + struct.pack("<HHBBB", 2, 2, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, 2, 2, 0) + b"\x02"
    assert not animated_gif(endless + b"\x01\x00" * 1000 + b"\x00\x3b")
    endless += b"\x01\x00" * GIF_MAX_STEPS
    assert animated_gif(endless)


def test_gpt_4o_refuses_an_animated_gif_retryably_and_a_local_server_model_does_not() -> None:
    still, animated = still_and_animated_gifs()
    gifs = [Media(IMAGE, "image/gif", data=still), Media(IMAGE, "image/gif", data=animated, filename="a.gif")]
    assert OPENAI["gpt-4o"].still_gifs_only and not OPENAI["whisper-1"].still_gifs_only
    with pytest.raises(ProviderUnsupportedInput, match=re.escape("the GIF 'a.gif' is animated")) as caught:
        refuse_animated_gifs("openai", GPT_4O, gifs)
    assert caught.value.retryable
    refuse_animated_gifs("openai", GPT_4O, gifs[:1])
    configured = openai_catalogue(False, [{"name": "llava", "inputs": ["text", "image"]},
                                          {"name": "gpt-4o", "price": {"input_per_mtok": 1}}])
    assert not configured["llava"].still_gifs_only and configured["gpt-4o"].still_gifs_only


async def test_gemini_refuses_a_file_over_2_gb_before_reading_or_uploading_it(tmp_path) -> None:
    """The default limit, on a sparse file of 2 GiB and a byte: nothing is hashed, read or sent."""
    from mmrouter_gemini import GeminiProvider

    from router.testing import collect
    from tests.fakes.gemini import FakeGemini

    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        f.truncate(2 * 1024**3 + 1)
    video = Media(VIDEO, "video/mp4", path=big, size=2 * 1024**3 + 1, filename="big.mp4")
    with FakeGemini(api_key="k") as fake:
        provider = GeminiProvider.from_settings({"api_key": "k", "base_url": fake.url, "timeout": 10})
        assert provider.settings.max_file_bytes == 2 * 1024**3
        with pytest.raises(ProviderInputTooLarge, match=re.escape("'big.mp4' is 2147483649 bytes, over the Files API")) as caught:
            await collect(provider, ask(video), GEMINI_MODELS[0])
        await provider.aclose()
        assert caught.value.retryable and fake.requests == []


def test_a_converted_picture_is_turned_as_its_orientation_tag_says() -> None:
    """A TIFF (a scanner's, a camera's) may say in its orientation tag how to turn it; the PNG made for the
    model carries no tag, so it must be turned (Pillow turns a TIFF as it opens it). 16-bit included."""
    for values in (np.full((100, 300), 200, dtype=np.uint8), np.full((100, 300), 30000, dtype=np.uint16)):
        out = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6  # turn a quarter clockwise to show it
        Image.fromarray(values).save(out, format="TIFF", exif=exif)
        png = to_image(Media(IMAGE, "image/tiff", data=out.getvalue()))
        with Image.open(io.BytesIO(png.data)) as back:
            assert back.size == (100, 300)


def test_llama_cpp_s_context_overflow_counts_as_too_large() -> None:
    """llama.cpp's server, run with a smaller window (-c) than the model's, refuses with its own words: the
    rule's fallbacks did not run (PROVIDER_BAD_REQUEST)."""
    assert is_input_too_large("the request exceeds the available context size, try increasing it")
    assert not is_input_too_large("the request is invalid: unknown field 'size'")
