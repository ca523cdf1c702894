"""What a reply means, and whether an event's own failure is worth another attempt.

``classify`` sorts a reply into a final outcome, a rate limit (the client's pause, not the
event's failure), server trouble (the event's failure unless the health gate says the API
is away) or another retryable answer. ``RetryPolicy`` answers "retry? after how long?"
from tenacity's strategy objects; it never sleeps: the scheduler parks the event until then.
"""

from __future__ import annotations

import enum
from typing import Optional

from tenacity import (
    RetryCallState,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from cms_shipper._engine.health import capped
from cms_shipper._engine.transport import Reply
from cms_shipper.results import Outcome, Reason

__all__ = ["Kind", "RetryPolicy", "classify", "final_outcome"]


class Kind(enum.Enum):
    """How the engine treats a reply."""

    FINAL = "final"  # an answer no retry changes: delivered, duplicate, rejected, ...
    RATE_LIMITED = "rate_limited"  # 429: pause everybody; the event is not charged
    TROUBLE = "trouble"  # unreachable, reset, timeout, 500/502/503/504: maybe an outage
    RETRY = "retry"  # 408: the event's own transient failure
    UNAUTHORIZED = "unauthorized"  # 401: the token is refused: pause everybody, uncharged


_TROUBLE_STATUS = frozenset({500, 502, 503, 504})


def classify(reply: Reply) -> Kind:
    """The kind of a reply (see ``Kind``)."""
    status = reply.status_code
    if status is None or status in _TROUBLE_STATUS:
        return Kind.TROUBLE
    if status == 429:
        return Kind.RATE_LIMITED
    if status == 401:
        return Kind.UNAUTHORIZED
    if status == 408:
        return Kind.RETRY
    return Kind.FINAL


def final_outcome(status: int) -> tuple[Outcome, Reason]:
    """The outcome a final status means."""
    if 200 <= status < 300:
        return Outcome.DELIVERED, Reason.ACCEPTED
    if status == 409:
        return Outcome.DUPLICATE, Reason.ALREADY_RECORDED
    if 400 <= status < 500:
        return Outcome.REJECTED, Reason.HTTP_ERROR
    # 1xx, 3xx, 501, 505...: nothing a retry would fix and not the caller's data either.
    return Outcome.FAILED, Reason.UNEXPECTED_STATUS


class RetryPolicy:
    """Immutable retry settings: full-jitter exponential backoff, bounded by attempts and time."""

    def __init__(
        self,
        *,
        max_attempts: int,
        max_elapsed_s: float,
        initial_backoff_s: float,
        max_backoff_s: float,
        max_retry_after_s: float,
    ) -> None:
        self.max_attempts = max_attempts
        self.max_elapsed_s = max_elapsed_s
        self.max_retry_after_s = max_retry_after_s
        self._wait = wait_random_exponential(multiplier=initial_backoff_s, max=max_backoff_s)
        self._stop = stop_after_attempt(max_attempts) | stop_before_delay(max_elapsed_s)

    def __repr__(self) -> str:
        return f"RetryPolicy(max_attempts={self.max_attempts}, max_elapsed_s={self.max_elapsed_s})"

    def next_delay(
        self, attempts: int, elapsed_s: float, retry_after_s: Optional[float] = None
    ) -> Optional[float]:
        """Seconds to wait before the next attempt, or None to give up.

        ``attempts`` counts the event's own (charged) failed attempts so far, ``elapsed_s``
        the time since its first attempt without the time the API was paused for everybody.
        ``Retry-After`` is a floor, capped at ``max_retry_after_s``. Never raises.
        """
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempts)
        delay = float(self._wait(state))
        if retry_after_s is not None:
            delay = max(delay, capped(retry_after_s, self.max_retry_after_s))
        state.outcome_timestamp = state.start_time + max(0.0, elapsed_s)
        state.upcoming_sleep = delay
        return None if self._stop(state) else delay
