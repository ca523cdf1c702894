"""The spool's disk: every file it makes counts against ``spool_max_bytes``, and a full disk
never leaves the spool stuck.

Files counted (``on_disk``): the SQLite file, its WAL and shared-memory index, every
process's journal files (``<spool>.owners/*.journal``) and the reserve. The WAL is kept
small: SQLite checkpoints it once it holds ``wal_limit`` bytes (``wal_autocheckpoint``) and
cuts it back to that size when it starts again (``journal_size_limit``); the heartbeat
checkpoints with ``RESTART`` when it is larger anyway (a reader held it back).

A checkpoint copies pages from the WAL into the database file, which may have to grow
first, and in WAL mode even a delete needs room in the WAL. On a disk that stays full:

- the WAL is never truncated to nothing, and transactions that drain the spool (claims,
  lease renewals, removals) change at most ``rows_per_transaction`` rows each, so once a
  checkpoint has run they reuse the WAL's own blocks and need no new ones;
- the spool owns a *reserve* (``<spool>.owners/reserve``, ``wal_limit`` bytes, allocated
  when there is room): when a draining statement fails with "database or disk is full",
  the spool deletes the reserve, checkpoints with ``RESTART`` (the database grows into
  the reserve's room; the WAL keeps its file and starts again from its beginning) and
  tries once more (``SpoolConnection._run``). The reserve is made again once the disk
  has room (``ensure``).
"""

from __future__ import annotations

import glob
import os
import sqlite3
import sys
from typing import Optional

__all__ = [
    "MARGIN_BYTES",
    "Reserve",
    "budget",
    "checkpoint",
    "free_bytes",
    "is_full",
    "on_disk",
    "rows_per_transaction",
    "tune",
    "wal_bytes",
    "wal_limit",
]

# What the files may pass spool_max_bytes by: the WAL frames of the one transaction that
# takes the spool to its bound (sizes are read before it), the shared-memory index, and
# the pages of indexes a batch's rows add beyond their payloads' estimate.
MARGIN_BYTES = 1024 * 1024
RESERVE_NAME = "reserve"
_JOURNALS = "*.journal"
_SQLITE_FULL = 13  # the primary result code (sqlite3.SQLITE_FULL from Python 3.11)


def wal_limit(max_bytes: Optional[int]) -> int:
    """Bytes the WAL may hold before a checkpoint: 1/32 of the bound, 64 KiB to 1 MiB."""
    if max_bytes is None:
        return 1 << 20
    return max(64 << 10, min(1 << 20, max_bytes // 32))


def rows_per_transaction(max_bytes: Optional[int]) -> int:
    """Rows one draining transaction (claim, lease renewal, removal) may change: its WAL
    frames then fit in the WAL's own blocks (``wal_limit``: two rows a page of it), so on
    a disk that stays full it reuses them rather than growing the WAL."""
    return max(32, wal_limit(max_bytes) // 2048)


def tune(db: sqlite3.Connection, max_bytes: Optional[int]) -> None:
    """Keep this connection's WAL near ``wal_limit``: checkpoint there, cut back to it."""
    limit = wal_limit(max_bytes)
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    db.execute(f"PRAGMA wal_autocheckpoint = {max(16, limit // page)}")
    db.execute(f"PRAGMA journal_size_limit = {limit}")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def wal_bytes(path: str) -> int:
    """The WAL file's size on disk."""
    return _size(path + "-wal")


def on_disk(path: str, directory: Optional[str] = None) -> int:
    """Bytes of every file the spool at ``path`` makes: database, WAL, index, journals, reserve
    (journals and reserve in ``directory``, by default ``<path>.owners``)."""
    directory = path + ".owners" if directory is None else directory
    total = _size(path) + _size(path + "-wal") + _size(path + "-shm")
    total += _size(os.path.join(directory, RESERVE_NAME))
    for journal in glob.glob(os.path.join(glob.escape(directory), _JOURNALS)):
        total += _size(journal)
    return total


def budget(
    db: sqlite3.Connection, path: str, max_bytes: Optional[int], keep: int
) -> tuple[int, int]:
    """``(size, limit)`` for ``rows.insert`` inside a write transaction: rows go in while
    the pages in use stay under ``limit``: the bound less every other file's bytes, and
    what the disk has free less ``keep`` (the reserve's size while it is missing: what a
    checkpoint that grows the database needs; rows committed past it would leave the
    WAL's pages nowhere to go).

    Free pages are reused before the file grows, so the database's pages in use count,
    not its length; but a file already as long as the rest leaves room (limit 0: none).
    """
    pages, free, page = (
        int(db.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_count", "freelist_count", "page_size")
    )
    used = (pages - free) * page
    limit = used + free * page + max(0, free_bytes(path) - keep)
    if max_bytes is not None:
        others = on_disk(path) - _size(path)
        if pages * page + others > max_bytes:
            return used, 0
        limit = min(limit, max_bytes - others)
    return used, limit


def free_bytes(path: str) -> int:
    """Bytes free for us on the filesystem of the spool at ``path`` (unknown: no limit)."""
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):
        return sys.maxsize
    return stat.f_bavail * stat.f_frsize


def is_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" (SQLITE_FULL)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return "full" in str(exc).lower()


def checkpoint(db: sqlite3.Connection) -> bool:
    """Copy the WAL into the database; the next transaction starts the WAL again from its
    beginning, in the blocks it has (``RESTART``: the file is kept, cut back to
    ``wal_limit`` by ``journal_size_limit``). False if a reader or writer held part back."""
    row = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    return bool(row is not None and row[0] == 0)


class Reserve:
    """Bytes the spool keeps allocated so that it can always free room for itself."""

    def __init__(self, spool_path: str, size: int) -> None:
        self.path = os.path.join(spool_path + ".owners", RESERVE_NAME)
        self.size = size

    def ensure(self, max_bytes: Optional[int], spool_path: str) -> bool:
        """Allocate the reserve if it is missing and fits (the disk and ``max_bytes``)."""
        if os.path.exists(self.path):
            return True
        if max_bytes is not None and on_disk(spool_path) + self.size > max_bytes:
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return True  # another process made it
        except OSError:
            return False
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, self.size)
            else:
                os.write(fd, bytes(self.size))
        except OSError:
            os.close(fd)
            self.free()  # no room for it now: the next heartbeat tries again
            return False
        os.close(fd)
        return True

    def missing(self) -> int:
        """Its size while it is not on disk (room to keep free for it), else 0."""
        return 0 if os.path.exists(self.path) else self.size

    def free(self) -> bool:
        """Give the reserve's bytes back to the filesystem; False if there was none."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            return False
        return True
