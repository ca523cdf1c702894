"""Result values read both ways the vendor's users write, and the books always add up."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import cms_shipper
from cms_shipper import FlushResult, Outcome, Reason, Result, TrackResult
from cms_shipper._books.ledger import Ledger
from cms_shipper._log import RateLimitedLog
from cms_shipper.results import Tracked


def test_public_names_are_locked() -> None:
    assert sorted(cms_shipper.__all__) == [
        "CMSClient", "CMSError", "ConfigurationError", "FlushResult", "Outcome", "Reason",
        "Result", "Stats", "TrackResult", "ValidationError", "__version__",
    ]  # fmt: skip
    for name in cms_shipper.__all__:
        assert getattr(cms_shipper, name) is not None


def test_result_is_a_read_only_mapping_and_an_object() -> None:
    result = Result(success=False, status_code=422, error="amount: cents", details={"amount": "x"})
    assert result.success is False and result["success"] is False
    assert result.get("status_code") == 422 and result.get("nope", "d") == "d"
    assert dict(result)["error"] == "amount: cents"
    assert "success" in result and len(result) == len(list(result))
    assert result == {**dict(result)}
    with pytest.raises(KeyError):
        result["event"]  # the event is an attribute, not part of the printed dict
    with pytest.raises(TypeError):
        result["success"] = True  # type: ignore[index]
    assert repr(result).startswith("{'success': False")


def test_enums_print_as_their_values() -> None:
    result = Result(success=True, outcome=Outcome.DELIVERED, reason=Reason.ACCEPTED)
    assert result.to_dict()["outcome"] == "delivered"
    assert "'delivered'" in repr(result)
    assert result == {**result.to_dict()}


def test_flush_result_is_truthy_only_when_nothing_is_pending() -> None:
    done = FlushResult(1, 0, 0, 0, 0, pending=0, timed_out=False)
    waiting = FlushResult(1, 0, 0, 0, 0, pending=2, timed_out=True)
    assert done and not waiting


def _tracked(ledger: Ledger) -> TrackResult:
    item = Tracked(None)
    ledger.admit(item)
    return TrackResult(item, ledger, success=True, message="queued", event_id="e")


def _final(outcome: Outcome, reason: Reason, status: Any = None) -> Result:
    return Result(success=outcome is Outcome.DELIVERED, status_code=status, outcome=outcome,
                  reason=reason)  # fmt: skip


def test_ledger_resolves_once_and_counts_add_up() -> None:
    ledger = Ledger()
    first, second, third = (_tracked(ledger) for _ in range(3))
    assert ledger.resolve(first._item, _final(Outcome.DELIVERED, Reason.ACCEPTED, 200))
    assert not ledger.resolve(first._item, _final(Outcome.DROPPED, Reason.SHUTDOWN))  # first wins
    assert ledger.resolve(second._item, _final(Outcome.REJECTED, Reason.HTTP_ERROR, 401))
    ledger.record(_final(Outcome.REJECTED, Reason.INVALID, 422))
    snap = ledger.tally()
    assert snap["tracked"] == 4 and snap["pending"] == 1
    outcomes = sum(snap[o.value] for o in Outcome)
    assert outcomes + snap["pending"] == snap["tracked"]
    assert snap["reasons"]["rejected"] == {"http_error": 1, "invalid": 1}
    assert snap["status_codes"] == {"200": 1, "401": 1, "422": 1}
    assert first.final is not None and first.final.outcome is Outcome.DELIVERED
    assert third.done() is False


def test_flush_waits_only_for_events_before_its_mark() -> None:
    ledger = Ledger()
    old = _tracked(ledger)
    mark = ledger.mark()
    newer = _tracked(ledger)
    assert ledger.wait_for(mark, deadline=0.0) == 1  # deadline already passed
    threading.Timer(
        0.05, ledger.resolve, (old._item, _final(Outcome.DELIVERED, Reason.ACCEPTED))
    ).start()
    assert ledger.wait_for(mark, deadline=None) == 0
    assert not newer.done()


def test_wait_returns_the_final_result_or_a_pending_answer() -> None:
    ledger = Ledger()
    result = _tracked(ledger)
    pending = result.wait(0.01)
    assert (
        pending.success is False and pending.outcome is None and "pending" in (pending.error or "")
    )
    final = _final(Outcome.DELIVERED, Reason.ACCEPTED, 200)
    threading.Timer(0.05, ledger.resolve, (result._item, final)).start()
    assert result.wait(30.0) is final


def test_rate_limited_log_counts_suppressed_repeats(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="cms_shipper"):
        for _ in range(5):
            log.log(30, "k", "queue full")
        log.log(30, "other", "different")
        now[0] = 61.0
        log.log(30, "k", "queue full")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "queue full",
        "different",
        "queue full (4 similar messages suppressed in the last 61 s)",
    ]


def test_server_text_reaches_results_bounded_and_on_one_line() -> None:
    from cms_shipper._books.outcomes import from_reply
    from cms_shipper._engine.transport import MAX_ERROR_TEXT, Reply
    from cms_shipper._events.build import build_lead

    event = build_lead("evt_1", 0.0, event_name="signup", customer_external_id="u1")
    body = {
        "success": False,
        "error": "x" * 20_000_000 + "\nINFO forged log line",
        "details": {f"field{i}": "bad\n" * 1000 for i in range(100)},
    }
    final = from_reply(event, Reply(422, body), Outcome.REJECTED, Reason.HTTP_ERROR, 1)
    assert len(final.error or "") <= MAX_ERROR_TEXT and "\n" not in (final.error or "")
    details = final.details or {}
    assert len(details) == 20 and all(len(v) <= 200 and "\n" not in v for v in details.values())
