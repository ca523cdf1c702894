"""Fleet mode: every process behind one token shares one queue in Redis.

``FleetKeeper`` is the durability port's fleet implementation. ``track_*`` still only
appends to the process's bounded queue (the *intake*); one fleet thread per process:

- **pushes** what was tracked here to the fleet queue (one script call per batch,
  idempotent by event id), within milliseconds and never in the caller's thread;
- **claims** the heads of ready customers, at most ``max_concurrent_requests`` claims in
  the whole fleet, into the queue this process's senders take from (``delivery_queue``);
- keeps this member alive in Redis (``m:<member>``, renewed every ``BEAT_S``) and hands
  the claims of members that stopped renewing back to the fleet (``REAP``);
- reads the outcomes other members reached for this member's events (``done:<member>``);
- keeps the health gate in step with the fleet's (``_fleet.health``).

A sender that gets an answer acks it (``settle_one``): the event leaves the fleet queue and
its customer's next event becomes claimable, by this member at once if it has one. An
event this member tracked keeps its place in the books until its outcome is known (from
its own sender or another member's notice), so ``wait``, ``flush`` and ``close`` mean what
they mean without fleet mode; what ``close`` gives up on stays in the fleet queue
(``spooled``, reason ``in_fleet``). With the link to Redis down, events tracked here are
delivered by this process alone, as without fleet mode, until it is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Optional, Union

from cms_shipper._config import Settings
from cms_shipper._durability import Durability, DurabilityStats, Host, Q
from cms_shipper._engine import EventQueue
from cms_shipper._fleet import scripts
from cms_shipper._fleet.health import TICK_S, FleetHealth
from cms_shipper._fleet.member import BEAT_S, REDIS_ERRORS, Claim, Member
from cms_shipper._fleet.records import decode
from cms_shipper._log import logger
from cms_shipper.results import Outcome, Reason, Result, Tracked

__all__ = ["FleetKeeper", "in_fleet"]

POLL_S = 0.05  # an idle fleet thread looks for work this often
_PUSH_BATCH = 500
# Outcomes that leave the event in the fleet queue (nothing the server said makes it hopeless).
_KEEP = {
    (Outcome.FAILED, Reason.RETRIES_EXHAUSTED),
    (Outcome.DROPPED, Reason.SHUTDOWN),
    (Outcome.DROPPED, Reason.CLOSED),
    (Outcome.DROPPED, Reason.QUEUE_FULL),
    (Outcome.DROPPED, Reason.UNAUTHORIZED),  # a process whose token works delivers it
}


def in_fleet(final: Result) -> Result:
    """``final`` for an event left in the fleet's queue instead."""
    why = final.error or str(final.reason)
    return Result(
        success=False,
        status_code=final.status_code,
        message="spooled: in_fleet",
        error=f"not delivered yet ({why}); left in the fleet's queue for another member",
        event_id=final.event_id,
        outcome=Outcome.SPOOLED,
        reason=Reason.IN_FLEET,
        event=final.event,
    )


class FleetKeeper:
    """The durability port on Redis, with a local implementation for what cannot reach it."""

    def __init__(self, settings: Settings, local: Durability) -> None:
        if settings.redis_url is None or settings.token is None:
            raise ValueError("fleet mode needs redis_url and a token")
        self._settings = settings
        self._url = settings.redis_url.reveal()
        self._prefix = scripts.namespace(settings.token.reveal())
        self._cap = settings.max_concurrent_requests
        self._local = local
        self._fresh()

    def _fresh(self) -> None:
        self._member = Member(self._url, self._prefix)
        self._lock = threading.Lock()
        self._intake: Optional[EventQueue[Tracked]] = None
        self._claimed: EventQueue[Tracked] = EventQueue(
            2 * self._settings.max_queue_size + self._cap, 1
        )
        self._host: Optional[Host] = None
        self._health: Optional[FleetHealth] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._halted = False
        self._closed = False
        self.direct = 0
        self.errors = 0

    # -- the port: wiring -----------------------------------------------------------------

    def delivery_queue(self, intake: Q) -> Q:
        """The senders take what this member claimed; the fleet thread drains ``intake``."""
        self._intake = intake  # type: ignore[assignment]
        self._intake.notify = self._wake.set  # type: ignore[union-attr]
        return self._claimed  # type: ignore[return-value]

    def attach(self, host: Host) -> None:
        """Admit and queue claimed events through ``host``; the local part replays into it."""
        self._host = host
        self._local.attach(host)

    def start_replay(self) -> None:
        """Join the fleet (once), and push now: called after every event ``track_*`` queued."""
        self._local.start_replay()
        if self._thread is not None:
            if not self._wake.is_set():
                self._wake.set()  # pushed within a moment, not at the next poll
            return
        if self._closed:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cms-shipper-fleet", daemon=True)
            self._thread.start()

    def halt(self) -> None:
        """Claim only what lets this member's own events out; replay nothing locally."""
        self._halted = True
        self._local.halt()
        self._wake.set()

    def after_fork(self) -> None:
        """A forked child is a new member: new key, connections, thread; nothing of the parent's."""
        self._local.after_fork()
        self._fresh()

    # -- the port: events -------------------------------------------------------------------

    def write_ahead(self, item: Tracked) -> None:
        """On the host first (the local spool's write-ahead, if configured)."""
        self._local.write_ahead(item)

    def overflow(self, item: Tracked, final: Result) -> bool:
        """A full queue's event: kept by the local spool, if there is one (it never waits)."""
        return self._local.overflow(item, final)

    def hold_back(self, item: Tracked) -> Union[Result, float, None]:
        """A claimed head goes now (its claim is the customer's turn); others ask the local part."""
        event = item.event
        if event is not None and self._member.held.get(event.customer_key) == event.event_id:
            return None
        return self._local.hold_back(item)

    def settle(
        self, items: Sequence[Tracked], finals: Sequence[Result], deadline: Optional[float] = None
    ) -> list[Result]:
        """Outcomes for a batch (close): what reached the fleet stays there; the rest, locally."""
        out = list(finals)
        rest: list[int] = []
        for i, (item, final) in enumerate(zip(items, finals)):
            if item.event is not None and self._in_fleet(item):
                out[i] = self._settle_fleet(item, final)
            else:
                rest.append(i)
        if rest and self._member.link.up and self._push([items[i] for i in rest]):
            for i in rest:
                out[i] = in_fleet(finals[i])
            rest = []
        if rest:
            kept = self._local.settle([items[i] for i in rest], [finals[i] for i in rest], deadline)
            for i, final in zip(rest, kept):
                out[i] = final
        return out

    def settle_one(self, item: Tracked, final: Result) -> Result:
        """A sender's outcome: ack it in the fleet queue, or keep the event there."""
        if item.event is not None and self._in_fleet(item):
            return self._settle_fleet(item, final)
        return self._local.settle_one(item, final)

    def _in_fleet(self, item: Tracked) -> bool:
        event = item.event
        assert event is not None  # noqa: S101  # checked by the callers
        eid, member = event.event_id, self._member
        return eid in member.mine or member.held.get(event.customer_key) == eid

    def _settle_fleet(self, item: Tracked, final: Result) -> Result:
        event = item.event
        assert event is not None  # noqa: S101
        customer, eid, member = event.customer_key, event.event_id, self._member
        keep = (final.outcome, final.reason) in _KEEP
        with member.lock:
            held = member.held.get(customer) == eid
            if held:
                del member.held[customer]
            own = member.mine.pop(eid, None) is not None
            origin = member.behalf.pop(eid, None)
        if held and keep:
            # Its retries ran out: the fleet tries again after the longest backoff.
            delay = 0.0 if final.outcome is Outcome.DROPPED else self._settings.retry_max_backoff_s
            member.release([(customer, eid if own else "")], delay)
        elif held:
            claiming = not (self._halted and not member.mine)
            nxt = member.ack(customer, eid, origin, final, claiming)
            if nxt is not None:
                self._queue_claim(nxt)
        return in_fleet(final) if keep else final

    # -- the fleet thread -------------------------------------------------------------------

    def _run(self) -> None:
        member = self._member
        next_beat = next_tick = 0.0
        while not self._stop.is_set():
            busy = False
            if member.link.usable():
                try:
                    now = time.monotonic()
                    if now >= next_beat:
                        member.beat()
                        next_beat = now + BEAT_S
                        self._join_health()
                    member.link.worked()
                    busy = self._drain() | self._claim()
                    member.retry_acks()
                    self._read_notices()
                    if self._health is not None and now >= next_tick:
                        self._health.tick()
                        next_tick = now + TICK_S
                except REDIS_ERRORS as exc:
                    member.link.failed(exc)
                except Exception:  # a bug of ours must not end the fleet thread
                    self.errors += 1
                    logger.exception("unexpected error in the fleet thread")
            if not member.link.up:
                busy = self._direct() or busy
            if not busy:
                self._wake.wait(POLL_S)
                self._wake.clear()

    def _join_health(self) -> None:
        if self._health is None and self._host is not None:
            member, rpm = self._member, self._settings.max_requests_per_minute
            self._health = FleetHealth(member.client(), member.prefix, member.name,
                                       self._host.gate, rpm)  # fmt: skip

    def _drain(self) -> bool:
        """Push what was tracked here (a lost reply's batch first)."""
        intake, member = self._intake, self._member
        if member.unpushed:
            batch = list(member.unpushed)
            if not self._push(batch):
                return False
            member.unpushed.clear()
        if intake is None:
            return False
        items = intake.take(_PUSH_BATCH)
        if not items:
            return False
        if not self._push(items):
            member.unpushed.extend(items)  # maybe in Redis already: pushed again, never sent here
        intake.task_done(len(items))
        return True

    def _push(self, items: list[Tracked]) -> bool:
        if not self._member.push(items):
            return False
        kept = [item for item in items if item._kept]
        if kept:  # safe in Redis: the local copies (journal records, spool rows) let go
            self._local.settle(kept, [in_fleet(_handed(item)) for item in kept])
            for item in kept:
                item._kept = 0
        return True

    def _claim(self) -> bool:
        member = self._member
        want = self._cap - len(member.held)
        if want <= 0 or (self._halted and not member.mine) or self._host is None:
            return False
        got = member.claim(want, self._cap)
        for claim in got:
            self._queue_claim(claim)
        return bool(got)

    def _queue_claim(self, claim: Claim) -> None:
        host, member = self._host, self._member
        assert host is not None  # noqa: S101  # claims start after attach
        customer, raw, origin_alive = claim
        try:
            record = decode(raw)
        except (ValueError, KeyError, TypeError, IndexError):
            self.errors += 1
            logger.error("dropping an unreadable entry of the fleet queue (customer %r)", customer)
            member.drop_unreadable(customer, raw)
            return
        event = record.event
        eid = event.event_id
        with member.lock:
            member.held[customer] = eid
            item = member.mine.get(eid) if record.origin == member.name else None
            if item is None and record.origin and record.origin != member.name and origin_alive:
                member.behalf[eid] = record.origin
        if item is None:
            item = Tracked(event)
            if eid not in member.behalf:
                host.admit(item)  # nobody else waits for it: this member's books count it
        self._claimed.put(item)
        host.start_senders()

    def _read_notices(self) -> None:
        member = self._member
        for notice in member.notices():
            with member.lock:
                item = member.mine.pop(notice["event_id"], None)
            if item is None or self._host is None:
                continue
            notice["outcome"] = Outcome(notice["outcome"])
            notice["reason"] = Reason(notice["reason"])
            self._host.finish(item, Result(**notice, event=item.event))

    def _direct(self) -> bool:
        """The link is down: send what was tracked here ourselves (order across the fleet waits)."""
        intake, host = self._intake, self._host
        if intake is None or host is None:
            return False
        items = intake.take(_PUSH_BATCH)
        for item in items:
            self._claimed.put(item)
        intake.task_done(len(items))
        if items:
            self.direct += len(items)
            host.start_senders()
        return bool(items)

    # -- closing and reading --------------------------------------------------------------------

    def close(self) -> None:
        """Leave the fleet: give back this member's claims, drop its key; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2 * BEAT_S)
        self._member.leave()
        self._local.close()

    def stats(self) -> DurabilityStats:
        """The local part's counters, and the fleet as this member sees it."""
        out = self._local.stats()
        health, member = self._health, self._member
        link = member.link
        out["fleet"] = {
            "redis": link.where,
            "link": "up" if link.up else "down" if link.lost_at else "connecting",
            "link_error": None if link.up else link.last_error,
            "member": member.name,
            "members": member.view["members"],
            "queue_depth": member.view["queue_depth"],
            "claims": member.view["claims"],
            "claimed_here": len(member.held),
            "paused_by": health.paused_by if health is not None else None,
            "pushed": member.pushed,
            "delivered_for_others": member.delivered_for_others,
            "sent_without_fleet": self.direct,
            "errors": self.errors,
        }
        return out


def _handed(item: Tracked) -> Result:
    """What the local part is told of an event now safe in Redis: it may let go of it."""
    return Result(
        success=False,
        message="handed to the fleet",
        event_id=item.event_id,
        outcome=Outcome.DROPPED,
        reason=Reason.SHUTDOWN,
        event=item.event,
    )
