"""Removing answered events' journal rows in batches, on a thread of its own.

An event written ahead (``_spool_ahead``) that gets its final answer does not delete its
row at once: the row waits here up to ``FLUSH_EVERY_S`` and goes with the others in one
transaction, so settling takes no write lock per event and the callers' inserts meet
fewer writers. The same thread checkpoints the WAL when the journal asks (``nudge``).
The price: a row deleted late survives a SIGKILL within that window, and
a replay may then send its event again (the same duplicate the spool already allows for an
event in flight at a crash). The replay heartbeat and ``close`` flush too.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from cms_shipper._spool import Ahead, SpoolError

__all__ = ["FLUSH_EVERY_S", "Flusher"]

FLUSH_EVERY_S = 0.03  # an answered event's journal row is deleted within about this
_AFTER_ERROR_S = 0.25  # the spool failed or was busy: try again after this


class Flusher:
    """Deletes journal rows in batches: ``add`` them, a daemon thread removes them."""

    def __init__(
        self, flush: Callable[[list[Ahead]], None], checkpoint: Callable[[], None]
    ) -> None:
        self._flush = flush  # one transaction; raises SpoolError
        self._checkpoint = checkpoint  # never raises
        self._cv = threading.Condition()
        self._pending: list[Ahead] = []
        self._due = False  # a checkpoint was asked for
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def add(self, rows: list[Ahead]) -> None:
        """Rows whose events have their final answer: deleted within ``FLUSH_EVERY_S``."""
        with self._cv:
            idle = not self._pending  # else the thread is gathering: no need to wake it
            self._pending += rows
            if idle or self._thread is None:
                self._wake()

    def nudge(self) -> None:
        """Checkpoint the WAL soon, on this thread (the journal asks, every so many rows)."""
        with self._cv:
            self._due = True
            self._wake()

    def _wake(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(
                target=self._run, name="cms-shipper-spool-flush", daemon=True
            )
            self._thread.start()
        self._cv.notify()

    def take(self) -> list[Ahead]:
        """Every row waiting (to go in a transaction that runs anyway); ``put_back`` if it fails."""
        with self._cv:
            rows, self._pending = self._pending, []
        return rows

    def put_back(self, rows: list[Ahead]) -> None:
        """Rows a failed transaction did not delete: tried again later."""
        if rows:
            with self._cv:
                self._pending[:0] = rows

    def _run(self) -> None:
        pause = FLUSH_EVERY_S
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._pending) or self._due or self._stopped)
                due, self._due = self._due, False
                if not due:  # gather: more rows come in meanwhile (a stop cuts it short)
                    self._cv.wait_for(lambda: self._stopped, pause)
                if self._stopped:
                    return
            if due:
                self._checkpoint()
            rows = self.take()
            if not rows:
                continue
            try:
                self._flush(rows)
                pause = FLUSH_EVERY_S
            except SpoolError:
                self.put_back(rows)
                pause = _AFTER_ERROR_S

    def stop(self, wait_s: float) -> list[Ahead]:
        """End the thread (waiting at most ``wait_s`` for its batch); the rows left."""
        with self._cv:
            self._stopped = True
            thread = self._thread
            self._cv.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)
        return self.take()

    def reset(self) -> None:
        """In a forked child: no thread, nothing pending (the parent's rows are the parent's)."""
        self._cv = threading.Condition()
        self._pending = []
        self._due = False
        self._thread = None
        self._stopped = False
