"""The API-health gate on a fake clock: rate-limit pauses, the outage circuit, charging."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cms_shipper._engine.health import MAX_PROBE_WAIT_S, OUTAGE_STREAK, HealthGate, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, **options: float) -> HealthGate:
    return HealthGate(clock=clock, wall_clock=lambda: 5.0, **options)  # type: ignore[arg-type]


def admitted(g: HealthGate) -> Ticket:
    ticket, wait = g.admit()
    assert ticket is not None, f"expected a ticket, told to wait {wait}"
    return ticket


def test_closed_gate_admits_everything() -> None:
    g = gate(Clock())
    tickets = [admitted(g) for _ in range(100)]
    assert not any(t.probe for t in tickets)
    assert g.state()["circuit"] == "closed"


def test_429_with_retry_after_pauses_everybody_until_then() -> None:
    clock = Clock()
    g = gate(clock)
    first, second = admitted(g), admitted(g)
    g.on_rate_limited(first, 30.0)
    g.on_rate_limited(second, 5.0)  # already on the wire: never shortens the pause
    ticket, wait = g.admit()
    assert ticket is None and wait == pytest.approx(30.0)
    assert g.state()["rate_limited_for_s"] == pytest.approx(30.0)
    clock.now += 30.0
    assert not admitted(g).probe  # Retry-After passed: everybody goes again
    assert g.state()["rate_limited"] is False
    assert g.paused_total() == pytest.approx(30.0)


def test_retry_after_is_capped() -> None:
    clock = Clock()
    g = gate(clock, max_retry_after_s=120.0)
    g.on_rate_limited(admitted(g), 9_999_999_999.0)
    assert g.admit() == (None, pytest.approx(120.0))


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_any_retry_after_value_is_handled_without_raising(value: float | None) -> None:
    clock = Clock()
    g = gate(clock, max_retry_after_s=300.0)
    g.on_rate_limited(admitted(g), value)
    ticket, wait = g.admit()
    if ticket is None:
        assert 0.0 < wait <= 300.0  # a finite pause, never past the cap
    else:
        # 0, negative, NaN, or too small to move the clock.
        assert value is not None and (not value > 0 or clock.now + value == clock.now)
    clock.now += 300.0
    assert g.admit()[0] is not None


def test_429_without_retry_after_probes_after_a_growing_pause() -> None:
    clock = Clock()
    g = gate(clock)
    g.on_rate_limited(admitted(g), None)
    waits = []
    for _ in range(8):
        ticket, wait = g.admit()
        assert ticket is None
        waits.append(wait)
        clock.now += wait
        probe = admitted(g)
        assert probe.probe
        assert g.admit() == (None, math.inf)  # one probe at a time
        g.on_rate_limited(probe, None)
    # 1 s doubling to 60 s (plus at most 0.25 s of jitter).
    for wait, base in zip(waits, [1, 2, 4, 8, 16, 32, 60, 60]):
        assert base <= wait <= base + 0.25
    clock.now += g.admit()[1]
    probe = admitted(g)
    assert g.on_answer(probe) is True  # the probe's success resumes sending
    assert not admitted(g).probe and g.state()["rate_limited"] is False


def test_an_old_request_answered_during_a_rate_limit_pause_changes_nothing() -> None:
    clock = Clock()
    g = gate(clock)
    early = admitted(g)
    g.on_rate_limited(admitted(g), None)
    assert g.on_answer(early) is False  # sent before the 429: proves nothing
    assert g.admit()[0] is None


def test_unreachable_api_opens_the_circuit_at_once_and_charges_nothing() -> None:
    clock = Clock()
    g = gate(clock)
    in_flight = admitted(g)
    verdict = g.on_trouble(admitted(g), "a", 1, "ConnectionError: refused", unreachable=True)
    assert (verdict.charge, verdict.paused) == (False, True)
    assert g.on_trouble(in_flight, "b", 2, "refused", unreachable=True).charge is False
    snapshot = g.state()
    assert snapshot["circuit"] == "open" and snapshot["uncharged_attempts"] == 2
    ticket, wait = g.admit()
    assert ticket is None and 0.25 <= wait <= 0.5


def test_circuit_probes_with_capped_jittered_backoff_and_closes_on_first_answer() -> None:
    clock = Clock()
    g = gate(clock)
    g.on_trouble(admitted(g), "a", 1, "refused", unreachable=True)
    waits = []
    for _ in range(10):
        wait = g.admit()[1]
        waits.append(wait)
        clock.now += wait
        probe = admitted(g)
        assert probe.probe and g.state()["circuit"] == "probing"
        assert g.on_trouble(probe, "a", 1, "refused", unreachable=True).charge is False
    assert all(w <= MAX_PROBE_WAIT_S for w in waits)
    assert waits[-1] >= MAX_PROBE_WAIT_S / 2  # grew to the cap
    clock.now += g.admit()[1]
    assert g.on_answer(admitted(g)) is True
    assert g.state()["circuit"] == "closed"
    assert not admitted(g).probe


def test_one_customers_failures_are_its_own_and_charged() -> None:
    g = gate(Clock())
    for _ in range(20):
        assert g.on_trouble(admitted(g), "bad", 1, "HTTP 503").charge
        g.on_answer(admitted(g))  # others keep succeeding
    assert g.state()["circuit"] == "closed"


def test_failures_across_customers_are_refunded_and_then_open_the_circuit() -> None:
    g = gate(Clock())
    assert g.on_trouble(admitted(g), "a", "a-1", "HTTP 503").charge
    assert g.on_trouble(admitted(g), "a", "a-2", "HTTP 503").charge
    verdict = g.on_trouble(admitted(g), "b", "b-1", "HTTP 503")
    assert verdict.charge is False and set(verdict.refunds) == {"a-1", "a-2"}
    assert not verdict.paused
    for n in range(3, OUTAGE_STREAK):
        verdict = g.on_trouble(admitted(g), f"c{n}", n, "HTTP 503")
        assert verdict.charge is False
    assert verdict.paused and g.state()["circuit"] == "open"


def test_transitions_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    g = gate(clock)
    with caplog.at_level(logging.INFO, logger="cms_shipper"):
        tickets = [admitted(g) for _ in range(4)]
        for t in tickets:
            g.on_trouble(t, "a", 1, "ConnectionError: refused", unreachable=True)
        clock.now += g.admit()[1]
        g.on_answer(admitted(g))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("circuit opened" in m for m in messages) == 1
    assert sum("circuit closed" in m for m in messages) == 1
    assert "refused" in messages[0]


def test_pacing_spaces_requests_evenly() -> None:
    clock = Clock()
    g = gate(clock, max_requests_per_minute=120)  # one every 0.5 s
    admitted(g)
    for _ in range(3):
        ticket, wait = g.admit()
        assert ticket is None and wait == pytest.approx(0.5)
        clock.now += wait
        admitted(g)


def test_a_refused_token_pauses_everybody_and_probes_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cms_shipper._engine.health import UNAUTHORIZED_PROBE_S

    clock = Clock()
    g = gate(clock)
    first, second = admitted(g), admitted(g)
    with caplog.at_level(logging.ERROR, logger="cms_shipper"):
        g.on_unauthorized(first)
        g.on_unauthorized(second)  # already on the wire: no second line, no longer pause
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert g.refusing_token() and g.state()["circuit"] == "unauthorized"
    ticket, wait = g.admit()
    assert ticket is None and wait == pytest.approx(UNAUTHORIZED_PROBE_S)
    clock.now += wait
    probe = admitted(g)
    assert probe.probe and g.admit()[0] is None  # one probe at a time
    g.on_unauthorized(probe)  # still refused: the next probe waits twice as long
    ticket, wait = g.admit()
    assert ticket is None and wait == pytest.approx(2 * UNAUTHORIZED_PROBE_S)
    clock.now += wait
    g.on_answer(admitted(g))  # the probe got another answer: the token is accepted
    assert not g.refusing_token() and g.state()["circuit"] == "closed"
    assert not admitted(g).probe
