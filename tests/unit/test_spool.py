"""The spool's storage rules on real files, with a fake clock for leases."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from cms_shipper._events import Event, build_lead, build_sale
from cms_shipper._spool import Spool


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
    assert store.add([sale, sale], leased=False) == []  # twice is harmless
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


def test_leases_expire_unless_renewed_and_release_frees_at_once(tmp_path: Path) -> None:
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
    b.remove(["e1"])  # b delivered it
    clock.now += 11  # a died: its lease on e0 expires
    assert [e.event_id for e in b.claim(10)] == ["e0"]


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
    refused = store.add(events, leased=False)
    kept = 60 - len(refused)
    assert 0 < kept < 60 and refused == [e.event_id for e in events[kept:]]
    # Space comes back page by page: removing half of the rows makes room again.
    store.remove(e.event_id for e in events[: kept // 2])
    assert store.add([events[kept]], leased=False) == []
    assert store.purge() == kept - kept // 2 + 1


def test_unreadable_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        store = spool(path, Clock(), "a")
    assert store.add([lead(0, "x")], leased=False) == []
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and any(aside[0] in r.getMessage() for r in caplog.records)


def test_no_token_is_stored(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), "a")
    store.add([lead(0, "x")], leased=False)
    store.close()
    store.close()  # idempotent
    assert b"Bearer" not in (tmp_path / "s.db").read_bytes()
