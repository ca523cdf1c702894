"""The bounded queue: bound by unfinished items, one notify per batch, FIFO takes."""

from __future__ import annotations

from cms_shipper._engine.queue import EventQueue


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


def test_notifies_once_per_batch_and_again_after_a_take() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=1000, batch_size=3)
    calls: list[int] = []
    queue.notify = lambda: calls.append(queue.depth())
    for i in range(2):
        queue.put(i)
    assert calls == []  # below a batch: nobody is woken
    for i in range(2, 10):
        queue.put(i)
    assert calls == [3]  # once, when the batch became ready
    queue.take(100)
    for i in range(3):
        queue.put(i)
    assert calls == [3, 3]


def test_wake_notifies_whatever_is_waiting() -> None:
    queue: EventQueue[int] = EventQueue(maxsize=100, batch_size=10)
    calls: list[int] = []
    queue.notify = lambda: calls.append(queue.depth())
    queue.put(1)
    queue.wake()
    assert calls == [1]
