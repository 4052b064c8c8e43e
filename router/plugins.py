"""Plugin loading: entry points of group ``mmrouter`` -> a registry of providers.

Each entry point is loaded and registered on its own, so one plugin that
fails to import, to register, or that offers a bad provider is recorded as
broken and the rest keep working (pluggy's own
``load_setuptools_entrypoints`` stops at the first failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib.util
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .contract import MAX_INT64
from .errors import ConfigError
from .mime import normalise_mime
from .provider import Provider
from .types import OUTPUT_TEXT, OUTPUT_TRANSCRIPT, Modality, ModelInfo, Price

log = logging.getLogger(__name__)

GROUP = "mmrouter"


class State(enum.StrEnum):
    """Whether a provider (or plugin) can be used."""

    READY = "ready"
    NOT_CONFIGURED = "not_configured"
    BROKEN = "broken"
    DISABLED = "disabled"


@dataclass
class ProviderEntry:
    """One provider, or one plugin that offers none because it is broken or disabled."""

    name: str
    plugin: str
    state: State
    reason: str = ""
    provider: Provider | None = None
    #: For a broken provider whose plugin refused its ``providers`` section (its settings raised
    #: ConfigError): that problem, naming the key (``providers.local.worker: Extra inputs are not permitted``).
    refused_settings: str = ""

    @property
    def models(self) -> list[ModelInfo]:
        return list(self.provider.models) if self.provider is not None else []


@dataclass
class Registry:
    """Every provider the daemon knows, by name, plus broken and disabled plugins."""

    entries: dict[str, ProviderEntry] = field(default_factory=dict)
    plugin_manager: pluggy.PluginManager | None = None
    #: Provider name -> the plugin asked to make it (its own, or a configured instance): that
    #: provider keeps the name when another plugin offers one called the same.
    asked: dict[str, str] = field(default_factory=dict)
    #: Calls that started on this registry and have not finished (a replaced registry closes at 0).
    calls: int = 0
    #: Warnings of ``providers`` sections named like an installed plugin that make another plugin's
    #: instance (``local: {plugin: openai}``): that plugin's own provider is not served (see
    #: :func:`hidden_by_instances`).
    hidden: list[str] = field(default_factory=list)

    def ready(self, name: str) -> Provider | None:
        """The provider called ``name`` if it is ready to use."""
        entry = self.entries.get(name)
        return entry.provider if entry is not None and entry.state is State.READY else None

    def providers(self) -> list[Provider]:
        return [e.provider for e in self.entries.values() if e.provider is not None]


async def close_provider(provider: Provider) -> None:
    """``provider.aclose()``; a failure is logged, not raised."""
    try:
        await provider.aclose()
    except asyncio.CancelledError:
        raise
    except BaseException:
        log.exception("closing provider %s failed", provider.name)


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the mmrouter hooks and nothing else."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _describe(exc: BaseException) -> str:
    """``exc`` as a broken plugin's reason: its class and message, on one line (pluggy's
    PluginValidationError spans three, and a reason is a part of log lines)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_PRICE_FIELDS = tuple(f.name for f in dataclasses.fields(Price))


def price_problems(provider: str, prices: object) -> list[str]:
    """What is wrong with a ``providers.<provider>.prices`` section, one line per bad key or value.

    The section maps model names to ``{field: number}`` where each field is one of :class:`Price`'s
    (``input_per_mtok``, ...) and each number is finite and not negative. Model names are not
    checked here: that needs the provider's models.
    """
    where = f"providers.{provider}.prices"
    if not isinstance(prices, Mapping):
        return [f"{where}: must map model names to prices, got {type(prices).__name__}"]
    problems = []
    for model, override in prices.items():
        if not isinstance(override, Mapping):
            problems.append(f"{where}.{model}: must map price names ({', '.join(_PRICE_FIELDS)}) to numbers,"
                            f" got {type(override).__name__}")
            continue
        for key, value in override.items():
            if key not in _PRICE_FIELDS:
                problems.append(f"{where}.{model}.{key}: unknown price (known: {', '.join(_PRICE_FIELDS)})")
            elif _as_price(value) is None:
                problems.append(f"{where}.{model}.{key}: {value!r} is not a price (a number from 0 to "
                                f"{MAX_PRICE:,.0f}, in US dollars)")
    return problems


#: The highest price the configuration takes, in US dollars per million tokens or per audio hour ($1 a token):
#: far above any model's, and low enough that no call's cost overflows to infinity (not JSON, in logs and stats).
MAX_PRICE = 1_000_000.0


def _as_price(value: object) -> float | None:
    """``value`` as a price (a finite number from 0 to :data:`MAX_PRICE`; numeric strings come from
    ``${VAR}``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and 0 <= number <= MAX_PRICE else None


def _with_prices(provider: Provider, prices: Mapping[str, Mapping[str, object]]) -> None:
    """Apply ``prices: {model: {input_per_mtok: .., ...}}`` overrides (checked by :func:`price_problems`)."""
    unknown = sorted(set(prices) - {model.name for model in provider.models})
    if unknown:
        log.warning("providers.%s.prices names model(s) %s that %s does not offer; ignored",
                    provider.name, ", ".join(unknown), provider.name)
    declared = list(provider.models)
    models = []
    for model in declared:
        override = prices.get(model.name)
        if override:
            model = dataclasses.replace(model, price=_overridden(model.price, override))
        models.append(model)
    if any(new is not old for new, old in zip(models, declared, strict=True)):  # only then: see _models_settable
        if not _models_settable(provider):
            raise TypeError(f"{provider.name}'s models is a read-only property, which the prices cannot change: "
                            f"remove providers.{provider.name}.prices, or make models a plain attribute")
        provider.models = models


#: The rates that follow a base rate an override changes, in proportion, unless it sets them too.
_FOLLOWING_RATES = {
    "input_per_mtok": ("cached_input_per_mtok", "long_context_input_per_mtok", "long_context_cached_input_per_mtok"),
    "output_per_mtok": ("long_context_output_per_mtok",),
}


def _overridden(price: Price, override: Mapping[str, object]) -> Price:
    """``price`` with an operator's ``override``. A new input price keeps the cached discount and the
    long-context surcharge in proportion unless the override sets them too (a negotiated or zero
    input price must not leave cache hits at the list rate, dearer than uncached tokens); a new
    output price likewise keeps the long-context output surcharge."""
    changes: dict[str, float | int | None] = {k: _as_price(v) for k, v in override.items()}
    for base, following in _FOLLOWING_RATES.items():
        old, new = getattr(price, base), changes.get(base)
        if new is None or not old:
            continue
        for rate in following:
            if rate not in changes:
                changes[rate] = getattr(price, rate) * new / old
    if changes.get("long_context_above_tokens") is not None:
        changes["long_context_above_tokens"] = int(changes["long_context_above_tokens"])
    return dataclasses.replace(price, **changes)


def _check_provider(provider: object) -> str | None:
    """Why ``provider`` is not a usable provider object, or None."""
    if not isinstance(provider, Provider):
        return f"register() got {type(provider).__name__}, not a router.Provider"
    name = getattr(provider, "name", None)
    if not isinstance(name, str):
        return f"provider name is {type(name).__name__}, not str"
    if not name or "/" in name:
        return f"provider name {name!r} is empty or contains '/'"
    problem = name_problem(name)
    if problem:
        return f"provider name {_shown(name)} {problem}"
    models = getattr(provider, "models", None)
    if not isinstance(models, list | tuple):
        return f"provider {name!r}: models is {type(models).__name__}, not a list of router.ModelInfo"
    if not models:
        return f"provider {name!r} declares no models"
    for index, model in enumerate(models):
        if not isinstance(model, ModelInfo):
            return f"provider {name!r}: models[{index}] is {type(model).__name__}, not a router.ModelInfo"
        if not isinstance(model.name, str):
            return f"provider {name!r}: models[{index}].name is {type(model.name).__name__}, not str"
        problem = model_problem(model)
        if problem:
            return f"provider {name!r}: model {_shown(model.name)}: {problem}"
    names = [model.name for model in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        return f"provider {name!r}: model name(s) {', '.join(map(repr, duplicates))} declared more than once"
    return None


#: The longest provider or model name: a request's ``hints.provider`` and ``hints.model`` hold at
#: most this many characters (:data:`router.wire.MAX_HINT_CHARS`), so a longer name could never be asked for.
MAX_NAME_CHARS = 256


def name_problem(name: str) -> str | None:
    """Why a provider's or model's ``name`` cannot be used, or None. A name is a word of the daemon's
    text log and of a ``provider/model`` target, typed in configurations: a space, a newline, an escape
    or another character that cannot be printed would forge or break log lines, and no target could name
    it. Stricter than the names clients send (:mod:`router.text`): an invisible character (a joiner, a
    direction mark) would make two names look alike. The message names the character."""
    from .text import describe

    if len(name) > MAX_NAME_CHARS:
        return f"has {len(name)} characters; at most {MAX_NAME_CHARS} (a request's hints could not name it)"
    index = next((i for i, c in enumerate(name) if not c.isprintable() or c.isspace()), None)
    if index is not None:
        return (f"holds {describe(name[index])} at character {index + 1}, a space or a character that cannot be "
                "printed (a newline, a tab, an escape): it would break the daemon's log lines, and no provider/model"
                " target could name it")
    return None


def _shown(name: str) -> str:
    """``name`` for a message: its ``repr`` (control characters escaped), cut after 60 characters."""
    return repr(name) if len(name) <= 60 else f"{name[:60]!r}..."


def _count_problem(value: object, minimum: int) -> str | None:
    """Why ``value`` is not an int in ``minimum``..int64 max, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"is {type(value).__name__}, not int"
    if value < minimum:
        return f"is {value}, not {'> 0' if minimum else '>= 0'}"
    return f"is {value}, over 2**63-1" if value > MAX_INT64 else None


def _amount_problem(value: object) -> str | None:
    """Why ``value`` is not a finite number >= 0, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is {type(value).__name__}, not a number"
    if not (math.isfinite(value) and value >= 0):
        return f"is {value!r}, not a finite number >= 0"
    return None


def _modalities_problem(value: object, *, required: bool = True) -> str | None:
    """Why ``value`` is not a set of :class:`Modality` (or of their names), non-empty if ``required``, or None."""
    if not isinstance(value, AbstractSet):
        return f"is {type(value).__name__}, not a frozenset of router.Modality"
    if required and not value:
        return "is empty"
    known = {m.value for m in Modality}
    bad = [m for m in value if not isinstance(m, Modality) and not (isinstance(m, str) and m in known)]
    if bad:
        return f"holds {bad[0]!r}, not a router.Modality (one of {', '.join(sorted(known))})"
    return None


def _strings_problem(value: object, *, required: bool = False) -> str | None:
    """Why ``value`` is not a set of non-empty str (non-empty itself if ``required``), or None."""
    if not isinstance(value, AbstractSet):
        return f"is {type(value).__name__}, not a frozenset of str"
    if required and not value:
        return "is empty"
    bad = [s for s in value if not isinstance(s, str) or not s]
    return f"holds {bad[0]!r}, not a non-empty str" if bad else None


def _mime_types_problem(value: object) -> str | None:
    """Why ``value`` is not a set of normalised MIME types or wildcards (``text/*``), or None."""
    problem = _strings_problem(value)
    if problem:
        return problem
    for mime in value:  # type: ignore[attr-defined] (a set, checked above)
        top, _, sub = mime.partition("/")
        if not (top and sub):
            return f"holds {mime!r}, not a MIME type such as 'image/png' or 'text/*'"
        if normalise_mime(mime) != mime:
            return f"holds {mime!r}, not normalised (write {normalise_mime(mime)!r})"
    return None


#: A primary BCP-47 language subtag as ``ModelInfo.languages`` holds it: 2 or 3 ASCII letters, lower case.
_LANGUAGE = re.compile(r"[a-z]{2,3}")


def _languages_problem(value: object) -> str | None:
    """Why ``value`` is not a set of primary BCP-47 language subtags in lower case (``en``, ``yue``), or None."""
    problem = _strings_problem(value)
    if problem:
        return problem
    bad = [tag for tag in value if not _LANGUAGE.fullmatch(tag)]  # type: ignore[attr-defined] (a set, checked above)
    return f"holds {bad[0]!r}, not a primary language subtag such as 'en' (2 or 3 lower-case letters)" if bad else None


def _price_problem(price: object) -> str | None:
    """Why ``price`` is not a :class:`Price` of finite amounts >= 0, or None."""
    if not isinstance(price, Price):
        return f"is {type(price).__name__}, not a router.Price"
    for f in dataclasses.fields(Price):
        value = getattr(price, f.name)
        problem = _count_problem(value, 0) if f.name == "long_context_above_tokens" else _amount_problem(value)
        if problem:
            return f".{f.name} {problem}"
    return None


#: ModelInfo field -> what is wrong with its value, or None. A field missing here is not checked.
_MODEL_CHECKS: dict[str, Callable[[object], str | None]] = {
    "name": lambda v: "is empty" if not v else name_problem(v),  # type: ignore[arg-type] (a str: _check_provider)
    "inputs": _modalities_problem,
    "outputs": lambda v: _strings_problem(v, required=True),
    "features": _strings_problem,
    "context_tokens": lambda v: _count_problem(v, 1),
    "price": _price_problem,
    "default_max_output_tokens": lambda v: _count_problem(v, 1),
    "max_output_tokens": lambda v: _count_problem(v, 0),
    "input_mime_types": _mime_types_problem,
    "max_audio_seconds": _amount_problem,
    "max_media_bytes": lambda v: _count_problem(v, 0),
    "max_document_pages": lambda v: _count_problem(v, 0),
    "pdf_page_tokens": lambda v: _count_problem(v, 0),
    "max_request_bytes": lambda v: _count_problem(v, 0),
    # None: not declared (every modality taken by URL); an empty set: no media by URL
    "url_inputs": lambda v: None if v is None else _modalities_problem(v, required=False),
    "takes_temperature": lambda v: None if isinstance(v, bool) else f"is {type(v).__name__}, not bool",
    "languages": _languages_problem,
}


def model_problem(model: ModelInfo) -> str | None:
    """What is wrong with one of ``model``'s fields, or None. The registry checks every model when
    a plugin registers its provider, so that a bad value cannot fail routing or the providers list
    later; ``inputs`` may name modalities by their value (``"text"``). Beyond each field's type and
    range: the name is one :func:`name_problem` takes, ``outputs`` name :data:`OUTPUT_TEXT` or
    :data:`OUTPUT_TRANSCRIPT` (or the model could do no task), and a ``default_max_output_tokens`` the
    plugin sets is not over a ``max_output_tokens`` it sets (the field's own default, 4096, is capped to
    that limit where the router uses it)."""
    for f in dataclasses.fields(model):
        check = _MODEL_CHECKS.get(f.name)
        problem = check(getattr(model, f.name)) if check is not None else None
        if problem:
            separator = "" if problem.startswith(".") else " "  # ".input_per_mtok is ..." names a sub-field
            return f"{f.name}{separator}{problem}"
    if not any(output in model.outputs for output in (OUTPUT_TEXT, OUTPUT_TRANSCRIPT)):
        return (f"outputs {', '.join(map(repr, sorted(model.outputs)))} name neither {OUTPUT_TEXT!r} nor"
                f" {OUTPUT_TRANSCRIPT!r}: the model could do no task")
    default, limit = model.default_max_output_tokens, model.max_output_tokens
    if limit and default > limit and default != _DEFAULT_ANSWER_TOKENS:
        return (f"default_max_output_tokens is {default}, over max_output_tokens {limit}: a default answer"
                " could not be that long")
    return None


#: ``ModelInfo.default_max_output_tokens`` when a plugin leaves it out: over a smaller ``max_output_tokens``
#: it is not refused (it was taken before that check), and the router caps it to that limit where it uses it.
_DEFAULT_ANSWER_TOKENS = next(f.default for f in dataclasses.fields(ModelInfo) if f.name == "default_max_output_tokens")


def _normalised(model: ModelInfo) -> ModelInfo:
    """``model`` (checked by :func:`model_problem`) with frozensets, and ``inputs`` and ``url_inputs`` given
    by name made :class:`Modality` (``"text"`` works for routing, a StrEnum, but not on the wire); itself if
    so already."""
    changes: dict[str, Any] = {}
    if not isinstance(model.inputs, frozenset) or not all(isinstance(m, Modality) for m in model.inputs):
        changes["inputs"] = frozenset(Modality(m) for m in model.inputs)
    urls = model.url_inputs
    if urls is not None and (not isinstance(urls, frozenset) or not all(isinstance(m, Modality) for m in urls)):
        changes["url_inputs"] = frozenset(Modality(m) for m in urls)
    for name in ("outputs", "features", "input_mime_types", "languages"):
        value = getattr(model, name, frozenset())
        if not isinstance(value, frozenset):
            changes[name] = frozenset(value)
    return dataclasses.replace(model, **changes) if changes else model


def registered_models(provider: object) -> list[ModelInfo]:
    """``provider``'s models as the registry keeps them (:func:`_normalised`), once the checks a
    plugin's ``register(provider)`` makes have passed: :class:`TypeError` with the reason for a
    provider it refuses (:func:`_check_provider`: its name, its models, each model's fields, and no
    two models of one name; and a read-only ``models`` property whose models would need normalising,
    which the registry could not store). ``provider`` is not changed. The conformance kit checks
    through it, so the kit and the daemon take and refuse the same providers."""
    problem = _check_provider(provider)
    if problem:
        raise TypeError(problem)
    declared = list(provider.models)  # type: ignore[attr-defined] (checked)
    models = [_normalised(model) for model in declared]
    changed = next((new for new, old in zip(models, declared, strict=True) if new is not old), None)
    if changed is not None and not _models_settable(provider):
        raise TypeError(f"provider {provider.name!r}: models is a read-only property, and model "  # type: ignore[attr-defined]
                        f"{_shown(changed.name)} gives inputs, outputs, features, input_mime_types, languages or "
                        "url_inputs otherwise than as frozensets (of router.Modality for inputs and url_inputs), which the "
                        "daemon cannot store back: declare them so, or make models a plain attribute")
    return models


def _models_settable(provider: object) -> bool:
    """Whether the registry may assign ``provider.models`` (its normalised or re-priced models): not when
    the class declares ``models`` as a property without a setter (the docs allow a read-only property)."""
    declared = inspect.getattr_static(type(provider), "models", None)
    return not isinstance(declared, property) or declared.fset is not None


def load_registry(
    provider_settings: Mapping[str, Mapping[str, Any]],
    *,
    disabled: Iterable[str] = (),
    extra_plugins: Mapping[str, object] | None = None,
    log_broken: bool = True,
) -> Registry:
    """Load every plugin of group ``mmrouter`` (and ``extra_plugins``) and collect their providers.

    :param provider_settings: the config's ``providers`` section; each plugin gets its own entry,
        and a section with ``plugin: <name>`` is one more provider made by that plugin (an instance).
    :param disabled: entry point names to block.
    :param extra_plugins: name -> plugin object, registered as if found by entry point (tests).
    :param log_broken: log each broken provider (see :func:`log_broken_providers`); a reload logs them
        only once the registry is in service, not for one it refuses.
    """
    pm = new_plugin_manager()
    registry = Registry(plugin_manager=pm)
    disabled = set(disabled)
    loaded: list[tuple[str, object]] = []

    for ep in _unique_entry_points(registry):
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            registry.entries[ep.name] = ProviderEntry(ep.name, ep.name, State.DISABLED, "disabled in config")
            continue
        try:
            loaded.append((ep.name, _timed_load(ep)))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # sys.exit() at import too: one plugin must not stop the daemon
            reason = f"failed to import {_dist_name(ep)}: {_describe(exc)}"
            registry.entries[ep.name] = ProviderEntry(ep.name, ep.name, State.BROKEN, reason)
    loaded.extend((extra_plugins or {}).items())

    instances = _instances(provider_settings)
    registry.hidden = hidden_by_instances(provider_settings, [name for name, _ in loaded])
    for name, plugin in loaded:
        problem = _register(pm, name, plugin)
        if problem:
            _add(registry, ProviderEntry(name, name, State.BROKEN, f"cannot register: {problem}"))
            continue
        own = provider_settings.get(name) or {}
        if own.get(PLUGIN_KEY) in (None, name):  # else the section named like this plugin is another's instance
            _collect_providers(pm, registry, name, plugin, _section(own), name)
        for instance, section in instances.pop(name, []):
            _collect_providers(pm, registry, name, plugin, section, instance)
    for plugin_name, sections in instances.items():  # instances of plugins that are not loaded
        for instance, _ in sections:
            registry.entries[instance] = _without_plugin(instance, plugin_name, registry)
    # logged at the end: keys the plugins resolved (ProviderSettings.load) are known to the log filter by now
    if log_broken:
        log_broken_providers(registry)
    return registry


#: An entry point whose import (``ep.load()``) takes longer is warned of: the daemon's start and ``config check``
#: wait for it, and a plugin imports its SDK lazily (:meth:`router.Provider.prepare`), nothing heavy at module level.
SLOW_IMPORT_SECONDS = 1.0


def _timed_load(ep: EntryPoint) -> object:
    """``ep.load()``, with a WARNING naming the plugin when its import took :data:`SLOW_IMPORT_SECONDS` or more
    (already imported, on a reload: no time)."""
    started = time.perf_counter()
    plugin = ep.load()
    seconds = time.perf_counter() - started
    if seconds >= SLOW_IMPORT_SECONDS:
        log.warning("plugin %s (%s) took %.1f s to import, which delays the daemon's start and every config check:"
                    " its module should import nothing heavy at module level (import the SDK in the provider's "
                    "prepare() and where its calls use it)", ep.name, _dist_name(ep), seconds)
    return plugin


def log_broken_providers(registry: Registry) -> None:
    """Log an error for each broken provider of ``registry``."""
    for entry in registry.entries.values():
        if entry.state is State.BROKEN:
            log.error("provider %s (plugin %s) is broken: %s", entry.name, entry.plugin, entry.reason)


def _dist_name(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep`` (its target when that is not known)."""
    return ep.dist.name if ep.dist is not None else ep.value


def _unique_entry_points(registry: Registry) -> list[EntryPoint]:
    """The ``mmrouter`` entry points by name, the first of each name only (in ``sys.path`` order, the
    one Python would import). Each later one is listed BROKEN as ``<name> (from <distribution>)``:
    registering it would fail and must not take the name from the first."""
    first: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):  # a stable sort: path order kept
        kept = first.setdefault(ep.name, ep)
        if kept is not ep:
            key = f"{ep.name} (from {_dist_name(ep)})"
            reason = (f"entry point name {ep.name!r} is already used by {_dist_name(kept)}, which is loaded;"
                      f" {_dist_name(ep)} is not (uninstall one of them)")
            registry.entries[key] = ProviderEntry(key, ep.name, State.BROKEN, reason)
    return list(first.values())


def _register(pm: pluggy.PluginManager, name: str, plugin: object) -> str | None:
    """Register ``plugin`` as ``name`` and check its hooks; why it cannot be used, or None."""
    try:
        pm.register(plugin, name=name)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return _describe(exc)
    if not pm.get_hookcallers(plugin):
        pm.unregister(plugin)
        if hasattr(plugin, "register_providers"):
            return "register_providers is not marked @router.hookimpl (the plugin has no hook functions)"
        return "no @router.hookimpl functions found: a plugin marks its hooks with @router.hookimpl"
    try:
        pm.check_pending()  # a hook of a name no spec has (a typo) would never be called
    except pluggy.PluginValidationError:
        unknown = sorted(hook for hook, caller in vars(pm.hook).items()
                         if not caller.has_spec() and any(i.plugin is plugin for i in caller.get_hookimpls()))
        pm.unregister(plugin)
        known = sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{GROUP}_spec"))
        return f"unknown hook {', '.join(unknown)} (a typo? the hooks are {', '.join(known)})"
    return None


#: The key of a ``providers.<name>`` section that makes ``<name>`` an extra instance of an installed plugin.
PLUGIN_KEY = "plugin"


def _section(section: Mapping[str, Any]) -> dict[str, Any]:
    """A provider's settings as its plugin sees them (without :data:`PLUGIN_KEY`)."""
    return {k: v for k, v in section.items() if k != PLUGIN_KEY}


def _instances(provider_settings: Mapping[str, Mapping[str, Any]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Plugin name -> the extra instances asked of it: (provider name, its settings), in config order."""
    instances: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, section in provider_settings.items():
        plugin = (section or {}).get(PLUGIN_KEY)
        if plugin and plugin != name:
            instances.setdefault(str(plugin), []).append((name, _section(section)))
    return instances


def hidden_by_instances(provider_settings: Mapping[str, Mapping[str, Any]], plugins: Iterable[str]) -> list[str]:
    """A warning for each section named like one of ``plugins`` (loaded plugins) that makes another
    plugin's instance: ``local: {plugin: openai}`` serves an OpenAI-compatible server as ``local``, and the
    local plugin's own provider (its extraction, the embedded bridges' last resort) is gone, unsaid."""
    loaded = set(plugins)
    return [f"providers.{name}: `plugin: {section[PLUGIN_KEY]}` gives this name to an instance of plugin "
            f"{section[PLUGIN_KEY]!r}, so the {name!r} plugin's own provider is not served: name the section "
            f"otherwise (say {name}-{section[PLUGIN_KEY]})"
            for name, section in provider_settings.items()
            if name in loaded and isinstance(section, Mapping) and section.get(PLUGIN_KEY) not in (None, name)]


def _without_plugin(instance: str, plugin_name: str, registry: Registry) -> ProviderEntry:
    """The entry of an instance whose plugin is not loaded: disabled, broken or not installed."""
    entry = registry.entries.get(plugin_name)
    if entry is not None and entry.state is State.DISABLED:
        return ProviderEntry(instance, plugin_name, State.DISABLED, f"its plugin {plugin_name!r} is disabled in config")
    if entry is not None and entry.plugin == plugin_name:
        return ProviderEntry(instance, plugin_name, State.BROKEN, f"its plugin {plugin_name!r} is broken: {entry.reason}")
    installed = sorted({e.plugin for e in registry.entries.values()})
    return ProviderEntry(instance, plugin_name, State.BROKEN,
                         f"providers.{instance}.plugin: no installed plugin is called {plugin_name!r}"
                         f" (installed: {', '.join(installed) or 'none'})")


def _collect_providers(pm: pluggy.PluginManager, registry: Registry, plugin_name: str, plugin: object,
                       settings: Mapping, provider_name: str) -> None:
    """Call one plugin's ``register_providers`` hook alone, for the provider ``provider_name`` (the
    plugin's own, or an extra instance of it), and record what it offers."""
    offered: list[Provider] = []

    def register(provider: Provider) -> None:
        models = registered_models(provider)  # a read-only ``models`` it returns needs no normalising
        if _models_settable(provider) and any(new is not old for new, old in zip(models, provider.models,
                                                                                   strict=True)):
            provider.models = models
        offered.append(provider)

    others = [p for p in pm.get_plugins() if p is not plugin]
    call = pm.subset_hook_caller("register_providers", remove_plugins=others)
    registry.asked[provider_name] = plugin_name
    try:
        results = call(register=register, settings=settings, name=provider_name)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # KeyboardInterrupt, SystemExit too: this plugin is broken, not the daemon
        reason = f"register_providers failed: {_describe(exc)}"
        refused = str(exc) if isinstance(exc, ConfigError) else ""
        _add(registry, ProviderEntry(provider_name, plugin_name, State.BROKEN, reason, refused_settings=refused))
        return
    if _awaitables_closed(results):  # an ``async def`` hook: it ran no code, it was never awaited
        reason = "register_providers must be a plain def, not async def: hooks are called without await"
        _add(registry, ProviderEntry(provider_name, plugin_name, State.BROKEN, reason))
        return
    if provider_name == plugin_name and not offered:
        hooks = ", ".join(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        log.warning("plugin %s offers no provider (its hooks: %s): fine for a plugin of hooks only; otherwise its"
                    " register_providers must call register(provider)", plugin_name, hooks)
    if provider_name != plugin_name and [p.name for p in offered] != [provider_name]:
        reason = (f"plugin {plugin_name!r} does not make extra instances: asked for {provider_name!r}, it offered "
                  f"{', '.join(repr(p.name) for p in offered) or 'nothing'}")
        _add(registry, ProviderEntry(provider_name, plugin_name, State.BROKEN, reason))
        return
    for provider in offered:
        _add(registry, _entry_of(provider, plugin_name, settings))


def _awaitables_closed(results: object) -> bool:
    """Whether a hook returned an awaitable (closed here, so Python does not warn it was never awaited)."""
    found = False
    for result in results if isinstance(results, list) else [results]:
        if inspect.isawaitable(result):
            found = True
            close = getattr(result, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
    return found


def _entry_of(provider: Provider, plugin_name: str, settings: Mapping) -> ProviderEntry:
    """The entry of an offered provider: its prices applied and whether it is configured; BROKEN
    (with the reason) when any of that fails."""
    step = f"applying providers.{provider.name}.prices"
    try:
        prices = settings.get("prices") or {}
        problems = price_problems(provider.name, prices)
        if problems:
            return ProviderEntry(provider.name, plugin_name, State.BROKEN, "; ".join(problems), provider)
        _with_prices(provider, prices)
        step = "required_modules"
        reason = _missing_modules(provider, plugin_name)
        step = "unconfigured_reason()"
        reason = reason or provider.unconfigured_reason()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return ProviderEntry(provider.name, plugin_name, State.BROKEN, f"{step} failed: {_describe(exc)}", provider)
    if reason is not None and not isinstance(reason, str):
        return ProviderEntry(provider.name, plugin_name, State.BROKEN,
                             f"unconfigured_reason() returned {type(reason).__name__}, not str or None", provider)
    state = State.NOT_CONFIGURED if reason else State.READY
    return ProviderEntry(provider.name, plugin_name, state, reason or "", provider)


def _missing_modules(provider: Provider, plugin_name: str) -> str | None:
    """Why ``provider`` cannot be used when a module of its :attr:`~router.Provider.required_modules` is not
    installed, or None. Found without importing them (start-up stays quick)."""
    missing = []
    for module in provider.required_modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing (google of google.genai)
            found = False
        if not found:
            missing.append(module)
    if not missing:
        return None
    return (f"missing Python packages ({', '.join(missing)}) that plugin {plugin_name!r} needs: reinstall the "
            "plugin with its dependencies")


def _add(registry: Registry, entry: ProviderEntry) -> None:
    """Record ``entry``. When its name is taken, the provider the name was asked of (its plugin's own,
    named like the plugin, or a configured instance) keeps it, else the first; the other is listed
    BROKEN as ``<name> (from <plugin>)``, so an operator sees which plugin tried to take the name."""
    taken = registry.entries.get(entry.name)
    if taken is None:
        registry.entries[entry.name] = entry
        return
    winner, loser = (entry, taken) if _asked_for(registry, entry) and not _asked_for(registry, taken) else (taken, entry)
    registry.entries[entry.name] = winner
    key = f"{loser.name} (from {loser.plugin})"
    registry.entries[key] = ProviderEntry(key, loser.plugin, State.BROKEN, _clash(winner, loser), loser.provider)


def _clash(winner: ProviderEntry, loser: ProviderEntry) -> str:
    """Why ``loser`` did not get its provider name, which ``winner`` kept: another plugin has it, or
    its own plugin offered a provider of that name twice (in one ``register_providers`` or two)."""
    if winner.plugin == loser.plugin:
        return f"plugin {loser.plugin} registered the provider name {loser.name!r} twice; the first is kept"
    return f"name taken by plugin {winner.plugin}"


def _asked_for(registry: Registry, entry: ProviderEntry) -> bool:
    """Whether ``entry``'s plugin was asked for a provider of that name (its own, or an instance)."""
    return entry.name == entry.plugin or registry.asked.get(entry.name) == entry.plugin

