"""Answer a routed request: bridges, the provider call, fallbacks on retryable failures.

:func:`execute` turns a :class:`Decision` into router events: RouteChosen,
then text deltas, transcripts and step usage as they come, then Done with
the complete :class:`Answer`. A retryable failure (down, rate-limited, the
input too large for the target) before the answering model sent any output moves
on to the next fallback; a failure after it (the client already has part of an
answer) or a non-retryable one is raised.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing

from .bridging import BridgedInRequest, BridgeMemo, apply_bridges
from .errors import NoRoute, ProviderError
from .invoke import call_model
from .outcome import Answer, Done, RouteChosen, RouteInfo, StepUsage
from .plugins import Registry
from .routing import Decision, Plan
from .types import (
    CallContext,
    FinishReason,
    Modality,
    Request,
    TextDelta,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
)

#: What execute yields.
RouterEvent = RouteChosen | TextDelta | TranscriptReady | StepUsage | Done


#: The request for one fallback plan and the notes to add to the route (the history trimmed to its model).
FitRequest = Callable[[Plan], tuple[Request, list[str]]]


async def execute(request: Request, decision: Decision, registry: Registry, ctx: CallContext,
                  notes: list[str] | None = None, fit: FitRequest | None = None,
                  memo: BridgeMemo | None = None, started: float | None = None,
                  bridge_preferences: Mapping[Modality, Sequence[str]] | None = None,
                  ) -> AsyncIterator[RouterEvent]:
    """Run the decision's plans in order until one answers.

    ``request`` is ready for the first plan; ``fit`` makes it ready for a fallback (whose model
    may have a smaller context), else fallbacks get ``request`` as it is. ``started`` (a
    ``time.perf_counter()``) is when the router got the request, for the route's latency;
    ``bridge_preferences`` (``bridges`` of the configuration) name the bridges to try when one fails.

    A fallback is tried when a plan fails with a retryable error before its answering model sent
    any text or transcript of its own (bridges' transcripts already sent are not sent again).
    """
    started = time.perf_counter() if started is None else started
    route = RouteInfo.planned(decision)
    route.notes.extend(notes or [])
    yield RouteChosen(route)
    sent: list[Transcript] = []  # bridges' transcripts the client has
    bridged_before = BridgedInRequest()
    reported = 0  # route.steps whose usage the client was sent
    last_error: ProviderError | None = None
    plans = decision.plans
    for index, plan in enumerate(plans):
        provider = registry.ready(plan.target.provider)
        if provider is None:
            continue
        answered = False  # the answering model sent output of its own: no fallback may follow
        finish: FinishReason | None = None
        texts: list[str] = []
        own: list[Transcript] = []
        bridged_transcripts: list[Transcript] = []
        used_bridges = plan.bridges
        answering = False
        try:
            answer_request = request
            if fit is not None and plan is not decision.plan:
                answer_request, fitted = fit(plan)
                route.notes.extend(fitted)
            if plan.bridges:
                bridged = await apply_bridges(plan.bridges, answer_request, registry, ctx, route, memo,
                                              bridge_preferences, bridged_before)
                answer_request, used_bridges = bridged.request, bridged.bridges
                bridged_transcripts = bridged.transcripts
                for t in _unsent(bridged.transcripts, sent):
                    yield TranscriptReady(t)
                for step in route.steps[reported:]:
                    yield StepUsage(step.usage)
                reported = len(route.steps)
            answering = True  # from here the model's own usage is streamed as it reports it
            # closed with this generator: a client leaving mid-answer closes the provider's stream at once
            async with aclosing(call_model(provider, plan.model, answer_request, ctx, route, "answer")) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        answered = True
                        texts.append(event.text)
                        yield event
                    elif isinstance(event, TranscriptReady):
                        answered = True
                        own.append(event.transcript)  # one per recording, if a plugin sends several
                        yield event
                    elif isinstance(event, UsageReport):
                        finish = event.finish_reason or finish
                        yield StepUsage(event.usage)
            reported = len(route.steps)
        except ProviderError as exc:
            last_error = exc
            if not answering:
                for step in route.steps[reported:]:  # bridges paid for before the failure
                    yield StepUsage(step.usage)
            reported = len(route.steps)  # an answer's paid part (a failed step) was streamed as it came
            if answered or not exc.retryable:
                raise
            route.notes.append(f"{plan.target} failed ({exc.reason}: {exc.message}); trying the next target")
            continue
        route.provider, route.model = plan.target.provider, plan.target.model
        if index:  # a fallback answered: those still untried after it
            route.fallbacks = [str(p.target) for p in plans[index + 1:]]
        route.bridges = [str(b) for b in used_bridges]
        route.latency_ms = (time.perf_counter() - started) * 1000
        if finish is FinishReason.LENGTH:
            route.notes.append(f"the answer was cut at {plan.target}'s output limit (max_output_tokens)")
        yield Done(_answer(texts, own, bridged_transcripts, route, finish))
        return
    if last_error is not None:
        raise last_error
    raise NoRoute("every target of the route became unusable")


def _unsent(transcripts: list[Transcript], sent: list[Transcript]) -> list[Transcript]:
    """The ``transcripts`` not in ``sent`` (each sent one matches once), which are added to it:
    a fallback plan bridging the same media again must not send their transcripts twice."""
    already = list(sent)
    new = []
    for t in transcripts:
        if t in already:
            already.remove(t)
        else:
            new.append(t)
    sent.extend(new)
    return new


def _answer(texts: list[str], own: list[Transcript], bridged: list[Transcript], route: RouteInfo,
            finish: FinishReason | None) -> Answer:
    """The answer of a plan. Only the answering model's own transcript (a transcription) stands in
    for an empty text: a bridge's transcript is the user's input, never the model's reply. The answer
    carries the bridges' transcript when the model makes none; its usage is every paid step's."""
    mine = Transcript.merged(own) if own else None
    text = "".join(texts) or (mine.text if mine is not None else "")
    transcript = mine or (Transcript.merged(bridged) if bridged else None)
    total = Usage()
    for step in route.steps:
        total.add(step.usage)
    return Answer(text, transcript, total, route, finish)
