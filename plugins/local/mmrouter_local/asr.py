"""Offline speech to text with pocketsphinx and the en-US model shipped in its wheel.

The audio is split into utterances by pocketsphinx's voice activity
detector, and each utterance is decoded on its own: every utterance and word
gets its time (the decoder counts 100 frames per second). Speech without
pauses (or music) is cut every :data:`MAX_SEGMENT_BYTES`, so memory stays
bounded however long it runs. A job whose call was cancelled stops between
audio chunks and utterances (see :func:`mmrouter_local.pool.raise_if_cancelled`),
freeing the decoder for the next call.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from typing import NamedTuple

from router import Transcript, Utterance, Word
from router.errors import ProviderUnsupportedInput
from router.routing import primary_language

from .audio import BYTES_PER_SECOND, SAMPLE_RATE, PcmReader
from .decoder_process import DecoderProcess
from .pool import raise_if_cancelled

#: pocketsphinx decodes 100 feature frames per second of audio.
FRAME_RATE = 100
#: Silence added around each VAD segment: the decoder does better with some context.
_PAD = b"\x00\x00" * (SAMPLE_RATE // 4)
#: A segment up to this long is decoded in one call (batch normalisation, the most accurate).
FULL_UTT_BYTES = 2 * SAMPLE_RATE * 5
#: A longer one (speech without pauses) is fed in pieces this long, so a cancelled job stops between them.
CHUNK_BYTES = 2 * SAMPLE_RATE // 4
#: The most continuous speech held before it is decoded: pocketsphinx's ``Segmenter`` buffers a whole VAD
#: segment, which for speech or music without pauses grew 32 KB a second (115 MB an hour). A longer segment
#: is cut into pieces at most this long (a word at a cut may be misheard).
MAX_SEGMENT_BYTES = BYTES_PER_SECOND * 30
#: Fillers and markers in the decoder's output that are not words.
_NOT_WORDS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALTERNATE = re.compile(r"\(\d+\)$")


#: The language the decoder's model transcribes, as a primary BCP-47 subtag (ISO 639-1 or 639-2).
LANGUAGES = ("en", "eng")


def check_language(language: str, provider: str = "local") -> None:
    """Raise :class:`router.errors.ProviderUnsupportedInput` (a fallback may take the request) when
    ``language`` (``Options.language``) is set and is not English: the shipped model is en-US, and speech
    in another language came back as confident English words. Any ``en``, ``eng`` or ``en-XX`` tag is
    English."""
    primary = primary_language(language)  # as routing compares it with the model's ``languages``
    if primary and primary not in LANGUAGES:
        raise ProviderUnsupportedInput(
            provider, f"the local provider transcribes English only (its speech model is en-US), and the request "
                     f"asks for language {language.strip()!r}, which is not supported offline: send the request to "
                     "a provider that transcribes that language (leaving options.language empty, or \"en\", is "
                     "right only for English speech: other speech comes back as English words it does not say)")


def _until_cancelled(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, checking before each one that the job was not cancelled."""
    for chunk in chunks:
        raise_if_cancelled()
        yield chunk


class Segment(NamedTuple):
    start: float
    end: float
    pcm: bytes


def speech_segments(reader: PcmReader, max_bytes: int = 0) -> Iterator[Segment]:
    """The speech in ``reader``, split at pauses by the VAD and into pieces of at most ``max_bytes``
    (default :data:`MAX_SEGMENT_BYTES`) within speech without a pause.

    pocketsphinx's ``Segmenter.segment`` with the cut added, and without its loss of speech that runs
    to the end of a stream whose length is a whole number of VAD frames (it never ends that segment).
    """
    from pocketsphinx import Endpointer

    max_bytes = max_bytes or MAX_SEGMENT_BYTES
    endpointer = Endpointer(sample_rate=SAMPLE_RATE)
    buffered = bytearray()
    start: float | None = None  # of the buffered speech; None outside speech
    while True:
        frame = reader.read(endpointer.frame_bytes)
        if len(frame) == endpointer.frame_bytes:
            speech = endpointer.process(frame)
        elif endpointer.in_speech:  # the end of the stream; end_stream takes 1 to frame_bytes bytes
            speech = endpointer.end_stream(frame or b"\x00\x00")
        else:
            break
        if speech is not None:
            if start is None:
                start = endpointer.speech_start
            elif len(buffered) + len(speech) > max_bytes:
                end = start + len(buffered) / BYTES_PER_SECOND
                yield Segment(start, end, bytes(buffered))
                buffered.clear()
                start = end
            buffered += speech
            if not endpointer.in_speech:
                yield Segment(start, endpointer.speech_end, bytes(buffered))
                buffered.clear()
                start = None
        if len(frame) < endpointer.frame_bytes:
            break


class SpeechRecognizer:
    """One pocketsphinx decoder, loaded on first use and shared (calls are serialised)."""

    def __init__(self) -> None:
        self._decoder: DecoderProcess | None = None
        self._lock = threading.Lock()
        #: Pieces of audio fed to the decoder so far, over all calls: one per short utterance, one per
        #: :data:`CHUNK_BYTES` of a long one. Shows how far a job got (a cancelled one stops early).
        self.pieces_decoded = 0
        #: The longest speech segment held before decoding, in bytes, over all calls (at most
        #: :data:`MAX_SEGMENT_BYTES`).
        self.largest_segment_bytes = 0

    def _load(self) -> DecoderProcess:
        # The default en-US acoustic model, dictionary and language model ship in the wheel. The decoder
        # runs in a process of its own: pocketsphinx holds the GIL for seconds while it decodes.
        return DecoderProcess(SAMPLE_RATE)

    def _ready_decoder(self) -> DecoderProcess:
        """The decoder for a new call: loaded on first use (or again, when its process ended), else with
        its feature state reset. Every utterance updates the acoustic normalisation (the cepstral mean a
        long utterance is decoded with) and the noise statistics: without the reset a transcript depended
        on what earlier calls decoded (the same audio gave three different texts)."""
        if self._decoder is None or not self._decoder.alive():
            self._decoder = self._load()
        else:
            self._decoder.reinit_feat()
        return self._decoder

    def close(self) -> None:
        """End the decoder's process (a call still decoding fails; the next one starts a new process).
        Blocks up to about 2 s: run it off the event loop."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()

    @property
    def decoder_pid(self) -> int | None:
        """The process id of the decoder's process, None before the first call."""
        return self._decoder.pid if self._decoder is not None else None

    def transcribe(self, pcm: Iterator[bytes]) -> Transcript:
        """Transcribe 16 kHz mono s16le PCM chunks into utterances and timed words.

        Raises :class:`mmrouter_local.pool.JobCancelled` between chunks and utterances once the call
        waiting for it was cancelled, :class:`mmrouter_local.decoder_process.DecoderGone` (retryable) when
        the decoder's process ended. The first chunk is read before the decoder is taken, so the errors of
        opening the audio (no audio track, not decodable, too long) do not wait for another call's decoding.
        """
        raise_if_cancelled()
        chunks = iter(pcm)
        # Opened before the decoder is taken: a file without sound or not decodable fails without waiting for it.
        first = next(chunks, b"")
        reader = PcmReader(_until_cancelled(itertools.chain([first], chunks)))
        utterances: list[Utterance] = []
        words: list[Word] = []
        with self._lock:
            decoder = self._ready_decoder()
            for segment in speech_segments(reader):
                raise_if_cancelled()
                self.largest_segment_bytes = max(self.largest_segment_bytes, len(segment.pcm))
                seg_words = self._decode(decoder, segment.pcm, segment.start)
                if seg_words:
                    utterances.append(Utterance(
                        text=" ".join(w.text for w in seg_words),
                        start=round(segment.start, 2),
                        end=round(segment.end, 2),
                        confidence=round(sum(w.confidence for w in seg_words) / len(seg_words), 3),
                    ))
                    words.extend(seg_words)
        return Transcript(
            text=" ".join(u.text for u in utterances),
            utterances=utterances,
            words=words,
            language="en-US",
            duration_seconds=round(reader.seconds, 2),
        )

    def _decode(self, decoder: DecoderProcess, pcm: bytes, offset: float) -> list[Word]:
        """Decode one utterance; word times are shifted by ``offset`` seconds.

        Raises :class:`mmrouter_local.pool.JobCancelled` between the pieces of a long utterance once
        the call waiting for it was cancelled (the utterance is ended first, so the decoder stays usable).
        """
        pad_seconds = len(_PAD) / 2 / SAMPLE_RATE
        data = _PAD + pcm + _PAD
        decoder.start_utt()
        try:
            if len(data) <= FULL_UTT_BYTES:
                decoder.process_raw(data, full_utt=True)
                self.pieces_decoded += 1
            else:
                for start in range(0, len(data), CHUNK_BYTES):
                    raise_if_cancelled()
                    decoder.process_raw(data[start:start + CHUNK_BYTES])
                    self.pieces_decoded += 1
        finally:
            decoder.end_utt()
        found: list[Word] = []
        for seg in decoder.seg():
            if _NOT_WORDS.match(seg.word):
                continue
            start = offset + seg.start_frame / FRAME_RATE - pad_seconds
            end = offset + (seg.end_frame + 1) / FRAME_RATE - pad_seconds
            found.append(Word(
                text=_ALTERNATE.sub("", seg.word),
                start=round(max(offset, start), 2),
                end=round(max(offset, end), 2),
                confidence=round(min(1.0, max(0.0, float(seg.prob))), 3),
            ))
        return found
