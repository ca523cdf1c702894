"""When to try again: outcome classification and the tenacity retry policy.

The policy knows nothing of threads or HTTP clients: it runs an ``attempt`` callable that
returns a ``Reply`` and decides, from tenacity's small named pieces, whether and when to
call it again.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    stop_when_event_set,
    wait_random_exponential,
)

from cms_shipper._log import logger
from cms_shipper._transport import Reply
from cms_shipper.results import Outcome, Reason

__all__ = ["RETRYABLE_STATUS", "RetryPolicy", "classify"]


# Transient by nature: the same request may succeed later.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def classify(reply: Reply) -> Optional[tuple[Outcome, Reason]]:
    """The final outcome a reply means, or None when it is worth another attempt."""
    status = reply.status_code
    if status is None or status in RETRYABLE_STATUS:
        return None
    if 200 <= status < 300:
        return Outcome.DELIVERED, Reason.ACCEPTED
    if status == 409:
        return Outcome.DUPLICATE, Reason.ALREADY_RECORDED
    if 400 <= status < 500:
        return Outcome.REJECTED, Reason.HTTP_ERROR
    # 3xx, 501, 505...: nothing a retry would fix and not the caller's data either.
    return Outcome.FAILED, Reason.UNEXPECTED_STATUS


def _retryable(reply: Reply) -> bool:
    return classify(reply) is None


class _WaitWithFloor:
    """Full-jitter exponential backoff that never undercuts Retry-After or the gate's blackout."""

    def __init__(self, initial_s: float, max_s: float, floor: Callable[[], float]) -> None:
        self._jitter = wait_random_exponential(multiplier=initial_s, max=max_s)
        self._floor = floor

    def __call__(self, state: RetryCallState) -> float:
        reply: Optional[Reply] = state.outcome.result() if state.outcome else None
        retry_after = reply.retry_after_s if reply is not None else None
        return max(self._jitter(state), retry_after or 0.0, self._floor())


class RetryPolicy:
    """Immutable retry settings; ``run`` applies them to one event's attempts."""

    def __init__(
        self,
        *,
        max_attempts: int,
        max_elapsed_s: float,
        initial_backoff_s: float,
        max_backoff_s: float,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.max_elapsed_s = max_elapsed_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, max_elapsed_s={self.max_elapsed_s}, "
            f"initial_backoff_s={self.initial_backoff_s}, max_backoff_s={self.max_backoff_s})"
        )

    def run(
        self,
        attempt: Callable[[], Reply],
        stop: threading.Event,
        floor: Callable[[], float] = lambda: 0.0,
    ) -> tuple[Reply, int]:
        """Call ``attempt`` until its reply is final or the policy gives up.

        Returns the last reply and the number of attempts made. Gives up after
        ``max_attempts``, when the next sleep would pass ``max_elapsed_s``, or as soon as
        ``stop`` is set; sleeps wait on ``stop`` so ``close()`` cuts them short. Never
        raises unless ``attempt`` does.
        """
        attempts = 0

        def counted() -> Reply:
            nonlocal attempts
            attempts += 1
            return attempt()

        retrying = Retrying(
            stop=(
                stop_after_attempt(self.max_attempts)
                | stop_before_delay(self.max_elapsed_s)
                | stop_when_event_set(stop)
            ),
            wait=_WaitWithFloor(self.initial_backoff_s, self.max_backoff_s, floor),
            retry=retry_if_result(_retryable),
            sleep=self._sleep if self._sleep is not None else _interruptible(stop),
            before_sleep=_log_retry,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )
        reply: Reply = retrying(counted)
        return reply, attempts


def _interruptible(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that ends as soon as ``stop`` is set (close() cuts backoff short)."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


def _log_retry(state: RetryCallState) -> None:
    reply = state.outcome.result() if state.outcome else None
    logger.debug(
        "attempt %d got %s; retrying in %.2f s",
        state.attempt_number,
        reply.error or reply.status_code if reply else "nothing",
        state.upcoming_sleep,
    )
