"""The spool keeps accepted events across overflow, outages, exits and crashes (issue 3).

Real processes, real files, the real emulator. Events are identified on the wire by their
unique ``eventName`` (or ``invoiceId``), since the API carries no event id.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from cms_shipper import CMSClient, Outcome
from cms_shipper._spool.status import read_status
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, adds_up, unused_port, wait_until

# Short leases and replay intervals so recovery happens in test time.
SPOOL_FAST = {"spool_lease_s": 1.0, "spool_replay_interval_s": 0.1}


def spool_rows(path: Path) -> int:
    """Events in the spool: waiting rows and live write-ahead journal records."""
    return read_status(str(path)).total


def child_env(host: str) -> dict[str, str]:
    return {**os.environ, "CMS_HOST": host, "CMS_BEARER_TOKEN": TOKEN}


def test_spool_file_is_private_and_holds_no_token(tmp_path: Path, cms_emulator: Emulator) -> None:
    path = tmp_path / "spool.db"
    secret = "tok-" + "a1b2c3d4" * 4
    cms_emulator.configure(token=secret)
    client = CMSClient(token=secret, host=f"http://127.0.0.1:{unused_port()}", spool_path=str(path),
                       write_ahead=True, **{**FAST, "retry_max_attempts": 1})  # fmt: skip
    for i in range(5):
        client.track_sale(f"sale-{i}", "u1", f"inv-{i}", 100, "USD", click_id="c")
    client.close(2.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for file in tmp_path.rglob("*"):  # the spool, its -wal/-shm and owner lock files
        if file.is_dir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o700
            continue
        assert secret.encode() not in file.read_bytes()
        assert b"Bearer" not in file.read_bytes()
    assert spool_rows(path) == 5


KILLED_CHILD = textwrap.dedent(
    """
    import sys
    from cms_shipper import CMSClient

    client = CMSClient(spool_path=sys.argv[1], write_ahead=True, spool_lease_s=1.0,
                       flush_interval_s=0.01, max_concurrent_requests=2)
    for i in range(int(sys.argv[2])):
        c = i % 7
        r = client.track_sale(f"sale-{i}", f"cust-{c}", f"inv-{i}", 100, "USD", click_id=f"k{c}")
        assert r.success, r
        print(f"accepted {i}", flush=True)
    print("done", flush=True)
    import time
    time.sleep(600)   # stay alive until killed
    """
)


def test_sigkill_mid_burst_loses_nothing_that_was_accepted(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = tmp_path / "spool.db"
    cms_emulator.configure(latency_s=0.05)  # slow server: many events still queued at the kill
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(path), "400"],
        env=child_env(cms_emulator.url), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    accepted = -1
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("accepted"):
            accepted = int(line.split()[1])
        if accepted >= 150 or line.startswith("done"):
            break
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    child.stdout.close()
    delivered_before = len(cms_emulator.events)
    assert delivered_before < accepted + 1  # the kill came mid-burst, with events pending
    cms_emulator.configure(latency_s=0.0)
    # A new process (here: a client in this one) with the same spool delivers the rest.
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(path), **FAST, **SPOOL_FAST
    )
    invoices = lambda: Counter(e.payload["invoiceId"] for e in cms_emulator.events)  # noqa: E731
    expected = {f"inv-{i}" for i in range(accepted + 1)}
    try:
        client.flush(0)  # replay starts at the first event or flush
        assert wait_until(lambda: expected <= set(invoices()), timeout_s=60.0)
        assert wait_until(lambda: spool_rows(path) == 0, timeout_s=30.0)
        assert client.flush(30.0)
    finally:
        client.close(5.0)
    assert expected <= set(invoices())  # zero lost
    assert max(invoices().values()) == 1  # zero recorded twice
    stats = client.stats()
    assert stats["replayed"] >= accepted + 1 - delivered_before
    assert adds_up(stats)


EXITING_CHILD = textwrap.dedent(
    """
    import sys
    from cms_shipper import CMSClient

    client = CMSClient(spool_path=sys.argv[1], shutdown_timeout_s=1.0, retry_max_attempts=2,
                       retry_initial_backoff_s=0.01, retry_max_backoff_s=0.02,
                       flush_interval_s=0.01)
    for i in range(int(sys.argv[2])):
        client.track_lead(f"lead-{i}", f"cust-{i}", click_id=f"clk-{i}")
    """
)


def test_server_down_for_a_whole_process_life_then_a_later_process_delivers(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = tmp_path / "spool.db"
    done = subprocess.run(
        [sys.executable, "-c", EXITING_CHILD, str(path), "40"],
        env=child_env(f"http://127.0.0.1:{unused_port()}"), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert spool_rows(path) == 40
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(path), **FAST, **SPOOL_FAST
    )
    try:
        client.flush(0)  # replay starts at the first event or flush
        assert cms_emulator.wait_for_events(40, timeout_s=30.0)
        assert wait_until(lambda: spool_rows(path) == 0)
    finally:
        client.close(5.0)
    names = Counter(e.payload["eventName"] for e in cms_emulator.events)
    assert set(names) == {f"lead-{i}" for i in range(40)} and max(names.values()) == 1
    assert client.stats()["replayed"] == 40


def test_queue_overflow_spills_to_the_spool_and_drains_later(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = tmp_path / "spool.db"
    cms_emulator.configure(latency_s=0.05)
    client = CMSClient(token=TOKEN, host=cms_emulator.url, spool_path=str(path), max_queue_size=4,
                       max_concurrent_requests=1, **FAST, **SPOOL_FAST)  # fmt: skip
    try:
        results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(30)]
        # Spilled by the spool's writer thread, not the caller's: pending until stored.
        spilled = [r for r in results if r.wait(10.0).outcome is Outcome.SPOOLED]
        assert len(spilled) >= 20
        assert cms_emulator.wait_for_events(30, timeout_s=60.0)
        assert wait_until(lambda: spool_rows(path) == 0)
    finally:
        client.close(5.0)
    names = Counter(e.payload["eventName"] for e in cms_emulator.events)
    assert set(names) == {f"lead-{i}" for i in range(30)} and max(names.values()) == 1
    stats = client.stats()
    assert stats["spooled"] == len(spilled) and stats["replayed"] == len(spilled)
    assert adds_up(stats)


def test_spool_full_is_counted_with_its_own_reason(tmp_path: Path) -> None:
    client = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unused_port()}",
                       spool_path=str(tmp_path / "spool.db"), spool_max_bytes=256 * 1024,
                       max_queue_size=1, **FAST, **SPOOL_FAST)  # fmt: skip
    long_name = "n" * 255
    avatar = "https://example.com/" + "a" * 2000
    try:
        results = [
            client.track_lead(
                f"lead-{i}", f"c{i}", click_id="k", customer_name=long_name, customer_avatar=avatar
            )
            for i in range(200)
        ]
    finally:
        client.close(1.0)
    stats = client.stats()
    assert stats["spool_dropped"] > 0 and stats["spooled"] > 0
    assert stats["reasons"]["dropped"]["spool_full"] == stats["spool_dropped"]
    assert sum(r.wait(1.0).reason == "spool_full" for r in results) > 0
    assert adds_up(stats)


REPLAYER = textwrap.dedent(
    """
    import sqlite3, sys, time
    from cms_shipper import CMSClient

    from cms_shipper._spool.status import read_status

    def rows_left(path):
        return read_status(path).total

    client = CMSClient(spool_path=sys.argv[1], spool_lease_s=2.0, spool_replay_interval_s=0.05,
                       flush_interval_s=0.01)
    client.flush(0)  # replay starts at the first event or flush
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline and (rows_left(sys.argv[1]) or client.stats()["pending"]):
        time.sleep(0.05)
    client.close(5.0)
    print(client.stats()["replayed"])
    """
)


def test_two_processes_replaying_one_spool_send_each_event_once(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = tmp_path / "spool.db"
    filler = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unused_port()}", spool_path=str(path),
                       **{**FAST, "retry_max_attempts": 1})  # fmt: skip
    for i in range(300):
        filler.track_lead(f"lead-{i}", f"cust-{i % 30}", click_id=f"clk-{i % 30}")
    filler.close(0.0)
    assert spool_rows(path) == 300
    cms_emulator.configure(latency_s=0.002)
    procs = [
        subprocess.Popen([sys.executable, "-c", REPLAYER, str(path), "60"],
                         env=child_env(cms_emulator.url), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    replayed = [int(out.strip().splitlines()[-1]) for out in outputs]
    names = Counter(e.payload["eventName"] for e in cms_emulator.events)
    assert set(names) == {f"lead-{i}" for i in range(300)}  # nothing stranded
    assert max(names.values()) == 1  # nothing sent twice
    assert sum(replayed) == 300
    # Per customer, the record keeps the tracked order even with two replayers.
    for c in range(30):
        mine = [
            e.payload["eventName"]
            for e in cms_emulator.events
            if e.payload["customerExternalId"] == f"cust-{c}"
        ]
        assert mine == sorted(mine, key=lambda n: int(n.split("-")[1]))


def test_a_corrupt_spool_is_moved_aside_and_the_client_keeps_working(
    tmp_path: Path, cms_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        client = CMSClient(token=TOKEN, host=cms_emulator.url, spool_path=str(path), **FAST)
    try:
        assert client.track_lead("s", "u1", click_id="c").wait(10.0).outcome is Outcome.DELIVERED
    finally:
        client.close(5.0)
    aside = [p for p in tmp_path.iterdir() if ".corrupt" in p.name]
    assert aside and aside[0].read_bytes().startswith(b"this is not a database")
    assert any(str(path) in r.getMessage() for r in caplog.records)
