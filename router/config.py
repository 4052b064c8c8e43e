"""The configuration: a YAML file validated into settings, and the embedded default.

Errors name the key, the problem, and the file and line::

    routes.2.match.inputs_any.0: Input should be 'text', 'image', 'audio', 'video' or 'document'
    (router.yaml, line 14)

``${VAR}`` and ``${VAR:-fallback}`` in string values are replaced from the
environment when the file is loaded, so keys stay out of the file. Outside
``providers`` (in ``server``, ``routes``, ``default``...) a ``${VAR}`` without fallback
must be set and not empty (an unset token must not turn authentication off, an
unset metadata value make a rule that never matches); ``${VAR:-}`` allows empty.
In ``providers`` such a value is an :class:`UnsetReference`: the provider is
not configured (see :meth:`router.settings.ProviderSettings.load`), never
served with a key the plugin finds elsewhere. Other ``$`` forms of shells and docker-compose
(``${VAR:?msg}``, ``${VAR-x}``, ``${VAR:=x}``, a value that is only ``$VAR``) are refused, anywhere:
taken as text, they made an auth token or key of the text written in the file.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .address import DEFAULT_ADDRESS, GRPC_INT_MAX, UPLOAD_CHUNK_BYTES, parse_address
from .errors import ConfigError
from .text import name_problem
from .types import Modality, Task

if TYPE_CHECKING:
    from .plugins import ProviderEntry

#: The smallest ``server.max_message_bytes``: an upload chunk with its framing (1 MiB + a few bytes)
#: and room to spare; below it every file over about 1 MiB failed with gRPC's RESOURCE_EXHAUSTED.
MIN_MESSAGE_BYTES = 2 * UPLOAD_CHUNK_BYTES
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: The start of a shell or docker-compose parameter form (``${VAR:?msg}``, ``${VAR-x}``, ``${VAR:=x}``,
#: ``${VAR?}``): the variable and its operator, when there is one.
_SHELL_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-=?+])?")
#: A value that is nothing but a shell variable (``$TEAM_OPENAI_KEY``): meant to read the environment.
_BARE_REF = re.compile(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*")
#: provider/model; the model part may hold more slashes (``openai/meta-llama/Llama-3.1-8B-Instruct``).
_TARGET = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.:@-]+(/[A-Za-z0-9_.:@-]+)*$")


#: Rule names the router gives its own decisions (the default target, a client's override, a
#: route_request plugin's choice) in traces and ``mmrouter stats``.
RESERVED_RULE_NAMES = ("default", "override", "plugin")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """An inclusive numeric range; either end may be left open."""

    # NaN compares false with everything (a rule that never matches) and infinity is an open end
    model_config = ConfigDict(allow_inf_nan=False)

    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) cannot exceed max ({self.max:g})")
        return self

    def describe(self) -> str:
        if self.min is None and self.max is None:
            return "any value"
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


class Match(_Strict):
    """The conditions of a rule; all given conditions must hold. An empty match always holds."""

    inputs: list[Modality] | None = Field(None, description="the request has all of these modalities")
    inputs_any: list[Modality] | None = Field(None, description="the request has at least one of these")
    inputs_none: list[Modality] | None = Field(None, description="the request has none of these")
    inputs_only: list[Modality] | None = Field(None, description="the request has no other modality")
    task: list[Task] | None = None
    diarization: bool | None = None
    metadata: dict[str, str] = {}
    tags: list[str] = []
    images: Range | None = None
    audio_seconds: Range | None = None
    video_seconds: Range | None = None
    pdf_pages: Range | None = None
    input_tokens: Range | None = None

    @field_validator("task", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A task or a list of them; a string naming no task is refused naming the two a rule may match
        (pydantic's own message listed ``auto`` too, which :meth:`_no_auto` then refuses)."""
        values = [value] if isinstance(value, str) else value
        known = [task.value for task in Task]
        for item in values if isinstance(values, list) else ():
            if item not in known:
                raise ValueError(f"{item!r} is not a task: write chat and/or transcribe (or leave task out)"
                                 f"{did_you_mean(str(item), [Task.CHAT.value, Task.TRANSCRIBE.value])}")
        return values

    @field_validator("inputs", "inputs_any", "inputs_none", "inputs_only", "task", "tags")
    @classmethod
    def _not_empty(cls, value: list[Any] | None) -> list[Any] | None:
        # an empty list would be no condition at all: the rule would match every request
        if value is not None and not value:
            raise ValueError("must list at least one value (leave the key out for no condition)")
        return value

    @field_validator("tags")
    @classmethod
    def _real_tags(cls, value: list[str] | None) -> list[str] | None:
        from .wire import MAX_TAG_CHARS  # not at the top: wire imports routing, which imports this module

        if value is not None and "" in value:
            raise ValueError(f"an empty tag never matches: a request's tags are 1 to {MAX_TAG_CHARS} characters")
        long = next((tag for tag in value or () if len(tag) > MAX_TAG_CHARS), None)
        if long is not None:
            raise ValueError(f"the tag {long[:32]!r}... has {len(long)} characters and never matches: a request's "
                             f"tags are 1 to {MAX_TAG_CHARS} characters")
        for tag in value or ():
            problem = name_problem(tag)
            if problem:  # requests' tags with such characters are refused, so it could never match
                raise ValueError(f"the tag {tag!r} {problem} and never matches: a request's tags cannot hold it")
        return value

    @field_validator("metadata")
    @classmethod
    def _real_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        """Refuse a condition no request can meet: keys and values longer than a request's may be."""
        from .wire import MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS

        for key, text in value.items():
            if not key:
                raise ValueError("an empty key: name the metadata key the rule matches on")
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"the key {key[:32]!r}... has {len(key)} characters and never matches: a "
                                 f"request's metadata keys are at most {MAX_METADATA_KEY_CHARS}")
            if len(text) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"the value of {key!r} has {len(text)} characters and never matches: a "
                                 f"request's metadata values are at most {MAX_METADATA_VALUE_CHARS}")
        return value

    @field_validator("task")
    @classmethod
    def _no_auto(cls, value: list[Task] | None) -> list[Task] | None:
        if value is not None and Task.AUTO in value:
            raise ValueError("'auto' never matches: a request's task is resolved to chat or transcribe before "
                             "rules are matched; write chat and/or transcribe (or leave task out)")
        return value


def _check_target(value: str) -> str:
    if not _TARGET.match(value):
        raise ValueError(f"{value!r} is not a target: write provider/model, e.g. openai/gpt-4o")
    return value


_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_provider_name(value: str) -> str:
    if not _PROVIDER_NAME.match(value):
        raise ValueError(f"{value!r} is not a provider name: use letters, digits, '.', '_' and '-'")
    return value


#: A provider's name, as a ``providers`` key: no '/', which separates the provider from the model in targets.
ProviderName = Annotated[str, AfterValidator(_check_provider_name)]

#: A ``provider/model`` string; a bad one is reported at its own key (e.g. ``bridges.audio.1``).
TargetStr = Annotated[str, AfterValidator(_check_target)]


class Rule(_Strict):
    """One routing rule: when ``match`` holds, use ``use``, else the fallbacks in order."""

    name: str
    match: Match = Match()
    use: str
    fallback: list[TargetStr] = []
    bridging: bool = Field(True, description="convert inputs the target cannot take through other models")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # the name is a row of stats and explain, and a word of the one-line log format
        if not value.strip():
            raise ValueError("a rule name cannot be empty or blank: name the rule (it is shown in explain and stats)")
        problem = name_problem(value)
        if problem:
            raise ValueError(f"the name {problem}: name the rule without it")
        return value

    @field_validator("use")
    @classmethod
    def _use(cls, value: str) -> str:
        return _check_target(value)

    @field_validator("fallback")
    @classmethod
    def _no_repeated_target(cls, fallback: list[str], info: ValidationInfo) -> list[str]:
        # a target listed twice would be called again right after it failed
        seen = {info.data["use"]: "use"} if "use" in info.data else {}
        for index, target in enumerate(fallback):
            where = f"fallback.{index}"
            if target in seen:
                raise ValueError(f"{where} repeats {target}, already at {seen[target]}: list each target once")
            seen[target] = where
        return fallback


class TlsSettings(_Strict):
    """Serve over TLS. With ``client_ca_file``, clients must also show a certificate signed by that CA."""

    cert_file: Path = Field(description="PEM certificate chain of the server")
    key_file: Path = Field(description="PEM private key of the server")
    client_ca_file: Path | None = Field(None, description="PEM CA bundle; if set, client certificates are required")

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _pem(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        if b"-----BEGIN " not in text:
            raise ValueError(f"{path} is not a PEM file")
        return path

    @model_validator(mode="after")
    def _usable(self) -> TlsSettings:
        """The key must match the certificate and the client CA must load: a bad pair fails here, not at
        every TLS handshake."""
        problem = tls_problem(self.cert_file, self.key_file, self.client_ca_file)
        if problem:
            raise ValueError(problem)
        return self


def tls_problem(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> str | None:
    """Why these PEM files cannot serve TLS (a key that does not match the certificate, an encrypted key,
    a CA bundle without certificates), or None."""

    def no_passphrase() -> bytes:
        raise ValueError(f"{key_file} is encrypted; the daemon needs an unencrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except ValueError as exc:
        return str(exc)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"key_file {key_file} is not the key of cert_file {cert_file}"
        return f"cert_file {cert_file} or key_file {key_file} cannot be parsed ({exc.reason or 'bad PEM data'})"
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as exc:
            return f"client_ca_file {client_ca_file} holds no usable CA certificate ({exc.reason or 'bad PEM data'})"
    return None


#: The values of ``server.log_level``, in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServerSettings(_Strict):
    """Where and how the daemon serves."""

    address: str = Field(DEFAULT_ADDRESS, description="host:port, [ipv6]:port, unix:/path or unix-abstract:name")
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    inline_limit_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest inline media part")
    max_message_bytes: int = Field(64 * 1024 * 1024, description="largest gRPC message, from MIN_MESSAGE_BYTES "
                                   "to GRPC_INT_MAX")
    max_upload_bytes: int = Field(64 * 1024**3, gt=0, description="largest UploadMedia file")
    max_concurrent_uploads: int = Field(32, gt=0, description="most UploadMedia calls under way at once (each "
                                        "holds a file open); more are refused at once with TOO_MANY_UPLOADS")
    max_request_media_bytes: int = Field(64 * 1024**3, gt=0, description="most bytes of media one request may "
                                         "refer to, inline and uploaded, each reference counted")
    allow_urls: bool = False
    max_concurrent_calls: int = Field(1024, gt=0, description="most Generate, StreamGenerate and ExplainRoute calls "
                                      "under way at once; more are refused at once with TOO_MANY_CALLS")
    max_waiting_per_session: int = Field(4, ge=0, description="most Generate and StreamGenerate calls that may "
                                         "wait for the call under way on their session (each holds a call slot); "
                                         "one more is refused at once with SESSION_BUSY. 0: a call on a busy "
                                         "session is refused")
    max_concurrent_streams: int = Field(1024, gt=0, le=GRPC_INT_MAX, description="most calls one client connection may have under "
                                        "way at once (HTTP/2 streams); its next calls wait on the client until one "
                                        "ends. Lower it so one connection cannot take every call slot from the "
                                        "others (gRPC clients use one connection per channel)")
    keepalive_seconds: float = Field(30.0, ge=1, description="ping a connection quiet this long (keeps NAT and load "
                                     "balancer idle timers from dropping long calls, finds vanished clients); "
                                     "gRPC takes it in milliseconds, at most GRPC_INT_MAX")
    auth_token: str = Field("", repr=False, description="if set, clients must send 'authorization: Bearer <token>'; "
                            "surrounding whitespace is ignored")
    tls: TlsSettings | None = None
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    max_call_seconds: float = Field(3600.0, gt=0, description="longest a Generate or StreamGenerate call may "
                                    "run, for clients that set no shorter deadline (a provider that hangs)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line, for log collectors")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("max_message_bytes")
    @classmethod
    def _message_size(cls, value: int) -> int:
        if value < MIN_MESSAGE_BYTES:
            raise ValueError(f"must be at least {MIN_MESSAGE_BYTES} (2 MiB): clients upload media in 1 MiB chunks "
                             "(mmrouter ask does), and a chunk with its framing must fit in one message")
        if value > GRPC_INT_MAX:
            raise ValueError(f"must be at most {GRPC_INT_MAX} (2**31-1, the largest gRPC takes)")
        return value

    @field_validator("keepalive_seconds")
    @classmethod
    def _keepalive(cls, value: float) -> float:
        if not value * 1000 <= GRPC_INT_MAX:  # NaN and infinity too
            raise ValueError(f"must be at most {GRPC_INT_MAX / 1000} (gRPC takes it in milliseconds, "
                             "at most 2**31-1, about 24 days)")
        return value

    @field_validator("auth_token")
    @classmethod
    def _token(cls, value: str) -> str:
        # a secret file's trailing newline is not part of the token; what a header cannot carry
        # would lock out every client, so it is refused (without quoting the token)
        token = value.strip()
        if value and not token:  # an empty token turns authentication off: only if it was meant so
            raise ValueError("the token is only whitespace: set the token, or remove the key to serve without one")
        bad = next((i for i, c in enumerate(token) if not "!" <= c <= "~"), None)
        if bad is not None:
            raise ValueError(f"character {bad + 1} of the token is a space, a control character or not ASCII: a "
                             "token may hold only printable ASCII without spaces (no gRPC client can send others)")
        return token

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        level = value.strip().upper()
        if level not in LOG_LEVELS:  # WARN, CRIT, ERR: the names other tools take
            hint = next((f"; did you mean {known!r}?" for known in LOG_LEVELS if level and known.startswith(level)),
                        did_you_mean(level, LOG_LEVELS))
            raise ValueError(f"Input should be {', '.join(map(repr, LOG_LEVELS[:-1]))} or {LOG_LEVELS[-1]!r}{hint}")
        return level

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value  # JSON, Text: as log_level takes any case

    @model_validator(mode="after")
    def _limits(self) -> ServerSettings:
        if self.inline_limit_bytes > self.max_message_bytes:
            raise ValueError("inline_limit_bytes cannot exceed max_message_bytes")
        return self


class PluginSettings(_Strict):
    """Which installed plugins (entry point names) to leave out."""

    disabled: list[str] = []


class OverrideSettings(_Strict):
    """Whether clients may pick the provider/model themselves."""

    allow: bool = True
    providers: list[str] | None = Field(None, description="providers a client may pick; all if unset")


class FileLines:
    """Where a configuration was read from: the file's name (``source``) and the line of each key of its
    sections, rules and targets (``lines["routes.2.use"]``), for the checks made after validation (a model
    its provider lacks) to say the line as validation errors do (see :func:`key_where`). Where a setting is
    written is no part of it: two configurations equal but for their layout compare equal."""

    __slots__ = ("lines", "source")

    def __init__(self, source: str = "", lines: dict[str, int] | None = None) -> None:
        self.source, self.lines = source, lines or {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileLines)

    def __hash__(self) -> int:
        return 0


class Config(_Strict):
    """The whole configuration."""

    #: the file it was read from, and its keys' lines (none for a configuration not read from a file)
    _file: FileLines = PrivateAttr(default_factory=FileLines)

    server: ServerSettings = Field(default_factory=ServerSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    providers: dict[ProviderName, dict[str, Any]] = {}
    routes: list[Rule] = []
    default: str | None = None
    overrides: OverrideSettings = Field(default_factory=OverrideSettings)
    bridges: dict[Modality, list[TargetStr]] = Field(
        default_factory=dict, description="per modality, the targets that convert it for models that cannot take it"
    )
    extend_default_routes: bool = Field(
        False, description="append the embedded default rules after this file's rules; one named like a rule "
        "of this file is replaced by it (see replaced_default_rules)"
    )

    @field_validator("default")
    @classmethod
    def _default_target(cls, value: str | None) -> str | None:
        return None if value is None else _check_target(value)

    @field_validator("bridges")
    @classmethod
    def _no_text_bridge(cls, value: dict[Modality, list[str]]) -> dict[Modality, list[str]]:
        if Modality.TEXT in value:
            raise ValueError("text is never bridged (every model takes text); bridges are for image, audio, "
                             "video and document")
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _empty_sections(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (v if v is not None else {}) for k, v in value.items()}
        return value

    @field_validator("providers")
    @classmethod
    def _instance_plugins(cls, providers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, section in providers.items():
            plugin = section.get("plugin")
            if plugin is not None and not (isinstance(plugin, str) and _PROVIDER_NAME.match(plugin)):
                raise ValueError(f"providers.{name}.plugin must name an installed plugin (e.g. openai), got {plugin!r}")
        return providers

    @field_validator("routes")
    @classmethod
    def _unique_rule_names(cls, routes: list[Rule]) -> list[Rule]:
        seen: dict[str, int] = {}
        for index, rule in enumerate(routes):
            if rule.name in RESERVED_RULE_NAMES:
                # stats and traces are kept per rule name: such a rule would merge with the router's own rows
                raise ValueError(f"rule {index} is named {rule.name!r}, a name the router uses for its own "
                                 f"decisions ({', '.join(RESERVED_RULE_NAMES)}): give the rule another name")
            if rule.name in seen:
                raise ValueError(f"rules {seen[rule.name]} and {index} are both named {rule.name!r}: "
                                 "rule names must be unique")
            seen[rule.name] = index
        return routes


#: The environment variable that moves the default data directory.
DATA_DIR_VARIABLE = "MMROUTER_DATA_DIR"


def default_data_dir() -> Path:
    """``$MMROUTER_DATA_DIR``, else ``$XDG_DATA_HOME/mmrouter``, else ``~/.local/share/mmrouter``.

    :class:`ConfigError` when ``MMROUTER_DATA_DIR`` is set but empty (``MMROUTER_DATA_DIR=${DATA_DIR}`` in a
    container with DATA_DIR unset): taken as unset, every conversation and upload would go to the home
    directory (a container's ephemeral layer) instead of the volume meant, as an empty ``${VAR}`` for
    ``server.data_dir`` or an empty ``MMROUTER_AUTH_TOKEN`` is refused."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    if value == "":
        raise ConfigError(f"{DATA_DIR_VARIABLE} is set but empty: the conversations and media would go to the "
                          f"default data directory instead of the one meant; set {DATA_DIR_VARIABLE} to a "
                          f"directory, or unset it for $XDG_DATA_HOME/mmrouter or ~/.local/share/mmrouter")
    if value:
        return Path(value)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mmrouter"


class UnsetReference(str):
    """A provider setting that names a ``${VAR}`` (without fallback) whose variable is unset or empty:
    the text with that reference read as empty, and the variables (``.variables``). The plugin's
    :meth:`router.settings.ProviderSettings.load` takes the provider for not configured, naming the
    variable, rather than let it fall back to anything (an ``OPENAI_API_KEY`` of another account)."""

    variables: tuple[str, ...]

    def __new__(cls, text: str, variables: tuple[str, ...]) -> UnsetReference:
        self = super().__new__(cls, text)
        self.variables = variables
        return self

    def __getnewargs__(self) -> tuple[str, tuple[str, ...]]:  # copy and pickle keep the variables
        return str(self), self.variables


def expand_env(value: Any, *, mark_unset: bool = False) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-fallback}`` in every string of ``value``. With ``mark_unset``, a
    string with a ``${VAR}`` whose variable is unset or empty is an :class:`UnsetReference`."""
    if isinstance(value, str):
        expanded = _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
        unset = tuple(name for _, name in _unset_references(value)) if mark_unset else ()
        return UnsetReference(expanded, unset) if unset else expanded
    if isinstance(value, dict):
        return {k: expand_env(v, mark_unset=mark_unset) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, mark_unset=mark_unset) for v in value]
    return value


def _expanded(data: dict[str, Any]) -> dict[str, Any]:
    """The file's ``data`` with its ``${VAR}`` replaced; in ``providers``, values naming unset variables
    marked as :class:`UnsetReference`."""
    expanded = expand_env(data)
    if isinstance(data.get("providers"), dict):
        expanded["providers"] = expand_env(data["providers"], mark_unset=True)
    return expanded


def _unset_references(value: Any, loc: tuple = ()) -> list[tuple[tuple, str]]:
    """``(key path, variable)`` of every ``${VAR}`` without fallback in ``value`` whose variable is unset
    or empty."""
    if isinstance(value, str):
        return [(loc, m.group(1)) for m in _ENV_REF.finditer(value)
                if m.group(2) is None and not os.environ.get(m.group(1))]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _unset_references(v, (*loc, k))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _unset_references(v, (*loc, i))]
    return []


def _unsupported_references(value: Any, loc: tuple = ()) -> list[tuple[tuple, str, str]]:
    """``(key path, problem, advice)`` of each ``${`` in the strings of ``value`` that starts no ``${VAR}`` or
    ``${VAR:-default}`` (``${VAR:?msg}``, ``${VAR-x}``, ``${VAR:=x}``...), and of each string that is only
    ``$NAME``: shell forms the loader does not read, which were served as the text written (an
    ``auth_token`` anyone reading the file knows). The problem quotes a variable's name and operator only,
    never the rest of the value (it may be a key)."""
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _unsupported_references(v, (*loc, k))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _unsupported_references(v, (*loc, i))]
    if not isinstance(value, str):
        return []
    found = []
    for start in (m.start() for m in re.finditer(r"\$\{", value)):
        if _ENV_REF.match(value, start):
            continue
        shell = _SHELL_REF.match(value, start)
        if shell is None or shell.group(2) is None:
            found.append(("a '${' that starts no ${VAR} reference", "${VAR} or ${VAR:-default}"))
        else:
            name, op = shell.groups()
            fix = f"${{{name}:-default}}" if "-" in op or "=" in op else f"${{{name}}} or ${{{name}:-default}}"
            found.append((f"'${{{name}{op}…}}' is not a supported reference", fix))
    if bare := _BARE_REF.fullmatch(value):
        name = bare.group(1)
        found.append((f"'${name}' does not read the environment (it would be the text '${name}')",
                      f"${{{name}}} or ${{{name}:-default}}"))
    return [(loc, problem, f"only ${{VAR}} and ${{VAR:-default}} read the environment: write {fix} (a value that "
                           "must hold '${' or be '$NAME' as such can come from a variable, ${VAR})")
            for problem, fix in found]


def _check_references(data: dict[str, Any], node: yaml.Node | None, source: str) -> None:
    """Refuse an unsupported ``$`` form anywhere (see :func:`_unsupported_references`), and a ``${VAR}``
    outside the ``providers`` section whose variable is unset or empty: an empty
    ``auth_token`` would serve without authentication, an empty ``data_dir`` in the working directory,
    and in ``routes`` a condition would never match (``metadata: {team: "${QA_TEAM}"}``) or a target or
    range be refused without naming the variable (``'' is not a target``)."""
    problems = []
    for loc, problem, advice in _unsupported_references(data):
        line = _line_of(node, loc)
        problems.append(f"{'.'.join(map(str, loc))}: {problem} ({source}{f', line {line}' if line else ''}): {advice}")
    outside = {key: value for key, value in data.items() if key != "providers"}
    for loc, name in _unset_references(outside):
        line = _line_of(node, loc)
        where = f" ({source}, line {line})" if line else f" ({source})"
        problems.append(f"{'.'.join(map(str, loc))}: ${{{name}}} is not set (or empty){where}: set {name}, "
                        f"or write ${{{name}:-}} to allow an empty value")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def with_lines(problem: str, text: str, source: str, fields: Iterable[str] = ()) -> str:
    """``problem`` as a plugin words it (``providers.openai.timout: Extra inputs are not permitted``, several
    joined by "; ") with the file and line of each key it names, as the file's other errors have, and
    for an unknown key of the section the closest of its settings' ``fields`` (``did you mean 'timeout'?``)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:  # read once already: cannot happen, but a line is only a help
        return problem
    parts = []
    for part in re.split(r"; (?=providers\.)", problem):
        key, sep, message = part.partition(": ")
        loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        line = _line_of(node, loc) if sep and key.startswith("providers.") else None
        hint = did_you_mean(str(loc[-1]), fields) if len(loc) == 3 and message.startswith("Extra inputs") else ""
        parts.append(f"{key}: {message} ({source}, line {line}){hint}" if line else part)
    return "; ".join(parts)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or its nearest parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (YAML would keep the last one silently:
    a second ``routes:`` would drop every earlier rule)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the SafeLoader refuses it itself
                continue
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


#: The most values (mappings, lists and scalars) a configuration may hold once its YAML aliases are
#: written out: a real one holds hundreds. Aliases of aliases grow exponentially ("billion laughs": 500
#: bytes of nested anchors held config check and serve for minutes and a GB before this bound).
MAX_CONFIG_VALUES = 100_000


def _refuse_odd_shapes(data: object, source: str) -> None:
    """Raise :class:`ConfigError` for a YAML alias that holds itself (``routes: &r [*r]``: every later step
    went over it without end) and for aliases that write out to over :data:`MAX_CONFIG_VALUES` values."""
    inside: set[int] = set()
    seen = 0

    def walk(value: object) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: over {MAX_CONFIG_VALUES} values once its YAML aliases are written out "
                              "(aliases of aliases); write the configuration out plainly")
        if not isinstance(value, dict | list):
            return
        if id(value) in inside:
            raise ConfigError(f"{source}: a YAML alias refers to a value that contains it (an anchor used "
                              "inside itself); write the value out")
        inside.add(id(value))
        for item in value.values() if isinstance(value, dict) else value:
            walk(item)
        inside.discard(id(value))

    walk(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with the YAML, and where, without the file's text: PyYAML's own message quotes the
    lines around the fault, which may hold an API key or the auth token."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).replace('"<unicode string>"', "the file").split())
    parts = []
    if exc.context:
        where = f" (line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})" if exc.context_mark else ""
        parts.append(f"{exc.context}{where}")
    if exc.problem:
        where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}" if exc.problem_mark else ""
        parts.append(f"{exc.problem}{where}")
    return ": ".join(parts) or type(exc).__name__


def data_dir_of(config: Path) -> Path:
    """``server.data_dir`` of the routing file ``config`` (the default without one), read alone: ``mmrouter
    stats`` and ``prune`` need no other setting, so the file's other ``${VAR}`` need not be set, nor its
    TLS files be on this host. Raises :class:`ConfigError` for a file that cannot be read, is no YAML,
    or whose data_dir is not a path (or names an unset ``${VAR}``, as serve refuses it)."""
    source = str(config)
    try:
        node, data = _yaml_document(read_config_file(config), source, yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(f"{source}: values nested too deeply to read") from None
    server = data.get("server")

    def where(*loc: str) -> str:
        line = _line_of(node, loc)
        return f" ({source}, line {line})" if line else f" ({source})"

    if server is not None and not isinstance(server, dict):
        raise ConfigError(f"invalid configuration:\n  server: should be a mapping of settings{where('server')}")
    if not server or "data_dir" not in server:
        return default_data_dir()
    _check_references({"server": {"data_dir": server["data_dir"]}}, node, source)  # an unset ${VAR}
    try:
        return ServerSettings.model_validate({"data_dir": expand_env(server["data_dir"])}).data_dir
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid configuration:\n  server.data_dir: {problem}{where('server', 'data_dir')}") from None


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raise :class:`ConfigError` naming the key, problem and line."""
    try:
        return _parse_config(text, source)
    except RecursionError:
        raise ConfigError(f"{source}: values nested too deeply to read") from None


def _yaml_document(text: str, source: str, loader: type = _UniqueKeyLoader) -> tuple[yaml.Node | None, dict]:
    """The YAML ``text`` as its node tree (for line numbers) and its data, a mapping (empty for an empty
    file); :class:`ConfigError` for text that is no YAML (said without quoting it), a duplicate key (with
    ``_UniqueKeyLoader``) or a top level that is no mapping."""
    try:
        node, data = _composed_and_loaded(text, loader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}, line {exc.line}: duplicate key {exc.key!r} (first at line {exc.first_line}): "
                          "YAML would silently keep only the last one; write each key once") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, not {type(data).__name__}")
    return node, data


def _composed_and_loaded(text: str, loader: type) -> tuple[yaml.Node | None, Any]:
    """The YAML ``text``'s node tree and the data ``loader`` constructs from it: the text is parsed once (``yaml.compose``
    then ``yaml.load`` parse it twice, which for a 2,000-rule file is seconds of pure-Python parsing)."""
    reader = loader(text)
    try:
        node = reader.get_single_node()
        return node, reader.construct_document(node) if node is not None else None
    finally:
        reader.dispose()


def _parse_config(text: str, source: str) -> Config:
    node, data = _yaml_document(text, source)
    _refuse_odd_shapes(data, source)
    _check_references(data, node, source)
    try:
        config = Config.model_validate(_expanded(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"]
                        if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(node, loc)
            where = f" ({source}, line {line})" if line else f" ({source})"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "string_type":  # ``country: NO``: YAML 1.1 read the text as a boolean, number...
                msg = _read_as_other(node, loc, err["input"], is_key=err["loc"][-1:] == ("[key]",)) or msg
            hint = _unknown_key_hint(loc) if err["type"] == "extra_forbidden" else ""
            problems.append(f"{key}: {msg}{where}{hint}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    config._file = FileLines(source, _key_lines(node))
    if config.extend_default_routes:
        default = embedded_default()
        config = config.model_copy(update={
            "routes": [*config.routes, *(r for r in default.routes if r.name not in
                                         {x.name for x in config.routes})],
            "default": config.default or default.default,
            "bridges": {**default.bridges, **config.bridges},
        })
    return config


def _read_as_other(node: yaml.Node | None, loc: tuple, value: Any, *, is_key: bool = False) -> str | None:
    """For a text written plain where a string is expected that YAML 1.1 read as another type (``country: NO``,
    the boolean false; ``api: 1.10``, the number 1.1; ``null``, a date), what YAML read, in the file's own
    words, and how to quote it; None for other values (a list, a quoted scalar with a tag)."""
    if not (value is None or isinstance(value, bool | int | float | date)):
        return None
    scalar = _node_at(node, loc[:-1] if is_key else loc)
    if is_key and isinstance(scalar, yaml.MappingNode):  # the key node that reads as ``value``
        scalar = next((k for k, _ in scalar.value if isinstance(k, yaml.ScalarNode) and k.style is None
                       and yaml.safe_load(k.value) == value), None)
    if not isinstance(scalar, yaml.ScalarNode) or scalar.style is not None:
        return None
    text = scalar.value
    if not text:
        return ("no value: YAML reads it as null, not as text: write the value, in quotes if it is to be empty "
                '("")')
    if isinstance(value, bool):
        read = f"the boolean {str(value).lower()}"
    elif isinstance(value, int | float):
        read = f"the number {value}"
    elif isinstance(value, date):
        read = f"the {'timestamp' if isinstance(value, datetime) else 'date'} {value.isoformat()}"
    else:
        read = "no value (null)"
    quoted = json.dumps(text, ensure_ascii=False)
    written = f"{loc[-1]}: {quoted}" if not is_key and isinstance(loc[-1], str) else quoted
    return f"YAML reads {text} as {read}, not as text: quote it, {written}"


def _node_at(node: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The YAML node at ``loc`` (``("routes", 0, "name")``), or None when there is none."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return None
    return node


def _key_lines(node: yaml.Node | None, loc: tuple = (), lines: dict[str, int] | None = None,
               depth: int = 4) -> dict[str, int]:
    """The line of each key of ``node`` down to ``depth`` levels (``routes.2.fallback.1``: 24), as
    :func:`_line_of` says it, but for the conditions of rules (their ``match``, which validation checks
    with lines): the keys the checks after validation name (see :class:`FileLines`)."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        children: Iterable[tuple[Any, yaml.Node]] = ((k.value, v) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        children = enumerate(node.value)
    else:
        return lines
    for key, child in children:
        path = (*loc, key)
        lines[".".join(map(str, path))] = child.start_mark.line + 1
        if len(path) < depth and key != "match":
            _key_lines(child, path, lines, depth)
    return lines


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The settings class of the mapping at ``loc`` (``("server",)``, ``("routes", 2, "match")``), whose
    fields are the keys that mapping takes; None for other mappings."""
    shape = tuple("*" if isinstance(part, int) else part for part in loc)
    return {(): Config, ("server",): ServerSettings, ("server", "tls"): TlsSettings, ("routes", "*"): Rule,
            ("routes", "*", "match"): Match, ("overrides",): OverrideSettings,
            ("plugins",): PluginSettings}.get(shape)


def _unknown_key_hint(loc: tuple) -> str:
    """``"; did you mean 'address'?"`` for the unknown key at ``loc`` (``server.adress``), else ""."""
    model = _section_model(loc[:-1]) if loc else None
    return did_you_mean(str(loc[-1]), model.model_fields) if model is not None else ""


def load_config(path: str | Path | None) -> Config:
    """The configuration from ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return embedded_default()
    path = Path(path)
    return parse_config(read_config_file(path), str(path))


def read_config_file(path: Path) -> str:
    """The text of a configuration file; :class:`ConfigError` if it cannot be read or is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte {exc.start} (line {line}) is "
                          f"{data[exc.start:exc.start + 1]!r}; save the file as UTF-8") from None


def holds_nothing(text: str) -> bool:
    """Whether a configuration file's ``text`` holds nothing but whitespace and comments: valid YAML (the
    embedded default's settings, no rules), but a reload reads it so when it comes between the truncation
    and the writing of a file rewritten in place, so reloads refuse it."""
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def embedded_default_text() -> str:
    """The YAML of the embedded default configuration (the hybrid policy)."""
    return resources.files("router").joinpath("default_config.yaml").read_text(encoding="utf-8")


def embedded_default() -> Config:
    """The embedded default configuration."""
    return parse_config(embedded_default_text(), "embedded default")


def replaced_default_rules(config: Config) -> list[tuple[int, str]]:
    """With ``extend_default_routes``, the embedded rules that a rule of the file replaces by having
    their name (and not the same conditions and targets), as ``(index in config.routes, name)``."""
    if not config.extend_default_routes:
        return []
    embedded = {rule.name: rule for rule in embedded_default().routes}
    return [(index, rule.name) for index, rule in enumerate(config.routes)
            if rule.name in embedded and embedded[rule.name] != rule]


def targets_of(config: Config) -> Iterator[tuple[str, str]]:
    """Every provider/model a config names, with its key (``routes.0.use``, ``bridges.audio.1``...)."""
    for i, rule in enumerate(config.routes):
        yield f"routes.{i}.use", rule.use
        for j, fallback in enumerate(rule.fallback):
            yield f"routes.{i}.fallback.{j}", fallback
    if config.default:
        yield "default", config.default
    for modality, targets in config.bridges.items():
        for j, target in enumerate(targets):
            yield f"bridges.{modality.value}.{j}", target


def embedded_keys(config: Config) -> set[str]:
    """The keys of ``config`` (``routes.5``, ``bridges.audio``, ``default``) that ``extend_default_routes``
    filled from the embedded default rather than the file (a part identical to the embedded one counts
    as embedded: the file adds nothing there)."""
    if not config.extend_default_routes:
        return set()
    default = embedded_default()
    embedded_rules = {rule.name: rule for rule in default.routes}
    keys = {f"routes.{i}" for i, rule in enumerate(config.routes) if embedded_rules.get(rule.name) == rule}
    keys |= {f"bridges.{modality.value}" for modality, targets in config.bridges.items()
             if list(default.bridges.get(modality, [])) == list(targets)}
    if config.default == default.default:
        keys.add("default")
    return keys


def unknown_models(config: Config, entries: Mapping[str, ProviderEntry],
                   *, embedded: bool = False) -> list[tuple[ProviderEntry, str]]:
    """Each target of ``config`` whose provider (made by its plugin: ready or not configured) offers no
    such model, as its provider's entry and ``"<key>: provider 'x' has no model 'y' (it has: ...)"``.

    Routing skips such a target on every request, so ``config check`` refuses it and so do ``serve``
    and a reload when the provider is ready. Providers that are not installed, disabled or broken
    have no models to check against. Only the file's own targets are checked; with ``embedded``,
    only those ``extend_default_routes`` took from the embedded rules (``"embedded rule 'x' (routes.5.use)"``):
    an operator who serves other models under a provider's name (an Ollama as ``openai``) cannot
    change those, and routing passes over them."""
    problems = []
    from_embedded = embedded_keys(config)
    for key, text in targets_of(config):
        section = key if key == "default" else ".".join(key.split(".")[:2])
        if (section in from_embedded) != embedded:
            continue
        provider, _, model = text.partition("/")
        entry = entries.get(provider)
        if entry is None or entry.provider is None:
            continue
        names = [m.name for m in entry.models]
        if model not in names:
            named = (f"embedded rule {config.routes[int(key.split('.')[1])].name!r} ({key})"
                     if embedded and key.startswith("routes.") else key_named(config, key))
            problems.append((entry, f"{named}: provider {provider!r} has no model {model!r} "
                                    f"(it has: {', '.join(names)}){key_where(config, key)}"
                                    f"{did_you_mean(model, names)}"))
    return problems


def key_named(config: Config, key: str) -> str:
    """``key`` of ``config`` with the name of the rule it is in, as messages name rules: ``routes.2.use
    'support-screens'`` (``routes.2 'support-screens'``); other keys as they are."""
    parts = key.split(".")
    if parts[0] == "routes" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < len(config.routes):
        return f"{key} {config.routes[int(parts[1])].name!r}"
    return key


def key_where(config: Config, key: str) -> str:
    """``" (router.yaml, line 24)"``: the file ``config`` was read from and the line of ``key`` in it
    (``routes.2.use``), or of the nearest rule or section holding it (a key merged from a YAML anchor);
    "" for a key the file does not hold (an embedded rule ``extend_default_routes`` appended) or a
    configuration read from no file."""
    parts = key.split(".")
    while len(parts) > 1 and ".".join(parts) not in config._file.lines:
        parts.pop()
    line = config._file.lines.get(".".join(parts)) if len(parts) > 1 or parts[0] == key else None
    return f" ({config._file.source}, line {line})" if line else ""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` to a misspelled ``name``, else ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""
