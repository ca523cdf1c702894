"""The exit hook in real subprocesses that never call flush or close."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from cms_shipper.emulator import Emulator

from .conftest import TOKEN, unused_port

SCRIPT = textwrap.dedent(
    """
    import sys
    from cms_shipper import CMSClient

    client = CMSClient(flush_interval_s=5.0, shutdown_timeout_s=float(sys.argv[1]),
                       retry_initial_backoff_s=0.01, retry_max_backoff_s=0.05)
    for i in range(int(sys.argv[2])):
        client.track_lead("signup", f"user-{i}", click_id=f"clk-{i}")
    print("tracked", flush=True)
    """
)


def run(
    host: str, shutdown_timeout_s: float, events: int
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "CMS_HOST": host, "CMS_BEARER_TOKEN": TOKEN}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(shutdown_timeout_s), str(events)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_pending_events_are_delivered_at_exit_without_flush(cms_emulator: Emulator) -> None:
    # flush_interval_s=5 means nothing would be sent before exit without the hook.
    done, _ = run(cms_emulator.url, shutdown_timeout_s=10.0, events=25)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "tracked\n" and done.stderr == ""
    assert sorted(e.payload["customerExternalId"] for e in cms_emulator.events) == sorted(
        f"user-{i}" for i in range(25)
    )
    assert TOKEN not in done.stdout + done.stderr


def test_exit_against_a_hanging_server_takes_the_budget_and_says_what_was_lost(
    cms_emulator: Emulator,
) -> None:
    cms_emulator.configure(latency_s=30.0)
    done, took = run(cms_emulator.url, shutdown_timeout_s=1.0, events=7)
    assert done.returncode == 0
    assert took < 1.0 + 8.0  # interpreter start-up plus the 1 s budget, on a slow machine
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, done.stderr
    assert "7 event(s) not delivered within the 1 s shutdown budget" in lines[0]
    assert lines[1] == (
        "client closed: 7 event(s) tracked, 0 delivered, 0 duplicate; not delivered: "
        "0 rejected, 0 failed, 7 dropped, 0 spooled, 0 pending"
    )


def test_exit_with_the_server_down_is_bounded_too() -> None:
    done, took = run(f"http://127.0.0.1:{unused_port()}", shutdown_timeout_s=1.0, events=3)
    assert done.returncode == 0 and took < 1.0 + 8.0
    assert "3 event(s) not delivered" in done.stderr or "failed" in done.stderr
