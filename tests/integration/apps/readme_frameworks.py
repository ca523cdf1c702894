"""Drive the code of one README "Frameworks" section, written as files into the cwd.

    python readme_frameworks.py FRAMEWORK USER CLICK

The test writes each fenced python block of the section into the working directory under
the file name its first line gives (``# flask_app.py``), exactly as written, and runs this
script there with CMS_HOST/CMS_BEARER_TOKEN pointing at an emulator. It sends one signup
carrying the ``cms_rf`` cookie through the framework's own test client (or handler call),
lets the framework's shutdown path deliver it, and prints what happened as JSON.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from typing import Any, Callable

FLUSH_S = 10.0


def flask(user: str, click: str) -> dict[str, Any]:
    flask_app = importlib.import_module("flask_app")
    web = flask_app.app.test_client(use_cookies=False)
    reply = web.post("/signup", data={"user_id": user}, headers={"Cookie": f"cms_rf={click}"})
    client = flask_app.cms.client
    return {"reply": reply.get_json(), "flushed": bool(client.flush(FLUSH_S))}


def django(user: str, click: str) -> dict[str, Any]:
    import django as django_pkg
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.urls import path

    written = importlib.import_module("settings")
    own = {name: getattr(written, name) for name in dir(written) if name.isupper()}
    settings.configure(
        **own, SECRET_KEY="readme-only", ROOT_URLCONF="readme_urls",
        ALLOWED_HOSTS=["testserver"], DEBUG=False,
    )  # fmt: skip
    django_pkg.setup()
    views = importlib.import_module("views")
    urls = types.ModuleType("readme_urls")
    urls.urlpatterns = [path("signup", views.signup)]  # type: ignore[attr-defined]
    sys.modules["readme_urls"] = urls
    call_command("check")  # raises SystemCheckError on any error, ours included
    web = Client()
    web.cookies["cms_rf"] = click
    reply = web.post("/signup", {"user_id": user})
    from cms_shipper.integrations.django import get_client

    return {"reply": reply.json(), "flushed": bool(get_client().flush(FLUSH_S))}


def fastapi(user: str, click: str) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    app = importlib.import_module("fastapi_app").app
    with TestClient(app, cookies={"cms_rf": click}) as web:  # runs the lifespan
        reply = web.post("/signup", data={"user_id": user})
    # Leaving the TestClient ran the lifespan's shutdown: aclose delivered the event.
    stats = app.state.cms.stats()
    return {"reply": reply.json(), "flushed": stats["closed"] and stats["pending"] == 0}


def celery(user: str, click: str) -> dict[str, Any]:
    from celery import signals

    tasks = importlib.import_module("celery_app")
    signals.worker_process_init.send(sender=None)  # what a prefork child does on start
    client = tasks.get_client()
    reply = tasks.on_signup.delay(user, click).get()
    signals.worker_process_shutdown.send(sender=None)  # ...and on exit
    stats = client.stats()
    return {"reply": reply, "flushed": stats["closed"] and stats["pending"] == 0}


def aws_lambda(user: str, click: str) -> dict[str, Any]:
    module = importlib.import_module("lambda_handler")
    event = {
        "cookies": [f"cms_rf={click}"],
        "body": json.dumps({"user_id": user, "action": "signup"}),
    }
    reply = module.handler(event, None)
    return {"reply": reply, "flushed": module.client.stats()["pending"] == 0}


def gunicorn(user: str, click: str) -> dict[str, Any]:
    conf = importlib.import_module("gunicorn_conf")
    flask_app = importlib.import_module("flask_app")
    web = flask_app.app.test_client(use_cookies=False)
    reply = web.post("/signup", data={"user_id": user}, headers={"Cookie": f"cms_rf={click}"})
    conf.worker_exit(server=None, worker=None)  # what gunicorn calls as the worker leaves
    stats = flask_app.cms.client.stats()
    return {"reply": reply.get_json(), "flushed": stats["closed"] and stats["pending"] == 0}


DRIVERS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "flask": flask,
    "django": django,
    "fastapi": fastapi,
    "celery": celery,
    "lambda": aws_lambda,
    "gunicorn": gunicorn,
}

if __name__ == "__main__":
    sys.path.insert(0, "")  # the cwd, where the README's files were written
    framework, user_id, click_id = sys.argv[1:4]
    print(json.dumps(DRIVERS[framework](user_id, click_id)))
