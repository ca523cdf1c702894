"""The emulator over real loopback HTTP: the API's rules, fault injection and control routes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import pytest
import requests

import cms_shipper.emulator
from cms_shipper.emulator import Emulator

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEAD: dict[str, Any] = {"eventName": "signup", "customerExternalId": "u1", "clickId": "clk_1"}
SALE: dict[str, Any] = {
    "eventName": "purchase", "customerExternalId": "u1", "clickId": "clk_1",
    "invoiceId": "inv_1", "amount": 4999, "currency": "USD",
}  # fmt: skip


def post(
    http: requests.Session,
    emu: Emulator,
    endpoint: str,
    payload: Any,
    headers: Optional[dict[str, str]] = None,
) -> requests.Response:
    return http.post(
        f"{emu.url}/track/{endpoint}",
        json=payload,
        headers=AUTH if headers is None else headers,
        timeout=(2, 10),
    )


def lead(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**LEAD, **changes}.items() if v is not None}


def sale(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**SALE, **changes}.items() if v is not None}


def poll(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_public_names_are_locked() -> None:
    assert cms_shipper.emulator.__all__ == ["Emulator", "RecordedEvent", "RequestLog"]


def test_lead_and_sale_are_recorded_over_one_keep_alive_connection(
    emu: Emulator, session: requests.Session
) -> None:
    first = post(session, emu, "lead", lead(customerEmail="jane@example.com"))
    second = post(session, emu, "sale", sale())
    assert first.status_code == second.status_code == 200
    body = second.json()
    assert body["status"] is True and body["success"] is True and "evt_000002" in body["data"]
    events = emu.events
    assert [(e.seq, e.endpoint) for e in events] == [(1, "lead"), (2, "sale")]
    assert events[1].payload == SALE and events[0].payload["customerEmail"] == "jane@example.com"
    assert events[0].received_at <= events[1].received_at <= time.time()
    assert [(r.path, r.status) for r in emu.requests] == [
        ("/track/lead", 200),
        ("/track/sale", 200),
    ]
    adapter = session.get_adapter(emu.url)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    pools = adapter.poolmanager.pools
    opened = [pools[key].num_connections for key in pools.keys()]  # noqa: SIM118  # no __iter__
    assert opened == [1]  # both requests went over the same keep-alive connection


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer "}],
    ids=["missing", "wrong-token", "no-scheme", "empty-token"],
)
def test_missing_or_wrong_token_is_401(
    emu: Emulator, session: requests.Session, headers: dict[str, str]
) -> None:
    answer = post(session, emu, "lead", lead(), headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {
        "success": False, "error": answer.json()["error"],
        "type": "unauthorized", "statusCode": 401,
    }  # fmt: skip
    assert emu.events == [] and [r.status for r in emu.requests] == [401]


def test_token_none_accepts_any_bearer_token(session: requests.Session) -> None:
    with Emulator(token=None) as emu:
        assert (
            post(session, emu, "lead", lead(), {"Authorization": "Bearer any"}).status_code == 200
        )
        assert post(session, emu, "lead", lead(), {}).status_code == 401


@pytest.mark.parametrize(
    ("endpoint", "payload", "field", "rule"),
    [
        ("lead", lead(eventName=None), "eventName", "required"),
        ("lead", lead(customerExternalId=""), "customerExternalId", "required"),
        ("lead", lead(customerExternalId="x" * 256), "customerExternalId", "255"),
        ("lead", lead(clickId=42), "clickId", "string"),
        ("lead", lead(customerEmail="not-an-email"), "customerEmail", "email"),
        ("lead", lead(customerAvatar="ftp://example.com/a.png"), "customerAvatar", "URL"),
        ("lead", lead(timestamp="yesterday"), "timestamp", "ISO 8601"),
        ("lead", lead(mode="instant"), "mode", "deferred"),
        ("lead", lead(clickId=None, mode="deferred"), "clickId", "deferred"),
        ("sale", sale(invoiceId=None), "invoiceId", "required"),
        ("sale", sale(amount=49.99), "amount", "integer"),
        ("sale", sale(amount=True), "amount", "integer"),
        ("sale", sale(amount=-1), "amount", "integer"),
        ("sale", sale(currency="usd"), "currency", "upper-case"),
        ("sale", sale(currency="US"), "currency", "3"),
    ],
)
def test_validation_failures_are_422_with_details(
    emu: Emulator, session: requests.Session, endpoint: str, payload: Any, field: str, rule: str
) -> None:
    answer = post(session, emu, endpoint, payload)
    assert answer.status_code == 422
    body = answer.json()
    assert (body["success"], body["type"], body["statusCode"]) == (False, "validation_error", 422)
    assert body["error"] == "Validation failed" and rule in body["details"][field]
    assert emu.events == []


def test_valid_edge_values_and_unknown_fields_are_accepted(
    emu: Emulator, session: requests.Session
) -> None:
    payload = lead(timestamp="2024-05-01T12:00:00.123Z", customerAvatar="http://x.io/a", extra=1)
    assert post(session, emu, "lead", payload).status_code == 200
    assert post(session, emu, "sale", sale(amount=0, currency="EUR")).status_code == 200
    assert len(emu.events) == 2


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""], ids=["text", "array", "empty"])
def test_a_body_that_is_not_a_json_object_is_400(
    emu: Emulator, session: requests.Session, body: bytes
) -> None:
    answer = session.post(f"{emu.url}/track/lead", data=body, headers=AUTH, timeout=5)
    assert answer.status_code == 400 and answer.json()["type"] == "bad_request"
    assert emu.events == []


def test_unknown_path_is_404_and_get_on_an_endpoint_is_405(
    emu: Emulator, session: requests.Session
) -> None:
    missing = session.post(f"{emu.url}/track/refund", json=LEAD, headers=AUTH, timeout=5)
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"
    assert session.get(f"{emu.url}/track/lead", timeout=5).status_code == 405
    assert emu.events == []


def test_deferred_association_flow(emu: Emulator, session: requests.Session) -> None:
    setup = lead(customerExternalId="c1", clickId="clk_A", mode="deferred")
    assert post(session, emu, "lead", setup).status_code == 200
    follow_up = lead(customerExternalId="c1", clickId=None, eventName="kyc")
    assert post(session, emu, "lead", follow_up).status_code == 200
    assert (
        post(session, emu, "sale", sale(customerExternalId="c1", clickId=None)).status_code == 200
    )
    # Sending the same set-up again is a duplicate; another clickId is a conflict.
    again = post(session, emu, "lead", setup)
    assert again.status_code == 409 and again.json()["type"] == "conflict"
    for changes in ({"clickId": "clk_B", "mode": "deferred"}, {"clickId": "clk_B"}):
        conflict = post(session, emu, "lead", lead(customerExternalId="c1", **changes))
        assert conflict.status_code == 422
        assert "attribution conflict" in conflict.json()["details"]["clickId"]
    bad_sale = post(
        session, emu, "sale", sale(customerExternalId="c1", clickId="clk_B", invoiceId="i2")
    )
    assert "attribution conflict" in bad_sale.json()["details"]["clickId"]
    # No association at all: a follow-up cannot be attributed.
    orphans = [
        ("lead", lead(customerExternalId="c2", clickId=None)),
        ("sale", sale(customerExternalId="c2", clickId=None, invoiceId="i3")),
    ]
    for endpoint, payload in orphans:
        orphan = post(session, emu, endpoint, payload)
        assert orphan.status_code == 422
        assert orphan.json()["details"]["clickId"].startswith("required")
    assert [e.payload["eventName"] for e in emu.events] == ["signup", "kyc", "purchase"]


def test_a_lead_with_click_id_stores_the_association_for_later_events(
    emu: Emulator, session: requests.Session
) -> None:
    assert post(session, emu, "lead", lead(customerExternalId="c3")).status_code == 200
    assert (
        post(session, emu, "lead", lead(customerExternalId="c3", clickId=None)).status_code == 200
    )
    # A sale's own clickId is taken at its word and creates no association.
    assert post(session, emu, "sale", sale(customerExternalId="c4")).status_code == 200
    assert (
        post(session, emu, "lead", lead(customerExternalId="c4", clickId=None)).status_code == 422
    )


def test_repeated_invoice_is_409_and_not_recorded_again(
    emu: Emulator, session: requests.Session
) -> None:
    assert post(session, emu, "sale", sale()).status_code == 200
    again = post(session, emu, "sale", sale(amount=1))
    assert again.status_code == 409
    assert again.json() == {
        "success": False, "error": "Duplicate invoiceId", "type": "conflict", "statusCode": 409,
    }  # fmt: skip
    assert len(emu.events) == 1 and [r.status for r in emu.requests] == [200, 409]


def test_rate_limit_answers_429_with_retry_after_until_the_window_resets(
    session: requests.Session,
) -> None:
    with Emulator(rate_limit=2, rate_limit_window_s=1.0) as emu:
        statuses = [post(session, emu, "lead", lead()).status_code for _ in range(2)]
        limited = post(session, emu, "lead", lead())
        assert statuses == [200, 200] and limited.status_code == 429
        assert limited.json()["type"] == "rate_limited"
        retry_after = int(limited.headers["Retry-After"])
        assert retry_after == 1  # ceil of the < 1 s left in the window, at least 1
        assert post(session, emu, "lead", lead()).status_code == 429  # 429s are not counted
        time.sleep(retry_after)  # exactly what the server asked for: not a sleep for luck
        assert post(session, emu, "lead", lead()).status_code == 200
        assert len(emu.events) == 3


def test_error_rate_one_answers_error_status_and_records_nothing(
    emu: Emulator, session: requests.Session
) -> None:
    emu.configure(error_rate=1.0, error_status=500, retry_after_s=3)
    answers = [post(session, emu, "lead", lead()) for _ in range(3)]
    assert [a.status_code for a in answers] == [500] * 3
    assert answers[0].headers["Retry-After"] == "3" and answers[0].json()["statusCode"] == 500
    assert emu.events == [] and [r.status for r in emu.requests] == [500] * 3


def test_error_injection_is_reproducible_with_a_seed(session: requests.Session) -> None:
    runs = []
    for _ in range(2):
        with Emulator(error_rate=0.5, seed=11) as emu:
            runs.append([
                post(session, emu, "lead", lead(customerExternalId=f"u{i}")).status_code
                for i in range(16)
            ])  # fmt: skip
    assert runs[0] == runs[1] and {200, 503} == set(runs[0])


def test_outage_with_a_status_records_nothing_until_it_ends(
    emu: Emulator, session: requests.Session
) -> None:
    emu.outage(status=502)
    answer = post(session, emu, "lead", lead())
    assert answer.status_code == 502 and emu.events == []
    emu.end_outage()
    assert post(session, emu, "lead", lead()).status_code == 200
    assert [r.status for r in emu.requests] == [502, 200] and len(emu.events) == 1


def test_outage_in_reset_mode_closes_the_connection_without_an_answer(
    emu: Emulator, session: requests.Session
) -> None:
    emu.outage(mode="reset")
    with pytest.raises(requests.ConnectionError):
        post(session, emu, "lead", lead())
    emu.end_outage()
    assert post(session, emu, "lead", lead()).status_code == 200  # the pool reconnects
    assert [r.status for r in emu.requests] == [None, 200] and len(emu.events) == 1


def test_outage_ends_by_itself_after_its_duration(emu: Emulator, session: requests.Session) -> None:
    started = time.monotonic()
    emu.outage(0.3)
    assert post(session, emu, "lead", lead()).status_code == 503
    assert poll(lambda: post(session, emu, "lead", lead()).status_code == 200)
    assert time.monotonic() - started >= 0.3
    assert len(emu.events) == 1


def test_dropped_connection_after_record_keeps_the_event(
    emu: Emulator, session: requests.Session
) -> None:
    emu.drop_connection_after_record(1)
    with pytest.raises(requests.ConnectionError):
        post(session, emu, "sale", sale())
    assert [e.payload["invoiceId"] for e in emu.events] == ["inv_1"]
    assert post(session, emu, "sale", sale()).status_code == 409  # the client's retry
    assert post(session, emu, "sale", sale(invoiceId="inv_2")).status_code == 200  # count used up
    assert [r.status for r in emu.requests] == [None, 409, 200]


def test_latency_delays_answers(emu: Emulator, session: requests.Session) -> None:
    emu.configure(latency_s=0.2)
    started = time.monotonic()
    assert post(session, emu, "lead", lead()).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_stop_returns_promptly_while_a_request_hangs() -> None:
    emu = Emulator(latency_s=30.0).start()
    outcome: list[BaseException] = []

    def hang() -> None:
        try:
            requests.post(f"{emu.url}/track/lead", json=LEAD, headers=AUTH, timeout=(2, 20))
        except requests.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=hang)
    caller.start()
    try:
        assert poll(lambda: emu.in_flight == 1)  # the request is held by the latency
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 2.0
        caller.join(2.0)
        assert not caller.is_alive()  # the held request was cut off, not left for 30 s
        assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
        assert emu.events == [] and not emu.running
    finally:
        emu.stop()  # idempotent
        caller.join(20.0)


def test_run_forever_serves_until_stopped() -> None:
    emu = Emulator()
    server = threading.Thread(target=emu.run_forever)
    server.start()
    try:
        assert poll(lambda: emu.running)
        assert requests.get(f"{emu.url}/_emulator/health", timeout=5).json() == {"ok": True}
    finally:
        emu.stop()
        server.join(2.0)
    assert not server.is_alive() and not emu.running


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child is POSIX-only")
def test_run_forever_stops_cleanly_on_ctrl_c() -> None:
    script = "from cms_shipper.emulator import Emulator\n" + (
        "emu = Emulator().start(); print(emu.url, flush=True); emu.run_forever()"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    ) as child:  # fmt: skip
        try:
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            assert requests.get(f"{url}/_emulator/health", timeout=5).status_code == 200
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=10)
        finally:
            child.kill()
    assert child.returncode == 0 and stderr == ""
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_emulator/health", timeout=5)


def test_stopped_emulator_closes_idle_keep_alive_connections(session: requests.Session) -> None:
    with Emulator() as emu:
        assert post(session, emu, "lead", lead()).status_code == 200
    with pytest.raises(requests.ConnectionError):
        post(session, emu, "lead", lead())


def test_http_control_routes(emu: Emulator, session: requests.Session) -> None:
    assert session.get(f"{emu.url}/_emulator/health", timeout=5).json() == {"ok": True}
    post(session, emu, "lead", lead(mode="deferred"))
    post(session, emu, "lead", {"eventName": "x"})
    events = session.get(f"{emu.url}/_emulator/events", timeout=5).json()["events"]
    assert events == [
        {"seq": 1, "endpoint": "lead", "payload": lead(mode="deferred"),
         "received_at": emu.events[0].received_at},
    ]  # fmt: skip
    logged = session.get(f"{emu.url}/_emulator/requests", timeout=5).json()["requests"]
    assert [(r["path"], r["status"]) for r in logged] == [
        ("/track/lead", 200),
        ("/track/lead", 422),
    ]
    assert session.post(f"{emu.url}/_emulator/reset", timeout=5).status_code == 200
    assert emu.events == [] and emu.requests == []
    # The association went with the reset: a follow-up has nothing to attach to.
    assert post(session, emu, "lead", lead(clickId=None)).status_code == 422


def test_reset_restores_the_constructor_faults(session: requests.Session) -> None:
    with Emulator(latency_s=0.0, error_rate=0.0) as emu:
        emu.configure(error_rate=1.0)
        emu.outage(status=500)
        emu.drop_connection_after_record(5)
        emu.reset()
        assert post(session, emu, "lead", lead()).status_code == 200
        assert len(emu.events) == 1


def test_wait_for_events_and_requests(emu: Emulator, session: requests.Session) -> None:
    assert emu.wait_for_events(1, 0.05) is False
    sender = threading.Thread(target=lambda: [post(session, emu, "lead", lead()) for _ in range(2)])
    sender.start()
    try:
        assert emu.wait_for_events(2, 5.0) and emu.wait_for_requests(2, 5.0)
    finally:
        sender.join(5.0)
    assert emu.wait_for_requests(3, 0.05) is False


@pytest.mark.parametrize(
    "changes",
    [{"error_rate": 1.5}, {"latency_s": -1}, {"rate_limit": 0}, {"error_status": 200},
     {"rate_limit_window_s": 0}, {"token": ""}],
)  # fmt: skip
def test_configure_rejects_bad_values_and_keeps_the_old_ones(
    emu: Emulator, session: requests.Session, changes: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        emu.configure(**changes)
    assert post(session, emu, "lead", lead()).status_code == 200


def test_the_token_is_never_kept_or_logged(
    session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tok-" + "1a2b3c4d" * 4
    with (
        caplog.at_level(logging.DEBUG, logger="cms_shipper.emulator"),
        Emulator(token=secret, rate_limit=5) as emu,
    ):
        post(session, emu, "lead", lead(), {"Authorization": f"Bearer {secret}"})
        post(session, emu, "lead", lead(), {"Authorization": f"Bearer {secret}x"})
        exposed = [repr(emu), repr(emu.events), repr(emu.requests), repr(emu._state.__dict__)]
        exposed += [session.get(f"{emu.url}/_emulator/requests", timeout=5).text]
    exposed += [r.getMessage() for r in caplog.records]
    assert len(emu.events) == 1 and caplog.records  # something was logged, without the token
    assert not [text for text in exposed if secret in text]


def test_pytest_plugin_fixture_serves_the_test_token(
    cms_emulator: Emulator, session: requests.Session
) -> None:
    assert cms_emulator.running and cms_emulator.url == f"http://127.0.0.1:{cms_emulator.port}"
    assert post(session, cms_emulator, "lead", lead()).status_code == 200
