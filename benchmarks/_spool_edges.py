"""``benchmarks/spool.py`` parts 3 and 4: the spool at its edges (issue 16).

3. ``spill-locked``: the caller's cost of a full queue's spill while a sibling process
   holds the spool's write lock (``BEGIN IMMEDIATE``) for the whole measurement. A child
   with ``spool_path=``, ``max_queue_size=4`` and one sender against the emulator
   answering after 0.3 s times ``--spill-calls`` (40) ``track_lead`` calls
   (``perf_counter_ns`` around each call); then the lock is released and every event must
   end delivered or spooled, none dropped.
4. ``full-disk``: recovery after a full disk. A 6 MiB tmpfs is mounted (root on Linux; the
   row says why when it cannot be), a child with ``write_ahead=True`` and the default
   ``spool_max_bytes`` (50 MiB: the disk fills first) tracks ``--disk-events`` (20 000)
   leads against a closed port, in steps of 500 it lets settle, and is killed with
   SIGKILL. A new process with the emulator up and ``spool_replay_interval_s=0.2`` is then
   timed from ``Popen`` until every event the first one kept (spooled, or live in its
   journal) is recorded, and until the spool file holds no row (``to empty s``; waited
   for at most 15 s more, the disk still full); ``missing``, ``dup`` and ``left`` (rows
   still in the file once it closed: a later process would send them again) must be 0.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Dict, List

from _support import REPO_ROOT, TOKEN, EmulatorProcess, percentile, table, unused_port

__all__ = ["run_full_disk", "run_spill_locked"]

HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""
SPILLER = """
import json, subprocess, sys, time
from collections import Counter
from cms_shipper import CMSClient
from cms_shipper._spool import Spool
path, host, calls, holder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
token = sys.argv[5]
Spool(path).close()  # the file exists (a client makes it at its first event)
client = CMSClient(token=token, host=host, spool_path=path, max_queue_size=4,
                   max_concurrent_requests=1, spool_replay_interval_s=0.05)
held = subprocess.Popen([sys.executable, "-c", holder, path], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
assert held.stdout.readline().strip() == "held"
times, results = [], []
for i in range(calls):
    began = time.perf_counter_ns()
    results.append(client.track_lead(f"lead-{i}", f"c{i}", click_id="k"))
    times.append((time.perf_counter_ns() - began) / 1000.0)
held.communicate("go\\n", timeout=30)
finals = Counter(str(r.wait(30.0).outcome) for r in results)
client.close(5.0)
print(json.dumps({"times": times, "outcomes": finals}), flush=True)
"""
FILLER = """
import json, os, signal, sys
from cms_shipper import CMSClient, Outcome
path, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = CMSClient(token="t", host=host, spool_path=path, write_ahead=True, max_queue_size=200,
                   retry_max_attempts=1, connect_timeout_s=0.2, spool_replay_interval_s=0.05)
kept = []
for start in range(0, n, 500):
    batch = [(i, client.track_lead(f"lead-{i}", f"c{i}", click_id="k" * 150))
             for i in range(start, min(n, start + 500))]
    for i, r in batch:
        final = r.wait(30.0) if "being saved" in r.message else r.final
        if (final is None and r._kept > 0) or (final and final.outcome is Outcome.SPOOLED):
            kept.append(f"lead-{i}")
print(json.dumps({"kept": kept, "dropped": client.stats()["dropped"]}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
RESTARTED = """
import sys
from cms_shipper import CMSClient
client = CMSClient(token=sys.argv[3], host=sys.argv[2], spool_path=sys.argv[1],
                   spool_replay_interval_s=0.2)
client.flush(0)  # replay starts at the first event or flush
print("up", flush=True)
sys.stdin.readline()
client.close(5.0)
"""


def _python(script: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True, **kw)


def _runs(runs: int, one: Callable[[], Dict[str, Any]], what: str) -> List[Dict[str, Any]]:
    out = []
    for run in range(runs):
        try:
            out.append(one())
        except (OSError, ValueError, IndexError, AssertionError, subprocess.SubprocessError) as exc:
            out.append({"error": f"did not finish: {exc!r}"[:160]})
        print(f"  run {run + 1}: {what}", file=sys.stderr)
    return out


def _spread(values: List[float], fmt: str = "{:.0f}") -> str:
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return text


def spill_locked_run(emulator: EmulatorProcess, calls: int) -> Dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="cms-spool-locked-")
    try:
        emulator.call("configure", latency_s=0.3)
        child = _python(SPILLER, os.path.join(folder, "spool.db"), emulator.url, str(calls),
                        HOLDER, TOKEN, stdout=subprocess.PIPE)  # fmt: skip
        out, _ = child.communicate(timeout=120)
        report: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        times = sorted(report["times"])
        return {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": times[-1],
                "outcomes": report["outcomes"]}  # fmt: skip
    finally:
        emulator.call("configure", latency_s=0.0)
        shutil.rmtree(folder, ignore_errors=True)


def run_spill_locked(runs: int, calls: int) -> None:
    with EmulatorProcess() as emulator:
        results = _runs(runs, lambda: spill_locked_run(emulator, calls), "spill under a lock")
    done = [r for r in results if "error" not in r]
    print(f"\n3. full queue, spool locked by a sibling (BEGIN IMMEDIATE) throughout: {calls} "
          f"track_lead calls, caller's time per call; median over {len(done)} run(s)")  # fmt: skip
    if not done:
        print(results[-1]["error"] if results else "no run")
        return
    outcomes = " | ".join(
        ",".join(f"{k.split('.')[-1].lower()} {v}" for k, v in sorted(r["outcomes"].items()))
        for r in done
    )
    rows = [[_spread([r["p50"] for r in done]), _spread([r["p99"] for r in done]),
             _spread([r["max"] for r in done]), outcomes]]  # fmt: skip
    print(table(["p50 us", "p99 us", "max us", "outcomes per run"], rows, left=0,
                last_left=True))  # fmt: skip


def _mount(folder: str) -> str:
    """Mount a 6 MiB tmpfs on ``folder``; '' on success, else why not."""
    tool = shutil.which("mount")
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or tool is None:
        return "skipped: mounting a tmpfs needs root on Linux"
    done = subprocess.run([tool, "-t", "tmpfs", "-o", "size=6m", "tmpfs", folder],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return "" if done.returncode == 0 else f"skipped: cannot mount ({done.stderr.strip()})"


def rows_left(path: str) -> Any:
    """Rows still in the spool file (read-only), or '?' if it cannot be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return "?"


def full_disk_run(emulator: EmulatorProcess, events: int) -> Dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="cms-spool-disk-")
    why = _mount(folder)
    if why:
        shutil.rmtree(folder, ignore_errors=True)
        return {"error": why}
    try:
        path = os.path.join(folder, "spool.db")
        filler = _python(FILLER, path, f"http://127.0.0.1:{unused_port()}", str(events),
                         stdout=subprocess.PIPE)  # fmt: skip
        out, _ = filler.communicate(timeout=120)
        report = json.loads(out.strip().splitlines()[-1])
        kept = set(report["kept"])
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        emulator.reset()
        started = time.monotonic()
        restarted = _python(RESTARTED, path, emulator.url, TOKEN, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
        seen: Counter[str] = Counter()
        while time.monotonic() - started < 60.0:
            seen = Counter(str(e["payload"].get("eventName")) for e in emulator.events())
            if kept <= set(seen):
                break
            time.sleep(0.1)
        drained = time.monotonic() - started
        while time.monotonic() - started < drained + 15.0 and rows_left(path) != 0:
            time.sleep(0.1)  # every delivered row removed, on the disk that is still full
        emptied = time.monotonic() - started
        restarted.communicate("stop\n", timeout=30)
        left = rows_left(path)
        return {
            "kept": len(kept),
            "dropped": report["dropped"],
            "free_kb": free // 1024,
            "drain_s": drained if kept <= set(seen) else None,
            "empty_s": emptied if left == 0 else None,
            "missing": len(kept - set(seen)),
            "dup": sum(c - 1 for c in seen.values()),
            "left": left,
        }
    finally:
        subprocess.run([shutil.which("umount") or "umount", "-l", folder], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def run_full_disk(runs: int, events: int) -> None:
    with EmulatorProcess() as emulator:
        results = _runs(runs, lambda: full_disk_run(emulator, events), "full disk")
    done = [r for r in results if "error" not in r]
    print(f"\n4. recovery after a full disk: a 6 MiB tmpfs filled by {events} leads with "
          "write_ahead against a closed port, SIGKILL, restart with the emulator up; "
          f"median over {len(done)} run(s)")  # fmt: skip
    if not done:
        print(results[-1]["error"] if results else "no run")
        return
    drains = [r["drain_s"] for r in done if r["drain_s"] is not None]

    def each(name: str) -> str:
        return ",".join(str(r[name]) for r in done)

    drain = _spread(drains, "{:.1f}") if drains else "never"
    empties = [r["empty_s"] for r in done if r["empty_s"] is not None]
    empty = _spread(empties, "{:.1f}") if empties else "never"
    rows = [[each("kept"), each("dropped"), each("free_kb"), drain, empty, each("missing"),
             each("dup"), each("left")]]  # fmt: skip
    print(table(["kept", "dropped", "free KiB when killed", "to all delivered s",
                 "to empty s", "missing", "dup", "left"], rows, left=0))  # fmt: skip
