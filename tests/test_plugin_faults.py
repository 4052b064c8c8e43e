"""Plugins that misbehave in every way a third party's code can: the daemon stays up, the fault is
named (PROVIDER_FAILED for a call, BROKEN in ``mmrouter providers`` for a plugin) and no key leaks."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from conftest import make_dist_info
from grpc_helpers import error_details, providers_by_name, text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

import router
from router.plugins import State, load_registry

#: A variable no secret-name pattern matches: only ``api_key_env`` tells that it holds a key.
KEY_VARIABLE = "FAULTY_ACCESS"
#: Its base URL, from the environment (``env_fields``), with a gateway's login in it.
URL_VARIABLE = "FAULTY_GATEWAY"
GATEWAY_PASSWORD = "gw-pass-4242-faulty"
#: A secret setting (by its name, ``passphrase``) read from a variable no secret-name pattern matches (``env_fields``).
PASSPHRASE_VARIABLE, PASSPHRASE = "FAULTY_PASS", "open-sesame-31337-faulty"
ENV_KEY = "envsecret-ZZZ999-faulty"
NESTED_KEY = "nested-secret-777-faulty"

FAULTY = f'''
"""Misbehaves as the model's name says."""
import asyncio
import router

T = frozenset({{router.Modality.TEXT}})
FAULTS = ["ok", "kbi", "sysexit", "genexit", "own-cancel", "none-text", "int-text", "bare-str", "none", "object",
          "leak-env", "leak-nested", "leak-url", "leak-passphrase", "block-loop", "swallow-cancel", "empty-then-503", "float-tokens", "raw-finish", "nan-audio",
          "utterances-str", "utterance-dict", "speaker-int", "start-str", "end-nan", "start-negative", "confidence-str",
          "language-int", "duration-none"]
U, W = router.Utterance, router.Word
#: Transcripts with a field of the wrong type or range, by fault (yielded before any text).
ODD_TRANSCRIPTS = {{
    "utterances-str": router.Transcript("hi", utterances="hi"),
    "utterance-dict": router.Transcript("hi", [{{"text": "hi"}}]),
    "speaker-int": router.Transcript("hi", [U("hi", 0.0, 1.0, speaker=1)]),
    "start-str": router.Transcript("a b c", [U("a", 0, 1), U("b", 1, 2), U("c", "x", 3)]),
    "end-nan": router.Transcript("hi", words=[W("hi", 0.0, float("nan"))]),
    "start-negative": router.Transcript("a b", words=[W("a", 0.0, 1.0), W("b", -1.0, 2.0)]),
    "confidence-str": router.Transcript("hi", words=[W("hi", 0.0, 1.0, confidence="0.9")]),
    "language-int": router.Transcript("hi", language=7),
    "duration-none": router.Transcript("hi", duration_seconds=None),
}}


class FaultySettings(router.ProviderSettings):
    api_key_env = ("{KEY_VARIABLE}",)
    env_fields = {{"base_url": "{URL_VARIABLE}", "passphrase": "{PASSPHRASE_VARIABLE}"}}
    passphrase: str = ""


class Faulty(router.Provider):
    name = "faulty"
    models = [router.ModelInfo(f, inputs=T) for f in FAULTS]

    def __init__(self, settings, auth):
        self.settings, self.auth = settings, auth

    async def generate(self, request, model, ctx):
        fault = model.name
        junk = {{"none-text": router.TextDelta(None), "int-text": router.TextDelta(12345), "bare-str": "a str",
                "none": None, "object": object()}}
        if fault in junk:
            yield junk[fault]
        if fault == "empty-then-503":  # an OpenAI-style role-only first chunk, then the upstream fails
            yield router.TextDelta("")
            raise router.provider_error_from_status("faulty", 503, "overloaded")
        odd_usage = {{"float-tokens": router.UsageReport(router.Usage(input_tokens=2.5)),
                     "raw-finish": router.UsageReport(router.Usage(1, 1), "end_turn"),
                     "nan-audio": router.UsageReport(router.Usage(audio_seconds=float("nan")))}}
        if fault in odd_usage:
            yield odd_usage[fault]
        if fault in ODD_TRANSCRIPTS:
            yield router.TranscriptReady(ODD_TRANSCRIPTS[fault])
        yield router.TextDelta("part1 ")
        if fault == "kbi":
            raise KeyboardInterrupt
        if fault == "sysexit":
            raise SystemExit(3)
        if fault == "genexit":
            raise GeneratorExit
        if fault == "own-cancel":
            raise asyncio.CancelledError
        if fault == "leak-env":
            raise RuntimeError(f"401: bad key {{self.settings.key}}")
        if fault == "leak-url":
            raise router.ProviderUnavailable("faulty", f"cannot reach {{self.settings.base_url}}")
        if fault == "block-loop":  # blocking work on the event loop, which a plugin must not do
            import time
            time.sleep(1.5)
        if fault == "leak-passphrase":
            raise router.ProviderUnavailable("faulty", f"the server said: wrong passphrase {{self.settings.passphrase}}")
        if fault == "leak-nested":
            raise RuntimeError(f"401: bad key {{self.auth['api_key']}}")
        while fault == "swallow-cancel":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
        yield router.TextDelta("part2")
        yield router.UsageReport(router.Usage(1, 1))


@router.hookimpl
def register_providers(register, settings, name):
    own = {{k: v for k, v in settings.items() if k != "auth"}}
    register(Faulty(FaultySettings.load(name, own), settings.get("auth") or {{}}))
'''

#: Plugins that fail to load or offer a bad provider: entry point name -> module source.
BAD = {
    "aaa_dup": '''
import router
class P(router.Provider):
    name = "faulty"
    models = [router.ModelInfo("ok", inputs=frozenset({router.Modality.TEXT}))]
    async def generate(self, request, model, ctx):
        yield router.TextDelta("hijacked")
@router.hookimpl
def register_providers(register, settings):
    register(P())
''',
    "aab_leaky_import": f'''
import os
raise RuntimeError("cannot init: key=" + os.environ["{KEY_VARIABLE}"])
''',
    "imp_exit": '''
import sys
sys.exit("imp_exit: this plugin needs libfoo")
''',
    "reg_kbi": '''
import router
@router.hookimpl
def register_providers(register, settings):
    raise KeyboardInterrupt
''',
    "reg_leak": f'''
import os, router
@router.hookimpl
def register_providers(register, settings):
    raise ValueError("rejected key " + os.environ["{KEY_VARIABLE}"])
''',
    "junk_models": '''
import router
class P(router.Provider):
    name = "junkmodels"
    models = ["gpt-junk"]
    async def generate(self, request, model, ctx):
        yield router.TextDelta("x")
@router.hookimpl
def register_providers(register, settings):
    register(P())
''',
    "reason_type": '''
import router
class P(router.Provider):
    name = "reasontype"
    models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]
    def unconfigured_reason(self):
        return 42
    async def generate(self, request, model, ctx):
        yield router.TextDelta("x")
@router.hookimpl
def register_providers(register, settings):
    register(P())
''',
    "typo": '''
import router
class P(router.Provider):
    name = "typo"
    models = [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]
    async def generate(self, request, model, ctx):
        yield router.TextDelta("x")
@router.hookimpl
def register_provider(register, settings):
    register(P())
''',
}

CONFIG = f"""
providers:
  faulty: {{auth: {{api_key: {NESTED_KEY}}}}}
server: {{shutdown_grace_seconds: 0.5}}
routes:
  - name: empty-then-local
    match: {{metadata: {{route: empty}}}}
    use: faulty/empty-then-503
    fallback: [local/extract]
  - name: junk-then-local
    match: {{metadata: {{route: junk}}}}
    use: faulty/int-text
    fallback: [local/extract]
  - name: transcript-junk-then-local
    match: {{metadata: {{route: transcript}}}}
    use: faulty/start-str
    fallback: [local/extract]
default: local/extract
"""


def site_with(tmp_path: Path, plugins: dict[str, str]) -> Path:
    """A site directory where each of ``plugins`` (entry point name -> source) is an installed distribution."""
    site = tmp_path / "faulty-site"
    for name, source in plugins.items():
        module = f"mmrouter_fx_{name}"
        (site / f"{module}.py").parent.mkdir(parents=True, exist_ok=True)
        (site / f"{module}.py").write_text(source)
        make_dist_info(site, f"mmrouter-fx-{name.replace('_', '-')}", name, module)
    return site


@pytest.fixture
def faulty_daemon(start_daemon, tmp_path):
    site = site_with(tmp_path, {"faulty": FAULTY})
    return start_daemon(CONFIG, env={KEY_VARIABLE: ENV_KEY}, plugins=(), extra_sites=(site,))


def ask(daemon, model: str, stream: bool) -> grpc.RpcError:
    """Call ``faulty/<model>``, which must fail; its error."""
    request = text_request("hi", hints=pb.RoutingHints(provider="faulty", model=model))
    with pytest.raises(grpc.RpcError) as failed:
        if stream:
            list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=20))
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=20)
    return failed.value


def answer_of(daemon, model: str) -> str:
    request = text_request("hi", hints=pb.RoutingHints(provider="faulty", model=model))
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=20).answer.text


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_plugin_raising_any_base_exception_fails_its_call_only(faulty_daemon, stream) -> None:
    for fault, raised in [("kbi", "KeyboardInterrupt"), ("sysexit", "SystemExit: 3"), ("genexit", "GeneratorExit"),
                          ("own-cancel", "CancelledError")]:
        details = error_details(ask(faulty_daemon, fault, stream))
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "PROVIDER_FAILED"), (fault, details)
        assert details.metadata["provider"] == "faulty"
        assert details.message == f"faulty: the plugin failed: {raised}"
        assert faulty_daemon.proc.poll() is None, f"{fault} stopped the daemon"
        assert answer_of(faulty_daemon, "ok") == "part1 part2"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_junk_events_fail_the_call_as_the_plugins_fault(faulty_daemon, stream) -> None:
    for fault, what in [("none-text", "TextDelta.text is NoneType, not str"), ("int-text", "TextDelta.text is int"),
                        ("bare-str", "unexpected event str"), ("none", "unexpected event NoneType"),
                        ("object", "unexpected event object"),
                        ("float-tokens", "Usage.input_tokens is 2.5, not an int"),
                        ("raw-finish", "UsageReport.finish_reason is 'end_turn', not None or a router.FinishReason"),
                        ("nan-audio", "Usage.audio_seconds is nan, not a finite number")]:
        details = error_details(ask(faulty_daemon, fault, stream))
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "PROVIDER_FAILED"), (fault, details)
        assert details.message.startswith(f"faulty: the plugin yielded a bad event: {what}"), details.message


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_transcript_with_fields_of_the_wrong_type_or_range_fails_the_call_as_the_plugins_fault(
        faulty_daemon, stream) -> None:
    """Not INTERNAL from the wire when the transcript is sent, nor NaN or negative times sent on: the
    field is named, as for any bad event."""
    for fault, what in [("utterances-str", "Transcript.utterances is str, not a list of router.Utterance"),
                        ("utterance-dict", "Transcript.utterances[0] is dict, not a router.Utterance"),
                        ("speaker-int", "Transcript.utterances[0].speaker is int, not str"),
                        ("start-str", "Transcript.utterances[2].start is 'x', not a finite number >= 0"),
                        ("end-nan", "Transcript.words[0].end is nan, not a finite number >= 0"),
                        ("start-negative", "Transcript.words[1].start is -1.0, not a finite number >= 0"),
                        ("confidence-str", "Transcript.words[0].confidence is '0.9', not a finite number >= 0"),
                        ("language-int", "Transcript.language is int, not str"),
                        ("duration-none", "Transcript.duration_seconds is None, not a finite number >= 0")]:
        details = error_details(ask(faulty_daemon, fault, stream))
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "PROVIDER_FAILED"), (fault, details)
        assert details.message == f"faulty: the plugin yielded a bad event: {what}", details.message
    assert faulty_daemon.proc.poll() is None


@pytest.mark.parametrize(("route_name", "model", "problem"), [
    ("junk", "int-text", "TextDelta.text is int"),
    ("transcript", "start-str", "Transcript.utterances[2].start is 'x'"),
])
def test_a_junk_event_is_a_failed_attempt_and_the_fallback_answers(faulty_daemon, route_name, model, problem) -> None:
    request = text_request("hello", metadata={"route": route_name})
    route = faulty_daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=20).answer.route
    assert (route.provider, route.model) == ("local", "extract")
    first = route.attempts[0]
    assert (first.provider, first.model, first.ok) == ("faulty", model, False)
    assert first.error.startswith(f"faulty: the plugin yielded a bad event: {problem}")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_an_empty_text_delta_is_no_answer_begun_the_fallback_still_answers(faulty_daemon, stream) -> None:
    """Plugins often yield a role-only first chunk as TextDelta(""): it is dropped, so a failure right
    after it still falls back (no answer text was sent), and a client never gets an empty delta."""
    request = text_request("hello", metadata={"route": "empty"})
    if stream:
        events = list(faulty_daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=20))
        assert all(e.text_delta.text for e in events if e.HasField("text_delta"))
        route = events[-1].done.answer.route
    else:
        route = faulty_daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=20).answer.route
    assert (route.provider, route.model) == ("local", "extract")
    assert (route.attempts[0].model, route.attempts[0].ok) == ("empty-then-503", False)


def test_the_login_of_a_base_url_from_the_environment_is_masked_for_the_client(start_daemon, tmp_path) -> None:
    """A plugin quoting its base URL, which its settings took from the environment: the login in it,
    known only to the settings (no config section holds it), is masked in what the client gets."""
    site = site_with(tmp_path, {"faulty": FAULTY})
    url = f"https://gateway-user:{GATEWAY_PASSWORD}@gateway.example/v1"
    daemon = start_daemon(CONFIG, env={KEY_VARIABLE: ENV_KEY, URL_VARIABLE: url}, plugins=(), extra_sites=(site,))
    failed = ask(daemon, "leak-url", stream=False)
    assert failed.details() == "faulty: cannot reach https://***@gateway.example/v1"
    daemon.stop()
    assert GATEWAY_PASSWORD not in daemon.logs()


def test_a_secret_setting_read_from_its_env_fields_variable_is_masked_for_the_client_and_in_the_log(
        start_daemon, tmp_path) -> None:
    """A setting named as a secret (``passphrase``) is masked when its value comes from the environment through
    ``env_fields`` too, as it is when the config file holds it, though the variable's name says nothing of it."""
    site = site_with(tmp_path, {"faulty": FAULTY})
    daemon = start_daemon(CONFIG, env={KEY_VARIABLE: ENV_KEY, PASSPHRASE_VARIABLE: PASSPHRASE}, plugins=(),
                          extra_sites=(site,))
    for stream in (False, True):
        details = error_details(ask(daemon, "leak-passphrase", stream))
        assert details.message == "faulty: the server said: wrong passphrase ***", details.message
    daemon.stop()
    assert "wrong passphrase ***" in daemon.logs() and PASSPHRASE not in daemon.logs()


def test_a_plugin_blocking_the_event_loop_is_named_in_a_warning(faulty_daemon) -> None:
    """A plugin's generate that sleeps on the event loop held every other call, whose own latency showed
    nothing of it: the stall is logged, naming the provider whose call was under way."""
    request = text_request("hi", hints=pb.RoutingHints(provider="faulty", model="block-loop"))
    answer = faulty_daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert answer.text == "part1 part2"
    assert wait_for(lambda: "the event loop has been blocked for" in faulty_daemon.logs())
    [line] = [line for line in faulty_daemon.logs().splitlines() if "the event loop has been blocked for" in line]
    assert "(provider calls under way: faulty)" in line and "WARNING" in line
    assert "time.sleep(1.5)" in faulty_daemon.logs()  # where the loop's thread was: the plugin's line


def test_keys_read_through_api_key_env_or_nested_are_masked_everywhere(start_daemon, tmp_path) -> None:
    site = site_with(tmp_path, {"faulty": FAULTY, "aab_leaky_import": BAD["aab_leaky_import"],
                                "reg_leak": BAD["reg_leak"]})
    daemon = start_daemon(CONFIG, env={KEY_VARIABLE: ENV_KEY}, plugins=(), extra_sites=(site,))
    for fault in ("leak-env", "leak-nested"):
        for stream in (False, True):
            details = error_details(ask(daemon, fault, stream))
            assert details.message == "faulty: the plugin failed: RuntimeError: 401: bad key ***", fault
    listed = providers_by_name(daemon.stub)
    assert listed["aab_leaky_import"].reason.endswith("RuntimeError: cannot init: key=***")
    assert listed["reg_leak"].reason == "register_providers failed: ValueError: rejected key ***"
    daemon.stop()
    logs = daemon.logs()
    assert "bad key ***" in logs and "cannot init: key=***" in logs
    assert ENV_KEY not in logs and NESTED_KEY not in logs


def test_plugins_that_fail_to_load_or_offer_bad_providers_are_listed_broken(start_daemon, tmp_path) -> None:
    site = site_with(tmp_path, {"faulty": FAULTY, **{k: v for k, v in BAD.items() if k != "aab_leaky_import"}})
    daemon = start_daemon(CONFIG, env={KEY_VARIABLE: ENV_KEY}, plugins=(), extra_sites=(site,))
    listed = providers_by_name(daemon.stub)
    broken = {name: p.reason for name, p in listed.items() if p.state == pb.PROVIDER_STATE_BROKEN}
    assert broken == {
        "imp_exit": "failed to import mmrouter-fx-imp-exit: SystemExit: imp_exit: this plugin needs libfoo",
        "reg_kbi": "register_providers failed: KeyboardInterrupt",
        "reg_leak": "register_providers failed: ValueError: rejected key ***",
        "junk_models": "register_providers failed: TypeError: provider 'junkmodels': models[0] is str, "
                       "not a router.ModelInfo",
        "reasontype": "unconfigured_reason() returned int, not str or None",
        "typo": "cannot register: unknown hook register_provider (a typo? the hooks are on_request, on_response, "
                "register_providers, route_request)",
        "faulty (from aaa_dup)": "name taken by plugin faulty",
    }
    assert listed["faulty"].plugin == "faulty" and listed["faulty"].state == pb.PROVIDER_STATE_READY
    assert listed["faulty (from aaa_dup)"].plugin == "aaa_dup"
    assert answer_of(daemon, "ok") == "part1 part2"  # not the impostor's "hijacked"
    assert daemon.proc.poll() is None


def test_sigterm_stops_the_daemon_though_a_plugin_ignores_cancellation(faulty_daemon) -> None:
    request = text_request("hi", hints=pb.RoutingHints(provider="faulty", model="swallow-cancel"))
    with pytest.raises(grpc.RpcError) as failed:
        faulty_daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=1)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the stuck call holds a call slot: said shutdown_grace_seconds (0.5) after its deadline, not only at shutdown
    assert wait_for(lambda: "ignores cancellation" in faulty_daemon.logs(), timeout=10)
    [stuck] = [line for line in faulty_daemon.logs().splitlines() if "ignores cancellation" in line]
    assert " ERROR " in stuck and "a call to faulty still runs over 0.5s after it was cancelled" in stuck
    started = time.monotonic()
    faulty_daemon.proc.send_signal(signal.SIGTERM)
    faulty_daemon.proc.wait(30)
    assert time.monotonic() - started < 15
    assert "provider faulty did not stop within 5s of being cancelled" in faulty_daemon.logs()


# -- in-process: the registry -------------------------------------------------------------------

BUILTINS = ["openai", "anthropic", "gemini", "assemblyai", "local"]
TEXT = frozenset({router.Modality.TEXT})


class Offers:
    """A plugin whose register_providers offers one provider with the given name and models."""

    def __init__(self, name: object, models: object) -> None:
        self.name, self.models = name, models

    @router.hookimpl
    def register_providers(self, register, settings):
        class P(router.Provider):
            async def generate(self, request, model, ctx):
                yield router.TextDelta("x")

        provider = P()
        provider.name, provider.models = self.name, self.models
        register(provider)


@pytest.mark.parametrize(("name", "models", "reason"), [
    ("p", ["m"], "provider 'p': models[0] is str, not a router.ModelInfo"),
    ("p", "m", "provider 'p': models is str, not a list of router.ModelInfo"),
    ("p", [router.ModelInfo(3, inputs=TEXT)], "provider 'p': models[0].name is int, not str"),
    (42, [router.ModelInfo("m", inputs=TEXT)], "provider name is int, not str"),
])
def test_a_provider_with_bad_models_or_name_is_broken_and_the_rest_load(name, models, reason) -> None:
    import mmrouter_testkit

    registry = load_registry({"fake": {"api_key": "k"}}, disabled=BUILTINS,
                             extra_plugins={"fake": mmrouter_testkit, "p": Offers(name, models)})
    assert registry.entries["p"].state is State.BROKEN
    assert registry.entries["p"].reason == f"register_providers failed: TypeError: {reason}"
    assert registry.ready("fake") is not None


def test_the_provider_named_like_its_plugin_keeps_the_name_whatever_the_order() -> None:
    import mmrouter_testkit

    registry = load_registry({"fake": {"api_key": "k"}}, disabled=BUILTINS,
                             extra_plugins={"aaa": Offers("fake", [router.ModelInfo("m", inputs=TEXT)]),
                                            "fake": mmrouter_testkit})
    assert registry.entries["fake"].plugin == "fake" and registry.ready("fake").model("echo") is not None
    loser = registry.entries["fake (from aaa)"]
    assert (loser.plugin, loser.state, loser.reason) == ("aaa", State.BROKEN, "name taken by plugin fake")


async def test_an_answer_without_a_usage_report_is_warned_of_once(caplog) -> None:
    """A provider that yields no UsageReport was answered at $0 with no word: its calls count as free."""
    from contextlib import aclosing

    import router
    from router.invoke import call_model
    from router.outcome import RouteInfo

    class Free(router.Provider):
        name = "free"
        models = [router.ModelInfo("m", frozenset({router.Modality.TEXT}), price=router.Price(1.0, 2.0))]

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            yield router.TextDelta("hi")

    provider = Free()
    request = router.Request(messages=[router.Message(router.Role.USER, [router.Part(text="q")])])
    for _ in range(2):
        route = RouteInfo("r", "free", "m")
        async with aclosing(call_model(provider, provider.models[0], request, router.CallContext("t"), route,
                                       "answer")) as events:
            assert [type(e) async for e in events] == [router.TextDelta]
        assert route.steps[0].usage.cost_usd == 0
    warned = [r for r in caplog.records if "without a usage report" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and "free answered with m" in warned[0].getMessage()


async def test_running_out_of_file_descriptors_is_said_once_not_as_a_plugin_bug(caplog) -> None:
    """Under `ulimit -n 256` every call failed as PROVIDER_FAILED "the plugin failed: OSError: [Errno 24]",
    with one ERROR traceback each (711 in 20 s)."""
    import errno
    from contextlib import aclosing

    import router
    from router.errors import ProviderUnavailable
    from router.invoke import call_model
    from router.outcome import RouteInfo

    class Starved(router.Provider):
        name = "starved"
        models = [router.ModelInfo("m", frozenset({router.Modality.TEXT}))]

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as exc:
                raise RuntimeError("could not connect") from exc
            yield  # pragma: no cover (an async generator)

    provider = Starved()
    request = router.Request(messages=[router.Message(router.Role.USER, [router.Part(text="q")])])
    for _ in range(3):
        with pytest.raises(ProviderUnavailable) as caught:
            async with aclosing(call_model(provider, provider.models[0], request, router.CallContext("t"),
                                           RouteInfo("r", "starved", "m"), "answer")) as events:
                [e async for e in events]
        assert "ran out of file descriptors" in caught.value.message and caught.value.retryable
    said = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and "ulimit -n" in said[0].getMessage() and said[0].exc_info is None
