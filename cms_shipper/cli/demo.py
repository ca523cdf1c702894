"""``cms-shipper demo``: an emulated API with faults, a realistic mix, and what happened.

Request-handler threads track standard and deferred leads, follow-ups, sales, a few
repeated invoices and a few invalid events, while the emulator injects latency, 503s, a
short outage, a per-second rate limit and connections dropped after recording. The demo
then shows the outcomes, whether per-customer order held, and the latency the handlers saw.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Optional

from cms_shipper._log import logger
from cms_shipper.client import CMSClient
from cms_shipper.emulator import Emulator

__all__ = ["run_demo"]

TOKEN = "test-token"  # noqa: S105  # the emulator's well-known fake token
_OUTCOMES = ("delivered", "duplicate", "rejected", "failed", "dropped", "spooled", "pending")


class _Recorder:
    """What the caller threads did: call latencies and, per customer, the accepted events.

    It also holds the budget: once ``limit`` calls are made, further calls are skipped, so
    ``--events N`` tracks exactly N events (a journey under way when it runs out is cut
    short, like a visitor who leaves). Each thread's first call is its warm-up (it starts
    the sender threads and loads what a first event needs): timed apart, not in the figures.
    """

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.latencies_ns: list[int] = []
        self.warm_up_ns: list[int] = []
        self.expected: dict[str, list[str]] = defaultdict(list)
        self.tracked = 0
        self._warm = threading.local()

    def call(self, customer: str, name: str, send: Any) -> None:
        with self.lock:
            if self.tracked >= self.limit:
                return
            self.tracked += 1
        started = time.perf_counter_ns()
        result = send()
        took = time.perf_counter_ns() - started
        warm = getattr(self._warm, "done", False)
        self._warm.done = True
        with self.lock:
            (self.latencies_ns if warm else self.warm_up_ns).append(took)
            if result.success:
                # One thread tracks each customer, so this keeps the order of its calls.
                self.expected[customer].append(name)


def _journey(client: CMSClient, rec: _Recorder, rng: random.Random, customer: str) -> None:
    """One customer's events, in order, as a request handler would track them."""
    click = f"clk-{customer}"
    kind = rng.random()
    if kind < 0.5:
        email = f"{customer}@example.com"
        rec.call(
            customer,
            "setup",
            lambda: client.track_lead(
                "setup", customer, click_id=click, mode="deferred", customer_email=email
            ),
        )
        for step in ("email_verified", "kyc_completed")[: rng.randint(1, 2)]:
            rec.call(customer, step, lambda s=step: client.track_lead(s, customer))
    else:
        rec.call(customer, "signup", lambda: client.track_lead("signup", customer, click_id=click))
    invoice, cents = f"inv-{customer}", rng.randint(100, 99_999)
    buy = lambda: client.track_sale("purchase", customer, invoice, cents, "usd")  # noqa: E731
    rec.call(customer, "purchase", buy)
    if rng.random() < 0.05:  # a webhook delivered twice: the API answers 409
        rec.call(customer, "purchase", buy)
    if rng.random() < 0.05:  # a bug in the caller: a float amount, refused here, never queued
        bad = 49.99
        rec.call(customer, "bad", lambda: client.track_sale("bad", customer, "x", bad, "USD"))  # type: ignore[arg-type]


def _callers(client: CMSClient, rec: _Recorder, threads: int, seed: int) -> None:
    def work(index: int) -> None:
        rng = random.Random(seed * 1000 + index)  # noqa: S311  # a demo mix, not crypto
        n = 0
        while rec.tracked < rec.limit:
            _journey(client, rec, rng, f"t{index}-c{n}")
            n += 1
            time.sleep(rng.uniform(0.005, 0.03))  # handlers are spread out in time

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _progress(client: CMSClient, done: threading.Event, emulator: Emulator) -> None:
    tty = sys.stdout.isatty()
    while not done.wait(0.25 if tty else 1.0):
        s = client.stats()
        line = (
            f"tracked {s['tracked']:5d}  delivered {s['delivered']:5d}  pending {s['pending']:4d}"
            f"  requests seen by the API {len(emulator.requests):5d}"
        )
        print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    if tty:
        print()


def _percentile(sorted_values: list[int], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index] / 1000.0


def _order_held(rec: _Recorder, emulator: Emulator) -> tuple[bool, int]:
    """Per customer, the record (repeats collapsed) matches the accepted order."""
    received: dict[str, list[str]] = defaultdict(list)
    repeats = 0
    for event in emulator.events:
        names = received[event.payload["customerExternalId"]]
        if names and names[-1] == event.payload["eventName"]:
            repeats += 1  # an answer lost after recording, then retried
            continue
        names.append(event.payload["eventName"])
    expected = {
        c: [n for i, n in enumerate(v) if i == 0 or n != v[i - 1]] for c, v in rec.expected.items()
    }
    return all(received.get(c, []) == names for c, names in expected.items()), repeats


def _answers(statuses: list[Optional[int]]) -> str:
    """The requests by HTTP status; None is a request whose answer the emulator withheld."""
    counts = Counter(statuses)
    parts = [f"{code} x{counts[code]}" for code in sorted(c for c in counts if c is not None)]
    if counts[None]:
        parts.append(
            f"no answer x{counts[None]} (recorded, then the connection closed: a lost answer)"
        )
    return ", ".join(parts)


# Why an outcome happened in a demo run, by (outcome, reason); said only when it happened.
_WHY = {
    ("rejected", "invalid"): "the float amounts the demo sends on purpose, refused inside"
    " track_* and never sent",
    ("rejected", "http_error"): "refused by the API (4xx); never retried",
    ("duplicate", "already_recorded"): "a repeated invoice (a webhook delivered twice, or a"
    " sale retried after a lost answer), answered 409: not an error",
    ("failed", "retries_exhausted"): "out of retries: the API kept failing for this event",
    ("dropped", "shutdown"): "still pending when close() ran out of time",
    ("dropped", "queue_full"): "the queue was full",
}


def _outcomes(stats: dict[str, Any]) -> None:
    print(f"\nOutcomes (tracked {stats['tracked']}):")
    for outcome in _OUTCOMES:
        reasons = stats["reasons"].get(outcome, {})
        detail = ", ".join(f"{k} {v}" for k, v in reasons.items())
        print(f"  {outcome:<10}{stats[outcome]:6d}  {detail}".rstrip())
    for outcome, reasons in stats["reasons"].items():
        for reason, count in reasons.items():
            why = _WHY.get((outcome, reason))
            if why and count and outcome != "delivered":
                print(f"  {outcome} ({reason}): {why}")


def _faults(emulator: Emulator, outage_at: Optional[float]) -> None:
    statuses = [r.status for r in emulator.requests]
    print(f"\nThe API saw {len(statuses)} requests; it recorded {len(emulator.events)} events.")
    if statuses:
        print(f"  by answer: {_answers(statuses)}")
    if outage_at is None:
        print("  The outage planned 0.8 s in did not happen: the run ended before.")
    else:
        print(f"  A 0.5 s outage began {outage_at:.1f} s in (its requests are among the 503s).")


def _latency(rec: _Recorder) -> None:
    lat = sorted(rec.latencies_ns)
    warm = max(rec.warm_up_ns) / 1000 if rec.warm_up_ns else 0.0
    warm_up = (
        f"; each thread's first call, its warm-up ({len(rec.warm_up_ns)} calls, up to"
        f" {warm:.1f} us: it starts the senders), is not in these figures"
    )
    if not lat:
        print(f"\ntrack_* latency: no call after the warm-up{warm_up}.")
        return
    print(
        f"\ntrack_* latency seen by the request handlers ({len(lat)} calls{warm_up}):"
        f" p50 {_percentile(lat, 0.5):.1f} us, p99 {_percentile(lat, 0.99):.1f} us,"
        f" max {lat[-1] / 1000:.1f} us"
    )


def _summary(
    client: CMSClient, rec: _Recorder, emulator: Emulator, took: float, outage_at: Optional[float]
) -> int:
    stats: dict[str, Any] = dict(client.stats())
    print(f"\nDone in {took:.1f} s.")
    _outcomes(stats)
    _faults(emulator, outage_at)
    held, repeats = _order_held(rec, emulator)
    twice = f"; {repeats} lead(s) recorded twice after a lost answer" if repeats else ""
    print(
        f"Per-customer order in the API's record: {'held' if held else 'BROKEN'}"
        f" ({len(rec.expected)} customers{twice})."
    )
    _latency(rec)
    adds_up = stats["tracked"] + stats["replayed"] == sum(stats[o] for o in _OUTCOMES)
    print(f"Accounting: tracked = sum of outcomes: {'yes' if adds_up else 'NO'}")
    return 0 if adds_up and held else 1


def run_demo(*, events: int = 400, threads: int = 4, seed: int = 1) -> int:
    """Run the demo; returns the exit status (0 when the books add up and order held)."""
    if events < 1 or threads < 1:
        raise ValueError("--events and --threads must be at least 1")
    with Emulator(
        token=TOKEN,
        latency_s=0.005,
        error_rate=0.03,
        seed=seed,
        rate_limit=90,
        rate_limit_window_s=1.0,
    ) as emulator:
        emulator.drop_connection_after_record(2)
        print(
            f"Emulated CutMeShort API on {emulator.url}: 5 ms latency, 3% 503s, 90 requests/s"
            " then 429, the next 2 answers lost after recording, and a 0.5 s outage 0.8 s"
            " into the run (if it lasts that long)."
        )
        # Outcomes are in the summary; per-event warning lines would garble the progress.
        logger.setLevel(logging.ERROR)
        client = CMSClient(
            token=TOKEN,
            host=emulator.url,
            flush_interval_s=0.05,
            retry_initial_backoff_s=0.05,
            retry_max_backoff_s=1.0,
            retry_max_attempts=10,
        )
        rec, done = _Recorder(events), threading.Event()
        ticker = threading.Thread(target=_progress, args=(client, done, emulator), daemon=True)
        started = time.monotonic()
        outage_at: list[float] = []

        def begin_outage() -> None:
            emulator.outage(duration_s=0.5)
            outage_at.append(time.monotonic() - started)

        outage = threading.Timer(0.8, begin_outage)
        ticker.start()
        outage.start()
        _callers(client, rec, threads, seed)
        client.flush(30.0)
        outage.cancel()  # after the callers: a run that ends sooner has no outage
        client.close(10.0)
        done.set()
        ticker.join()
        took = time.monotonic() - started
        return _summary(client, rec, emulator, took, outage_at[0] if outage_at else None)
