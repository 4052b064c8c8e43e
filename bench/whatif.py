"""Run ``mmrouter serve`` with candidate router/ changes monkeypatched in, to measure them first.

    .venv/bin/python bench/run.py --whatif default_tcp_reads

Patches (comma-separated in MMROUTER_WHATIF; bench/run.py --whatif sets it):

- ``default_tcp_reads``: gRPC's default TCP read sizes instead of ``router.server.TCP_READ_OPTIONS``.
- ``no_record``: skip ``SessionStore.record`` entirely (upper bound of what recording statistics costs).

Never used by the daemon itself; only by the benchmark.
"""

from __future__ import annotations

import os

patches = {p.strip() for p in os.environ.get("MMROUTER_WHATIF", "").split(",") if p.strip()}

if "default_tcp_reads" in patches:
    import router.server as server

    server.TCP_READ_OPTIONS = []

if "no_record" in patches:
    import router.sessions as sessions

    sessions.SessionStore.record = lambda self, answer: None

from router.cli import app  # noqa: E402

app()
