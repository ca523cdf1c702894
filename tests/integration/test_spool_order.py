"""Per-customer order holds through the spool (issue 9, point 3).

The scenario from the issue: a customer's deferred set-up (a lead with a ``clickId``) does
not get through and lands in the spool; the customer's follow-up (a lead without
``clickId``) is tracked afterwards. Sent first, the follow-up is refused for good (422, no
deferred association). With a spool, the follow-up is saved behind the set-up and both are
delivered in order: in the same process, and in a process started after the first one
closed or was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cms_shipper import CMSClient, Outcome, Reason
from cms_shipper._spool.status import read_status
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, adds_up, unused_port, wait_until

CLICK = "clk-alice"


def spool_rows(path: Path) -> int:
    """Events in the spool: waiting rows and live write-ahead journal records."""
    return read_status(str(path)).total


def alice_on_the_wire(emulator: Emulator) -> list[tuple[str, int]]:
    """Alice's requests in arrival order: (event name, HTTP status)."""
    return [
        (r.payload["eventName"], r.status)
        for r in emulator.requests
        if isinstance(r.payload, dict) and r.payload.get("customerExternalId") == "alice"
    ]


def delivered_in_order(emulator: Emulator) -> bool:
    return [name for name, status in alice_on_the_wire(emulator) if status < 300] == [
        "signup",
        "verified",
    ]


def spool_the_setup(client: CMSClient, emulator: Emulator, how: str) -> None:
    """Track alice's set-up so that it ends in the spool, the way ``how`` says."""
    if how == "her requests fail":
        emulator.fail_customer("alice", status=503)
        setup = client.track_lead("signup", "alice", click_id=CLICK, mode="deferred")
        final = setup.wait(20.0)
        emulator.clear_customer_failures()
    else:  # the queue is full: the set-up is spilled on arrival
        emulator.configure(latency_s=0.5)
        fillers = [
            client.track_lead(f"fill-{i}", f"f{i}", click_id="k") for i in range(2)
        ]  # max_queue_size
        setup = client.track_lead("signup", "alice", click_id=CLICK, mode="deferred")
        final = setup.wait(10.0)  # stored by the spool writer thread
        assert all(f.wait(20.0).outcome is Outcome.DELIVERED for f in fillers)
        emulator.configure(latency_s=0.0)
    assert final.outcome is Outcome.SPOOLED, final


@pytest.mark.parametrize("how", ["her requests fail", "the queue overflows"])
def test_a_follow_up_waits_behind_its_spooled_set_up_in_the_same_process(
    tmp_path: Path, cms_emulator: Emulator, how: str
) -> None:
    path = tmp_path / "spool.db"
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(path),
        **{**FAST, "retry_max_attempts": 2, "max_queue_size": 2, "max_concurrent_requests": 1},
        spool_replay_interval_s=3.0,  # the set-up is still in the spool at the follow-up
    )  # fmt: skip
    try:
        spool_the_setup(client, cms_emulator, how)
        follow_up = client.track_lead("verified", "alice")
        final = follow_up.wait(10.0)
        # Not sent: saved behind the set-up, which the spool replays first.
        assert final.outcome is Outcome.SPOOLED and final.reason is Reason.BEHIND_SPOOLED, final
        assert wait_until(lambda: delivered_in_order(cms_emulator), 20.0), alice_on_the_wire(
            cms_emulator
        )
        assert wait_until(lambda: spool_rows(path) == 0, 10.0)
        stats = client.stats()
        assert stats["replayed"] == 2 and stats["reasons"]["spooled"]["behind_spooled"] == 1
        assert adds_up(stats)
    finally:
        client.close(5.0)
    # Nothing of alice's was refused: the follow-up found its deferred association.
    assert all(status < 300 for name, status in alice_on_the_wire(cms_emulator) if name != "signup")


def test_a_customer_without_spooled_events_is_not_held_back(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(tmp_path / "spool.db"),
        **{**FAST, "retry_max_attempts": 2}, spool_replay_interval_s=30.0,
    )  # fmt: skip
    try:
        spool_the_setup(client, cms_emulator, "her requests fail")
        bob = client.track_lead("signup", "bob", click_id="clk-bob", mode="deferred")
        assert bob.wait(10.0).outcome is Outcome.DELIVERED
    finally:
        client.close(5.0)


# The first process: tracks alice's set-up while the API cannot be reached, then either
# closes (the set-up is left in the spool at shutdown) or waits to be killed (write-ahead).
FIRST = textwrap.dedent(
    """
    import os, sys
    from cms_shipper import CMSClient

    ending = sys.argv[2]
    client = CMSClient(spool_path=sys.argv[1], write_ahead=ending == "killed",
                       shutdown_timeout_s=0.5, flush_interval_s=0.01)
    r = client.track_lead("signup", "alice", click_id="clk-alice", mode="deferred")
    print(f"pid {os.getpid()} in_spool {bool(r._kept)}", flush=True)
    if ending == "killed":
        import time
        time.sleep(600)
    client.close()
    """
)

# The restarted process: alice's follow-up is its very first event.
SECOND = textwrap.dedent(
    """
    import sqlite3, sys, time
    from cms_shipper import CMSClient

    from cms_shipper._spool.status import read_status

    def rows():
        return read_status(sys.argv[1]).total

    client = CMSClient(spool_path=sys.argv[1], flush_interval_s=0.01,
                       spool_replay_interval_s=0.5)
    final = client.track_lead("verified", "alice").wait(10.0)
    print(f"follow-up {final.outcome} {final.reason}", flush=True)
    deadline = time.monotonic() + 20.0  # until the spool has delivered both
    while rows() and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close(10.0)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fcntl locks for the crash case")
@pytest.mark.parametrize("ending", ["closed", "killed"])
def test_a_restarted_process_replays_the_set_up_before_its_first_follow_up(
    tmp_path: Path, cms_emulator: Emulator, ending: str
) -> None:
    path = tmp_path / "spool.db"
    down = {**os.environ, "CMS_HOST": f"http://127.0.0.1:{unused_port()}",
            "CMS_BEARER_TOKEN": TOKEN}  # fmt: skip
    out = tmp_path / "first.out"
    with out.open("wb") as sink:
        first = subprocess.Popen([sys.executable, "-c", FIRST, str(path), ending], env=down,
                                 stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert wait_until(lambda: "in_spool" in out.read_text(), 20.0), out.read_text()
        if ending == "killed":
            assert "in_spool True" in out.read_text()  # written ahead before track_* returned
            os.kill(first.pid, signal.SIGKILL)
        assert first.wait(20.0) in (0, -signal.SIGKILL), out.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10.0)
    assert spool_rows(path) == 1
    up = {**down, "CMS_HOST": cms_emulator.url}
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-c", SECOND, str(path)], env=up,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    # Both went out in order: the follow-up found the set-up waiting in the spool (or being
    # replayed) and was saved behind it; or, when the replay that runs at start had already
    # delivered the set-up by the time the follow-up was sent, it went out at once.
    assert delivered_in_order(cms_emulator), alice_on_the_wire(cms_emulator)
    said = second.stdout + second.stderr
    assert "follow-up spooled behind_spooled" in said or "follow-up delivered accepted" in said
    assert all(status < 300 for _, status in alice_on_the_wire(cms_emulator))
    assert spool_rows(path) == 0
    assert time.monotonic() - started < 15.0


def overtaken(emulator: Emulator) -> list[str]:
    """Customers whose follow-up reached the server before their set-up was accepted."""
    accepted: set[str] = set()
    out = []
    for r in emulator.requests:
        if not isinstance(r.payload, dict):
            continue
        customer = r.payload.get("customerExternalId")
        if r.payload.get("eventName") == "signup" and r.status is not None and r.status < 300:
            accepted.add(customer)
        elif r.payload.get("eventName") == "verified" and customer not in accepted:
            out.append(customer)
    return out


def answered_follow_ups(emulator: Emulator) -> int:
    return sum(
        1
        for r in emulator.requests
        if isinstance(r.payload, dict) and r.payload.get("eventName") == "verified" and r.status
    )


def test_no_follow_up_overtakes_its_set_up_spilled_after_one_attempt(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    # The race: each set-up's first request gets a 408 and, with one attempt, is
    # spilled by its sender; the customer's follow-up, next in the customer's line, must
    # not go out (to the other senders) before the spill is recorded for the hold-back.
    customers = [f"c{i}" for i in range(400)]
    for customer in customers:
        cms_emulator.fail_customer(customer, status=408, count=1)
    client = CMSClient(
        token=TOKEN, host=cms_emulator.url, spool_path=str(tmp_path / "spool.db"),
        **{**FAST, "retry_max_attempts": 1}, max_concurrent_requests=8,
        spool_replay_interval_s=0.2,
    )  # fmt: skip
    try:
        for customer in customers:
            client.track_lead("signup", customer, click_id=f"clk-{customer}", mode="deferred")
            client.track_lead("verified", customer)
        done = wait_until(lambda: answered_follow_ups(cms_emulator) >= len(customers), 60.0)
        assert overtaken(cms_emulator) == []
        assert done, answered_follow_ups(cms_emulator)
        assert wait_until(lambda: len(cms_emulator.events) == 2 * len(customers), 10.0)
        assert all(r.status in (200, 408) for r in cms_emulator.requests)
        assert wait_until(lambda: client.stats()["pending"] == 0, 10.0)
        assert adds_up(client.stats())
    finally:
        client.close(5.0)
