"""The books: every tracked event's one outcome, counted, and waits on them.

Guarantee 4 lives here: an event is admitted once and resolved once (the first
resolution wins, later ones are ignored and reported as such), so
tracked + replayed = delivered + duplicate + rejected + failed + dropped + spooled + pending
always holds (``replayed`` counts events this process took from the on-disk spool).

``admit``, ``record`` and ``resolve`` take no lock (see ``_engine/queue.py`` for why): a
full queue makes every ``track_*`` call settle an event, and a lock there turned each GIL
switch inside it into a convoy of the calling threads (measured with the shared referee,
4 threads at a full queue: half the calls over 100 µs and a p99 of ~900 µs with the lock,
p99 ~70 µs without). Each step is one operation that is atomic under the GIL: the
sequence number comes from ``itertools.count``, admission is one dict store (a plain dict
keeps insertion order, oldest first, at about half an ``OrderedDict``'s memory), the
event is claimed for its one outcome by ``dict.pop`` (only one caller gets it back), and
the outcome goes into ``_inbox`` (``deque.append``). Readers fold the inbox into the
counts under ``_lock``, after the resolutions in progress (``_busy``) have finished, so
the counts they see are exact. Flushes and per-event waits are woken under the lock, and
only when there are any.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Iterable, Optional

from cms_shipper.results import Outcome, Result, Tracked

__all__ = ["Ledger"]

_FOLD_AT = 256  # outcomes the inbox holds before a resolve counts them
_BUSY_WAIT_S = 0.05  # at most this long a reader waits for resolutions in progress


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
        # Whether nothing can be sent now (the API refused the token): ``wake_waiters`` then
        # ends every wait early. Set by the pipeline to its health gate's ``refusing_token``.
        self.refusing: Callable[[], bool] = lambda: False
        self._outstanding: dict[int, Tracked] = {}
        self._seqs = itertools.count(1)
        self._recorded = 0  # tracked events that got their outcome at once
        self._resolved = 0  # admitted events that got their outcome since
        # Outcomes not yet counted: (resolved?, final); folded into the counts under _lock.
        self._inbox: deque[tuple[bool, Result]] = deque()
        self._busy: deque[None] = deque()  # one entry per resolve() in progress
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
        """Count a tracked event given its outcome at once (invalid, dropped, sync). Lock-free."""
        if final.outcome is None:
            raise ValueError("a final Result needs an outcome")
        self._inbox.append((False, final))
        self._fold_if_long()

    def resolve(self, result: Tracked, final: Result) -> bool:
        """Give a pending event its outcome; False if it already had one. Lock-free."""
        if final.outcome is None:
            raise ValueError("a final Result needs an outcome")
        seq = result._seq
        busy = self._busy
        busy.append(None)
        try:
            if result._final is not None or self._outstanding.pop(seq, None) is None:
                return False  # resolved before, or claimed by another thread just now
            result._final = final
            self._inbox.append((True, final))
        finally:
            busy.pop()
        # After the claim: a flush or wait registered before it is seen here, and one
        # registered after it no longer finds the event pending (see wait_for, wait_final).
        if self._flushes or self._waits:
            with self._lock:
                for flush in self._flushes:
                    flush.resolved(seq)
                waiting = self._waits.pop(seq, None)
            if waiting is not None:
                waiting.set()
        self._fold_if_long()
        if not self._outstanding and self.on_empty is not None:
            self.on_empty()
        return True

    def _fold_if_long(self) -> None:
        # Bounds the memory the inbox holds; never waits for the lock.
        if len(self._inbox) >= _FOLD_AT and self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def _fold(self) -> None:
        """Count what the inbox holds; called with the lock held."""
        inbox = self._inbox
        while inbox:
            resolved, final = inbox.popleft()
            if resolved:
                self._resolved += 1
            else:
                self._recorded += 1
            self._count(final)

    def _settled(self) -> int:
        """Fold every outcome reached so far; the pending count that goes with it.

        Called with the lock held. Resolutions in progress are waited out (a few steps
        each; at most ``_BUSY_WAIT_S`` in all): one that claimed its event before the
        pending count was read has then put its outcome in the inbox, and it is counted.
        """
        deadline = time.monotonic() + _BUSY_WAIT_S
        while True:
            while self._busy and time.monotonic() < deadline:
                time.sleep(0)  # let it finish
            self._fold()
            pending = len(self._outstanding)
            if not (self._busy or self._inbox) or time.monotonic() >= deadline:
                return pending

    def _count(self, final: Result) -> None:
        outcome = final.outcome
        if outcome is None:  # refused by record/resolve already
            return
        self._outcomes[outcome] += 1
        self._reasons[outcome, str(final.reason)] += 1
        if final.status_code is not None:
            self._statuses[final.status_code] += 1

    def mark(self) -> list[int]:
        """A mark for ``wait_for``: the events pending now (admitted before this call)."""
        return list(self._outstanding)  # one C-level copy: no Python code runs in between

    def wait_for(
        self,
        mark: list[int],
        deadline: Optional[float],
    ) -> int:
        """Wait until every event in ``mark`` has an outcome, ``deadline``, or ``refusing()``.

        ``deadline`` is a ``time.monotonic()`` value (None: no bound). ``refusing`` is asked
        once the wait is registered and again when ``wake_waiters`` ends it early (the API
        refused the token: nothing will be sent). Returns how many of those events are
        still pending.
        """
        with self._lock:
            flush = _Flush(seq for seq in mark if seq in self._outstanding)
            if not flush.pending:
                return 0
            self._flushes.append(flush)
            # An event claimed while the set was built may have looked for flushes before
            # this one was listed: drop what is no longer pending.
            flush.pending.intersection_update(self._outstanding)
            if not flush.pending:
                self._flushes.remove(flush)
                return 0
        try:
            # Asked after registering: a ``wake_waiters`` from now on finds this wait.
            while not self.refusing():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not flush.done.wait(remaining):
                    break
                with self._lock:  # woken by ``wake_waiters``, or every event settled
                    if not flush.pending:
                        break
                    flush.done.clear()
        finally:
            with self._lock:
                self._flushes.remove(flush)
                left = len(flush.pending)
        return left

    def wake_waiters(self) -> None:
        """The token was refused: wake every ``wait_for`` and ``wait_final`` to ask
        ``refusing`` again."""
        with self._lock:
            for flush in self._flushes:
                flush.done.set()
            for waiting in self._waits.values():
                waiting.set()

    def wait_final(self, result: Tracked, timeout_s: Optional[float]) -> None:
        """Block until ``result`` has its final outcome, or ``timeout_s`` (None: no bound)."""
        with self._lock:
            if result._final is not None:
                return
            waiting = self._waits.get(result._seq)
            if waiting is None:
                waiting = self._waits[result._seq] = threading.Event()
            if result._final is not None:  # resolved while the wait was being listed
                del self._waits[result._seq]
                return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Asked after listing the wait: a ``wake_waiters`` from now on finds it.
        while not self.refusing():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not waiting.wait(remaining):
                return
            with self._lock:  # resolved, or woken by ``wake_waiters``
                if result._final is not None:
                    return
                waiting.clear()  # still listed: only its resolution unlists it

    def pending(self) -> int:
        """How many admitted events have no outcome yet."""
        return len(self._outstanding)

    def outstanding(self) -> list[Tracked]:
        """The events still pending, oldest first."""
        return list(self._outstanding.values())

    def counts(self) -> dict[str, int]:
        """Outcome counts and ``tracked``/``replayed``/``pending`` totals."""
        with self._lock:
            pending = self._settled()
            out = {outcome.value: self._outcomes[outcome] for outcome in Outcome}
            admitted = self._resolved + pending
            out["tracked"] = self._recorded + admitted - self._replayed
            out["replayed"] = self._replayed
            out["pending"] = pending
            return out

    def tally(self) -> dict[str, Any]:
        """Counts plus a breakdown by reason and by HTTP status."""
        with self._lock:
            counts: dict[str, Any] = self.counts()
            reasons: dict[str, dict[str, int]] = {}
            for (outcome, reason), n in sorted(self._reasons.items()):
                reasons.setdefault(outcome.value, {})[reason] = n
            counts["reasons"] = reasons
            counts["status_codes"] = {str(k): v for k, v in sorted(self._statuses.items())}
        return counts
