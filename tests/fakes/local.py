"""Real media for the local provider's tests and bench, made on the fly.

The local provider has no HTTP upstream to fake: its "upstream" is the media
itself. These helpers make small real inputs: speech synthesised by
espeak-ng, transcoded by PyAV, images with rendered text, reportlab PDFs and
short videos with on-screen text and a speech track.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

ESPEAK = shutil.which("espeak-ng")
#: The espeak-ng voice pocketsphinx recognises best among those measured (see tests).
VOICE = ("-v", "en-us+f2", "-s", "160", "-p", "35")
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def speech_wav(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as a WAV (22.05 kHz mono)."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    return subprocess.run([ESPEAK, "--stdout", *VOICE, text], capture_output=True, check=True).stdout


def transcode(data: bytes, container: str, codec: str, rate: int = 44100) -> bytes:
    """Re-encode the audio of ``data`` into ``container`` with ``codec`` (e.g. "mp3", "libmp3lame")."""
    import av

    out_buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out_buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        fmt = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
        frame_size = stream.codec_context.frame_size or 1024
        fifo = av.AudioFifo()
        for frame in [*src.decode(audio=0), None]:
            for converted in resampler.resample(frame):
                fifo.write(converted)
            while fifo.samples >= frame_size or (frame is None and fifo.samples):
                chunk = fifo.read(frame_size) if fifo.samples >= frame_size else fifo.read()
                for packet in stream.encode(chunk):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return out_buf.getvalue()


def font(size: int, bold: bool = False):
    """DejaVu Sans if installed, else Pillow's built-in scalable font."""
    from PIL import ImageFont

    path = FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def text_image(lines: list[tuple[tuple[int, int], str]], size: tuple[int, int] = (640, 240),
               font_size: int = 36):
    """A white Pillow RGB image with each ``((x, y), text)`` drawn in black."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for (x, y), text in lines:
        draw.text((x, y), text, fill="black", font=font(font_size))
    return image


def encode_image(image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def pdf(pages: list[list[str]]) -> bytes:
    """A PDF with the given lines on each page (reportlab)."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    doc = canvas.Canvas(buf)
    for lines in pages:
        y = 720
        for line in lines:
            doc.drawString(72, y, line)
            y -= 18
        doc.showPage()
    doc.save()
    return buf.getvalue()


def video(scenes: list[tuple[float, str]], speech: bytes | None, fps: int = 5,
          size: tuple[int, int] = (640, 360), container: str = "mp4") -> bytes:
    """A video of ``(seconds, on-screen text)`` scenes in turn, with ``speech`` (WAV) as its sound.

    mp4 is H.264 + AAC; webm is VP8 + Opus.
    """
    import av
    import numpy as np
    from PIL import Image, ImageDraw

    vcodec, acodec, arate = ("libx264", "aac", 44100) if container == "mp4" else ("libvpx", "libopus", 48000)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        vstream = out.add_stream(vcodec, rate=fps)
        vstream.width, vstream.height = size
        vstream.pix_fmt = "yuv420p"
        astream = None
        if speech is not None:
            astream = out.add_stream(acodec, rate=arate)
            astream.layout = "mono"
        index = 0
        for seconds, text in scenes:
            image = Image.new("RGB", size, (250, 250, 250))
            ImageDraw.Draw(image).text((40, size[1] // 2 - 30), text, fill="black", font=font(48, bold=True))
            pixels = np.asarray(image)
            for _ in range(round(seconds * fps)):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                index += 1
                for packet in vstream.encode(frame):
                    out.mux(packet)
        for packet in vstream.encode(None):
            out.mux(packet)
        if astream is not None:
            _encode_audio(speech, astream, out, arate)
    return buf.getvalue()


def _encode_audio(data: bytes, stream, out, rate: int) -> None:
    import av

    fmt = stream.codec_context.codec.audio_formats[0].name
    resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
    frame_size = stream.codec_context.frame_size or 960
    fifo = av.AudioFifo()
    with av.open(io.BytesIO(data)) as src:
        for frame in [*src.decode(audio=0), None]:
            for converted in resampler.resample(frame):
                fifo.write(converted)
            while fifo.samples >= frame_size or (frame is None and fifo.samples):
                chunk = fifo.read(frame_size) if fifo.samples >= frame_size else fifo.read()
                for packet in stream.encode(chunk):
                    out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance divided by the reference's word count."""
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row = row, [i] + [0] * len(hyp)
        for j in range(1, len(hyp) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)] / max(1, len(ref))
