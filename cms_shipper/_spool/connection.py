"""One process's connection to the spool file: opening, forks, each transaction, closing.

``SpoolConnection`` holds what a process has of the spool: its SQLite connection (opened
at the first statement when the file was busy, or after a fork), its owner lock file
(``owners``), its journal (``journal``) and the spool's reserve (``disk``). ``_run`` runs
one IMMEDIATE transaction under the connection's lock, waiting at most ``busy_s`` for the
file's lock (a busy file raises ``SpoolBusy``, never mistaken for a corrupt one); on a
full disk, work that drains the spool frees the reserve, checkpoints and runs once more.
``Spool`` (``store``) adds what the transactions do to rows.

Durability: WAL with ``synchronous=NORMAL`` and the journal's shared mappings survive the
process being killed (SIGKILL), not a power loss of the machine.
"""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from typing import Any, Callable, Optional, Union

from cms_shipper._log import logger
from cms_shipper._spool import disk, forks
from cms_shipper._spool.journal import Journal
from cms_shipper._spool.opening import (
    SpoolBusy,
    SpoolError,
    SpoolFull,
    Unreadable,
    is_busy,
    open_spool,
)
from cms_shipper._spool.order import Lines
from cms_shipper._spool.owners import Owners, name_of

__all__ = ["SpoolConnection"]


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


class SpoolConnection(abc.ABC):
    """This process's connection to a spool file, its owner lock, journal and reserve."""

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

    @abc.abstractmethod
    def renew(self, busy_s: Optional[float] = None) -> int:
        """The heartbeat (``Spool.renew``): opening writes our owners row through it."""

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
        frees the reserve and checkpoints (``RESTART``), then runs once more; new rows do not:
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
        """The disk is full: free the reserve and checkpoint; True if either helped."""
        # The reserve's bytes let the checkpoint grow the database; RESTART (not TRUNCATE)
        # keeps the WAL's file, so the next transactions reuse its space from the start.
        freed = self._reserve.free()
        try:
            restarted = disk.checkpoint(db)
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
            self._run_plain(disk.checkpoint, busy_s)
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
