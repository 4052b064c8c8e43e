"""How fast the local provider extracts on this machine.

Prints seconds of work per minute of audio (decode + speech to text), per
PDF page (text layer), and per image (OCR). Run from the repository root::

    .venv/bin/python bench/bench_local.py

Speech is synthesised by espeak-ng (required), the PDF by reportlab.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmrouter_local.extract import Extractor

from router import Media, Modality
from tests.fakes import local as media

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please call me tomorrow morning at nine",
    "the weather today is sunny and warm",
    "one two three four five six seven eight nine ten",
]


def main() -> None:
    if media.ESPEAK is None:
        sys.exit("espeak-ng is needed to synthesise speech: apt-get install espeak-ng")
    ex = Extractor()
    text = ". ".join(SENTENCES * 6)  # about a minute of speech
    audio = media.transcode(media.speech_wav(text), "mp3", "libmp3lame")
    ex.transcribe(Media(Modality.AUDIO, "audio/wav", data=media.speech_wav("warm up")))  # load the model

    started = time.perf_counter()
    transcript = ex.transcribe(Media(Modality.AUDIO, "audio/mpeg", data=audio))
    asr = time.perf_counter() - started
    minutes = transcript.duration_seconds / 60

    pages = 50
    pdf = media.pdf([[f"Page {n} of the benchmark document."] + [" ".join(SENTENCES)] * 30
                     for n in range(1, pages + 1)])
    started = time.perf_counter()
    sections = ex.document(Media(Modality.DOCUMENT, "application/pdf", data=pdf), "bench.pdf")
    pdf_seconds = time.perf_counter() - started
    assert len(sections) == pages

    image = media.encode_image(media.text_image(
        [((40, 40 + 50 * i), f"Line {i} of a scanned page") for i in range(10)], size=(1200, 600)))
    ex.image(Media(Modality.IMAGE, "image/png", data=image), "warmup.png")  # load the model
    runs = 3
    started = time.perf_counter()
    for _ in range(runs):
        ex.image(Media(Modality.IMAGE, "image/png", data=image), "bench.png")
    ocr = (time.perf_counter() - started) / runs

    print(f"speech to text: {asr / minutes:6.2f} s per audio minute "
          f"({transcript.duration_seconds:.0f} s of mp3 in {asr:.1f} s)")
    print(f"PDF text:       {pdf_seconds / pages:6.3f} s per page ({pages} pages in {pdf_seconds:.2f} s)")
    print(f"image OCR:      {ocr:6.2f} s per 1200x600 image with 10 lines")


if __name__ == "__main__":
    main()
