"""AWS Lambda and other short-lived processes: flush (bounded) after each invocation.

A frozen Lambda sandbox runs no threads, so events still queued when the handler returns
would wait for the next invocation, or be lost with the sandbox. ``flush_after`` waits for
them, at most ``timeout_s``. The alternative is ``CMSClient(sync_mode=True)``, which sends
inside ``track_*`` (simpler, but the handler waits for every event's round trip).

    client = CMSClient()                      # at module level: reused across invocations
    @flush_after(client, timeout_s=2.0)
    def handler(event, context): ...
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar

from cms_shipper.client import CMSClient
from cms_shipper.integrations._click_id import click_id_from

__all__ = ["click_id_from_event", "flush_after"]

F = TypeVar("F", bound=Callable[..., Any])


def flush_after(client: CMSClient, timeout_s: float = 2.0) -> Callable[[F], F]:
    """Decorate a handler so every invocation ends with ``client.flush(timeout_s)``."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                client.flush(timeout_s)

        return wrapper  # type: ignore[return-value]

    return decorate


def click_id_from_event(event: Mapping[str, Any]) -> Optional[str]:
    """The click id of an API Gateway (v1 or v2) or function-URL event."""
    cookies: dict[str, str] = {}
    raw = list(event.get("cookies") or [])  # HTTP API v2: ["a=b", ...]
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    if headers.get("cookie"):
        raw += str(headers["cookie"]).split(";")
    for item in raw:
        name, _, value = str(item).strip().partition("=")
        cookies.setdefault(name, value)
    return click_id_from(cookies, event.get("queryStringParameters") or {})
