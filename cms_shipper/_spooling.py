"""The client's use of the on-disk spool: write-ahead, spills, settling rows, replay.

The spool (``_spool.Spool``) only stores; this module decides. An event that would be lost
(queue full, retries exhausted on a retryable failure, still pending at shutdown) is
spooled instead, and one with a final answer (delivered, duplicate, rejected) has its row
removed. Spool trouble is logged and counted and never reaches the host: the client goes
on in memory. Every wait for the file is bounded (``WRITE_AHEAD_WAIT_S``, ``SETTLE_WAIT_S``),
so neither ``track_*`` nor ``close()`` waits on another process's disk lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional

from cms_shipper._config import Settings
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog, logger
from cms_shipper._spool import Added, Spool, SpoolBusy, SpoolError
from cms_shipper.results import Outcome, Reason, Result, TrackResult

__all__ = ["Replayer", "SpoolKeeper"]

WRITE_AHEAD_WAIT_S = 0.005  # track_* waits at most this for the spool, then keeps it in memory
SETTLE_WAIT_S = 0.25  # settling (and the shutdown spill) waits at most this
OPEN_WAIT_S = 1.0  # opening waits at most this for a busy file, then retries on heartbeat

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

    def write_ahead(self, result: TrackResult) -> None:
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
            result._in_spool = True

    def settle(
        self,
        results: Sequence[TrackResult],
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
        refused, failed = set(added.refused), set(added.failed)
        for i in add:
            if out[i].event_id in refused:
                out[i] = _spool_full(out[i])
            elif out[i].event_id not in failed:  # a failed row keeps its own outcome
                results[i]._in_spool = True
                out[i] = _spooled(out[i])
        return out

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


class Replayer:
    """A daemon thread that feeds spooled events back into the pipeline, periodically."""

    def __init__(
        self,
        keeper: SpoolKeeper,
        submit: Callable[[Event], None],
        room: Callable[[], int],
        interval_s: float,
    ) -> None:
        self._keeper = keeper
        self._submit = submit
        self._room = room
        self._interval_s = interval_s
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cms-shipper-replay", daemon=True)
        self._start_lock = threading.Lock()
        self._started = False

    def ensure_started(self) -> None:
        """Start once (the first pass runs at once); cheap to call on every event."""
        if self._started:  # no lock on the track path once running
            return
        with self._start_lock:
            if not self._started and not self.stop.is_set():
                self._thread.start()
                self._started = True

    def _run(self) -> None:
        while not self.stop.is_set():
            self._keeper.heartbeat()
            # Leave half the queue to live traffic, but take one at least when there is
            # room: with max_queue_size=1, half would be none and the spool would never drain.
            room = self._room()
            for event in self._keeper.claim(max(1, room // 2) if room > 0 else 0):
                self._submit(event)
            if self.stop.wait(self._interval_s):
                return
