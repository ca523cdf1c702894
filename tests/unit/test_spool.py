"""The spool's storage rules on real files, with a fake clock for leases."""

from __future__ import annotations

import logging
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from cms_shipper import CMSClient
from cms_shipper._books.outcomes import dropped
from cms_shipper._events.build import Event, build_lead, build_sale
from cms_shipper._log import RateLimitedLog
from cms_shipper._spool import journal as _spool_ahead
from cms_shipper._spool.journal import FULL, Journal
from cms_shipper._spool.keeper import SPILLED, SpoolKeeper
from cms_shipper._spool.records import journal_files, read_live
from cms_shipper._spool.status import read_status
from cms_shipper._spool.store import JournalRecord, Spool, SpoolBusy, SpoolError
from cms_shipper.results import Outcome, Reason, Result, Tracked


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
    assert store.add([sale, sale]) == ([], [])  # twice is harmless
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600
    assert store.claim(10) == [sale]
    assert store.status().total == 1 and store.status().by_endpoint == {"sale": 1}


def test_claims_are_oldest_first_and_exclusive_between_owners(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(i, f"c{i}") for i in range(6)])
    assert [e.event_id for e in a.claim(2)] == ["e0", "e1"]
    assert [e.event_id for e in b.claim(10)] == ["e2", "e3", "e4", "e5"]
    assert a.claim(10) == [] and b.claim(10) == []


def test_a_customer_leased_elsewhere_is_skipped_even_for_newer_events(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x"), lead(1, "x"), lead(2, "y")])
    assert [e.event_id for e in a.claim(1)] == ["e0"]
    assert [e.event_id for e in b.claim(10)] == ["e2"]  # not e1: x's e0 is still in flight
    a.remove(["e0"])
    assert [e.event_id for e in b.claim(10)] == ["e1"]


def rows(path: Path) -> tuple[int, int]:
    """(events rows, live journal records); no rows while the file was never opened."""
    waiting = 0
    if path.exists():
        with sqlite3.connect(path) as db:
            (waiting,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
        db.close()
    files = journal_files(f"{path}.owners").values()
    return int(waiting), sum(len(read_live(names).events) for names in files)


def test_claims_are_renewed_and_release_frees_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x"), lead(1, "y")])
    assert len(a.claim(10)) == 2  # replaying: leased to a
    assert a.write_ahead(lead(2, "z")) > 0  # a live event of a's
    assert b.claim(10) == []
    clock.now += 8
    assert a.renew() == 2  # the claims; the journal rides on a's heartbeat row
    clock.now += 8  # 16 s after adding, 8 s after renewing: still held
    assert b.claim(10) == []
    a.release(["e1"])
    assert [e.event_id for e in b.claim(10)] == ["e1"]


def test_a_live_owner_keeps_its_events_even_past_its_lease(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    assert a.write_ahead(lead(0, "x")) > 0
    a.add([lead(1, "y")])
    assert [e.event_id for e in a.claim(10)] == ["e1"]
    clock.now += 100  # a's heartbeat is late, but its lock file proves it alive
    assert b.claim(10) == []
    b.refresh()
    assert rows(tmp_path / "s.db") == (1, 1)


def die(store: Spool, *, keep_lock_file: bool = True) -> None:
    """What SIGKILL does to an owner: its connections, mappings and flock go; files stay."""
    assert store._db is not None
    store._db.close()
    store._db = None
    store.journal.forget_inherited()  # unmapped, its files untouched
    store._owners.release(keep_file=keep_lock_file)


def test_a_dead_owners_journal_and_leases_are_taken_over_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a.add([lead(0, "x")])
    assert [e.event_id for e in a.claim(10)] == ["e0"]  # replaying when it dies
    assert a.write_ahead(lead(1, "y")) > 0 and a.write_ahead(lead(2, "y")) > 0
    die(a)
    assert rows(tmp_path / "s.db") == (1, 2)
    # No clock change: no lease wait. The journal's records are moved into line, in order.
    assert [e.event_id for e in b.claim(10)] == ["e0", "e1", "e2"]
    assert rows(tmp_path / "s.db") == (3, 0)
    left = sorted(p.name for p in (tmp_path / "s.db.owners").iterdir())
    assert left == ["b.lock", "reserve"]  # a's lock and journal files buried once taken over


def test_a_dead_owners_journal_is_taken_over_as_far_as_the_bound_has_room(
    tmp_path: Path,
) -> None:
    # Past its bound, the spool takes a dead owner's records over only into the database's
    # free pages (rows that drained left them): the rest wait in its journal, counted, and
    # their customers' newer rows wait behind them. Before: every record moved in one
    # transaction, whatever the bound (the database and its WAL grew by the journal twice).
    path = tmp_path / "s.db"
    clock = Clock()
    a, b = spool(path, clock, "a"), spool(path, clock, "b")
    n = 600
    for i in range(1, n + 1):
        assert a.write_ahead(lead(i, f"c{i}")) > 0
    assert a.write_ahead(lead(n + 1, "x")) > 0  # x's older event, last in the journal
    b.add([lead(n + 100, "x")])  # x's newer event, a row already
    b.add([lead(1000 + i, f"gone{i}") for i in range(200)])
    b.remove([f"e{1000 + i}" for i in range(200)])  # answered: their pages are free now
    die(a)
    # The journal file alone (1 MiB) is past this bound: only free pages take records.
    c = spool(path, clock, "c", max_bytes=256 * 1024)
    claimed: list[str] = []
    while more := [e.event_id for e in c.claim(1000)]:  # a pass each, until the pages are used
        claimed += more
    moved = len(claimed)
    assert 0 < moved < n, moved  # some, not all
    assert claimed == [f"e{i}" for i in range(1, moved + 1)]  # the oldest first
    assert c.lines.holds_back("x")  # x's newer row was never claimed: its older one waits
    assert rows(path) == (moved + 1, n + 1 - moved)  # the rest still in a's journal
    # With room (another process, no bound), the rest is taken over, x's older event first.
    d = spool(path, clock, "d")
    rest = [e.event_id for e in d.claim(1000)]
    assert rest == [f"e{i}" for i in range(moved + 1, n + 2)] + [f"e{n + 100}"]
    assert rows(path) == (n + 2, 0)
    assert not journal_files(f"{path}.owners")  # a's files buried once all were in
    for store in (b, c, d):
        store.close()


def test_without_a_lock_file_the_heartbeat_row_is_the_fallback(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    a._owners.release()  # as on a filesystem without locks: liveness unknown
    assert a.write_ahead(lead(0, "x")) > 0
    clock.now += 8
    a.renew()  # a's heartbeat: one row, whatever its journal holds
    clock.now += 8  # 16 s after writing, 8 s after the heartbeat: a is alive
    assert b.claim(10) == []
    die(a, keep_lock_file=False)
    clock.now += 3  # 11 s after a's last heartbeat (lease 10 s): dead
    assert [e.event_id for e in b.claim(10)] == ["e0"]
    assert rows(tmp_path / "s.db") == (1, 0)


def test_close_removes_the_lock_file_unless_rows_are_still_leased(tmp_path: Path) -> None:
    clock = Clock()
    owners = tmp_path / "s.db.owners"
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    assert a.write_ahead(lead(0, "x")) > 0
    a.close()
    b.close()
    assert sorted(p.name for p in owners.iterdir()) == ["a.1.journal", "a.lock", "reserve"]
    c = spool(tmp_path / "s.db", clock, "c")
    assert [e.event_id for e in c.claim(10)] == ["e0"]  # a is gone: at once


def test_max_bytes_refuses_and_frees_on_remove(tmp_path: Path) -> None:
    clock = Clock()
    store = spool(tmp_path / "s.db", clock, "a", max_bytes=256 * 1024)
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
    refused = store.add(events).refused
    kept = 60 - len(refused)
    assert 0 < kept < 60 and refused == [e.event_id for e in events[kept:]]
    # Space comes back page by page: removing half of the rows makes room again.
    store.remove(e.event_id for e in events[: kept // 2])
    assert store.add([events[kept]]) == ([], [])
    assert store.purge() == kept - kept // 2 + 1


def test_unreadable_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        store = spool(path, Clock(), "a")
    assert store.add([lead(0, "x")]) == ([], [])
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
        assert store.write_ahead(lead(0, "x")) > 0  # the journal never waits on the file
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        other = spool(path, Clock(), "b")  # opening an existing spool waits 50 ms at most
        assert time.monotonic() - started < 0.5
        assert other.write_ahead(lead(5, "z")) > 0  # its lock file proves it alive: no wait
        other.close()
        with pytest.raises(SpoolBusy):
            store.claim(10, busy_s=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not [p for p in tmp_path.iterdir() if ".corrupt" in p.name]
    assert store.write_ahead(lead(1, "x")) > 0


def test_a_new_file_busy_at_creation_is_reported_busy_and_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a rollback-journal database, locked while creating it
    try:
        # Opened late: the journal works at once (the owner lock is enough), statements
        # report busy until the file can be opened; it is never taken for corrupt.
        store = Spool(path, owner="a", busy_s=0.05)
        assert not store.opened
        assert store.write_ahead(lead(0, "x")) > 0
        with pytest.raises(SpoolBusy):
            store.add([lead(1, "y")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name] == []
    assert store.add([lead(1, "y")]).refused == [] and store.opened
    assert store.status().total == 2
    store.close()


def test_one_bad_event_never_costs_the_others(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    good = [lead(i, f"c{i}") for i in range(200)]
    surrogate = Event.of("bad-1", "lead", {"eventName": "x", "customerExternalId": "\ud800"},
                         1.0, None)  # fmt: skip
    huge = Event.of("bad-2", "sale", {"eventName": "x", "customerExternalId": "u",
                                      "invoiceId": "i", "amount": 10**5000, "currency": "usd"},
                    1.0, None)  # fmt: skip
    added = store.add([*good[:100], surrogate, huge, *good[100:]])
    assert added.refused == [] and "bad-1" in added.failed
    assert store.status().total == 200 + (sys.version_info < (3, 11))  # 3.9/3.10: no digit limit


def test_no_token_is_stored(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    store.add([lead(0, "x")])
    store.close()
    store.close()  # idempotent
    assert b"Bearer" not in (tmp_path / "s.db").read_bytes()


def test_claims_follow_tracking_order_not_insertion_order(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    # e1 was written ahead first; e0, tracked earlier, was spilled later (kept in memory).
    store.add([lead(1, "x")])
    store.add([lead(0, "x")])
    assert [e.event_id for e in store.claim(1)] == ["e0"]
    store.remove(["e0"])
    assert [e.event_id for e in store.claim(1)] == ["e1"]


def test_lines_hold_a_customer_back_while_its_older_events_wait_or_replay(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, "a")
    held = a.lines.holds_back
    handle = a.write_ahead(lead(0, "x"))  # written ahead: a live event of ours
    assert handle > 0 and not held("x")
    a.apply(move=[JournalRecord(handle, lead(0, "x"))])  # spilled: it waits in the spool now
    assert held("x") and not held("y")
    assert [e.event_id for e in a.claim(10)] == ["e0"]
    assert held("x")  # replaying: still before x's new events
    a.remove(["e0"])  # delivered
    assert not held("x")
    a.add([lead(1, "y")])
    assert held("y")
    a.remove(["e1"])  # a late answer for a row that waited: y is free again
    assert not held("y")


def test_refresh_sees_other_processes_rows_and_a_dead_owners(tmp_path: Path) -> None:
    clock = Clock()
    a, b = spool(tmp_path / "s.db", clock, "a"), spool(tmp_path / "s.db", clock, "b")
    b.add([lead(0, "x")])  # spilled by another process
    assert b.write_ahead(lead(1, "y")) > 0  # b's live event: never a's business
    assert not a.lines.holds_back("x")
    a.refresh()
    assert a.lines.holds_back("x") and not a.lines.holds_back("y")
    b.close()  # b is gone with e1 still leased: its owner lock file proves it
    a.refresh()
    assert a.lines.holds_back("y")


# -- the client's use of the journal (SpoolKeeper) -------------------------------------


def keeper(path: Path) -> SpoolKeeper:
    settings = CMSClient(
        token="t" * 32, spool_path=str(path), disabled=True, write_ahead=True
    ).settings
    return SpoolKeeper(settings, RateLimitedLog())


def delivered(event: Event) -> Result:
    return Result(success=True, status_code=200, event_id=event.event_id, event=event,
                  outcome=Outcome.DELIVERED, reason=Reason.ACCEPTED)  # fmt: skip


def written_ahead(keep: SpoolKeeper, event: Event) -> Tracked:
    item = Tracked(event)
    keep.write_ahead(item)
    assert item._kept > 0  # its handle in the journal
    return item


def test_a_spilled_written_ahead_event_moves_into_line(tmp_path: Path) -> None:
    keep = keeper(tmp_path / "s.db")
    item = written_ahead(keep, lead(0, "x"))
    assert rows(tmp_path / "s.db") == (0, 1)
    failed = dropped(item.event, Reason.SHUTDOWN, "not delivered within 1 s of close")
    (out,) = keep.settle([item], [failed])
    assert out.outcome is Outcome.SPOOLED and item._kept == SPILLED
    assert rows(tmp_path / "s.db") == (1, 0)  # moved: waiting in line, no longer ours
    assert keep._spool is not None and keep._spool.lines.holds_back("x")
    keep.close()


def test_a_held_back_written_ahead_event_moves_behind_its_customers(tmp_path: Path) -> None:
    keep = keeper(tmp_path / "s.db")
    older = Tracked(lead(0, "x"))
    (out,) = keep.settle([older], [dropped(older.event, Reason.QUEUE_FULL, "queue full")])
    assert out.outcome is Outcome.SPOOLED
    newer = written_ahead(keep, lead(1, "x"))
    held = keep.hold_back(newer)
    assert isinstance(held, Result) and held.reason is Reason.BEHIND_SPOOLED
    assert newer._kept == SPILLED and rows(tmp_path / "s.db") == (2, 0)
    assert [e.event_id for e in keep.claim(10)] == ["e0", "e1"]  # in tracking order
    keep.close()


def test_an_answered_event_is_done_at_once_and_close_leaves_nothing_of_ours(
    tmp_path: Path,
) -> None:
    keep = keeper(tmp_path / "s.db")
    items = [written_ahead(keep, lead(i, f"c{i}")) for i in range(3)]
    out = keep.settle(items, [delivered(i.event) for i in items])  # type: ignore[arg-type]
    assert [o.outcome for o in out] == [Outcome.DELIVERED] * 3
    assert rows(tmp_path / "s.db") == (0, 0)  # done: no I/O, no batch window
    keep.close()
    left = [p.name for p in (tmp_path / "s.db.owners").iterdir()]
    # Nothing left of ours (the reserve is the spool's, made when the file is first opened).
    assert [name for name in left if name != "reserve"] == []


def test_journal_records_survive_their_writer_and_torn_ones_are_skipped(
    tmp_path: Path,
) -> None:
    journal = Journal(str(tmp_path), "w", max_bytes=None)
    journal.registered = True
    handles = [journal.write(lead(i, f"c{i}")) for i in range(3)]
    journal.done(handles[1:2])
    (path,) = journal_files(str(tmp_path))["w"]
    journal.forget_inherited()  # the writer is gone; the file holds what it wrote
    assert [e.event_id for e in read_live([path]).events] == ["e0", "e2"]
    with open(path, "r+b") as file:  # a record whose body was torn: its checksum fails
        file.seek(9 + 3)
        file.write(b"#")
    assert [e.event_id for e in read_live([path]).events] == ["e2"]


def test_the_journal_rolls_to_new_files_and_deletes_finished_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool_ahead, "SEGMENT_BYTES", 4096)
    journal = Journal(str(tmp_path), "w", max_bytes=None)
    journal.registered = True
    handles = [journal.write(lead(i, f"c{i}")) for i in range(80)]
    assert all(h > 0 for h in handles) and len(journal_files(str(tmp_path))["w"]) > 2
    journal.done(handles[:-1])
    journal.tidy()
    assert len(journal_files(str(tmp_path))["w"]) == 1  # only the file in use is left
    assert journal.holds_live()
    journal.done(handles[-1:])
    assert not journal.holds_live()
    journal.close()
    assert journal_files(str(tmp_path)) == {}


def test_each_writing_thread_has_its_own_file(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path), "w", max_bytes=None)
    journal.registered = True
    handles: list[int] = []

    together = threading.Barrier(4)  # all four alive and writing at once

    def writer(n: int) -> None:
        together.wait()
        handles.extend(journal.write(lead(100 * n + i, f"c{n}")) for i in range(50))
        together.wait()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = journal_files(str(tmp_path))["w"]
    assert len(files) == 4 and len(read_live(files).events) == 200
    journal.done(handles)
    journal.tidy()  # the writers have ended: their files go
    assert journal_files(str(tmp_path)) == {}
    journal.close()


def test_a_thread_per_request_reuses_the_files_of_ended_threads(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path), "w", max_bytes=None)
    journal.registered = True
    handles: list[int] = []
    for n in range(20):  # one short-lived thread per "request", one after the other
        thread = threading.Thread(target=lambda n=n: handles.append(journal.write(lead(n, "c"))))
        thread.start()
        thread.join()
    files = journal_files(str(tmp_path))["w"]
    assert len(files) == 1 and len(read_live(files).events) == 20
    journal.done(handles)
    journal.close()
    assert journal_files(str(tmp_path)) == {}


def test_max_bytes_counts_the_journal_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool_ahead, "SEGMENT_BYTES", 4096)
    owners = str(tmp_path / "s.db.owners")  # a spool's directory: its files all count
    journal = Journal(owners, "w", max_bytes=3 * 4096)
    journal.registered = True
    handles = []
    while (handle := journal.write(lead(len(handles), "c"))) > 0:
        handles.append(handle)
    assert handle == FULL and len(journal_files(owners)["w"]) == 3
    journal.done(handles)
    journal.tidy()  # two files go; the one in use stays
    assert journal.write(lead(999, "c")) > 0  # room again
    journal.close()


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_file_from_before_the_heartbeat_rows_gets_its_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old = spool(path, Clock(), "a")
    old.add([lead(0, "x")])
    old.close()
    with sqlite3.connect(path) as db:  # as the previous version left it
        db.execute("DROP TABLE owners")
    db.close()
    assert read_status(str(path)).total == 1  # read-only: counts without the table
    store = spool(path, Clock(), "b")
    assert store.write_ahead(lead(1, "y")) > 0
    assert rows(path) == (1, 1) and read_status(str(path)).total == 2
    store.close()


def test_status_never_misses_records_a_take_over_moves_into_the_file(tmp_path: Path) -> None:
    # A process takes a dead owner's journal over (rows committed, then its files removed)
    # while another reads the status. Before: the reader's snapshot of the rows could come
    # before the commit and its reading of the journals after the removal, and a drainer
    # polling `read_status(...).total` saw 0 and stopped with the events still in the file.
    path = str(tmp_path / "s.db")
    Spool(path).close()
    per_round = 40
    for round_ in range(30):
        journal = Journal(f"{path}.owners", f"dead{round_}", max_bytes=None)
        journal.registered = True
        for i in range(per_round):
            journal.write(lead(round_ * per_round + i, f"c{i}"))
        journal.forget_inherited()  # its writer is gone: no lock file, no heartbeat
        totals: list[int] = []
        stop = threading.Event()

        def poll(stop: threading.Event, totals: list[int]) -> None:
            while not stop.is_set():
                totals.append(read_status(path).total)

        poller = threading.Thread(target=poll, args=(stop, totals))
        poller.start()
        try:
            deadline = time.monotonic() + 10.0
            while not totals and time.monotonic() < deadline:
                time.sleep(0.001)
            taker = Spool(path)
            taker.refresh()  # takes the dead journal over
            taker.close()
            seen = len(totals)
            while len(totals) < seen + 3 and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            stop.set()
            poller.join()
        expected = per_round * (round_ + 1)  # nobody removes the rows
        assert set(totals) == {expected}, (round_, sorted(set(totals)))


def test_status_of_a_file_whose_creator_died_before_its_schema_counts_the_journals(
    tmp_path: Path,
) -> None:
    # A write-ahead process killed while opening the file leaves it without tables; its
    # events are in its journal. Before: `read_status` said "not a spool".
    path = tmp_path / "s.db"
    sqlite3.connect(path).close()  # an empty file, as SQLite leaves it before the schema
    journal = Journal(f"{path}.owners", "dead", max_bytes=None)
    journal.registered = True
    for i in range(3):
        journal.write(lead(i, f"c{i}"))
    journal.forget_inherited()
    status = read_status(str(path))
    assert (status.total, status.by_endpoint) == (3, {"lead": 3})
