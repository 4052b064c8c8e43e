"""The plugin contract as a third-party author meets it: models checked when a provider registers,
plugins that offer nothing or share an entry point name made visible, and a conformance kit that
checks the events a provider yields and never hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_dist_info
from grpc_helpers import providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_testkit import ScriptedProvider

import router
from router.plugins import State, load_registry
from router.testing import ProviderContract

BUILTINS = ["openai", "anthropic", "gemini", "assemblyai", "local"]
TEXT = frozenset({router.Modality.TEXT})


def site_of(root: Path, plugins: dict[str, tuple[str, str]]) -> Path:
    """A site directory where each of ``plugins`` (distribution name -> (entry point name, module
    source)) is an installed distribution."""
    root.mkdir(parents=True, exist_ok=True)
    for dist, (entry_name, source) in plugins.items():
        module = dist.replace("-", "_")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        make_dist_info(root, dist, entry_name, module)
    return root


def provider_module(name: str, model: str, answer: str = "hello") -> str:
    """The source of a plugin offering provider ``name`` with one model, written as ``model`` (code)."""
    return f'''
        import router

        class P(router.Provider):
            name = {name!r}
            models = [{model}]

            async def generate(self, request, model, ctx):
                yield router.TextDelta({answer!r})
                yield router.UsageReport(router.Usage(1, 1))

        @router.hookimpl
        def register_providers(register, settings):
            register(P())
        '''


# -- F1: every model field is checked when the provider registers ---------------------------------

def test_models_with_bad_fields_are_broken_and_the_list_and_routing_still_work(start_daemon, tmp_path) -> None:
    """A model declaring inputs by name is taken (as Modality, so ListProviders works for everyone);
    one with ``context_tokens=None`` breaks its provider, and a rule naming it falls back."""
    site = site_of(tmp_path / "site", {
        "mmrouter-strinputs": ("strinputs", provider_module(
            "strinputs", 'router.ModelInfo("m", inputs=frozenset({"text", "image"}))', "by name")),
        "mmrouter-nullctx": ("nullctx", provider_module(
            "nullctx", 'router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}), context_tokens=None)')),
    })
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: main
            match: {inputs: [text]}
            use: nullctx/m
            fallback: [fake/echo]
        default: fake/echo
        """, extra_sites=(site,))
    listed = providers_by_name(daemon.stub)
    assert listed["strinputs"].state == pb.PROVIDER_STATE_READY
    assert list(listed["strinputs"].models[0].inputs) == [pb.MODALITY_IMAGE, pb.MODALITY_TEXT]
    assert listed["nullctx"].state == pb.PROVIDER_STATE_BROKEN
    assert listed["nullctx"].reason == ("register_providers failed: TypeError: provider 'nullctx': model 'm':"
                                        " context_tokens is NoneType, not int")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer
    assert (answer.route.provider, answer.route.model) == ("fake", "echo")
    hinted = text_request("hi", hints=pb.RoutingHints(provider="strinputs", model="m"))
    assert daemon.stub.Generate(pb.GenerateRequest(request=hinted), timeout=20).answer.text == "by name"


def _model(**fields: object) -> router.ModelInfo:
    return router.ModelInfo(**{"name": "m", "inputs": TEXT, **fields})


BAD_MODELS = [
    (_model(name=""), "name is empty"),
    (_model(inputs=frozenset({"smell"})), "inputs holds 'smell', not a router.Modality "
                                          "(one of audio, document, image, text, video)"),
    (_model(inputs=frozenset()), "inputs is empty"),
    (_model(inputs=["text"]), "inputs is list, not a frozenset of router.Modality"),
    (_model(outputs=frozenset({1})), "outputs holds 1, not a non-empty str"),
    (_model(outputs=frozenset()), "outputs is empty"),
    (_model(features="streaming"), "features is str, not a frozenset of str"),
    (_model(context_tokens=None), "context_tokens is NoneType, not int"),
    (_model(context_tokens=True), "context_tokens is bool, not int"),
    (_model(context_tokens=1.5e5), "context_tokens is float, not int"),
    (_model(context_tokens=0), "context_tokens is 0, not > 0"),
    (_model(context_tokens=2**63), f"context_tokens is {2**63}, over 2**63-1"),
    (_model(default_max_output_tokens=0), "default_max_output_tokens is 0, not > 0"),
    (_model(max_output_tokens=-1), "max_output_tokens is -1, not >= 0"),
    (_model(price=None), "price is NoneType, not a router.Price"),
    (_model(price=router.Price(input_per_mtok=float("nan"))), "price.input_per_mtok is nan, not a finite number >= 0"),
    (_model(price=router.Price(output_per_mtok=-1.0)), "price.output_per_mtok is -1.0, not a finite number >= 0"),
    (_model(price=router.Price(per_audio_hour="0.3")), "price.per_audio_hour is str, not a number"),
    (_model(price=router.Price(long_context_above_tokens=2e5)), "price.long_context_above_tokens is float, not int"),
    (_model(takes_temperature="no"), "takes_temperature is str, not bool"),
]
if "input_mime_types" in {f.name for f in dataclasses.fields(router.ModelInfo)}:
    BAD_MODELS += [
        (_model(input_mime_types=frozenset({"png"})), "input_mime_types holds 'png', not a MIME type such as"
                                                      " 'image/png' or 'text/*'"),
        (_model(input_mime_types=frozenset({"image/JPG"})), "input_mime_types holds 'image/JPG', not normalised"
                                                            " (write 'image/jpeg')"),
        (_model(input_mime_types=["image/png"]), "input_mime_types is list, not a frozenset of str"),
    ]
if "max_audio_seconds" in {f.name for f in dataclasses.fields(router.ModelInfo)}:
    BAD_MODELS += [(_model(max_audio_seconds=float("inf")), "max_audio_seconds is inf, not a finite number >= 0")]


class Offers:
    """A plugin whose register_providers offers provider ``p`` with the given models."""

    def __init__(self, models: list) -> None:
        self.models = models

    @router.hookimpl
    def register_providers(self, register):
        class P(router.Provider):
            async def generate(self, request, model, ctx):
                yield router.TextDelta("x")

        provider = P()
        provider.name, provider.models = "p", self.models
        register(provider)


def registry_with(**plugins: object):
    """A registry of the testkit's ``fake`` and ``plugins``, without the bundled plugins."""
    import mmrouter_testkit

    return load_registry({"fake": {"api_key": "k"}}, disabled=BUILTINS,
                         extra_plugins={"fake": mmrouter_testkit, **plugins})


@pytest.mark.parametrize(("model", "problem"), BAD_MODELS, ids=[p for _, p in BAD_MODELS])
def test_a_model_field_of_the_wrong_type_or_range_breaks_its_provider(model, problem) -> None:
    registry = registry_with(p=Offers([_model(name="good"), model]))
    entry = registry.entries["p"]
    assert entry.state is State.BROKEN
    assert entry.reason == f"register_providers failed: TypeError: provider 'p': model {model.name!r}: {problem}"
    assert registry.ready("fake") is not None


def test_two_models_of_one_name_break_their_provider() -> None:
    entry = registry_with(p=Offers([_model(), _model(name="n"), _model()])).entries["p"]
    assert (entry.state, entry.reason) == (
        State.BROKEN, "register_providers failed: TypeError: provider 'p': model name(s) 'm' declared more than once")


def test_models_given_with_plain_sets_and_modality_names_are_taken_as_frozensets_of_modality() -> None:
    model = _model(inputs={"text", router.Modality.IMAGE}, outputs={"text"}, features=set())
    taken = registry_with(p=Offers([model])).ready("p").model("m")
    assert taken.inputs == frozenset({router.Modality.TEXT, router.Modality.IMAGE})
    assert all(type(m) is router.Modality for m in taken.inputs)
    assert (taken.outputs, taken.features) == (frozenset({"text"}), frozenset())
    hash(taken)  # a frozen ModelInfo holding sets could not be hashed


def offered(models: list) -> router.Provider:
    """The provider :class:`Offers` registers, made as its plugin makes it."""
    made = []
    Offers(models).register_providers(made.append)
    return made[0]


def test_the_kit_takes_models_with_modality_names_as_the_daemon_does() -> None:
    """``inputs={"text"}`` names a modality: the daemon takes it (a set of names is made frozenset of
    Modality), and so does the conformance kit, which checks through the daemon's own check."""
    models = [_model(inputs={"text"}), _model(name="both", inputs=frozenset({"image", router.Modality.TEXT}))]
    assert registry_with(p=Offers(models)).entries["p"].state is State.READY
    ProviderContract().test_models_declare_what_they_take_and_give(offered(models))


KIT_REFUSES = [(model, f"model {model.name!r}: {problem}") for model, problem in BAD_MODELS] + [
    (router.ModelInfo(3, inputs=TEXT), "models[1].name is int, not str"),
    (_model(name="good"), "model name(s) 'good' declared more than once"),
]


@pytest.mark.parametrize(("model", "problem"), KIT_REFUSES, ids=[p for _, p in KIT_REFUSES])
def test_the_kit_refuses_what_the_daemon_refuses_with_its_reason(model, problem) -> None:
    models = [_model(name="good"), model]
    entry = registry_with(p=Offers(models)).entries["p"]
    assert (entry.state, entry.reason) == (State.BROKEN, f"register_providers failed: TypeError: provider 'p': {problem}")
    with pytest.raises(AssertionError) as refused:
        ProviderContract().test_models_declare_what_they_take_and_give(offered(models))
    assert str(refused.value) == f"the daemon lists this provider broken: provider 'p': {problem}"


# -- F4: a plugin that offers nothing is visible -----------------------------------------------------

NO_PROVIDER_PLUGINS = {
    "mmrouter-unmarked": ("unmarked", '''
        import router

        class P(router.Provider):
            name = "unmarked"
            models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

            async def generate(self, request, model, ctx):
                yield router.TextDelta("x")

        def register_providers(register, settings):  # no @router.hookimpl
            register(P())
        '''),
    "mmrouter-nothing": ("nothing", '''
        """A module with no hook at all."""
        VERSION = 1
        '''),
    "mmrouter-asyncreg": ("asyncreg", '''
        import router

        @router.hookimpl
        async def register_providers(register, settings):
            raise AssertionError("never runs: an async hook is never awaited")
        '''),
    "mmrouter-hooksonly": ("hooksonly", '''
        import router

        @router.hookimpl
        def route_request(request, candidates):
            return None
        '''),
}


def test_plugins_that_offer_no_provider_are_listed_broken_or_logged(start_daemon, tmp_path) -> None:
    site = site_of(tmp_path / "site", NO_PROVIDER_PLUGINS)
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
          unmarked2: {plugin: unmarked}
        routes:
          - name: all
            use: fake/echo
        """, extra_sites=(site,))
    listed = providers_by_name(daemon.stub)
    broken = {name: p.reason for name, p in listed.items() if p.state == pb.PROVIDER_STATE_BROKEN}
    assert broken == {
        "unmarked": "cannot register: register_providers is not marked @router.hookimpl (the plugin has no hook"
                    " functions)",
        "unmarked2": "its plugin 'unmarked' is broken: cannot register: register_providers is not marked"
                     " @router.hookimpl (the plugin has no hook functions)",
        "nothing": "cannot register: no @router.hookimpl functions found: a plugin marks its hooks with"
                   " @router.hookimpl",
        "asyncreg": "register_providers must be a plain def, not async def: hooks are called without await",
    }
    assert "hooksonly" not in listed  # a plugin of other hooks only: fine, and said in the log
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer.route.model == "echo"
    daemon.stop()
    logs = daemon.logs()
    assert "plugin hooksonly offers no provider (its hooks: route_request)" in logs
    assert "never awaited" not in logs


# -- F5: two distributions with one entry point name ------------------------------------------------

def test_a_second_distribution_with_the_same_entry_point_name_is_listed_apart(start_daemon, tmp_path) -> None:
    """The first on the path is loaded and keeps the name; the other is named by its distribution."""
    first = site_of(tmp_path / "first", {"mmrouter-acme": ("acme", provider_module(
        "acme", "router.ModelInfo('m', inputs=frozenset({router.Modality.TEXT}))", "from the first"))})
    second = site_of(tmp_path / "second", {"mmrouter-acme-fork": ("acme", provider_module(
        "acme", "router.ModelInfo('m', inputs=frozenset({router.Modality.TEXT}))", "from the fork"))})
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: all
            use: acme/m
        """, extra_sites=(first, second))
    listed = providers_by_name(daemon.stub)
    assert (listed["acme"].state, listed["acme"].reason) == (pb.PROVIDER_STATE_READY, "")
    fork = listed["acme (from mmrouter-acme-fork)"]
    assert (fork.plugin, fork.state) == ("acme", pb.PROVIDER_STATE_BROKEN)
    assert fork.reason == ("entry point name 'acme' is already used by mmrouter-acme, which is loaded;"
                           " mmrouter-acme-fork is not (uninstall one of them)")
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer.text == "from the first"


class OffersNamed:
    """A plugin offering one provider called ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @router.hookimpl
    def register_providers(self, register):
        register(ScriptedProvider(self.name, {"api_key": "k"}))


class Typo:
    """A plugin with a hook no spec has: it cannot register."""

    @router.hookimpl
    def register_provider(self, register):
        pass


def test_a_plugin_that_cannot_register_does_not_overwrite_a_provider_of_its_name() -> None:
    """``aaa`` offers a provider called ``typo``, then the plugin ``typo`` fails to register: the plugin
    keeps its name, listed broken, and aaa's provider is listed too instead of vanishing."""
    entries = registry_with(aaa=OffersNamed("typo"), typo=Typo()).entries
    assert entries["typo"].state is State.BROKEN and entries["typo"].reason.startswith("cannot register: unknown hook")
    taken = entries["typo (from aaa)"]
    assert (taken.plugin, taken.state, taken.reason) == ("aaa", State.BROKEN, "name taken by plugin typo")
    assert taken.provider is not None


def twice_module(name: str, answer: str) -> str:
    """The source of a plugin offering two providers both called ``name`` (a copy-paste slip)."""
    return f'''
        import router

        class P(router.Provider):
            models = [router.ModelInfo("m", inputs=frozenset({{router.Modality.TEXT}}))]

            def __init__(self, answer):
                self.name, self.answer = {name!r}, answer

            async def generate(self, request, model, ctx):
                yield router.TextDelta(self.answer)
                yield router.UsageReport(router.Usage(1, 1))

        @router.hookimpl
        def register_providers(register, settings):
            register(P({answer!r}))
            register(P("the second"))
        '''


def test_a_plugin_registering_a_name_twice_is_told_apart_from_a_clash_with_another_plugin(
        start_daemon, tmp_path) -> None:
    """``dupname`` registers its provider name twice: the first is kept and the second is listed saying
    so, not as if another plugin had the name; ``grabber`` offering that name too is such a clash."""
    site = site_of(tmp_path / "site", {
        "mmrouter-dupname": ("dupname", twice_module("dupname", "the first")),
        "mmrouter-grabber": ("grabber", provider_module(
            "dupname", "router.ModelInfo('m', inputs=frozenset({router.Modality.TEXT}))", "the grabber")),
    })
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: all
            use: dupname/m
        """, extra_sites=(site,))
    listed = providers_by_name(daemon.stub)
    assert (listed["dupname"].plugin, listed["dupname"].state) == ("dupname", pb.PROVIDER_STATE_READY)
    twice = listed["dupname (from dupname)"]
    assert (twice.plugin, twice.state) == ("dupname", pb.PROVIDER_STATE_BROKEN)
    assert twice.reason == "plugin dupname registered the provider name 'dupname' twice; the first is kept"
    clash = listed["dupname (from grabber)"]
    assert (clash.plugin, clash.state, clash.reason) == ("grabber", pb.PROVIDER_STATE_BROKEN,
                                                         "name taken by plugin dupname")
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer.text == "the first"
    daemon.stop()
    assert "provider dupname (from dupname) (plugin dupname) is broken: plugin dupname registered the provider" \
           " name 'dupname' twice" in daemon.logs()


# -- F7 and the event checks: the conformance kit --------------------------------------------------

STUBBORN_KIT_USER = '''
import asyncio
import pytest
import router
import router.testing
from router.testing import ProviderContract

router.testing.CANCEL_GRACE_SECONDS = 1


class Stubborn(router.Provider):
    name = "stubborn"
    models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

    async def generate(self, request, model, ctx):
        while True:
            try:
                await asyncio.sleep(3600)
            except BaseException:
                pass
        yield


class TestStubborn(ProviderContract):
    call_timeout = 1

    @pytest.fixture
    def provider(self):
        return Stubborn()
'''


def test_the_kit_fails_a_generator_that_swallows_cancellation_instead_of_hanging(tmp_path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_stubborn.py").write_text(STUBBORN_KIT_USER)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                             "test_generate_yields_contract_events", "test_stubborn.py"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED test_stubborn.py::TestStubborn::test_generate_yields_contract_events" in result.stdout
    assert "stubborn: generate did not end within 1 s of being cancelled" in result.stdout
    assert time.monotonic() - started < 45


async def test_collect_still_answers_and_passes_on_its_callers_cancellation() -> None:
    """The bounded ``collect`` returns a provider's events, and cancelling it cancels the call."""
    provider = ScriptedProvider("fake", {"api_key": "k"})
    model = provider.model("echo")
    request = ProviderContract().sample_request(model)
    events = await router.testing.collect(provider, request, model)
    assert isinstance(events[-1], router.UsageReport) and "Say hello" in "".join(
        e.text for e in events if isinstance(e, router.TextDelta))
    slow = router.Request(messages=[router.Message(router.Role.USER, [router.Part(text="SLOW:30")])])
    call = asyncio.ensure_future(router.testing.collect(provider, slow, model))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)
    with pytest.raises(TimeoutError, match=r"fake: generate did not end within 0\.2 s"):
        await router.testing.collect(provider, slow, model, timeout=0.2)


class Yields(router.Provider):
    """Yields ``events`` to every call."""

    name = "yields"
    models = [router.ModelInfo("m", inputs=TEXT)]

    def __init__(self, *events: object) -> None:
        self.events = events

    async def generate(self, request, model, ctx):
        for event in self.events:
            yield event


def usage_of(finish: object = None, **counts: object) -> router.UsageReport:
    return router.UsageReport(router.Usage(**counts), finish)


BAD_EVENTS = [
    (router.TextDelta(""), "TextDelta with empty text"),
    (usage_of(input_tokens=2.5), "Usage.input_tokens is 2.5, not an int in 0..2**63-1"),
    (usage_of(output_tokens=True), "Usage.output_tokens is True, not an int in 0..2**63-1"),
    (usage_of(cached_input_tokens=2**63), f"Usage.cached_input_tokens is {2**63}, not an int in 0..2**63-1"),
    (usage_of(input_tokens=-1), "Usage.input_tokens is -1, not an int in 0..2**63-1"),
    (usage_of(audio_seconds=float("nan")), "Usage.audio_seconds is nan, not a finite number >= 0"),
    (usage_of(cost_usd=-0.5), "Usage.cost_usd is -0.5, not a finite number >= 0"),
    (usage_of(audio_seconds=10**400), "Usage.audio_seconds is 100000000000000000...0000000000000000000, not a finite number >= 0"),
    (usage_of("end_turn"), "UsageReport.finish_reason is 'end_turn', not None or a router.FinishReason"),
    (router.UsageReport({"input_tokens": 1}), "UsageReport.usage is dict, not a router.Usage"),
    *[(router.TranscriptReady(transcript), problem) for transcript, problem in [
        ({"text": "hi"}, "TranscriptReady.transcript is dict, not a router.Transcript"),
        (router.Transcript(None), "Transcript.text is NoneType, not str"),
        (router.Transcript("hi", utterances=None), "Transcript.utterances is NoneType, not a list of router.Utterance"),
        (router.Transcript("hi", [router.Word("hi")]), "Transcript.utterances[0] is Word, not a router.Utterance"),
        (router.Transcript("hi", [router.Utterance("hi", speaker=None)]),
         "Transcript.utterances[0].speaker is NoneType, not str"),
        (router.Transcript("hi", [router.Utterance("a"), router.Utterance("b", end=float("inf"))]),
         "Transcript.utterances[1].end is inf, not a finite number >= 0"),
        (router.Transcript("hi", words=(router.Word("hi"),)), "Transcript.words is tuple, not a list of router.Word"),
        (router.Transcript("hi", words=[router.Word(7)]), "Transcript.words[0].text is int, not str"),
        (router.Transcript("hi", words=[router.Word("hi", confidence=True)]),
         "Transcript.words[0].confidence is True, not a finite number >= 0"),
        (router.Transcript("hi", language=None), "Transcript.language is NoneType, not str"),
        (router.Transcript("hi", duration_seconds=-2), "Transcript.duration_seconds is -2, not a finite number >= 0"),
        (router.Transcript("hi", duration_seconds=10**400), "Transcript.duration_seconds is 1000"),
    ]],
]


@pytest.mark.parametrize(("bad", "problem"), BAD_EVENTS, ids=[p for _, p in BAD_EVENTS])
def test_the_kit_fails_a_provider_yielding_malformed_events(bad, problem) -> None:
    good_usage = usage_of(router.FinishReason.STOP, input_tokens=1, output_tokens=1)
    events = [router.TextDelta("hi"), bad]
    if not isinstance(bad, router.UsageReport):
        events.append(good_usage)
    with pytest.raises(AssertionError) as failed:
        ProviderContract().test_generate_yields_contract_events(Yields(*events))
    assert str(failed.value).startswith(f"yields: {problem}")


def test_the_kit_passes_well_formed_events() -> None:
    ProviderContract().test_generate_yields_contract_events(Yields(
        router.TextDelta("hi"), usage_of(router.FinishReason.LENGTH, input_tokens=1, audio_seconds=2)))


def test_the_kit_passes_a_transcript_with_every_field_well_formed() -> None:
    """Times given as ints, zeros and empty speakers are well formed."""
    transcript = router.Transcript("Speaker A: hi there", [router.Utterance("hi there", 0, 1.5, "A", 0.9)],
                                   [router.Word("hi", 0, 0.5, "A", 1), router.Word("there", 0.5, 1.5, "", 0.0)],
                                   "en-US", 1.5)
    ProviderContract().test_generate_yields_contract_events(Yields(
        router.TranscriptReady(transcript), router.TranscriptReady(router.Transcript("")),
        usage_of(audio_seconds=1.5)))


def test_the_kit_fails_events_yielded_after_the_usage_report_that_ends_the_answer() -> None:
    """The router ends an answer at the UsageReport with a finish reason and drops what follows it."""
    with pytest.raises(AssertionError, match=r"yields: generate yielded 2 TextDelta, 1 UsageReport after the"
                                             r" UsageReport with a finish reason"):
        ProviderContract().test_generate_yields_contract_events(Yields(
            router.TextDelta("hi"), usage_of(router.FinishReason.STOP, output_tokens=1),
            router.TextDelta("lost"), router.TextDelta("too"), usage_of(output_tokens=2)))


def test_the_kit_passes_usage_reports_without_a_finish_reason_before_the_last() -> None:
    ProviderContract().test_generate_yields_contract_events(Yields(
        usage_of(input_tokens=3), router.TextDelta("hi"), usage_of(router.FinishReason.STOP, output_tokens=1)))


class Forgets(Yields):
    """Forgets media as ``forget`` does: raises, or hangs."""

    def __init__(self, forget) -> None:
        super().__init__()
        self.forget = forget

    async def forget_media(self, sha256s):
        await self.forget(sha256s)


async def _raises_for_unknown(sha256s) -> None:
    raise KeyError(min(sha256s))


async def _hangs(sha256s) -> None:
    await asyncio.sleep(3600)


def test_the_kit_fails_a_forget_media_that_raises_or_hangs_for_media_it_never_saw(monkeypatch) -> None:
    """A reset with erase_media calls forget_media on every ready provider, with media most of them never saw."""
    ProviderContract().test_forget_media_it_never_saw_ends_quietly(Yields())  # the default does nothing
    with pytest.raises(KeyError):
        ProviderContract().test_forget_media_it_never_saw_ends_quietly(Forgets(_raises_for_unknown))
    monkeypatch.setattr(router.testing, "FORGET_MEDIA_SECONDS", 0.2)
    with pytest.raises(pytest.fail.Exception, match=r"yields: forget_media of media it never saw did not end within"
                                                    r" 0\.2 s"):
        ProviderContract().test_forget_media_it_never_saw_ends_quietly(Forgets(_hangs))
