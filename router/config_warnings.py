"""What ``mmrouter config check`` warns of without failing: parts of a routing file that can never
take effect (targets of disabled providers, bridges that never bridge, rules that never serve a
request, embedded rules replaced or naming models a provider lacks)."""

from __future__ import annotations

from collections.abc import Iterator

from .config import Config, Match, Rule, replaced_default_rules, targets_of, unknown_models
from .plugins import Registry, State
from .routing import Target, bridge_problem
from .types import FEATURE_DIARIZATION, FEATURE_EXTRACTION_ONLY, Modality, ModelInfo, Task


def config_warnings(config: Config, registry: Registry) -> Iterator[str]:
    """What ``config check`` warns of without failing: targets of disabled providers, bridges that never
    bridge, rules that never serve a request, embedded rules replaced by the file's, and embedded rules'
    targets naming models a provider does not offer (an Ollama served as ``openai``)."""
    for _, problem in unknown_models(config, registry.entries, embedded=True):
        yield f"{problem}: routing skips it"
    for key, text in targets_of(config):
        entry = registry.entries.get(Target.parse(text).provider)
        if entry is not None and entry.state is State.DISABLED:
            yield f"{key}: {text}: never used, provider {entry.name!r} is off: {entry.reason} (plugins.disabled)"
    for modality, targets in config.bridges.items():
        for j, text in enumerate(targets):
            model = _model_of(text, registry)
            problem = bridge_problem(modality, model) if model is not None else None
            if problem:
                yield f"bridges.{modality.value}.{j}: {text} {problem}: it never bridges {modality.value}"
    yield from _useless_rules(config, registry)
    for index, name in replaced_default_rules(config):
        yield (f"routes.{index} {name!r} replaces the embedded rule of that name (extend_default_routes): "
               "the embedded one is not used; rename yours to keep both")


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
        where = f"routes.{index} {rule.name!r}"
        contradiction = _never_matches(rule.match)
        if contradiction:
            yield f"{where}: {contradiction}: it never matches a request"
            continue
        if catch_all is not None and not _takes_leftovers(rule, catch_all[3], registry):
            before, _, target, _ = catch_all
            left = "" if FEATURE_DIARIZATION in catch_all[3].features else " but diarized transcriptions"
            yield (f"{where}: never serves a request: routes.{before} {catch_all[1].name!r} before it has no "
                   f"conditions and its target {target} is always usable, so it takes every request{left}")
            continue
        reasons = [_never_serves(rule, text, registry) for text in (rule.use, *rule.fallback)]
        if all(reasons):
            yield f"{where}: never used, no target can serve what it matches: {'; '.join(r for r in reasons if r)}"
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
