"""The emulator's request log: one INFO line per /track request, never the token."""

from __future__ import annotations

import logging

import pytest
import requests

from cms_shipper.emulator import Emulator

TOKEN = "test-token"
LOGGER = "cms_shipper.emulator"
LEAD = {"eventName": "signup", "customerExternalId": "user_42", "clickId": "clk_1"}


def _post(emu: Emulator, path: str, body: object, token: str = TOKEN) -> int:
    answer = requests.post(
        emu.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    return answer.status_code


def _track_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def test_one_info_line_per_track_request_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)  # DEBUG too: no record may hold the token
    with Emulator(token=TOKEN, log_requests=True) as emu:
        assert _post(emu, "/track/lead", LEAD) == 200
        assert _post(emu, "/track/lead", LEAD, token="wrong-secret") == 401
        assert _post(emu, "/track/sale", {"eventName": "x"}) == 422
        assert emu.wait_for_requests(3, timeout_s=5)
    lines = [r.getMessage() for r in _track_lines(caplog)]
    assert len(lines) == 3
    assert lines[0].startswith("POST /track/lead 200 customerExternalId=user_42 ")
    assert lines[1].startswith("POST /track/lead 401 customerExternalId=user_42 ")
    assert lines[2].startswith("POST /track/sale 422 customerExternalId=- ")
    assert all(line.endswith(" ms") for line in lines)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert TOKEN not in text and "wrong-secret" not in text and "Bearer" not in text


def test_an_unanswered_request_logs_a_dash_for_its_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Emulator(log_requests=True) as emu:
        emu.outage(mode="reset")
        with pytest.raises(requests.ConnectionError):
            _post(emu, "/track/lead", LEAD)
        assert emu.wait_for_requests(1, timeout_s=5)
    assert [r.getMessage().split(" ")[:3] for r in _track_lines(caplog)] == [
        ["POST", "/track/lead", "-"]
    ]


def test_a_customer_id_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Emulator(log_requests=True) as emu:
        _post(emu, "/track/lead", {**LEAD, "customerExternalId": "a\nPOST /track/lead 200"})
        assert emu.wait_for_requests(1, timeout_s=5)
    (line,) = [r.getMessage() for r in _track_lines(caplog)]
    assert "\n" not in line and "customerExternalId='a\\nPOST" in line


def test_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Emulator() as emu:
        assert _post(emu, "/track/lead", LEAD) == 200
        assert emu.wait_for_requests(1, timeout_s=5)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_configure_turns_it_on_and_reset_back_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Emulator() as emu:
        emu.configure(log_requests=True)
        assert _post(emu, "/track/lead", LEAD) == 200
        emu.reset()
        assert _post(emu, "/track/lead", LEAD) == 200
        assert emu.wait_for_requests(1, timeout_s=5)
    assert len(_track_lines(caplog)) == 1


def test_the_fixture_exposes_the_token_it_accepts(cms_emulator: Emulator) -> None:
    assert cms_emulator.token == "test-token"
    assert _post(cms_emulator, "/track/lead", LEAD, token=cms_emulator.token) == 200
    assert "test-token" not in repr(cms_emulator)
    cms_emulator.configure(token=None)  # any token
    assert cms_emulator.token is None
    with pytest.raises(AttributeError):
        cms_emulator.token = "other"  # type: ignore[misc]
