"""pocketsphinx's decoder in a process of its own.

pocketsphinx never releases the GIL while it decodes: decoding 5 s of noise in one call, or ending a
30 s utterance, held it for one to three seconds, and every other call of the daemon (a cloud call,
a health check) waited meanwhile. :class:`DecoderProcess` runs the decoder in a child process
(``python -m mmrouter_local.decoder_process``) and offers the few methods :mod:`mmrouter_local.asr`
uses; the worker thread calling it waits on a pipe, GIL released. Messages are pickled tuples over
the child's stdin and stdout: the child is this package's own code, started by this process.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any, BinaryIO, NamedTuple

from router.errors import ProviderUnavailable


class DecoderGone(ProviderUnavailable):
    """The decoder's process ended (killed, out of memory): the call fails as retryable UNAVAILABLE, and the
    next call starts a new process."""

    def __init__(self, cause: str) -> None:
        super().__init__("local", f"the local speech decoder stopped ({cause}; killed, or out of memory?): "
                                  "retry the call, which starts it again")


class Seg(NamedTuple):
    """One word of the decoder's result, as ``pocketsphinx.Decoder.seg()`` gives it."""

    word: str
    start_frame: int
    end_frame: int
    prob: float


class DecoderProcess:
    """A ``pocketsphinx.Decoder(samprate=sample_rate)`` in a child process (not thread-safe: the caller
    serialises its calls, as :class:`mmrouter_local.asr.SpeechRecognizer` does)."""

    def __init__(self, sample_rate: int) -> None:
        # -P: ``-m`` would put the working directory first on the child's sys.path, so a pickle.py or an old
        # source tree's router/ where the daemon was started would run in it
        self._child = subprocess.Popen(
            [sys.executable, "-P", "-m", "mmrouter_local.decoder_process", str(sample_rate)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self._child.pid

    def alive(self) -> bool:
        return self._child.poll() is None

    def start_utt(self) -> None:
        self._call("start_utt")

    def process_raw(self, data: bytes, full_utt: bool = False) -> None:
        self._call("process_raw", data, full_utt)

    def end_utt(self) -> None:
        self._call("end_utt")

    def reinit_feat(self) -> None:
        self._call("reinit_feat")

    def seg(self) -> list[Seg]:
        return [Seg(*s) for s in self._call("seg")]

    def close(self) -> None:
        """End the child (its stdin closed, it exits; killed if it does not at once)."""
        try:
            if self._child.stdin is not None:
                self._child.stdin.close()
            self._child.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self._child.kill()
            self._child.wait()

    def _call(self, *message: Any) -> Any:
        try:
            assert self._child.stdin is not None and self._child.stdout is not None
            pickle.dump(message, self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._child.stdin.flush()
            ok, value = pickle.load(self._child.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._child.kill()
            raise DecoderGone(f"its process ended: {type(exc).__name__}") from None
        if not ok:
            raise RuntimeError(f"the speech decoder failed: {value}")
        return value


def serve(sample_rate: int, requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: one decoder, one reply (``(True, result)`` or ``(False, why)``) per request,
    until its stdin closes."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=sample_rate, loglevel="FATAL")
    while True:
        try:
            name, *args = pickle.load(requests)
        except EOFError:
            return
        try:
            if name == "seg":
                result: Any = [(s.word, s.start_frame, s.end_frame, s.prob) for s in decoder.seg()]
            elif name == "process_raw":
                data, full_utt = args
                decoder.process_raw(data, full_utt=full_utt)
                result = None
            elif name in ("start_utt", "end_utt", "reinit_feat"):
                getattr(decoder, name)()
                result = None
            else:
                raise ValueError(f"unknown request {name!r}")
            reply: tuple[bool, Any] = (True, result)
        except Exception as exc:  # the parent's job fails with it; the decoder goes on
            reply = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
