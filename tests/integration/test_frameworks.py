"""Each framework example, driven by the framework's own test client, against the emulator."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from cms_shipper.emulator import Emulator
from cms_shipper.integrations import click_id_from
from cms_shipper.integrations.aws_lambda import click_id_from_event

from .conftest import TOKEN

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "frameworks"
USER = {"user_id": "user_7"}
SALE = {**USER, "invoice_id": "inv_7", "amount_cents": "4999", "currency": "USD"}


@pytest.fixture
def load(
    monkeypatch: pytest.MonkeyPatch, cms_emulator: Emulator
) -> Iterator[Callable[[str], ModuleType]]:
    """Import an example fresh, with CMS_HOST/CMS_BEARER_TOKEN pointing at the emulator."""
    monkeypatch.setenv("CMS_HOST", cms_emulator.url)
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    loaded: list[str] = []

    def importer(name: str) -> ModuleType:
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield importer
    for name in loaded:
        module = sys.modules.pop(name, None)
        client = getattr(module, "client", None) or getattr(
            getattr(module, "cms", None), "client", None
        )
        if client is not None:
            client.close(2.0)


def assert_journey(emulator: Emulator) -> None:
    assert emulator.wait_for_events(3, timeout_s=15.0)
    events = [(e.endpoint, e.payload["eventName"]) for e in emulator.events]
    assert events == [("lead", "signup"), ("lead", "email_verified"), ("sale", "purchase")]
    setup = emulator.events[0].payload
    assert setup["clickId"] == "clk_77" and setup["mode"] == "deferred"
    assert emulator.events[2].payload["amount"] == 4999


def test_click_id_helper() -> None:
    assert click_id_from({"cms_rf": " c1 "}, {"cms_rf": "q"}) == "c1"
    assert click_id_from({}, {"cms_rf": "q1"}) == "q1"
    assert click_id_from({"cms_rf": ""}, None) is None
    assert click_id_from({"cms_rf": "x" * 256}) is None
    event = {"cookies": ["a=b", "cms_rf=c2"], "queryStringParameters": {"cms_rf": "q"}}
    assert click_id_from_event(event) == "c2"
    assert click_id_from_event({"headers": {"Cookie": "x=1; cms_rf=c3"}}) == "c3"


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = call()
    return out, time.perf_counter() - started


def test_flask_example(load: Callable[[str], ModuleType], cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=0.2)  # the handler must not wait for the API
    web = load("flask_app").app.test_client()
    web.set_cookie("cms_rf", "clk_77")
    answer, took = timed(lambda: web.post("/signup", data=USER))
    assert answer.json == {"tracked": True} and took < 0.2, took
    assert web.post("/verify", data=USER).status_code == 200
    assert web.post("/checkout", data=SALE).json["queued"] is True
    assert_journey(cms_emulator)
    print(f"flask: /signup answered in {took * 1000:.1f} ms with the API at 200 ms")


def test_fastapi_example(load: Callable[[str], ModuleType], cms_emulator: Emulator) -> None:
    from fastapi.testclient import TestClient

    cms_emulator.configure(latency_s=0.2)
    app = load("fastapi_app").app
    with TestClient(app, cookies={"cms_rf": "clk_77"}) as web:  # runs the lifespan
        answer, took = timed(lambda: web.post("/signup", data=USER))
        assert answer.json() == {"tracked": True} and took < 0.2, took
        assert web.post("/verify", data=USER).status_code == 200
        assert web.post("/checkout", data=SALE).json() == {"queued": True}
        client = app.state.cms
    # Leaving the TestClient ran the lifespan's shutdown: aclose flushed everything.
    assert len(cms_emulator.events) == 3 and client.stats()["closed"]
    assert_journey(cms_emulator)
    print(f"fastapi: /signup answered in {took * 1000:.1f} ms with the API at 200 ms")


def test_lambda_example_flushes_after_each_invocation(
    load: Callable[[str], ModuleType], cms_emulator: Emulator
) -> None:
    handler = load("lambda_handler").handler
    cookies = {"cookies": ["cms_rf=clk_77"]}
    for invocation, body in enumerate(({**USER, "action": "signup"}, {**USER, "action": "verify"},
                 {**USER, "invoice_id": "inv_7", "amount_cents": 4999}), start=1):  # fmt: skip
        reply = handler({**cookies, "body": json.dumps(body)}, None)
        assert reply["statusCode"] == 200
        # Flushed before returning: the event is already at the API when the handler ends.
        assert len(cms_emulator.events) == invocation
    assert_journey(cms_emulator)


def test_gunicorn_worker_exit_hook_closes_the_client(
    load: Callable[[str], ModuleType], cms_emulator: Emulator
) -> None:
    app_module = load("flask_app")
    conf = load("gunicorn_conf")
    app_module.cms.client.track_lead("signup", "u1", click_id="c1")
    conf.worker_exit(server=None, worker=None)
    assert app_module.cms.client.stats()["closed"] and len(cms_emulator.events) == 1


def test_django_example(load: Callable[[str], ModuleType], cms_emulator: Emulator) -> None:
    pytest.importorskip("django")
    load("django_app")
    import django
    from django.test import Client

    from cms_shipper.integrations import django as cms_django

    django.setup()
    from django.test import RequestFactory

    query_only = RequestFactory().get("/signup", {"cms_rf": "clk_q"})
    assert cms_django.click_id(query_only) == "clk_q"  # no cookie: the query parameter
    cms_django.reset_client()  # a client left by an earlier test would point elsewhere
    cms_emulator.configure(latency_s=0.2)
    web = Client()
    web.cookies["cms_rf"] = "clk_77"
    answer, took = timed(lambda: web.post("/signup", USER))
    assert answer.json() == {"tracked": True} and took < 0.2, took
    assert web.post("/verify", USER).status_code == 200
    assert web.post("/checkout", SALE).json() == {"queued": True}
    client = cms_django.get_client()
    assert client.flush(15.0)
    cms_django.reset_client(2.0)
    assert client.stats()["closed"]
    assert_journey(cms_emulator)
    print(f"django: /signup answered in {took * 1000:.1f} ms with the API at 200 ms")


def test_celery_example(load: Callable[[str], ModuleType], cms_emulator: Emulator) -> None:
    pytest.importorskip("celery")
    from celery import signals

    tasks = load("celery_app")
    signals.worker_process_init.send(sender=None)  # what a prefork child does on start
    client = tasks.get_client()
    cms_emulator.configure(latency_s=0.2)
    _, took = timed(lambda: tasks.on_signup.delay("user_7", "clk_77"))
    # flush_after_task: the eager task ended with a flush, so the event is already there.
    assert len(cms_emulator.events) == 1 and took >= 0.2
    cms_emulator.configure(latency_s=0.0)
    assert tasks.on_verified.delay("user_7").get() is True
    assert tasks.on_paid.delay("user_7", "inv_7", 4999, "USD").get() is True
    signals.worker_process_shutdown.send(sender=None)  # what a prefork child does on exit
    assert client.stats()["closed"]
    assert_journey(cms_emulator)


def test_django_reports_a_missing_token_at_start_up_and_at_the_view(
    load: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("django")
    load("django_app")
    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.test import Client

    from cms_shipper.integrations import django as cms_django

    django.setup()
    cms_django.reset_client()
    assert cms_django.check_settings() == []  # the token comes from CMS_BEARER_TOKEN
    monkeypatch.delenv("CMS_BEARER_TOKEN")
    (error,) = cms_django.check_settings()
    assert error.id == "cms_shipper.E001" and error.is_serious()
    assert 'settings.CMS_SHIPPER["token"]' in error.hint and "CMS_BEARER_TOKEN" in error.hint
    # A server that runs no checks: the first view that tracks names the setting.
    with pytest.raises(ImproperlyConfigured, match=r'cms_shipper\.E001: .*CMS_SHIPPER\["token"\]'):
        Client().post("/verify", USER)
    from django.test import override_settings

    with override_settings(CMS_SHIPPER={"token": TOKEN, "options": {"batch_size": 0}}):
        (bad,) = cms_django.check_settings()
    assert bad.id == "cms_shipper.E002"
    assert bad.msg.startswith('settings.CMS_SHIPPER["options"]["batch_size"]: must be'), bad.msg
    with override_settings(CMS_SHIPPER={"token": TOKEN}):
        assert cms_django.check_settings() == []


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "without-token"])
def test_django_check_command_runs_the_start_up_check(
    token: str | None, cms_emulator: Emulator
) -> None:
    pytest.importorskip("django")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env["CMS_HOST"] = cms_emulator.url
    if token:
        env["CMS_BEARER_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "django_app.py", "check"], cwd=EXAMPLES, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if token:
        assert done.returncode == 0, done.stderr
        assert "System check identified no issues" in done.stdout
    else:
        assert done.returncode == 1
        assert "(cms_shipper.E001)" in done.stderr and "HINT:" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("script", "user"),
    [("celery_app.py", "celery_example_user"), ("lambda_handler.py", "lambda_example_user")],
)
def test_celery_and_lambda_examples_run_as_scripts(
    script: str, user: str, cms_emulator: Emulator
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update(CMS_HOST=cms_emulator.url, CMS_BEARER_TOKEN=TOKEN)

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script], cwd=EXAMPLES, env={**env, **extra},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 of 3 events taken by the API" in first.stdout, first.stdout
    assert [(e.payload["customerExternalId"], e.payload["eventName"]) for e in
            cms_emulator.events] == [(user, "signup"), (user, "email_verified"),
                                     (user, "purchase")]  # fmt: skip
    again = run()  # the same ids again: 409 duplicates (a success), then the follow-up
    assert again.returncode == 0, again.stdout + again.stderr
    rejected = run(CMS_BEARER_TOKEN="not-the-emulators-token")
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "0 of 3 events taken by the API" in rejected.stdout
    # A refused token pauses sending (one ERROR line); the events wait, then are dropped
    # with reason unauthorized at exit (no spool), not rejected one by one.
    assert "the API refused the token (HTTP 401)" in rejected.stderr, rejected.stderr
    assert "dropped (unauthorized)" in rejected.stderr, rejected.stderr
