"""Validation in the caller's thread: each rule, the field it names, and normalization."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Optional
from unittest.mock import Mock

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from cms_shipper import CMSClient, Outcome, Reason
from cms_shipper._events.build import build_lead, build_sale, format_timestamp
from cms_shipper.errors import ValidationError

LEAD = {"event_name": "signup", "customer_external_id": "user_42", "click_id": "clk_1"}
SALE = {
    "event_name": "purchase",
    "customer_external_id": "user_42",
    "invoice_id": "inv_1",
    "amount": 4999,
    "currency": "USD",
}


def lead(**changes: Any) -> Any:
    return build_lead("evt_1", 1_700_000_000.0, **{**LEAD, **changes})


def sale(**changes: Any) -> Any:
    return build_sale("evt_1", 1_700_000_000.0, **{**SALE, **changes})


def test_lead_payload_is_camel_case_without_absent_fields() -> None:
    event = lead(customer_email="jane@example.com")
    assert event.payload == {
        "eventName": "signup",
        "customerExternalId": "user_42",
        "clickId": "clk_1",
        "customerEmail": "jane@example.com",
    }
    assert event.path == "/track/lead"
    assert event.customer_key == "user_42"


@pytest.mark.parametrize(
    ("changes", "field", "rule_part"),
    [
        ({"event_name": None}, "event_name", "required"),
        ({"event_name": ""}, "event_name", "empty"),
        ({"event_name": "   "}, "event_name", "empty"),
        ({"event_name": 5}, "event_name", "string"),
        ({"customer_external_id": "x" * 256}, "customer_external_id", "255"),
        ({"click_id": "c" * 256}, "click_id", "255"),
        ({"customer_name": ""}, "customer_name", "empty"),
        ({"customer_email": "not-an-email"}, "customer_email", "email"),
        ({"customer_email": "a@b.com\n"}, "customer_email", "email"),
        ({"customer_avatar": "ftp://x.org/a.png"}, "customer_avatar", "http"),
        ({"customer_avatar": "https://"}, "customer_avatar", "http"),
        ({"mode": "later"}, "mode", "deferred"),
        ({"mode": "deferred", "click_id": None}, "click_id", "deferred"),
        ({"timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"timestamp": 1700000000}, "timestamp", "datetime"),
    ],
)
def test_lead_rules_name_the_field(changes: dict[str, Any], field: str, rule_part: str) -> None:
    with pytest.raises(ValidationError) as info:
        lead(**changes)
    assert info.value.field == field
    assert rule_part in info.value.rule
    assert str(info.value).startswith(field + ": ")


def test_exactly_255_characters_is_accepted() -> None:
    assert lead(customer_external_id="x" * 255).customer_key == "x" * 255


@pytest.mark.parametrize("amount", [49.99, 4999.0, True, "4999", -1, None])
def test_amount_must_be_int_cents(amount: Any) -> None:
    with pytest.raises(ValidationError) as info:
        sale(amount=amount)
    assert info.value.field == "amount"
    assert "cents" in info.value.rule


def test_float_amount_message_suggests_cents() -> None:
    with pytest.raises(ValidationError, match=r"send 4999"):
        sale(amount=49.99)


def test_zero_amount_is_allowed_and_currency_is_upper_cased() -> None:
    event = sale(amount=0, currency="eur")
    assert event.payload["amount"] == 0
    assert event.payload["currency"] == "EUR"


@pytest.mark.parametrize("currency", ["US", "USDX", "U$D", 840, "", "ÄBC"])
def test_currency_is_three_letters(currency: Any) -> None:
    with pytest.raises(ValidationError) as info:
        sale(currency=currency)
    assert info.value.field == "currency"


def test_sale_requires_invoice_id() -> None:
    with pytest.raises(ValidationError) as info:
        sale(invoice_id=None)
    assert info.value.field == "invoice_id"


def test_naive_datetime_means_utc_and_aware_is_converted() -> None:
    naive = lead(timestamp=datetime(2026, 1, 2, 3, 4, 5, 678000))
    aware = lead(
        timestamp=datetime(2026, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    )
    assert naive.timestamp == "2026-01-02T03:04:05.678Z"
    assert aware.timestamp == naive.timestamp


@pytest.mark.parametrize(
    "text", ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05+00:00", "2026-01-02T04:04:05+01:00"]
)
def test_iso_strings_are_normalized_to_utc(text: str) -> None:
    assert lead(timestamp=text).timestamp == "2026-01-02T03:04:05.000Z"


def test_implicit_timestamp_is_the_track_call_not_the_send() -> None:
    with freeze_time("2026-03-04 05:06:07.891"):
        client = CMSClient(token="t", disabled=True)
        result = client.track_lead("signup", "u1", click_id="c1")
    assert result.event is not None
    with freeze_time("2026-03-04 09:00:00"):
        assert result.event.body()["timestamp"] == "2026-03-04T05:06:07.891Z"


def test_format_timestamp() -> None:
    assert format_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1.9999996) == "1970-01-01T00:00:02.000Z"  # rounds to the next second


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-1e9, max_value=4e9, allow_nan=False),
            st.integers(0, 10**6).map(lambda n: 1_764_000_000 + n / 1000 + 0.0000005),  # ties
        ),
        min_size=1,
        max_size=20,
    )
)
def test_format_timestamp_says_what_datetime_says(moments: list[float]) -> None:
    for epoch_s in moments:  # in turn: the second kept from the previous call is reused
        moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        assert format_timestamp(epoch_s) == expected


def test_invalid_event_never_raises_is_counted_and_reported() -> None:
    errors: list[Any] = []
    client = CMSClient(token="t", disabled=True, on_error=errors.append)
    result = client.track_sale("buy", "u1", "inv1", 49.99, "USD")
    assert result.success is False
    assert result["status_code"] == 422
    assert result.get("details") == {"amount": result.details["amount"]}  # type: ignore[index]
    assert "cents" in (result.error or "")
    assert result.outcome is Outcome.REJECTED and result.reason is Reason.INVALID
    assert result.wait(0) is result.final
    assert [e.reason for e in errors] == [Reason.INVALID]
    stats = client.stats()
    assert (stats["tracked"], stats["rejected"], stats["pending"]) == (1, 1, 0)
    assert stats["reasons"] == {"rejected": {"invalid": 1}}


def test_wrong_argument_names_are_pythons_type_error() -> None:
    client = CMSClient(token="t", disabled=True)
    with pytest.raises(TypeError):
        client.track_lead(event="x", customer_external_id="u")  # type: ignore[call-arg]


# -- totality: every break found by fuzzing is a ValidationError naming the field ------------


class Hostile:
    """A value whose every formatting and comparison hook raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("format")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("ne")

    __hash__ = None  # type: ignore[assignment]


class ShadyStr(str):
    """A str subclass whose methods all raise: only its characters may be used."""

    def _boom(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a ShadyStr method ran")

    __repr__ = __str__ = __format__ = __eq__ = __ne__ = __len__ = __iter__ = _boom
    __getitem__ = __contains__ = strip = upper = isascii = encode = endswith = _boom
    __hash__ = str.__hash__


class LyingClass:
    """``isinstance`` consults ``__class__``; this one raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("__class__")


def refusal(fn: Any, **changes: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(**changes)
    error = info.value
    assert "\n" not in error.rule and len(error.rule) < 250, error.rule
    return error


@pytest.mark.parametrize(
    "amount", [float("inf"), float("-inf"), float("nan"), 1e308, 1.7976931348623157e308, -0.5]
)
def test_floats_no_hint_can_be_computed_for_are_refused_without_one(amount: float) -> None:
    error = refusal(sale, amount=amount)
    assert error.field == "amount"
    assert "cents" in error.rule and "send" not in error.rule


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (-(10**5000), "<negative int of about 5000 digits>"),
        (10**5000, "<int of about 5000 digits>"),  # would pass, then break json.dumps
        (2**53, "9007199254740992"),
        (-1, "-1"),
    ],
    ids=["minus_10_to_5000", "10_to_5000", "2_to_53", "minus_1"],
)
def test_ints_out_of_range_are_refused_without_formatting_huge_ones(
    amount: int, shown: str
) -> None:
    error = refusal(sale, amount=amount)
    assert error.field == "amount"
    assert error.rule.endswith("got " + shown)
    assert "from 0 to 9007199254740991" in error.rule


def test_the_largest_exact_json_integer_is_accepted_and_int_subclasses_become_int() -> None:
    class Cents(int):
        def __repr__(self) -> str:
            raise RuntimeError("repr")

    assert sale(amount=2**53 - 1).payload["amount"] == 2**53 - 1
    amount = sale(amount=Cents(4999)).payload["amount"]
    assert type(amount) is int and amount == 4999


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
        datetime.max,
        datetime.max.replace(tzinfo=timezone.utc),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:59:59+01:00",
        "2100-01-01T00:00:00Z",
        datetime(2100, 1, 1),
    ],
)
def test_timestamps_outside_1970_to_2100_utc_are_refused(timestamp: Any) -> None:
    error = refusal(lead, timestamp=timestamp)
    assert error.field == "timestamp"
    assert "1970-01-01T00:00:00Z" in error.rule and "2100-01-01T00:00:00Z" in error.rule


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z"),
        ("1970-01-01T01:00:00+01:00", "1970-01-01T00:00:00.000Z"),
        ("2099-12-31T23:59:59.999999Z", "2099-12-31T23:59:59.999Z"),
        (datetime(2099, 12, 31, 23, 59, 59, 999999), "2099-12-31T23:59:59.999Z"),
    ],
)
def test_the_edges_of_the_timestamp_range_are_accepted(timestamp: Any, expected: str) -> None:
    assert lead(timestamp=timestamp).timestamp == expected


def test_a_tzinfo_that_fails_is_refused_and_a_datetime_subclass_is_read_as_a_datetime() -> None:
    class Broken(tzinfo):
        def utcoffset(self, dt: Optional[datetime]) -> timedelta:
            raise RuntimeError("utcoffset")

    class Huge(tzinfo):
        def utcoffset(self, dt: Optional[datetime]) -> timedelta:
            return timedelta(days=2)  # datetime itself refuses offsets of a day or more

    class Shady(datetime):
        def utcoffset(self) -> timedelta:
            raise RuntimeError("a Shady method ran")

        def isoformat(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError("a Shady method ran")

    for zone in (Broken(), Huge()):
        assert refusal(lead, timestamp=datetime(2026, 1, 2, tzinfo=zone)).field == "timestamp"
    shady = Shady(2026, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    assert lead(timestamp=shady).timestamp == "2026-01-02T03:04:05.678Z"


@pytest.mark.parametrize(
    "url", ["http://[", "http://h:99999", "http://h:port", "http://h:0", "http://:80"]
)
def test_avatar_urls_that_do_not_parse_are_refused(url: str) -> None:
    error = refusal(lead, customer_avatar=url)
    assert error.field == "customer_avatar"
    assert "http://" in error.rule


def test_an_avatar_url_with_a_port_is_accepted() -> None:
    url = "https://cdn.example.com:8443/a.png"
    assert lead(customer_avatar=url).payload["customerAvatar"] == url


FIELDS_OF_SALE = [
    "event_name", "customer_external_id", "invoice_id", "amount", "currency",
    "click_id", "customer_name", "customer_email", "customer_avatar", "timestamp",
]  # fmt: skip


@pytest.mark.parametrize("field", FIELDS_OF_SALE)
@pytest.mark.parametrize("make", [Hostile, LyingClass])  # pytest itself calls isinstance
def test_values_whose_hooks_raise_are_refused_by_type(field: str, make: type) -> None:
    error = refusal(sale, **{field: make()})
    assert error.field == field


@pytest.mark.parametrize("make", [Hostile, LyingClass])
def test_mode_is_compared_without_running_the_callers_eq(make: type) -> None:
    assert refusal(lead, mode=make()).field == "mode"
    assert lead(mode=ShadyStr("deferred")).payload["mode"] == "deferred"


def test_a_mock_with_spec_str_is_not_a_string() -> None:
    assert refusal(lead, event_name=Mock(spec=str)).field == "event_name"
    assert refusal(sale, currency=Mock(spec=str)).field == "currency"


@pytest.mark.parametrize("field", [f for f in FIELDS_OF_SALE if f not in ("amount", "timestamp")])
def test_a_lone_surrogate_is_refused_in_every_string_field(field: str) -> None:
    # What json.loads gives for "\ud800" in a hostile request body.
    value = {"customer_email": "a\ud800@b.org", "customer_avatar": "https://h.org/\ud800",
             "currency": "U\ud800D"}.get(field, "x\ud800")  # fmt: skip
    error = refusal(sale, **{field: value})
    assert error.field == field
    assert "\ud800" not in error.rule  # the message itself stays encodable


def test_non_ascii_text_that_encodes_is_accepted() -> None:
    assert lead(customer_name="Zoë 李 🙂").payload["customerName"] == "Zoë 李 🙂"


def test_a_str_subclass_is_stored_as_a_plain_str_without_running_its_methods() -> None:
    event = sale(
        event_name=ShadyStr("buy"),
        customer_external_id=ShadyStr("u1"),
        invoice_id=ShadyStr("inv"),
        currency=ShadyStr("usd"),
        customer_email=ShadyStr("a@b.org"),
        customer_avatar=ShadyStr("https://h.org/a.png"),
        timestamp=ShadyStr("2026-01-02T03:04:05Z"),
    )
    assert {type(value) for value in event.values} == {str, int, type(None)}
    assert event.customer_key == "u1" and type(event.customer_key) is str
    assert event.payload["currency"] == "USD"
    assert event.timestamp == "2026-01-02T03:04:05.000Z"
    assert json.loads(event.wire())["eventName"] == "buy"


class NumpyLike:
    """Quacks like a numpy scalar: converts to int and float, compares, formats."""

    def __int__(self) -> int:
        return 4999

    __index__ = __int__

    def __float__(self) -> float:
        return 49.99

    def __repr__(self) -> str:
        return "array(4999)\n" * 100  # multi-line and long


@pytest.mark.parametrize(
    ("field", "value", "rule_part"),
    [
        ("event_name", b"signup", "got bytes"),
        ("customer_external_id", True, "got bool"),
        ("amount", True, "got bool True"),
        ("amount", NumpyLike(), "got NumpyLike array(4999)?array"),
        ("currency", b"USD", "got b'USD'"),
        ("timestamp", b"2026-01-02", "got bytes"),
        ("event_name", "x" * 10_000_000, "at most 255 characters, got 10000000"),
        ("customer_avatar", "https://h.org/" + "a" * 10_000_000, "at most 2048"),
        ("timestamp", "2" * 10_000_000, "got '2222"),
        ("currency", "USD" * 10_000_000, "got 'USDUSD"),
    ],
    ids=lambda value: value[:20] if isinstance(value, str) else None,
)
def test_other_types_and_huge_values_are_refused_with_a_short_one_line_message(
    field: str, value: Any, rule_part: str
) -> None:
    error = refusal(sale, **{field: value})
    assert error.field == field
    assert rule_part in error.rule
    assert len(error.rule) <= 200 and "\n" not in error.rule


def test_a_refusal_through_the_client_is_a_422_naming_the_field() -> None:
    client = CMSClient(token="t", disabled=True)
    result = client.track_sale("buy", "u1", "inv1", float("inf"), "USD")
    assert (result.success, result["status_code"]) == (False, 422)
    assert list(result.details or {}) == ["amount"]
    assert (result.error or "").startswith("amount: ")
