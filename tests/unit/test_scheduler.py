"""The scheduler: per-customer order, one in flight per customer, parking, no head-of-line."""

from __future__ import annotations

import random
from collections import defaultdict

from cms_shipper._engine.scheduler import Scheduler


def drain_in_order(sched: Scheduler[str]) -> list[str]:
    """Take and complete everything ready, one at a time."""
    sent = []
    while (picked := sched.take()) is not None:
        customer, item = picked
        sent.append(item)
        sched.complete(customer)
    return sent


def test_each_customer_keeps_its_order_and_only_one_is_out_at_a_time() -> None:
    sched: Scheduler[str] = Scheduler()
    for item in ["a1", "b1", "a2", "c1", "a3", "b2"]:
        sched.add(item[0], item)
    first = [sched.take() for _ in range(4)]
    # a, b and c each have one item out; a2 and b2 wait behind them.
    assert [p[1] if p else None for p in first] == ["a1", "b1", "c1", None]
    assert sched.in_flight == 3 and len(sched) == 6
    sched.complete("b")
    assert sched.take() == ("b", "b2")
    sched.complete("a")
    sched.complete("c")
    sched.complete("b")
    assert drain_in_order(sched) == ["a2", "a3"]
    assert len(sched) == 0 and sched.in_flight == 0


def test_a_parked_customer_holds_back_only_itself() -> None:
    sched: Scheduler[str] = Scheduler()
    sched.add("a", "a1")
    sched.add("a", "a2")
    assert sched.take() == ("a", "a1")
    sched.park("a", due=100.0)
    for i in range(5):
        sched.add(f"x{i}", f"x{i}")
    assert drain_in_order(sched) == [f"x{i}" for i in range(5)]
    assert sched.next_due() == 100.0
    sched.wake_due(99.9)
    assert sched.take() is None  # not due yet: a2 does not overtake the parked a1
    sched.wake_due(100.0)
    assert sched.next_due() is None
    assert drain_in_order(sched) == ["a1", "a2"]


def test_parked_customers_wake_in_due_order() -> None:
    sched: Scheduler[str] = Scheduler()
    for customer, due in [("a", 30.0), ("b", 10.0), ("c", 20.0)]:
        sched.add(customer, customer)
        assert sched.take() == (customer, customer)
        sched.park(customer, due)
    sched.wake_due(25.0)
    assert drain_in_order(sched) == ["b", "c"]
    sched.wake_due(30.0)
    assert drain_in_order(sched) == ["a"]


def test_requeued_head_goes_first_when_sending_resumes() -> None:
    sched: Scheduler[str] = Scheduler()
    for item in ["a1", "b1", "c1", "a2"]:
        sched.add(item[0], item)
    assert sched.take() == ("a", "a1")
    sched.requeue("a")  # a 429: not sent, not charged, first in line
    assert drain_in_order(sched) == ["a1", "b1", "c1", "a2"]


def test_items_lists_everything_held() -> None:
    sched: Scheduler[str] = Scheduler()
    for item in ["a1", "b1", "a2", "a3"]:
        sched.add(item[0], item)
    sched.take()
    sched.park("a", 5.0)
    assert sorted(sched.items()) == ["a1", "a2", "a3", "b1"]


def test_random_interleavings_keep_every_customers_order() -> None:
    rng = random.Random(1234)  # noqa: S311  # a reproducible interleaving, not crypto
    sched: Scheduler[tuple[str, int]] = Scheduler()
    added: dict[str, list[int]] = defaultdict(list)
    sent: dict[str, list[int]] = defaultdict(list)
    out: list[str] = []
    now = 0.0
    for step in range(5000):
        now += 1.0
        sched.wake_due(now)
        roll = rng.random()
        if roll < 0.4:
            customer = f"c{rng.randrange(20)}"
            added[customer].append(step)
            sched.add(customer, (customer, step))
        elif roll < 0.7 and (picked := sched.take()) is not None:
            assert picked[0] not in out  # one in flight per customer
            out.append(picked[0])
        elif out:
            customer = out.pop(rng.randrange(len(out)))
            fate = rng.random()
            if fate < 0.6:
                sent[customer].append(_head(sched, customer))
                sched.complete(customer)
            elif fate < 0.8:
                sched.park(customer, now + rng.randrange(1, 30))
            else:
                sched.requeue(customer)
    for customer, delivered in sent.items():
        assert delivered == added[customer][: len(delivered)]


def _head(sched: Scheduler[tuple[str, int]], customer: str) -> int:
    return next(step for c, step in sched.items() if c == customer)


def test_drop_waiting_keeps_only_the_heads_in_flight() -> None:
    sched: Scheduler[str] = Scheduler()
    for item in ["a1", "a2", "b1", "b2", "c1", "d1"]:
        sched.add(item[0], item)
    assert sched.take() == ("a", "a1")
    assert sched.take() == ("b", "b1")
    sched.park("b", due=10.0)  # parked: not in flight
    assert sched.take() == ("c", "c1")  # d1 stays ready, never taken
    sched.drop_waiting()
    assert len(sched) == 2 and sched.in_flight == 2 and not sched.has_ready()
    assert sorted(sched.items()) == ["a1", "c1"] and sched.next_due() is None
    sched.complete("a")  # the attempts still out end as usual, and nothing follows them
    sched.complete("c")
    assert len(sched) == 0 and sched.in_flight == 0 and sched.take() is None
