"""Build and validate events in the caller's thread, before anything is queued.

Every check names the argument the caller passed (``customer_email``, not ``customerEmail``)
and the rule it broke. The checks are plain ``isinstance`` tests and one precompiled regex,
because they run inside the caller's request handler.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, Optional
from urllib.parse import urlsplit

from cms_shipper.errors import ValidationError

if TYPE_CHECKING:
    from cms_shipper.results import Result

__all__ = ["LEAD", "SALE", "Event", "build_lead", "build_sale", "event_of", "format_timestamp"]

LEAD = "lead"
SALE = "sale"
MAX_TEXT = 255
MAX_URL = 2048
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
# Compact and ASCII-only (a lone surrogate is escaped, never an encoding error).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


# The wire fields of each endpoint, in the order ``Event.values`` holds them.
_KEYS = {
    LEAD: ("eventName", "customerExternalId", "clickId", "customerName", "customerEmail",
           "customerAvatar", "mode"),
    SALE: ("eventName", "customerExternalId", "clickId", "customerName", "customerEmail",
           "customerAvatar", "invoiceId", "amount", "currency"),
}  # fmt: skip


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


def event_of(result: Result) -> Event:
    """The event a queued, spooled or settled result carries (invalid input never has one)."""
    if result.event is None:
        raise TypeError("only results that carry an event are queued or spooled")
    return result.event


def format_timestamp(epoch_s: float) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``."""
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _text(field: str, value: Any, *, required: bool) -> Optional[str]:
    if value is None:
        if required:
            raise ValidationError(field, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_TEXT:
        raise ValidationError(field, f"must be at most {MAX_TEXT} characters, got {len(value)}")
    return value


def _email(value: Any) -> Optional[str]:
    email = _text("customer_email", value, required=False)
    if email is not None and not _EMAIL.fullmatch(email):
        raise ValidationError("customer_email", "must look like an email address (name@domain.tld)")
    return email


def _avatar(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("customer_avatar", f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_URL:
        raise ValidationError("customer_avatar", f"must be at most {MAX_URL} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("customer_avatar", "must be an http:// or https:// URL")
    return value


def _timestamp(value: Any) -> Optional[str]:
    """Normalize a datetime (naive means UTC) or an ISO 8601 string to UTC ISO 8601."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                "timestamp", f"must be an ISO 8601 date-time string, got {value!r}"
            ) from None
    else:
        raise ValidationError(
            "timestamp", f"must be a datetime or an ISO 8601 string, got {type(value).__name__}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return format_timestamp(moment.timestamp())


def _common(
    event_name: Any,
    customer_external_id: Any,
    click_id: Any,
    customer_name: Any,
    customer_email: Any,
    customer_avatar: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventName": _text("event_name", event_name, required=True),
        "customerExternalId": _text("customer_external_id", customer_external_id, required=True),
    }
    optional = {
        "clickId": _text("click_id", click_id, required=False),
        "customerName": _text("customer_name", customer_name, required=False),
        "customerEmail": _email(customer_email),
        "customerAvatar": _avatar(customer_avatar),
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
        if mode != "deferred":
            raise ValidationError("mode", f'must be "deferred" or None, got {mode!r}')
        if "clickId" not in payload:
            raise ValidationError("click_id", 'is required when mode="deferred"')
        payload["mode"] = mode
    return Event.of(event_id, LEAD, payload, tracked_at, _timestamp(timestamp))


def _amount(value: Any) -> int:
    # bool is an int subclass; True cents is never what the caller meant.
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, float):
        hint = f" (for {value} send {round(value * 100)})" if value >= 0 else ""
        raise ValidationError(
            "amount", f"must be an int number of cents >= 0, got float {value}{hint}"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValidationError("amount", f"must be an int number of cents >= 0, got {value}")
    raise ValidationError(
        "amount",
        f"must be an int number of cents >= 0 (4999 = 49.99), got {type(value).__name__} {value!r}",
    )


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ValidationError(
            "currency", f"must be a 3-letter currency code such as USD, got {value!r}"
        )
    return value.upper()


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
    payload["invoiceId"] = _text("invoice_id", invoice_id, required=True)
    payload["amount"] = _amount(amount)
    payload["currency"] = _currency(currency)
    return Event.of(event_id, SALE, payload, tracked_at, _timestamp(timestamp))
