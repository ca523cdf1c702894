"""One peer measurement in a fresh process: run by ``peers.py``, not by hand.

``python _peers_children.py SPEC_JSON`` prints ``result {json}`` and leaves with
``os._exit`` (so that a background thread cannot keep it alive). ``cms_shipper`` is
imported from the tree on ``PYTHONPATH`` (ours or the previous main); the peers from
site-packages (``pip install -e '.[bench]'``). Only public APIs are used.

Kinds (``spec["kind"]``) and SDKs (``spec["sdk"]``):

- ``throughput``: ``ours`` or ``cutmeshort``: track ``events`` leads (distinct
  customers), then (ours) ``flush``; the parent reads the sink's last request time.
- ``latency``: ``ours`` or ``segment``: ``threads`` callers x ``calls`` timed calls after
  ``warmup`` untimed ones; then a bounded flush.
- ``memory``: ``ours`` against a closed port: tracemalloc over ``events`` queued leads.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
import time
import tracemalloc
from typing import Any, Callable, Dict, List

from _child import report

TOKEN = "test-token"
EVENT = "signup_started"


def _ours(spec: Dict[str, Any]) -> Any:
    from cms_shipper import CMSClient  # noqa: PLC0415  # only the children that measure it

    return CMSClient(token=TOKEN, host=spec["host"], **spec.get("options", {}))


def throughput(spec: Dict[str, Any]) -> Dict[str, Any]:
    n = spec["events"]
    customers = [f"tp-{i}" for i in range(n)]
    out: Dict[str, Any] = {}
    if spec["sdk"] == "ours":
        client = _ours(spec)
        started = time.time()
        for customer in customers:
            client.track_lead(event_name=EVENT, customer_external_id=customer, click_id="clk_1")
        out["track_s"] = time.time() - started
        flushed = client.flush(spec["flush_s"])
        closed = client.close(2.0)
        out.update(
            complete=bool(flushed), delivered=closed.delivered, dropped=closed.dropped,
            not_ok=closed.failed + closed.rejected + closed.pending,
        )  # fmt: skip
    else:
        from cutmeshort import CMSClient as VendorClient  # noqa: PLC0415

        vendor = VendorClient(token=TOKEN, host=spec["host"])
        errors = 0
        started = time.time()
        for customer in customers:
            try:
                vendor.track_lead(event_name=EVENT, customer_external_id=customer, click_id="clk_1")
            except Exception:  # the vendor SDK raises on any failure
                errors += 1
        out.update(track_s=time.time() - started, complete=True, dropped=0, not_ok=errors)
        out["delivered"] = n - errors  # (its close() raises AttributeError in 1.0.1)
    out["started"] = started
    return out


def _segment(spec: Dict[str, Any]) -> Any:
    from segment.analytics import Client  # noqa: PLC0415

    return Client(write_key=TOKEN, host=spec["host"], max_queue_size=spec["queue"])


def _timed(track: Callable[[str], bool], names: List[str], out: List[int], ok: List[bool]) -> None:
    clock = time.perf_counter_ns
    for i, name in enumerate(names):
        start = clock()
        queued = track(name)
        out[i] = clock() - start
        ok[i] = queued


def latency(spec: Dict[str, Any]) -> Dict[str, Any]:
    threads, calls, warmup = spec["threads"], spec["calls"], spec["warmup"]
    spec["queue"] = threads * calls + warmup + 1_000  # room for every event: none dropped
    ours = spec["sdk"] == "ours"
    if ours:
        spec["options"] = {"max_queue_size": spec["queue"]}
        client = _ours(spec)
        track_lead = client.track_lead

        def track(customer: str) -> bool:  # the same thin shim for both SDKs; result unkept
            track_lead(event_name=EVENT, customer_external_id=customer, click_id="clk_1")
            return True  # drops are counted by stats() afterwards

    else:
        client = _segment(spec)
        segment_track, properties = client.track, {"click_id": "clk_1"}

        def track(customer: str) -> bool:  # Segment returns (queued?, message)
            return bool(segment_track(user_id=customer, event=EVENT, properties=properties)[0])

    for i in range(warmup):
        track(f"warm-{i}")
    samples = [[0] * calls for _ in range(threads)]
    results = [[True] * calls for _ in range(threads)]
    names = [[f"lat-t{t}-c{i}" for i in range(calls)] for t in range(threads)]
    barrier = threading.Barrier(threads)

    def caller(t: int) -> None:
        barrier.wait()
        _timed(track, names[t], samples[t], results[t])

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if ours:
        dropped = client.stats().get("dropped", 0)
    else:
        dropped = sum(1 for per_thread in results for queued in per_thread if not queued)
    flush_started = time.monotonic()
    if ours:
        complete = bool(client.flush(spec["flush_s"]))
    else:  # Segment's flush() waits without a bound: give it one
        flusher = threading.Thread(target=client.flush, daemon=True)
        flusher.start()
        flusher.join(spec["flush_s"])
        complete = not flusher.is_alive()
    flush_s = time.monotonic() - flush_started
    ordered = sorted(ns for per_thread in samples for ns in per_thread)
    ranks = [max(1, -(-len(ordered) * p // 1000)) for p in (500, 990, 999)]  # nearest rank
    return {
        "percentiles_ns": [ordered[r - 1] for r in ranks], "max_ns": ordered[-1],
        "calls": len(ordered), "tracked": len(ordered) + warmup, "dropped": dropped,
        "flush_s": flush_s, "complete": complete,
    }  # fmt: skip


def memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    n = spec["events"]
    spec["options"] = {"max_queue_size": n + 1_000}
    client = _ours(spec)
    customers = [f"m{i}" for i in range(n)]  # short caller strings, made before measuring
    for i in range(100):  # start the worker and any lazy state outside the measurement
        client.track_lead(event_name=EVENT, customer_external_id=f"w{i}", click_id="c")
    time.sleep(0.2)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    track = client.track_lead
    for customer in customers:
        track(event_name=EVENT, customer_external_id=customer, click_id="c")  # result unkept
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "filename")
    held = sum(stat.size_diff for stat in diff)
    top = sorted(diff, key=lambda s: -s.size_diff)[:3]
    return {
        "bytes_per_event": held / n, "held_bytes": held,
        "dropped": client.stats().get("dropped", 0),
        "top": [[os.path.basename(str(s.traceback[0].filename)), s.size_diff] for s in top],
    }  # fmt: skip


KINDS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "throughput": throughput,
    "latency": latency,
    "memory": memory,
}


def main() -> None:
    for name in ("cms_shipper", "segment", "urllib3"):  # outcomes are counted, not logged
        logging.getLogger(name).setLevel(logging.CRITICAL)
    spec = json.loads(sys.argv[1])
    report(lambda: KINDS[spec["kind"]](spec))


if __name__ == "__main__":
    main()
