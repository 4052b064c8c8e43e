"""Decoding any common audio/video container to 16 kHz mono 16-bit PCM with PyAV.

PyAV wraps the ffmpeg libraries it bundles in its wheels, so wav, mp3,
m4a/aac, ogg/opus/vorbis, flac, webm and the audio tracks of mp4/webm/mov
video all decode with no system packages, and its ``AudioResampler``
(libswresample) converts to the 16 kHz mono s16 that pocketsphinx expects.
Decoding is streamed packet by packet, so a long file is never held whole.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

from router.sniff import demux_options

from .ocr import MAX_OCR_PIXELS

#: The format the speech recognizer takes.
SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2
#: The lowest sample rate decoded. Resampling to 16 kHz multiplies the samples by 16,000 / rate: a
#: 200 KB WAV declaring 1 Hz became 28 hours of audio to recognise. Telephone speech is 8 kHz.
MIN_SAMPLE_RATE = 4_000
#: The longest audio transcribed by default (``providers.local.max_audio_seconds``). Speech recognition runs
#: at about real time on a 2-core machine, so an hour is what finishes within a call's default limit
#: (``server.max_call_seconds``, an hour). A 1 MB FLAC of constant subframes can stand for days of audio.
MAX_AUDIO_SECONDS = 3600.0


class DecodeError(ValueError):
    """The media could not be decoded (not audio, corrupt, or unsupported)."""


class NoAudioTrack(DecodeError):
    """The file holds no audio track (a video without sound): there is no speech to transcribe."""

    def __init__(self) -> None:
        super().__init__("it has no audio track: there is no speech to transcribe")


class AudioTooLong(ValueError):
    """The audio lasts longer than the local provider transcribes (``providers.local.max_audio_seconds``)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{why}: send a shorter clip, or raise providers.local.max_audio_seconds")


def describe_seconds(seconds: float) -> str:
    """``seconds`` for a message: ``259,200 seconds (72:00:00)``."""
    whole = int(seconds)
    clock = f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{seconds:,.1f}".removesuffix(".0") + f" seconds ({clock})"


def open_source(source: Path | bytes) -> object:
    """What ``av.open`` takes for a stored file or for inline bytes."""
    return str(source) if isinstance(source, Path) else io.BytesIO(source)


def check_frame_size(width: int, height: int) -> None:
    """Raise :class:`DecodeError` if video frames of ``width`` x ``height`` are too large to decode for OCR."""
    if width * height > MAX_OCR_PIXELS:
        raise DecodeError(f"the video is {width}x{height} pixels, over the {MAX_OCR_PIXELS:,} the local OCR "
                          "reads: send a smaller video")


#: The longest YUV4MPEG2 header line read (ffmpeg reads at most 256 bytes).
_Y4M_HEADER_BYTES = 256


def y4m_frame_size(source: Path | bytes) -> tuple[int, int] | None:
    """The frame size a raw YUV4MPEG2 video's header declares (``YUV4MPEG2 W640 H480 ...``), or None for
    another file. ffmpeg refuses to open one whose frames it cannot allocate without saying why ("[Errno 16]
    Device or resource busy" for 20000x20000)."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            head = f.read(_Y4M_HEADER_BYTES)
    else:
        head = source[:_Y4M_HEADER_BYTES]
    if not head.startswith(b"YUV4MPEG2 "):
        return None
    fields = head.split(b"\n", 1)[0].split(b" ")[1:]
    size = {f[:1]: f[1:] for f in fields if f[:1] in (b"W", b"H")}
    try:
        return int(size[b"W"]), int(size[b"H"])
    except (KeyError, ValueError):
        return None


def open_container(source: Path | bytes):  # -> av.container.InputContainer
    """``source`` opened with PyAV. Raises :class:`DecodeError` when it is not a decodable container, or is
    a raw video whose header declares frames over :data:`MAX_OCR_PIXELS` (said before ffmpeg tries)."""
    import av

    size = y4m_frame_size(source)
    if size is not None:
        check_frame_size(*size)
    try:
        return av.open(open_source(source), options=demux_options(source))  # nothing but ``source`` itself
    except (av.error.FFmpegError, OSError) as e:
        raise DecodeError(f"not a decodable audio/video file ({e})") from e


def check_decoder(stream, kind: str) -> None:  # stream: an av stream
    """Raise :class:`DecodeError` if ffmpeg has no decoder for ``stream`` (PyAV then gives it no codec
    context: a WAV declaring 0 bits per sample)."""
    if stream.codec_context is None:
        raise DecodeError(f"not a decodable audio/video file (no decoder for its {kind} stream)")


def check_sample_rate(rate: int) -> None:
    """Raise :class:`DecodeError` if audio at ``rate`` Hz is too slow to be speech (see :data:`MIN_SAMPLE_RATE`)."""
    if rate < MIN_SAMPLE_RATE:
        raise DecodeError(f"the audio is sampled at {rate} Hz, under the {MIN_SAMPLE_RATE:,} Hz the local "
                          "speech recognizer reads")


#: How far into a WAV file its ``data`` chunk is looked for (the chunks before it are small: fmt, LIST).
_WAV_HEAD_BYTES = 64 * 1024
#: The ``data`` chunk sizes that writers which did not know the length put as placeholders: 0, and sizes of
#: 2 GB or more (ffmpeg writing to a pipe puts 0xFFFFFFFF, espeak-ng 0x7FFFF000).
_LARGEST_KNOWN_WAV_SIZE = 0x7FFEFFFF


def check_wav_complete(source: Path | bytes) -> None:
    """Raise :class:`DecodeError` when ``source`` is a WAV file whose ``data`` chunk announces more bytes
    of sound than the file holds: a file cut short (its header written first, as recorders do), which
    ffmpeg reads as far as it goes (its length taken from the file's size), so the transcript would be
    silently partial, or empty for a header alone. A placeholder size (0, 2 GB or more) is not checked."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            head = f.read(_WAV_HEAD_BYTES)
        total = source.stat().st_size
    else:
        head, total = source[:_WAV_HEAD_BYTES], len(source)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    at = 12
    while at + 8 <= len(head):  # bounded: each pass moves past one chunk
        name, size = head[at:at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if name == b"data":
            present = total - (at + 8)
            if 0 < size <= _LARGEST_KNOWN_WAV_SIZE and present < size:
                raise DecodeError(f"the WAV file is cut short: its header announces {size:,} bytes of sound, "
                                  f"{max(present, 0):,} are there")
            return
        at += 8 + size + (size & 1)  # chunks are padded to an even size


def declared_seconds(container, stream) -> float | None:  # container: av InputContainer, stream: its audio
    """How long the audio ``stream`` says it lasts (its header, or ffmpeg's estimate from the bit rate), or
    None if unknown. A container without video stands for its audio when the stream says nothing (WebM)."""
    import av

    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and not container.streams.video:
        return container.duration / av.time_base
    return None


def check_declared_duration(seconds: float | None, max_seconds: float) -> None:
    """Raise :class:`AudioTooLong` if the header says the audio lasts over ``max_seconds``."""
    if seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"the audio is {describe_seconds(seconds)} long, over the "
                           f"{describe_seconds(max_seconds)} the local provider transcribes")


def check_decoded_duration(seconds: float, max_seconds: float) -> None:
    """Raise :class:`AudioTooLong` once the audio decoded so far lasts over ``max_seconds`` (a header may
    say nothing, or lie: decoding stops there)."""
    if seconds > max_seconds:
        raise AudioTooLong(f"the audio goes on past {describe_seconds(max_seconds)}, the most the local "
                           "provider transcribes (decoding stopped there)")


def has_audio_track(source: Path | bytes) -> bool:
    """Whether ``source`` is a container holding an audio track (only its header is read). False for one that
    cannot be opened: transcribing it fails at once, when it is opened again."""
    try:
        container = open_container(source)
    except DecodeError:
        return False
    with container:
        return bool(container.streams.audio)


def iter_pcm16k(source: Path | bytes, max_seconds: float = MAX_AUDIO_SECONDS) -> Iterator[bytes]:
    """Yield the first audio track of ``source`` as 16 kHz mono s16le PCM chunks.

    Raises :class:`NoAudioTrack` when the container has no audio track (a silent video). The sample rate and channels
    may change mid-stream (MP3s joined end to end): the resampler is set up again where they do.
    Raises :class:`DecodeError` when the data is not a decodable container, a WAV file cut short (see
    :func:`check_wav_complete`), or its sample rate is under :data:`MIN_SAMPLE_RATE`; :class:`AudioTooLong` when it lasts over ``max_seconds``: from its
    header before decoding, else when decoding gets there (a frame at a time, so memory stays bounded).
    """
    import av

    check_wav_complete(source)
    container = open_container(source)
    with container:
        if not container.streams.audio:
            raise NoAudioTrack()
        stream = container.streams.audio[0]
        check_decoder(stream, "audio")
        if stream.sample_rate:  # known from the header: a rate too slow is the reason to give, not the length
            check_sample_rate(stream.sample_rate)
        check_declared_duration(declared_seconds(container, stream), max_seconds)
        resampler, setup = None, None
        decoded = 0.0  # seconds
        try:
            for frame in _decoded(container, stream):
                check_sample_rate(frame.sample_rate)  # per frame: the rate may change mid-stream
                decoded += frame.samples / frame.sample_rate
                check_decoded_duration(decoded, max_seconds)
                frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                if frame_setup != setup:  # the first frame, or the rate or channels changed (joined MP3s)
                    if resampler is not None:  # a resampler takes one input format: flush it, make another
                        for out in resampler.resample(None):
                            yield out.to_ndarray().tobytes()
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                    setup = frame_setup
                for out in resampler.resample(frame):
                    yield out.to_ndarray().tobytes()
        except av.error.FFmpegError as e:
            raise DecodeError(f"audio decoding failed ({e})") from e
        if resampler is not None:
            for out in resampler.resample(None):
                yield out.to_ndarray().tobytes()


#: How a tag inside an MPEG audio stream starts: MP3s joined end to end (``cat a.mp3 b.mp3``) carry the
#: next one's ID3v2 tag (and the last one's ID3v1 ``TAG``) between their frames, which the demuxer passes
#: to the decoder as a packet.
_TAG_STARTS = (b"ID3", b"TAG")


def _decoded(container, stream) -> Iterator:  # -> av.AudioFrame
    """The frames of ``stream``, packet by packet. A packet the decoder rejects as invalid is skipped if
    it is a tag (as players skip it); any other decoding error is raised."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            if packet.size and memoryview(packet)[:3].tobytes() in _TAG_STARTS:
                continue
            raise
        yield from frames


class PcmReader:
    """A file-like ``read(n)`` over a stream of PCM chunks (what the VAD segmenter reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self.total_bytes = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.total_bytes += len(out)
        return out

    @property
    def seconds(self) -> float:
        """Seconds of audio read so far."""
        return self.total_bytes / BYTES_PER_SECOND
