"""Which customers this process must hold back because of the spool: per-customer order.

A customer is held back while the spool has rows of it that no live process holds
(spilled, left at shutdown, a dead process's: *waiting*), rows this process claimed for
replay and has not settled yet (*replaying*), or spills of this process on their way into
the file (the spill writer's backlog, a move the file was too busy for: *coming*). A new
event of such a customer must not be sent before them; the client saves it behind them
instead (once the coming ones are in the file).

Counts only: the ``Spool`` changes them after each commit, under its lock, so a recount
(``recount``) and an incremental change never miss or double-count each other. A spill
is counted *coming* before it is handed on and uncounted only after its commit counted it
waiting, so a customer's line never looks empty in between. Readers
(``holds_back``) take no lock: one dict lookup each.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from cms_shipper._events import Event

__all__ = ["Lines"]


def _counted(customers: Iterable[str], n: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for customer in customers:
        out[customer] = out.get(customer, 0) + n
    return out


def _shift(counts: dict[str, int], delta: Mapping[str, int]) -> None:
    for customer, n in delta.items():
        left = counts.get(customer, 0) + n
        if left > 0:
            counts[customer] = left
        else:
            counts.pop(customer, None)


class Lines:
    """Per-customer counts of spooled events that go before the customer's new ones."""

    def __init__(self) -> None:
        self._waiting: dict[str, int] = {}  # customer -> rows no live process holds
        self._claimed: dict[str, str] = {}  # event id -> customer: claimed, not settled
        self._replaying: dict[str, int] = {}  # customer -> claimed events not settled
        self._coming: dict[str, int] = {}  # customer -> spills not yet in the file
        self._coming_lock = threading.Lock()  # changed by callers, senders and the writer

    def holds_back(self, customer: str) -> bool:
        """True while an older event of ``customer`` waits in the spool or is being replayed."""
        return bool(
            self._waiting.get(customer)
            or self._replaying.get(customer)
            or self._coming.get(customer)
        )

    def coming(self, customer: str) -> bool:
        """True while a spill of ``customer``'s is on its way into the file (not there yet)."""
        return bool(self._coming.get(customer))

    def expect(self, customers: Iterable[str], n: int = 1) -> None:
        """Spills of these customers are on their way (``n`` = 1), or arrived (``n`` = -1)."""
        with self._coming_lock:
            _shift(self._coming, _counted(customers, n))

    def changed(self, delta: Mapping[str, int], settled: Iterable[str] = ()) -> None:
        """After a commit: rows waiting changed by ``delta``; ``settled`` event ids are done."""
        _shift(self._waiting, delta)
        done: Counter[str] = Counter()
        for event_id in settled:
            customer = self._claimed.pop(event_id, None)
            if customer is not None:
                done[customer] -= 1
        if done:
            _shift(self._replaying, done)

    def claimed(self, events: Sequence[Event]) -> None:
        """After a claim's commit: these events are this process's now, replaying."""
        taken = Counter(event.customer_key for event in events)
        _shift(self._waiting, {customer: -n for customer, n in taken.items()})
        _shift(self._replaying, taken)
        self._claimed.update((event.event_id, event.customer_key) for event in events)

    def recount(self, waiting: Mapping[str, int]) -> None:
        """After a recount's commit: the rows waiting, as the file has them."""
        self._waiting = dict(waiting)
