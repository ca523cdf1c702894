"""The spool's storage rules on real files, with a fake clock for leases."""

from __future__ import annotations

import logging
import sqlite3
import stat
import sys
import time
from pathlib import Path

import pytest

from cms_shipper._events import Event, build_lead, build_sale
from cms_shipper._spool import Spool, SpoolBusy, SpoolError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def lead(n: int, customer: str) -> Event:
    return build_lead(f"e{n}", 1_700_000_000.0 + n, event_name=f"lead-{n}",
                      customer_external_id=customer, click_id="k")  # fmt: skip


def spool(path: Path, clock: Clock, owner: str, **kw: float) -> Spool:
    return Spool(path, lease_s=10.0, owner=owner, clock=clock, **kw)  # type: ignore[arg-type]


def test_private_file_and_round_trip(tmp_path: Path) -> None:
    clock = Clock()
    store = spool(tmp_path / "s.db", clock, "a")
    sale = build_sale("s1", 1.5, event_name="buy", customer_external_id="u", invoice_id="i",
                      amount=5, currency="eur", timestamp="2026-01-02T03:04:05Z")  # fmt: skip
    assert store.add([sale, sale], leased=False) == ([], [])  # twice is harmless
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600
    assert store.claim(10) == [sale]
    assert store.status().total == 1 and store.status().by_endpoint == {"sale": 1}


def test_claims_are_oldest_first_and_exclusive_between_owners(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(i, f"c{i}") for i in range(6)], leased=False)
    assert [e.event_id for e in a.claim(2)] == ["e0", "e1"]
    assert [e.event_id for e in b.claim(10)] == ["e2", "e3", "e4", "e5"]
    assert a.claim(10) == [] and b.claim(10) == []


def test_a_customer_leased_elsewhere_is_skipped_even_for_newer_events(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x"), lead(1, "x"), lead(2, "y")], leased=False)
    assert [e.event_id for e in a.claim(1)] == ["e0"]
    assert [e.event_id for e in b.claim(10)] == ["e2"]  # not e1: x's e0 is still in flight
    a.remove(["e0"])
    assert [e.event_id for e in b.claim(10)] == ["e1"]


def test_leases_are_renewed_and_release_frees_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x"), lead(1, "y")], leased=True)  # write-ahead: held by a
    assert b.claim(10) == []
    clock.now += 8
    assert a.renew() == 2
    clock.now += 8  # 16 s after adding, 8 s after renewing: still held
    assert b.claim(10) == []
    a.release(["e1"])
    assert [e.event_id for e in b.claim(10)] == ["e1"]


def test_a_live_owner_keeps_its_events_even_past_its_lease(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x")], leased=True)
    clock.now += 100  # a's heartbeat is late, but its lock file proves it alive
    assert b.claim(10) == []


def die(store: Spool, *, keep_lock_file: bool = True) -> None:
    """What SIGKILL does to an owner: its connection and its flock go, its rows stay."""
    assert store._db is not None
    store._db.close()
    store._db = None
    store._owners.release(keep_file=keep_lock_file)


def test_a_dead_owners_leases_are_taken_over_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x"), lead(1, "y")], leased=True)
    die(a)
    assert [e.event_id for e in b.claim(10)] == ["e0", "e1"]  # no clock change: no lease wait
    assert not (tmp_path / "s.db.owners" / "a.lock").exists()  # buried once taken over


def test_without_a_lock_file_the_lease_is_the_fallback(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x")], leased=True)
    die(a, keep_lock_file=False)  # as on a filesystem without locks: liveness unknown
    assert b.claim(10) == []
    clock.now += 11
    assert [e.event_id for e in b.claim(10)] == ["e0"]


def test_close_removes_the_lock_file_unless_rows_are_still_leased(tmp_path: Path) -> None:
    clock = Clock()
    owners = tmp_path / "s.db.owners"
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x")], leased=True)
    a.close()
    b.close()
    assert sorted(p.name for p in owners.iterdir()) == ["a.lock"]
    c = spool(tmp_path / "s.db", clock, "c")
    assert [e.event_id for e in c.claim(10)] == ["e0"]  # a is gone: at once


def test_max_bytes_refuses_and_frees_on_remove(tmp_path: Path) -> None:
    clock = Clock()
    store = spool(tmp_path / "s.db", clock, "a", max_bytes=64 * 1024)
    events = [
        build_lead(
            f"e{i}",
            1.0,
            event_name="x" * 255,
            customer_external_id=f"c{i}",
            click_id="k",
            customer_avatar="https://x.org/" + "a" * 2000,
        )
        for i in range(60)
    ]
    refused = store.add(events, leased=False).refused
    kept = 60 - len(refused)
    assert 0 < kept < 60 and refused == [e.event_id for e in events[kept:]]
    # Space comes back page by page: removing half of the rows makes room again.
    store.remove(e.event_id for e in events[: kept // 2])
    assert store.add([events[kept]], leased=False) == ([], [])
    assert store.purge() == kept - kept // 2 + 1


def test_unreadable_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        store = spool(path, Clock(), "a")
    assert store.add([lead(0, "x")], leased=False) == ([], [])
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and any(aside[0] in r.getMessage() for r in caplog.records)


def test_another_programs_database_is_moved_aside_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    spool(path, Clock(), "a").close()
    (aside,) = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and p.suffix != ".db-wal"]
    with sqlite3.connect(aside) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
    db.close()


def test_an_unreadable_file_in_use_by_a_live_owner_is_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    live = spool(path, Clock(), "a")
    assert live._db is not None
    live._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file alone holds every page
    path.write_bytes(b"\x00garbage" * 512)  # damaged under a live owner
    with pytest.raises(SpoolError, match="another live process"):
        spool(path, Clock(), "b")
    assert path.read_bytes().startswith(b"\x00garbage")
    live.close()


def test_busy_is_not_corrupt_and_every_wait_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = spool(path, Clock(), "a")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a sibling holding the write lock
    try:
        started = time.monotonic()
        with pytest.raises(SpoolBusy):
            store.add([lead(0, "x")], leased=True, busy_s=0.005)
        assert time.monotonic() - started < 0.5
        other = spool(path, Clock(), "b")  # opening an existing spool only reads: no wait
        other.close()
        with pytest.raises(SpoolBusy):
            store.claim(10, busy_s=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not [p for p in tmp_path.iterdir() if ".corrupt" in p.name]
    assert store.add([lead(0, "x")], leased=True) == ([], [])


def test_a_new_file_busy_at_creation_is_reported_busy_and_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a rollback-journal database, locked while creating it
    try:
        with pytest.raises(SpoolBusy):
            Spool(path, owner="a", busy_s=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name] == []


def test_one_bad_event_never_costs_the_others(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    good = [lead(i, f"c{i}") for i in range(200)]
    surrogate = Event.of("bad-1", "lead", {"eventName": "x", "customerExternalId": "\ud800"},
                         1.0, None)  # fmt: skip
    huge = Event.of("bad-2", "sale", {"eventName": "x", "customerExternalId": "u",
                                      "invoiceId": "i", "amount": 10**5000, "currency": "usd"},
                    1.0, None)  # fmt: skip
    added = store.add([*good[:100], surrogate, huge, *good[100:]], leased=False)
    assert added.refused == [] and "bad-1" in added.failed
    assert store.status().total == 200 + (sys.version_info < (3, 11))  # 3.9/3.10: no digit limit


def test_no_token_is_stored(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    store.add([lead(0, "x")], leased=False)
    store.close()
    store.close()  # idempotent
    assert b"Bearer" not in (tmp_path / "s.db").read_bytes()


def test_claims_follow_tracking_order_not_insertion_order(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    # e1 was written ahead first; e0, tracked earlier, was spilled later (kept in memory).
    store.add([lead(1, "x")], leased=False)
    store.add([lead(0, "x")], leased=False)
    assert [e.event_id for e in store.claim(1)] == ["e0"]
    store.remove(["e0"])
    assert [e.event_id for e in store.claim(1)] == ["e1"]


def test_lines_hold_a_customer_back_while_its_older_events_wait_or_replay(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, "a")
    held = a.lines.holds_back
    a.add([lead(0, "x")], leased=True)  # written ahead: a live event of ours, holds nothing
    assert not held("x")
    a.release(["e0"])  # spilled: it waits in the spool now
    assert held("x") and not held("y")
    assert [e.event_id for e in a.claim(10)] == ["e0"]
    assert held("x")  # replaying: still before x's new events
    a.remove(["e0"])  # delivered
    assert not held("x")
    a.add([lead(1, "y")], leased=False)
    assert held("y")
    a.remove(["e1"])  # a late answer for a row that waited: y is free again
    assert not held("y")


def test_refresh_sees_other_processes_rows_and_a_dead_owners(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    b.add([lead(0, "x")], leased=False)  # spilled by another process
    b.add([lead(1, "y")], leased=True)  # b's live event: never a's business
    assert not a.lines.holds_back("x")
    a.refresh()
    assert a.lines.holds_back("x") and not a.lines.holds_back("y")
    b.close()  # b is gone with e1 still leased: its owner lock file proves it
    a.refresh()
    assert a.lines.holds_back("y")
