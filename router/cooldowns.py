"""Cool-downs: targets that asked, with a retry delay, to be left alone for a while.

A provider that fails a call with a delay to wait (HTTP 429 with ``Retry-After``, or a 503/529 with one)
says when it may answer again. :class:`Cooldowns` remembers each such target (``provider/model``) until
then, so that routing tries a rule's other targets first meanwhile (see
:attr:`router.routing.Facts.cooling`) instead of paying the refused round trip and adding another request
against the provider's limit on every call. A later success of the target ends its cool-down. A call's
attempts are told (:meth:`Cooldowns.learn`) as soon as one fails, before its fallback is called (see
:func:`router.dispatch.execute`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from .invoke import FailedAttempt
from .outcome import Attempt

#: The longest cool-down remembered, whatever delay the provider gave (``Retry-After`` may say a day): the
#: target is tried first again after it, and a new refusal starts another.
COOLDOWN_MAX_SECONDS = 60.0

#: The most targets remembered at once (routes name few; the soonest to end are forgotten first beyond it).
COOLDOWNS_KEPT = 1024

#: How a failure's ErrorInfo reason is said in a cool-down's route note.
_KINDS = {"PROVIDER_RATE_LIMITED": "rate-limited"}


class Cooldowns:
    """The targets cooling down, each until a time of ``clock`` with why, kept in memory (empty again once
    every cool-down has ended, so that a call then costs one check that it is empty)."""

    def __init__(self, kept: int = COOLDOWNS_KEPT, longest: float = COOLDOWN_MAX_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kept = kept
        self._longest = longest
        self._clock = clock
        self._until: dict[str, tuple[float, str]] = {}  # "provider/model" -> (until, why)

    def __bool__(self) -> bool:
        return bool(self._until)

    def failed(self, target: str, retry_after: float, reason: str, http_status: int | None = None) -> None:
        """Remember that ``target`` failed asking to be left alone for another ``retry_after`` seconds from
        now (at most :data:`COOLDOWN_MAX_SECONDS`); ``reason`` (the ErrorInfo reason) and ``http_status`` say
        why in the route note. A delay of 0 or less is no cool-down."""
        if retry_after <= 0:
            return
        until = self._clock() + min(retry_after, self._longest)
        kind = _KINDS.get(reason, "unavailable")
        self._until[target] = (until, kind if http_status is None else f"{kind}, HTTP {http_status}")
        if len(self._until) > self._kept:
            self.cooling()  # drops those that ended
            while len(self._until) > self._kept:
                del self._until[min(self._until, key=lambda name: self._until[name][0])]

    def learn(self, attempts: Sequence[Attempt]) -> None:
        """Learn from a call's ``attempts``, in order: a target that failed asking to be left alone for a while
        (a retry delay) cools down for what is left of it; one that answered no longer does."""
        for attempt in attempts:
            target = f"{attempt.provider}/{attempt.model}"
            if attempt.ok:
                if self._until:
                    self.succeeded(target)
            elif isinstance(attempt, FailedAttempt) and attempt.retry_after:
                left = attempt.retry_after - max(0.0, time.time() - attempt.at)
                self.failed(target, left, attempt.reason, attempt.http_status)

    def succeeded(self, target: str) -> None:
        """``target`` answered: its cool-down, if any, ends."""
        self._until.pop(target, None)

    def left(self) -> dict[str, tuple[float, str]]:
        """The targets cooling down now, each with the seconds left and why (``rate-limited, HTTP 429``);
        those whose cool-down ended are forgotten."""
        now = self._clock()
        for target in [t for t, (until, _) in self._until.items() if until <= now]:
            del self._until[target]
        return {target: (until - now, why) for target, (until, why) in self._until.items()}

    def cooling(self) -> dict[str, str]:
        """The targets cooling down now, each with why, as a route note says it after the target's name
        (``asked to be left alone for another 27 s (rate-limited, HTTP 429)``)."""
        return {target: f"asked to be left alone for another {math.ceil(seconds):d} s ({why})"
                for target, (seconds, why) in self.left().items()}
