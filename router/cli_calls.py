"""The CLI's side of the wire: channels to the daemon, requests with media (uploaded when large),
and printing its errors and routes."""

from __future__ import annotations

import json
import mimetypes
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from .address import GRPC_INT_MAX, UPLOAD_CHUNK_BYTES, parse_address
from .auth import with_token
from .sniff import HEAD_BYTES, family_name, magic_family, mime_problem
from .text import escaped, json_escape
from .types import Modality

M = TypeVar("M", bound=Message)

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line each when piped or logged

#: How wide :func:`table_console` draws on a stdout that is no terminal: wider than any row.
WIDE_COLUMNS = 4096


def table_console(stderr: bool = False) -> Console:
    """The console for the tables of ``providers``, ``stats``, ``explain`` and the route ``ask`` prints
    (and the lines below them), on stdout or ``stderr``: ``out`` (``err``) at a terminal or when COLUMNS
    is set; else (piped, a CI log) one :data:`WIDE_COLUMNS` wide, so a row is one line and no name is
    broken (at rich's default there, 80 columns, ``claude-sonnet-4-6`` came out as ``claude-so`` /
    ``nnet-4-6``)."""
    console = err if stderr else out
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(width=WIDE_COLUMNS, stderr=stderr, soft_wrap=stderr)

#: The largest gRPC message the CLI sends (see :func:`daemon_channel`).
MESSAGE_BYTES = 64 * 1024 * 1024
#: The largest gRPC message the CLI takes: any a daemon may send (its server.max_message_bytes is at most
#: 2**31-1). A streamed answer's final ``Done`` repeats its whole text; at 64 MiB, gRPC refused the ``Done``
#: of a longer answer after its text had been printed, and the route and cost were lost.
RECEIVE_BYTES = GRPC_INT_MAX

#: The size of an upload's chunks; a daemon's server.max_message_bytes is at least twice that.
CHUNK = UPLOAD_CHUNK_BYTES

#: Media types by extension, before Python's mimetypes (which lacks some and varies by system): the
#: daemon refuses application/octet-stream for images, audio and video. Phones' and recorders' formats
#: too: CAF (iOS), AMR and 3GP (Android, voice notes), AIFF (macOS), WMA; the daemon takes them, and
#: routes them to a model that reads them (AssemblyAI, Gemini, local). An animated PNG (``.apng``) and a JFIF
#: (``.jfif``) are PNG and JPEG content, sent as such (mimetypes gives ``image/apng``, or nothing).
MIME_BY_EXTENSION = {".m4a": "audio/mp4", ".m4b": "audio/mp4", ".aac": "audio/aac", ".webm": "video/webm",
                  ".weba": "audio/webm", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
                  ".opus": "audio/ogg", ".ogv": "video/ogg", ".wav": "audio/wav", ".mp3": "audio/mpeg",
                  ".mpga": "audio/mpeg", ".mka": "audio/x-matroska", ".mkv": "video/x-matroska",
                  ".mov": "video/quicktime", ".mp4": "video/mp4", ".m4v": "video/mp4", ".pdf": "application/pdf",
                  ".webp": "image/webp", ".caf": "audio/x-caf", ".amr": "audio/amr", ".awb": "audio/amr-wb",
                  ".3gp": "audio/3gpp", ".3gpp": "audio/3gpp", ".3g2": "audio/3gpp2", ".aiff": "audio/aiff",
                  ".aif": "audio/aiff", ".aifc": "audio/aiff", ".wma": "audio/x-ms-wma", ".apng": "image/png",
                  ".jfif": "image/jpeg"}


def media_parts(images: list[Path], audio: list[Path], video: list[Path], pdf: list[Path]) -> Iterator[tuple[int, Path, str]]:
    """(modality, file, MIME type) of each file given with ``--image``, ``--audio``, ``--video`` and ``--pdf``,
    in that order: the type is the extension's, else the content's (see :func:`document_mime` and
    :func:`content_type`). A file that is missing, or that says neither way what it is, is refused (see
    :func:`refuse`)."""
    from mmrouter.v1 import router_pb2 as pb

    for kind, modality, files in ((pb.MODALITY_IMAGE, Modality.IMAGE, images), (pb.MODALITY_AUDIO, Modality.AUDIO, audio),
                                  (pb.MODALITY_VIDEO, Modality.VIDEO, video), (pb.MODALITY_DOCUMENT, Modality.DOCUMENT, pdf)):
        for path in files:
            if not path.is_file():
                refuse(not_a_file(path), f"{MEDIA_OPTIONS[modality]} {as_url(path) or path}")
            mime = MIME_BY_EXTENSION.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind == pb.MODALITY_VIDEO:
                mime = _as_video(mime)
            if kind == pb.MODALITY_DOCUMENT:
                mime = document_mime(path, mime)
            elif mime.partition("/")[0] not in _TOP_TYPES[modality]:
                mime = content_type(path, mime, modality)
            yield kind, path, mime


def _extension_says(path: Path, mime: str) -> str:
    """What the extension of ``path`` says of its type (``mime``, the type it gave), for a refusal."""
    if not path.suffix:
        return "it has no extension"
    if mime == "application/octet-stream":
        return f"its extension {path.suffix} names no known type"
    return f"its extension {path.suffix} names {mime}"


#: The option of ``ask`` and ``explain`` that sends files of each kind.
MEDIA_OPTIONS = {Modality.IMAGE: "--image", Modality.AUDIO: "--audio", Modality.VIDEO: "--video",
                 Modality.DOCUMENT: "--pdf"}
#: The top-level MIME types each media option of ``ask`` takes (the daemon takes a video's sound as audio).
_TOP_TYPES = {Modality.IMAGE: {"image"}, Modality.AUDIO: {"audio", "video"}, Modality.VIDEO: {"video"}}
#: The type to send a file as by its content's family (:func:`router.sniff.magic_family`), for each option.
_FAMILY_TYPES = {
    Modality.IMAGE: {"image/png": "image/png", "image/jpeg": "image/jpeg", "image/gif": "image/gif",
                     "webp": "image/webp", "image/bmp": "image/bmp", "image/tiff": "image/tiff",
                     "image/heic": "image/heic", "heif": "image/heif", "image/avif": "image/avif"},
    Modality.AUDIO: {"wav": "audio/wav", "audio/mpeg": "audio/mpeg", "mpeg-frame": "audio/mpeg",
                     "audio/flac": "audio/flac", "ogg": "audio/ogg", "mp4": "audio/mp4", "adts": "audio/aac",
                     "matroska": "audio/x-matroska"},
    Modality.VIDEO: {"mp4": "video/mp4", "ogg": "video/ogg", "matroska": "video/x-matroska"},
}
#: The EBML DocType element of a WebM file (the Matroska subset browsers record), near a file's start.
_WEBM_DOCTYPE = b"\x42\x82\x84webm"
#: Extensions to name when asking for a file of each kind to be renamed.
_EXAMPLE_EXTENSIONS = {Modality.IMAGE: ".png, .jpg or .heic", Modality.AUDIO: ".m4a, .mp3 or .wav",
                       Modality.VIDEO: ".mp4 or .mov"}


def content_type(path: Path, mime: str, modality: Modality) -> str:
    """The type to send ``path`` as, given with the option of ``modality`` while its extension names
    ``mime``, a type of another kind (``application/octet-stream`` for none): the type of its content,
    known by its first bytes as the daemon checks them (:func:`router.sniff.magic_family`). Files from
    chat apps, ``curl -o`` or a phone's export often have no extension or an odd one. Content that is
    not of that kind either is refused (see :func:`refuse`), saying to rename the file with its extension
    (sent, it was refused as "not an image type", with no hint)."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    family = magic_family(head)
    found = _FAMILY_TYPES[modality].get(family or "")
    if found is not None:
        return found.replace("x-matroska", "webm") if _WEBM_DOCTYPE in head[:64] else found
    seen = f" (it looks like {family_name(family)})" if family else ""
    article = "an" if modality.value[0] in "aeiou" else "a"
    why = (f"cannot send {path} with --{modality.value}: {_extension_says(path, mime)}, and its content is not "
           f"{article} {modality.value} the CLI knows by its first bytes{seen}; rename it with its extension "
           f"(e.g. {_EXAMPLE_EXTENSIONS[modality]})")
    refuse(why, f"{MEDIA_OPTIONS[modality]} {path}")


def document_mime(path: Path, mime: str) -> str:
    """The type to send ``path``, given with ``--pdf``, as: ``mime`` (its extension's) when that is PDF or
    ``text/*``, the types document routes take; else ``application/pdf`` for a PDF (by its header) and
    ``text/plain`` for UTF-8 text (no NUL bytes, its first :data:`router.sniff.HEAD_BYTES` decode, as the
    daemon checks them): a log, a file without an extension, XML, JSON or RTF. Any other file is refused
    (see :func:`refuse`), naming it and its extension; sent, it was refused with every route's reason (NO_ROUTE)."""
    if mime == "application/pdf" or mime.startswith("text/"):
        return mime
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if magic_family(head) == "application/pdf":
        return "application/pdf"
    if mime_problem("text/plain", Modality.DOCUMENT, head) is None:
        return "text/plain"
    why = f"cannot send {path} with --pdf: {_extension_says(path, mime)}, and it is not UTF-8 text; --pdf sends PDF files and UTF-8 text"
    refuse(why, f"--pdf {path}")


#: Containers whose extension is taken for audio (``.ogg``, ``.webm``) but may hold a video.
_AUDIO_OR_VIDEO = {"audio/ogg": "video/ogg", "audio/webm": "video/webm", "audio/x-matroska": "video/x-matroska",
                   "audio/mp4": "video/mp4", "audio/3gpp": "video/3gpp", "audio/3gpp2": "video/3gpp2"}


def _as_video(mime: str) -> str:
    """The video type of a container given with ``--video`` whose extension names its audio type (an Ogg
    video saved as ``.ogg``): the daemon refuses an audio type for a video."""
    return _AUDIO_OR_VIDEO.get(mime, mime)


def wire_name(path: Path) -> str:
    """The name of ``path`` as sent to the daemon: a POSIX name is bytes, and one that is not UTF-8 (an
    old Latin-1 name) has its bad bytes replaced by U+FFFD (a protobuf string must be UTF-8)."""
    return os.fsencode(path.name).decode("utf-8", "replace")


def utf8_text(value: str, what: str, field: str = "") -> str:
    """``value`` (a command-line argument, ``what`` naming it; ``field`` for ``--json``, else ``what``: see
    :func:`refuse`) if it is UTF-8 text; else refuse it: Python keeps the bytes of an argument that are not
    UTF-8 as surrogates, which protobuf refuses."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        os.fsencode(value).decode("utf-8")
        why = "it holds a lone surrogate"
    except UnicodeDecodeError as exc:
        why = f"byte {exc.start + 1} is 0x{exc.object[exc.start]:02x}"
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        why = "it holds a lone surrogate"
    refuse(f"{what} is not UTF-8 text: {why}; give it as UTF-8", field or what)


#: The question argument that stands for standard input (``mmrouter ask -``).
STDIN_PROMPT = "-"
#: How ``--json`` names the question argument of ``ask`` and ``explain`` (given, or read from standard
#: input) in a refusal's field violation (see :func:`refuse`).
PROMPT_FIELD = "PROMPT"
#: How errors name the question read from standard input.
STDIN_QUESTION = "the question from standard input (-)"


def read_prompt(prompt: str) -> str:
    """The question of ``ask`` and ``explain``: ``prompt`` as given, or, for :data:`STDIN_PROMPT`, the
    whole of standard input (a question kept out of ``ps`` and shell history), without its final
    newline. It must be UTF-8 text of at most :data:`MESSAGE_BYTES` (the bound stops ``ask - < /dev/zero``
    from filling memory; one over a gRPC message limit is uploaded, see :func:`call_with_media`), else
    it is refused (see :func:`refuse`).
    Standard input is read only for ``-``: a script's loop reading its own stdin keeps it, and a stdin
    left open (ssh, a service) cannot make a call wait."""
    if prompt != STDIN_PROMPT:
        return prompt
    what = STDIN_QUESTION
    if sys.stdin is None:  # started with its file descriptor 0 closed
        refuse(f"cannot read {what}: standard input is closed", PROMPT_FIELD)
    if sys.stdin.isatty():
        err.print("[dim]reading the question from standard input: end it with Ctrl-D[/dim]")
    try:
        data = sys.stdin.buffer.read(MESSAGE_BYTES + 1)
    except OSError as exc:  # e.g. a directory given as stdin
        refuse(f"cannot read {what}: {exc.strerror or exc}", PROMPT_FIELD)
    if len(data) > MESSAGE_BYTES:
        refuse(f"{what} is over {MESSAGE_BYTES >> 20} MiB, more than a request may carry: send a long text as a "
               "file with --pdf", PROMPT_FIELD)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        refuse(f"{what} is not UTF-8 text: byte {exc.start + 1} is 0x{data[exc.start]:02x}; give it as UTF-8",
               PROMPT_FIELD)
    return text[:-1].removesuffix("\r") if text.endswith("\n") else text  # echo's newline, or a CRLF


#: The start of a URL as a :class:`Path` keeps it: its scheme (two characters or more: ``c:`` is a Windows
#: drive) and colon, then one slash (``https:/host/a.jpg``).
_URL_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def as_url(path: Path) -> str | None:
    """The URL that ``path`` (a file option's argument, which the command line made a Path: ``https:/cdn...``,
    its ``//`` made one slash) was given as, or None when it was none."""
    text = str(path)
    return _URL_PATH.sub(lambda found: found[0] + "/", text, count=1) if _URL_PATH.match(text) else None


def not_a_file(path: Path) -> str:
    """Why ``path``, which is no regular file, cannot be sent: a URL (the CLI sends local files only, see
    :func:`as_url`), a directory, no regular file, or missing."""
    url = as_url(path) if not path.exists() else None
    if url is not None and url.lower().startswith("file://"):  # file:///tmp/a.png, made "file:/tmp/a.png"
        local = "/" + url[len("file://"):].lstrip("/")
        return f"file://{local} is a file URL: give the file's path itself ({local})"
    if url is not None:
        return (f"{url} is a URL: the CLI sends local files only; download it first, or give the URL in the "
                "url field of the request's Media through the API (the daemon needs server.allow_urls: true)")
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists():
        return f"{path} is not a regular file (a device, a pipe or a socket)"
    return f"no such file: {path}"


#: The longest ``upload_file`` waits in all for the daemon to have a free upload place.
UPLOAD_WAIT_SECONDS = 30.0


class DeadlinePassed(grpc.RpcError, grpc.Call):
    """The CLI's own deadline (``--timeout``) passed before a call was made: failed as gRPC fails a call
    whose deadline passes (DEADLINE_EXCEEDED), without making it. gRPC itself does not always fail a call
    made with a deadline already past: on a loaded host its deadline timer may fire after a quick call's
    answer (``explain --timeout 0.000001`` once printed the route)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"

    def initial_metadata(self) -> tuple:
        return ()

    def trailing_metadata(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


def remaining(deadline: float | None) -> float | None:
    """The seconds left until ``deadline`` (a :func:`time.monotonic` time; None: no deadline), as a gRPC
    call's ``timeout``; raises :class:`DeadlinePassed` when none are left."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed()
    return left


def upload_file(stub, kind: int, path: Path, mime: str, deadline: float | None = None,
                data: bytes | None = None) -> str:
    """Upload ``path`` with UploadMedia and return its media id, within ``deadline`` (see :func:`remaining`).
    While the daemon runs as many uploads as it takes (TOO_MANY_UPLOADS), wait as its RetryInfo says and
    try again, up to :data:`UPLOAD_WAIT_SECONDS` in all. With ``data``, those bytes are uploaded instead
    of a file's, under the name of ``path`` (the question sent as a text document, see :func:`build_request`).

    Exactly the size stat'ed first is sent: a file that grows or shrinks meanwhile (a log still written, a
    recording under way) is not sent whole (its last chunk is held back, so the daemon refuses the upload)
    and it is refused (see :func:`refuse`), naming the file and both sizes."""
    from mmrouter.v1 import router_pb2 as pb

    size = path.stat().st_size if data is None else len(data)
    changed: list[int] = []  # the file's size when it was found to have changed
    # only on a terminal: piped or logged, a bar cannot be erased (and left an empty line). The label is
    # plain text, not markup: escape() doubles a backslash that ends a name (shown "uploading a\\").
    label = TextColumn("{task.description}", style="progress.description", markup=False)
    with Progress(label, BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task(f"uploading {path.name}", total=size)

        def messages():
            progress.reset(task)  # a retry sends the file from its start again
            yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=kind, mime_type=mime,
                                                                   filename=wire_name(path), size_bytes=size))
            if data is not None:
                for at in range(0, size, CHUNK):
                    progress.advance(task, min(CHUNK, size - at))
                    yield pb.UploadMediaRequest(chunk=data[at:at + CHUNK])
                return
            with path.open("rb") as f:
                left = size
                while left:
                    chunk = f.read(min(CHUNK, left))
                    left -= len(chunk)
                    # the last chunk goes only once the file is known not to have grown
                    if not chunk or (not left and f.read(1)):
                        changed.append(os.fstat(f.fileno()).st_size)
                        return
                    progress.advance(task, len(chunk))
                    yield pb.UploadMediaRequest(chunk=chunk)

        waited = 0.0
        while True:
            try:
                media_id = stub.UploadMedia(messages(), timeout=remaining(deadline)).media_id
                if not changed:
                    return media_id
            except grpc.RpcError as exc:
                delay = upload_retry_delay(exc)
                if not changed and (delay is None or waited + delay > UPLOAD_WAIT_SECONDS):
                    raise
            if changed:
                why = (f"{path} changed while it was being uploaded ({size} -> {changed[-1]} bytes): "
                       "send a finished copy")
                modality = Modality(pb.Modality.Name(kind).removeprefix("MODALITY_").lower())
                refuse(why, f"{MEDIA_OPTIONS[modality]} {path}")
            if not waited:
                waiting = (f"the daemon has as many uploads under way as it takes: waiting to upload {path.name} "
                           f"(up to {UPLOAD_WAIT_SECONDS:.0f} s)")
                err.print(f"[yellow]{escape(waiting)}[/yellow]")
            time.sleep(delay)
            waited += delay


def upload_retry_delay(exc: grpc.RpcError) -> float | None:
    """Seconds to wait before uploading again if the daemon refused the upload for TOO_MANY_UPLOADS
    (its RetryInfo, 1 s without one; at least 0.1 s so the wait is bounded), else None."""
    from google.rpc import error_details_pb2

    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or error_info(exc)[0] != "TOO_MANY_UPLOADS":
        return None
    retry = status_detail(exc, error_details_pb2.RetryInfo)
    if retry is None or not retry.HasField("retry_delay"):
        return 1.0
    return max(retry.retry_delay.ToTimedelta().total_seconds(), 0.1)


#: Most bytes of media one request carries inline, well under the channel's 64 MiB message limit
#: (``daemon_channel``): past it the largest files are uploaded, however small each is.
INLINE_BUDGET = 48 * 1024 * 1024


def inline_choice(sizes: list[int], inline_limit: int, budget: int = INLINE_BUDGET) -> set[int]:
    """The indexes of the files (by ``sizes``) to send inline: those of at most ``inline_limit`` bytes,
    smallest first, while their total stays within ``budget``; the others are uploaded."""
    chosen, total = set(), 0
    for i in sorted(range(len(sizes)), key=sizes.__getitem__):
        if sizes[i] > inline_limit or total + sizes[i] > budget:
            break
        chosen.add(i)
        total += sizes[i]
    return chosen


#: The name the question goes under when it is sent as an uploaded text document (see :func:`build_request`).
QUESTION_NAME = "question.txt"


def build_request(stub, prompt: str, images, audio, video, pdf, system, task, diarize, speakers, provider, model,
                   tags, session, inline_limit, max_tokens: int = 0, language: str = "", deadline: float | None = None,
                   turn_id: str = "", upload_prompt: bool = False, temperature: float | None = None,
                   metadata: list[str] | None = None):
    """The request of ``ask`` and ``explain``: files over ``inline_limit`` bytes, and the largest ones
    once the inline total would pass :data:`INLINE_BUDGET`, are uploaded first (within ``deadline``, see
    :func:`remaining`). With ``upload_prompt`` (a question too large for a gRPC message, see
    :func:`call_with_media`), the question is uploaded too, as a ``text/plain`` document named
    :data:`QUESTION_NAME` in its place, which the daemon counts as prompt text.
    ``language`` (a BCP-47 tag, ``--language``) is sent as it is: the daemon checks it.
    ``--speakers`` turns diarization on, as the request's ``speakers_expected`` does (``--diarize`` may be left out).
    ``turn_id`` (``ask --turn-id``, or one made for a session's turn) names the turn: asked again, it gets its kept answer.
    ``temperature`` (``ask --temperature``) is left unset when None: the provider's default. ``metadata`` are
    ``--metadata KEY=VALUE`` pairs, each key once."""
    from mmrouter.v1 import router_pb2 as pb

    if task not in ("auto", "chat", "transcribe"):
        refuse("--task must be auto, chat or transcribe", "--task")
    if not prompt and not (images or audio or video or pdf):
        refuse("nothing to send: give a question, or a file with --image, --audio, --video or --pdf", PROMPT_FIELD)
    utf8_text(prompt, "the prompt", PROMPT_FIELD)
    for value, what in ((system, "--system"), (session or "", "--session"), (provider or "", "--provider"),
                        (model or "", "--model"), (language, "--language"), *((t, "--tag") for t in tags or [])):
        utf8_text(value, what)
    if temperature is not None and not 0 <= temperature <= 2:  # nan and inf too
        refuse(f"--temperature must be a number from 0 to 2, not {temperature}", "--temperature")
    pairs: dict[str, str] = {}
    for pair in metadata or []:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            refuse(f"--metadata takes KEY=VALUE, not {pair!r}", "--metadata")
        if key in pairs:
            refuse(f"--metadata gives {key!r} twice: give each key once", "--metadata")
        utf8_text(pair, "--metadata")
        pairs[key] = value
    files = list(media_parts(images, audio, video, pdf))
    inline = inline_choice([path.stat().st_size for _, path, _ in files], inline_limit)
    parts = []
    for i, (kind, path, mime) in enumerate(files):
        media = pb.Media(modality=kind, mime_type=mime, filename=wire_name(path))
        if i in inline:
            media.data = path.read_bytes()
        else:
            media.media_id = upload_file(stub, kind, path, mime, deadline)
        parts.append(pb.Part(media=media))
    if prompt and upload_prompt:
        media_id = upload_file(stub, pb.MODALITY_DOCUMENT, Path(QUESTION_NAME), "text/plain", deadline,
                               data=prompt.encode("utf-8"))
        parts.append(pb.Part(media=pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain",
                                            media_id=media_id, filename=QUESTION_NAME)))
    elif prompt:
        parts.append(pb.Part(text=prompt))
    messages = [pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text=system)])] if system else []
    messages.append(pb.Message(role=pb.ROLE_USER, parts=parts))
    tasks = {"auto": pb.TASK_AUTO, "chat": pb.TASK_CHAT, "transcribe": pb.TASK_TRANSCRIBE}
    return pb.MultimodalRequest(
        messages=messages, session_id=session or "", turn_id=turn_id, metadata=pairs,
        options=pb.Options(task=tasks[task], diarization=diarize or speakers > 0, speakers_expected=speakers,
                           max_output_tokens=max_tokens, language=language, temperature=temperature),
        hints=pb.RoutingHints(provider=provider or "", model=model or "", tags=tags or []),
    )


#: Keepalive within the daemon's ping policy (it takes a ping every 5 s): a call that waits silently
#: for a slow provider is not dropped by a NAT or load balancer that ends idle connections. gRPC
#: otherwise sends only two pings while no data flows.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
                     ("grpc.http2.max_pings_without_data", 0)]


def daemon_channel(address: str, token: str) -> grpc.Channel:
    """A channel to the daemon: TLS when MMROUTER_TLS_CA is set (and a client certificate from
    MMROUTER_TLS_CERT / MMROUTER_TLS_KEY), sending the bearer ``token`` (--token / MMROUTER_TOKEN) if any."""
    check_address(address)
    options = [("grpc.max_send_message_length", MESSAGE_BYTES),
               ("grpc.max_receive_message_length", RECEIVE_BYTES),
               *KEEPALIVE_OPTIONS]
    files = {name: os.environ.get(f"MMROUTER_TLS_{name.upper()}", "") for name in ("ca", "cert", "key")}
    if not files["ca"]:
        channel = grpc.insecure_channel(address, options=options)
    else:
        pem: dict[str, bytes | None] = {}
        for name, path in files.items():
            try:
                pem[name] = Path(path).expanduser().read_bytes() if path else None
            except OSError as exc:
                refuse(f"cannot read MMROUTER_TLS_{name.upper()} {path}: {exc.strerror or exc}",
                       f"MMROUTER_TLS_{name.upper()}")
        pem["ca"] = ca_certificates(files["ca"], pem["ca"] or b"")
        if files["cert"] or files["key"]:
            check_client_certificate(files["cert"], files["key"])
        credentials = grpc.ssl_channel_credentials(pem["ca"], private_key=pem["key"], certificate_chain=pem["cert"])
        channel = grpc.secure_channel(address, credentials, options=options)
    return with_token(channel, client_token(token))


def check_address(address: str) -> None:
    """Exit with a message naming --address unless ``address`` is one a daemon can listen on (see
    :func:`router.config.parse_address`) other than port 0: gRPC would write its own log lines for an
    empty one, fail to resolve a malformed one as if the daemon were down, and take a port over
    65535 modulo 65536."""
    try:
        parsed = parse_address(address)
    except ValueError as exc:
        problem = str(exc)
    else:
        if parsed is None or parsed[1]:
            return
        problem = f"port 0 in {address!r} names no daemon: give the port it listens on"
    refuse(f"--address (or MMROUTER_ADDRESS): {problem}", "--address")


def ca_certificates(path: str, data: bytes) -> bytes:
    """The CA certificates of the MMROUTER_TLS_CA file ``path`` (its content ``data``) as PEM, which is
    what gRPC takes: a PEM file as it is, a DER one (binary, as many PKIs hand a ``.der`` or ``.crt``
    out) converted. Exit with a message naming MMROUTER_TLS_CA if it holds neither: gRPC would only
    fail every call with "Failed to create security handshaker"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if b"-----BEGIN" in data:
            # ssl takes PEM as an ASCII str; bytes outside the PEM blocks (a bundle's comments naming its
            # CAs) may be UTF-8, and gRPC reads past them
            context.load_verify_locations(cadata=data.decode("ascii", "ignore"))
            return data
        context.load_verify_locations(cadata=data)  # bytes: DER, one certificate or several end to end
        return "".join(ssl.DER_cert_to_PEM_cert(der) for der in _der_items(data)).encode("ascii")
    except (ssl.SSLError, ValueError):
        refuse(f"MMROUTER_TLS_CA {path} holds no valid PEM certificate: give the certificate of the CA that "
               "signed the daemon's server.tls certificate", "MMROUTER_TLS_CA")


def _der_items(data: bytes) -> list[bytes]:
    """The DER values (certificates) ``data`` holds end to end; ValueError if it holds anything else."""
    items, at = [], 0
    while at < len(data):
        if data[at] != 0x30 or at + 2 > len(data):  # every certificate is an ASN.1 SEQUENCE
            raise ValueError("not a DER certificate")
        length, start = data[at + 1], at + 2
        if length & 0x80:  # the long form: the length in the next (length & 0x7f) bytes
            start += length & 0x7F
            length = int.from_bytes(data[at + 2:start], "big")
        if start + length > len(data):
            raise ValueError("not a DER certificate")
        items.append(data[at:start + length])
        at = start + length
    return items


def check_client_certificate(cert: str, key: str) -> None:
    """Exit with a message naming MMROUTER_TLS_CERT and MMROUTER_TLS_KEY unless they are a certificate
    and its private key: gRPC would fail every handshake, its C core writing lines of its own."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except (ssl.SSLError, OSError, ValueError) as exc:
        refuse(f"MMROUTER_TLS_CERT {cert or '(unset)'} and MMROUTER_TLS_KEY {key or '(unset)'} are not a client "
               f"certificate and its private key ({exc})", "MMROUTER_TLS_CERT")


def client_token(token: str) -> str:
    """``token`` without surrounding whitespace (a secret file's newline), as the daemon reads it; exit
    with a message if it holds what no header can carry (gRPC would fail every call obscurely)."""
    token = token.strip()
    if not all("!" <= c <= "~" for c in token):
        refuse("the token (--token or MMROUTER_TOKEN) holds a space, a control character or a character that is "
               "not ASCII: no gRPC header can carry it", "--token")
    return token


def shown(text: str, lines: bool = False) -> str:
    """``text`` that came from the daemon or a provider, safe to print: each control character, line
    separator or bidirectional override (ESC, a newline, U+202E...) is written as Python escapes it
    (``\\x1b``, ``\\n``, ``\\u202e``), so an error message or a name can neither drive the terminal (colours,
    a cleared screen, the window title) nor forge a line; every other character (any script's spaces,
    joiners, emoji) as it is. With ``lines`` (an answer's text), newlines and tabs are kept (see
    :func:`router.text.escaped`)."""
    return escaped(text, keep="\n\t" if lines else "")


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON whose text a terminal cannot misread: JSON escapes only C0
    control characters, so each other control character, line separator or bidirectional override (a C1
    control such as U+009B, which some terminals take as an escape sequence; U+202E) is written as its
    ``\\uXXXX`` escape, which JSON readers decode back to the same text. On a console whose encoding
    cannot show every character (Latin-1, Shift-JIS), every non-ASCII character is a JSON escape: the CLI
    writes what a console cannot show as Python escapes, which are not JSON."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, indent=2)
    sys.stdout.write(escaped(text, keep="\n", escape=json_escape) + "\n")


def status_detail(exc: grpc.RpcError, kind: type[M]) -> M | None:
    """The first ``google.rpc.Status`` detail of type ``kind`` (ErrorInfo, RetryInfo...) of a failed call, or None."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def error_info(exc: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ``ErrorInfo`` reason and metadata of a failed call, or ``("", {})``."""
    from google.rpc import error_details_pb2

    info = status_detail(exc, error_details_pb2.ErrorInfo)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


def call_with_media(build: Callable[..., Any], call: Callable[[Any], Any], inline_limit: int) -> Any:
    """``call(build(inline_limit))``; if the request is too large (its inline media over the daemon's
    ``inline_limit_bytes``, or the request over a gRPC message limit of either side, see
    :func:`too_large_inline`), build again with every file uploaded (``build(0)``) and retry once. When
    the request would still be over the message limit without its inline media (a long question from
    standard input), the question is uploaded too, as a text document (``build(0, True)``, see
    :func:`build_request`). Another limit (``max_request_media_bytes``) is not helped by uploading, and an
    answer too large to receive is no fault of the request: their errors are raised (a retry would call
    and bill the provider again)."""
    request = build(inline_limit)
    try:
        return call(request)
    except grpc.RpcError as exc:
        inline = any(p.media.data for m in request.messages for p in m.parts if p.HasField("media"))
        why = too_large_inline(exc)
        limit = refused_limit(exc)
        text_too_large = limit is not None and _has_question(request) and uploaded_size(request) > limit
        if why is None or not (inline or text_too_large):
            raise
    if text_too_large:
        err.print(f"[yellow]{escape(shown(why))}: sending the question as an uploaded text document"
                  f"{' and uploading the files' if inline else ''}[/yellow]")
        return call(build(0, True))
    err.print(f"[yellow]{escape(shown(why))}: uploading the files[/yellow]")
    return call(build(0))


#: Room in a gRPC message for the call's own framing around its request (``GenerateRequest.request``).
CALL_FRAMING_BYTES = 16


def uploaded_size(request: Any) -> int:
    """The size of ``request``'s message once its inline media are uploaded (each named by its id instead),
    with the call's framing: what a retry with every file uploaded sends."""
    uploaded = type(request)()
    uploaded.CopyFrom(request)
    for message in uploaded.messages:
        for part in message.parts:
            if part.HasField("media") and part.media.data:
                part.media.media_id = "0" * 64  # a sha256, as UploadMedia answers (the data leaves the oneof)
    return uploaded.ByteSize() + CALL_FRAMING_BYTES


def _has_question(request: Any) -> bool:
    """Whether ``request`` has text in a user message: the question :func:`build_request` may upload."""
    from mmrouter.v1 import router_pb2 as pb

    return any(p.text for m in request.messages if m.role == pb.ROLE_USER for p in m.parts)


def too_large_inline(exc: grpc.RpcError) -> str | None:
    """What was too large, when ``exc`` refused a request for the size of its inline media or of the
    request itself, else None."""
    reason, metadata = error_info(exc)
    if reason == "PAYLOAD_TOO_LARGE" and metadata.get("limit") == "inline_limit_bytes":
        return "the daemon takes less inline media than --inline-limit"
    # gRPC's own refusals carry no ErrorInfo: "CLIENT: Sent message larger than max" (this side's send
    # limit) or "SERVER: Received message larger than max" (the daemon's server.max_message_bytes); not
    # "CLIENT: Received ...", this side refusing an answer the provider has already given (and billed)
    if request_refused(exc):
        return f"the request is larger than a gRPC message may be ({exc.details()})"
    return None


def request_refused(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` is gRPC's own refusal of a request for its size: this side's send limit
    (:data:`MESSAGE_BYTES`) or the daemon's ``server.max_message_bytes``. The daemon's handler never ran, so
    the refusal has no ErrorInfo."""
    return (exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not error_info(exc)[0]
            and _REQUEST_REFUSED.search(exc.details() or "") is not None)


def refused_limit(exc: grpc.RpcError) -> int | None:
    """The message limit in bytes that ``exc`` refused a request for (see :func:`request_refused`), as
    gRPC says it ("larger than max (5000041 vs. 4194304)"), or None."""
    if not request_refused(exc):
        return None
    found = _SIZES.search(exc.details() or "")
    return int(found[2]) if found else None


def refused_hint(exc: grpc.RpcError) -> str:
    """What to do about a request that gRPC refused for its size (see :func:`request_refused`), when
    uploading its files and question did not help (its ``--system`` text is that long)."""
    limit = refused_limit(exc)
    said = f" ({limit} bytes)" if limit is not None else ""
    advice = "send long text as a file with --pdf (a text document is uploaded, and counted as prompt text)"
    if "Sent message" in (exc.details() or ""):
        return f"the request is over the CLI's message limit{said}: {advice}"
    return (f"the request is over the daemon's message limit{said}, its server.max_message_bytes: {advice}, or "
            "raise server.max_message_bytes in the daemon's configuration")


#: gRPC's refusals of a request for its size, by this side (sending) or the daemon (receiving).
_REQUEST_REFUSED = re.compile(r"Sent message larger than max|SERVER: Received message larger than max")
#: The message's size and the limit, as gRPC's size refusals give them.
_SIZES = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")
#: gRPC's refusal, on this side, of a message from the daemon over :data:`RECEIVE_BYTES`.
ANSWER_REFUSED = "CLIENT: Received message larger than max"


def answer_refused(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` is this side's refusal of a message from the daemon over :data:`RECEIVE_BYTES`:
    in ``ask``, the final ``Done`` of an answer the provider has given, billed and the daemon has kept."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and ANSWER_REFUSED in (exc.details() or "")


def request_labels(images: list[Path], audio: list[Path], video: list[Path], pdf: list[Path], system: str,
                   question: str = "", session: str = "--session") -> dict[str, str]:
    """The request's field paths that an option (or argument) of ``ask`` and ``explain`` fills, as the
    daemon's errors name them -> that option, as the user gave it (see :func:`name_fields`): each file's part
    (the files come first in the user message, in :func:`media_parts`' order, after the system message if
    any) as ``--image photo.png``; the question's part, the user message and the messages as ``question``
    (``the question``, or :data:`STDIN_QUESTION`; "" when none was given), or as the files when there are
    some; the session id as ``session`` (``--session``, or the environment variable it came from); the
    others as in :data:`OPTION_FIELDS`."""
    message = 1 if system else 0
    given = [(option, path) for option, files in zip(MEDIA_OPTIONS.values(), (images, audio, video, pdf), strict=True)
             for path in files]
    labels = {**OPTION_FIELDS, "request.session_id": session}
    labels.update({f"request.messages[{message}].parts[{j}]": f"{option} {path}"
                   for j, (option, path) in enumerate(given)})
    if system:
        labels["request.messages[0]"] = labels["request.messages[0].parts[0]"] = "--system"
    if question:
        labels[f"request.messages[{message}].parts[{len(given)}]"] = question
    content = question  # what the user message holds: of a problem with it, or with the whole request
    if given:
        files = f"the files ({', '.join(dict.fromkeys(option for option, _ in given))})"
        content = f"{question} and {files}" if question else files
    if content:
        labels["request.messages"] = labels[f"request.messages[{message}]"] = content
    return labels


#: The request's fields that an option of ``ask`` and ``explain`` fills, as the daemon's errors name them
#: (see :func:`request_labels`). ``request.hints.tags[i]`` is ``--tag #i+1`` (see :func:`name_fields`).
OPTION_FIELDS = {"request.turn_id": "--turn-id", "request.options.task": "--task",
                 "request.options.diarization": "--diarize", "request.options.speakers_expected": "--speakers",
                 "request.options.language": "--language", "request.options.max_output_tokens": "--max-tokens",
                 "request.options.temperature": "--temperature", "request.metadata": "--metadata",
                 "request.hints.provider": "--provider", "request.hints.model": "--model", "request.hints.tags": "--tag"}
#: A field path in the daemon's errors (``request.messages[0].parts[1].media.mime_type``).
_FIELD_PATH = re.compile(r"\brequest(?:\.\w+|\[\d+\])+")
#: What may follow a labelled path, as a field of it: a part's media, and one field of that or of the path.
_SUBFIELD = re.compile(r"(?:\.media)?(?:\.(\w+))?")
#: The path of one of the request's tags.
_TAG_PATH = re.compile(r"request\.hints\.tags\[(\d+)\]")


def name_fields(text: str, labels: dict[str, str]) -> str:
    """``text`` with the request's field paths that ``labels`` (see :func:`request_labels`) names replaced by
    their labels: ``--turn-id`` for ``request.turn_id``, ``--tag #2`` for ``request.hints.tags[1]``,
    ``--image photo.png`` for ``request.messages[0].parts[0].media``, ``--image photo.png (mime_type)`` for
    one of its fields. Other paths are left as they are."""
    def label(match: re.Match) -> str:
        path = match[0]
        if tag := _TAG_PATH.fullmatch(path):
            return f"--tag #{int(tag[1]) + 1}"
        labelled = max((known for known in labels if path.startswith(known)), key=len, default=None)
        rest = _SUBFIELD.fullmatch(path[len(labelled):]) if labelled else None
        if rest is None:
            return path
        return f"{labels[labelled]} ({rest[1]})" if rest[1] else labels[labelled]

    return _FIELD_PATH.sub(label, text)


#: The exit codes of the commands that call the daemon (see :func:`exit_code`); 0 is success, and a
#: SIGINT or SIGTERM ends them with 130 or 143 as usual.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHED = 3
EXIT_AUTH = 4
EXIT_RETRY_LATER = 5
EXIT_TIMED_OUT = 6
EXIT_CONNECTION_LOST = 7
#: Standard output closed by its reader (``ask | head -1``): as a process killed by SIGPIPE.
EXIT_PIPE_CLOSED = 141

#: The daemon's reasons that trying again later does not help, though their status says "try again".
_FINAL_REASONS = {"ANSWER_TOO_LARGE"}

#: The ErrorInfo-like reason of the CLI's own refusals in ``--json``'s error (see :func:`refusal_fields`).
CLI_USAGE = "CLI_USAGE"


class Refused(typer.Exit):
    """The CLI's own refusal of a command's input (see :func:`refuse`): ``message`` is on stderr already, and
    ``field`` names the option, argument or environment variable at fault (``--turn-id``, ``--pdf a.pdf``,
    ``PROMPT``, ``MMROUTER_TLS_CA``). Not caught, it ends the command with ``code`` as any ``typer.Exit``;
    with ``--json``, the command prints it as ``{"error": ...}`` too (see :func:`refusal_fields`)."""

    def __init__(self, message: str, field: str = "", code: int = EXIT_USAGE) -> None:
        super().__init__(code)
        self.message, self.field = message, field


def refuse(message: str, field: str = "", code: int = EXIT_USAGE) -> NoReturn:
    """Refuse a command's input: ``message`` on stderr, then :class:`Refused` (exit ``code``, a usage error)."""
    err.print(f"[red]{escape(message)}[/red]")
    raise Refused(message, field, code)


def refusal_fields(message: str, field: str = "") -> dict[str, Any]:
    """A refusal of the CLI's own as ``--json`` prints it under ``"error"``: the keys of a failed call's
    (:func:`error_fields`), with code INVALID_ARGUMENT (exit 2, as the daemon's own), reason
    :data:`CLI_USAGE`, ``message`` (the stderr line), and ``field``, the option at fault, as its one field
    violation; no retry delay, no request id: no call was made."""
    return {"code": grpc.StatusCode.INVALID_ARGUMENT.name, "reason": CLI_USAGE, "message": message,
            "retry_after_seconds": None, "request_id": "", "metadata": {},
            "field_violations": [{"field": field, "description": message}] if field else []}


def exit_code(exc: grpc.RpcError, received: bool = False) -> int:
    """The exit code of a command whose call failed with ``exc`` (having ``received`` something of its
    answer, see :func:`connection_lost`): the one place that maps a gRPC status (and the daemon's ErrorInfo
    reason) to an exit code.

    ====  ==========================================================================================
    code  when
    ====  ==========================================================================================
    1     the call failed otherwise: INTERNAL, NOT_FOUND, FAILED_PRECONDITION (NO_ROUTE, a provider
          refusing its key, PROVIDER_QUOTA_EXHAUSTED: an account's quota or credit spent, which no wait
          mends), CANCELLED, ANSWER_TOO_LARGE, gRPC's own message-size refusal...
    2     bad input: INVALID_ARGUMENT, OUT_OF_RANGE (as the CLI's own usage errors)
    3     the daemon was not reached: gRPC's own UNAVAILABLE (no ErrorInfo), but a daemon that
          stopped while the call ran (5) and a connection lost during the call (7)
    4     auth refused: UNAUTHENTICATED, PERMISSION_DENIED
    5     try again later: the daemon's UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED (with ErrorInfo:
          provider down, rate limited, daemon or session busy; RetryInfo says when)
    6     timed out: DEADLINE_EXCEEDED (--timeout, the daemon's CALL_TIMEOUT, a provider's timeout)
    7     the connection was lost during the call (:func:`connection_lost`): the daemon may have
          completed it, so a retry may repeat it
    ====  ==========================================================================================
    """
    code, reason = exc.code(), error_info(exc)[0]
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return EXIT_USAGE
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EXIT_AUTH
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or reason == "CALL_TIMEOUT":
        return EXIT_TIMED_OUT
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        if DAEMON_STOPPED in (exc.details() or ""):
            return EXIT_RETRY_LATER
        return EXIT_CONNECTION_LOST if connection_lost(exc, received) else EXIT_UNREACHED
    if (code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
            and reason and reason not in _FINAL_REASONS):
        return EXIT_RETRY_LATER
    return EXIT_FAILED


def error_fields(exc: grpc.RpcError) -> dict[str, Any]:
    """What a script can use of a failed call, as ``--json`` prints it under ``"error"``: the gRPC
    ``code`` name, the ErrorInfo ``reason`` (``""`` for gRPC's own errors) and ``metadata``, the
    ``message``, the RetryInfo delay (``retry_after_seconds``, None without one), the ``request_id``
    (ErrorInfo's, else the ``x-mmrouter-request-id`` trailer or response header; ``""`` if none: a call the
    daemon never reached) and the BadRequest
    ``field_violations`` (``field``, ``description``), each as the daemon sent it."""
    from google.rpc import error_details_pb2

    reason, metadata = error_info(exc)
    retry = status_detail(exc, error_details_pb2.RetryInfo)
    delay = (retry.retry_delay.ToTimedelta().total_seconds()
             if retry is not None and retry.HasField("retry_delay") else None)
    trailers = getattr(exc, "trailing_metadata", lambda: None)() or ()
    headers = getattr(exc, "initial_metadata", lambda: None)() or ()  # a call cut short has no trailers
    request_id = metadata.get("request_id") or next(
        (v for k, v in (*trailers, *headers) if k == REQUEST_ID_TRAILER), "")
    bad = status_detail(exc, error_details_pb2.BadRequest)
    return {"code": exc.code().name, "reason": reason, "message": exc.details() or "",
            "retry_after_seconds": delay, "request_id": str(request_id), "metadata": metadata,
            "field_violations": [{"field": v.field, "description": v.description}
                                 for v in (bad.field_violations if bad is not None else ())]}


#: The metadata key (trailer and response header) in which the daemon names a call's request id (as in its log).
REQUEST_ID_TRAILER = "x-mmrouter-request-id"


def fail(exc: grpc.RpcError, address: str, labels: dict[str, str] | None = None, *, as_json: bool = False,
         received: bool = False, turn_id: str = "") -> NoReturn:
    """Print the failed call's status (its field violations too, and a hint when the daemon was not
    reached at ``address``, the connection was lost during the call, or the answer was over the CLI's
    receive limit), then one line with its ErrorInfo reason, RetryInfo delay and request id, and exit
    with :func:`exit_code`'s code. ``labels`` (see :func:`request_labels`; given by ``ask`` and ``explain``)
    names the files and options the user gave instead of the request's field paths; ``received`` says
    the call had received some of its answer (see :func:`connection_lost`), ``turn_id`` the turn id it was
    sent with (named after a lost connection or a passed deadline: asked again with it, a kept turn is not
    repeated). With ``as_json``, stdout also
    gets ``{"error": ...}`` (see :func:`error_fields`; with its ``turn_id``, if any)."""
    fields = error_fields(exc)
    details = fields["message"]

    def named(text: str) -> str:
        return text if labels is None else name_fields(text, labels)

    err.print(f"[red]{exc.code().name}: {escape(shown(named(details)))}[/red]")
    for v in fields["field_violations"]:
        if v["description"] not in details:  # most messages say it already
            err.print(shown(f"  {named(v['field'])}: {v['description']}"), markup=False)
    if connection_lost(exc, received):
        err.print(lost_hint(address, turn_id), markup=False)
    elif turn_id and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        err.print(f"the daemon may have answered and kept this turn as its deadline passed: ask again with --turn-id "
                  f"{turn_id} (and the same --session) to get its answer if it was kept, without a second call",
                  markup=False)
    elif exc.code() == grpc.StatusCode.UNAVAILABLE and not fields["reason"]:  # gRPC's, not the daemon's
        err.print(unreachable_hint(details, address), markup=False)
    if request_refused(exc):
        err.print(refused_hint(exc), markup=False)
    if answer_refused(exc):
        err.print(f"the answer's last message was over the CLI's receive limit ({RECEIVE_BYTES} bytes): the text "
                  "printed above is the whole answer if it was streamed, but its route and cost were not received; "
                  "the call was not retried", markup=False)
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not fields["reason"]:
        err.print("no answer within the deadline (--timeout, or MMROUTER_TIMEOUT)", markup=False)
    said = [f"reason {fields['reason']}" if fields["reason"] else "",
            f"retry in {fields['retry_after_seconds']:g} s" if fields["retry_after_seconds"] is not None else "",
            f"request id {fields['request_id']}" if fields["request_id"] else ""]
    if any(said):
        err.print(shown("; ".join(part for part in said if part)), markup=False)
    if as_json:
        print_json({"error": {**fields, "turn_id": turn_id} if turn_id else fields})
    raise typer.Exit(exit_code(exc, received))


def wait_for_daemon(channel: grpc.Channel, seconds: float) -> None:
    """Wait up to ``seconds`` (``--wait``) for the daemon to take connections: one still starting is
    waited for. If it does not in time, the call that follows fails as it would have."""
    if seconds > 0:
        with suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=seconds)


def message_json(message: Message) -> dict[str, Any]:
    """``message`` as ``--json`` prints it: protobuf's canonical JSON mapping (lowerCamelCase keys, enums
    by name, 64-bit integers as strings) with every field, also those at their default (``0``, ``""``,
    ``[]``), so a script finds each key in every answer."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


#: What gRPC says of the calls under way when their daemon shuts down (SIGTERM) before they end.
DAEMON_STOPPED = "Cancelling all calls"


#: What gRPC says of a call whose stream was under way on a connection that then failed: reset, closed, or
#: silent past its keepalive ping's timeout ("Stream removed (ping timeout)").
STREAM_REMOVED = "Stream removed"


def connection_lost(exc: grpc.RpcError, received: bool = False) -> bool:
    """Whether ``exc`` (gRPC's own UNAVAILABLE, not the daemon's, nor its shutdown) ended a call after the
    connection to the daemon was made: the call had ``received`` some of its answer (headers, a delta), or
    gRPC removed its stream from the connection (a reset, a close, a ping timeout; mid-answer or
    mid-upload). The daemon may have completed such a call. A connection that was never made (no
    daemon, or a TLS one refusing the handshake) is "failed to connect to all addresses"."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE or error_info(exc)[0]:
        return False
    details = exc.details() or ""
    return DAEMON_STOPPED not in details and (received or STREAM_REMOVED in details)


def lost_hint(address: str, turn_id: str = "") -> str:
    """What to know when the connection to the daemon at ``address`` was lost during a call (a session's turn
    sent with ``turn_id``: how to ask again without repeating it)."""
    if turn_id:
        return (f"the connection to the daemon at {address} was lost during the call: the daemon may have completed "
                f"it (answered, counted its cost and kept its session turn); ask again with --turn-id {turn_id} "
                "(and the same --session) to get its answer if it was kept, without a second call")
    return (f"the connection to the daemon at {address} was lost during the call: the daemon may have completed "
            "it (answered, counted its cost and kept its session turn), so retrying may repeat it")


def unreachable_hint(details: str, address: str) -> str:
    """What to check when the daemon at ``address`` could not be reached (gRPC said ``details``), or
    what happened when it stopped while the call ran."""
    if DAEMON_STOPPED in details:
        return f"the daemon at {address} stopped while the call ran (it was shut down): retry once it is back"
    if "handshake" in details.lower():
        return ("the TLS handshake with the daemon failed: MMROUTER_TLS_CA must be the CA that signed its "
                "certificate (MMROUTER_TLS_CERT and MMROUTER_TLS_KEY a client certificate it accepts), and "
                "the daemon must serve TLS (server.tls)")
    if "socket closed" in details.lower() or "connection reset" in details.lower():
        # the daemon (or something) took the connection and closed it: a TLS daemon closes a plaintext
        # one, an mTLS daemon one whose TLS handshake brought no client certificate it accepts
        closed = f"the daemon at {address} closed the connection"
        if not os.environ.get("MMROUTER_TLS_CA"):
            return (f"{closed}: if it serves TLS (server.tls), export MMROUTER_TLS_CA (the CA that signed its "
                    "certificate), and MMROUTER_TLS_CERT and MMROUTER_TLS_KEY if it asks for a client certificate "
                    f"(server.tls.client_ca_file); else is the daemon running at {address}? start it with "
                    "`mmrouter serve`")
        if not os.environ.get("MMROUTER_TLS_CERT"):
            return (f"{closed} in the TLS handshake: if it asks for a client certificate (server.tls.client_ca_file), "
                    "export MMROUTER_TLS_CERT and MMROUTER_TLS_KEY (a certificate that CA signed, and its key)")
        return (f"{closed} in the TLS handshake: it may not accept the client certificate of MMROUTER_TLS_CERT "
                "(it must be signed by the CA of its server.tls.client_ca_file)")
    return (f"is the daemon running at {address}? start it with `mmrouter serve`, or give --address "
            "(or MMROUTER_ADDRESS) where it listens")


def print_route(route, console: Console) -> None:
    from mmrouter.v1 import router_pb2 as pb

    outcome = {pb.RULE_OUTCOME_MATCHED: "[green]matched[/green]", pb.RULE_OUTCOME_SKIPPED: "[yellow]skipped[/yellow]",
               pb.RULE_OUTCOME_NOT_MATCHED: "not matched", pb.RULE_OUTCOME_NOT_EVALUATED: "[dim]not evaluated[/dim]"}
    if not route.provider:  # a refusal's (NO_ROUTE): its rules' outcomes only
        console.print("route: none")
    else:
        console.print(f"route: rule [bold]{escape(shown(route.rule))}[/bold] -> [bold]{escape(shown(route.provider))}/"
                      f"{escape(shown(route.model))}[/bold]"
                      + escape(shown(f"  fallbacks: {', '.join(route.fallbacks)}" if route.fallbacks else ""))
                      + escape(shown(f"  bridges: {', '.join(route.bridges)}" if route.bridges else "")))
    if route.trace:  # none for an answer kept before (a turn asked again by its turn id): no empty table
        table = Table("rule", "outcome", "why", show_header=True, box=None)
        for t in route.trace:
            # cells as Text, not escaped markup: escape() doubles a backslash that ends a value
            table.add_row(Text(shown(t.rule)), outcome.get(t.outcome, "?"), Text(shown(t.reason)))
        console.print(table)
    for step in route.steps:
        console.print(shown(f"step {step.purpose}: {step.provider}/{step.model} {step.latency_ms:.0f} ms "
                            f"${step.usage.cost_usd:.6f}"), markup=False)
    for note in route.notes:
        console.print(shown(f"note: {note}"), markup=False)
