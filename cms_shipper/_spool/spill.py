"""The spill writer: a full queue's events go into the spool from a thread of its own.

``track_*`` must never wait for the spool file's lock (another process may hold it for
seconds). So when the queue is full, the caller's thread only hands the event to this
writer (a bounded backlog, in arrival order) and returns; the event stays pending until
the writer has stored it and settled it (``spooled``, or ``dropped`` when the spool is full
or cannot store it). A backlog that is full is the one case the caller's event is dropped
(``queue_full``, counted): memory is bounded, and the writer is then behind by
``capacity`` events.

Order: each event is counted *coming* for its customer (``Lines.expect``) before the caller
returns, and uncounted only after its commit counted it waiting, so a later event of the
customer is held back behind it whichever thread looks. While the file is busy, the writer
tries again (``write`` returns None) without losing its place.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Optional

from cms_shipper.results import Result, Tracked

__all__ = ["SpillWriter"]

Finish = Callable[[Tracked, Result], object]
BUSY_RETRY_S = 0.05  # the file was busy: look again after this
BATCH = 256  # events per transaction


class SpillWriter:
    """A bounded backlog of spills and the daemon thread that writes them, oldest first."""

    def __init__(
        self,
        write: Callable[[list[Tracked], list[Result]], Optional[list[Result]]],
        expect: Callable[[list[str], int], None],
        capacity: int,
    ) -> None:
        self._write = write  # outcomes once stored, or None: busy, nothing written
        self._expect = expect  # Lines.expect of the spool in use
        self._capacity = capacity
        self._backlog: deque[tuple[Tracked, Result, Finish]] = deque()
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def put(self, item: Tracked, final: Result, finish: Finish) -> bool:
        """Take ``item`` (its outcome would be ``final``) for the spool; False when full."""
        event = item.event
        if event is None:
            return False
        with self._cv:
            if self._stopped or len(self._backlog) >= self._capacity:
                return False
            self._expect([event.customer_key], 1)  # before anyone can see the caller return
            self._backlog.append((item, final, finish))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cms-shipper-spill", daemon=True
                )
                self._thread.start()
            self._cv.notify()
        return True

    def backlog(self) -> int:
        """Events handed over and not yet written."""
        return len(self._backlog)

    def stop(self) -> None:
        """Write nothing more; what is left is settled by whoever closes (``close()``)."""
        with self._cv:
            self._stopped = True
            left = list(self._backlog)
            self._backlog.clear()
            self._cv.notify()
        self._expect([item.event.customer_key for item, _, _ in left if item.event], -1)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._backlog or self._stopped)
                if self._stopped:
                    return
                batch = list(self._backlog)[:BATCH]
            items = [item for item, _, _ in batch]
            out = self._write(items, [final for _, final, _ in batch])
            if out is None:  # busy: the batch keeps its place, nothing was written
                with self._cv:
                    self._cv.wait_for(lambda: self._stopped, BUSY_RETRY_S)
                continue
            with self._cv:
                if self._stopped:  # stop() uncounted and handed back the whole backlog
                    return
                for _ in batch:
                    self._backlog.popleft()
            self._expect([item.event.customer_key for item in items if item.event], -1)
            for (item, _, finish), final in zip(batch, out):
                finish(item, final)
