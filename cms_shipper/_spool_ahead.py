"""The write-ahead journal: one INSERT per event, on a connection of the caller's thread.

``track_*`` with ``write_ahead`` stores its event here before it returns: one ``INSERT`` into
the lean ``ahead`` table (a plain rowid table, one b-tree) in its own transaction. Each
caller thread has its own connection, so callers share no Python lock (one shared
connection behind a lock measured worse: when its holder stalls, every caller queued
behind it runs out of time). SQLite's write lock is waited for by SQLite's busy handler,
at most the ``busy_s`` of the thread's first call (set once, at connect). The row's handle
is its rowid.

Nothing else runs on these connections: no per-call PRAGMA, no size query (``max_bytes``
is checked against the size the spool's background transactions last measured plus the
bytes written here since: ``measured``), and never a checkpoint (``wal_autocheckpoint=0``;
the spool checkpoints from the background, nudged every ``NUDGE_EVERY`` rows). The owner's
heartbeat row (``owners``) is written before its first journal row.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Callable, Optional

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool_open import SpoolBusy, SpoolError, is_busy

__all__ = ["FAILED", "FULL", "ROW_ERRORS", "ROW_OVERHEAD", "Journal"]

FULL = 0  # write(): over max_bytes, not stored
FAILED = -1  # write(): this event cannot be stored (encoding, SQLite)
ROW_OVERHEAD = 120  # bytes a row costs beyond its payload: ids, times, b-tree cells
# Errors confined to one row: the value cannot be encoded or bound. OperationalError
# (busy, disk full, I/O) concerns the whole transaction and is raised instead.
ROW_ERRORS = (ValueError, TypeError, OverflowError, RecursionError,
              sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError,
              sqlite3.ProgrammingError)  # fmt: skip
_INSERT = "INSERT INTO ahead VALUES (?, ?, ?, ?, ?, ?, ?)"
NUDGE_EVERY = 1000  # rows written between two calls of ``nudge`` (a checkpoint, off-path)


class _Connection:
    """One thread's connection; its lock is only ever contended by ``close``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db: Optional[sqlite3.Connection] = db
        self.lock = threading.Lock()
        self.thread = threading.current_thread()


class Journal:
    """Write-ahead rows of one owner: per-thread connections, no lock shared by callers."""

    def __init__(
        self,
        path: str,
        owner: str,
        *,
        max_bytes: Optional[int],
        lease_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._path = path
        self._owner = owner
        self._max_bytes = max_bytes
        self._lease_s = lease_s
        self._clock = clock
        self._local = threading.local()
        self._all: list[_Connection] = []  # strong references: closed by us, never by GC
        self._all_lock = threading.Lock()
        self._closed = False
        self.registered = False  # our owners row is in the file
        # Bytes in use: as a background transaction last measured, plus written since.
        # Updated without a lock (a lost update only shifts the next measurement's base).
        self.measured = 0
        self.added = 0
        # The spool's background checkpoints the WAL: called every NUDGE_EVERY rows, so a
        # stream of writes without answers (a server down) cannot grow the WAL either.
        self.nudge: Callable[[], None] = lambda: None
        self._since_nudge = 0

    def _connect(self, busy_s: float) -> _Connection:
        with self._all_lock:
            if self._closed:
                raise SpoolError(f"spool {self._path}: the spool is closed")
            try:
                db = sqlite3.connect(self._path, timeout=busy_s, isolation_level=None,
                                     check_same_thread=False)  # fmt: skip
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA wal_autocheckpoint=0")  # callers never pay a checkpoint
            except sqlite3.Error as exc:
                kind = SpoolBusy if is_busy(exc) else SpoolError
                raise kind(f"spool {self._path}: {exc}") from exc
            conn = _Connection(db)
            self._all.append(conn)
        self._local.conn = conn
        return conn

    def write(self, event: Event, busy_s: float) -> int:
        """Store ``event``; its rowid, ``FULL`` or ``FAILED``. Raises SpoolBusy/SpoolError."""
        conn: Optional[_Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(busy_s)
        try:
            payload = json.dumps(event.payload, separators=(",", ":"))
            row = (event.event_id, event.endpoint, event.customer_key, payload,
                   event.tracked_at, event.timestamp, self._owner)  # fmt: skip
        except ROW_ERRORS as exc:
            logger.debug("cannot store event %r: %s", event.event_id, exc)
            return FAILED
        if self._max_bytes is not None and (
            self.measured + self.added + len(payload) > self._max_bytes
        ):
            return FULL
        if not conn.lock.acquire(timeout=busy_s):
            raise SpoolBusy(f"spool {self._path}: closing")
        try:
            if conn.db is None:
                raise SpoolError(f"spool {self._path}: the spool is closed")
            if not self.registered:
                self._once(conn.db, "INSERT OR REPLACE INTO owners VALUES (?, ?)",
                           (self._owner, self._clock() + self._lease_s))  # fmt: skip
                self.registered = True
            rowid = self._once(conn.db, _INSERT, row)
        except ROW_ERRORS as exc:
            logger.debug("cannot store event %r: %s", event.event_id, exc)
            return FAILED
        finally:
            conn.lock.release()
        self.added += len(payload) + ROW_OVERHEAD
        self._since_nudge += 1
        if self._since_nudge >= NUDGE_EVERY:
            self._since_nudge = 0
            self.nudge()
        return rowid

    def _once(self, db: sqlite3.Connection, sql: str, row: tuple[object, ...]) -> int:
        """One autocommit statement; SQLite waits for a busy file (busy_timeout, at connect)."""
        try:
            return int(db.execute(sql, row).lastrowid or 0)
        except sqlite3.Error as exc:
            if isinstance(exc, ROW_ERRORS):
                raise
            kind = SpoolBusy if is_busy(exc) else SpoolError
            raise kind(f"spool {self._path}: {exc}") from exc

    def prune(self, wait_s: float = 0.0) -> None:
        """Close the connections of threads that have ended (heartbeat)."""
        with self._all_lock:
            gone = [c for c in self._all if not c.thread.is_alive()]
        for conn in gone:
            if self._close_one(conn, wait_s):
                with self._all_lock:
                    self._all.remove(conn)

    def close(self, wait_s: float) -> None:
        """Close every connection; one busy in a statement past ``wait_s`` is left to exit."""
        with self._all_lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            self._close_one(conn, wait_s)

    @staticmethod
    def _close_one(conn: _Connection, wait_s: float) -> bool:
        if not conn.lock.acquire(timeout=wait_s):
            return False
        try:
            db, conn.db = conn.db, None
            if db is not None:
                db.close()
        except sqlite3.Error:
            pass
        finally:
            conn.lock.release()
        return True
