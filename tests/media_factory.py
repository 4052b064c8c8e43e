"""Small real media made on the fly for tests: WAV, PNG, PDF, MP4."""

from __future__ import annotations

import io
import math
import struct
import wave
from collections.abc import Iterator


def wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV with a quiet 440 Hz tone."""
    frames = b"".join(struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(seconds * rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()


def png(text: str = "", size: tuple[int, int] = (64, 32)) -> bytes:
    """A PNG, with ``text`` drawn on it when given."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    if text:
        ImageDraw.Draw(image).text((4, 4), text, fill="black")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def pdf(pages: list[str]) -> bytes:
    """A PDF with one line of text per page."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    doc = canvas.Canvas(buf)
    for text in pages:
        doc.drawString(72, 720, text)
        doc.showPage()
    doc.save()
    return buf.getvalue()


def mp4(frames: int = 10, size: int = 32) -> bytes:
    """A short silent H.264 (or MPEG-4) MP4 made with PyAV."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * 20, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def y4m_declaring(width: int, height: int) -> bytes:
    """A tiny raw video (YUV4MPEG2) whose header declares ``width`` x ``height`` frames."""
    return f"YUV4MPEG2 W{width} H{height} F1:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x80" * 1024


def wav_declaring_rate(rate: int, size: int = 200_000, seed: int = 7) -> bytes:
    """A mono 16-bit WAV of ``size`` bytes of noise whose header declares ``rate`` samples a second."""
    import random

    data = random.Random(seed).randbytes(size)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", size) + data


def with_random_body(data: bytes, keep: int, size: int = 200_000, seed: int = 7) -> bytes:
    """The first ``keep`` bytes of ``data`` (a real header), then ``size`` random bytes."""
    import random

    return data[:keep] + random.Random(seed).randbytes(size)


def faststart(mp4_data: bytes) -> bytes:
    """``mp4_data`` remuxed with its index (moov) first, as streaming sites serve MP4s."""
    import tempfile
    from pathlib import Path

    import av

    with tempfile.TemporaryDirectory() as tmp:  # faststart rewrites the file: it needs a real one
        path = Path(tmp) / "faststart.mp4"
        with av.open(io.BytesIO(mp4_data)) as src, \
                av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
            streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.dts is not None:  # the demuxer's final empty packets
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
        return path.read_bytes()


def mkv_frames_at(times_ms: list[int], text: str, size: tuple[int, int] = (320, 120)) -> bytes:
    """An H.264 Matroska video with one frame showing ``text`` at each of ``times_ms`` milliseconds
    (times may be far apart: a stream that claims a huge duration)."""
    import fractions

    import av
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, size[1] // 3), text, fill="black", font=ImageFont.load_default(28))
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=1000)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for ms in times_ms:
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts, frame.time_base = ms, fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def looped_pcm(pcm: bytes, seconds: float, chunk: int = 8192) -> Iterator[bytes]:
    """16 kHz mono s16le ``pcm`` played over and over with no gap for ``seconds`` (the last loop cut
    short), in chunks of ``chunk`` bytes: long continuous audio that is never held whole."""
    left = int(seconds * 16000) * 2
    while left > 0:
        for start in range(0, len(pcm), chunk):
            piece = pcm[start:start + min(chunk, left)]
            left -= len(piece)
            yield piece
            if not left:
                return
