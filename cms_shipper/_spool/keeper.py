"""The client's use of the on-disk spool: write-ahead, spills, settling rows, replay.

The spool (``_spool.Spool``) only stores; this module decides. An event that would be lost
(queue full, retries exhausted on a retryable failure, still pending at shutdown) is
spooled instead, and one with a final answer (delivered, duplicate, rejected) has its row
removed (a written-ahead event's journal record is marked done; a spilled or held-back one
is moved into line; ``_spool_plan`` sorts them). Per-customer order holds
through the spool: while an older event of a customer waits in the spool (or is being
replayed), a newer one is not sent but saved behind it (``hold_back``), and claims replay
each customer's events in tracking order.
Spool trouble is logged and counted and never reaches the host: the client goes on in
memory (``handle.SpoolHandle``: the spool made at the first need, its counters).
``track_*``'s write-ahead never waits for the file (the journal is memory-mapped), and every
other wait is bounded (``SETTLE_WAIT_S``, ...), so neither ``track_*`` nor ``close()``
waits on another process's disk lock.

A forked child drops the spool it inherited (connection, journal, owner lock: the
parent's) and makes its own at its first need (``_spool.forks``: no connection crosses a
fork, the parent closes its file before every fork and reopens it after).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Callable, Optional, Union

from cms_shipper._config import Settings
from cms_shipper._durability import Host, Q
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog
from cms_shipper._spool.handle import SpoolHandle
from cms_shipper._spool.plan import (
    REFUSED,
    REPLAYED,
    SPILLED,
    Plan,
    held_back,
    outcomes,
    spool_full,
)
from cms_shipper._spool.replay import Replayer
from cms_shipper._spool.spill import SpillWriter
from cms_shipper._spool.store import (
    FAILED,
    FULL,
    Added,
    JournalRecord,
    Spool,
    SpoolBusy,
    SpoolError,
)
from cms_shipper.results import Result, Tracked

__all__ = ["SpoolKeeper"]

SETTLE_WAIT_S = 0.25  # settling (and the shutdown spill) waits at most this
HOLD_WAIT_S = 0.05  # a sender saving an event behind its customer's waits at most this...
HOLD_RETRY_S = 0.25  # ...then that customer's line waits this long before trying again
COMING_RETRY_S = 0.05  # a customer whose older event is on its way into the file waits this
SPILL_WAIT_S = 1.0  # the spill writer's wait for the file, per try (its own thread)
SPILL_BACKLOG_MIN = 1000  # events the spill writer may be behind (or max_queue_size if more)


class SpoolKeeper(SpoolHandle):
    """The spool's side of the durability port: its connection, its rows, its replay."""

    def __init__(self, settings: Settings, log: RateLimitedLog) -> None:
        super().__init__(settings, log)
        self.poke: Callable[[], None] = lambda: None  # the replayer's: claim again soon
        self._replayer: Optional[Replayer] = None
        self._host: Optional[Host] = None
        self._writer = self._new_writer()
        # Nothing opened here: a master that builds the client and forks (gunicorn
        # --preload, uWSGI, Celery prefork) hands its workers no file, lock or thread.

    def _new_writer(self) -> SpillWriter:
        def expect(customers: list[str], n: int) -> None:
            spool = self._spool
            if spool is not None:
                spool.lines.expect(customers, n)

        return SpillWriter(
            self._spill, expect, max(SPILL_BACKLOG_MIN, self._settings.max_queue_size)
        )

    # -- the durability port: replay ----------------------------------------------------

    def attach(self, host: Host) -> None:
        """Replay into ``host.feed`` while ``host.room`` says there is space (not started yet)."""
        self._replayer = None
        self._host = host  # its finish settles what the spill writer stored
        if not self.enabled:
            return

        def replayed(event: Event) -> None:
            item = Tracked(event)
            item._kept = REPLAYED  # claimed from the spool: never held back behind itself
            host.feed(item)

        self._replayer = Replayer(self, replayed, host.room, self._settings.spool_replay_interval_s)

    def delivery_queue(self, intake: Q) -> Q:
        """The senders take what ``track_*`` queued (replayed events are put there too)."""
        return intake

    def start_replay(self) -> None:
        """Start the replay thread once; cheap to call on every event."""
        replayer = self._replayer
        if replayer is not None:
            replayer.ensure_started()

    def halt(self) -> None:
        """Claim nothing more from the spool; the replay thread ends."""
        if self._replayer is not None:
            self._replayer.halt()

    def write_ahead(self, result: Tracked) -> None:
        """Journal a just-tracked event (a live event of this process) before track_* returns."""
        if result.event is None or not self._settings.write_ahead:
            return
        spool = self._ensure()
        if spool is None:
            return
        try:
            handle = spool.write_ahead(result.event)
        except SpoolError as exc:
            self._count("write_ahead_misses")
            if not isinstance(exc, SpoolBusy):
                self._trouble(exc, "writing ahead")
            return
        if handle > 0:
            result._kept = handle  # settling marks it done or moves it into line
            return
        self._count("write_ahead_misses")
        if handle == FAILED:
            self._row_errors(Added([], [result.event.event_id]))
        elif handle == FULL:
            self._log.log(
                logging.WARNING,
                "spool:full-write-ahead",
                "the spool is full; event %s is held in memory only",
                result.event_id,
            )

    def overflow(self, result: Tracked, final: Result) -> bool:
        """A full queue's event: handed to the spill writer (True), settled by ``host.finish``.

        False when there is no spool or the writer's backlog is full: the caller settles
        it as ``final`` (``queue_full``) without waiting for the file (``REFUSED``).
        """
        host = self._host
        if self._ensure() is None or host is None:
            return False
        if self._writer.put(result, final, host.finish):
            return True
        if result._kept > 0 and self._spool is not None:  # written ahead: its record is done
            self._spool.forget([JournalRecord(result._kept, event_of(result))])
        result._kept = REFUSED
        if self._full:  # the writer is behind because the spool refuses: say so
            host.finish(result, spool_full(final))
            return True
        self._log.log(
            logging.WARNING,
            "spool:spill-backlog",
            "the queue is full and the spool's writer is %d events behind; event %s dropped",
            self._writer.backlog(),
            result.event_id,
        )
        return False

    def _spill(self, results: list[Tracked], finals: list[Result]) -> Optional[list[Result]]:
        """The spill writer's transaction: outcomes once stored, or None while the file is busy."""
        out = list(finals)
        spool = self._spool
        if spool is None:
            return out  # closed meanwhile: they keep their outcomes
        rows = Plan.of(results, finals)
        try:
            added = spool.apply(
                release=rows.release,
                move=rows.move,
                add=[event_of(out[i]) for i in rows.add],
                busy_s=SPILL_WAIT_S,
            )
        except SpoolBusy:
            return None
        except SpoolError as exc:
            self._failed(exc, "spilling a full queue's events", results, out, rows)
            return out
        self._row_errors(added)
        self._refused_moves(rows, added)
        outcomes(results, out, rows, added)
        return out

    def settle(
        self,
        results: Sequence[Tracked],
        finals: Sequence[Result],
        deadline: Optional[float] = None,
    ) -> list[Result]:
        """The spool's part of giving events their outcomes; returns the outcomes to record."""
        # Spillable outcomes become spooled (or dropped/spool_full): a row of ours is
        # released or moved into line, an event without one is added. Final answers remove
        # the row (a journal record is marked done at once, without I/O). One transaction,
        # waiting at most SETTLE_WAIT_S, or until deadline (a time.monotonic() value).
        out = list(finals)
        spool = self._ensure()
        if spool is None:
            return out
        rows = Plan.of(results, finals)
        if rows.forget:
            spool.forget(rows.forget)
        if not (rows.move or rows.release or rows.remove or rows.add):
            return out
        wait = SETTLE_WAIT_S
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        try:
            added = spool.apply(
                remove=rows.remove,
                release=rows.release,
                move=rows.move,
                add=[event_of(out[i]) for i in rows.add],
                busy_s=wait,
            )
        except SpoolError as exc:
            self._failed(exc, "settling outcomes", results, out, rows)
            return out
        self._row_errors(added)
        self._refused_moves(rows, added)
        outcomes(results, out, rows, added)
        if any(spool.lines.holds_back(key) for key in rows.answered_replays):
            # A replayed event has its answer: its customer's next spooled event may go
            # now, rather than at the next replay interval.
            self.poke()
        return out

    def settle_one(self, result: Tracked, final: Result) -> Result:
        """``settle`` for one event."""
        if self._unusable:
            return final
        return self.settle([result], [final])[0]

    def hold_back(self, result: Tracked) -> Union[Result, float, None]:
        """Save a live event behind its customer's older events waiting in the spool.

        Returns its outcome (spooled) once saved; seconds to wait before asking again while
        the spool is busy; or None: send it now (nothing older waits, or the spool cannot
        take it, and sending beats losing it).
        """
        spool, event = self._ensure(), result.event
        if spool is None or event is None or result._kept == REPLAYED:
            return None
        if not self._counted:
            self._count_first(spool)
        if not spool.lines.holds_back(event.customer_key):
            return None
        if spool.lines.coming(event.customer_key):
            return COMING_RETRY_S  # its older event is not in the file's line yet
        return self._save_behind(spool, result, event)

    def _save_behind(
        self, spool: Spool, result: Tracked, event: Event
    ) -> Union[Result, float, None]:
        try:
            if result._kept > 0:  # its journal record goes into line, in tracking order
                ahead = JournalRecord(result._kept, event)
                added = spool.apply(move=[ahead], busy_s=HOLD_WAIT_S)
            else:
                added = spool.apply(add=[event], busy_s=HOLD_WAIT_S)
        except SpoolBusy:
            return HOLD_RETRY_S
        except SpoolError as exc:
            self._trouble(exc, "saving an event behind its customer's")
            return None
        self._row_errors(added)
        if added.refused or added.failed:
            self._log.log(
                logging.WARNING,
                "spool:hold-back",
                "the spool cannot take event %s (%s); sending it now, before its customer's"
                " older events in the spool",
                result.event_id,
                "full" if added.refused else "cannot be stored",
            )
            return None
        result._kept = SPILLED
        return held_back(result)

    def heartbeat(self) -> None:
        """Open the file if need be, settle rows left behind, renew and recount."""
        spool = self._ensure()
        if spool is None:
            return
        with self._count_lock:
            rows, self._later = self._later, Plan()
        try:
            added = spool.apply(remove=rows.remove, release=rows.release, move=rows.move)
            refused = set(added.refused)  # no room yet: they stay deferred
            back = [ahead for ahead in rows.move if ahead.event.event_id in refused]
            moved = [ahead for ahead in rows.move if ahead.event.event_id not in refused]
            if moved:  # in the file's line now (counted waiting by the commit)
                spool.lines.expect([ahead.event.customer_key for ahead in moved], -1)
            rows = Plan()
            rows.move = back
            with self._count_lock:
                self._later.extend(rows)
            rows = Plan()
            spool.renew()
            spool.refresh()  # what other processes spilled, and dead processes' rows
            self._counted = True
        except SpoolError as exc:
            with self._count_lock:
                self._later.extend(rows)
            self._trouble(exc, "renewing leases")

    def after_fork(self) -> None:
        """In a forked child: nothing of the parent's spool; ours is made at our first event."""
        self._drop_inherited()
        self._writer = self._new_writer()  # the parent's backlog is the parent's

    def close(self) -> None:
        """Close the connection and the journal; idempotent."""
        self._writer.stop()  # close() has settled its backlog (the pending events)
        self._close_spool()
