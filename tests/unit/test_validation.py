"""Validation in the caller's thread: each rule, the field it names, and normalization."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from freezegun import freeze_time

from cms_shipper import CMSClient, Outcome, Reason
from cms_shipper._events import build_lead, build_sale, format_timestamp
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
