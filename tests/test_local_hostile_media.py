"""The ``local`` provider given hostile or odd media: each is read, or refused clearly (INVALID_ARGUMENT), never
failed as a plugin bug (INTERNAL ``PROVIDER_FAILED``)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from mmrouter_local import LocalProvider

from router import Media, Message, Modality, Options, Part, Request, Role, Task, TextDelta, TranscriptReady
from router.errors import ProviderBadRequest
from router.testing import collect
from tests.fakes import local as media


@pytest.fixture(scope="module")
def local() -> LocalProvider:
    """One provider for the module, so the OCR and speech models load once."""
    return LocalProvider(workers=2, frame_interval=1.0)


def ask(*items: Media, task: Task = Task.AUTO) -> Request:
    return Request([Message(Role.USER, [Part(text="read it"), *(Part(media=m) for m in items)])], Options(task=task))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def strip_png(width: int, height: int, text: str = "RECEIPT 123", at: int = 8) -> bytes:
    """A white gray ``width`` x ``height`` PNG with ``text`` drawn at ``at`` px along it (a receipt strip)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height), 255)
    if text and min(width, height) >= 12:
        ImageDraw.Draw(image).text((at, 2), text, fill=0, font=media.font(min(width, height) - 10))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_item(data: bytes, name: str) -> Media:
    return Media(Modality.IMAGE, "image/png", data=data, filename=name)


# 1. Long thin images: RapidOCR failed to resize them (ResizeImgError, INTERNAL) or shrank their text unread.

async def test_a_long_thin_receipt_strip_is_read(local: LocalProvider) -> None:
    text = text_of(await collect(local, ask(png_item(strip_png(8000, 40), "strip.png")), local.models[0]))
    assert "[Image strip.png: PNG 8000x40]\nRECEIPT 123" in text


@pytest.mark.parametrize("size", [(4000, 20), (20, 3000), (5000, 5), (100000, 1)])
async def test_long_thin_images_of_any_shape_are_not_a_plugin_failure(local: LocalProvider,
                                                                      size: tuple[int, int]) -> None:
    width, height = size
    text = text_of(await collect(local, ask(png_item(strip_png(width, height), "thin.png")), local.models[0]))
    assert f"[Image thin.png: PNG {width}x{height}]" in text


async def test_one_thin_image_among_good_ones_does_not_fail_the_request(local: LocalProvider) -> None:
    good = media.encode_image(media.text_image([((40, 80), "WELCOME")]))
    text = text_of(await collect(local, ask(png_item(good, "good.png"), png_item(strip_png(100000, 1), "line.png"),
                                            png_item(strip_png(4000, 20), "banner.png")), local.models[0]))
    assert "[Image good.png: PNG 640x240]\nWELCOME" in text
    assert "[Image line.png: PNG 100000x1]\n(no text found)" in text
    assert "[Image banner.png: PNG 4000x20]" in text


def test_text_across_a_tile_edge_is_read_once() -> None:
    """Tiles overlap, and a box in the overlap belongs to one tile: text on the cut is read whole, once."""
    from mmrouter_local.ocr import TextReader, to_bgr
    from PIL import Image

    reader = TextReader()
    bgr = to_bgr(Image.open(io.BytesIO(strip_png(6000, 44, at=820))))  # across the first tile's end (960)
    lines = reader.read_lines(bgr)
    assert len(lines) == 1 and lines[0].replace(" ", "") == "RECEIPT123", lines


def test_a_strip_is_read_in_a_bounded_number_of_tiles(monkeypatch) -> None:
    """A 40 Mpx image may be 1 px high and 40 million long: it is scaled to fit MAX_TILES tiles, and tiles of
    one colour are not read at all."""
    import mmrouter_local.ocr as ocr
    import numpy as np

    monkeypatch.setattr(ocr, "MAX_TILES", 3)
    reader = ocr.TextReader()
    reader.read_boxes(np.full((1, 100_000, 3), 255, np.uint8))
    assert reader.images_read == 0
    noise = np.random.default_rng(3).integers(0, 256, (8, 200_000, 3), dtype=np.uint8)
    reader.read_boxes(noise)
    assert 1 <= reader.images_read <= 3


# 2. Audio whose stream ffmpeg has no decoder for (PyAV gives it no codec context).

async def test_a_wav_declaring_zero_bits_per_sample_is_invalid_argument(local: LocalProvider) -> None:
    from media_factory import wav

    data = bytearray(wav(1.0))
    struct.pack_into("<H", data, 34, 0)  # bits per sample
    item = Media(Modality.AUDIO, "audio/wav", data=bytes(data), filename="zero.wav")
    for task in (Task.TRANSCRIBE, Task.AUTO):
        with pytest.raises(ProviderBadRequest, match=r"cannot read zero\.wav: not a decodable audio/video file"):
            await collect(local, ask(item, task=task), local.models[0])


# 3. Images over Pillow's own decompression-bomb limit (~179 Mpx) get the size and the plugin's limit.

def jpeg_declaring(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    from tests.test_local_provider import png_declaring

    return png_declaring(width, height)


@pytest.mark.parametrize(("make", "mime", "width", "height"), [
    (png_declaring, "image/png", 50000, 50000),
    (jpeg_declaring, "image/jpeg", 65500, 65500),
    (gif_declaring, "image/gif", 65535, 65535),
])
async def test_an_image_over_pillows_bomb_limit_is_refused_with_its_size(local: LocalProvider, make, mime: str,
                                                                         width: int, height: int) -> None:
    item = Media(Modality.IMAGE, mime, data=make(width, height), filename="bomb.img")
    with pytest.raises(ProviderBadRequest, match=rf"cannot read bomb\.img: the image is {width}x{height} pixels, "
                                                 r"over the 40,000,000 the local OCR reads: send a smaller image"):
        await collect(local, ask(item), local.models[0])


def test_an_image_in_a_pdf_over_pillows_bomb_limit_is_named_with_its_size(local: LocalProvider) -> None:
    lines = local.extractor.ocr_image_bytes(png_declaring(50000, 50000))
    assert lines == ["(the image is 50000x50000 pixels, over the 40,000,000 the local OCR reads: not read)"]


# 4. A raw video whose header declares frames ffmpeg will not allocate.

@pytest.mark.parametrize("task", [Task.AUTO, Task.TRANSCRIBE])
async def test_a_y4m_declaring_huge_frames_is_refused_naming_their_size(local: LocalProvider, task: Task) -> None:
    from media_factory import y4m_declaring

    item = Media(Modality.VIDEO, "video/x-yuv4mpeg", data=y4m_declaring(100000, 100000), filename="huge.y4m")
    with pytest.raises(ProviderBadRequest, match=r"cannot read huge\.y4m: the video is 100000x100000 pixels, "
                                                 r"over the 40,000,000 the local OCR reads"):
        await collect(local, ask(item, task=task), local.models[0])


# 5. A video without an audio track.

async def test_a_video_without_an_audio_track_says_so(local: LocalProvider) -> None:
    from media_factory import mp4

    item = Media(Modality.VIDEO, "video/mp4", data=mp4(), filename="mute.mp4")
    events = await collect(local, ask(item), local.models[0])
    text = text_of(events)
    assert "[Video mute.mp4: no audio track]\n(the video has no audio track" in text
    assert "audio transcript" not in text
    assert not [e for e in events if isinstance(e, TranscriptReady)]
    with pytest.raises(ProviderBadRequest, match=r"cannot transcribe mute\.mp4: it has no audio track"):
        await collect(local, ask(item, task=Task.TRANSCRIBE), local.models[0])


_DECODER_ELSEWHERE = """
import sys
from pathlib import Path

import pocketsphinx

class Refused:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a pocketsphinx Decoder was made in the daemon's own process")

pocketsphinx.Decoder = Refused  # what runs in this process cannot decode
from mmrouter_local.asr import SpeechRecognizer
from mmrouter_local.audio import iter_pcm16k

recognizer = SpeechRecognizer()
text = recognizer.transcribe(iter_pcm16k(Path(sys.argv[1]))).text
import os
print(text, recognizer.decoder_pid, os.getpid())
"""


@pytest.mark.skipif(media.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_speech_is_decoded_in_a_process_of_its_own(tmp_path) -> None:
    """pocketsphinx holds the GIL while it decodes (1 to 3 s for a long or noisy utterance): decoded on a
    worker thread, it stalled every other call of the daemon. The decoder now runs in a child process:
    a process whose own pocketsphinx cannot make a Decoder still transcribes."""
    import subprocess
    import sys

    wav = tmp_path / "speech.wav"
    wav.write_bytes(media.speech_wav("the meeting is moved to the third floor"))
    done = subprocess.run([sys.executable, "-c", _DECODER_ELSEWHERE, str(wav)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    *words, decoder_pid, own_pid = done.stdout.split()
    assert "meeting" in words and "moved" in words, done.stdout
    assert decoder_pid != own_pid


def test_a_speech_decoder_process_that_died_is_started_again(local) -> None:
    """A decoder process killed (out of memory, by an operator) fails the call it was in; the next starts
    a new one."""
    import os
    import signal

    from mmrouter_local.asr import SpeechRecognizer
    from mmrouter_local.decoder_process import DecoderGone

    recognizer = SpeechRecognizer()
    silence = b"\x00\x00" * 16000
    recognizer.transcribe(iter([silence]))
    first = recognizer.decoder_pid
    assert first is not None and first != os.getpid()
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    with pytest.raises(DecoderGone):  # the dead process is seen at once: its pipe is closed
        recognizer._decoder.start_utt()
    tone = (b"\x00\x40\x00\xc0" * 8000) * 4
    recognizer.transcribe(iter([tone]))
    assert recognizer.decoder_pid not in (None, first)


def test_the_speech_decoder_process_imports_nothing_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """It was started as ``python -m``, which puts the working directory first on sys.path: a pickle.py
    where the daemon was started ran in it (and an old source tree's router/ broke every transcription)."""
    from mmrouter_local.asr import SpeechRecognizer

    marker = tmp_path / "ran"
    (tmp_path / "pickle.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise ImportError('planted')\n")
    monkeypatch.chdir(tmp_path)
    recognizer = SpeechRecognizer()
    try:
        recognizer.transcribe(iter([b"\x00\x00" * 16000]))
        assert recognizer.decoder_pid is not None
    finally:
        recognizer.close()
    assert not marker.exists()


_WITHOUT_OPENCV = """
import asyncio, sys
class NoLibGL:  # as in a slim image without libGL.so.1: importing OpenCV fails as the loader says
    def find_spec(self, name, path=None, target=None):
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory", name="cv2")

sys.meta_path.insert(0, NoLibGL())
from mmrouter_local import LocalProvider
from router import Media, Message, Modality, Part, Request, Role
from router.errors import ProviderUnavailable
from router.testing import collect
from tests.fakes import local as media

async def main():
    local = LocalProvider(workers=1)
    request = Request(messages=[Message(Role.USER, [Part(media=Media(Modality.IMAGE, "image/png", data=media.encode_image(media.text_image([((20, 20), "HELLO")]))))])])
    try:
        await collect(local, request, local.models[0])
    except ProviderUnavailable as exc:
        print(exc.retryable, exc.message)
    await local.aclose()

asyncio.run(main())
"""


def test_an_ocr_that_cannot_load_opencv_is_unavailable_saying_what_to_install() -> None:
    """In a slim container, opencv-python (RapidOCR's) cannot load libGL.so.1: every image, video and scanned
    PDF failed as INTERNAL ImportError, with no word of the system libraries it needs."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WITHOUT_OPENCV], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True local: the local OCR cannot be loaded"), done.stdout
    assert "apt-get install libgl1 libglib2.0-0" in done.stdout


async def test_closing_the_provider_ends_its_speech_decoder_process() -> None:
    """A reload makes a new provider and closes the old one: its decoder's process must end with it, not
    stay until the daemon stops (one more per reload)."""
    import os

    provider = LocalProvider(workers=1)
    provider.extractor.asr.transcribe(iter([b"\x00\x00" * 16000]))
    pid = provider.extractor.asr.decoder_pid
    assert pid is not None
    await provider.aclose()
    assert provider.extractor.asr.decoder_pid is None
    with pytest.raises(ChildProcessError):  # ended and reaped
        os.waitpid(pid, os.WNOHANG)


def test_inline_media_naming_other_inputs_is_not_followed_by_the_decoder() -> None:
    """local opened inline bytes with ffmpeg probing them as anything: an SDP sent as audio made it bind the
    UDP ports it names and wait 10 s. It is now not decodable, and nothing is opened."""
    from mmrouter_local.audio import DecodeError, open_container
    from test_robustness import SDP, SDP_PORT, watching_udp_port

    with watching_udp_port(SDP_PORT) as bound, pytest.raises(DecodeError):
        open_container(SDP)
    assert bound and not any(bound)
