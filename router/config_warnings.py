"""What ``mmrouter config check`` warns of without failing: parts of a routing file that can never
take effect (no rules and no default, targets of disabled providers, bridges that never bridge, rules
that never serve a request, embedded rules replaced or naming models a provider lacks), plugins
broken for reasons outside the file, providers not configured for a ``${VAR}`` unset here, and rules,
a default or bridges whose every target names a provider not configured here (:func:`unconfigured_targets`,
which the daemon logs too). Also which broken providers are the file's fault (:func:`broken_provider_errors`)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from importlib.metadata import entry_points

from .config import (
    Config,
    Match,
    Rule,
    UnsetReference,
    did_you_mean,
    embedded_default,
    key_named,
    key_where,
    replaced_default_rules,
    targets_of,
    unknown_models,
    with_lines,
)
from .plugins import GROUP, ProviderEntry, Registry, State
from .routing import Target, bridge_problem
from .types import FEATURE_DIARIZATION, FEATURE_EXTRACTION_ONLY, Modality, ModelInfo, Task

#: Said of a configuration with neither rules nor a default (see :func:`routes_nothing`).
NO_ROUTE_WARNING = "no routes and no default: every request will be refused (add a `default:` target or rules)"


def routes_nothing(config: Config) -> bool:
    """Whether ``config`` has neither rules nor a default: every request is refused (NO_ROUTE)."""
    return not config.routes and not config.default


def config_warnings(config: Config, registry: Registry) -> Iterator[str]:
    """What ``config check`` warns of without failing: targets of disabled providers, bridges that never
    bridge, rules that never serve a request, embedded rules replaced by the file's, and embedded rules'
    targets naming models a provider does not offer (an Ollama served as ``openai``); plugins broken for
    reasons outside the file that it does not use, and providers whose ``${VAR}`` is unset here."""
    if routes_nothing(config):
        yield NO_ROUTE_WARNING
    yield from _override_warnings(config)
    yield from registry.hidden
    yield from _broken_plugins(config, registry)
    unset = _unset_variables(config, registry)
    yield from unset.values()
    yield from unconfigured_targets(config, registry, said=unset)
    for _, problem in unknown_models(config, registry.entries, embedded=True):
        yield f"{problem}: routing skips it"
    for key, text in targets_of(config):
        entry = registry.entries.get(Target.parse(text).provider)
        if entry is not None and entry.state is State.DISABLED:
            yield (f"{key_named(config, key)}: {text}: never used, provider {entry.name!r} is off: {entry.reason} "
                   f"(plugins.disabled){key_where(config, key)}")
    for modality, targets in config.bridges.items():
        for j, text in enumerate(targets):
            model = _model_of(text, registry)
            problem = bridge_problem(modality, model) if model is not None else None
            if problem:
                key = f"bridges.{modality.value}.{j}"
                yield f"{key}: {text} {problem}: it never bridges {modality.value}{key_where(config, key)}"
    yield from _useless_rules(config, registry)
    for index, _ in replaced_default_rules(config):
        key = f"routes.{index}"
        yield (f"{key_named(config, key)} replaces the embedded rule of that name (extend_default_routes): "
               f"the embedded one is not used; rename yours to keep both{key_where(config, key)}")


def _override_warnings(config: Config) -> Iterator[str]:
    """A warning for a file with rules or a default but no ``overrides`` section (clients may then choose
    any provider and model, past its rules: ``allow`` is true by default), and for ``overrides.providers``
    given with ``allow: false``, which then has no effect."""
    if "overrides" not in config.model_fields_set and (config.routes or config.default):
        yield ("overrides: not set, so clients may choose any provider and model with hints.provider/hints.model, "
               "bypassing these rules: set `overrides: {allow: false}` to enforce them, or `allow: true` to "
               "silence this")
    if not config.overrides.allow and config.overrides.providers:
        yield (f"overrides.providers: {', '.join(config.overrides.providers)} ignored: with `allow: false` no "
               "client may choose a provider (set `allow: true` to let clients choose among these)"
               f"{key_where(config, 'overrides.providers')}")


def named_providers(config: Config) -> Iterator[tuple[str, str]]:
    """Every provider name ``config`` gives outside its ``providers`` sections, with its key: the
    targets' (``routes.0.use``, ``default``, ``bridges.audio.1``) and those of ``overrides.providers``."""
    for key, text in targets_of(config):
        yield key, Target.parse(text).provider
    for j, name in enumerate(config.overrides.providers or []):
        yield f"overrides.providers.{j}", name


def unknown_providers(config: Config, registry: Registry) -> list[tuple[str, str, str]]:
    """Each provider ``config`` names (see :func:`named_providers`) that no installed plugin offers, as
    ``(key, name, hint)``: the key naming its rule (``routes.1.use 'legal-docs'``, see
    :func:`router.config.key_named`), the hint the file and line of the key and the closest installed
    name, ``" (router.yaml, line 20); did you mean 'anthropic'?"`` (each part "" when there is none).
    ``config check`` warns of them (the plugin may be installed where the daemon runs); the daemon,
    which knows, logs them at start-up and reload."""
    return [(key_named(config, key), name, f"{key_where(config, key)}{did_you_mean(name, registry.entries)}")
            for key, name in named_providers(config) if name not in registry.entries]


def refused_section(entry: ProviderEntry, config: Config) -> str | None:
    """Why the plugin of broken ``entry`` refused its ``providers`` section of ``config`` (a key it does
    not know, a bad value), naming the key: ``providers.local.worker: Extra inputs are not permitted``;
    None when it is not broken by what its plugin found in its section (a plugin that fails to import,
    or a bad price, which the router itself checks and which breaks that provider alone)."""
    if entry.state is not State.BROKEN or entry.name not in config.providers or not entry.refused_settings:
        return None
    problem = entry.refused_settings
    return problem if problem.startswith(f"providers.{entry.name}.") else f"providers.{entry.name}: {problem}"


def refused_sections(config: Config, registry: Registry, text: str | None = None, source: str = "") -> list[str]:
    """Every ``providers`` section of ``config`` its plugin refused (see :func:`refused_section`): start-up
    and reloads refuse them, as ``config check`` does. Given the file's ``text``, each with the line of
    the key it names and a did-you-mean for an unknown key (see :func:`router.config.with_lines`)."""
    problems = []
    for entry in registry.entries.values():
        if problem := refused_section(entry, config):
            problems.append(problem if text is None else with_lines(problem, text, source, settings_fields(entry)))
    return problems


def uses_provider(config: Config, name: str) -> str | None:
    """The first key at which ``config`` uses provider ``name``: its ``providers`` section, or a route,
    fallback, bridge or default target naming it; None when it does not."""
    if name in config.providers:
        return f"providers.{name}"
    return next((key for key, text in targets_of(config) if Target.parse(text).provider == name), None)


def broken_provider_errors(config: Config, registry: Registry, text: str | None = None,
                           source: str = "") -> list[str]:
    """The broken providers ``config check`` fails on: those whose section the plugin refused, and those
    broken for other reasons (a plugin that fails to import, a register hook that raises) that the
    file uses, each as ``<key>: <why>``; given the file's ``text``, with the line of each key in a
    ``providers`` section (``providers.openai.timout: ... (router.yaml, line 3)``)."""
    problems = []
    for entry in registry.entries.values():
        refused = refused_section(entry, config)
        used = uses_provider(config, entry.name) if entry.state is State.BROKEN else None
        if refused:
            problems.append(refused if text is None else with_lines(refused, text, source, settings_fields(entry)))
        elif used and entry.reason.startswith(f"providers.{entry.name}."):  # names its key (a bad price)
            problems.append(entry.reason if text is None else with_lines(entry.reason, text, source))
        elif used == f"providers.{entry.name}":
            problems.append(f"{used}: {entry.reason}{key_where(config, used)}")
        elif used:
            problems.append(f"{key_named(config, used)}: provider {entry.name!r} is broken: {entry.reason}"
                            f"{key_where(config, used)}")
    return problems


def settings_fields(entry: ProviderEntry) -> set[str]:
    """The settings a provider's section may hold: the fields of the :class:`ProviderSettings` classes its
    plugin's package defines (empty when they cannot be told)."""
    from .settings import ProviderSettings

    modules = [ep.module for ep in entry_points(group=GROUP) if ep.name == entry.plugin]
    if not modules:
        return set()
    package = modules[0].split(".")[0]
    fields: set[str] = set()
    classes: list[type[ProviderSettings]] = [ProviderSettings]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] == package:
            fields.update(name for name in cls.model_fields if name not in cls.not_used)
    return fields


def _broken_plugins(config: Config, registry: Registry) -> Iterator[str]:
    """A warning for each provider broken for reasons outside the file (its plugin fails to import, its
    register hook raises) that the file does not use: the daemon starts and lists it broken."""
    for entry in registry.entries.values():
        if entry.state is State.BROKEN and uses_provider(config, entry.name) is None:
            yield (f"plugin {entry.plugin!r} is broken (this file does not use provider {entry.name!r}, so a warning "
                   f"only; the daemon lists it broken): {entry.reason}")


def _unset_variables(config: Config, registry: Registry) -> dict[str, str]:
    """A warning for each provider not configured here because its section names a ``${VAR}`` unset here
    (it may be set where the daemon runs), by provider name."""
    warnings = {}
    for name, section in config.providers.items():
        entry = registry.entries.get(name)
        variables = {v for value in section.values() if isinstance(value, UnsetReference) for v in value.variables}
        if entry is not None and entry.state is State.NOT_CONFIGURED and any(f"${{{v}}}" in entry.reason
                                                                              for v in variables):
            warnings[name] = f"{entry.reason}: provider {name!r} is not configured here (set it where the daemon runs)"
    return warnings


def unconfigured_targets(config: Config, registry: Registry, said: Collection[str] = ()) -> list[str]:
    """A warning for each rule, the default and each ``bridges`` list whose targets all name providers
    not ready here, one at least not configured (no section and no key in the environment): the rule's
    requests go on to the next rules (the research team's traffic to another model, unsaid), the default
    refuses, the bridge never converts. ``config check`` and the daemon's start and reloads say it.
    Left out: what is the same as in the embedded default (its rules fall back on what is configured, and
    name every provider), and, for ``said``, groups whose only not-configured providers are those
    (``config check`` has warned of their unset ``${VAR}`` already)."""
    default = embedded_default()
    embedded_rules = {rule.name: rule for rule in default.routes}
    groups: list[tuple[str, str, tuple[str, ...], str]] = [
        (f"routes.{i}", f"rule {rule.name!r}", (rule.use, *rule.fallback),
         "every request it matches goes on to the next rules")
        for i, rule in enumerate(config.routes) if embedded_rules.get(rule.name) != rule]
    if config.default and config.default != default.default:
        groups.append(("default", "the default", (config.default,), "requests no rule takes are refused"))
    groups += [(f"bridges.{modality.value}", "the bridge", tuple(targets), f"{modality.value} is never bridged")
               for modality, targets in config.bridges.items() if list(default.bridges.get(modality, [])) != list(targets)]
    warnings = []
    for key, what, targets, outcome in groups:
        entries = [registry.entries.get(Target.parse(text).provider) for text in targets]
        if any(entry is not None and entry.state is State.READY for entry in entries):
            continue
        unconfigured = {entry.name: entry.reason for entry in entries
                        if entry is not None and entry.state is State.NOT_CONFIGURED}
        if unconfigured and not set(unconfigured) <= set(said):
            reasons = "; ".join(f"provider {name!r} is not configured ({reason})" for name, reason in unconfigured.items())
            warnings.append(f"{key}: {what} has no usable target, so {outcome}: {reasons}{key_where(config, key)}")
    return warnings


def _model_of(text: str, registry: Registry) -> ModelInfo | None:
    """The model a ``provider/model`` target names, if its provider is made here and offers it."""
    target = Target.parse(text)
    entry = registry.entries.get(target.provider)
    return next((m for m in entry.models if m.name == target.model), None) if entry is not None else None


def _useless_rules(config: Config, registry: Registry) -> Iterator[str]:
    """A warning for each rule that can never serve a request: its conditions contradict each other,
    none of its targets can ever serve what it matches, or an unconditioned rule before it whose
    target is always ready takes every request it could serve."""
    catch_all: tuple[int, Rule, str, ModelInfo] | None = None
    for index, rule in enumerate(config.routes):
        where, line = key_named(config, f"routes.{index}"), key_where(config, f"routes.{index}")
        contradiction = _never_matches(rule.match)
        if contradiction:
            yield f"{where}: {contradiction}: it never matches a request{line}"
            continue
        if catch_all is not None and not _takes_leftovers(rule, catch_all[3], registry):
            before, _, target, _ = catch_all
            left = "" if FEATURE_DIARIZATION in catch_all[3].features else " but diarized transcriptions"
            yield (f"{where}: never serves a request: routes.{before} {catch_all[1].name!r} before it has no "
                   f"conditions and its target {target} is always usable, so it takes every request{left}{line}")
            continue
        reasons = [_never_serves(rule, text, registry) for text in (rule.use, *rule.fallback)]
        if all(reasons):
            yield (f"{where}: never used, no target can serve what it matches: {'; '.join(r for r in reasons if r)}"
                   f"{line}")
        elif catch_all is None and rule.match == Match():
            catch_all = _always_usable(index, rule, registry)


def _never_matches(match: Match) -> str | None:
    """Why no request can meet all the conditions of ``match`` (they contradict each other), or None."""
    inputs, none = set(match.inputs or ()), set(match.inputs_none or ())
    if inputs & none:
        return f"inputs and inputs_none both name {_modality_names(inputs & none)}"
    if match.inputs_any and set(match.inputs_any) <= none:
        return f"every modality of inputs_any is in inputs_none ({_modality_names(set(match.inputs_any))})"
    if match.inputs_only is not None:
        only = set(match.inputs_only)
        if inputs - only:
            return f"inputs names {_modality_names(inputs - only)}, which inputs_only leaves out"
        if match.inputs_any and not set(match.inputs_any) & only:
            return f"inputs_any names only modalities that inputs_only leaves out ({_modality_names(set(match.inputs_any))})"
        if only <= none:
            return "inputs_only names only modalities that inputs_none excludes"
    return None


def _modality_names(modalities: set[Modality]) -> str:
    return ", ".join(sorted(m.value for m in modalities))


def _never_serves(rule: Rule, text: str, registry: Registry) -> str | None:
    """Why target ``text`` of ``rule`` can never serve a request the rule matches, or None (also when
    its provider or model is unknown here: that is warned of, or refused, on its own)."""
    entry = registry.entries.get(Target.parse(text).provider)
    if entry is not None and entry.state is State.DISABLED:
        return f"{text}: its provider is disabled"
    model = _model_of(text, registry)
    if model is None:
        return None
    tasks = rule.match.task or [Task.CHAT, Task.TRANSCRIBE]
    able = [task for task in tasks if model.can_do(task)]
    if not able:
        return f"{text} cannot {' or '.join(t.value for t in tasks)} (it produces {', '.join(sorted(model.outputs))})"
    transcribes_only = able == [Task.TRANSCRIBE]
    if rule.match.diarization and transcribes_only and FEATURE_DIARIZATION not in model.features:
        return f"{text} cannot diarize"
    if not rule.bridging:
        needed = set(rule.match.inputs or ()) - ({Modality.TEXT} if transcribes_only else set())
        if needed - model.inputs:
            return f"{text} does not take {_modality_names(needed - model.inputs)} and bridging is off"
        if rule.match.inputs_any and not set(rule.match.inputs_any) & model.inputs:
            return f"{text} takes none of {_modality_names(set(rule.match.inputs_any))} and bridging is off"
    return None


def _always_usable(index: int, rule: Rule, registry: Registry) -> tuple[int, Rule, str, ModelInfo] | None:
    """The first target of an unconditioned ``rule`` that takes every request (bar diarization), such as
    ``local/extract``: ready, needing no bridge, chatting and transcribing, with no context to outgrow."""
    for text in (rule.use, *rule.fallback):
        entry = registry.entries.get(Target.parse(text).provider)
        model = _model_of(text, registry)
        if entry is None or entry.state is not State.READY or model is None:
            continue
        if (model.inputs >= set(Modality) and model.can_do(Task.CHAT) and model.can_do(Task.TRANSCRIBE)
                and FEATURE_EXTRACTION_ONLY in model.features):
            return index, rule, text, model
    return None


def _reads_more(model: ModelInfo, catch_all: ModelInfo) -> bool:
    """Whether ``model`` takes a media format ``catch_all`` does not (any, when it lists none)."""
    if not model.input_mime_types:
        return True
    return any(mime not in catch_all.input_mime_types and not catch_all.takes_mime(mime)
               for mime in model.input_mime_types)


def _takes_leftovers(rule: Rule, catch_all: ModelInfo, registry: Registry) -> bool:
    """Whether ``rule`` can still serve a request the catch-all target ``catch_all`` leaves: media in a
    format it does not read (``local`` leaves HEIC photos), or a diarized transcription, when that
    target cannot diarize."""
    models = [m for m in (_model_of(text, registry) for text in (rule.use, *rule.fallback)) if m is not None]
    if catch_all.input_mime_types and any(_reads_more(model, catch_all) for model in models):
        return True
    if FEATURE_DIARIZATION in catch_all.features or rule.match.diarization is False:
        return False
    if rule.match.task is not None and Task.TRANSCRIBE not in rule.match.task:
        return False
    return any(model.can_do(Task.TRANSCRIBE) and FEATURE_DIARIZATION in model.features for model in models)
