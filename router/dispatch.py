"""Answer a routed request: bridges, the provider call, fallbacks on retryable failures.

:func:`execute` turns a :class:`Decision` into router events: RouteChosen,
then text deltas, transcripts and step usage as they come, then Done with
the complete :class:`Answer`. A failure before any output was sent moves on
to the next fallback when the error is retryable; a failure after output
(the client already has part of an answer) or a non-retryable one is raised.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from .bridging import BridgeMemo, apply_bridges
from .errors import NoRoute, ProviderError
from .invoke import call_model
from .outcome import Answer, Done, RouteChosen, RouteInfo, StepUsage
from .plugins import Registry
from .routing import Decision, Plan
from .types import CallContext, Request, TextDelta, Transcript, TranscriptReady, Usage, UsageReport

#: What execute yields.
RouterEvent = RouteChosen | TextDelta | TranscriptReady | StepUsage | Done


#: The request for one fallback plan and the notes to add to the route (the history trimmed to its model).
FitRequest = Callable[[Plan], tuple[Request, list[str]]]


async def execute(request: Request, decision: Decision, registry: Registry, ctx: CallContext,
                  notes: list[str] | None = None, fit: FitRequest | None = None,
                  memo: BridgeMemo | None = None) -> AsyncIterator[RouterEvent]:
    """Run the decision's plans in order until one answers.

    ``request`` is ready for the first plan; ``fit`` makes it ready for a fallback (whose model
    may have a smaller context), else fallbacks get ``request`` as it is.
    """
    started = time.perf_counter()
    route = RouteInfo.planned(decision)
    route.notes.extend(notes or [])
    yield RouteChosen(route)
    total = Usage()
    texts: list[str] = []
    transcript: Transcript | None = None
    last_error: ProviderError | None = None
    for plan in decision.plans:
        provider = registry.ready(plan.target.provider)
        if provider is None:
            continue
        emitted = False
        try:
            answer_request = request
            if fit is not None and plan is not decision.plan:
                answer_request, fitted = fit(plan)
                route.notes.extend(fitted)
            if plan.bridges:
                bridged = await apply_bridges(plan.bridges, answer_request, registry, ctx, route, memo)
                answer_request = bridged.request
                for t in bridged.transcripts:
                    emitted = True
                    yield TranscriptReady(t)
                if bridged.transcripts:  # the answer carries the bridges' transcript unless it makes its own
                    transcript = Transcript.merged(bridged.transcripts)
                for u in bridged.usages:
                    total.add(u.usage)
                    yield StepUsage(u.usage)
            own: list[Transcript] = []
            async for event in call_model(provider, plan.model, answer_request, ctx, route, "answer"):
                if isinstance(event, TextDelta):
                    emitted = True
                    texts.append(event.text)
                    yield event
                elif isinstance(event, TranscriptReady):
                    emitted = True
                    own.append(event.transcript)  # one per recording, if a plugin sends several
                    yield event
                elif isinstance(event, UsageReport):
                    total.add(event.usage)
                    yield StepUsage(event.usage)
        except ProviderError as exc:
            last_error = exc
            if emitted or not exc.retryable:
                raise
            continue
        route.provider, route.model = plan.target.provider, plan.target.model
        route.bridges = [str(b) for b in plan.bridges]
        route.latency_ms = (time.perf_counter() - started) * 1000
        if own:
            transcript = Transcript.merged(own)
        text = "".join(texts) or (transcript.text if transcript is not None else "")
        yield Done(Answer(text, transcript, total, route))
        return
    if last_error is not None:
        raise last_error
    raise NoRoute("every target of the route became unusable")
