"""A spool file another process holds: track_* never waits for it and loses nothing (issue 16).

A second, real process takes the file's write lock (``BEGIN IMMEDIATE``) and keeps it until
the test lets go. Meanwhile a full queue's events go to the spool's writer thread (the
caller returns at once, the event pending), and a process whose spool was too busy to open
still writes ahead into its journal (it needs only its owner lock).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cms_shipper import CMSClient, Outcome
from cms_shipper._spool import Spool
from cms_shipper._spool.status import read_status
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, adds_up, unused_port, wait_until

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    sys.stdin.readline()
    db.execute("ROLLBACK")
    db.close()
    """
)


@contextmanager
def held(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the spool file's write lock until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.communicate("go\n", timeout=20.0)


def test_a_full_queue_spills_without_waiting_for_another_processs_lock(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = tmp_path / "spool.db"
    Spool(str(path)).close()  # the file exists (a client makes it at its first event)
    cms_emulator.configure(latency_s=0.3)
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(path), **FAST,
        max_queue_size=4, max_concurrent_requests=1, spool_replay_interval_s=0.05,
    )  # fmt: skip
    try:
        with held(path):
            results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(40)]
            # The callers did not store the spills (the file is locked): the writer thread
            # will. Before the change, each caller waited 0.25 s, then dropped its event.
            waiting = [r for r in results if r.final is None and "spool" in r.message]
            assert len(waiting) >= 30, Counter(str(r.final and r.final.outcome) for r in results)
            assert not any(r.final and r.final.outcome is Outcome.DROPPED for r in results)
        cms_emulator.configure(latency_s=0.0)
        finals = [r.wait(10.0) for r in results]
        assert not [f for f in finals if f.outcome is Outcome.DROPPED]
        assert {f.outcome for f in finals} <= {Outcome.DELIVERED, Outcome.SPOOLED}
        assert cms_emulator.wait_for_events(40, timeout_s=30.0)
        assert wait_until(lambda: read_status(str(path)).total == 0, 10.0)
        stats = client.stats()
        assert stats["dropped"] == 0 and adds_up(stats)
    finally:
        client.close(5.0)
    names = Counter(e.payload["eventName"] for e in cms_emulator.events)
    assert set(names) == {f"lead-{i}" for i in range(40)} and max(names.values()) == 1


def test_write_ahead_works_while_the_file_is_too_busy_to_open(tmp_path: Path) -> None:
    # A new file whose creator holds its lock: opening cannot switch it to WAL for longer
    # than the client's open wait. The journal needs only the owner lock, so every event is
    # still written ahead (before the change: every one was a write-ahead miss).
    path = tmp_path / "spool.db"
    down = f"http://127.0.0.1:{unused_port()}"
    with held(path):
        client = CMSClient(
            token=TOKEN, host=down, spool_path=str(path), write_ahead=True,
            **{**FAST, "shutdown_timeout_s": 0.5}, spool_replay_interval_s=0.05,
        )  # fmt: skip
        try:
            results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(50)]
            assert client.stats()["spool_write_ahead_misses"] == 0
            assert all(r._kept > 0 for r in results)
        except BaseException:
            client.close(0.5)
            raise
    client.close(1.0)  # the file is free now: the events go into its line
    stats = client.stats()
    assert stats["spooled"] == 50 and stats["pending"] == 0, stats
    assert read_status(str(path)).total == 50
