"""The on-disk spool: a SQLite file (WAL) of event payloads, shared safely by processes.

Storage only: no threads, no HTTP, no policy (``_spooling`` decides what goes in and out).
The ``events`` table holds events waiting for a replay (spilled, left at shutdown, held
back behind their customer's, a dead process's), each *claimed* by one process at a time
through a lease. Written-ahead events, the live events of the process that wrote them, are
in that process's memory-mapped journal (``_spool_ahead``) instead: marked done once
answered, moved into ``events`` when spilled or held back. A process's leases and journal
are taken over at once when it dies (its owner lock file, ``_spool_owners``, is then
free), or once its heartbeat row (``owners``) or lease has passed where the OS cannot tell
(no ``fcntl``, a network filesystem). Claims take, per customer, a prefix of its events in
tracking order and skip customers leased by another process.

``lines`` (``_spool_order.Lines``) says which customers this process must hold back
for order; it is kept in step with every transaction on the main connection and recounted
by ``refresh``, so rows another process adds are seen at the next ``refresh``.

Every wait for the file's lock is bounded (``busy_s``, per call); a busy file raises
``SpoolBusy`` and is never treated as corrupt. One event that cannot be stored (encoding,
SQLite) is reported in ``Added.failed`` and the rest of the batch is stored.

Durability: WAL with ``synchronous=NORMAL`` and the journal's shared mappings survive the
process being killed (SIGKILL), not a power loss of the machine. Rows and records hold the
event's payload, never the token.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, Union

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool import disk, forks, rows
from cms_shipper._spool.journal import FAILED, FULL, Journal, JournalError, mark_done
from cms_shipper._spool.order import Lines
from cms_shipper._spool.owners import Owners, name_of, take_over_dead
from cms_shipper._spool.rows import Added, JournalRecord
from cms_shipper._spool.status import (
    SpoolBusy,
    SpoolError,
    SpoolFull,
    SpoolStatus,
    Unreadable,
    is_busy,
    open_spool,
    query_status,
)

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


def _transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any]) -> Any:
    """``work`` in one IMMEDIATE transaction, rolled back if it (or the commit) fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return out


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Spool:
    """Durable, multi-process-safe store of event payloads (never the token)."""

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        max_bytes: Optional[int] = 50 * 2**20,
        lease_s: float = 60.0,
        owner: Optional[str] = None,
        clock: Callable[[], float] = time.time,
        busy_s: float = 2.0,
        connect: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self._max_bytes = max_bytes
        self._lease_s = lease_s
        self._clock = clock
        self._busy_s = busy_s
        self.owner = owner or _owner()
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._pid = os.getpid()
        self._owners = Owners(self.path)
        self._reserve = disk.Reserve(self.path, disk.wal_limit(max_bytes))
        self._chunked = False  # a full disk: dead owners' journals are taken over in chunks
        self.lines = Lines()  # which customers wait for their spooled events
        self.journal = self._journal()
        self._was_open = False  # opened once: close() must end our rows' ownership
        self._parked = self._lock  # the lock park() holds across a fork
        self._open(connect)
        forks.track(self)  # closed before each fork, reopened after (``_spool.forks``)

    def _journal(self) -> Journal:
        return Journal(self._owners.directory, name_of(self.owner), max_bytes=self._max_bytes)

    def _open(self, connect: bool = True) -> None:
        try:
            forks.refuse_inherited(self.path)
        except forks.InheritedConnection as exc:
            raise SpoolError(str(exc)) from exc
        # Hold our owner lock first: from here on, probes see this process as alive, so the
        # journal may take records at once. Without locks (no fcntl, a network disk) only
        # our heartbeat row shows that, so the journal waits for it (``renew``).
        self.journal.registered = self._owners.hold(self.owner)
        self._closed = False
        if not connect:  # the first statement opens the file (``_open_late``)
            return
        try:
            self._db = self._tuned(open_spool(self.path, self._busy_s, self._owners))
            self._was_open = True
        except SpoolBusy:
            # Busy longer than busy_s (another process creating the file, converting it or
            # recovering its WAL). The journal needs only our owner lock: it takes records
            # now, and the first statement (the heartbeat's) opens the file.
            if not self.journal.registered:
                self._owners.release()
                raise
            return
        except BaseException:
            self._owners.release()
            raise
        # Our heartbeat row (the fallback where locks tell nothing). Opening must not wait
        # on a busy file for it: the replay heartbeat writes it soon anyway.
        with contextlib.suppress(SpoolError):
            self.renew(busy_s=min(self._busy_s, 0.05))

    @property
    def opened(self) -> bool:
        """False while the file was too busy to open (the journal works meanwhile)."""
        return self._db is not None

    def reopen(self) -> None:
        """After ``os.fork()``: a new owner; the file opens at the first statement."""
        self.forget_inherited()
        self.lines = Lines()  # the parent's claims are the parent's
        self._pid = os.getpid()
        self.owner = _owner()
        self.journal = self._journal()
        self._was_open = False
        self._open(connect=False)

    def forget_inherited(self) -> None:
        """In a forked child: let go of the parent's connection, journal and owner lock
        without touching them (a connection still open is kept, never used nor closed)."""
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        db, self._db = self._db, None
        if db is not None:  # forked without our hook (``_spool.forks``): the parent's, open
            forks.keep_inherited(self.path, db)
        self.journal.forget_inherited()
        self._owners.forget_inherited()

    def park(self, wait_s: float) -> bool:
        """Before ``os.fork()``, in the parent: wait for the statement in progress, close
        the connection (the next statement opens it again) and hold the lock across the
        fork; ``unpark`` after it. False: another process's spool, or busy past ``wait_s``."""
        lock = self._lock
        if self._pid != os.getpid() or not lock.acquire(timeout=wait_s):
            return False
        self._parked = lock  # a child may replace _lock before unpark (forget_inherited)
        db = self._db
        if db is not None:
            try:
                db.close()  # in the process that opened it: the one place it may be closed
                self._db = None
            except sqlite3.Error:  # still open: a child keeps it unused (forks.keep_inherited)
                logger.warning("could not close the spool %s before a fork", self.path)
        return True

    def unpark(self) -> None:
        """After the fork (parent and child): the lock ``park`` held."""
        self._parked.release()

    # -- statements -----------------------------------------------------------------

    def _run(
        self,
        work: Callable[[sqlite3.Connection], Any],
        busy_s: Optional[float],
        committed: Optional[Callable[[], None]] = None,
        drains: bool = True,
    ) -> Any:
        """Run ``work`` in one IMMEDIATE transaction, waiting at most ``busy_s`` for locks.

        ``committed`` runs after the commit, still under the lock: it updates ``lines``,
        so a concurrent ``refresh`` never counts a change twice or misses it. On a full
        disk, work that ``drains`` the spool (claims, heartbeats, removals, take-overs)
        frees the reserve and truncates the WAL, then runs once more; new rows do not:
        they would eat the room replay needs.
        """
        if self._pid != os.getpid():
            self.reopen()
        wait = self._busy_s if busy_s is None else max(0.0, busy_s)
        if not self._lock.acquire(timeout=wait):
            raise SpoolBusy(f"spool {self.path}: in use by another thread of this process")
        try:
            try:
                if self._closed:
                    raise SpoolError("the spool is closed")
                db = self._db
                if db is None:  # busy at open, not opened yet, or closed for a fork
                    db = self._db = self._open_late(wait)
                db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
                try:
                    out = _transaction(db, work)
                except sqlite3.OperationalError as exc:
                    if not (drains and disk.is_full(exc)) or not self._make_room(db):
                        raise
                    out = _transaction(db, work)  # once more, with the room made
                if committed is not None:
                    committed()
                return out
            except sqlite3.Error as exc:
                kind = SpoolBusy if is_busy(exc) else SpoolFull if disk.is_full(exc) else SpoolError
                raise kind(f"spool {self.path}: {exc}") from exc
        finally:
            self._lock.release()

    def _open_late(self, wait: float) -> sqlite3.Connection:
        try:
            forks.refuse_inherited(self.path)
            db = self._tuned(open_spool(self.path, wait, self._owners))
        except (Unreadable, forks.InheritedConnection) as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        self._was_open = True
        return db

    def _tuned(self, db: sqlite3.Connection) -> sqlite3.Connection:
        with contextlib.suppress(sqlite3.Error):  # a disk too full for it: the next one
            disk.tune(db, self._max_bytes)
            self._reserve.ensure(self._max_bytes, self.path)
        return db

    def _make_room(self, db: sqlite3.Connection) -> bool:
        """The disk is full: free the reserve and truncate the WAL; True if either helped."""
        # The reserve's bytes let the checkpoint grow the database; RESTART (not TRUNCATE)
        # keeps the WAL's file, so the next transactions reuse its space from the start.
        freed = self._reserve.free()
        try:
            restarted = disk.checkpoint(db, "RESTART")
        except sqlite3.Error:
            restarted = False
        if freed or restarted:
            logger.warning(
                "the disk of the spool %s is full; %s to go on",
                self.path,
                "freed its reserve and checkpointed" if freed else "checkpointed",
            )
        return freed or restarted

    def keep_small(self, busy_s: float = 0.05) -> None:
        """Bring a WAL grown past its limit back to it; make the reserve again once there is
        room. The checkpoint is ``RESTART``: the next transaction starts the WAL again from
        its beginning and SQLite cuts it to ``wal_limit`` (``journal_size_limit``), never
        to nothing, so on a full disk small transactions reuse blocks it already has."""
        if disk.wal_bytes(self.path) > disk.wal_limit(self._max_bytes):
            self._run_plain(functools.partial(disk.checkpoint, mode="RESTART"), busy_s)
        self._reserve.ensure(self._max_bytes, self.path)

    def _run_plain(self, work: Callable[[sqlite3.Connection], Any], busy_s: float) -> Any:
        """Run ``work`` outside a transaction (a checkpoint), waiting at most ``busy_s``."""
        if self._pid != os.getpid() or not self._lock.acquire(timeout=busy_s):
            return None
        try:
            db = self._db
            if db is None or self._closed:
                return None
            db.execute(f"PRAGMA busy_timeout = {int(busy_s * 1000)}")
            return work(db)
        except sqlite3.Error as exc:
            raise (SpoolBusy if is_busy(exc) else SpoolError)(f"spool {self.path}: {exc}") from exc
        finally:
            self._lock.release()

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

    def _budget(self, db: sqlite3.Connection) -> tuple[int, Optional[int]]:
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
        events = more = self._claim(min(limit, step), busy_s)
        while len(more) == step and len(events) < limit:
            try:
                more = self._claim(min(limit - len(events), step), busy_s, take_over=False)
            except SpoolError:
                break  # those before are leased to us already: hand them over
            events = events + more
        return events

    def _claim(self, limit: int, busy_s: Optional[float], take_over: bool = True) -> list[Event]:
        """One claiming transaction; the first of a pass takes dead owners' rows over too."""
        if limit <= 0:
            return []
        now = self._clock()
        if not take_over:
            leased: list[Event] = []

            def plain(db: sqlite3.Connection) -> None:
                leased[:] = rows.claim(db, self.owner, now, now + self._lease_s, limit)

            self._run(plain, busy_s, lambda: self.lines.claimed(leased))
            return leased
        dead: list[str] = []
        taken: list[tuple[str, int]] = []
        events: list[Event] = []
        counts: dict[str, int] = {}

        def work(db: sqlite3.Connection, cap: Optional[int]) -> None:
            taken.clear()
            dead[:] = self._take_over(db, now, cap, taken)
            events[:] = rows.claim(db, self.owner, now, now + self._lease_s, limit)
            counts.clear()
            if dead or taken:  # their rows wait now: count them (lines would miss them)
                counts.update(rows.waiting(db, self.owner, now))

        def committed() -> None:
            self.lines.claimed(events)
            if dead or taken:
                self.lines.recount(counts)

        self._taking_over(work, busy_s, committed, taken)
        self._bury(dead, taken)
        return events

    def refresh(self, busy_s: Optional[float] = None) -> None:
        """Take over dead owners' events and recount the customers waiting from the file."""
        now = self._clock()
        dead: list[str] = []
        taken: list[tuple[str, int]] = []
        counts: dict[str, int] = {}

        def work(db: sqlite3.Connection, cap: Optional[int]) -> None:
            taken.clear()
            dead[:] = self._take_over(db, now, cap, taken)
            counts.clear()
            counts.update(rows.waiting(db, self.owner, now))

        self._taking_over(work, busy_s, lambda: self.lines.recount(counts), taken)
        self._bury(dead, taken)

    def _take_over(
        self, db: sqlite3.Connection, now: float, cap: Optional[int], taken: list[tuple[str, int]]
    ) -> list[str]:
        until = now + self._lease_s
        if cap:  # a full disk: only as many as the database's free pages hold (no growth)
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            cap = min(cap, free * db.execute("PRAGMA page_size").fetchone()[0] // TAKE_ROW_BYTES)
        return take_over_dead(db, self._owners, self.owner, now, until, cap, taken)

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
            self._chunked = cap == 0 or bool(taken)
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

    def close(self, wait_s: float = 0.25) -> None:
        """Close the connections and end our ownership; idempotent, waits at most ``wait_s``."""
        live = self.journal.holds_live() if self._pid == os.getpid() else False
        if self._pid == os.getpid():
            self.journal.close()  # kept on disk while it holds live records
        got = self._lock.acquire(timeout=wait_s)
        db, self._db = self._db, None
        if db is None and got and self._was_open and self._pid == os.getpid() and not self._closed:
            with contextlib.suppress(SpoolError):  # closed for a fork: ended properly below
                db = self._open_late(wait_s)
        was_closed, self._closed = self._closed, True
        if got:
            self._lock.release()
        if db is None and not was_closed and got and self._pid == os.getpid():
            self._owners.release(keep_file=live)  # never opened (busy): the journal's lock
            return
        if db is None or self._pid != os.getpid() or not got:
            return  # another thread is still in a statement: exit closes the rest
        held: object = True
        try:
            # With rows still ours, the lock file stays (unlocked once closed) and our
            # heartbeat row ends now, so another process takes them over at once.
            held = (
                live
                or db.execute(
                    "SELECT 1 FROM events WHERE lease_owner = ? AND lease_until > 0 LIMIT 1",
                    (self.owner,),
                ).fetchone()
            )
            db.execute("PRAGMA busy_timeout = 250")
            if held:
                db.execute("UPDATE owners SET until = 0 WHERE owner = ?", (self.owner,))
            else:
                db.execute("DELETE FROM owners WHERE owner = ?", (self.owner,))
        except sqlite3.Error:
            pass  # held: as read, or True if unknown
        db.close()
        self._owners.release(keep_file=bool(held))
