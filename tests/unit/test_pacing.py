"""The gate: blackout after 429 and even pacing, on a fake clock."""

from __future__ import annotations

import threading

from cms_shipper._pacing import Gate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AdvancingStop(threading.Event):
    """A stop event whose wait() advances the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(round(timeout, 6))
        self.clock.now += timeout
        return self.is_set()


def test_open_gate_passes_without_waiting() -> None:
    clock = FakeClock()
    gate = Gate(None, clock=clock)
    stop = AdvancingStop(clock)
    assert all(gate.pass_through(stop) for _ in range(100))
    assert stop.waits == []


def test_pacing_spaces_requests_evenly() -> None:
    clock = FakeClock()
    gate = Gate(120, clock=clock)  # one every 0.5 s
    stop = AdvancingStop(clock)
    for _ in range(4):
        assert gate.pass_through(stop)
    assert stop.waits == [0.5, 0.5, 0.5]
    assert clock.now == 1001.5


def test_blackout_holds_everyone_and_only_extends() -> None:
    clock = FakeClock()
    gate = Gate(None, clock=clock)
    gate.block_for(30.0)
    gate.block_for(5.0)  # a shorter answer later does not shorten the pause
    assert gate.blocked_for() == 30.0
    stop = AdvancingStop(clock)
    assert gate.pass_through(stop)
    assert stop.waits == [30.0]
    assert gate.blocked_for() == 0.0


def test_stop_ends_the_wait() -> None:
    clock = FakeClock()
    gate = Gate(None, clock=clock)
    gate.block_for(3600.0)
    stop = AdvancingStop(clock)
    stop.set()
    assert gate.pass_through(stop) is False
