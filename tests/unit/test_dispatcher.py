"""The sender threads around the scheduler, with a scripted attempt instead of HTTP."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Callable

from cms_shipper._engine.dispatcher import Action, Dispatcher, Step
from cms_shipper._engine.health import HealthGate, Ticket
from cms_shipper._engine.queue import EventQueue

Item = tuple[str, int]  # (customer, n)


class Harness:
    """A dispatcher whose attempts follow ``script`` and are recorded."""

    def __init__(self, script: Callable[[Item, int], Step], senders: int = 4) -> None:
        self.queue: EventQueue[Item] = EventQueue(maxsize=100_000, batch_size=10)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tries: dict[Item, int] = defaultdict(int)
        self.attempted: list[Item] = []
        self.finished: list[Item] = []
        self.in_flight: set[str] = set()
        self.overlap = False
        self.script = script
        self.done = threading.Condition()
        self.dispatcher = Dispatcher(
            self.queue, HealthGate(), key=lambda item: item[0], attempt=self.attempt,
            finish=self.finish, senders=senders, batch_size=10, flush_interval_s=0.01,
            stop=self.stop,
        )  # fmt: skip

    def attempt(self, item: Item, ticket: Ticket) -> Step:
        with self.lock:
            self.overlap |= item[0] in self.in_flight
            self.in_flight.add(item[0])
            self.tries[item] += 1
            self.attempted.append(item)
            tries = self.tries[item]
        time.sleep(0.001)  # a request on the wire: the GIL is released, others run
        with self.lock:
            self.in_flight.discard(item[0])
        return self.script(item, tries)

    def finish(self, item: Item, result: Any) -> None:
        with self.done:
            self.finished.append(item)
            self.done.notify_all()

    def put(self, items: list[Item]) -> None:
        for item in items:
            assert self.queue.put(item)
        self.dispatcher.ensure_started()
        self.queue.wake()

    def wait_finished(self, n: int, timeout_s: float = 10.0) -> bool:
        with self.done:
            return self.done.wait_for(lambda: len(self.finished) >= n, timeout_s)

    def close(self) -> None:
        self.dispatcher.stop(5.0)


def test_a_parked_customer_never_holds_back_the_others() -> None:
    def script(item: Item, tries: int) -> Step:
        if item[0] == "slow":  # its first event waits 30 s for a retry
            return Step(Action.PARK, delay_s=30.0)
        return Step(Action.DONE)

    h = Harness(script)
    h.put([("slow", 0), ("slow", 1)] + [(f"c{i}", 0) for i in range(200)])
    assert h.wait_finished(200)
    assert {c for c, _ in h.finished} == {f"c{i}" for i in range(200)}
    # slow's second event never went out ahead of its parked first one.
    assert ("slow", 1) not in h.attempted and h.tries[("slow", 0)] == 1
    assert h.dispatcher.held() == 2 and h.dispatcher.in_flight() == 0
    h.close()


def test_order_per_customer_and_one_in_flight_per_customer_through_retries() -> None:
    def script(item: Item, tries: int) -> Step:
        if (item[1] + tries) % 3 == 0:
            return Step(Action.PARK, delay_s=0.002)
        if (item[1] + tries) % 5 == 0:
            return Step(Action.REQUEUE)
        return Step(Action.DONE)

    h = Harness(script)
    items = [(f"c{n % 7}", n) for n in range(300)]
    h.put(items)
    assert h.wait_finished(300)
    for customer in {c for c, _ in items}:
        mine = [n for c, n in h.finished if c == customer]
        assert mine == sorted(mine) == [n for c, n in items if c == customer]
    assert not h.overlap
    h.close()


def test_a_lone_event_leaves_within_the_flush_interval() -> None:
    h = Harness(lambda item, tries: Step(Action.DONE))
    h.dispatcher.ensure_started()
    started = time.monotonic()
    assert h.queue.put(("c", 1))  # below a batch and no wake(): the time keeper's job
    assert h.wait_finished(1, timeout_s=5.0)
    assert time.monotonic() - started < 2.0
    h.close()


def test_stop_ends_every_sender_promptly() -> None:
    h = Harness(lambda item, tries: Step(Action.PARK, delay_s=60.0))
    h.put([(f"c{i}", 0) for i in range(10)])
    deadline = time.monotonic() + 5.0
    while len(h.attempted) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    h.close()
    assert time.monotonic() - started < 2.0
    assert not any(t.is_alive() for t in h.dispatcher._threads)
