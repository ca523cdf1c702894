"""Hostile answers cannot jam the client: every attempt is bounded in time and bytes.

A trickled reply, an oversized or endless body, deeply nested JSON, a Retry-After of
centuries: each event still ends with an outcome, within the attempt's budget.
"""

from __future__ import annotations

import time
import tracemalloc

from cms_shipper import Outcome
from cms_shipper._engine.transport import MAX_ERROR_TEXT
from cms_shipper.emulator import Emulator

from .conftest import ClientFactory, adds_up, wait_until

SLACK_S = 2.0  # a slow, noisy 2-core machine; the point is "bounded"


def test_a_trickled_reply_cannot_stretch_an_attempt_past_its_timeouts(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    # ~100 bytes at one byte every 0.2 s would take 20 s; the budget is 0.5 + 0.5 s.
    cms_emulator.configure(trickle_interval_s=0.2)
    client = make_client(connect_timeout_s=0.5, read_timeout_s=0.5)
    started = time.monotonic()
    final = client.track_lead("signup", "u1", click_id="c").wait(15.0)
    elapsed = time.monotonic() - started
    # The status line came at once: the API accepted the event; only the body was cut.
    assert final.outcome is Outcome.DELIVERED and final.status_code == 200
    assert elapsed < 1.0 + SLACK_S
    assert len(cms_emulator.requests) == 1 and len(cms_emulator.events) == 1


def test_an_oversized_error_body_is_read_only_up_to_the_limit(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(
        error_rate=1.0, error_status=422, reply_padding_bytes=50 * 2**20
    )  # fmt: skip
    client = make_client()
    tracemalloc.start()
    try:
        started = time.monotonic()
        final = client.track_lead("signup", "u1", click_id="c").wait(15.0)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert final.outcome is Outcome.REJECTED and final.status_code == 422
    assert len(final.error or "") <= MAX_ERROR_TEXT and "\n" not in (final.error or "")
    assert peak < 8 * 2**20  # not the 50 MiB body (emulator and client share this process)
    assert elapsed < 5.0


def test_an_endless_reply_ends_with_the_attempt(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(endless_reply=True)
    client = make_client(connect_timeout_s=1.0, read_timeout_s=1.0)
    final = client.track_lead("signup", "u1", click_id="c").wait(15.0)
    assert final.outcome is Outcome.DELIVERED  # 200 with a body that never ends
    cms_emulator.configure(endless_reply=False)
    # The cut connection is not reused: the next event is delivered normally.
    assert client.track_lead("signup", "u2", click_id="c").wait(10.0).outcome is Outcome.DELIVERED


def test_deeply_nested_json_in_a_200_does_not_strand_the_event(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(nested_reply_depth=30_000)
    client = make_client()
    results = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(5)]
    assert client.flush(15.0)
    finals = [r.wait(0) for r in results]
    assert all(f.outcome is Outcome.DELIVERED for f in finals)
    assert all(isinstance(f.data, str) and len(f.data) <= MAX_ERROR_TEXT for f in finals)
    assert adds_up(client.stats())


def test_a_retry_after_of_centuries_is_capped_and_never_raises(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(error_rate=1.0, error_status=429, retry_after_s=9_999_999_999)
    client = make_client(max_retry_after_s=1.0)
    result = client.track_lead("signup", "u1", click_id="c")
    assert wait_until(lambda: client.stats()["rate_limited"])
    assert 0.0 < client.stats()["rate_limited_for_s"] <= 1.0
    cms_emulator.configure(error_rate=0.0)
    assert result.wait(10.0).outcome is Outcome.DELIVERED
    assert client.stats()["failed"] == 0
