"""The durability port: where events that would be lost go, and how order holds through it.

The pipeline and the engine talk to durability through this one interface and never know
which implementation is behind it: ``NoDurability`` (memory only, a client without a
spool), the local spool (``cms_shipper._spool``), or fleet mode. The client picks one at
construction and imports an implementation only when it is configured.

Every method is called on the background path or in ``track_*`` and must never raise into
the host: trouble is logged and counted by the implementation, which then behaves as
``NoDurability`` would for that call (sending beats losing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional, Protocol, TypedDict, Union

from cms_shipper.results import Result, Tracked

__all__ = ["Durability", "DurabilityStats", "NoDurability"]


class DurabilityStats(TypedDict):
    """The durability part of ``stats()``."""

    spool_path: Optional[str]
    spool_write_ahead_misses: int
    spool_errors: int
    spool_settle_misses: int


class Durability(Protocol):
    """What the pipeline and the engine may ask of a durability implementation."""

    def attach(self, feed: Callable[[Tracked], None], room: Callable[[], int]) -> None:
        """Where kept events go back into the pipeline: ``feed`` one, ``room`` how many fit.

        Called at construction and again in a forked child (a new queue). Must not start
        anything: ``start_replay`` does.
        """

    def start_replay(self) -> None:
        """Begin feeding kept events back (once; cheap to call on every event)."""

    def halt(self) -> None:
        """Feed nothing more (closing, or the client's handle is gone)."""

    def write_ahead(self, item: Tracked) -> None:
        """Keep a just-tracked event before ``track_*`` returns, if configured; never waits."""

    def overflow(
        self, item: Tracked, final: Result, finish: Callable[[Tracked, Result], object]
    ) -> bool:
        """Take a full queue's event to keep (``final`` is its outcome if not kept); never waits.

        True: taken; the implementation calls ``finish(item, outcome)`` once it is kept (or
        not), from a thread of its own. False: not taken; the caller settles it as ``final``
        and ``settle`` must not wait on its account either.
        """

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

    def attach(self, feed: Callable[[Tracked], None], room: Callable[[], int]) -> None:
        """Nothing is ever fed back."""

    def start_replay(self) -> None:
        """Nothing to replay."""

    def halt(self) -> None:
        """Nothing runs."""

    def write_ahead(self, item: Tracked) -> None:
        """Nothing is kept."""

    def overflow(
        self, item: Tracked, final: Result, finish: Callable[[Tracked, Result], object]
    ) -> bool:
        """Nowhere to keep it: the caller drops it."""
        return False

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
    spool_path=None, spool_write_ahead_misses=0, spool_errors=0, spool_settle_misses=0
)
