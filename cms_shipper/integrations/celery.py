"""Celery: a client per worker process, closed when the process exits.

    from cms_shipper.integrations.celery import get_client, setup_celery
    setup_celery(shutdown_timeout_s=5.0)          # once, where the Celery app is defined

    @app.task
    def on_signup(user_id, click_id):
        get_client().track_lead("signup", user_id, click_id=click_id, mode="deferred")

Each prefork child builds its client in ``worker_process_init`` and closes it (bounded) in
``worker_process_shutdown``: children leave with ``os._exit``, which skips the exit hook.
For short-lived workers (``--max-tasks-per-child=1``, or one-off task runs), pass
``flush_after_task=True``: every task ends with a bounded flush (``task_postrun``).
"""

from __future__ import annotations

from typing import Any

from celery import signals  # type: ignore[import-untyped]

from cms_shipper.client import CMSClient
from cms_shipper.integrations._process_client import ProcessClient

__all__ = ["get_client", "setup_celery"]

_options: dict[str, Any] = {}  # set by setup_celery
_client = ProcessClient(lambda: CMSClient(**_options))


def get_client() -> CMSClient:
    """This process's client (built on first use if no worker signal built it)."""
    return _client.get()


def _open(**_: Any) -> None:
    _client.get()


def _close(**_: Any) -> None:
    _client.reset()


def setup_celery(
    *, flush_after_task: bool = False, flush_timeout_s: float = 2.0, **options: Any
) -> None:
    """Connect the worker-process signals; ``options`` go to ``CMSClient``."""
    _options.clear()
    _options.update(options)
    signals.worker_process_init.connect(_open, weak=False)
    signals.worker_process_shutdown.connect(_close, weak=False)
    if flush_after_task:

        def _flush(**_: Any) -> None:
            get_client().flush(flush_timeout_s)

        signals.task_postrun.connect(_flush, weak=False)
