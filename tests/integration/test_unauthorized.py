"""A refused token (401) is the client's trouble, not the event's (issue 16).

Before: every event was ``rejected`` (401) and gone, one request per event. Now sending
pauses with one ERROR line and a slow probe; the events wait, in the spool if there is
one (reason ``unauthorized``, for a process with a working token), else in memory, and
what is left at close is counted ``dropped: unauthorized``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from cms_shipper import CMSClient, Outcome
from cms_shipper._engine import health
from cms_shipper.emulator import Emulator

from .conftest import FAST, TOKEN, adds_up, wait_until


def refused(client: CMSClient) -> bool:
    return client.stats()["circuit"] == "unauthorized"


def test_without_a_spool_events_wait_and_are_dropped_unauthorized_at_close(
    cms_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    client = CMSClient(token="a-rotated-token", host=cms_emulator.url, **FAST,
                       max_concurrent_requests=2)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cms_shipper"):
        results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(20)]
        assert wait_until(lambda: refused(client), 10.0)
        assert not any(r.done() for r in results)  # none rejected: they wait
        client.close(0.5)
    finals = [r.wait(1.0) for r in results]
    assert {(f.outcome, f.reason) for f in finals} == {(Outcome.DROPPED, "unauthorized")}
    stats = client.stats()
    assert stats["reasons"]["dropped"]["unauthorized"] == 20 and adds_up(stats)
    assert len(cms_emulator.requests) <= 2  # the senders' first requests, not one per event
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "the API refused the token" in errors[0].getMessage()
    assert "a-rotated-token" not in caplog.text


def test_with_a_spool_events_wait_there_for_a_process_with_a_working_token(
    tmp_path: Path, cms_emulator: Emulator
) -> None:
    path = str(tmp_path / "spool.db")
    client = CMSClient(token="a-rotated-token", host=cms_emulator.url, spool_path=path, **FAST)
    results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(20)]
    assert wait_until(lambda: refused(client), 10.0)
    client.close(0.5)
    finals = [r.wait(1.0) for r in results]
    assert {(f.outcome, f.reason) for f in finals} == {(Outcome.SPOOLED, "unauthorized")}
    fixed = CMSClient(token=TOKEN, host=cms_emulator.url, spool_path=path, **FAST,
                      spool_replay_interval_s=0.05)  # fmt: skip
    try:
        fixed.flush(0)  # replay starts at the first event or flush
        assert cms_emulator.wait_for_events(20, timeout_s=20.0)
    finally:
        fixed.close(5.0)
    assert sorted(e.payload["eventName"] for e in cms_emulator.events) == sorted(
        f"lead-{i}" for i in range(20)
    )


def test_sending_resumes_when_the_probe_finds_the_token_accepted(
    cms_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "UNAUTHORIZED_PROBE_S", 0.2)  # the probe's wait, not 30 s
    cms_emulator.configure(token="the-new-token")  # the API has the token rotated first
    client = CMSClient(token="the-new-token-x", host=cms_emulator.url, **FAST)
    try:
        results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(10)]
        assert wait_until(lambda: refused(client), 10.0)
        cms_emulator.configure(token="the-new-token-x")  # the API accepts it again
        # While the token is refused wait() returns at once (nothing can be sent); the
        # probe then finds it accepted and the events go.
        assert wait_until(lambda: not refused(client), 10.0)
        finals = [r.wait(20.0) for r in results]
        assert [f.outcome for f in finals] == [Outcome.DELIVERED] * 10
        assert client.stats()["circuit"] == "closed"
    finally:
        client.close(5.0)


def test_a_403_stays_the_events_own_answer(cms_emulator: Emulator) -> None:
    cms_emulator.fail_customer("mallory", status=403)
    client = CMSClient(token=TOKEN, host=cms_emulator.url, **FAST)
    try:
        denied = client.track_lead("x", "mallory", click_id="k").wait(10.0)
        fine = client.track_lead("y", "bob", click_id="k").wait(10.0)
    finally:
        client.close(5.0)
    assert denied.outcome is Outcome.REJECTED and denied.status_code == 403
    assert fine.outcome is Outcome.DELIVERED


def test_close_does_not_wait_out_its_budget_for_events_a_refused_token_cannot_send(
    cms_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The README's first script: track, then close at once (the exit hook does the same).
    # The first request is answered 401 during close's flush; the flush then ends, rather
    # than wait 60 s for a token that will not be accepted meanwhile.
    options = {**FAST, "flush_interval_s": 30.0, "shutdown_timeout_s": 60.0}
    client = CMSClient(token="a-rotated-token", host=cms_emulator.url, **options)
    results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(3)]
    assert not refused(client)  # nothing sent yet: close's flush sends the first request
    with caplog.at_level(logging.WARNING, logger="cms_shipper"):
        started = time.monotonic()
        closed = client.close()
        took = time.monotonic() - started
    assert took < 30.0, took  # well before its 60 s budget
    assert closed.dropped == 3 and closed.pending == 0 and closed.timed_out and not closed
    assert {r.wait(0).reason for r in results} == {"unauthorized"}
    assert "3 event(s) not delivered at close: the API refused the token" in caplog.text
    assert "shutdown budget" not in caplog.text


def test_wait_returns_at_once_saying_the_token_is_refused(cms_emulator: Emulator) -> None:
    # The README's advice for the vendor's meaning of success is ``r.wait(10).success``: with
    # a refused token it must not sit out its timeout, and must say why nothing was sent.
    options = {**FAST, "flush_interval_s": 30.0}
    client = CMSClient(token="a-rotated-token", host=cms_emulator.url, **options)
    first = client.track_lead("lead-0", "c0", click_id="k")
    waiting = client.track_lead("lead-1", "c1", click_id="k")
    client.flush(0)  # wakes the senders: the first request is answered 401
    started = time.monotonic()
    answer = waiting.wait(60.0)
    took = time.monotonic() - started
    assert took < 30.0, took
    assert not answer.success and answer.queued and answer.outcome is None
    assert "the API refused the token (HTTP 401)" in (answer.error or ""), answer
    assert "a-rotated-token" not in repr(answer)
    # Once refused, a new wait returns at once too.
    assert "refused the token" in (first.wait(60.0).error or "")
    client.close(0)
