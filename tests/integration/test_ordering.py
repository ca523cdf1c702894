"""Per-customer order under concurrency and retries (guarantee 2)."""

from __future__ import annotations

from cms_shipper import Outcome
from cms_shipper.emulator import Emulator

from .conftest import ClientFactory, adds_up, journeys_from_threads, received_names


def test_order_holds_per_customer_across_threads_lanes_and_retries(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    # One answer in three is a 503 (not recorded), so many events are retried; a follow-up
    # that overtook its set-up would be refused (422) by the emulator, and a sale that
    # overtook its lead would show up out of order in the record.
    cms_emulator.configure(error_rate=0.33, error_status=503, seed=7)
    client = make_client(max_concurrent_requests=4, retry_max_attempts=30, batch_size=16)
    sent = journeys_from_threads(client, threads=4, customers=10, steps=3)
    assert client.flush(60.0)
    stats = client.stats()
    assert stats["delivered"] == 40 * 5 and stats["rejected"] == 0 and adds_up(stats)
    assert received_names(cms_emulator) == sent
    assert sum(1 for r in cms_emulator.requests if r.status == 503) > 20  # retries happened


def test_a_failed_event_does_not_let_later_events_of_other_customers_starve(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(max_concurrent_requests=2)
    rejected = client.track_lead("follow-up", "ghost")  # no association: 422, final
    delivered = [client.track_lead("s", f"u{i}", click_id="c") for i in range(10)]
    assert rejected.wait(10.0).outcome is Outcome.REJECTED
    assert all(r.wait(10.0).outcome is Outcome.DELIVERED for r in delivered)
