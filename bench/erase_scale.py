#!/usr/bin/env python
"""Finding which sessions refer to a media, as the sessions database grows: ``DeleteMedia``, a reset erasing
its session's media, and prune's ``media_in_use``.

    .venv/bin/python bench/erase_scale.py                      # 10k, 100k and 300k turns (1-3 minutes)
    .venv/bin/python bench/erase_scale.py --turns 10000 --repeat 5

Each database is made in a temporary directory by :class:`router.sessions.SessionStore` itself (its schema, its
migrations), then filled in large batches with the store's own statement and turn format (``_part_record``):
sessions of 20 turns, a user question (120 characters) and an answer (600); 60% of the questions carry 1 to 3
stored media (64-hex ids, a fifth of them shared with another session, so ~30% of the turns hold media), and 5%
of the media have a kept bridged text (2 kB) linked to their session, as bridges leave them. One more session per
repetition holds 50 media (its own) for the resets. Then, each the median of ``--repeat`` (wall and CPU time of this
process, which runs SQLite; all but ``media_in_use`` hold the database's write lock, then empty the journal):

- ``delete_media 1`` / ``delete_media 100``: :meth:`SessionStore.delete_media` of 1 id no session refers to, and
  of 100 ids (50 that sessions refer to, kept, and 50 not), as ``App.adelete_media`` calls it, with an
  ``erase_each`` that deletes nothing;
- ``reset erase 50``: :meth:`SessionStore.reset` of a session holding 50 media with an ``erase`` (as
  ``App.areset_session(erase_media=True)``), each repetition on a session of its own;
- ``media_in_use``: what prune keeps (it holds no lock);
- ``open``: a :class:`SessionStore` opened on the database (once, not a median): the first open of a database
  made without the index of media (``turn_media``, dropped beforehand when there) builds it.

Not part of the test suite; nothing in ``tests/`` imports it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.sessions import SessionStore, _part_record
from router.types import Media, Modality, Part

TURNS_PER_SESSION = 20
#: Turns inserted per transaction while building.
BATCH = 20_000
INSERT = "INSERT INTO turns (session_id, position, role, parts, at) VALUES (?, ?, ?, ?, ?)"


def fake_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def parts_json(rng: random.Random, text_chars: int, media_ids: list[str]) -> str:
    """A turn's parts as the store writes them (``_part_record``): a text, then its media."""
    image = Media(Modality.IMAGE, "image/png", data=b"", filename="photo.png")
    parts = [Part(text="x" * text_chars)] + [Part(media=image)] * len(media_ids)
    ids = iter(media_ids)
    return json.dumps([_part_record(p, lambda media: next(ids)) for p in parts])


def build(path: Path, turns: int, resets: int, rng: random.Random) -> dict[str, list]:
    """A sessions database of about ``turns`` turns at ``path``, and ``resets`` sessions of 50 media each to
    reset; returns the media ids referred to, 100 not referred to, and the sessions to reset."""
    store = SessionStore(path)
    db = store._db
    now = time.time()
    used: list[str] = []
    rows: list[tuple] = []
    bridged: list[tuple] = []
    links: list[tuple] = []

    def flush() -> None:
        with store._writing():
            db.executemany(INSERT, rows)
            db.executemany("INSERT OR REPLACE INTO bridged (key, text, transcript, at) VALUES (?, ?, NULL, ?)", bridged)
            db.executemany("INSERT OR IGNORE INTO bridged_for (session_id, media) VALUES (?, ?)", links)
        rows.clear(), bridged.clear(), links.clear()

    for s in range(turns // TURNS_PER_SESSION):
        session = f"session-{s}"
        for position in range(0, TURNS_PER_SESSION, 2):
            media: list[str] = []
            if rng.random() < 0.6:
                for _ in range(rng.randint(1, 3)):
                    media.append(rng.choice(used) if used and rng.random() < 0.2 else fake_id(rng))
                    if rng.random() < 0.05:
                        bridged.append((f"{media[-1]}|audio|whisper-1|diarization=False|", "t" * 2048, now))
                        links.append((session, media[-1]))
                used.extend(media)
            rows.append((session, position, "user", parts_json(rng, 120, media), now))
            rows.append((session, position + 1, "assistant", parts_json(rng, 600, []), now))
        if len(rows) >= BATCH:
            flush()
    for r in range(resets):
        rows.extend((f"reset-{r}", i, "user", parts_json(rng, 120, [fake_id(rng)]), now) for i in range(50))
    flush()
    store.close()
    return {"used": sorted(set(used)), "unused": [fake_id(rng) for _ in range(100)],
            "resets": [f"reset-{r}" for r in range(resets)]}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def drop_media_index(path: Path) -> None:
    """Drop the index of media (its table and triggers), if the store made one: the next open builds it."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'table')"
                                 " AND name LIKE 'turn_media%' ORDER BY type = 'table'").fetchall():
        db.execute(f"DROP {kind} {name}")
    db.close()


def measure(turns: int, repeat: int, seed: int) -> list[tuple[str, list[tuple[float, float]]]]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessions.sqlite"
        started = time.perf_counter()
        made = build(path, turns, repeat, rng)
        print(f"  {turns} turns built in {time.perf_counter() - started:.1f} s "
              f"({path.stat().st_size >> 20} MiB, {len(made['used'])} media referred to)", file=sys.stderr, flush=True)
        drop_media_index(path)
        opened: list[SessionStore] = []
        results = [("open", [timed(lambda: opened.append(SessionStore(path)))])]
        store = opened[0]
        erase_each: Callable[[list[str]], set[str]] = lambda ids: set()  # noqa: E731
        samples: dict[str, list[tuple[float, float]]] = {"delete_media 1": [], "delete_media 100": [],
                                                         "reset erase 50": [], "media_in_use": []}
        for r in range(repeat):
            kept = rng.sample(made["used"], 50)
            samples["delete_media 1"].append(timed(partial(store.delete_media, made["unused"][:1], erase_each)))
            samples["delete_media 100"].append(timed(partial(store.delete_media, kept + made["unused"][:50],
                                                             erase_each)))
            samples["reset erase 50"].append(timed(partial(store.reset, made["resets"][r], len)))
            samples["media_in_use"].append(timed(store.media_in_use))
        store.close()
        return results + list(samples.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", default="10000,100000,300000", help="database sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=27)
    args = parser.parse_args()
    sizes = [int(n) for n in args.turns.split(",")]
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for turns in sizes:
        for name, runs in measure(turns, args.repeat, args.seed):
            table.setdefault(name, {})[turns] = (statistics.median(w for w, _ in runs),
                                                 statistics.median(c for _, c in runs))
    print(f"{'ms, wall / CPU':<18}" + "".join(f"{f'{n:,} turns':>22}" for n in sizes))
    for name, by_size in table.items():
        print(f"{name:<18}" + "".join(f"{f'{by_size[n][0] * 1000:.1f} / {by_size[n][1] * 1000:.1f}':>22}"
                                      for n in sizes))


if __name__ == "__main__":
    main()
