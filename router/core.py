"""The router application: configuration, plugins, stores and routing wired together.

:class:`App` is what the gRPC servicer delegates to. It knows nothing of
protobuf; it takes and gives the internal model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import routing
from .config import Config
from .dispatch import RouterEvent, execute
from .errors import UnknownSession
from .media import MediaStore
from .outcome import Answer, Done, RouteInfo
from .plugins import ProviderEntry, Registry, State, load_registry
from .redact import longest_first, mask
from .routing import Catalog, Decision, Facts, Plan, ProviderStatus, Target, estimate_tokens, facts_of
from .sessions import SessionStore, trim_history
from .sniff import measure
from .types import CallContext, Media, Message, Modality, Part, Request, Role

log = logging.getLogger(__name__)

#: How many recent resets are remembered for the calls under way (see App.reset_session).
RESETS_KEPT = 10_000

_SECRET_KEY = re.compile(r"key|token|secret|password", re.IGNORECASE)
_SECRET_ENV = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)$")


def secrets_of(providers: Mapping[str, Mapping], *extra: str) -> set[str]:
    """Every secret-looking value: provider settings named like keys, such environment variables, ``extra``.

    A URL's password (``http://user:password@host``, e.g. in a ``base_url``) counts as a secret too.
    Each value is kept as given and stripped of surrounding whitespace, since plugins send the
    stripped key (a secret file usually ends with a newline); values under 4 characters are left out.
    """
    found = {
        value
        for settings in providers.values()
        for key, value in settings.items()
        if _SECRET_KEY.search(key) and isinstance(value, str)
    }
    found |= {secret for settings in providers.values() for value in settings.values()
              for secret in _url_credentials(value)}
    found |= {value for name, value in os.environ.items() if _SECRET_ENV.search(name)}
    found |= set(extra)
    found |= {value.strip() for value in found}
    return {value for value in found if len(value) >= 4}


#: A user name in a URL this long is taken for a token (some gateways take the key as the user name).
_TOKEN_AS_USER = 16


def _url_credentials(value: object) -> set[str]:
    """Of a URL with credentials: the ``user:password`` part and the password, as written and decoded;
    a user name alone when it is long enough to be a token."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return set()
    try:
        netloc = urlsplit(value.strip()).netloc
    except ValueError:
        return set()
    userinfo, at, _host = netloc.rpartition("@")
    if not at:
        return set()
    user, _, password = userinfo.partition(":")
    found = {userinfo, password, unquote(password)} if password else set()
    if len(user) >= _TOKEN_AS_USER:  # ``TOKEN@host``, ``TOKEN:@host``, ``TOKEN:x-oauth-basic@host``
        found |= {user, unquote(user)}
    return found


@functools.lru_cache(maxsize=4096)
def _measure_stored(path: str, modality: Modality) -> tuple[float | None, int | None]:
    """:func:`measure` of a stored file; its path names its content, so the answer never changes."""
    return measure(path, modality)


def _router_of(config: Config) -> routing.Router:
    return routing.Router(
        rules=config.routes, default=config.default, bridges=config.bridges,
        allow_overrides=config.overrides.allow, override_providers=config.overrides.providers,
    )


class App:
    """Everything a running daemon holds."""

    def __init__(self, config: Config, extra_plugins: Mapping[str, object] | None = None) -> None:
        self.config = config
        data_dir = Path(config.server.data_dir).expanduser()
        self._extra_plugins = extra_plugins
        self.registry: Registry = load_registry(
            config.providers, disabled=config.plugins.disabled, extra_plugins=extra_plugins
        )
        #: Registries replaced by a reload that still have calls under way; closed when the last ends.
        self._retired: list[Registry] = []
        self._closing: set[asyncio.Task] = set()
        self.media = MediaStore(data_dir / "media", config.server.max_upload_bytes)
        self.sessions = SessionStore(data_dir / "sessions.sqlite")
        #: Sessions reset lately, and when (time.monotonic()), the newest last.
        self._resets: OrderedDict[str, float] = OrderedDict()
        self.router = _router_of(config)
        self.secrets = longest_first(secrets_of(config.providers, config.server.auth_token))
        self.catalog: Catalog = self._build_catalog()

    def reload(self, config: Config) -> tuple[bool, list[str]]:
        """Serve ``config`` from now on: its rules, default, bridges and overrides, and, when the
        ``providers`` or ``plugins`` sections changed (a rotated key, a new base_url or model),
        providers made again from them. Calls under way finish on the route and providers they
        started with; replaced providers are closed after the last of those calls.

        Returns whether the providers were made again, and the sections that changed but need a
        restart (``server``)."""
        old, new = self.config, config
        self.router = _router_of(new)
        remade = (old.providers, old.plugins) != (new.providers, new.plugins)
        if remade:
            self._replace_registry(load_registry(new.providers, disabled=new.plugins.disabled,
                                                 extra_plugins=self._extra_plugins))
            # old keys stay masked too: a call under way may still quote one
            self.secrets = longest_first([*self.secrets, *secrets_of(new.providers, new.server.auth_token)])
        kept = {"tls"}  # the daemon reloads its certificate itself (server.reload_config)
        needs_restart = [] if old.server.model_dump(exclude=kept) == new.server.model_dump(exclude=kept) else ["server"]
        self.config = old.model_copy(update={"routes": new.routes, "default": new.default, "bridges": new.bridges,
                                             "overrides": new.overrides, "providers": new.providers,
                                             "plugins": new.plugins})
        return remade, needs_restart

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
            task = loop.create_task(registry.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _build_catalog(self) -> Catalog:
        return {
            name: ProviderStatus(entry.state is State.READY, entry.reason, {m.name: m for m in entry.models})
            for name, entry in self.registry.entries.items()
        }

    def redact(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        return mask(text, self.secrets)

    # -- requests ------------------------------------------------------------------------

    def load_media(self, media_id: str) -> Media:
        return self.media.get(media_id).as_media()

    def _measure(self, request: Request) -> None:
        """Fill in the duration and pages of the request's media where cheap to know.

        Measuring only informs routing: media that cannot be measured (a malformed header, an
        unreadable file) keep an unknown duration and page count, and the request goes on.
        """
        for media in request.media():
            if media.duration_seconds is None and media.pages is None and media.url is None:
                try:
                    if media.data is not None:
                        media.duration_seconds, media.pages = measure(media.data, media.modality)
                    else:  # content-addressed: measured once, then on every turn of its sessions from memory
                        media.duration_seconds, media.pages = _measure_stored(str(media.path), media.modality)
                except Exception as exc:
                    log.warning("could not measure %s media %s (%s): %s; its duration and pages stay unknown",
                                media.modality.value, media.media_id or media.filename or "(inline)",
                                media.mime_type, type(exc).__name__)

    def _with_history(self, request: Request) -> tuple[Request, list[Message]]:
        if not request.session_id:
            return request, []
        history = self.sessions.history(request.session_id, self.load_media)
        if not self.config.server.allow_urls:
            history = [_without_urls(message) for message in history]
        return dataclasses.replace(request, messages=history + request.messages, history_length=len(history)), history

    def _decide(self, request: Request) -> tuple[Decision, Facts]:
        facts = facts_of(request)
        self._hook("on_request", request=request)
        override = None
        if request.hints.provider or request.hints.model:
            override = Target(request.hints.provider or self._provider_of(request.hints.model), request.hints.model)
        chosen = None
        pm = self.registry.plugin_manager
        if override is None and pm is not None and pm.hook.route_request.get_hookimpls():
            candidates = [str(t) for t in self.router.usable_targets(facts, self.catalog)]
            try:
                picked = pm.hook.route_request(request=request, candidates=candidates)
            except Exception:
                log.exception("a route_request hook failed; using the rules")
                picked = None
            chosen = Target.parse(picked) if picked in candidates else None
        return self.router.decide(facts, self.catalog, override=override, chosen_by_plugin=chosen), facts

    def _provider_of(self, model: str) -> str:
        """The provider for a model named alone: one that is ready and may be overridden to first
        (``openai`` without a key and a ready ``work-openai`` both have gpt-4o)."""
        allowed = self.router.override_providers
        owners = [name for name, status in self.catalog.items() if model in status.models]
        owners.sort(key=lambda name: (not self.catalog[name].ready, allowed is not None and name not in allowed))
        return owners[0] if owners else ""

    def _trim(self, request: Request, history: list[Message], plan: Plan) -> tuple[Request, list[str]]:
        """``request`` (history + current turn) with the oldest history dropped to fit ``plan``'s model."""
        if not history:
            return request, []
        current = request.messages[len(history):]

        budget = plan.model.context_tokens
        kept, dropped = trim_history(history, current, budget, estimate_tokens)
        if not dropped:
            return request, []
        note = (f"history trimmed: dropped the {dropped} oldest message(s) of session {request.session_id} "
                f"to fit {plan.target}'s context of {budget} tokens")
        return dataclasses.replace(request, messages=kept + current, history_length=len(kept)), [note]

    async def _measure_media(self, request: Request) -> None:
        if request.media():
            await asyncio.to_thread(self._measure, request)  # reads headers and files: keep the loop free

    async def explain(self, request: Request) -> RouteInfo:
        """The route a request would take; no provider is called."""
        full, _ = self._with_history(request)
        await self._measure_media(full)  # the history's media too: rules on pages and durations see them
        decision, _ = self._decide(full)
        return RouteInfo.planned(decision)

    async def answer(self, request: Request, deadline: float | None) -> AsyncIterator[RouterEvent]:
        """Route and answer ``request``; yields router events ending with Done."""
        started = time.monotonic()
        untrimmed, history = self._with_history(request)
        await self._measure_media(untrimmed)
        decision, _ = self._decide(untrimmed)
        full, notes = self._trim(untrimmed, history, decision.plan)
        # a fallback gets the history trimmed to its own model's context
        fit = (lambda plan: self._trim(untrimmed, history, plan)) if history else None
        ctx = CallContext(request_id=f"{random.getrandbits(128):032x}", deadline=deadline)
        registry = self.registry  # the one the decision was made with (no await since): kept for the call
        registry.calls += 1
        try:
            # Closed explicitly: a consumer that stops at Done must not leave the generator to the
            # garbage collector, whose finalizer schedules a task per request to close it.
            async with aclosing(execute(full, decision, registry, ctx, notes, fit, self.sessions)) as events:
                async for event in events:
                    if isinstance(event, Done):
                        self._finish(request, event, started)
                    yield event
        finally:
            registry.calls -= 1
            if registry is not self.registry:
                self._close_retired()

    def _finish(self, request: Request, done: Done, started: float) -> None:
        """Save the session's turns, record statistics, tell the observer hooks.

        The answer is already computed: a failure here is logged, never turned into a failed call.
        A session reset since the call ``started`` (a time.monotonic()) keeps no turn of it.
        """
        answer = done.answer
        if request.session_id and self._resets.get(request.session_id, -math.inf) > started:
            log.info("session %r was reset while a call on it ran: that call's turn is not kept", request.session_id)
        elif request.session_id:
            self._save_turn(request, answer)
        try:
            self.sessions.record(answer)
        except Exception:
            log.exception("recording call statistics failed")
        self._hook("on_response", request=request, answer=answer)

    def _save_turn(self, request: Request, answer: Answer) -> None:
        """Append the question and the answer to the request's session (a failure is only logged)."""
        turns = [m for m in request.messages if m.role is not Role.SYSTEM]
        if not turns:  # a call of system prompts only adds no turn to the conversation
            return
        reply = answer.text or (answer.transcript.text if answer.transcript else "")
        turns.append(Message(Role.ASSISTANT, [Part(text=reply)]))
        try:
            self.sessions.append(request.session_id, turns, self._store_media)
        except Exception:
            log.exception("saving this turn of session %r failed; the answer is sent, the turn is not kept",
                          request.session_id)

    def _store_media(self, media: Media) -> str:
        """The media store id of ``media`` (inline bytes are stored first); for URL-free media only."""
        if media.media_id:
            return media.media_id
        stored = self.media.put_bytes(media.read_bytes(), media.mime_type, media.modality, media.filename)
        media.media_id = stored.media_id
        return stored.media_id

    def _hook(self, name: str, **kwargs: object) -> None:
        pm = self.registry.plugin_manager
        if pm is None:
            return
        hook = getattr(pm.hook, name)
        if not hook.get_hookimpls():  # the common case: no plugin listens
            return
        try:
            hook(**kwargs)
        except Exception:
            log.exception("an %s hook failed; ignored", name)

    # -- other calls ---------------------------------------------------------------------

    def providers(self) -> list[ProviderEntry]:
        return sorted(self.registry.entries.values(), key=lambda e: e.name)

    def reset_session(self, session_id: str) -> int:
        # a call under way on this session was built on what is forgotten now: it must not bring it back
        self._resets[session_id] = time.monotonic()
        self._resets.move_to_end(session_id)
        while len(self._resets) > RESETS_KEPT:
            self._resets.popitem(last=False)
        removed = self.sessions.reset(session_id)
        if not removed:
            raise UnknownSession(f"no session {session_id!r}: it has no stored turns")
        return removed

    async def aclose(self) -> None:
        for registry in [self.registry, *self._retired]:
            await registry.aclose()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self.sessions.close()


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


def monotonic_deadline(time_remaining: float | None) -> float | None:
    """A ``time.monotonic()`` deadline from a gRPC call's remaining seconds."""
    return None if time_remaining is None else time.monotonic() + time_remaining

