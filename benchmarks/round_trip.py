#!/usr/bin/env python3
"""Where a slow API's round trip goes: ours beside a bare-socket client on the same server.

What it measures: events/s delivered by ``CMSClient`` at default options (4 senders,
one request in flight each) to a loopback sink that answers every request after
``--latency-ms`` (default 20), and, on the same sink, by a bare client: ``--lanes`` (4)
threads with one blocking keep-alive socket each, writing request bytes built beforehand
(the header lines and body fields ours sends) and reading each answer, nothing else. The
bare client runs again with ``--spin-us`` of CPU (the GIL held) spent between each answer
and its lane's next request, and a plain ``urllib3`` pool (ours' HTTP stack, nothing of
ours around it) posts the same requests from ``--lanes`` threads. Every configuration
runs in a fresh process, ``--runs`` times, interleaved, against one sink: this
directory's ``_sink.py``, or a sink that prints ``READY {json}`` and takes
``--latency-ms`` (the shared referee's ``sink.py``) with ``--sink PATH``.

How to read it: ``ms/request`` is lanes / events/s, the time one lane takes per request.
The bare client's is the server's own floor (its latency plus its handling) with as
little client as there can be; ``+ms vs bare`` is what the client adds to each round
trip. The spin rows show what a given CPU cost per request turns into; the urllib3 row
is the floor of the HTTP stack ours is built on. On a sink whose
answers come out in bunches (the referee's asyncio sink wakes its timers together),
lanes answered together queue for the GIL, so a client's CPU between an answer and its
next request costs each round trip more than itself.

    python benchmarks/round_trip.py                                  # _sink.py, ~3 min
    python benchmarks/round_trip.py --sink ../shared/referee/sink.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

from _support import REPO_ROOT, Child, ChildError, ReadySink, SinkProcess, machine, table

CHILD_TIMEOUT_S = 300.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Events/s at a set server latency: ours beside a bare-socket client."
    )
    parser.add_argument("--events", type=int, default=2_000, help="events per run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="the sink's latency (default 20)"
    )
    parser.add_argument(
        "--lanes", type=int, default=4, help="the bare client's connections (default 4)"
    )
    parser.add_argument(
        "--spin-us", type=float, nargs="*", default=[300.0],
        help="CPU per request added to the bare client, one row each (default 300)",
    )  # fmt: skip
    parser.add_argument(
        "--sink", default=None,
        help="a READY-protocol sink script (e.g. the referee's sink.py); default: _sink.py",
    )  # fmt: skip
    parser.add_argument(
        "--options", default="{}", help="CMSClient options as JSON for ours (default: none)"
    )
    return parser.parse_args(argv)


def run_one(url: str, client: str, spin_us: float, args: argparse.Namespace) -> Dict[str, Any]:
    spec = {
        "client": client, "host": url, "events": args.events, "lanes": args.lanes,
        "spin_us": spin_us, "options": json.loads(args.options), "flush_s": 120.0,
    }  # fmt: skip
    child = Child(
        ["_round_trip_child.py", json.dumps(spec)], timeout_s=CHILD_TIMEOUT_S,
        pythonpath=REPO_ROOT,
    )  # fmt: skip
    try:
        return child.result()
    finally:
        child.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    lanes_ours = json.loads(args.options).get("max_concurrent_requests", 4)
    configs: List[Tuple[str, str, float, int]] = [("bare socket", "bare", 0.0, args.lanes)]
    configs += [(f"bare + {s:g} us/request", "bare", s, args.lanes) for s in args.spin_us]
    configs.append(("urllib3 pool", "urllib3", 0.0, args.lanes))
    configs.append(("cms_shipper", "ours", 0.0, lanes_ours))
    print(machine())
    print(f"load average before: {os.getloadavg()}")
    sink = (
        ReadySink(args.sink, args.latency_ms)
        if args.sink
        else SinkProcess(args.latency_ms / 1000.0)
    )
    runs: Dict[str, List[float]] = {label: [] for label, _, _, _ in configs}
    errors: Dict[str, str] = {}
    with sink as server:
        for _ in range(args.runs):
            for label, client, spin_us, _ in configs:  # interleaved: noise hits each alike
                if label in errors:
                    continue
                try:
                    got = run_one(server.url, client, spin_us, args)
                except ChildError as exc:
                    errors[label] = str(exc)
                    continue
                if got["answered"] < args.events:
                    errors[label] = f"only {got['answered']} of {args.events} answered"
                runs[label].append(got["answered"] / got["wall_s"])
    print(f"load average after: {os.getloadavg()}")
    bare = statistics.median(runs["bare socket"]) if runs["bare socket"] else None
    rows = []
    for label, _, _, lanes in configs:
        rates = sorted(runs[label])
        if not rates:
            rows.append([label, lanes, "-", "-", "-", errors.get(label, "no run")])
            continue
        rate = statistics.median(rates)
        per_ms = 1000.0 * lanes / rate
        added = f"{per_ms - 1000.0 * args.lanes / bare:+.2f}" if bare else "-"
        rows.append([
            label, lanes, f"{rate:.1f} ({rates[0]:.1f}-{rates[-1]:.1f})", f"{per_ms:.2f}",
            added, errors.get(label, ""),
        ])  # fmt: skip
    print(
        f"{args.events} events per run, {args.runs} run(s), latency {args.latency_ms:g} ms, "
        f"sink: {args.sink or '_sink.py'}"
    )
    header = ["client", "lanes", "events/s (range)", "ms/request", "+ms vs bare", "note"]
    print(table(header, rows, left=1, last_left=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
