"""When to send: ``max_concurrent_requests`` sender threads around one scheduler.

There is no separate dispatcher thread handing work over: a sender that needs work takes
it itself, under one lock, from the scheduler (draining the queue into it when nothing is
ready), asks the health gate for a ticket, sends outside the lock, and reports back. An
idle sender sleeps until a batch is ready (the queue's ``notify``), ``flush_interval_s``
passes (one sender keeps that time for all), a parked retry is due, the gate reopens, or
``stop`` is set. No thread ever sleeps on behalf of one event.

``attempt(item, ticket)`` is the client's: it sends, consults the gate and the retry
policy, and returns a ``Step``: done (``finish(item, result)`` is then called outside the
lock, and before the customer's next item may be taken: an outcome that puts the event
in the spool is recorded before its follow-up can be sent), park until a due time, or
requeue at the head of its customer's line. It must not raise; a raise is logged and the
item finished with ``None``.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Any, Callable, Generic, Hashable, NamedTuple, Optional, TypeVar

from cms_shipper._engine.health import HealthGate, Ticket
from cms_shipper._engine.queue import EventQueue
from cms_shipper._engine.scheduler import Scheduler
from cms_shipper._log import logger

__all__ = ["Action", "Dispatcher", "Step"]

T = TypeVar("T")


class Action(enum.Enum):
    """What becomes of an item after an attempt."""

    DONE = "done"
    PARK = "park"
    REQUEUE = "requeue"


class Step(NamedTuple):
    """An attempt's result for the scheduler."""

    action: Action
    delay_s: float = 0.0  # PARK: how long until the retry
    result: Any = None  # DONE: handed to ``finish``


class Dispatcher(Generic[T]):
    """Lazily started sender threads sharing a scheduler, a queue and a health gate."""

    def __init__(
        self,
        queue: EventQueue[T],
        gate: HealthGate,
        *,
        key: Callable[[T], Hashable],
        attempt: Callable[[T, Ticket], Step],
        finish: Callable[[T, Any], None],
        senders: int,
        batch_size: int,
        flush_interval_s: float,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        name: str = "cms-shipper",
    ) -> None:
        self._queue = queue
        self._gate = gate
        self._key = key
        self._attempt = attempt
        self._finish = finish
        self._batch_size = batch_size
        self._interval_s = flush_interval_s
        self._stop = stop
        self._clock = clock
        # Re-entrant: queue.put() notifies from the caller's thread, and a signal handler
        # calling close() there may notify again before the first notify returned.
        self._cv = threading.Condition(threading.RLock())
        self._sched: Scheduler[T] = Scheduler()
        self._timekeeper = False  # an idle sender waits with the flush interval for all
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-sender-{i}", daemon=True)
            for i in range(senders)
        ]
        self._start_lock = threading.RLock()  # track_* starts the senders; so may a handler
        self._started = False
        queue.notify = self.notify

    def ensure_started(self) -> None:
        """Start the senders once; cheap to call on every event."""
        if self._started:
            return
        with self._start_lock:
            if self._started or self._stop.is_set():
                return
            for thread in self._threads:
                thread.start()
            self._started = True

    def notify(self) -> None:
        """Wake every idle sender (a batch is ready, a flush, a reopened gate, stop)."""
        with self._cv:
            self._cv.notify_all()

    def in_flight(self) -> int:
        """Items being sent right now."""
        return self._sched.in_flight

    def held(self) -> int:
        """Items taken from the queue and not finished: waiting, parked or in flight."""
        return len(self._sched)

    def _run(self) -> None:
        hot = False  # just finished an attempt: awake anyway, so it drains without waiting
        while True:
            picked = self._next(hot)
            hot = True
            if picked is None:
                return
            customer, item, ticket = picked
            try:
                step = self._attempt(item, ticket)
            except Exception:  # the host must never lose a sender to a bug of ours
                logger.exception("unexpected error while delivering an event")
                step = Step(Action.DONE)
            if step.action is Action.DONE:
                # Settled before the customer's next item becomes ready (``_apply``): a spill
                # is recorded, so the next item's hold-back sees it, whichever sender takes it.
                try:
                    self._finish(item, step.result)
                except Exception:
                    logger.exception("unexpected error while settling an event")
            self._apply(customer, step, ticket.probe)

    def _apply(self, customer: Hashable, step: Step, probe: bool) -> None:
        with self._cv:
            # Stopping: an item not done stays unsent and the caller settles it, so it
            # leaves the scheduler rather than be counted as scheduled after close().
            if step.action is Action.DONE or self._stop.is_set():
                self._sched.complete(customer)
            elif step.action is Action.PARK:
                self._sched.park(customer, self._clock() + step.delay_s)
            else:
                self._sched.requeue(customer)
            if probe:  # the probe's answer may have reopened the gate for everybody
                self._cv.notify_all()

    def _next(self, may_drain: bool) -> Optional[tuple[Hashable, T, Ticket]]:
        """The next item to send with its ticket; blocks while there is none; None on stop.

        The queue is drained only when nothing is ready, and before due retries rejoin
        the line: new customers go first, so a lone retry is not sent back to back while
        others wait (and the gate sees whether a failure is one customer's or everybody's).
        A fresh sender sleeps first, so the first events go out as a batch.
        """
        sched = self._sched
        with self._cv:
            while not self._stop.is_set():
                now = self._clock()
                if may_drain and not sched.has_ready():
                    for item in self._queue.take(self._batch_size):
                        sched.add(self._key(item), item)
                sched.wake_due(now)
                wait = float("inf")
                if sched.has_ready():
                    ticket, wait = self._gate.admit()
                    picked = sched.take() if ticket is not None else None
                    if picked is not None and ticket is not None:
                        if sched.has_ready() or self._queue.depth():
                            self._cv.notify()  # more work: wake one more idle sender
                        return picked[0], picked[1], ticket
                due = sched.next_due()
                if due is not None:
                    wait = min(wait, due - now)
                self._sleep(wait)
                may_drain = True
        return None

    def _sleep(self, wait: float) -> None:
        # Puts below a batch notify nobody: one idle sender wakes every flush_interval_s so
        # that a lone queued event waits no longer than that.
        keeper = not self._timekeeper
        if keeper:
            self._timekeeper = True
            wait = min(wait, self._interval_s)
        try:
            self._cv.wait(None if wait == float("inf") else max(wait, 0.0))
        finally:
            if keeper:  # hand the clock to another idle sender, if there is one
                self._timekeeper = False
                self._cv.notify()

    def stop(self, timeout_s: Optional[float]) -> None:
        """Tell every sender to stop after its current attempt and wait at most ``timeout_s``.

        Items not yet sent stay where they are; the caller settles them, then
        ``discard_unsent`` lets go of them.
        """
        self._stop.set()
        self.notify()
        if not self._started:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)

    def discard_unsent(self) -> None:
        """After ``stop``: let go of every item not in flight, queued or scheduled.

        The caller settles them (``close()``); this only keeps ``held`` and the queue's
        depth truthful. Queued items are taken, so their slots are released by the
        ``task_done`` that settles each.
        """
        with self._cv:
            while self._queue.take(self._batch_size):
                pass
            self._sched.drop_waiting()
