"""Flask: one shared client per process, built from app config, and the request's click id.

    from cms_shipper.integrations.flask import CMSShipper
    cms = CMSShipper(app)                 # or cms = CMSShipper(); cms.init_app(app)
    cms.client.track_lead("signup", user_id, click_id=cms.click_id(), mode="deferred")

Config keys (each falls back to the environment): ``CMS_BEARER_TOKEN``, ``CMS_HOST``, and
``CMS_OPTIONS`` (a dict of ``CMSClient`` options). Flask has no shutdown signal: the client's
own exit hook flushes within ``shutdown_timeout_s`` when the process ends, and after a fork
(gunicorn ``--preload``) the client rebuilds itself in each worker.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import Flask, request

from cms_shipper.client import CMSClient
from cms_shipper.integrations._click_id import click_id_from

__all__ = ["CMSShipper"]


class CMSShipper:
    """A Flask extension holding one ``CMSClient`` for the app."""

    def __init__(self, app: Optional[Flask] = None, **options: Any) -> None:
        self._options = options
        self._client: Optional[CMSClient] = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the client from ``app.config`` (then the environment) and register it."""
        options = {**app.config.get("CMS_OPTIONS", {}), **self._options}
        self._client = CMSClient(
            token=app.config.get("CMS_BEARER_TOKEN"), host=app.config.get("CMS_HOST"), **options
        )
        app.extensions["cms_shipper"] = self

    @property
    def client(self) -> CMSClient:
        """The shared client; raises RuntimeError before ``init_app``."""
        if self._client is None:
            raise RuntimeError("CMSShipper.init_app(app) has not been called")
        return self._client

    @staticmethod
    def click_id() -> Optional[str]:
        """The current request's click id: ``cms_rf`` cookie, else ``cms_rf`` query parameter."""
        return click_id_from(request.cookies, request.args)
