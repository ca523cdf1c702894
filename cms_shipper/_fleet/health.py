"""One view of the API's health and one request budget for the whole fleet.

Each member's health gate (``_engine.health``) keeps deciding for its own senders; this
module keeps the gates of a fleet in step through Redis:

- A member that sees the API's trouble (a 429, an outage) publishes its gate's pause in
  the ``health`` hash; the others adopt it within one tick (``TICK_S``), so the fleet
  pauses as one, with the same resume time and probe backoff.
- While the fleet is paused, one member at a time holds the ``probe`` key: one probe for
  the fleet, not one per process. The member whose request goes through ends the pause
  for everybody.
- ``max_requests_per_minute`` is the fleet's total: each request takes one unit from a
  moving window kept in Redis by the ``limits`` library.

Redis trouble never holds a request back: without an answer from Redis, a gate decides
alone, as it does without fleet mode.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from cms_shipper._engine import GateState, HealthGate
from cms_shipper._fleet import scripts
from cms_shipper._log import logger

if TYPE_CHECKING:
    import redis

__all__ = ["TICK_S", "FleetHealth"]

TICK_S = 0.05  # how often a member compares its gate with the fleet's
_PROBE_HOLD_MS = 15_000  # a probe's right lapses if its member dies mid-probe
_KEEP_MS = 120_000  # the health hash outlives its pause by this much, then expires


class FleetHealth:
    """Lends a gate the fleet's probe right and budget, and keeps it in step with the fleet."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        member: str,
        gate: HealthGate,
        max_requests_per_minute: Optional[int],
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._key = prefix + "health"
        self._probe_key = prefix + "probe"
        self._member = member
        self._gate = gate
        self._seen_epoch = gate.snapshot().epoch
        self._gen = "0"  # the fleet pause this member last published or adopted
        self._published_epoch: Optional[int] = None
        self.paused_by: Optional[str] = None  # for stats(): who saw the trouble
        self._limiter: Any = None
        if max_requests_per_minute:
            from limits import RateLimitItemPerMinute  # noqa: PLC0415  # the redis extra
            from limits.storage import RedisStorage  # noqa: PLC0415
            from limits.strategies import MovingWindowRateLimiter  # noqa: PLC0415

            storage = RedisStorage(
                "redis://", connection_pool=client.connection_pool, key_prefix=prefix + "limits"
            )
            self._limiter = MovingWindowRateLimiter(storage)
            self._item = RateLimitItemPerMinute(max_requests_per_minute)
        gate.shared = self

    # -- lent to the gate (a sender's thread, under the gate's lock) ------------------

    def may_probe(self) -> bool:
        """Take the fleet's probe right, or find this member already holds it."""
        try:
            key, me = self._probe_key, self._member
            if self._redis.set(key, me, nx=True, px=_PROBE_HOLD_MS):
                return True
            return bool(self._redis.get(key) == me.encode())
        except Exception:  # Redis away: this gate probes on its own
            return True

    def pace(self) -> Optional[float]:
        """One request from the fleet's moving window; seconds to wait when it is spent."""
        if self._limiter is None:
            return None
        try:
            if self._limiter.hit(self._item, "requests"):
                return 0.0
            reset = self._limiter.get_window_stats(self._item, "requests").reset_time
            return max(0.01, float(reset) - time.time())
        except Exception:  # Redis away: the gate paces on its own
            return None

    # -- the fleet thread ---------------------------------------------------------------

    def tick(self) -> None:
        """Publish this gate's transition, or adopt the fleet's; raises Redis errors."""
        gate, snap = self._gate, self._gate.snapshot()
        if snap.epoch != self._seen_epoch:
            self._seen_epoch = snap.epoch
            if not snap.adopted:
                self._publish(snap)
                return
        fleet: Any = self._redis.hgetall(self._key)
        if fleet:
            gen = fleet[b"gen"].decode()
            if gen != self._gen and fleet[b"by"].decode() != self._member:
                self._gen = gen
                resume_in = max(0.0, int(fleet[b"resume_at"]) / 1000.0 - time.time())
                state = GateState(
                    0,
                    fleet[b"mode"].decode(),
                    resume_in,
                    fleet[b"probe_only"] == b"1",
                    int(fleet[b"failed_probes"]),
                    fleet[b"cause"].decode(),
                    True,
                )
                self.paused_by = fleet[b"by"].decode()
                self._seen_epoch = gate.adopt(state, self.paused_by)
                self._published_epoch = self._seen_epoch
        elif snap.mode != "closed" and self._published_epoch == snap.epoch:
            # The fleet's pause is over (another member's request went through).
            if gate.lift(snap.epoch):
                logger.warning("sending resumed: the fleet's pause is over")
            self._seen_epoch = gate.snapshot().epoch
            self.paused_by = None

    def _publish(self, snap: GateState) -> None:
        client = self._redis
        if snap.mode == "closed":
            fleet_gen: Any = client.hget(self._key, "gen")
            if fleet_gen is not None and fleet_gen.decode() == self._gen:
                client.delete(self._key, self._probe_key)
            self.paused_by = None
            return
        self._gen = f"{self._member}/{snap.epoch}/{time.time():.3f}"
        resume_at = int((time.time() + snap.resume_in_s) * 1000)
        pipe = client.pipeline(transaction=True)
        pipe.hset(
            self._key,
            mapping={
                "mode": snap.mode,
                "resume_at": resume_at,
                "probe_only": "1" if snap.probe_only else "0",
                "failed_probes": snap.failed_probes,
                "cause": snap.cause,
                "by": self._member,
                "gen": self._gen,
            },
        )
        pipe.pexpire(self._key, int(snap.resume_in_s * 1000) + _KEEP_MS)
        pipe.execute()
        # The probe (if this member sent it) has its answer: the right goes back.
        scripts.run(client, scripts.DROP_PROBE, self._prefix, self._member)
        self._published_epoch = snap.epoch
        self.paused_by = self._member
