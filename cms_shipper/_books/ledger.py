"""The books: every tracked event's one outcome, counted, and waits on them.

Guarantee 4 lives here: an event is admitted once and resolved once (the first
resolution wins, later ones are ignored and reported as such), so
tracked + replayed = delivered + duplicate + rejected + failed + dropped + spooled + pending
always holds (``replayed`` counts events this process took from the on-disk spool).

``admit`` runs in the caller's thread and takes no lock (see ``_queue`` for why): the
sequence number comes from ``itertools.count`` and the insertion is one dict store, both
atomic under the GIL (a plain dict keeps insertion order, oldest first, at about half an
``OrderedDict``'s memory per pending event). Everything else runs under ``_lock``;
readers copy the keys in one C-level call instead of iterating while callers may insert.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Optional

from cms_shipper.results import Outcome, Result, Tracked

__all__ = ["Ledger"]


class _Flush:
    """One flush() waiting for a set of events."""

    __slots__ = ("done", "pending")

    def __init__(self, seqs: Iterable[int]) -> None:
        self.pending = set(seqs)
        self.done = threading.Event()

    def resolved(self, seq: int) -> None:
        pending = self.pending
        if seq in pending:
            pending.discard(seq)
            if not pending:
                self.done.set()


class Ledger:
    """Thread-safe outcome accounting, flush marks and per-event waits."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler that calls close() runs in the main thread, which may
        # be inside one of these critical sections (track_* -> record/finish).
        self._lock = threading.RLock()
        # Waiters are woken only when what they wait for is done: a flush once its last
        # event resolves, r.wait() when its own does. (One shared condition woke every
        # waiter on every resolution: a flush of N events cost N wake-ups of its thread.)
        self._flushes: list[_Flush] = []
        self._waits: dict[int, threading.Event] = {}  # seq -> set when that event resolves
        self._outstanding: dict[int, Tracked] = {}
        self._seqs = itertools.count(1)
        self._recorded = 0  # tracked events that got their outcome at once
        self._resolved = 0  # admitted events that got their outcome since
        self._replayed = 0
        self._outcomes: Counter[Outcome] = Counter()
        self._reasons: Counter[tuple[Outcome, str]] = Counter()
        self._statuses: Counter[int] = Counter()
        # Called (outside the lock) each time the last pending event resolves; the
        # process's registry sets it on a retiring client, to close it once it is idle.
        self.on_empty: Optional[Callable[[], None]] = None

    def admit(self, result: Tracked, *, replayed: bool = False) -> None:
        """Count a tracked (or replayed from the spool) event that is now pending. Lock-free."""
        seq = next(self._seqs)
        result._seq = seq
        self._outstanding[seq] = result
        if replayed:
            with self._lock:  # the replay thread, never a caller
                self._replayed += 1

    def record(self, final: Result) -> None:
        """Count a tracked event that got its outcome at once (invalid, dropped, sync)."""
        with self._lock:
            self._recorded += 1
            self._count(final)

    def resolve(self, result: Tracked, final: Result) -> bool:
        """Give a pending event its outcome; False if it already had one."""
        with self._lock:
            if result._final is not None:
                return False
            result._final = final
            seq = result._seq
            self._outstanding.pop(seq, None)
            self._resolved += 1
            self._count(final)
            for flush in self._flushes:
                flush.resolved(seq)
            waiting = self._waits.pop(seq, None) if self._waits else None
        if waiting is not None:
            waiting.set()
        if not self._outstanding and self.on_empty is not None:
            self.on_empty()
        return True

    def _count(self, final: Result) -> None:
        if final.outcome is None:
            raise ValueError("a final Result needs an outcome")
        self._outcomes[final.outcome] += 1
        self._reasons[final.outcome, str(final.reason)] += 1
        if final.status_code is not None:
            self._statuses[final.status_code] += 1

    def mark(self) -> list[int]:
        """A mark for ``wait_for``: the events pending now (admitted before this call)."""
        return list(self._outstanding)  # one C-level copy: no Python code runs in between

    def wait_for(self, mark: list[int], deadline: Optional[float]) -> int:
        """Wait until every event in ``mark`` has an outcome, or ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value (None: no bound). Returns how many of
        those events are still pending.
        """
        with self._lock:
            flush = _Flush(seq for seq in mark if seq in self._outstanding)
            if not flush.pending:
                return 0
            self._flushes.append(flush)
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            flush.done.wait(remaining)
        finally:
            with self._lock:
                self._flushes.remove(flush)
                left = len(flush.pending)
        return left

    def wait_final(self, result: Tracked, timeout_s: Optional[float]) -> None:
        """Block until ``result`` has its final outcome, or ``timeout_s`` (None: no bound)."""
        with self._lock:
            if result._final is not None:
                return
            waiting = self._waits.get(result._seq)
            if waiting is None:
                waiting = self._waits[result._seq] = threading.Event()
        waiting.wait(timeout_s)

    def pending(self) -> int:
        """How many admitted events have no outcome yet."""
        return len(self._outstanding)

    def outstanding(self) -> list[Tracked]:
        """The events still pending, oldest first."""
        return list(self._outstanding.values())

    def counts(self) -> dict[str, int]:
        """Outcome counts and ``tracked``/``replayed``/``pending`` totals."""
        with self._lock:
            pending = len(self._outstanding)
            out = {outcome.value: self._outcomes[outcome] for outcome in Outcome}
            admitted = self._resolved + pending
            out["tracked"] = self._recorded + admitted - self._replayed
            out["replayed"] = self._replayed
            out["pending"] = pending
            return out

    def tally(self) -> dict[str, Any]:
        """Counts plus a breakdown by reason and by HTTP status."""
        counts: dict[str, Any] = self.counts()
        with self._lock:
            reasons: dict[str, dict[str, int]] = {}
            for (outcome, reason), n in sorted(self._reasons.items()):
                reasons.setdefault(outcome.value, {})[reason] = n
            counts["reasons"] = reasons
            counts["status_codes"] = {str(k): v for k, v in sorted(self._statuses.items())}
        return counts
