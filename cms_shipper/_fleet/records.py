"""An event as the fleet queue holds it: ``origin \\n event id \\n tracked_us \\n JSON``.

``tracked_us`` is when ``track_*`` accepted it (whole microseconds of the tracking host's
clock): the fleet keeps each customer's events in that order (``scripts.PUSH``). The JSON
carries what the on-disk spool carries (endpoint, wire fields, tracking time, the
caller's timestamp), never the token. ``origin`` is the member that tracked the event and
waits for its outcome; empty once nobody does.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from cms_shipper._events import Event

__all__ = ["Record", "decode", "encode", "tracked_us"]


class Record(NamedTuple):
    """A decoded entry of the fleet queue."""

    origin: str
    event: Event


def tracked_us(event: Event) -> int:
    """When ``event`` was tracked, in whole microseconds since the epoch."""
    return int(event.tracked_at * 1_000_000)


def encode(origin: str, event: Event) -> str:
    """The queue entry for ``event`` tracked by ``origin``."""
    body = json.dumps(
        [event.endpoint, event.payload, event.tracked_at, event.timestamp],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{origin}\n{event.event_id}\n{tracked_us(event)}\n{body}"


def decode(raw: bytes) -> Record:
    """The entry back; raises ``ValueError`` (or ``KeyError``) for one that is not ours."""
    origin, event_id, _, body = raw.decode("utf-8").split("\n", 3)
    endpoint, payload, tracked_at, timestamp = json.loads(body)
    return Record(origin, Event.of(event_id, endpoint, payload, float(tracked_at), timestamp))
