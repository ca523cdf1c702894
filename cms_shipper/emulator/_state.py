"""What the emulator knows and decides, free of HTTP: the record, faults and the API rules.

One ``threading.Condition`` guards everything, because handler threads run concurrently
and tests read the record from yet another thread. Nothing here blocks while holding it;
the latency wait happens in the HTTP layer, between ``arrive`` and ``decide``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Literal, Optional, Tuple

from cms_shipper.emulator._faults import CustomerFailure, CustomerFailures, FailMode, Outage
from cms_shipper.emulator._rules import Answer, Rules, error
from cms_shipper.emulator._settings import Settings
from cms_shipper.emulator._validation import Endpoint

__all__ = ["RecordedEvent", "RequestLog", "State", "TrackRequest"]


@dataclass(frozen=True)
class RecordedEvent:
    """One event the emulator accepted and recorded; the bearer token is never kept."""

    seq: int
    endpoint: Endpoint
    payload: Dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class RequestLog:
    """One /track request as seen: its path, the status answered (None: no answer), body, time."""

    path: str
    status: Optional[int]
    payload: Any
    time: float


@dataclass(frozen=True)
class TrackRequest:
    """A /track request after its body was read: what ``decide`` needs to answer it."""

    path: str
    endpoint: Endpoint
    authorization: Optional[str]
    payload: Any  # parsed JSON, or None when the body was not JSON
    arrived_at: float


class State:
    """The emulator's record, settings, faults and API state behind one lock."""

    def __init__(self, settings: Settings) -> None:
        self._initial = settings
        self.cond = threading.Condition()
        self._rules = Rules()
        self._customers = CustomerFailures()
        self._clear()

    def _clear(self) -> None:
        self._settings = self._initial
        self._rng = random.Random(self._initial.seed)  # noqa: S311  # fault injection, not crypto
        self._events: List[RecordedEvent] = []
        self._requests: List[RequestLog] = []
        self._windows: Dict[str, Tuple[float, int]] = {}
        self._outage: Optional[Outage] = None
        self._drops_left = 0
        self._in_flight = 0
        self._rules.clear()
        self._customers.clear()

    # Control, called from the Emulator (any thread).

    def reset(self) -> None:
        """Forget the record and the API state; settings and faults go back to the initial."""
        with self.cond:
            in_flight = self._in_flight  # requests already being handled still leave
            self._clear()
            self._in_flight = in_flight
            self.cond.notify_all()

    def configure(self, **changes: Any) -> None:
        """Replace some settings; validation happens before anything changes."""
        with self.cond:
            self._settings = replace(self._settings, **changes)
            if "seed" in changes:
                self._rng = random.Random(self._settings.seed)  # noqa: S311

    def outage(self, duration_s: Optional[float], status: int, mode: FailMode) -> None:
        """Fail every /track request from now until ``duration_s`` passes or ``end_outage``."""
        until = math.inf if duration_s is None else time.monotonic() + duration_s
        with self.cond:
            self._outage = Outage(until, status, mode)

    def end_outage(self) -> None:
        """End the outage at once."""
        with self.cond:
            self._outage = None

    @property
    def outage_active(self) -> bool:
        """Whether an outage (status or reset mode) holds now."""
        with self.cond:
            return self._outage is not None and self._outage.active()

    def fail_customer(self, customer: str, rule: CustomerFailure) -> None:
        """Fail this customer's next /track requests as ``rule`` says."""
        with self.cond:
            self._customers.add(customer, rule)

    def clear_customer_failures(self, customer: Optional[str]) -> None:
        """Remove one customer's failure rule, or all of them (None)."""
        with self.cond:
            self._customers.clear(customer)

    def drop_after_record(self, count: int) -> None:
        """Record the next ``count`` accepted requests, then close without answering."""
        with self.cond:
            self._drops_left = count

    @property
    def settings(self) -> Settings:
        """The current settings (immutable: a change replaces them whole)."""
        with self.cond:
            return self._settings

    @property
    def in_flight(self) -> int:
        """/track requests received whose answer has not been sent yet."""
        with self.cond:
            return self._in_flight

    def events(self) -> List[RecordedEvent]:
        """A copy of the recorded events, in record order."""
        with self.cond:
            return list(self._events)

    def requests(self) -> List[RequestLog]:
        """A copy of the request log, in answer order."""
        with self.cond:
            return list(self._requests)

    def wait_for(self, what: Literal["events", "requests"], n: int, timeout_s: float) -> bool:
        """Block until at least ``n`` events (or requests) are logged, or the deadline."""

        def enough() -> bool:
            # reset() swaps the lists, so look them up again on every wake-up.
            return len(self._events if what == "events" else self._requests) >= n

        with self.cond:
            return self.cond.wait_for(enough, timeout=max(0.0, timeout_s))

    # The request pipeline, called from handler threads.

    def enter(self) -> None:
        """A /track request arrived; counted until ``leave``."""
        with self.cond:
            self._in_flight += 1

    def leave(self) -> None:
        """A /track request was answered or abandoned."""
        with self.cond:
            self._in_flight = max(0, self._in_flight - 1)

    def log(self, path: str, status: Optional[int], payload: Any, arrived_at: float) -> None:
        """Append one entry to the request log and wake waiters."""
        with self.cond:
            self._log(path, status, payload, arrived_at)

    def arrive(self, path: str, payload: Any, arrived_at: float) -> Optional[Answer]:
        """First check, before latency and auth: an outage or customer failure, or None."""
        with self.cond:
            answer = self._outage_answer()
            if answer is None:
                answer = self._customer_answer(payload)
            if answer is not None:
                self._log(path, answer.status, payload, arrived_at)
            return answer

    def _outage_answer(self) -> Optional[Answer]:
        outage = self._outage
        if outage is None or not outage.active():
            self._outage = None
            return None
        return self._failure(outage.mode, outage.status, "Service unavailable (emulated outage)")

    def _customer_answer(self, payload: Any) -> Optional[Answer]:
        rule = self._customers.take(payload)
        if rule is None:
            return None
        return self._failure(rule.mode, rule.status, "Injected failure for this customer")

    def _failure(self, mode: FailMode, status: int, message: str) -> Answer:
        if mode == "reset":
            return Answer(None)
        return error(status, message, self._settings.retry_after_header())

    def decide(self, request: TrackRequest) -> Answer:
        """Auth, injected errors, rate limit, validation, API rules, record: the answer."""
        with self.cond:
            answer = self._decide(request)
            self._log(request.path, answer.status, request.payload, request.arrived_at)
            return answer

    def _decide(self, request: TrackRequest) -> Answer:
        settings = self._settings
        token = _bearer(request.authorization)
        if token is None or (
            settings.token is not None
            and not hmac.compare_digest(token.encode(), settings.token.encode())
        ):
            return error(401, "Missing or invalid bearer token")
        if settings.error_rate > 0 and self._rng.random() < settings.error_rate:
            return error(settings.error_status, "Injected fault", settings.retry_after_header())
        wait_s = self._rate_limited(token)
        if wait_s is not None:
            with_header = settings.rate_limit_retry_after
            headers = (("Retry-After", str(wait_s)),) if with_header else ()
            return error(429, "Rate limit exceeded", headers)
        answer = self._rules.check(request.endpoint, request.payload)
        if answer is not None:
            return answer
        return self._record(request)

    def _rate_limited(self, token: str) -> Optional[int]:
        """Count one request in the token's fixed window; seconds to wait if over the limit."""
        limit, window_s = self._settings.rate_limit, self._settings.rate_limit_window_s
        if limit is None:
            return None
        # Keyed by a digest so that the token itself is never kept in emulator state.
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= window_s:
            start, count = now, 0
        if count >= limit:
            return max(1, math.ceil(start + window_s - now))
        self._windows[key] = (start, count + 1)
        return None

    def _record(self, request: TrackRequest) -> Answer:
        seq = len(self._events) + 1
        payload: Dict[str, Any] = request.payload
        self._events.append(RecordedEvent(seq, request.endpoint, payload, time.time()))
        self._rules.remember(request.endpoint, payload)
        self.cond.notify_all()
        if self._drops_left > 0:
            self._drops_left -= 1
            return Answer(None)
        message = f"{request.endpoint.capitalize()} tracked successfully (id: evt_{seq:06d})"
        return Answer(200, {"status": True, "success": True, "data": message})

    def _log(self, path: str, status: Optional[int], payload: Any, arrived_at: float) -> None:
        self._requests.append(RequestLog(path, status, payload, arrived_at))
        self.cond.notify_all()


def _bearer(header: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
