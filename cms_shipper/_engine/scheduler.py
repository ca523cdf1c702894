"""Which event goes next: one FIFO per customer, at most one of its events out at a time.

A customer's events leave strictly in the order they were added; the head stays at the
front while it is in flight or parked for its retry, so nothing of that customer overtakes
it. Other customers are not held back by it: ``take`` serves the customers that have a
sendable head, oldest-ready first. A parked head waits for its due time, and no thread
sleeps for it: ``wake_due`` moves due customers back to the ready line, and ``next_due``
says when the next one is due.

Pure bookkeeping on the caller's clock; not thread-safe (the dispatcher holds its lock).
Memory matters here, since a backlog of events can sit in it: a customer with one event
holds the item itself, and only a customer with several gets a ``deque``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Generic, Hashable, Iterator, Optional, TypeVar

__all__ = ["Scheduler"]

T = TypeVar("T")


class _Many(deque):  # type: ignore[type-arg]
    """A customer's FIFO once it holds more than one item (a marker type, nothing more)."""

    __slots__ = ()


class Scheduler(Generic[T]):
    """Per-customer FIFOs, a ready line of customers, and parked customers by due time."""

    def __init__(self) -> None:
        self._fifos: dict[Hashable, object] = {}  # customer -> item, or _Many of items
        self._ready: deque[Hashable] = deque()  # customers whose head may go out now
        self._parked: list[tuple[float, int, Hashable]] = []  # heap: (due, seq, customer)
        self._seq = itertools.count()
        self._size = 0
        self.in_flight = 0

    def __len__(self) -> int:
        """Items held: waiting, parked or in flight."""
        return self._size

    def add(self, customer: Hashable, item: T) -> None:
        """Append ``item`` to its customer's FIFO (ready at once if the customer was idle)."""
        held = self._fifos.get(customer, _ABSENT)
        if held is _ABSENT:
            self._fifos[customer] = item
            self._ready.append(customer)
        elif type(held) is _Many:
            held.append(item)
        else:
            self._fifos[customer] = _Many((held, item))
        self._size += 1

    def has_ready(self) -> bool:
        """True if ``take`` would return an item."""
        return bool(self._ready)

    def take(self) -> Optional[tuple[Hashable, T]]:
        """The next sendable head and its customer, now in flight; None if none is ready."""
        if not self._ready:
            return None
        customer = self._ready.popleft()
        self.in_flight += 1
        return customer, self._head(customer)

    def _head(self, customer: Hashable) -> T:
        held = self._fifos[customer]
        return held[0] if type(held) is _Many else held  # type: ignore[return-value]

    def complete(self, customer: Hashable) -> None:
        """The in-flight head has its outcome: drop it; the customer's next item is ready."""
        self.in_flight -= 1
        self._size -= 1
        held = self._fifos[customer]
        if type(held) is _Many:
            held.popleft()
            if len(held) == 1:
                self._fifos[customer] = held[0]
            self._ready.append(customer)
        else:
            del self._fifos[customer]

    def park(self, customer: Hashable, due: float) -> None:
        """The in-flight head waits for its retry until ``due``; the customer waits with it."""
        self.in_flight -= 1
        heapq.heappush(self._parked, (due, next(self._seq), customer))

    def requeue(self, customer: Hashable) -> None:
        """The in-flight head goes back unsent (paused API): first in line when sending resumes."""
        self.in_flight -= 1
        self._ready.appendleft(customer)

    def wake_due(self, now: float) -> None:
        """Move every customer whose parked head is due by ``now`` to the ready line."""
        parked = self._parked
        while parked and parked[0][0] <= now:
            self._ready.append(heapq.heappop(parked)[2])

    def next_due(self) -> Optional[float]:
        """When the earliest parked head is due; None if nothing is parked."""
        return self._parked[0][0] if self._parked else None

    def drop_waiting(self) -> None:
        """Forget every item not in flight (closing: the books settle them); keep in-flight heads.

        A customer in flight is one neither ready nor parked: only its head is kept, so
        ``complete`` still finds it when its attempt ends.
        """
        idle = set(self._ready)
        idle.update(customer for _, _, customer in self._parked)
        kept: dict[Hashable, object] = {}
        for customer, held in self._fifos.items():
            if customer not in idle:
                kept[customer] = held[0] if type(held) is _Many else held
        self._fifos = kept
        self._ready.clear()
        self._parked.clear()
        self._size = len(kept)

    def items(self) -> Iterator[T]:
        """Every item held, customer by customer, each customer's oldest first."""
        for held in self._fifos.values():
            if type(held) is _Many:
                yield from held
            else:
                yield held  # type: ignore[misc]


_ABSENT = object()
