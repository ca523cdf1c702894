"""``stats()``: one typed snapshot from the books, the queue, the engine and the spool."""

from __future__ import annotations

from typing import Any, Optional

from cms_shipper._spooling import SpoolKeeper
from cms_shipper.results import Stats

__all__ = ["snapshot"]


def snapshot(
    books: dict[str, Any],
    queue_depth: int,
    engine: dict[str, Any],
    keeper: Optional[SpoolKeeper],
    closed: bool,
) -> Stats:
    """Assemble ``Stats`` from the ledger's and the engine's snapshots and the spool's counters."""
    reasons: dict[str, dict[str, int]] = books["reasons"]
    return Stats(
        tracked=books["tracked"], replayed=books["replayed"], delivered=books["delivered"],
        duplicate=books["duplicate"], rejected=books["rejected"], failed=books["failed"],
        dropped=books["dropped"], spooled=books["spooled"], pending=books["pending"],
        reasons=reasons, status_codes=books["status_codes"],
        queue_depth=queue_depth, scheduled=engine["scheduled"], in_flight=engine["in_flight"],
        circuit=engine["circuit"], circuit_since=engine["circuit_since"],
        circuit_cause=engine["circuit_cause"], rate_limited=engine["rate_limited"],
        rate_limited_for_s=engine["rate_limited_for_s"],
        uncharged_attempts=engine["uncharged_attempts"],
        spool_path=keeper.path if keeper is not None and keeper.enabled else None,
        spool_dropped=reasons.get("dropped", {}).get("spool_full", 0),
        spool_write_ahead_misses=keeper.write_ahead_misses if keeper else 0,
        spool_errors=keeper.spool_errors if keeper else 0,
        spool_settle_misses=keeper.settle_misses if keeper else 0,
        closed=closed,
    )  # fmt: skip
