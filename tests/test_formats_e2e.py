"""Media formats through the daemon on the embedded hybrid rules, against the providers' fakes: a model is
never sent a format it does not take; a model that reads it (or a bridge) does the work, and the route says so.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from conftest import launch_daemon
from grpc_helpers import text_request, wait_for
from media_factory import pdf, png
from mmrouter.v1 import router_pb2 as pb
from PIL import Image

import router.convert
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic, media_blocks
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

AAI_KEY = "aai-formats-key"
GEMINI_KEY = "gemini-formats-key"
KEYS = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ASSEMBLYAI_API_KEY": AAI_KEY,
        "GEMINI_API_KEY": GEMINI_KEY}


@pytest.fixture(scope="module")
def module_fakes():
    servers = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic(), "assemblyai": FakeAssemblyAI(api_key=AAI_KEY),
               "gemini": FakeGemini(api_key=GEMINI_KEY)}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def fakes(module_fakes):
    """The module's fakes, put back as they were started (but for AssemblyAI's transcript ids, which go on
    counting); at the end of the test, once the daemon deleted the transcripts it read (it does so in the
    background): a late delete reaches no other test."""
    for server in module_fakes.values():
        server.reset(keep={"_ids"})
    yield module_fakes
    assemblyai = module_fakes["assemblyai"]
    wait_for(lambda: set(assemblyai.delete_requests) >= set(assemblyai.transcripts), timeout=10)


def config_for(fakes, *providers: str) -> str:
    """The embedded rules with ``providers`` pointed at their fakes (and local); the others unconfigured."""
    lines = {
        "openai": f'  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{fakes["openai"].base_url}", timeout: 20}}',
        "anthropic": f'  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{fakes["anthropic"].url}", '
                     "timeout: 20}",
        "assemblyai": f'  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{fakes["assemblyai"].url}", '
                      "timeout: 20, poll_interval: 0.02}",
        "gemini": f'  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{fakes["gemini"].url}", timeout: 20}}',
    }
    return "\n".join(["extend_default_routes: true", "providers:", *(lines[p] for p in providers),
                      "  local: {}"])


def module_daemon(module_fakes, tmp_path_factory, *providers: str):
    """A daemon of :func:`config_for` ``providers`` on the module's fakes, for the module's tests that share
    it (starting one per test, and importing its SDKs, took most of the module's time); its fixture says what
    they must not do."""
    daemon = launch_daemon(config_for(module_fakes, *providers), tmp=tmp_path_factory.mktemp("formats"),
                           env=KEYS, sites=[])
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def openai_anthropic(module_fakes, tmp_path_factory):
    """One daemon of the rules with OpenAI and Anthropic for the tests of how an image reaches the model: each
    sends media of its own and reads what the fakes received and the route. Tests sharing it must not make a
    fake answer with a retry delay (a cool-down), read its health, statistics or log, or send bytes another
    test sends to a bridge (bridged texts are kept by content)."""
    yield from module_daemon(module_fakes, tmp_path_factory, "openai", "anthropic")


@pytest.fixture(scope="module")
def openai_assemblyai(module_fakes, tmp_path_factory):
    """One daemon of the rules with OpenAI and AssemblyAI for the tests of audio formats, under the same terms
    as :func:`openai_anthropic`: a transcription's transcript is kept as its audio's bridged text, so a test
    whose audio is bridged sends a clip no other test sends."""
    yield from module_daemon(module_fakes, tmp_path_factory, "openai", "assemblyai")


def bmp(text: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(text, size=(160, 48)))).convert("RGB").save(out, format="BMP")
    return out.getvalue()


def aac(seconds: float = 1.0, rate: int = 16000, container: str = "adts") -> bytes:
    """An AAC clip in an ADTS stream (what a ``.aac`` file holds), or in another ``container`` of PyAV's,
    encoded with PyAV."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as box:
        stream = box.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        frame = av.AudioFrame.from_ndarray((np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            box.mux(packet)
    return out.getvalue()


def m4a(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """An AAC clip in an mp4 container (what a ``.m4a`` file holds: an ``ftyp`` box first)."""
    return aac(seconds, rate, container="ipod")


def tiff_pages(*texts: str) -> tuple[bytes, list[Image.Image]]:
    """A multi-page TIFF (a fax), a page with each of ``texts`` drawn on it, and its pages (grayscale)."""
    pages = [Image.open(io.BytesIO(png(text, size=(400, 60)))).convert("L") for text in texts]
    out = io.BytesIO()
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    return out.getvalue(), pages


def pictures_and_labels(parts: list) -> list:
    """What a model got of converted pages: each image as the page it shows (grayscale bytes), each text as is."""
    return [Image.open(io.BytesIO(p.data)).convert("L").tobytes() if p.kind == "image" else p.text for p in parts]


def gif(frames: int) -> bytes:
    """A GIF of ``frames`` frames, each of another colour (Pillow keeps them all)."""
    images = [Image.new("RGB", (40, 30), (80 * i, 120, 200)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=frames > 1, append_images=images[1:], loop=0, duration=100)
    return out.getvalue()


def upload(daemon, data: bytes, mime_type: str, modality: int, filename: str) -> pb.UploadMediaResponse:
    def chunks():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=modality, mime_type=mime_type,
                                                               filename=filename, size_bytes=len(data)))
        for i in range(0, len(data), 1024):
            yield pb.UploadMediaRequest(chunk=data[i:i + 1024])

    return daemon.stub.UploadMedia(chunks(), timeout=30)


def image(mime: str, data: bytes, name: str) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=name)


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def sent_parts(fake: FakeOpenAI) -> list:
    return fake.parts(fake.chat_requests()[-1]["messages"][-1])


@pytest.mark.parametrize("sent", ["inline", "uploaded"])
def test_a_bmp_reaches_gpt_4o_as_a_png_image_not_as_its_ocr_text(openai_anthropic, fakes, sent) -> None:
    """GPT-4o takes no BMP: the router converts it to PNG (Pillow), so the model sees the picture; the
    local OCR, planned as the fallback, is not called."""
    daemon = openai_anthropic
    scan = bmp({"inline": "INVOICE", "uploaded": "RECEIPT"}[sent])  # its own: a conversion is kept by content
    if sent == "inline":
        sent_scan = image("image/bmp", scan, "scan.bmp")
    else:
        stored = upload(daemon, scan, "image/bmp", pb.MODALITY_IMAGE, "scan.bmp")
        sent_scan = pb.Media(modality=pb.MODALITY_IMAGE, media_id=stored.media_id, filename="scan.bmp")
    request = text_request("What does the scan say?", media=[sent_scan, image("image/png", png("chart"), "chart.png")])
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert list(route.bridges) == ["image (image/bmp)->image/png or image/jpeg, else text via local/extract"]
    answer = generate(daemon, request)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "openai", "gpt-4o")
    assert list(answer.route.bridges) == list(route.bridges)  # as explain said
    assert [s.purpose for s in answer.route.steps] == ["answer"]
    assert "converted scan.bmp from image/bmp to image/png for the model" in answer.route.notes
    images = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
    assert [p.mime_type for p in images] == ["image/png", "image/png"]
    with Image.open(io.BytesIO(images[0].data)) as received, Image.open(io.BytesIO(scan)) as original:
        assert received.format == "PNG" and received.size == original.size
        assert received.convert("RGB").tobytes() == original.convert("RGB").tobytes()  # the same picture
    assert not any(p.kind == "text" and p.text.startswith("[Image text]") for p in sent_parts(fakes["openai"]))
    assert len(fakes["openai"].chat_requests()) == 1


def test_a_16_bit_grayscale_tiff_reaches_gpt_4o_as_the_same_picture_not_a_blank_one(openai_anthropic,
                                                                                    fakes) -> None:
    """A 16-bit scan (Pillow's mode I;16): a dark square on mid-gray reaches the model as a dark square on a
    lighter gray, stretched to 8 bits; clipped to 8 bits it was all white."""
    daemon = openai_anthropic
    values = np.full((120, 160), 30000, dtype=np.uint16)
    values[40:80, 60:100] = 5000
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="TIFF")
    assert Image.open(io.BytesIO(out.getvalue())).mode == "I;16"
    answer = generate(daemon, text_request("What is in the scan?", media=[image("image/tiff", out.getvalue(),
                                                                               "scan.tif")]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert "converted scan.tif from image/tiff to image/png for the model" in answer.route.notes
    [received, question] = sent_parts(fakes["openai"])  # a single page: no label
    assert (received.kind, question.text) == ("image", "What is in the scan?")
    with Image.open(io.BytesIO(received.data)) as picture:
        assert (picture.format, picture.size, picture.mode) == ("PNG", (160, 120), "L")
        assert (picture.getpixel((80, 60)), picture.getpixel((10, 10))) == (0, 255)  # the square, the page


def test_a_multi_page_tiff_reaches_gpt_4o_as_an_image_per_page_in_order_each_labelled(openai_anthropic,
                                                                                      fakes) -> None:
    """A 3-page fax: GPT-4o used to get page 1 only, and the route said nothing of pages 2 and 3."""
    daemon = openai_anthropic
    fax, pages = tiff_pages(*(f"FAX PAGE {n} AMOUNT {n * 100}" for n in (1, 2, 3)))
    answer = generate(daemon, text_request("Add up the amounts on every page",
                                           media=[image("image/tiff", fax, "fax.tif")]))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "openai", "gpt-4o")
    assert "converted fax.tif from image/tiff to image/png for the model: its 3 pages, an image each" in (
        answer.route.notes)
    parts = sent_parts(fakes["openai"])
    assert [p.mime_type for p in parts if p.kind == "image"] == ["image/png"] * 3
    assert pictures_and_labels(parts) == [
        "[fax.tif, page 1 of 3]", pages[0].tobytes(), "[fax.tif, page 2 of 3]", pages[1].tobytes(),
        "[fax.tif, page 3 of 3]", pages[2].tobytes(), "Add up the amounts on every page"]
    assert [s.purpose for s in answer.route.steps] == ["answer"]  # no OCR


def test_a_tiff_of_more_pages_than_the_cap_sends_the_first_and_says_the_rest_were_left_out(openai_anthropic,
                                                                                           fakes) -> None:
    daemon = openai_anthropic
    cap = router.convert.MAX_PAGES
    batch, pages = tiff_pages(*(f"PAGE {n}" for n in range(1, cap + 3)))
    answer = generate(daemon, text_request("Summarise", media=[image("image/tiff", batch, "batch.tif")]))
    assert answer.route.provider == "openai"
    assert (f"converted batch.tif from image/tiff to image/png for the model: the first {cap} of its {cap + 2} "
            f"pages, an image each; pages {cap + 1} to {cap + 2} were left out (at most {cap} pages and 16 MB of "
            "images are sent)") in answer.route.notes
    got = pictures_and_labels(sent_parts(fakes["openai"]))
    assert got[:2] == [f"[batch.tif, page 1 of {cap + 2}]", pages[0].tobytes()]
    assert got[-4:] == [f"[batch.tif, page {cap} of {cap + 2}]", pages[cap - 1].tobytes(),
                        f"[batch.tif: pages {cap + 1} to {cap + 2} of {cap + 2} were left out: the router sends "
                        "the first pages only]", "Summarise"]
    assert len(got) == 2 * cap + 2


def test_a_multi_page_tiff_beside_a_pdf_reaches_claude_as_an_image_per_page(openai_anthropic, fakes) -> None:
    """The `documents` rule: Claude takes the PDF, and each page of the TIFF as a PNG, after its label."""
    daemon = openai_anthropic
    fax, pages = tiff_pages("FAX PAGE 1", "FAX PAGE 2")
    report = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=pdf(["Q3"]), filename="q3.pdf")
    answer = generate(daemon, text_request("Compare", media=[report, image("image/tiff", fax, "fax.tif")]))
    assert (answer.route.rule, answer.route.provider) == ("documents", "anthropic")
    assert "converted fax.tif from image/tiff to image/png for the model: its 2 pages, an image each" in (
        answer.route.notes)
    [message] = fakes["anthropic"].last_body()["messages"]
    blocks = [(b["type"], b.get("text") or b["source"].get("media_type")) for b in message["content"]]
    assert blocks == [("document", "application/pdf"), ("text", "[fax.tif, page 1 of 2]"), ("image", "image/png"),
                      ("text", "[fax.tif, page 2 of 2]"), ("image", "image/png"), ("text", "Compare")]
    received = [b for b in media_blocks(fakes["anthropic"].last_body()) if b.type == "image"]
    assert [Image.open(io.BytesIO(b.data)).convert("L").tobytes() for b in received] == [p.tobytes() for p in pages]


def test_a_noisy_bmp_too_large_as_a_png_reaches_gpt_4o_as_a_jpeg_within_claudes_size(openai_anthropic,
                                                                                     fakes) -> None:
    """A photo-like BMP (noise) makes a PNG as large as the bitmap (7.7 MB here, over Claude's 5 MB of base64
    an image): it is sent as a JPEG instead."""
    daemon = openai_anthropic
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (1600, 1600, 3), dtype=np.uint8)).save(out, format="BMP")
    answer = generate(daemon, text_request("What is it?", media=[image("image/bmp", out.getvalue(), "noise.bmp")]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert "converted noise.bmp from image/bmp to image/jpeg for the model" in answer.route.notes
    [received] = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
    assert received.mime_type == "image/jpeg" and 4 * ((len(received.data) + 2) // 3) < 5 * 1024 * 1024
    with Image.open(io.BytesIO(received.data)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (1600, 1600))


def test_an_image_that_cannot_be_converted_is_read_by_the_local_ocr_instead(openai_anthropic, fakes) -> None:
    """A "BMP" Pillow cannot read as one (here a PPM, whose magic the router does not check) falls back to
    the planned OCR bridge: only its text reaches gpt-4o, and the route says the picture could not be converted."""
    daemon = openai_anthropic
    out = io.BytesIO()
    Image.open(io.BytesIO(png("INVOICE", size=(160, 48)))).convert("RGB").save(out, format="PPM")
    request = text_request("What does the scan say?", media=[image("image/bmp", out.getvalue(), "scan.bmp")])
    answer = generate(daemon, request)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "openai", "gpt-4o")
    assert list(answer.route.bridges) == ["image (image/bmp)->text via local/extract"]
    parts = sent_parts(fakes["openai"])
    assert [p.kind for p in parts].count("image") == 0
    assert any(p.kind == "text" and p.text.startswith("[Image text] scan.bmp") for p in parts)
    assert any(note.startswith("could not convert scan.bmp from image/bmp") for note in answer.route.notes)


def test_a_png_still_goes_to_gpt_4o_as_an_image(openai_anthropic, fakes) -> None:
    daemon = openai_anthropic
    answer = generate(daemon, text_request("What does the chart show?",
                                           media=[image("image/png", png("chart"), "chart.png")]))
    assert (answer.route.provider, answer.route.model, list(answer.route.bridges)) == ("openai", "gpt-4o", [])
    assert [p.kind for p in sent_parts(fakes["openai"])].count("image") == 1


def test_an_aac_clip_is_transcribed_by_assemblyai_and_explain_says_why_not_whisper(openai_assemblyai,
                                                                                   fakes) -> None:
    daemon = openai_assemblyai
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/aac", data=aac(), filename="voice.aac")
    request = text_request("", media=[clip], options=pb.Options(task=pb.TASK_TRANSCRIBE))
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert (route.rule, route.provider, route.model) == ("transcription", "assemblyai", "best")
    reason = next(t.reason for t in route.trace if t.rule == "transcription")
    assert "openai/whisper-1: does not take audio/aac" in reason
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("assemblyai", "best")
    assert fakes["openai"].uploads() == [] and len(fakes["assemblyai"].created) == 1


def test_list_providers_shows_each_models_formats_and_length_cap(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, "openai"), env=KEYS, plugins=())
    providers = {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers}
    models = {m.name: m for m in providers["openai"].models}
    assert set(models["gpt-4o"].input_mime_types) == {"image/png", "image/jpeg", "image/webp", "image/gif"}
    assert models["gpt-4o-transcribe-diarize"].max_audio_seconds == 1400
    assert "audio/aac" not in models["whisper-1"].input_mime_types
    assert "text/*" in {t for m in providers["anthropic"].models for t in m.input_mime_types}
    assert list(providers["assemblyai"].models[0].input_mime_types) == []  # any format


def test_when_the_bridge_fails_the_next_one_is_one_that_takes_the_format(openai_assemblyai, fakes) -> None:
    daemon = openai_assemblyai
    for _ in range(6):  # AssemblyAI is down (its SDK may retry)
        fakes["assemblyai"].fail_next(503, {"error": "service unavailable"})
    # a clip of its own: the transcript of aac() another test asks for is kept as that clip's bridged text
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/aac", data=aac(1.5), filename="voice.aac")
    answer = generate(daemon, text_request("What is said here?", media=[clip]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["audio->transcript via local/extract"]
    notes = " ".join(answer.route.notes)
    assert "assemblyai/best failed" in notes and "gpt-4o-transcribe-diarize" not in notes  # it takes no AAC
    assert fakes["openai"].uploads() == []


def test_a_heic_photo_goes_to_gemini_which_reads_it_not_through_an_ocr_that_cannot(start_daemon, fakes) -> None:
    """Neither gpt-4o nor Claude takes HEIC (the iPhone's format), and the local OCR cannot read it:
    the rule's fallback Gemini, which takes it, answers; no provider is sent what it would refuse."""
    daemon = start_daemon(config_for(fakes, "openai", "anthropic", "gemini"), env=KEYS, plugins=())
    photo = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)
    request = text_request("What is in the photo?", media=[image("image/heic", photo, "IMG_0001.HEIC")])
    answer = generate(daemon, request)
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("cross-modal", "gemini", "gemini-2.5-pro")
    assert list(answer.route.bridges) == []
    assert fakes["openai"].chat_requests() == [] and fakes["anthropic"].message_calls() == []


@pytest.mark.parametrize("sent", ["inline", "uploaded"])
def test_an_m4a_declared_audio_aac_is_typed_by_its_content_and_transcribed_by_whisper(openai_assemblyai,
                                                                                      fakes, sent) -> None:
    """Browsers and phones declare an m4a ``audio/aac``; its ``ftyp`` box says mp4, which Whisper takes
    (raw AAC it does not: see the test above, where the same rules send an ADTS clip to AssemblyAI)."""
    daemon = openai_assemblyai
    if sent == "inline":
        clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/aac", data=m4a(), filename="voice.aac")
    else:
        stored = upload(daemon, m4a(), "audio/aac", pb.MODALITY_AUDIO, "voice.aac")
        assert stored.mime_type == "audio/mp4"  # what the record holds, and routing reads
        # the part names its upload: a media named by id without a name has none (none is stored)
        clip = pb.Media(modality=pb.MODALITY_AUDIO, media_id=stored.media_id, filename="voice.aac")
    request = text_request("", media=[clip], options=pb.Options(task=pb.TASK_TRANSCRIBE))
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert (route.rule, route.provider, route.model) == ("transcription", "openai", "whisper-1")
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model, list(answer.route.bridges)) == ("openai", "whisper-1", [])
    assert answer.transcript.text == "Hello there. General Kenobi."
    [sent_upload] = fakes["openai"].uploads()
    assert sent_upload.files["file"][0] == "voice.aac.m4a"  # the API finds the format by the extension
    assert fakes["assemblyai"].created == []


def test_an_animated_gif_is_refused_by_gpt_4o_before_sending_and_claude_answers(openai_anthropic,
                                                                                fakes) -> None:
    """OpenAI's chat models take still GIFs only: an animated one goes to the rule's next target, and the
    route says why; a still GIF still goes to gpt-4o."""
    daemon = openai_anthropic
    answer = generate(daemon, text_request("What moves?", media=[image("image/gif", gif(3), "spinner.gif")]))
    assert (answer.route.rule, answer.route.provider) == ("cross-modal", "anthropic")
    [refused] = [a for a in answer.route.attempts if not a.ok]
    assert (refused.provider, refused.model) == ("openai", "gpt-4o")
    assert "the GIF 'spinner.gif' is animated" in refused.error
    assert fakes["openai"].chat_requests() == []  # refused before sending
    assert len(fakes["anthropic"].message_calls()) == 1

    answer = generate(daemon, text_request("What is it?", media=[image("image/gif", gif(1), "still.gif")]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert [p.mime_type for p in sent_parts(fakes["openai"]) if p.kind == "image"] == ["image/gif"]


def test_an_animated_gif_with_a_stray_byte_between_frames_is_refused_by_gpt_4o_too(openai_anthropic,
                                                                                   fakes) -> None:
    """Pillow (and OpenAI) skip a stray byte between a GIF's blocks and read every frame: the router's check
    must not stop there and take it for a still GIF, which OpenAI would refuse for good (400)."""
    daemon = openai_anthropic
    animated = gif(3)
    second = animated.index(b"\x21\xf9\x04", animated.index(b"\x21\xf9\x04") + 1)  # the 2nd frame's control
    padded = animated[:second] + b"\x00" + animated[second:]
    assert Image.open(io.BytesIO(padded)).n_frames == 3
    answer = generate(daemon, text_request("What moves?", media=[image("image/gif", padded, "spinner.gif")]))
    assert answer.route.provider == "anthropic" and fakes["openai"].chat_requests() == []
    assert any("the GIF 'spinner.gif' is animated" in a.error for a in answer.route.attempts if not a.ok)


def test_an_uploaded_animated_gif_is_refused_by_gpt_4o_too(openai_anthropic, fakes) -> None:
    daemon = openai_anthropic
    stored = upload(daemon, gif(2), "image/gif", pb.MODALITY_IMAGE, "wave.gif")
    answer = generate(daemon, text_request("What moves?", media=[
        pb.Media(modality=pb.MODALITY_IMAGE, media_id=stored.media_id)]))
    assert answer.route.provider == "anthropic" and fakes["openai"].chat_requests() == []


def test_a_file_over_the_gemini_files_api_limit_is_refused_before_uploading(start_daemon, fakes) -> None:
    """Gemini's Files API takes files up to 2 GB (``max_file_bytes``, lowered here): its models declare it
    (``max_media_bytes``), so routing passes Gemini by for a larger media, saying why, and the rule's next
    target answers; not a byte is uploaded."""
    config = config_for(fakes, "gemini").replace("timeout: 20}", "timeout: 20, inline_limit_bytes: 0, "
                                                 "max_file_bytes: 1000}")
    daemon = start_daemon(config, env={"GEMINI_API_KEY": GEMINI_KEY}, plugins=())
    report = pdf(["Quarterly report: revenue grew."])
    assert len(report) > 1000
    document = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=report, filename="q3.pdf")
    answer = generate(daemon, text_request("Summarise", media=[document]))
    assert (answer.route.rule, answer.route.provider) == ("documents", "local")
    assert [a.provider for a in answer.route.attempts] == ["local"]
    assert any("gemini/gemini-2.5-pro:" in t.reason and "of document is larger than its" in t.reason
               for t in answer.route.trace), answer.route.trace
    assert fakes["gemini"].calls("upload_start") == [] and fakes["gemini"].calls("stream") == []


def test_an_avif_photo_reaches_gpt_4o_as_a_picture_not_as_its_ocr_text(openai_anthropic, fakes) -> None:
    """QA edu (session 23): GPT-4o takes no AVIF (phones and web pages save photos so), and got the local OCR's
    text of the photo instead of the picture (a geometry figure lost), though Pillow reads AVIF. It is converted
    as a BMP is."""
    daemon = openai_anthropic
    picture = Image.new("RGB", (64, 48), (200, 30, 30))
    out = io.BytesIO()
    picture.save(out, format="AVIF", quality=90)
    answer = generate(daemon, text_request("What is this?", media=[image("image/avif", out.getvalue(), "pic.avif")]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert "converted pic.avif from image/avif to image/png for the model" in answer.route.notes
    [sent] = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
    with Image.open(io.BytesIO(sent.data)) as received:
        assert (sent.mime_type, received.format, received.size) == ("image/png", "PNG", (64, 48))
        red, green, blue = received.convert("RGB").getpixel((32, 24))
        assert red > 150 and green < 80 and blue < 80  # the same picture, within AVIF's loss
    assert not any(p.kind == "text" and p.text.startswith("[Image text]") for p in sent_parts(fakes["openai"]))


def test_an_animated_avif_reaches_gpt_4o_as_one_picture_not_a_page_per_frame(openai_anthropic, fakes) -> None:
    """QA regress23: an animated AVIF's frames were converted as a TIFF's pages, up to 20 images labelled
    "page 1 of 2"; its first frame stands for it, as one picture."""
    daemon = openai_anthropic
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    out = io.BytesIO()
    frames[0].save(out, format="AVIF", save_all=True, append_images=frames[1:], duration=100)
    answer = generate(daemon, text_request("What is this?", media=[image("image/avif", out.getvalue(), "anim.avif")]))
    assert "converted anim.avif from image/avif to image/png for the model" in answer.route.notes
    [sent] = [p for p in sent_parts(fakes["openai"]) if p.kind == "image"]
    assert not any(p.kind == "text" and "page 1 of" in p.text for p in sent_parts(fakes["openai"]))
    with Image.open(io.BytesIO(sent.data)) as received:
        red, green, blue = received.convert("RGB").getpixel((16, 12))
        assert red > 150 and green < 80 and blue < 80  # the first frame
