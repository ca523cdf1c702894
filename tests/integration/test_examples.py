"""The examples, run the way users run them, against the real emulator.

The scripts run in real subprocesses (``python examples/x.py``) with CMS_HOST and
CMS_BEARER_TOKEN pointing at an emulator started here; the Flask app is driven through
Flask's own test client, and once as a real dev server stopped with Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from cms_shipper import CMSClient
from cms_shipper.emulator import Emulator, RecordedEvent

from .conftest import TOKEN, unused_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CLICK = "5e6e1650-5641-4a2b-bec6-218288a86dbf"  # the vendor docs' click id
RUN_TIMEOUT_S = 60.0
EVENTS_TIMEOUT_S = 15.0


def example_env(emulator: Emulator, **extra: str) -> dict[str, str]:
    """The test's environment without any CMS_* setting of its own, pointed at ``emulator``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update({"CMS_HOST": emulator.url, "CMS_BEARER_TOKEN": TOKEN, **extra})
    return env


def run_example(
    name: str, emulator: Emulator, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` as a script; its own output is checked by the caller."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT, env=example_env(emulator, CMS_BEARER_TOKEN=token), capture_output=True,
        text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip


def documented_cli_lead_line() -> list[str]:
    """The ``cms-shipper lead ...`` line of the docs' Command line section, as argv."""
    text = (ROOT / "docs" / "emulator-and-cli.md").read_text(encoding="utf-8")
    start = text.index("\n## Command line\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    match = re.search(r"`(cms-shipper lead [^`]+)`", section)
    assert match, "the docs' Command line section shows no `cms-shipper lead` line"
    return shlex.split(match.group(1))


def recorded(emulator: Emulator, n: int) -> list[RecordedEvent]:
    """Exactly ``n`` recorded events, waiting (bounded) for them to arrive."""
    assert emulator.wait_for_events(n, timeout_s=EVENTS_TIMEOUT_S), emulator.events
    events = emulator.events
    assert len(events) == n, events
    return events


def body(event: RecordedEvent) -> dict[str, Any]:
    """The recorded payload without its timestamp, which is checked apart."""
    return {k: v for k, v in event.payload.items() if k != "timestamp"}


def assert_stamped_between(event: RecordedEvent, start: float, end: float) -> None:
    """The event carries an ISO 8601 timestamp taken while the example ran."""
    stamp = datetime.fromisoformat(event.payload["timestamp"].replace("Z", "+00:00"))
    assert start - 1.0 <= stamp.timestamp() <= end + 1.0, event.payload["timestamp"]


def assert_clean_run(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert TOKEN not in done.stdout


# -- the scripts ----------------------------------------------------------------------


def test_lead_example_waits_for_the_answer_and_says_it_was_delivered(
    cms_emulator: Emulator,
) -> None:
    start = time.time()
    done = run_example("lead_example.py", cms_emulator)
    assert_clean_run(done)
    assert "'success': True" in done.stdout and "'message': 'queued'" in done.stdout
    assert "Lead tracked: delivered, HTTP 200" in done.stdout, done.stdout
    assert "Error" not in done.stdout
    (lead,) = recorded(cms_emulator, 1)
    assert lead.endpoint == "lead"
    assert body(lead) == {
        "eventName": "signup_started",
        "customerExternalId": "lead_example_user",
        "clickId": CLICK,
        "customerName": "John Doe",
        "customerEmail": "john@example.com",
    }
    assert_stamped_between(lead, start, time.time())
    assert [r.status for r in cms_emulator.requests] == [200]


def test_deferred_example_sets_up_the_click_then_follows_up_in_order(
    cms_emulator: Emulator,
) -> None:
    start = time.time()
    done = run_example("deferred_example.py", cms_emulator)
    assert_clean_run(done)
    assert done.stdout.count("Lead tracked: delivered, HTTP 200") == 2, done.stdout
    assert "Error" not in done.stdout
    setup, follow_up = recorded(cms_emulator, 2)
    assert (setup.endpoint, follow_up.endpoint) == ("lead", "lead")
    assert body(setup) == {
        "eventName": "lead_captured",
        "customerExternalId": "deferred_example_user",
        "clickId": CLICK,
        "customerName": "Jane Smith",
        "customerEmail": "jane@example.com",
        "mode": "deferred",
    }
    # The follow-up carries no click id and no mode: the API resolves the association.
    assert body(follow_up) == {
        "eventName": "kyc_completed",
        "customerExternalId": "deferred_example_user",
    }
    for event in (setup, follow_up):
        assert_stamped_between(event, start, time.time())
    assert [r.status for r in cms_emulator.requests] == [200, 200]


def test_sale_example_tracks_the_sale_in_cents(cms_emulator: Emulator) -> None:
    start = time.time()
    done = run_example("sale_example.py", cms_emulator)
    assert_clean_run(done)
    assert "Sale tracked: delivered, HTTP 200" in done.stdout, done.stdout
    (sale,) = recorded(cms_emulator, 1)
    assert sale.endpoint == "sale"
    assert body(sale) == {
        "eventName": "purchase_completed",
        "customerExternalId": "sale_example_user",
        "clickId": "id_123",
        "invoiceId": "inv_sale_example_987",
        "amount": 4999,
        "currency": "USD",
        "customerName": "John Doe",
        "customerEmail": "john@example.com",
    }
    assert_stamped_between(sale, start, time.time())


def test_the_documented_cli_line_then_every_example_twice_agree_on_one_emulator(
    cms_emulator: Emulator,
) -> None:
    # As a user would try them against one `cms-shipper emulator`: the docs' own
    # command line first, then each example twice. No attribution conflict anywhere; a
    # repeated deferred set-up or sale is a duplicate (409), which is not an error.
    argv = documented_cli_lead_line()
    cli = subprocess.run(
        [sys.executable, "-m", "cms_shipper", *argv[1:]], env=example_env(cms_emulator),
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    for name in ("lead_example.py", "deferred_example.py", "sale_example.py"):
        first, again = run_example(name, cms_emulator), run_example(name, cms_emulator)
        assert_clean_run(first)
        assert_clean_run(again)
    assert "Sale tracked: duplicate, HTTP 409" in again.stdout, again.stdout
    statuses = [r.status for r in cms_emulator.requests]
    # cli lead, lead x2, deferred set-up + follow-up x2 (set-up again: 409), sale x2 (409)
    assert statuses == [200, 200, 200, 200, 200, 409, 200, 200, 409], statuses
    customers = {e.payload["customerExternalId"] for e in cms_emulator.events}
    assert len(customers) == 4, customers  # the docs' and one per example


@pytest.mark.parametrize("name", ["lead_example.py", "deferred_example.py", "sale_example.py"])
def test_an_example_whose_event_is_rejected_says_so_and_exits_1(
    name: str, cms_emulator: Emulator
) -> None:
    done = run_example(name, cms_emulator, token="not-the-emulators-token")  # 401
    assert done.returncode == 1, done.stdout + done.stderr
    # The token is the client's trouble: sending pauses (one ERROR line) and the event
    # waits; the example's wait() returns at once without an answer, and says why.
    assert "Error:" in done.stdout, done.stdout
    assert "the API refused the token" in done.stdout, done.stdout
    assert "the API refused the token (HTTP 401)" in done.stderr, done.stderr
    assert "tracked:" not in done.stdout  # no success line for a rejected event
    assert cms_emulator.events == []


def test_the_lead_example_after_a_conflicting_lead_reports_the_conflict(
    cms_emulator: Emulator,
) -> None:
    # The API already holds another click for this customer: 422 attribution conflict.
    with CMSClient(token=TOKEN, host=cms_emulator.url) as seed:
        first = seed.track_lead("signup", "lead_example_user", click_id="clk_elsewhere")
        assert first.wait(EVENTS_TIMEOUT_S).outcome == "delivered"
    done = run_example("lead_example.py", cms_emulator)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Error:" in done.stdout and "attribution conflict" in done.stdout, done.stdout
    assert [r.status for r in cms_emulator.requests] == [200, 422]


# -- the Flask app, through Flask's test client -----------------------------------------


@pytest.fixture
def wsgi_app(cms_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh import of examples/wsgi_app.py whose client (made at import) uses the emulator."""
    for name in [k for k in os.environ if k.startswith("CMS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CMS_HOST", cms_emulator.url)
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    name = "cms_shipper_examples_wsgi_app"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "wsgi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        module.client.close(timeout_s=5.0)


def http_client(module: ModuleType) -> Any:
    """Flask's test client, sending the Cookie header we give it as is.

    Without its cookie jar, so the header passes through the same way on every
    supported Flask/Werkzeug version (their set_cookie signatures differ).
    """
    return module.app.test_client(use_cookies=False)


def test_signup_with_the_cookie_then_checkout_reach_the_api_in_order(
    wsgi_app: ModuleType, cms_emulator: Emulator
) -> None:
    http = http_client(wsgi_app)
    signup = http.post(
        "/signup",
        data={"user_id": "user_7", "name": "Ada Lovelace", "email": "ada@example.com"},
        headers={"Cookie": "cms_rf=clk_cookie"},
    )
    assert signup.status_code == 201, signup.get_data(as_text=True)
    assert signup.get_json()["tracking"]["queued"] is True
    checkout = http.post(
        "/checkout",
        json={"user_id": "user_7", "invoice_id": "inv_7", "amount_cents": "2500",
              "currency": "eur"},
    )  # fmt: skip
    assert checkout.status_code == 200, checkout.get_data(as_text=True)
    assert checkout.get_json()["tracking"]["queued"] is True
    lead, sale = recorded(cms_emulator, 2)
    assert (lead.endpoint, sale.endpoint) == ("lead", "sale")
    assert body(lead) == {
        "eventName": "sign_up",
        "customerExternalId": "user_7",
        "clickId": "clk_cookie",
        "customerName": "Ada Lovelace",
        "customerEmail": "ada@example.com",
        "mode": "deferred",
    }
    # No click id on the sale: the API attributes it through the deferred association
    # (it would refuse a sale that overtook its set-up).
    assert body(sale) == {
        "eventName": "purchase_completed",
        "customerExternalId": "user_7",
        "invoiceId": "inv_7",
        "amount": 2500,
        "currency": "EUR",
    }
    assert [r.status for r in cms_emulator.requests] == [200, 200]


@pytest.mark.parametrize(
    ("cookie", "query", "expected"),
    [(None, "clk_query", "clk_query"), ("clk_cookie", "clk_query", "clk_cookie")],
    ids=["query-parameter-fallback", "cookie-wins"],
)
def test_signup_reads_the_click_id_from_the_cookie_else_the_query(
    wsgi_app: ModuleType, cms_emulator: Emulator, cookie: Any, query: str, expected: str
) -> None:
    headers = {"Cookie": f"cms_rf={cookie}"} if cookie else {}
    answer = http_client(wsgi_app).post(
        f"/signup?cms_rf={query}", data={"user_id": "user_8"}, headers=headers
    )
    assert answer.status_code == 201
    (lead,) = recorded(cms_emulator, 1)
    assert lead.payload["clickId"] == expected and lead.payload["mode"] == "deferred"


def test_signup_without_a_click_id_tracks_nothing(
    wsgi_app: ModuleType, cms_emulator: Emulator
) -> None:
    answer = http_client(wsgi_app).post("/signup", data={"user_id": "user_9"})
    assert answer.status_code == 201 and answer.get_json()["tracking"] is None
    assert wsgi_app.client.flush(5.0)
    assert wsgi_app.client.stats()["tracked"] == 0
    assert cms_emulator.requests == []


def test_handlers_answer_while_the_api_is_down_and_the_event_follows(
    wsgi_app: ModuleType, cms_emulator: Emulator
) -> None:
    cms_emulator.outage(status=503)
    answer = http_client(wsgi_app).post(
        "/signup", data={"user_id": "user_10"}, headers={"Cookie": "cms_rf=clk_10"}
    )
    assert answer.status_code == 201 and answer.get_json()["tracking"]["queued"] is True
    # The client has tried and been refused: the handler did not wait for the API.
    assert cms_emulator.wait_for_requests(1, timeout_s=EVENTS_TIMEOUT_S)
    assert cms_emulator.events == [] and cms_emulator.requests[0].status == 503
    cms_emulator.end_outage()
    (lead,) = recorded(cms_emulator, 1)  # a retry delivers it
    assert lead.payload["customerExternalId"] == "user_10"


def test_a_malformed_checkout_is_reported_not_raised(
    wsgi_app: ModuleType, cms_emulator: Emulator
) -> None:
    http = http_client(wsgi_app)
    bad_amount = http.post("/checkout", data={"user_id": "u", "invoice_id": "i"})
    assert bad_amount.status_code == 400
    bad_currency = http.post(
        "/checkout",
        data={"user_id": "u", "invoice_id": "i", "amount_cents": "100", "currency": "dollars"},
    )
    assert bad_currency.status_code == 200
    tracking = bad_currency.get_json()["tracking"]
    assert tracking["queued"] is False and tracking["error"].startswith("currency")
    assert wsgi_app.client.flush(5.0)
    assert cms_emulator.requests == []


# -- the Flask app as a real dev server -------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT delivered to a child")
def test_dev_server_runs_and_stops_cleanly_on_ctrl_c_with_its_events_delivered(
    cms_emulator: Emulator,
) -> None:
    port = unused_port()
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "wsgi_app.py")],
        cwd=ROOT, env=example_env(cms_emulator, PORT=str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: accepts(port), timeout_s=RUN_TIMEOUT_S), "server not up"
        base = f"http://127.0.0.1:{port}"
        signup = requests.post(
            f"{base}/signup", data={"user_id": "user_11"}, cookies={"cms_rf": "clk_11"},
            timeout=10,
        )  # fmt: skip
        checkout = requests.post(
            f"{base}/checkout",
            data={"user_id": "user_11", "invoice_id": "inv_11", "amount_cents": "999"},
            timeout=10,
        )
        assert (signup.status_code, checkout.status_code) == (201, 200)
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, stderr
    assert TOKEN not in stderr
    lead, sale = recorded(cms_emulator, 2)
    assert (lead.payload["clickId"], sale.payload["invoiceId"]) == ("clk_11", "inv_11")


def accepts(port: int) -> bool:
    """Whether something listens on the loopback ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
