"""Opening a spool file: busy is waited for and reported, never mistaken for corruption.

A file is moved aside only when proven unreadable as a spool (not a database, a failed
integrity check, another schema) and no other live process holds an owner lock on it.
Opening an existing spool only reads, so it never waits for a writer (WAL readers do not).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool.owners import Owners
from cms_shipper._spool.records import journal_files, read_live

__all__ = [
    "SpoolBusy",
    "SpoolError",
    "SpoolFull",
    "SpoolStatus",
    "Unreadable",
    "open_spool",
    "read_status",
]

SCHEMA_VERSION = "1"
SCHEMA = (
    """
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
CREATE INDEX IF NOT EXISTS events_order ON events (tracked_at, seq);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
"""
    + """
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, until REAL NOT NULL);
"""
)
# owners: one row per process using the file, its heartbeat (the lease fallback). Written-
# ahead events live in each process's journal files, beside its lock file (_spool_ahead).
_V2 = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS owners") :]
_OURS = {"meta", "events", "sqlite_sequence", "owners"}


class SpoolError(Exception):
    """The spool cannot be used; the client then keeps working in memory."""


class SpoolBusy(SpoolError):
    """Another connection holds the lock longer than the wait allowed: try again later."""


class SpoolFull(SpoolError):
    """The disk (not ``spool_max_bytes``) is full: events that would be stored are dropped."""


class Unreadable(Exception):
    """The file is proven not to be a usable spool."""


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


def is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLite's "database is locked" / "busy" (a wait, not a fault of the file)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes in pages in use (free pages left by deletes excluded): O(1)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _check(db: sqlite3.Connection, writable: bool) -> bool:
    """Raise Unreadable unless ``db`` is a spool (creating the schema in an empty file).

    False (read-only): an empty file, which a client is creating, or whose creator died
    before its schema was in (its events are in its journal, if anywhere)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables - _OURS:
        raise Unreadable(f"not a spool (tables {sorted(tables - _OURS)})")
    if {"meta", "events"} - tables:
        if not writable:
            if not tables:
                return False
            raise Unreadable("not a spool (no events table)")
        # One transaction: another opener sees no table or every table and the version row.
        db.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        raise Unreadable(f"unknown spool schema version {row and row[0]!r}")
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if writable and "events_order" not in names:  # a file from before claims went in order
        db.execute("CREATE INDEX IF NOT EXISTS events_order ON events (tracked_at, seq)")
    if writable and "owners" not in names:  # a file from before the heartbeat rows
        db.executescript("BEGIN IMMEDIATE;" + _V2 + "COMMIT;")
    check = db.execute("PRAGMA quick_check").fetchone()
    if not check or check[0] != "ok":
        raise Unreadable(f"quick_check: {check}")
    return True


def _classify(exc: sqlite3.Error, path: str) -> Exception:
    if is_busy(exc):
        return SpoolBusy(f"the spool {path} is busy: {exc}")
    if isinstance(exc, sqlite3.OperationalError):  # I/O, permissions, no such directory
        return SpoolError(f"cannot open the spool {path}: {exc}")
    return Unreadable(str(exc))  # "file is not a database", "malformed"


def _to_wal(db: sqlite3.Connection) -> None:
    """Switch a new file to WAL; busy because another opener just did it is fine."""
    try:
        db.execute("PRAGMA journal_mode=WAL")  # the only step that needs an exclusive lock
    except sqlite3.OperationalError as exc:
        # Its connection now holds the file open in WAL mode, so ours can never get the
        # exclusive lock: read the mode again rather than wait for it.
        if not is_busy(exc) or db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            raise


def _create(path: str) -> None:
    """Create the file 0600 before SQLite does (its -wal/-shm files copy these bits).

    No descriptor of the file is ever closed here. SQLite's locks are POSIX locks, held
    per process: closing any descriptor of a file drops every lock the process holds on
    it, those of its other connections included (another client with the same spool, or
    one that opened the new file meanwhile). Another process closing its last connection
    would then take this process for gone, checkpoint and delete the WAL, and the
    commits that follow (spilled rows) would be lost. So the file is made under a
    temporary name, closed, and linked into place only if the name is still free.
    """
    if os.path.lexists(path):
        return
    temp = f"{path}.{secrets.token_hex(4)}.new"
    os.close(os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))  # nobody knows it
    try:
        os.link(temp, path)
    except FileExistsError:
        pass  # another process or thread made it meanwhile
    except OSError:
        pass  # no hard links on this filesystem: SQLite creates it (``_connect`` chmods it)
    finally:
        os.unlink(temp)


def _connect(path: str, busy_s: float) -> sqlite3.Connection:
    try:
        _create(path)
        db = sqlite3.connect(path, timeout=busy_s, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise SpoolError(f"cannot create the spool at {path}: {exc}") from exc
    with contextlib.suppress(OSError):  # before the WAL is made; chmod touches no lock
        if os.stat(path).st_uid == os.getuid():
            os.chmod(path, 0o600)  # a file from before 0600, or made by SQLite itself
    try:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            _to_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        _check(db, writable=True)
    except sqlite3.Error as exc:
        db.close()
        raise _classify(exc, path) from exc
    except Unreadable:
        db.close()
        raise
    return db


def open_spool(path: str, busy_s: float, owners: Owners) -> sqlite3.Connection:
    """A connection to the spool at ``path``; moves an unreadable file aside if nobody uses it."""
    try:
        return _connect(path, busy_s)
    except Unreadable as exc:
        if owners.others_alive():
            raise SpoolError(
                f"the spool {path} is unreadable ({exc}) but another live process uses it;"
                " not moved"
            ) from exc
        aside = _move_aside(path, exc)
        db = _connect(path, busy_s)
        logger.error(
            "the spool %s was unreadable (%s); moved it to %s and started a new one",
            path,
            exc,
            aside,
        )
        return db


def _move_aside(path: str, exc: Exception) -> str:
    aside = f"{path}.corrupt-{int(time.time())}"
    try:
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
    except OSError as move:
        raise SpoolError(f"the spool {path} is unreadable ({exc}) and cannot be moved") from move
    return aside


@dataclass
class _Journal:
    """One owner's journal files as read: live records, whether the owner is alive, bytes."""

    events: list[Event]
    alive: bool
    size: int


def read_journals(path: str) -> list[_Journal]:
    """Every owner's journal records. Read before the rows' snapshot (``query_status``): a
    take-over that commits in between shows in the rows, so no record is missed."""
    owners = Owners(path)
    return [
        _Journal(
            read_live(files).events,
            owners.probe(name) is True,
            sum(_file_size(file) for file in files),
        )
        for name, files in journal_files(owners.directory).items()
    ]


def _in_rows(db: sqlite3.Connection, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` have a row (a record taken over after its journal was read)."""
    found: set[str] = set()
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT event_id FROM events WHERE event_id IN ({marks})"  # noqa: S608
        found.update(row[0] for row in db.execute(query, chunk))
    return found


@dataclass
class _Rows:
    """What the ``events`` table holds: counts by endpoint, leases, ages and its pages."""

    by_endpoint: dict[str, int]
    leased: int
    oldest: Optional[float]
    newest: Optional[float]
    size: int


def _rows(db: sqlite3.Connection, now: float) -> _Rows:
    by_endpoint = dict(db.execute("SELECT endpoint, COUNT(*) FROM events GROUP BY endpoint"))
    leased = int(
        db.execute("SELECT COUNT(*) FROM events WHERE lease_until > ?", (now,)).fetchone()[0]
    )
    oldest, newest = db.execute("SELECT MIN(added_at), MAX(added_at) FROM events").fetchone()
    return _Rows(by_endpoint, leased, oldest, newest, used_bytes(db))


def query_status(
    db: sqlite3.Connection, path: str, now: float, journals: Optional[list[_Journal]] = None
) -> SpoolStatus:
    """Counts by endpoint, leases, ages and size, read in one go (journals included).

    ``journals`` read before this transaction's snapshot (else now): a record that is
    also a row (taken over meanwhile) counts once.
    """
    if journals is None:
        journals = read_journals(path)
    taken = _in_rows(db, [event.event_id for journal in journals for event in journal.events])
    return _status(path, now, _rows(db, now), journals, taken)


def _status(
    path: str, now: float, rows: _Rows, journals: list[_Journal], taken: set[str]
) -> SpoolStatus:
    """``rows`` plus the journals' records that are not rows (``taken``).

    A journal record is held by its writer while the writer is alive (its lock file):
    counted as leased. Its age is from its tracking time. Journals are read, never changed.
    """
    by_endpoint, leased = dict(rows.by_endpoint), rows.leased
    oldest, newest, size = rows.oldest, rows.newest, rows.size
    for journal in journals:
        records = [event for event in journal.events if event.event_id not in taken]
        for event in records:
            by_endpoint[event.endpoint] = by_endpoint.get(event.endpoint, 0) + 1
            oldest = event.tracked_at if oldest is None else min(oldest, event.tracked_at)
            newest = event.tracked_at if newest is None else max(newest, event.tracked_at)
        leased += len(records) if journal.alive else 0
        size += journal.size
    return SpoolStatus(
        path=path,
        total=sum(by_endpoint.values()),
        by_endpoint=by_endpoint,
        leased=leased,
        oldest_age_s=None if oldest is None else now - oldest,
        newest_age_s=None if newest is None else now - newest,
        size_bytes=size,
    )


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_status(path: str, busy_s: float = 2.0) -> SpoolStatus:
    """The spool's status, read-only; Unreadable if not a spool, SpoolError if unreadable."""
    journals = read_journals(path)  # first: a take-over committed after shows in the rows
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=busy_s, isolation_level=None)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open {path} read-only: {exc}") from exc
    try:
        db.execute("BEGIN")  # one snapshot for every count
        if not _check(db, writable=False):  # an empty file: no rows yet, journals only
            return _status(path, time.time(), _Rows({}, 0, None, None, 0), journals, set())
        return query_status(db, path, time.time(), journals)
    except sqlite3.Error as exc:
        problem = _classify(exc, path)
        raise problem from exc
    finally:
        db.close()
