"""The API-health gate: whether a request may go out now, shared by every sender.

Trouble on the API's side is the client's, not the event's. Four things hold requests
back for everybody at once:

- **Rate limited** (429). With ``Retry-After`` (capped at ``max_retry_after_s``) sending
  pauses until then. Without it (the API promises no such header) the gate sends a single
  probe after a growing pause (1 s doubling to 60 s) and resumes on its first success.
- **Circuit open** (an outage). Opened by an unreachable API (connection refused, DNS
  failure, connect timeout) or by ``OUTAGE_STREAK`` server failures (reset, read timeout,
  500/502/503/504) in a row across different customers. One probe at a time, with a
  jittered backoff capped at ``MAX_PROBE_WAIT_S``; the first answer closes it.
- **Token refused** (401). The token is the client's trouble, not the event's: sending
  pauses (one ERROR line) and a single probe goes out after ``UNAUTHORIZED_PROBE_S``,
  doubling up to ``MAX_UNAUTHORIZED_PROBE_S``; the probe's first other answer resumes.
- **Pacing**, with ``max_requests_per_minute`` set: requests spaced evenly.

The gate also tells the engine which failures to *charge* to an event's retry budget:
only a failure that is the event's own, i.e. no other customer's request failed since
the API last answered. When a single customer's run of failures turns out to span
customers, the attempts already charged are handed back (``Verdict.refunds``).

Pure logic on an injectable clock: thread-safe, no sleeping, no HTTP.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable, NamedTuple, Optional, Protocol

from tenacity import RetryCallState, wait_exponential, wait_random, wait_random_exponential
from tenacity.wait import wait_base

from cms_shipper._log import logger

__all__ = [
    "MAX_PROBE_WAIT_S",
    "OUTAGE_STREAK",
    "GateState",
    "HealthGate",
    "SharedHealth",
    "Ticket",
    "Verdict",
    "capped",
]

OUTAGE_STREAK = 5  # server failures in a row, across customers, that open the circuit
MAX_PROBE_WAIT_S = 30.0
UNAUTHORIZED_PROBE_S = 30.0  # a refused token: the first probe after this, doubling...
MAX_UNAUTHORIZED_PROBE_S = 300.0  # ...up to this (a token is fixed by a deploy, not a retry)
MAX_RATE_LIMIT_WAIT_S = 60.0
# Half fixed, half random: probes of a fleet spread out, yet never come back at once.
_PROBE_WAIT: wait_base = wait_exponential(multiplier=0.25, max=MAX_PROBE_WAIT_S / 2) + (
    wait_random_exponential(multiplier=0.25, max=MAX_PROBE_WAIT_S / 2)
)
_RATE_LIMIT_WAIT: wait_base = wait_exponential(multiplier=1.0, max=MAX_RATE_LIMIT_WAIT_S) + (
    wait_random(0, 0.25)
)


class Ticket(NamedTuple):
    """Permission for one request; hand it back with exactly one ``on_*`` call."""

    epoch: int  # the gate's state generation when it was issued
    probe: bool  # the single request that tests whether the API is back


class Verdict(NamedTuple):
    """How the gate judged a failed request: charge the event? hand back earlier charges?"""

    charge: bool
    refunds: tuple[Hashable, ...] = ()
    paused: bool = False  # the gate now holds every request back (circuit open)


class GateState(NamedTuple):
    """The gate's state, for a fleet that shares it (``snapshot`` / ``adopt``)."""

    epoch: int  # changes with every transition
    mode: str  # closed | rate_limited | open
    resume_in_s: float
    probe_only: bool
    failed_probes: int
    cause: str
    adopted: bool  # the pause was another member's, not this gate's own observation


class SharedHealth(Protocol):
    """What a fleet lends the gate: the right to probe, and a shared request budget."""

    def may_probe(self) -> bool:
        """True if this process may send the fleet's one probe now."""

    def pace(self) -> Optional[float]:
        """Take one request from the fleet's budget: 0.0 taken, seconds to wait, None: no budget."""


_FLEET_PROBE_POLL_S = 0.2  # another member holds the probe: look again this soon


def capped(seconds: float, cap: float) -> float:
    """``seconds`` within ``[0, cap]``; NaN counts as 0 (a server's word, never trusted)."""
    return min(seconds, cap) if seconds > 0 else 0.0


def ask(strategy: wait_base, attempt_number: int) -> float:
    """How long a tenacity wait strategy says to wait before attempt ``attempt_number + 1``."""
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt_number)
    return float(strategy(state))


class HealthGate:
    """Rate-limit pause, outage circuit and pacing for all requests of one client."""

    def __init__(
        self,
        *,
        max_requests_per_minute: Optional[int] = None,
        max_retry_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_refused = on_refused  # called (outside the lock) when a 401 pause begins
        self._interval_s = 60.0 / max_requests_per_minute if max_requests_per_minute else 0.0
        self._max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._mode = "closed"  # closed | rate_limited | open | unauthorized
        self._resume_at = 0.0
        self._probe_only = False
        self._probe_out = False
        self._failed_probes = 0
        self._epoch = 0
        self._paused_since = 0.0
        self._paused_total = 0.0
        self._since = wall_clock()
        self._cause = ""
        self._streak = 0
        self._streak_customer: Optional[Hashable] = None  # None once it spans customers
        self._streak_charged: list[Hashable] = []
        self.uncharged = 0
        self._adopted = False  # the current pause came from the fleet
        # Fleet mode: the probe right and the request budget are the fleet's.
        self.shared: Optional[SharedHealth] = None

    # -- admission --------------------------------------------------------------------

    def admit(self) -> tuple[Optional[Ticket], float]:
        """``(ticket, 0.0)`` when one request may go out now, else ``(None, seconds to wait)``.

        The wait is ``inf`` while a probe is out: its answer decides, and the caller should
        be woken then (or look again after a bounded wait of its own).
        """
        with self._lock:
            now = self._clock()
            if self._mode != "closed":
                if now < self._resume_at:
                    return None, self._resume_at - now
                if self._probe_only:
                    if self._probe_out:
                        return None, float("inf")
                    return self._issue(now, probe=True)
                self._close(now, "rate limit lifted")  # Retry-After has passed
            return self._issue(now, probe=False)

    def _issue(self, now: float, *, probe: bool) -> tuple[Optional[Ticket], float]:
        shared = self.shared
        if shared is not None:
            if probe and not shared.may_probe():
                return None, _FLEET_PROBE_POLL_S  # another member probes for the fleet
            if self._interval_s:
                wait = shared.pace()
                if wait:
                    return None, wait
                if wait is not None:  # taken from the fleet's budget
                    if probe:
                        self._probe_out = True
                    return Ticket(self._epoch, probe), 0.0
        if self._interval_s:
            if now < self._next_slot:
                return None, self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self._interval_s
        if probe:
            self._probe_out = True
        return Ticket(self._epoch, probe), 0.0

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket whose request was never sent."""
        with self._lock:
            if ticket.probe:
                self._probe_out = False

    # -- what the API said -------------------------------------------------------------

    def on_answer(self, ticket: Ticket) -> bool:
        """The API answered (anything but 429 or a server failure); True if that reopened it."""
        with self._lock:
            self._end_streak()
            if ticket.probe:
                self._probe_out = False
            # An outage ends with any answer; a rate limit only with the probe's, because
            # a request sent before the 429 proves nothing about the limit.
            # A refused token likewise: only the probe's answer says it is accepted now.
            if self._mode == "open" or (
                self._mode in ("rate_limited", "unauthorized") and ticket.probe
            ):
                self._close(self._clock(), "API answered")
                return True
            return False

    def on_rate_limited(self, ticket: Ticket, retry_after_s: Optional[float]) -> None:
        """A 429: pause everybody (until Retry-After, or probe after a growing pause)."""
        with self._lock:
            now = self._clock()
            self.uncharged += 1
            self._end_streak()
            if ticket.probe:
                self._probe_out = False
                self._failed_probes += 1
            elif self._mode == "rate_limited" and ticket.epoch != self._epoch:
                return  # one of the requests already on the wire when the pause began
            if retry_after_s is not None:
                wait_s, probe_only = capped(retry_after_s, self._max_retry_after_s), False
                how = f"Retry-After {retry_after_s:g} s" + (
                    f", capped at {wait_s:g} s" if wait_s < retry_after_s else ""
                )
            else:
                wait_s = ask(_RATE_LIMIT_WAIT, self._failed_probes + 1)
                probe_only, how = True, "no Retry-After; probing"
            entering = self._mode != "rate_limited"
            self._pause(now, "rate_limited", max(0.0, wait_s), probe_only, "HTTP 429")
            if entering:
                logger.warning(
                    "rate limited (HTTP 429, %s): sending paused for %.1f s",
                    how,
                    wait_s,
                )

    def on_unauthorized(self, ticket: Ticket) -> None:
        """A 401: the token is refused, for every event. Pause everybody; probe slowly."""
        if self._refuse(ticket):
            self._on_refused()  # a flush waiting for events that cannot be sent now returns

    def _refuse(self, ticket: Ticket) -> bool:
        with self._lock:
            now = self._clock()
            self.uncharged += 1
            self._end_streak()
            if ticket.probe:
                self._probe_out = False
                self._failed_probes += 1
            elif self._mode == "unauthorized":
                return False  # one of the requests already on the wire when the pause began
            wait_s = min(
                UNAUTHORIZED_PROBE_S * 2 ** min(self._failed_probes, 8), MAX_UNAUTHORIZED_PROBE_S
            )
            entering = self._mode != "unauthorized"
            self._pause(now, "unauthorized", wait_s, True, "HTTP 401")
            if entering:
                logger.error(
                    "the API refused the token (HTTP 401): sending paused; events wait "
                    "(in the spool, if there is one) and one request every %.0f s or more "
                    "checks whether it is accepted",
                    wait_s,
                )
            return entering

    def refusing_token(self) -> bool:
        """True while sending is paused because the API refused the token (401)."""
        return self._mode == "unauthorized"

    def on_trouble(
        self,
        ticket: Ticket,
        customer: Hashable,
        token: Hashable,
        cause: str,
        *,
        unreachable: bool = False,
        retry_after_s: Optional[float] = None,
    ) -> Verdict:
        """A server failure (unreachable, reset, timeout, 5xx): charge the event, or not.

        ``token`` identifies the event for a later refund; ``unreachable`` means the request
        never reached the server (refused, DNS, connect timeout), which opens the circuit.
        """
        with self._lock:
            now = self._clock()
            if ticket.probe:
                self._probe_out = False
                self._failed_probes += 1
                self._open(now, cause, retry_after_s, reopening=True)
                self.uncharged += 1
                return Verdict(False, paused=True)
            if self._mode != "closed":
                self.uncharged += 1
                return Verdict(False, paused=True)
            return self._judge(now, customer, token, cause, unreachable, retry_after_s)

    def _judge(
        self,
        now: float,
        customer: Hashable,
        token: Hashable,
        cause: str,
        unreachable: bool,
        retry_after_s: Optional[float],
    ) -> Verdict:
        self._streak += 1
        if self._streak == 1:
            self._streak_customer = customer
        elif customer != self._streak_customer:
            self._streak_customer = None
        if unreachable or (self._streak >= OUTAGE_STREAK and self._streak_customer is None):
            refunds = tuple(self._streak_charged)
            self._open(now, cause, retry_after_s, reopening=False)
            self.uncharged += 1 + len(refunds)
            return Verdict(False, refunds, paused=True)
        if self._streak_customer is None:  # failures across customers: the API's trouble
            refunds = tuple(self._streak_charged)
            self._streak_charged.clear()
            self.uncharged += 1 + len(refunds)
            return Verdict(False, refunds)
        self._streak_charged.append(token)
        return Verdict(True)

    # -- transitions --------------------------------------------------------------------

    def _open(
        self, now: float, cause: str, retry_after_s: Optional[float], *, reopening: bool
    ) -> None:
        wait_s = ask(_PROBE_WAIT, self._failed_probes + 1)
        if retry_after_s is not None:
            wait_s = max(wait_s, capped(retry_after_s, self._max_retry_after_s))
        if not reopening and self._mode != "open":
            logger.warning(
                "circuit opened (%s; %d failed request(s) in a row): "
                "sending paused, probing with one request at a time",
                cause,
                self._streak,
            )
        self._end_streak()
        self._pause(now, "open", wait_s, True, cause)

    def _pause(self, now: float, mode: str, wait_s: float, probe_only: bool, cause: str) -> None:
        self._adopted = False
        if self._mode == "closed":
            self._paused_since = now
            self._since = self._wall()
        if mode != self._mode:
            self._epoch += 1
        self._mode, self._probe_only, self._cause = mode, probe_only, cause
        resume = now + wait_s
        # Retry-After only ever extends a pause; a probe's own backoff replaces it.
        self._resume_at = max(self._resume_at, resume) if not probe_only else resume

    def _close(self, now: float, why: str) -> None:
        paused = now - self._paused_since
        # At the pause's own level: a user who saw the pause must see it end.
        logger.warning(
            "%s after %.1f s (%s): sending resumed",
            {"open": "circuit closed", "unauthorized": "token accepted"}.get(
                self._mode, "rate limit over"
            ),
            paused,
            why,
        )
        self._paused_total += paused
        self._mode, self._probe_only, self._probe_out = "closed", False, False
        self._adopted = False
        self._failed_probes = 0
        self._epoch += 1
        self._since = self._wall()
        self._cause = ""

    def _end_streak(self) -> None:
        self._streak = 0
        self._streak_customer = None
        self._streak_charged.clear()

    # -- a fleet's shared view ----------------------------------------------------------

    def snapshot(self) -> GateState:
        """The state a fleet publishes for its other members."""
        with self._lock:
            return GateState(
                self._epoch,
                self._mode,
                max(0.0, self._resume_at - self._clock()),
                self._probe_only,
                self._failed_probes,
                self._cause,
                self._adopted,
            )

    def adopt(self, state: GateState, who: str) -> int:
        """Pause as another member of the fleet saw fit; returns the new epoch."""
        with self._lock:
            now = self._clock()
            was = self._mode
            self._failed_probes = max(self._failed_probes, state.failed_probes)
            self._pause(now, state.mode, state.resume_in_s, state.probe_only, state.cause)
            self._resume_at = now + state.resume_in_s
            self._adopted = True
            self._end_streak()
            if was == "closed":
                logger.warning(
                    "sending paused for the fleet (%s, seen by %s): resuming in %.1f s%s",
                    state.cause,
                    who,
                    state.resume_in_s,
                    ", after one probe" if state.probe_only else "",
                )
            epoch = self._epoch
        if state.mode == "unauthorized" and was != "unauthorized":
            self._on_refused()
        return epoch

    def lift(self, epoch: int) -> bool:
        """End a pause the fleet has ended, unless this gate saw new trouble since ``epoch``."""
        with self._lock:
            if self._mode == "closed" or self._epoch != epoch:
                return False
            self._close(self._clock(), "another member's request went through")
            return True

    # -- reading ------------------------------------------------------------------------

    def paused_total(self) -> float:
        """Seconds sending has been paused so far, over the gate's life (monotonic)."""
        with self._lock:
            ongoing = self._clock() - self._paused_since if self._mode != "closed" else 0.0
            return self._paused_total + ongoing

    def state(self) -> dict[str, object]:
        """The state for ``stats()``: circuit, since when, rate-limit pause, uncharged."""
        with self._lock:
            remaining = max(0.0, self._resume_at - self._clock())
            if self._mode == "open":
                circuit = "probing" if self._probe_out else "open"
            elif self._mode == "unauthorized":
                circuit = "unauthorized"
            else:
                circuit = "closed"
            limited = self._mode == "rate_limited"
            return {
                "circuit": circuit,
                "circuit_since": self._since,
                "circuit_cause": self._cause or None,
                "rate_limited": limited,
                "rate_limited_for_s": round(remaining, 3) if limited else 0.0,
                "uncharged_attempts": self.uncharged,
            }
