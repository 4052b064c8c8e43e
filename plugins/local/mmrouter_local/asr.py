"""Offline speech to text with pocketsphinx and the en-US model shipped in its wheel.

The audio is split into utterances by pocketsphinx's voice activity
detector, and each utterance is decoded on its own: memory stays bounded
on long recordings and every utterance and word gets its time (the decoder
counts 100 frames per second). A job whose call was cancelled stops between
audio chunks and utterances (see :func:`mmrouter_local.pool.raise_if_cancelled`),
freeing the decoder for the next call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

from router import Transcript, Utterance, Word

from .audio import SAMPLE_RATE, PcmReader
from .pool import raise_if_cancelled

#: pocketsphinx decodes 100 feature frames per second of audio.
FRAME_RATE = 100
#: Silence added around each VAD segment: the decoder does better with some context.
_PAD = b"\x00\x00" * (SAMPLE_RATE // 4)
#: A segment up to this long is decoded in one call (batch normalisation, the most accurate).
FULL_UTT_BYTES = 2 * SAMPLE_RATE * 5
#: A longer one (speech without pauses) is fed in pieces this long: the decoder holds the GIL during a
#: call, so the event loop runs between pieces, and a cancelled job stops between them.
CHUNK_BYTES = 2 * SAMPLE_RATE // 4
#: Fillers and markers in the decoder's output that are not words.
_NOT_WORDS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALTERNATE = re.compile(r"\(\d+\)$")


def _until_cancelled(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, checking before each one that the job was not cancelled."""
    for chunk in chunks:
        raise_if_cancelled()
        yield chunk


class SpeechRecognizer:
    """One pocketsphinx decoder, loaded on first use and shared (calls are serialised)."""

    def __init__(self) -> None:
        self._decoder = None
        self._lock = threading.Lock()
        #: Pieces of audio fed to the decoder so far, over all calls: one per short utterance, one per
        #: :data:`CHUNK_BYTES` of a long one. Shows how far a job got (a cancelled one stops early).
        self.pieces_decoded = 0

    def _load(self):  # -> pocketsphinx.Decoder
        from pocketsphinx import Decoder

        # The default en-US acoustic model, dictionary and language model ship
        # in the wheel; loglevel keeps the decoder quiet on stderr.
        return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, pcm: Iterator[bytes]) -> Transcript:
        """Transcribe 16 kHz mono s16le PCM chunks into utterances and timed words.

        Raises :class:`mmrouter_local.pool.JobCancelled` between chunks and utterances once the call
        waiting for it was cancelled.
        """
        from pocketsphinx import Segmenter

        reader = PcmReader(_until_cancelled(pcm))
        utterances: list[Utterance] = []
        words: list[Word] = []
        with self._lock:
            if self._decoder is None:
                self._decoder = self._load()
            decoder = self._decoder
            segmenter = Segmenter(sample_rate=SAMPLE_RATE)
            for segment in segmenter.segment(reader):
                raise_if_cancelled()
                seg_words = self._decode(decoder, segment.pcm, segment.start_time)
                if seg_words:
                    utterances.append(Utterance(
                        text=" ".join(w.text for w in seg_words),
                        start=round(segment.start_time, 2),
                        end=round(segment.end_time, 2),
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

    def _decode(self, decoder, pcm: bytes, offset: float) -> list[Word]:
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
