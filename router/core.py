"""The router application: configuration, plugins, stores and routing wired together.

:class:`App` is what the gRPC servicer delegates to. It knows nothing of
protobuf; it takes and gives the internal model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import reprlib
import sqlite3
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path

from . import routing, wire
from .config import Config, did_you_mean, embedded_keys, holds_nothing, targets_of, unknown_models, with_lines
from .config_warnings import (
    refused_section,
    routes_nothing,
    settings_fields,
    unconfigured_targets,
    unknown_providers,
    uses_provider,
)
from .cooldowns import Cooldowns
from .dispatch import HistoryCuts, RouterEvent, execute, refused_note, trimmed_note
from .errors import (
    AnswerTooLarge,
    DataDirGone,
    FieldViolation,
    InvalidRequest,
    NoTimeLeft,
    SessionBusy,
    StorageFailed,
    StorageFull,
    UnknownMedia,
    UnknownSession,
)
from .health import Failure, ProviderHealth
from .invoke import DEADLINE_MARGIN_SECONDS, FailedAttempt, ProviderCall, in_background
from .media import MediaStore
from .mime import normalise_mime
from .outcome import Answer, Done, RouteChosen, RouteInfo
from .plugins import (
    GROUP,
    ProviderEntry,
    Registry,
    State,
    close_provider,
    load_registry,
    log_broken_providers,
)
from .provider import FORGET_MEDIA_SECONDS, Provider
from .redact import (
    SECRET_SETTING,
    longest_first,
    mask,
    remembered,
    remembered_count,
    session_tag,
    url_credentials,
)
from .routing import (
    Catalog,
    Decision,
    Facts,
    Plan,
    ProviderStatus,
    Target,
    beyond_every_context,
    bridged_tokens_guess,
    estimate_tokens,
    facts_of,
    input_budget,
    media_tokens,
)
from .sessions import (
    KeptAnswer,
    MediaDeleted,
    Removed,
    SessionStore,
    StoredBridges,
    storage_error,
    storage_fault,
    trim_history,
)
from .settings import ProviderSettings
from .sniff import GENERIC_TYPES, Measured, measure_media
from .text import valid_text
from .types import (
    FEATURE_EXTRACTION_ONLY,
    CallContext,
    FinishReason,
    Media,
    Message,
    Modality,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
    Usage,
)

log = logging.getLogger(__name__)

#: What a session keeps as the reply to a question an extraction-only model answered (see App._kept_reply).
NOT_ANSWERED_TURN = ("(No language model answered this question: the text of its media was extracted offline "
                     "instead. It is still to be answered.)")

#: How long each provider's ``aclose`` may run before it is cancelled, with a warning naming the provider: at the
#: daemon's stop (all at once, within ``router.server.STOP_SECONDS``), and after a reload (see App._close_registry).
PROVIDER_CLOSE_SECONDS = 3.0

#: How many recent resets are remembered for the calls under way (see App.areset_session).
RESETS_KEPT = 10_000

#: When a call refused for the calls already waiting on its session is told to try again (RetryInfo).
SESSION_RETRY_SECONDS = 1.0

#: Provider settings whose values are secrets, by their name (see :data:`router.redact.SECRET_SETTING`).
_SECRET_KEY = SECRET_SETTING
#: A setting's value that is an HTTP credential whatever its key's name (``extra_headers: {X-Gateway:
#: "Bearer ..."}``): the scheme, then the credential (group 1).
_SCHEME_CREDENTIAL = re.compile(r"\s*(?:bearer|basic)\s+(\S.*?)\s*$", re.IGNORECASE | re.DOTALL)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|BEARER|COOKIE|SIGNATURE|_PAT)$")


def secrets_of(providers: Mapping[str, Mapping], *extra: str, names: Collection[str] = ()) -> set[str]:
    """Every secret-looking value: provider settings named like keys (in nested sections too), such
    environment variables, those any ``ProviderSettings.api_key_env`` names, and ``extra``.

    A URL's password (``http://user:password@host``, e.g. in a ``base_url``) counts as a secret too.
    Each value is kept as given and stripped of surrounding whitespace, since plugins send the
    stripped key (a secret file usually ends with a newline); values under 4 characters are left out,
    as are ``names`` (see :func:`config_secrets`).
    """
    found = {secret for settings in providers.values() for secret in _settings_secrets(settings)}
    found |= {value for name, value in os.environ.items() if _SECRET_ENV.search(name)}
    found |= {os.environ[name] for name in ProviderSettings.key_variables() if name in os.environ}
    found |= set(extra)
    found |= {value.strip() for value in found}
    return {value for value in found if len(value) >= 4 and value not in names}


def config_names(config: Config) -> set[str]:
    """The names ``config`` uses, which are no secrets: its providers' (sections, instances' plugins,
    targets, ``overrides.providers``), the installed plugins', its rules' and its models' (targets, the
    ``models`` lists of its sections)."""
    names = {ep.name for ep in entry_points(group=GROUP)} | set(config.providers)
    names |= {rule.name for rule in config.routes} | set(config.overrides.providers or ())
    for section in config.providers.values():
        names |= {value for value in (section.get("plugin"),) if isinstance(value, str)}
        for model in section.get("models") or ():
            model = model.get("name") if isinstance(model, Mapping) else model
            names |= {model} if isinstance(model, str) else set()
    for _, text in targets_of(config):
        target = Target.parse(text)
        names |= {target.provider, target.model}
    return names


#: The (section, value) pairs :func:`config_secrets` warned of already: said once in a daemon's life.
_NAMES_WARNED: set[tuple[str, str]] = set()


def config_secrets(config: Config) -> set[str]:
    """:func:`secrets_of` ``config``'s providers and auth token, but for a value equal to a name the
    configuration uses (:func:`config_names`): a placeholder key (Ollama's docs give ``api_key: ollama``)
    masked as a secret hid that name in every log line, route, explanation and error. Such a value is
    warned of (once), not masked."""
    names = config_names(config)
    for section, settings in config.providers.items():
        for value in sorted({v.strip() for v in _settings_secrets(settings)} & names):
            if (section, value) not in _NAMES_WARNED:
                _NAMES_WARNED.add((section, value))
                log.warning("providers.%s: a secret setting (its key?) is %r, the name of a provider, plugin, model "
                            "or rule of this configuration: it is not masked as a secret in the log and in what "
                            "clients get (fine for a placeholder key a local server ignores)", section, value)
    return secrets_of(config.providers, config.server.auth_token, names=names)


def _settings_secrets(value: object, secret: bool = False) -> set[str]:
    """The secrets in a provider's settings: strings under a key named like a secret (at any depth, in
    mappings and lists), the credentials of URLs, and values that are an HTTP credential whatever their key
    (``Bearer ...``, ``Basic ...``: the value and the credential after the scheme)."""
    if isinstance(value, str):
        found = url_credentials(value)
        if credential := _SCHEME_CREDENTIAL.match(value):
            found |= {value, credential.group(1)}
        return {value, *found} if secret else found
    if isinstance(value, Mapping):
        return {s for key, item in value.items()
                for s in _settings_secrets(item, secret or bool(_SECRET_KEY.search(str(key))))}
    if isinstance(value, list | tuple):
        return {s for item in value for s in _settings_secrets(item, secret)}
    return set()


@functools.lru_cache(maxsize=4096)
def _measure_stored(path: str, modality: Modality) -> Measured:
    """:func:`measure_media` of a stored file; its path names its content, so the answer never changes."""
    return measure_media(path, modality)


def _warn_hidden(registry: Registry) -> None:
    """Log the plugins whose own provider a section's name hides (:attr:`Registry.hidden`)."""
    for warning in registry.hidden:
        log.warning("%s", warning)


def _router_of(config: Config) -> routing.Router:
    return routing.Router(
        rules=config.routes, default=config.default, bridges=config.bridges,
        allow_overrides=config.overrides.allow, override_providers=config.overrides.providers,
    )


class _DeletedDuringCall(Exception):
    """A media of the turn being kept was deleted after its call started (see :meth:`App._save_turn`)."""


def _deleted_reason(media: list[Media]) -> str:
    """Why a turn whose ``media`` were deleted during its call is not kept, in words for its client's route note."""
    names = sorted({m.filename for m in media if m.filename})
    which = f" ({', '.join(map(repr, names))})" if names else ""
    return (f"a media of this turn{which} was deleted (DeleteMedia, or a reset erasing media) while the call was "
            "under way; ask again, with the media, to keep the turn")


def _unsaved_reason(exc: Exception, sessions: SessionStore | None = None) -> str:
    """Why a session's turn could not be stored, in words for the client's route note; an error of the sessions
    database ``sessions`` as :meth:`SessionStore.fault_of` tells it (a full disk from a read-only or failing one,
    a damaged file; those two logged once), called on the store's thread."""
    if isinstance(exc, StorageFull):  # its media
        return "the disk of the daemon's data directory is full"
    if isinstance(exc, DataDirGone):
        return "the daemon's data directory was removed or replaced while it ran (restart the daemon)"
    if isinstance(exc, StorageFailed):  # a read-only or failing disk: its message says which, and what to do
        return exc.message
    if isinstance(exc, sqlite3.Error):
        fault = sessions.fault_of(exc) if sessions is not None else storage_fault(exc)
        return fault.note if fault is not None else f"the sessions database could not be written ({exc})"
    return f"storing it failed ({type(exc).__name__}, see the daemon's log)"


def _emptied(old: Config, new: Config, text: str | None) -> list[str]:
    """Why a reload must not serve ``new`` in place of ``old``: its file's ``text`` holds nothing, or it has
    no rules and no default where ``old`` routes requests. Either is what a reload reads when it comes
    between the truncation and the writing of a file rewritten in place (``cat new.yaml > router.yaml``,
    an editor, a config management tool): served, it refused every request (and turned the file's
    providers and ``overrides.allow: false`` off) until the next SIGHUP."""
    atomically = ("it may have been read while it was being written: replace the file atomically (write a "
                  "temporary file beside it, then rename it over this one, as `mv` does), then send SIGHUP")
    if text is not None and holds_nothing(text):
        return [f"the file is empty (nothing but whitespace and comments); {atomically}"]
    if routes_nothing(new) and not routes_nothing(old):
        return [f"the file has no routes and no default, so every request would be refused; {atomically}"]
    return []


#: How every refused reload's ERROR line begins, whatever refused it (an alert on it sees them all).
RELOAD_REFUSED = "SIGHUP: reload refused, the running configuration stays: "


def log_refused_reload(why: str, *, exc_info: bool = False) -> None:
    """Log why a reload is refused: one ERROR line, :data:`RELOAD_REFUSED` then ``why``."""
    log.error("%s%s", RELOAD_REFUSED, why, exc_info=exc_info)


def log_warnings(warnings: Sequence[str]) -> None:
    """Log each of ``warnings`` about a configuration served (see :func:`missing_models`)."""
    for warning in warnings:
        log.warning("%s", warning)


#: The part of a key of :func:`targets_of` that names a rule, a bridge or the default.
_TARGET_SECTION = re.compile(r"routes\.\d+|bridges\.\w+|default")


def missing_models(config: Config, registry: Registry, gone: Collection[str] = (),
                   unresolved: Collection[str] | None = None) -> tuple[list[str], list[str]]:
    """What refuses ``config`` for the targets it names, and the warnings to log when it is served, both as
    ``config check`` words them. Refused: a target naming a model that its ready provider in ``registry``
    does not offer (routing would skip it on every request). Only warnings: those of a provider not ready
    (no key), those of the embedded rules ``extend_default_routes`` appended, which the file cannot change,
    and a provider no installed plugin offers (``use: opnai/gpt-4o``: routing skips the target, unsaid
    otherwise), or, those in ``gone``, that the running daemon has but no section of ``config`` configures
    any more. Given ``unresolved`` (a reload: the providers no installed plugin offers that the running
    configuration names already), such a provider the file's own rules, default or bridges name is refused
    too, unless it is one of those: the daemon, unlike ``config check``, knows which plugins are installed
    where it runs; a name it started with (a warning then) does not hold every later reload back."""
    problems, warnings = [], []
    from_embedded = embedded_keys(config)
    for key, name, hint in unknown_providers(config, registry):
        section = _TARGET_SECTION.match(key)
        if name in gone:
            warnings.append(f"{key}: provider {name!r} is no longer configured (the file has no section for it"
                            f"{hint}): it is never used (a rule goes on to its fallbacks)")
        elif (unresolved is not None and name not in unresolved and section is not None
              and section.group() not in from_embedded):
            problems.append(f"{key}: no installed plugin offers a provider {name!r}{hint}: routing would skip it "
                            "on every request (a rule goes on to its fallbacks)")
        else:
            warnings.append(f"{key}: no installed plugin offers a provider {name!r}{hint}: it is never used (a rule "
                            "goes on to its fallbacks)")
    warnings += unconfigured_targets(config, registry)
    for entry, problem in unknown_models(config, registry.entries):
        if entry.state is State.READY:
            problems.append(problem)
        else:
            warnings.append(f"{problem}: routing skips it (provider {entry.name!r} is {entry.state.value} now, so "
                            "this is only a warning; `mmrouter config check` refuses it)")
    warnings += [f"{problem}: routing skips it (extend_default_routes)"
                 for _, problem in unknown_models(config, registry.entries, embedded=True)]
    return problems, warnings


def reload_losses(old: Config, new: Config) -> str | None:
    """A warning when a reload from ``old`` to ``new`` removes rules or the default, or None: what a file cut
    short reads like (read mid-write, every rule after the cut and the default gone), and what an operator
    should see above the INFO lines of a reload."""
    kept = {rule.name for rule in new.routes}
    removed = [rule.name for rule in old.routes if rule.name not in kept]
    lost = [f"rule{'s' if len(removed) > 1 else ''} {', '.join(removed)}"] if removed else []
    if old.default and not new.default:
        lost.append("the default")
    if not lost:
        return None
    return (f"this reload removed {' and '.join(lost)}: the requests they served now go to the rules left, or are "
            "refused (NO_ROUTE). If that was not meant (a file read while it was being written), replace the file "
            "atomically (write it beside, then `mv` it over) and send SIGHUP again")


def reload_changes(old: Config, new: Config, old_providers: Mapping[str, ProviderEntry],
                   new_providers: Mapping[str, ProviderEntry]) -> list[str]:
    """What a reload from ``old`` to ``new`` changed, by name only (never a setting's value, which may be a
    key): the rules added, removed and changed, whether their order, the default, bridges or overrides
    changed; the providers added, removed, and those whose section or state changed (made again with new
    settings, disabled). One line for the rules ("rules unchanged" when none is), one for the providers
    when any changed."""
    rules_before, rules_now = {r.name: r for r in old.routes}, {r.name: r for r in new.routes}
    kept = [name for name in rules_now if name in rules_before]
    rules = [f"{what}: {', '.join(names)}" for what, names in (
        ("added", [name for name in rules_now if name not in rules_before]),
        ("removed", [name for name in rules_before if name not in rules_now]),
        ("changed", [name for name in kept if rules_now[name] != rules_before[name]])) if names]
    if kept != [name for name in rules_before if name in rules_now]:
        rules.append("reordered")
    rules += [f"{what} changed" for what in ("default", "bridges", "overrides") if getattr(old, what) != getattr(new, what)]
    providers = [f"{what}: {', '.join(names)}" for what, names in (
        ("added", sorted(set(new_providers) - set(old_providers))),
        ("removed", sorted(set(old_providers) - set(new_providers))),
        ("settings changed", sorted(name for name in set(new_providers) & set(old_providers)
                                    if old.providers.get(name) != new.providers.get(name))),
        ("state changed", sorted(name for name in set(new_providers) & set(old_providers)
                                 if old_providers[name].state is not new_providers[name].state))) if names]
    changes = ["rules " + "; ".join(rules) if rules else "rules unchanged"]
    return changes + (["providers " + "; ".join(providers)] if providers else [])


class App:
    """Everything a running daemon holds."""

    def __init__(self, config: Config, extra_plugins: Mapping[str, object] | None = None) -> None:
        self.config = config
        data_dir = Path(config.server.data_dir).expanduser()
        self._extra_plugins = extra_plugins
        self.registry: Registry = load_registry(
            config.providers, disabled=config.plugins.disabled, extra_plugins=extra_plugins
        )
        _warn_hidden(self.registry)
        #: Registries replaced by a reload that still have calls under way; closed when the last ends.
        self._retired: list[Registry] = []
        self._closing: set[asyncio.Task] = set()
        #: The providers whose ``aclose`` was cancelled (past :data:`PROVIDER_CLOSE_SECONDS`) and still runs: a
        #: plugin that catches CancelledError (named by the daemon's stop when it gives up waiting).
        self.closes_cut: list[str] = []
        self.media = MediaStore(data_dir / "media", config.server.max_upload_bytes)
        self.sessions = SessionStore(data_dir / "sessions.sqlite", longest_call_seconds=config.server.max_call_seconds)
        self.sessions.drop_stale_links()  # before any call of this daemon's makes one
        self.bridge_memo = StoredBridges(self.sessions)
        #: Recent successes and failures of each provider's calls (kept over reloads: by name).
        self.health = ProviderHealth()
        self.history_cuts = HistoryCuts()  # history a target refused for its size, per session
        #: The targets that asked to be left alone for a while (a Retry-After), tried last meanwhile (kept over reloads).
        self.cooldowns = Cooldowns()
        #: Sessions reset lately, and when (time.monotonic()), the newest last.
        self._resets: OrderedDict[str, float] = OrderedDict()
        self._in_flight: Counter[str] = Counter()  # session id -> calls on it under way
        self._session_turns: dict[str, asyncio.Lock] = {}  # session id -> the lock its calls take in turn
        #: The tasks handling gRPC calls now (router.server adds and removes them), and those of them the
        #: daemon cancels as it stops (see :func:`router.server.stop_calls`).
        self.call_tasks: set[asyncio.Task] = set()
        #: How many calls ended since the daemon started (see router.memory.give_back_when_idle).
        self.calls_ended = 0
        self.stopped_calls: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
        self.stopped_at_once = False  # they were ended by a second signal, not at the end of the grace
        #: The daemon is stopping: new calls are refused (router.server).
        self.stopping = False
        self.router = _router_of(config)
        self.secrets = longest_first(config_secrets(config))
        self._names = config_names(config)  # never masked (see config_secrets)
        self._remembered = 0  # how many of redact.remembered() self.secrets holds
        self._refused_keys: set[str] = set()  # remembered only by the plugins of refused reloads: never used
        self.catalog: Catalog = self._build_catalog()

    def reload(self, config: Config, text: str | None = None, source: str = "") -> tuple[bool, list[str]] | None:
        """Serve ``config`` from now on: its rules, default, bridges and overrides, and, when the
        ``providers`` or ``plugins`` sections changed (a rotated key, a new base_url or model),
        providers made again from them. Calls under way finish on the route and providers they
        started with; replaced providers are closed after the last of those calls.

        Returns whether the providers were made again, and the sections that changed but need a
        restart (``server``). When the providers cannot be made at all, a provider would become
        broken that is not broken now (a settings typo that ``config check`` refuses too), a ready
        provider would become not configured (its key's ``${VAR}`` unset), or a target
        names a model its ready provider does not offer (see :func:`missing_models`), nothing changes:
        the reload is refused (logged) and None returned. So it is for a file that would route nothing
        (see :func:`_emptied`), and for a file whose rules, default or bridges name a provider no installed
        plugin offers that the running configuration does not name already (``use: antropic/...``, see
        :func:`missing_models`). Each refusal is one ERROR line (:func:`log_refused_reload`); the warnings
        about the file are logged only once it is served. Given the file's ``text`` and its name
        (``source``), a refused section is said as at start-up: with the line of the key it names and a
        did-you-mean for an unknown key."""
        old, new = self.config, config
        if problems := _emptied(old, new, text):  # before the providers are made: nothing to close then
            log_refused_reload("; ".join(problems))
            return None
        remade = (old.providers, old.plugins) != (new.providers, new.plugins)
        registry = None
        known = remembered()
        if remade:  # before anything is switched: the new rules may name the new providers
            try:
                registry = load_registry(new.providers, disabled=new.plugins.disabled,
                                         extra_plugins=self._extra_plugins, log_broken=False)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                log_refused_reload(f"the providers of the new configuration could not be made "
                                   f"({type(exc).__name__}: {exc})", exc_info=True)
                return None
        problems, warnings = self._taken_down_by(registry, new, text, source) if registry is not None else ([], [])
        gone = set(self.registry.entries) - set(registry.entries) if registry is not None else set()
        unresolved = {name for _, name, _ in unknown_providers(old, self.registry)}
        refused, about_file = missing_models(new, registry or self.registry, gone, unresolved)
        problems += refused
        if problems:
            log_refused_reload("; ".join(problems))
            if registry is not None:
                self._retired.append(registry)  # its providers are closed, unused
                self._close_retired()
                self._refused_keys |= remembered() - known  # not masked: a reload's keys once it is accepted
            return None
        log_warnings([*warnings, *about_file])
        self.router = _router_of(new)
        self._names = config_names(new)
        self.secrets = longest_first(s for s in self.secrets if s not in self._names)
        if registry is not None:
            log_broken_providers(registry)
            _warn_hidden(registry)
            self._replace_registry(registry)
            # old keys stay masked too: a call under way may still quote one
            self.secrets = longest_first([*self.secrets, *config_secrets(new)])
            self._refused_keys -= {*self.secrets, *(remembered() - known)}
        was, wants = old.server.model_dump(exclude={"tls"}), new.server.model_dump(exclude={"tls"})  # TLS: see
        changed = [key for key in wants if wants[key] != was[key]]  # server.reload_config
        server = old.server
        if "auth_token" in changed and old.server.auth_token and new.server.auth_token:  # rotated: at once
            server = old.server.model_copy(update={"auth_token": new.server.auth_token})
            self.secrets = longest_first([*self.secrets, new.server.auth_token])
            changed.remove("auth_token")
            log.warning("SIGHUP: server.auth_token rotated: calls must send the new token from now on (the old "
                        "one is refused)")
        needs_restart = [f"server.{key}" for key in changed]
        if "auth_token" in changed:
            needs_restart[needs_restart.index("server.auth_token")] = (
                "server.auth_token (turning the token on or off; until the restart calls are checked as before)")
        self.config = old.model_copy(update={"routes": new.routes, "default": new.default, "bridges": new.bridges,
                                             "overrides": new.overrides, "providers": new.providers,
                                             "plugins": new.plugins, "server": server})
        return remade, needs_restart

    def _taken_down_by(self, registry: Registry, config: Config, text: str | None = None,
                       source: str = "") -> tuple[list[str], list[str]]:
        """The providers broken in ``registry`` that are not broken now, and those ready now that it
        leaves not configured (``api_key: "${UNSET}"``), as ``providers.<name>: <why>``; and the warnings
        to log if the reload is served.

        The plugin code is the same as the running one's (modules are imported once), so what breaks
        them is the new file: a reload must not take a working provider down. A provider broken
        already (a plugin that fails to import) does not block reloads, nor does a broken one new since
        (a plugin installed beside the running daemon) that ``config`` does not use: as at start-up, it
        is only a warning. A provider ready now that ``registry`` lacks (an instance, ``backup: {plugin:
        openai}``, whose section was removed or misspelled) while a target of ``config`` still names it is
        taken down too: its rules would move to their fallbacks, unsaid."""
        now = self.registry.entries
        problems, warnings = [], []
        for entry in registry.entries.values():
            before = now.get(entry.name)
            if entry.state is State.BROKEN and before is None and uses_provider(config, entry.name) is None:
                warnings.append(f"plugin {entry.plugin!r}, new since the daemon started, is broken (the configuration "
                                f"does not use provider {entry.name!r}, so the reload goes on and lists it broken): "
                                f"{entry.reason}")
            elif entry.state is State.BROKEN and (before is None or before.state is not State.BROKEN):
                refused = refused_section(entry, config)
                if refused is None:
                    problems.append(f"providers.{entry.name}: {entry.reason}")
                else:  # a key of the section: said as start-up and `config check` say it
                    problems.append(refused if text is None else
                                    with_lines(refused, text, source, settings_fields(entry)))
            elif entry.state is State.NOT_CONFIGURED and before is not None and before.state is State.READY:
                problems.append(f"providers.{entry.name}: provider {entry.name!r} is ready and would no longer be "
                                f"configured: {entry.reason} (to take it out of service on purpose, list it in "
                                "plugins.disabled)")
        for name, before in now.items():
            if before.state is not State.READY or name in registry.entries or name in config.providers:
                continue
            key = next((key for key, target in targets_of(config) if Target.parse(target).provider == name), None)
            if key is not None:
                new_sections = [section for section in config.providers if section not in now]
                problems.append(f"providers.{name}: provider {name!r} is ready and would no longer be configured: "
                                f"the file has no section for it{did_you_mean(name, new_sections)}, and {key} still "
                                "names it (to take it out of service on purpose, take it out of the rules too)")
        return problems, warnings

    def _replace_registry(self, registry: Registry) -> None:
        old, self.registry = self.registry, registry
        self.catalog = self._build_catalog()
        self._retired.append(old)
        self._close_retired()

    def _close_retired(self) -> None:
        """Close the replaced registries that no call uses any more (in the background)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a generator finalized at exit): aclose() closes what is left
            return
        for registry in [r for r in self._retired if r.calls == 0]:
            self._retired.remove(registry)
            task = loop.create_task(self._close_registry(registry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _build_catalog(self) -> Catalog:
        return {
            name: ProviderStatus(entry.state is State.READY, entry.reason, {m.name: m for m in entry.models})
            for name, entry in self.registry.entries.items()
        }

    def redact(self, text: str) -> str:
        """``text`` as clients may get it: with every secret replaced by ``***`` (the configured ones and
        those plugins resolved themselves, :func:`redact.remembered`), and valid Unicode
        (:func:`router.text.valid_text`: a plugin's text, such as a reason quoting an environment variable's
        undecodable bytes, may hold a lone surrogate, which protobuf cannot send). Every free text a client
        gets goes through it: error messages and details, route notes, attempts and providers' reasons."""
        if remembered_count() != self._remembered:  # a plugin made since (a reload) resolved more
            self._remembered = remembered_count()
            unused = self._names | self._refused_keys
            self.secrets = longest_first([*self.secrets, *(s for s in remembered() if s not in unused)])
        return valid_text(mask(text, self.secrets))

    # -- requests ------------------------------------------------------------------------

    def load_media(self, media_id: str) -> Media:
        return self.media.get(media_id).as_media()

    def _measure(self, request: Request) -> dict[int, Measured]:
        """Fill in the duration, pages and pixel size of the request's media where cheap to know; return what
        was measured of each (by the ``id`` of its :class:`Media`), for :func:`_unusable_media`.

        Measuring informs routing: media that cannot be measured (a malformed header, an
        unreadable file) keep an unknown duration and page count, and the request goes on.
        """
        measured: dict[int, Measured] = {}
        for media in request.media():
            if media.duration_seconds is None and media.pages is None and media.url is None:
                try:
                    if media.data is not None:
                        facts = measure_media(media.data, media.modality)
                    else:  # content-addressed: measured once, then on every turn of its sessions from memory
                        facts = _measure_stored(str(media.path), media.modality)
                    media.duration_seconds, media.pages, media.pixels = facts.seconds, facts.pages, facts.pixels
                    measured[id(media)] = facts
                except Exception as exc:
                    log.warning("could not measure %s media %s (%s): %s; its duration and pages stay unknown",
                                media.modality.value, media.media_id or media.filename or "(inline)",
                                media.mime_type, type(exc).__name__)
        return measured

    async def _with_history(self, request: Request, notes: list[str] | None = None) -> tuple[Request, list[Message]]:
        """``request`` with its session's history before it, and that history. The history's media count
        towards ``server.max_request_media_bytes`` with the request's own: its oldest messages are left
        out until they fit, as trimming to a context does, with a route note in ``notes``."""
        if not request.session_id:
            return request, []
        try:
            history = await self.sessions.run(self.sessions.history, request.session_id, self.load_media)
        except UnknownMedia as exc:  # the client did not send this id: say where it comes from and what to do
            media_id = exc.metadata.get("media_id", "")
            problem = (f"an earlier turn of this session refers to media {media_id}, which the media store no "
                       "longer holds whole (deleted or damaged): upload the same file again with UploadMedia "
                       "(the history finds it by its content), or start the session over with ResetSession")
            violation = (f"its history refers to media {media_id}, no longer stored whole: upload the same file "
                         "again, or ResetSession")
            raise UnknownMedia(problem, violations=[FieldViolation("request.session_id", violation)],
                               metadata={"media_id": media_id, "in": "session_history"}) from None
        if history:
            _check_only_new_turn(request, len(history))
        if not self.config.server.allow_urls:
            history = [_without_urls(message) for message in history]
        history = [_without_assistant_media(message) for message in history]
        history = self._within_media_limit(request, history, notes)
        full = dataclasses.replace(request, messages=history + request.messages, history_length=len(history))
        # a transcription of the history's recording
        problems = wire.task_problems(full, history_read=True)
        if problems:
            raise InvalidRequest(f"invalid request: {problems[0].field}: {problems[0].description}", violations=problems)
        return full, history

    def _within_media_limit(self, request: Request, history: list[Message],
                            notes: list[str] | None) -> list[Message]:
        """``history`` without its oldest messages, until its media and ``request``'s (whose own are within the
        limit: see :func:`router.wire.request_from_proto`) add up to ``server.max_request_media_bytes`` at most:
        every turn sends the history's media again, which no limit bounded. The kept history starts with a
        user message (see :func:`trim_history`); ``notes`` get a route note when any is left out."""
        limit = self.config.server.max_request_media_bytes
        kept, dropped = trim_history(history, request.messages, limit, _media_bytes)
        if dropped and notes is not None:
            notes.append(f"history trimmed: dropped the {dropped} oldest message(s) of session {request.session_id!r} "
                         f"to keep the media of the request and its history within {limit} bytes "
                         "(server.max_request_media_bytes)")
        return kept

    def _decide(self, request: Request, *, observed: bool = True,
                notes: list[str] | None = None) -> tuple[Decision, Facts]:
        """Route ``request``; ``observed`` tells the ``on_request`` hooks (not for explain: no request is made).
        Route notes for the client (a route_request hook's choice that was ignored) go to ``notes``."""
        facts = facts_of(request)
        if facts.conversation_tokens:  # targets known to refuse this history for its size must trim it
            facts.size_refusals = self.history_cuts.refusals(request)
        if self.cooldowns:  # targets that asked to be left alone for a while are tried last
            facts.cooling = self.cooldowns.cooling()
        if observed:
            self._hook("on_request", request=request)
        override = None
        if request.hints.provider or request.hints.model:
            override = Target(request.hints.provider or self._provider_of(request.hints.model), request.hints.model)
        chosen = self._plugin_choice(request, facts, notes) if override is None else None
        decision = self.router.decide(facts, self.catalog, override=override, chosen_by_plugin=chosen)
        if notes is not None:
            notes.extend(decision.notes)
            if note := beyond_every_context(decision, facts, self.catalog):
                notes.append(note)
        return decision, facts

    def _plugin_choice(self, request: Request, facts: Facts, notes: list[str] | None) -> Target | None:
        """The target a ``route_request`` hook chose, or None to leave it to the rules. A hook that fails,
        or chooses what is not one of the candidates, is logged (and the latter noted in ``notes``): the
        rules decide then. None is "no opinion", said by no log line."""
        pm = self.registry.plugin_manager
        if pm is None or not pm.hook.route_request.get_hookimpls():
            return None
        candidates = [str(t) for t in self.router.usable_targets(facts, self.catalog)]
        try:
            picked = pm.hook.route_request(request=request, candidates=candidates)
        except asyncio.CancelledError:
            raise
        except BaseException:  # a plugin's KeyboardInterrupt or SystemExit too: never the daemon's end
            log.exception("a route_request hook failed; using the rules")
            return None
        if picked is None:
            return None
        if isinstance(picked, str) and picked in candidates:
            return Target.parse(picked)
        _ignored_choice(picked, len(candidates), notes)
        return None

    def _provider_of(self, model: str) -> str:
        """The provider for a model named alone: one that is ready and may be overridden to first
        (``openai`` without a key and a ready ``work-openai`` both have gpt-4o)."""
        allowed = self.router.override_providers
        owners = [name for name, status in self.catalog.items() if model in status.models]
        owners.sort(key=lambda name: (not self.catalog[name].ready, allowed is not None and name not in allowed))
        return owners[0] if owners else ""

    def _trim(self, request: Request, plan: Plan, bridged: Mapping[int, int]) -> tuple[Request, int]:
        """``request`` (history + current turn) with the oldest history dropped to fit ``plan``'s model, and
        how many messages were dropped. A media in ``bridged`` (by ``id``) counts as the tokens given there,
        those of the text its bridge will make; a media already bridged is its text."""
        history, current = request.messages[:request.history_length], request.messages[request.history_length:]
        if not history:
            return request, 0
        budget = input_budget(plan.model, request.options.max_output_tokens)
        estimate = functools.partial(estimate_tokens, bridged=bridged, model=plan.model)  # PDF pages at its rate
        kept, dropped = trim_history(history, current, budget, estimate)
        if not dropped:
            return request, 0
        return dataclasses.replace(request, messages=kept + current, history_length=len(kept)), dropped

    async def _measure_media(self, request: Request) -> None:
        """:meth:`_measure` ``request``'s media; then refuse media of this turn no provider can use (see
        :func:`_unusable_media`) with :class:`InvalidRequest`, before any provider is called."""
        measured: dict[int, Measured] = {}
        if request.media():  # reads headers and files: keep the loop free
            measured = await asyncio.to_thread(self._measure, request)
        if problems := _unusable_media(request, measured):
            raise InvalidRequest(f"invalid request: {problems[0].field}: {problems[0].description}", violations=problems)

    async def explain(self, request: Request) -> RouteInfo:
        """The route a request would take; no provider is called."""
        notes: list[str] = []
        full, _ = await self._with_history(request, notes)
        await self._measure_media(full)  # the history's media too: rules on pages and durations see them
        decision, _ = self._decide(full, observed=False, notes=notes)
        route = RouteInfo.planned(decision)
        route.notes.extend(notes)
        if full.history_length:  # as Generate trims it for the planned model, its bridges' texts guessed
            plan = decision.plan  # starting without the history its target refused for its size, if it did
            shorter, skipped, why = self.history_cuts.start(full, str(plan.target))
            _, dropped = self._trim(shorter, plan, _bridged_guesses(shorter, plan))
            if dropped:
                route.notes.append(trimmed_note(dropped, request.session_id, plan, planned=True))
            if skipped:
                route.notes.append(refused_note(skipped, request.session_id, plan, why, True, planned=True))
        if request.turn_id and (found := await self._kept_turn(request)) is not None:
            route.notes.append(f"{_answered_at(request, found[1])}: Generate would send its kept answer again, "
                               "calling no provider")
        return route

    async def answer(self, request: Request, deadline: float | None,
                     request_id: str | None = None, held: bool = False) -> AsyncIterator[RouterEvent]:
        """Route and answer ``request``; yields router events ending with Done.

        ``request_id`` names the call in the log and to the providers (:func:`new_request_id` when None).
        ``held``: the client gets Done only (``Generate``), so a model failing mid-answer may give way to a
        fallback (see :func:`router.dispatch.execute`).
        The steps that completed (paid bridges, the answer) are recorded for statistics whatever
        the outcome: answered, failed or cancelled. The session's turn is kept on Done only. A call on a
        session where ``server.max_waiting_per_session`` calls already wait is refused (:class:`SessionBusy`), and
        one whose deadline comes while it waits for its turn ends with :class:`NoTimeLeft` (see :meth:`_turn_of`).
        """
        started = time.monotonic()  # a reset from now on drops this call's turn, waiting on the session or not
        clock = time.perf_counter()  # the route's latency covers history, measuring and routing too
        session = request.session_id
        if session:  # a ResetSession meanwhile must know the session is in use
            self._refuse_if_queue_full(session)  # before it waits, holding a call slot
            self._in_flight[session] += 1
        registry: Registry | None = None
        route: RouteInfo | None = None
        try:
            # a session's calls one at a time: each sees the turns before it
            async with self._turn_of(session, deadline) as waited_ms:
                notes: list[str] = []
                if waited_ms >= 1:
                    notes.append(f"waited {waited_ms:.0f} ms for the call before it on session {session!r} to end")
                if request.turn_id and (kept := await self._answered_before(request, notes, clock)) is not None:
                    yield RouteChosen(kept.route)
                    if kept.text:
                        yield TextDelta(kept.text)
                    yield Done(kept)
                    return
                untrimmed, history = await self._with_history(request, notes)
                await self._measure_media(untrimmed)
                decision, _ = self._decide(untrimmed, notes=notes)
                # each plan gets the history trimmed to its own model's context, after its bridges
                fit = self._trim if history else None
                ctx = CallContext(request_id=request_id or new_request_id(), deadline=deadline)
                registry = self.registry  # the one the decision was made with (no await since): kept for the call
                registry.calls += 1
                # Closed explicitly: a consumer that stops at Done must not leave the generator to the
                # garbage collector, whose finalizer schedules a task per request to close it.
                produced, most = 0, self._most_answer_chars  # characters of answer text so far, and the bound
                async with aclosing(execute(untrimmed, decision, registry, ctx, notes, fit, self.bridge_memo, clock,
                                            self.router.bridges, self.history_cuts, held,
                                            self.cooldowns)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            produced += len(event.text)
                            if produced > most:
                                raise self._answer_runs_on()
                        elif isinstance(event, RouteChosen):
                            route = event.route  # the steps are added to it as they complete
                        elif isinstance(event, Done):
                            await self._finish(request, event, started, registry)
                        yield event
        finally:
            if route is not None:
                self._record(route, request.hints.tags)
            if registry is not None:
                registry.calls -= 1
                if registry is not self.registry:
                    self._close_retired()
            if session:
                self._in_flight[session] -= 1
                if not self._in_flight[session]:
                    del self._in_flight[session]
                    self._session_turns.pop(session, None)

    async def _kept_turn(self, request: Request) -> tuple[KeptAnswer, float] | None:
        """The kept answer of the session's turn ``request.turn_id`` names, and when it was kept (see
        :meth:`SessionStore.answered`), or None. A turn that asked something else (another text, other media,
        another task or transcription language: :func:`_asks_the_same`) is refused with :class:`InvalidRequest`
        on ``request.turn_id``: a client reusing ids would otherwise get an old answer to a new question."""
        found = await self.sessions.run(self.sessions.answered, request.session_id, request.turn_id)
        if found is not None and found[0].asked and not await asyncio.to_thread(_asks_the_same, request, found[0].asked):
            problem = (f"names a turn of this session that asked something else ({_answered_at(request, found[1])}): "
                       "give each turn an id of its own, and the same one only to ask that turn again")
            raise InvalidRequest(f"invalid request: request.turn_id: {problem}",
                                 violations=[FieldViolation("request.turn_id", problem)])
        return found

    async def _answered_before(self, request: Request, notes: list[str], clock: float) -> Answer | None:
        """The kept answer of the session's turn ``request.turn_id`` names (see :meth:`_kept_turn`), as the
        call's answer: the route of the call that answered it, with ``notes`` and one saying so, no usage
        (nothing is called or billed); None when the session keeps no such turn."""
        found = await self._kept_turn(request)
        if found is None:
            return None
        kept, at = found
        route = RouteInfo(rule=kept.rule, provider=kept.provider, model=kept.model, notes=[*notes, (
            f"{_answered_at(request, at)}: its kept answer is sent again; no provider was called and no turn added")],
            kept_turn=request.turn_id)
        route.latency_ms = (time.perf_counter() - clock) * 1000
        finish = next((reason for reason in FinishReason if reason.value == kept.finish_reason), None)
        return Answer(kept.text, None, Usage(), route, finish)

    @property
    def _most_answer_chars(self) -> int:
        """The most characters an answer may grow to before it is cut off: twice what one message may carry
        (``server.max_message_bytes``), past which it can never be sent whole (Done carries it)."""
        return 2 * self.config.server.max_message_bytes

    def _answer_runs_on(self) -> AnswerTooLarge:
        """The error of an answer cut off at :attr:`_most_answer_chars`: a provider that did not stop (an
        endless stream grew the daemon 80 MB a second, the text kept until the call's deadline)."""
        limit = self._most_answer_chars
        return AnswerTooLarge(
            f"the answer passed {limit} characters (twice server.max_message_bytes) while it was produced, and "
            "was cut off: the provider did not stop. Ask for a shorter answer (options.max_output_tokens)",
            metadata={"limit_chars": str(limit)})

    def _refuse_if_queue_full(self, session: str) -> None:
        """Refuse a call on ``session`` with :class:`SessionBusy` when as many calls as
        ``server.max_waiting_per_session`` already wait there for the one under way: each waiting call holds a
        call slot (``server.max_concurrent_calls``), and one client's queue on one session must not take them
        all from the other sessions. Of the calls on a session under way (:attr:`_in_flight`), one answers
        (or was just given the turn) and the others wait."""
        limit = self.config.server.max_waiting_per_session  # a server setting: a reload keeps the old one
        under_way = self._in_flight.get(session, 0)
        if not under_way or under_way - 1 < limit:
            return
        waiting = under_way - 1
        busy = ("a call is under way on this session and server.max_waiting_per_session is 0: no other may wait "
                "for it" if not limit else
                f"{'1 call already waits' if waiting == 1 else f'{waiting} calls already wait'} for the call under "
                "way on this session, as many as server.max_waiting_per_session allows")
        raise SessionBusy(
            f"{busy} (a session's calls run one at a time): send the session's next call once the one before it is "
            f"answered, retry in {SESSION_RETRY_SECONDS:g} s, or raise server.max_waiting_per_session in the "
            "daemon's configuration (takes effect after a restart)",
            retry_after=SESSION_RETRY_SECONDS,
            metadata={"limit": "max_waiting_per_session", "limit_waiting_calls": str(limit)})

    @asynccontextmanager
    async def _turn_of(self, session: str, deadline: float | None) -> AsyncIterator[float]:
        """What a call on ``session`` holds from reading its history to keeping its turn: a second call
        waits for the first to end, then reads the history with the first's turn in it (else both would
        answer on the same history and be kept one after the other). Yields how long the call waited, in
        milliseconds; nothing is held for a call without a session.

        The wait ends :data:`DEADLINE_MARGIN_SECONDS` before ``deadline`` (a ``time.monotonic()``: its
        client's, or ``server.max_call_seconds``) with :class:`NoTimeLeft`, as does a turn that comes later
        than that: no provider call is started with no time left (it would be cut at once and counted as the
        provider's timeout), and the client learns that its call waited for the earlier ones on its session,
        not that a provider may hang."""
        if not session:
            yield 0.0
            return
        ahead = self._in_flight[session] - 1  # the calls before this one, which counts itself already
        turn = self._session_turns.setdefault(session, asyncio.Lock())
        started = time.perf_counter()
        latest = None if deadline is None else deadline - DEADLINE_MARGIN_SECONDS
        try:
            async with asyncio.timeout(None if latest is None else latest - time.monotonic()):
                await turn.acquire()
        except TimeoutError:
            raise _no_turn(ahead, time.perf_counter() - started) from None
        try:
            if ahead and latest is not None and time.monotonic() >= latest:  # given the turn just too late
                raise _no_turn(ahead, time.perf_counter() - started)
            yield (time.perf_counter() - started) * 1000
        finally:
            turn.release()

    def _record(self, route: RouteInfo, tags: Sequence[str] = ()) -> None:
        """Record the route's completed steps for statistics, with the request's ``tags``, and its
        provider calls in :attr:`health` (a failure is only logged; :func:`execute` tells :attr:`cooldowns`)."""
        try:
            for attempt in route.attempts:
                if attempt.ok:
                    self.health.succeeded(attempt.provider)
                elif isinstance(attempt, FailedAttempt) and attempt.reason not in _REQUESTS_FAULT:
                    # not a cancelled call (no fault of the provider's), nor one refused for its input
                    # what any client reads of it: no text of the provider's (the log has it whole)
                    self.health.failed(attempt.provider, Failure(attempt.at, attempt.reason, attempt.model,
                                                                 attempt.http_status))
        except Exception:
            log.exception("recording the providers' recent health failed")
        try:
            self.sessions.record(Answer("", None, Usage(), route), tags)  # record() reads the route's steps only
        except Exception:
            log.exception("recording call statistics failed")

    async def _finish(self, request: Request, done: Done, started: float, registry: Registry | None = None) -> None:
        """Save the session's turn, tell the observer hooks (statistics are recorded by :meth:`answer`).

        The answer is already computed: a failure here is logged, never turned into a failed call;
        a turn that could not be kept gets a route note, which the client sees (Done is sent after).
        A session reset since the call ``started`` (a time.monotonic(), when it arrived: one waiting for the
        call before it on the session was sent for the conversation the reset forgot) keeps no turn of it,
        and its route says so. ``registry``: the one the call ran on (see :meth:`_kept_reply`).
        """
        answer = done.answer
        if request.session_id and self._resets.get(request.session_id, -math.inf) > started:
            log.info("session %s was reset while a call on it was under way: that call's turn is not kept",
                     session_tag(request.session_id))
            answer.route.notes.append(f"this turn was not kept in session {request.session_id!r}: the session "
                                      "was reset (ResetSession) while the call was under way")
            try:  # nor what its bridges kept (a transcript), which the reset came too early to forget
                await self.sessions.run(self.sessions.forget_kept, request.session_id)
            except Exception as exc:
                log.warning("session %s: the texts kept by a call that ran while it was reset could not be "
                            "forgotten (%s); the next reset or prune forgets them", session_tag(request.session_id), exc)
        elif request.session_id:  # on the store's thread: turn_count and append with no other job between
            cancelled = threading.Event()
            try:
                lost = await self.sessions.run(self._save_turn, request, answer, cancelled, registry, started)
            except asyncio.CancelledError:  # the client gets no answer: the turn waiting for the write lock is dropped
                cancelled.set()
                raise
            if lost:
                answer.route.notes.append(f"this turn was not kept in session {request.session_id!r}: {lost}")
        self._hook("on_response", request=request, answer=answer)

    def _save_turn(self, request: Request, answer: Answer, cancelled: threading.Event | None = None,
                   registry: Registry | None = None, started: float = math.inf) -> str | None:
        """Append the question and the answer to the request's session; return why it failed, if it did
        (the failure is logged; the answer is sent all the same).

        A call ``cancelled`` meanwhile (its deadline passed, its client left) while the turn waited for the
        database (another process writing, up to the busy timeout) keeps no turn: its client saw it fail and
        may ask again. Once written, the turn stays (a cancellation in the instant of the commit).

        An empty answer (a refusal, a filtered or cut-off reply) keeps no turn: an empty assistant
        message is dropped or refused by providers, and the question alone would make two user
        turns in a row, which Gemini refuses. The client may ask again.

        Nor does a call during which a media of its turn was deleted (``DeleteMedia``, or a reset erasing the
        media of another session), after the call ``started`` (a ``time.monotonic()``): kept, the turn named a
        media no longer stored (every later turn of the session then failed with ``MEDIA_NOT_FOUND``), or
        stored again the bytes of an inline media its client had just had deleted. Checked before the media
        are stored and again under the write lock, which a deletion takes too.
        """
        turns = [m for m in request.messages if m.role is not Role.SYSTEM]
        if not turns:  # a call of system prompts only adds no turn to the conversation
            return None
        if not answer.text:  # the model's own transcript is already the text of a transcription
            log.info("the answer on session %s is empty: its turn is not kept", session_tag(request.session_id))
            return None
        replies = [i for i, m in enumerate(turns) if m.role is Role.ASSISTANT]
        try:
            if replies and self.sessions.turn_count(request.session_id):
                # a conversation given whole to start the session, which another call started meanwhile:
                # only this call's own turn is added, not the conversation a second time
                turns = turns[replies[-1] + 1:]
            turns.append(Message(Role.ASSISTANT, [Part(text=self._kept_reply(request, answer, registry))]))
            reply = None if not request.turn_id else KeptAnswer(
                request.turn_id, answer.text, answer.route.rule, answer.route.provider, answer.route.model,
                answer.finish_reason.value if answer.finish_reason is not None else "", _asked(request))
            deleted: list[Media] = []

            def store_unless_deleted(media: Media) -> str:
                """The media store id of ``media`` (inline bytes are stored first; for URL-free media only), unless
                the media was deleted after the call started."""
                media_id = media.media_id or hashlib.sha256(media.read_bytes()).hexdigest()
                if self.sessions.deleted_since([media_id], started):
                    deleted.append(media)
                    raise _DeletedDuringCall
                if not media.media_id:
                    media.media_id = self.media.put_bytes(media.read_bytes(), media.mime_type, media.modality,
                                                          media_id).media_id
                return media.media_id

            def wanted() -> bool:
                """Not when the call was cancelled, nor when a media of the turn was deleted meanwhile."""
                if cancelled is not None and cancelled.is_set():
                    return False
                gone = set(self.sessions.deleted_since(
                    {p.media.media_id for m in turns for p in m.parts if p.media is not None and p.media.media_id},
                    started))
                deleted.extend(p.media for m in turns for p in m.parts if p.media is not None
                               and p.media.media_id in gone)
                return not gone

            try:
                kept = self.sessions.append(request.session_id, turns, store_unless_deleted, wanted=wanted,
                                            reply=reply)
            except _DeletedDuringCall:
                kept = False
            if deleted:
                log.info("%d media of a turn on session %s were deleted while its call was under way: the turn "
                         "is not kept", len({m.media_id or id(m) for m in deleted}), session_tag(request.session_id))
                return _deleted_reason(deleted)
            if not kept:
                log.info("the call on session %s was cancelled before its turn was written: the turn is not kept",
                         session_tag(request.session_id))
        except Exception as exc:
            reason = _unsaved_reason(exc, self.sessions)
            if isinstance(exc, StorageFull | StorageFailed | DataDirGone | sqlite3.Error):  # the disk or the database: one line, no traceback
                log.error("saving this turn of session %s failed; the answer is sent, the turn is not kept: %s",
                          session_tag(request.session_id), reason)
            else:
                log.exception("saving this turn of session %s failed; the answer is sent, the turn is not kept",
                              session_tag(request.session_id))
            return reason
        return None

    def _kept_reply(self, request: Request, answer: Answer, registry: Registry | None = None) -> str:
        """The assistant message a session keeps for ``answer``: its text, but for a question an
        extraction-only model (``local/extract``) answered with the media's text, :data:`NOT_ANSWERED_TURN`.
        Kept as the reply, that text told the next turn's model, as its own words, that no language model
        was configured, left the question settled, and sent every document twice from then on.
        ``registry``: the one the call ran on (the current one when None): a reload during the call may
        have disabled or removed its provider since."""
        provider = (registry or self.registry).ready(answer.route.provider)
        model = provider.model(answer.route.model) if provider is not None else None
        if model is None or FEATURE_EXTRACTION_ONLY not in model.features:
            return answer.text
        return answer.text if request.effective_task is Task.TRANSCRIBE else NOT_ANSWERED_TURN

    def _hook(self, name: str, **kwargs: object) -> None:
        pm = self.registry.plugin_manager
        if pm is None:
            return
        hook = getattr(pm.hook, name)
        if not hook.get_hookimpls():  # the common case: no plugin listens
            return
        try:
            hook(**kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException:  # a plugin's KeyboardInterrupt or SystemExit too: never the daemon's end
            log.exception("an %s hook failed; ignored", name)

    # -- other calls ---------------------------------------------------------------------

    def providers(self) -> list[ProviderEntry]:
        return sorted(self.registry.entries.values(), key=lambda e: e.name)

    async def areset_session(self, session_id: str, *, erase_media: bool = False) -> Removed:
        """Forget a session; return what was removed (:class:`UnknownSession` if it has no turn stored
        and no call on it is under way).

        With ``erase_media``, the media its turns referred to are deleted from the media store too
        (:meth:`router.media.MediaStore.erase`), on the store's thread in the reset's transaction, unless
        another session refers to them; one INFO line (the session's tag, never its id) gives the counts.
        Once the reset is done, every ready provider is asked to delete its own copies of those media
        (:meth:`_forget_media`), in the background.

        A database another process keeps locked is :class:`StorageBusy` (retryable), a full disk
        :class:`StorageFull` (see :func:`router.sessions.storage_error`), and a data directory removed or
        replaced under the daemon :class:`DataDirGone`: no internal error, the session left as it was."""
        in_use = self._mark_reset(session_id)
        self.history_cuts.forget(session_id)
        erased: set[str] = set()

        def erase(media_ids: set[str]) -> int:
            """:meth:`MediaStore.erase`, noting the media it was given (their sha256s: the media ids) once erased."""
            count = self.media.erase(media_ids)
            erased.update(media_ids)
            return count

        try:
            removed = await self.sessions.run(self.sessions.reset, session_id, erase if erase_media else None)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reset the session") or exc from None
        _check_reset(removed, in_use)
        if erase_media:
            log.info("session %s reset with its media erased: %d stored message(s) and %d other row(s) removed, "
                     "%d media deleted, %d kept (another session refers to them)", session_tag(session_id),
                     removed.turns, removed.others, removed.media, removed.media_kept)
            self._forget_media(frozenset(erased), f"with session {session_tag(session_id)}")
        return removed

    async def adelete_media(self, media_ids: list[str]) -> MediaDeleted:
        """Delete the stored media ``media_ids`` (``DeleteMedia``) that no session refers to, with the texts bridges
        kept for them (:meth:`router.sessions.SessionStore.delete_media`, on the store's thread, in one transaction
        with :meth:`router.media.MediaStore.erase_each`); those a session refers to are kept. One INFO line gives
        the counts, never the ids (content hashes: they tell who sent which file). Then every ready provider is
        asked to delete its own copies of all but those kept (:meth:`_forget_media`), in the background: of media
        not found too, which a provider may hold (sent inline without a session). Storage
        faults are refused as :meth:`areset_session`'s are, nothing changed."""
        asked = list(dict.fromkeys(media_ids))  # each id once, in order
        try:
            deleted = await self.sessions.run(self.sessions.delete_media, asked, self.media.erase_each)
        except sqlite3.Error as exc:
            raise storage_error(exc, "delete the media") or exc from None
        log.info("media deleted on request: %d deleted, %d not found, %d kept (a session refers to them)",
                 len(deleted.deleted), len(asked) - len(deleted.deleted) - len(deleted.kept), len(deleted.kept))
        # every id no session keeps: a provider may hold a copy of media the store never kept (sent inline
        # without a session, and uploaded by its plugin: Gemini's Files API)
        self._forget_media(frozenset(asked) - deleted.kept.keys(), "by DeleteMedia")
        return deleted

    def _forget_media(self, sha256s: frozenset[str], erased: str) -> None:
        """Have every ready provider delete its copies of the erased media ``sha256s`` (:meth:`Provider.forget_media`),
        all at once, each in a task of its own, as the background closes of providers' calls run
        (:func:`router.invoke.in_background`: the daemon's stop cancels them, and names a provider that hangs):
        the client of the reset (or deletion) does not wait for the providers, which cannot fail it (its
        deletions are done). Each is bounded by :data:`FORGET_MEDIA_SECONDS` (:meth:`_forget_in_time`); its
        registry stays open meanwhile (a reload closes it once they end). ``erased``: how they were, for the
        log ("with session <its tag>", "by DeleteMedia")."""
        if not sha256s:
            return
        registry = self.registry
        for entry in registry.entries.values():
            if entry.state is State.READY and entry.provider is not None:
                registry.calls += 1
                in_background(self._forget_in_time(registry, entry.provider, sha256s, erased),
                              ProviderCall(entry.provider.name, f"media erased {erased}"))

    async def _forget_in_time(self, registry: Registry, provider: Provider, sha256s: frozenset[str],
                              erased: str) -> None:
        """``provider.forget_media(sha256s)``, cancelled after :data:`FORGET_MEDIA_SECONDS`; that, what it
        raises (a plugin's KeyboardInterrupt or SystemExit too), or its cancellation by the daemon's stop is
        logged, never raised but the cancellation. Then ``registry``'s call counted by :meth:`_forget_media` ends."""
        bound = asyncio.timeout(FORGET_MEDIA_SECONDS)
        try:
            async with bound:
                await provider.forget_media(sha256s)
        except asyncio.CancelledError:
            log.warning("provider %s had not forgotten the %d media erased %s when the daemon stopped; "
                        "cancelled: its copies of them may stay at the provider until they expire", provider.name,
                        len(sha256s), erased)
            raise
        except BaseException as exc:
            if bound.expired():
                log.warning("provider %s had not forgotten the %d media erased %s after %g s; "
                            "cancelled: its copies of them may stay at the provider until they expire", provider.name,
                            len(sha256s), erased, FORGET_MEDIA_SECONDS)
            else:
                log.error("provider %s failed to forget the %d media erased %s; its copies of them "
                          "may stay at the provider until they expire", provider.name, len(sha256s), erased,
                          exc_info=exc)
        finally:
            registry.calls -= 1
            if registry is not self.registry:
                self._close_retired()

    def stop_storing(self) -> None:
        """Store nothing more in the data directory, which was removed or replaced under the daemon (see
        :func:`router.server.watch_data_dir`): calls on a session, uploads and resets are refused with
        :class:`DataDirGone`, and statistics rows are no longer kept."""
        self.sessions.stop_storing()
        self.media.stop_storing()

    def _mark_reset(self, session_id: str) -> bool:
        """Note the reset of ``session_id`` now, before the store does it; return whether a call on it is
        under way.

        A call under way on this session (its first turn, maybe) was built on what is forgotten: it must
        not bring it back. Marked before the store's thread deletes, since such a call may finish (and
        ask for its turn to be appended) meanwhile; a call that starts later reads the history after the
        deletion (the store's jobs run in order) and keeps its turn.
        """
        self._resets[session_id] = time.monotonic()
        self._resets.move_to_end(session_id)
        while len(self._resets) > RESETS_KEPT:
            self._resets.popitem(last=False)
        return bool(self._in_flight.get(session_id))

    async def aclose(self) -> None:
        """Close the providers and the sessions database at once: a provider slow to close (past the
        daemon's stop bound) leaves the database closed all the same."""
        await asyncio.gather(self._close_providers(), self.sessions.aclose())

    async def _close_providers(self) -> None:
        registries, self._retired = [self.registry, *self._retired], []
        await asyncio.gather(*(self._close_registry(registry) for registry in registries))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _close_registry(self, registry: Registry) -> None:
        """Close ``registry``'s providers all at once (one slow to close does not keep the others open), each
        cut after :data:`PROVIDER_CLOSE_SECONDS` (see :meth:`_close_provider`); failures are logged."""
        await asyncio.gather(*(self._close_provider(provider) for provider in registry.providers()))

    async def _close_provider(self, provider: Provider) -> None:
        """``provider.aclose()``, cancelled with a warning naming the provider once it has run
        :data:`PROVIDER_CLOSE_SECONDS` (it awaits something slow: deleting uploads, draining a pool); returns
        when it has ended, listed in :attr:`closes_cut` meanwhile once cancelled."""
        close = asyncio.ensure_future(close_provider(provider))
        await asyncio.wait([close], timeout=PROVIDER_CLOSE_SECONDS)
        if close.done():
            return
        log.warning("closing provider %s did not end within %g s: cancelled", provider.name, PROVIDER_CLOSE_SECONDS)
        close.cancel()
        self.closes_cut.append(provider.name)
        try:
            await asyncio.wait([close])
        finally:
            self.closes_cut.remove(provider.name)


#: Failures that say nothing of a provider's health: the request's input was too large for the model, or
#: of a format it does not take (Whisper refuses a file over 25 MB before sending it); the next target is
#: tried, and ``providers`` would otherwise show a working provider failing.
_REQUESTS_FAULT = frozenset({"INPUT_TOO_LARGE", "UNSUPPORTED_INPUT"})


def _bridged_guesses(request: Request, plan: Plan) -> dict[int, int]:
    """By ``id``, the tokens each media of ``request`` that ``plan``'s bridges turn into text counts before it
    is bridged (:func:`bridged_tokens_guess`, and the media too for a text beside it), as :meth:`App._trim`
    takes them: a converted image stays an image, counted as one."""
    guesses: dict[int, int] = {}
    for media in request.media():
        bridge = next((b for b in plan.bridges if b.converts(media)), None)
        if bridge is not None and not bridge.convert_to:
            guesses[id(media)] = bridged_tokens_guess(media) + (media_tokens(media) if bridge.keep_media else 0)
    return guesses


#: How route_request choices are shown in the log and route notes: a plugin may return anything.
_CHOICE_REPR = reprlib.Repr()
_CHOICE_REPR.maxstring = _CHOICE_REPR.maxother = 100


def _ignored_choice(picked: object, candidates: int, notes: list[str] | None) -> None:
    """Log, and note for the client, a ``route_request`` choice that is not one of the ``candidates``
    (how many there were): the request is routed by the rules instead."""
    shown = _CHOICE_REPR.repr(picked)
    targets = f"{candidates} target{'' if candidates == 1 else 's'}"
    log.warning("a route_request hook chose %s, which is not one of the %s that can take this request "
                "(return one of `candidates` exactly, as \"provider/model\", or None to leave the choice to the "
                "rules); routed by the rules", shown, targets)
    if notes is not None:
        notes.append(f"the route_request hook chose {shown}, which is not one of the {targets} that can take "
                     "this request; routed by the rules")


def _check_reset(removed: Removed, in_use: bool) -> None:
    """:class:`UnknownSession` for a session of which a reset removed nothing (no turn, no kept text of a
    call of its) and on which no call is under way."""
    if not removed.anything and not in_use:
        raise UnknownSession("no such session: it has no stored turns")  # its id is a key: not in the log line


def _check_only_new_turn(request: Request, stored: int) -> None:
    """A request on a session that holds turns sends only its new turn: assistant messages in it would be
    stored again after the session's own (a client resending the whole conversation doubles it). A new
    session may be started from a conversation given whole."""
    replies = [i for i, m in enumerate(request.messages) if m.role is Role.ASSISTANT]
    if replies:
        problem = (f"the session already holds {stored} message(s): send only the new turn "
                   "(user and system messages); the router adds the earlier ones")
        raise InvalidRequest(f"invalid request: {problem}", violations=[
            FieldViolation(f"request.messages[{replies[0]}].role", problem)])


def _answered_at(request: Request, at: float) -> str:
    """"turn 't-1' of session 's1' was answered at <time> UTC": of ``request``'s turn id, kept at ``at``."""
    return (f"turn {request.turn_id!r} of session {request.session_id!r} was answered at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(at))} UTC")


def _asked(request: Request, older: bool = False) -> str:
    """A digest of what ``request`` (a client's turn, without its session's history) asks: its messages' roles,
    texts and media (by content: an inline media's bytes hash to the id its upload would have), and the options
    that change what is asked, so that a turn asked again is told from another question sent under the same
    turn id. The options are the task as resolved (:attr:`Request.effective_task`: ``auto``, or unspecified, is
    the task it resolves to) and, on a turn that has something to transcribe (audio or video of its own, or a
    transcription of its history's recording), the transcription's language, diarization and speakers. How it
    is answered (temperature, max_output_tokens, routing hints) is not part of it. Reads inline bytes: in a
    thread.

    ``older``: the digest as earlier versions made it, which the turns they kept carry: the task as sent (but
    ``auto``), and the language, diarization and speakers whatever the turn holds; default options add nothing
    (the digests kept before options counted stay valid)."""
    digest = hashlib.sha256()
    options = request.options
    transcribed = [("language", options.language), ("diarization", options.diarization),
                   ("speakers", options.speakers_expected)]
    if older:
        asked = {name: value for name, value in [("task", options.task.value), *transcribed]
                 if value and value != "auto"}
    else:
        task = request.effective_task
        speech = task is Task.TRANSCRIBE or any(
            media.modality in (Modality.AUDIO, Modality.VIDEO) for media in request.turn_media())
        asked = {"task": task.value, **{name: value for name, value in transcribed if speech and value}}
    if asked:
        digest.update(json.dumps(["options", asked], sort_keys=True).encode())
    for message in request.messages:
        for part in message.parts:
            media = part.media
            if media is None:
                what = f"text:{part.text}"
            elif media.media_id or media.url:
                what = f"media:{media.media_id or media.url}"
            else:
                what = f"media:{hashlib.sha256(media.read_bytes()).hexdigest()}"
            digest.update(json.dumps([message.role.value, what]).encode())
    return digest.hexdigest()


def _asks_the_same(request: Request, asked: str) -> bool:
    """Whether ``request`` asks what a kept turn whose digest is ``asked`` asked (see :func:`_asked`): by this
    version's digest or, for a turn an earlier version kept, by the digest it made then (a retry spelled as the
    first call was). Reads inline bytes: in a thread."""
    return _asked(request) == asked or _asked(request, older=True) == asked


def _unusable_media(request: Request, measured: Mapping[int, Measured]) -> list[FieldViolation]:
    """A violation for each media of this turn (not its session's history) that no provider can use, found
    while measuring it (``measured``, by the ``id`` of each :class:`Media`; see :meth:`App._measure`).
    Sent, each is paid for (an upload, a call) and refused by the provider as a bad request, which ends the
    call without trying the rule's fallbacks:

    - an audio or video measured to last exactly 0 s: a WAV header with no samples ("audio file is too
      short"), as an empty ``media.data`` is refused here. A duration not measured (None) is no reason:
      PyAV gives none for a container that declares 0;
    - a recording with no audio track (a silent screen recording) to transcribe (TASK_TRANSCRIBE, or audio
      alone): AssemblyAI answers "File does not appear to contain audio";
    - a PDF that opens only with its password: every provider refuses it ("The PDF specified was not valid");
    - a PNG, JPEG, GIF or WebP image that cannot be decoded (cut short, damaged: a half-finished upload), which
      models take as it is: OpenAI refuses the call ("You uploaded an unsupported image"), naming no image;
    - a stored media recorded under a type that names no format (``application/octet-stream``, kept by an
      older version of the router), or a URL's declared so: no model takes it, and NO_ROUTE would not say why.
    """
    problems = []
    transcribed = {id(m) for m in request.current_media()} if request.effective_task is Task.TRANSCRIBE else set()
    for media, i, j in request.media_places():
        if i < 0:  # the session's history: checked on its own turn
            continue
        field, problem = f"request.messages[{i}].parts[{j}].media", ""
        facts = measured.get(id(media), Measured())
        if normalise_mime(media.mime_type) in GENERIC_TYPES and media.media_id:
            field += ".media_id"
            problem = (f"stored as {media.mime_type!r} (by an older version), a type naming no format, which "
                       "no model takes: upload the file again declaring its MIME type; its record then takes it")
        elif normalise_mime(media.mime_type) in GENERIC_TYPES:  # a URL's: its content is not seen here
            field += ".mime_type"
            problem = (f"declared {media.mime_type!r}, a type that names no format, which no model takes: "
                       "declare the file's MIME type (e.g. application/pdf or image/png)")
        elif media.modality in (Modality.AUDIO, Modality.VIDEO) and media.duration_seconds == 0:
            problem = (f"the {media.modality.value} is empty: its measured duration is 0 s "
                       "(a header with no samples), so there is nothing to hear")
        elif facts.no_audio and id(media) in transcribed:
            problem = (f"the {'video' if media.modality is Modality.VIDEO else 'recording'} has no audio track, "
                       "so there is nothing to transcribe "
                       "(to ask about its pictures, send the video with TASK_CHAT)")
        elif facts.locked:
            problem = ("password-protected PDF: remove the password (it opens only with its password, "
                       "which no provider is given)")
        elif facts.damaged:
            name = routing.media_name(media)
            problem = (f"{name + ': ' if name else ''}the image cannot be decoded ({facts.damaged}): damaged "
                       "or cut short; send the whole file")
        if problem:
            problems.append(FieldViolation(field, problem))
    return problems


def _media_bytes(messages: Sequence[Message]) -> int:
    """The bytes of the media of ``messages``, as ``server.max_request_media_bytes`` counts them (media given by
    URL count 0: their size is unknown)."""
    return sum(part.media.size for message in messages for part in message.parts if part.media is not None)


def _without_urls(message: Message) -> Message:
    """``message`` with media given by URL replaced by a note: turns kept while ``allow_urls`` was on
    must not send URLs once it is off."""
    if not any(p.media is not None and p.media.url for p in message.parts):
        return message
    return Message(message.role, [
        Part(text=f"[{p.media.modality.value} given by URL left out: this daemon no longer accepts media URLs]")
        if p.media is not None and p.media.url else p
        for p in message.parts
    ])


def _without_assistant_media(message: Message) -> Message:
    """``message`` with the media of an assistant turn replaced by a note: sessions kept before such media
    were refused (one started on Gemini, which takes them) held turns that OpenAI and Claude refuse, so that
    every later turn sent to them failed."""
    if message.role is not Role.ASSISTANT or not any(p.media is not None for p in message.parts):
        return message
    return Message(message.role, [
        Part(text=f"[{p.media.modality.value} left out: only user messages may carry media]")
        if p.media is not None else p
        for p in message.parts
    ])


#: The trailing metadata that carries a call's request id (also ``request_id`` in an error's
#: ErrorInfo metadata): the id its line in the daemon's log and its provider calls' lines carry.
REQUEST_ID_KEY = "x-mmrouter-request-id"


def _no_turn(ahead: int, waited: float) -> NoTimeLeft:
    """The error of a call whose deadline came while it waited ``waited`` seconds for the ``ahead`` calls
    that were on its session before it."""
    before = "the call" if ahead <= 1 else f"the {ahead} calls"
    return NoTimeLeft(f"the call waited {waited:.1f} s for {before} before it on its session (a session's calls run "
                      "one at a time), and its deadline (set by its client, or server.max_call_seconds) came, or was "
                      f"less than {DEADLINE_MARGIN_SECONDS:g} s away, before its turn: no provider was called. Send a "
                      "session's next call once the one before it is answered, or set a longer deadline")


def new_request_id() -> str:
    """A new id for one call: 32 hex digits."""
    return f"{random.getrandbits(128):032x}"


def monotonic_deadline(time_remaining: float | None) -> float | None:
    """A ``time.monotonic()`` deadline from a gRPC call's remaining seconds."""
    return None if time_remaining is None else time.monotonic() + time_remaining

