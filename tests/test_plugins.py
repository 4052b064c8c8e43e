"""The plugin system: third-party distributions, the conformance kit, broken plugins, documented hooks."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grpc_helpers import providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_testkit import ScriptedProvider

import router
from router import hookspecs
from router.plugins import State, load_registry
from router.testing import ProviderContract

TESTS = Path(__file__).parent

ACME_MODULE = '''
"""A third party's provider: answers with the question reversed."""
import router


class Parrot(router.Provider):
    name = "acme"
    models = [router.ModelInfo("parrot", inputs=frozenset({router.Modality.TEXT}),
                               price=router.Price(input_per_mtok=1.0, output_per_mtok=1.0))]

    def __init__(self, greeting):
        self.greeting = greeting

    async def generate(self, request, model, ctx):
        yield router.TextDelta(self.greeting + request.messages[-1].text[::-1])
        yield router.UsageReport(router.Usage(input_tokens=3, output_tokens=5))


@router.hookimpl
def register_providers(register, settings):
    register(Parrot(settings.get("greeting", "")))
'''

ACME_PYPROJECT = '''
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mmrouter-acme"
version = "1.0.0"
dependencies = []

[project.entry-points.mmrouter]
acme = "mmrouter_acme"

[tool.hatch.build.targets.wheel]
packages = ["mmrouter_acme"]
'''


def test_a_third_party_distribution_is_found_and_routed_to(start_daemon, tmp_path) -> None:
    source = tmp_path / "acme"
    (source / "mmrouter_acme").mkdir(parents=True)
    (source / "mmrouter_acme" / "__init__.py").write_text(ACME_MODULE)
    (source / "pyproject.toml").write_text(ACME_PYPROJECT)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "mmrouter_acme-1.0.0.dist-info" / "entry_points.txt").exists()

    daemon = start_daemon("""
        providers:
          acme: {greeting: "acme: "}
        routes:
          - name: to-acme
            use: acme/parrot
        """, plugins=(), extra_sites=(site,))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("olleh"))).answer
    assert answer.text == "acme: hello"
    assert (answer.route.provider, answer.route.model) == ("acme", "parrot")
    assert answer.usage.cost_usd == pytest.approx(8 / 1e6)
    listed = {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers}
    assert listed["acme"].plugin == "acme" and listed["acme"].state == pb.PROVIDER_STATE_READY


class TestScriptedProviderConforms(ProviderContract):
    """The test-only provider passes the conformance kit a third-party author would run."""

    @pytest.fixture
    def provider(self):
        return ScriptedProvider("fake", {"api_key": "k"})


def test_the_conformance_kit_fails_a_provider_that_breaks_the_contract(tmp_path) -> None:
    bad = tmp_path / "test_bad_provider.py"
    bad.write_text(textwrap.dedent('''
        import pytest
        import router
        from router.testing import ProviderContract

        class Silent(router.Provider):
            name = "bad/name"
            models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

            async def generate(self, request, model, ctx):
                if False:
                    yield None

        class TestSilent(ProviderContract):
            @pytest.fixture
            def provider(self):
                return Silent()
    '''))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(bad)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    assert "test_has_a_name_and_models FAILED" in result.stdout or "FAILED" in result.stdout
    failed = set(re.findall(r"FAILED \S+::TestSilent::(\w+)", result.stdout))
    assert {"test_has_a_name_and_models", "test_generate_yields_contract_events"} <= failed


class NotAProvider:
    name = "nope"


class BadRegistration:
    @router.hookimpl
    def register_providers(self, register, settings):
        register(NotAProvider())


class Duplicate:
    @router.hookimpl
    def register_providers(self, register, settings):
        register(ScriptedProvider("fake", {"api_key": "k"}))


def test_registry_contains_bad_registrations() -> None:
    import mmrouter_testkit
    from mmrouter_testkit import register_providers as testkit_hook  # noqa: F401 (the module is the plugin)

    registry = load_registry(
        {"fake": {"api_key": "k"}},
        disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
        extra_plugins={"fake": mmrouter_testkit, "bad": BadRegistration(), "dup": Duplicate()},
    )
    assert registry.entries["fake"].state is State.READY
    assert registry.entries["bad"].state is State.BROKEN
    assert "not a router.Provider" in registry.entries["bad"].reason
    assert registry.ready("fake") is not None and len([e for e in registry.entries.values() if e.name == "fake"]) == 1


class Instances:
    """A plugin that makes extra instances: one ScriptedProvider per name asked for."""

    @router.hookimpl
    def register_providers(self, register, settings, name):
        register(ScriptedProvider(name, dict(settings)))


def test_extra_instances_are_made_by_plugins_that_take_a_name_and_refused_otherwise() -> None:
    import mmrouter_testkit

    registry = load_registry(
        {"multi": {"api_key": "k"}, "second": {"plugin": "multi", "api_key": "k2", "marker": "2"}, "fake": {"api_key": "k"},
         "copy": {"plugin": "fake"}, "ghost": {"plugin": "nowhere"}, "off": {"plugin": "openai"}},
        disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
        extra_plugins={"fake": mmrouter_testkit, "multi": Instances()},
    )
    second = registry.entries["second"]
    assert (second.plugin, second.state) == ("multi", State.READY)
    assert second.provider.settings == {"api_key": "k2", "marker": "2"}  # its own section, without 'plugin'
    assert registry.entries["multi"].provider.settings == {"api_key": "k"}
    copy = registry.entries["copy"]  # the testkit plugin ignores ``name``: it cannot make instances
    assert copy.state is State.BROKEN and "does not make extra instances" in copy.reason and "'fake'" in copy.reason
    assert registry.entries["fake"].state is State.READY  # its own provider is unaffected
    ghost = registry.entries["ghost"]
    assert ghost.state is State.BROKEN and "no installed plugin is called 'nowhere'" in ghost.reason
    assert registry.entries["off"].state is State.DISABLED and "disabled" in registry.entries["off"].reason


def test_prices_can_be_overridden_in_config() -> None:
    import mmrouter_testkit

    registry = load_registry({"fake": {"api_key": "k", "prices": {"echo": {"input_per_mtok": 9}}}},
                             disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
                             extra_plugins={"fake": mmrouter_testkit})
    echo = registry.ready("fake").model("echo")
    assert (echo.price.input_per_mtok, echo.price.output_per_mtok) == (9.0, 2.0)


class ReadOnlyModels:
    """A plugin whose provider's ``models`` is a read-only property (the Provider API allows it)."""

    @router.hookimpl
    def register_providers(self, register, settings):
        class Fixed(ScriptedProvider):
            @property  # type: ignore[override]
            def models(self) -> list:
                return self._fixed

            @models.setter
            def models(self, value: list) -> None:
                if hasattr(self, "_fixed"):
                    raise AttributeError("models is read-only")
                self._fixed = value

        register(Fixed("fixed", dict(settings)))


def test_a_provider_with_read_only_models_is_ready_without_price_overrides() -> None:
    """Prices were applied by assigning ``models`` even when none was configured, so such a provider was
    always listed broken ("applying providers.fixed.prices failed")."""
    registry = load_registry({"fixed": {"api_key": "k"}}, disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
                             extra_plugins={"fixed": ReadOnlyModels()})
    entry = registry.entries["fixed"]
    assert entry.state is State.READY, entry.reason
    assert registry.ready("fixed").model("echo") is not None


class NeedsMissingModules:
    """A plugin whose provider imports, at call time, modules that are not installed."""

    @router.hookimpl
    def register_providers(self, register, settings):
        class Lacking(ScriptedProvider):
            required_modules = ("json", "no_such_sdk_xyz", "google.no_such_sdk", "no_such_parent.sdk")

        register(Lacking("lacking", dict(settings)))


def test_a_provider_whose_sdk_is_not_installed_is_not_configured_and_named() -> None:
    """The cloud plugins import their SDK on first use: with it missing (a plugin installed with --no-deps,
    a slimmed image) the provider was listed ready, health said SERVING and every call failed as INTERNAL
    ModuleNotFoundError. The router checks required_modules (without importing them)."""
    registry = load_registry({"lacking": {"api_key": "k"}}, disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
                             extra_plugins={"lacking": NeedsMissingModules()})
    entry = registry.entries["lacking"]
    assert entry.state is State.NOT_CONFIGURED
    assert entry.reason == ("missing Python packages (no_such_sdk_xyz, google.no_such_sdk, no_such_parent.sdk) that "
                            "plugin 'lacking' needs: reinstall the plugin with its dependencies")
    for plugin in ("openai", "anthropic", "gemini", "assemblyai", "local"):  # ours say what they import
        provider = load_registry({}, log_broken=False).entries[plugin].provider
        assert provider is not None and provider.required_modules, plugin


def test_a_bad_price_override_breaks_only_its_provider(start_daemon) -> None:
    """A typo under providers.<name>.prices marks that provider broken, naming the key; the daemon serves."""
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
          openai: {api_key: sk-test-123456, prices: {gpt-4o: {input: 2.5}}}
        routes:
          - name: all
            use: fake/echo
        """)
    listed = providers_by_name(daemon.stub)
    assert listed["openai"].state == pb.PROVIDER_STATE_BROKEN
    assert listed["openai"].reason == (
        "providers.openai.prices.gpt-4o.input: unknown price "
        "(known: input_per_mtok, output_per_mtok, per_audio_hour, audio_input_per_mtok, cached_input_per_mtok,"
        " long_context_above_tokens, long_context_input_per_mtok, long_context_output_per_mtok,"
        " long_context_cached_input_per_mtok)")
    assert listed["fake"].state == pb.PROVIDER_STATE_READY
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("still here"))).answer
    assert answer.route.model == "echo" and "still here" in answer.text


@pytest.mark.parametrize(("prices", "reason"), [
    ({"omni": {"input": 2.5}}, "providers.fake.prices.omni.input: unknown price (known: input_per_mtok, "),
    ({"omni": {"input_per_mtok": "cheap"}}, "providers.fake.prices.omni.input_per_mtok: 'cheap' is not a price"),
    ({"omni": {"output_per_mtok": -1}}, "providers.fake.prices.omni.output_per_mtok: -1 is not a price"),
    ({"omni": {"output_per_mtok": True}}, "providers.fake.prices.omni.output_per_mtok: True is not a price"),
    # a cost of inf is no number in JSON logs and stats (`Infinity`), and would stay in the stats' sums
    ({"omni": {"input_per_mtok": 1e308}}, "providers.fake.prices.omni.input_per_mtok: 1e+308 is not a price "
                                         "(a number from 0 to 1,000,000, in US dollars)"),
    ({"omni": 2.5}, "providers.fake.prices.omni: must map price names"),
    (["omni"], "providers.fake.prices: must map model names to prices, got list"),
])
def test_bad_price_overrides_mark_the_provider_broken(prices, reason) -> None:
    import mmrouter_testkit

    registry = load_registry({"fake": {"api_key": "k", "prices": prices}},
                             disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
                             extra_plugins={"fake": mmrouter_testkit})
    entry = registry.entries["fake"]
    assert entry.state is State.BROKEN and registry.ready("fake") is None
    assert entry.reason.startswith(reason), entry.reason


def test_price_overrides_accept_numbers_and_numeric_strings() -> None:
    import mmrouter_testkit

    registry = load_registry({"fake": {"api_key": "k", "prices": {"omni": {"per_audio_hour": "0.5",
                                                                           "output_per_mtok": 3}}}},
                             disabled=["openai", "anthropic", "gemini", "assemblyai", "local"],
                             extra_plugins={"fake": mmrouter_testkit})
    omni = registry.ready("fake").model("omni")
    assert (omni.price.input_per_mtok, omni.price.output_per_mtok, omni.price.per_audio_hour) == (1.0, 3.0, 0.5)


HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "mmrouter_spec")]


def test_there_are_hooks() -> None:
    assert set(HOOKS) == {"register_providers", "route_request", "on_request", "on_response"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert len(doc.splitlines()) >= 3, f"{hook} needs a docstring that says when it is called and what to return"
    for param in inspect.signature(fn).parameters:
        assert param in doc, f"{hook}'s docstring does not explain {param!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    own = Path(__file__).name
    uses = [p for p in TESTS.rglob("*.py") if p.name != own and re.search(rf"\bdef {hook}\b", p.read_text())]
    assert uses, f"no test implements the {hook} hook"


def test_route_request_and_observer_hooks(start_daemon, tmp_path) -> None:
    audit = tmp_path / "audit.log"
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: all
            use: fake/echo
        """, env={"MMROUTER_TESTKIT_AUDIT": str(audit)})
    picked = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "pick me", metadata={"pick": "fake/docs"}))).answer
    assert (picked.route.rule, picked.route.model) == ("plugin", "docs")
    unusable = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "not usable", metadata={"pick": "fake/ears"}))).answer
    assert (unusable.route.rule, unusable.route.model) == ("all", "echo")
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request(
        "a dry run", metadata={"pick": "fake/docs"}))).route
    assert explained.rule == "plugin"  # route_request is asked; on_request is not: nothing was requested
    assert audit.read_text().splitlines() == [
        "request pick me", "response fake/docs fake/docs says: pick",
        "request not usable", "response fake/echo fake/echo says: not ",
    ]


CHOOSER_MODULE = '''
"""A third party's route chooser: returns ``metadata['choose']`` as it is, however wrong."""
import router


@router.hookimpl
def route_request(request, candidates):
    wanted = request.metadata.get("choose")
    if wanted == "42":
        return 42  # not even a str
    if wanted == "count":  # says how many candidates it got, as a choice no target is called
        return f"n={len(candidates)}"
    return wanted  # None when the request says nothing: no opinion
'''


def test_a_route_request_choice_that_is_no_candidate_is_logged_and_noted_and_the_rules_decide(
        start_daemon, tmp_path) -> None:
    """A near miss, a model that cannot take the request or a non-string is not silently dropped: the
    log names the plugin and what it chose, and the client's route says so. None says nothing."""
    from conftest import make_dist_info

    site = tmp_path / "site"
    site.mkdir()
    (site / "mmrouter_chooser.py").write_text(CHOOSER_MODULE)
    make_dist_info(site, "mmrouter-chooser", "chooser", "mmrouter_chooser")
    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: all
            use: fake/echo
        """, extra_sites=(site,))

    def generate(choose: str | None) -> pb.RouteInfo:
        metadata = {} if choose is None else {"choose": choose}
        request = text_request("hi", metadata=metadata)
        return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer.route

    counted = generate("count")
    [note] = counted.notes
    count = int(re.fullmatch(r"the route_request hook chose 'n=(\d+)', which is not one of the \1 targets that "
                             r"can take this request; routed by the rules", note).group(1))
    for choose, shown in [("fake/ech", "'fake/ech'"), ("fake/ears", "'fake/ears'"), ("42", "42")]:
        route = generate(choose)
        assert (route.rule, route.provider, route.model) == ("all", "fake", "echo")
        assert list(route.notes) == [f"the route_request hook chose {shown}, which is not one of the {count} targets"
                                     " that can take this request; routed by the rules"]
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request(
        "a dry run", metadata={"choose": "fake/ech"})), timeout=30).route
    assert explained.rule == "all" and "the route_request hook chose 'fake/ech'" in explained.notes[0]
    silent = generate(None)
    assert (silent.rule, list(silent.notes)) == ("all", [])
    usable = generate("fake/docs")
    assert (usable.rule, usable.model, list(usable.notes)) == ("plugin", "docs", [])

    daemon.stop()
    warnings = [line for line in daemon.logs().splitlines() if "a route_request hook chose" in line]
    assert len(warnings) == 5 and all(" WARNING " in line for line in warnings)
    for shown in ("'fake/ech'", "'fake/ears'", "42"):
        assert any(f"chose {shown}, which is not one of the {count} targets" in line for line in warnings)


KIT_USER = '''
import pytest
import router
from router.testing import ProviderContract


class Tiny(router.Provider):
    name = "tiny"
    models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

    async def generate(self, request, model, ctx):
        yield router.TextDelta("hello")
        yield router.UsageReport(router.Usage(1, 1))


class TestTiny(ProviderContract):
    @pytest.fixture
    def provider(self):
        return Tiny()
'''


@pytest.mark.parametrize("plugins", [["-p", "no:asyncio"], []], ids=["without-pytest-asyncio", "asyncio-strict"])
def test_the_conformance_kit_runs_under_plain_pytest(tmp_path, plugins) -> None:
    """A provider author's project has no ``asyncio_mode = auto``: every check still runs, and passes."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repo's pyproject (asyncio_mode = auto)
    (tmp_path / "test_tiny.py").write_text(KIT_USER)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "-rA",
                             "test_tiny.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout and "skipped" not in result.stdout and "warning" not in result.stdout


def test_the_conformance_kit_refuses_an_unconfigured_reason_that_is_not_a_string() -> None:
    class Numeric(ScriptedProvider):
        def unconfigured_reason(self):
            return 42

    with pytest.raises(AssertionError, match="returned int, not str or None"):
        ProviderContract().test_configured_provider_reports_no_reason(Numeric("fake", {"api_key": "k"}))


class ExitingHooks:
    """An observer and route chooser that end the process the way a careless library does."""

    @router.hookimpl
    def route_request(self, request, candidates):
        raise KeyboardInterrupt

    @router.hookimpl
    def on_request(self, request):
        raise SystemExit(3)

    @router.hookimpl
    def on_response(self, request, answer):
        raise SystemExit(4)


async def test_hooks_raising_systemexit_or_keyboardinterrupt_are_ignored(tmp_path) -> None:
    import mmrouter_testkit

    from router.config import parse_config
    from router.core import App
    from router.types import Message, Part, Request, Role

    config = f"providers: {{fake: {{api_key: k}}}}\nroutes: [{{name: all, use: fake/echo}}]\nserver: {{data_dir: '{tmp_path}'}}\n"
    app = App(parse_config(config, "t.yaml"), extra_plugins={"fake": mmrouter_testkit, "exiting": ExitingHooks()})
    try:
        request = Request(messages=[Message(Role.USER, [Part(text="still here")])])
        events = [event async for event in app.answer(request, None)]
        answer = events[-1].answer
        assert (answer.route.rule, answer.route.model) == ("all", "echo") and "still here" in answer.text
    finally:
        await app.aclose()


class ContextReader:
    """A third party's provider that answers with what its CallContext holds; its settings section
    has a value, which comes to register_providers only."""

    @router.hookimpl
    def register_providers(self, register, settings):
        class Reader(router.Provider):
            name = "reader"
            models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

            async def generate(self, request, model, ctx):
                yield router.TextDelta(f"settings={ctx.settings!r}")
                yield router.UsageReport(router.Usage(1, 1))

        register(Reader())


async def test_call_context_settings_is_documented_as_reserved_and_is_always_empty(tmp_path) -> None:
    """``CallContext.settings`` is public: it stays (plugins' tests construct it) and says what it is,
    reserved and deprecated, since the daemon never fills it: a call sees it empty."""
    from router.config import parse_config
    from router.core import App
    from router.types import Message, Part, Request, Role

    doc = inspect.getdoc(router.CallContext) or ""
    assert "``settings`` is reserved and deprecated" in doc and "always empty" in doc
    assert router.CallContext("id", settings={"x": 1}).settings == {"x": 1}  # still constructed as before
    config = ("providers: {reader: {greeting: hello}}\nroutes: [{name: all, use: reader/m}]\n"
              f"server: {{data_dir: '{tmp_path}'}}\n")
    app = App(parse_config(config, "t.yaml"), extra_plugins={"reader": ContextReader()})
    try:
        request = Request(messages=[Message(Role.USER, [Part(text="what do you know?")])])
        events = [event async for event in app.answer(request, None)]
        assert events[-1].answer.text == "settings={}"
    finally:
        await app.aclose()

