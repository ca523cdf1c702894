"""Fleet mode against the API's documented limit, N processes, with and without ``redis_url``.

N client processes share one token and track, between them, ``--customers`` deferred
set-ups; once every process has tracked its set-ups, each customer's follow-up is tracked
by the *next* process (a user's next request landing on another worker). The emulator
enforces the documented limit scaled down (``--limit`` requests per ``--window-s``, 429
without Retry-After) and refuses a follow-up that reaches it before its set-up (422).

Per row: events delivered, 429s per delivered event, delivered events per second (first
track to last event recorded), order violations (follow-ups refused because they overtook
their set-up), for N = 1, 4, 8, with and without ``redis_url``. Then ``track_lead``'s cost
in the caller's thread (p50/p99 of 5 000 calls after a warm-up, one thread, API healthy)
with ``redis_url`` against without, in one run. Needs ``redis-server`` on PATH.

    python benchmarks/fleet.py            # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _support import (
    REPO_ROOT,
    TOKEN,
    EmulatorProcess,
    machine,
    percentile,
    table,
    unused_port,
)

_MEMBER = """
import json, sys, time
from cms_shipper import CMSClient

spec = json.loads(sys.argv[1])
client = CMSClient(token=spec["token"], host=spec["host"], redis_url=spec["redis_url"],
                   flush_interval_s=0.05, shutdown_timeout_s=120.0)
for customer in spec["setups"]:
    client.track_lead("signup", customer, click_id="clk-" + customer, mode="deferred")
print("tracked", flush=True)
sys.stdin.readline()  # every process has tracked its set-ups
for customer in spec["follow_ups"]:
    client.track_lead("verified", customer)
print("followed", flush=True)
deadline = time.monotonic() + spec["budget_s"]
while time.monotonic() < deadline:  # a member delivers for the fleet until all are in
    if sys.stdin.readline().strip() == "done":
        break
print(json.dumps(dict(client.close(30.0))), flush=True)
"""

_LATENCY = """
import json, sys, time
from cms_shipper import CMSClient

spec = json.loads(sys.argv[1])
client = CMSClient(token=spec["token"], host=spec["host"], redis_url=spec["redis_url"],
                   max_queue_size=100_000)
for i in range(200):  # warm-up: imports, threads, the first connections
    client.track_lead("warm", f"w{i}", click_id=f"w{i}")
client.flush(30.0)
times = []
for i in range(spec["calls"]):
    t = time.perf_counter_ns()
    client.track_lead("signup", f"c{i}", click_id=f"k{i}")
    times.append(time.perf_counter_ns() - t)
client.flush(60.0)
client.close(30.0)
print(json.dumps(sorted(times)), flush=True)
"""


class Redis:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("fleet.py needs redis-server on PATH (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="cms-fleet-bench-")
        self.port = unused_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self._cli("PING") != "PONG":
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)

    def _cli(self, *args: str) -> str:
        import redis  # noqa: PLC0415  # the redis extra

        try:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            answer = client.execute_command(*args)
            client.close()
            return "PONG" if answer is True else str(answer)
        except redis.RedisError:
            return ""

    def flush(self) -> None:
        self._cli("FLUSHALL")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO_ROOT}


def run_fleet(
    emulator: EmulatorProcess, redis_url: Optional[str], members: int, customers: int,
    budget_s: float,
) -> Dict[str, Any]:  # fmt: skip
    names = [f"user-{i}" for i in range(customers)]
    procs = []
    for k in range(members):
        spec = {
            "token": TOKEN, "host": emulator.url, "redis_url": redis_url, "budget_s": budget_s,
            "setups": names[k::members],
            "follow_ups": names[(k - 1) % members :: members] if members > 1 else names,
        }  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _MEMBER, json.dumps(spec)], env=_env(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    began = time.monotonic()
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "tracked"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "followed"
    deadline = time.monotonic() + budget_s
    answered = 0
    while time.monotonic() < deadline:
        log = emulator.requests()
        answered = sum(1 for r in log if r["status"] in (200, 422))
        if answered >= 2 * customers:
            break
        time.sleep(0.2)
    events = emulator.events()
    last = max((e["received_at"] for e in events), default=time.time())
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait(120)
    log = emulator.requests()
    first = min((r["time"] for r in log), default=last)
    delivered = len(events)
    limited = sum(1 for r in log if r["status"] == 429)
    refused = sum(1 for r in log if r["status"] == 422)
    return {
        "delivered": delivered,
        "of": 2 * customers,
        "429_per_event": limited / delivered if delivered else float("nan"),
        "429": limited,
        "per_s": delivered / max(1e-9, last - first) if delivered else 0.0,
        "misordered": refused,
        "wall_s": time.monotonic() - began,
    }


def latency(emulator_url: str, redis_url: Optional[str], calls: int) -> List[int]:
    spec = {"token": TOKEN, "host": emulator_url, "redis_url": redis_url, "calls": calls}
    out = subprocess.run(
        [sys.executable, "-c", _LATENCY, json.dumps(spec)], env=_env(), check=True,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    times: List[int] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=60, help="set-ups (and follow-ups)")
    parser.add_argument("--limit", type=int, default=30, help="requests per window")
    parser.add_argument("--window-s", type=float, default=3.0, help="the limit's window")
    parser.add_argument("--members", default="1,4,8", help="fleet sizes to run")
    parser.add_argument("--calls", type=int, default=5000, help="timed track_lead calls")
    args = parser.parse_args()
    print(machine())
    print(
        f"limit: {args.limit} requests per {args.window_s:g} s, 429 without Retry-After; "
        f"{args.customers} customers, each a set-up and a follow-up tracked by the next process"
    )
    server = Redis()
    rows = []
    budget = 30.0 + 4 * args.customers * args.window_s / args.limit
    try:
        for members in [int(n) for n in args.members.split(",")]:
            for fleet in (False, True):
                with EmulatorProcess(
                    rate_limit=args.limit, rate_limit_window_s=args.window_s,
                    rate_limit_retry_after=False,
                ) as emulator:  # fmt: skip
                    server.flush()
                    r = run_fleet(emulator, server.url if fleet else None, members,
                                  args.customers, budget)  # fmt: skip
                rows.append([
                    str(members), "redis_url" if fleet else "-", f"{r['delivered']}/{r['of']}",
                    str(r["429"]), f"{r['429_per_event']:.3f}", f"{r['per_s']:.2f}",
                    str(r["misordered"]), f"{r['wall_s']:.1f}",
                ])  # fmt: skip
                print(" ".join(rows[-1]), flush=True)
        print()
        print(table(
            ["processes", "fleet", "delivered", "429s", "429/event", "events/s",
             "order violations", "wall s"], rows,
        ))  # fmt: skip
        print()
        with EmulatorProcess() as emulator:
            lat = []
            for fleet in (False, True):
                server.flush()
                t = latency(emulator.url, server.url if fleet else None, args.calls)
                lat.append([
                    "redis_url" if fleet else "-", f"{percentile(t, 50) / 1000:.1f}",
                    f"{percentile(t, 99) / 1000:.1f}", f"{t[-1] / 1000:.0f}",
                ])  # fmt: skip
        print(f"track_lead in the caller's thread, 1 thread x {args.calls} calls, API healthy:")
        print(table(["fleet", "p50 us", "p99 us", "max us"], lat))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
