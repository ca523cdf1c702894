"""Logging that does not flood: repeats of one kind of message are counted, not printed."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Callable, Optional

__all__ = ["MAX_ERROR_TEXT", "MAX_KINDS", "RateLimitedLog", "logger", "one_line"]

MAX_ERROR_TEXT = 300  # characters of a non-JSON body or an error kept for results and logs


def one_line(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters on a single line (no forged log lines)."""
    flat = " ".join(text[: limit + 1].split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


logger = logging.getLogger("cms_shipper")

MAX_KINDS = 256  # kinds remembered at once; a stream of distinct keys must not grow memory
_FOLD_AT = 256  # suppressed repeats held before they are counted into the table


class RateLimitedLog:
    """Logs the first message of each kind (``key``), then at most one per ``interval_s``.

    A line that follows suppressed repeats of its kind says how many there were since
    the previous line of that kind. At most ``max_keys`` kinds are remembered: when a
    new kind arrives with the table full, kinds that have nothing to report and would be
    logged anyway are forgotten first, then the new kind is counted under its
    ``overflow_key`` if it has one, and failing that the kind logged longest ago is
    forgotten (with its count of suppressed repeats).

    A repeat that is suppressed takes no lock: its key goes into ``_repeats`` (one atomic
    ``deque.append``), counted into the table under the lock before the next line goes
    out. A full queue makes every ``track_*`` call log a repeat from the caller's thread,
    and a lock there turned GIL switches into convoys of the calling threads.
    """

    def __init__(
        self,
        log: logging.Logger = logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KINDS,
    ) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._max_keys = max(1, max_keys)
        self._lock = threading.Lock()
        # key -> (when last logged, repeats suppressed since); oldest line first, because
        # a logged key moves to the end and the clock is monotonic.
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        self._repeats: deque[Hashable] = deque()  # suppressed, not yet counted in _last

    def enabled(self, level: int) -> bool:
        """Whether a line at ``level`` could go out (build costly arguments only then)."""
        return self._log.isEnabledFor(level)

    def log(
        self,
        level: int,
        key: Hashable,
        msg: str,
        *args: Any,
        exc_info: bool = False,
        overflow_key: Optional[Hashable] = None,
    ) -> None:
        """Log ``msg % args`` unless a line of kind ``key`` went out under ``interval_s`` ago."""
        if not self._log.isEnabledFor(level):
            return
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._interval_s:
            self._repeats.append(key)  # lock-free; counted under the lock later
            if len(self._repeats) >= _FOLD_AT and self._lock.acquire(blocking=False):
                try:
                    self._fold()
                finally:
                    self._lock.release()
            return
        with self._lock:
            self._fold()
            key = self._slot(key, overflow_key, now)
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
            self._last.move_to_end(key)
        if suppressed and last is not None:
            msg += " (%d similar message%s suppressed in the last %.0f s)"
            args = (*args, suppressed, "" if suppressed == 1 else "s", now - last)
        self._log.log(level, msg, *args, exc_info=exc_info)

    def _fold(self) -> None:
        """Count the suppressed repeats into the table; called with the lock held."""
        table, repeats = self._last, self._repeats
        while repeats:
            key = repeats.popleft()
            seen = table.get(key)
            if seen is not None:  # a kind forgotten meanwhile is forgotten with its count
                table[key] = (seen[0], seen[1] + 1)

    def _slot(self, key: Hashable, overflow_key: Optional[Hashable], now: float) -> Hashable:
        """The key to count under, making room for it; called with the lock held."""
        table = self._last
        if key in table or len(table) < self._max_keys:
            return key
        # Kinds whose next line would go out anyway and carry no count lose nothing.
        while table:
            oldest, (when, suppressed) = next(iter(table.items()))
            if now - when < self._interval_s or suppressed:
                break
            del table[oldest]
        if len(table) < self._max_keys:
            return key
        if overflow_key is not None:
            key = overflow_key
        if key not in table:
            table.popitem(last=False)  # the kind logged longest ago
        return key
