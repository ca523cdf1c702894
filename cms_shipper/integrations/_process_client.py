"""One client per process, built on first use: what the Django and Celery glue share."""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional

from cms_shipper.client import CMSClient

__all__ = ["ProcessClient"]


class ProcessClient:
    """Builds a ``CMSClient`` on first ``get``; ``reset`` closes it and forgets it.

    A forked child may keep using the client it inherited: the client rebuilds its queue,
    threads and connections by itself. Only the lock here is renewed in the child, in case
    another thread of the parent held it at the moment of the fork.
    """

    def __init__(self, build: Callable[[], CMSClient]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._client: Optional[CMSClient] = None
        if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
            os.register_at_fork(after_in_child=self._renew_lock)

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> CMSClient:
        """The process's client; built (once, under a lock) on the first call."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
                client = self._client
        return client

    def reset(self, timeout_s: Optional[float] = None) -> None:
        """Close the client (bounded by ``timeout_s``) and forget it; the next get builds anew."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout_s)
