#!/usr/bin/env python
"""What one log line costs the daemon (issue #9: every call logs an access line): the old plain
``StreamHandler`` on stderr against router/logsink.py (a bounded queue written by a thread of its own),
text and JSON, with the secret filter on, writing to a file as `bench/run.py` does; and a stalled pipe
(nobody reads it: the lines are dropped, the caller does not wait).

    .venv/bin/python bench/log_sink.py [--records 20000]

Prints, per set-up, the wall time and CPU per record of the calling thread (the event loop's, in the
daemon) and of the whole process (the writer thread included). Pinned to one core, as the daemon is in
`bench/run.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router import logsink, redact

if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("router.server")


def access_line(i: int) -> None:
    """One access line as ``CallLog._log`` logs it (message and ``extra=`` fields)."""
    facts = {"rule": "general", "provider": "openai", "model": "gpt-4o", "attempts": 1, "cost_usd": 0.003645,
             "session": "e8bc163c82ee", "request_id": f"{i:032x}"}
    line = "Generate OK in 412 ms " + " ".join(f"{k}={v}" for k, v in facts.items())
    log.log(logging.INFO, "%s", line, extra={"method": "Generate", "code": "OK", "reason": "",
                                            "duration_ms": 412.0, **facts})


def classic(stream, formatter: logging.Formatter) -> None:
    """The set-up before router/logsink.py: ``basicConfig`` on the stream."""
    logging.basicConfig(level="INFO", stream=stream, force=True)
    logging.getLogger().handlers[0].setFormatter(formatter)


def queued(stream, formatter: logging.Formatter) -> None:
    logsink.log_to(stream, formatter, "INFO")


def measure(setup: Callable, stream, formatter: logging.Formatter, records: int) -> tuple[float, float, float]:
    """Per record: wall µs, calling thread's CPU µs, process CPU µs (after every line is written)."""
    setup(stream, formatter)
    redact.install(["sk-live-0123456789abcdef"])
    for i in range(200):  # warm up
        access_line(i)
    wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    for i in range(records):
        access_line(i)
    thread = time.thread_time() - thread
    wall_end = time.perf_counter()
    for handler in logging.getLogger().handlers:  # the queue's lines written (or given up on, if stalled)
        handler.close()
    process = time.process_time() - process
    logging.getLogger().handlers.clear()
    return (wall_end - wall) * 1e6 / records, thread * 1e6 / records, process * 1e6 / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    opt = parser.parse_args()
    print(f"{opt.records} access lines per run, median of {opt.reps} runs, pinned to core 0")
    print(f"{'set-up':34} {'wall us/line':>13} {'caller CPU us':>14} {'process CPU us':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt_name, make in (("text", lambda: redact.TextFormatter(TEXT)), ("json", redact.JsonFormatter)):
            for name, setup in (("StreamHandler (before)", classic), ("logsink queue (after)", queued)):
                runs = []
                for rep in range(opt.reps):
                    with open(Path(tmp) / f"{fmt_name}-{name[:6]}-{rep}.log", "w", encoding="utf-8") as stream:
                        runs.append(measure(setup, stream, make(), opt.records))
                wall, thread, process = (sorted(r[k] for r in runs)[len(runs) // 2] for k in range(3))
                print(f"{fmt_name + ', ' + name + ', file':34} {wall:13.1f} {thread:14.1f} {process:15.1f}")
        _read, write = os.pipe()  # nobody reads it: past 64 KiB and the queue, lines are dropped
        with open(write, "w", encoding="utf-8", closefd=False) as stream:
            logsink.FLUSH_SECONDS = 0.1
            wall, thread, process = measure(queued, stream, redact.TextFormatter(TEXT), opt.records)
        print(f"{'text, logsink queue, stalled pipe':34} {wall:13.1f} {thread:14.1f} {process:15.1f}")
        os._exit(0)  # the writer thread is still blocked on the unread pipe


if __name__ == "__main__":
    main()
