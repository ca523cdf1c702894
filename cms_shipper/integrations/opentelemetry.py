"""OpenTelemetry metrics: the client's ``stats()`` as observable instruments.

    from cms_shipper.integrations.opentelemetry import instrument
    metrics = instrument(client)                  # the global MeterProvider, or pass one
    ...
    metrics.close()                               # optional: stop reporting this client

Needs ``opentelemetry-api`` (``pip install 'cms-shipper[otel]'``); the package itself never
imports it. Nothing is recorded on the hot path: at each collection the first instrument's
callback takes one ``client.stats()`` snapshot and every other instrument reads from it.
Callbacks never raise into the SDK (a failure is logged at debug and reports nothing), and
the bridge holds the client only by a weak reference.

The OpenTelemetry API cannot unregister a callback, and a meter hands back an instrument
already created under the same name. So the instruments of one meter (per provider and
meter name) are created once and observe every live ``Instrumentation`` on it: ``close()``
leaves that set, and a later ``instrument()`` on the same provider joins it. Two clients
on one meter need different ``attributes`` to tell their data points apart.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # the bridge is optional: say how to get what it needs
    raise ImportError(
        "cms_shipper.integrations.opentelemetry needs opentelemetry-api: "
        "pip install 'cms-shipper[otel]'",
        name=exc.name,
    ) from exc

from cms_shipper._log import logger
from cms_shipper._version import __version__
from cms_shipper.client import CMSClient

__all__ = ["CIRCUIT_STATE", "OUTCOME", "REASON", "STATUS_CODE", "Instrumentation", "instrument"]

OUTCOME = "cms_shipper.outcome"
REASON = "cms_shipper.reason"
CIRCUIT_STATE = "cms_shipper.circuit.state"
STATUS_CODE = "http.response.status_code"
_RESERVED = frozenset({OUTCOME, REASON, CIRCUIT_STATE, STATUS_CODE})
_CIRCUIT_STATES = ("closed", "probing", "open")
# Only a fallback for SDKs that do not run callbacks in registration order (the
# Python SDK does): a snapshot older than this is taken again by whichever callback runs.
_MAX_AGE_S = 0.25

_Attrs = dict[str, AttributeValue]
_Points = Callable[[Mapping[str, Any]], Iterable[tuple[Union[int, float], _Attrs]]]


class _Spec(NamedTuple):
    kind: Literal["counter", "updown", "gauge"]
    name: str
    unit: str
    description: str
    points: _Points


def _key(key: str) -> _Points:
    return lambda stats: [(int(stats[key]), {})]


def _outcomes(stats: Mapping[str, Any]) -> Iterator[tuple[int, _Attrs]]:
    for outcome, reasons in stats["reasons"].items():
        for reason, count in reasons.items():
            yield count, {OUTCOME: outcome, REASON: reason}


def _statuses(stats: Mapping[str, Any]) -> Iterator[tuple[int, _Attrs]]:
    for code, count in stats["status_codes"].items():
        yield count, {STATUS_CODE: int(code)}


def _fleet(key: str, value: Callable[[Any], int] = int) -> _Points:
    """A figure of fleet mode's view; no point at all without fleet mode."""

    def points(stats: Mapping[str, Any]) -> list[tuple[int, _Attrs]]:
        fleet = stats.get("fleet")
        return [] if fleet is None else [(value(fleet[key]), {})]

    return points


def _circuit(stats: Mapping[str, Any]) -> Iterator[tuple[int, _Attrs]]:
    for state in _CIRCUIT_STATES:
        yield int(stats["circuit"] == state), {CIRCUIT_STATE: state}


# The first one refreshes the snapshot for the others (see _Hub).
_INSTRUMENTS = (
    _Spec(
        "counter",
        "cms_shipper.event.outcomes",
        "{event}",
        "Events by final outcome and reason",
        _outcomes,
    ),
    _Spec(
        "counter",
        "cms_shipper.event.tracked",
        "{event}",
        "Events tracked by this client",
        _key("tracked"),
    ),
    _Spec(
        "counter",
        "cms_shipper.event.replayed",
        "{event}",
        "Events replayed from the spool",
        _key("replayed"),
    ),
    _Spec(
        "counter",
        "cms_shipper.event.responses",
        "{event}",
        "Events by the HTTP status of their final answer",
        _statuses,
    ),
    _Spec(
        "updown",
        "cms_shipper.event.pending",
        "{event}",
        "Events without a final outcome yet",
        _key("pending"),
    ),
    _Spec(
        "updown",
        "cms_shipper.queue.size",
        "{event}",
        "Events waiting in the queue to be scheduled",
        _key("queue_depth"),
    ),
    _Spec(
        "updown",
        "cms_shipper.event.scheduled",
        "{event}",
        "Events taken by the scheduler: waiting their turn, parked or in flight",
        _key("scheduled"),
    ),
    _Spec(
        "updown",
        "cms_shipper.event.inflight",
        "{event}",
        "Events being sent right now",
        _key("in_flight"),
    ),
    _Spec(
        "updown",
        "cms_shipper.circuit.status",
        "1",
        "1 for the circuit's current state, 0 for the others",
        _circuit,
    ),
    _Spec(
        "updown",
        "cms_shipper.rate_limit.active",
        "1",
        "1 while the API's rate limit pauses sending",
        _key("rate_limited"),
    ),
    _Spec(
        "gauge",
        "cms_shipper.rate_limit.remaining",
        "s",
        "Until the rate-limit pause ends or the next probe",
        lambda stats: [(float(stats["rate_limited_for_s"]), {})],
    ),
    _Spec(
        "counter",
        "cms_shipper.request.uncharged",
        "{request}",
        "Failed requests blamed on the API, charged to no event",
        _key("uncharged_attempts"),
    ),
    _Spec(
        "counter",
        "cms_shipper.spool.write_ahead_misses",
        "{event}",
        "Events the spool could not store ahead in time (kept in memory)",
        _key("spool_write_ahead_misses"),
    ),
    _Spec(
        "counter",
        "cms_shipper.spool.errors",
        "{event}",
        "Events whose spool row alone failed",
        _key("spool_errors"),
    ),
    _Spec(
        "counter",
        "cms_shipper.spool.settle_misses",
        "{batch}",
        "Batches the spool was too busy to take in time",
        _key("spool_settle_misses"),
    ),
    _Spec(
        "updown",
        "cms_shipper.fleet.link.up",
        "1",
        "Fleet mode: 1 while the link to Redis is up",
        _fleet("link", lambda link: int(link == "up")),
    ),
    _Spec(
        "gauge",
        "cms_shipper.fleet.members",
        "{process}",
        "Fleet mode: live members of the fleet (refreshed every second)",
        _fleet("members"),
    ),
    _Spec(
        "gauge",
        "cms_shipper.fleet.queue.size",
        "{event}",
        "Fleet mode: events in the fleet's queue in Redis (refreshed every second)",
        _fleet("queue_depth"),
    ),
    _Spec(
        "updown",
        "cms_shipper.fleet.paused",
        "1",
        "Fleet mode: 1 while the fleet is paused (rate limited or the API away)",
        _fleet("paused_by", lambda by: int(by is not None)),
    ),
    _Spec(
        "counter",
        "cms_shipper.fleet.delivered_for_others",
        "{event}",
        "Fleet mode: events this process delivered for another live member",
        _fleet("delivered_for_others"),
    ),
)


class Instrumentation:
    """One client reported through one meter; ``close()`` stops its reports."""

    def __init__(self, client: CMSClient, hub: _Hub, attributes: _Attrs) -> None:
        self._client = weakref.ref(client)  # metrics must never keep a client alive
        self._hub = hub
        self._attributes = attributes
        self._lock = threading.Lock()  # collections by two readers may overlap
        self._stats: Optional[Mapping[str, Any]] = None
        self._taken_at = 0.0
        self._closed = False

    @property
    def attributes(self) -> dict[str, AttributeValue]:
        """The attributes added to every data point of this client."""
        return dict(self._attributes)

    @property
    def client(self) -> Optional[CMSClient]:
        """The client reported, or None once it has been garbage-collected."""
        return self._client()

    @property
    def closed(self) -> bool:
        """Whether this reports nothing more: closed, or its client is gone."""
        return self._closed or self._client() is None

    def close(self) -> None:
        """Stop reporting this client; its data points vanish from the next collection."""
        with self._lock:
            self._closed = True
            self._stats = None
        self._hub.leave(self)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_stats(self, fresh: bool) -> Optional[Mapping[str, Any]]:
        """This collection's ``stats()`` (taken anew when ``fresh``); None once closed."""
        with self._lock:
            client = self._client()
            if self._closed or client is None:
                self._stats = None
                return None
            now = time.monotonic()
            if fresh or self._stats is None or now - self._taken_at > _MAX_AGE_S:
                self._stats, self._taken_at = client.stats(), now
            return self._stats


class _Hub:
    """The instruments of one meter, observing every instrumentation that joined it."""

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._members: list[Instrumentation] = []
        for index, spec in enumerate(_INSTRUMENTS):
            callbacks = [self._callback(spec, fresh=index == 0)]
            if spec.kind == "counter":
                meter.create_observable_counter(
                    spec.name, callbacks, unit=spec.unit, description=spec.description
                )
            elif spec.kind == "updown":
                meter.create_observable_up_down_counter(
                    spec.name, callbacks, unit=spec.unit, description=spec.description
                )
            else:
                meter.create_observable_gauge(
                    spec.name, callbacks, unit=spec.unit, description=spec.description
                )

    def join(self, member: Instrumentation) -> None:
        """Add ``member``; ValueError if a live one already reports the same attributes."""
        with self._lock:
            self._members = [m for m in self._members if not m.closed]
            if any(m.attributes == member.attributes for m in self._members):
                raise ValueError(
                    f"this meter already reports a client with attributes "
                    f"{member.attributes!r}: close() that instrumentation, or pass "
                    "attributes= (e.g. {'cms_shipper.client': 'billing'}) to tell them apart"
                )
            self._members.append(member)

    def leave(self, member: Instrumentation) -> None:
        """Remove ``member`` (no-op if it already left)."""
        with self._lock:
            self._members = [m for m in self._members if m is not member]

    def _callback(
        self, spec: _Spec, *, fresh: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                members = list(self._members)
            observed: list[Observation] = []
            for member in members:
                # Metrics must never break the host's collection: report nothing instead.
                try:
                    stats = member._read_stats(fresh)
                    if stats is not None:
                        observed.extend(
                            Observation(value, {**member._attributes, **attrs})
                            for value, attrs in spec.points(stats)
                        )
                except Exception:
                    logger.debug("cms_shipper: metric %s not observed", spec.name, exc_info=True)
            return observed

        return observe


_hubs_lock = threading.Lock()
_global_hubs: dict[str, _Hub] = {}  # meter name -> hub, on the global provider
_provider_hubs: weakref.WeakKeyDictionary[MeterProvider, dict[str, _Hub]] = (
    weakref.WeakKeyDictionary()
)


def _hub_for(meter_provider: Optional[MeterProvider], meter_name: str) -> _Hub:
    """The one hub of this provider's meter (the global provider's when None)."""
    with _hubs_lock:
        try:
            hubs = (
                _global_hubs
                if meter_provider is None
                else _provider_hubs.setdefault(meter_provider, {})
            )
        except TypeError:  # a provider that cannot be weakly referenced: a hub of its own
            hubs = {}
        hub = hubs.get(meter_name)
        if hub is None:
            meter = metrics.get_meter(meter_name, __version__, meter_provider)
            hub = hubs[meter_name] = _Hub(meter)
        return hub


def instrument(
    client: CMSClient,
    meter_provider: Optional[MeterProvider] = None,
    *,
    meter_name: str = "cms_shipper",
    attributes: Optional[Mapping[str, AttributeValue]] = None,
) -> Instrumentation:
    """Report ``client.stats()`` through observable instruments of ``meter_provider``.

    ``meter_provider`` None means the global one (set before or after this call).
    ``attributes`` are added to every data point, to tell clients on one meter apart.
    Raises ValueError if ``attributes`` use the bridge's own names, or if a live
    instrumentation on the same meter already has the same ``attributes``.
    """
    extra: _Attrs = dict(attributes or {})
    clash = _RESERVED.intersection(extra)
    if clash:
        raise ValueError(f"attributes: {sorted(clash)} are the bridge's own, use other names")
    hub = _hub_for(meter_provider, meter_name)
    member = Instrumentation(client, hub, extra)
    hub.join(member)
    return member
