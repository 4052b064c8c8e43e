"""What answering a request produces: the route taken, its steps and attempts, and the answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .routing import Decision, TraceEntry
from .types import FinishReason, Transcript, Usage


@dataclass
class Attempt:
    """One provider call, successful or not."""

    provider: str
    model: str
    ok: bool
    error: str = ""
    latency_ms: float = 0.0


@dataclass
class Step:
    """One stage of answering: a bridge or the answer itself."""

    purpose: str
    provider: str
    model: str
    latency_ms: float = 0.0
    usage: Usage = field(default_factory=Usage)


@dataclass
class RouteInfo:
    """How a request was (or would be) answered."""

    rule: str
    provider: str
    model: str
    fallbacks: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    latency_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: The session's turn id whose kept answer this call sent again, calling no provider ("" for an answer made now).
    kept_turn: str = ""

    @classmethod
    def planned(cls, decision: Decision) -> RouteInfo:
        """The route as decided, before any call."""
        plan = decision.plan
        return cls(
            rule=decision.rule, provider=plan.target.provider, model=plan.target.model,
            fallbacks=[str(p.target) for p in decision.fallbacks],
            bridges=[str(b) for b in plan.bridges], trace=list(decision.trace),
        )


@dataclass
class Answer:
    """The uniform result: text, transcript, total usage, the route, and why the answering model
    stopped (None when its provider does not say)."""

    text: str
    transcript: Transcript | None
    usage: Usage
    route: RouteInfo
    finish_reason: FinishReason | None = None


@dataclass
class RouteChosen:
    """Event: where the request is going (always first)."""

    route: RouteInfo


@dataclass
class StepUsage:
    """Event: the usage of one finished step."""

    usage: Usage


@dataclass
class Done:
    """Event: the complete answer (always last)."""

    answer: Answer
