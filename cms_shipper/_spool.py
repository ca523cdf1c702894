"""The on-disk spool: a SQLite file (WAL) of event payloads, shared safely by processes.

Storage only: no threads, no HTTP, no policy (``_spooling`` decides what goes in and out).
An event is *claimed* by one process at a time through a lease that expires if its holder
dies, so a fleet sharing one file sends no event twice and strands none. Claims take, per
customer, a prefix of its events and skip customers leased by another process, so
per-customer order holds across processes too.

Durability: WAL with ``synchronous=NORMAL`` survives the process being killed (SIGKILL),
not a power loss of the machine. Rows hold the event's payload, never the token.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from cms_shipper._events import Event
from cms_shipper._log import logger

__all__ = ["Spool", "SpoolError", "SpoolStatus"]

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    tracked_at REAL NOT NULL,
    timestamp TEXT,
    added_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_customer ON events (customer_key, seq);
CREATE INDEX IF NOT EXISTS events_lease ON events (lease_until);
"""
_ROW_OVERHEAD = 120  # bytes a row costs beyond its payload: ids, indexes, times
_COLUMNS = "event_id, endpoint, customer_key, payload, tracked_at, timestamp"


class SpoolError(Exception):
    """The spool cannot be used; the client then keeps working in memory."""


@dataclass(frozen=True)
class SpoolStatus:
    """What the spool holds."""

    path: str
    total: int
    by_endpoint: dict[str, int]
    leased: int
    oldest_age_s: Optional[float]
    newest_age_s: Optional[float]
    size_bytes: int


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
    ) -> None:
        self.path = os.fspath(path)
        self._max_bytes = max_bytes
        self._lease_s = lease_s
        self._clock = clock
        self.owner = owner or _owner()
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._page_size = 0  # read at connect: fixed for the file's life (no VACUUM here)
        self._pid = os.getpid()
        self._open()

    # -- opening --------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self._move_aside(exc)
            try:
                self._db = self._connect()
            except (sqlite3.Error, OSError) as again:
                raise SpoolError(f"cannot open a fresh spool at {self.path}: {again}") from again
            logger.error(
                "cms_shipper: the spool %s was unreadable (%s); moved it to %s and started a"
                " new one", self.path, exc, aside,
            )  # fmt: skip
        except OSError as exc:
            raise SpoolError(f"cannot create the spool at {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # Create the file 0600 before SQLite does (its -wal/-shm files copy these bits).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        if os.stat(self.path).st_uid == os.getuid():
            os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"unknown spool schema version {version!r}")
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, exc: Exception) -> str:
        aside = f"{self.path}.corrupt-{int(time.time())}"
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as move:
            raise SpoolError(
                f"the spool {self.path} is unreadable ({exc}) and cannot be moved"
            ) from move
        return aside

    def reopen(self) -> None:
        """After ``os.fork()``: a new connection and a new lease owner (never share one)."""
        self._lock = threading.Lock()
        self._db = None  # the parent's connection is not touched (closing it would hurt the parent)
        self._pid = os.getpid()
        self.owner = _owner()
        self._open()

    # -- statements -----------------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` in one IMMEDIATE transaction, mapping every failure to SpoolError."""
        if self._pid != os.getpid():
            self.reopen()
        with self._lock:
            if self._db is None:
                raise SpoolError("the spool is closed")
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = work(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {exc}") from exc

    def _size(self, db: sqlite3.Connection) -> int:
        # Pages in use (free pages left by deletes excluded): O(1), unlike summing rows.
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def add(self, events: Sequence[Event], *, leased: bool) -> list[str]:
        """Store events (adding one twice is harmless); return the ids refused as over max_bytes.

        The bound counts the database pages in use; within one call, each row counts as its
        payload's length plus a small overhead until the next call measures again.
        """
        if not events:
            return []
        now = self._clock()
        owner, until = (self.owner, now + self._lease_s) if leased else (None, 0.0)

        def work(db: sqlite3.Connection) -> list[str]:
            size, refused = self._size(db), []
            for event in events:
                payload = json.dumps(event.payload, separators=(",", ":"))
                if self._max_bytes is not None and size + len(payload) > self._max_bytes:
                    refused.append(event.event_id)
                    continue
                cursor = db.execute(
                    f"INSERT OR IGNORE INTO events ({_COLUMNS}, added_at, lease_owner, lease_until)"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.event_id, event.endpoint, event.customer_key, payload,
                     event.tracked_at, event.timestamp, now, owner, until),
                )  # fmt: skip
                size += len(payload) + _ROW_OVERHEAD if cursor.rowcount else 0
            return refused

        result: list[str] = self._run(work)
        return result

    def claim(self, limit: int) -> list[Event]:
        """Lease up to ``limit`` events to this owner: oldest first, per-customer prefixes."""
        if limit <= 0:
            return []
        now = self._clock()

        def work(db: sqlite3.Connection) -> list[Event]:
            # Customers with an event leased by someone (anyone, us included) are skipped:
            # their older events are in flight, and a newer one must not overtake them.
            rows = db.execute(
                f"SELECT seq, {_COLUMNS} FROM events AS e"  # noqa: S608
                " WHERE e.lease_until <= :now AND NOT EXISTS ("
                "   SELECT 1 FROM events AS b WHERE b.customer_key = e.customer_key"
                "   AND b.lease_until > :now)"
                " ORDER BY seq LIMIT :limit",
                {"now": now, "limit": limit},
            ).fetchall()
            db.executemany(
                "UPDATE events SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                [(self.owner, now + self._lease_s, row[0]) for row in rows],
            )
            return [Event.of(row[1], row[2], json.loads(row[4]), row[5], row[6]) for row in rows]

        result: list[Event] = self._run(work)
        return result

    def renew(self) -> int:
        """Extend this owner's leases to now + lease_s (heartbeat); returns rows renewed."""
        until = self._clock() + self._lease_s
        count: int = self._run(
            lambda db: (
                db.execute(
                    "UPDATE events SET lease_until = ? WHERE lease_owner = ? AND lease_until > 0",
                    (until, self.owner),
                ).rowcount
            )
        )
        return count

    def release(self, event_ids: Iterable[str]) -> None:
        """Give leases back so any process may take these events now."""
        ids = [(event_id, self.owner) for event_id in event_ids]
        if ids:
            self._run(lambda db: db.executemany(
                "UPDATE events SET lease_owner = NULL, lease_until = 0"
                " WHERE event_id = ? AND lease_owner = ?", ids))  # fmt: skip

    def remove(self, event_ids: Iterable[str]) -> None:
        """Delete events that have a final outcome."""
        ids = [(event_id,) for event_id in event_ids]
        if ids:
            self._run(lambda db: db.executemany("DELETE FROM events WHERE event_id = ?", ids))

    def status(self) -> SpoolStatus:
        """Counts by endpoint, leases, ages and size."""
        now = self._clock()

        def work(db: sqlite3.Connection) -> SpoolStatus:
            by_endpoint = dict(
                db.execute("SELECT endpoint, COUNT(*) FROM events GROUP BY endpoint")
            )
            leased = db.execute("SELECT COUNT(*) FROM events WHERE lease_until > ?", (now,))
            ages = db.execute("SELECT MIN(added_at), MAX(added_at) FROM events").fetchone()
            return SpoolStatus(
                path=self.path, total=sum(by_endpoint.values()), by_endpoint=by_endpoint,
                leased=int(leased.fetchone()[0]),
                oldest_age_s=None if ages[0] is None else now - ages[0],
                newest_age_s=None if ages[1] is None else now - ages[1],
                size_bytes=self._size(db),
            )  # fmt: skip

        result: SpoolStatus = self._run(work)
        return result

    def purge(self) -> int:
        """Delete every event; returns how many."""
        count: int = self._run(lambda db: db.execute("DELETE FROM events").rowcount)
        return count

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None and self._pid == os.getpid():
            db.close()
