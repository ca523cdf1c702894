"""A single-file Django app: the middleware reads the click id, views track through get_client.

Run it (``pip install -e '.[examples]'``, ``cms-shipper emulator`` in another terminal),
from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token python django_app.py runserver
    curl -X POST --cookie cms_rf=clk_django_example -d user_id=django_example_user \
        http://127.0.0.1:8000/signup

Without a token, ``runserver`` (and ``python django_app.py check``) stops at start-up with
the system check ``cms_shipper.E001``, whose hint says what to set.
"""

import sys

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        # the start-up check of CMS_SHIPPER (Django's system checks)
        INSTALLED_APPS=["cms_shipper.integrations.django.CMSShipperConfig"],
        MIDDLEWARE=["cms_shipper.integrations.django.ClickIdMiddleware"],
        # token and host fall back to CMS_BEARER_TOKEN and CMS_HOST
        CMS_SHIPPER={"options": {"shutdown_timeout_s": 5.0}},
    )

from cms_shipper.integrations.django import get_client


def signup(request: HttpRequest) -> JsonResponse:
    user = request.POST["user_id"]
    click = request.cms_click_id
    if click:
        get_client().track_lead("signup", user, click_id=click, mode="deferred")
    return JsonResponse({"tracked": bool(click)})


def verify(request: HttpRequest) -> JsonResponse:
    get_client().track_lead("email_verified", request.POST["user_id"])
    return JsonResponse({"ok": True})


def checkout(request: HttpRequest) -> JsonResponse:
    form = request.POST
    result = get_client().track_sale(
        "purchase", form["user_id"], form["invoice_id"], int(form["amount_cents"]), form["currency"]
    )
    return JsonResponse({"queued": result.success})


urlpatterns = [path("signup", signup), path("verify", verify), path("checkout", checkout)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
