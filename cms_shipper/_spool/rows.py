"""The statements one ``Spool.apply`` transaction runs on rows, and what each does to ``lines``.

Every function runs inside the caller's write transaction and adds to ``delta`` the change
in rows *waiting* per customer (rows of ``events`` no live process holds; see
``_spool_order``). Journal records (``_spool_ahead``) are live events of their writer and
never wait; one moved into ``events`` unleased does.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple, Optional

from cms_shipper._events import Event
from cms_shipper._log import logger

__all__ = [
    "Added",
    "JournalRecord",
    "claim",
    "insert",
    "release",
    "remove",
    "row_bytes",
    "waiting",
]

COLUMNS = "event_id, endpoint, customer_key, payload, tracked_at, timestamp"
ROW_OVERHEAD = 120  # bytes a row costs beyond its payload: ids, times, b-tree cells
# Errors confined to one row: the value cannot be encoded or bound. OperationalError
# (busy, disk full, I/O) concerns the whole transaction and is raised instead.
ROW_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
)


class Added(NamedTuple):
    """What ``add`` could not store: over ``max_bytes``, or failing on its own."""

    refused: list[str]
    failed: list[str]


class JournalRecord(NamedTuple):
    """A written-ahead event: its journal handle, and the event."""

    handle: int
    event: Event


def remove(
    db: sqlite3.Connection, me: str, now: float, ids: Iterable[str], delta: Counter[str]
) -> None:
    """Delete ``events`` rows with a final answer (ours, or waiting ones)."""
    for event_id in ids:
        if db.execute(
            "DELETE FROM events WHERE event_id = ? AND lease_owner = ?", (event_id, me)
        ).rowcount:
            continue  # ours: never counted as waiting
        row = db.execute(
            "SELECT customer_key, lease_owner, lease_until FROM events WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if row is not None:
            db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
            if row[1] is None or row[2] <= now:
                delta[row[0]] -= 1


def release(db: sqlite3.Connection, me: str, ids: Iterable[str], delta: Counter[str]) -> None:
    """Give our leases on ``events`` rows back: they wait in line again."""
    for event_id in ids:
        if db.execute(
            "UPDATE events SET lease_owner = NULL, lease_until = 0"
            " WHERE event_id = ? AND lease_owner = ?",
            (event_id, me),
        ).rowcount:
            row = db.execute(
                "SELECT customer_key FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            delta[row[0]] += 1


def _encoded(event: Event) -> str:
    """The payload as a row stores it."""
    return json.dumps(event.payload, separators=(",", ":"))


def row_bytes(event: Event) -> int:
    """What a row of ``event`` costs in the database: its payload's length and the overhead."""
    return len(_encoded(event)) + ROW_OVERHEAD


def insert(
    db: sqlite3.Connection,
    events: Sequence[Event],
    now: float,
    size: int,
    max_bytes: Optional[int],
    delta: Counter[str],
    cost: int = 1,
) -> Added:
    """Add events to ``events``, unleased (twice is harmless); those not stored, and why."""
    # max_bytes counts the pages in use (``size``, measured by the caller); within one
    # call, each row counts as its payload's length plus a small overhead, ``cost`` times
    # (2 in WAL mode: its pages are in the WAL too until a checkpoint).
    added = Added([], [])
    for event in events:
        try:
            payload = _encoded(event)
            if max_bytes is not None and size + cost * len(payload) > max_bytes:
                added.refused.append(event.event_id)
                continue
            cursor = db.execute(
                f"INSERT OR IGNORE INTO events ({COLUMNS}, added_at, lease_owner, lease_until)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0)",
                (
                    event.event_id,
                    event.endpoint,
                    event.customer_key,
                    payload,
                    event.tracked_at,
                    event.timestamp,
                    now,
                ),
            )
        except ROW_ERRORS as exc:
            added.failed.append(event.event_id)
            logger.debug("cannot store event %r: %s", event.event_id, exc)
            continue
        if cursor.rowcount:
            size += cost * (len(payload) + ROW_OVERHEAD)
            delta[event.customer_key] += 1
    return added


def claim(
    db: sqlite3.Connection,
    me: str,
    now: float,
    until: float,
    limit: int,
    skip: Collection[str] = (),
) -> list[Event]:
    """Lease up to ``limit`` waiting events to ``me``: per customer, a prefix in tracking order.

    Customers in ``skip`` are not claimed (older events of theirs wait in a dead owner's
    journal, not taken over yet)."""
    # Customers with an event leased by someone (anyone, us included) are skipped: their
    # older events are in flight, and a newer one must not overtake them. Tracking order,
    # not insertion order: an event spilled late (kept in memory first) still goes before
    # a newer one written ahead earlier.
    cursor = db.execute(
        f"SELECT seq, {COLUMNS} FROM events AS e"  # noqa: S608
        " WHERE e.lease_until <= :now AND NOT EXISTS ("
        "   SELECT 1 FROM events AS b WHERE b.customer_key = e.customer_key"
        "   AND b.lease_until > :now)"
        " ORDER BY tracked_at, seq LIMIT :limit",
        {"now": now, "limit": -1 if skip else limit},
    )
    rows: list[tuple[Any, ...]] = []
    for row in cursor:
        if skip and row[3] in skip:
            continue
        rows.append(row)
        if len(rows) >= limit:
            break
    cursor.close()
    db.executemany(
        "UPDATE events SET lease_owner = ?, lease_until = ? WHERE seq = ?",
        [(me, until, row[0]) for row in rows],
    )
    return [Event.of(r[1], r[2], json.loads(r[4]), r[5], r[6]) for r in rows]


def waiting(db: sqlite3.Connection, me: str, now: float) -> dict[str, int]:
    """Rows waiting per customer: ``events`` rows no live process holds (a recount)."""
    return dict(
        db.execute(
            "SELECT customer_key, COUNT(*) FROM events WHERE lease_owner IS NULL"
            " OR (lease_owner != ? AND lease_until <= ?) GROUP BY customer_key",
            (me, now),
        )
    )
