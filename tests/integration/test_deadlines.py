"""Every blocking call keeps its deadline, whatever the timeout value and the callbacks do.

Real threads, a real emulator, and real subprocesses for exit and signal behaviour.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cms_shipper import CMSClient, Outcome, Reason, Result
from cms_shipper.emulator import Emulator

from .conftest import TOKEN, ClientFactory, adds_up, unused_port, wait_until

SLACK_S = 2.0  # a slow, noisy 2-core machine: the point is "bounded", not "fast"

ODD_TIMEOUTS: list[Any] = [
    None, 0, -1, -math.inf, math.inf, 1e10, 1e300, 10**5000, -(10**5000), math.nan,
    Fraction(10**400, 3), "5", b"5", [], True,
]  # fmt: skip


ODD_IDS = ["None", "0", "-1", "-inf", "inf", "1e10", "1e300", "10**5000", "-10**5000", "nan",
           "Fraction(10**400,3)", "'5'", "b'5'", "[]", "True"]  # fmt: skip


@pytest.mark.parametrize("timeout", ODD_TIMEOUTS, ids=ODD_IDS)
def test_any_timeout_value_never_raises_and_never_half_closes(timeout: Any) -> None:
    client = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unused_port()}",
                       flush_timeout_s=0.2, shutdown_timeout_s=0.2)  # fmt: skip
    result = client.track_lead("signup", "u1", click_id="c")
    started = time.monotonic()
    # API unreachable: only values meaning "wait long" would block; give those a thread.
    long_wait = timeout in (math.inf, 1e10, 1e300, 10**5000) or isinstance(timeout, Fraction)
    if not long_wait:
        if timeout is not None:  # wait(None) means "no bound": it is for a settled event only
            assert result.wait(timeout).outcome is None
        assert not client.flush(timeout)  # None: flush_timeout_s
    closed = client.close(0.3 if long_wait else timeout)
    assert time.monotonic() - started < 1.0 + SLACK_S
    assert (closed.dropped, closed.pending, closed.timed_out) == (1, 0, True)
    assert client.stats()["closed"] and client.stats()["pending"] == 0
    assert result.wait(timeout).reason is Reason.SHUTDOWN  # settled: returns at once


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=3)))
def test_wait_on_a_settled_event_returns_at_once_for_any_timeout(timeout: Any) -> None:
    client = CMSClient(token=TOKEN, disabled=True)
    result = client.track_lead("signup", "u1", click_id="c")
    started = time.monotonic()
    assert result.wait(timeout).reason is Reason.DISABLED
    assert client.flush(timeout) and client.close(timeout).pending == 0
    assert time.monotonic() - started < SLACK_S


def test_close_from_an_on_drop_callback_does_not_deadlock(cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=30.0)
    seen: list[Any] = []

    def on_drop(result: Result) -> None:
        if result.event_id is None or result.reason is Reason.CLOSED:
            return  # the "late" event below is dropped too: do not recurse
        seen.append(client.close(5.0))  # re-entrant: must return, not wait for itself
        seen.append(client.flush(5.0))
        seen.append(client.stats()["closed"])
        seen.append(client.track_lead("late", "u9", click_id="c").reason)

    client = CMSClient(token=TOKEN, host=cms_emulator.url, read_timeout_s=60, on_drop=on_drop)
    for i in range(3):
        client.track_lead("signup", f"u{i}", click_id="c")
    started = time.monotonic()
    closed = client.close(1.0)
    assert time.monotonic() - started < 1.0 + SLACK_S
    assert (closed.pending, closed.timed_out) == (0, True)
    # Its 3 events dropped at shutdown, and any "late" one the callbacks, running meanwhile,
    # had already had dropped (counts are over the client's life).
    assert 3 <= closed.dropped <= 6
    assert wait_until(lambda: len(seen) >= 4 * 3, timeout_s=20.0)
    assert client.stats()["reasons"]["dropped"] == {"shutdown": 3, "closed": 3}
    assert Reason.CLOSED in seen  # tracking from a callback after close: counted, not raised


def test_slow_callbacks_do_not_stretch_close(cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=30.0)

    def on_drop(result: Result) -> None:
        time.sleep(0.5)  # a slow callback of the user's

    client = CMSClient(token=TOKEN, host=cms_emulator.url, read_timeout_s=60, on_drop=on_drop)
    for i in range(10):
        client.track_lead("signup", f"u{i}", click_id="c")
    started = time.monotonic()
    client.close(1.0)
    assert time.monotonic() - started < 1.0 + SLACK_S  # not 10 x 0.5 s


def test_concurrent_closes_each_return_by_their_own_deadline(cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=30.0)
    client = CMSClient(token=TOKEN, host=cms_emulator.url, read_timeout_s=60)
    client.track_lead("signup", "u1", click_id="c")
    long_close = threading.Thread(target=client.close, args=(5.0,))
    long_close.start()
    assert wait_until(lambda: client.stats()["closed"])
    started = time.monotonic()
    short = client.close(0.2)
    assert time.monotonic() - started < 0.2 + SLACK_S
    assert short.pending == 1
    long_close.join(10.0)
    assert not long_close.is_alive()


def test_callbacks_run_in_order_on_their_own_thread(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    calls: list[tuple[str, str]] = []
    client = make_client(
        on_success=lambda r: calls.append((r.event_id, threading.current_thread().name))
    )
    results = [client.track_lead("signup", "u1", click_id="c")]
    results += [client.track_lead(f"step{i}", "u1") for i in range(5)]
    assert client.flush(10.0)
    assert wait_until(lambda: len(calls) == 6)
    assert [c[0] for c in calls] == [r.event_id for r in results]  # one customer: in order
    assert {c[1] for c in calls} == {"cms-shipper-callbacks"}


_SIGNAL_RACE = """
import json, os, signal, sys, threading
from cms_shipper import CMSClient
host, runs = sys.argv[1], int(sys.argv[2])
report = {"stranded": 0, "unbalanced": 0, "events": 0}
for run in range(runs):
    client = CMSClient(token="test-token", host=host, flush_interval_s=60, shutdown_timeout_s=0.05)
    handled = threading.Event()

    def handler(*args):
        client.close(0.05)
        handled.set()

    signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.001 * (run % 5), os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    results = []
    # Keep tracking until the handler has run (and a few more): it lands inside track_*.
    while not handled.is_set() or len(results) % 50:
        results.append(client.track_lead("s", f"u{run}-{len(results)}", click_id="c"))
        if len(results) > 200_000:
            break
    timer.join()
    client.close(0.05)
    stats = client.stats()
    report["events"] += len(results)
    report["stranded"] += sum(1 for r in results if r.wait(0).outcome is None)
    parts = ("delivered", "duplicate", "rejected", "failed", "dropped", "spooled", "pending")
    if stats["tracked"] != sum(stats[p] for p in parts) or stats["pending"]:
        report["unbalanced"] += 1
print(json.dumps(report))
"""


def test_close_in_a_signal_handler_racing_track_leaves_no_event_without_outcome() -> None:
    host = f"http://127.0.0.1:{unused_port()}"
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_RACE, host, "120"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["stranded"] == 0 and report["unbalanced"] == 0 and report["events"] >= 40


def test_sync_mode_holds_no_socket_per_thread(cms_emulator: Emulator) -> None:
    client = CMSClient(token=TOKEN, host=cms_emulator.url, sync_mode=True,
                       max_concurrent_requests=4)  # fmt: skip
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    outcomes: list[Any] = []

    def one(i: int) -> None:
        outcomes.append(client.track_lead("signup", f"u{i}", click_id="c").outcome)

    for wave in range(10):
        threads = [threading.Thread(target=one, args=(wave * 30 + i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30.0)
    assert outcomes.count(Outcome.DELIVERED) == 300
    if before is not None:
        after = len(os.listdir("/proc/self/fd"))
        # The pool's 4 sockets and the emulator's 4 (it runs in this process), not 300.
        assert after - before <= 2 * 4 + 2
    assert adds_up(client.stats())
    client.close(2.0)


_SLOW_EXIT = """
import sys, time
from cms_shipper import CMSClient
client = CMSClient(token="test-token", host=sys.argv[1], read_timeout_s=60,
                   shutdown_timeout_s=1.0, on_drop=lambda r: time.sleep(0.5))
for i in range(10):
    client.track_lead("signup", f"u{i}", click_id="c")
print("tracked", flush=True)
"""


def test_a_slow_on_drop_cannot_stretch_the_exit_hook(cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=30.0)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _SLOW_EXIT, cms_emulator.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0 and "tracked" in done.stdout, done.stderr[-2000:]
    # Interpreter start-up plus the 1 s budget; not 10 callbacks x 0.5 s.
    assert elapsed < 1.0 + 3.0 + SLACK_S
    assert "not delivered within the 1 s shutdown budget" in done.stderr
