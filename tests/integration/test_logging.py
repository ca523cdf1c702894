"""Log lines of the real client against the real emulator: one per kind of problem."""

from __future__ import annotations

import json
import logging

import pytest

from cms_shipper._books.outcomes import Reporter, from_reply
from cms_shipper._config import Secret, Settings
from cms_shipper._engine.transport import Transport
from cms_shipper._events.build import build_sale
from cms_shipper._log import RateLimitedLog
from cms_shipper.emulator import Emulator
from cms_shipper.results import Outcome, Reason

from .conftest import TOKEN, ClientFactory, adds_up

LOGGER = "cms_shipper"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


def test_200_invalid_events_of_two_kinds_log_two_lines_and_count_200(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for i in range(100):
            client.track_sale("purchase", f"u{i}", f"inv{i}", 49.99, "USD")  # type: ignore[arg-type]
            client.track_sale("purchase", f"u{i}", f"inv{i}", 4999, "USD", customer_email=f"bad{i}")
        assert client.flush(10.0)
    stats = client.stats()
    assert stats["rejected"] == 200 and stats["reasons"]["rejected"] == {"invalid": 200}
    assert adds_up(stats)
    lines = _warnings(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("invalid event - rejected (invalid, HTTP 422): amount: ")
    assert lines[1].startswith("invalid event - rejected (invalid, HTTP 422): customer_email: ")
    assert not any(line.startswith("cms_shipper:") for line in lines)


def test_a_server_rejection_line_names_the_emulators_field_and_rule(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The client validates as the emulator does, so a body it would never build is sent
    # straight through the transport to get the emulator's real 422 answer.
    event = build_sale(
        "evt_x", 0.0, event_name="purchase", customer_external_id="u1", invoice_id="inv1",
        amount=4999, currency="USD",
    )  # fmt: skip
    transport = Transport(emu.url, Secret(TOKEN), 2.0, 5.0, 1)
    try:
        bodies = [{**event.body(), "amount": 49.99}, {**event.body(), "currency": "usd"}]
        replies = [transport.send(event.path, json.dumps(body).encode()) for body in bodies * 3]
    finally:
        transport.close()
    assert [reply.status_code for reply in replies] == [422] * 6
    reporter = Reporter(Settings(token=None, host=emu.url), RateLimitedLog())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for reply in replies:
            final = from_reply(event, reply, Outcome.REJECTED, Reason.HTTP_ERROR, 1)
            reporter.report(final, inline=True)
    assert _warnings(caplog) == [
        "sale event evt_x rejected (http_error, HTTP 422): Validation failed: "
        "amount: must be a non-negative integer (cents)",
        "sale event evt_x rejected (http_error, HTTP 422): Validation failed: "
        "currency: must be 3 upper-case letters (ISO 4217)",
    ]


def test_a_rejection_by_status_is_one_line_per_status(
    cms_emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cms_emulator.fail_customer("refused", status=422)
    cms_emulator.fail_customer("forbidden", status=403)
    client = make_client()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(20):
            client.track_lead(f"signup{i}", "refused")
            client.track_lead(f"signup{i}", "forbidden")
        assert client.flush(10.0)
    stats = client.stats()
    assert stats["rejected"] == 40 and adds_up(stats)
    lines = _warnings(caplog)
    assert len(lines) == 2, lines
    assert sorted(line.split(" rejected ")[1] for line in lines) == [
        "(http_error, HTTP 403): Injected failure for this customer",
        "(http_error, HTTP 422): Injected failure for this customer",
    ]
