"""The bounded queue: bound by unfinished items, batching wake-ups, urgent drain."""

from __future__ import annotations

import threading
import time

from cms_shipper._queue import EventQueue


def test_bound_counts_unfinished_items_not_just_waiting_ones() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=3, batch_size=10)
    assert all(queue.put(i) for i in range(3))
    assert queue.put(3) is False
    assert queue.take(10) == [0, 1, 2]
    assert queue.depth() == 0 and queue.unfinished() == 3
    assert queue.put(4) is False  # taken but not done still holds its slot
    queue.task_done(2)
    assert queue.put(5) and queue.put(6)
    assert queue.put(7) is False


def test_take_is_fifo_and_bounded_by_limit() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=100, batch_size=10)
    for i in range(25):
        queue.put(i)
    assert queue.take(10) == list(range(10))
    assert queue.take(100) == list(range(10, 25))
    assert queue.take(5) == []


def test_wait_returns_when_a_batch_is_ready() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=100, batch_size=3)
    woke = threading.Event()

    def consumer() -> None:
        queue.wait(30.0)
        woke.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    queue.put(1)
    queue.put(2)
    assert not woke.wait(0.05)  # below a batch, the consumer keeps sleeping
    queue.put(3)
    assert woke.wait(10.0)
    thread.join(10.0)


def test_wake_stays_urgent_until_the_queue_is_empty() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=100, batch_size=10)
    for i in range(25):
        queue.put(i)
    queue.wake()
    drained: list[int] = []
    for _ in range(3):
        queue.wait(30.0)  # would block 30 s per call if the flush request were forgotten
        drained += queue.take(10)
    assert drained == list(range(25))
    queue.put(99)
    started = time.monotonic()
    queue.wait(0.2)  # no longer urgent and below a batch: sleeps its interval
    assert time.monotonic() - started >= 0.15
