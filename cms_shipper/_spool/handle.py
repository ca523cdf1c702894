"""This process's handle on the spool: made at the first need, its counters, its trouble.

``SpoolHandle`` is what ``keeper.SpoolKeeper`` stands on. Building it opens nothing: the
spool (``Spool``: our owner lock and journal) is made at the first event, and its file opens
at the first statement, in a sender or the replay thread, so a master that builds the
client and forks hands its workers no file, lock or thread. Spool trouble is logged (rate-
limited) and counted here, never raised to the host: the client goes on in memory. Rows a
transaction could not take wait in ``_later`` for the next heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Optional

from cms_shipper._config import Settings
from cms_shipper._durability import DurabilityStats
from cms_shipper._events import Event
from cms_shipper._log import RateLimitedLog, logger
from cms_shipper._spool.plan import Plan, outcomes, spool_full
from cms_shipper._spool.store import Added, Spool, SpoolBusy, SpoolError, SpoolFull
from cms_shipper.results import Result, Tracked

__all__ = ["OPEN_WAIT_S", "SpoolHandle"]

OPEN_WAIT_S = 1.0  # opening waits at most this for a busy file, then retries on heartbeat


class SpoolHandle:
    """This process's spool, made at the first need; counters and trouble reports."""

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

    @property
    def enabled(self) -> bool:
        """True unless the spool proved unusable in this process (it is made lazily)."""
        return not self._unusable

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

    # -- trouble: logged and counted, never raised ------------------------------------------

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

    # -- forks and closing ------------------------------------------------------------------

    def _drop_inherited(self) -> None:
        """In a forked child: nothing of the parent's spool; ours is made at our first event."""
        # Fresh locks: a parent thread may have held these at the fork, for ever here.
        self._count_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._first_count = threading.Lock()
        self._later = Plan()  # the parent's rows, not ours
        spool, self._spool, self._counted = self._spool, None, False
        if spool is not None:  # its connection, journal and owner lock are the parent's
            spool.forget_inherited()

    def _close_spool(self) -> None:
        """Close the connection and the journal; idempotent."""
        with self._open_lock:
            self._closed = True
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
