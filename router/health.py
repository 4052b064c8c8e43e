"""Recent health of each provider (calls answered and failed lately, the last failure), for
``ListProviders``: a provider can be ready while every call to it fails (a revoked key, an outage a
fallback hides)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: The minutes of recent calls :class:`ProviderHealth` counts (one bucket each).
HEALTH_MINUTES = 5

#: What ``ListProviders`` says of a failure, per its reason: a text of the daemon's own. A provider's or
#: plugin's message may repeat what the failed request held (a file name, the prompt, a signed URL), in
#: quotes or not, and every client may list the providers: that message goes to the daemon log only.
REASON_DESCRIPTIONS = {
    "PROVIDER_AUTH": "the provider refused the credentials (a wrong, revoked or expired API key, or one "
                     "without access to the model)",
    "PROVIDER_NOT_CONFIGURED": "the provider lacks configuration (an API key?)",
    "PROVIDER_MODEL_NOT_FOUND": "the provider does not know the model",
    "PROVIDER_QUOTA_EXHAUSTED": "the account's quota or credit with the provider is spent (no outage, no rate "
                                "limit: calls fail until someone adds credit or raises the quota)",
    "PROVIDER_RATE_LIMITED": "the provider rate-limited the call (too many requests or tokens for now)",
    "PROVIDER_UNAVAILABLE": "the provider failed, is overloaded or could not be reached",
    "PROVIDER_TIMEOUT": "the provider did not answer in time",
    "PROVIDER_BAD_REQUEST": "the provider refused the request as invalid",
    "PROVIDER_FAILED": "the provider's plugin failed (raised an unexpected error)",
}

@dataclass(frozen=True)
class Failure:
    """A provider's last failed call: when (a ``time.time()``), its reason, the model called and the HTTP
    status the provider answered (None if none is known). No text of the provider's or the plugin's:
    every client may read it (see :data:`REASON_DESCRIPTIONS`)."""

    at: float
    reason: str
    model: str
    status: int | None = None

    @property
    def message(self) -> str:
        """The failure as ``ListProviders`` shows it, written by the daemon alone, e.g. ``gpt-4o: HTTP 401:
        the provider refused the credentials (...); its whole message is in the daemon log``."""
        status = f"HTTP {self.status}: " if self.status else ""
        described = REASON_DESCRIPTIONS.get(self.reason, "the provider call failed")
        return f"{self.model}: {status}{described}; its whole message is in the daemon log"


@dataclass(frozen=True)
class Health:
    """How a provider's calls went lately: those of the last :data:`HEALTH_MINUTES` minutes (the
    current one and those before it), and its last failure since the daemon started."""

    window_seconds: int
    succeeded: int
    failed: int
    last_failure: Failure | None


class _Ring:
    """One provider's calls per minute, in :data:`HEALTH_MINUTES` buckets reused in turn."""

    __slots__ = ("failed", "last_failure", "minutes", "succeeded")

    def __init__(self) -> None:
        self.minutes = [-1] * HEALTH_MINUTES  # the minute (monotonic seconds // 60) each bucket counts
        self.succeeded = [0] * HEALTH_MINUTES
        self.failed = [0] * HEALTH_MINUTES
        self.last_failure: Failure | None = None

    def add(self, minute: int, ok: bool) -> None:
        i = minute % HEALTH_MINUTES
        if self.minutes[i] != minute:  # a bucket of minutes ago: counted no more, reused
            self.minutes[i], self.succeeded[i], self.failed[i] = minute, 0, 0
        if ok:
            self.succeeded[i] += 1
        else:
            self.failed[i] += 1


class ProviderHealth:
    """Recent successes and failures of provider calls, per provider, for ``ListProviders``: a
    provider can be ready while every call to it fails (a revoked key, an outage a fallback hides).

    Each call costs O(1) and no allocation once its provider has a ring; memory is one ring of
    :data:`HEALTH_MINUTES` buckets per provider name. Minutes are of ``time.monotonic()``, so a step
    of the wall clock does not empty or freeze the counts.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rings: dict[str, _Ring] = {}

    def succeeded(self, provider: str) -> None:
        """Count a call to ``provider`` that answered."""
        self._ring(provider).add(int(self._clock() // 60), True)

    def failed(self, provider: str, failure: Failure) -> None:
        """Count a failed call to ``provider``; ``failure`` is its last."""
        ring = self._ring(provider)
        ring.add(int(self._clock() // 60), False)
        if ring.last_failure is None or failure.at >= ring.last_failure.at:
            ring.last_failure = failure

    def of(self, provider: str) -> Health | None:
        """``provider``'s recent health; None if it was never called."""
        ring = self._rings.get(provider)
        if ring is None:
            return None
        now = int(self._clock() // 60)
        recent = [i for i, minute in enumerate(ring.minutes) if now - HEALTH_MINUTES < minute <= now]
        return Health(HEALTH_MINUTES * 60, sum(ring.succeeded[i] for i in recent),
                      sum(ring.failed[i] for i in recent), ring.last_failure)

    def _ring(self, provider: str) -> _Ring:
        ring = self._rings.get(provider)
        if ring is None:
            ring = self._rings[provider] = _Ring()
        return ring
