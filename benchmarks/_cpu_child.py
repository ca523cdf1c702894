"""One CPU-per-event measurement in a fresh process: run by ``cpu_per_event.py``, not by hand.

``python _cpu_child.py SPEC_JSON`` tracks ``events`` leads in one thread (the six string
fields the shared referee sends), waits until every one has its outcome, and prints
``result {json}`` with the process's CPU time over that span (``resource.getrusage``:
user + system, every thread) and the calling thread's own share (``RUSAGE_THREAD``).
``cms_shipper`` is imported from the tree on ``PYTHONPATH`` (ours or a baseline); the
seed SDK ``cutmeshort`` 1.0.1 from site-packages (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from typing import Any, Callable, Dict, Tuple

from _child import report

TOKEN = "bench_token_0123456789abcdef"
EVENT = "signup_completed"


def _fields(i: int) -> Dict[str, str]:
    return {
        "event_name": EVENT,
        "customer_external_id": f"user_{i:08d}",
        "click_id": f"clk_{i:08d}",
        "customer_name": f"Bench User {i}",
        "customer_email": f"user{i}@example.com",
        "customer_avatar": f"https://example.com/avatars/{i}.png",
    }


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _ours(spec: Dict[str, Any]) -> Tuple[Callable[[int], None], Callable[[], int]]:
    from cms_shipper import CMSClient  # noqa: PLC0415  # only the children that measure it

    client = CMSClient(token=TOKEN, host=spec["host"], **spec.get("options", {}))
    track_lead = client.track_lead

    def track(i: int) -> None:
        track_lead(**_fields(i))

    def finish() -> int:
        client.flush(timeout_s=spec["flush_s"])
        return int(client.stats()["delivered"])

    return track, finish


def _seed(spec: Dict[str, Any]) -> Tuple[Callable[[int], None], Callable[[], int]]:
    from cutmeshort import CMSClient as SeedClient  # noqa: PLC0415

    client = SeedClient(token=TOKEN, host=spec["host"])
    errors = [0]

    def track(i: int) -> None:
        try:
            client.track_lead(**_fields(i))
        except Exception:  # the seed SDK raises on any failure
            errors[0] += 1

    return track, lambda: spec["events"] - errors[0]


def measure(spec: Dict[str, Any]) -> Dict[str, Any]:
    n = spec["events"]
    track, finish = (_ours if spec["sdk"] == "ours" else _seed)(spec)
    track(-1)  # connect, start the threads, warm the caches: outside the measurement
    finish()
    cpu0, caller0, wall0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_THREAD), time.time()
    for i in range(n):
        track(i)
    caller1 = _cpu(resource.RUSAGE_THREAD)
    delivered = finish() - (1 if spec["sdk"] == "ours" else 0)  # less the warm-up event
    cpu1, wall1 = _cpu(resource.RUSAGE_SELF), time.time()
    return {
        "delivered": delivered,
        "cpu_s": cpu1 - cpu0,
        "caller_cpu_s": caller1 - caller0,
        "wall_s": wall1 - wall0,
    }


def main() -> None:
    for name in ("cms_shipper", "urllib3"):  # outcomes are counted, not logged
        logging.getLogger(name).setLevel(logging.CRITICAL)
    spec = json.loads(sys.argv[1])
    report(lambda: measure(spec))


if __name__ == "__main__":
    main()
