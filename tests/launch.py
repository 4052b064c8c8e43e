"""Start a command under resource limits and with default signals, without ``preexec_fn``.

``subprocess.Popen(preexec_fn=...)`` forks with ``fork()``, which runs gRPC's ``pthread_atfork`` handlers
in a test process that has gRPC channels; with other threads in gRPC they are skipped ("Other threads are
currently calling into gRPC, skipping fork() handlers") and the child aborted before its exec (SIGABRT,
"epoll_wait error: Bad file descriptor"): a daemon start test failed in clean-clone CI runs. Without
``preexec_fn``, Popen starts the child with ``vfork()``, which runs no fork handlers; a small Python
launcher then sets the limits and signals and execs the command.
"""

from __future__ import annotations

import json
import sys

#: Sets what its first argument (JSON) says, then execs the rest of its arguments.
_LAUNCHER = """
import json, os, resource, signal, sys
settings = json.loads(sys.argv[1])
for name, (soft, hard) in settings["limits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
if settings["default_signals"]:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""


def launched(command: list[str], *, limits: dict[str, tuple[int, int]] | None = None,
             default_signals: bool = False) -> list[str]:
    """``command`` (its first item a path) run under ``limits`` (``{"RLIMIT_AS": (soft, hard)}``) and, with
    ``default_signals``, with SIGINT and SIGHUP at their default actions and no signal blocked (as a shell
    or supervisor leaves them: a test runner may ignore or block some)."""
    settings = {"limits": limits or {}, "default_signals": default_signals}
    return [sys.executable, "-c", _LAUNCHER, json.dumps(settings), *command]
