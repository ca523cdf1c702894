"""Every outcome, end to end: the real client, over loopback HTTP, against the emulator."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cms_shipper import Outcome, Reason, Result
from cms_shipper.emulator import Emulator

from .conftest import TOKEN, ClientFactory, adds_up, unused_port, wait_until


def test_lead_and_sale_are_delivered_with_the_server_answer(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    succeeded: list[Result] = []
    client = make_client(on_success=succeeded.append)
    lead = client.track_lead(
        "signup_started", "user_42", click_id="clk_1", customer_name="Jane Doe",
        customer_email="jane@example.com", customer_avatar="https://example.com/a.png",
    )  # fmt: skip
    sale = client.track_sale("purchase", "user_42", "inv_1", 4999, "usd")
    assert lead.success and lead.message == "queued" and lead.event_id
    final = sale.wait(10.0)
    assert final.success and final.status_code == 200 and final.outcome is Outcome.DELIVERED
    assert final.data is not None
    assert lead.wait(10.0).status_code == 200
    events = cms_emulator.events
    assert [e.endpoint for e in events] == ["lead", "sale"]
    assert events[0].payload["customerAvatar"] == "https://example.com/a.png"
    assert events[1].payload["currency"] == "USD" and events[1].payload["amount"] == 4999
    assert events[1].payload["timestamp"].endswith("Z")
    assert wait_until(lambda: len(succeeded) == 2)
    assert {r.event_id for r in succeeded} == {lead.event_id, sale.event_id}
    stats = client.stats()
    assert stats["delivered"] == 2 and adds_up(stats)


def test_seed_code_runs_as_written(cms_emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client()
    response = client.track_lead(
        click_id="5e6e1650-5641-4a2b-bec6-218288a86dbf",
        event_name="signup_started",
        customer_external_id="user_42",
        customer_name="John Doe",
        customer_email="john@example.com",
    )
    assert response.success and response.get("success") and response["success"]
    assert "success" in str(response)
    assert client.flush(10.0)
    assert cms_emulator.events[0].payload["clickId"] == "5e6e1650-5641-4a2b-bec6-218288a86dbf"


def test_wrong_token_is_sent_once_and_the_event_waits(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    # A refused token is the client's trouble (issue 16): the event is not rejected for it.
    drops: list[Result] = []
    client = make_client(token="wrong-token", on_drop=drops.append)
    receipt = client.track_lead("signup", "u1", click_id="c1")
    assert wait_until(lambda: client.stats()["circuit"] == "unauthorized")
    assert not receipt.done() and len(cms_emulator.requests) == 1
    client.close(0.2)
    final = receipt.wait(1.0)
    assert (final.success, final.outcome, final.reason) == (False, Outcome.DROPPED, "unauthorized")
    assert wait_until(lambda: len(drops) == 1)
    assert len(cms_emulator.requests) == 1


def test_server_validation_is_rejected_with_details(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client()
    # A follow-up lead for a customer with no deferred association: the server refuses it.
    final = client.track_lead("kyc_completed", "nobody").wait(10.0)
    assert final.status_code == 422 and final.outcome is Outcome.REJECTED
    assert final.details and "clickId" in final.details
    assert len(cms_emulator.requests) == 1 and cms_emulator.events == []


def test_repeated_invoice_is_a_duplicate_not_an_error(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    errors: list[Result] = []
    client = make_client(on_error=errors.append)
    first = client.track_sale("purchase", "u1", "inv_9", 100, "EUR", click_id="c1")
    again = client.track_sale("purchase", "u1", "inv_9", 100, "EUR", click_id="c1")
    assert first.wait(10.0).outcome is Outcome.DELIVERED
    final = again.wait(10.0)
    assert (final.success, final.status_code, final.outcome) == (True, 409, Outcome.DUPLICATE)
    assert errors == [] and len(cms_emulator.events) == 1
    assert client.stats()["duplicate"] == 1


def test_connection_closed_after_record_retries_into_a_duplicate(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client()
    cms_emulator.drop_connection_after_record(1)
    final = client.track_sale("purchase", "u1", "inv_5", 100, "USD", click_id="c1").wait(10.0)
    # The server kept the sale but the answer was lost; the retry learns it is recorded.
    assert final.outcome is Outcome.DUPLICATE and final.success
    assert len(cms_emulator.events) == 1 and len(cms_emulator.requests) == 2


def test_retries_exhausted_is_failed_after_exactly_max_attempts(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(error_rate=1.0, error_status=503)
    client = make_client(retry_max_attempts=3)
    final = client.track_lead("signup", "u1", click_id="c1").wait(10.0)
    assert (final.success, final.status_code, final.outcome) == (False, 503, Outcome.FAILED)
    assert final.reason is Reason.RETRIES_EXHAUSTED and "3 attempts" in (final.error or "")
    assert len(cms_emulator.requests) == 3 and cms_emulator.events == []


def test_server_down_opens_the_circuit_and_the_event_waits(make_client: ClientFactory) -> None:
    client = make_client(host=f"http://127.0.0.1:{unused_port()}", retry_max_attempts=1)
    result = client.track_lead("signup", "u1", click_id="c1")
    assert wait_until(lambda: client.stats()["circuit"] in ("open", "probing"))
    assert wait_until(lambda: client.stats()["uncharged_attempts"] >= 2)  # probed, uncharged
    stats = client.stats()
    assert not result.done() and stats["failed"] == 0 and stats["pending"] == 1
    assert "Connection refused" in (stats["circuit_cause"] or "")
    assert "_Watched" not in stats["circuit_cause"]  # no internals in the cause
    closed = client.close(0.5)
    assert (closed.dropped, closed.pending, closed.timed_out) == (1, 0, True)
    assert result.wait(0).reason is Reason.SHUTDOWN


def test_queue_full_drops_count_and_call_back(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(latency_s=0.3)
    drops: list[Result] = []
    client = make_client(max_queue_size=3, max_concurrent_requests=1, on_drop=drops.append)
    results = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(6)]
    assert [r.success for r in results] == [True] * 3 + [False] * 3
    assert all(r.reason is Reason.QUEUE_FULL for r in results[3:])
    assert all(r.done() and r.wait(0).outcome is Outcome.DROPPED for r in results[3:])
    # on_drop runs on the callback thread, in order, not inside track_*.
    assert wait_until(lambda: len(drops) == 3)
    assert [d.event_id for d in drops] == [r.event_id for r in results[3:]]
    assert client.flush(10.0)
    stats = client.stats()
    assert (stats["delivered"], stats["dropped"]) == (3, 3) and adds_up(stats)
    assert stats["reasons"]["dropped"] == {"queue_full": 3}


def test_tracking_after_close_is_dropped_as_closed(make_client: ClientFactory) -> None:
    client = make_client()
    client.close(5.0)
    result = client.track_lead("signup", "u1", click_id="c1")
    assert result.success is False and result.reason is Reason.CLOSED
    assert client.close() is client.close()  # idempotent


def test_raising_callback_is_logged_and_the_worker_carries_on(
    cms_emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(result: Any) -> None:
        raise RuntimeError("boom in user code")

    client = make_client(on_success=explode)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        finals = [client.track_lead("signup", f"u{i}", click_id="c").wait(10.0) for i in range(3)]
        # Callbacks run on the callback thread: the log line may follow wait() by a moment.
        assert wait_until(lambda: any("callback raised" in r.getMessage() for r in caplog.records))
    assert all(f.outcome is Outcome.DELIVERED for f in finals)
    assert len(cms_emulator.events) == 3


def test_sync_mode_returns_the_final_answer(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(sync_mode=True)
    result = client.track_lead("signup", "u1", click_id="c1")
    assert result.status_code == 200 and result.outcome is Outcome.DELIVERED and result.done()
    assert len(cms_emulator.events) == 1  # already there when track_lead returned
    rejected = client.track_lead("again", "ghost")
    assert rejected.status_code == 422 and rejected.success is False


def test_the_token_never_appears_in_logs_results_or_reprs(
    cms_emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tok-" + "9f8e7d6c5b4a" * 3
    cms_emulator.configure(token=secret)
    with caplog.at_level(logging.DEBUG):
        good = make_client(token=secret)
        bad = make_client(token=secret + "x", retry_max_attempts=2)
        texts = [repr(good), repr(good.settings), str(good.stats())]
        texts += [repr(good.track_lead("s", "u1", click_id="c").wait(10.0))]
        texts += [repr(bad.track_lead("s", "u2", click_id="c").wait(10.0))]
        good.close(5.0)
    texts += [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if secret in t]
    assert secret != TOKEN


def test_aflush_and_aclose_do_not_block_the_event_loop(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    import asyncio

    cms_emulator.configure(latency_s=0.3)
    client = make_client()

    async def scenario() -> tuple[int, bool]:
        client.track_lead("s", "u1", click_id="c")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        flushed = await client.aflush(10.0)
        closed = await client.aclose(5.0)
        task.cancel()
        return ticks, bool(flushed) and bool(closed)

    ticks, ok = asyncio.run(scenario())
    assert ok and len(cms_emulator.events) == 1
    assert ticks >= 5  # the loop kept running during the 0.3 s flush
