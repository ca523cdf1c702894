"""Every blocking call honours its deadline, whatever the server does (guarantee 5)."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator

import pytest

from cms_shipper import CMSClient, Outcome, Reason
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, ClientFactory, adds_up, wait_until

# Generous slack for a slow, noisy 2-core machine; the point is "bounded", not "fast".
SLACK_S = 2.0


def test_outage_then_recovery_delivers_everything(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.outage(status=503)
    client = make_client(retry_max_attempts=1000, retry_max_elapsed_s=60.0, retry_max_backoff_s=0.1)
    results = [client.track_lead("s", f"u{i}", click_id="c") for i in range(5)]
    # The circuit opens and probes (a request that fails then costs nothing).
    assert wait_until(lambda: client.stats()["uncharged_attempts"] >= 6, timeout_s=20.0)
    assert cms_emulator.events == [] and client.stats()["circuit"] in ("open", "probing")
    cms_emulator.end_outage()
    assert client.flush(30.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert len(cms_emulator.events) == 5


def test_connection_resets_during_an_outage_are_retried(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.outage(mode="reset")
    client = make_client(retry_max_attempts=1000, retry_max_backoff_s=0.1)
    result = client.track_lead("s", "u1", click_id="c")
    assert wait_until(lambda: len(cms_emulator.requests) >= 3)
    cms_emulator.end_outage()
    assert result.wait(30.0).outcome is Outcome.DELIVERED


def test_flush_and_close_return_by_their_deadline_against_a_hanging_server(
    cms_emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cms_emulator.configure(latency_s=30.0)
    client = make_client(read_timeout_s=60.0)
    for i in range(5):
        client.track_lead("s", f"u{i}", click_id="c")
    # Every sender's request has reached the server, which holds it.
    assert wait_until(lambda: cms_emulator.in_flight == 4, 10.0)
    started = time.monotonic()
    flushed = client.flush(0.5)
    assert time.monotonic() - started < 0.5 + SLACK_S
    assert not flushed and flushed.timed_out and flushed.pending == 5
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cms_shipper"):
        closed = client.close(0.5)
    assert time.monotonic() - started < 0.5 + SLACK_S
    assert (closed.dropped, closed.pending, closed.timed_out) == (5, 0, True) and not closed
    stats = client.stats()
    assert stats["dropped"] == 5 and stats["reasons"]["dropped"] == {"shutdown": 5}
    assert stats["pending"] == 0 and adds_up(stats)
    warnings = [r.getMessage() for r in caplog.records if "shutdown budget" in r.getMessage()]
    assert len(warnings) == 1 and "5 event(s)" in warnings[0]
    # The requests on the wire (one per sender; the others never left) may have reached it.
    assert in_flight_said(warnings[0]) == 4, warnings[0]


def in_flight_said(warning: str) -> int:
    found = re.search(r"\((\d+) were in flight and may have reached the server\)", warning)
    assert found, warning
    return int(found.group(1))


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: new connections hang in connect, never sent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):  # the kernel queues one or two; after that SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, server]:
        sock.close()


def test_the_shutdown_warning_counts_only_requests_that_were_sent(
    unanswered_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unanswered_port}",
                       **{**FAST, "connect_timeout_s": 30.0})  # fmt: skip
    for i in range(3):
        client.track_lead("s", f"u{i}", click_id="c")
    # Senders are connecting (a SYN nobody answers): in flight for the client, not sent.
    assert wait_until(lambda: client.stats()["in_flight"] >= 1, 10.0)
    with caplog.at_level(logging.WARNING, logger="cms_shipper"):
        client.close(0.5)
    warnings = [r.getMessage() for r in caplog.records if "shutdown budget" in r.getMessage()]
    assert len(warnings) == 1 and "3 event(s)" in warnings[0], warnings
    assert in_flight_said(warnings[0]) == 0


def test_wait_honours_its_deadline(cms_emulator: Emulator, make_client: ClientFactory) -> None:
    cms_emulator.configure(latency_s=30.0)
    client = make_client(read_timeout_s=60.0)
    result = client.track_lead("s", "u1", click_id="c")
    started = time.monotonic()
    answer = result.wait(0.3)
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert answer.success is False and answer.outcome is None and not result.done()


def test_retry_after_an_hour_is_capped_and_does_not_hold_flush_or_close(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(rate_limit=1, rate_limit_window_s=3600.0)
    client = make_client(
        retry_max_elapsed_s=3600 * 2, retry_max_attempts=10, max_concurrent_requests=2
    )
    first = client.track_lead("s", "u0", click_id="c")
    assert first.wait(10.0).outcome is Outcome.DELIVERED
    blocked = [client.track_lead("s", f"u{i}", click_id="c") for i in range(1, 4)]
    # Capped at max_retry_after_s (300 s by default), not an hour.
    assert wait_until(lambda: client.stats()["rate_limited_for_s"] > 250)
    assert client.stats()["rate_limited_for_s"] <= 300
    started = time.monotonic()
    assert not client.flush(0.3)
    closed = client.close(0.3)
    assert time.monotonic() - started < 0.6 + SLACK_S
    assert (closed.dropped, closed.pending, closed.timed_out) == (3, 0, True)
    assert all(r.wait(0).reason is Reason.SHUTDOWN for r in blocked)
    # The first 429 (at most one per lane, for requests already on the wire) starts a
    # shared pause: no blocked event was retried during it.
    statuses = [r.status for r in cms_emulator.requests]
    assert 1 <= statuses.count(429) <= 2 and len(statuses) == 1 + statuses.count(429)


def test_a_429_costs_the_event_no_attempt_even_past_its_retry_budget(
    cms_emulator: Emulator, make_client: ClientFactory
) -> None:
    cms_emulator.configure(rate_limit=1, rate_limit_window_s=1.5)
    client = make_client(retry_max_attempts=1, retry_max_elapsed_s=0.0)
    assert client.track_lead("s", "u0", click_id="c").wait(10.0).outcome is Outcome.DELIVERED
    final = client.track_lead("s", "u1", click_id="c").wait(10.0)
    assert final.outcome is Outcome.DELIVERED  # waited for Retry-After, then delivered
    statuses = [r.status for r in cms_emulator.requests]
    assert statuses.count(429) >= 1 and statuses.count(200) == 2
    assert client.stats()["uncharged_attempts"] == statuses.count(429)
