"""Logging that does not flood: repeats of one kind of message are counted, not printed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

__all__ = ["RateLimitedLog", "logger"]

logger = logging.getLogger("cms_shipper")


class RateLimitedLog:
    """Logs the first message of each key, then at most one per ``interval_s`` with a count."""

    def __init__(
        self,
        log: logging.Logger = logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when logged, suppressed since)

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval_s`` ago."""
        if not self._log.isEnabledFor(level):
            return
        now = self._clock()
        with self._lock:
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            msg += " (%d similar messages suppressed in the last %.0f s)"
            args = (*args, suppressed, self._interval_s)
        self._log.log(level, msg, *args, exc_info=exc_info)
