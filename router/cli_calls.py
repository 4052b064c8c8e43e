"""The CLI's side of the wire: channels to the daemon, requests with media (uploaded when large),
and printing its errors and routes."""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from .auth import with_token

M = TypeVar("M", bound=Message)

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line each when piped or logged

CHUNK = 1024 * 1024

#: Media types by extension, before Python's mimetypes (which lacks some and varies by system): the
#: daemon refuses application/octet-stream for images, audio and video.
MIME_BY_EXTENSION = {".m4a": "audio/mp4", ".m4b": "audio/mp4", ".aac": "audio/aac", ".webm": "video/webm",
                  ".weba": "audio/webm", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
                  ".opus": "audio/ogg", ".ogv": "video/ogg", ".wav": "audio/wav", ".mp3": "audio/mpeg",
                  ".mka": "audio/x-matroska", ".mkv": "video/x-matroska", ".mov": "video/quicktime",
                  ".mp4": "video/mp4", ".m4v": "video/mp4", ".pdf": "application/pdf", ".webp": "image/webp"}


def media_parts(images: list[Path], audio: list[Path], video: list[Path], pdf: list[Path]) -> Iterator[tuple[int, Path, str]]:
    from mmrouter.v1 import router_pb2 as pb

    for kind, files in ((pb.MODALITY_IMAGE, images), (pb.MODALITY_AUDIO, audio), (pb.MODALITY_VIDEO, video),
                        (pb.MODALITY_DOCUMENT, pdf)):
        for path in files:
            if not path.is_file():
                err.print(f"[red]no such file: {escape(str(path))}[/red]")
                raise typer.Exit(2)
            mime = MIME_BY_EXTENSION.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            yield kind, path, mime


#: The longest ``upload_file`` waits in all for the daemon to have a free upload place.
UPLOAD_WAIT_SECONDS = 30.0


def upload_file(stub, kind: int, path: Path, mime: str) -> str:
    """Upload ``path`` with UploadMedia and return its media id. While the daemon runs as many uploads
    as it takes (TOO_MANY_UPLOADS), wait as its RetryInfo says and try again, up to
    :data:`UPLOAD_WAIT_SECONDS` in all."""
    from mmrouter.v1 import router_pb2 as pb

    size = path.stat().st_size
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"uploading {path.name}", total=size)

        def messages():
            progress.reset(task)  # a retry sends the file from its start again
            yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=kind, mime_type=mime, filename=path.name,
                                                                   size_bytes=size))
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    progress.advance(task, len(chunk))
                    yield pb.UploadMediaRequest(chunk=chunk)

        waited = 0.0
        while True:
            try:
                return stub.UploadMedia(messages()).media_id
            except grpc.RpcError as exc:
                delay = upload_retry_delay(exc)
                if delay is None or waited + delay > UPLOAD_WAIT_SECONDS:
                    raise
            if not waited:
                err.print(f"[yellow]the daemon has as many uploads under way as it takes: waiting to upload "
                          f"{escape(path.name)} (up to {UPLOAD_WAIT_SECONDS:.0f} s)[/yellow]")
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


def build_request(stub, prompt: str, images, audio, video, pdf, system, task, diarize, speakers, provider, model,
                   tags, session, inline_limit, max_tokens: int = 0):
    """The request of ``ask`` and ``explain``: files over ``inline_limit`` bytes are uploaded first."""
    from mmrouter.v1 import router_pb2 as pb

    if task not in ("auto", "chat", "transcribe"):
        err.print("[red]--task must be auto, chat or transcribe[/red]")
        raise typer.Exit(2)
    parts = []
    for kind, path, mime in media_parts(images, audio, video, pdf):
        media = pb.Media(modality=kind, mime_type=mime, filename=path.name)
        if path.stat().st_size > inline_limit:
            media.media_id = upload_file(stub, kind, path, mime)
        else:
            media.data = path.read_bytes()
        parts.append(pb.Part(media=media))
    if prompt:
        parts.append(pb.Part(text=prompt))
    messages = [pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text=system)])] if system else []
    messages.append(pb.Message(role=pb.ROLE_USER, parts=parts))
    tasks = {"auto": pb.TASK_AUTO, "chat": pb.TASK_CHAT, "transcribe": pb.TASK_TRANSCRIBE}
    return pb.MultimodalRequest(
        messages=messages, session_id=session or "",
        options=pb.Options(task=tasks[task], diarization=diarize, speakers_expected=speakers,
                           max_output_tokens=max_tokens),
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
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024),
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
                err.print(f"[red]cannot read MMROUTER_TLS_{name.upper()} {escape(path)}: {exc.strerror}[/red]")
                raise typer.Exit(2) from None
        credentials = grpc.ssl_channel_credentials(pem["ca"], private_key=pem["key"], certificate_chain=pem["cert"])
        channel = grpc.secure_channel(address, credentials, options=options)
    return with_token(channel, client_token(token))


def client_token(token: str) -> str:
    """``token`` without surrounding whitespace (a secret file's newline), as the daemon reads it; exit
    with a message if it holds what no header can carry (gRPC would fail every call obscurely)."""
    token = token.strip()
    if not all("!" <= c <= "~" for c in token):
        err.print("[red]the token (--token or MMROUTER_TOKEN) holds a space, a control character or a "
                  "character that is not ASCII: no gRPC header can carry it[/red]")
        raise typer.Exit(2)
    return token


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


def call_with_media(build: Callable[[int], Any], call: Callable[[Any], Any], inline_limit: int) -> Any:
    """``call(build(inline_limit))``; if the daemon finds inline media too large (its own
    ``inline_limit_bytes`` is smaller than ours), build again with every file uploaded and retry once.
    Another limit (``max_request_media_bytes``) is not helped by uploading: its error is raised."""
    request = build(inline_limit)
    try:
        return call(request)
    except grpc.RpcError as exc:
        inline = any(p.media.data for m in request.messages for p in m.parts if p.HasField("media"))
        reason, metadata = error_info(exc)
        if not inline or reason != "PAYLOAD_TOO_LARGE" or metadata.get("limit") != "inline_limit_bytes":
            raise
    err.print("[yellow]the daemon takes less inline media than --inline-limit: uploading the files[/yellow]")
    return call(build(0))


def fail(exc: grpc.RpcError) -> None:
    from grpc_status import rpc_status

    err.print(f"[red]{exc.code().name}: {escape(exc.details() or '')}[/red]")
    status = rpc_status.from_call(exc)
    if status is not None:
        from google.rpc import error_details_pb2

        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for v in bad.field_violations:
                    err.print(f"  {escape(v.field)}: {escape(v.description)}")
    raise typer.Exit(1)


def print_route(route, console: Console) -> None:
    from mmrouter.v1 import router_pb2 as pb

    outcome = {pb.RULE_OUTCOME_MATCHED: "[green]matched[/green]", pb.RULE_OUTCOME_SKIPPED: "[yellow]skipped[/yellow]",
               pb.RULE_OUTCOME_NOT_MATCHED: "not matched", pb.RULE_OUTCOME_NOT_EVALUATED: "[dim]not evaluated[/dim]"}
    console.print(f"route: rule [bold]{escape(route.rule)}[/bold] -> [bold]{escape(route.provider)}/"
                  f"{escape(route.model)}[/bold]"
                  + escape(f"  fallbacks: {', '.join(route.fallbacks)}" if route.fallbacks else "")
                  + escape(f"  bridges: {', '.join(route.bridges)}" if route.bridges else ""))
    table = Table("rule", "outcome", "why", show_header=True, box=None)
    for t in route.trace:
        table.add_row(escape(t.rule), outcome.get(t.outcome, "?"), escape(t.reason))
    console.print(table)
    for step in route.steps:
        console.print(f"step {step.purpose}: {step.provider}/{step.model} {step.latency_ms:.0f} ms "
                      f"${step.usage.cost_usd:.6f}")
    for note in route.notes:
        console.print(f"note: {escape(note)}")
