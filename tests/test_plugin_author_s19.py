"""What a third-party plugin author found (QA plugin3p): an answer ends at its last UsageReport, however long
the plugin's generator goes on after it; a read-only ``models`` property registers; ``max_output_tokens`` is
capped to the model's; an error under another provider's name is renamed; a plugin's mistakes give one-line
reasons and one log record with its provider and request id; the prepare note names what a call waited for;
a slow plugin import is warned of; and an unlabelled speaker's turn is its text alone."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import media_factory
import pytest
from conftest import make_dist_info
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb

import router
from router import invoke, plugins, prepare
from router.errors import ProviderError
from router.invoke import call_model
from router.outcome import RouteInfo
from router.plugins import State, load_registry, registered_models

T = frozenset({router.Modality.TEXT})
STOP = router.FinishReason.STOP

#: The ports this module's upstreams bind (the fixer's range), tried in turn.
PORTS = range(42150, 42200)


def text(question: str = "q", **options: Any) -> router.Request:
    return router.Request(messages=[router.Message(router.Role.USER, [router.Part(text=question)])],
                          options=router.Options(**options))


async def answer(provider: router.Provider, model: str, request: router.Request | None = None,
                 request_id: str = "rid-s19") -> tuple[list[object], RouteInfo]:
    """The events of one call through the router's ``call_model``, and its route; waits 5 s at most (a call
    the router keeps waiting fails the test rather than hanging it)."""
    route = RouteInfo("r", provider.name, model)

    async def run() -> list[object]:
        call = call_model(provider, provider.model(model), request or text(), router.CallContext(request_id), route,
                          "answer")
        async with aclosing(call) as events:
            return [event async for event in events]

    return await asyncio.wait_for(run(), 5), route


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (asyncio's "Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(None)


async def settle(until: Any = None, seconds: float = 5.0) -> None:
    """Let background tasks and finalizers run: until ``until()`` is true, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gc.collect()
        await asyncio.sleep(0.05)
        if until is not None and until():
            return
    gc.collect()
    await asyncio.sleep(0.05)


def invoke_records(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "router.invoke" and words in r.getMessage()]


# -- 1. the answer ends at the UsageReport with a finish reason ----------------------------------------------


class Lingering(router.Provider):
    """Answers, then does not return: it sleeps in its cleanup, or its cleanup raises."""

    name = "lingering"
    models = [router.ModelInfo(m, T, price=router.Price(1.0, 2.0)) for m in ("sleeps", "raises")]

    def __init__(self) -> None:
        self.cleanup_cancelled = asyncio.Event()

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        try:
            yield router.TextDelta("whole ")
            yield router.TextDelta("answer")
            yield router.UsageReport(router.Usage(10, 2), STOP)
            await asyncio.sleep(60)  # an upstream that holds its connection open after the last line
        finally:
            if model.name == "raises":
                raise RuntimeError("closing the connection failed")
            try:
                await asyncio.sleep(60)  # a slow cleanup
            except asyncio.CancelledError:
                self.cleanup_cancelled.set()
                raise


async def test_an_answer_ends_at_its_last_usage_report_and_a_slow_cleanup_is_cut_and_logged(
        monkeypatch, caplog, loop_errors) -> None:
    monkeypatch.setattr(invoke, "CLOSE_SECONDS", 0.2)
    provider = Lingering()
    with caplog.at_level(logging.WARNING, logger="router.invoke"):
        events, route = await answer(provider, "sleeps", request_id="rid-linger")
        assert [type(e).__name__ for e in events] == ["TextDelta", "TextDelta", "UsageReport"]
        assert route.attempts[-1].ok and not [a for a in route.attempts if not a.ok]
        assert route.steps[-1].usage.cost_usd == pytest.approx(router.Price(1.0, 2.0).cost(router.Usage(10, 2)))
        await asyncio.wait_for(provider.cleanup_cancelled.wait(), 5)  # the background close, bounded
        await settle(lambda: invoke_records(caplog, "had not closed"))
    (record,) = invoke_records(caplog, "had not closed")
    assert record.levelname == "WARNING"
    assert "lingering" in record.getMessage() and "request_id=rid-linger" in record.getMessage()
    assert not invoke_records(caplog, "failed")
    assert not loop_errors


async def test_a_cleanup_that_raises_after_the_answer_is_one_record_with_provider_and_request_id(
        caplog, loop_errors) -> None:
    provider = Lingering()
    with caplog.at_level(logging.WARNING):
        events, route = await answer(provider, "raises", request_id="rid-raises")
        assert isinstance(events[-1], router.UsageReport) and route.attempts[-1].ok
        await settle(lambda: invoke_records(caplog, "raised while"))
    (record,) = invoke_records(caplog, "raised while")
    assert "lingering" in record.getMessage() and "request_id=rid-raises" in record.getMessage()
    assert record.exc_info is not None and "closing the connection failed" in str(record.exc_info[1])
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert not loop_errors


class _Upstream(BaseHTTPRequestHandler):
    """An NDJSON stream that sends its whole answer, then holds the connection open, its body unfinished,
    until its client closes it (at most 30 s); records whether the client did."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in (b'{"delta": "Hello"}\n', b'{"delta": " world"}\n', b'{"done": true, "usage": {"in": 3, "out": 2}}\n'):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()
        self.connection.settimeout(30)
        try:
            closed = self.connection.recv(1) == b""
        except OSError:
            closed = False
        self.server.closed_by_client.append(closed)  # type: ignore[attr-defined]
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = None
    for port in PORTS:
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), _Upstream)
            break
        except OSError:
            continue
    assert server is not None, "no free port in 42150-42199"
    server.daemon_threads = True
    server.closed_by_client = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


#: A plugin for the daemon: ``http`` reads an upstream's NDJSON stream to its end with httpx, as most plugins
#: do; ``cleanup`` sleeps 60 s in its ``finally``; ``capped`` answers the max_output_tokens it got; ``wrongname``
#: raises an error under OpenAI's name.
PLUGIN = '''
import asyncio, json
import httpx
import router

T = frozenset({router.Modality.TEXT})


class Linger(router.Provider):
    name = "linger"
    models = [router.ModelInfo("http", T, price=router.Price(1.0, 2.0)), router.ModelInfo("cleanup", T),
              router.ModelInfo("capped", T, max_output_tokens=1000, default_max_output_tokens=500),
              router.ModelInfo("wrongname", T)]

    def __init__(self, base_url):
        self.base_url = base_url

    async def generate(self, request, model, ctx):
        if model.name == "http":
            async with httpx.AsyncClient(base_url=self.base_url) as client:
                async with client.stream("POST", "/v1/chat", json={"q": request.messages[-1].text}) as resp:
                    async for line in resp.aiter_lines():
                        event = json.loads(line)
                        if event.get("delta"):
                            yield router.TextDelta(event["delta"])
                        if event.get("done"):
                            usage = event["usage"]
                            yield router.UsageReport(router.Usage(usage["in"], usage["out"]), router.FinishReason.STOP)
            return
        if model.name == "cleanup":
            try:
                yield router.TextDelta("cleaned up later")
                yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)
            finally:
                await asyncio.sleep(60)
        if model.name == "capped":
            yield router.TextDelta(str(request.options.max_output_tokens))
            yield router.UsageReport(router.Usage(1, 1), router.FinishReason.STOP)
        if model.name == "wrongname":
            raise router.ProviderUnavailable("openai", "the upstream is down")


@router.hookimpl
def register_providers(register, settings, name):
    register(Linger(settings["base_url"]))
'''


def plugin_site(tmp_path: Path, name: str, source: str) -> Path:
    site = tmp_path / f"site-{name}"
    site.mkdir()
    (site / f"mmrouter_s19_{name}.py").write_text(source)
    make_dist_info(site, f"mmrouter-s19-{name}", name, f"mmrouter_s19_{name}")
    return site


@pytest.fixture
def linger_daemon(start_daemon, tmp_path, upstream):
    host, port = upstream.server_address[:2]
    config = f"""
providers:
  linger: {{base_url: "http://{host}:{port}"}}
server: {{shutdown_grace_seconds: 0.5, max_call_seconds: 30}}
default: linger/http
"""
    return start_daemon(config, plugins=(), extra_sites=(plugin_site(tmp_path, "linger", PLUGIN),))


def ask(daemon, model: str, stream: bool, question: str = "hi", **options: Any) -> tuple[str, list[str]]:
    """The answer's text and route notes of ``linger/<model>``, the client waiting 15 s at most."""
    request = text_request(question, hints=pb.RoutingHints(provider="linger", model=model),
                           options=pb.Options(**options))
    if not stream:
        reply = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=15)
        return reply.answer.text, list(reply.answer.route.notes)
    (done,) = [e.done for e in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=15)
               if e.HasField("done")]
    return done.answer.text, list(done.answer.route.notes)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_an_upstream_holding_its_connection_after_the_answer_keeps_no_client_waiting(linger_daemon, upstream,
                                                                                   stream) -> None:
    """The QA's LINGER: the answer was whole, yet the client waited for the connection to close (or timed out)."""
    assert ask(linger_daemon, "http", stream) == ("Hello world", [])
    assert ask(linger_daemon, "cleanup", stream)[0] == "cleaned up later"
    deadline = time.monotonic() + 10  # the background close closes the upstream's connection
    while not upstream.closed_by_client and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.closed_by_client[:1] == [True]
    logs = linger_daemon.logs()
    assert "failed" not in logs and "ERROR" not in logs and "had not closed" not in logs, logs


# -- 3. max_output_tokens capped to the model's, 4. an error renamed ----------------------------------------


def test_the_daemon_caps_max_output_tokens_and_names_the_provider_called_in_errors(linger_daemon) -> None:
    text_, notes = ask(linger_daemon, "capped", False, max_output_tokens=5000)
    assert text_ == "1000"
    assert notes == ["max_output_tokens 5000 capped to 1000, the most linger/capped writes"]
    assert ask(linger_daemon, "capped", True, max_output_tokens=700) == ("700", [])
    assert ask(linger_daemon, "capped", False)[0] == "0"  # not asked: the plugin's default applies
    with pytest.raises(grpc.RpcError) as failed:
        ask(linger_daemon, "wrongname", False)
    details = error_details(failed.value)
    assert details.metadata["provider"] == "linger"
    assert details.message.startswith("linger: the upstream is down"), details.message


class Echo(router.Provider):
    name = "echo"
    models = [router.ModelInfo("capped", T, max_output_tokens=1000, default_max_output_tokens=500),
              router.ModelInfo("open", T), router.ModelInfo("wrongname", T)]

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        if model.name == "wrongname":
            raise router.ProviderRateLimited("openai", "slow down", retry_after=2)
        yield router.TextDelta(str(request.options.max_output_tokens))
        yield router.UsageReport(router.Usage(1, 1), STOP)


async def test_call_model_caps_max_output_tokens_to_the_models_and_leaves_the_callers_request() -> None:
    request = text(max_output_tokens=5000)
    events, route = await answer(Echo(), "capped", request)
    assert events[0] == router.TextDelta("1000") and request.options.max_output_tokens == 5000
    assert route.notes == ["max_output_tokens 5000 capped to 1000, the most echo/capped writes"]
    events, route = await answer(Echo(), "open", request)  # no limit declared: as asked
    assert events[0] == router.TextDelta("5000") and not route.notes


async def test_an_error_under_another_providers_name_names_the_provider_called() -> None:
    with pytest.raises(ProviderError) as failed:
        await answer(Echo(), "wrongname")
    error = failed.value
    assert (error.provider, error.metadata["provider"], error.message) == ("echo", "echo", "echo: slow down")
    assert type(error) is router.ProviderRateLimited and error.retry_after == 2


# -- 2. a read-only models property --------------------------------------------------------------------------


class ReadOnly(router.Provider):
    """``models`` a property without a setter, its models made anew on each access."""

    name = "ro"

    @property
    def models(self) -> list[router.ModelInfo]:  # type: ignore[override]
        return [router.ModelInfo("m", inputs=T, price=router.Price(1, 1))]

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        yield router.TextDelta("x")
        yield router.UsageReport(router.Usage(1, 1), STOP)


class ReadOnlyByName(ReadOnly):
    """The same, its inputs named by str: the registry would have to store them as router.Modality."""

    name = "ro-by-name"

    @property
    def models(self) -> list[router.ModelInfo]:  # type: ignore[override]
        return [router.ModelInfo("m", inputs=frozenset({"text"}), price=router.Price(1, 1))]


def offering(provider_class: type[router.Provider]) -> object:
    class Plugin:
        @router.hookimpl
        def register_providers(self, register, settings, name):  # type: ignore[no-untyped-def]
            provider = provider_class()
            provider.name = name
            register(provider)
    return Plugin()


def test_a_read_only_models_property_registers_and_the_kit_agrees() -> None:
    registry = load_registry({"ro2": {"plugin": "ro", "prices": {"m": {"input_per_mtok": 3}}}},
                             extra_plugins={"ro": offering(ReadOnly), "ro-by-name": offering(ReadOnlyByName)},
                             log_broken=False)
    entry = registry.entries["ro"]
    assert entry.state is State.READY, entry.reason
    assert [m.name for m in entry.models] == ["m"] and registered_models(ReadOnly())[0].inputs == T
    # a price override cannot be stored on it: said so, naming the cause
    assert registry.entries["ro2"].state is State.BROKEN
    assert "ro2's models is a read-only property" in registry.entries["ro2"].reason
    # inputs by name need storing as Modality: refused by the daemon and the kit alike, naming the cause
    broken = registry.entries["ro-by-name"]
    assert broken.state is State.BROKEN and "models is a read-only property" in broken.reason
    with pytest.raises(TypeError) as refused:
        registered_models(ReadOnlyByName())
    assert str(refused.value) in broken.reason


# -- 5. one-line reasons, one record for a generator that yields while closed ------------------------------


def test_a_hook_signature_mistake_is_a_one_line_broken_reason() -> None:
    module = types.ModuleType("bad_sig")

    @router.hookimpl
    def register_providers(register, config):  # type: ignore[no-untyped-def]
        pass

    module.register_providers = register_providers  # type: ignore[attr-defined]
    reason = load_registry({}, extra_plugins={"bad_sig": module}, log_broken=False).entries["bad_sig"].reason
    assert reason.startswith("cannot register: PluginValidationError: ") and "{'config'}" in reason
    assert "\n" not in reason


class YieldsWhileClosed(router.Provider):
    """Yields in ``except GeneratorExit`` when the router closes its call after a bad event (the QA's
    bad-then-genexit, in the plugin's own generate). A generator of its own that ``generate`` leaves
    unfinished is still closed by asyncio's finalizer, whose record names no provider (not handled)."""

    name = "zombie"
    models = [router.ModelInfo("direct", T)]

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        yield router.TextDelta("a")
        try:
            yield None
        except GeneratorExit:
            yield router.TextDelta("zombie")


async def test_a_plugin_yielding_while_closed_is_one_record_with_provider_and_request_id(caplog, loop_errors) -> None:
    model = "direct"
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ProviderError):
            await answer(YieldsWhileClosed(), model, request_id=f"rid-{model}")
        await settle(lambda: invoke_records(caplog, "yielded while"), seconds=1)
    (record,) = invoke_records(caplog, "yielded while")
    assert "zombie" in record.getMessage() and f"request_id=rid-{model}" in record.getMessage()
    assert "\n" not in record.getMessage() and record.exc_info is None
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert not loop_errors, loop_errors


# -- 6. the prepare note names what the call waited for ------------------------------------------------------


class Preparing(router.Provider):
    models = [router.ModelInfo("m", T)]

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds

    def prepare(self) -> None:
        time.sleep(self.seconds)

    async def generate(self, request, model, ctx):  # type: ignore[no-untyped-def]
        yield router.TextDelta("hi")


async def test_a_call_queued_behind_another_providers_prepare_names_it() -> None:
    slow, quick = Preparing("slow-sdk", 0.6), Preparing("quick-sdk", 0)
    slow_route, quick_route = RouteInfo("r", "slow-sdk", "m"), RouteInfo("r", "quick-sdk", "m")
    first = asyncio.create_task(prepare.prepared(slow, slow_route, router.CallContext("a")))
    await asyncio.sleep(0.1)  # its thread runs it
    await asyncio.wait_for(prepare.prepared(quick, quick_route, router.CallContext("b")), 10)
    await asyncio.wait_for(first, 10)
    (note,) = quick_route.notes
    assert note.startswith("waited ") and "for quick-sdk to load its SDK" in note
    assert "queued behind the prepare of slow-sdk (the providers' prepares run one at a time)" in note, note
    (own,) = slow_route.notes  # its own prepare: as before
    assert own.endswith("for slow-sdk to load its SDK (its first call since the daemon started or made it anew "
                        "on a reload)"), own


# -- 7. a slow plugin import is warned of ---------------------------------------------------------------------


def test_a_plugin_whose_import_is_slow_is_warned_of_by_name(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(plugins, "SLOW_IMPORT_SECONDS", 0.1)
    site = plugin_site(tmp_path, "heavy", "import time\ntime.sleep(0.3)  # a heavy SDK imported at module level\n"
                                          "import router\n\n@router.hookimpl\ndef register_providers(register):\n"
                                          "    pass\n")
    monkeypatch.syspath_prepend(str(site))
    with caplog.at_level(logging.WARNING, logger="router.plugins"):
        load_registry({}, log_broken=False)
    (record,) = [r for r in caplog.records if "to import" in r.getMessage()]
    message = record.getMessage()
    assert record.levelname == "WARNING" and message.startswith("plugin heavy (mmrouter-s19-heavy) took 0.")
    assert "nothing heavy at module level" in message
    assert not [r for r in caplog.records if "plugin local" in r.getMessage() and "to import" in r.getMessage()]


# -- 8. an utterance without a speaker ------------------------------------------------------------------------


def test_an_unlabelled_turn_is_its_text_alone() -> None:
    U = router.Utterance
    turns = [U("Welcome back.", 0, 1.5, "A"), U("[inaudible crosstalk]", 1.6, 2.5), U("Thanks.", 2.6, 4, "B")]
    assert router.Transcript.speaker_text(turns) == "Speaker A: Welcome back.\n[inaudible crosstalk]\nSpeaker B: Thanks."


async def test_assemblyais_unlabelled_utterance_has_no_speaker_prefix() -> None:
    """Through the AssemblyAI plugin and its SDK, against the fake (the podcast QA's repro)."""
    from mmrouter_assemblyai import AssemblyAIProvider, AssemblyAISettings

    from router.testing import collect
    from tests.fakes.assemblyai import FakeAssemblyAI

    media = router.Media(router.Modality.AUDIO, "audio/wav", data=media_factory.wav(0.2, 8000))
    request = router.Request(messages=[router.Message(router.Role.USER, [router.Part(media=media)])],
                             options=router.Options(task=router.Task.TRANSCRIBE, diarization=True))
    turns = [("A", 0, 1500, "Welcome back."), (None, 1600, 2500, "[inaudible crosstalk]"),
             ("B", 2600, 4000, "Thanks for having me.")]
    with FakeAssemblyAI(api_key="aai-s19", turns=turns) as fake:  # type: ignore[arg-type]
        provider = AssemblyAIProvider(AssemblyAISettings.load("assemblyai", {
            "api_key": "aai-s19", "base_url": fake.url, "timeout": 5, "poll_interval": 0.01}))
        try:
            events = await collect(provider, request, provider.model("best"))
        finally:
            await provider.aclose()
    (transcript,) = [e.transcript for e in events if isinstance(e, router.TranscriptReady)]
    assert transcript.text == "Speaker A: Welcome back.\n[inaudible crosstalk]\nSpeaker B: Thanks for having me."
