"""The public ``Emulator``: lifecycle, fault controls and the record, over ``State``."""

from __future__ import annotations

import enum
import math
import threading
from types import TracebackType
from typing import Any, Dict, List, Optional, Type, Union

from cms_shipper.emulator._server import EmulatorServer
from cms_shipper.emulator._settings import Settings
from cms_shipper.emulator._state import OutageMode, RecordedEvent, RequestLog, State

__all__ = ["Emulator"]

_POLL_S = 0.05  # how often serve_forever notices shutdown(); bounds how long stop() takes
_JOIN_S = 2.0


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
    ) -> None:
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        settings = Settings(
            token=token, rate_limit=rate_limit, rate_limit_window_s=rate_limit_window_s,
            latency_s=latency_s, error_rate=error_rate, error_status=error_status,
            retry_after_s=retry_after_s, seed=seed,
        )  # fmt: skip
        self._host, self._port = host, port
        self._state = State(settings)
        self._lock = threading.Lock()  # guards start/stop against each other
        self._server: Optional[EmulatorServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()
        self._stopped.set()

    def __repr__(self) -> str:
        where = self.url if self._port or self._server else "not started"
        return f"Emulator({where}, running={self.running})"

    # Lifecycle.

    def start(self) -> Emulator:
        """Start serving in a daemon thread; returns self."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            server = EmulatorServer((self._host, self._port), self._state)
            self._port = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_S},
                name=f"cms-shipper-emulator-{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
            self._stopped.clear()
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; idempotent and prompt."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        server.stop()
        thread.join(_JOIN_S)
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
        """Whether the emulator is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The TCP port it listens on (known once started when constructed with port=0)."""
        if not self._port:
            raise RuntimeError("the port is chosen at start(); start the emulator first")
        return self._port

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._host}:{self.port}"

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
    ) -> None:
        """Change settings from now on; arguments left out keep their value."""
        given: Dict[str, Any] = {
            "latency_s": latency_s, "error_rate": error_rate, "error_status": error_status,
            "rate_limit": rate_limit, "rate_limit_window_s": rate_limit_window_s,
            "token": token, "retry_after_s": retry_after_s, "seed": seed,
        }  # fmt: skip
        self._state.configure(**{k: v for k, v in given.items() if v is not _UNSET})

    def outage(
        self, duration_s: Optional[float] = None, *, status: int = 503, mode: OutageMode = "status"
    ) -> None:
        """Fail every /track request, unrecorded, for ``duration_s`` (None: until end_outage)."""
        if duration_s is not None and not (
            isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s >= 0
        ):
            raise ValueError(f"duration_s must be None or a finite number >= 0, got {duration_s!r}")
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError(f"status must be within [400, 599], got {status!r}")
        if mode not in ("status", "reset"):
            raise ValueError(f"mode must be 'status' or 'reset', got {mode!r}")
        self._state.outage(duration_s, status, mode)

    def end_outage(self) -> None:
        """End the outage now."""
        self._state.end_outage()

    def drop_connection_after_record(self, count: int = 1) -> None:
        """Record the next ``count`` accepted /track requests, then close without answering."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        self._state.drop_after_record(count)
