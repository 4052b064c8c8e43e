"""Answer a routed request: bridges, the provider call, fallbacks on retryable failures.

:func:`execute` turns a :class:`Decision` into router events: RouteChosen,
then text deltas, transcripts and step usage as they come, then Done with
the complete :class:`Answer`. A retryable failure (down, rate-limited, the
input too large for the target) before the answering model sent any output moves
on to the next fallback; a failure after it (the client already has part of an
answer) or a non-retryable one is raised. A request refused for its size that carries a session's
history goes to the later targets first when one of them takes that history whole; else (and as the last
resort when those fail) it is tried again on the same target with less history. :class:`HistoryCuts`
remembers how much, so the session's next turns on that target start from there, and routing tries first
the targets that hold the whole conversation. A turn refused for its size with no history teaches it too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing

from .bridging import (
    BridgedInRequest,
    BridgeMemo,
    Trim,
    apply_bridges,
    remember_transcripts,
    targets_failed,
)
from .cooldowns import Cooldowns
from .errors import NoRoute, NoTimeLeft, ProviderBadRequest, ProviderError, ProviderInputTooLarge
from .invoke import DEADLINE_MARGIN_SECONDS, call_model, deadline_passed
from .outcome import Answer, Done, RouteChosen, RouteInfo, StepUsage
from .plugins import Registry
from .provider import Provider
from .routing import Decision, Plan
from .types import (
    FEATURE_EXTRACTION_ONLY,
    NO_LARGER_LIMIT,
    OUTPUT_TEXT,
    CallContext,
    FinishReason,
    Media,
    Message,
    Modality,
    ProviderEvent,
    Request,
    Role,
    Task,
    TextDelta,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
)

#: What execute yields.
RouterEvent = RouteChosen | TextDelta | TranscriptReady | StepUsage | Done


#: The request with its history trimmed to a plan's model, and how many messages were dropped; a media in
#: the mapping (by ``id``) counts as the tokens given there (those of the text its bridge will make).
FitRequest = Callable[[Request, Plan, Mapping[int, int]], tuple[Request, int]]

#: How many sessions :class:`HistoryCuts` remembers (the least recently used are forgotten first).
HISTORY_CUTS_KEPT = 4096


@dataclasses.dataclass(frozen=True)
class _Cut:
    """The oldest ``count`` messages of a session's history, which a target refused (``why``) with them."""

    count: int
    digest: str  # of those messages (see _digest): the cut holds for a history starting with them only
    why: str


class HistoryCuts:
    """Per session and target, how many of the session's oldest messages had to be left out of a turn
    the target refused for its size (see :func:`_call_answering`).

    A session's history only grows and every turn sends its media again, so a prefix too large once
    stays too large: the session's next turns on that target start without it instead of paying a
    refused call each. Kept in memory for the :data:`HISTORY_CUTS_KEPT` sessions used last (after a
    restart one refused call learns it again); :meth:`forget` a session when it is reset. A cut
    applies only to a history that still starts with the messages it left out (a session reset or
    pruned and started again under the same id does not lose its first turns).
    """

    def __init__(self, kept: int = HISTORY_CUTS_KEPT) -> None:
        self._kept = kept
        self._cuts: OrderedDict[str, dict[str, _Cut]] = OrderedDict()  # session -> target -> cut

    def start(self, request: Request, target: str) -> tuple[Request, int, str]:
        """``request`` (a session's whole history and its new turn) without the oldest messages learnt
        for ``target``, how many were left out, and the refusal that taught it ("" when none)."""
        cut = self._cuts.get(request.session_id, {}).get(target)
        if cut is None or not _applies(cut, request):
            return request, 0, ""
        history = request.messages[:request.history_length]
        self._cuts.move_to_end(request.session_id)
        count = cut.count
        while count < len(history) and history[count].role is not Role.USER:
            count += 1
        kept = history[count:]
        shorter = dataclasses.replace(request, messages=kept + request.messages[request.history_length:],
                                      history_length=len(kept))
        return shorter, count, cut.why

    def learn(self, request: Request, target: str, accepted: Request, why: str) -> None:
        """Remember that ``target`` takes ``accepted``, ``request`` (the whole history and the turn) with
        its oldest messages left out, after refusing more (``why``)."""
        count = request.history_length - accepted.history_length
        if count > 0:
            self._keep(request.session_id, target, request.messages[:count], why)

    def learn_turn(self, request: Request, target: str, why: str) -> None:
        """Remember that ``target`` refused ``request``'s turn for its size (``why``) when it was sent with no
        history: the session's next turns, whose history starts with that turn (its messages but the system
        ones, as the session keeps them) and so holds at least as much, start after it on that target."""
        kept = [message for message in request.messages if message.role is not Role.SYSTEM]
        if kept:
            self._keep(request.session_id, target, kept, why)

    def _keep(self, session_id: str, target: str, messages: Sequence[Message], why: str) -> None:
        """Remember that ``target`` refused ``session_id``'s history starting with ``messages`` (``why``)."""
        if not session_id:
            return
        self._cuts.setdefault(session_id, {})[target] = _Cut(len(messages), _digest(messages), why)
        self._cuts.move_to_end(session_id)
        while len(self._cuts) > self._kept:
            self._cuts.popitem(last=False)

    def forget(self, session_id: str) -> None:
        """Forget what was learnt of ``session_id`` (it was reset)."""
        self._cuts.pop(session_id, None)

    def refusals(self, request: Request) -> dict[str, str]:
        """The targets whose learnt cut applies to ``request`` (they :meth:`start` it without its oldest
        messages), each with the refusal that taught it: for routing, which must not rank them as holding
        the whole conversation. Hashes the cut messages' texts and media ids only; remembers nothing."""
        return {target: cut.why for target, cut in self._cuts.get(request.session_id, {}).items()
                if _applies(cut, request)}


def _applies(cut: _Cut, request: Request) -> bool:
    """Whether ``cut`` holds for ``request``: its history starts with the messages the cut left out."""
    return 0 < cut.count <= request.history_length and _digest(request.messages[:cut.count]) == cut.digest


def _digest(messages: Sequence[Message]) -> str:
    """A digest of ``messages`` as a session keeps them: roles, texts and media ids (or URLs). Inline media,
    which the session stores once the turn is answered, count as the id they are stored under (the sha256 of
    their bytes): a turn refused before it was stored matches the history that holds it."""
    h = hashlib.sha256()
    for message in messages:
        h.update(b"\0m" + message.role.value.encode())
        for part in message.parts:
            if part.media is not None:
                media = part.media
                name = media.media_id or (hashlib.sha256(media.data).hexdigest() if media.data is not None else None)
                h.update(b"\0p" + (name or media.url or f"{media.mime_type}:{media.size}").encode())
            else:
                h.update(b"\0t" + (part.text or "").encode())
    return h.hexdigest()


async def execute(request: Request, decision: Decision, registry: Registry, ctx: CallContext,
                  notes: list[str] | None = None, fit: FitRequest | None = None,
                  memo: BridgeMemo | None = None, started: float | None = None,
                  bridge_preferences: Mapping[Modality, Sequence[str]] | None = None,
                  cuts: HistoryCuts | None = None, held: bool = False,
                  cooldowns: Cooldowns | None = None) -> AsyncIterator[RouterEvent]:
    """Run the decision's plans in order until one answers.

    ``request`` holds a session's whole history; ``fit`` trims it to each plan's model, else every plan
    gets it whole. A plan with bridges first drops the history that cannot fit even once bridged, then
    bridges what is left (a history media the model would not get is not paid for), and the history is
    trimmed again on the bridged texts (a bridged PDF counts as its text, not its pages). ``started`` (a
    ``time.perf_counter()``) is when the router got the request, for the route's latency;
    ``bridge_preferences`` (``bridges`` of the configuration) name the bridges to try when one fails.
    With ``cuts``, a plan starts without the oldest history its target refused on an earlier turn of
    the session (before bridges: what is left out is not bridged) and teaches it the history it refuses now.

    A bridge's failure is that of the chain of bridges tried on its media (:func:`router.bridging.chain_error`).
    One that refuses a media for good (an unreadable PDF) ends the call only when no later plan takes that
    media itself: else the next plans are tried (one bridging it again fails at once, at no cost).
    A fallback is tried when a plan fails with a retryable error before its answering model sent
    any text or transcript of its own (bridges' transcripts already sent are not sent again, nor the
    same transcript made again by a fallback that takes the audio itself), or at any point when the
    answer is ``held``: its client gets Done only (``Generate``), so the part it never saw is dropped; one
    refused for its size with a session's history goes on to the later plans when one takes that history
    whole (:func:`_holding_whole`), and is tried again with less history after those, as the last resort (before
    the plans that would trim it too), else at once (see :func:`_call_answering`); a refusal that ends the call
    (not retryable) still lets those last resorts run. A turn refused for its size with no history is learnt by ``cuts``
    (:meth:`HistoryCuts.learn_turn`). Neither a
    fallback nor the first target is started within :data:`DEADLINE_MARGIN_SECONDS` of the call's deadline:
    with no target tried yet, the call ends with :class:`NoTimeLeft`, blaming no provider. A call whose targets
    all failed ends with :func:`router.bridging.targets_failed`'s error: the soonest retry delay of those that
    may pass, and when several failed, the message says which targets, and ErrorInfo metadata ``attempts`` which
    provider calls failed (a bridge's under its own target) and why. A refusal (a failure that is not retryable)
    ends the call, but for the targets that the rule puts before the refusing one and that were moved after it
    for their cool-down (:attr:`router.routing.Decision.cooling_before`): those alone are tried then, as they
    would have been first. With ``cooldowns``, it learns of each provider call (:meth:`Cooldowns.learn`): of a
    failure at once, before the next target is called (a concurrent call then tries it last already), of the
    rest as the call ends, answered, failed or cancelled.
    A transcription's transcript is kept in ``memo`` as the bridged text of the audio it transcribed.
    A transcription whose model sent no text deltas (only its transcript) gets its text as one delta
    before Done, so a client joining the deltas reads every answer alike; one that found no speech (its
    transcript and text empty, whichever model made it) gets a route note saying so. A request's temperature that the
    answering model does not take (``ModelInfo.takes_temperature``) is left out by its plugin: a route note says so.
    A plugin's own notes (:class:`router.RouteNote`) are added by :func:`call_model` as they come, named after their
    target, so those of a plan that failed stay in the route of the fallback that answers.
    """
    started = time.perf_counter() if started is None else started
    route = RouteInfo.planned(decision)
    route.notes.extend(notes or [])
    yield RouteChosen(route)
    told = 0  # route.attempts the cool-downs learnt of
    try:
        if deadline_passed(ctx):  # as for a fallback: a first attempt now would be cut at once, blaming its provider
            raise NoTimeLeft(f"the call's deadline (set by its client, or server.max_call_seconds) came, or was less than "
                             f"{DEADLINE_MARGIN_SECONDS:g} s away, before any provider was called: none was called. Set "
                             "a longer deadline")
        sent: list[Transcript] = []  # bridges' transcripts the client has
        bridged_before = BridgedInRequest()
        reported = 0  # route.steps whose usage the client was sent
        failed: list[tuple[str, ProviderError]] = []  # each target that failed, with its error, in turn
        plans = decision.plans
        only: frozenset[str] | None = None  # after a refusal: the targets moved last for their cool-down to try
        every = True  # no target passed over for ``only``
        # each plan with its index, in turn; one whose session history was refused for its size while a later
        # plan takes it whole is queued again after those (the queue's rest is reordered while the loop runs)
        queue = list(enumerate(plans))
        deferred: set[int] = set()  # the plans so queued again: their second turn is their last resort
        for pos, (index, plan) in enumerate(queue):
            again = index in deferred  # its last resort: with less history
            if only is not None and str(plan.target) not in only:
                every = False
                continue
            provider = registry.ready(plan.target.provider)
            if provider is None:
                continue
            answered = False  # the answering model sent output of its own: no fallback may follow
            finish: FinishReason | None = None
            context_full = False  # the answer was cut because the model's context window filled
            texts: list[str] = []
            own: list[Transcript] = []
            bridged_transcripts: list[Transcript] = []
            used_bridges = [str(b) for b in plan.bridges]
            answering = False
            learning: _Learning | None = None  # of a call sending history (see _call_answering)
            try:
                answer_request, dropped, skipped, why = request, 0, 0, ""
                if cuts is not None and request.history_length:
                    answer_request, skipped, why = cuts.start(request, str(plan.target))
                if plan.bridges:
                    bridged = await apply_bridges(plan.bridges, answer_request, registry, ctx, route, memo,
                                                  bridge_preferences, bridged_before, _trim_for(fit, plan))
                    answer_request, used_bridges, dropped = bridged.request, bridged.bridges, bridged.dropped
                    bridged_transcripts = bridged.transcripts
                    for t in _unsent(bridged.transcripts, sent):
                        yield TranscriptReady(t)
                    for step in route.steps[reported:]:
                        yield StepUsage(step.usage)
                    reported = len(route.steps)
                if fit is not None:
                    answer_request, more = fit(answer_request, plan, {})
                    dropped += more
                if dropped:
                    route.notes.append(trimmed_note(dropped, request.session_id, plan))
                answering = True  # from here the model's own usage is streamed as it reports it
                unmatched = list(sent)  # the bridges' transcripts sent, each matched by one of the model's at most
                # closed with this generator: a client leaving mid-answer closes the provider's stream at once
                # without history nothing could be dropped on a refusal for size: no retrying layer (it costs
                # an async-generator hop per streamed chunk)
                if answer_request.history_length or skipped:
                    later = [p for i, p in queue[pos + 1:] if i not in deferred]  # the plans not tried yet
                    learning = _Learning(request, cuts, skipped, why, again=again,
                                         elsewhere=functools.partial(_holding_whole, request, later, registry, fit, cuts))
                    answering_call = _call_answering(provider, plan, answer_request, ctx, route, learning)
                else:
                    answering_call = call_model(provider, plan.model, answer_request, ctx, route, "answer")
                async with aclosing(answering_call) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            answered = True
                            texts.append(event.text)
                            yield event
                        elif isinstance(event, TranscriptReady):
                            answered = True
                            own.append(event.transcript)  # one per recording, if a plugin sends several
                            if event.transcript in unmatched:  # a bridge's, already sent: a model hearing the
                                unmatched.remove(event.transcript)  # audio itself made it again (local/extract)
                            else:
                                yield event
                        elif isinstance(event, UsageReport):
                            if event.finish_reason is not None:
                                finish, context_full = event.finish_reason, bool(event.context_window_full)
                            yield StepUsage(event.usage)
                reported = len(route.steps)
            except ProviderError as exc:
                if again:  # this last resort's failure stands for the refusal that deferred it
                    failed = [(target, error) for target, error in failed if target != str(plan.target)]
                failed.append((str(plan.target), exc))
                if cooldowns is not None:  # at once: the calls made while a fallback answers try it first
                    cooldowns.learn(route.attempts[told:])
                    told = len(route.attempts)
                if not answering:
                    for step in route.steps[reported:]:  # bridges paid for before the failure
                        yield StepUsage(step.usage)
                reported = len(route.steps)  # an answer's paid part (a failed step) was streamed as it came
                if (answered and not held) or deadline_passed(ctx):  # no time for a fallback
                    raise
                # refused for its size with no history: the turn alone is too large for this target, and so is
                # every later turn of the session, which sends it again
                if isinstance(exc, ProviderInputTooLarge) and answering and not answered and learning is None \
                        and cuts is not None and _reads_history(request, plan):
                    cuts.learn_turn(request, str(plan.target), exc.message)
                refused = None if answering else bridged_before.media_refused(exc)
                if not exc.retryable and refused is not None and _taken_later(refused, plans[index + 1:]):
                    route.notes.append(f"{plan.target} failed: its bridge refused {_with_article(refused.modality.value)} "
                                       f"({exc.reason}: {exc.message}); trying the next target, as a later one "
                                       f"takes the {refused.modality.value} itself")
                    continue
                if not exc.retryable:
                    if isinstance(exc, ProviderBadRequest):  # its form refused: a stale history URL?
                        exc.with_history_urls(_history_urls(answer_request))
                    # deferred for their size: their last resorts (with less history) are still owed
                    last = [str(p.target) for i, p in queue[pos + 1:] if i in deferred]
                    owed = f"{', '.join(last)} again with less of the session's history" if last else ""
                    if before := decision.cooling_before.get(str(plan.target)):  # all still untried
                        only = before | frozenset(last)
                        waiting = ", ".join(str(p.target) for _, p in queue[pos + 1:] if str(p.target) in before)
                        route.notes.append(f"{plan.target} failed ({exc.reason}: {exc.message}); trying {waiting}, "
                                           "which the rule puts before it (tried last for its cool-down)"
                                           f"{f', then {owed}' if owed else ''}")
                        continue
                    if last:
                        only = frozenset(last)  # as they would have been before it: with less history
                        route.notes.append(f"{plan.target} failed ({exc.reason}: {exc.message}); trying {owed}")
                        continue
                    error = targets_failed(failed, route.attempts, every=every and pos == len(queue) - 1)
                    if error is exc:
                        raise
                    raise error from exc
                if learning is not None and learning.holders:
                    deferred.add(index)
                    queue[pos + 1:] = _deferring(queue[pos + 1:], (index, plan), learning.holders, deferred)
                    route.notes.append(f"{plan.target} failed ({exc.reason}: {exc.message}); trying the next target, "
                                       f"as a later one takes the session's whole history ({plan.target} is tried "
                                       "again with less of it if none answers)")
                    continue
                route.notes.append(f"{plan.target} failed ({exc.reason}: {exc.message}); trying the next target")
                continue
            if own and not texts:  # a transcriber's answer is its transcript: streamed as text too
                texts.append(Transcript.merged(own).text)
                if texts[0]:
                    yield TextDelta(texts[0])
            if own and not Transcript.merged(own).text.strip() and not "".join(texts).strip():
                # silence: an empty text (Whisper's, local's) must not read as an answer lost on the way
                route.notes.append(f"{plan.target} found no speech: the transcript and the answer's text are empty")
            if own and memo is not None:
                remember_transcripts(request, own, plan.target, memo)
            route.provider, route.model = plan.target.provider, plan.target.model
            route.fallbacks = [str(p.target) for i, p in queue[pos + 1:] if i not in deferred]  # those untried
            route.bridges = used_bridges
            route.latency_ms = (time.perf_counter() - started) * 1000
            if finish is FinishReason.LENGTH:
                route.notes.append(cut_note(plan, request.options.max_output_tokens, context_full))
            if request.options.temperature is not None and not plan.model.takes_temperature:
                route.notes.append(f"temperature not sent: {plan.target} takes no sampling temperature")
            yield Done(_answer(texts, own, bridged_transcripts, route, finish))
            return
        if failed:
            raise targets_failed(failed, route.attempts, every=every)
        raise NoRoute("every target of the route became unusable")
    finally:  # a call cancelled or failed too: the cool-downs learn of every provider call
        if cooldowns is not None:
            cooldowns.learn(route.attempts[told:])


def cut_note(plan: Plan, max_output_tokens: int, context_full: bool) -> str:
    """The route note of an answer of ``plan``'s model cut short (:attr:`FinishReason.LENGTH`), asked for with
    ``max_output_tokens`` (0: the model's default): cut because the model's context window filled (``context_full``:
    :attr:`router.UsageReport.context_window_full`), at an output limit that is already the model's most
    (``ModelInfo.max_output_tokens``), or at one a larger ``max_output_tokens`` raises."""
    if context_full:
        return (f"the answer was cut when {plan.target}'s context window filled (the prompt and the answer); "
                f"{NO_LARGER_LIMIT}: shorten the conversation")
    most = plan.model.max_output_tokens
    limit = max_output_tokens or plan.model.default_max_output_tokens
    if most and limit >= most:
        return (f"the answer was cut at {plan.target}'s output limit (max_output_tokens {most}, the most it "
                f"writes); {NO_LARGER_LIMIT}: ask for a shorter answer, or for the rest in a follow-up turn")
    return f"the answer was cut at {plan.target}'s output limit (max_output_tokens)"


def trimmed_note(dropped: int, session_id: str, plan: Plan, planned: bool = False) -> str:
    """The route note of a session's history trimmed to fit ``plan``'s model (``dropped`` messages); a
    ``planned`` one (``explain``) says what would be dropped."""
    verb = "history would be trimmed: Generate would drop" if planned else "history trimmed: dropped"
    return (f"{verb} the {dropped} oldest message(s) of session {session_id!r} to fit {plan.target}'s context of "
            f"{plan.model.context_tokens} tokens with room for its answer")


def refused_note(dropped: int, session_id: str, plan: Plan, why: str, earlier: bool, planned: bool = False) -> str:
    """The route note of a session's history trimmed (``dropped`` messages) because ``plan``'s target refused
    it for its size (``why``), this turn or on an ``earlier`` one (see :class:`HistoryCuts`); a ``planned``
    one (``explain``) says what would be dropped."""
    verb = "history would be trimmed: Generate would drop" if planned else "history trimmed: dropped"
    when = " on an earlier turn" if earlier else ""
    return (f"{verb} the {dropped} oldest message(s) of session {session_id!r} because {plan.target} refused the "
            f"request for its size{when} ({why})")


def _history_urls(request: Request) -> int:
    """How many media of ``request``'s session history are given by URL: sent again with every turn, they
    must stay valid for the session's life (a presigned URL expires)."""
    return sum(1 for message in request.messages[:request.history_length] for part in message.parts
               if part.media is not None and part.media.url)


def _with_article(word: str) -> str:
    """``word`` after its indefinite article: "an audio", "an image", "a video", "a document"."""
    return f"{'an' if word[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {word}"


def _taken_later(media: Media, plans: Sequence[Plan]) -> bool:
    """Whether one of ``plans`` takes ``media`` itself (no bridge of it converts it): a media a bridge
    refused for good (an unreadable or encrypted PDF) may still be read by such a target (Claude)."""
    return any(not any(b.converts(media) for b in plan.bridges) for plan in plans)


def _trim_for(fit: FitRequest | None, plan: Plan) -> Trim | None:
    """``fit`` for ``plan``'s model, as :func:`apply_bridges` takes it."""
    if fit is None:
        return None
    return lambda request, bridged: fit(request, plan, bridged)


def _reads_history(request: Request, plan: Plan) -> bool:
    """Whether ``plan``'s model is sent a session's history with ``request``: not for a transcription, nor by
    a model that writes no text (a transcriber)."""
    return request.options.task is not Task.TRANSCRIBE and OUTPUT_TEXT in plan.model.outputs


def _holding_whole(request: Request, plans: Sequence[Plan], registry: Registry, fit: FitRequest | None,
                   cuts: HistoryCuts | None) -> list[Plan]:
    """Those of ``plans`` that may take ``request``, a session's history and its turn, whole: the provider is
    ready, the model reads the history (not extraction-only), it is not known to refuse it for its size
    (:meth:`HistoryCuts.refusals`), and ``fit`` keeps all of it for its context (its media counted as they are,
    bridged or not: a plan that fits only once bridged does not count)."""
    refused = cuts.refusals(request) if cuts is not None else {}
    return [plan for plan in plans
            if registry.ready(plan.target.provider) is not None and _reads_history(request, plan)
            and FEATURE_EXTRACTION_ONLY not in plan.model.features and str(plan.target) not in refused
            and (fit is None or not fit(request, plan, {})[1])]


def _deferring(rest: list[tuple[int, Plan]], entry: tuple[int, Plan], holders: Sequence[Plan],
               deferred: set[int]) -> list[tuple[int, Plan]]:
    """The plans still to try (``rest``, each with its index) once ``entry`` was refused for its size: first those
    that take the session's whole history (``holders``), then the last resorts of the plans ``deferred`` before,
    then ``entry``'s, then the others (which would have come after its retry with less history)."""
    first = [e for e in rest if any(e[1] is plan for plan in holders)]
    last = [e for e in rest if e[0] in deferred and e not in first]
    others = [e for e in rest if e not in first and e not in last]
    return [*first, *last, entry, *others]


@dataclasses.dataclass
class _Learning:
    """What :func:`_call_answering` needs to remember a cut: the session's ``whole`` request, where to
    keep it, and the history already left out at the start (``skipped``) for a refusal (``why``): on an
    earlier turn, or this one when the call is the last resort of a plan deferred for its size (``again``).
    ``elsewhere`` gives the later plans that take the whole history: when there are any, a refusal for size is
    not met by dropping history but raised, with them in ``holders`` (see :func:`_call_answering`)."""

    whole: Request
    cuts: HistoryCuts | None = None
    skipped: int = 0
    why: str = ""
    again: bool = False
    elsewhere: Callable[[], list[Plan]] | None = None
    holders: list[Plan] = dataclasses.field(default_factory=list)


async def _call_answering(provider: Provider, plan: Plan, request: Request, ctx: CallContext,
                          route: RouteInfo, learning: _Learning | None = None) -> AsyncIterator[ProviderEvent]:
    """The answering call of ``plan``: ``call_model``'s events. When the provider refuses the request
    for its size before any answer output and it carries session history, the same request, its
    bridges already applied, is tried again with the oldest half of that history dropped (a provider's
    media limits, such as Claude's 100 images or 32 MB per request, are reached far below its context),
    until no history is left; then the refusal is raised and the next fallback is tried. A
    transcription sends no history, so it is not tried again. The route gets a note when a shorter
    request was answered (``learning.skipped`` messages left out before the call count too), and
    ``learning.cuts`` remembers how much shorter it was than the session's whole history.

    Dropping history is the last resort: when later plans take the whole history (``learning.elsewhere``),
    the first refusal is raised at once, with them in ``learning.holders``, for the caller to try them first
    and this one again after them; ``learning.cuts`` learns the oldest half as refused, so that the session's
    next turns rank this target as one that trims the history, and its last resort starts without it."""
    learning = learning or _Learning(request)
    dropped, why, earlier = learning.skipped, learning.why, bool(learning.skipped) and not learning.again
    while True:
        produced = False
        try:
            async with aclosing(call_model(provider, plan.model, request, ctx, route, "answer")) as events:
                async for event in events:
                    produced = produced or isinstance(event, (TextDelta, TranscriptReady))
                    yield event
            if dropped:
                route.notes.append(refused_note(dropped, request.session_id, plan, why, earlier))
            if learning.cuts is not None and dropped and not earlier:  # refused this turn: a longer cut
                learning.cuts.learn(learning.whole, str(plan.target), request, why)
            return
        except ProviderInputTooLarge as exc:
            shorter = None if produced or not _reads_history(request, plan) else _without_older_half(request)
            if shorter is None:
                raise
            if not learning.again and learning.elsewhere is not None and (holders := learning.elsewhere()):
                if learning.cuts is not None:
                    learning.cuts.learn(learning.whole, str(plan.target), shorter[0], exc.message)
                learning.holders = holders
                raise
            request, fewer = shorter
            dropped, why, earlier = dropped + fewer, exc.message, False


def _without_older_half(request: Request) -> tuple[Request, int] | None:
    """``request`` without the oldest half of its history, the kept part starting with a user message,
    and how many messages were dropped; None without history. The current turn is always kept."""
    history, current = request.messages[:request.history_length], request.messages[request.history_length:]
    if not history:
        return None
    dropped = (len(history) + 1) // 2
    while dropped < len(history) and history[dropped].role is not Role.USER:
        dropped += 1
    kept = history[dropped:]
    return dataclasses.replace(request, messages=kept + current, history_length=len(kept)), dropped


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
