"""Starlette and FastAPI: a lifespan that opens and closes the client, and the click id.

    from cms_shipper.integrations.starlette import cms_lifespan, click_id, get_client
    app = FastAPI(lifespan=cms_lifespan())
    @app.post("/signup")
    def signup(cid: Optional[str] = Depends(click_id), cms: CMSClient = Depends(get_client)):
        cms.track_lead("signup", user_id, click_id=cid, mode="deferred")

Shutdown uses ``await client.aclose(timeout_s)``: the bounded flush runs in a thread, so the
event loop keeps serving while it waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Callable, Optional

from starlette.requests import Request

from cms_shipper.client import CMSClient
from cms_shipper.integrations._click_id import click_id_from

__all__ = ["click_id", "cms_lifespan", "get_client"]


def cms_lifespan(
    *, close_timeout_s: Optional[float] = None, **options: Any
) -> Callable[[Any], Any]:
    """A lifespan: one client in ``app.state.cms`` at startup, ``aclose`` at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        client = CMSClient(**options)
        app.state.cms = client
        try:
            yield
        finally:
            await client.aclose(close_timeout_s)

    return lifespan


def get_client(request: Request) -> CMSClient:
    """The app's client (a FastAPI dependency)."""
    client: CMSClient = request.app.state.cms
    return client


def click_id(request: Request) -> Optional[str]:
    """The request's click id: ``cms_rf`` cookie, else ``cms_rf`` query parameter."""
    return click_id_from(request.cookies, request.query_params)
