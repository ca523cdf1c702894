"""A single-file Django app: the middleware reads the click id, views track through get_client.

CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token python django_app.py runserver
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
