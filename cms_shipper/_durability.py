"""The durability port: where events that would be lost go, and how order holds through it.

The pipeline and the engine talk to durability through this one interface and never know
which implementation is behind it: ``NoDurability`` (memory only, a client without a
spool), the local spool (``cms_shipper._spool``), or fleet mode (``cms_shipper._fleet``,
which keeps a local one inside for what cannot reach Redis). The client picks one at
construction and imports an implementation only when it is configured.

Every method is called on the background path or in ``track_*`` and must never raise into
the host: trouble is logged and counted by the implementation, which then behaves as
``NoDurability`` would for that call (sending beats losing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypedDict, TypeVar, Union

from cms_shipper.results import Result, Tracked

if TYPE_CHECKING:
    from cms_shipper._engine import HealthGate

__all__ = ["Durability", "DurabilityStats", "Host", "NoDurability"]

Q = TypeVar("Q")


class DurabilityStats(TypedDict):
    """The durability part of ``stats()``."""

    spool_path: Optional[str]
    spool_write_ahead_misses: int
    spool_errors: int
    spool_settle_misses: int
    fleet: Optional[dict[str, Any]]  # fleet mode's view of the fleet, else None


class Host(Protocol):
    """The pipeline, as durability sees it: where kept events go back in."""

    @property
    def gate(self) -> HealthGate:
        """The engine's health gate (fleet mode keeps it in step with the fleet's)."""

    def feed(self, item: Tracked) -> None:
        """Count a kept event as replayed and queue it for delivery."""

    def room(self) -> int:
        """How many more events the queue takes now."""

    def admit(self, item: Tracked) -> None:
        """Count a kept event as replayed, without queueing it (durability queues it)."""

    def finish(self, item: Tracked, final: Result) -> None:
        """Give an admitted event its outcome (books, callbacks)."""

    def start_senders(self) -> None:
        """Start the sender threads, once."""


class Durability(Protocol):
    """What the pipeline and the engine may ask of a durability implementation."""

    def attach(self, host: Host) -> None:
        """Where kept events go back into the pipeline.

        Called at construction and again in a forked child (a new queue). Must not start
        anything: ``start_replay`` does.
        """

    def delivery_queue(self, intake: Q) -> Q:
        """The queue the senders take from: ``intake`` (where ``track_*`` puts), or the
        implementation's own (fleet mode: what this member claimed from the fleet)."""

    def start_replay(self) -> None:
        """Begin feeding kept events back (once; cheap to call on every event)."""

    def halt(self) -> None:
        """Feed nothing more (closing, or the client's handle is gone)."""

    def write_ahead(self, item: Tracked) -> None:
        """Keep a just-tracked event before ``track_*`` returns, if configured; never waits."""

    def hold_back(self, item: Tracked) -> Union[Result, float, None]:
        """Whether a live event must wait behind its customer's kept ones.

        Returns the event's outcome once it is kept behind them (``spooled``); seconds to
        wait before asking again; or None: send it now.
        """

    def settle(
        self, items: Sequence[Tracked], finals: Sequence[Result], deadline: Optional[float] = None
    ) -> list[Result]:
        """The durability part of giving events their outcomes; returns the outcomes to record.

        An outcome that would lose the event may become ``spooled``; a final answer lets go
        of what was kept for it. Waits at most a moment, or until ``deadline`` (monotonic).
        """

    def settle_one(self, item: Tracked, final: Result) -> Result:
        """``settle`` for one event (the senders' path: no lists to build)."""

    def after_fork(self) -> None:
        """In a forked child: new connections and locks of its own, nothing of the parent's."""

    def close(self) -> None:
        """Let go of files and connections; idempotent."""

    def stats(self) -> DurabilityStats:
        """Counters for ``stats()``."""


class NoDurability:
    """Memory only: nothing is kept, nothing is held back, outcomes stay as they are."""

    def attach(self, host: Host) -> None:
        """Nothing is ever fed back."""

    def delivery_queue(self, intake: Q) -> Q:
        """The senders take what ``track_*`` queued."""
        return intake

    def start_replay(self) -> None:
        """Nothing to replay."""

    def halt(self) -> None:
        """Nothing runs."""

    def write_ahead(self, item: Tracked) -> None:
        """Nothing is kept."""

    def hold_back(self, item: Tracked) -> Union[Result, float, None]:
        """Nothing older waits anywhere: send now."""
        return None

    def settle(
        self, items: Sequence[Tracked], finals: Sequence[Result], deadline: Optional[float] = None
    ) -> list[Result]:
        """The outcomes as they are."""
        return list(finals)

    def settle_one(self, item: Tracked, final: Result) -> Result:
        """The outcome as it is."""
        return final

    def after_fork(self) -> None:
        """Nothing crosses a fork."""

    def close(self) -> None:
        """Nothing to let go of."""

    def stats(self) -> DurabilityStats:
        """No spool."""
        return _NO_STATS.copy()


_NO_STATS = DurabilityStats(
    spool_path=None, spool_write_ahead_misses=0, spool_errors=0, spool_settle_misses=0, fleet=None
)
