#!/usr/bin/env python3
"""Delivery under API faults: this checkout's client against the previous main's.

Each scenario runs once per implementation, each time with a fresh emulator (always this
checkout's, in its own process: only the client comes from the tree under test) and a
fresh client process (``_delivery_child.py``, ``cms_shipper`` from that tree on
``PYTHONPATH``). The client keeps its defaults unless a scenario says otherwise; it
tracks leads (distinct customers unless said), then ``flush(budget)``, then
``close(--close-s)``. Faults are set on the emulator right before the first
``track_lead``.

- rate-limit-no-retry-after: ``rate_limit=60`` per ``--window-s`` window, 429s without
  Retry-After; 150 leads; flush budget (150/60 + 2) windows.
- rate-limit-retry-after: the same, 429s with Retry-After.
- outage-then-503s: connections refused for 3 s, and 30% of requests answered 503
  throughout (seed 1); 2000 leads; flush budget 60 s.
- outage-longer-than-budget: every request 503 for ``--long-outage-s`` (default 75 s,
  longer than the default ``retry_max_elapsed_s`` of 60 s); 200 leads; flush budget
  outage + 30 s.
- one-failing-customer: every request for customer "bad" answered 503; 20 leads for
  "bad" first, then 400 for distinct healthy customers; flush budget 90 s. The note
  gives the time until the emulator recorded all healthy events, and bad's outcomes.
- trickle: the emulator sends its replies a byte every 0.5 s; 10 leads with
  ``read_timeout_s=2, connect_timeout_s=1``; flush budget 20 s. The note gives the
  longest single attempt: from the request's arrival in the emulator's log to the same
  event's next attempt or its outcome in the client (">=": still running at close).
- oversized: every reply 503 padded to 300 MB; 5 leads, ``retry_max_attempts=2``;
  flush budget 60 s. The note gives the client process's peak RSS and whether it ended.

Columns: tracked; delivered, dup (409), rejected as the client counted them at close;
lost = tracked - delivered - dup - rejected (failed, dropped or still pending: rejected
is shown on its own); recorded = events the emulator recorded; requests = /track
requests the emulator saw (refused connections are not requests); wasted = requests -
delivered; wall s = first track_lead to flush() returning; events/s = delivered / wall s.
A row that could not run (emulator lacks the fault, child failed or over its time bound,
then killed) says why instead of figures. Up to ``--jobs`` (3) scenario runs go at once,
each with its own emulator: most of the time is spent waiting on faults and budgets;
``--jobs 1`` gives timings free of contention (it took 10 min here).

    python benchmarks/delivery.py --window-s 6     # measured: 3 min 46 s (2 cores, --jobs 3)
    python benchmarks/delivery.py --window-s 6 --events-scale 0.2 --long-outage-s 10
    python benchmarks/delivery.py --scenarios trickle oversized --baseline /tmp/cms_prev
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _support import (
    DEFAULT_BASELINE,
    HERE,
    Child,
    ChildError,
    EmulatorProcess,
    emulator_capabilities,
    machine,
    table,
    trees,
)

CHILD = os.path.join(HERE, "_delivery_child.py")
MARGIN_S = 60.0  # a child's time bound = flush budget + close budget + this


@dataclass
class Scenario:
    name: str
    plan: List[Tuple[str, str, int, bool]]  # (group, customer, count, distinct customers)
    flush_s: float
    init: Dict[str, Any] = field(default_factory=dict)  # Emulator(...) arguments
    faults: List[Tuple[str, List[Any], Dict[str, Any]]] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)  # CMSClient options
    needs: Tuple[str, ...] = ()  # Emulator parameters/methods it cannot run without
    watch: bool = False  # note when each event gets its outcome (trickle)


def build_scenarios(args: argparse.Namespace) -> List[Scenario]:
    w, outage, scale = args.window_s, args.long_outage_s, args.events_scale

    def n(count: int) -> int:
        return max(1, round(count * scale))

    def rate_limit(name: str, retry_after: bool) -> Scenario:
        init = {"rate_limit": 60, "rate_limit_window_s": w, "rate_limit_retry_after": retry_after}
        needs = () if retry_after else ("rate_limit_retry_after",)  # 429s always had it
        # Not scaled: fewer than 60 events would never meet the limit; --window-s speeds it.
        return Scenario(name, [("all", "rl-", 150, True)], (150 / 60 + 2) * w, init, needs=needs)

    return [
        rate_limit("rate-limit-no-retry-after", False),
        rate_limit("rate-limit-retry-after", True),
        Scenario(
            "outage-then-503s",
            [("all", "o-", n(2000), True)],
            60.0,
            {"seed": 1},
            [
                ("configure", [], {"error_rate": 0.3, "error_status": 503}),
                ("outage", [3.0], {"mode": "refuse"}),
            ],
        ),
        Scenario(
            "outage-longer-than-budget",
            [("all", "lo-", n(200), True)],
            outage + 30.0,
            faults=[("outage", [outage], {"status": 503})],
        ),
        Scenario(
            "one-failing-customer",
            [("bad", "bad", n(20), False), ("healthy", "ok-", n(400), True)],
            90.0,  # > retry_max_elapsed_s (60 s) + room for what queued behind "bad"
            faults=[("fail_customer", ["bad"], {"status": 503})],
            needs=("fail_customer",),
        ),
        Scenario(
            "trickle",
            [("all", "tr-", 10, True)],
            20.0,
            {"trickle_interval_s": 0.5},
            options={"read_timeout_s": 2, "connect_timeout_s": 1},
            needs=("trickle_interval_s",),
            watch=True,
        ),
        Scenario(
            "oversized",
            [("all", "big-", 5, True)],
            60.0,
            {"reply_padding_bytes": 300_000_000, "error_rate": 1.0, "error_status": 503},
            options={"retry_max_attempts": 2},
            needs=("reply_padding_bytes",),
        ),
    ]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    names = [s.name for s in build_scenarios(argparse.Namespace(window_s=60, long_outage_s=75,
                                                                events_scale=1))]  # fmt: skip
    parser = argparse.ArgumentParser(
        description="Delivery under API faults (rate limits, outages, one failing customer, "
        "slow and huge replies): this checkout vs the previous main, one table."
    )
    parser.add_argument("--scenarios", nargs="+", choices=names, default=names, metavar="NAME",
                        help="scenarios to run (default all): " + ", ".join(names))  # fmt: skip
    parser.add_argument("--window-s", type=float, default=60.0,
                        help="the rate limit's window in seconds (the API's: 60; 6 runs the "
                        "rate-limit scenarios 10x faster)")  # fmt: skip
    parser.add_argument(
        "--long-outage-s",
        type=float,
        default=75.0,
        help="length of the outage-longer-than-budget outage (default 75)",
    )
    parser.add_argument("--events-scale", type=float, default=1.0,
                        help="multiply the event counts of the outage and one-failing-customer "
                        "scenarios by this (default 1; e.g. 0.2)")  # fmt: skip
    parser.add_argument(
        "--close-s",
        type=float,
        default=5.0,
        help="budget given to client.close() after the flush (default 5)",
    )
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="PATH",
                        help="source tree of the previous main, run with PYTHONPATH=PATH "
                        f"(default {DEFAULT_BASELINE}, if it exists)")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="run this checkout only")
    parser.add_argument("--jobs", type=int, default=3,
                        help="scenario runs at once, each with its own emulator and client "
                        "(default 3: most of the time is spent waiting on the faults; "
                        "1 gives timings free of contention)")  # fmt: skip
    return parser.parse_args(argv)


def customer_of(payload: Dict[str, Any]) -> str:
    """The customer of a /track/lead body (the API's camelCase field)."""
    return str(payload.get("customerExternalId", payload.get("customer_external_id")))


def longest_attempt(log: List[Dict[str, Any]], figures: Dict[str, Any]) -> str:
    """Longest single attempt: arrival to the event's next arrival or its outcome."""
    arrivals: Dict[str, List[float]] = defaultdict(list)
    for entry in log:
        payload = entry.get("payload")
        if isinstance(payload, dict):
            arrivals[customer_of(payload)].append(entry["time"])
    done = {customer: at for customer, at in figures["done_at"]}
    closed_at = figures["closed_at"]  # events settled by close() were still being tried
    longest, unfinished = 0.0, False
    for customer, times in arrivals.items():
        times.sort()
        ends = [*times[1:], done.get(customer) or closed_at]
        for start, end in zip(times, ends):
            if end - start > longest:
                longest, unfinished = end - start, end >= closed_at
    return (
        f"longest attempt {'>=' if unfinished else ''}{longest:.1f} s"
        if arrivals
        else "no requests"
    )


def notes(s: Scenario, figures: Dict[str, Any], events: List[Dict[str, Any]],
          log: List[Dict[str, Any]], rss_kb: Optional[int]) -> str:  # fmt: skip
    statuses: Dict[Any, int] = defaultdict(int)
    for entry in log:
        statuses[entry.get("status")] += 1
    out = []
    if s.name.startswith("rate-limit"):
        out.append(f"429s {statuses[429]}")
    elif s.name.startswith("outage"):
        out.append(f"503s {statuses[503]}")
    elif s.name == "one-failing-customer":
        healthy = [e["received_at"] for e in events if customer_of(e["payload"]) != "bad"]
        want = sum(c for g, _, c, _ in s.plan if g == "healthy")
        if len(healthy) >= want:
            out.append(f"healthy all recorded after {max(healthy) - figures['started']:.1f} s")
        else:
            out.append(f"healthy {len(healthy)}/{want} recorded")
    elif s.name == "trickle":
        out.append(longest_attempt(log, figures))
    if rss_kb is not None and s.name == "oversized":
        out.append(f"peak RSS {rss_kb / 1024:.0f} MB, ended by itself")
    for group, outcomes in figures["outcomes"].items():
        rest = {k: v for k, v in outcomes.items() if k != "delivered"}
        if rest and (group != "all" or len(figures["outcomes"]) == 1):
            text = " ".join(f"{k} {v}" for k, v in sorted(rest.items()))
            out.append(f"{group}: {text}" if group != "all" else text)
    return "; ".join(out)


def run_one(
    s: Scenario, tree: str, args: argparse.Namespace, caps: Dict[str, List[str]]
) -> List[Any]:
    """One scenario with one implementation: the table's figures, or why there are none."""
    missing = [x for x in s.needs if x not in caps["init"] and x not in caps["methods"]]
    if missing:
        return ["-"] * 10 + [f"skipped: the emulator lacks {', '.join(missing)}"]
    init = {k: v for k, v in s.init.items() if k in caps["init"]}
    bound = s.flush_s + args.close_s + MARGIN_S
    spec = {"plan": s.plan, "flush_s": s.flush_s, "close_s": args.close_s,
            "options": s.options, "watch": s.watch}  # fmt: skip
    rss_kb: Optional[int] = None
    try:
        with EmulatorProcess(lifetime_s=bound + 120, **init) as emulator:
            spec["host"] = emulator.url
            child = Child([CHILD, json.dumps(spec)], timeout_s=bound, pythonpath=tree)
            try:
                child.expect("ready")
                for method, fargs, fkwargs in s.faults:
                    emulator.call(method, *fargs, **fkwargs)
                child.send("go")
                figures = child.result()
            finally:
                rss_kb = child.last_peak_rss_kb or child.peak_rss_kb()
                child.close()
            events, log = emulator.events(), emulator.requests()
    except ChildError as exc:
        rss = f" (peak RSS {rss_kb / 1024:.0f} MB)" if rss_kb else ""
        return ["-"] * 10 + [f"did not finish: {exc}{rss}"[:160]]
    c = figures["closed"]
    delivered, wall = c["delivered"], figures["flush_s"]
    lost = figures["tracked"] - delivered - c["duplicate"] - c["rejected"]
    return [
        figures["tracked"], delivered, c["duplicate"], c["rejected"], lost, len(events),
        len(log), len(log) - delivered, f"{wall:.1f}", f"{delivered / max(wall, 1e-9):.1f}",
        notes(s, figures, events, log, figures.get("peak_rss_kb")),
    ]  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    caps = emulator_capabilities()
    impls = trees(None if args.no_baseline else args.baseline)
    header = ["scenario", "implementation", "tracked", "delivered", "dup", "rejected", "lost",
              "recorded", "requests", "wasted", "wall s", "events/s", "notes"]  # fmt: skip
    tasks = [(s, label, tree) for s in build_scenarios(args) if s.name in args.scenarios
             for label, tree in impls]  # fmt: skip

    def task(entry: Tuple[Scenario, str, str]) -> List[Any]:
        s, label, tree = entry
        row = [s.name, label, *run_one(s, tree, args, caps)]
        print(f"  done: {s.name} / {label} ({time.monotonic() - began:.0f} s)", file=sys.stderr)
        return row

    # Longest flush budgets first, so that --jobs workers finish together; rows in order.
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0].flush_s)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {i: pool.submit(task, tasks[i]) for i in order}
        rows = [futures[i].result() for i in range(len(tasks))]
    print(machine())
    print(f"emulator: this checkout's; rate-limit window {args.window_s:g} s; close budget "
          f"{args.close_s:g} s; event scale {args.events_scale:g}; one run of each; "
          f"{args.jobs} run(s) at once")  # fmt: skip
    print(table(header, rows, left=2, last_left=True))
    print(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
