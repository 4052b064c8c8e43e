"""Small real media made on the fly for tests: WAV, PNG, PDF, MP4."""

from __future__ import annotations

import io
import math
import struct
import wave


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
