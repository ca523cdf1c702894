"""Validation is total: any value of any type in any argument is an event or a ValidationError.

Each example starts from valid arguments and replaces the argument under test (now and then
one more) with anything: text with lone surrogates, huge ints and strings, floats with inf
and nan, datetimes at and past datetime's limits, tzinfos that fail, str/int/float/datetime
subclasses whose methods raise, objects whose ``__repr__``/``__eq__``/``__class__`` raise,
and whatever ``st.from_type(object)`` builds. One argument at a time, each in turn, because
the first bad argument hides the others: the last checked (timestamp, currency) get their
share of examples too.
"""

from __future__ import annotations

import json
import re
import socket
import string
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable, Optional
from unittest.mock import MagicMock, Mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cms_shipper import CMSClient
from cms_shipper._events.build import Event, build_lead, build_sale
from cms_shipper._events.checks import MAX_AMOUNT, show
from cms_shipper.errors import ValidationError

# Counts that keep the whole module within a few seconds.
EXAMPLES = settings(max_examples=200)
PER_FIELD = settings(max_examples=25)  # times 8 (lead) or 10 (sale) fields
CLIENT_PER_FIELD = settings(max_examples=10)
HUGE = "x" * 10_000_000  # built once: 10 MB per example would dominate the run time
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# -- hostile values --------------------------------------------------------------------------


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a method of the caller's value ran")


class Hostile:
    """Every hook a message or a comparison could use raises."""

    __repr__ = __str__ = __format__ = __eq__ = __ne__ = __lt__ = __bool__ = __len__ = _boom
    __iter__ = __int__ = __index__ = __float__ = __getattr__ = _boom
    __hash__ = None  # type: ignore[assignment]


class LyingClass:
    """``isinstance(x, str)`` raises: it consults ``__class__``."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("__class__")


class FakeStr:
    """``isinstance(x, str)`` is True, yet it is no string."""

    __class__ = str  # type: ignore[assignment]
    __len__ = __getitem__ = strip = isascii = encode = _boom


class RaisingName(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("__name__")


class Nameless(metaclass=RaisingName):
    """Its type's ``__name__`` raises."""


class ShadyStr(str):
    __repr__ = __str__ = __format__ = __eq__ = __ne__ = __len__ = __iter__ = _boom
    __getitem__ = __contains__ = strip = upper = isascii = encode = endswith = _boom
    __hash__ = str.__hash__


class ShadyInt(int):
    __repr__ = __str__ = __format__ = __eq__ = __lt__ = __le__ = __ge__ = __int__ = _boom
    __index__ = bit_length = _boom
    __hash__ = int.__hash__


class ShadyFloat(float):
    __repr__ = __str__ = __format__ = __eq__ = __lt__ = __le__ = __ge__ = __float__ = _boom
    __mul__ = __round__ = _boom
    __hash__ = float.__hash__


class ShadyDatetime(datetime):
    __repr__ = __str__ = __format__ = isoformat = utcoffset = timestamp = replace = _boom
    astimezone = __sub__ = __add__ = _boom


class ChosenZone(tzinfo):
    """A tzinfo answering whatever it is given: a timedelta of any size, junk, or an error."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def utcoffset(self, dt: Optional[datetime]) -> Any:
        if type(self.answer) is RuntimeError:
            raise self.answer
        return self.answer

    def __repr__(self) -> str:
        return f"ChosenZone({self.answer!r})"


def _with_repr(text: str) -> Any:
    class Shown:
        def __repr__(self) -> str:
            return text

    return Shown()


def _shady_datetime(moment: datetime) -> datetime:
    return ShadyDatetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
        moment.microsecond, tzinfo=moment.tzinfo,
    )  # fmt: skip


# -- strategies ------------------------------------------------------------------------------

characters = st.one_of(
    st.characters(max_codepoint=0x7F),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.characters(exclude_categories=()),
)
texts = st.text(characters, max_size=300)
offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23))
zones = st.none() | st.builds(timezone, offsets)
hostile_zones = st.builds(
    ChosenZone,
    st.one_of(st.timedeltas(), st.just(RuntimeError("utcoffset")), st.integers(), st.none()),
)
any_datetimes = st.one_of(
    st.datetimes(timezones=zones),
    st.builds(lambda m, z: m.replace(tzinfo=z), st.datetimes(), hostile_zones),
    st.sampled_from([datetime.min, datetime.max]).flatmap(
        lambda m: st.builds(lambda z: m.replace(tzinfo=z), zones)
    ),
    st.datetimes(timezones=zones).map(_shady_datetime),
)
iso_texts = st.one_of(
    any_datetimes.filter(lambda m: type(m) is datetime and type(m.tzinfo) is not ChosenZone).map(
        lambda m: m.isoformat()
    ),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda m: m.isoformat()[:-6] + "Z"),
    st.builds(  # ISO-shaped, with any digits: month 13, hour 25, offset +99:99
        "{}-{}-{}T{}{}".format,
        *(st.text(string.digits, min_size=n, max_size=n) for n in (4, 2, 2)),
        st.text(string.digits + ":.", max_size=15),
        st.sampled_from(["", "Z", "z", "+00:00", "-23:59", "+24:00", "+99:99", "+01"]),
    ),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=MAX_AMOUNT - 2, max_value=MAX_AMOUNT + 2),
    st.sampled_from([10**5000, -(10**5000), 10**4301, 2**53, -1, 0]),
    st.floats(),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 49.99]),
    st.decimals(),
    st.fractions(),
    st.complex_numbers(),
    st.builds(ShadyInt, st.integers()),
    st.builds(ShadyFloat, st.floats()),
)
hostile = st.one_of(
    st.builds(Hostile),
    st.builds(LyingClass),
    st.builds(FakeStr),
    st.builds(Nameless),
    st.builds(Mock, spec=st.just(str)),
    st.builds(MagicMock),
    st.builds(type("Multi\nLine" * 20, (), {})),
    st.sampled_from(["y\n" * 1000, "z" * 10_000_000, ShadyStr("shown")]).map(_with_repr),
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    texts,
    texts.map(ShadyStr),
    iso_texts,
    st.sampled_from(["deferred", "USD", "", "   ", "x" * 256, HUGE, "https://" + HUGE]),
    st.sampled_from(["http://[", "http://h:99999", "http://h:-1", "https://h.org/\ud800"]),
    numbers,
    any_datetimes,
    hostile,
    st.binary(),
    st.lists(st.integers(), max_size=3),
    st.from_type(object),
)

names = st.text(min_size=1, max_size=255).filter(str.strip)
words = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_name": names,
    "customer_external_id": names,
    "click_id": st.none() | names,
    "customer_name": st.none() | names,
    "customer_email": st.none() | st.builds("{}@{}.{}".format, words, words, words),
    "customer_avatar": st.none()
    | st.builds(
        "{}://{}{}/{}".format,
        st.sampled_from(["http", "https", "HTTPS"]),
        words,
        st.sampled_from(["", ":1", ":8443", ":65535"]),
        st.text(string.ascii_letters + "/._-%", max_size=40),
    ),
    "timestamp": st.none()
    | st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 31), timezones=zones)
    | st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 31)).map(datetime.isoformat),
}
LEAD_VALID = {**VALID, "mode": st.none() | st.just("deferred")}
SALE_VALID = {
    **VALID,
    "invoice_id": names,
    "amount": st.integers(min_value=0, max_value=MAX_AMOUNT),
    "currency": st.text(string.ascii_letters, min_size=3, max_size=3),
}


# Near misses, so that each field's own rules (not only its type check) meet odd values.
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "timestamp": iso_texts | any_datetimes,
    "amount": numbers,
    "currency": st.text(characters, min_size=2, max_size=4) | texts.map(ShadyStr),
    "customer_email": st.builds("{}@{}".format, texts, texts),
    "customer_avatar": st.builds(
        "{}://{}{}".format, st.sampled_from(["http", "https", "ftp"]), texts, texts
    ),
    "mode": st.sampled_from(["deferred", "Deferred", "deferred ", ShadyStr("deferred")]),
}


@st.composite
def arguments(
    draw: Callable[..., Any], valid: dict[str, st.SearchStrategy[Any]], field: str
) -> Any:
    """Valid keyword arguments with ``field`` (and now and then one more) replaced by anything."""
    kwargs = {name: draw(strategy) for name, strategy in valid.items()}
    # Mostly ``field`` alone: the first bad argument hides the others.
    replaced = [field, *draw(st.lists(st.sampled_from(list(valid)), max_size=1))]
    for name in replaced:
        # A coin, not NEAR[name] | anything: one_of flattens, and anything has many branches.
        near = name in NEAR and draw(st.booleans())
        kwargs[name] = draw(NEAR[name] if near else anything)
    return kwargs


# -- properties ------------------------------------------------------------------------------


def check_refusal(error: ValidationError, fields: dict[str, Any]) -> None:
    assert error.field in fields
    assert type(error.rule) is str and 0 < len(error.rule) <= 250, error.rule
    assert "\n" not in error.rule and "\r" not in error.rule
    error.rule.encode("utf-8")  # no lone surrogate copied from the value
    assert str(error) == f"{error.field}: {error.rule}"


def check_event(event: Event) -> None:
    assert {type(value) for value in event.values} <= {str, int, type(None)}
    for value in event.values:
        if type(value) is str:
            value.encode("utf-8")
    body = json.loads(event.wire())
    if event.endpoint == "sale":
        assert 0 <= body["amount"] <= MAX_AMOUNT
        assert re.fullmatch("[A-Z]{3}", body["currency"])
    if event.timestamp is not None:
        assert ISO_UTC.fullmatch(event.timestamp)
        assert "1970-01-01T00:00:00.000Z" <= event.timestamp < "2100-01-01T00:00:00.000Z"


@settings(max_examples=50)
@given(st.fixed_dictionaries(LEAD_VALID), st.fixed_dictionaries(SALE_VALID))
def test_valid_arguments_make_an_event(lead: dict[str, Any], sale: dict[str, Any]) -> None:
    if lead["mode"] == "deferred" and lead["click_id"] is None:
        with pytest.raises(ValidationError, match=r"^click_id: is required when"):
            build_lead("evt_1", 1_700_000_000.0, **lead)
    else:
        check_event(build_lead("evt_1", 1_700_000_000.0, **lead))
    check_event(build_sale("evt_1", 1_700_000_000.0, **sale))


@pytest.mark.parametrize("field", list(LEAD_VALID))
@PER_FIELD
@given(data=st.data())
def test_build_lead_returns_an_event_or_raises_a_validation_error(
    field: str, data: st.DataObject
) -> None:
    kwargs = data.draw(arguments(LEAD_VALID, field), label="kwargs")
    try:
        event = build_lead("evt_1", 1_700_000_000.0, **kwargs)
    except ValidationError as error:
        check_refusal(error, LEAD_VALID)
    else:
        check_event(event)


@pytest.mark.parametrize("field", list(SALE_VALID))
@PER_FIELD
@given(data=st.data())
def test_build_sale_returns_an_event_or_raises_a_validation_error(
    field: str, data: st.DataObject
) -> None:
    kwargs = data.draw(arguments(SALE_VALID, field), label="kwargs")
    try:
        event = build_sale("evt_1", 1_700_000_000.0, **kwargs)
    except ValidationError as error:
        check_refusal(error, SALE_VALID)
    else:
        check_event(event)


@EXAMPLES
@given(anything)
def test_show_is_short_one_line_and_never_raises(value: Any) -> None:
    shown = show(value)
    assert type(shown) is str and 0 < len(shown) <= 60
    assert shown.isprintable()  # no newline, control character or lone surrogate


# -- the same through the real client ----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def client() -> Iterator[CMSClient]:
    # Nothing listens there. A 60 s interval and batches larger than the run keep the sender
    # idle: its retry jitter would move the global random state while hypothesis draws.
    cms = CMSClient(
        token="test-token",
        host=f"http://127.0.0.1:{closed_port()}",
        flush_interval_s=60,
        batch_size=10_000,
    )
    yield cms
    cms.close(0)


def check_answer(result: Any, fields: dict[str, Any]) -> None:
    if result.message == "queued":
        assert result.success is True and result.event is not None
        check_event(result.event)
    else:
        assert (result.success, result.status_code) == (False, 422), result
        assert result.details is not None and len(result.details) == 1, result
        [(field, rule)] = result.details.items()
        assert field in fields
        assert result.error == f"{field}: {rule}"


@pytest.mark.parametrize("field", list(LEAD_VALID))
@CLIENT_PER_FIELD
@given(data=st.data())
def test_track_lead_queues_or_answers_422_naming_the_field(
    client: CMSClient, field: str, data: st.DataObject
) -> None:
    kwargs = data.draw(arguments(LEAD_VALID, field), label="kwargs")
    check_answer(client.track_lead(**kwargs), LEAD_VALID)


@pytest.mark.parametrize("field", list(SALE_VALID))
@CLIENT_PER_FIELD
@given(data=st.data())
def test_track_sale_queues_or_answers_422_naming_the_field(
    client: CMSClient, field: str, data: st.DataObject
) -> None:
    kwargs = data.draw(arguments(SALE_VALID, field), label="kwargs")
    check_answer(client.track_sale(**kwargs), SALE_VALID)
