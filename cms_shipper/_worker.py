"""When to send: the daemon dispatcher and its ordered lanes.

The dispatcher drains the queue in batches (when a batch is ready, when
``flush_interval_s`` passes, or when woken by flush/close) and hands each item to lane
``hash(key(item)) % lanes``. A lane is one thread that processes its items strictly one after
another, so items with the same key keep their order, also across retries; up to
``lanes`` items are in flight at once. The worker knows nothing of HTTP: ``process`` is
the client's, and must not raise (a raise is logged and the lane carries on).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, Optional, TypeVar

from cms_shipper._log import logger
from cms_shipper._queue import EventQueue

__all__ = ["Worker"]


T = TypeVar("T")


class _Lane(Generic[T]):
    """A FIFO served by one thread."""

    def __init__(self, name: str, process: Callable[[T], None], stop: threading.Event) -> None:
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._process = process
        self._stop = stop
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._stop.is_set())
                if self._stop.is_set():
                    return
                item = self._items.popleft()
                self.busy = True
            try:
                self._process(item)
            except Exception:  # the host must never lose its worker to a bug of ours
                logger.exception("cms_shipper: unexpected error while delivering an event")
            finally:
                self.busy = False


class Worker(Generic[T]):
    """A lazily started dispatcher thread feeding ``lanes`` ordered sender threads."""

    def __init__(
        self,
        queue: EventQueue[T],
        process: Callable[[T], None],
        *,
        key: Callable[[T], str],
        lanes: int,
        batch_size: int,
        flush_interval_s: float,
        stop: threading.Event,
        name: str = "cms-shipper",
    ) -> None:
        self._queue = queue
        self._key = key
        self._batch_size = batch_size
        self._interval_s = flush_interval_s
        self._stop = stop
        self._lanes = [_Lane(f"{name}-lane-{i}", process, stop) for i in range(lanes)]
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._start_lock = threading.Lock()
        self._started = False

    def ensure_started(self) -> None:
        """Start the threads once; cheap to call on every event."""
        if self._started:
            return
        with self._start_lock:
            if self._started or self._stop.is_set():
                return
            for lane in self._lanes:
                lane.thread.start()
            self._thread.start()
            self._started = True

    def in_flight(self) -> int:
        """Items a lane is processing right now."""
        return sum(lane.busy for lane in self._lanes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._queue.wait(self._interval_s)
            if self._stop.is_set():
                return
            for item in self._queue.take(self._batch_size):
                self._lanes[hash(self._key(item)) % len(self._lanes)].put(item)

    def stop(self, timeout_s: Optional[float]) -> None:
        """Tell every thread to stop after its current item and wait at most ``timeout_s``.

        Items not yet processed stay where they are; the caller settles them.
        """
        self._stop.set()
        self._queue.wake()
        for lane in self._lanes:
            lane.wake()
        if not self._started:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in [self._thread, *(lane.thread for lane in self._lanes)]:
            if thread is not threading.current_thread():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
