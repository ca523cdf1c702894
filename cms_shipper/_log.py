"""Logging that does not flood: repeats of one kind of message are counted, not printed.

The counts are not lost: ``flush_suppressed()`` (called by ``close()`` and the exit hook)
emits, for every kind with repeats held back, its last message and how many there were,
so a short script's log still accounts for every event it reports on.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Callable, Optional

__all__ = [
    "MAX_ERROR_TEXT",
    "MAX_KINDS",
    "RateLimitedLog",
    "flush_suppressed",
    "logger",
    "one_line",
]

MAX_ERROR_TEXT = 300  # characters of a non-JSON body or an error kept for results and logs


def one_line(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters on a single line (no forged log lines)."""
    flat = " ".join(text[: limit + 1].split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


logger = logging.getLogger("cms_shipper")

MAX_KINDS = 256  # kinds remembered at once; a stream of distinct keys must not grow memory


class RateLimitedLog:
    """Logs the first message of each kind (``key``), then at most one per ``interval_s``.

    A line that follows suppressed repeats of its kind says how many there were since
    the previous line of that kind. At most ``max_keys`` kinds are remembered: when a
    new kind arrives with the table full, kinds that have nothing to report and would be
    logged anyway are forgotten first, then the new kind is counted under its
    ``overflow_key`` if it has one, and failing that the kind logged longest ago is
    forgotten; if it held repeats back, its count goes out first (as ``flush`` does).
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
        # key -> (level, msg, args) of the last repeat held back, for ``flush``.
        self._held: dict[Hashable, tuple[int, str, tuple[Any, ...]]] = {}
        self._repeats: deque[Hashable] = deque()  # suppressed, not yet counted in _last
        with _ALL_LOCK:
            _ALL.add(self)

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
            # A repeat takes no lock: its message is kept for ``flush`` and its key queued
            # (atomic operations), and counted into the table under the lock later.
            self._held[key] = (level, msg, args)
            self._repeats.append(key)
            if len(self._repeats) >= _FOLD_AT and self._lock.acquire(blocking=False):
                try:
                    self._fold()
                finally:
                    self._lock.release()
            return
        evicted: list[_Count] = []
        with self._lock:
            self._fold()
            key = self._slot(key, overflow_key, now, evicted)
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._last[key] = (last, suppressed + 1)
                self._held[key] = (level, msg, args)
                suppressed = -1
            else:
                self._last[key] = (now, 0)
                self._last.move_to_end(key)
                self._held.pop(key, None)
        self._emit(evicted)
        if suppressed < 0:
            return
        if suppressed and last is not None:
            msg += " (%d similar message%s suppressed in the last %.0f s)"
            args = (*args, suppressed, "" if suppressed == 1 else "s", now - last)
        self._log.log(level, msg, *args, exc_info=exc_info)

    def _fold(self) -> None:
        """Count the queued repeats into the table; called with the lock held."""
        table, repeats = self._last, self._repeats
        while repeats:
            key = repeats.popleft()
            seen = table.get(key)
            if seen is not None:  # a kind forgotten meanwhile is forgotten with its count
                table[key] = (seen[0], seen[1] + 1)

    def flush(self) -> int:
        """Emit the count of every kind with repeats held back; returns how many were."""
        with self._lock:
            self._fold()
            now = self._clock()
            counts = [self._take(key, now) for key, (_, n) in self._last.items() if n]
        self._emit(counts)
        return sum(count[3] for count in counts)

    def _take(self, key: Hashable, now: float) -> _Count:
        """The held-back repeats of ``key``, now reported; called with the lock held."""
        last, suppressed = self._last[key]
        self._last[key] = (last, 0)
        level, msg, args = self._held.pop(key, (logging.WARNING, "%s", ("(message not kept)",)))
        return level, msg, args, suppressed, now - last

    def _emit(self, counts: list[_Count]) -> None:
        for level, msg, args, suppressed, span in counts:
            self._log.log(
                level,
                msg + " (the last of %d similar message%s suppressed in the last %.0f s)",
                *args,
                suppressed,
                "" if suppressed == 1 else "s",
                span,
            )

    def _slot(
        self, key: Hashable, overflow_key: Optional[Hashable], now: float, evicted: list[_Count]
    ) -> Hashable:
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
            oldest, (_, suppressed) = next(iter(table.items()))  # the kind logged longest ago
            if suppressed:
                evicted.append(self._take(oldest, now))
            del table[oldest]
            self._held.pop(oldest, None)
        return key


_FOLD_AT = 256  # suppressed repeats held before they are counted into the table
_Count = tuple[int, str, tuple[Any, ...], int, float]  # level, msg, args, repeats, seconds
_ALL: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()
_ALL_LOCK = threading.Lock()


def flush_suppressed() -> int:
    """Emit the held-back counts of every ``RateLimitedLog`` of the process (close, exit).

    Returns how many repeats were reported. Never raises.
    """
    with _ALL_LOCK:
        logs = list(_ALL)
    total = 0
    for log in logs:
        try:
            total += log.flush()
        except Exception:  # a log line must never break a close or the exit hook
            logger.debug("could not report suppressed log lines", exc_info=True)
    return total
