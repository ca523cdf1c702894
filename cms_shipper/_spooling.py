"""The client's use of the on-disk spool: write-ahead, spills, settling rows, replay.

The spool (``_spool.Spool``) only stores; this module decides. An event that would be lost
(queue full, retries exhausted on a retryable failure, still pending at shutdown) is
spooled instead, and one with a final answer (delivered, duplicate, rejected) has its row
removed. Spool trouble is logged and never reaches the host: the client goes on in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Callable, Optional

from cms_shipper._config import Settings
from cms_shipper._events import Event, event_of
from cms_shipper._log import RateLimitedLog, logger
from cms_shipper._spool import Spool, SpoolError
from cms_shipper.results import Outcome, Reason, Result, TrackResult

__all__ = ["Replayer", "SpoolKeeper"]

# Outcomes that mean "not delivered, but nothing the server said makes it hopeless".
_SPILLABLE = {
    (Outcome.FAILED, Reason.RETRIES_EXHAUSTED),
    (Outcome.DROPPED, Reason.SHUTDOWN),
    (Outcome.DROPPED, Reason.QUEUE_FULL),
}


def _spooled(final: Result) -> Result:
    why = final.error or str(final.reason)
    return Result(
        success=False, status_code=final.status_code, message="spooled",
        error=f"not delivered yet ({why}); saved to the spool for a later replay",
        event_id=final.event_id, outcome=Outcome.SPOOLED, reason=final.reason, event=final.event,
    )  # fmt: skip


def _spool_full(final: Result) -> Result:
    return Result(
        success=False, status_code=final.status_code, message="dropped: spool_full",
        error=f"the spool is full (spool_max_bytes); event dropped ({final.error})",
        event_id=final.event_id, outcome=Outcome.DROPPED, reason=Reason.SPOOL_FULL,
        event=final.event,
    )  # fmt: skip


class SpoolKeeper:
    """Owns the client's spool connection and every decision about spool rows."""

    def __init__(self, settings: Settings, log: RateLimitedLog) -> None:
        self._settings = settings
        self._log = log
        self.path = settings.spool_path or ""
        self._spool: Optional[Spool] = None
        try:
            self._spool = Spool(
                self.path, max_bytes=settings.spool_max_bytes, lease_s=settings.spool_lease_s
            )
        except SpoolError as exc:
            logger.error(
                "cms_shipper: cannot use the spool at %s (%s); going on in memory only",
                self.path, exc,
            )  # fmt: skip

    @property
    def enabled(self) -> bool:
        """True while the spool is usable."""
        return self._spool is not None

    def _trouble(self, exc: SpoolError, doing: str) -> None:
        self._log.log(
            logging.ERROR, f"spool:{doing}",
            "cms_shipper: spool error while %s at %s: %s", doing, self.path, exc,
        )  # fmt: skip

    def write_ahead(self, result: TrackResult) -> None:
        """Store a just-tracked event, leased to this process, before track_* returns."""
        if self._spool is None or result.event is None:
            return
        try:
            refused = self._spool.add([result.event], leased=True)
        except SpoolError as exc:
            self._trouble(exc, "writing ahead")
            return
        if refused:
            self._log.log(
                logging.WARNING, "spool:full-write-ahead",
                "cms_shipper: the spool is full; event %s is held in memory only",
                result.event_id,
            )  # fmt: skip
        else:
            result._in_spool = True

    def settle(self, results: Sequence[TrackResult], finals: Sequence[Result]) -> list[Result]:
        """The spool's part of giving events their outcomes; returns the outcomes to record.

        Spillable outcomes become ``spooled`` (or ``dropped``/``spool_full``); final
        answers remove the event's row. Batched, so a shutdown spills in one transaction.
        """
        if self._spool is None:
            return list(finals)
        out = list(finals)
        remove: list[int] = []
        release: list[int] = []
        add: list[int] = []
        for i, (result, final) in enumerate(zip(results, finals)):
            spill = (final.outcome, final.reason) in _SPILLABLE
            if result._in_spool:
                (release if spill else remove).append(i)
            elif spill and result.event is not None:
                add.append(i)
        try:
            self._spool.remove(out[i].event_id or "" for i in remove)
            self._spool.release(out[i].event_id or "" for i in release)
            refused = set(self._spool.add([event_of(out[i]) for i in add], leased=False))
        except SpoolError as exc:
            self._trouble(exc, "settling outcomes")
            return out
        for i in release:
            out[i] = _spooled(out[i])
        for i in add:
            if out[i].event_id in refused:
                out[i] = _spool_full(out[i])
            else:
                results[i]._in_spool = True
                out[i] = _spooled(out[i])
        return out

    def heartbeat(self) -> None:
        """Extend this process's leases, so no other process takes events still held here."""
        if self._spool is None:
            return
        try:
            self._spool.renew()
        except SpoolError as exc:
            self._trouble(exc, "renewing leases")

    def claim(self, limit: int) -> list[Event]:
        """Lease up to ``limit`` spooled events to this process, oldest first."""
        if self._spool is None or limit <= 0:
            return []
        try:
            return self._spool.claim(limit)
        except SpoolError as exc:
            self._trouble(exc, "claiming events to replay")
            return []

    def reopen(self) -> None:
        """In a forked child: a new connection and a new lease owner."""
        if self._spool is not None:
            try:
                self._spool.reopen()
            except SpoolError as exc:
                self._trouble(exc, "reopening after fork")
                self._spool = None

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()


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

    def _run(self) -> None:
        while not self.stop.is_set():
            self._keeper.heartbeat()
            # Leave half the queue to live traffic: replay must not crowd out new events.
            for event in self._keeper.claim(self._room() // 2):
                self._submit(event)
            if self.stop.wait(self._interval_s):
                return
