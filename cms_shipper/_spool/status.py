"""What a spool holds, read without changing it: its rows and every owner's journal records.

``read_status`` (``cms-shipper spool status``, the replay command's counts) opens the file
read-only; ``query_status`` reads inside a connection's transaction (``Spool.status``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote

from cms_shipper._events import Event
from cms_shipper._spool.opening import SpoolError, check_spool, classify
from cms_shipper._spool.owners import Owners
from cms_shipper._spool.records import journal_files, read_live

__all__ = ["SpoolStatus", "query_status", "read_journals", "read_status", "used_bytes"]


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


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes in pages in use (free pages left by deletes excluded): O(1)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


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
        if not check_spool(db, writable=False):  # an empty file: no rows yet, journals only
            return _status(path, time.time(), _Rows({}, 0, None, None, 0), journals, set())
        return query_status(db, path, time.time(), journals)
    except sqlite3.Error as exc:
        problem = classify(exc, path)
        raise problem from exc
    finally:
        db.close()
