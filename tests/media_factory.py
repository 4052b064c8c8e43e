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
    return wav_of(frames, rate)


def wav_of(frames: bytes, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV of the samples ``frames``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()


def repeated_wav(data: bytes, times: int, pause: float = 0.5) -> bytes:
    """The WAV ``data`` played ``times`` times, with ``pause`` seconds of silence after each."""
    with wave.open(io.BytesIO(data)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    silence = b"\x00" * (params.sampwidth * params.nchannels * int(params.framerate * pause))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes((frames + silence) * times)
    return out.getvalue()


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


def mp4(frames: int = 10, size: int = 32, tone: bool = False) -> bytes:
    """A short H.264 (or MPEG-4) MP4 made with PyAV: silent (no audio track), or with ``tone`` an AAC track
    of a second of a quiet 440 Hz tone."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono") if tone else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * 20, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio is not None:
            wave = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 3000).astype(np.int16).reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
            sound.sample_rate = 16000
            out.mux(audio.encode(sound))
            out.mux(audio.encode())
    return buf.getvalue()


def paged_pdf(pages: int, text: str) -> bytes:
    """A PDF of ``pages`` pages, cheaply: one page of ``text``, then blank ones (pypdf)."""
    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf([text]))))
    for _ in range(pages - 1):
        writer.add_blank_page(200, 200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


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


def mp3_tone(rate: int, seconds: float = 1.0, layout: str = "mono") -> bytes:
    """An MP3 of a 440 Hz tone sampled at ``rate`` Hz. Two joined are one legal MPEG audio stream whose
    sample rate (or channels) changes where the second begins."""
    import av
    import numpy as np

    channels = 2 if layout == "stereo" else 1
    pcm = (np.sin(2 * math.pi * 440 * np.arange(int(rate * seconds)) / rate) * 8000).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = layout
        for start in range(0, len(pcm), 1152):
            block = np.repeat(pcm[start:start + 1152], channels)[None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="s16", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def pdf_with_deep_page_tree(depth: int = 150) -> bytes:
    """A one-page PDF whose page sits under ``depth`` nested page-tree nodes (pypdf stops at 100)."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    for i in range(depth):
        objects[2 + i] = f"<< /Type /Pages /Kids [{3 + i} 0 R] /Count 1 >>".encode()
    objects[2 + depth] = b"<< /Type /Page /MediaBox [0 0 100 100] >>"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = {}
    for number, body in objects.items():
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref, size = out.tell(), max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{offsets[i]:010d} 00000 n \n".encode() for i in range(1, size)))
    out.write(f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def gray16_png(image, ink: int = 5000, paper: int = 30000) -> bytes:
    """``image`` (dark text on a light page) as a 16-bit grayscale PNG whose values all lie in
    ``ink``..``paper`` of 0..65535, as a scanner writes them."""
    import numpy as np
    from PIL import Image

    levels = np.where(np.asarray(image.convert("L")) < 128, ink, paper).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, format="PNG")
    return buf.getvalue()


def blank_png(width: int, height: int, mode: str = "L") -> bytes:
    """A valid all-black PNG of ``width`` x ``height`` (8-bit gray or RGBA): huge images stay small files.
    Made row by row, never whole in memory."""
    import zlib

    channels = {"L": 1, "RGBA": 4}[mode]
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + channels * width)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, {"L": 0, "RGBA": 6}[mode], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def ico_holding(png_data: bytes, declared: int = 16) -> bytes:
    """An ICO whose one directory entry says ``declared`` x ``declared`` but holds ``png_data``."""
    entry = struct.pack("<BBBBHHII", declared % 256, declared % 256, 0, 0, 1, 32, len(png_data), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png_data


def icns_holding(png_data: bytes) -> bytes:
    """A Mac ICNS whose 512x512@2x entry (``ic10``) holds ``png_data``, whatever its size."""
    block = b"ic10" + struct.pack(">I", 8 + len(png_data)) + png_data
    return b"icns" + struct.pack(">I", 8 + len(block)) + block


def mjpeg_mkv(sizes: list[tuple[int, int]], fps: int = 25) -> bytes:
    """A Matroska MJPEG video of plain frames of the given sizes, one after another: its header (and
    first frame) say the first size, later frames may be larger."""
    import fractions

    import av
    from PIL import Image

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj444p"
        for index, size in enumerate(sizes):
            jpeg = io.BytesIO()
            Image.new("RGB", size, (200, 100, 50)).save(jpeg, format="JPEG", quality=50, subsampling=0)
            packet = av.Packet(jpeg.getvalue())
            packet.stream = stream
            packet.pts = packet.dts = index * 1000 // fps
            packet.time_base = fractions.Fraction(1, 1000)
            out.mux(packet)
    return buf.getvalue()


def video_stream(image, seconds: float, fps: int = 25, container: str = "h264",
                 start_seconds: float = 0.0) -> bytes:
    """``image`` (a Pillow RGB image of even size) shown for ``seconds`` as H.264, in ``container``:
    "h264" is a raw elementary stream (no timestamps at all), "mpegts" a transport stream whose frames
    start at ``start_seconds`` (a segment cut from a live stream)."""
    import fractions

    import av
    import numpy as np

    buf = io.BytesIO()
    pixels = np.asarray(image.convert("RGB"))
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = image.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.codec_context.time_base = fractions.Fraction(1, fps)
        first = round(start_seconds * fps)
        for index in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = first + index, fractions.Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def multipage_tiff(images: list) -> bytes:
    """The Pillow ``images`` as the pages of one TIFF (as fax machines and scanners write them)."""
    buf = io.BytesIO()
    images[0].save(buf, format="TIFF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def _crc(data: bytes, width: int, poly: int) -> int:
    """FLAC's CRC-8 (``width`` 8, ``poly`` 0x07) or CRC-16 (16, 0x8005) of ``data``."""
    crc, top, mask = 0, 1 << (width - 1), (1 << width) - 1
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


def _flac_frame_number(number: int) -> bytes:
    """A frame number as FLAC codes it (UTF-8 style, up to 36 bits)."""
    if number < 0x80:
        return bytes([number])
    length = next(n for n in range(2, 8) if number < 1 << (5 * n + 1))
    tail = [0x80 | (number >> (6 * i) & 0x3F) for i in range(length - 1)][::-1]
    return bytes([(0xFF << (8 - length) & 0xFF) | number >> (6 * (length - 1)), *tail])


def constant_flac(seconds: float, rate: int = 16000, declared: bool = True) -> bytes:
    """A mono 16-bit FLAC of ``seconds`` of silence, each frame of 65,535 samples one CONSTANT subframe
    (16 bytes: 235 KB hold 3 days at 4 kHz). Its STREAMINFO gives the length if ``declared``, else 0
    (unknown, as FLAC allows)."""
    total, block = int(seconds * rate), 65535
    info = struct.pack(">HH", block, block) + bytes(6)  # block sizes; frame sizes unknown
    info += (rate << 44 | 15 << 36 | (total if declared else 0)).to_bytes(8, "big") + bytes(16)  # no MD5
    out = bytearray(b"fLaC\x80" + len(info).to_bytes(3, "big") + info)  # the last (only) metadata block
    for number in range(-(-total // block)):
        samples = min(block, total - number * block)
        # sync, fixed blocks; block size in 16 bits at the end, rate from STREAMINFO; mono, 16 bits
        header = b"\xff\xf8\x70\x08" + _flac_frame_number(number) + struct.pack(">H", samples - 1)
        frame = header + bytes([_crc(header, 8, 0x07)]) + b"\x00" + struct.pack(">h", 0)  # CONSTANT 0
        out += frame + struct.pack(">H", _crc(frame, 16, 0x8005))
    return bytes(out)
