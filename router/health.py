"""Recent health of each provider (calls answered and failed lately, the last failure), for
``ListProviders``: a provider can be ready while every call to it fails (a revoked key, an outage a
fallback hides)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The minutes of recent calls :class:`ProviderHealth` counts (one bucket each).
HEALTH_MINUTES = 5
#: The longest failure message :class:`ProviderHealth` keeps (a provider may send a whole HTML page).
HEALTH_MESSAGE_CHARS = 500


_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s'\"?#]+)[^\s'\"]*", re.IGNORECASE)
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def shown_to_clients(message: str) -> str:
    """``message`` (secrets already masked) as any client may see it in ``ListProviders``: URLs cut to
    their scheme and host, quoted text left out. A provider's error may quote what another client sent
    (a file name, a signed media URL); the daemon log keeps the message whole."""
    return _QUOTED.sub("'…'", _URL.sub(_host_only, message))


def _host_only(url: re.Match[str]) -> str:
    """A URL matched by :data:`_URL` as its scheme and host, keeping the punctuation that ends a sentence."""
    origin, rest = url.group(1), url.group(0)[len(url.group(1)):]
    scheme, _, netloc = origin.partition("://")
    origin = f"{scheme}://{netloc.rpartition('@')[2]}"  # never a user:password@
    path = rest.rstrip(".,:;)]")
    return origin + ("/…" if path else "") + rest[len(path):]


@dataclass(frozen=True)
class Failure:
    """A provider's last failed call: when (a ``time.time()``), its reason and its message (masked)."""

    at: float
    reason: str
    message: str


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
        """Count a failed call to ``provider``; ``failure`` (its message already masked) is its last."""
        ring = self._ring(provider)
        ring.add(int(self._clock() // 60), False)
        if ring.last_failure is None or failure.at >= ring.last_failure.at:
            ring.last_failure = Failure(failure.at, failure.reason, failure.message[:HEALTH_MESSAGE_CHARS])

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
