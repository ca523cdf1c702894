"""``CMSClient``: the handle the application holds.

``track_*`` validates in the caller's thread and hands the event to the client's pipeline
(``_pipeline``), which queues it and returns in microseconds; its sender threads deliver in
the background. The handle owns nothing that must outlive it: a dropped client is collected
and its pipeline still delivers what it accepted (``_lifecycle``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Optional, Union

from cms_shipper import _lifecycle
from cms_shipper._config import Settings, default, resolve_settings
from cms_shipper._durability import Durability, NoDurability
from cms_shipper._events import build_lead, build_sale
from cms_shipper._log import RateLimitedLog
from cms_shipper._pipeline import Pipeline
from cms_shipper.errors import ConfigurationError, ValidationError
from cms_shipper.results import FlushResult, Result, Stats, TrackResult

__all__ = ["CMSClient"]


class CMSClient:
    """Non-blocking CutMeShort client: ``track_*`` queues, background senders deliver."""

    def __init__(
        self,
        token: Optional[str] = None,
        host: Optional[str] = None,
        *,
        max_queue_size: int = default("max_queue_size"),
        batch_size: int = default("batch_size"),
        flush_interval_s: float = default("flush_interval_s"),
        max_concurrent_requests: int = default("max_concurrent_requests"),
        max_requests_per_minute: Optional[int] = None,  # CMS_MAX_REQUESTS_PER_MINUTE
        retry_max_attempts: int = default("retry_max_attempts"),
        retry_max_elapsed_s: float = default("retry_max_elapsed_s"),
        retry_initial_backoff_s: float = default("retry_initial_backoff_s"),
        retry_max_backoff_s: float = default("retry_max_backoff_s"),
        max_retry_after_s: float = default("max_retry_after_s"),
        connect_timeout_s: float = default("connect_timeout_s"),
        read_timeout_s: float = default("read_timeout_s"),
        shutdown_timeout_s: Optional[float] = None,  # CMS_SHUTDOWN_TIMEOUT_S, else 5.0
        flush_timeout_s: float = default("flush_timeout_s"),
        on_success: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[Result], Any]] = None,
        on_drop: Optional[Callable[[Result], Any]] = None,
        sync_mode: Optional[bool] = None,  # CMS_SYNC_MODE, else False
        disabled: Optional[bool] = None,  # CMS_DISABLED, else False
        spool_path: Optional[Union[str, os.PathLike[str]]] = None,  # CMS_SPOOL_PATH
        spool_max_bytes: int = default("spool_max_bytes"),
        write_ahead: Optional[bool] = None,  # CMS_WRITE_AHEAD, else False
        spool_replay_interval_s: float = default("spool_replay_interval_s"),
        spool_lease_s: float = default("spool_lease_s"),
        handle_sigterm: Optional[bool] = None,  # CMS_HANDLE_SIGTERM, else False
        redis_url: Optional[str] = None,  # CMS_REDIS_URL: fleet mode (the redis extra)
    ) -> None:
        """Build a client; every option is validated here (``ConfigurationError`` names it).

        ``token`` and ``host`` fall back to ``CMS_BEARER_TOKEN`` and ``CMS_HOST``; an
        option left at None falls back to its environment variable, then its default.
        docs/usage.md (Options) says what each one does.
        """
        # Every keyword argument given (None: not given, so environment or default).
        options = {k: v for k, v in locals().items() if k not in _POSITIONAL and v is not None}
        self._settings: Settings = resolve_settings(token, host, options)
        # Everything that works lives in the pipeline, which never refers back to this
        # handle: when the application drops the handle, the process's registry still
        # delivers what it accepted, then ends its threads (see ``_lifecycle``).
        self._pipeline = Pipeline(self._settings, _durability(self._settings))
        _lifecycle.register(self, self._pipeline)
        if self._settings.handle_sigterm:
            _lifecycle.install_sigterm(self._pipeline)
        # Eagerly: a process that only opens the client still delivers the spool's backlog.
        self._pipeline.start_replay()

    @property
    def settings(self) -> Settings:
        """The resolved configuration (its repr never shows the token)."""
        return self._settings

    def __repr__(self) -> str:
        s = self._settings
        mode = "disabled" if s.disabled else "sync" if s.sync_mode else "background"
        return f"CMSClient(host={s.host!r}, mode={mode!r}, closed={self._pipeline.closed})"

    def __enter__(self) -> CMSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- tracking (caller's thread: no network, no raising for bad data) ----------------

    def track_lead(
        self,
        event_name: str,
        customer_external_id: str,
        click_id: Optional[str] = None,
        customer_name: Optional[str] = None,
        customer_email: Optional[str] = None,
        customer_avatar: Optional[str] = None,
        timestamp: Any = None,
        mode: Optional[str] = None,
    ) -> TrackResult:
        """Validate and queue a lead event; returns at once (see ``TrackResult.wait``)."""
        try:
            event = build_lead(
                self._pipeline.next_id(),
                time.time(),
                event_name=event_name,
                customer_external_id=customer_external_id,
                click_id=click_id,
                customer_name=customer_name,
                customer_email=customer_email,
                customer_avatar=customer_avatar,
                timestamp=timestamp,
                mode=mode,
            )
        except ValidationError as exc:
            return self._pipeline.refuse(exc)
        except Exception:  # a bug of ours must never reach the caller
            return self._pipeline.internal_error(None)
        return self._pipeline.submit(event)

    def track_sale(
        self,
        event_name: str,
        customer_external_id: str,
        invoice_id: str,
        amount: int,
        currency: str,
        click_id: Optional[str] = None,
        customer_name: Optional[str] = None,
        customer_email: Optional[str] = None,
        customer_avatar: Optional[str] = None,
        timestamp: Any = None,
    ) -> TrackResult:
        """Validate and queue a sale event (``amount`` in cents); returns at once."""
        try:
            event = build_sale(
                self._pipeline.next_id(),
                time.time(),
                event_name=event_name,
                customer_external_id=customer_external_id,
                invoice_id=invoice_id,
                amount=amount,
                currency=currency,
                click_id=click_id,
                customer_name=customer_name,
                customer_email=customer_email,
                customer_avatar=customer_avatar,
                timestamp=timestamp,
            )
        except ValidationError as exc:
            return self._pipeline.refuse(exc)
        except Exception:  # a bug of ours must never reach the caller
            return self._pipeline.internal_error(None)
        return self._pipeline.submit(event)

    # -- flushing and lifecycle -------------------------------------------------------

    def flush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """Wait until every event tracked before this call has an outcome, or ``timeout_s``.

        ``None`` means ``flush_timeout_s`` from the settings. Never raises.
        """
        return self._pipeline.flush(timeout_s)

    def close(self, timeout_s: Optional[float] = None) -> FlushResult:
        """Flush within ``timeout_s`` (None: ``shutdown_timeout_s``), then stop; idempotent.

        Events still pending at the deadline are spooled (with a spool) or dropped (reason
        ``shutdown``), counted and reported in one warning line; the result shows them as
        ``pending``. Returns by its own deadline whatever else is closing the client at the
        same time: another thread, a callback, or a signal handler interrupting a close.
        """
        return self._pipeline.close(timeout_s)

    async def aflush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``flush`` for async code: waits in a worker thread, never blocking the event loop."""
        return await asyncio.to_thread(self.flush, timeout_s)

    async def aclose(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``close`` for async code: waits in a worker thread, never blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout_s)

    def stats(self) -> Stats:
        """A snapshot: counts by outcome and reason, queue depth, in flight, the API's health.

        The keys are ``cms_shipper.results.Stats``'s (docs/usage.md lists them).
        """
        return self._pipeline.stats()


_POSITIONAL = frozenset({"self", "token", "host"})


def _durability(settings: Settings) -> Durability:
    """The durability implementation the settings ask for; imported only when configured."""
    fleet = settings.redis_url is not None and not settings.disabled
    if fleet:
        try:
            from cms_shipper._fleet import FleetKeeper  # noqa: PLC0415  # redis: only here
        except ImportError as exc:
            raise ConfigurationError(
                "redis_url",
                f"fleet mode needs the redis extra: pip install 'cms-shipper[redis]' ({exc})",
            ) from None
    local: Durability = NoDurability()
    if settings.spool_path and not settings.disabled:
        from cms_shipper._spool import SpoolKeeper  # noqa: PLC0415  # sqlite3, mmap: only here

        local = SpoolKeeper(settings, RateLimitedLog())
    return FleetKeeper(settings, local) if fleet else local
