#!/usr/bin/env python3
"""Process CPU per delivered event: ours (and a baseline tree) against the seed SDK.

What it measures: in a fresh process per run, one thread tracks N leads (the six string
fields the shared referee sends, distinct customers, default client options) and then
waits until every event has its outcome (ours: ``flush``; the seed SDK ``cutmeshort``
1.0.1 sends each one in the call). ``resource.getrusage`` gives the process's CPU time
(user + system, all threads) over that span; divided by the events the client reports
delivered, that is the CPU the host pays per delivered event. ``caller`` is the calling
thread's own share (``RUSAGE_THREAD``): for ours the ``track_lead`` calls, for the seed
SDK everything. One warm-up event (connection, threads) goes before the measurement.

All SDKs post to the same loopback sink in its own process: this directory's
``_sink.py`` by default, or a sink that prints ``READY {"port": P, ...}`` (the shared
referee's ``sink.py``) with ``--sink PATH``. Each configuration runs ``--runs`` times,
interleaved; the table shows the median with the range.

    python benchmarks/cpu_per_event.py                       # ~30 s: 5 000 events, 3 runs
    python benchmarks/cpu_per_event.py --sink ../shared/referee/sink.py --baseline /tmp/cms_prev
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

from _support import (
    DEFAULT_BASELINE,
    REPO_ROOT,
    Child,
    ChildError,
    ReadySink,
    SinkProcess,
    machine,
    table,
    trees,
)

CHILD_TIMEOUT_S = 300.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Process CPU per delivered event, vs the seed.")
    parser.add_argument("--events", type=int, default=5_000, help="leads per run (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument(
        "--sink", default=None,
        help="a READY-protocol sink script (e.g. the referee's sink.py); default: _sink.py",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=DEFAULT_BASELINE,
        help=f"a previous source tree to compare (default {DEFAULT_BASELINE}, if present)",
    )  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed SDK")
    parser.add_argument(
        "--options", default="{}", help="CMSClient options as JSON for ours (default: none)"
    )
    return parser.parse_args(argv)


def run_one(url: str, sdk: str, tree: Optional[str], args: argparse.Namespace) -> Dict[str, Any]:
    spec = {
        "sdk": sdk, "host": url, "events": args.events, "flush_s": 120.0,
        "options": json.loads(args.options),
    }  # fmt: skip
    child = Child(["_cpu_child.py", json.dumps(spec)], timeout_s=CHILD_TIMEOUT_S, pythonpath=tree)
    try:
        return child.result()
    finally:
        child.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    configs: List[Tuple[str, str, Optional[str]]] = [
        (label, "ours", tree) for label, tree in trees(None if args.no_baseline else args.baseline)
    ]
    if not args.no_seed:
        configs.append(("seed cutmeshort 1.0.1", "seed", REPO_ROOT))
    print(machine())
    print(f"load average before: {os.getloadavg()}")
    sink = ReadySink(args.sink) if args.sink else SinkProcess(0.0)
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in configs}
    errors: Dict[str, str] = {}
    with sink as server:
        for _ in range(args.runs):
            for label, sdk, tree in configs:  # interleaved: machine noise hits each alike
                if label in errors:
                    continue
                try:
                    runs[label].append(run_one(server.url, sdk, tree, args))
                except ChildError as exc:
                    errors[label] = str(exc)
    print(f"load average after: {os.getloadavg()}")
    rows = []
    seed_us = None
    for label, _, _ in configs:
        got = runs[label]
        if not got:
            rows.append([label, "-", "-", "-", "-", "-", errors.get(label, "no run")])
            continue
        per = sorted(1e6 * r["cpu_s"] / max(1, r["delivered"]) for r in got)
        caller = statistics.median(1e6 * r["caller_cpu_s"] / max(1, r["delivered"]) for r in got)
        rate = statistics.median(r["delivered"] / r["wall_s"] for r in got)
        med = statistics.median(per)
        if label.startswith("seed"):
            seed_us = med
        rows.append([
            label, f"{min(r['delivered'] for r in got)}", f"{med:.0f} ({per[0]:.0f}-{per[-1]:.0f})",
            f"{caller:.0f}", f"{rate:.0f}", "", errors.get(label, ""),
        ])  # fmt: skip
    for row in rows:
        if seed_us and row[2] != "-":
            row[5] = f"{float(row[2].split()[0]) / seed_us:.2f}x"
    print(f"{args.events} leads per run, {args.runs} run(s), sink: {args.sink or '_sink.py'}")
    header = [
        "client", "delivered", "CPU us/event (range)", "caller us", "events/s", "vs seed", "note"
    ]  # fmt: skip
    print(table(header, rows, last_left=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
