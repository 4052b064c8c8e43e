"""Plugin loading: entry points of group ``mmrouter`` -> a registry of providers.

Each entry point is loaded and registered on its own, so one plugin that
fails to import, to register, or that offers a bad provider is recorded as
broken and the rest keep working (pluggy's own
``load_setuptools_entrypoints`` stops at the first failure).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .provider import Provider
from .types import ModelInfo, Price

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

    def ready(self, name: str) -> Provider | None:
        """The provider called ``name`` if it is ready to use."""
        entry = self.entries.get(name)
        return entry.provider if entry is not None and entry.state is State.READY else None

    def providers(self) -> list[Provider]:
        return [e.provider for e in self.entries.values() if e.provider is not None]

    async def aclose(self) -> None:
        """Close every provider, ignoring failures."""
        for provider in self.providers():
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
    text = str(exc)
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
                problems.append(f"{where}.{model}.{key}: {value!r} is not a price (a number >= 0, in US dollars)")
    return problems


def _as_price(value: object) -> float | None:
    """``value`` as a price (a finite number >= 0; numeric strings come from ``${VAR}``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _with_prices(provider: Provider, prices: Mapping[str, Mapping[str, object]]) -> None:
    """Apply ``prices: {model: {input_per_mtok: .., ...}}`` overrides (checked by :func:`price_problems`)."""
    unknown = sorted(set(prices) - {model.name for model in provider.models})
    if unknown:
        log.warning("providers.%s.prices names model(s) %s that %s does not offer; ignored",
                    provider.name, ", ".join(unknown), provider.name)
    models = []
    for model in provider.models:
        override = prices.get(model.name)
        if override:
            model = dataclasses.replace(model, price=_overridden(model.price, override))
        models.append(model)
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
    return None


def load_registry(
    provider_settings: Mapping[str, Mapping[str, Any]],
    *,
    disabled: Iterable[str] = (),
    extra_plugins: Mapping[str, object] | None = None,
) -> Registry:
    """Load every plugin of group ``mmrouter`` (and ``extra_plugins``) and collect their providers.

    :param provider_settings: the config's ``providers`` section; each plugin gets its own entry,
        and a section with ``plugin: <name>`` is one more provider made by that plugin (an instance).
    :param disabled: entry point names to block.
    :param extra_plugins: name -> plugin object, registered as if found by entry point (tests).
    """
    pm = new_plugin_manager()
    registry = Registry(plugin_manager=pm)
    disabled = set(disabled)
    loaded: list[tuple[str, object]] = []

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            registry.entries[ep.name] = ProviderEntry(ep.name, ep.name, State.DISABLED, "disabled in config")
            continue
        try:
            loaded.append((ep.name, ep.load()))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # sys.exit() at import too: one plugin must not stop the daemon
            dist = ep.dist.name if ep.dist is not None else ep.value
            reason = f"failed to import {dist}: {_describe(exc)}"
            registry.entries[ep.name] = ProviderEntry(ep.name, ep.name, State.BROKEN, reason)
    loaded.extend((extra_plugins or {}).items())

    instances = _instances(provider_settings)
    for name, plugin in loaded:
        problem = _register(pm, name, plugin)
        if problem:
            registry.entries[name] = ProviderEntry(name, name, State.BROKEN, f"cannot register: {problem}")
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
    for entry in registry.entries.values():
        if entry.state is State.BROKEN:
            log.error("provider %s (plugin %s) is broken: %s", entry.name, entry.plugin, entry.reason)
    return registry


def _register(pm: pluggy.PluginManager, name: str, plugin: object) -> str | None:
    """Register ``plugin`` as ``name`` and check its hooks; why it cannot be used, or None."""
    try:
        pm.register(plugin, name=name)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return _describe(exc)
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
        problem = _check_provider(provider)
        if problem:
            raise TypeError(problem)
        offered.append(provider)

    others = [p for p in pm.get_plugins() if p is not plugin]
    call = pm.subset_hook_caller("register_providers", remove_plugins=others)
    registry.asked[provider_name] = plugin_name
    try:
        call(register=register, settings=settings, name=provider_name)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # KeyboardInterrupt, SystemExit too: this plugin is broken, not the daemon
        reason = f"register_providers failed: {_describe(exc)}"
        _add(registry, ProviderEntry(provider_name, plugin_name, State.BROKEN, reason))
        return
    if provider_name != plugin_name and [p.name for p in offered] != [provider_name]:
        reason = (f"plugin {plugin_name!r} does not make extra instances: asked for {provider_name!r}, it offered "
                  f"{', '.join(repr(p.name) for p in offered) or 'nothing'}")
        _add(registry, ProviderEntry(provider_name, plugin_name, State.BROKEN, reason))
        return
    for provider in offered:
        _add(registry, _entry_of(provider, plugin_name, settings))


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
        step = "unconfigured_reason()"
        reason = provider.unconfigured_reason()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return ProviderEntry(provider.name, plugin_name, State.BROKEN, f"{step} failed: {_describe(exc)}", provider)
    if reason is not None and not isinstance(reason, str):
        return ProviderEntry(provider.name, plugin_name, State.BROKEN,
                             f"unconfigured_reason() returned {type(reason).__name__}, not str or None", provider)
    state = State.NOT_CONFIGURED if reason else State.READY
    return ProviderEntry(provider.name, plugin_name, state, reason or "", provider)


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
    registry.entries[key] = ProviderEntry(key, loser.plugin, State.BROKEN,
                                          f"name taken by plugin {winner.plugin}", loser.provider)


def _asked_for(registry: Registry, entry: ProviderEntry) -> bool:
    """Whether ``entry``'s plugin was asked for a provider of that name (its own, or an instance)."""
    return entry.name == entry.plugin or registry.asked.get(entry.name) == entry.plugin

