"""``stats()``: one typed snapshot from the books, the queue, the engine and durability."""

from __future__ import annotations

from typing import Any

from cms_shipper._durability import DurabilityStats
from cms_shipper.results import Stats

__all__ = ["build_stats"]


def build_stats(
    books: dict[str, Any],
    queue_depth: int,
    engine: dict[str, Any],
    durability: DurabilityStats,
    closed: bool,
) -> Stats:
    """Assemble ``Stats`` from the ledger's, the engine's and durability's figures."""
    reasons: dict[str, dict[str, int]] = books["reasons"]
    return Stats(
        tracked=books["tracked"],
        replayed=books["replayed"],
        delivered=books["delivered"],
        duplicate=books["duplicate"],
        rejected=books["rejected"],
        failed=books["failed"],
        dropped=books["dropped"],
        spooled=books["spooled"],
        pending=books["pending"],
        reasons=reasons,
        status_codes=books["status_codes"],
        queue_depth=queue_depth,
        scheduled=engine["scheduled"],
        in_flight=engine["in_flight"],
        circuit=engine["circuit"],
        circuit_since=engine["circuit_since"],
        circuit_cause=engine["circuit_cause"],
        rate_limited=engine["rate_limited"],
        rate_limited_for_s=engine["rate_limited_for_s"],
        uncharged_attempts=engine["uncharged_attempts"],
        spool_path=durability["spool_path"],
        spool_dropped=reasons.get("dropped", {}).get("spool_full", 0),
        spool_write_ahead_misses=durability["spool_write_ahead_misses"],
        spool_errors=durability["spool_errors"],
        spool_settle_misses=durability["spool_settle_misses"],
        fleet=durability["fleet"],
        closed=closed,
    )
