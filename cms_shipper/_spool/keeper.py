"""The client's use of the on-disk spool: write-ahead, spills, settling rows, replay.

The spool (``_spool.Spool``) only stores; this module decides. An event that would be lost
(queue full, retries exhausted on a retryable failure, still pending at shutdown) is
spooled instead, and one with a final answer (delivered, duplicate, rejected) has its row
removed (a written-ahead event's journal record is marked done; a spilled or held-back one
is moved into line; ``_spool_plan`` sorts them). Per-customer order holds
through the spool: while an older event of a customer waits in the spool (or is being
replayed), a newer one is not sent but saved behind it (``hold_back``), and claims replay
each customer's events in tracking order.
Spool trouble is logged and counted and never reaches the host: the client goes
on in memory. ``track_*``'s write-ahead never waits for the file (the journal is memory-
mapped, ``_spool_ahead``), and every other wait is bounded (``SETTLE_WAIT_S``, ...), so
neither ``track_*`` nor ``close()`` waits on another process's disk lock.

A forked child drops the spool it inherited (connection, journal, owner lock: the
parent's) and makes its own at its first need (``_spool.forks``: no connection crosses a
fork, the parent closes its file before every fork and reopens it after).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional, Union

from cms_shipper._config import Settings
from cms_shipper._durability import DurabilityStats, Host, Q
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog, logger
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
    SpoolFull,
)
from cms_shipper.results import Result, Tracked

__all__ = ["SpoolKeeper"]

SETTLE_WAIT_S = 0.25  # settling (and the shutdown spill) waits at most this
OPEN_WAIT_S = 1.0  # opening waits at most this for a busy file, then retries on heartbeat
HOLD_WAIT_S = 0.05  # a sender saving an event behind its customer's waits at most this...
HOLD_RETRY_S = 0.25  # ...then that customer's line waits this long before trying again
COMING_RETRY_S = 0.05  # a customer whose older event is on its way into the file waits this
SPILL_WAIT_S = 1.0  # the spill writer's wait for the file, per try (its own thread)
SPILL_BACKLOG_MIN = 1000  # events the spill writer may be behind (or max_queue_size if more)


class SpoolKeeper:
    """The spool's side of the durability port: its connection, its rows, its replay."""

    # Counters for stats(): write_ahead_misses (events write_ahead could not store before
    # track_* returned: busy, error, full; they go on in memory), spool_errors (events
    # whose row failed on its own: encoding, SQLite), settle_misses (settle batches the
    # spool could not take in time; rows left are retried on the next heartbeat).

    def __init__(self, settings: Settings, log: RateLimitedLog) -> None:
        self._settings = settings
        self._log = log
        self.path = settings.spool_path or ""
        self._spool: Optional[Spool] = None  # made at the first event (``_ensure``)
        self._unusable = False  # the spool cannot be used here: memory only
        self._closed = False
        self._open_lock = threading.Lock()
        self._counted = False  # which customers wait in the file: counted once since opening
        self._first_count = threading.Lock()
        self._count_lock = threading.Lock()
        self.write_ahead_misses = 0
        self.spool_errors = 0
        self.settle_misses = 0
        self._later = Plan()  # settled rows the spool was too busy to take
        self._full = False  # the last spill found the spool full (bound or disk)
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

    def stats(self) -> DurabilityStats:
        """The spool's counters for ``stats()``."""
        return DurabilityStats(
            spool_path=self.path if self.enabled else None,
            spool_write_ahead_misses=self.write_ahead_misses,
            spool_errors=self.spool_errors,
            spool_settle_misses=self.settle_misses,
            fleet=None,
        )

    def _ensure(self) -> Optional[Spool]:
        """The spool, made at the first need: our owner lock and journal, no wait on the
        file (its first statement opens it). None if it cannot be used here, or closed."""
        spool = self._spool
        if spool is not None or self._unusable or self._closed:
            return spool
        s = self._settings
        with self._open_lock:
            if self._spool is None and not (self._unusable or self._closed):
                try:
                    self._spool = Spool(
                        self.path,
                        max_bytes=s.spool_max_bytes,
                        lease_s=s.spool_lease_s,
                        busy_s=OPEN_WAIT_S,
                        connect=False,  # the first statement (a sender's, replay's) opens it
                    )
                except SpoolError as exc:
                    self._unusable = True
                    logger.error(
                        "cannot use the spool at %s (%s); going on in memory only", self.path, exc
                    )
            return self._spool

    def _count_first(self, spool: Spool) -> None:
        # Before this process's first event is sent: which customers' older events wait in
        # the file (a crashed or closed process's) and must go before their new ones. One
        # sender counts (waiting at most OPEN_WAIT_S); if the file is busy, the heartbeat
        # counts them later.
        with self._first_count:
            if self._counted:
                return
            try:
                spool.refresh()
            except SpoolBusy:
                pass
            except SpoolError as exc:
                self._trouble(exc, "reading which customers wait in the spool")
            self._counted = True

    @property
    def enabled(self) -> bool:
        """True unless the spool proved unusable in this process (it is made lazily)."""
        return not self._unusable

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)

    def _trouble(self, exc: SpoolError, doing: str) -> None:
        if self._closed:
            return  # close() closed the file under a replay pass: nothing went wrong
        self._log.log(
            logging.WARNING if isinstance(exc, SpoolBusy) else logging.ERROR,  # busy: it passes
            f"spool:{doing}",
            "spool error while %s at %s: %s",
            doing,
            self.path,
            exc,
        )

    def _row_errors(self, added: Added) -> None:
        if added.failed:
            self._count("spool_errors", len(added.failed))
            self._log.log(
                logging.ERROR,
                "spool:row-error",
                "%d event(s) could not be stored in the spool (e.g. %s); kept out",
                len(added.failed),
                added.failed[0],
            )

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

    def _failed(
        self, exc: SpoolError, doing: str, results: Sequence[Tracked], out: list[Result], rows: Plan
    ) -> None:
        """A settling transaction failed: its rows are retried on the next heartbeat (a
        journal record stays safe in the journal meanwhile); on a full disk, events with
        no row are dropped ``spool_full``, as when ``spool_max_bytes`` is reached."""
        self._count("settle_misses")
        self._defer(rows)
        self._trouble(exc, doing)
        outcomes(results, out, rows, None)
        if isinstance(exc, SpoolFull):
            self._full = True
            for i in rows.add:
                out[i] = spool_full(out[i])

    def _refused_moves(self, rows: Plan, added: Added) -> None:
        """Moves ``spool_max_bytes`` had no room for: still live in the journal (spooled,
        safe), moved on a later heartbeat once replay has made room."""
        if rows.add or rows.move:
            self._full = bool(added.refused)
        if added.refused and rows.move:
            refused = set(added.refused)
            back = Plan()
            back.move = [ahead for ahead in rows.move if ahead.event.event_id in refused]
            if back.move:
                self._defer(back)

    def _defer(self, rows: Plan) -> None:
        """Rows the file could not take now: retried on the next heartbeat. A move's
        customer is held back meanwhile (its event is not in the file's line yet)."""
        rows.forget = []
        spool = self._spool
        if spool is not None and rows.move:
            spool.lines.expect([ahead.event.customer_key for ahead in rows.move], 1)
        with self._count_lock:
            self._later.extend(rows)

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

    def claim(self, limit: int) -> list[Event]:
        """Lease up to ``limit`` spooled events to this process, oldest first."""
        spool = self._spool
        if spool is None or limit <= 0:
            return []
        try:
            return spool.claim(limit)
        except SpoolError as exc:
            self._trouble(exc, "claiming events to replay")
            return []

    def after_fork(self) -> None:
        """In a forked child: nothing of the parent's spool; ours is made at our first event."""
        # Fresh locks: a parent thread may have held these at the fork, for ever here.
        self._count_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._first_count = threading.Lock()
        self._later = Plan()  # the parent's rows, not ours
        self._writer = self._new_writer()  # the parent's backlog is the parent's
        spool, self._spool, self._counted = self._spool, None, False
        if spool is not None:  # its connection, journal and owner lock are the parent's
            spool.forget_inherited()

    def close(self) -> None:
        """Close the connection and the journal; idempotent."""
        self._writer.stop()  # close() has settled its backlog (the pending events)
        with self._open_lock:
            self._closed = True
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
