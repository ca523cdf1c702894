"""The last stage: give an event its one outcome: durability, books, log and callback.

Every path that ends an event goes through ``Settler``: an outcome known in the caller's
thread (invalid, dropped, ``sync_mode``), a sender's final word, a full queue, and the
events ``close()`` gives up on. Durability's part comes first (with a spool, a spillable
outcome becomes ``spooled``), then the ledger resolves the event once, then the reporter
logs and calls back.
"""

from __future__ import annotations

from typing import Callable, Optional

from cms_shipper._books.ledger import Ledger
from cms_shipper._books.outcomes import Reporter, dropped
from cms_shipper._durability import Durability
from cms_shipper._events import event_of
from cms_shipper._log import logger
from cms_shipper.results import FlushResult, Outcome, Reason, Result, Tracked, TrackResult

__all__ = ["Settler"]


class Settler:
    """Settles events into one process's ledger, queue slots, durability and reporter."""

    def __init__(
        self,
        ledger: Ledger,
        task_done: Callable[[], None],
        reporter: Reporter,
        durability: Durability,
    ) -> None:
        self._ledger = ledger
        self._task_done = task_done  # gives a queued event's slot back
        self._reporter = reporter
        self._durability = durability

    def at_once(self, final: Result) -> TrackResult:
        """Count, report and return an event whose outcome is known in the caller's thread."""
        self._ledger.record(final)
        self._reporter.report(final, inline=True)
        return self.answer(final)

    def answer(self, final: Result) -> TrackResult:
        """A TrackResult that already carries its final outcome."""
        return TrackResult(Tracked(final.event, final), self._ledger, **final, event=final.event)

    def from_sender(self, result: Tracked, final: Optional[Result]) -> None:
        """A sender's last word on an event (``None``: an internal error, which fails it)."""
        if final is None:
            final = Result(
                success=False,
                message="failed",
                error="internal error while delivering (logged)",
                event_id=result.event_id,
                outcome=Outcome.FAILED,
                reason=Reason.UNEXPECTED_STATUS,
                event=result.event,
            )
        self.finish(result, final)

    def finish(self, result: Tracked, final: Result, *, queued: bool = True) -> Result:
        """Settle one admitted event (spool, books, callback); returns the outcome recorded."""
        # Also for an event already settled at shutdown: a late delivery removes the row
        # that shutdown spooled, so a replay does not send it twice.
        final = self._durability.settle_one(result, final)
        if self._ledger.resolve(result, final):
            if queued:  # only a queued event holds a queue slot to give back
                self._task_done()
            self._reporter.report(final)
        else:
            logger.debug(
                "event %s ended %s after it was settled at shutdown",
                final.event_id,
                final.outcome,
            )
        return final

    def abandon(
        self,
        abandoned: list[Tracked],
        budget_s: float,
        in_flight: int,
        reason: Reason = Reason.SHUTDOWN,
    ) -> None:
        """Settle the events ``close()`` gives up on (spooled or dropped), in one log line.

        The spool's part waits for a busy spool at most ``SETTLE_WAIT_S`` (0.25 s), even past
        ``close()``'s deadline: that is the last chance to keep these events.
        """
        if not abandoned:
            return
        # ``unauthorized``: the API refused the token, so nothing could be sent meanwhile.
        message = f"not delivered within {budget_s:g} s of close"
        if reason is Reason.UNAUTHORIZED:
            message = "the API refused the token (HTTP 401); not sent by close"
        finals = [dropped(event_of(r), reason, message) for r in abandoned]
        finals = self._durability.settle(abandoned, finals)  # one transaction for all
        for result, final in zip(abandoned, finals):
            if self._ledger.resolve(result, final):
                self._task_done()
                self._reporter.report(final)
        fleet = sum(1 for f in finals if f.reason is Reason.IN_FLEET)
        spooled = sum(1 for f in finals if f.outcome is Outcome.SPOOLED) - fleet
        why = f"within the {budget_s:g} s shutdown budget"
        if reason is Reason.UNAUTHORIZED:
            why = "at close: the API refused the token (HTTP 401)"
        logger.warning(
            "%d event(s) not delivered %s: %s%d saved to the spool, %d dropped "
            "(%d were in flight and may have reached the server)",
            len(abandoned),
            why,
            f"{fleet} left in the fleet's queue, " if fleet else "",
            spooled,
            len(abandoned) - spooled - fleet,
            in_flight,
        )

    def summarise(self) -> None:
        """At close: one warning line with the client's counts, if anything was not delivered.

        Not delivered: rejected, failed, dropped (but not ``disabled``), spooled (kept for a
        later replay) and pending. Nothing is logged when every event was delivered.
        """
        counts = self._ledger.tally()
        disabled = counts["reasons"].get(Outcome.DROPPED.value, {}).get(Reason.DISABLED.value, 0)
        missed = ("rejected", "failed", "dropped", "spooled", "pending")
        if sum(counts[k] for k in missed) - disabled <= 0:
            return
        logger.warning(
            "client closed: %d event(s) tracked%s, %d delivered, %d duplicate; not delivered: "
            "%d rejected, %d failed, %d dropped, %d spooled, %d pending",
            counts["tracked"],
            f" and {counts['replayed']} replayed from the spool" if counts["replayed"] else "",
            counts["delivered"],
            counts["duplicate"],
            *(counts[k] for k in missed),
        )

    def internal_error(self, result: Optional[Tracked]) -> TrackResult:
        """The last resort for a bug of ours inside track_*: a counted outcome; never raises."""
        final = Result(
            success=False,
            message="dropped: internal_error",
            error="internal error in cms_shipper while tracking; the event was not sent (logged)",
            event_id=result.event_id if result else None,
            outcome=Outcome.DROPPED,
            reason=Reason.INTERNAL_ERROR,
            event=result.event if result else None,
        )
        try:
            if result is not None and result._seq:
                self.finish(result, final, queued=False)  # admitted: resolve it, once
                return self.answer(result.final or final)
            return self.at_once(final)
        except Exception:  # the books themselves failed: still an answer, not a raise
            return TrackResult(Tracked(None, final), None, **final)

    @property
    def reporter(self) -> Reporter:
        """Who logs outcomes and runs the callbacks."""
        return self._reporter

    def flush_result(self, pending: int, *, timed_out: Optional[bool] = None) -> FlushResult:
        """Counts over the client's life, with ``pending`` still pending.

        ``timed_out`` defaults to ``pending > 0`` (a flush); ``close()`` says whether its
        deadline was hit, since by the time it answers it has settled what was left.
        """
        counts = self._ledger.counts()
        return FlushResult(
            delivered=counts["delivered"],
            duplicate=counts["duplicate"],
            rejected=counts["rejected"],
            failed=counts["failed"],
            dropped=counts["dropped"],
            pending=pending,
            timed_out=pending > 0 if timed_out is None else timed_out,
            spooled=counts["spooled"],
        )
