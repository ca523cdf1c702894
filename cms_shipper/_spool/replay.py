"""The replay thread: feeds events claimed from the spool back into the pipeline.

A pass renews this process's leases, settles rows left behind, recounts which customers
wait in the spool (``SpoolKeeper.heartbeat``) and claims as many events as the queue has
room for, leaving half of it to live traffic. Passes run every ``spool_replay_interval_s``,
and at once when a replayed event's answer lets its customer's next spooled event go
(``poke``), so a customer's backlog does not wait an interval per event.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from cms_shipper._events import Event

if TYPE_CHECKING:
    from cms_shipper._spool.keeper import SpoolKeeper

__all__ = ["Replayer"]


class Replayer:
    """A daemon thread that feeds spooled events back into the pipeline, periodically."""

    def __init__(
        self,
        keeper: SpoolKeeper,
        submit: Callable[[Event], None],
        room: Callable[[], int],
        interval_s: float,
    ) -> None:
        self._keeper = keeper
        self._submit = submit
        self._room = room
        self._interval_s = interval_s
        self.stop = threading.Event()
        self._cv = threading.Condition()
        self._poked = False
        keeper.poke = self.poke
        self._thread = threading.Thread(target=self._run, name="cms-shipper-replay", daemon=True)
        self._start_lock = threading.Lock()
        self._started = False

    def ensure_started(self) -> None:
        """Start once (the first pass runs at once); cheap to call on every event."""
        if self._started:  # no lock on the track path once running
            return
        with self._start_lock:
            if not self._started and not self.stop.is_set():
                self._thread.start()
                self._started = True

    def poke(self) -> None:
        """Claim again now rather than at the next interval (a customer's line moved on)."""
        with self._cv:
            self._poked = True
            self._cv.notify()

    def halt(self) -> None:
        """Claim nothing more; the thread ends."""
        self.stop.set()
        with self._cv:
            self._cv.notify()

    def _run(self) -> None:
        beat_at = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= beat_at:  # a poke claims; only the interval beats
                self._keeper.heartbeat()
                beat_at = time.monotonic() + self._interval_s
            # Leave half the queue to live traffic, but take one at least when there is
            # room: with max_queue_size=1, half would be none and the spool would never drain.
            room = self._room()
            for event in self._keeper.claim(max(1, room // 2) if room > 0 else 0):
                self._submit(event)
            with self._cv:
                self._cv.wait_for(
                    lambda: self._poked or self.stop.is_set(),
                    max(0.0, beat_at - time.monotonic()),
                )
                self._poked = False
