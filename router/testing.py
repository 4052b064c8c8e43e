"""The provider conformance kit: checks every provider must pass.

A provider author subclasses :class:`ProviderContract` in their own tests and
supplies a ``provider`` fixture (a configured provider, typically pointed at a
local fake of the provider's HTTP API)::

    import pytest
    from router.testing import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider(self, fake_upstream):
            return MyProvider(api_key="test", base_url=fake_upstream.url)

Override :meth:`ProviderContract.sample_request` when the provider's first
model needs more than a text question (a transcription model needs audio).
The checks are plain functions (each runs its own event loop with ``asyncio.run``), so they
run under plain pytest: no plugin is needed, and pytest-asyncio in any mode does not matter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from . import contract
from .plugins import registered_models
from .provider import Provider
from .types import (
    CallContext,
    Message,
    ModelInfo,
    Options,
    Part,
    ProviderEvent,
    Request,
    Role,
    Task,
    TextDelta,
    TranscriptReady,
    UsageReport,
)

T = TypeVar("T")


async def _then_closed(provider: Provider, checks: Coroutine[Any, Any, T]) -> T:
    """Run ``checks``, then close the provider in the same event loop: clients it made there (an SDK's
    HTTP pool) are bound to that loop, which ends with the check."""
    try:
        return await checks
    finally:
        await provider.aclose()


#: Seconds a cancelled ``generate`` gets to end before the kit gives up on it.
CANCEL_GRACE_SECONDS = 10.0


async def collect(provider: Provider, request: Request, model: ModelInfo, timeout: float = 30) -> list:
    """Run ``provider.generate`` to the end and return every event.

    Raises :class:`TimeoutError` when it takes longer than ``timeout`` seconds, and
    :class:`AssertionError` when it then does not end within :data:`CANCEL_GRACE_SECONDS` of being
    cancelled (it swallows :class:`asyncio.CancelledError`). Such a generator still runs in the event
    loop, and ``asyncio.run`` waits at its end for every task left: the kit's checks therefore run
    on a loop of their own, which they close without waiting.
    """
    ctx = CallContext(request_id="contract", deadline=time.monotonic() + timeout)

    async def run() -> list[ProviderEvent]:
        return [event async for event in provider.generate(request, model, ctx)]

    # not asyncio.wait_for: it waits for the cancelled generator without end
    task = asyncio.ensure_future(run())
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await _cancelled(task, provider)
        raise
    if task.done():
        return task.result()
    await _cancelled(task, provider)
    raise TimeoutError(f"{provider.name}: generate did not end within {timeout:g} s")


async def _cancelled(task: asyncio.Future, provider: Provider) -> None:
    """Cancel ``task`` and wait (a bounded time) for it to end; fail if it does not."""
    task.cancel()
    await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    assert task.done(), (f"{provider.name}: generate did not end within {CANCEL_GRACE_SECONDS:g} s of being"
                         " cancelled: does it catch CancelledError (a bare except, except BaseException)?")


def _run_alone(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop of its own, then close it after a short wait for tasks left.

    Not asyncio.run: it would wait forever for a generator that ignores the cancellation.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _end_leftovers(loop)
        finally:
            loop.close()


def _end_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left in ``loop`` and, if they all end in time, close its async generators and
    executor (what ``asyncio.run`` does, with bounded waits)."""
    leftovers = asyncio.all_tasks(loop)
    for task in leftovers:
        task.cancel()
    if leftovers:  # a short wait: a generator that ignores cancellation has failed its check already
        loop.run_until_complete(asyncio.wait(leftovers, timeout=2))
    if all(task.done() for task in leftovers):
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())


def event_problem(event: object) -> str | None:
    """What is wrong with one event ``generate`` yielded, or None if it keeps the contract (the
    daemon's checks, :func:`router.contract.event_problem`, and no empty text: the daemon drops it)."""
    if isinstance(event, TextDelta) and event.text == "":
        return "TextDelta with empty text: yield only text there is (skip empty chunks)"
    return contract.event_problem(event)


class ProviderContract:
    """Checks that a provider keeps the plugin contract. Subclass and give a ``provider`` fixture."""

    #: Seconds the call checks give ``generate`` to answer the sample request.
    call_timeout: float = 30.0

    @pytest.fixture
    def provider(self) -> Provider:
        raise NotImplementedError("define a `provider` fixture returning a configured provider")

    def contract_model(self, provider: Provider) -> ModelInfo:
        """The model the call checks use: by default the first one."""
        return provider.models[0]

    def sample_request(self, model: ModelInfo) -> Request:
        """A small request the model can answer: a text question by default."""
        return Request(
            messages=[Message(Role.USER, [Part(text="Say hello in one word.")])],
            options=Options(task=Task.CHAT),
        )

    def test_has_a_name_and_models(self, provider: Provider) -> None:
        assert isinstance(provider.name, str) and provider.name, "a provider needs a name"
        assert "/" not in provider.name, "a provider name cannot contain '/'"
        assert provider.models, "a provider must declare at least one model"
        names = [m.name for m in provider.models]
        assert len(names) == len(set(names)), f"duplicate model names: {names}"

    def test_models_declare_what_they_take_and_give(self, provider: Provider) -> None:
        """The daemon's own check of a registered provider: what it refuses lists the provider broken."""
        try:
            registered_models(provider)
        except TypeError as exc:
            raise AssertionError(f"the daemon lists this provider broken: {exc}") from None

    def test_configured_provider_reports_no_reason(self, provider: Provider) -> None:
        reason = provider.unconfigured_reason()
        assert reason is None or isinstance(reason, str), (
            f"unconfigured_reason() returned {type(reason).__name__}, not str or None")
        assert reason is None, f"a configured provider reports no reason, got {reason!r}"

    def test_generate_yields_contract_events(self, provider: Provider) -> None:
        model = self.contract_model(provider)
        events = _run_alone(_then_closed(provider, collect(provider, self.sample_request(model), model,
                                                                  timeout=self.call_timeout)))
        assert events, "generate yielded nothing"
        problems = [problem for problem in map(event_problem, events) if problem]
        assert not problems, f"{provider.name}: " + "; ".join(problems)
        produced = [e for e in events if isinstance(e, (TextDelta, TranscriptReady))]
        assert produced, "generate yielded no text and no transcript"
        usages = [e for e in events if isinstance(e, UsageReport)]
        assert usages, "generate yielded no UsageReport (yield one at the end, with the finish reason)"

    def test_generate_can_be_cancelled(self, provider: Provider) -> None:
        model = self.contract_model(provider)
        ctx = CallContext(request_id="contract-cancel", deadline=time.monotonic() + 30)

        async def consume() -> None:
            async for _ in provider.generate(self.sample_request(model), model, ctx):
                await asyncio.sleep(0)

        async def cancel() -> None:
            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            assert task.done(), "generate did not end within 10 s of being cancelled: does it catch CancelledError?"
            assert task.cancelled(), f"generate ended with {task.exception()!r} when cancelled, not CancelledError"

        _run_alone(_then_closed(provider, cancel()))

    def test_provider_can_be_closed_twice(self, provider: Provider) -> None:
        async def close_twice() -> None:
            await provider.aclose()
            await provider.aclose()

        asyncio.run(close_twice())
