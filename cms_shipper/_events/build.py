"""Build and validate events in the caller's thread, before anything is queued.

Validation is total: for any value of any type in any argument, ``build_lead`` and
``build_sale`` either return an ``Event`` or raise ``ValidationError(field, rule)``, where
``field`` is the snake_case argument (``customer_email``, not ``customerEmail``); no other
exception escapes. Of the caller's code only a tzinfo's ``utcoffset`` and, for a message, the
``__repr__`` of a value of no built-in type may run, and their failures are refusals; methods
a ``str``/``int``/``float``/``datetime`` subclass overrides never run (see ``_checks``).
The rules:

- Strings (``event_name``, ``customer_external_id``, ``invoice_id`` required; ``click_id``,
  ``customer_name``, ``customer_email``, ``customer_avatar`` optional, None = absent): a
  ``str`` (a subclass is stored as a plain ``str``), not blank, at most 255 characters
  (``customer_avatar``: 2048), encodable as UTF-8 (no lone surrogate).
- ``customer_email``: also matches ``name@domain.tld`` (no whitespace, one ``@``).
- ``customer_avatar``: also an http:// or https:// URL with a host name that
  ``urllib.parse.urlsplit`` parses, with a port 1-65535 if any.
- ``amount``: an ``int``, not ``bool`` (a subclass is stored as a plain ``int``), from 0 to
  9_007_199_254_740_991 (2**53 - 1, the largest integer a JSON number keeps exactly in
  JavaScript). A float is refused, with "(for 49.99 send 4999)" when that is a valid amount.
- ``currency``: three ASCII letters, sent upper-cased.
- ``mode``: None or ``"deferred"``; ``"deferred"`` needs a ``click_id``.
- ``timestamp``: None (the moment ``track_*`` ran), a ``datetime`` (naive means UTC) or an
  ISO 8601 string of at most 64 characters; converted to UTC it lies in
  [1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z). One that cannot be converted (a tzinfo that
  fails, a year out of datetime's range) is refused too. Sent as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

Messages show the caller's value on one line, cut to 60 characters (``...``), as
``<TypeName>`` when its ``__repr__`` fails, and a huge int as ``<int of about N digits>``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from cms_shipper._events.checks import (
    check_amount,
    check_avatar,
    check_currency,
    check_email,
    check_mode,
    check_text,
    check_timestamp,
)
from cms_shipper.errors import ValidationError

if TYPE_CHECKING:
    from cms_shipper.results import Result, Tracked

__all__ = ["LEAD", "SALE", "Event", "build_lead", "build_sale", "event_of", "format_timestamp"]

LEAD = "lead"
SALE = "sale"
# Compact and ASCII-only (a lone surrogate is escaped, never an encoding error).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


# The wire fields of each endpoint, in the order ``Event.values`` holds them.
_KEYS = {
    LEAD: (
        "eventName",
        "customerExternalId",
        "clickId",
        "customerName",
        "customerEmail",
        "customerAvatar",
        "mode",
    ),
    SALE: (
        "eventName",
        "customerExternalId",
        "clickId",
        "customerName",
        "customerEmail",
        "customerAvatar",
        "invoiceId",
        "amount",
        "currency",
    ),
}


class Event(NamedTuple):
    """One validated event: immutable, holds no token, safe to log and to persist.

    A backlog of these can sit in memory, so the wire fields are a tuple of values in
    ``_KEYS`` order (trailing absent ones left out) rather than a dict per event.
    """

    event_id: str
    endpoint: str  # LEAD or SALE
    customer_key: str  # customer_external_id: the unit of ordering
    values: tuple[Any, ...]  # wire field values in _KEYS[endpoint] order; None = absent
    tracked_at: float  # time.time() at the track_* call
    timestamp: Optional[str]  # caller's timestamp, normalized ISO 8601 UTC

    @classmethod
    def of(
        cls,
        event_id: str,
        endpoint: str,
        payload: dict[str, Any],
        tracked_at: float,
        timestamp: Optional[str],
    ) -> Event:
        """An event from its camelCase wire fields (as ``payload`` gives them back)."""
        values = [payload.get(key) for key in _KEYS[endpoint]]
        while values and values[-1] is None:
            values.pop()
        return cls(
            event_id, endpoint, payload["customerExternalId"], tuple(values), tracked_at, timestamp
        )

    @property
    def payload(self) -> dict[str, Any]:
        """The camelCase wire fields, without the timestamp if it was implicit."""
        return {k: v for k, v in zip(_KEYS[self.endpoint], self.values) if v is not None}

    @property
    def path(self) -> str:
        """The API path this event is POSTed to."""
        return "/track/" + self.endpoint

    def body(self) -> dict[str, Any]:
        """The JSON body; the timestamp is the caller's, else the moment track_* ran."""
        body = self.payload
        body["timestamp"] = self.timestamp or format_timestamp(self.tracked_at)
        return body

    def wire(self) -> bytes:
        """The JSON body as sent on the wire."""
        return _ENCODE(self.body()).encode("ascii")


def event_of(result: Union[Result, Tracked]) -> Event:
    """The event a queued, spooled or settled result carries (invalid input never has one)."""
    if result.event is None:
        raise TypeError("only results that carry an event are queued or spooled")
    return result.event


_SECOND: list[tuple[float, str]] = [(math.nan, "")]  # the last whole second formatted, its text


def format_timestamp(epoch_s: float) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``.

    Events sent one after the other mostly share their second: its text is formatted once
    (``datetime``'s rounding to the microsecond kept), then only the milliseconds change.
    """
    fraction, whole = math.modf(epoch_s)
    micros = round(fraction * 1e6)  # half to even, as datetime.fromtimestamp rounds
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    last, text = _SECOND[0]
    if whole != last:
        moment = datetime.fromtimestamp(whole, tz=timezone.utc)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _SECOND[0] = (whole, text)  # one tuple: whole and text always belong together
    return f"{text}{micros // 1000:03d}Z"


def _common(
    event_name: Any,
    customer_external_id: Any,
    click_id: Any,
    customer_name: Any,
    customer_email: Any,
    customer_avatar: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventName": check_text("event_name", event_name, required=True),
        "customerExternalId": check_text(
            "customer_external_id", customer_external_id, required=True
        ),
    }
    optional = {
        "clickId": check_text("click_id", click_id, required=False),
        "customerName": check_text("customer_name", customer_name, required=False),
        "customerEmail": check_email(customer_email),
        "customerAvatar": check_avatar(customer_avatar),
    }
    payload.update((key, value) for key, value in optional.items() if value is not None)
    return payload


def build_lead(
    event_id: str,
    tracked_at: float,
    *,
    event_name: Any,
    customer_external_id: Any,
    click_id: Any = None,
    customer_name: Any = None,
    customer_email: Any = None,
    customer_avatar: Any = None,
    timestamp: Any = None,
    mode: Any = None,
) -> Event:
    """Validate a lead; raise ``ValidationError`` naming the first bad field."""
    payload = _common(
        event_name, customer_external_id, click_id, customer_name, customer_email, customer_avatar
    )
    if mode is not None:
        payload["mode"] = check_mode(mode)
        if "clickId" not in payload:
            raise ValidationError("click_id", 'is required when mode="deferred"')
    return Event.of(event_id, LEAD, payload, tracked_at, check_timestamp(timestamp))


def build_sale(
    event_id: str,
    tracked_at: float,
    *,
    event_name: Any,
    customer_external_id: Any,
    invoice_id: Any,
    amount: Any,
    currency: Any,
    click_id: Any = None,
    customer_name: Any = None,
    customer_email: Any = None,
    customer_avatar: Any = None,
    timestamp: Any = None,
) -> Event:
    """Validate a sale; raise ``ValidationError`` naming the first bad field."""
    payload = _common(
        event_name, customer_external_id, click_id, customer_name, customer_email, customer_avatar
    )
    payload["invoiceId"] = check_text("invoice_id", invoice_id, required=True)
    payload["amount"] = check_amount(amount)
    payload["currency"] = check_currency(currency)
    return Event.of(event_id, SALE, payload, tracked_at, check_timestamp(timestamp))
