"""The delivery side of one process: gate, transport, attempts and the sender threads.

Built from the settings at construction and again in a forked child (nothing of it may
cross a fork). It takes events from the queue and hands each final outcome to ``settle``;
the client only starts it, reads it and stops it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable, Optional

from cms_shipper._books import unauthorized
from cms_shipper._config import Settings
from cms_shipper._durability import Durability
from cms_shipper._engine.delivery import Delivery
from cms_shipper._engine.dispatcher import Action, Dispatcher, Step
from cms_shipper._engine.health import HealthGate, Ticket
from cms_shipper._engine.queue import EventQueue
from cms_shipper._engine.retry import RetryPolicy
from cms_shipper._engine.transport import Transport
from cms_shipper.results import Outcome, Result, Tracked

__all__ = ["Engine"]


class Engine:
    """Sender threads around one scheduler, one health gate and one keep-alive pool."""

    def __init__(
        self,
        settings: Settings,
        queue: EventQueue[Tracked],
        *,
        key: Callable[[Tracked], Hashable],
        settle: Callable[[Tracked, Optional[Result]], None],
        durability: Durability,
        refused: Callable[[], None] = lambda: None,
    ) -> None:
        s = settings
        self._durability = durability
        self.stop_event = threading.Event()
        self.gate = HealthGate(
            max_requests_per_minute=s.max_requests_per_minute,
            max_retry_after_s=s.max_retry_after_s,
            on_refused=refused,
        )
        self.transport = Transport(
            s.host,
            s.token,
            s.connect_timeout_s,
            s.read_timeout_s,
            s.max_concurrent_requests,
            callers_wait=s.sync_mode,
        )
        policy = RetryPolicy(
            max_attempts=s.retry_max_attempts,
            max_elapsed_s=s.retry_max_elapsed_s,
            initial_backoff_s=s.retry_initial_backoff_s,
            max_backoff_s=s.retry_max_backoff_s,
            max_retry_after_s=s.max_retry_after_s,
        )
        self.delivery = Delivery(self.transport, self.gate, policy, self.stop_event)
        self.dispatcher: Dispatcher[Tracked] = Dispatcher(
            queue,
            self.gate,
            key=key,
            finish=settle,
            attempt=self._attempt,
            senders=s.max_concurrent_requests,
            batch_size=s.batch_size,
            flush_interval_s=s.flush_interval_s,
            stop=self.stop_event,
        )

    def _attempt(self, result: Tracked, ticket: Ticket) -> Step:
        """An event whose customer has older events kept (spooled) is kept behind them."""
        held = None if self.stop_event.is_set() else self._durability.hold_back(result)
        if held is None:
            step = self.delivery.attempt(result, ticket)
            if step.action is Action.REQUEUE and self.gate.refusing_token():
                return self._keep_unauthorized(result, step)
            return step
        self.gate.release(ticket)
        if isinstance(held, float):  # the spool is busy: this customer waits a moment
            return Step(Action.PARK, delay_s=held)
        return Step(Action.DONE, result=held)

    def _keep_unauthorized(self, result: Tracked, step: Step) -> Step:
        """The token is refused: the event waits in durability (the spool) if it can keep
        it, else in memory at the head of its customer's line."""
        event = result.event
        if event is None or self.stop_event.is_set():
            return step
        final = self._durability.settle_one(result, unauthorized(event))
        if final.outcome is Outcome.SPOOLED:
            return Step(Action.DONE, result=final)
        return step

    def send_now(self, result: Tracked, budget_s: float) -> Result:
        """``sync_mode``: deliver one event in the caller's thread, retries included."""
        return self.delivery.send_now(result, budget_s)

    def start(self) -> None:
        """Start the senders once; cheap to call on every event."""
        self.dispatcher.ensure_started()

    def stop(self, deadline: float, abandoned: list[Tracked]) -> None:
        """Stop the senders by ``deadline`` (monotonic) and forget ``abandoned`` retries."""
        self.dispatcher.stop(max(0.0, deadline - time.monotonic()))
        self.dispatcher.discard_unsent()  # the caller settles them; stats() must not show them
        for pending in abandoned:
            self.delivery.forget(pending._seq)

    def close_connections(self) -> None:
        """Close the pool and the attempt watchdog."""
        self.transport.close()

    def in_flight(self) -> int:
        """Requests on the wire right now."""
        return self.dispatcher.in_flight()

    def state(self) -> dict[str, Any]:
        """The engine's part of ``stats()``: what it holds and the API's health."""
        out: dict[str, Any] = {
            "scheduled": self.dispatcher.held(),
            "in_flight": self.dispatcher.in_flight(),
        }
        out.update(self.gate.state())
        return out
