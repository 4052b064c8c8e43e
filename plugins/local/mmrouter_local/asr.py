"""Offline speech to text with pocketsphinx and the en-US model shipped in its wheel.

The audio is split into utterances by pocketsphinx's voice activity
detector, and each utterance is decoded on its own: memory stays bounded
on long recordings and every utterance and word gets its time (the decoder
counts 100 frames per second).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

from router import Transcript, Utterance, Word

from .audio import SAMPLE_RATE, PcmReader

#: pocketsphinx decodes 100 feature frames per second of audio.
FRAME_RATE = 100
#: Silence added around each VAD segment: the decoder does better with some context.
_PAD = b"\x00\x00" * (SAMPLE_RATE // 4)
#: Fillers and markers in the decoder's output that are not words.
_NOT_WORDS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALTERNATE = re.compile(r"\(\d+\)$")


class SpeechRecognizer:
    """One pocketsphinx decoder, loaded on first use and shared (calls are serialised)."""

    def __init__(self) -> None:
        self._decoder = None
        self._lock = threading.Lock()

    def _load(self):  # -> pocketsphinx.Decoder
        from pocketsphinx import Decoder

        # The default en-US acoustic model, dictionary and language model ship
        # in the wheel; loglevel keeps the decoder quiet on stderr.
        return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, pcm: Iterator[bytes]) -> Transcript:
        """Transcribe 16 kHz mono s16le PCM chunks into utterances and timed words."""
        from pocketsphinx import Segmenter

        reader = PcmReader(pcm)
        utterances: list[Utterance] = []
        words: list[Word] = []
        with self._lock:
            if self._decoder is None:
                self._decoder = self._load()
            decoder = self._decoder
            segmenter = Segmenter(sample_rate=SAMPLE_RATE)
            for segment in segmenter.segment(reader):
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

    @staticmethod
    def _decode(decoder, pcm: bytes, offset: float) -> list[Word]:
        """Decode one utterance; word times are shifted by ``offset`` seconds."""
        pad_seconds = len(_PAD) / 2 / SAMPLE_RATE
        decoder.start_utt()
        decoder.process_raw(_PAD + pcm + _PAD, full_utt=True)
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
