"""When to poll again a job that runs on at the provider (a transcript, an uploaded file's processing)
after a status poll failed in passing.

Such a job goes on (and is billed) whatever its polls meet, so a poll that fails in passing (a status of
:data:`router.errors.TRANSIENT_STATUSES`, or no answer: each plugin tells them apart for its SDK) is made
again rather than failing the call. :class:`PollFailures` is the one policy of the bundled plugins
(AssemblyAI's transcripts, Gemini's Files API): poll again after the poll interval, or the failing
answer's Retry-After when longer, never past the call's deadline, and give up once
:data:`MAX_POLL_FAILURES` polls in a row failed or no time is left. The plugin then raises the last
poll's error; any other failure (a refused key, a bad request, an unknown id) it raises at once.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Failed status polls in a row after which the last one's error ends the call, whatever its deadline.
#: 5 polls span at least 4 poll intervals (more when a Retry-After says so): longer than a gateway's
#: hiccup, and an outage lasting longer makes the router fall back instead of waiting without end.
MAX_POLL_FAILURES = 5


@dataclass
class PollFailures:
    """The failed status polls in a row of one job, and whether (and how long) to wait before the next.

    Call :meth:`failed` for each poll that failed in passing and :meth:`succeeded` for each that
    answered (which starts the count again).
    """

    #: Seconds to wait before polling again after a failure without a longer Retry-After.
    interval: float
    #: Failed polls in a row at which to give up.
    limit: int = MAX_POLL_FAILURES
    #: The polls failed in a row so far.
    in_a_row: int = 0

    def succeeded(self) -> None:
        """A poll answered: the next failure is the first in a row again."""
        self.in_a_row = 0

    def failed(self, retry_after: float | None, time_left: float | None) -> float | None:
        """Count one more failed poll; the seconds to wait before polling again, or None to give up.

        ``retry_after``: the seconds the failing answer asked to wait (None if it did not say);
        ``time_left``: the seconds left of the call (its deadline, or a bound of the plugin's own),
        None when it has none. The wait is the interval, or ``retry_after`` when longer, cut to
        ``time_left``. None when no time is left (see :meth:`out_of_time`) or :attr:`limit` polls in a
        row failed.
        """
        self.in_a_row += 1
        if self.out_of_time(time_left) or self.in_a_row >= self.limit:
            return None
        wait = max(self.interval, retry_after or 0.0)
        return wait if time_left is None else min(wait, time_left)

    @staticmethod
    def out_of_time(time_left: float | None) -> bool:
        """Whether ``time_left`` (seconds, None for no deadline) says the call's time is up: why
        :meth:`failed` gave up when it was not the count."""
        return time_left is not None and time_left <= 0


__all__ = ["MAX_POLL_FAILURES", "PollFailures"]
