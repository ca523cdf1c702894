"""The public ``Emulator``: lifecycle, fault controls and the record, over ``State``."""

from __future__ import annotations

import enum
import threading
from types import TracebackType
from typing import Any, Dict, List, Optional, Type, Union

from cms_shipper.emulator._faults import (
    CustomerFailure,
    FailMode,
    OutageMode,
    check_customer_failure,
    check_outage,
)
from cms_shipper.emulator._listener import Listener
from cms_shipper.emulator._settings import Settings
from cms_shipper.emulator._state import RecordedEvent, RequestLog, State

__all__ = ["Emulator"]


class _Unset(enum.Enum):
    UNSET = "UNSET"


_UNSET = _Unset.UNSET


class Emulator:
    """A local CutMeShort API on loopback, with fault injection and a record of requests."""

    def __init__(
        self,
        *,
        token: Optional[str] = "test-token",  # noqa: S107  # the emulator's well-known fake
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: Optional[int] = None,
        rate_limit_window_s: float = 60.0,
        latency_s: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 503,
        seed: Optional[int] = None,
        retry_after_s: Optional[float] = None,
        rate_limit_retry_after: bool = True,
        trickle_interval_s: float = 0.0,
        reply_padding_bytes: int = 0,
        endless_reply: bool = False,
        nested_reply_depth: int = 0,
        log_requests: bool = False,
    ) -> None:
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        settings = Settings(
            token=token,
            rate_limit=rate_limit,
            rate_limit_window_s=rate_limit_window_s,
            latency_s=latency_s,
            error_rate=error_rate,
            error_status=error_status,
            retry_after_s=retry_after_s,
            seed=seed,
            rate_limit_retry_after=rate_limit_retry_after,
            trickle_interval_s=trickle_interval_s,
            reply_padding_bytes=reply_padding_bytes,
            endless_reply=endless_reply,
            nested_reply_depth=nested_reply_depth,
            log_requests=log_requests,
        )
        self._state = State(settings)
        self._listener = Listener(host, port, self._state)
        self._stopped = threading.Event()
        self._stopped.set()

    def __repr__(self) -> str:
        where = self.url if self._listener.port else "not started"
        return f"Emulator({where}, running={self.running})"

    # Lifecycle.

    def start(self) -> Emulator:
        """Start serving in a daemon thread; returns self."""
        self._stopped.clear()  # before serving, so that a racing stop() is never missed
        try:
            self._listener.start()
        except BaseException:
            if not self._listener.running:
                self._stopped.set()
            raise
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and end any outage timer; idempotent, prompt."""
        self._listener.stop()
        self._stopped.set()

    def run_forever(self) -> None:
        """Serve in the foreground until KeyboardInterrupt (or ``stop()``), then stop."""
        if not self.running:
            self.start()
        try:
            # A timed wait so that Ctrl-C is noticed on every platform.
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Emulator:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the emulator is serving (or refusing connections during an outage)."""
        return self._listener.running

    @property
    def port(self) -> int:
        """The TCP port it listens on (known once started when constructed with port=0)."""
        if not self._listener.port:
            raise RuntimeError("the port is chosen at start(); start the emulator first")
        return self._listener.port

    @property
    def token(self) -> Optional[str]:
        """The bearer token it accepts now (None: any token); the emulator's own fake one."""
        return self._state.settings.token

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._listener.host}:{self.port}"

    # The record.

    @property
    def events(self) -> List[RecordedEvent]:
        """A copy of the accepted (recorded) events, in the order recorded."""
        return self._state.events()

    @property
    def requests(self) -> List[RequestLog]:
        """A copy of every /track request seen, with the status answered (None: no answer)."""
        return self._state.requests()

    @property
    def in_flight(self) -> int:
        """/track requests received and not answered yet (e.g. held by ``latency_s``)."""
        return self._state.in_flight

    def wait_for_events(self, n: int, timeout_s: float) -> bool:
        """Block until at least ``n`` events are recorded or ``timeout_s`` passes."""
        return self._state.wait_for("events", n, timeout_s)

    def wait_for_requests(self, n: int, timeout_s: float) -> bool:
        """Block until at least ``n`` /track requests are logged or ``timeout_s`` passes."""
        return self._state.wait_for("requests", n, timeout_s)

    def reset(self) -> None:
        """Forget events, requests, associations, invoices, rate windows; undo faults."""
        self._state.reset()
        self._listener.end_refusal()

    # Faults.

    def configure(
        self,
        *,
        latency_s: Union[float, _Unset] = _UNSET,
        error_rate: Union[float, _Unset] = _UNSET,
        error_status: Union[int, _Unset] = _UNSET,
        rate_limit: Union[int, _Unset, None] = _UNSET,
        rate_limit_window_s: Union[float, _Unset] = _UNSET,
        token: Union[str, _Unset, None] = _UNSET,
        retry_after_s: Union[float, _Unset, None] = _UNSET,
        seed: Union[int, _Unset, None] = _UNSET,
        rate_limit_retry_after: Union[bool, _Unset] = _UNSET,
        trickle_interval_s: Union[float, _Unset] = _UNSET,
        reply_padding_bytes: Union[int, _Unset] = _UNSET,
        endless_reply: Union[bool, _Unset] = _UNSET,
        nested_reply_depth: Union[int, _Unset] = _UNSET,
        log_requests: Union[bool, _Unset] = _UNSET,
    ) -> None:
        """Change settings from now on; arguments left out keep their value."""
        given: Dict[str, Any] = {
            "latency_s": latency_s,
            "error_rate": error_rate,
            "error_status": error_status,
            "rate_limit": rate_limit,
            "rate_limit_window_s": rate_limit_window_s,
            "token": token,
            "retry_after_s": retry_after_s,
            "seed": seed,
            "rate_limit_retry_after": rate_limit_retry_after,
            "trickle_interval_s": trickle_interval_s,
            "reply_padding_bytes": reply_padding_bytes,
            "endless_reply": endless_reply,
            "nested_reply_depth": nested_reply_depth,
            "log_requests": log_requests,
        }
        self._state.configure(**{k: v for k, v in given.items() if v is not _UNSET})

    def outage(
        self, duration_s: Optional[float] = None, *, status: int = 503, mode: OutageMode = "status"
    ) -> None:
        """Fail every /track request, unrecorded, for ``duration_s`` (None: until end_outage).

        ``mode="status"`` answers ``status``; ``"reset"`` closes each connection unanswered;
        ``"refuse"`` stops listening (connections refused) and drops every connection, then
        listens on the same port again; it needs a running emulator (else RuntimeError).
        A new outage replaces the current one.
        """
        check_outage(duration_s, status, mode)
        if mode == "refuse":
            self._state.end_outage()
            self._listener.refuse(duration_s)
        else:
            # Set first, so that no request slips in between listening again and the outage.
            self._state.outage(duration_s, status, mode)
            self._listener.end_refusal()

    def end_outage(self) -> None:
        """End the outage now."""
        self._state.end_outage()
        self._listener.end_refusal()

    @property
    def outage_active(self) -> bool:
        """Whether an outage (of any mode) holds now."""
        return self._listener.refusing or self._state.outage_active

    def fail_customer(
        self,
        customer_external_id: str,
        *,
        status: int = 503,
        count: Optional[int] = None,
        mode: FailMode = "status",
    ) -> None:
        """Fail, unrecorded, this customer's next ``count`` /track requests (None: all)."""
        check_customer_failure(customer_external_id, status, count, mode)
        self._state.fail_customer(customer_external_id, CustomerFailure(status, count, mode))

    def clear_customer_failures(self, customer_external_id: Optional[str] = None) -> None:
        """Remove the failure rule of one customer, or every rule (None)."""
        self._state.clear_customer_failures(customer_external_id)

    def drop_connection_after_record(self, count: int = 1) -> None:
        """Record the next ``count`` accepted /track requests, then close without answering."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        self._state.drop_after_record(count)
