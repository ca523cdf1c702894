"""429 with Retry-After pauses everyone; the optional client-side cap paces requests."""

from __future__ import annotations

import time

from cms_shipper import Outcome
from cms_shipper.emulator import Emulator

from .conftest import ClientFactory, adds_up


def test_429_pauses_all_lanes_until_retry_after_then_everything_arrives(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(rate_limit=4, rate_limit_window_s=1.0)
    client = make_client(max_concurrent_requests=4, retry_max_attempts=10, retry_max_elapsed_s=30.0)
    results = [client.track_lead("s", f"u{i}", click_id="c") for i in range(12)]
    assert client.flush(30.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    statuses = [r.status for r in cms_emulator.requests]
    limited = statuses.count(429)
    # 12 events at 4 per 1 s window need 3 windows. Each window can draw at most one 429 per
    # lane before the shared pause holds every lane back: no retry storm.
    assert 1 <= limited <= 4 * 3
    assert statuses.count(200) == 12 and len(cms_emulator.events) == 12
    stats = client.stats()
    assert stats["status_codes"].get("429") is None  # 429s were retried, not outcomes
    assert adds_up(stats)


def test_after_a_429_nobody_sends_before_retry_after_has_passed(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(rate_limit=1, rate_limit_window_s=1.0)
    client = make_client(max_concurrent_requests=3, retry_max_attempts=10)
    for i in range(3):
        client.track_lead("s", f"u{i}", click_id="c")
    assert client.flush(30.0)
    log = cms_emulator.requests
    first_429 = next(r for r in log if r.status == 429)
    later = [r for r in log if r.time > first_429.time and r.status != 429]
    # Retry-After is whole seconds (>= 1): the next accepted request comes a second later.
    assert later and min(r.time for r in later) - first_429.time >= 0.9


def test_max_requests_per_minute_spaces_requests(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(max_requests_per_minute=600, max_concurrent_requests=4)  # one per 0.1 s
    started = time.monotonic()
    for i in range(6):
        client.track_lead("s", f"u{i}", click_id="c")
    assert client.flush(30.0)
    assert time.monotonic() - started >= 0.45  # 6 requests need 5 gaps of 0.1 s
    times = sorted(e.received_at for e in cms_emulator.events)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 5 and min(gaps) >= 0.08
