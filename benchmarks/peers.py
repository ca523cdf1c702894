#!/usr/bin/env python3
"""Our client against peer SDKs (and the previous main), same machine, same loopback sink.

Every SDK runs in its own fresh process (``_peers_children.py``) against the sink of
``_sink.py`` (another process: answers every POST 200, counts requests and events).
Our client comes from this checkout ("ours") and, with ``--baseline PATH``, from the
previous main's source tree (``PYTHONPATH=PATH``); the peers come from the ``bench``
extra (``pip install -e '.[bench]'``: cutmeshort 1.0.1, segment-analytics-python 2.4.0).

a. events/s at 0 ms: N leads (distinct customers) tracked, then flush (ours, default
   options but max_queue_size = N + 1000, so that every event is delivered, none dropped,
   as every call of the synchronous SDK is); cutmeshort 1.0.1 (the vendor's SDK) sends
   the same N one blocking request at a time. Clock: first track call to the last request
   the sink received; events = requests the sink received. Ratio: / cutmeshort (target >= 1.0).
b. events/s with a 20 ms round trip (sink latency), ours with max_concurrent_requests=4,
   against the ideal 4 / 20 ms = 200/s. Ratio: / ideal (target >= 0.9).
c. track_lead wall time per call as the caller sees it (perf_counter_ns around each
   call), 4 threads x 20000 calls after 1000 untimed ones, vs Segment's track() (its
   background batching shipper, posting to /v1/batch); both queues big enough that
   nothing is dropped (counted anyway). Value: p99. Ratio: / Segment's p99 (target
   <= 1.0). Then each flushes within --flush-s; "reached" = events the sink got.
d. memory held per queued event: API unreachable (a closed port), 50000 leads queued,
   tracemalloc snapshot before/after (the caller's strings are made beforehand and the
   results not kept): bytes held / N. Ours only. Ratio: / 512 B (target <= 1.0).

With --runs R every row is run R times (interleaved); the table gives the median and the
range. Measured on a shared 2-core machine, default flags, --runs 1: 4 min 35 s (most of
it the flushes of row c: 81000 events, one request each for our client).

    python benchmarks/peers.py
    python benchmarks/peers.py --runs 3 --baseline /tmp/cms_prev
    python benchmarks/peers.py --events 2000 --slow-events 400 --calls 2000 --memory-events 5000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from _support import (
    DEFAULT_BASELINE,
    HERE,
    Child,
    ChildError,
    SinkProcess,
    machine,
    table,
    trees,
    unused_port,
)

CHILD = os.path.join(HERE, "_peers_children.py")
ROWS = ("a", "b", "c", "d")
MEMORY_TARGET_B = 512


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Our client vs cutmeshort 1.0.1 and Segment 2.4.0 "
                                "(and the previous main) against one loopback sink.")  # fmt: skip
    add = p.add_argument
    add("--events", type=int, default=20_000, help="a: events at 0 ms (default 20000)")
    add("--slow-events", type=int, default=2_000, help="b: events at 20 ms (default 2000)")
    add("--latency-ms", type=float, default=20.0, help="b: the sink's latency (default 20)")
    add("--lanes", type=int, default=4, help="b: max_concurrent_requests (default 4)")
    add("--threads", type=int, default=4, help="c: caller threads (default 4)")
    add("--calls", type=int, default=20_000, help="c: timed calls per thread (default 20000)")
    add("--warmup", type=int, default=1_000, help="c: untimed calls first (default 1000)")
    add("--memory-events", type=int, default=50_000, help="d: events queued (default 50000)")
    add("--flush-s", type=float, default=120.0, help="flush budget after a and c (default 120)")
    add("--runs", type=int, default=1, help="run every row R times; median, min-max (default 1)")
    add("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default all)")
    add(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="PATH",
        help=f"previous main's source tree (default {DEFAULT_BASELINE}, if it exists)",
    )
    add("--no-baseline", action="store_true", help="run this checkout only")
    return p.parse_args(argv)


def spawn(spec: Dict[str, Any], pythonpath: Optional[str], timeout_s: float) -> Dict[str, Any]:
    child = Child([CHILD, json.dumps(spec)], timeout_s=timeout_s, pythonpath=pythonpath)
    try:
        return child.result()
    finally:
        child.close()


Measure = Callable[[], Dict[str, Any]]  # runs one child; returns {"value": ..., "detail": ...}


def plan(args: argparse.Namespace, sinks: Dict[str, SinkProcess]) -> List[Tuple[str, str, Measure]]:
    """(row, implementation, measure) for every row and implementation, in run order."""
    fast, slow = sinks["fast"], sinks["slow"]
    ours = trees(None if args.no_baseline else args.baseline)
    out: List[Tuple[str, str, Measure]] = []

    def throughput(sink: SinkProcess, sdk: str, tree: Optional[str], n: int, **opt: Any):
        def measure() -> Dict[str, Any]:
            sink.stats(reset=True)
            spec = {"kind": "throughput", "sdk": sdk, "host": sink.url, "events": n,
                    "options": opt, "flush_s": args.flush_s}  # fmt: skip
            f = spawn(spec, tree, args.flush_s + 600)
            got = sink.stats()
            wall = max(got["last"] - f["started"], 1e-9)
            detail = (
                f"sink got {got['events']}/{n}; dropped {f['dropped']}; track {f['track_s']:.2f} s"
            )
            return {"value": got["events"] / wall, "detail": detail}

        return measure

    def latency(sdk: str, tree: Optional[str]) -> Measure:
        def measure() -> Dict[str, Any]:
            fast.stats(reset=True)
            spec = {"kind": "latency", "sdk": sdk, "host": fast.url, "threads": args.threads,
                    "calls": args.calls, "warmup": args.warmup,
                    "flush_s": args.flush_s}  # fmt: skip
            f = spawn(spec, tree, args.flush_s + 600)
            p50, p99, p999 = (ns / 1000 for ns in f["percentiles_ns"])
            detail = (f"p50 {p50:.1f} p99.9 {p999:.1f} max {f['max_ns'] / 1000:.0f} us; "
                      f"dropped {f['dropped']}; reached sink {fast.stats()['events']}/"
                      f"{f['tracked']} in {f['flush_s']:.1f} s")  # fmt: skip
            return {"value": p99, "detail": detail}

        return measure

    def memory(tree: str) -> Measure:
        def measure() -> Dict[str, Any]:
            spec = {"kind": "memory", "host": f"http://127.0.0.1:{unused_port()}",
                    "events": args.memory_events}  # fmt: skip
            f = spawn(spec, tree, 600)
            top = ", ".join(f"{name} {size / args.memory_events:.0f}" for name, size in f["top"])
            return {
                "value": f["bytes_per_event"],
                "detail": f"dropped {f['dropped']}; B/event by file: {top}",
            }

        return measure

    for label, tree in ours:
        room = args.events + 1_000  # the default 10,000 would drop half of 20,000 at once
        out.append(("a", label, throughput(fast, "ours", tree, args.events, max_queue_size=room)))
    out.append(("a", "cutmeshort 1.0.1", throughput(fast, "cutmeshort", None, args.events)))
    for label, tree in ours:
        lanes = {"max_concurrent_requests": args.lanes}
        out.append(("b", label, throughput(slow, "ours", tree, args.slow_events, **lanes)))
    for label, tree in ours:
        out.append(("c", label, latency("ours", tree)))
    out.append(("c", "segment 2.4.0", latency("segment", None)))
    for label, tree in ours:
        out.append(("d", label, memory(tree)))
    return [entry for entry in out if entry[0] in args.rows]


def describe(args: argparse.Namespace) -> Dict[str, Tuple[str, str, str]]:
    """Per row: (what, unit, target)."""
    ideal = args.lanes * 1000 / args.latency_ms
    return {
        "a": (f"a events/s, 0 ms, {args.events} events", "ev/s", ">= 1.0 x cutmeshort"),
        "b": (
            f"b events/s, {args.latency_ms:g} ms, {args.lanes} lanes, {args.slow_events} ev",
            "ev/s",
            f">= 0.9 x ideal {ideal:.0f}/s",
        ),
        "c": (f"c track_lead p99, {args.threads}x{args.calls} calls", "us", "<= 1.0 x segment"),
        "d": (
            f"d memory per queued event, {args.memory_events} ev",
            "B",
            f"<= {MEMORY_TARGET_B} B",
        ),
    }


def reference(row: str, medians: Dict[Tuple[str, str], float], args: argparse.Namespace):
    """What a row's ratio divides by."""
    if row == "a":
        return medians.get(("a", "cutmeshort 1.0.1"))
    if row == "b":
        return args.lanes * 1000 / args.latency_ms
    if row == "c":
        return medians.get(("c", "segment 2.4.0"))
    return float(MEMORY_TARGET_B)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    results: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    with SinkProcess() as fast, SinkProcess(args.latency_ms / 1000) as slow:
        entries = plan(args, {"fast": fast, "slow": slow})
        for run in range(args.runs):
            for row, label, measure in entries:
                try:
                    figures = measure()
                except ChildError as exc:
                    figures = {"value": None, "detail": f"did not finish: {exc}"[:150]}
                results.setdefault((row, label), []).append(figures)
                print(f"  run {run + 1}: {row} / {label} ({time.monotonic() - began:.0f} s)",
                      file=sys.stderr)  # fmt: skip
    medians: Dict[Tuple[str, str], float] = {}
    for key, runs in results.items():
        values = [r["value"] for r in runs if r["value"] is not None]
        if values:
            medians[key] = statistics.median_low(values)
    described, rows = describe(args), []
    for (row, label), runs in results.items():
        what, unit, target = described[row]
        values = sorted(r["value"] for r in runs if r["value"] is not None)
        if not values:
            rows.append([what, label, "-", "-", unit, "-", target, runs[-1]["detail"]])
            continue
        median = medians[(row, label)]
        detail = next(r["detail"] for r in runs if r["value"] == median)
        ref = reference(row, medians, args)
        ratio = f"{median / ref:.2f}" if ref else "-"
        rng = f"{values[0]:.1f}-{values[-1]:.1f}" if len(values) > 1 else "-"
        rows.append([what, label, f"{median:.1f}", rng, unit, ratio, target, detail])
    print(machine())
    print(f"sink: loopback, this machine; median of {args.runs} run(s) (the lower middle one "
          "for an even count), range min-max")  # fmt: skip
    header = ["row", "implementation", "median", "min-max", "unit", "ratio", "target", "details"]
    print(table(header, rows, left=2, last_left=True))
    print(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
