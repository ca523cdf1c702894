"""The client's use of the on-disk spool: write-ahead, spills, settling rows, replay.

The spool (``_spool.Spool``) only stores; this module decides. An event that would be lost
(queue full, retries exhausted on a retryable failure, still pending at shutdown) is
spooled instead, and one with a final answer (delivered, duplicate, rejected) has its row
removed. Per-customer order holds through the spool: while an older event of a customer
waits in the spool (or is being replayed), a newer one is not sent but saved behind it
(``hold_back``), and claims replay each customer's events in tracking order.
Spool trouble is logged and counted and never reaches the host: the client goes
on in memory. Every wait for the file is bounded (``WRITE_AHEAD_WAIT_S``, ``SETTLE_WAIT_S``),
so neither ``track_*`` nor ``close()`` waits on another process's disk lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional, Union

from cms_shipper._config import Settings
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog, logger
from cms_shipper._spool import Added, Spool, SpoolBusy, SpoolError
from cms_shipper.results import Outcome, Reason, Result, Tracked

__all__ = ["SpoolKeeper"]

WRITE_AHEAD_WAIT_S = 0.005  # track_* waits at most this for the spool, then keeps it in memory
SETTLE_WAIT_S = 0.25  # settling (and the shutdown spill) waits at most this
OPEN_WAIT_S = 1.0  # opening waits at most this for a busy file, then retries on heartbeat
HOLD_WAIT_S = 0.05  # a sender saving an event behind its customer's waits at most this...
HOLD_RETRY_S = 0.25  # ...then that customer's line waits this long before trying again

# Tracked._in_spool: which row, if any, the event has in the spool.
WRITTEN_AHEAD = 1  # written by track_* and leased to this process (a live event)
REPLAYED = 2  # claimed from the spool by this process's replay
SPILLED = 3  # saved unleased by this process (spilled, or left at shutdown)

# Outcomes that mean "not delivered, but nothing the server said makes it hopeless".
_SPILLABLE = {
    (Outcome.FAILED, Reason.RETRIES_EXHAUSTED),
    (Outcome.DROPPED, Reason.SHUTDOWN),
    (Outcome.DROPPED, Reason.QUEUE_FULL),
}


def _spooled(final: Result) -> Result:
    why = final.error or str(final.reason)
    return Result(
        success=False, status_code=final.status_code, message="spooled",
        error=f"not delivered yet ({why}); saved to the spool for a later replay",
        event_id=final.event_id, outcome=Outcome.SPOOLED, reason=final.reason, event=final.event,
    )  # fmt: skip


def _held_back(result: Tracked) -> Result:
    return Result(
        success=False, message="spooled",
        error="an older event of this customer is waiting in the spool; saved behind it,"
        " to be sent in the customer's order",
        event_id=result.event_id, outcome=Outcome.SPOOLED, reason=Reason.BEHIND_SPOOLED,
        event=result.event,
    )  # fmt: skip


def _spool_full(final: Result) -> Result:
    return Result(
        success=False, status_code=final.status_code, message="dropped: spool_full",
        error=f"the spool is full (spool_max_bytes); event dropped ({final.error})",
        event_id=final.event_id, outcome=Outcome.DROPPED, reason=Reason.SPOOL_FULL,
        event=final.event,
    )  # fmt: skip


class SpoolKeeper:
    """Owns the client's spool connection and every decision about spool rows."""

    # Counters for stats(): write_ahead_misses (events write_ahead could not store before
    # track_* returned: busy, error, full; they go on in memory), spool_errors (events
    # whose row failed on its own: encoding, SQLite), settle_misses (settle batches the
    # spool could not take in time; rows left are retried on the next heartbeat).

    def __init__(self, settings: Settings, log: RateLimitedLog) -> None:
        self._settings = settings
        self._log = log
        self.path = settings.spool_path or ""
        self._spool: Optional[Spool] = None
        self._waiting = False  # busy at open: try again on the next heartbeat
        self._count_lock = threading.Lock()
        self.write_ahead_misses = 0
        self.spool_errors = 0
        self.settle_misses = 0
        self._later_remove: list[str] = []  # settled rows the spool was too busy to take
        self._later_release: list[str] = []
        self.poke: Callable[[], None] = lambda: None  # the replayer's: claim again soon
        self._open()

    def _open(self) -> None:
        s = self._settings
        try:
            self._spool = Spool(self.path, max_bytes=s.spool_max_bytes, lease_s=s.spool_lease_s,
                                busy_s=OPEN_WAIT_S)  # fmt: skip
            self._waiting = False
        except SpoolBusy as exc:
            self._waiting = True
            self._log.log(
                logging.WARNING, "spool:busy-open",
                "the spool %s is busy (%s); events stay in memory, trying again later",
                self.path, exc,
            )  # fmt: skip
        except SpoolError as exc:
            self._waiting = False
            logger.error(
                "cannot use the spool at %s (%s); going on in memory only",
                self.path, exc,
            )  # fmt: skip
        else:
            self._refresh()

    def _refresh(self) -> None:
        # Before the first track_*: which customers' older events wait in the file (a
        # crashed or closed process's) and must go before their new ones. If the file is
        # busy now, the next heartbeat counts them.
        if self._spool is None:
            return
        try:
            self._spool.refresh()
        except SpoolBusy:
            pass
        except SpoolError as exc:
            self._trouble(exc, "reading which customers wait in the spool")

    @property
    def enabled(self) -> bool:
        """True while the spool is usable, or only busy for now."""
        return self._spool is not None or self._waiting

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)

    def _trouble(self, exc: SpoolError, doing: str) -> None:
        self._log.log(
            logging.ERROR, f"spool:{doing}",
            "spool error while %s at %s: %s", doing, self.path, exc,
        )  # fmt: skip

    def _row_errors(self, added: Added) -> None:
        if added.failed:
            self._count("spool_errors", len(added.failed))
            self._log.log(
                logging.ERROR, "spool:row-error",
                "%d event(s) could not be stored in the spool (e.g. %s); kept out",
                len(added.failed), added.failed[0],
            )  # fmt: skip

    def write_ahead(self, result: Tracked) -> None:
        """Store a just-tracked event, leased to this process, before track_* returns."""
        spool = self._spool
        if result.event is None:
            return
        if spool is None:
            if self._waiting:
                self._count("write_ahead_misses")
            return
        try:
            added = spool.add([result.event], leased=True, busy_s=WRITE_AHEAD_WAIT_S)
        except SpoolError as exc:
            self._count("write_ahead_misses")
            if not isinstance(exc, SpoolBusy):
                self._trouble(exc, "writing ahead")
            return
        self._row_errors(added)
        if added.refused:
            self._log.log(
                logging.WARNING, "spool:full-write-ahead",
                "the spool is full; event %s is held in memory only",
                result.event_id,
            )  # fmt: skip
        if added.refused or added.failed:
            self._count("write_ahead_misses")
        else:
            result._in_spool = WRITTEN_AHEAD

    def settle(
        self,
        results: Sequence[Tracked],
        finals: Sequence[Result],
        deadline: Optional[float] = None,
    ) -> list[Result]:
        """The spool's part of giving events their outcomes; returns the outcomes to record."""
        # Spillable outcomes become spooled (or dropped/spool_full); final answers remove
        # the row. One transaction, waiting at most SETTLE_WAIT_S, or until deadline (a
        # time.monotonic() value) if sooner.
        out = list(finals)
        spool = self._spool
        if spool is None:
            return out
        remove: list[int] = []
        release: list[int] = []
        add: list[int] = []
        for i, (result, final) in enumerate(zip(results, finals)):
            if final.outcome is Outcome.SPOOLED:  # held back: its row is already in place
                continue
            spill = (final.outcome, final.reason) in _SPILLABLE
            if result._in_spool:
                (release if spill else remove).append(i)
            elif spill and result.event is not None:
                add.append(i)
        wait = SETTLE_WAIT_S
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        try:
            added = spool.apply(
                remove=[out[i].event_id or "" for i in remove],
                release=[out[i].event_id or "" for i in release],
                add=[event_of(out[i]) for i in add], busy_s=wait,
            )  # fmt: skip
        except SpoolError as exc:
            self._count("settle_misses")
            with self._count_lock:  # rows left behind: retried on the next heartbeat
                self._later_remove += [out[i].event_id or "" for i in remove]
                self._later_release += [out[i].event_id or "" for i in release]
            self._trouble(exc, "settling outcomes")
            for i in release:  # their rows stay in the spool (released later): spooled
                out[i] = _spooled(out[i])
            return out
        self._row_errors(added)
        for i in release:
            out[i] = _spooled(out[i])
        self._next_in_line(spool, [results[i] for i in remove])
        refused, failed = set(added.refused), set(added.failed)
        for i in add:
            if out[i].event_id in refused:
                out[i] = _spool_full(out[i])
            elif out[i].event_id not in failed:  # a failed row keeps its own outcome
                results[i]._in_spool = SPILLED
                out[i] = _spooled(out[i])
        return out

    def _next_in_line(self, spool: Spool, removed: list[Tracked]) -> None:
        # A replayed event has its answer: its customer's next spooled event may go now,
        # rather than at the next replay interval.
        for result in removed:
            event = result.event
            if (
                result._in_spool == REPLAYED
                and event
                and spool.lines.holds_back(event.customer_key)
            ):
                self.poke()
                return

    def hold_back(self, result: Tracked) -> Union[Result, float, None]:
        """Save a live event behind its customer's older events waiting in the spool.

        Returns its outcome (spooled) once saved; seconds to wait before asking again while
        the spool is busy; or None: send it now (nothing older waits, or the spool cannot
        take it, and sending beats losing it).
        """
        spool, event = self._spool, result.event
        if spool is None or event is None or result._in_spool == REPLAYED:
            return None
        if not spool.lines.holds_back(event.customer_key):
            return None
        try:
            if result._in_spool == WRITTEN_AHEAD:  # its row goes back in line, tracking order
                added = spool.apply(release=[event.event_id], busy_s=HOLD_WAIT_S)
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
                logging.WARNING, "spool:hold-back",
                "the spool cannot take event %s (%s); sending it now, before its customer's"
                " older events in the spool", result.event_id,
                "full" if added.refused else "cannot be stored",
            )  # fmt: skip
            return None
        result._in_spool = SPILLED
        return _held_back(result)

    def heartbeat(self) -> None:
        """Open a spool that was busy, settle rows left behind, extend this process's leases."""
        if self._spool is None and self._waiting:
            self._open()
        spool = self._spool
        if spool is None:
            return
        with self._count_lock:
            remove, self._later_remove = self._later_remove, []
            release, self._later_release = self._later_release, []
        try:
            if remove or release:
                spool.apply(remove=remove, release=release)
            spool.renew()
            spool.refresh()  # what other processes spilled, and dead processes' rows
        except SpoolError as exc:
            with self._count_lock:
                self._later_remove += remove
                self._later_release += release
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

    def reopen(self) -> None:
        """In a forked child: a new connection and a new lease owner."""
        # A fresh lock: a parent thread may have held this one at the fork, for ever here.
        self._count_lock = threading.Lock()
        self._later_remove, self._later_release = [], []  # the parent's rows, not ours
        if self._spool is not None:
            try:
                self._spool.reopen()
                self._refresh()
            except SpoolBusy:
                self._spool, self._waiting = None, True
            except SpoolError as exc:
                self._trouble(exc, "reopening after fork")
                self._spool = None

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        spool, self._spool = self._spool, None
        self._waiting = False
        if spool is not None:
            spool.close()
