#!/usr/bin/env python
"""CPU of the router's token estimate per request, and its figures per script.

    .venv/bin/python bench/token_estimate.py              # ~10 s
    .venv/bin/python bench/token_estimate.py --number 20000

For each prompt (about 2 KB of UTF-8: English, Japanese, Russian, Hindi, Thai, Korean, French) and a
64 KiB Japanese ``text/plain`` document, it prints the estimate
(:func:`router.routing.estimate_tokens` of one user message) and its CPU per call (the best of 5
``timeit`` runs, in microseconds). The estimate runs once per request for the rules and the context
check (``facts_of``), and once per message when a session's history is trimmed. Reference figures for
the prompts (real tokenizers, roughly): English ~4 characters a token; Japanese, Chinese and Korean
0.7 (o200k) to 1.3 (cl100k, Claude) tokens a character; Cyrillic, Arabic, Devanagari, Thai 1 (cl100k) to
3 (o200k) characters a token.

Not part of the test suite; nothing in ``tests/`` imports it.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.routing import estimate_tokens
from router.types import Media, Message, Modality, Part, Role

#: One sentence per script, repeated to about 2 KB of UTF-8.
SENTENCES = {
    "english": "The quarterly report shows that revenue grew by twelve percent, driven by new customers. ",
    "japanese": "四半期報告書によると、新規顧客の増加により売上は十二パーセント伸びました。",
    "russian": "Квартальный отчёт показывает, что выручка выросла на двенадцать процентов. ",
    "hindi": "तिमाही रिपोर्ट से पता चलता है कि नए ग्राहकों के कारण राजस्व में बारह प्रतिशत की वृद्धि हुई। ",
    "thai": "รายงานรายไตรมาสแสดงให้เห็นว่ารายได้เติบโตขึ้นร้อยละสิบสองจากลูกค้าใหม่ ",
    "korean": "분기 보고서에 따르면 신규 고객 덕분에 매출이 12퍼센트 증가했습니다. ",
    "french": "Le rapport trimestriel montre que le chiffre d'affaires a progressé de douze pour cent. ",
}


def about(sentence: str, size: int) -> str:
    """``sentence`` repeated to about ``size`` bytes of UTF-8."""
    return sentence * max(1, size // len(sentence.encode()))


def measure(messages: list[Message], number: int) -> float:
    """The best CPU per call of the estimate of ``messages`` over 5 runs, in microseconds."""
    runs = timeit.repeat(lambda: estimate_tokens(messages), number=number, repeat=5, timer=__import__("time").process_time)
    return min(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=10_000, help="calls per timing run")
    args = parser.parse_args()
    print(f"{'input':<26} {'bytes':>7} {'chars':>6} {'tokens':>7} {'chars/token':>11} {'us/call':>8}")
    for name, sentence in SENTENCES.items():
        text = about(sentence, 2048)
        messages = [Message(Role.USER, [Part(text=text)])]
        tokens = estimate_tokens(messages)
        print(f"{name + ' prompt':<26} {len(text.encode()):>7} {len(text):>6} {tokens:>7} "
              f"{len(text) / max(tokens, 1):>11.2f} {measure(messages, args.number):>8.2f}")
    text = about(SENTENCES["japanese"], 65536)
    document = Media(Modality.DOCUMENT, "text/plain", data=text.encode())
    messages = [Message(Role.USER, [Part(media=document)])]
    tokens = estimate_tokens(messages)
    print(f"{'japanese text/plain 64K':<26} {len(document.data or b''):>7} {len(text):>6} {tokens:>7} "
          f"{len(text) / max(tokens, 1):>11.2f} {measure(messages, max(1, args.number // 20)):>8.2f}")


if __name__ == "__main__":
    main()
