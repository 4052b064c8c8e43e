"""Telling a lack of memory or address space from a bad file or a missing library.

Under an address-space limit (``ulimit -v``, systemd's ``LimitAS=``, a container's memory limit) the
provider's first image, audio or video call loads hundreds of megabytes of libraries (OpenCV, ONNX
Runtime, ffmpeg) and starts threads, each of which reserves address space. Those fail in many shapes:
the dynamic loader's "failed to map segment from shared object" (an ``ImportError`` or ``OSError``),
``MemoryError``, ``RuntimeError: can't start new thread``, ffmpeg's ``EAGAIN`` from ``avcodec_open2``
(its decoding threads could not start) or ``ENOMEM``, ONNX Runtime's ``std::bad_alloc``. None is the
file's fault nor a bug of the plugin: :func:`memory_cause` finds them in an exception's chain, and
:class:`OutOfMemory` says so as a retryable UNAVAILABLE, in one line, so the route's fallback answers.
"""

from __future__ import annotations

import errno
import re
from pathlib import PurePath

from router.errors import ProviderUnavailable
from router.memory import address_space_limit, status_bytes

#: What the messages of a failed allocation, mapping or thread start say (lower case).
_MEMORY_WORDS = (
    "failed to map segment",  # the dynamic loader could not map a library (ImportError, OSError)
    "cannot allocate memory",  # ENOMEM, as dlopen and strerror word it
    "can't start new thread",  # Python's RuntimeError when pthread_create fails
    "bad_alloc",  # a C++ allocation (ONNX Runtime's "std::bad_alloc")
    "failed to allocate memory",  # ONNX Runtime's arena
    "out of memory",
)
#: The errno values of a failed allocation or thread start (pthread_create and fork give EAGAIN).
_MEMORY_ERRNOS = frozenset({errno.ENOMEM, errno.EAGAIN})
#: The most exceptions of a chain looked at (``__cause__`` / ``__context__``).
_MAX_CHAIN = 10
#: The longest cause quoted in a message.
_MAX_CAUSE_CHARS = 300
#: An absolute path's directories (``/srv/.venv/lib/.../cv2/``): a message names the file alone.
_DIRECTORIES = re.compile(r"(?<![\w.])/(?:[^\s/:'\"()]+/)+")
#: The packages whose libraries the provider loads, by the top-level module, and how a message names them.
_LIBRARIES = {
    "cv2": "its OCR (OpenCV)",
    "onnxruntime": "its OCR (ONNX Runtime)",
    "rapidocr_onnxruntime": "its OCR",
    "av": "its audio/video decoder (PyAV, ffmpeg)",
    "pocketsphinx": "its speech recognizer",
}

class OutOfMemory(ProviderUnavailable):
    """The provider ran out of memory or address space while ``doing`` something (``loading its OCR``,
    ``decoding talk.mp4``): retryable UNAVAILABLE (a fallback may answer; the same call may work once
    other calls freed theirs), naming the likely limit and the ``cause`` in one line, without traceback."""

    def __init__(self, doing: str, cause: BaseException) -> None:
        super().__init__("local", f"the local provider ran out of memory or address space (a ulimit -v / LimitAS "
                                  f"/ container limit?) while {doing}: {one_line(cause)}")


def says_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` itself (not its chain) reports a lack of memory, address space or threads."""
    if isinstance(exc, MemoryError):  # av.error.MemoryError (ffmpeg's ENOMEM) is one too
        return True
    if isinstance(exc, OSError) and exc.errno in _MEMORY_ERRNOS:  # av.error.BlockingIOError: ffmpeg's EAGAIN
        return True
    text = str(exc).lower()
    return any(words in text for words in _MEMORY_WORDS)


def memory_cause(exc: BaseException | None) -> BaseException | None:
    """The exception of ``exc``'s chain (itself, then what it was raised from) that reports a lack of memory,
    address space or threads (the innermost: the most precise), or None if none does."""
    found = None
    seen = 0
    while exc is not None and seen < _MAX_CHAIN:
        if says_out_of_memory(exc):
            found = exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return found


def one_line(exc: BaseException) -> str:
    """``exc`` for a client's message: its type and the last line of its message (a wrapped traceback's
    last line is the error), paths cut to their file names, at most :data:`_MAX_CAUSE_CHARS` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = _DIRECTORIES.sub("", lines[-1]) if lines else ""
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[:_MAX_CAUSE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def activity(cause: BaseException, name: str) -> str:
    """What the provider was doing when ``cause`` (see :func:`memory_cause`) stopped it, for
    :class:`OutOfMemory`: loading a library (named by the module Python was importing: the loader's message
    names the shared object that failed, which may be one the module needs, such as PyAV's libxcb),
    starting a thread, else reading the media ``name``."""
    if isinstance(cause, ImportError):
        # An extension module's ImportError names the module briefly ("_core") and its file by path.
        where = [*PurePath(cause.path or "").parts, (cause.name or "").split(".")[0]]
        for package, library in _LIBRARIES.items():
            if package in where:
                return f"loading {library}"
        return f"loading the module {cause.name}" if cause.name else "loading a library"
    if "can't start new thread" in str(cause):
        return "starting a thread"
    return f"reading {name}"


def address_space_left() -> int | None:
    """Bytes of address space this process may still map under its ``RLIMIT_AS`` (``ulimit -v``), or None
    when there is no limit (or it cannot be read)."""
    limit, mapped = address_space_limit(), status_bytes("VmSize")
    return None if limit is None or mapped is None else limit - mapped


def ensure_address_space(needed: int, doing: str) -> None:
    """Raise :class:`OutOfMemory` if under this process's ``RLIMIT_AS`` less than ``needed`` bytes of
    address space are left for ``doing``. For what cannot fail cleanly: OpenCV's libraries, mapped with
    little room left, crashed the daemon (SIGSEGV in their initialisers) instead of failing to load."""
    left = address_space_left()
    if left is not None and left < needed:
        raise OutOfMemory(doing, MemoryError(
            f"{max(left, 0) // 2**20} MiB of address space left under the process's limit, and it needs about "
            f"{needed // 2**20} MiB"))


def raise_if_out_of_memory(exc: BaseException, doing: str) -> None:
    """Raise :class:`OutOfMemory` (from ``exc``) if ``exc``'s chain reports a lack of memory (see
    :func:`memory_cause`); else return, for the caller to handle ``exc`` as it would."""
    cause = memory_cause(exc)
    if cause is not None:
        raise OutOfMemory(doing, cause) from exc
