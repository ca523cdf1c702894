"""The field checks behind ``_events``: each returns the plain value to send or raises.

The rules are listed in ``cms_shipper._events.build``. Every check is total: whatever it is given,
it returns or raises ``ValidationError``, nothing else. To keep that true for hostile values
(a ``str`` subclass overriding every method, a ``Mock(spec=str)``, an object whose
``__class__``, ``__eq__`` or ``__repr__`` raises), a value is classified by ``type(value)``
and ``issubclass`` only (``isinstance`` consults ``__class__``, which may lie or raise), it is
read only through the base type's own methods (``str.__str__(value)``), and messages show it
only through ``show``, which never raises.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional
from urllib.parse import urlsplit

from cms_shipper.errors import ValidationError

__all__ = [
    "MAX_AMOUNT",
    "MAX_TEXT",
    "MAX_URL",
    "check_amount",
    "check_avatar",
    "check_currency",
    "check_email",
    "check_mode",
    "check_text",
    "check_timestamp",
    "show",
]

MAX_TEXT = 255
MAX_URL = 2048
MAX_ISO = 64  # longer than any ISO 8601 date-time; a cap before parsing keeps refusals cheap
MAX_AMOUNT = 2**53 - 1  # the largest integer a JSON number keeps exactly in JavaScript
SHOW_MAX = 60
DEFERRED = "deferred"
EARLIEST = datetime(1970, 1, 1)  # naive datetimes here are UTC
END = datetime(2100, 1, 1)  # excluded

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_CENTS = f"must be an int number of cents from 0 to {MAX_AMOUNT}"
_URL = "must be an http:// or https:// URL with a host name (and a port 1-65535, if any)"
_ISO = "must be an ISO 8601 date-time string"
_RANGE = "must lie from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z"
_SURROGATE = "must be encodable as UTF-8 (it holds a lone surrogate)"
_MICROSECOND = timedelta(microseconds=1)
_SHOWN_INT_BITS = 190  # 2**190 has 58 digits: with a sign it fits in SHOW_MAX
_LOG10_2 = math.log10(2)
# type's own descriptor: a metaclass can turn ``__name__`` into a raising property.
_TYPE_NAME = type.__dict__["__name__"].__get__
# Their repr is as long as their contents and runs every item's repr.
_CONTAINERS = (list, tuple, dict, set, frozenset, bytearray, memoryview)


def _plain_str(value: Any) -> Optional[str]:
    """``value`` as a plain ``str`` if it is a ``str`` (or subclass), else None."""
    if type(value) is str:
        return value
    if issubclass(type(value), str):
        # Copies the characters without calling any method the subclass overrides.
        return str.__str__(value)
    return None


def _clip(text: str) -> str:
    text = str.__str__(text)  # a repr or a type name may be a str subclass
    cut = len(text) > SHOW_MAX
    if cut:
        text = text[: SHOW_MAX - 3]
    if not text.isprintable():  # one line: newlines, controls and lone surrogates become "?"
        text = "".join(char if char.isprintable() else "?" for char in text)
    return text + "..." if cut else text


def type_name(value: Any) -> str:
    """The name of ``value``'s type, bounded; never raises."""
    name: str = _TYPE_NAME(type(value))
    return _clip(name)


def show(value: Any) -> str:
    """``value`` on one line in at most 60 characters (``...`` when cut); never raises."""
    cls = type(value)
    if value is None or cls is bool:
        return repr(value)
    if issubclass(cls, int):
        number = int.__int__(value)
        bits = number.bit_length()
        if bits > _SHOWN_INT_BITS:
            # str() of a huge int is slow, and past 4300 digits it raises ValueError.
            sign = "negative " if number < 0 else ""
            return f"<{sign}int of about {round(bits * _LOG10_2)} digits>"
        text = int.__repr__(number)
    elif issubclass(cls, float):
        text = float.__repr__(value)
    elif issubclass(cls, str):
        text = str.__repr__(str.__getitem__(value, slice(0, SHOW_MAX)))
    elif issubclass(cls, bytes):
        text = bytes.__repr__(bytes.__getitem__(value, slice(0, SHOW_MAX)))
    elif issubclass(cls, _CONTAINERS):
        return f"<{type_name(value)}>"
    else:
        try:
            text = repr(value)
        except Exception:  # a caller's object: any repr failure just hides the value
            return f"<{type_name(value)}>"
    return _clip(text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(field: str, value: Any, *, required: bool, limit: int = MAX_TEXT) -> Optional[str]:
    """A non-blank UTF-8 string of at most ``limit`` characters, as a plain ``str``."""
    if value is None:
        if required:
            raise ValidationError(field, "is required")
        return None
    if type(value) is str:  # the hot path: straight to the content checks
        text = value
    else:
        plain = _plain_str(value)
        if plain is None:
            raise ValidationError(field, f"must be a string, got {type_name(value)}")
        text = plain
    # Length first: it is O(1), and it bounds the cost of the checks after it.
    if len(text) > limit:
        raise ValidationError(field, f"must be at most {limit} characters, got {len(text)}")
    if not text.strip():
        raise ValidationError(field, "must not be empty")
    if not text.isascii() and not _utf8(text):
        raise ValidationError(field, _SURROGATE)
    return text


def check_email(value: Any) -> Optional[str]:
    """An optional string that looks like ``name@domain.tld``."""
    email = check_text("customer_email", value, required=False)
    if email is not None and not _EMAIL.fullmatch(email):
        raise ValidationError("customer_email", "must look like an email address (name@domain.tld)")
    return email


def check_avatar(value: Any) -> Optional[str]:
    """An optional http(s) URL with a host name that ``urlsplit`` parses."""
    if value is None:
        return None
    url = check_text("customer_avatar", value, required=False, limit=MAX_URL)
    try:
        parts = urlsplit(url)
        # .port raises for a port that is not a number or out of range.
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except Exception:  # what urlsplit refuses (e.g. "http://[") varies by Python version
        valid = False
    if not valid:
        raise ValidationError("customer_avatar", _URL)
    return url


def check_mode(value: Any) -> str:
    """Exactly ``"deferred"`` (None, meaning no mode, is the caller's to skip)."""
    if _plain_str(value) != DEFERRED:  # compares plain strs: the caller's __eq__ never runs
        raise ValidationError("mode", f'must be "deferred" or None, got {show(value)}')
    return DEFERRED


def check_amount(value: Any) -> int:
    """An int (not bool) of cents from 0 to ``MAX_AMOUNT``, as a plain ``int``."""
    if type(value) is int and 0 <= value <= MAX_AMOUNT:  # the hot path
        return value
    cls = type(value)
    # bool is an int subclass; True cents is never what the caller meant.
    if issubclass(cls, int) and cls is not bool:
        number = int.__int__(value)
        if 0 <= number <= MAX_AMOUNT:
            return number
        raise ValidationError("amount", f"{_CENTS}, got {show(number)}")
    if issubclass(cls, float):
        real = float.__float__(value)
        hint = ""
        # Only a hint that is itself a valid amount: round(inf) raises, 1e300 has no cents.
        if math.isfinite(real) and 0 <= real <= MAX_AMOUNT / 100:
            hint = f" (for {real!r} send {round(real * 100)})"
        raise ValidationError("amount", f"{_CENTS}, got float {real!r}{hint}")
    shown = "None" if value is None else f"{type_name(value)} {show(value)}"
    raise ValidationError("amount", f"{_CENTS} (4999 = 49.99), got {shown}")


def check_currency(value: Any) -> str:
    """Three ASCII letters, upper-cased."""
    code = value if type(value) is str else _plain_str(value)
    if code is None or not _CURRENCY.fullmatch(code):
        raise ValidationError(
            "currency", f"must be a 3-letter currency code such as USD, got {show(value)}"
        )
    return code.upper()


def _plain_datetime(value: Any) -> datetime:
    """A plain copy of a datetime (or subclass) with a fixed-offset tzinfo, if it had one."""
    try:
        # The tzinfo's utcoffset is the caller's code; datetime checks what it returns.
        offset = datetime.utcoffset(value)
    except Exception:
        raise ValidationError(
            "timestamp", "must have a tzinfo that gives a valid UTC offset"
        ) from None
    zone = None
    if offset is not None:
        zone = timezone(timedelta(microseconds=timedelta.__floordiv__(offset, _MICROSECOND)))
    # The base types' own methods, so nothing a subclass overrides runs.
    return datetime.combine(date.fromordinal(date.toordinal(value)), datetime.time(value), zone)


def _parse_iso(text: str) -> datetime:
    if len(text) <= MAX_ISO and text.isascii():
        iso = text.strip()
        if iso.endswith(("Z", "z")):  # fromisoformat only learned "Z" in Python 3.11
            iso = iso[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(iso)
        except (ValueError, OverflowError):
            pass
    raise ValidationError("timestamp", f"{_ISO}, got {show(text)}")


def check_timestamp(value: Any) -> Optional[str]:
    """None, or a datetime (naive = UTC) or ISO 8601 string in range, as UTC ISO 8601."""
    if value is None:
        return None
    if issubclass(type(value), datetime):
        moment = _plain_datetime(value)
    else:
        text = _plain_str(value)
        if text is None:
            raise ValidationError(
                "timestamp", f"must be a datetime or an ISO 8601 string, got {type_name(value)}"
            )
        moment = _parse_iso(text)
    offset = moment.utcoffset()
    utc: Optional[datetime] = moment
    if offset is not None:
        try:
            utc = moment.replace(tzinfo=None) - offset
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0
            utc = None
    if utc is None or not EARLIEST <= utc < END:
        raise ValidationError("timestamp", f"{_RANGE}, got {moment.isoformat()}")
    return utc.isoformat(timespec="milliseconds") + "Z"
