"""Django: one client per process from settings, and the click id on every request.

    # settings.py
    CMS_SHIPPER = {"token": None, "host": None, "options": {"shutdown_timeout_s": 5.0}}
    MIDDLEWARE = [..., "cms_shipper.integrations.django.ClickIdMiddleware"]

    # views.py
    from cms_shipper.integrations.django import get_client
    get_client().track_lead("signup", user_id, click_id=request.cms_click_id, mode="deferred")

``token``/``host`` left out or None fall back to CMS_BEARER_TOKEN/CMS_HOST. The client is
created on first use in each process (so a forked worker never shares its parent's), and
its exit hook flushes within ``shutdown_timeout_s`` when the process ends.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from cms_shipper.client import CMSClient
from cms_shipper.integrations._click_id import click_id_from
from cms_shipper.integrations._process_client import ProcessClient

__all__ = ["ClickIdMiddleware", "click_id", "get_client", "reset_client"]


def _build() -> CMSClient:
    config: dict[str, Any] = getattr(settings, "CMS_SHIPPER", {})
    return CMSClient(
        token=config.get("token"), host=config.get("host"), **config.get("options", {})
    )


_client = ProcessClient(_build)


def get_client() -> CMSClient:
    """This process's client, built from ``settings.CMS_SHIPPER`` on first use."""
    return _client.get()


def reset_client(timeout_s: Optional[float] = None) -> None:
    """Close this process's client (bounded) and forget it; the next use builds a new one."""
    _client.reset(timeout_s)


def click_id(request: HttpRequest) -> Optional[str]:
    """The request's click id: ``cms_rf`` cookie, else ``cms_rf`` query parameter."""
    return click_id_from(request.COOKIES, request.GET)


class ClickIdMiddleware:
    """Sets ``request.cms_click_id`` from the ``cms_rf`` cookie or query parameter."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.cms_click_id = click_id(request)
        return self.get_response(request)
