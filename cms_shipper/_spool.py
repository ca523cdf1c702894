"""The on-disk spool: a SQLite file (WAL) of event payloads, shared safely by processes.

Storage only: no threads, no HTTP, no policy (``_spooling`` decides what goes in and out).
An event is *claimed* by one process at a time through a lease. A process's leases end at
once when it dies (its owner lock file, ``_spool_owners``, is then free), or after
``lease_s`` where the OS cannot tell (no ``fcntl``, a network filesystem). Claims take, per
customer, a prefix of its events in tracking order and skip customers leased by another
process.

``lines`` (``_spool_order.Lines``) says which customers this process must hold back
for order; it is kept in step with every transaction on the main connection and recounted
by ``refresh``, so rows another process adds are seen at the next ``refresh``.

Every wait for the file's lock is bounded (``busy_s``, per call); a busy file raises
``SpoolBusy`` and is never treated as corrupt. One event that cannot be stored (encoding,
SQLite) is reported in ``Added.failed`` and the rest of the batch is stored.

Durability: WAL with ``synchronous=NORMAL`` survives the process being killed (SIGKILL),
not a power loss of the machine. Rows hold the event's payload, never the token.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple, Optional, Union

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool_open import (
    SpoolBusy,
    SpoolError,
    SpoolStatus,
    is_busy,
    open_spool,
    query_status,
    used_bytes,
)
from cms_shipper._spool_order import Lines
from cms_shipper._spool_owners import Owners, take_over_dead

__all__ = ["Added", "Spool", "SpoolBusy", "SpoolError", "SpoolStatus"]

_ROW_OVERHEAD = 120  # bytes a row costs beyond its payload: ids, indexes, times
_COLUMNS = "event_id, endpoint, customer_key, payload, tracked_at, timestamp"
# Errors confined to one row: the value cannot be encoded or bound. OperationalError
# (busy, disk full, I/O) concerns the whole transaction and is raised instead.
_ROW_ERRORS = (ValueError, TypeError, OverflowError, RecursionError,
               sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError,
               sqlite3.ProgrammingError)  # fmt: skip


class Added(NamedTuple):
    """What ``add`` could not store: over ``max_bytes``, or failing on its own."""

    refused: list[str]
    failed: list[str]


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
    ) -> None:
        self.path = os.fspath(path)
        self._max_bytes = max_bytes
        self._lease_s = lease_s
        self._clock = clock
        self._busy_s = busy_s
        self.owner = owner or _owner()
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        # write-ahead's own connection: track_* never queues behind a background thread's wait
        self._fast_lock = threading.Lock()
        self._fast_db: Optional[sqlite3.Connection] = None
        self._pid = os.getpid()
        self._owners = Owners(self.path)
        self.lines = Lines()  # which customers wait for their spooled events
        self._open()

    def _open(self) -> None:
        # Hold our owner lock first: from here on, probes see this process as alive.
        self._owners.hold(self.owner)
        try:
            self._db = open_spool(self.path, self._busy_s, self._owners)
        except BaseException:
            self._owners.release()
            raise

    def reopen(self) -> None:
        """After ``os.fork()``: a new connection and a new owner (never share either)."""
        self._lock, self._fast_lock = threading.Lock(), threading.Lock()
        # The parent's connections are not touched (closing them would hurt the parent).
        self._db = self._fast_db = None
        self.lines = Lines()  # the parent's claims are the parent's
        self._owners.forget_inherited()
        self._pid = os.getpid()
        self.owner = _owner()
        self._open()

    # -- statements -----------------------------------------------------------------

    def _connection(self, fast: bool) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("the spool is closed")
        if not fast:
            return self._db
        if self._fast_db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA synchronous=NORMAL")
            self._fast_db = db
        return self._fast_db

    def _run(
        self,
        work: Callable[[sqlite3.Connection], Any],
        busy_s: Optional[float],
        fast: bool = False,
        committed: Optional[Callable[[], None]] = None,
    ) -> Any:
        """Run ``work`` in one IMMEDIATE transaction, waiting at most ``busy_s`` for locks.

        ``committed`` runs after the commit, still under the lock: it updates ``lines``,
        so a concurrent ``refresh`` never counts a change twice or misses it.
        """
        if self._pid != os.getpid():
            self.reopen()
        wait = self._busy_s if busy_s is None else max(0.0, busy_s)
        lock = self._fast_lock if fast else self._lock
        if not lock.acquire(timeout=wait):
            raise SpoolBusy(f"spool {self.path}: in use by another thread of this process")
        try:
            try:
                db = self._connection(fast)
                db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = work(db)
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                if committed is not None:
                    committed()
                return out
            except sqlite3.Error as exc:
                kind = SpoolBusy if is_busy(exc) else SpoolError
                raise kind(f"spool {self.path}: {exc}") from exc
        finally:
            lock.release()

    def _insert(
        self, db: sqlite3.Connection, events: Sequence[Event], leased: bool, delta: Counter[str]
    ) -> Added:
        now = self._clock()
        owner, until = (self.owner, now + self._lease_s) if leased else (None, 0.0)
        size = used_bytes(db)
        added = Added([], [])
        for event in events:
            try:
                payload = json.dumps(event.payload, separators=(",", ":"))
                if self._max_bytes is not None and size + len(payload) > self._max_bytes:
                    added.refused.append(event.event_id)
                    continue
                cursor = db.execute(
                    f"INSERT OR IGNORE INTO events ({_COLUMNS}, added_at, lease_owner, lease_until)"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.event_id, event.endpoint, event.customer_key, payload,
                     event.tracked_at, event.timestamp, now, owner, until),
                )  # fmt: skip
            except _ROW_ERRORS as exc:
                added.failed.append(event.event_id)
                logger.debug("cannot store event %r: %s", event.event_id, exc)
                continue
            if cursor.rowcount:
                size += len(payload) + _ROW_OVERHEAD
                if not leased:
                    delta[event.customer_key] += 1
        return added

    def add(
        self, events: Sequence[Event], *, leased: bool, busy_s: Optional[float] = None
    ) -> Added:
        """Store events (twice is harmless); returns those not stored, and why."""
        # max_bytes counts the pages in use; within one call, each row counts as its
        # payload's length plus a small overhead until the next call measures again.
        return self.apply(add=events, leased=leased, busy_s=busy_s, fast=leased)

    def apply(
        self,
        *,
        remove: Iterable[str] = (),
        release: Iterable[str] = (),
        add: Sequence[Event] = (),
        leased: bool = False,
        busy_s: Optional[float] = None,
        fast: bool = False,
    ) -> Added:
        """Remove rows, release our leases and add events, in one transaction."""
        # fast: the write-ahead connection, so a caller's thread never waits for the lock
        # this process's background threads hold while they wait for the file. It only
        # adds leased rows, which ``lines`` does not count.
        gone, freed = list(remove), list(release)
        if not (gone or freed or add):
            return Added([], [])
        delta: Counter[str] = Counter()

        def work(db: sqlite3.Connection) -> Added:
            delta.clear()
            me, now = self.owner, self._clock()
            for event_id in gone:
                if db.execute("DELETE FROM events WHERE event_id = ? AND lease_owner = ?",
                              (event_id, me)).rowcount:  # fmt: skip
                    continue  # ours: never counted as waiting
                row = db.execute("SELECT customer_key, lease_owner, lease_until FROM events"
                                 " WHERE event_id = ?", (event_id,)).fetchone()  # fmt: skip
                if row is not None:
                    db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
                    if row[1] is None or row[2] <= now:
                        delta[row[0]] -= 1
            for event_id in freed:
                if db.execute(
                    "UPDATE events SET lease_owner = NULL, lease_until = 0"
                    " WHERE event_id = ? AND lease_owner = ?",
                    (event_id, me),
                ).rowcount:
                    row = db.execute("SELECT customer_key FROM events WHERE event_id = ?",
                                     (event_id,)).fetchone()  # fmt: skip
                    delta[row[0]] += 1
            return self._insert(db, add, leased, delta) if add else Added([], [])

        result: Added = self._run(
            work, busy_s, fast, lambda: self.lines.changed(delta, itertools.chain(gone, freed))
        )
        return result

    def claim(self, limit: int, busy_s: Optional[float] = None) -> list[Event]:
        """Lease up to ``limit`` events to this owner: per customer, a prefix in tracking order."""
        if limit <= 0:
            return []
        now = self._clock()
        dead: list[str] = []
        events: list[Event] = []

        def work(db: sqlite3.Connection) -> None:
            dead[:] = take_over_dead(db, self._owners, self.owner, now + self._lease_s)
            # Customers with an event leased by someone (anyone, us included) are skipped:
            # their older events are in flight, and a newer one must not overtake them.
            # Tracking order, not insertion order: an event spilled late (kept in memory
            # first) still goes before a newer one written ahead earlier.
            rows = db.execute(
                f"SELECT seq, {_COLUMNS} FROM events AS e"  # noqa: S608
                " WHERE e.lease_until <= :now AND NOT EXISTS ("
                "   SELECT 1 FROM events AS b WHERE b.customer_key = e.customer_key"
                "   AND b.lease_until > :now)"
                " ORDER BY tracked_at, seq LIMIT :limit",
                {"now": now, "limit": limit},
            ).fetchall()
            db.executemany(
                "UPDATE events SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                [(self.owner, now + self._lease_s, row[0]) for row in rows],
            )
            events[:] = [Event.of(r[1], r[2], json.loads(r[4]), r[5], r[6]) for r in rows]

        self._run(work, busy_s, committed=lambda: self.lines.claimed(events))
        self._bury(dead)
        return events

    def refresh(self, busy_s: Optional[float] = None) -> None:
        """Free dead owners' leases and recount the customers waiting from the file."""
        now = self._clock()
        dead: list[str] = []
        counts: dict[str, int] = {}

        def work(db: sqlite3.Connection) -> None:
            dead[:] = take_over_dead(db, self._owners, self.owner, now + self._lease_s)
            counts.clear()
            counts.update(db.execute(
                "SELECT customer_key, COUNT(*) FROM events WHERE lease_owner IS NULL"
                " OR (lease_owner != ? AND lease_until <= ?) GROUP BY customer_key",
                (self.owner, now)))  # fmt: skip

        self._run(work, busy_s, committed=lambda: self.lines.recount(counts))
        self._bury(dead)

    def _bury(self, dead: list[str]) -> None:
        for owner in dead:
            logger.info("took over the spool leases of %s (it died)", owner)
            self._owners.bury(owner)

    def renew(self, busy_s: Optional[float] = None) -> int:
        """Extend this owner's leases to now + lease_s (heartbeat); returns rows renewed."""
        until = self._clock() + self._lease_s
        count: int = self._run(
            lambda db: (
                db.execute(
                    "UPDATE events SET lease_until = ? WHERE lease_owner = ? AND lease_until > 0",
                    (until, self.owner),
                ).rowcount
            ),
            busy_s,
        )
        return count

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
        """Delete every event; returns how many."""
        count: int = self._run(lambda db: db.execute("DELETE FROM events").rowcount, None)
        return count

    def close(self, wait_s: float = 0.25) -> None:
        """Close the connection and end our ownership; idempotent, waits at most ``wait_s``."""
        with contextlib.suppress(sqlite3.Error):
            if self._fast_lock.acquire(timeout=wait_s):
                fast, self._fast_db = self._fast_db, None
                self._fast_lock.release()
                if fast is not None and self._pid == os.getpid():
                    fast.close()
        got = self._lock.acquire(timeout=wait_s)
        db, self._db = self._db, None
        if got:
            self._lock.release()
        if db is None or self._pid != os.getpid() or not got:
            return  # another thread is still in a statement: exit closes the rest
        try:
            # With rows still leased to us, the lock file stays (unlocked once closed) so
            # another process can prove us dead and take them over at once.
            held = db.execute(
                "SELECT 1 FROM events WHERE lease_owner = ? AND lease_until > 0 LIMIT 1",
                (self.owner,),
            ).fetchone()
        except sqlite3.Error:
            held = True
        db.close()
        self._owners.release(keep_file=bool(held))
