"""One delivery scenario's client, in a fresh process: run by ``delivery.py``, not by hand.

``python _delivery_child.py SPEC_JSON`` with ``cms_shipper`` importable from the tree under
test (``PYTHONPATH``). It builds the client, prints ``ready``, waits for ``go`` on stdin
(the parent sets the emulator's faults in between), tracks the planned leads, flushes
within the budget, closes, and prints ``result {json}``. Only the public API is used:
``CMSClient(token=..., host=..., **options)``, ``track_lead``, ``flush``, ``close``,
``stats`` and each ``TrackResult``'s ``done()``/``wait()``. It leaves with ``os._exit`` so
that a worker thread stuck in a request cannot keep it alive.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

from _child import report

from cms_shipper import CMSClient  # from the tree under test, on PYTHONPATH

TOKEN = "test-token"
_WATCH_EVERY_S = 0.02


def _outcome(result: Any) -> str:
    """The event's final outcome as text, or "pending"."""
    try:
        outcome = result.wait(0)["outcome"]
    except Exception:  # an API that changed shape: say so rather than fail the run
        return "unknown"
    return "pending" if outcome is None else str(getattr(outcome, "value", outcome))


def _sweep(results: List[Tuple[str, Any]], done_at: Dict[int, float], at: float) -> None:
    """Note ``at`` as the outcome time of every event that has one and was not noted yet."""
    for i, (_, result) in enumerate(results):
        if i not in done_at and result.done():
            done_at[i] = at


def _watch(results: List[Tuple[str, Any]], done_at: Dict[int, float], stop: threading.Event):
    """Note when each event gets its outcome (polled, so within ~20 ms)."""
    while not stop.wait(_WATCH_EVERY_S):
        _sweep(results, done_at, time.time())


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    client = CMSClient(token=TOKEN, host=spec["host"], **spec["options"])
    plan: List[Tuple[str, str]] = []  # (group, customer), in tracking order
    for group, customer, count, distinct in spec["plan"]:
        plan += [(group, f"{customer}{i}" if distinct else customer) for i in range(count)]
    results: List[Tuple[str, Any]] = []
    done_at: Dict[int, float] = {}
    stop = threading.Event()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        os._exit(2)
    started = time.time()
    for group, customer in plan:
        result = client.track_lead(
            event_name="signup_started", customer_external_id=customer, click_id="clk_1"
        )
        results.append((group, result))
    tracked_at = time.time()
    if spec.get("watch"):
        watcher = threading.Thread(target=_watch, args=(results, done_at, stop), daemon=True)
        watcher.start()
    flushed = client.flush(spec["flush_s"])
    flushed_at = time.time()
    stop.set()
    if spec.get("watch"):
        watcher.join()
    _sweep(results, done_at, flushed_at)  # settled since the watcher's last look
    closed = client.close(spec["close_s"])
    closed_at = time.time()
    _sweep(results, done_at, closed_at)
    by_group: Dict[str, Counter[str]] = {}
    for group, result in results:
        by_group.setdefault(group, Counter())[_outcome(result)] += 1
    stats = client.stats()
    watched = [[customer, done_at.get(i)] for i, (_, customer) in enumerate(plan)]
    return {
        "started": started,
        "closed_at": closed_at,
        "tracked": len(plan),
        "track_s": tracked_at - started,
        "flush_s": flushed_at - started,
        "close_s": closed_at - flushed_at,
        "flush_complete": bool(flushed),
        "closed": {
            k: getattr(closed, k, 0)
            for k in ("delivered", "duplicate", "rejected", "failed", "dropped", "pending")
        },
        "outcomes": {group: dict(counts) for group, counts in by_group.items()},
        "reasons": stats.get("reasons", {}),
        "status_codes": stats.get("status_codes", {}),
        "done_at": watched if spec.get("watch") else [],
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    logging.getLogger("cms_shipper").setLevel(logging.ERROR)  # outcomes go in the table
    report(lambda: run(json.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
