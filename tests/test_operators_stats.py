"""`mmrouter stats` attributes calls and cost to the request's tags (``--tag`` of ask, RoutingHints.tags,
one per team or app): ``--by tag`` groups by them, ``--tag NAME`` keeps one tag's calls, and the default
output is as before. A database made before tags were kept is migrated in place: its rows have none.

The real CLI and the real daemon (tests/conftest.py) serving the testkit's scripted ``fake`` provider.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from grpc_helpers import wait_for
from test_cli import Cli, ok, table_rows

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: premium
    match: {tags: [premium]}
    use: fake/docs
  - name: chat
    use: fake/echo
"""

#: The sessions database as the daemon made it before statistics rows kept their request's tags.
OLD_SCHEMA = """
CREATE TABLE turns (
    session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, parts TEXT NOT NULL, at REAL,
    PRIMARY KEY (session_id, position)
);
CREATE TABLE bridged (key TEXT PRIMARY KEY, text TEXT NOT NULL, transcript TEXT, at REAL NOT NULL);
CREATE TABLE calls (
    at REAL NOT NULL, rule TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, purpose TEXT NOT NULL,
    latency_ms REAL NOT NULL, cost_usd REAL NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, audio_seconds REAL NOT NULL
);
"""


def old_database(data_dir: Path) -> None:
    """A data directory whose sessions database has the old schema and one statistics row of yesterday."""
    data_dir.mkdir(parents=True)
    db = sqlite3.connect(data_dir / "sessions.sqlite")
    db.executescript(OLD_SCHEMA)
    with db:
        db.execute("INSERT INTO calls VALUES (?, 'chat', 'fake', 'echo', 'answer', 12.0, 0.5, 10, 20, 0)",
                   (time.time() - 86400,))
    db.close()


def stats(data_dir: Path, *args: str) -> list[dict]:
    return json.loads(ok(Cli("stats", "--data-dir", data_dir, "--json", *args).result()).stdout)


def test_stats_by_tag_and_for_one_tag_on_a_database_of_the_old_schema(start_daemon, tmp_path) -> None:
    data_dir = tmp_path / "data"
    old_database(data_dir)
    daemon = start_daemon(CONFIG, data_dir=data_dir)
    asks = {name: Cli("ask", name, *tags, "--json", "--address", daemon.address) for name, tags in (
        ("one", ("--tag", "team-a")), ("two", ("--tag", "team-a", "--tag", "shared")),
        ("three", ("--tag", "team-b", "--tag", "team-b")), ("four", ()), ("five", ("--tag", "premium")))}
    cost = {name: json.loads(ok(call.result()).stdout)["usage"]["costUsd"] for name, call in asks.items()}
    assert all(cost.values())
    db = sqlite3.connect(data_dir / "sessions.sqlite")
    assert wait_for(lambda: db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 6)  # rows are batched
    db.close()

    # the default output is as it was: per rule, the old row counted with the new ones
    by_rule = {(r["rule"], r["model"]): r for r in stats(data_dir)}
    assert set(by_rule) == {("chat", "echo"), ("premium", "docs")}
    assert by_rule["chat", "echo"]["calls"] == 5 and "tag" not in by_rule["chat", "echo"]
    assert abs(by_rule["chat", "echo"]["cost_usd"] - (0.5 + cost["one"] + cost["two"] + cost["three"]
                                                      + cost["four"])) < 1e-9

    by_tag = {r["tag"]: r for r in stats(data_dir, "--by", "tag")}
    assert set(by_tag) == {"team-a", "team-b", "shared", "premium", None}
    assert by_tag["team-a"]["calls"] == 2
    assert abs(by_tag["team-a"]["cost_usd"] - (cost["one"] + cost["two"])) < 1e-9
    assert by_tag["team-b"]["calls"] == 1  # a tag given twice counts once
    assert abs(by_tag["team-b"]["cost_usd"] - cost["three"]) < 1e-9
    assert abs(by_tag["shared"]["cost_usd"] - cost["two"]) < 1e-9
    assert by_tag["premium"]["model"] == "docs"
    assert by_tag[None]["calls"] == 2  # "four" and the row of the old schema
    assert abs(by_tag[None]["cost_usd"] - (0.5 + cost["four"])) < 1e-9

    only_a = stats(data_dir, "--tag", "team-a")
    assert [(r["rule"], r["calls"]) for r in only_a] == [("chat", 2)]
    assert abs(only_a[0]["cost_usd"] - (cost["one"] + cost["two"])) < 1e-9
    assert [(r["tag"], r["calls"]) for r in stats(data_dir, "--by", "tag", "--tag", "team-a")] == [("team-a", 2)]
    assert stats(data_dir, "--tag", "nobody") == []

    table = ok(Cli("stats", "--data-dir", data_dir, "--by", "tag").result()).stdout
    header = next(line for line in table.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")][:3] == ["tag", "provider/model", "step"]
    rows = table_rows(table)
    assert rows["team-a"][:4] == ["team-a", "fake/echo", "answer", "2"]
    assert rows["(no tag)"][:4] == ["(no tag)", "fake/echo", "answer", "2"]
    assert list(rows)[-1] == "(no tag)"

    # the daemon goes on writing the migrated file after a restart
    assert daemon.stop() == 0
    restarted = start_daemon(CONFIG, data_dir=data_dir)
    ok(Cli("ask", "six", "--tag", "team-a", "--address", restarted.address).result())
    assert restarted.stop() == 0
    assert {r["tag"]: r["calls"] for r in stats(data_dir, "--by", "tag")}["team-a"] == 3

    # a daemon of the older version, not yet restarted after the upgrade, still writes its rows
    db = sqlite3.connect(data_dir / "sessions.sqlite")
    with db:
        db.execute("INSERT INTO calls VALUES (?, 'chat', 'fake', 'echo', 'answer', 1.0, 0.25, 1, 1, 0)", (time.time(),))
    db.close()
    assert {r["tag"]: r["calls"] for r in stats(data_dir, "--by", "tag")}[None] == 3

    # prune takes the tags with their rows: none is left to be given to a later row of the same rowid
    ok(Cli("prune", "--older-than", "0", "--data-dir", data_dir).result())
    db = sqlite3.connect(data_dir / "sessions.sqlite")
    assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM call_tags").fetchone()[0] == 0
    db.close()
