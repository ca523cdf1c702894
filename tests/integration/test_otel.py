"""The OpenTelemetry metrics bridge: the real client against the emulator, read back through
the SDK's in-memory reader. Every collection is checked against the ``stats()`` snapshot the
bridge itself took (a spy records it), so the assertions hold however the timing falls.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Metric, Sum

from cms_shipper import CMSClient, Outcome, Reason
from cms_shipper.emulator import Emulator
from cms_shipper.integrations.opentelemetry import (
    CIRCUIT_STATE,
    OUTCOME,
    REASON,
    STATUS_CODE,
    instrument,
)

from .conftest import FAST, TOKEN, ClientFactory, wait_until

Points = dict[tuple[tuple[str, Any], ...], Any]


class Metrics(NamedTuple):
    provider: MeterProvider
    reader: InMemoryMetricReader


@pytest.fixture
def otel() -> Iterator[Metrics]:
    """A MeterProvider of its own with an in-memory reader, shut down after the test."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Metrics(provider, reader)
    provider.shutdown()


class StatsSpy:
    """Stands in for ``client.stats``: counts calls and keeps the last snapshot."""

    def __init__(self, client: CMSClient) -> None:
        self._stats = client.stats
        self.calls = 0
        self.last: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        self.last = self._stats()
        return self.last


def spy_on(client: CMSClient, monkeypatch: pytest.MonkeyPatch) -> StatsSpy:
    spy = StatsSpy(client)
    monkeypatch.setattr(client, "stats", spy)
    return spy


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """The metrics of one collection, by name (none at all: {})."""
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def points(metric: Metric) -> Points:
    """A metric's data points: value by sorted attribute items."""
    assert isinstance(metric.data, (Sum, Gauge))
    return {
        tuple(sorted((point.attributes or {}).items())): point.value
        for point in metric.data.data_points
    }


def value(metrics: dict[str, Metric], name: str) -> Any:
    """The value of a metric that has one data point, without attributes."""
    only = points(metrics[name])
    assert list(only) == [()]
    return only[()]


def circuit_points(metrics: dict[str, Metric]) -> dict[str, int]:
    return {
        dict(k)[CIRCUIT_STATE]: v for k, v in points(metrics["cms_shipper.circuit.status"]).items()
    }


def matches(metrics: dict[str, Metric], stats: dict[str, Any]) -> None:
    """Every data point equals what ``stats`` says, and nothing more is reported."""
    outcomes = {
        ((OUTCOME, outcome), (REASON, reason)): n
        for outcome, reasons in stats["reasons"].items()
        for reason, n in reasons.items()
    }
    statuses = {((STATUS_CODE, int(code)),): n for code, n in stats["status_codes"].items()}
    for name, expected in (
        ("cms_shipper.event.outcomes", outcomes),
        ("cms_shipper.event.responses", statuses),
    ):
        assert (points(metrics[name]) if name in metrics else {}) == expected
    single = {
        "cms_shipper.event.tracked": stats["tracked"],
        "cms_shipper.event.replayed": stats["replayed"],
        "cms_shipper.event.pending": stats["pending"],
        "cms_shipper.queue.size": stats["queue_depth"],
        "cms_shipper.event.scheduled": stats["scheduled"],
        "cms_shipper.event.inflight": stats["in_flight"],
        "cms_shipper.rate_limit.active": int(stats["rate_limited"]),
        "cms_shipper.rate_limit.remaining": stats["rate_limited_for_s"],
        "cms_shipper.request.uncharged": stats["uncharged_attempts"],
        "cms_shipper.spool.write_ahead_misses": stats["spool_write_ahead_misses"],
        "cms_shipper.spool.errors": stats["spool_errors"],
        "cms_shipper.spool.settle_misses": stats["spool_settle_misses"],
    }
    assert {name: value(metrics, name) for name in single} == single
    states = {"closed": 0, "probing": 0, "open": 0, stats["circuit"]: 1}
    assert circuit_points(metrics) == states


def test_data_points_match_stats_one_snapshot_per_collection(
    cms_emulator: Emulator,
    make_client: ClientFactory,
    otel: Metrics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client()
    spy = spy_on(client, monkeypatch)
    instrument(client, otel.provider)
    results = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(3)]
    results.append(client.track_sale("sale", "u0", "inv-1", 1500, "USD"))
    bad = client.track_sale("sale", "u1", "inv-2", 49.99, "USD")  # type: ignore[arg-type]
    assert client.flush(10.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert bad.wait(0).outcome is Outcome.REJECTED and bad.wait(0).reason is Reason.INVALID
    # Outcomes are recorded just before the scheduler lets go of their events.
    assert wait_until(lambda: client.stats()["scheduled"] == 0)

    calls = spy.calls
    metrics = collect(otel.reader)
    assert spy.calls == calls + 1  # one stats() for all instruments of a collection
    matches(metrics, spy.last)
    assert points(metrics["cms_shipper.event.outcomes"]) == {
        ((OUTCOME, "delivered"), (REASON, "accepted")): 4,
        ((OUTCOME, "rejected"), (REASON, "invalid")): 1,
    }
    assert value(metrics, "cms_shipper.event.tracked") == 5
    assert value(metrics, "cms_shipper.queue.size") == 0
    assert circuit_points(metrics) == {"closed": 1, "probing": 0, "open": 0}
    matches(metrics, client.stats())  # nothing moves once flushed

    # Kinds and units as documented: counters are monotonic sums, levels are not.
    outcomes = metrics["cms_shipper.event.outcomes"]
    assert isinstance(outcomes.data, Sum) and outcomes.data.is_monotonic
    assert outcomes.unit == "{event}"
    queue = metrics["cms_shipper.queue.size"]
    assert isinstance(queue.data, Sum) and not queue.data.is_monotonic
    assert isinstance(metrics["cms_shipper.rate_limit.remaining"].data, Gauge)
    assert metrics["cms_shipper.rate_limit.remaining"].unit == "s"
    assert metrics["cms_shipper.request.uncharged"].unit == "{request}"

    # The next collection takes a fresh snapshot: new events show at once.
    assert client.track_lead("signup", "u9", click_id="c").wait(10.0).success
    assert wait_until(lambda: client.stats()["scheduled"] == 0)
    calls = spy.calls
    metrics = collect(otel.reader)
    assert spy.calls == calls + 1
    matches(metrics, spy.last)
    assert value(metrics, "cms_shipper.event.tracked") == 6


def test_an_outage_shows_the_circuit_open_then_closed(
    cms_emulator: Emulator,
    make_client: ClientFactory,
    otel: Metrics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client()
    spy = spy_on(client, monkeypatch)
    instrument(client, otel.provider)
    cms_emulator.outage(None, mode="refuse")
    result = client.track_lead("signup", "u1", click_id="c")
    assert wait_until(lambda: circuit_points(collect(otel.reader))["closed"] == 0)
    metrics = collect(otel.reader)
    matches(metrics, spy.last)
    assert spy.last["circuit"] in ("open", "probing")  # probing: open, one probe out
    assert circuit_points(metrics)[spy.last["circuit"]] == 1
    assert value(metrics, "cms_shipper.event.pending") == 1
    assert value(metrics, "cms_shipper.request.uncharged") >= 1  # the API's fault, not u1's

    cms_emulator.end_outage()
    assert result.wait(30.0).outcome is Outcome.DELIVERED
    assert wait_until(lambda: circuit_points(collect(otel.reader))["closed"] == 1)
    metrics = collect(otel.reader)
    matches(metrics, spy.last)
    assert value(metrics, "cms_shipper.event.pending") == 0


def test_a_rate_limit_shows_as_active_with_its_pause(
    cms_emulator: Emulator,
    make_client: ClientFactory,
    otel: Metrics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cms_emulator.configure(rate_limit=1, rate_limit_window_s=2.0)  # 429 with Retry-After
    client = make_client(retry_max_attempts=10, retry_max_elapsed_s=30.0)
    spy = spy_on(client, monkeypatch)
    instrument(client, otel.provider)
    results = [client.track_lead("signup", f"u{i}", click_id="c") for i in range(3)]
    assert wait_until(lambda: value(collect(otel.reader), "cms_shipper.rate_limit.active") == 1)
    metrics = collect(otel.reader)
    matches(metrics, spy.last)
    assert spy.last["rate_limited"] is True
    assert 0.0 <= value(metrics, "cms_shipper.rate_limit.remaining") <= 3.0
    assert client.flush(30.0)
    assert all(r.wait(0).outcome is Outcome.DELIVERED for r in results)
    assert wait_until(lambda: value(collect(otel.reader), "cms_shipper.rate_limit.active") == 0)


def test_after_close_the_callbacks_report_nothing(
    cms_emulator: Emulator, make_client: ClientFactory, otel: Metrics
) -> None:
    client = make_client()
    assert client.track_lead("signup", "u1", click_id="c").wait(10.0).success
    with instrument(client, otel.provider) as metrics:
        assert value(collect(otel.reader), "cms_shipper.event.tracked") == 1
    assert metrics.closed
    metrics.close()  # idempotent
    assert collect(otel.reader) == {}
    # A meter cannot forget its instruments; a new instrumentation on it reports again.
    again = instrument(client, otel.provider)
    assert value(collect(otel.reader), "cms_shipper.event.tracked") == 1
    again.close()
    assert collect(otel.reader) == {}


def test_two_clients_on_one_meter_need_their_own_attributes(
    cms_emulator: Emulator, make_client: ClientFactory, otel: Metrics
) -> None:
    billing, signup = make_client(), make_client()
    assert billing.track_lead("a", "u1", click_id="c").wait(10.0).success
    for i in range(2):
        assert signup.track_lead("b", f"u{i}", click_id="c").wait(10.0).success
    instrument(billing, otel.provider, attributes={"app.client": "billing"})
    instrument(signup, otel.provider, attributes={"app.client": "signup"})
    with pytest.raises(ValueError, match="tell them apart"):
        instrument(signup, otel.provider, attributes={"app.client": "signup"})
    with pytest.raises(ValueError, match="attributes"):
        instrument(signup, otel.provider, attributes={OUTCOME: "x"})
    tracked = points(collect(otel.reader)["cms_shipper.event.tracked"])
    assert tracked == {(("app.client", "billing"),): 1, (("app.client", "signup"),): 2}


def test_a_failing_stats_reports_nothing_and_never_raises(
    cms_emulator: Emulator,
    make_client: ClientFactory,
    otel: Metrics,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    instrument(client, otel.provider)

    def broken() -> dict[str, Any]:
        raise RuntimeError("stats broke")

    monkeypatch.setattr(client, "stats", broken)
    with caplog.at_level(logging.DEBUG):
        assert collect(otel.reader) == {}
    ours = [r for r in caplog.records if r.name == "cms_shipper"]
    assert ours and all(r.levelno == logging.DEBUG for r in ours)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # SDK kept quiet
    monkeypatch.undo()
    assert value(collect(otel.reader), "cms_shipper.event.tracked") == 0


def test_the_bridge_does_not_keep_the_client_alive(cms_emulator: Emulator, otel: Metrics) -> None:
    client = CMSClient(token=TOKEN, host=cms_emulator.url, **FAST)
    metrics = instrument(client, otel.provider)
    assert client.track_lead("signup", "u1", click_id="c").wait(10.0).success
    assert value(collect(otel.reader), "cms_shipper.event.tracked") == 1
    client.close(5.0)
    alive = weakref.ref(client)
    del client
    gc.collect()
    assert alive() is None and metrics.client is None and metrics.closed
    assert collect(otel.reader) == {}


def test_importing_without_opentelemetry_says_how_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"  # as if opentelemetry-api were not installed
        "import cms_shipper, cms_shipper.integrations\n"  # the package never needs it
        "import cms_shipper.integrations.opentelemetry\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and "pip install 'cms-shipper[otel]'" in last
