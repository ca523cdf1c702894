"""Retry decisions and backoff, with a recorded sleep and a frozen clock: nothing really waits."""

from __future__ import annotations

import threading
import time
from typing import Optional

import pytest
from freezegun import freeze_time

from cms_shipper._retry import RetryPolicy, classify
from cms_shipper._transport import Reply, parse_retry_after
from cms_shipper.results import Outcome, Reason


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_transient_answers_are_retryable(status: Optional[int]) -> None:
    assert classify(Reply(status, error=None if status else "ConnectionError: x")) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (Outcome.DELIVERED, Reason.ACCEPTED)),
        (201, (Outcome.DELIVERED, Reason.ACCEPTED)),
        (409, (Outcome.DUPLICATE, Reason.ALREADY_RECORDED)),
        (400, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (401, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (403, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (404, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (422, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (301, (Outcome.FAILED, Reason.UNEXPECTED_STATUS)),
        (501, (Outcome.FAILED, Reason.UNEXPECTED_STATUS)),
    ],
)
def test_final_answers(status: int, expected: tuple[Outcome, Reason]) -> None:
    assert classify(Reply(status)) == expected


class Script:
    """Replies in order, counting calls."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.calls = 0

    def __call__(self) -> Reply:
        self.calls += 1
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def policy(sleeps: list[float], **overrides: float) -> RetryPolicy:
    settings = {"max_attempts": 5, "max_elapsed_s": 60.0, "initial_backoff_s": 1.0,
                "max_backoff_s": 8.0, **overrides}  # fmt: skip
    return RetryPolicy(sleep=sleeps.append, **settings)  # type: ignore[arg-type]


def test_retries_until_success_with_full_jitter_bounded_by_the_exponential() -> None:
    sleeps: list[float] = []
    script = Script(Reply(503), Reply(None, error="ConnectionError"), Reply(502), Reply(200))
    reply, attempts = policy(sleeps).run(script, threading.Event())
    assert reply.status_code == 200 and attempts == 4 == script.calls
    assert len(sleeps) == 3
    for n, slept in enumerate(sleeps):
        assert 0.0 <= slept <= min(8.0, 1.0 * 2**n)


def test_backoff_is_capped_at_max_backoff() -> None:
    sleeps: list[float] = []
    policy(sleeps, max_attempts=12, max_elapsed_s=1e9).run(Script(Reply(500)), threading.Event())
    assert len(sleeps) == 11 and max(sleeps) <= 8.0


def test_gives_up_after_max_attempts_and_returns_the_last_reply() -> None:
    sleeps: list[float] = []
    script = Script(Reply(500), Reply(504))
    reply, attempts = policy(sleeps, max_attempts=3).run(script, threading.Event())
    assert (reply.status_code, attempts, len(sleeps)) == (504, 3, 2)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_final_answers_are_never_retried(status: int) -> None:
    sleeps: list[float] = []
    script = Script(Reply(status))
    reply, attempts = policy(sleeps).run(script, threading.Event())
    assert (reply.status_code, attempts, sleeps) == (status, 1, [])


def test_retry_after_is_a_floor() -> None:
    sleeps: list[float] = []
    script = Script(Reply(429, retry_after_s=7.0), Reply(200))
    policy(sleeps, initial_backoff_s=0.01, max_backoff_s=0.02).run(script, threading.Event())
    assert sleeps == [7.0]


def test_the_gate_blackout_is_a_floor_too() -> None:
    sleeps: list[float] = []
    script = Script(Reply(503), Reply(200))
    policy(sleeps, initial_backoff_s=0.01, max_backoff_s=0.02).run(
        script, threading.Event(), floor=lambda: 4.5
    )
    assert sleeps == [4.5]


def test_elapsed_bound_stops_before_a_sleep_that_would_pass_it() -> None:
    with freeze_time("2026-01-01", tick=False) as clock:
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock.tick(seconds)

        retry = RetryPolicy(max_attempts=100, max_elapsed_s=10.0, initial_backoff_s=4.0,
                            max_backoff_s=4.0, sleep=sleep)  # fmt: skip
        # Retry-After 4 s each time: sleeps at 0+4, 4+4, then 8+4 >= 10 stops.
        reply, attempts = retry.run(Script(Reply(503, retry_after_s=4.0)), threading.Event())
    assert attempts == 3 and sleeps == [4.0, 4.0]
    assert reply.status_code == 503


def test_retry_after_longer_than_the_budget_gives_up_at_once() -> None:
    sleeps: list[float] = []
    reply, attempts = policy(sleeps).run(
        Script(Reply(429, retry_after_s=3600.0)), threading.Event()
    )
    assert (reply.status_code, attempts, sleeps) == (429, 1, [])


def test_a_set_stop_event_ends_retrying() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def attempt() -> Reply:
        calls.append(1)
        stop.set()  # close() arrives while the first attempt is in flight
        return Reply(503)

    reply, attempts = RetryPolicy(
        max_attempts=5, max_elapsed_s=60, initial_backoff_s=30, max_backoff_s=30
    ).run(attempt, stop)
    assert (reply.status_code, attempts) == (503, 1)


def test_default_sleep_is_cut_short_by_the_stop_event() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    timer.start()
    retry = RetryPolicy(max_attempts=2, max_elapsed_s=600, initial_backoff_s=300, max_backoff_s=300)
    started = time.monotonic()
    reply, attempts = retry.run(Script(Reply(429, retry_after_s=300.0)), stop)
    assert time.monotonic() - started < 30  # not the 300 s Retry-After
    # The cut-short sleep is followed by the last attempt (which the client's gate turns
    # into a no-op once stopped), then the attempt bound ends it.
    assert (reply.status_code, attempts) == (429, 2)
    timer.cancel()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        (None, None),
        ("-3", None),
    ],
)
def test_parse_retry_after(header: Optional[str], expected: Optional[float]) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected
