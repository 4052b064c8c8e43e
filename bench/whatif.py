"""Run ``mmrouter serve`` with candidate router/ changes monkeypatched in, to measure them first.

    .venv/bin/python bench/run.py --whatif sync_normal,quiet_http_logs

Patches (comma-separated in MMROUTER_WHATIF; bench/run.py --whatif sets it):

- ``sync_normal``: ``PRAGMA synchronous=NORMAL`` on the sessions/stats sqlite (WAL): commits stop
  calling fsync on the event loop (durable at checkpoints; an OS crash may lose the last calls' stats).
- ``no_record``: skip ``SessionStore.record`` entirely (upper bound of what batching it could save).
- ``quiet_http_logs``: httpx/httpx2/httpcore loggers at WARNING (no "HTTP Request:" INFO line per call).

Never used by the daemon itself; only by the benchmark.
"""

from __future__ import annotations

import logging
import os

patches = {p.strip() for p in os.environ.get("MMROUTER_WHATIF", "").split(",") if p.strip()}

if "sync_normal" in patches:
    import router.sessions as sessions

    _init = sessions.SessionStore.__init__

    def _init_normal(self, path):  # type: ignore[no-untyped-def]
        _init(self, path)
        self._db.execute("PRAGMA synchronous=NORMAL")

    sessions.SessionStore.__init__ = _init_normal

if "no_record" in patches:
    import router.sessions as sessions

    sessions.SessionStore.record = lambda self, answer: None

if "default_tcp_reads" in patches:
    import router.server as server

    server.TCP_READ_OPTIONS = []

if "quiet_http_logs" in patches:
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)

from router.cli import app  # noqa: E402

app()
