"""One client's machinery in one process: queue, books, engine, durability.

``CMSClient`` is the handle the application holds; ``Pipeline`` is what does the work, and
nothing in it refers back to the handle. So a handle the application drops can be collected
while its pipeline lives on: the process's registry (``_process``) holds the pipeline until
it is closed, retires it when its handle is collected (deliver what was accepted, then
stop the threads) and closes it at exit with the rest.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from typing import Callable, Optional

from cms_shipper._books import Ledger, Reporter, Settler, build_stats, dropped, invalid
from cms_shipper._config import Settings, wait_budget
from cms_shipper._durability import Durability
from cms_shipper._engine import Engine, EventQueue, HealthGate
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog, flush_suppressed, logger
from cms_shipper.errors import ValidationError
from cms_shipper.results import FlushResult, Reason, Result, Stats, Tracked, TrackResult

__all__ = ["Pipeline"]


class Pipeline:
    """The per-process machinery behind one ``CMSClient``; rebuilt in a forked child."""

    def __init__(self, settings: Settings, durability: Durability) -> None:
        self.settings = settings
        self.closed = False
        # Told once this pipeline is closed (the process's registry lets go of it).
        self.on_closed: Callable[[Pipeline], None] = _nothing
        self.durability = durability
        self._start_fresh()

    def _start_fresh(self) -> None:
        """Build the per-process machinery: at construction, and again in a forked child.

        A child inherits copies of the parent's queue, locks (possibly held) and the
        threads' state, but not the threads: it gets new ones, started lazily. The events
        the parent had queued stay the parent's to deliver.
        """
        s = self.settings
        self.pid = os.getpid()
        self.retiring = False  # the handle was collected: settle what is left, then close
        self.ledger = Ledger()
        self._queue: EventQueue[Tracked] = EventQueue(s.max_queue_size, s.batch_size)
        # What the senders take from: this queue, or (fleet mode) what the fleet handed us.
        self._source = self.durability.delivery_queue(self._queue)
        reporter = Reporter(s, RateLimitedLog())
        self._settler = Settler(self.ledger, self._source.task_done, reporter, self.durability)
        self._engine = Engine(
            s,
            self._source,
            key=_customer_key,
            settle=self._from_sender,
            durability=self.durability,
            refused=self.ledger.wake_waiters,  # flush() and wait() stop waiting for a token
        )  # the API refuses: nothing can be sent until it accepts one
        self.ledger.refusing = self._engine.gate.refusing_token
        self._sync_seqs = itertools.count(-1, -1)  # sync_mode events never enter the ledger
        self._ids = itertools.count(1)
        # Random per client and process: ids stay unique across processes without paying
        # for a uuid4 on every event.
        self._id_prefix = f"evt_{secrets.token_hex(6)}_"
        self._close_lock = threading.Lock()
        self._closer: Optional[int] = None  # the thread inside close(), if any
        self._close_result: Optional[FlushResult] = None
        self.durability.attach(self)

    def after_fork(self) -> None:
        """In a forked child (pid changed): new machinery of its own; else nothing."""
        if self.pid != os.getpid():
            self.durability.after_fork()  # no connection or lock may cross a fork
            self._start_fresh()

    def next_id(self) -> str:
        """A new event id, unique across clients and processes."""
        return f"{self._id_prefix}{next(self._ids)}"

    # -- tracking (caller's thread: no network, no raising) ----------------------------

    def refuse(self, exc: ValidationError) -> TrackResult:
        """The answer to an event that failed validation: counted, reported, never raised."""
        try:
            return self._settler.at_once(invalid(exc))
        except Exception:
            return self.internal_error(None)

    def submit(self, event: Event) -> TrackResult:
        """Queue a valid event (or settle it at once: closed, disabled, ``sync_mode``)."""
        item: Optional[Tracked] = None
        try:
            if self.pid != os.getpid():
                # Some servers fork without running os.register_at_fork hooks.
                self.after_fork()
            early = self._settled_at_once(event)
            if early is not None:
                return early
            item = Tracked(event)
            self.ledger.admit(item)
            return self._enqueue(item, event)
        except Exception:  # a bug of ours must never reach the caller, nor strand the event
            return self.internal_error(item)

    def _settled_at_once(self, event: Event) -> Optional[TrackResult]:
        """The outcome of an event that is not queued: closed, disabled, or sync_mode."""
        s = self.settings
        if self.closed:
            return self._settler.at_once(
                dropped(event, Reason.CLOSED, "the client is closed; event not sent")
            )
        if s.disabled:
            return self._settler.at_once(
                dropped(event, Reason.DISABLED, "disabled=True: validated, not sent", success=True)
            )
        if not s.sync_mode:
            return None
        receipt = Tracked(event)
        receipt._seq = next(self._sync_seqs)
        held = self.durability.hold_back(receipt)  # older events of its customer wait?
        if isinstance(held, Result):
            return self._settler.at_once(held)
        final = self._engine.send_now(receipt, s.retry_max_elapsed_s)
        return self._settler.at_once(self.durability.settle_one(receipt, final))

    def _enqueue(self, result: Tracked, event: Event) -> TrackResult:
        s = self.settings
        self.durability.write_ahead(result)  # with a spool's write_ahead: kept before returning
        if not self._queue.put(result):
            final = dropped(
                event,
                Reason.QUEUE_FULL,
                f"queue full (max_queue_size={s.max_queue_size}); event dropped",
            )
            if self.durability.overflow(result, final):
                if result._final is not None:  # settled at once: the spool is full
                    return self._settler.answer(result._final)
                # With a spool: its writer thread stores the event and settles it (spooled);
                # this thread never waits for the file.
                return TrackResult(
                    result,
                    self.ledger,
                    success=True,
                    message="queue full; being saved to the spool",
                    event_id=event.event_id,
                    event=event,
                )
            final = self._settler.finish(result, final, queued=False)
            return self._settler.answer(final)
        if self.closed:
            # close() ran meanwhile (in another thread, or a signal handler in this one) and
            # may have settled the pending events before this one was admitted. Settle it
            # here; if close() did see it, the ledger keeps the first outcome.
            late = dropped(event, Reason.CLOSED, "the client closed while the event was tracked")
            self._settler.finish(result, late)
            return self._settler.answer(result.final or late)
        self._engine.start()
        self.durability.start_replay()  # in a forked child, replay starts here
        return TrackResult(
            result,
            self.ledger,
            success=True,
            queued=True,
            message="queued",
            event_id=event.event_id,
            event=event,
        )

    def internal_error(self, result: Optional[Tracked]) -> TrackResult:
        """A bug of ours inside ``track_*``: logged, counted, answered; never raised."""
        logger.exception("internal error in track_*; event dropped and counted")
        return self._settler.internal_error(result)

    # -- what durability sees of the pipeline (``_durability.Host``) ---------------------

    @property
    def gate(self) -> HealthGate:
        """The engine's health gate."""
        return self._engine.gate

    def feed(self, item: Tracked) -> None:
        """Feed an event kept by durability back into the pipeline (its replay thread)."""
        self.ledger.admit(item, replayed=True)
        if not self._queue.put(item):
            self._settler.finish(
                item, dropped(item.event, Reason.QUEUE_FULL, "queue full"), queued=False
            )
            return
        self._engine.start()

    def room(self) -> int:
        """How many more events the queue takes now."""
        return self.settings.max_queue_size - self._queue.unfinished()

    def admit(self, item: Tracked) -> None:
        """Count an event durability queues for this process's senders itself (replayed)."""
        self.ledger.admit(item, replayed=True)

    def finish(self, item: Tracked, final: Result) -> None:
        """Give an admitted event its outcome (another fleet member delivered it)."""
        self._settler.finish(item, final, queued=False)

    def start_senders(self) -> None:
        """Start the senders, once."""
        self._engine.start()

    def _from_sender(self, item: Tracked, final: Optional[Result]) -> None:
        if item._seq or final is None:
            self._settler.from_sender(item, final)
            return
        # Never admitted here: sent for another live fleet member, whose books count it.
        self.durability.settle_one(item, final)
        self._source.task_done()

    # -- flushing and lifecycle -------------------------------------------------------

    def start_replay(self) -> None:
        """Start replay (and fleet membership) once: at the first event or ``flush()``."""
        if self.pid != os.getpid():
            self.after_fork()  # forked without the fork hooks (uWSGI)
        self.durability.start_replay()

    def wake(self) -> None:
        """Send what is queued now rather than at the next batch or interval."""
        self._queue.wake()

    def pending(self) -> int:
        """Events accepted here that have no outcome yet."""
        return self.ledger.pending()

    def retire(self) -> None:
        """The handle is gone: claim nothing more from the spool, send what is queued now."""
        self.retiring = True
        self.durability.halt()
        self._queue.wake()

    def flush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``CMSClient.flush``: wait for the events pending now, at most ``timeout_s``."""
        budget = wait_budget(timeout_s, self.settings.flush_timeout_s)
        if not self.closed:
            self.start_replay()  # a process that has tracked nothing drains its spool from here
        mark = self.ledger.mark()
        self._queue.wake()
        # Nothing can be sent while the API refuses the token: the wait ends when it does.
        pending = self.ledger.wait_for(mark, time.monotonic() + budget)
        return self._settler.flush_result(pending)

    def close(
        self, timeout_s: Optional[float] = None, *, deadline: Optional[float] = None
    ) -> FlushResult:
        """``CMSClient.close``: flush within the budget, settle the rest, stop; idempotent.

        ``deadline`` (monotonic), when given, ends the wait earlier than ``timeout_s`` from
        now: the exit hook closes every client of the process against one start.
        """
        budget = wait_budget(timeout_s, self.settings.shutdown_timeout_s)
        own = time.monotonic() + budget
        deadline = own if deadline is None else min(own, deadline)
        budget_left = max(0.0, deadline - time.monotonic())
        reporter = self._settler.reporter
        if self._closer == threading.get_ident():
            return self._counts_now()  # re-entered: a signal handler interrupted this close
        # A callback must not wait for a close that is waiting for the callbacks to finish.
        wait_s = 0.0 if reporter.on_callback_thread() else budget_left
        if not self._close_lock.acquire(timeout=wait_s):
            return self._counts_now()  # another close() is at work; this one keeps its deadline
        try:
            if self._close_result is None:
                self._closer = threading.get_ident()
                self._close_result = self._shut_down(budget, deadline)
            return self._close_result
        finally:
            self._closer = None
            self._close_lock.release()

    def _shut_down(self, budget: float, deadline: float) -> FlushResult:
        self.closed = True
        self.durability.halt()  # claim nothing more from the spool
        self.flush(max(0.0, deadline - time.monotonic()))  # at once while the token is refused
        in_flight = self._engine.transport.sent_in_flight()  # not those refused or connecting
        abandoned = self.ledger.outstanding()
        self._engine.stop(deadline, abandoned)
        refused = self._engine.gate.refusing_token()
        reason = Reason.UNAUTHORIZED if refused else Reason.SHUTDOWN
        self._settler.abandon(abandoned, budget, in_flight, reason)
        # The counts after close's own settling: what it dropped or spooled is in them, and
        # ``pending`` is what is really left (nothing, unless an event raced in).
        result = self._settler.flush_result(self.ledger.pending(), timed_out=bool(abandoned))
        self._engine.close_connections()
        if self._engine.in_flight() == 0:
            # With requests still in flight the spool stays open, so a late answer can
            # still remove its event's row (closed at interpreter exit).
            self.durability.close()
        left = self._settler.reporter.drain(max(0.0, deadline - time.monotonic()))
        if left:
            logger.warning(
                "%d callback(s) had not run by the end of the %g s close budget; "
                "they run later on the callback thread if the process lives on",
                left,
                budget,
            )
        self._settler.reporter.stop()  # the callback thread ends once its queue is empty
        # The log accounts for every event: the repeats it collapsed, then the totals.
        flush_suppressed()
        self._settler.summarise()
        self.on_closed(self)
        return result

    def _counts_now(self) -> FlushResult:
        return self._settler.flush_result(self.ledger.counts()["pending"])

    def stats(self) -> Stats:
        """``CMSClient.stats``: counts, queue, engine, durability."""
        depth = self._queue.depth()
        if self._source is not self._queue:
            depth += self._source.depth()
        return build_stats(
            self.ledger.tally(),
            depth,
            self._engine.state(),
            self.durability.stats(),
            self.closed,
        )


def _nothing(_: Pipeline) -> None:
    pass


def _customer_key(result: Tracked) -> str:
    return event_of(result).customer_key
