"""A client's lifetime: one that goes out of scope loses no event and leaks no thread.

Each scenario runs in a real subprocess against the emulator, so collection, the exit hook
and the interpreter's own shutdown are the real ones. In-process checks cover what a
closed client leaves behind (threads, files, exit-hook slots, the object itself).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from collections import Counter
from pathlib import Path

import pytest

from cms_shipper import CMSClient
from cms_shipper.emulator import Emulator

from .conftest import TOKEN, unused_port, wait_until

# A client that lives in a function: main() returns, the object is collected, the
# interpreter exits normally; nobody calls flush() or close().
_MAIN_RETURNS = """
import sys
from cms_shipper import CMSClient

def main():
    client = CMSClient()
    for i in range(int(sys.argv[1])):
        client.track_lead("signup", f"user-{i}", click_id=f"clk-{i}")

main()
print("returned", flush=True)
"""

# A client made per "request" and dropped: every event delivered mid-process, and the
# threads end once each client's work is settled.
_CLIENT_PER_REQUEST = """
import json, sys, threading, time
from cms_shipper import CMSClient

requests, per_request = int(sys.argv[1]), int(sys.argv[2])
before = threading.active_count()
peak = before
for r in range(requests):
    client = CMSClient()
    for i in range(per_request):
        client.track_lead("signup", f"r{r}-u{i}", click_id=f"clk-{r}-{i}")
    del client
    peak = max(peak, threading.active_count())
deadline = time.monotonic() + 60
while threading.active_count() > before + 2 and time.monotonic() < deadline:
    time.sleep(0.05)
after = threading.active_count()
print(json.dumps({"before": before, "after": after, "peak": peak,
                  "names": sorted(t.name for t in threading.enumerate())}), flush=True)
"""

# API down, a spool, a client collected when main() returns: its events are spooled at
# exit, counted in the one shutdown warning.
_COLLECTED_WITH_SPOOL = """
import sys
from cms_shipper import CMSClient

def main():
    client = CMSClient(spool_path=sys.argv[2], shutdown_timeout_s=1.0,
                       retry_initial_backoff_s=0.01, retry_max_backoff_s=0.05)
    for i in range(int(sys.argv[1])):
        client.track_lead("signup", f"user-{i}", click_id=f"clk-{i}")

main()
print("returned", flush=True)
"""


def _run(script: str, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMS_HOST": host, "CMS_BEARER_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _customers(emulator: Emulator) -> Counter[str]:
    return Counter(e.payload["customerExternalId"] for e in emulator.events)


def test_a_client_collected_when_main_returns_delivers_everything_at_exit(
    cms_emulator: Emulator,
) -> None:
    done = _run(_MAIN_RETURNS, cms_emulator.url, "1000")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "returned\n"
    received = _customers(cms_emulator)
    assert set(received) == {f"user-{i}" for i in range(1000)}
    assert max(received.values()) == 1  # no event sent twice
    assert TOKEN not in done.stdout + done.stderr


def test_a_client_per_request_delivers_everything_and_leaves_no_thread(
    cms_emulator: Emulator,
) -> None:
    done = _run(_CLIENT_PER_REQUEST, cms_emulator.url, "100", "5")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Back within a few of where it started once each client's work is settled (the
    # process-wide helper that closes collected clients may still be on its way out).
    assert report["after"] <= report["before"] + 2, report
    # Nothing waited on the events before the count was taken: they were delivered
    # mid-process, by the collected clients themselves.
    received = _customers(cms_emulator)
    assert set(received) == {f"r{r}-u{i}" for r in range(100) for i in range(5)}
    assert max(received.values()) == 1


def test_a_collected_client_spools_its_events_at_exit_with_the_api_down(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    spool = str(tmp_path / "events.db")
    down = f"http://127.0.0.1:{unused_port()}"
    done = _run(_COLLECTED_WITH_SPOOL, down, "20", spool)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "returned\n"
    # The one shutdown warning accounts for every event.
    assert "20 event(s) not delivered within the 1 s shutdown budget: 20 saved to the spool" in (
        done.stderr
    ), done.stderr
    # A later process with the API back delivers them from the spool, once each.
    with CMSClient(token=TOKEN, host=cms_emulator.url, spool_path=spool) as client:
        client.flush(0)  # replay starts at the first event or flush
        assert wait_until(lambda: len(cms_emulator.events) >= 20, 30.0)
        assert client.flush(10.0).pending == 0
    received = _customers(cms_emulator)
    assert set(received) == {f"user-{i}" for i in range(20)}
    assert max(received.values()) == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not hasattr(atexit, "_ncallbacks"), reason="CPython's atexit count")
def test_clients_created_and_closed_leave_nothing_behind(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    def one(i: int) -> weakref.ref[CMSClient]:
        spool = str(tmp_path / f"s{i % 3}.db") if i % 10 == 0 else None
        client = CMSClient(
            token=TOKEN, host=cms_emulator.url, spool_path=spool, on_success=lambda r: None
        )
        client.track_lead("signup", f"u{i}", click_id="c")
        client.close(5.0)
        return weakref.ref(client)

    one(-1)  # warm up: the emulator's and the pool's first threads and sockets
    gc.collect()
    threads, fds, hooks = threading.active_count(), _open_fds(), atexit._ncallbacks()
    refs = [one(i) for i in range(1000)]
    gc.collect()
    assert all(ref() is None for ref in refs)  # a closed client is freed
    assert atexit._ncallbacks() == hooks  # no exit-hook slot per client
    # The emulator's handler threads end with their connections; wait for that, bounded.
    assert wait_until(lambda: threading.active_count() <= threads, 10.0), [
        t.name for t in threading.enumerate()
    ]
    assert wait_until(lambda: _open_fds() <= fds + 2, 10.0), _open_fds() - fds
    assert len(cms_emulator.events) == 1001


def test_a_collected_client_in_this_process_is_flushed_and_its_threads_end(
    cms_emulator: Emulator,
) -> None:
    before = {t.ident for t in threading.enumerate()}
    client = CMSClient(token=TOKEN, host=cms_emulator.url, flush_interval_s=3600.0)
    for i in range(10):
        client.track_lead("signup", f"gone-{i}", click_id="c")
    del client
    gc.collect()
    # flush_interval_s=3600: only the client's retirement could have sent these.
    assert wait_until(lambda: len(cms_emulator.events) == 10, 10.0)
    assert wait_until(
        lambda: (
            not [
                t
                for t in threading.enumerate()
                if t.ident not in before and t.name.startswith("cms-shipper")
            ]
        ),
        10.0,
    ), [t.name for t in threading.enumerate()]
