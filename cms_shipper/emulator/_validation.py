"""Field rules for /track/lead and /track/sale bodies, as the emulator enforces them.

Pure functions: a payload goes in, a ``{camelField: rule}`` dict comes out (empty when
valid). Unknown fields are ignored, like the real API does. JSON ``null`` on an optional
field counts as absent, so a client that sends nulls is not punished for it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Dict, Literal, Mapping
from urllib.parse import urlsplit

__all__ = ["Endpoint", "validate"]

Endpoint = Literal["lead", "sale"]

MAX_LENGTH = 255
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CURRENCY = re.compile(r"[A-Z]{3}")

Details = Dict[str, str]


def validate(endpoint: Endpoint, payload: Mapping[str, Any]) -> Details:
    """Return ``{camelField: rule}`` for every broken rule; empty when the payload is valid."""
    details: Details = {}
    _text(details, payload, "eventName", required=True)
    _text(details, payload, "customerExternalId", required=True)
    _text(details, payload, "clickId", required=False)
    _text(details, payload, "customerName", required=False)
    _email(details, payload)
    _avatar(details, payload)
    _timestamp(details, payload)
    if endpoint == "lead":
        _mode(details, payload)
    else:
        _text(details, payload, "invoiceId", required=True)
        _amount(details, payload)
        _currency(details, payload)
    return details


def _text(details: Details, payload: Mapping[str, Any], name: str, *, required: bool) -> None:
    value = payload.get(name)
    if value is None:
        if required:
            details[name] = "required"
    elif not isinstance(value, str):
        details[name] = "must be a string"
    elif required and not value.strip():
        details[name] = "required: must not be empty"
    elif len(value) > MAX_LENGTH:
        details[name] = f"must be at most {MAX_LENGTH} characters"


def _email(details: Details, payload: Mapping[str, Any]) -> None:
    value = payload.get("customerEmail")
    if value is not None and not (isinstance(value, str) and _EMAIL.fullmatch(value)):
        details["customerEmail"] = "must be an email address"


def _avatar(details: Details, payload: Mapping[str, Any]) -> None:
    value = payload.get("customerAvatar")
    if value is None:
        return
    if not isinstance(value, str) or len(value) > 2048:
        details["customerAvatar"] = "must be an http(s) URL"
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        details["customerAvatar"] = "must be an http(s) URL"


def _timestamp(details: Details, payload: Mapping[str, Any]) -> None:
    value = payload.get("timestamp")
    if value is None:
        return
    if isinstance(value, str):
        # fromisoformat only learned the trailing "Z" in Python 3.11.
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return
    details["timestamp"] = "must be an ISO 8601 date-time"


def _mode(details: Details, payload: Mapping[str, Any]) -> None:
    mode = payload.get("mode")
    if mode is None:
        return
    if mode != "deferred":
        details["mode"] = "must be 'deferred' when present"
    elif payload.get("clickId") is None:
        details.setdefault("clickId", "required when mode is 'deferred'")


def _amount(details: Details, payload: Mapping[str, Any]) -> None:
    value = payload.get("amount")
    if value is None:
        details["amount"] = "required"
    # bool is an int subclass, and 49.99 is a float: neither is an amount in cents.
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        details["amount"] = "must be a non-negative integer (cents)"


def _currency(details: Details, payload: Mapping[str, Any]) -> None:
    value = payload.get("currency")
    if value is None:
        details["currency"] = "required"
    elif not (isinstance(value, str) and _CURRENCY.fullmatch(value)):
        details["currency"] = "must be 3 upper-case letters (ISO 4217)"
