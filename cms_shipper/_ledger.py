"""The books: every tracked event's one outcome, counted, and waits on them.

Guarantee 4 lives here: an event is admitted once and resolved once (the first
resolution wins, later ones are ignored and reported as such), so
tracked + replayed = delivered + duplicate + rejected + failed + dropped + spooled + pending
always holds (``replayed`` counts events this process took from the on-disk spool).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Optional

from cms_shipper.results import Outcome, Result, TrackResult

__all__ = ["Ledger"]


class Ledger:
    """Thread-safe outcome accounting, flush marks and per-event waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Shared with TrackResult.wait: one condition for every waiter keeps track_* cheap
        # (no per-event lock) at the cost of waking all waiters on each resolution.
        self.cond = threading.Condition(self._lock)
        self._outstanding: OrderedDict[int, TrackResult] = OrderedDict()
        self._seq = 0
        self._tracked = 0
        self._replayed = 0
        self._outcomes: Counter[Outcome] = Counter()
        self._reasons: Counter[tuple[Outcome, str]] = Counter()
        self._statuses: Counter[int] = Counter()

    def admit(self, result: TrackResult, *, replayed: bool = False) -> None:
        """Count a tracked (or replayed from the spool) event that is now pending."""
        with self._lock:
            self._seq += 1
            if replayed:
                self._replayed += 1
            else:
                self._tracked += 1
            self._outstanding[self._seq] = result
            result._seq = self._seq

    def record(self, final: Result) -> None:
        """Count a tracked event that got its outcome at once (invalid, dropped, sync)."""
        with self._lock:
            self._tracked += 1
            self._count(final)

    def resolve(self, result: TrackResult, final: Result) -> bool:
        """Give a pending event its outcome; False if it already had one."""
        with self._lock:
            if result._final is not None:
                return False
            result._final = final
            self._outstanding.pop(result._seq, None)
            self._count(final)
            self.cond.notify_all()
        return True

    def _count(self, final: Result) -> None:
        if final.outcome is None:
            raise ValueError("a final Result needs an outcome")
        self._outcomes[final.outcome] += 1
        self._reasons[final.outcome, str(final.reason)] += 1
        if final.status_code is not None:
            self._statuses[final.status_code] += 1

    def mark(self) -> int:
        """A mark for ``wait_for``: every event admitted so far."""
        return self._seq

    def _pending_up_to(self, mark: int) -> int:
        count = 0
        for seq in self._outstanding:  # admission order, so stop at the first newer one
            if seq > mark:
                break
            count += 1
        return count

    def wait_for(self, mark: int, deadline: Optional[float]) -> int:
        """Wait until every event admitted up to ``mark`` has an outcome, or ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value (None: no bound). Returns how many of
        those events are still pending.
        """
        with self._lock:
            while True:
                oldest = next(iter(self._outstanding), None)
                if oldest is None or oldest > mark:
                    return 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._pending_up_to(mark)
                self.cond.wait(remaining)

    def outstanding(self) -> list[TrackResult]:
        """The events still pending, oldest first."""
        with self._lock:
            return list(self._outstanding.values())

    def counts(self) -> dict[str, int]:
        """Outcome counts and ``tracked``/``pending`` totals."""
        with self._lock:
            out = {outcome.value: self._outcomes[outcome] for outcome in Outcome}
            out["tracked"] = self._tracked
            out["replayed"] = self._replayed
            out["pending"] = len(self._outstanding)
            return out

    def snapshot(self) -> dict[str, Any]:
        """Counts plus a breakdown by reason and by HTTP status."""
        counts: dict[str, Any] = self.counts()
        with self._lock:
            reasons: dict[str, dict[str, int]] = {}
            for (outcome, reason), n in sorted(self._reasons.items()):
                reasons.setdefault(outcome.value, {})[reason] = n
            counts["reasons"] = reasons
            counts["status_codes"] = {str(k): v for k, v in sorted(self._statuses.items())}
        return counts
