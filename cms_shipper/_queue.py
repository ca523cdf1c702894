"""The bounded, thread-safe hand-off between callers and the worker.

The bound counts *unfinished* events, as ``queue.Queue.unfinished_tasks`` does: an event
taken by the worker still holds its slot until ``task_done`` says it has an outcome. So
``max_queue_size`` bounds all the memory the shipper holds, not just the waiting room.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, Optional, TypeVar

__all__ = ["EventQueue"]

T = TypeVar("T")


class EventQueue(Generic[T]):
    """A FIFO bounded by unfinished items that wakes its consumer on size or on demand."""

    def __init__(self, maxsize: int, batch_size: int) -> None:
        self._maxsize = maxsize
        self._batch_size = batch_size
        self._items: deque[T] = deque()
        self._unfinished = 0
        self._lock = threading.Lock()
        # An Event, not a Condition: put() only pays for set() when a batch becomes ready.
        self._ready = threading.Event()
        # Set by wake() and kept until the queue is empty, so a flush drains every batch
        # back to back instead of sleeping flush_interval_s between them.
        self._urgent = False

    def put(self, item: T) -> bool:
        """Append ``item``; return False (and keep nothing) when the queue is full."""
        with self._lock:
            if self._unfinished >= self._maxsize:
                return False
            self._unfinished += 1
            self._items.append(item)
            ready = len(self._items) == self._batch_size
        if ready:
            self._ready.set()
        return True

    def wake(self) -> None:
        """Make the consumer return from ``wait`` at once until the queue is empty."""
        with self._lock:
            self._urgent = True
        self._ready.set()

    def wait(self, timeout_s: Optional[float]) -> None:
        """Block until a batch is ready, ``wake`` is called, or ``timeout_s`` passes."""
        if self._urgent or len(self._items) >= self._batch_size:
            return
        self._ready.wait(timeout_s)

    def take(self, limit: int) -> list[T]:
        """Remove and return up to ``limit`` items, oldest first; never blocks."""
        with self._lock:
            count = min(limit, len(self._items))
            batch = [self._items.popleft() for _ in range(count)]
            # Re-arm only below a full batch, so a backlog is never slept on.
            if not self._items:
                self._urgent = False
                self._ready.clear()
            elif len(self._items) < self._batch_size and not self._urgent:
                self._ready.clear()
        return batch

    def task_done(self, count: int = 1) -> None:
        """Release the slots of ``count`` items that now have an outcome."""
        with self._lock:
            self._unfinished = max(0, self._unfinished - count)

    def depth(self) -> int:
        """Items waiting to be taken."""
        return len(self._items)

    def unfinished(self) -> int:
        """Items put and not yet marked done (waiting, in a lane or in flight)."""
        return self._unfinished
