"""The answer pipeline: what a consumer that stops at Done leaves behind, fallbacks, usage and statistics."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from contextlib import aclosing

import grpc
import mmrouter_testkit
import pytest
from grpc_helpers import PAID_BRIDGE, error_details, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

import router
from router import FEATURE_EXTRACTION_ONLY, OUTPUT_TRANSCRIPT, Modality, ModelInfo, Price
from router.config import parse_config
from router.core import App
from router.errors import ProviderUnavailable
from router.outcome import Done, StepUsage
from router.sessions import SessionStore
from router.types import Media, Message, Part, Request, Role

CONFIG = """
providers:
  fake: {api_key: k}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: everything
    use: fake/echo
server:
  data_dir: "%s"
"""


async def test_an_answer_closed_at_done_leaves_no_generator_to_the_garbage_collector(tmp_path) -> None:
    """Generate stops reading at Done; every inner generator must be closed then, not by the GC's
    finalizer (which schedules one extra task per request on the event loop)."""
    app = App(parse_config(CONFIG % tmp_path, "test.yaml"), extra_plugins={"fake": mmrouter_testkit})
    request = Request(messages=[Message(Role.USER, [Part(text="hello")])])
    finalized: list[str] = []
    firstiter, finalizer = sys.get_asyncgen_hooks()

    def counting_finalizer(agen) -> None:  # type: ignore[no-untyped-def]
        finalized.append(agen.__qualname__)
        finalizer(agen)

    sys.set_asyncgen_hooks(firstiter, counting_finalizer)
    try:
        texts = []
        for _ in range(3):
            async with aclosing(app.answer(request, None)) as events:
                async for event in events:
                    if isinstance(event, Done):
                        texts.append(event.answer.text)
                        break
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
        await app.aclose()
    assert len(texts) == 3 and all("hello" in t for t in texts)
    assert finalized == [], f"left to the garbage collector: {finalized}"


class Scripted(router.Provider):
    """A text model, an omni model, a paid audio bridge ($1 per second) and a document reader that
    fails on documents whose bytes hold ``bad`` (a bridge is given no file name)."""

    def __init__(self) -> None:
        self.name = "s"
        self.models = [
            ModelInfo("chat", frozenset({Modality.TEXT}), price=Price(1.0, 2.0)),
            ModelInfo("omni", frozenset(Modality), price=Price(1.0, 2.0)),
            ModelInfo("ears", frozenset({Modality.AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                      price=Price(per_audio_hour=3600.0)),
            ModelInfo("reader", frozenset({Modality.DOCUMENT}), features=frozenset({FEATURE_EXTRACTION_ONLY})),
        ]

    def unconfigured_reason(self) -> str | None:
        return None

    async def generate(self, request, model, ctx):
        if model.name == "ears":
            yield router.TranscriptReady(router.Transcript("heard words", duration_seconds=2.0))
            yield router.UsageReport(router.Usage(audio_seconds=2.0))
        elif model.name == "reader":
            if b"bad" in request.media()[0].read_bytes():
                raise ProviderUnavailable(self.name, "the reader is down")
            yield router.TextDelta("the document's text")
        else:
            yield router.TextDelta(f"{model.name} answered")
            yield router.UsageReport(router.Usage(input_tokens=10, output_tokens=5))


class ScriptedPlugin:
    """Registers :class:`Scripted`; its route_request hook takes 0.3 s when metadata['slow'] is set."""

    @router.hookimpl
    def register_providers(self, register, settings):
        register(Scripted())

    @router.hookimpl
    def route_request(self, request, candidates):
        if request.metadata.get("slow"):
            time.sleep(0.3)
        return None


SCRIPTED = """
providers:
  s: {}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: main
    use: s/chat
    fallback: [s/omni]
bridges:
  audio: [s/ears]
  document: [s/reader]
server:
  data_dir: "%s"
"""


async def _events(app: App, request: Request) -> list:
    async with aclosing(app.answer(request, None)) as events:
        return [event async for event in events]


async def test_a_bridge_paid_before_another_bridge_failed_counts_in_the_answers_usage(tmp_path) -> None:
    """The audio bridge succeeds, the document reader fails, omni (no bridges) answers: the paid
    transcription is still in the answer's total and was streamed as a step's usage."""
    app = App(parse_config(SCRIPTED % tmp_path, "test.yaml"), extra_plugins={"s": ScriptedPlugin()})
    audio = Media(Modality.AUDIO, "audio/wav", data=wav(0.1), filename="a.wav")
    pdf = Media(Modality.DOCUMENT, "application/pdf", data=b"%PDF-1.4\n%bad\n%%EOF", filename="bad.pdf")
    try:
        events = await _events(app, Request(messages=[Message(Role.USER, [Part(media=audio), Part(media=pdf),
                                                                         Part(text="Summarise")])]))
    finally:
        await app.aclose()
    answer = events[-1].answer
    assert (answer.text, answer.route.model) == ("omni answered", "omni")
    assert [s.model for s in answer.route.steps] == ["ears", "omni"]
    assert answer.usage.cost_usd == pytest.approx(sum(s.usage.cost_usd for s in answer.route.steps))
    assert answer.usage.cost_usd == pytest.approx(2.0 + 20e-6) and answer.usage.audio_seconds == 2.0
    streamed = [e.usage.cost_usd for e in events if isinstance(e, StepUsage)]
    assert streamed == pytest.approx([2.0, 20e-6])


async def test_the_routes_latency_covers_routing(tmp_path) -> None:
    """latency_ms is the router's whole time on the request: a slow route_request hook counts."""
    app = App(parse_config(SCRIPTED % tmp_path, "test.yaml"), extra_plugins={"s": ScriptedPlugin()})
    try:
        events = await _events(app, Request(messages=[Message(Role.USER, [Part(text="hi")])],
                                            metadata={"slow": "yes"}))
    finally:
        await app.aclose()
    assert events[-1].answer.route.latency_ms >= 300


def _bridge_rows(data_dir) -> int:
    store = SessionStore(data_dir / "sessions.sqlite")
    try:
        return sum(row["calls"] for row in store.stats() if row["model"] == "ears")
    finally:
        store.close()


def test_paid_bridges_of_failed_and_cancelled_requests_are_in_the_statistics(start_daemon, tmp_path) -> None:
    daemon = start_daemon(PAID_BRIDGE, data_dir=tmp_path / "data")
    audio = pb.Message(role=pb.ROLE_USER, parts=[pb.Part(media=pb.Media(
        modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5)))])

    def request(command: str) -> pb.MultimodalRequest:  # the command alone in the last message
        return pb.MultimodalRequest(messages=[audio, pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=command)])])

    with pytest.raises(grpc.RpcError) as caught:  # the transcription is paid, then the answer is refused
        daemon.stub.Generate(pb.GenerateRequest(request=request("FAIL:400")))
    assert error_details(caught.value).reason == "PROVIDER_BAD_REQUEST"
    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request("SLOW:30")))
    for event in stream:
        if event.WhichOneof("event") == "transcript":
            stream.cancel()  # the client leaves while the answering model is still thinking
            break
    time.sleep(0.5)
    assert daemon.stop() == 0
    assert _bridge_rows(tmp_path / "data") == 2


INPUT_SIZE = """
providers:
  fake: {api_key: k}
routes:
  - name: text
    use: fake/echo
    fallback: [fake/docs]
"""


def test_a_target_refusing_the_input_size_gives_way_to_the_fallback(start_daemon) -> None:
    daemon = start_daemon(INPUT_SIZE)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("FAIL:413@echo"))).answer
    assert (answer.route.model, [(a.model, a.ok) for a in answer.route.attempts]) == (
        "docs", [("echo", False), ("docs", True)])

    with pytest.raises(grpc.RpcError) as caught:  # every target refused: the client is told why
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("FAIL:413")))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INPUT_TOO_LARGE")

    with pytest.raises(grpc.RpcError) as caught:  # a malformed request is not tried elsewhere
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("FAIL:400@echo")))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")


class Streaming(router.Provider):
    """``long`` streams 100 words and notes when its stream is closed; ``junk`` yields a bad event and,
    closing, awaits a helper task it cancelled (a CancelledError of its own); ``good`` answers."""

    def __init__(self) -> None:
        self.name = "st"
        self.models = [ModelInfo(n, frozenset({Modality.TEXT}), price=Price(1.0, 2.0)) for n in ("long", "junk", "good")]
        self.closed: list[str] = []

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        if model.name == "good":
            yield router.TextDelta("good answered")
            return
        if model.name == "junk":
            helper = asyncio.ensure_future(asyncio.sleep(10))
            try:
                yield router.TextDelta(None)  # type: ignore[arg-type]
            finally:
                helper.cancel()
                await helper
        try:
            for i in range(100):
                yield router.TextDelta(f"w{i} ")
                await asyncio.sleep(0.01)
        finally:
            self.closed.append(model.name)


STREAMING_CONFIG = """
providers:
  st: {}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: junk-first
    match: {tags: [junk]}
    use: st/junk
    fallback: [st/good]
  - name: long
    use: st/long
server:
  data_dir: "%s"
"""


def streaming_app(tmp_path) -> tuple[App, Streaming]:
    provider = Streaming()

    class Plugin:
        @router.hookimpl
        def register_providers(self, register, settings):  # type: ignore[no-untyped-def]
            register(provider)

    return App(parse_config(STREAMING_CONFIG % tmp_path, "t.yaml"), extra_plugins={"st": Plugin()}), provider


async def test_a_client_leaving_mid_answer_closes_the_providers_stream_at_once(tmp_path) -> None:
    app, provider = streaming_app(tmp_path)
    request = Request(messages=[Message(Role.USER, [Part(text="hi")])])
    try:
        async with aclosing(app.answer(request, None)) as events:
            async for event in events:
                if isinstance(event, router.TextDelta):
                    break  # the client is gone
        assert provider.closed == ["long"], "the provider's stream was left to the garbage collector"
    finally:
        await app.aclose()


async def test_a_plugins_own_cancelled_error_while_closing_is_its_failure_not_a_cancellation(tmp_path) -> None:
    app, _ = streaming_app(tmp_path)
    request = Request(messages=[Message(Role.USER, [Part(text="hi")])], hints=router.types.RoutingHints(tags=["junk"]))
    try:
        events = [event async for event in app.answer(request, None)]
        answer = events[-1].answer
        assert answer.text == "good answered"
        assert [(a.model, a.ok) for a in answer.route.attempts] == [("junk", False), ("good", True)]
    finally:
        await app.aclose()


async def test_a_fallback_says_why_and_lists_only_the_targets_still_untried(tmp_path) -> None:
    config = """
providers:
  fake: {api_key: k}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: chain
    use: fake/echo
    fallback: [fake/docs, fake/omni]
server:
  data_dir: "%s"
"""
    app = App(parse_config(config % tmp_path, "t.yaml"), extra_plugins={"fake": mmrouter_testkit})
    try:
        request = Request(messages=[Message(Role.USER, [Part(text="FAIL:503@echo")])])
        route = [event async for event in app.answer(request, None)][-1].answer.route
        assert (route.model, route.fallbacks) == ("docs", ["fake/omni"])
        assert [n for n in route.notes if "failed" in n] == [
            "fake/echo failed (PROVIDER_UNAVAILABLE: fake: scripted failure 503); trying the next target"]
    finally:
        await app.aclose()


async def test_a_call_left_after_its_usage_keeps_what_it_cost() -> None:
    """A client gone between the model's usage report and the end of its answer: the provider billed the
    call, so its usage stays in the route as a cancelled step (and so in the statistics)."""
    from router.invoke import call_model
    from router.outcome import RouteInfo
    from router.types import CallContext, TextDelta, Usage, UsageReport

    class Billed(router.Provider):
        name = "billed"
        models = [ModelInfo("m", frozenset({Modality.TEXT}), price=Price(1.0, 2.0))]

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            yield TextDelta("an answer")
            yield UsageReport(Usage(input_tokens=1_000_000, output_tokens=1_000_000))
            await asyncio.sleep(3600)  # the stream's end, never reached

    provider = Billed()
    route = RouteInfo("r", "billed", "m")
    request = Request(messages=[Message(Role.USER, [Part(text="hi")])])
    async with aclosing(call_model(provider, provider.models[0], request, CallContext("x"), route, "answer")) as calls:
        async for event in calls:
            if isinstance(event, UsageReport):
                break  # the client leaves
    [step] = route.steps
    assert (step.purpose, step.usage.cost_usd) == ("answer (cancelled)", pytest.approx(3.0))
    assert [(a.ok, a.error) for a in route.attempts] == [(False, "cancelled")]


async def test_a_transcription_refused_for_its_size_is_not_tried_again_with_less_history(tmp_path) -> None:
    """A transcription sends no history, so a refusal for size goes straight to the next target rather
    than being retried once per halving of a session's history; a chat model refused for size answers
    with less history and says so once."""
    from router.errors import ProviderInputTooLarge
    from router.types import Options, Task, TextDelta, Transcript, TranscriptReady, Usage, UsageReport

    calls: list[tuple[str, int]] = []

    class Picky(router.Provider):
        name = "pk"
        models = [ModelInfo("ears", frozenset({Modality.AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                            price=Price(per_audio_hour=1.0)),
                  ModelInfo("ears2", frozenset({Modality.AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                            price=Price(per_audio_hour=1.0)),
                  ModelInfo("chat", frozenset({Modality.TEXT}), price=Price(1.0, 1.0))]

        async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
            calls.append((model.name, len(request.messages)))
            if model.name == "ears" or (model.name == "chat" and len(request.messages) > 3):
                raise ProviderInputTooLarge(self.name, "the request is over 32 MB")
            if model.name == "ears2":
                yield TranscriptReady(Transcript("heard", duration_seconds=1.0))
            else:
                yield TextDelta("answered")
            yield UsageReport(Usage(input_tokens=1))

    class Plugin:
        @router.hookimpl
        def register_providers(self, register, settings):  # type: ignore[no-untyped-def]
            register(Picky())

    config = f"""
providers: {{pk: {{}}}}
plugins: {{disabled: [openai, anthropic, gemini, assemblyai, local]}}
routes:
  - name: ears
    match: {{inputs_any: [audio]}}
    use: pk/ears
    fallback: [pk/ears2]
default: pk/chat
bridges: {{audio: [pk/ears2]}}
server: {{data_dir: '{tmp_path}'}}
"""
    app = App(parse_config(config, "t.yaml"), extra_plugins={"pk": Plugin()})

    async def answer(*parts: Part, task: Task = Task.AUTO):  # type: ignore[no-untyped-def]
        request = Request(messages=[Message(Role.USER, list(parts))], session_id="s", options=Options(task=task))
        return [e async for e in app.answer(request, None)][-1].answer

    try:
        for i in range(4):
            await answer(Part(text=f"turn {i}"))
        calls.clear()
        heard = await answer(Part(media=Media(Modality.AUDIO, "audio/wav", data=wav(0.5))), task=Task.TRANSCRIBE)
        assert heard.route.model == "ears2" and heard.transcript.text == "heard"
        assert [name for name, _ in calls] == ["ears", "ears2"]
        assert not any("history trimmed" in n for n in heard.route.notes)

        calls.clear()
        chat = await answer(Part(text="and now?"))
        assert chat.text == "answered"
        assert [name for name, _ in calls] == ["chat"] * len(calls) and len(calls) > 1
        [note] = [n for n in chat.route.notes if "history trimmed" in n]
        assert "refused the request for its size" in note
    finally:
        await app.aclose()


async def test_a_call_cancelled_while_its_turn_waits_for_the_database_keeps_no_turn(tmp_path) -> None:
    """The turn is written before Done is sent. When another process holds the database's write lock
    (``mmrouter prune``, up to the busy timeout) and the call is cancelled meanwhile (its deadline, its
    client gone), the client never gets the answer: the turn is dropped, so that its retry does not
    store the question twice. Before, the shielded write went on and kept it."""
    import sqlite3

    app = App(parse_config(CONFIG % tmp_path, "test.yaml"), extra_plugins={"fake": mmrouter_testkit})

    def request(text: str) -> Request:
        return Request(messages=[Message(Role.USER, [Part(text=text)])], session_id="s")

    async def answer(text: str) -> list:
        return [e async for e in app.answer(request(text), None) if isinstance(e, Done)]

    try:
        assert await answer("one")
        other = sqlite3.connect(str(tmp_path / "sessions.sqlite"), isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process writing
        task = asyncio.ensure_future(answer("two"))
        await asyncio.sleep(0.5)  # the answer is made; its turn waits for the lock
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other.execute("COMMIT")
        other.close()
        history = await app.sessions.run(app.sessions.history, "s", app.load_media)
        assert [m.role for m in history] == [Role.USER, Role.ASSISTANT]
        assert history[0].text == "one"
        assert await answer("three")  # the session goes on
        history = await app.sessions.run(app.sessions.history, "s", app.load_media)
        assert [m.text for m in history if m.role is Role.USER] == ["one", "three"]
    finally:
        await app.aclose()


class Hearing(router.Provider):
    """A text model that is down, an audio bridge, and a model that hears audio itself and sends the same
    transcript the bridge made (as local/extract does when it is both the bridge and the fallback)."""

    def __init__(self) -> None:
        self.name = "h"
        self.models = [
            ModelInfo("chat", frozenset({Modality.TEXT})),
            ModelInfo("ears", frozenset({Modality.AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT})),
            ModelInfo("hears", frozenset({Modality.TEXT, Modality.AUDIO})),
        ]

    def unconfigured_reason(self) -> str | None:
        return None

    async def generate(self, request, model, ctx):
        if model.name == "chat":
            raise ProviderUnavailable(self.name, "chat is down")
        yield router.TranscriptReady(router.Transcript("heard words", duration_seconds=2.0))
        if model.name == "hears":
            yield router.TextDelta("it says: heard words")
        yield router.UsageReport(router.Usage(audio_seconds=2.0))


class HearingPlugin:
    @router.hookimpl
    def register_providers(self, register, settings):
        register(Hearing())


HEARING = """
providers:
  h: {}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: main
    use: h/chat
    fallback: [h/hears]
bridges:
  audio: [h/ears]
server:
  data_dir: "%s"
"""


async def test_a_fallback_that_hears_the_audio_again_does_not_send_its_transcript_twice(tmp_path) -> None:
    """The bridge's transcript is sent before h/chat fails; h/hears, the fallback, takes the audio itself and
    makes the same transcript: the client gets it once, as the README says of transcripts on a fallback."""
    app = App(parse_config(HEARING % tmp_path, "test.yaml"), extra_plugins={"h": HearingPlugin()})
    audio = Media(Modality.AUDIO, "audio/wav", data=wav(0.1), filename="a.wav")
    try:
        events = await _events(app, Request(messages=[Message(Role.USER, [Part(media=audio),
                                                                         Part(text="What is said?")])]))
    finally:
        await app.aclose()
    transcripts = [e.transcript.text for e in events if isinstance(e, router.TranscriptReady)]
    assert transcripts == ["heard words"]
    answer = events[-1].answer
    assert (answer.text, answer.route.model) == ("it says: heard words", "hears")
    assert answer.transcript is not None and answer.transcript.text == "heard words"
