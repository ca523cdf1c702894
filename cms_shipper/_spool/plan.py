"""What settling does to each event's spool row, and the outcomes that follow.

Pure decisions, no I/O: ``Plan.of`` sorts a batch of answered events by what happens to
their rows (``SpoolKeeper.settle`` then runs them in one transaction) and ``outcomes``
turns spillable outcomes into ``spooled`` (or ``dropped: spool_full``) once it ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from cms_shipper._spool.store import Added, JournalRecord
from cms_shipper.results import Outcome, Reason, Result, Tracked

__all__ = ["REPLAYED", "SPILLED", "Plan", "held_back", "outcomes", "spool_full", "spooled"]

# Tracked._kept: which row, if any, the event has in the spool (truthy: it has one).
# > 0: the handle of its journal record, written ahead by track_* (a live event of ours).
REPLAYED = -1  # claimed from the spool by this process's replay (leased to us)
SPILLED = -2  # saved unleased by this process (spilled, held back, or left at shutdown)

# Outcomes that mean "not delivered, but nothing the server said makes it hopeless".
SPILLABLE = {
    (Outcome.FAILED, Reason.RETRIES_EXHAUSTED),
    (Outcome.DROPPED, Reason.SHUTDOWN),
    (Outcome.DROPPED, Reason.QUEUE_FULL),
}


def spooled(final: Result) -> Result:
    """``final`` saved to the spool instead."""
    why = final.error or str(final.reason)
    return Result(
        success=False,
        status_code=final.status_code,
        message="spooled",
        error=f"not delivered yet ({why}); saved to the spool for a later replay",
        event_id=final.event_id,
        outcome=Outcome.SPOOLED,
        reason=final.reason,
        event=final.event,
    )


def held_back(result: Tracked) -> Result:
    """A live event saved behind its customer's older events."""
    return Result(
        success=False,
        message="spooled",
        error="an older event of this customer is waiting in the spool; saved behind it,"
        " to be sent in the customer's order",
        event_id=result.event_id,
        outcome=Outcome.SPOOLED,
        reason=Reason.BEHIND_SPOOLED,
        event=result.event,
    )


def spool_full(final: Result) -> Result:
    """``final`` dropped because the spool is full."""
    return Result(
        success=False,
        status_code=final.status_code,
        message="dropped: spool_full",
        error=f"the spool is full (spool_max_bytes); event dropped ({final.error})",
        event_id=final.event_id,
        outcome=Outcome.DROPPED,
        reason=Reason.SPOOL_FULL,
        event=final.event,
    )


class Plan:
    """A batch's rows by what happens to them; what a failed transaction leaves for later."""

    def __init__(self) -> None:
        self.remove: list[str] = []  # events rows with a final answer
        self.release: list[str] = []  # events rows of ours to put back in line
        self.forget: list[JournalRecord] = []  # written-ahead events with a final answer
        self.move: list[JournalRecord] = []  # written-ahead events to put in line
        self.add: list[int] = []  # indexes of spilled events without a row
        self.answered_replays: list[str] = []  # customers of replayed events answered

    @classmethod
    def of(cls, results: Sequence[Tracked], finals: Sequence[Result]) -> Plan:
        """Sort a batch: final answers remove rows, spillable outcomes keep them in line."""
        plan = cls()
        for i, (result, final) in enumerate(zip(results, finals)):
            if final.outcome is Outcome.SPOOLED and final.reason is not Reason.IN_FLEET:
                continue  # held back: its row is already in place
            # (In fleet mode, an event that reached the fleet's queue lets go of its row.)
            spill = (final.outcome, final.reason) in SPILLABLE
            handle, event = result._kept, result.event
            if handle > 0 and event is not None:
                ahead = JournalRecord(handle, event)
                (plan.move if spill else plan.forget).append(ahead)
            elif handle:
                (plan.release if spill else plan.remove).append(result.event_id or "")
                if handle == REPLAYED and not spill and event is not None:
                    plan.answered_replays.append(event.customer_key)
            elif spill and event is not None:
                plan.add.append(i)
        return plan

    def extend(self, other: Plan) -> None:
        """Keep ``other``'s rows for later (marking journal records done needs no retry)."""
        self.remove += other.remove
        self.release += other.release
        self.move += other.move


def outcomes(
    results: Sequence[Tracked], out: list[Result], plan: Plan, added: Optional[Added]
) -> None:
    """Spillable outcomes become spooled once ``plan`` ran (``added``; None: it failed)."""
    # A row of ours released or moved, now or later (it stays in the spool meanwhile), is
    # spooled; an event added is spooled unless refused (full) or failed on its own.
    for i, result in enumerate(results):
        if out[i].outcome is Outcome.SPOOLED or not result._kept:
            continue
        if (out[i].outcome, out[i].reason) in SPILLABLE:
            out[i] = spooled(out[i])
            if added is not None and result._kept > 0:
                result._kept = SPILLED  # moved into line
    if added is None:
        return  # not stored: they keep their own outcomes
    refused, failed = set(added.refused), set(added.failed)
    for i in plan.add:
        if out[i].event_id in refused:
            out[i] = spool_full(out[i])
        elif out[i].event_id not in failed:  # a failed row keeps its own outcome
            results[i]._kept = SPILLED
            out[i] = spooled(out[i])
