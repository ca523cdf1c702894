"""One attempt, end to end: send, judge the reply, tell the health gate, decide what next.

``Delivery.attempt`` is the dispatcher's ``attempt``; ``Delivery.send_now`` is the same
decisions in a loop, for ``sync_mode`` in the caller's thread. Knows nothing of threads.

Only an event's own failures are charged to its retry budget: a 429 or a 401 (the token
refused; in ``sync_mode`` the caller gets it as its answer, ``rejected``) costs nothing
and the request goes back to the head of its customer's line; a
server failure costs nothing when the gate says the API is away (circuit open, or failures
across customers), and an event's elapsed budget does not run while the gate holds
everybody back.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from cms_shipper._books import dropped, from_reply, unsendable
from cms_shipper._engine.dispatcher import Action, Step
from cms_shipper._engine.health import HealthGate, Ticket
from cms_shipper._engine.retry import Kind, RetryPolicy, classify, final_outcome
from cms_shipper._engine.transport import Reply, Transport
from cms_shipper._events import Event, event_of
from cms_shipper.results import Outcome, Reason, Result, Tracked

__all__ = ["Delivery"]

_SYNC_POLL_S = 0.05  # sync_mode: how often a caller looks again while a probe is out


class _Charges:
    """An event's own failures so far, and when its first attempt started."""

    __slots__ = ("count", "first_at", "last", "paused_at_first")

    def __init__(self, first_at: float, paused_at_first: float) -> None:
        self.count = 0
        self.first_at = first_at
        self.paused_at_first = paused_at_first
        self.last: Optional[Reply] = None


class Delivery:
    """Sends one event's attempt and turns the reply into the scheduler's next ``Step``."""

    def __init__(
        self, transport: Transport, gate: HealthGate, policy: RetryPolicy, stop: threading.Event
    ) -> None:
        self._transport = transport
        self._gate = gate
        self._policy = policy
        self._stop = stop
        self._charges: dict[int, _Charges] = {}  # by the result's ledger seq; failures only
        self._lock = threading.Lock()  # refunds touch other events' charges

    def attempt(self, result: Tracked, ticket: Ticket) -> Step:
        """Send ``result``'s event once and decide: done, park for a retry, or requeue."""
        return self._attempt(result, ticket)[0]

    def _attempt(
        self,
        result: Tracked,
        ticket: Ticket,
        deadline: Optional[float] = None,
        *,
        sync: bool = False,
    ) -> tuple[Step, Optional[Reply]]:
        """``attempt``, with the reply (None: nothing sent) and an optional cut-off time.

        ``sync``: the caller waits for this answer (``sync_mode``), so a refused token is
        its final answer rather than a pause.
        """
        event = result.event
        if event is None:  # never queued without one; finish it rather than strand it
            self._gate.release(ticket)
            return Step(Action.DONE), None
        if self._stop.is_set():  # closing: close() settles what was not sent
            self._gate.release(ticket)
            return Step(Action.REQUEUE), None
        try:
            body = event.wire()
        except Exception as exc:  # a value json cannot encode: no attempt can send it
            self._gate.release(ticket)
            return Step(Action.DONE, result=unsendable(event, exc)), None
        started = time.monotonic()
        reply = self._transport.send(event.path, body, deadline)
        return self._judge(result._seq, event, reply, ticket, started, sync), reply

    def _judge(
        self, seq: int, event: Event, reply: Reply, ticket: Ticket, started: float, sync: bool
    ) -> Step:
        kind = classify(reply)
        if kind is Kind.UNAUTHORIZED and sync:  # sync_mode: the caller waits for its answer
            kind = Kind.FINAL
        if kind is Kind.RATE_LIMITED:
            self._gate.on_rate_limited(ticket, reply.retry_after_s)
            return Step(Action.REQUEUE)
        if kind is Kind.UNAUTHORIZED:  # the client's trouble: the event waits, uncharged
            self._gate.on_unauthorized(ticket)
            return Step(Action.REQUEUE)
        if kind is Kind.TROUBLE:
            verdict = self._gate.on_trouble(
                ticket,
                event.customer_key,
                seq,
                _cause(reply),
                unreachable=reply.unreachable,
                retry_after_s=reply.retry_after_s,
            )
            self._refund(verdict.refunds)
            if not verdict.charge:
                if verdict.paused:  # the gate holds everybody: first in line when it opens
                    return Step(Action.REQUEUE)
                # Failures across customers, not yet an outage: back off, uncharged.
                return Step(Action.PARK, delay_s=self._policy.next_delay(1, 0.0) or 0.0)
        else:
            self._gate.on_answer(ticket)
            if kind is Kind.FINAL:
                status = reply.status_code or 0
                outcome, reason = final_outcome(status)
                charges = self._charges.pop(seq, None)
                attempts = 1 + (charges.count if charges else 0)
                return Step(Action.DONE, result=from_reply(event, reply, outcome, reason, attempts))
        return self._charge(seq, event, reply, started)

    def _charge(self, seq: int, event: Event, reply: Reply, started: float) -> Step:
        with self._lock:
            charges = self._charges.get(seq)
            if charges is None:
                charges = self._charges[seq] = _Charges(started, self._gate.paused_total())
            charges.count += 1
            charges.last = reply
            count = charges.count
        paused = self._gate.paused_total() - charges.paused_at_first
        elapsed = time.monotonic() - charges.first_at - paused
        delay = self._policy.next_delay(count, elapsed, reply.retry_after_s)
        if delay is None:
            self._charges.pop(seq, None)
            failed = from_reply(
                event,
                reply,
                Outcome.FAILED,
                Reason.RETRIES_EXHAUSTED,
                count,
                spent_s=time.monotonic() - charges.first_at,
            )
            return Step(Action.DONE, result=failed)
        return Step(Action.PARK, delay_s=delay)

    def _refund(self, seqs: tuple[object, ...]) -> None:
        if not seqs:
            return
        with self._lock:
            for seq in seqs:
                charges = self._charges.get(seq)  # type: ignore[call-overload]
                if charges is None:
                    # The refund overtook the charge it undoes (another sender judged a
                    # reply between the gate's verdict and _charge): record it ahead.
                    charges = _Charges(time.monotonic(), self._gate.paused_total())
                    self._charges[seq] = charges  # type: ignore[index]
                charges.count -= 1

    def forget(self, seq: int) -> None:
        """Drop the retry state of an event that got its outcome some other way."""
        self._charges.pop(seq, None)

    def send_now(self, result: Tracked, budget_s: float) -> Result:
        """``sync_mode``: attempt until a final outcome; give up ``budget_s`` after the start.

        It keeps trying until then (a pause of the gate longer than what is left is waited
        out in case another thread's probe reopens it), and no attempt outlives the budget:
        each is cut off at the deadline.
        """
        event = event_of(result)
        started = time.monotonic()
        give_up_at = started + budget_s
        attempts, last = 0, None
        while True:
            ticket, wait = self._gate.admit()
            if ticket is None:
                step = Step(Action.PARK, delay_s=_SYNC_POLL_S if wait == float("inf") else wait)
            else:
                step, reply = self._attempt(result, ticket, give_up_at, sync=True)
                if reply is not None:
                    attempts, last = attempts + 1, reply
            if step.action is Action.DONE:
                final: Optional[Result] = step.result
                if final is not None and final.reason is Reason.RETRIES_EXHAUSTED:
                    # Out of retries: said with every attempt made here, charged or not.
                    final = self._gave_up(
                        result._seq, event, time.monotonic() - started, attempts, last
                    )
                return final or unsendable(event, RuntimeError("no result"))
            remaining = give_up_at - time.monotonic()
            if self._stop.is_set() or remaining <= 0:
                return self._gave_up(result._seq, event, time.monotonic() - started, attempts, last)
            self._stop.wait(min(step.delay_s, remaining))

    def _gave_up(
        self, seq: int, event: Event, spent_s: float, attempts: int, last: Optional[Reply]
    ) -> Result:
        """The result of a ``sync_mode`` event out of time: what was tried, for how long, why."""
        self._charges.pop(seq, None)
        if self._stop.is_set():
            return dropped(event, Reason.SHUTDOWN, "the client closed before delivery")
        if last is None:  # the gate never let a request out: say why it held them
            cause = self._gate.state().get("circuit_cause") or "the API was not answering"
            last = Reply(None, error=str(cause))
        return from_reply(
            event, last, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, attempts, spent_s=spent_s
        )


def _cause(reply: Reply) -> str:
    if reply.status_code is not None:
        return f"HTTP {reply.status_code}"
    return reply.error or "no answer"
