"""Text on video frames: frames sampled every few seconds, read by OCR, with their times."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import DecodeError, check_decoder, check_frame_size, open_container
from .ocr import MAX_OCR_PIXELS
from .pool import raise_if_cancelled

#: Sampled frames are scaled down so their longer side is at most this (aspect ratio kept): OCR reads
#: text on a 1920 px frame as well as on a 4K one, and an 8K frame would take 100 MB as BGR.
MAX_FRAME_SIDE = 1920


@dataclass
class FrameText:
    """Text seen on screen from ``start`` to ``end`` seconds (equal for a single sample)."""

    start: float
    end: float
    lines: list[str]


def scaled_size(width: int, height: int, longest: int = MAX_FRAME_SIDE) -> tuple[int, int]:
    """``width`` x ``height`` shrunk (never enlarged) so the longer side is at most ``longest``."""
    scale = min(1.0, longest / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def next_sample_time(seconds: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``seconds``.

    Computed, not stepped to: a frame may claim a time of years (a hostile timestamp), and stepping
    there ``interval`` by ``interval`` would never end."""
    return (math.floor((seconds + 1e-6) / interval) + 1) * interval


def to_bgr(frame) -> np.ndarray:  # frame: av.VideoFrame
    """A decoded frame as a BGR array, scaled down to :data:`MAX_FRAME_SIDE`."""
    check_frame_size(frame.width, frame.height)  # a stream may change size after its header
    width, height = scaled_size(frame.width, frame.height)
    return frame.to_ndarray(width=width, height=height, format="bgr24", interpolation="AREA")


#: The frame rate assumed for a stream whose frames carry no timestamps and that declares no rate.
DEFAULT_FPS = 25


def iter_sampled_frames(source: Path | bytes, interval: float) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(seconds, BGR frame)`` for the first frame at or after each multiple of ``interval``.

    Seconds count from the start of the clip (a segment cut from a live stream starts at its own 0, as
    its audio transcript does). A frame without a timestamp (a raw H.264 or HEVC stream has none) is
    timed by its count at the stream's frame rate. Frames are at most :data:`MAX_FRAME_SIDE` pixels on
    their longer side. Raises :class:`DecodeError` for data that is not a decodable video, and for frames
    over :data:`MAX_OCR_PIXELS`: from the header before decoding, and for frames that grow later
    (the decoder refuses to allocate them), sampled or skipped. Checks for cancellation on every frame.
    """
    import av

    container = open_container(source)
    with container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        check_decoder(stream, "video")
        check_frame_size(stream.codec_context.width, stream.codec_context.height)
        # The decoder itself refuses a frame over the limit before allocating it: a stream may start small
        # and grow (an MJPEG of 64x64 then 15000x15000 frames decoded 1.4 GB).
        stream.codec_context.options = {"max_pixels": str(MAX_OCR_PIXELS)}
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        origin = _clip_start(container, stream)
        next_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                raise_if_cancelled()  # skipped frames are decoded too: a long stream takes a while
                check_frame_size(frame.width, frame.height)  # in case a decoder ignores max_pixels
                stamp = _timestamp(frame, stream)
                if stamp is None:
                    seconds = index / rate
                else:
                    if origin is None:
                        origin = stamp
                    seconds = max(0.0, stamp - origin)
                if seconds + 1e-6 < next_time:
                    continue
                yield seconds, to_bgr(frame)
                next_time = next_sample_time(seconds, interval)
        except av.error.ArgumentError as e:  # EINVAL: max_pixels (or a frame size the decoder refuses)
            raise DecodeError(f"video decoding failed ({e}): a frame may be over the {MAX_OCR_PIXELS:,} pixels "
                              "the local OCR reads") from e
        except av.error.FFmpegError as e:
            raise DecodeError(f"video decoding failed ({e})") from e


def _clip_start(container, stream) -> float | None:  # container: av.container.InputContainer
    """Seconds where the clip starts (the container's, else the stream's start time), or None if unknown
    (the first frame's time is used)."""
    import av

    if container.start_time is not None:
        return container.start_time / av.time_base
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return None


def _timestamp(frame, stream) -> float | None:  # frame: av.VideoFrame
    """The frame's time in seconds from its timestamp, or None if it has none."""
    if frame.time is not None:
        return float(frame.time)
    if frame.pts is not None and stream.time_base:
        return float(frame.pts * stream.time_base)
    return None


def read_frames(
    source: Path | bytes, interval: float, read_lines: Callable[[np.ndarray], list[str]]
) -> list[FrameText]:
    """OCR the sampled frames; consecutive samples with the same text merge into one span."""
    spans: list[FrameText] = []
    for seconds, frame in iter_sampled_frames(source, interval):
        raise_if_cancelled()  # each frame is an OCR: stop here once nobody waits for it
        lines = read_lines(frame)
        if not lines:
            continue
        if spans and spans[-1].lines == lines and seconds - spans[-1].end <= interval * 1.5:
            spans[-1].end = round(seconds, 2)
        else:
            spans.append(FrameText(round(seconds, 2), round(seconds, 2), lines))
    return spans
