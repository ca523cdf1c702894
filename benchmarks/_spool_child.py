"""One spool measurement's client, in a fresh process: run by ``spool.py``, not by hand.

``python _spool_child.py SPEC_JSON`` with ``cms_shipper`` from this checkout on
``PYTHONPATH``. Only the public API is used: ``CMSClient(token=..., host=..., **options)``,
``track_lead`` and ``stats``. Kinds (``spec["kind"]``):

- ``latency``: ``threads`` callers x ``calls`` timed ``track_lead`` calls (distinct
  customers, arguments made beforehand) after ``warmup`` untimed ones; prints
  ``result {json}`` (percentiles, the spool counters of ``stats()``) and leaves at once.
- ``sibling``: another process writing to the same spool: one thread calling
  ``track_lead`` in a loop (``rate`` calls/s, 0: as fast as it can) from ``ready``
  until a ``stop`` line on stdin; then ``result {json}``.
- ``crash``: tracks ``events`` leads (customers ``prefix + i``) against a server that
  is down, prints ``tracked {json}`` and waits to be killed (SIGKILL, by the parent).
- ``restart``: builds the client on the same spool and calls ``flush(0)`` (which starts
  its replay thread), prints ``ready``, and waits for ``stop``; then ``flush(flush_s)`` (so that the
  last outcomes have removed their rows) and ``result {json}``.

Each leaves with ``os._exit`` (``_child.report``): the exit hook's bounded close and
its shutdown spill are not part of what is measured.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Callable, Dict, List

from _child import report
from _support import time_calls

from cms_shipper import CMSClient  # from this checkout, on PYTHONPATH

TOKEN = "test-token"
EVENT = "signup_started"
_COUNTERS = ("tracked", "delivered", "dropped", "spooled", "replayed", "pending",
             "spool_write_ahead_misses", "spool_errors", "spool_settle_misses")  # fmt: skip


def _client(spec: Dict[str, Any]) -> CMSClient:
    return CMSClient(token=TOKEN, host=spec["host"], **spec.get("options", {}))


def _counters(client: CMSClient) -> Dict[str, Any]:
    stats = client.stats()
    return {name: stats.get(name) for name in _COUNTERS}


def _stop_on_stdin() -> threading.Event:
    """An event set when the parent writes ``stop`` (or closes our stdin)."""
    stop = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read, daemon=True).start()
    return stop


def _percentiles(samples: List[int]) -> Dict[str, Any]:
    ordered = sorted(samples)
    ranks = [max(1, -(-len(ordered) * p // 1000)) for p in (500, 990)]  # nearest rank
    return {
        "p50_ns": ordered[ranks[0] - 1], "p99_ns": ordered[ranks[1] - 1],
        "max_ns": ordered[-1], "calls": len(ordered),
    }  # fmt: skip


def latency(spec: Dict[str, Any]) -> Dict[str, Any]:
    threads, calls, warmup = spec["threads"], spec["calls"], spec["warmup"]
    client = _client(spec)
    for i in range(warmup):  # starts the worker, the replay thread and the connections
        client.track_lead(event_name=EVENT, customer_external_id=f"warm-{i}", click_id="clk_1")
    before = _counters(client)
    started = time.perf_counter()
    samples = time_calls(client.track_lead, threads, calls, "lat")
    wall_s = time.perf_counter() - started
    after = _counters(client)
    figures = _percentiles(samples)
    figures.update(wall_s=wall_s, before=before, after=after)
    return figures


def sibling(spec: Dict[str, Any]) -> Dict[str, Any]:
    client = _client(spec)
    stop = _stop_on_stdin()
    rate, track, clock = spec["rate"], client.track_lead, time.perf_counter_ns
    samples: List[int] = []
    print("ready", flush=True)
    started, i = time.perf_counter(), 0
    while not stop.is_set():
        begin = clock()
        track(event_name=EVENT, customer_external_id=f"sib-{i}", click_id="clk_1")
        samples.append(clock() - begin)
        i += 1
        if rate > 0:  # paced: the i-th call is due at i / rate
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
    wall_s = time.perf_counter() - started
    figures = _percentiles(samples or [0])
    figures.update(wall_s=wall_s, calls_per_s=i / max(wall_s, 1e-9), after=_counters(client))
    return figures


def crash(spec: Dict[str, Any]) -> Dict[str, Any]:
    client = _client(spec)
    accepted = 0
    for i in range(spec["events"]):
        result = client.track_lead(
            event_name=EVENT, customer_external_id=f"{spec['prefix']}{i}", click_id="clk_1"
        )
        accepted += result.success  # queued (and, with write-ahead, on disk unless a miss)
    print("tracked " + json.dumps({"accepted": accepted, **_counters(client)}), flush=True)
    while True:  # the parent kills us with SIGKILL
        time.sleep(60)


def restart(spec: Dict[str, Any]) -> Dict[str, Any]:
    client = _client(spec)
    client.flush(0)  # the replay thread starts here: its first pass runs at once
    stop = _stop_on_stdin()
    print("ready", flush=True)
    stop.wait()
    client.flush(spec["flush_s"])  # the last outcomes settle their rows before we count
    return _counters(client)


KINDS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "latency": latency,
    "sibling": sibling,
    "crash": crash,
    "restart": restart,
}


def main() -> None:
    for name in ("cms_shipper", "urllib3"):  # outcomes are counted, not logged
        logging.getLogger(name).setLevel(logging.CRITICAL)
    spec = json.loads(sys.argv[1])
    report(lambda: KINDS[spec["kind"]](spec))


if __name__ == "__main__":
    main()
