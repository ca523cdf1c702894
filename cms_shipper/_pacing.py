"""The shared "not before" gate every request passes on its way out.

Two things hold requests back, for all lanes at once: a blackout after the server said
429 (or sent Retry-After), so one rate-limit answer pauses everybody instead of starting a
retry storm; and, with ``max_requests_per_minute`` set, pacing that spaces requests
evenly so the client never exceeds the cap.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

__all__ = ["Gate"]


class Gate:
    """Blackout after rate limiting plus optional even pacing; thread-safe."""

    def __init__(
        self,
        max_requests_per_minute: Optional[int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = 60.0 / max_requests_per_minute if max_requests_per_minute else 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._blocked_until = 0.0
        self._next_slot = 0.0

    def block_for(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` from now (extends, never shortens)."""
        until = self._clock() + max(0.0, seconds)
        with self._lock:
            self._blocked_until = max(self._blocked_until, until)

    def blocked_for(self) -> float:
        """Seconds until the blackout ends (0.0 when open)."""
        return max(0.0, self._blocked_until - self._clock())

    def pass_through(self, stop: threading.Event) -> bool:
        """Wait for the blackout to end and for a pacing slot; False if ``stop`` is set first.

        The wait re-checks after every sleep because another lane may extend the blackout
        while this one sleeps.
        """
        reserved: Optional[float] = None
        while True:
            with self._lock:
                now = self._clock()
                delay = self._blocked_until - now
                if delay <= 0:
                    if reserved is None:
                        # Reserve a slot once, so lanes queue up instead of racing for it.
                        reserved = max(now, self._next_slot)
                        self._next_slot = reserved + self._interval_s
                    delay = reserved - now
                    if delay <= 0:
                        return not stop.is_set()
            if stop.wait(delay):
                return False
