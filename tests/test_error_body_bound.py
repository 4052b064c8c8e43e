"""What the cloud plugins read of an error answer's body: ``router.error_body.ERROR_BODY_LIMIT`` bytes at most.

Each plugin, on each of its SDK's transports, with the real SDK against its fake answering an error
status with a 50 MiB body (its Content-Length given) or one that never ends (chunked): the call fails
as that status always failed it (500 UNAVAILABLE, 401 authentication failed, 429 rate limited), saying
the body was over the bound, and the fake could send only a small part of the body before the client
closed the connection. A body under the bound is still quoted; a body that trickles in is ended by
the call's deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_anthropic import AnthropicProvider
from mmrouter_assemblyai import AssemblyAIProvider, AssemblyAISettings
from mmrouter_gemini import GeminiProvider
from mmrouter_openai import OpenAIProvider

from router import Media, Message, Modality, Options, Part, Provider, Request, Role, Task
from router.error_body import ERROR_BODY_LIMIT
from router.errors import ProviderAuthError, ProviderError, ProviderRateLimited, ProviderUnavailable
from router.testing import collect
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import openai as fake_openai
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini import FakeGemini

#: The body of the huge answers: far over the bound.
HUGE = 50 * 1024 * 1024
#: What the fake may send at most before the client closes: the bound, and what the sockets' buffers
#: take in between; far under :data:`HUGE`.
SENT_AT_MOST = 4 * 1024 * 1024
#: Seconds a call may take at most here (a broken bound reads 50 MiB in well under this; an endless
#: body read whole runs into it and fails the test instead of hanging).
CALL_BOUND = 20
ASSEMBLYAI_KEY = "aai-errbody-key-0123456789"
GEMINI_KEY = "AIza-errbody-0123456789"


@dataclass(frozen=True)
class Case:
    """A plugin on one transport: its fake, its provider, the model and request of a call, and the
    beginning of its API's error envelope (the huge body's head)."""

    name: str
    fake: Callable[[], FakeUpstream]
    provider: Callable[[FakeUpstream, float], Provider]
    model: str
    request: Callable[[], Request]
    head: bytes
    path: str | None = None


def chat() -> Request:
    return Request(messages=[Message(Role.USER, [Part(text="Hello?")])], options=Options(task=Task.CHAT))


def audio() -> Request:
    media = Media(Modality.AUDIO, "audio/wav", data=b"RIFF....WAVEfmt fake audio")
    return Request(messages=[Message(Role.USER, [Part(media=media)])], options=Options(task=Task.TRANSCRIBE))


def openai(transport: str) -> Case:
    return Case(f"openai-{transport}", fake_openai.FakeOpenAI,
                lambda fake, timeout: OpenAIProvider({"api_key": fake_openai.API_KEY, "base_url": fake.base_url,
                                                      "timeout": timeout, "http_client": transport}),
                "gpt-4o", chat, b'{"error": {"message": "')


def anthropic(transport: str) -> Case:
    return Case(f"anthropic-{transport}", fake_anthropic.FakeAnthropic,
                lambda fake, timeout: AnthropicProvider({"api_key": fake_anthropic.API_KEY, "base_url": fake.url,
                                                         "timeout": timeout, "http_client": transport}),
                "claude-sonnet-4-6", chat, b'{"type": "error", "error": {"type": "api_error", "message": "')


CASES = [
    openai("aiohttp"), openai("httpx"), anthropic("aiohttp"), anthropic("httpx"),
    Case("gemini", lambda: FakeGemini(api_key=GEMINI_KEY),
         lambda fake, timeout: GeminiProvider.from_settings({"api_key": GEMINI_KEY, "base_url": fake.url,
                                                             "timeout": timeout}),
         "gemini-2.5-flash", chat, b'{"error": {"code": 500, "message": "'),
    Case("assemblyai", lambda: FakeAssemblyAI(api_key=ASSEMBLYAI_KEY),
         lambda fake, timeout: AssemblyAIProvider(AssemblyAISettings.load(
             "assemblyai", {"api_key": ASSEMBLYAI_KEY, "base_url": fake.url, "timeout": timeout,
                            "poll_interval": 0.01})),
         "best", audio, b'{"error": "', "/v2/upload"),
]
#: The error each status is, whatever the plugin.
ERRORS: dict[int, type[ProviderError]] = {500: ProviderUnavailable, 401: ProviderAuthError, 429: ProviderRateLimited}


async def call(case: Case, fake: FakeUpstream, timeout: float = 10) -> BaseException:
    """The exception that ends one call of ``case`` to ``fake`` (bounded by :data:`CALL_BOUND`)."""
    provider = case.provider(fake, timeout)
    try:
        with pytest.raises(Exception) as info:
            await collect(provider, case.request(), _model(provider, case.model), timeout=CALL_BOUND)
    finally:
        await provider.aclose()
    return info.value


def _model(provider: Provider, name: str) -> Any:
    return next(m for m in provider.models if m.name == name)


@pytest.mark.parametrize("size", [HUGE, None], ids=["50MiB", "endless"])
@pytest.mark.parametrize("status", sorted(ERRORS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_an_error_body_far_over_the_bound_is_not_read(case: Case, status: int, size: int | None) -> None:
    with case.fake() as fake:
        fake.huge_error_next(status, size, head=case.head, path=case.path)
        error = await call(case, fake)
        assert fake.huge_done.wait(10), "the fake is still sending the body"
        sent = fake.huge_bytes_sent
    assert type(error) is ERRORS[status], f"{type(error).__name__}: {error}"
    assert error.code == ERRORS[status].code and error.reason == ERRORS[status].reason
    if status != 401:  # a refused key's message is the plugin's own (naming the setting)
        assert f"was over {ERROR_BODY_LIMIT // 1024} KiB" in error.message
    assert ERROR_BODY_LIMIT < sent < SENT_AT_MOST


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_an_error_body_under_the_bound_is_still_quoted(case: Case) -> None:
    """A body a little under the bound is read whole: the API's message, at its end, is in the error."""
    message = "the upstream's own reason"
    padding = "p" * (ERROR_BODY_LIMIT - 1024)
    bodies = {"openai": {"error": {"padding": padding, "message": message}},
              "anthropic": {"type": "error", "error": {"type": "api_error", "padding": padding, "message": message}},
              "gemini": {"error": {"code": 500, "padding": padding, "message": message, "status": "INTERNAL"}},
              "assemblyai": {"padding": padding, "error": message}}
    with case.fake() as fake:
        fake.fail_next(500, bodies[case.name.partition("-")[0]], path=case.path)
        error = await call(case, fake)
    assert type(error) is ProviderUnavailable
    assert message in error.message and "KiB" not in error.message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_an_error_body_that_trickles_in_is_ended_by_the_deadline(case: Case) -> None:
    """16 bytes every 50 ms: the bound is never reached, but the call ends by its deadline (the plugin's
    timeout, or the router cancelling it), and the connection is closed then: the fake stops sending."""
    with case.fake() as fake:
        fake.huge_error_next(500, None, head=case.head, path=case.path, pause=0.05, piece=16)
        provider = case.provider(fake, 1.0)
        try:
            with pytest.raises((ProviderError, TimeoutError)):
                await collect(provider, case.request(), _model(provider, case.model), timeout=3)
        finally:
            await provider.aclose()
        assert fake.huge_done.wait(10), "the connection was left open after the call ended"
        assert fake.huge_bytes_sent < ERROR_BODY_LIMIT


# -- through the daemon: the gRPC status a client gets ------------------------------------------

CONFIG = """
providers:
  openai:
    api_key: "{key}"
    base_url: "{url}"
    timeout: 10
default: openai/gpt-4o
"""


@pytest.fixture
def openai_daemon(start_daemon):
    with fake_openai.FakeOpenAI() as fake:
        yield fake, start_daemon(CONFIG.format(key=fake_openai.API_KEY, url=fake.base_url))


def test_the_client_gets_unavailable_for_a_huge_500(openai_daemon) -> None:
    fake, daemon = openai_daemon
    fake.huge_error_next(500, HUGE, head=b'{"error": {"message": "')
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("Hello?")), timeout=CALL_BOUND)
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE and details.reason == "PROVIDER_UNAVAILABLE"
    assert f"was over {ERROR_BODY_LIMIT // 1024} KiB" in details.message
    assert fake.huge_done.wait(10)
    assert fake.huge_bytes_sent < SENT_AT_MOST


def test_an_endless_error_body_ends_at_the_clients_deadline(openai_daemon) -> None:
    """A body trickling in, never reaching the bound: the call's deadline ends it, and the daemon closes
    the upstream connection then."""
    fake, daemon = openai_daemon
    # the SDK loaded first: on a loaded machine its first import took most of the 2 s (UNAVAILABLE, "still loading")
    daemon.stub.Generate(pb.GenerateRequest(request=text_request("Hello?")), timeout=60)
    fake.huge_error_next(500, None, head=b'{"error": {"message": "', pause=0.05, piece=16)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("Hello?")), timeout=2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.huge_done.wait(10), "the daemon kept reading the body after the call's deadline"
