"""Reply classification and the retry decision ("retry? after how long?"): nothing waits."""

from __future__ import annotations

import math
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cms_shipper._engine.retry import Kind, RetryPolicy, classify, final_outcome
from cms_shipper._engine.transport import Reply
from cms_shipper.results import Outcome, Reason


@pytest.mark.parametrize("status", [None, 500, 502, 503, 504])
def test_server_failures_are_trouble(status: Optional[int]) -> None:
    assert classify(Reply(status, error=None if status else "ConnectionError: x")) is Kind.TROUBLE


def test_429_is_a_rate_limit_and_408_an_own_retry() -> None:
    assert classify(Reply(429)) is Kind.RATE_LIMITED
    assert classify(Reply(408)) is Kind.RETRY


def test_401_is_the_clients_refused_token_not_the_events_answer() -> None:
    assert classify(Reply(401)) is Kind.UNAUTHORIZED
    assert final_outcome(401) == (Outcome.REJECTED, Reason.HTTP_ERROR)  # sync_mode's answer


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (Outcome.DELIVERED, Reason.ACCEPTED)),
        (201, (Outcome.DELIVERED, Reason.ACCEPTED)),
        (409, (Outcome.DUPLICATE, Reason.ALREADY_RECORDED)),
        (400, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (403, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (422, (Outcome.REJECTED, Reason.HTTP_ERROR)),
        (301, (Outcome.FAILED, Reason.UNEXPECTED_STATUS)),
        (501, (Outcome.FAILED, Reason.UNEXPECTED_STATUS)),
    ],
)
def test_final_answers(status: int, expected: tuple[Outcome, Reason]) -> None:
    assert classify(Reply(status)) is Kind.FINAL
    assert final_outcome(status) == expected


def policy(**overrides: float) -> RetryPolicy:
    settings = {"max_attempts": 5, "max_elapsed_s": 60.0, "initial_backoff_s": 1.0,
                "max_backoff_s": 8.0, "max_retry_after_s": 300.0, **overrides}  # fmt: skip
    return RetryPolicy(**settings)  # type: ignore[arg-type]


def test_full_jitter_bounded_by_the_exponential_and_the_cap() -> None:
    p = policy(max_attempts=100, max_elapsed_s=1e9)
    for attempts in range(1, 40):
        for _ in range(20):
            delay = p.next_delay(attempts, 0.0)
            assert delay is not None and 0.0 <= delay <= min(8.0, 2 ** (attempts - 1))


def test_gives_up_after_max_attempts() -> None:
    p = policy(max_attempts=3)
    assert p.next_delay(1, 0.0) is not None and p.next_delay(2, 0.0) is not None
    assert p.next_delay(3, 0.0) is None


def test_gives_up_before_a_wait_that_would_pass_the_elapsed_budget() -> None:
    p = policy(max_attempts=100, max_elapsed_s=10.0, initial_backoff_s=4.0, max_backoff_s=4.0)
    # Retry-After 4 s: after 0 s elapsed the retry would start at 4 s, after 8 s at 12 s.
    assert p.next_delay(1, 0.0, retry_after_s=4.0) == 4.0
    assert p.next_delay(2, 4.0, retry_after_s=4.0) == 4.0
    assert p.next_delay(3, 8.0, retry_after_s=4.0) is None


def test_retry_after_is_a_floor_and_capped() -> None:
    p = policy(max_elapsed_s=1e9, max_retry_after_s=120.0)
    assert p.next_delay(1, 0.0, retry_after_s=7.0) == 7.0
    assert p.next_delay(1, 0.0, retry_after_s=9_999_999_999.0) == 120.0
    assert p.next_delay(1, 0.0, retry_after_s=math.inf) == 120.0


@given(
    attempts=st.integers(min_value=-5, max_value=10**6),
    elapsed=st.floats(allow_nan=True, allow_infinity=True),
    retry_after=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_any_inputs_give_a_bounded_delay_or_none(
    attempts: int, elapsed: float, retry_after: Optional[float]
) -> None:
    delay = policy(max_attempts=10**7, max_elapsed_s=1e9).next_delay(attempts, elapsed, retry_after)
    assert delay is None or 0.0 <= delay <= 300.0
