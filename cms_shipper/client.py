"""``CMSClient``: the public face that wires queue, dispatcher, gate, retry policy, transport.

``track_*`` validates in the caller's thread, queues, and returns in microseconds; the
sender threads deliver in the background. Only this module knows all the pieces.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import secrets
import threading
import time
from typing import Any, Callable, Optional, Union

from cms_shipper import _process
from cms_shipper._config import Settings, default, resolve_settings, wait_budget
from cms_shipper._engine import Engine
from cms_shipper._events import Event, build_lead, build_sale, event_of
from cms_shipper._ledger import Ledger
from cms_shipper._log import RateLimitedLog, logger
from cms_shipper._outcomes import Reporter, dropped, invalid
from cms_shipper._queue import EventQueue
from cms_shipper._replay import Replayer
from cms_shipper._settle import Settler
from cms_shipper._spooling import REPLAYED, SpoolKeeper
from cms_shipper._stats import snapshot
from cms_shipper.errors import ValidationError
from cms_shipper.results import FlushResult, Reason, Result, Stats, Tracked, TrackResult

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
    ) -> None:
        """Build a client; every option is validated here (``ConfigurationError`` names it).

        ``token`` and ``host`` fall back to ``CMS_BEARER_TOKEN`` and ``CMS_HOST``; an
        option left at None falls back to its environment variable, then its default.
        The README's options table says what each one does.
        """
        # Every keyword argument given (None: not given, so environment or default).
        options = {k: v for k, v in locals().items() if k not in _POSITIONAL and v is not None}
        self._settings: Settings = resolve_settings(token, host, options)
        s = self._settings
        self._closed = False
        self._keeper: Optional[SpoolKeeper] = None
        if s.spool_path and not s.disabled:
            self._keeper = SpoolKeeper(s, RateLimitedLog())
        self._start_fresh()
        self._exit_hook = _process.register(self)
        if s.handle_sigterm:
            from cms_shipper._sigterm import install  # noqa: PLC0415  # only when asked for

            install(self)
        if self._replayer is not None:
            # Eagerly: a process that only opens the client still delivers the backlog.
            self._replayer.ensure_started()

    def _start_fresh(self) -> None:
        """Build the per-process machinery: at construction, and again in a forked child.

        A child inherits copies of the parent's queue, locks (possibly held) and the
        threads' state, but not the threads: it gets new ones, started lazily. The events
        the parent had queued stay the parent's to deliver.
        """
        s = self._settings
        self._pid = os.getpid()
        self._ledger = Ledger()
        self._queue: EventQueue[Tracked] = EventQueue(s.max_queue_size, s.batch_size)
        self._log = RateLimitedLog()
        self._settler = Settler(self._ledger, self._queue, Reporter(s, self._log), self._keeper)
        self._engine = Engine(
            s, self._queue, key=_customer_key, settle=self._settler.sent, keeper=self._keeper
        )
        self._sync_seqs = itertools.count(-1, -1)  # sync_mode events never enter the ledger
        self._ids = itertools.count(1)
        # Random per client and process: ids stay unique across processes without paying
        # for a uuid4 on every event.
        self._id_prefix = f"evt_{secrets.token_hex(6)}_"
        self._close_lock = threading.Lock()
        self._closer: Optional[int] = None  # the thread inside close(), if any
        self._close_result: Optional[FlushResult] = None
        self._replayer: Optional[Replayer] = None
        if self._keeper is not None and self._keeper.enabled:
            self._replayer = Replayer(
                self._keeper, self._submit_replayed, self._room, s.spool_replay_interval_s
            )

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            if self._keeper is not None:
                self._keeper.reopen()  # a SQLite connection must not cross a fork
            self._start_fresh()

    @property
    def settings(self) -> Settings:
        """The resolved configuration (its repr never shows the token)."""
        return self._settings

    def __repr__(self) -> str:
        s = self._settings
        mode = "disabled" if s.disabled else "sync" if s.sync_mode else "background"
        return f"CMSClient(host={s.host!r}, mode={mode!r}, closed={self._closed})"

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
                self._next_id(), time.time(), event_name=event_name,
                customer_external_id=customer_external_id, click_id=click_id,
                customer_name=customer_name, customer_email=customer_email,
                customer_avatar=customer_avatar, timestamp=timestamp, mode=mode,
            )  # fmt: skip
        except ValidationError as exc:
            return self._refuse(exc)
        except Exception:  # a bug of ours must never reach the caller
            return self._internal_error(None)
        return self._submit(event)

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
                self._next_id(), time.time(), event_name=event_name,
                customer_external_id=customer_external_id, invoice_id=invoice_id,
                amount=amount, currency=currency, click_id=click_id,
                customer_name=customer_name, customer_email=customer_email,
                customer_avatar=customer_avatar, timestamp=timestamp,
            )  # fmt: skip
        except ValidationError as exc:
            return self._refuse(exc)
        except Exception:  # a bug of ours must never reach the caller
            return self._internal_error(None)
        return self._submit(event)

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _refuse(self, exc: ValidationError) -> TrackResult:
        try:
            return self._settler.now(invalid(exc))
        except Exception:
            return self._internal_error(None)

    def _submit(self, event: Event) -> TrackResult:
        item: Optional[Tracked] = None
        try:
            if self._pid != os.getpid():
                # Some servers fork without running os.register_at_fork hooks.
                self._after_fork()
            early = self._settled_at_once(event)
            if early is not None:
                return early
            item = Tracked(event)
            self._ledger.admit(item)
            return self._enqueue(item, event)
        except Exception:  # a bug of ours must never reach the caller, nor strand the event
            return self._internal_error(item)

    def _settled_at_once(self, event: Event) -> Optional[TrackResult]:
        """The outcome of an event that is not queued: closed, disabled, or sync_mode."""
        s = self._settings
        if self._closed:
            return self._settler.now(
                dropped(event, Reason.CLOSED, "the client is closed; event not sent")
            )
        if s.disabled:
            return self._settler.now(
                dropped(event, Reason.DISABLED, "disabled=True: validated, not sent", success=True)
            )
        if not s.sync_mode:
            return None
        receipt = Tracked(event)
        receipt._seq = next(self._sync_seqs)
        if self._keeper is not None:
            held = self._keeper.hold_back(receipt)  # older events of its customer wait?
            if isinstance(held, Result):
                return self._settler.now(held)
        final = self._engine.delivery.send_now(receipt, s.retry_max_elapsed_s)
        if self._keeper is not None:
            final = self._keeper.settle([receipt], [final])[0]
        return self._settler.now(final)

    def _enqueue(self, result: Tracked, event: Event) -> TrackResult:
        s = self._settings
        if s.write_ahead and self._keeper is not None:
            self._keeper.write_ahead(result)  # on disk before track_* returns
        if not self._queue.put(result):
            final = dropped(
                event, Reason.QUEUE_FULL,
                f"queue full (max_queue_size={s.max_queue_size}); event dropped",
            )  # fmt: skip
            final = self._settler.finish(result, final, queued=False)  # spooled, with a spool
            return self._settler.returned(final)
        if self._closed:
            # close() ran meanwhile (in another thread, or a signal handler in this one) and
            # may have settled the pending events before this one was admitted. Settle it
            # here; if close() did see it, the ledger keeps the first outcome.
            late = dropped(event, Reason.CLOSED, "the client closed while the event was tracked")
            self._settler.finish(result, late)
            return self._settler.returned(result.final or late)
        self._engine.start()
        if self._replayer is not None:
            self._replayer.ensure_started()  # in a forked child, replay starts here
        return TrackResult(
            result, self._ledger, success=True, message="queued", event_id=event.event_id,
            event=event,
        )  # fmt: skip

    def _internal_error(self, result: Optional[Tracked]) -> TrackResult:
        logger.exception("internal error in track_*; event dropped and counted")
        return self._settler.internal_error(result)

    def _submit_replayed(self, event: Event) -> None:
        """Feed an event claimed from the spool into the pipeline (the replay thread)."""
        result = Tracked(event)
        result._in_spool = REPLAYED
        self._ledger.admit(result, replayed=True)
        if not self._queue.put(result):
            self._settler.finish(
                result, dropped(event, Reason.QUEUE_FULL, "queue full"), queued=False
            )
            return
        self._engine.start()

    def _room(self) -> int:
        return self._settings.max_queue_size - self._queue.unfinished()

    # -- flushing and lifecycle -------------------------------------------------------

    def flush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """Wait until every event tracked before this call has an outcome, or ``timeout_s``.

        ``None`` means ``flush_timeout_s`` from the settings. Never raises.
        """
        budget = wait_budget(timeout_s, self._settings.flush_timeout_s)
        mark = self._ledger.mark()
        self._queue.wake()
        pending = self._ledger.wait_for(mark, time.monotonic() + budget)
        return self._settler.flush_result(pending)

    def close(self, timeout_s: Optional[float] = None) -> FlushResult:
        """Flush within ``timeout_s`` (None: ``shutdown_timeout_s``), then stop; idempotent.

        Events still pending at the deadline are spooled (with a spool) or dropped (reason
        ``shutdown``), counted and reported in one warning line; the result shows them as
        ``pending``. Returns by its own deadline whatever else is closing the client at the
        same time: another thread, a callback, or a signal handler interrupting a close.
        """
        budget = wait_budget(timeout_s, self._settings.shutdown_timeout_s)
        deadline = time.monotonic() + budget
        reporter = self._settler.reporter
        if self._closer == threading.get_ident():
            return self._snapshot()  # re-entered: a signal handler interrupted this close
        # A callback must not wait for a close that is waiting for the callbacks to finish.
        wait_s = 0.0 if reporter.on_callback_thread() else budget
        if not self._close_lock.acquire(timeout=wait_s):
            return self._snapshot()  # another close() is at work; this one keeps its deadline
        try:
            if self._close_result is None:
                self._closer = threading.get_ident()
                self._close_result = self._shut_down(budget, deadline)
            return self._close_result
        finally:
            self._closer = None
            self._close_lock.release()

    def _shut_down(self, budget: float, deadline: float) -> FlushResult:
        self._closed = True
        atexit.unregister(self._exit_hook)
        if self._replayer is not None:
            self._replayer.halt()  # claim nothing more from the spool
        self.flush(budget)
        in_flight = self._engine.transport.sent_in_flight()  # not those refused or connecting
        result = self._snapshot()
        abandoned = self._ledger.outstanding()
        self._engine.stop(deadline, abandoned)
        self._settler.abandon(abandoned, budget, in_flight)
        self._engine.close_connections()
        if self._keeper is not None and self._engine.in_flight() == 0:
            # With requests still in flight the connection stays open, so a late
            # answer can still remove its event's row (closed at interpreter exit).
            self._keeper.close()
        left = self._settler.reporter.drain(max(0.0, deadline - time.monotonic()))
        if left:
            logger.warning(
                "%d callback(s) had not run by the end of the %g s close budget; "
                "they run later on the callback thread if the process lives on",
                left, budget,
            )  # fmt: skip
        return result

    def _snapshot(self) -> FlushResult:
        return self._settler.flush_result(self._ledger.counts()["pending"])

    async def aflush(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``flush`` for async code: waits in a worker thread, never blocking the event loop."""
        return await asyncio.to_thread(self.flush, timeout_s)

    async def aclose(self, timeout_s: Optional[float] = None) -> FlushResult:
        """``close`` for async code: waits in a worker thread, never blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout_s)

    def stats(self) -> Stats:
        """A snapshot: counts by outcome and reason, queue depth, in flight, the API's health.

        The keys are ``cms_shipper.results.Stats``'s (the README lists them).
        """
        return snapshot(
            self._ledger.snapshot(), self._queue.depth(), self._engine.snapshot(),
            self._keeper, self._closed,
        )  # fmt: skip


_POSITIONAL = frozenset({"self", "token", "host"})


def _customer_key(result: Tracked) -> str:
    return event_of(result).customer_key
