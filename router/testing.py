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

Besides the provider's name and models (the daemon's own check at registration) and the events
one call yields, the kit cancels three calls: at their first await, once they yielded their first
event (mid-stream), and :attr:`ProviderContract.cancel_after` seconds in. Each must end within
:data:`CANCEL_PROMPT_SECONDS` with :class:`asyncio.CancelledError`, as the daemon needs at a call's
deadline: never swallow it (a bare ``except:`` or ``except BaseException`` around a read, a retry
loop that catches it).

The checks are plain functions (each runs its own event loop with ``asyncio.run``), so they
run under plain pytest: no plugin is needed, and pytest-asyncio in any mode does not matter.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from . import contract
from .plugins import registered_models
from .provider import FORGET_MEDIA_SECONDS, Provider
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
#: Seconds a cancelled ``generate`` may take to end with :class:`asyncio.CancelledError`: the daemon
#: cancels a call at its deadline and cannot answer the client until the provider's generator has ended.
CANCEL_PROMPT_SECONDS = 2.0


def events_of(provider: Provider, request: Request, model: ModelInfo, ctx: CallContext) -> AsyncIterator[Any]:
    """``provider.generate(request, model, ctx)``, checked to be an async iterator (what the daemon reads
    with ``async for``): :class:`AssertionError` naming what it is instead (a coroutine, a generator)."""
    events = provider.generate(request, model, ctx)
    if isinstance(events, AsyncIterator):
        return events
    if inspect.iscoroutine(events):
        events.close()  # never awaited: no RuntimeWarning
        problem = ("generate is an `async def` that returns (a coroutine), not an async generator: yield each"
                   " event (`yield router.TextDelta(...)`) instead of returning them")
    elif inspect.isgenerator(events):
        events.close()
        problem = ("generate is a plain generator (`def` with `yield`), not an async generator: write"
                   " `async def generate(...)` and await its I/O (an async HTTP client)")
    else:
        problem = (f"generate returned {type(events).__name__}, not an async iterator: write it as an"
                   " `async def` generator that yields events")
    raise AssertionError(f"{provider.name}: {problem}")


async def collect(provider: Provider, request: Request, model: ModelInfo, timeout: float = 30) -> list:
    """Run ``provider.generate`` to the end and return every event.

    Raises :class:`TimeoutError` when it takes longer than ``timeout`` seconds, and
    :class:`AssertionError` when it then does not end within :data:`CANCEL_GRACE_SECONDS` of being
    cancelled (it swallows :class:`asyncio.CancelledError`), or when ``generate`` is no async
    generator (:func:`events_of`). Such a generator still runs in the event
    loop, and ``asyncio.run`` waits at its end for every task left: the kit's checks therefore run
    on a loop of their own, which they close without waiting.
    """
    ctx = CallContext(request_id="contract", deadline=time.monotonic() + timeout)

    async def run() -> list[ProviderEvent]:
        return [event async for event in events_of(provider, request, model, ctx)]

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


#: When :func:`cancelled_call` cancels: at the call's first await, or once it yielded its first event.
AT_FIRST_AWAIT = "at its first await"
AFTER_FIRST_EVENT = "after its first event"


def events_after_the_end(events: list[Any]) -> str:
    """What ``events`` holds after the first :class:`UsageReport` with a finish reason, which ends the
    answer in the router (what a plugin yields after it is dropped), as "2 TextDelta" ("" when nothing)."""
    ends = [i for i, e in enumerate(events) if isinstance(e, UsageReport) and e.finish_reason is not None]
    after = events[ends[0] + 1:] if ends else []
    return ", ".join(f"{count} {name}" for name, count in Counter(type(e).__name__ for e in after).items())


async def cancelled_call(provider: Provider, request: Request, model: ModelInfo, moment: str | float,
                         timeout: float = 30) -> None:
    """Start a call and cancel it at ``moment``: :data:`AT_FIRST_AWAIT`, :data:`AFTER_FIRST_EVENT` (while
    it waits for its next event) or a number of seconds into the call. Raises :class:`AssertionError`
    unless it then ends with :class:`asyncio.CancelledError` within :data:`CANCEL_PROMPT_SECONDS`,
    saying what it did instead: it swallowed the cancellation and went on, ended with another
    exception, did not end (:data:`CANCEL_GRACE_SECONDS`), or raised before it was cancelled; also
    when ``generate`` is no async generator (:func:`events_of`). A call that ends before ``moment``
    comes passes (there was nothing to cancel); one that yields no event within ``timeout`` seconds
    is cancelled then.

    The call is consumed as the daemon does, by a task that awaits nothing but the provider, so the
    cancellation lands inside ``generate``, at the await it is suspended in.
    """
    loop = asyncio.get_running_loop()
    ctx = CallContext(request_id="contract-cancel", deadline=time.monotonic() + timeout)
    events = events_of(provider, request, model, ctx)
    cancelled = asyncio.Event()
    cancelled_at = 0.0
    when = moment if isinstance(moment, str) else f"{moment:g} s into the call"
    yielded = 0

    def cancel() -> None:
        nonlocal cancelled_at
        if not task.done() and not cancelled.is_set():
            cancelled_at = time.monotonic()
            task.cancel()
            cancelled.set()

    async def consume() -> None:
        nonlocal yielded
        async for _ in events:
            yielded += 1
            if yielded == 1 and moment == AFTER_FIRST_EVENT:
                loop.call_soon(cancel)  # runs once the provider waits for its next event

    task = asyncio.ensure_future(consume())
    timer = None
    if moment == AT_FIRST_AWAIT:
        loop.call_soon(cancel)  # runs once the task's first step has reached the provider's first await
    elif not isinstance(moment, str):
        timer = loop.call_later(moment, cancel)
    signal = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, signal}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signal.cancel()
        if timer is not None:
            timer.cancel()
    if not cancelled.is_set():
        if task.done():  # it ended before it could be cancelled
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise AssertionError(f"{provider.name}: generate raised {error!r} after {yielded} event(s), before it"
                                     f" was cancelled (the kit cancels {when}): the call fails of itself; see"
                                     " test_generate_yields_contract_events")
            return
        cancel()
        when = f"after {timeout:g} s without an event"
    await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    took = time.monotonic() - cancelled_at
    assert task.done(), (f"{provider.name}: generate did not end within {CANCEL_GRACE_SECONDS:g} s of being"
                         f" cancelled {when}: does it catch CancelledError (a bare except, except BaseException)?")
    if not task.cancelled():
        error = task.exception()
        if error is None:
            raise AssertionError(
                f"{provider.name}: generate went on after it was cancelled {when} and ended normally ({yielded}"
                " event(s) in all): it swallowed the CancelledError (a bare `except:`, `except BaseException` or"
                " `except asyncio.CancelledError` that does not re-raise, in a retry loop too); let it through")
        raise AssertionError(f"{provider.name}: generate ended with {error!r} when cancelled {when}, not"
                             " CancelledError: let CancelledError through (re-raise it after cleaning up)")
    assert took <= CANCEL_PROMPT_SECONDS, (
        f"{provider.name}: generate took {took:.1f} s to end after it was cancelled {when}; at most"
        f" {CANCEL_PROMPT_SECONDS:g} s: the daemon cannot answer the client before it ends")


class ProviderContract:
    """Checks that a provider keeps the plugin contract. Subclass and give a ``provider`` fixture."""

    #: Seconds the call checks give ``generate`` to answer the sample request.
    call_timeout: float = 30.0
    #: Seconds into a call at which :meth:`test_generate_can_be_cancelled_while_it_waits` cancels it.
    cancel_after: float = 0.05

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
        assert not (lost := events_after_the_end(events)), (
            f"{provider.name}: generate yielded {lost} after the UsageReport with a finish reason; the router ends"
            " the answer at that UsageReport and drops them (yield it last)")

    def test_generate_can_be_cancelled(self, provider: Provider) -> None:
        """Cancelled at its first await (before a real provider has connected), ``generate`` ends
        promptly with :class:`asyncio.CancelledError`."""
        self._cancel_check(provider, AT_FIRST_AWAIT)

    def test_generate_can_be_cancelled_mid_stream(self, provider: Provider) -> None:
        """Cancelled once it yielded its first event, while it waits for the next (a stream read), it
        ends promptly with :class:`asyncio.CancelledError`: the daemon cancels calls there at their
        deadline, and a provider that swallows the cancellation (a bare ``except:`` around its reads, in a
        retry loop) keeps its client waiting past ``server.max_call_seconds``."""
        self._cancel_check(provider, AFTER_FIRST_EVENT)

    def test_generate_can_be_cancelled_while_it_waits(self, provider: Provider) -> None:
        """Cancelled :attr:`cancel_after` seconds into the call (connecting, or waiting for the answer),
        it ends promptly with :class:`asyncio.CancelledError`. A call that ended by then passes."""
        self._cancel_check(provider, float(self.cancel_after))

    def _cancel_check(self, provider: Provider, moment: str | float) -> None:
        model = self.contract_model(provider)
        request = self.sample_request(model)
        _run_alone(_then_closed(provider, cancelled_call(provider, request, model, moment,
                                                           timeout=self.call_timeout)))

    def test_forget_media_it_never_saw_ends_quietly(self, provider: Provider) -> None:
        """:meth:`Provider.forget_media` of media the provider was never sent (a reset with ``erase_media`` calls it
        on every ready provider) returns without raising, within the router's bound
        (:data:`router.provider.FORGET_MEDIA_SECONDS`)."""
        never_sent = frozenset({"0" * 64, "f" * 64})

        async def forget() -> None:
            try:
                await asyncio.wait_for(provider.forget_media(never_sent), FORGET_MEDIA_SECONDS)
            except TimeoutError:
                pytest.fail(f"{provider.name}: forget_media of media it never saw did not end within "
                            f"{FORGET_MEDIA_SECONDS:g} s (the router cancels it there)")

        _run_alone(_then_closed(provider, forget()))

    def test_provider_can_be_closed_twice(self, provider: Provider) -> None:
        async def close_twice() -> None:
            await provider.aclose()
            await provider.aclose()

        asyncio.run(close_twice())
