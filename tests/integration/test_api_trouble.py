"""Trouble on the API's side is the client's, not the event's (guarantee 8).

The real client against the emulator over loopback: rate limits with and without
Retry-After, outages longer than the retry budget, refused connections, bursts of 5xx, a
customer whose requests keep failing. Each test counts what was delivered and in what order.
"""

from __future__ import annotations

import logging

import pytest

from cms_shipper import Outcome, Reason
from cms_shipper.emulator import Emulator

from .conftest import ClientFactory, adds_up, journeys_from_threads, received_names, wait_until


def _delivered_once(emu: Emulator, customers: list[str]) -> bool:
    seen = [e.payload["customerExternalId"] for e in emu.events]
    return sorted(seen) == sorted(customers)


def test_documented_limit_without_retry_after_loses_nothing(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    # The API's 60/minute, scaled down to 10 per 1.5 s, and like the API: no Retry-After.
    cms_emulator.configure(rate_limit=10, rate_limit_window_s=1.5, rate_limit_retry_after=False)
    client = make_client(retry_max_attempts=2, retry_max_elapsed_s=1.0)  # a small own budget
    customers = [f"u{i}" for i in range(25)]
    results = [client.track_lead("signup", c, click_id="c") for c in customers]
    assert client.flush(60.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert _delivered_once(cms_emulator, customers)
    limited = [r for r in cms_emulator.requests if r.status == 429]
    assert limited and all(r.status in (200, 429) for r in cms_emulator.requests)
    stats = client.stats()
    # Every 429 was the client's pause, not an event's attempt; none cost an event anything.
    assert stats["uncharged_attempts"] == len(limited) and stats["failed"] == 0
    assert stats["rate_limited"] is False and adds_up(stats)
    # Probes, not a storm: at most the requests already on the wire plus one probe a pause.
    assert len(limited) <= 4 * 3 + 8


def test_outage_longer_than_the_retry_budget_costs_no_event(
    cms_emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cms_emulator.outage(2.5, status=503)
    # All 40 are queued before the first batch leaves (a lone first event failing twice
    # before any other customer's request had a chance would be charged, rightly).
    client = make_client(retry_max_attempts=2, retry_max_elapsed_s=0.5, flush_interval_s=0.5)
    customers = [f"u{i}" for i in range(40)]
    with caplog.at_level(logging.INFO, logger="cms_shipper"):
        results = [client.track_lead("signup", c, click_id="c") for c in customers]
        assert wait_until(lambda: client.stats()["circuit"] != "closed")
        assert client.flush(30.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert _delivered_once(cms_emulator, customers)
    assert client.stats()["failed"] == 0 and client.stats()["circuit"] == "closed"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("circuit opened" in m for m in messages) == 1
    assert sum("circuit closed" in m for m in messages) == 1
    # One probe at a time while it was open, not a retry per event.
    failed_503 = [r for r in cms_emulator.requests if r.status == 503]
    assert len(failed_503) < 40


def test_refused_connections_then_a_burst_of_503s_loses_nothing(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(error_rate=0.3, error_status=503, seed=11)
    cms_emulator.outage(1.5, mode="refuse")
    client = make_client(retry_max_attempts=10, retry_max_elapsed_s=60.0)
    customers = [f"u{i}" for i in range(200)]
    results = [client.track_lead("signup", c, click_id="c") for c in customers]
    assert client.flush(60.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert _delivered_once(cms_emulator, customers)
    stats = client.stats()
    assert stats["delivered"] == 200 and stats["uncharged_attempts"] > 0 and adds_up(stats)


def test_one_failing_customer_never_holds_back_the_others(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.fail_customer("bad", status=503)
    client = make_client(
        retry_max_attempts=50, retry_initial_backoff_s=0.2, retry_max_backoff_s=1.0,
        retry_max_elapsed_s=120.0,
    )  # fmt: skip
    bad = [client.track_lead(f"bad-{i}", "bad", click_id="c") for i in range(5)]
    healthy = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(400)]
    assert all(r.wait(20.0).outcome is Outcome.DELIVERED for r in healthy)
    # Delivered while bad's first event is still being retried: no head-of-line blocking.
    assert not bad[0].done()
    tried = [r.payload["eventName"] for r in cms_emulator.requests if r.status == 503]
    assert tried and set(tried) == {"bad-0"}  # its later events never overtook it
    closed = client.close(0.5)
    assert (closed.dropped, closed.pending, closed.timed_out) == (5, 0, True)
    assert all(r.wait(0).reason is Reason.SHUTDOWN for r in bad)


def test_a_failing_customers_own_failures_are_charged(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.fail_customer("bad", status=503)
    client = make_client(retry_max_attempts=3, retry_max_elapsed_s=30.0)
    bad = [client.track_lead(f"bad-{i}", "bad", click_id="c") for i in range(3)]
    healthy = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(50)]
    finals = [r.wait(20.0) for r in bad]
    assert all(f.outcome is Outcome.FAILED for f in finals)
    assert all(
        f.reason is Reason.RETRIES_EXHAUSTED and "3 attempts" in (f.error or "") for f in finals
    )
    assert [r.payload["eventName"] for r in cms_emulator.requests if r.status == 503] == [
        name for name in ("bad-0", "bad-1", "bad-2") for _ in range(3)
    ]
    assert all(r.wait(10.0).outcome is Outcome.DELIVERED for r in healthy)


def test_concurrent_callers_during_an_outage_keep_order_and_lose_nothing(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.outage(1.5, mode="refuse")
    client = make_client(retry_max_attempts=2, retry_max_elapsed_s=0.5)
    sent = journeys_from_threads(client, threads=4, customers=15, steps=1)
    assert client.flush(60.0)
    stats = client.stats()
    assert stats["delivered"] == 4 * 15 * 3 and stats["rejected"] == 0 and adds_up(stats)
    assert received_names(cms_emulator) == sent
