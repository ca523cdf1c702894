#!/usr/bin/env python3
"""What the on-disk spool costs: ``track_lead`` latency with it, and recovery after SIGKILL.

1. ``track_lead`` wall time per call as the caller sees it (``perf_counter_ns`` around
   the call alone, in the caller's thread), ``--threads`` (4) and 1 caller threads x
   ``--calls`` (5000) timed calls each after ``--warmup`` (500) untimed ones, in a fresh
   process per row and run (``_spool_child.py``), against the loopback sink of
   ``_sink.py`` (another process, answering 200 at once: events are delivered while the
   callers run). Modes:

   - ``memory``: no spool;
   - ``spool``: ``spool_path=`` (events reach the file only when they would be lost);
   - ``write_ahead``: ``spool_path=`` and ``write_ahead=True`` (each event is stored
     before ``track_lead`` returns, its row removed once it has an outcome);
   - ``write_ahead+sibling``: the same while a sibling process (its own ``CMSClient``,
     same ``spool_path``, ``write_ahead=True``) calls ``track_lead`` in a loop, from
     before the measured process starts until it is done (``--sibling-rate`` calls/s,
     default 0: as fast as one thread can).

   Each row gets a fresh spool file. ``max_queue_size`` has room for every event and
   ``spool_max_bytes`` is 1 GiB, so no call measured is a drop or a refusal. Columns:
   the median over ``--runs`` of each run's p50, p99 and max (µs), with the min-max range;
   ``misses`` and ``errors`` are ``stats()["spool_write_ahead_misses"]`` and
   ``["spool_errors"]`` counted over the timed calls, one figure per run (a miss: the
   write-ahead journal could not take the event, which went on in memory only);
   ``delivered`` = events the client had delivered by the end of the timed calls
   (median). The issue's targets are printed beside the write_ahead rows (4 threads, no
   contention: p50 <= 60 µs, p99 <= 1 ms; with a sibling writer: p99 <= 5 ms) and judged
   on the medians.

2. Crash recovery. A child with ``write_ahead=True`` tracks ``--crash-events`` (1000)
   leads (distinct customers) against a server that is down (a closed port: every
   connection refused, so all of them are still in the spool) and is killed with SIGKILL.
   Then a new process is started on the same spool file with the emulator (this
   checkout's, its own process) up, all options at their defaults (``spool_lease_s``
   60 s, ``spool_replay_interval_s`` 5 s). Timed from just before ``Popen`` of the new
   process to the emulator's ``received_at`` of the first replayed event and of the last
   one. Every accepted event must be recorded exactly once (by customer id, one per
   event): ``missing`` and ``dup`` must be 0 (an event missed by the write-ahead would
   be lost, and is counted in ``misses``); ``left`` = rows still in the spool once the
   new process flushed. p50 (median) over ``--runs`` and the range.

Measured on the shared 2-core development machine (Python 3.11), default flags
(``--runs 3``): 1 min 48 s, twice (``total`` is printed last). On 2 cores the four callers, the
client's worker, the sibling and the sink share two CPUs: the write_ahead+sibling rows
measure lock and CPU contention together.

    python benchmarks/spool.py                       # --runs 3
    python benchmarks/spool.py --runs 5 --calls 10000
    python benchmarks/spool.py --parts crash --crash-events 5000
    python benchmarks/spool.py --parts spill-locked full-disk   # parts 3 and 4 only

3 and 4, the spool at its edges (a full queue's spill under a sibling's lock, recovery
after a full disk), are described in ``_spool_edges.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _spool_edges import rows_left, run_full_disk, run_spill_locked
from _support import (
    HERE,
    REPO_ROOT,
    Child,
    ChildError,
    EmulatorProcess,
    SinkProcess,
    machine,
    table,
    unused_port,
)

CHILD = os.path.join(HERE, "_spool_child.py")
CHILD_BOUND_S = 180.0  # a child's hard time bound
MODES = ("memory", "spool", "write_ahead", "write_ahead+sibling")
PARTS = ("latency", "crash", "spill-locked", "full-disk")
# The targets (µs): (threads or None for any, p50, p99), per mode.
TARGETS: Dict[str, Tuple[Optional[int], Optional[float], Optional[float]]] = {
    "write_ahead": (4, 60.0, 1000.0),
    "write_ahead+sibling": (None, None, 5000.0),
}
WAIT_FOR_REPLAY_S = 25.0  # after the restart, wait at most this for every event


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The spool's costs: track_lead latency with spool/write_ahead (and a "
        "sibling writer), crash recovery."
    )
    add = p.add_argument
    add("--runs", type=int, default=3, help="runs of every row; median and range (default 3)")
    add("--threads", type=int, default=4, help="caller threads of the multi-thread rows (4)")
    add("--calls", type=int, default=5_000, help="timed calls per thread (default 5000)")
    add("--warmup", type=int, default=500, help="untimed calls first (default 500)")
    add("--sibling-rate", type=float, default=0.0,
        help="the sibling's track_lead calls/s (default 0: as fast as it can)")  # fmt: skip
    add("--crash-events", type=int, default=1_000, help="events tracked before SIGKILL (1000)")
    add("--spill-calls", type=int, default=40, help="calls timed under a sibling's lock (40)")
    add("--disk-events", type=int, default=20_000, help="leads tracked onto the full disk")
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (all)")
    return p.parse_args(argv)


def spawn(spec: Dict[str, Any]) -> Child:
    """A ``_spool_child.py`` process for ``spec``, importing this checkout."""
    return Child([CHILD, json.dumps(spec)], timeout_s=CHILD_BOUND_S, pythonpath=REPO_ROOT)


def options_for(mode: str, spool_path: str, total: int) -> Dict[str, Any]:
    options: Dict[str, Any] = {"max_queue_size": total + 1_000}
    if mode != "memory":
        options.update(spool_path=spool_path, spool_max_bytes=2**30)
    if mode.startswith("write_ahead"):
        options["write_ahead"] = True
    return options


def latency_run(mode: str, threads: int, sink: SinkProcess, args: argparse.Namespace):
    """One row, one run: the measured child's figures (and the sibling's, if any)."""
    folder = tempfile.mkdtemp(prefix="cms-spool-bench-")
    path = os.path.join(folder, "spool.db")
    sibling: Optional[Child] = None
    try:
        if mode.endswith("+sibling"):
            spec = {"kind": "sibling", "host": sink.url, "rate": args.sibling_rate,
                    "options": options_for("write_ahead", path, 1_000_000)}  # fmt: skip
            sibling = spawn(spec)
            sibling.expect("ready")
        spec = {"kind": "latency", "host": sink.url, "threads": threads, "calls": args.calls,
                "warmup": args.warmup,
                "options": options_for(mode, path, threads * args.calls + args.warmup)}  # fmt: skip
        child = spawn(spec)
        try:
            figures = child.result()
        finally:
            child.close()
        if sibling is not None:
            sibling.send("stop")
            figures["sibling"] = sibling.result()
        return figures
    finally:
        if sibling is not None:
            sibling.close()
        shutil.rmtree(folder, ignore_errors=True)


def _us(values: List[float]) -> str:
    """Median (range) of µs figures."""
    med = statistics.median(values)
    text = f"{med:.0f}" if med >= 100 else f"{med:.1f}"
    if len(values) > 1:
        text += f" ({min(values):.0f}-{max(values):.0f})"
    return text


def _target(mode: str, threads: int, p50: float, p99: float) -> Tuple[str, str]:
    """(target text, verdict) for a row, judged on the medians."""
    want = TARGETS.get(mode)
    if want is None or (want[0] is not None and want[0] != threads):
        return "-", ""
    _, max_p50, max_p99 = want
    parts, missed = [], []
    if max_p50 is not None:
        parts.append(f"p50<={max_p50:g}")
        if p50 > max_p50:
            missed.append("p50")
    if max_p99 is not None:
        parts.append(f"p99<={max_p99:g}")
        if p99 > max_p99:
            missed.append("p99")
    return " ".join(parts), ("MISSED " + "+".join(missed)) if missed else "met"


def latency_rows(runs: Dict[Tuple[str, int], List[Dict[str, Any]]]) -> List[List[Any]]:
    rows = []
    for (mode, threads), figures in runs.items():
        done = [f for f in figures if "error" not in f]
        if not done:
            rows.append([mode, threads] + ["-"] * 8 + [figures[-1]["error"]])
            continue
        p50 = [f["p50_ns"] / 1000 for f in done]
        p99 = [f["p99_ns"] / 1000 for f in done]
        top = [f["max_ns"] / 1000 for f in done]

        def delta(f: Dict[str, Any], name: str) -> int:
            return int(f["after"][name] or 0) - int(f["before"][name] or 0)

        misses = ",".join(str(delta(f, "spool_write_ahead_misses")) for f in done)
        errors = ",".join(str(delta(f, "spool_errors")) for f in done)
        delivered = statistics.median(delta(f, "delivered") for f in done)
        target, verdict = _target(mode, threads, statistics.median(p50), statistics.median(p99))
        notes = [f"{len(done)} run(s)"] if len(done) != len(figures) else []
        sib = [f["sibling"] for f in done if "sibling" in f]
        if sib:
            rate = statistics.median(s["calls_per_s"] for s in sib)
            sib_p99 = statistics.median(s["p99_ns"] / 1000 for s in sib)
            sib_misses = ",".join(str(s["after"]["spool_write_ahead_misses"]) for s in sib)
            notes.append(f"sibling: {rate:.0f} calls/s, p99 {sib_p99:.0f} us, "
                         f"misses {sib_misses}")  # fmt: skip
        rows.append([mode, threads, done[0]["calls"], _us(p50), _us(p99), _us(top),
                     misses, errors, f"{delivered:.0f}", target, verdict,
                     "; ".join(notes)])  # fmt: skip
    return rows


def run_latency(args: argparse.Namespace, began: float) -> None:
    cases = [(mode, threads) for mode in MODES for threads in (1, args.threads)]
    runs: Dict[Tuple[str, int], List[Dict[str, Any]]] = {case: [] for case in cases}
    with SinkProcess() as sink:
        for run in range(args.runs):
            for mode, threads in cases:
                try:
                    figures = latency_run(mode, threads, sink, args)
                except ChildError as exc:
                    figures = {"error": f"did not finish: {exc}"[:120]}
                runs[(mode, threads)].append(figures)
                print(f"  run {run + 1}: {mode} x{threads} ({time.monotonic() - began:.0f} s)",
                      file=sys.stderr)  # fmt: skip
    header = ["mode", "threads", "calls", "p50 us", "p99 us", "max us", "misses", "errors",
              "delivered", "target us", "", "notes"]  # fmt: skip
    print(
        f"\n1. track_lead latency per call, caller's thread (median over {args.runs} run(s),"
        f" range min-max); {args.warmup} untimed calls first; sink: loopback, 200 at once"
    )
    print(table(header, latency_rows(runs), left=2, last_left=True))


def crash_run(run: int, emulator: EmulatorProcess, args: argparse.Namespace) -> Dict[str, Any]:
    """Track against a dead server, SIGKILL, restart with the server up; what arrived when."""
    folder = tempfile.mkdtemp(prefix="cms-spool-crash-")
    path = os.path.join(folder, "spool.db")
    prefix, n = f"crash{run}-", args.crash_events
    options = {"spool_path": path, "write_ahead": True}
    try:
        down = f"http://127.0.0.1:{unused_port()}"
        spec = {"kind": "crash", "host": down, "events": n, "prefix": prefix, "options": options}
        crashed = spawn(spec)
        try:
            tracked = json.loads(crashed.expect("tracked "))
            crashed.proc.send_signal(signal.SIGKILL)
            crashed.proc.wait(10)
        finally:
            crashed.close()
        emulator.reset()
        spec = {"kind": "restart", "host": emulator.url, "options": options, "flush_s": 10.0}
        started = time.time()
        restarted = spawn(spec)
        try:
            emulator.call("wait_for_events", n, WAIT_FOR_REPLAY_S)
            events = emulator.events()
            restarted.send("stop")
            after = restarted.result()
        finally:
            restarted.close()
        seen = Counter(str(e["payload"].get("customerExternalId")) for e in events)
        expected = {f"{prefix}{i}" for i in range(n)}
        times = [e["received_at"] for e in events]
        complete = expected <= set(seen)
        return {
            "first_s": min(times) - started if times else None,
            "all_s": max(times) - started if complete else None,
            "accepted": tracked["accepted"], "misses": tracked["spool_write_ahead_misses"],
            "delivered": len(expected & set(seen)), "missing": len(expected - set(seen)),
            "dup": sum(c - 1 for c in seen.values()), "replayed": after["replayed"],
            "left": rows_left(path),
        }  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_crash(args: argparse.Namespace, began: float) -> None:
    results: List[Dict[str, Any]] = []
    with EmulatorProcess() as emulator:
        for run in range(args.runs):
            try:
                results.append(crash_run(run, emulator, args))
            except ChildError as exc:
                results.append({"error": f"did not finish: {exc}"[:120]})
            print(f"  run {run + 1}: crash recovery ({time.monotonic() - began:.0f} s)",
                  file=sys.stderr)  # fmt: skip
    done = [r for r in results if "error" not in r]
    print(f"\n2. crash recovery: {args.crash_events} leads with write_ahead against a server "
          "that is down, SIGKILL, restart on the same spool with the emulator up (default "
          f"spool_lease_s 60 s); median over {len(done)} run(s), range min-max")  # fmt: skip
    header = ["to first replayed s", "to all delivered s", "accepted", "misses", "delivered",
              "missing", "dup", "replayed", "left", "exactly once"]  # fmt: skip
    if not done:
        print(results[-1]["error"] if results else "no run")
        return

    def spread(name: str) -> str:
        values = [r[name] for r in done if r[name] is not None]
        if not values:
            return "never"
        text = f"{statistics.median(values):.2f}"
        if len(values) > 1:
            text += f" ({min(values):.2f}-{max(values):.2f})"
        return text + (f" [{len(values)} of {len(done)}]" if len(values) < len(done) else "")

    def each(name: str) -> str:
        return ",".join(str(r[name]) for r in done)

    ok = all(r["missing"] == 0 and r["dup"] == 0 for r in done)
    print(table(header, [[spread("first_s"), spread("all_s"), each("accepted"), each("misses"),
                          each("delivered"), each("missing"), each("dup"), each("replayed"),
                          each("left"), "yes" if ok else "NO"]], left=0))  # fmt: skip
    for r in results:
        if "error" in r:
            print(r["error"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    print(machine())
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if "latency" in args.parts:
        run_latency(args, began)
    if "crash" in args.parts:
        run_crash(args, began)
    if "spill-locked" in args.parts:
        run_spill_locked(args.runs, args.spill_calls)
    if "full-disk" in args.parts:
        run_full_disk(args.runs, args.disk_events)
    print("\nload average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
