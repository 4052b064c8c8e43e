"""Text on video frames: frames sampled every few seconds, read by OCR, with their times."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import DecodeError, open_source
from .pool import raise_if_cancelled


@dataclass
class FrameText:
    """Text seen on screen from ``start`` to ``end`` seconds (equal for a single sample)."""

    start: float
    end: float
    lines: list[str]


def iter_sampled_frames(source: Path | bytes, interval: float) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(seconds, BGR frame)`` for the first frame at or after each multiple of ``interval``."""
    import av

    try:
        container = av.open(open_source(source))
    except (av.error.FFmpegError, OSError) as e:
        raise DecodeError(f"not a decodable video file ({e})") from e
    with container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                if frame.time is None or frame.time + 1e-6 < next_time:
                    continue
                yield float(frame.time), frame.to_ndarray(format="bgr24")
                while next_time <= frame.time + 1e-6:
                    next_time += interval
        except av.error.FFmpegError as e:
            raise DecodeError(f"video decoding failed ({e})") from e


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
