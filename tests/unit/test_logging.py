"""Log lines: one per kind of problem, repeats counted, rejections name field and rule."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cms_shipper._books.outcomes import Reporter, from_reply, invalid
from cms_shipper._config import Settings
from cms_shipper._engine.transport import Reply
from cms_shipper._events.build import Event, build_lead, build_sale
from cms_shipper._log import MAX_KINDS, RateLimitedLog
from cms_shipper.emulator._validation import validate
from cms_shipper.errors import ValidationError
from cms_shipper.results import Outcome, Reason, Result

LOGGER = "cms_shipper"


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _limited(clock: Clock, **options: Any) -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger(LOGGER), interval_s=60.0, clock=clock, **options)


# --- RateLimitedLog ------------------------------------------------------------------


def test_first_of_each_kind_is_logged_and_repeats_are_counted_on_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = _limited(clock)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(5):
        log.log(logging.WARNING, ("a",), "problem a")
    clock.now = 10.0
    log.log(logging.WARNING, ("b",), "problem b")  # another kind: its own first line
    clock.now = 75.0
    log.log(logging.WARNING, ("a",), "problem a")  # 4 suppressed since the line at 0 s
    log.log(logging.WARNING, ("b",), "problem b")  # 65 s after its line; nothing suppressed
    assert _lines(caplog) == [
        "problem a",
        "problem b",
        "problem a (4 similar messages suppressed in the last 75 s)",
        "problem b",
    ]


def test_the_count_restarts_after_it_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = _limited(clock)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log.log(logging.WARNING, "k", "x=%d", 1)
    log.log(logging.WARNING, "k", "x=%d", 2)
    clock.now = 60.0
    log.log(logging.WARNING, "k", "x=%d", 3)
    log.log(logging.WARNING, "k", "x=%d", 4)
    log.log(logging.WARNING, "k", "x=%d", 5)
    clock.now = 200.0
    log.log(logging.WARNING, "k", "x=%d", 6)
    clock.now = 300.0
    log.log(logging.WARNING, "k", "x=%d", 7)
    assert _lines(caplog) == [
        "x=1",
        "x=3 (1 similar message suppressed in the last 60 s)",
        "x=6 (2 similar messages suppressed in the last 140 s)",
        "x=7",
    ]


def test_a_disabled_level_neither_logs_nor_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = _limited(clock)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        log.log(logging.DEBUG, "k", "chatter")
    log.log(logging.WARNING, "k", "problem")
    assert _lines(caplog) == ["problem"]


def test_a_full_table_counts_new_kinds_under_their_overflow_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = _limited(clock, max_keys=3)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for i in range(1000):  # a hostile stream of distinct fields
        log.log(logging.WARNING, ("rejected", f"field{i}"), "bad field%d", i, overflow_key="other")
    assert len(log._last) <= 3
    # field0..2 fill the table; field3 is the first line of the overflow kind (it takes
    # field0's place), and every later field is a repeat of it.
    assert _lines(caplog) == ["bad field0", "bad field1", "bad field2", "bad field3"]
    clock.now = 61.0
    log.log(logging.WARNING, ("rejected", "new"), "bad new", overflow_key="other")
    assert _lines(caplog)[-1] == "bad new"  # expired kinds with nothing to report made room
    log.log(logging.WARNING, ("rejected", "field1"), "bad field1 again", overflow_key="other")
    assert _lines(caplog)[-1] == "bad field1 again"
    log.log(logging.WARNING, ("rejected", "newer"), "bad newer", overflow_key="other")
    assert _lines(caplog)[-1] == "bad newer (996 similar messages suppressed in the last 61 s)"
    assert len(log._last) <= 3


def test_without_an_overflow_key_the_kind_logged_longest_ago_is_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = _limited(clock, max_keys=2)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for key in ("a", "b", "c", "a"):  # c evicts a, so a is new again
        log.log(logging.WARNING, key, key)
    assert _lines(caplog) == ["a", "b", "c", "a"]
    assert len(log._last) == 2


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 30), st.floats(0.0, 40.0, allow_nan=False)), max_size=300
    ),
    max_keys=st.integers(1, 8),
)
def test_memory_stays_bounded_and_after_a_flush_every_call_is_accounted_for(
    steps: list[tuple[int, float]], max_keys: int
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("cms_shipper.test_logging.property")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    handler = Keep()
    logger.addHandler(handler)
    try:
        clock = Clock()
        log = RateLimitedLog(logger, interval_s=60.0, clock=clock, max_keys=max_keys)
        for key, step in steps:
            clock.now += step
            log.log(logging.WARNING, key, "kind %d", key, overflow_key=-1)
            assert len(log._last) <= max_keys
            assert len(log._held) <= max_keys
        if len({key for key, _ in steps}) <= max_keys:  # never full: nothing evicted yet
            said = sum(_accounted(r) for r in records)
            log._fold()  # repeats are counted into the table lazily
            pending = sum(suppressed for _, suppressed in log._last.values())
            assert said + pending == len(steps)
        log.flush()  # close() and the exit hook: every held-back count goes out
        assert sum(_accounted(r) for r in records) == len(steps)  # evicted kinds included
        assert not log._held and all(n == 0 for _, n in log._last.values())
    finally:
        logger.removeHandler(handler)


def _accounted(record: logging.LogRecord) -> int:
    """How many ``log`` calls one line stands for: itself and the repeats it reports."""
    args = record.args if isinstance(record.args, tuple) else ()
    if "the last of" in record.msg:  # a flushed count: the repeats, this one among them
        return int(args[-3])
    return 1 + (int(args[-3]) if len(args) > 1 else 0)


def test_flush_reports_each_kind_held_back_with_its_last_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = _limited(clock)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for i in range(3):
        log.log(logging.WARNING, "a", "rejected %s", f"evt_{i}")
    log.log(logging.WARNING, "b", "failed once")
    clock.now = 7.0
    assert log.flush() == 2
    assert _lines(caplog) == [
        "rejected evt_0",
        "failed once",
        "rejected evt_2 (the last of 2 similar messages suppressed in the last 7 s)",
    ]
    assert log.flush() == 0  # said once: nothing more to report
    assert len(_lines(caplog)) == 3


# --- Reporter ------------------------------------------------------------------------


def _reporter(**options: Any) -> Reporter:
    return Reporter(Settings(token=None, host="http://127.0.0.1:9", **options))


def _refused(build: Callable[[], Event]) -> Result:
    with pytest.raises(ValidationError) as caught:
        build()
    return invalid(caught.value)


def _float_amount(amount: float = 49.99) -> Callable[[], Event]:
    return lambda: build_sale(
        "evt_1", 0.0, event_name="purchase", customer_external_id="u1", invoice_id="inv1",
        amount=amount, currency="USD",
    )  # fmt: skip


def _bad_email(email: str = "nope") -> Callable[[], Event]:
    return lambda: build_lead(
        "evt_2", 0.0, event_name="signup", customer_external_id="u2", customer_email=email
    )


def test_each_kind_of_invalid_event_gets_its_own_line(caplog: pytest.LogCaptureFixture) -> None:
    reporter = _reporter()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for i in range(100):  # texts differ (the value is quoted), kinds do not
        reporter.report(_refused(_float_amount(49.99 + i)), inline=True)
        reporter.report(_refused(_bad_email(f"nope{i}")), inline=True)
    assert _lines(caplog) == [
        "invalid event - rejected (invalid, HTTP 422): amount: must be an int number of cents "
        "from 0 to 9007199254740991, got float 49.99 (for 49.99 send 4999)",
        "invalid event - rejected (invalid, HTTP 422): "
        "customer_email: must look like an email address (name@domain.tld)",
    ]  # the rule is the error text already: it is not said twice
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_repeats_of_a_kind_are_reported_on_its_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter = Reporter(Settings(token=None, host="http://127.0.0.1:9"), _limited(clock))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(100):
        reporter.report(_refused(_float_amount()), inline=True)
    reporter.report(_refused(_bad_email()), inline=True)
    clock.now = 90.0
    reporter.report(_refused(_bad_email()), inline=True)
    reporter.report(_refused(_float_amount()), inline=True)
    suffixes = [line.partition("(for 49.99 send 4999)")[2] for line in _lines(caplog)]
    assert suffixes == ["", "", "", " (99 similar messages suppressed in the last 90 s)"]


def _server_rejection(payload: dict[str, Any]) -> Result:
    """The result of the emulator's real 422 answer to ``payload`` (a sale)."""
    event = build_sale(
        "evt_9", 0.0, event_name="purchase", customer_external_id="u9", invoice_id="inv9",
        amount=4999, currency="USD",
    )  # fmt: skip
    details = validate("sale", payload)
    assert details, "the payload must break an emulator rule"
    body = {"success": False, "error": "Validation failed", "type": "validation_error",
            "statusCode": 422, "details": details}  # fmt: skip
    return from_reply(event, Reply(422, body), Outcome.REJECTED, Reason.HTTP_ERROR, 1)


_SALE = {"eventName": "purchase", "customerExternalId": "u9", "invoiceId": "inv9",
         "amount": 4999, "currency": "USD"}  # fmt: skip


def test_a_server_rejection_names_the_field_and_rule(caplog: pytest.LogCaptureFixture) -> None:
    reporter = _reporter()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    reporter.report(_server_rejection({**_SALE, "amount": 49.99}), inline=True)
    reporter.report(_server_rejection({**_SALE, "amount": 1.5, "currency": "usd"}), inline=True)
    reporter.report(_server_rejection({**_SALE, "amount": 2.5}), inline=True)  # a repeat
    assert _lines(caplog) == [
        "sale event evt_9 rejected (http_error, HTTP 422): Validation failed: "
        "amount: must be a non-negative integer (cents)",
        "sale event evt_9 rejected (http_error, HTTP 422): Validation failed: "
        "amount: must be a non-negative integer (cents); "
        "currency: must be 3 upper-case letters (ISO 4217)",
    ]


def test_a_hostile_stream_of_field_names_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(clock=Clock())
    reporter = Reporter(Settings(token=None, host="http://127.0.0.1:9"), log)
    event = build_lead("evt_h", 0.0, event_name="signup", customer_external_id="uh")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for i in range(3 * MAX_KINDS):
        body = {"success": False, "error": "Validation failed", "details": {f"f{i}": "bad"}}
        final = from_reply(event, Reply(422, body), Outcome.REJECTED, Reason.HTTP_ERROR, 1)
        reporter.report(final, inline=True)
    assert len(log._last) <= MAX_KINDS
    lines = _lines(caplog)
    # One kind per field until the table is full, then one kind for all other fields.
    assert len(lines) == MAX_KINDS + 1
    assert lines[-1].endswith(f"Validation failed: f{MAX_KINDS}: bad")


def test_a_callback_that_raises_is_logged_once_per_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(result: Any) -> None:
        raise RuntimeError("boom")

    reporter = _reporter(on_error=broken, on_drop=broken)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    for _ in range(10):
        reporter.report(_refused(_float_amount()), inline=True)
        reporter.report(Result(success=False, outcome=Outcome.DROPPED), inline=True)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "the rejected callback raised; the shipper carries on",
        "the dropped callback raised; the shipper carries on",
    ]
    assert all(r.exc_info for r in errors)
