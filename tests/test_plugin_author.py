"""A third-party plugin author's view of the contract: the conformance kit cancels calls mid-stream
and while they wait (not only at their first await), and names the real problem of a ``generate``
that is no async generator or that fails on its own; provider and model names that would forge the
daemon's log lines or that no ``provider/model`` target could name are refused at registration, as
are models that could do no task; the public docs' example keeps the contract."""

from __future__ import annotations

import asyncio
import logging
import re

import mmrouter_testkit
import pytest

import router
import router.testing
from router import wire
from router.plugins import MAX_NAME_CHARS, State, load_registry
from router.testing import ProviderContract

BUILTINS = ["openai", "anthropic", "gemini", "assemblyai", "local"]
TEXT = frozenset({router.Modality.TEXT})
CANCEL_CHECKS = ["test_generate_can_be_cancelled", "test_generate_can_be_cancelled_mid_stream",
                 "test_generate_can_be_cancelled_while_it_waits"]


def kit_check(check: str, provider: router.Provider) -> None:
    getattr(ProviderContract(), check)(provider)


class Streams(router.Provider):
    """Connects, then streams two chunks, waiting for each as a provider reads its stream."""

    name = "streams"
    models = [router.ModelInfo("m", inputs=TEXT)]

    async def generate(self, request, model, ctx):
        await asyncio.sleep(0.01)  # connect
        for chunk in ("hel", "lo"):
            await asyncio.sleep(0.01)  # read a chunk
            yield router.TextDelta(chunk)
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)


class SwallowsWhileReading(Streams):
    """Swallows CancelledError around its stream reads (a bare except in a retry loop): the QA report's case."""

    async def generate(self, request, model, ctx):
        await asyncio.sleep(0.01)  # connect
        for chunk in ("hel", "lo"):
            try:
                await asyncio.sleep(0.01)  # read a chunk
            except BaseException:
                continue
            yield router.TextDelta(chunk)
        while True:  # a retry loop on a dropped connection
            try:
                await asyncio.sleep(0.01)
                break
            except BaseException:
                continue
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)


class SwallowsWhileConnecting(Streams):
    """Lets a cancellation at its first await through, but swallows one while it connects."""

    async def generate(self, request, model, ctx):
        await asyncio.sleep(0)
        try:  # noqa: SIM105 (written as a plugin author would)
            await asyncio.sleep(0.3)  # connecting
        except BaseException:
            pass
        yield router.TextDelta("hi")
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)


class TurnsCancellationIntoAnError(Streams):
    async def generate(self, request, model, ctx):
        yield router.TextDelta("hel")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise router.ProviderUnavailable(self.name, "cut short") from None
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)


class SlowToEnd(Streams):
    async def generate(self, request, model, ctx):
        yield router.TextDelta("hel")
        try:
            await asyncio.sleep(5)
        finally:
            await asyncio.sleep(0.5)  # a slow clean-up: the cancellation waits for it
        yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)


class DelegatesToAnAsyncGenerator(Streams):
    """A plain ``def`` returning an async iterator: what the daemon reads with ``async for`` too."""

    def generate(self, request, model, ctx):
        return Streams.generate(self, request, model, ctx)


def test_the_kit_cancels_mid_stream_and_fails_a_provider_that_swallows_cancellation_while_it_reads() -> None:
    provider = SwallowsWhileReading()
    kit_check("test_generate_yields_contract_events", provider)
    kit_check("test_generate_can_be_cancelled", provider)  # cancelled before it connects: nothing swallowed
    with pytest.raises(AssertionError) as failed:
        kit_check("test_generate_can_be_cancelled_mid_stream", provider)
    assert str(failed.value).startswith("streams: generate went on after it was cancelled after its first event and"
                                        " ended normally (2 event(s) in all): it swallowed the CancelledError")


def test_the_kit_cancels_a_call_while_it_waits_and_fails_a_provider_that_swallows_it_there() -> None:
    provider = SwallowsWhileConnecting()
    kit_check("test_generate_can_be_cancelled", provider)
    kit_check("test_generate_can_be_cancelled_mid_stream", provider)  # nothing awaited after its first event
    with pytest.raises(AssertionError, match=r"^streams: generate went on after it was cancelled 0\.05 s into the"
                                             r" call and ended normally .*swallowed the CancelledError"):
        kit_check("test_generate_can_be_cancelled_while_it_waits", provider)


@pytest.mark.parametrize("check", CANCEL_CHECKS)
def test_a_streaming_provider_that_lets_cancellation_through_passes_every_cancel_check(check) -> None:
    kit_check(check, Streams())
    kit_check(check, DelegatesToAnAsyncGenerator())


def test_the_kit_passes_a_well_behaved_streaming_provider_on_every_check() -> None:
    checks = sorted(name for name in dir(ProviderContract) if name.startswith("test_"))
    assert set(CANCEL_CHECKS) <= set(checks)
    for check in checks:
        kit_check(check, Streams())


def test_a_provider_turning_cancellation_into_another_error_is_told_to_let_it_through() -> None:
    with pytest.raises(AssertionError) as failed:
        kit_check("test_generate_can_be_cancelled_mid_stream", TurnsCancellationIntoAnError())
    assert str(failed.value) == (
        "streams: generate ended with ProviderUnavailable('streams: cut short') when cancelled after its first"
        " event, not CancelledError: let CancelledError through (re-raise it after cleaning up)")


def test_a_provider_slow_to_end_once_cancelled_fails(monkeypatch) -> None:
    monkeypatch.setattr(router.testing, "CANCEL_PROMPT_SECONDS", 0.1)
    with pytest.raises(AssertionError, match=r"^streams: generate took 0\.\d s to end after it was cancelled after"
                                             r" its first event; at most 0\.1 s"):
        kit_check("test_generate_can_be_cancelled_mid_stream", SlowToEnd())


class ReturnsAList(Streams):
    async def generate(self, request, model, ctx):  # a coroutine returning the events
        return [router.TextDelta("hi"), router.UsageReport(router.Usage(1, 1))]


class SyncGenerator(Streams):
    def generate(self, request, model, ctx):
        yield router.TextDelta("hi")
        yield router.UsageReport(router.Usage(1, 1))


class PlainList(Streams):
    def generate(self, request, model, ctx):
        return [router.TextDelta("hi"), router.UsageReport(router.Usage(1, 1))]


NOT_ASYNC_GENERATORS = [
    (ReturnsAList, "streams: generate is an `async def` that returns (a coroutine), not an async generator"),
    (SyncGenerator, "streams: generate is a plain generator (`def` with `yield`), not an async generator"),
    (PlainList, "streams: generate returned list, not an async iterator"),
]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the coroutine is closed, not left never awaited
@pytest.mark.parametrize("check", ["test_generate_yields_contract_events", *CANCEL_CHECKS])
@pytest.mark.parametrize(("cls", "problem"), NOT_ASYNC_GENERATORS, ids=[c.__name__ for c, _ in NOT_ASYNC_GENERATORS])
def test_a_generate_that_is_no_async_generator_is_named_so_not_blamed_on_cancellation(cls, problem, check) -> None:
    with pytest.raises(AssertionError) as failed:
        kit_check(check, cls())
    assert str(failed.value).startswith(problem)
    assert "cancelled" not in str(failed.value)


class RaisesAtOnce(Streams):
    async def generate(self, request, model, ctx):
        raise ZeroDivisionError("oops")
        yield


class RaisesAfterAnEvent(Streams):
    async def generate(self, request, model, ctx):
        yield router.TextDelta("hel")
        raise KeyError("choices")


@pytest.mark.parametrize(("cls", "check", "said"), [
    (RaisesAtOnce, "test_generate_can_be_cancelled",
     "generate raised ZeroDivisionError('oops') after 0 event(s), before it was cancelled (the kit cancels at its"
     " first await)"),
    (RaisesAtOnce, "test_generate_can_be_cancelled_mid_stream",
     "generate raised ZeroDivisionError('oops') after 0 event(s), before it was cancelled (the kit cancels after"
     " its first event)"),
    (RaisesAfterAnEvent, "test_generate_can_be_cancelled_while_it_waits",
     "generate raised KeyError('choices') after 1 event(s), before it was cancelled (the kit cancels 0.05 s into"
     " the call)"),
])
def test_a_generate_that_raises_before_it_is_cancelled_is_named_so(cls, check, said) -> None:
    with pytest.raises(AssertionError) as failed:
        kit_check(check, cls())
    assert str(failed.value).startswith(f"streams: {said}: the call fails of itself")


# -- names and models refused at registration -------------------------------------------------------


class Offers:
    """A plugin whose register_providers offers one provider called ``name`` with ``models``."""

    def __init__(self, name: object, models: list) -> None:
        self.name, self.models = name, models

    @router.hookimpl
    def register_providers(self, register):
        register(offered(self.name, self.models))


def offered(name: object, models: list) -> router.Provider:
    provider = Streams()
    provider.name, provider.models = name, models
    return provider


def registry_offering(name: object, models: list):
    """A registry of the testkit's ``fake`` and plugin ``p``, which offers ``name`` with ``models``."""
    return load_registry({"fake": {"api_key": "k"}}, disabled=BUILTINS,
                         extra_plugins={"fake": mmrouter_testkit, "p": Offers(name, models)})


def unprintable(char: str, at: int) -> str:
    """The reason of a name that holds ``char`` (say ``U+000A LINE FEED``) at character ``at``."""
    return (f"holds {char} at character {at}, a space or a character that cannot be printed (a newline, a tab, an "
            "escape): it would break the daemon's log lines, and no provider/model target could name it")


BAD_NAMES = [
    ("weird\nINFO router.server: provider FORGED ready", unprintable("U+000A LINE FEED", 6)),
    ("esc\x1b[2J", unprintable("U+001B ESCAPE", 4)),
    ("two words", unprintable("U+0020 SPACE", 4)),
    ("tab\tname", unprintable("U+0009 CHARACTER TABULATION", 4)),
    ("bell\x07", unprintable("U+0007 BELL", 5)),
    ("c1\x9bcontrol", unprintable("U+009B (a control character)", 3)),
    ("rtl\u202eoverride", unprintable("U+202E RIGHT-TO-LEFT OVERRIDE", 4)),
    ("nbsp\u00a0name", unprintable("U+00A0 NO-BREAK SPACE", 5)),
    ("zwj\u200dname", unprintable("U+200D ZERO WIDTH JOINER", 4)),
    ("x" * (MAX_NAME_CHARS + 1), f"has {MAX_NAME_CHARS + 1} characters; at most {MAX_NAME_CHARS} (a request's"
                                 " hints could not name it)"),
]


def shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f"{name[:60]!r}..."


def test_names_are_at_most_as_long_as_a_request_hint_may_be() -> None:
    assert MAX_NAME_CHARS == wire.MAX_HINT_CHARS


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES, ids=[ascii(n[:20]) for n, _ in BAD_NAMES])
def test_a_provider_name_that_cannot_be_printed_or_targeted_breaks_only_its_plugin(name, problem, caplog) -> None:
    caplog.set_level(logging.INFO)
    registry = registry_offering(name, [router.ModelInfo("m", inputs=TEXT)])
    reason = f"provider name {shown(name)} {problem}"
    assert (registry.entries["p"].state, registry.entries["p"].reason) == (
        State.BROKEN, f"register_providers failed: TypeError: {reason}")
    assert name not in registry.entries
    assert registry.ready("fake") is not None
    logged = [record.getMessage() for record in caplog.records]
    assert any("provider p (plugin p) is broken" in line for line in logged)
    assert all(line.isprintable() for line in logged), logged  # no forged or broken log line
    with pytest.raises(AssertionError) as refused:  # the kit refuses it, with the daemon's reason
        kit_check("test_models_declare_what_they_take_and_give", offered(name, [router.ModelInfo("m", inputs=TEXT)]))
    assert str(refused.value) == f"the daemon lists this provider broken: {reason}"


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES, ids=[ascii(n[:20]) for n, _ in BAD_NAMES])
def test_a_model_name_that_cannot_be_printed_or_targeted_breaks_its_provider(name, problem) -> None:
    models = [router.ModelInfo("good", inputs=TEXT), router.ModelInfo(name, inputs=TEXT)]
    reason = f"provider 'p': model {shown(name)}: name {problem}"
    entry = registry_offering("p", models).entries["p"]
    assert (entry.state, entry.reason) == (State.BROKEN, f"register_providers failed: TypeError: {reason}")
    with pytest.raises(AssertionError) as refused:
        kit_check("test_models_declare_what_they_take_and_give", offered("p", models))
    assert str(refused.value) == f"the daemon lists this provider broken: {reason}"


@pytest.mark.parametrize("name", ["münchen-eu", "acme.v2", "x" * MAX_NAME_CHARS])
def test_printable_provider_names_without_spaces_are_taken(name) -> None:
    assert registry_offering(name, [router.ModelInfo("m", inputs=TEXT)]).ready(name) is not None


def test_model_names_of_real_apis_are_taken() -> None:
    names = ["meta-llama/Llama-3.1-8B-Instruct", "ft:gpt-4o-mini:acme::9x8y", "llama3:8b", "modèle-ü",
             "x" * MAX_NAME_CHARS]
    provider = registry_offering("p", [router.ModelInfo(n, inputs=TEXT) for n in names]).ready("p")
    assert [m.name for m in provider.models] == names


UNUSABLE_MODELS = [
    (router.ModelInfo("m", inputs=TEXT, outputs=frozenset({"hologram"})),
     "outputs 'hologram' name neither 'text' nor 'transcript': the model could do no task"),
    (router.ModelInfo("m", inputs=TEXT, outputs={"hologram", "smell"}),
     "outputs 'hologram', 'smell' name neither 'text' nor 'transcript': the model could do no task"),
    (router.ModelInfo("m", inputs=TEXT, default_max_output_tokens=100_000, max_output_tokens=10),
     "default_max_output_tokens is 100000, over max_output_tokens 10: a default answer could not be that long"),
]


@pytest.mark.parametrize(("model", "problem"), UNUSABLE_MODELS, ids=[p[:40] for _, p in UNUSABLE_MODELS])
def test_a_model_that_could_do_no_task_or_whose_default_answer_is_over_its_limit_is_refused(model, problem) -> None:
    reason = f"provider 'p': model 'm': {problem}"
    entry = registry_offering("p", [model]).entries["p"]
    assert (entry.state, entry.reason) == (State.BROKEN, f"register_providers failed: TypeError: {reason}")
    with pytest.raises(AssertionError) as refused:
        kit_check("test_models_declare_what_they_take_and_give", offered("p", [model]))
    assert str(refused.value) == f"the daemon lists this provider broken: {reason}"


def test_models_with_one_known_output_or_a_default_answer_within_their_limit_are_taken() -> None:
    models = [
        router.ModelInfo("more", inputs=TEXT, outputs=frozenset({"text", "hologram"})),
        router.ModelInfo("stt", inputs=frozenset({router.Modality.AUDIO}), outputs=frozenset({"transcript"})),
        router.ModelInfo("capped", inputs=TEXT, default_max_output_tokens=10, max_output_tokens=10),
        # the field's own default (4096) over a smaller limit: a plugin that never set it is not broken
        router.ModelInfo("small", inputs=TEXT, context_tokens=4096, max_output_tokens=500),
    ]
    assert [m.name for m in registry_offering("p", models).ready("p").models] == ["more", "stt", "capped", "small"]


# -- the public docs' example ------------------------------------------------------------------------


def docs_example() -> type[router.Provider]:
    """The provider of ``router``'s module docstring, run as written."""
    code = re.search(r"A provider plugin::\n\n(.*?)\nand in its", router.__doc__, re.S).group(1)
    namespace: dict = {}
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "router/__init__.py", "exec"), namespace)
    return namespace["EchoProvider"]


def test_the_docs_example_passes_the_kit_and_yields_no_empty_text_for_a_media_only_message() -> None:
    echo = docs_example()
    for check in sorted(name for name in dir(ProviderContract) if name.startswith("test_")):
        kit_check(check, echo())
    media = router.Media(router.Modality.IMAGE, "image/png", data=b"\x89PNG\r\n\x1a\n")
    request = router.Request(messages=[router.Message(router.Role.USER, [router.Part(media=media)])])
    provider = echo()

    async def call() -> list:
        return [event async for event in provider.generate(request, provider.models[0], router.CallContext("x"))]

    with pytest.raises(router.ProviderUnsupportedInput, match="echo: echo-1 echoes text only"):
        asyncio.run(call())
