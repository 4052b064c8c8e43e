#!/usr/bin/env python
"""CPU per new turn of a long session: the history read, its trimming, and the whole ``App.answer``.

    .venv/bin/python bench/history.py            # sessions of 10, 1,000 and 10,000 turns (~20 s)
    .venv/bin/python bench/history.py --turns 10,100000 --repeat 3

A fresh App in a temporary data directory with one in-process provider (a 128k-token model taking text
and images, answering at once); each session is written straight to its store (a turn: a short user
question and a short answer; in the ``img`` variant every 10th question also carries a stored image,
each its own), then new turns are asked on it. CPU is ``time.process_time()`` (every thread of this
process: the store's thread reads the history), the median of ``--repeat`` turns:

- ``history``: ``App._with_history`` (read and parse the rows, load their media);
- ``trim``: ``App._trim`` of that history for the chosen model;
- ``answer``: a whole ``App.answer`` (history, measuring, routing, trimming, the call, saving the turn);
- ``loaded``: the media ``App.answer`` loaded from the media store;
- ``sent``: how many history messages the model got (the rest was trimmed).

Not part of the test suite; nothing in ``tests/`` imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import router
from router import Modality, ModelInfo
from router.config import parse_config
from router.core import App
from router.outcome import Done
from router.types import Media, Message, Part, Request, Role

CONFIG = """
providers:
  b: {}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: main
    use: b/chat
server:
  data_dir: "%s"
"""


class Instant(router.Provider):
    """One 128k-token model of text and images that answers at once; it keeps how many messages it got."""

    def __init__(self) -> None:
        self.name = "b"
        self.models = [ModelInfo("chat", frozenset({Modality.TEXT, Modality.IMAGE}))]
        self.received = 0

    def unconfigured_reason(self) -> str | None:
        return None

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        self.received = len(request.messages)
        yield router.TextDelta("Noted.")
        yield router.UsageReport(router.Usage(input_tokens=10, output_tokens=2))


class InstantPlugin:
    def __init__(self) -> None:
        self.provider = Instant()

    @router.hookimpl
    def register_providers(self, register, settings):  # type: ignore[no-untyped-def]
        register(self.provider)


def png(n: int) -> bytes:
    """A small PNG of its own for each ``n`` (a distinct media id)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (n % 256, (n // 256) % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


def session_turns(turns: int, images: bool) -> list[Message]:
    """``turns`` questions and answers of short text; with ``images``, every 10th question has an image."""
    messages = []
    for i in range(turns):
        parts = [Part(text=f"Question {i}: what about the weather on day {i} of the trip?")]
        if images and i % 10 == 0:
            parts.append(Part(media=Media(Modality.IMAGE, "image/png", data=png(i), filename=f"photo-{i}.png")))
        messages.append(Message(Role.USER, parts))
        messages.append(Message(Role.ASSISTANT, [Part(text=f"Answer {i}: mild, some clouds, little wind.")]))
    return messages


def cpu_ms(started: float) -> float:
    return (time.process_time() - started) * 1000


async def measure(app: App, provider: Instant, session: str, repeat: int) -> dict[str, float]:
    """Median CPU ms of each stage over ``repeat`` new turns of ``session``."""
    history_ms, trim_ms, answer_ms = [], [], []
    loaded: list[str] = []
    load = app.load_media
    sent = 0
    for i in range(repeat + 1):  # the first turn warms caches up (media measured once per process)
        request = Request(messages=[Message(Role.USER, [Part(text=f"And on day {i} after that?")])],
                          session_id=session)
        started = time.process_time()
        full, _ = await app._with_history(request)
        history = cpu_ms(started)
        await app._measure_media(full)
        decision, _ = app._decide(full, observed=False)
        started = time.process_time()
        app._trim(full, decision.plans[0], {})
        trim = cpu_ms(started)
        loaded.clear()
        app.load_media = lambda media_id: (loaded.append(media_id), load(media_id))[1]  # type: ignore[method-assign]
        started = time.process_time()
        async with aclosing(app.answer(request, None)) as events:
            done = [e async for e in events if isinstance(e, Done)]
        answer = cpu_ms(started)
        app.load_media = load  # type: ignore[method-assign]
        assert done and done[0].answer.text == "Noted."
        sent = provider.received - 1
        if i:
            history_ms.append(history)
            trim_ms.append(trim)
            answer_ms.append(answer)
    return {"history": statistics.median(history_ms), "trim": statistics.median(trim_ms),
            "answer": statistics.median(answer_ms), "loaded": len(loaded), "sent": sent}


async def bench(turns: list[int], repeat: int) -> None:
    print(f"{'session':>16} {'history ms':>11} {'trim ms':>8} {'answer ms':>10} {'loaded':>7} {'sent msgs':>10}")
    for images in (False, True):
        for count in turns:
            with tempfile.TemporaryDirectory() as tmp:
                plugin = InstantPlugin()
                app = App(parse_config(CONFIG % tmp, "bench.yaml"), extra_plugins={"b": plugin})
                try:
                    session = f"s{count}"
                    app.sessions.append(session, session_turns(count, images), app._store_media)
                    row = await measure(app, plugin.provider, session, repeat)
                finally:
                    await app.aclose()
            name = f"{count:,} turns" + (" img" if images else "")
            print(f"{name:>16} {row['history']:11.2f} {row['trim']:8.2f} {row['answer']:10.2f} {row['loaded']:7}"
                  f" {row['sent']:10,}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="10,1000,10000", help="session sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="new turns measured per session (median)")
    args = parser.parse_args()
    asyncio.run(bench([int(n) for n in args.turns.split(",")], args.repeat))


if __name__ == "__main__":
    main()
