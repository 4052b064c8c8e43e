"""A provider's own route notes (``router.RouteNote``): what a plugin changed on the request's way reaches the
client in the answer's ``route.notes``, named after the call's target, once, and kept when a fallback answers;
a bad note is a bad event (PROVIDER_FAILED), as any other."""

from __future__ import annotations

import time
from contextlib import aclosing

import pytest

import router
from router import Modality, ModelInfo, RouteNote, TextDelta, Usage, UsageReport
from router import testing as kit
from router.config import parse_config
from router.core import App
from router.errors import ProviderFailed
from router.invoke import call_model
from router.outcome import Done, RouteInfo
from router.types import CallContext, Message, Part, Request, Role
from router.wire import answer_to_proto

TEXT = frozenset({Modality.TEXT})
#: A configured key, which a note quoting it must not carry to the client.
SECRET = "nk-route-note-secret-4242"


class Scripted(router.Provider):
    """Yields, for each model, its events in order; an exception among them is raised there."""

    def __init__(self, scripts: dict[str, list[object]], name: str = "n") -> None:
        self.name = name
        self.scripts = scripts
        self.models = [ModelInfo(model, TEXT) for model in scripts]

    def unconfigured_reason(self) -> str | None:
        return None

    async def generate(self, request, model, ctx):
        for event in self.scripts[model.name]:
            if isinstance(event, BaseException):
                raise event
            yield event


def ended(text: str = "ok") -> list[object]:
    """An answer's text and its last usage report."""
    return [TextDelta(text), UsageReport(Usage(1, 1), router.FinishReason.STOP)]


def question() -> Request:
    return Request(messages=[Message(Role.USER, [Part(text="hi")])])


async def call(provider: Scripted, model: str, route: RouteInfo) -> list[object]:
    """Every event :func:`call_model` passes on for ``provider``'s ``model`` (bounded: a hang fails)."""
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 10)
    async with aclosing(call_model(provider, provider.model(model), question(), ctx, route, "answer")) as events:
        return [event async for event in events]


def empty_route() -> RouteInfo:
    return RouteInfo(rule="t", provider="n", model="m")


async def test_a_note_goes_to_the_route_named_after_its_target_not_to_the_answers_events() -> None:
    provider = Scripted({"m": [RouteNote("  the photo was scaled down\n"), TextDelta("a"),
                               RouteNote("the second photo was scaled down"), *ended("b")]})
    route = empty_route()
    events = await call(provider, "m", route)
    assert [type(e).__name__ for e in events] == ["TextDelta", "TextDelta", "UsageReport"]
    assert route.notes == ["n/m: the photo was scaled down", "n/m: the second photo was scaled down"]
    assert [a.ok for a in route.attempts] == [True]


async def test_a_note_is_kept_once_in_an_answer() -> None:
    """The same note twice in one call, or again from a second call on the same route (a call retried with
    less history), is kept once; another target's same text is its own note."""
    provider = Scripted({"m": [RouteNote("scaled"), RouteNote("scaled"), *ended()], "o": [RouteNote("scaled"), *ended()]})
    route = empty_route()
    await call(provider, "m", route)
    await call(provider, "m", route)
    await call(provider, "o", route)
    assert route.notes == ["n/m: scaled", "n/o: scaled"]


async def test_a_note_stays_when_the_call_then_fails() -> None:
    provider = Scripted({"m": [RouteNote("scaled"), router.ProviderUnavailable("n", "overloaded")]})
    route = empty_route()
    with pytest.raises(router.ProviderUnavailable):
        await call(provider, "m", route)
    assert route.notes == ["n/m: scaled"]
    assert [(a.ok, a.error) for a in route.attempts] == [(False, "n: overloaded")]


async def test_a_note_between_the_halves_of_a_surrogate_pair_leaves_the_pair_whole() -> None:
    provider = Scripted({"m": [TextDelta("a\ud83d"), RouteNote("x"), TextDelta("\ude00b"), *ended("")]})
    route = empty_route()
    events = await call(provider, "m", route)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "a\U0001f600b"


@pytest.mark.parametrize(("note", "problem"), [
    (RouteNote(42), "RouteNote.text is int, not str"),
    (RouteNote(None), "RouteNote.text is NoneType, not str"),
    (RouteNote(""), "RouteNote.text is empty: yield a note only when there is something to say"),
    (RouteNote(" \n"), "RouteNote.text is empty: yield a note only when there is something to say"),
    (RouteNote("x" * (router.MAX_ROUTE_NOTE_CHARS + 1)),
     "RouteNote.text has 1,001 characters, over the 1,000 a note may have"),
], ids=["int", "none", "empty", "blank", "too-long"])
async def test_a_bad_note_is_a_bad_event_that_fails_the_call(note, problem, caplog) -> None:
    """As a TextDelta of no str: PROVIDER_FAILED naming the problem, a failed attempt (a fallback may
    answer), an ERROR in the log; no note added. The conformance kit names the same problem."""
    provider = Scripted({"m": [TextDelta("a"), note, *ended()]})
    route = empty_route()
    with pytest.raises(ProviderFailed) as failed:
        await call(provider, "m", route)
    assert failed.value.message == f"n: the plugin yielded a bad event: {problem}"
    assert [(a.ok, a.error) for a in route.attempts] == [(False, failed.value.message)]
    assert route.notes == []
    assert f"provider n: the plugin yielded a bad event: {problem}" in caplog.text
    assert kit.event_problem(note) == problem


async def test_a_note_of_the_longest_length_is_taken() -> None:
    longest = "x" * router.MAX_ROUTE_NOTE_CHARS
    provider = Scripted({"m": [RouteNote(longest), *ended()]})
    route = empty_route()
    await call(provider, "m", route)
    assert route.notes == [f"n/m: {longest}"]
    assert kit.event_problem(RouteNote(longest)) is None


CONFIG = """
providers:
  n: {api_key: "%s"}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: main
    use: n/first
    fallback: [n/second]
server:
  data_dir: "%s"
"""


class NotingPlugin:
    """Registers a provider whose first model notes what it did, then fails; its second answers."""

    @router.hookimpl
    def register_providers(self, register, settings):
        register(Scripted({
            "first": [RouteNote("messages[0].parts[0] was scaled down"), RouteNote(f"signed with {SECRET}"),
                      RouteNote("messages[0].parts[0] was scaled down"),
                      router.ProviderUnavailable("n", "overloaded")],
            "second": [RouteNote("messages[0].parts[0] was scaled down"), *ended("fallback answered")],
        }))


@pytest.mark.parametrize("held", [True, False], ids=["generate", "stream"])
async def test_a_failed_targets_notes_stay_in_the_answer_of_the_fallback(tmp_path, held) -> None:
    """The client's Done (Generate's answer, StreamGenerate's last event) has the notes of the target that
    failed, named after it and once each, then the fallback's; a secret quoted in one is masked on the wire."""
    app = App(parse_config(CONFIG % (SECRET, tmp_path), "test.yaml"), extra_plugins={"n": NotingPlugin()})
    try:
        async with aclosing(app.answer(question(), time.monotonic() + 10, held=held)) as events:
            done = [event async for event in events][-1]
        assert isinstance(done, Done)
        sent = answer_to_proto(done.answer, app.redact)
    finally:
        await app.aclose()
    assert (sent.text, sent.route.model) == ("fallback answered", "second")
    assert list(sent.route.notes) == [
        "n/first: messages[0].parts[0] was scaled down",
        "n/first: signed with ***",
        "n/first failed (PROVIDER_UNAVAILABLE: n: overloaded); trying the next target",
        "n/second: messages[0].parts[0] was scaled down",
    ]
