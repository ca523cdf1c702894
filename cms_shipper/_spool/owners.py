"""Which spool owners are alive: one lock file per owner, held for the owner's life.

Each process using a spool holds ``fcntl.flock(LOCK_EX)`` on ``<spool>.owners/<owner>.lock``
until it exits; the OS drops the lock when the process dies, even by SIGKILL. Another
process probes with ``LOCK_EX|LOCK_NB``: acquiring it proves the owner dead. This works on
local filesystems; on NFS, or without ``fcntl`` (Windows), a probe answers "unknown" and the
spool falls back to a timer: the owner's heartbeat row in the ``owners`` table (one row per
process, renewed by its replay heartbeat) for its journal, lease expiry for its claims.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
from collections import Counter
from typing import Callable, Optional

from cms_shipper._events import Event
from cms_shipper._spool import rows
from cms_shipper._spool.records import journal_files, read_live

try:
    import fcntl
except ImportError:  # Windows: liveness is unknown, leases alone decide
    fcntl = None  # type: ignore[assignment]

__all__ = ["Owners", "name_of", "take_over_dead"]

_SUFFIX = ".lock"


def _file_name(owner: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", owner) + _SUFFIX


class Owners:
    """The owner lock files of one spool: hold ours, probe the others'."""

    def __init__(self, spool_path: str) -> None:
        self.directory = spool_path + ".owners"
        self._fd: Optional[int] = None
        self._name = ""

    def hold(self, owner: str) -> bool:
        """Take this owner's lock for the life of the process; False if locks are unsupported."""
        if fcntl is None:
            return False
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            name = os.path.join(self.directory, _file_name(owner))
            # Locked under a temporary name, then renamed: a prober never sees the file unlocked.
            temp = f"{name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.replace(temp, name)
            except OSError:
                os.close(fd)
                _unlink(temp)
                return False
        except OSError:
            return False
        self._fd, self._name = fd, name
        return True

    def forget_inherited(self) -> None:
        """In a forked child: close the parent's descriptor without unlocking (it is shared)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self, keep_file: bool = False) -> None:
        """Give up our lock; the file stays only if rows are still leased to us (to be reaped)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            if not keep_file:
                _unlink(self._name)
            with contextlib.suppress(OSError):
                os.close(fd)

    def probe(self, owner: str) -> Optional[bool]:
        """True: alive; False: dead (proven by taking its lock); None: cannot tell."""
        if fcntl is None:
            return None
        name = os.path.join(self.directory, _file_name(owner))
        if name == self._name and self._fd is not None:
            return True
        try:
            fd = os.open(name, os.O_RDWR)
        except OSError:
            return None  # no lock file: an owner without locks (another OS, a lock-less disk)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return True
        # Ours now: the owner is dead. The file goes once its rows are taken over (bury).
        os.close(fd)
        return False

    def bury(self, owner: str) -> None:
        """Remove a dead owner's lock and journal files (after its events were taken over)."""
        _unlink(os.path.join(self.directory, _file_name(owner)))
        for path in journal_files(self.directory).get(name_of(owner), []):
            _unlink(path)

    def others_alive(self) -> Optional[bool]:
        """True if a live process other than us holds a lock here; None if we cannot tell."""
        if fcntl is None:
            return None
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        for name in names:
            path = os.path.join(self.directory, name)
            if not name.endswith(_SUFFIX) or path == self._name:
                continue
            if self.probe(name[: -len(_SUFFIX)]) is not False:
                return True  # alive, or unknown: not proven dead, so treat it as alive
        return False


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def take_over_dead(
    db: sqlite3.Connection,
    owners: Owners,
    me: str,
    now: float,
    until: float,
    limit: Optional[int] = None,
    taken: Optional[list[tuple[str, int]]] = None,
    room: Optional[Callable[[], int]] = None,
    left: Optional[Counter[str]] = None,
) -> list[str]:
    """Take dead owners' events: free their leases, move their journals' live records into
    ``events`` (unleased, waiting in line).

    Inside the caller's write transaction; extends live owners' leases. Returns the dead
    owners whose records are all in ``events`` now (bury them after the commit: their lock
    and journal files go). An owner the OS cannot tell about (no lock file) is dead once
    its heartbeat row (``owners.until``) has passed, or when it has journal files and no
    heartbeat row at all.

    ``limit`` (a full disk) and ``room`` (bytes the new rows may take, WAL frames counted:
    the bound's room, or the database's free pages; asked once, when a dead owner has
    records): move at most this many records, the oldest of each owner first. The records
    moved of an owner not moved in full are added to ``taken`` (mark them done after the
    commit, ``journal.mark_done``), it is not buried yet, and the customers of the records
    it keeps are counted in ``left`` (their newer rows must not be claimed before them).
    """
    beats = dict(db.execute("SELECT owner, until FROM owners WHERE owner != ?", (me,)))
    leased = {
        row[0]
        for row in db.execute(
            "SELECT DISTINCT lease_owner FROM events WHERE lease_until > 0"
            " AND lease_owner IS NOT NULL AND lease_owner != ?",
            (me,),
        )
    }
    journals = journal_files(owners.directory)
    journals.pop(name_of(me), None)
    named = {name_of(owner) for owner in leased | set(beats)}
    alive: list[str] = []
    dead: list[str] = []
    for owner in sorted(leased | set(beats)) + sorted(set(journals) - named):
        state = owners.probe(owner)
        if state is True:
            alive.append(owner)
        elif state is False:
            dead.append(owner)
        elif owner in beats:  # cannot tell: its heartbeat decides
            if beats[owner] <= now:
                dead.append(owner)
        elif owner not in leased:  # journal files, no lock file, no heartbeat: gone
            dead.append(owner)
    whole: list[str] = []
    space: Optional[int] = None  # room's answer, once records need it
    for owner in dead:
        db.execute(
            "UPDATE events SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?",
            (owner,),
        )
        db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
        files = journals.get(name_of(owner))
        live = read_live(files) if files else None
        if live is None:
            whole.append(owner)
            continue
        if space is None and room is not None and live.events:
            space = room()
        n, spent = _fitting(live.events, limit, space)
        rows.insert(db, live.events[:n], now, 0, None, Counter())
        limit = None if limit is None else limit - n
        space = None if space is None else space - spent
        if n == len(live.events):
            whole.append(owner)
            continue
        if taken is not None:
            taken.extend(live.where[:n])
        if left is not None:
            left.update(event.customer_key for event in live.events[n:])
    # A live owner whose heartbeat is late still has its events in hand: never take them.
    db.executemany(
        "UPDATE events SET lease_until = ? WHERE lease_owner = ? AND lease_until > 0"
        " AND lease_until < ?",
        [(until, owner, until) for owner in alive],
    )
    return whole


def _fitting(events: list[Event], limit: Optional[int], room: Optional[int]) -> tuple[int, int]:
    """How many of ``events`` (a prefix) fit ``limit`` records and ``room`` bytes; their bytes."""
    n = len(events) if limit is None else min(len(events), max(0, limit))
    if room is None:
        return n, 0
    spent = 0
    for i in range(n):
        cost = 2 * rows.row_bytes(events[i])  # its pages in the database and in the WAL
        if spent + cost > room:
            return i, spent
        spent += cost
    return n, spent


def name_of(owner: str) -> str:
    """The owner's name in file names: its lock file's and its journal files'."""
    return _file_name(owner)[: -len(_SUFFIX)]
