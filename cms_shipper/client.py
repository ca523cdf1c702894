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
from datetime import datetime
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
    """Non-blocking CutMeShort client: ``track_*`` queues, background senders deliver.

    A drop-in for the vendor's ``cms_python.CMSClient``: same methods, same arguments, and
    results read the same way (``r.success``, ``r["success"]``, ``r.get("success")``). One
    thing differs. ``track_lead`` / ``track_sale`` validate the event, queue it and return
    at once, before the API has seen it: ``success=True`` (with ``queued=True``,
    ``message="queued"``, ``outcome=None``) means *accepted and queued*, not delivered. For
    the vendor's meaning (the API accepted the event):

    - ``r.wait(timeout_s)`` blocks, at most ``timeout_s`` seconds, until the event's final
      outcome and returns it (``success`` is then True only for ``delivered`` or
      ``duplicate``);
    - ``CMSClient(sync_mode=True)`` sends inside ``track_*`` and returns the final result;
    - the ``on_success`` / ``on_error`` / ``on_drop`` callbacks receive each final result.

    Make one client per process and share it between threads; ``close()`` (or the exit
    hook) delivers what is queued within ``shutdown_timeout_s``. Nothing here raises for
    bad event data or API trouble: those come back as results and counts (``stats()``).
    """

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
        """Build a client; every option is validated here.

        Raises ``ConfigurationError`` (also a ``ValueError``) naming the argument and the
        rule when an option is out of range. An option left at None falls back to its
        environment variable, then to its default. Durations are float seconds.

        Args:
            token: the API's bearer token (visible ASCII); default ``$CMS_BEARER_TOKEN``.
                Required unless ``disabled``. Never shown in any message or repr.
            host: the API base URL, ``http(s)://host[:port][/prefix]``; default
                ``$CMS_HOST``, else ``https://api.cme.sh``.
            max_queue_size: events held at once (queued, scheduled or in flight); past it
                new events are dropped (reason ``queue_full``), or spooled with a spool.
                Default 10000.
            batch_size: the senders wake when this many events wait, and take this many at
                a time. Default 100.
            flush_interval_s: the longest a queued event waits before sending starts.
                Default 0.5.
            max_concurrent_requests: requests in flight at once (one sender thread each,
                never two of one customer). Default 4.
            max_requests_per_minute: a client-side cap on requests, paced evenly; None (the
                default, or ``$CMS_MAX_REQUESTS_PER_MINUTE``) means no cap.
            retry_max_attempts: attempts per event, the first included; only the event's
                own failures count (not a 429, not an outage). Default 10.
            retry_max_elapsed_s: no retry starts past this many seconds after the first
                attempt (time the API was paused for everybody excluded). Default 60.
            retry_initial_backoff_s: the first retry's backoff; it doubles, with full
                jitter. Default 0.5.
            retry_max_backoff_s: the largest backoff; a ``Retry-After`` is a floor.
                Default 30.
            max_retry_after_s: the longest ``Retry-After`` honoured (longer ones are cut to
                this). Default 300.
            connect_timeout_s: TCP/TLS connect timeout per attempt. Default 5.
            read_timeout_s: response timeout per attempt; an attempt never lasts longer than
                ``connect_timeout_s + read_timeout_s``. Default 10.
            shutdown_timeout_s: what ``close()`` and the exit hook wait when given no
                timeout. Default ``$CMS_SHUTDOWN_TIMEOUT_S``, else 5.
            flush_timeout_s: what ``flush()`` waits when given no timeout. Default 30.
            on_success: called with the final ``Result`` of each event ``delivered`` or
                ``duplicate``, on one callback thread (in the caller's thread for an outcome
                known inside ``track_*``); an exception it raises is logged, never raised.
            on_error: likewise, for each event ``rejected`` or ``failed``.
            on_drop: likewise, for each event ``dropped``.
            sync_mode: True sends inside ``track_*`` and returns the final result, as the
                vendor SDK does (gives up ``retry_max_elapsed_s`` after the call). Default
                ``$CMS_SYNC_MODE``, else False.
            disabled: True validates and counts events but sends nothing (answers
                ``success=True``, outcome ``dropped``, reason ``disabled``). Default
                ``$CMS_DISABLED``, else False.
            spool_path: an SQLite file where events that would be lost (API down at close,
                queue full, retries exhausted) are kept and replayed later; default
                ``$CMS_SPOOL_PATH``, else None (memory only).
            spool_max_bytes: the spool's size bound in bytes, every file it makes counted
                (database, WAL, every process's journals, its reserve); past it, events
                that would be spooled are dropped (reason ``spool_full``). Default 50 MiB.
            write_ahead: with a spool, store every event before ``track_*`` returns, so it
                survives SIGKILL. Default ``$CMS_WRITE_AHEAD``, else False.
            spool_replay_interval_s: how often the spool is checked for events to replay.
                Default 5.
            spool_lease_s: how long an event claimed from the spool stays this process's
                before another may take it (renewed while the process lives). Default 60.
            handle_sigterm: on SIGTERM, close within ``shutdown_timeout_s``, then do what
                SIGTERM did before (plain processes: Docker, Kubernetes, systemd). Default
                ``$CMS_HANDLE_SIGTERM``, else False.
            redis_url: fleet mode: the ``redis://``, ``rediss://`` or ``unix://`` URL of
                the Redis that the processes sharing this token use for one queue, one
                request budget and one view of the API's health (needs the ``redis``
                extra); ``max_concurrent_requests`` and ``max_requests_per_minute`` then
                count for the whole fleet. Default ``$CMS_REDIS_URL``, else None. Its
                password is never shown.
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
        # Nothing starts here (no thread, no file, no fleet membership): the first event or
        # flush() starts them, so a master that builds the client before forking hands its
        # workers nothing of its own.

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
        timestamp: Optional[Union[datetime, str]] = None,
        mode: Optional[str] = None,
    ) -> TrackResult:
        """Validate and queue a lead event; returns at once, never raises, never blocks.

        Args:
            event_name: the event's name, e.g. ``"signup_started"`` (1 to 255 characters).
            customer_external_id: your own id for the customer (1 to 255 characters); a
                customer's events reach the API in the order tracked.
            click_id: the click id the visitor arrived with. Required for a plain lead and
                for ``mode="deferred"``; a deferred customer's later leads leave it out.
            customer_name: the customer's display name (optional, at most 255 characters).
            customer_email: the customer's email, ``name@domain.tld`` (optional).
            customer_avatar: an ``http(s)`` URL of the customer's picture (optional).
            timestamp: when it happened: a ``datetime`` (naive means UTC) or an ISO 8601
                string, from 1970 to 2099; None (the default) means now.
            mode: ``"deferred"`` for the first lead of a deferred attribution, else None.

        Returns:
            A ``TrackResult`` (a read-only dict and an object). Queued: ``success=True``,
            ``queued=True``, ``message="queued"``, ``outcome=None``: accepted, not yet sent;
            ``r.wait(timeout_s)`` gives the final outcome. Settled at once, with the final
            answer: invalid input (``success=False``, outcome ``rejected``, reason
            ``invalid``, ``status_code=422``, ``error`` naming the argument and rule),
            tracked after ``close()`` (``dropped``, ``closed``), a full queue (``dropped``,
            ``queue_full``, or ``spooled``), ``disabled``, or any result in ``sync_mode``.
        """
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
        timestamp: Optional[Union[datetime, str]] = None,
    ) -> TrackResult:
        """Validate and queue a sale event; returns at once, never raises, never blocks.

        Args:
            event_name: the event's name, e.g. ``"purchase_completed"`` (1 to 255
                characters).
            customer_external_id: your own id for the customer (1 to 255 characters); a
                customer's events reach the API in the order tracked.
            invoice_id: your invoice id (1 to 255 characters); the API records each once
                and answers a repeat 409 (outcome ``duplicate``, a success).
            amount: whole cents, an ``int`` from 0 to 2**53 - 1: ``4999`` is 49.99. A float
                is refused (``rejected``, reason ``invalid``), never rounded.
            currency: a 3-letter ISO 4217 code, e.g. ``"USD"`` (sent upper-cased).
            click_id: the click id the visitor arrived with (optional when the customer has
                a deferred lead).
            customer_name: the customer's display name (optional, at most 255 characters).
            customer_email: the customer's email, ``name@domain.tld`` (optional).
            customer_avatar: an ``http(s)`` URL of the customer's picture (optional).
            timestamp: when it happened: a ``datetime`` (naive means UTC) or an ISO 8601
                string, from 1970 to 2099; None (the default) means now.

        Returns:
            A ``TrackResult``, as ``track_lead`` describes: queued (``success=True``,
            ``queued=True``, not yet sent; ``r.wait(timeout_s)`` gives the final outcome),
            or settled at once with its final answer (invalid, closed, full queue,
            ``disabled``, ``sync_mode``).
        """
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
        """Wait until every event tracked before this call has an outcome, or the deadline.

        Sends what is queued now rather than at the next batch. Never raises; the client
        stays open.

        Args:
            timeout_s: the longest to wait, in seconds; None means ``flush_timeout_s``
                (default 30). Negative or NaN means do not wait.

        Returns:
            A ``FlushResult`` (a read-only dict): counts by outcome over the client's life
            (``delivered``, ``duplicate``, ``rejected``, ``failed``, ``dropped``,
            ``spooled``), ``pending`` (events tracked before the call still without an
            outcome) and ``timed_out`` (``pending > 0``). Truthy when nothing is pending.
        """
        return self._pipeline.flush(timeout_s)

    def close(self, timeout_s: Optional[float] = None) -> FlushResult:
        """Deliver what is queued within ``timeout_s``, then stop the senders; idempotent.

        Events still pending at the deadline are spooled (with a spool) or dropped (reason
        ``shutdown``), counted and reported in one warning line; if anything tracked was
        not delivered, one more warning line sums up the client's counts. Events tracked
        afterwards are dropped (reason ``closed``). Returns by its own deadline whatever
        else is closing the client at the same time (another thread, a callback, a signal
        handler). Never raises. ``with CMSClient(...) as client:`` closes on leaving.

        Args:
            timeout_s: the longest to wait, in seconds; None means ``shutdown_timeout_s``
                (default 5). Negative or NaN means do not wait.

        Returns:
            A ``FlushResult`` taken after close has settled what it gave up on: counts by
            outcome over the client's life (``dropped`` / ``spooled`` include those
            events), ``pending`` (what is really left: 0 unless an event raced in while
            closing) and ``timed_out`` (True when close gave up on events: its deadline
            passed, or the API refused the token). Falsy then. A second call returns the
            first call's result.
        """
        return self._pipeline.close(timeout_s)

    async def aflush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``flush`` for async code: waits in a worker thread, never blocking the event loop.

        Args:
            timeout_s: as ``flush``: seconds, None means ``flush_timeout_s``.

        Returns:
            ``flush``'s ``FlushResult``.
        """
        return await asyncio.to_thread(self.flush, timeout_s)

    async def aclose(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``close`` for async code: waits in a worker thread, never blocking the event loop.

        Args:
            timeout_s: as ``close``: seconds, None means ``shutdown_timeout_s``.

        Returns:
            ``close``'s ``FlushResult``.
        """
        return await asyncio.to_thread(self.close, timeout_s)

    def stats(self) -> Stats:
        """A snapshot of the client in this process, as a plain JSON-ready dict. Never raises.

        Returns:
            A ``Stats`` dict. Counts over the client's life: ``tracked`` (``track_*``
            calls), ``replayed`` (events taken from the spool), one count per outcome
            (``delivered``, ``duplicate``, ``rejected``, ``failed``, ``dropped``,
            ``spooled``) and ``pending`` (no outcome yet); ``tracked + replayed`` equals
            their sum. ``reasons`` (outcome -> reason -> count) and ``status_codes``
            (HTTP status -> final answers). Now: ``queue_depth`` (events waiting in the
            queue), ``scheduled`` (taken by the senders: waiting their turn, parked for a
            retry, or in flight), ``in_flight`` (requests being sent). The API's health:
            ``circuit`` (``closed``, ``open`` or ``probing``), ``circuit_since``
            (``time.time()`` of its last change), ``circuit_cause``, ``rate_limited`` and
            ``rate_limited_for_s`` (seconds left of a 429 pause), ``uncharged_attempts``
            (failures not counted against an event's retries). The spool: ``spool_path``,
            ``spool_dropped``, ``spool_write_ahead_misses``, ``spool_errors``,
            ``spool_settle_misses``. And ``closed``.
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
