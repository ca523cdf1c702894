"""Opening a spool file: busy is waited for and reported, never mistaken for corruption.

A file is moved aside only when proven unreadable as a spool (not a database, a failed
integrity check, another schema) and no other live process holds an owner lock on it.
Opening an existing spool only reads, so it never waits for a writer (WAL readers do not).
The schema and the errors every part of the spool raises are here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time

from cms_shipper._log import logger
from cms_shipper._spool.owners import Owners

__all__ = [
    "SpoolBusy",
    "SpoolError",
    "SpoolFull",
    "Unreadable",
    "check_spool",
    "classify",
    "is_busy",
    "open_spool",
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


def is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLite's "database is locked" / "busy" (a wait, not a fault of the file)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def check_spool(db: sqlite3.Connection, writable: bool) -> bool:
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


def classify(exc: sqlite3.Error, path: str) -> Exception:
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
        # Fails if another process or thread made it meanwhile, or on a filesystem without
        # hard links (SQLite then creates it, and ``_connect`` chmods it).
        with contextlib.suppress(OSError):
            os.link(temp, path)
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
        check_spool(db, writable=True)
    except sqlite3.Error as exc:
        db.close()
        raise classify(exc, path) from exc
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
