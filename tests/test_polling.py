"""router.polling: when a plugin polls again a job whose status poll failed in passing (the one policy of
the AssemblyAI and Gemini plugins; their tests check it through the real SDKs against the fakes)."""

from __future__ import annotations

import pytest

from router.polling import MAX_POLL_FAILURES, PollFailures


def test_the_interval_is_waited_until_the_bound_of_failures_in_a_row() -> None:
    failures = PollFailures(interval=2.0)
    waits = [failures.failed(None, None) for _ in range(MAX_POLL_FAILURES)]
    assert waits == [2.0] * (MAX_POLL_FAILURES - 1) + [None]
    assert failures.in_a_row == MAX_POLL_FAILURES
    assert not failures.out_of_time(None)  # gave up for the count, not the time


@pytest.mark.parametrize("time_left", [None, 3600.0, 1e9], ids=["no-deadline", "an-hour", "far"])
def test_the_bound_holds_whatever_the_time_left(time_left: float | None) -> None:
    failures = PollFailures(interval=0.5)
    for _ in range(MAX_POLL_FAILURES - 1):
        assert failures.failed(None, time_left) == 0.5
    assert failures.failed(None, time_left) is None


def test_a_longer_retry_after_is_waited_a_shorter_one_is_not() -> None:
    failures = PollFailures(interval=1.0)
    assert failures.failed(30.0, None) == 30.0
    assert failures.failed(0.2, None) == 1.0
    assert failures.failed(0.0, None) == 1.0


@pytest.mark.parametrize(("retry_after", "time_left", "wait"), [
    (None, 0.25, 0.25), (30.0, 4.0, 4.0), (30.0, 60.0, 30.0), (None, 60.0, 1.0)])
def test_the_wait_never_runs_past_the_time_left(retry_after: float | None, time_left: float, wait: float) -> None:
    assert PollFailures(interval=1.0).failed(retry_after, time_left) == wait


@pytest.mark.parametrize("time_left", [0.0, -0.5])
def test_no_time_left_gives_up_at_the_first_failure(time_left: float) -> None:
    failures = PollFailures(interval=1.0)
    assert failures.failed(None, time_left) is None
    assert failures.in_a_row == 1
    assert failures.out_of_time(time_left)


def test_a_poll_that_answers_starts_the_count_again() -> None:
    failures = PollFailures(interval=1.0)
    for _ in range(MAX_POLL_FAILURES - 1):
        assert failures.failed(None, None) is not None
    failures.succeeded()
    assert failures.in_a_row == 0
    for _ in range(MAX_POLL_FAILURES - 1):
        assert failures.failed(None, None) is not None
    assert failures.failed(None, None) is None


def test_the_limit_can_be_set() -> None:
    failures = PollFailures(interval=1.0, limit=2)
    assert failures.failed(None, None) == 1.0
    assert failures.failed(None, None) is None
    assert MAX_POLL_FAILURES == 5
