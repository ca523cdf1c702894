"""Spool v2 across real processes: busy is not corrupt, and a dead process's events come back
at once (its owner lock file proves it dead), at the default ``spool_lease_s``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from cms_shipper._spool.status import read_status
from cms_shipper.emulator import Emulator

from .conftest import TOKEN, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and fcntl")


def child_env(host: str) -> dict[str, str]:
    return {**os.environ, "CMS_HOST": host, "CMS_BEARER_TOKEN": TOKEN}


def spool_rows(path: Path) -> int:
    """Events in the spool: waiting rows and live write-ahead journal records."""
    return read_status(str(path)).total


def dump(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path, timeout=5.0)
    try:
        rows = db.execute("SELECT event_id, customer_key, lease_owner, lease_until FROM events")
        owners = sorted(os.listdir(f"{path}.owners")) if os.path.isdir(f"{path}.owners") else []
        return [*rows.fetchall()[:10], tuple(owners), time.time()]
    finally:
        db.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start a script with its output to a file (never a pipe to block on); all killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def run(name: str, script: str, *args: str, env: dict[str, str]) -> Path:
        # Killed by its pid (its first line) or at teardown, and waited for either way.
        out = tmp_path / f"{name}.out"
        with out.open("wb") as sink:
            started.append(subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                                            stdout=sink, stderr=subprocess.STDOUT))  # fmt: skip
        return out

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def lines(out: Path) -> list[str]:
    return out.read_text().splitlines()


def said(out: Path, word: str) -> set[str]:
    """The second word of every line starting with ``word``."""
    return {line.split()[1] for line in lines(out) if line.startswith(word + " ")}


def kill(out: Path) -> None:
    """SIGKILL the script writing ``out`` (it printed its pid first) and wait until it is gone."""
    pid = int(lines(out)[0].split()[1])
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not _alive(pid), 10.0)


def _alive(pid: int) -> bool:
    """False once the process is gone or a zombie (its files are closed either way)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Every script's lines are written whole: print() writes a text and its newline apart, and
# the client's warnings (stderr, the same file) could land in between and garble a name.
ONE_WRITE = textwrap.dedent(
    """
    import os

    def print(*parts, flush=True):
        os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
    """
)


# A write_ahead process that keeps the write lock busy: it tracks all the time, and a
# second connection holds BEGIN IMMEDIATE for 30 ms of every 40 ms.
BUSY_SIBLING = ONE_WRITE + textwrap.dedent(
    """
    import os, sqlite3, sys, threading, time
    from cms_shipper import CMSClient

    print(f"pid {os.getpid()}", flush=True)

    client = CMSClient(spool_path=sys.argv[1], write_ahead=True, flush_interval_s=0.01)

    def hog():
        db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5.0)
        while True:
            db.execute("BEGIN IMMEDIATE")
            time.sleep(0.03)
            db.execute("COMMIT")
            time.sleep(0.01)

    threading.Thread(target=hog, daemon=True).start()
    print("ready", flush=True)
    i = 0
    while True:
        r = client.track_lead(f"sib-{i}", f"s{i % 5}", click_id="k")
        if r._kept:  # a write-ahead miss (busy: its own hog) is in memory only
            print(f"accepted sib-{i}")
        i += 1
        time.sleep(0.005)
    """
)

# 40 client starts, then 10 forks of a live client, each tracking one event.
STARTER = ONE_WRITE + textwrap.dedent(
    """
    import os, sys, time
    from cms_shipper import CMSClient

    path = sys.argv[1]
    for i in range(40):
        client = CMSClient(spool_path=path, write_ahead=True, flush_interval_s=0.01)
        if client.track_lead(f"start-{i}", f"u{i}", click_id="k").success:
            print(f"accepted start-{i}", flush=True)
        client.close(2.0)
    client = CMSClient(spool_path=path, write_ahead=True, flush_interval_s=0.01)
    for i in range(10):
        pid = os.fork()
        if pid == 0:
            ok = client.track_lead(f"fork-{i}", f"f{i}", click_id="k").success
            if ok:
                print(f"accepted fork-{i}", flush=True)
            client.close(2.0)
            os._exit(0)
        os.waitpid(pid, 0)
    client.close(2.0)
    print("done", flush=True)
    """
)


def test_starts_and_forks_beside_a_busy_sibling_never_move_the_file_nor_lose_events(
    tmp_path: Path, emu: Emulator, start: Callable[..., Path]
) -> None:
    path = tmp_path / "spool.db"
    env = child_env(emu.url)
    sibling = start("sibling", BUSY_SIBLING, str(path), env=env)
    assert wait_until(lambda: "ready" in lines(sibling), 20.0), lines(sibling)
    starter = start("starter", STARTER, str(path), env=env)
    assert wait_until(lambda: "done" in lines(starter), 40.0), lines(starter)[-20:]
    accepted = said(starter, "accepted")
    assert len(accepted) == 50, lines(starter)[-20:]
    kill(sibling)
    accepted |= said(sibling, "accepted")
    assert not [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name]
    # The killed sibling's write-ahead rows come back through a later process.
    drain = start("drain", DRAINER, str(path), "20", env=env)
    names = lambda: {e.payload["eventName"] for e in emu.events}  # noqa: E731
    assert wait_until(lambda: accepted <= names(), 20.0), (
        sorted(accepted - names()),
        spool_rows(path),
        lines(drain),
        dump(path),
    )
    assert wait_until(lambda: "drained" in lines(drain), 20.0), lines(drain)
    assert not [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name]


# A write_ahead process killed mid-burst: many events accepted and not yet delivered.
KILLED = ONE_WRITE + textwrap.dedent(
    """
    import os, sys
    from cms_shipper import CMSClient

    print(f"pid {os.getpid()}", flush=True)
    client = CMSClient(spool_path=sys.argv[1], write_ahead=True, flush_interval_s=0.01,
                       max_concurrent_requests=2)
    for i in range(int(sys.argv[3])):
        name = f"{sys.argv[2]}-{i}"
        r = client.track_sale(name, f"c{i % 7}", f"inv-{name}", 100, "USD", click_id="k")
        assert r.success, r
        # Only a write-ahead miss (the file busy past 5 ms: counted) is in memory only.
        print(f"{'accepted' if r._kept else 'memory'} inv-{name}", flush=True)
    print("done", flush=True)
    import time
    time.sleep(600)
    """
)

# The restarted process: default spool_lease_s and replay interval; exits once drained.
DRAINER = ONE_WRITE + textwrap.dedent(
    """
    import sqlite3, sys, time
    from cms_shipper import CMSClient

    from cms_shipper._spool.status import read_status

    def rows(path):
        return read_status(path).total

    client = CMSClient(spool_path=sys.argv[1], write_ahead=True, flush_interval_s=0.01)
    client.flush(0)  # replay starts at the first event or flush
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline and (rows(sys.argv[1]) or client.stats()["pending"]):
        time.sleep(0.05)
    client.close(5.0)
    print("drained" if rows(sys.argv[1]) == 0 else "left", flush=True)
    """
)


def test_two_killed_write_ahead_processes_are_replayed_at_once_exactly_once(
    tmp_path: Path, emu: Emulator, start: Callable[..., Path]
) -> None:
    path = tmp_path / "spool.db"
    # Every request is held 30 s: nothing completes before the kill, whatever the load.
    # (Requests held then finish after the restart; their invoices are 409s by then.)
    emu.configure(latency_s=30.0)
    env = child_env(emu.url)
    kids = [start(name, KILLED, str(path), name, "120", env=env) for name in ("a", "b")]
    assert wait_until(lambda: all("done" in lines(kid) for kid in kids), 30.0)
    for kid in kids:
        kill(kid)
    accepted = said(kids[0], "accepted") | said(kids[1], "accepted")
    memory_only = len(said(kids[0], "memory") | said(kids[1], "memory"))
    print(f"write-ahead misses: {memory_only} of 240")
    assert len(accepted) + memory_only == 240 and memory_only <= 12
    before = len(emu.events)
    assert before < 240 and spool_rows(path) > 0  # the kill came with events pending
    emu.configure(latency_s=0.0)
    restarted = time.monotonic()
    drain = start("drain", DRAINER, str(path), "30", env=env)
    delivered = lambda: {e.payload["invoiceId"] for e in emu.events}  # noqa: E731
    assert wait_until(lambda: accepted <= delivered(), 30.0), (
        sorted(accepted - delivered()),
        spool_rows(path),
        lines(drain),
        dump(path),
    )
    took = time.monotonic() - restarted
    assert wait_until(lambda: "drained" in lines(drain), 30.0), lines(drain)
    invoices = Counter(e.payload["invoiceId"] for e in emu.events)
    assert accepted <= set(invoices) and max(invoices.values()) == 1  # exactly once
    assert took < 8.0, f"replayed {took:.1f} s after the restart (lease is 60 s)"


# Two clients of one process share a spool file. With the API away and queues of one, the
# second event of each is spilled into the file (a committed row), and so is a third of the
# first client's once another process has opened the file and closed it.
TWO_CLIENTS = ONE_WRITE + textwrap.dedent(
    """
    import os, sys, time
    from cms_shipper import CMSClient

    print(f"pid {os.getpid()}", flush=True)
    path, go = sys.argv[1], sys.argv[2]

    def spill(client, name):
        outcome = client.track_lead(name, name[0], click_id="k").wait(10).outcome
        os.write(1, f"{outcome} {name}\\n".encode())

    a = CMSClient(spool_path=path, max_queue_size=1, flush_interval_s=0.01)
    a.track_lead("a-0", "a", click_id="k")  # held in the queue: the API is away
    spill(a, "a-1")  # the queue is full: spilled into the file
    b = CMSClient(spool_path=path, max_queue_size=1, flush_interval_s=0.01)
    b.track_lead("b-0", "b", click_id="k")
    spill(b, "b-1")  # b opens the file: a second connection in this process
    os.write(1, b"opened\\n")
    while not os.path.exists(go):  # another process opens the file and closes it
        time.sleep(0.01)
    spill(a, "a-2")
    time.sleep(600)
    """
)


def test_a_second_client_of_the_process_never_lets_another_process_delete_the_wal(
    tmp_path: Path, emu: Emulator, start: Callable[..., Path]
) -> None:
    # Opening a second connection once closed a descriptor of the file, which drops every
    # POSIX lock of the process on it (SQLite's too). Another process closing the file
    # then took itself for the last user, checkpointed and deleted the WAL, and what the
    # first client spilled afterwards went into the deleted WAL: lost at the process's end.
    path, go = tmp_path / "spool.db", tmp_path / "go"
    emu.outage()
    env = child_env(emu.url)
    both = start("both", TWO_CLIENTS, str(path), str(go), env=env)
    assert wait_until(lambda: "opened" in lines(both), 20.0), lines(both)
    other = sqlite3.connect(path, timeout=5.0)  # any process: a client, a tool, a shell
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 2
    other.close()
    wal_kept = Path(f"{path}-wal").exists()  # for the failure message: the WAL outlived it
    go.touch()
    assert wait_until(lambda: "spooled a-2" in lines(both), 20.0), lines(both)
    assert said(both, "spooled") == {"a-1", "b-1", "a-2"}, lines(both)
    kill(both)  # a crash: what was in memory (a-0, b-0) goes; the spool keeps the rest
    emu.end_outage()
    drain = start("drain", DRAINER, str(path), "20", env=env)
    names = lambda: {e.payload["eventName"] for e in emu.events}  # noqa: E731
    assert wait_until(lambda: {"a-1", "b-1", "a-2"} <= names(), 20.0), (
        names(),
        lines(drain),
        lines(both),
        wal_kept,
        dump(path),
    )
    assert wait_until(lambda: "drained" in lines(drain), 20.0), lines(drain)
