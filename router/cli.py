"""The ``mmrouter`` command: run the daemon and talk to it."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import re
import signal
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import grpc
import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .address import DEFAULT_ADDRESS
from .cli_calls import (
    EXIT_FAILED,
    EXIT_PIPE_CLOSED,
    EXIT_USAGE,
    STDIN_PROMPT,
    STDIN_QUESTION,
    Refused,
    build_request,
    call_with_media,
    daemon_channel,
    err,
    error_fields,
    fail,
    message_json,
    out,
    print_json,
    print_route,
    read_prompt,
    refusal_fields,
    refuse,
    remaining,
    request_labels,
    shown,
    status_detail,
    table_console,
    utf8_text,
    wait_for_daemon,
)
from .errors import ConfigError
from .text import composed
from .types import NO_LARGER_LIMIT
from .version import version

# What only some commands need (pydantic, yaml, the plugins, sqlite's helpers) is imported in them: every
# command, ``mmrouter --version`` and ``ask`` too, starts by importing this module.
if TYPE_CHECKING:
    from pydantic import ValidationError

    from .sessions import SessionStore

log = logging.getLogger(__name__)

#: What writing standard output fails with when its disk or device cannot take more (a pipe's reader
#: gone is EPIPE, exit :data:`EXIT_PIPE_CLOSED`).
STDOUT_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF}


class _CommandGroup(TyperGroup):
    """``mmrouter`` and its commands: standard output is flushed before a command ends, and a failure to
    write it ends the command with exit 141 (its reader went away, ``ask | head -1``, as a process killed
    by SIGPIPE) or with one line on stderr and exit 1 (a full disk): never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                if sys.stdout is not None:
                    sys.stdout.flush()
        except BrokenPipeError:
            _discard_stdout()
            raise typer.Exit(EXIT_PIPE_CLOSED) from None
        except OSError as exc:
            if exc.filename is not None or exc.errno not in STDOUT_WRITE_ERRORS:
                raise
            _discard_stdout()
            with suppress(OSError):  # stderr may be no better off
                err.print(f"[red]cannot write to standard output: {escape(exc.strerror or str(exc))}[/red]")
            raise typer.Exit(EXIT_FAILED) from None


class _JsonErrorsCommand(TyperCommand):
    """A command with ``--json`` (``ask``, ``explain``, ``providers``): with --json, a refusal of the CLI's own
    (:class:`Refused`: a missing file, --turn-id without --session, an empty MMROUTER_ADDRESS) or of typer's
    for an option's value (``--speakers -1``) prints ``{"error": ...}`` on stdout too (see
    :func:`refusal_fields`), as a failed call does: a script reads one shape for every failure. Its stderr
    line and exit code stay. A usage error of typer's parser itself (an unknown option, an option without
    its value) stays typer's alone: whether --json was given is not known then."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)  # the parser takes its arguments out of ``args``
        try:
            return super().parse_args(ctx, args)
        except (Refused, typer.BadParameter) as exc:  # an option's callback refused it, or typer its value
            asked, _, _ = self.make_parser(ctx).parse_args(args=given)  # parsed once already: no usage error
            if asked.get("as_json"):
                print_json({"error": _refusal(exc)})
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Refused as exc:
            if ctx.params.get("as_json"):
                print_json({"error": _refusal(exc)})
            raise


def _refusal(exc: Refused | typer.BadParameter) -> dict[str, Any]:
    """``exc``, a refusal of the CLI's or of typer's, as ``--json`` prints it (see :func:`refusal_fields`): a
    value typer refused is named by its option's long name, as its message does."""
    if isinstance(exc, Refused):
        return refusal_fields(exc.message, exc.field)
    names = exc.param.opts if exc.param is not None else []
    return refusal_fields(exc.format_message(), max(names, key=len) if names else exc.param_hint or "")


def _discard_stdout() -> None:
    """Point standard output at /dev/null once it could not be written: what its buffer still holds is
    dropped at exit, instead of failing again there ("Exception ignored" and exit 120)."""
    if sys.stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


app = typer.Typer(
    cls=_CommandGroup,
    help="mmrouter routes multimodal AI requests (text, images, audio, video, PDFs) to the right provider.\n\n"
    "Start the daemon with `mmrouter serve`, then ask it things with `mmrouter ask`, e.g.\n\n"
    "    mmrouter ask \"What is in this picture?\" --image photo.png\n\n"
    "Send files with --image, --audio, --video and --pdf (repeat each for several). "
    "Commands talk to the daemon at 127.0.0.1:50051 unless given --address host:port "
    "(or MMROUTER_ADDRESS); if the daemon has server.auth_token set, export MMROUTER_TOKEN (or pass --token); "
    "if it serves TLS, export MMROUTER_TLS_CA (and MMROUTER_TLS_CERT, MMROUTER_TLS_KEY for a client certificate). "
    "See `mmrouter ask --help`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # a docstring's paragraphs are wrapped to the terminal, not at their source lines
)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"mmrouter {version()}")
        raise typer.Exit()


@app.callback()
def _options(ctx: typer.Context, show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print mmrouter's version and exit.")] = False,
             ) -> None:
    """Options of every command (the app's help is its ``help``). A command that prints its result
    exits 1 at once when started with standard output closed (``>&-``): its answer would be lost."""
    if sys.stdout is None and ctx.invoked_subcommand != "serve":
        err.print("[red]standard output is closed: the result could not be printed; redirect it to a file "
                  "or /dev/null[/red]")
        raise typer.Exit(EXIT_FAILED)
    _escape_what_cannot_be_written()


def _escape_what_cannot_be_written() -> None:
    """Write what the terminal's encoding cannot show (an emoji on a Latin-1 or Shift-JIS console) as
    ``\\u`` escapes instead of failing: an answer already paid for is printed, not lost to a traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a TextIOWrapper's; not a test's StringIO
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


config_app = typer.Typer(help="Work with routing configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _address(ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
    """The --address of a client command; an empty MMROUTER_ADDRESS is a usage error, as ``--address ""``
    is (typer takes an empty variable as unset: a script's ``MMROUTER_ADDRESS=$ADDR`` with ``$ADDR``
    unset talked to whatever daemon listens on the default address)."""
    source = ctx.get_parameter_source(param.name or "address")
    if os.environ.get("MMROUTER_ADDRESS") == "" and source is not None and source.name == "DEFAULT":
        refuse("MMROUTER_ADDRESS is set but empty: set it to the daemon's host:port (or unix:/path), or unset it "
               "for the default address", "MMROUTER_ADDRESS")
    return value


AddressOption = Annotated[str, typer.Option("--address", "-a", envvar="MMROUTER_ADDRESS", callback=_address,
                                            help="Where the daemon listens (host:port, or unix:/path).")]
TokenOption = Annotated[str, typer.Option(
    "--token", envvar="MMROUTER_TOKEN", show_default=False,
    help="The daemon's server.auth_token, if it has one. Prefer the environment variable: a command line "
         "is visible to other users of this machine.")]


@app.command()
def serve(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Routing file (YAML). Default: the embedded hybrid policy.")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", "-a", envvar="MMROUTER_ADDRESS", show_default=False,
        help=f"Listen on host:port or unix:/path (default: server.address of --config, else {DEFAULT_ADDRESS}).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where media and sessions are kept (default: server.data_dir of "
                                                        "--config, else $MMROUTER_DATA_DIR, else "
                                                        "$XDG_DATA_HOME/mmrouter or ~/.local/share/mmrouter).")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="Write the bound address here once serving.")] = None,
    log_level: Annotated[str | None, typer.Option(
        envvar="MMROUTER_LOG_LEVEL", show_default=False,
        help="debug, info, warning, error or critical (default: server.log_level of --config, else info).")] = None,
    log_format: Annotated[str | None, typer.Option(
        envvar="MMROUTER_LOG_FORMAT", show_default=False,
        help="text, or json: one object per line (default: server.log_format of --config, else text).")] = None,
) -> None:
    """Run the daemon (stop it with Ctrl-C or SIGTERM; in-flight calls are drained).

    SIGHUP re-reads --config and serves its rules, providers, TLS certificate and a rotated
    server.auth_token from then on (other server settings need a restart); a file with mistakes is
    refused and the running one stays. $MMROUTER_AUTH_TOKEN, when set, is the token clients must send,
    in place of server.auth_token (a container configured by its environment alone).
    """
    # a SIGHUP before the daemon serves is held, not fatal (its default action): the daemon reloads on it once
    # it serves (router.server.serve lets it through then), the file it read at start may have changed since
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    # a failure to start is logged as the daemon's log would be: JSON when the option or file asks for it
    json_asked = (log_format or "").strip().lower() == "json" or (log_format is None and _asks_for_json_logs(config))
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held over _quiet_grpc_core's exec: raised here
        _start(ctx, config, address, data_dir, ready_file, log_level, log_format, json_asked)
    except KeyboardInterrupt:  # Ctrl-C before serving (once serving, the daemon stops on it as on SIGTERM)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one: no traceback either
        if json_asked:
            _log_to_stderr("INFO", True)
        _start_failed("interrupted (SIGINT) while starting: the daemon did not start", 130, json_asked)


def _start(ctx: typer.Context, config: Path | None, address: str | None, data_dir: Path | None,
           ready_file: Path | None, log_level: str | None, log_format: str | None, json_asked: bool) -> None:
    """Read the settings of ``serve`` (its options, as described there) and run the daemon until it stops;
    a failure to start ends the command with one message, as JSON when ``json_asked``."""
    from pydantic import ValidationError

    from .config import load_config

    try:
        settings = load_config(config)
        token = os.environ.get(AUTH_TOKEN_VARIABLE)
        if token == "":  # set from an unset variable (compose, a Dockerfile's ENV): it would turn the token off
            raise ConfigError(f"{AUTH_TOKEN_VARIABLE} is set but empty: an empty token would serve every client "
                              f"without one; set the token, or unset {AUTH_TOKEN_VARIABLE} to use server.auth_token")
    except ConfigError as exc:
        if json_asked:
            _log_to_stderr("INFO", True)
        _start_failed(exc.message, 2, json_asked)
    given = {"address": address, "data_dir": data_dir, "log_level": log_level, "log_format": log_format,
             "auth_token": token}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        server = type(settings.server).model_validate({**settings.server.model_dump(), **overrides})
    except ValidationError as exc:
        json_asked = json_asked or (log_format is None and settings.server.log_format == "json")
        if json_asked:
            _log_to_stderr("INFO", True)
        _start_failed(_override_problems(exc, ctx), 2, json_asked)
    overrides = {k: getattr(server, k) for k in overrides}  # as validated: a reload applies them again
    settings = settings.model_copy(update={"server": server})
    json_logs = server.log_format == "json"
    if json_logs:
        _quiet_grpc_core()
    _log_to_stderr(server.log_level, json_logs)
    from .server import StartInterrupted, hold_start_up_interrupts
    from .server import serve as run

    hold_start_up_interrupts()  # from here, a SIGINT stops the start where it can stop cleanly
    try:
        asyncio.run(run(settings, ready_file=ready_file, config_path=config, server_overrides=overrides))
    except StartInterrupted:
        raise KeyboardInterrupt from None  # as before the start: see serve
    except RuntimeError as exc:
        if "Failed to bind" not in str(exc):
            _stopped_by_a_bug(exc)
        _start_failed(_cannot_listen(server.address, from_environment=_from_environment(ctx, "address")),
                      1, json_logs)
    except ConfigError as exc:  # e.g. another daemon holds the data directory
        _start_failed(exc.message, 2, json_logs)
    except sqlite3.Error as exc:
        _start_failed(_sessions_problem(server.data_dir.expanduser() / "sessions.sqlite", exc, starting=True), 1,
                      json_logs)
    except OSError as exc:  # e.g. --data-dir names a file
        data = server.data_dir.expanduser()
        full = _disk_full(data / "sessions.sqlite", exc)
        if full:
            _start_failed(_disk_full_message(data, full), 1, json_logs)
        where = f"{exc.filename}: " if exc.filename else ""
        # the data directory, or a folder above it that the start had to make (a HOME that does not exist)
        ours = exc.filename and (Path(exc.filename).is_relative_to(data) or data.is_relative_to(exc.filename))
        fix = (f"; --data-dir (server.data_dir, else $MMROUTER_DATA_DIR) {data} must be a directory the daemon "
               "can write" if ours else "")
        _start_failed(f"cannot start: {where}{exc.strerror or exc}{fix}", 1, json_logs)
    except Exception as exc:
        _stopped_by_a_bug(exc)


#: The environment variable ``serve`` takes the clients' token from, in place of server.auth_token (never a
#: command-line option: other users of the machine see command lines).
AUTH_TOKEN_VARIABLE = "MMROUTER_AUTH_TOKEN"


def _override_problems(exc: ValidationError, ctx: typer.Context) -> str:
    """What is wrong with the server settings ``serve`` took from its options and environment, each named
    as the operator gave it: ``MMROUTER_LOG_LEVEL`` when it came from that variable, else ``--log-level``."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"server.{name} ({_given_by(ctx, name)}): {message}")
    return "; ".join(problems)


def _given_by(ctx: typer.Context, name: str) -> str:
    """Where the server setting ``name`` given to ``serve`` came from: its option (``--log-level``), or its
    environment variable (``MMROUTER_LOG_LEVEL``) when it was read from there."""
    if name == "auth_token":
        return AUTH_TOKEN_VARIABLE
    param = next((p for p in ctx.command.params if p.name == name), None)
    if param is None:
        return "the configuration"
    if isinstance(param.envvar, str) and _from_environment(ctx, name):
        return param.envvar
    return max(param.opts, key=len)  # --log-level, not -a


def _stopped_by_a_bug(exc: Exception) -> NoReturn:
    """End ``serve`` with exit 1 after an exception nothing expects: one CRITICAL log record in the
    configured format, with the traceback (in json mode inside the object, its ``exception`` field),
    not a traceback box that breaks a JSON log."""
    log.critical("the daemon stopped on an unexpected error (a bug: please report it with the traceback): %s",
                 f"{type(exc).__name__}: {exc}", exc_info=exc)
    raise typer.Exit(1) from None


def _from_environment(ctx: typer.Context, option: str) -> bool:
    """Whether ``option`` of the command took its value from its environment variable (not the command line)."""
    source = ctx.get_parameter_source(option)
    return source is not None and source.name == "ENVIRONMENT"


def _cannot_listen(address: str, *, from_environment: bool) -> str:
    """Why serve stopped when it could not listen on ``address``, naming where the address came from: an
    MMROUTER_ADDRESS exported for the client commands also moves serve off server.address of its --config."""
    if from_environment:
        where = ("it came from the environment's MMROUTER_ADDRESS, which serve reads before server.address: "
                 "unset MMROUTER_ADDRESS (for server.address), or give it or --address")
    else:
        where = "give --address (or server.address)"
    return (f"cannot listen on {address}: the address is in use or invalid; {where} a free host:port, "
            f"e.g. {_other_address(address)}")


#: How many ports after one that could not be listened on ``serve`` tries before it suggests only port 0.
PORTS_TO_TRY = 5


def _other_address(address: str) -> str:
    """Addresses to suggest instead of ``address``, which could not be listened on: the first of the
    :data:`PORTS_TO_TRY` ports after its own that is free on its host (of the default address for a socket
    path or port 0), and any free port (``:0``). A port is tried by binding it, briefly: the next port was
    suggested unchecked, and was often taken too (by the next daemon of the same kind)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0 or host.startswith("unix"):
        host, _, port = DEFAULT_ADDRESS.rpartition(":")
    free = next((p for p in range(int(port) + 1, min(int(port) + PORTS_TO_TRY, 65535) + 1)
                 if _can_listen(host.removeprefix("[").removesuffix("]"), p)), None)
    following = f"{host}:{free}, or " if free is not None else ""
    return f"{following}{host}:0 for any free port"


def _can_listen(host: str, port: int) -> bool:
    """Whether ``port`` can be bound now on every address ``host`` resolves to (the socket is closed at
    once). SO_REUSEADDR, as gRPC binds: a port whose last connections wait in TIME_WAIT counts as free."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:  # a host name that does not resolve
        return False
    for family, kind, proto, _, where in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(where)
        except OSError:
            return False
    return bool(addresses)


def _log_to_stderr(level: str, json_logs: bool) -> None:
    """Send the daemon's log to stderr at ``level``: as text, or one JSON object per line, written by a
    thread of its own through a bounded queue (:mod:`router.logsink`): a reader of stderr that stops
    reading costs log lines (counted), never the daemon."""
    from .logsink import log_to
    from .redact import JsonFormatter, TextFormatter

    formatter = JsonFormatter() if json_logs else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_to(sys.stderr, formatter, level)  # again once the settings are read
    if level != "DEBUG":  # HTTP clients log every upstream request at INFO
        for name in ("httpx", "httpx2", "httpcore", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # The SDKs log whole request bodies at DEBUG (Anthropic's "Request options": the conversation, each PDF
    # and image in base64, one line of many MB): not even a debug log holds what clients send.
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))


#: The loggers of the providers' SDKs, kept at INFO or above (see :func:`_log_to_stderr`).
SDK_LOGGERS = ("anthropic", "openai", "google_genai", "assemblyai")


def _asks_for_json_logs(config: Path | None) -> bool:
    """Whether a routing file that failed to load still says ``server.log_format: json``, so that its
    error is logged as JSON too."""
    if config is None:
        return False
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    server = data.get("server") if isinstance(data, dict) else None
    return isinstance(server, dict) and str(server.get("log_format")).strip().lower() == "json"


def _quiet_grpc_core() -> None:
    """Start this command again with GRPC_VERBOSITY=NONE unless the operator set it: gRPC's C core
    writes plain-text lines straight to stderr (a bind warning, a bad TLS certificate), which break a
    JSON log and repeat a client's own message. It reads the variable once, when grpc is imported, and
    this module has imported it by now."""
    if "GRPC_VERBOSITY" in os.environ:
        return
    os.environ["GRPC_VERBOSITY"] = "NONE"
    # a SIGINT (and a SIGHUP: held by serve already) while the new image imports stays pending, then is raised
    # in serve: a handler does not survive exec, and the imports' KeyboardInterrupt would print a traceback
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # the same pid, for supervisors
    finally:  # reached only when exec failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_failed(message: str, code: int, json_logs: bool) -> NoReturn:
    """End ``serve`` with exit ``code`` and one message: a JSON log record in json mode, else red text."""
    if json_logs:
        log.critical(message)
    else:
        err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code) from None  # no chained traceback


FileList = Annotated[list[Path] | None, typer.Option(help="A file to send (repeat for several).")]
# The request options of ask and explain (explain shows the route ask would take with the same options).
SystemOption = Annotated[str, typer.Option(help="A system prompt.")]
TaskOption = Annotated[str, typer.Option(help="auto, chat or transcribe.")]
DiarizeOption = Annotated[bool, typer.Option("--diarize", help="Label speakers in audio.")]
#: The largest value of the request's int32 fields (options.speakers_expected, max_output_tokens).
INT32_MAX = 2**31 - 1
SpeakersOption = Annotated[int, typer.Option(min=0, max=INT32_MAX, help=(
    "Speakers to expect when diarizing (0: any); a number turns --diarize on."))]
ProviderOption = Annotated[str | None, typer.Option(help="Use this provider instead of the rules' choice.")]
ModelOption = Annotated[str | None, typer.Option(help="Use this model.")]
TagOption = Annotated[list[str] | None, typer.Option(
    help="A tag for routing rules, kept with the call's statistics (repeatable; at most 32, of 1 to 128 characters).")]
MetadataOption = Annotated[list[str] | None, typer.Option(
    "--metadata", metavar="KEY=VALUE",
    help="A key/value pair of the request's metadata, which routing rules match on (repeatable).")]
#: The environment variable ``ask`` and ``explain`` take the session id from when --session is not given:
#: the id is the key to a conversation, and other users of the machine see command lines.
SESSION_VARIABLE = "MMROUTER_SESSION"
SessionOption = Annotated[str | None, typer.Option(
    envvar=SESSION_VARIABLE, show_default=False,
    help="Keep a conversation under this id. Prefer the environment variable: a command line is visible to "
         "other users of this machine, and the id is the key to the conversation.")]
InlineLimitOption = Annotated[int, typer.Option(min=0, help="Files larger than this many bytes go by UploadMedia.")]
#: The longest --timeout and --wait: gRPC takes no deadline past a few thousand years (inf, 1e10 failed at
#: once with DEADLINE_EXCEEDED), and no call of the daemon runs past server.max_call_seconds anyway.
MAX_CLIENT_SECONDS = 1_000_000.0
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", envvar="MMROUTER_TIMEOUT", min=0.0, max=MAX_CLIENT_SECONDS, metavar="SECONDS",
    help="Give up after this many seconds (uploads and the call; a gRPC deadline): exit 6. 0: no limit.")]
WaitOption = Annotated[float, typer.Option(
    "--wait", min=0.0, max=MAX_CLIENT_SECONDS, metavar="SECONDS",
    help="Wait up to this many seconds for a daemon still starting to take connections (0: do not wait).")]
#: What --json prints, for the help of each command that has it.
JSON_MAPPING = ("protobuf's canonical JSON mapping: lowerCamelCase keys, enums by name, 64-bit integers as "
                "strings; every field is printed, also those at their default (0, \"\", [])")
LanguageOption = Annotated[str, typer.Option(
    "--language", show_default=False,
    help="The language spoken in the audio or video, as a BCP-47 tag such as en or pt-BR (default: detected).")]


@app.command(cls=_JsonErrorsCommand)
def ask(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(
        help="Your question or instruction (may be empty for transcription); - reads it from standard input, "
             "out of sight of other users and of the shell history.")] = "",
    image: FileList = None,
    audio: FileList = None,
    video: FileList = None,
    pdf: FileList = None,
    system: SystemOption = "",
    task: TaskOption = "auto",
    diarize: DiarizeOption = False,
    speakers: SpeakersOption = 0,
    provider: ProviderOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    metadata: MetadataOption = None,
    session: SessionOption = None,
    turn_id: Annotated[str | None, typer.Option(
        show_default=False,
        help="With --session: this turn's id (default: a new one). After exit 7 (connection lost), ask again with "
             "the id it printed: a turn the daemon kept gets its kept answer, without a second call.")] = None,
    language: LanguageOption = "",
    inline_limit: InlineLimitOption = 4 * 1024 * 1024,
    max_tokens: Annotated[int, typer.Option(min=0, max=INT32_MAX,
                                            help="Most tokens the answer may have (0: the model's default).")] = 0,
    temperature: Annotated[float | None, typer.Option(
        show_default=False,
        help="Sampling temperature, 0 to 2 (default: the provider's). A model that takes none is called without "
             "it, and the route says so.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help=f"Print the whole answer as JSON, nothing else ({JSON_MAPPING}); when the call fails, "
                       "{\"error\": {...}}: its code, reason, retry delay and request id.")] = False,
    raw: Annotated[bool, typer.Option(
        "--raw", help="Print the answer's text exactly as received, for a file or a program: plain output "
                      "escapes control characters (\\x1b, \\r...) so that a terminal shows them safely.")] = False,
    timeout: TimeoutOption = 0.0,
    wait: WaitOption = 0.0,
    address: AddressOption = DEFAULT_ADDRESS,
    token: TokenOption = "",
) -> None:
    """Ask the daemon: streams the answer, then prints the route, cost and latency (on stderr).

    Exit codes: 0 answered; 1 the call failed otherwise (a provider account's spent quota or credit too); 2
    usage or bad input (the daemon's INVALID_ARGUMENT too); 3 the daemon was not reached; 4 auth refused; 5
    try again later (provider down, rate limited, busy); 6 timed out (--timeout, the daemon's CALL_TIMEOUT); 7
    the connection was lost during the call (the daemon may have completed it: asking again may repeat it);
    130/143 interrupted (SIGINT/SIGTERM); 141 standard output closed by its reader. An error's reason, retry
    delay and request id are on its last line.
    """
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc

    if as_json and raw:
        refuse("--json and --raw are two ways to print the answer: give one", "--raw")
    deadline = time.monotonic() + timeout if timeout else None
    labels = _request_labels(ctx, prompt, image, audio, video, pdf, system)
    prompt, session = read_prompt(prompt), _session(ctx, session)
    if turn_id is not None and not session:
        refuse(f"--turn-id names a turn of a session: give --session (or export {SESSION_VARIABLE})", "--turn-id")
    if session and turn_id is None:  # asked again after a lost connection, the turn is not repeated
        turn_id = uuid.uuid4().hex
    with daemon_channel(address, token) as channel:
        wait_for_daemon(channel, wait)
        stub = router_pb2_grpc.RouterServiceStub(channel)

        def build(limit: int, upload_prompt: bool = False) -> pb.MultimodalRequest:
            return build_request(stub, prompt, image or [], audio or [], video or [], pdf or [], system, task,
                                  diarize, speakers, provider, model, tag, session, limit, max_tokens, language,
                                  deadline=deadline, turn_id=turn_id or "", upload_prompt=upload_prompt,
                                  temperature=temperature, metadata=metadata)

        line_open = [False]  # streamed text printed without a newline at its end yet
        received = [False]  # an event of the answer arrived: a connection lost now was lost during the call
        deltas: list[str] = []  # with --json: the text, in case Done leaves it out (over max_message_bytes)

        def stream(request: pb.MultimodalRequest) -> tuple[pb.Answer | None, bool]:
            answer, streamed, transcripts = None, False, 0
            deltas.clear()  # a retry with the files uploaded starts a new answer
            for event in stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=remaining(deadline)):
                received[0] = True
                kind = event.WhichOneof("event")
                if kind == "text_delta" and as_json:
                    deltas.append(event.text_delta.text)
                elif kind == "text_delta":
                    # Plain writes: rich would wrap long deltas and turn ":smile:" into emoji.
                    text = event.text_delta.text if raw else shown(event.text_delta.text, lines=True)
                    sys.stdout.write(text)
                    sys.stdout.flush()
                    streamed = streamed or bool(event.text_delta.text)
                    line_open[0] = not text.endswith("\n") if text else line_open[0]
                elif kind == "transcript" and not as_json:
                    t = event.transcript
                    lines = [shown(f"[{u.start_seconds:7.2f}s] {('Speaker ' + u.speaker + ': ') if u.speaker else ''}"
                                   f"{u.text}") for u in t.utterances] or [shown(t.text, lines=True)]
                    transcripts += 1  # one per recording, each with its own times
                    if t.text.strip() or any(u.text.strip() for u in t.utterances):  # a silent video's has none
                        err.print(f"[bold]transcript{f' {transcripts}' if transcripts > 1 else ''}[/bold]")
                        err.print("\n".join(lines), markup=False)
                elif kind == "done":
                    answer = event.done.answer
            return answer, streamed

        try:
            answer, streamed = call_with_media(build, stream, inline_limit)
        except grpc.RpcError as exc:
            if line_open[0]:  # the error's own line, not the end of the answer's text
                sys.stdout.write("\n")
                sys.stdout.flush()
            fail(exc, address, labels, as_json=as_json, received=received[0], turn_id=turn_id or "")
    if answer is None:
        err.print("[red]the stream ended without an answer[/red]")
        raise typer.Exit(1)
    if as_json:
        if not answer.text:  # left out of Done (over the daemon's max_message_bytes): the deltas carried it
            answer.text = "".join(deltas)
        print_json(message_json(answer))
        return
    if not streamed and answer.text:  # e.g. a transcription: its text is the answer
        sys.stdout.write(answer.text if raw else shown(answer.text, lines=True))
    sys.stdout.write("\n")
    sys.stdout.flush()
    u = answer.usage
    print_route(answer.route, table_console(stderr=True))
    cached = f" ({u.cached_input_tokens} cached)" if u.cached_input_tokens else ""
    err.print(f"usage: {u.input_tokens} in{cached}, {u.output_tokens} out, {u.audio_seconds:.1f}s audio, "
              f"${u.cost_usd:.6f}, {answer.route.latency_ms:.0f} ms")
    warning = finish_warning(answer)
    if warning:
        err.print(f"[yellow]{warning}[/yellow]")


def _session(ctx: typer.Context, session: str | None) -> str | None:
    """The session id of ``ask`` or ``explain``: --session, else $MMROUTER_SESSION (typer reads it; an
    empty one is no session). One from the environment that is not UTF-8 is a usage error naming the
    variable, not --session."""
    if session is not None and _from_environment(ctx, "session"):
        utf8_text(session, SESSION_VARIABLE)
    return session


def _request_labels(ctx: typer.Context, prompt: str, image: list[Path] | None, audio: list[Path] | None,
                    video: list[Path] | None, pdf: list[Path] | None, system: str) -> dict[str, str]:
    """How the errors of ``ask`` and ``explain`` name the request's fields (see :func:`request_labels`): by the
    options given, the question argument ``prompt`` (``-`` for standard input), and --session or
    $MMROUTER_SESSION, as the session id came."""
    question = STDIN_QUESTION if prompt == STDIN_PROMPT else "the question" if prompt else ""
    session = SESSION_VARIABLE if _from_environment(ctx, "session") else "--session"
    return request_labels(image or [], audio or [], video or [], pdf or [], system, question, session)


#: What ``ask`` says when an answer did not simply finish (by ``Answer.finish_reason``).
FINISH_WARNINGS = {
    2: "the answer was cut at the output limit: ask again with a larger --max-tokens",  # FINISH_REASON_LENGTH
    3: "the provider's content filter stopped or withheld the answer",  # FINISH_REASON_CONTENT_FILTER
    4: "the model declined to answer",  # FINISH_REASON_REFUSAL
}


def finish_warning(answer: Any) -> str | None:
    """What ``ask`` says when ``answer`` (a ``pb.Answer``) did not simply finish (:data:`FINISH_WARNINGS`), or None.
    An answer cut short whose route note says a larger limit will not help (the model's context window filled,
    or its most tokens were asked for: :data:`router.types.NO_LARGER_LIMIT`) is not told to ask with a larger
    --max-tokens."""
    if answer.finish_reason == 2 and any(NO_LARGER_LIMIT in note for note in answer.route.notes):
        return "the answer was cut, and a larger --max-tokens will not help (see the note above)"
    return FINISH_WARNINGS.get(answer.finish_reason)


@app.command(cls=_JsonErrorsCommand)
def explain(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(
        help="The question, as you would ask it; - reads it from standard input.")] = "",
    image: FileList = None,
    audio: FileList = None,
    video: FileList = None,
    pdf: FileList = None,
    system: SystemOption = "",
    task: TaskOption = "auto",
    diarize: DiarizeOption = False,
    speakers: SpeakersOption = 0,
    provider: ProviderOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    metadata: MetadataOption = None,
    session: Annotated[str | None, typer.Option(
        envvar=SESSION_VARIABLE, show_default=False,
        help="Route as a turn of this session would be (its earlier turns count); nothing is added to it.")] = None,
    language: LanguageOption = "",
    inline_limit: InlineLimitOption = 4 * 1024 * 1024,
    as_json: Annotated[bool, typer.Option(
        "--json", help=f"Print the Route as JSON ({JSON_MAPPING}); when the call fails, {{\"error\": {{...}}}} (with "
        "NO_ROUTE's \"route\": each rule's outcome).")] = False,
    timeout: TimeoutOption = 0.0,
    wait: WaitOption = 0.0,
    address: AddressOption = DEFAULT_ADDRESS,
    token: TokenOption = "",
) -> None:
    """Show how a request would be routed, rule by rule, without calling any provider.

    It takes ask's options (but --max-tokens, which does not change the route), so it shows the route
    that ask with the same options would take (with --session, the session's earlier turns count as
    they would; nothing is added to it). Files over --inline-limit are uploaded, and kept in the
    daemon's media store as ask's are. Exit codes are ask's. A request no rule can route (NO_ROUTE)
    gets the rules' table too, then the refusal.
    """
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc

    deadline = time.monotonic() + timeout if timeout else None
    labels = _request_labels(ctx, prompt, image, audio, video, pdf, system)
    prompt, session = read_prompt(prompt), _session(ctx, session)
    with daemon_channel(address, token) as channel:
        wait_for_daemon(channel, wait)
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            route = call_with_media(
                lambda limit, upload_prompt=False: build_request(
                    stub, prompt, image or [], audio or [], video or [], pdf or [], system, task, diarize, speakers,
                    provider, model, tag, session, limit, language=language, deadline=deadline,
                    upload_prompt=upload_prompt, metadata=metadata),
                lambda request: stub.ExplainRoute(pb.ExplainRouteRequest(request=request),
                                                  timeout=remaining(deadline)).route,
                inline_limit)
        except grpc.RpcError as exc:
            if (traced := status_detail(exc, pb.Route)) is None:
                fail(exc, address, labels, as_json=as_json)
            # NO_ROUTE: the rules' outcomes (the error's Route), then the refusal (stderr) and its exit code
            if as_json:
                print_json({"route": message_json(traced), "error": error_fields(exc)})
            else:
                print_route(traced, table_console())
            fail(exc, address, labels)
    if as_json:
        print_json(message_json(route))
        return
    print_route(route, table_console())  # piped without COLUMNS, a reason stays on its row's line


@app.command(cls=_JsonErrorsCommand)
def providers(address: AddressOption = DEFAULT_ADDRESS, token: TokenOption = "",
              as_json: Annotated[bool, typer.Option("--json", help="Print ListProviders' answer as JSON (for "
                                                    "monitoring): states, reasons, models, recent health; "
                                                    f"{JSON_MAPPING}.")] = False,
              wait: WaitOption = 0.0,
              ) -> None:
    """List the daemon's providers: ready, not configured (and why), broken (and why), disabled.
    Exit codes are ask's (3: the daemon was not reached)."""
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc

    with daemon_channel(address, token) as channel:
        wait_for_daemon(channel, wait)
        try:
            listing = router_pb2_grpc.RouterServiceStub(channel).ListProviders(pb.ListProvidersRequest())
        except grpc.RpcError as exc:
            fail(exc, address, as_json=as_json)
    if as_json:
        print_json(message_json(listing))
        return
    # Names and states are never cut short (even at 80 columns); models and reasons wrap, nothing is cut.
    # Piped (a CI log), without COLUMNS, nothing wraps either: see table_console.
    console = table_console()
    table = Table(Column("provider", no_wrap=True), Column("plugin", no_wrap=True), Column("state", no_wrap=True),
                  Column("models", overflow="fold"), Column("reason", overflow="fold"),
                  Column("last 5 min", overflow="fold"))
    for p in listing.providers:
        state = pb.ProviderState.Name(p.state).removeprefix("PROVIDER_STATE_").lower()
        # cells as Text, not escaped markup: escape() doubles a backslash that ends a value
        table.add_row(*(Text(shown(cell)) for cell in (p.name, p.plugin, state, ", ".join(m.name for m in p.models),
                                                       p.reason, recent_calls(p.health))))
    console.print(table)
    now = time.time()
    for p in listing.providers:  # below the table, one line each: a message is too long for a cell
        if p.health.last_failure_unix_seconds:
            console.print(shown(last_failure(p.name, p.health, now)), markup=False)
        for m in p.models:
            if m.cooldown_seconds:
                console.print(shown(f"{p.name}/{m.name} is cooling down for another {math.ceil(m.cooldown_seconds):d} s "
                                    f"({m.cooldown_reason}): rules try it after their other targets"), markup=False)


#: The most characters of a provider's last failure message ``providers`` shows (the daemon keeps 500).
FAILURE_CHARS = 200


def recent_calls(health) -> str:
    """A provider's ``ProviderHealth`` calls of the window, e.g. ``0 ok, 3 failed``; empty for a
    provider never called."""
    if not health.window_seconds:
        return ""
    return f"{health.succeeded_calls} ok, {health.failed_calls} failed"


def last_failure(name: str, health, now: float) -> str:
    """The line saying when a provider's last call failed (it may be older than the window), why and
    its message, cut to :data:`FAILURE_CHARS`."""
    message = health.last_failure_message
    if len(message) > FAILURE_CHARS:
        message = message[:FAILURE_CHARS - 1] + "…"
    return (f"last failure of {name}, {_ago(now - health.last_failure_unix_seconds)}: "
            f"{health.last_failure_reason}: {message}")


def _ago(seconds: float) -> str:
    """``seconds`` (a past duration) as ``12 s ago``, ``3 min ago``, ``5 h ago`` or ``2 d ago``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@app.command()
def reset(ctx: typer.Context,
          session_id: Annotated[str | None, typer.Argument(
              envvar=SESSION_VARIABLE, show_default=False, metavar="SESSION_ID",
              help=f"The session to forget (default: ${SESSION_VARIABLE}: the id is the key to the conversation, "
                   "and a command line is visible to other users of this machine).")] = None,
          address: AddressOption = DEFAULT_ADDRESS, token: TokenOption = "",
          erase_media: Annotated[bool, typer.Option(
              "--erase-media", help="Also delete now the media the session sent (files, records and their kept "
                                    "texts), unless another session refers to them: to erase a customer's data.")]
          = False) -> None:
    """Forget a session's conversation (ResetSession): its stored turns are removed, and the next ask
    with its id starts afresh. Prints how many stored messages were removed (a turn keeps two: the
    question and its answer), and with --erase-media how many media; a session the daemon does not
    know is an error (exit 1)."""
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc

    if not session_id:
        err.print(f"[red]give the session to reset: mmrouter reset SESSION_ID, or export {SESSION_VARIABLE}[/red]")
        raise typer.Exit(2)
    utf8_text(session_id, SESSION_VARIABLE if _from_environment(ctx, "session_id") else "SESSION_ID")
    with daemon_channel(address, token) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).ResetSession(
                pb.ResetSessionRequest(session_id=session_id, erase_media=erase_media))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                err.print(f"[red]NOT_FOUND: the daemon at {escape(address)} has no such session (no stored turn, "
                          "no call under way): nothing to reset; check the id[/red]")
                raise typer.Exit(1) from None
            fail(exc, address)
    media = f", {reply.media_removed} media removed" if erase_media else ""
    out.print(f"session reset: {reply.turns_removed} stored message(s) removed{media}", markup=False)


@app.command(name="delete-media", cls=_JsonErrorsCommand)
def delete_media(media_ids: Annotated[list[str], typer.Argument(
                     metavar="MEDIA_ID", show_default=False,
                     help="The media to delete, as UploadMedia returned their ids (64 lower-case hex digits).")],
                 address: AddressOption = DEFAULT_ADDRESS, token: TokenOption = "",
                 as_json: Annotated[bool, typer.Option(
                     "--json", help=f"Print DeleteMedia's answer as JSON ({JSON_MAPPING}); when the call fails, "
                                    "{\"error\": {...}}.")] = False) -> None:
    """Delete stored media now (DeleteMedia): their files, records and the texts bridges kept for them
    (transcripts, PDF text), and the providers' copies of them, to erase a customer's data. Prints one
    line per id: deleted, not found, or kept because sessions refer to it (`reset --erase-media` of each
    deletes it). Exits 0 when every id was deleted, 1 when one was not found or was kept; other exit
    codes are ask's."""
    from mmrouter.v1 import router_pb2 as pb
    from mmrouter.v1 import router_pb2_grpc

    from .media import is_media_id

    for number, media_id in enumerate(media_ids, 1):
        if not is_media_id(media_id):
            refuse(f"MEDIA_ID #{number} is not a media id: give the ids as UploadMedia returned them "
                   "(64 lower-case hex digits, the sha256 of the file)", f"MEDIA_ID #{number}")
    with daemon_channel(address, token) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).DeleteMedia(pb.DeleteMediaRequest(media_ids=media_ids))
        except grpc.RpcError as exc:
            fail(exc, address, as_json=as_json)
    if as_json:
        print_json(message_json(reply))
    else:
        for media in reply.media:
            out.print(f"{media.media_id}: {_deletion(media)}", markup=False, soft_wrap=True)  # a line each
    if any(media.status != pb.MEDIA_DELETION_STATUS_DELETED for media in reply.media):
        raise typer.Exit(EXIT_FAILED)


def _deletion(media: Any) -> str:
    """What DeleteMedia did with one media (a ``MediaDeletion``), as ``delete-media`` says it."""
    from mmrouter.v1 import router_pb2 as pb

    if media.status == pb.MEDIA_DELETION_STATUS_DELETED:
        return "deleted"
    if media.status == pb.MEDIA_DELETION_STATUS_KEPT_IN_SESSION:
        return (f"kept: {media.sessions} session(s) refer to it; `mmrouter reset --erase-media` of each "
                "deletes it")
    return "not found: nothing is stored under this id (the providers were asked to delete their copies all the same)"


DataDirOption = Annotated[Path | None, typer.Option(help="The daemon's data directory (default: server.data_dir "
                                                            "of --config, else the default data directory).")]
DaemonConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="The daemon's routing file (YAML): its server.data_dir is used unless --data-dir is given.")]


def _data_dir(config: Path | None, data_dir: Path | None) -> Path:
    """The daemon's data directory as serve finds it: --data-dir, else server.data_dir of the --config file,
    else the default."""
    if data_dir is not None:
        return data_dir.expanduser()
    from .config import data_dir_of, default_data_dir

    try:
        return default_data_dir() if config is None else data_dir_of(config).expanduser()
    except ConfigError as exc:  # an empty MMROUTER_DATA_DIR, a bad config file
        err.print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(2) from None


def _sessions_problem(path: Path, exc: Exception, *, full_fix: str | None = None, starting: bool = False) -> str:
    """One line saying why ``path`` is not a usable sessions database; of a full disk, what to do is
    ``full_fix`` (see :func:`_disk_full_message`); of a damaged one in a daemon's data directory, how to
    recover, for ``serve`` when ``starting`` (no daemon runs on it), else for a command run beside the daemon.
    A file that is no database in a folder no daemon used is taken for a wrong --data-dir."""
    from .sessions import Trouble, damaged_fix, storage_fault

    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return (f"the sessions database {path} stayed locked by another process (the daemon busy writing) "
                "for longer than the wait: try again")
    full = _disk_full(path, exc)
    if full:
        return _disk_full_message(path.parent, full, full_fix)
    fault = storage_fault(exc) if isinstance(exc, sqlite3.Error) else None
    if fault is not None and fault.kind is Trouble.DAMAGED and path.is_file() and _used_by_a_daemon(path.parent):
        steps = (f"{damaged_fix(path)}, then start the daemon again" if starting
                 else f"stop the daemon, {damaged_fix(path)}, then start it again and run this command again")
        return f"the sessions database {path} is damaged ({exc}): {steps}"
    why = "is a directory" if path.is_dir() else f"cannot be used ({exc})"
    return f"the sessions database {path} {why}: point --data-dir (or server.data_dir) at the daemon's data directory"


def _used_by_a_daemon(folder: Path) -> bool:
    """Whether ``folder`` holds what a daemon leaves in its data directory: its lock file, its media folder."""
    return (folder / "daemon.lock").is_file() or (folder / "media").is_dir()


#: What prune says to do of a full disk when it removed the media it could (the sessions' deletes need room),
#: after a --older-than longer than the hour of media it always keeps (see _prune_full_fix)...
PRUNE_FULL_MORE_MEDIA = "free space on it (a smaller --older-than removes more media), then prune again"
#: ... after one no longer than that hour: no smaller one removes more...
PRUNE_FULL_NO_MORE_MEDIA = ("free space on it by other means, or prune again in an hour: the media left were used "
                            "within the last hour, which prune always keeps (calls under way may still read them)")
#: ... and when it stopped before removing anything.
PRUNE_FULL_OTHERWISE = "free space on it by other means (prune removed nothing), then prune again"


def _prune_full_fix(older_than: float) -> str:
    """What prune with ``--older-than`` days says to do of a full disk once it removed the media it could:
    a smaller --older-than, unless it was no longer than the last hour, whose media prune always keeps
    (:data:`router.media.PRUNE_GRACE_SECONDS`: calls under way may still read them)."""
    from .media import PRUNE_GRACE_SECONDS

    return PRUNE_FULL_MORE_MEDIA if older_than * 86_400 > PRUNE_GRACE_SECONDS else PRUNE_FULL_NO_MORE_MEDIA


def _disk_full_message(data_dir: Path, why: str, fix: str | None = None) -> str:
    """The disk of ``data_dir`` is full, and ``fix``, what to do (by default: free space, e.g. with prune,
    which prune itself must not say)."""
    fix = fix or "free space, e.g. with `mmrouter prune`, and try again"
    return f"the data directory's disk is full ({why}; {data_dir}): {fix}"


def _disk_full(path: Path, exc: Exception) -> str | None:
    """Why ``exc``, raised using the sessions database ``path``, means its disk is full, or None.

    sqlite says SQLITE_FULL only for some writes: a -shm or WAL write that failed for room is a
    "disk I/O error", so for those a probe write tells whether there is room.
    """
    from .media import NO_ROOM

    if isinstance(exc, OSError):
        return exc.strerror if exc.errno in NO_ROOM else None
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_FULL:
        return _no_room(path.parent) or "database or disk is full"
    return _no_room(path.parent) if code == sqlite3.SQLITE_IOERR else None


def _no_room(folder: Path) -> str | None:
    """The system's reason when ``folder``'s disk has no room for a few KiB (ENOSPC, EDQUOT, EFBIG), else None."""
    from .media import NO_ROOM
    from .sessions import write_problem

    problem = write_problem(folder)
    return problem.strerror if problem is not None and problem.errno in NO_ROOM else None


def _bad_sessions(path: Path, exc: Exception, *, full_fix: str | None = None) -> NoReturn:
    """Exit with one line saying why ``path`` is not a usable sessions database (see :func:`_sessions_problem`)."""
    _start_failed(_sessions_problem(path, exc, full_fix=full_fix), 1, json_logs=False)


@contextmanager
def _sessions(path: Path) -> Iterator[SessionStore]:
    """The :class:`SessionStore` at ``path``, closed afterwards; a file that is no sqlite database (or a
    directory) is a one-line error."""
    from .sessions import SessionStore

    try:
        store = SessionStore(path)
    except (sqlite3.Error, OSError) as exc:
        _bad_sessions(path, exc)
    try:
        yield store
    except sqlite3.Error as exc:
        _bad_sessions(path, exc)
    finally:
        store.close()


class StatsGroup(StrEnum):
    """What ``stats`` groups the calls by, besides provider, model and step."""

    RULE = "rule"
    TAG = "tag"


#: How ``stats --by tag`` names the calls of requests without tags (and those recorded before tags were kept).
UNTAGGED = "(no tag)"


@app.command()
def stats(data_dir: DataDirOption = None,
          config: DaemonConfigOption = None,
          since: Annotated[float | None, typer.Option(
              "--since", min=0.0, help="Only the last this many days (fractions allowed: 0.04 is about an hour).")] = None,
          by: Annotated[StatsGroup, typer.Option(
              "--by", help="Group by routing rule, or by request tag (--tag of ask, RoutingHints.tags): a call of "
                           "a request with several tags counts under each.")] = StatsGroup.RULE,
          tag: Annotated[str | None, typer.Option(
              "--tag", help="Only the calls of requests that carried this tag.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Calls, latency and cost per rule (or request tag), provider, model and step (a bridge is one step,
    whatever formats it converted), from the daemon's records (all of them still kept, see prune, or those
    of the last --since days)."""
    if tag is not None:
        tag = composed(utf8_text(tag, "--tag"))  # requests' tags are kept composed (NFC)
    path = _data_dir(config, data_dir) / "sessions.sqlite"
    if not path.exists():
        err.print(f"[red]no records at {escape(str(path))}: has the daemon answered anything yet?[/red]")
        raise typer.Exit(1)
    by_tag = by is StatsGroup.TAG
    with _sessions(path) as store:
        rows = store.stats(0.0 if since is None else time.time() - since * 86400, by_tag=by_tag, tag=tag)
    if as_json:
        print_json(rows)
        return
    # Names are never cut short (at 80 columns): they wrap, as in `providers`; piped without COLUMNS,
    # nothing wraps (see table_console).
    table = Table(*(Column(name, overflow="fold") for name in ("tag" if by_tag else "rule", "provider/model", "step")),
                  *(Column(name, no_wrap=True, justify="right") for name in ("calls", "mean ms", "max ms", "cost $")))
    for r in rows:
        group = (r["tag"] if r["tag"] is not None else UNTAGGED) if by_tag else r["rule"]
        table.add_row(*(Text(shown(cell)) for cell in (group, f"{r['provider']}/{r['model']}", r["purpose"])),
                      str(r["calls"]),
                      f"{r['mean_latency_ms']:.0f}", f"{r['max_latency_ms']:.0f}", f"{r['cost_usd']:.6f}")
    table_console().print(table)


@app.command()
def prune(older_than: Annotated[float | None, typer.Option(
              "--older-than", min=0.0, show_default=False, help="Age in days (fractions allowed).")] = None,
          tag: Annotated[list[str] | None, typer.Option(
              "--tag", show_default=False, help="Also remove the statistics rows of requests with this tag, "
                                                "whatever their age (repeatable); alone, nothing else.")] = None,
          data_dir: DataDirOption = None,
          config: DaemonConfigOption = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False) -> None:
    """Free the data directory: sessions idle for --older-than days, statistics rows that old, and
    media neither uploaded nor used in that time (nor within the last hour, whatever the age given)
    that no remaining session refers to. With --tag T, the statistics rows of requests tagged T go
    too, whatever their age; --tag without --older-than removes those rows and nothing else.

    Safe while the daemon runs (run it from cron); a request naming a media id being removed then
    gets MEDIA_NOT_FOUND, as for any unknown id. Works on a full disk: media go first (deleting
    needs no room); when the sessions database cannot be written, a warning says so.
    """
    from .media import STALE_TEMP_SECONDS, MediaStore

    tags = [composed(utf8_text(t, "--tag")) for t in tag or []]  # requests' tags are kept composed (NFC)
    if older_than is None and not tags:
        err.print("[red]say what to prune: --older-than DAYS, or --tag TAG for one tag's statistics rows[/red]")
        raise typer.Exit(2)
    root = _data_dir(config, data_dir)
    path, media_root = root / "sessions.sqlite", root / "media"
    if not path.exists() and not media_root.is_dir():
        err.print(f"[red]no data at {escape(str(root))}: is this the daemon's data directory?[/red]")
        raise typer.Exit(1)
    for folder in (media_root, media_root / "tmp"):
        if folder.exists() and not folder.is_dir():
            _prune_failed(f"{folder} must be a directory, not a file: point --data-dir (or server.data_dir) at "
                          "the daemon's data directory")
    # without --older-than nothing is old enough: only the tags' rows go
    before = 0.0 if older_than is None else time.time() - older_than * 86_400
    full_fix = PRUNE_FULL_OTHERWISE if older_than is None else _prune_full_fix(older_than)
    # Nothing is created: neither a sessions database where there is none, nor a media folder. A dry
    # run writes nothing at all: it reads the database read-only (and does not migrate an old one).
    if dry_run or not path.exists():
        sessions, calls, keep = _preview_prune(path, before, tags) if path.exists() else (0, 0, set())
        store, writable = None, not dry_run
    else:
        store, writable = _sessions_to_prune(path, full_fix)
    files = size = temp_files = temp_size = 0
    try:
        # Read-only first: what the remaining sessions refer to. Media go next, since deleting files
        # needs no room, while the sessions' deletes need room in the WAL and fail on a full disk.
        if store is not None:
            sessions, calls, keep = store.prune(before, tags=tags, dry_run=True)
        media = MediaStore(media_root, 1, clear_temp=False, create=False)
        try:
            if older_than is not None and media_root.is_dir():
                files, size = media.prune(before, keep, dry_run=dry_run)
            if older_than is not None and (media_root / "tmp").is_dir():
                temp_files, temp_size = media.remove_temp_files(STALE_TEMP_SECONDS, dry_run=dry_run)
        except OSError as exc:  # e.g. a folder this user may not read
            where = f"{exc.filename}: " if exc.filename else ""
            _prune_failed(f"cannot prune the media in {media_root}: {where}{exc.strerror or exc}")
        if store is not None and writable:
            try:
                sessions, calls, _ = store.prune(before, tags=tags)
            except sqlite3.Error as exc:
                writable = False  # the media are freed all the same: a warning, not a failure
                problem = _sessions_problem(path, exc, full_fix=full_fix)
                err.print(f"[yellow]{escape(f'sessions and statistics rows were not all pruned: {problem}')}[/yellow]")
    except sqlite3.Error as exc:
        _bad_sessions(path, exc, full_fix=PRUNE_FULL_OTHERWISE)
    finally:
        if store is not None:
            store.close()
    if older_than is None:  # only the tags' rows
        done = "would remove" if dry_run else "removed" if writable else "could not remove"
        out.print(f"{done} {calls} statistics row(s) tagged {', '.join(map(shown, tags))}; nothing else",
                  markup=False)
        return
    # one part a line where a width is known (a terminal, or COLUMNS): at 80 columns the whole sentence
    # wrapped mid-clause; piped without COLUMNS (cron, a script's capture) it is one line, never wrapped
    lines = [f"{sessions} session(s), {calls} statistics row(s) and"] if writable or dry_run else []
    lines.append(f"{files} media file(s) ({size / 2**20:.1f} MiB)")
    if temp_files:
        lines[-1] += ","
        lines.append(f"{temp_files} temp file(s) of interrupted uploads ({temp_size / 2**20:.1f} MiB)")
    lines[0] = f"{'would remove' if dry_run else 'removed'} {lines[0]}"
    lines[-1] += ";"
    lines.append(f"{len(keep)} media kept for sessions")
    width_known = out.is_terminal or bool(os.environ.get("COLUMNS"))
    out.print(("\n" if width_known else " ").join(lines), markup=False, soft_wrap=not width_known)


def _prune_failed(message: str) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(1)


def _preview_prune(path: Path, before: float, tags: list[str]) -> tuple[int, int, set[str]]:
    """:func:`router.sessions.preview_prune`, a database that cannot be read reported as prune's are."""
    from .sessions import preview_prune

    try:
        return preview_prune(path, before, tags)
    except sqlite3.Error as exc:
        _bad_sessions(path, exc, full_fix=PRUNE_FULL_OTHERWISE)


def _sessions_to_prune(path: Path, full_fix: str) -> tuple[SessionStore, bool]:
    """The sessions database at ``path`` and whether it can be written. On a full disk with no daemon
    running, it may open only read-only (re-creating its -shm file needs room): the media can then
    be pruned still, the sessions not (a warning says so, with ``full_fix``, what to do)."""
    from .sessions import SessionStore

    try:
        return SessionStore(path), True
    except (sqlite3.Error, OSError) as exc:
        wal = path.with_name(f"{path.name}-wal")
        unwritten = wal.exists() and wal.stat().st_size > 0  # turns the file does not hold yet: not read-only
        if not _disk_full(path, exc) or not path.is_file() or unwritten:
            _bad_sessions(path, exc, full_fix=PRUNE_FULL_OTHERWISE)
        problem = _sessions_problem(path, exc, full_fix=full_fix)
        warning = f"sessions and statistics rows are not pruned, media are: {problem}"
    err.print(f"[yellow]{escape(warning)}[/yellow]")
    try:
        return SessionStore(path, frozen=True), False
    except sqlite3.Error as exc:
        _bad_sessions(path, exc, full_fix=PRUNE_FULL_OTHERWISE)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The routing file to check.")],
                 strict: Annotated[bool, typer.Option(
                     "--strict", help="Fail (exit 1) on warnings too: a CI gate.")] = False,
                 as_json: Annotated[bool, typer.Option(
                     "--json", help="Print the result as JSON on stdout: ok, and each problem's severity "
                                    "(error or warning), key, line and message (for CI annotations).")] = False,
                 ) -> None:
    """Validate a routing file: every key, value and target, with file and line for each problem, and each
    provider section through its installed plugin; warn of rules that can never serve a request.

    Exit codes: 0 valid (warnings allowed, but with --strict); 1 a problem in the file's content (not
    UTF-8, invalid YAML, a bad key or value; a warning with --strict); 2 no file to read at that path.
    Errors and warnings are told apart by --json's ``severity`` (and in the text by their colour).
    """
    from .config import did_you_mean, key_where, parse_config, read_config_file, unknown_models
    from .config_warnings import broken_provider_errors, config_warnings, unknown_providers
    from .plugins import GROUP, load_registry

    problems: list[tuple[str, str]] = []  # (severity, message), in the order found
    try:
        text = read_config_file(file)
    except ConfigError as exc:
        read = file.is_file() and os.access(file, os.R_OK)  # read, but not UTF-8: a problem of its content
        _check_failed(file, [("error", exc.message)], EXIT_FAILED if read else EXIT_USAGE, as_json)
    try:
        config = parse_config(text, str(file))
    except ConfigError as exc:
        _check_failed(file, [("error", exc.message)], EXIT_FAILED, as_json)
    # secrets are masked here as in the daemon's log (a check's output often lands in a CI log)
    from . import redact
    from .core import config_names, secrets_of

    logging.basicConfig(level="WARNING", stream=sys.stderr, format="%(message)s")
    names = config_names(config)  # a placeholder key equal to a name is not masked (see core.config_secrets)
    log_filter = redact.install(secrets_of(config.providers, config.server.auth_token, names=names))
    with _plugins_log_below(logging.ERROR):  # each broken provider is printed below, once
        registry = load_registry(config.providers, disabled=config.plugins.disabled)  # plugins check their sections
    log_filter.add(secrets_of(config.providers, names=names))  # the key variables of the settings classes just imported
    for problem in broken_provider_errors(config, registry, text, str(file)):
        problems.append(("error", redact.mask(problem, log_filter.secrets)))
    for name in sorted(set(config.providers) - set(registry.entries)):
        problems.append(("warning", f"providers.{name}: no installed plugin offers a provider {name!r}; the section "
                                    f"is not used here{key_where(config, f'providers.{name}')}"
                                    f"{did_you_mean(name, registry.entries)}"))
    for key, name, hint in unknown_providers(config, registry):
        problems.append(_not_installed(key, f"no provider {name!r} here: no installed plugin offers it", hint))
    installed = {ep.name for ep in entry_points(group=GROUP)}
    for j, name in enumerate(config.plugins.disabled):
        if name not in installed:
            key = f"plugins.disabled.{j}"
            problems.append(_not_installed(key, f"no installed plugin is called {name!r}",
                                           f"{key_where(config, key)}{did_you_mean(name, installed)}"))
    problems += [("error", problem) for _, problem in unknown_models(config, registry.entries)]
    problems += [("warning", redact.mask(warning, log_filter.secrets)) for warning in config_warnings(config, registry)]
    errors = sum(severity == "error" for severity, _ in problems)
    warned = len(problems) - errors
    if errors:
        _check_failed(file, problems, EXIT_FAILED, as_json)
    if strict and warned:
        _check_failed(file, problems, EXIT_FAILED, as_json, summary=f"{warned} warning(s), failing as --strict asks")
    if as_json:
        print_json(_check_report(file, problems, ok=True))
        return
    _print_problems(problems)
    # one line, however long the path: soft_wrap, as "grep ': OK'" in a CI log expects
    out.print(f"{file}: OK — {len(config.routes)} rule(s), default {config.default or '(none)'}", markup=False,
              soft_wrap=True)


def _check_failed(file: Path, problems: list[tuple[str, str]], code: int, as_json: bool,
                  summary: str | None = None) -> NoReturn:
    """End ``config check`` with exit ``code``: ``problems`` in red (errors) and yellow (warnings) on stderr
    with the ``summary`` line last, or with ``as_json`` the JSON report on stdout."""
    if as_json:
        print_json(_check_report(file, problems, ok=False))
    else:
        _print_problems(problems)
        if summary:
            err.print(f"[red]{escape(summary)}[/red]")
    raise typer.Exit(code)


def _print_problems(problems: list[tuple[str, str]]) -> None:
    """Each of ``config check``'s problems on stderr, errors in red and warnings in yellow."""
    for severity, message in problems:
        colour = "red" if severity == "error" else "yellow"
        err.print(f"[{colour}]{escape(message)}[/{colour}]")


#: The key and the line a problem of ``config check`` names: ``routes.0.use: ...``, ``routes.0 'a': ...``,
#: ``... (router.yaml, line 4)``, ``router.yaml, line 4: duplicate key ...``.
_PROBLEM_KEY = re.compile(r"^([A-Za-z0-9_.-]+)(?: '[^']*')?: ")
_PROBLEM_LINE = re.compile(r"\bline (\d+)\b")


def _check_report(file: Path, problems: list[tuple[str, str]], *, ok: bool) -> dict[str, Any]:
    """``config check --json``'s report: ``{"file", "ok", "problems": [{"severity", "key", "line", "message"}]}``,
    one problem per key (a file's several schema errors, said as one message, are split), ``key`` and ``line``
    null when the problem names none."""
    report: list[dict[str, Any]] = []
    for severity, message in problems:
        parts = message.removeprefix("invalid configuration:\n").split("\n  ")
        for part in (p.strip() for p in parts):
            key, line = _PROBLEM_KEY.match(part), _PROBLEM_LINE.search(part)
            named = key.group(1) if key and key.group(1) not in (str(file), file.name) else None  # not the file
            report.append({"severity": severity, "key": named,
                           "line": int(line.group(1)) if line else None, "message": part})
    return {"file": str(file), "ok": ok, "problems": report}


@contextmanager
def _plugins_log_below(level: int) -> Iterator[None]:
    """Leave out the lines of ``router.plugins`` at ``level`` and above meanwhile: at ERROR, the lines
    :func:`router.plugins.load_registry` logs for broken providers (its only ERROR lines), which the
    caller reports itself."""
    plugins_log = logging.getLogger("router.plugins")
    below = _BelowLevel(level)
    plugins_log.addFilter(below)
    try:
        yield
    finally:
        plugins_log.removeFilter(below)


class _BelowLevel(logging.Filter):
    """Lets through only records below ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def _not_installed(key: str, problem: str, hint: str) -> tuple[str, str]:
    """The warning that what ``key`` names is nothing installed here, ``hint`` its file and line and the closest
    installed name (``" (router.yaml, line 6); did you mean 'openai'?"``). Only a warning: the file may be meant
    for a host with more plugins installed."""
    return "warning", f"{key}: {problem} (a warning only: it may be installed where the daemon runs){hint}"


@config_app.command("show-default")
def config_show_default() -> None:
    """Print the embedded default configuration (a starting point for your own)."""
    from .config import embedded_default_text

    sys.stdout.write(embedded_default_text())  # as is: rich would wrap long comment lines into invalid YAML


if __name__ == "__main__":
    app()
