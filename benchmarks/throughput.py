#!/usr/bin/env python3
"""Events per second the background shipper delivers to the emulator.

What it measures: N leads (distinct customers, each with a click id) are tracked as
fast as one thread can, and the clock runs from the first ``track_lead`` call to the
moment the emulator recorded the last of them (its own ``received_at`` stamp; emulator
and client share the machine's clock). Delivered events divided by that time is the
throughput. It is repeated for ``max_concurrent_requests`` 1, 4 and 8, with the
emulator answering at once and with 20 ms of latency per request. The client keeps its
defaults otherwise (``batch_size`` 100, ``flush_interval_s`` 0.5, a keep-alive
connection per lane); the emulator runs in its own process, as the API would be
elsewhere, and is reset between runs.

How to read it: with 0 ms latency the figure is the client's own cost per request
(JSON, requests' HTTP stack, lane hand-offs, all under one GIL) plus the emulator's,
on this machine. With 20 ms latency each lane can do at most 50 requests a second, so
the "ideal" column (lanes / latency) is the ceiling and the "of ideal" ratio shows how
much the client's overhead eats into it. The API is one event per request: there is
no batch endpoint, so concurrency is the only lever.

    python benchmarks/throughput.py                     # 2000 events at 0 ms, 400 at 20 ms
    python benchmarks/throughput.py --events 5000 --slow-events 1000 --lanes 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Optional

from _support import TOKEN, EmulatorProcess

from cms_shipper import CMSClient

FLUSH_TIMEOUT_S = 120.0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Events per second delivered to the emulator, by concurrency and latency.",
    )
    parser.add_argument(
        "--events", type=int, default=2_000, help="events per run at 0 ms latency (default 2000)"
    )
    parser.add_argument(
        "--slow-events", type=int, default=400,
        help="events per run at the slow latency (default 400)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-ms", type=float, default=20.0,
        help="the emulator's latency in the slow runs, in ms (default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--lanes", type=int, nargs="+", default=[1, 4, 8],
        help="max_concurrent_requests values to try (default 1 4 8)",
    )  # fmt: skip
    return parser.parse_args(argv)


def run_once(emulator: EmulatorProcess, lanes: int, events: int) -> dict[str, Any]:
    """Track ``events`` leads and measure until the emulator recorded the last one."""
    emulator.reset()
    client = CMSClient(
        token=TOKEN, host=emulator.url, max_concurrent_requests=lanes,
        max_queue_size=max(events + 100, 10_000),  # room for every event: none dropped
    )  # fmt: skip
    customers = [f"tp-{lanes}-{i}" for i in range(events)]
    started = time.time()
    for customer in customers:
        client.track_lead(event_name="signup_started", customer_external_id=customer, click_id="c")
    tracked_s = time.time() - started
    flushed = client.flush(FLUSH_TIMEOUT_S)
    closed = client.close(timeout_s=5.0)
    recorded = emulator.events()
    last = max((e["received_at"] for e in recorded), default=started)
    wall_s = max(last - started, 1e-9)
    return {
        "recorded": len(recorded),
        "delivered": closed.delivered,
        "failed": closed.failed + closed.rejected + closed.dropped,
        "complete": bool(flushed),
        "track_s": tracked_s,
        "wall_s": wall_s,
        "per_s": len(recorded) / wall_s,
    }


def print_table(rows: list[tuple[float, int, int, dict[str, Any]]]) -> None:
    header = (
        f"{'latency ms':>10} {'lanes':>5} {'events':>7} {'recorded':>8} {'not ok':>6} "
        f"{'track s':>8} {'wall s':>7} {'events/s':>9} {'ideal/s':>8} {'of ideal':>8}"
    )
    print(header)
    print("-" * len(header))
    for latency_ms, lanes, events, f in rows:
        ideal = lanes * 1000.0 / latency_ms if latency_ms else None
        ideal_text = f"{ideal:>8.0f}" if ideal else f"{'-':>8}"
        ratio_text = f"{f['per_s'] / ideal:>8.0%}" if ideal else f"{'-':>8}"
        print(
            f"{latency_ms:>10g} {lanes:>5} {events:>7} {f['recorded']:>8} {f['failed']:>6} "
            f"{f['track_s']:>8.3f} {f['wall_s']:>7.2f} {f['per_s']:>9.0f} {ideal_text} "
            f"{ratio_text}"
        )


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # Outcomes are counted in the table; a stray warning line would only break it up.
    logging.getLogger("cms_shipper").setLevel(logging.ERROR)
    rows: list[tuple[float, int, int, dict[str, Any]]] = []
    for latency_ms, events in ((0.0, args.events), (args.latency_ms, args.slow_events)):
        with EmulatorProcess(latency_s=latency_ms / 1000.0) as emulator:
            for lanes in args.lanes:
                rows.append((latency_ms, lanes, events, run_once(emulator, lanes, events)))
    print(
        "events/s delivered to the emulator (first track_lead to the last event recorded; "
        "one request per event; client defaults but max_concurrent_requests = lanes)"
    )
    print_table(rows)
    incomplete = [r for r in rows if not r[3]["complete"] or r[3]["recorded"] != r[2]]
    if incomplete:
        print(f"warning: {len(incomplete)} run(s) did not deliver every event; see 'not ok'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
