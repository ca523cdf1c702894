"""The on-disk spool: a SQLite file (WAL) of event payloads, shared safely by processes.

Storage only: no threads, no HTTP, no policy (``keeper`` decides what goes in and out).
The ``events`` table holds events waiting for a replay (spilled, left at shutdown, held
back behind their customer's, a dead process's), each *claimed* by one process at a time
through a lease. Written-ahead events, the live events of the process that wrote them, are
in that process's memory-mapped journal (``journal``) instead: marked done once answered,
moved into ``events`` when spilled or held back. A process's leases and journal are taken
over at once when it dies (its owner lock file, ``owners``, is then free), or once its
heartbeat row (``owners``) or lease has passed where the OS cannot tell (no ``fcntl``, a
network filesystem); a dead owner's journal moves into ``events`` as far as the bound
(or the disk) has room, the rest at later passes. Claims take, per customer, a prefix of
its events in tracking order, and skip customers leased by another process or with
records still in a dead owner's journal.

``lines`` (``order.Lines``) says which customers this process must hold back for order;
it is kept in step with every transaction on the main connection and recounted by
``refresh``, so rows another process adds are seen at the next ``refresh``.

``Spool`` is what the transactions do to rows; opening the file, forks, running each
transaction (bounded waits, room made on a full disk) and closing are its base's,
``connection.SpoolConnection``. Draining transactions (claims, lease renewals, removals)
change at most ``disk.rows_per_transaction`` rows each, so that on a disk that stays full
each fits in the WAL's blocks. One event that cannot be stored (encoding, SQLite) is
reported in ``Added.failed`` and the rest of the batch is stored. Rows and records hold
the event's payload, never the token.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Callable, Optional

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool import disk, rows
from cms_shipper._spool.connection import SpoolConnection
from cms_shipper._spool.journal import FAILED, FULL, JournalError
from cms_shipper._spool.opening import SpoolBusy, SpoolError, SpoolFull
from cms_shipper._spool.owners import take_over_dead
from cms_shipper._spool.records import mark_done
from cms_shipper._spool.rows import Added, JournalRecord
from cms_shipper._spool.status import SpoolStatus, query_status

__all__ = [
    "FAILED",
    "FULL",
    "Added",
    "JournalRecord",
    "Spool",
    "SpoolBusy",
    "SpoolError",
    "SpoolFull",
    "SpoolStatus",
]

TAKE_CHUNK = 200  # records of dead owners' journals taken over per pass on a full disk
TAKE_ROW_BYTES = 4096  # free-page bytes counted per such record: a page each (index splits too)


def _with_cap(
    work: Callable[[sqlite3.Connection, Optional[int]], None],
    cap: Optional[int],
    db: sqlite3.Connection,
) -> None:
    work(db, cap)


class Spool(SpoolConnection):
    """Durable, multi-process-safe store of event payloads (never the token)."""

    def write_ahead(self, event: Event) -> int:
        """Journal a live event of this process: its handle, ``FULL`` or ``FAILED``."""
        if self._pid != os.getpid():
            self.reopen()
        if not self.journal.registered:  # no lock file, and the file was busy at open
            raise SpoolBusy(f"spool {self.path}: this process is not registered yet")
        try:
            return self.journal.write(event)
        except JournalError as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc

    def forget(self, handles: Sequence[JournalRecord]) -> None:
        """Written-ahead events with their final answer: never replayed."""
        self.journal.done([ahead.handle for ahead in handles])

    def add(self, events: Sequence[Event], *, busy_s: Optional[float] = None) -> Added:
        """Store events unleased, waiting in line (twice is harmless); those not stored, and why."""
        return self.apply(add=events, busy_s=busy_s)

    def apply(
        self,
        *,
        remove: Iterable[str] = (),
        release: Iterable[str] = (),
        add: Sequence[Event] = (),
        move: Sequence[JournalRecord] = (),
        busy_s: Optional[float] = None,
    ) -> Added:
        """In one transaction: remove ``events`` rows, release our leases, add events unleased
        and move written-ahead events into ``events`` (``move``, then done in the journal).

        ``Added.refused`` names the adds and moves ``max_bytes`` had no room for (a move
        refused stays live in the journal)."""
        gone, freed = list(remove), list(release)
        if not (gone or freed or add or move):
            return Added([], [])
        step = disk.rows_per_transaction(self._max_bytes)
        if not (add or move) and len(gone) + len(freed) > step:
            # Only draining (the heartbeat's rows left behind can be thousands): in
            # transactions of a few hundred rows, each within the WAL's blocks.
            for i in range(0, len(gone), step):
                self.apply(remove=gone[i : i + step], busy_s=busy_s)
            for i in range(0, len(freed), step):
                self.apply(release=freed[i : i + step], busy_s=busy_s)
            return Added([], [])
        delta: Counter[str] = Counter()
        kept: set[str] = set()  # moves that failed on their own stay in the journal

        def work(db: sqlite3.Connection) -> Added:
            delta.clear()
            kept.clear()
            me, now = self.owner, self._clock()
            rows.remove(db, me, now, gone, delta)
            rows.release(db, me, freed, delta)
            refused: list[str] = []
            if move:  # one refused for max_bytes stays in the journal (safe there)
                events = [ahead.event for ahead in move]
                moved = rows.insert(db, events, now, *self._budget(db), delta, cost=2)
                kept.update(moved.failed + moved.refused)
                refused = moved.refused
            if not add:
                return Added(refused, [])
            added = rows.insert(db, add, now, *self._budget(db), delta, cost=2)
            return Added(refused + added.refused, added.failed)

        def committed() -> None:
            self.lines.changed(delta, itertools.chain(gone, freed))
            if move:
                self.journal.done([a.handle for a in move if a.event.event_id not in kept])

        result: Added = self._run(work, busy_s, committed, drains=not (add or move))
        return result

    def _budget(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Pages in use, and the limit rows may take them to: the bound less every other
        file of the spool (WAL, journals of every process, the reserve), and the disk's
        free bytes less room for the reserve while it is missing."""
        return disk.budget(db, self.path, self._max_bytes, self._reserve.missing())

    def claim(self, limit: int, busy_s: Optional[float] = None) -> list[Event]:
        """Lease up to ``limit`` events to this owner: per customer, a prefix in tracking order.

        In transactions of ``rows_per_transaction`` rows (a full disk: each fits in the
        WAL's blocks); a later one that fails ends the claim with what is leased so far. A
        customer leased by an earlier one is skipped by the next (its rest waits its turn).
        """
        step = disk.rows_per_transaction(self._max_bytes)
        left: Counter[str] = Counter()  # customers with records still in a dead journal
        events = more = self._claim(min(limit, step), busy_s, left)
        while len(more) == step and len(events) < limit:
            try:
                more = self._claim(min(limit - len(events), step), busy_s, left, take_over=False)
            except SpoolError:
                break  # those before are leased to us already: hand them over
            events = events + more
        return events

    def _claim(
        self, limit: int, busy_s: Optional[float], left: Counter[str], take_over: bool = True
    ) -> list[Event]:
        """One claiming transaction; the first of a pass takes dead owners' rows over too
        (and counts in ``left`` the customers of records it leaves: none of theirs is claimed)."""
        if limit <= 0:
            return []
        now = self._clock()
        if not take_over:
            leased: list[Event] = []

            def plain(db: sqlite3.Connection) -> None:
                leased[:] = rows.claim(db, self.owner, now, now + self._lease_s, limit, left)

            self._run(plain, busy_s, lambda: self.lines.claimed(leased))
            return leased
        dead: list[str] = []
        taken: list[tuple[str, int]] = []
        events: list[Event] = []
        counts: Counter[str] = Counter()

        def work(db: sqlite3.Connection, cap: Optional[int]) -> None:
            taken.clear()
            dead[:] = self._take_over(db, now, cap, taken, left)
            events[:] = rows.claim(db, self.owner, now, now + self._lease_s, limit, left)
            counts.clear()
            if dead or taken or left:  # their rows wait now: count them (lines would miss them)
                counts.update(rows.waiting(db, self.owner, now))
                counts.update(left)

        def committed() -> None:
            self.lines.claimed(events)
            if dead or taken or left:
                self.lines.recount(counts)

        self._taking_over(work, busy_s, committed, taken)
        self._bury(dead, taken)
        return events

    def refresh(self, busy_s: Optional[float] = None) -> None:
        """Take over dead owners' events and recount the customers waiting from the file."""
        now = self._clock()
        dead: list[str] = []
        taken: list[tuple[str, int]] = []
        left: Counter[str] = Counter()
        counts: Counter[str] = Counter()

        def work(db: sqlite3.Connection, cap: Optional[int]) -> None:
            taken.clear()
            dead[:] = self._take_over(db, now, cap, taken, left)
            counts.clear()
            counts.update(rows.waiting(db, self.owner, now))
            counts.update(left)  # in a dead owner's journal still: they wait too

        self._taking_over(work, busy_s, lambda: self.lines.recount(counts), taken)
        self._bury(dead, taken)

    def _take_over(
        self,
        db: sqlite3.Connection,
        now: float,
        cap: Optional[int],
        taken: list[tuple[str, int]],
        left: Counter[str],
    ) -> list[str]:
        """Take dead owners' journals over, as far as the bound and the disk have room.

        Past the bound (or on a full disk) only into the database's free pages, which
        rows that drained left: the records wait in their journal, counted, meanwhile.
        """
        until = now + self._lease_s

        def free_bytes() -> int:
            free, page = (
                int(db.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("freelist_count", "page_size")
            )
            return free * page

        def room() -> int:  # asked only when a dead owner has records to move
            used, limit = self._budget(db)
            return max(limit - used, free_bytes())

        if cap:  # a full disk: only as many as the database's free pages hold (no growth)
            cap = min(cap, free_bytes() // TAKE_ROW_BYTES)
        left.clear()
        return take_over_dead(
            db, self._owners, self.owner, now, until, cap, taken, room=room, left=left
        )

    def _taking_over(
        self,
        work: Callable[[sqlite3.Connection, Optional[int]], None],
        busy_s: Optional[float],
        committed: Callable[[], None],
        taken: list[tuple[str, int]],
    ) -> None:
        """Run ``work``, which takes dead owners' journals over. On a full disk, take over
        ``TAKE_CHUNK`` records a pass (until all are in), then none: the rows already in
        the file still drain, and their pages make room for the next chunk."""
        caps: list[Optional[int]] = [TAKE_CHUNK, 0] if self._chunked else [None, TAKE_CHUNK, 0]
        for n, cap in enumerate(caps):
            try:
                self._run(functools.partial(_with_cap, work, cap), busy_s, committed)
            except SpoolFull:
                if n == len(caps) - 1:
                    raise
                continue
            self._chunked = cap == 0 or (cap is not None and bool(taken))
            return

    def _bury(self, dead: list[str], taken: Sequence[tuple[str, int]] = ()) -> None:
        mark_done(list(taken))  # in the file now: never taken over twice
        for owner in dead:
            logger.info("took over the spool events of %s (it died)", owner)
            self._owners.bury(owner)

    def renew(self, busy_s: Optional[float] = None) -> int:
        """Heartbeat: our owners row and our claims' leases to now + lease_s; claims renewed."""
        until = self._clock() + self._lease_s
        step = disk.rows_per_transaction(self._max_bytes)

        def work(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (self.owner, until))
            return leases(db)

        def leases(db: sqlite3.Connection) -> int:
            # Claimed rows only (replays in flight), found by events_lease; a few hundred a
            # transaction (``rows_per_transaction``), those not renewed yet.
            count: int = db.execute(
                "UPDATE events SET lease_until = ? WHERE seq IN (SELECT seq FROM events"
                " WHERE lease_until > 0 AND lease_until < ? AND lease_owner = ? LIMIT ?)",
                (until, until, self.owner, step),
            ).rowcount
            return count

        count: int = self._run(work, busy_s)
        renewed = count
        while count == step:
            count = self._run(leases, busy_s)
            renewed += count
        self.journal.registered = True
        self.journal.tidy()  # files whose records are all done
        self.keep_small()
        return renewed

    def release(self, event_ids: Iterable[str]) -> None:
        """Give leases back so any process may take these events now."""
        self.apply(release=event_ids)

    def remove(self, event_ids: Iterable[str]) -> None:
        """Delete events that have a final outcome."""
        self.apply(remove=event_ids)

    def status(self) -> SpoolStatus:
        """Counts by endpoint, leases, ages and size."""
        now = self._clock()
        result: SpoolStatus = self._run(lambda db: query_status(db, self.path, now), None)
        return result

    def purge(self) -> int:
        """Delete every waiting event (dead processes' journals included); returns how many.

        Live processes' journals are theirs: those events are on their way."""
        now = self._clock()
        dead: list[str] = []

        def work(db: sqlite3.Connection) -> int:
            dead[:] = take_over_dead(db, self._owners, self.owner, now, now + self._lease_s)
            return int(db.execute("DELETE FROM events").rowcount)

        count: int = self._run(work, None, lambda: self.lines.recount({}))
        self._bury(dead)
        return count
