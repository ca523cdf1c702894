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

import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Optional, Union

import redis

from cms_shipper._config import Settings
from cms_shipper._durability import Durability, DurabilityStats, Host, Q
from cms_shipper._engine import EventQueue
from cms_shipper._fleet import scripts
from cms_shipper._fleet.health import TICK_S, FleetHealth
from cms_shipper._fleet.link import Link
from cms_shipper._fleet.records import decode, encode
from cms_shipper._log import logger
from cms_shipper.results import Outcome, Reason, Result, Tracked

__all__ = ["BEAT_S", "MEMBER_TTL_S", "FleetKeeper", "in_fleet"]

BEAT_S = 1.0  # how often a member renews its key and reaps the dead's claims
MEMBER_TTL_S = 4.0  # a member that renewed nothing for this long is dead to the fleet
POLL_S = 0.05  # an idle fleet thread looks for work this often
_PUSH_BATCH = 500
_SEEN_TTL_S = 7 * 24 * 3600  # a push retried within this long adds nothing twice
_NOTICE_TTL_MS = 3_600_000
_RETRY_LATER_S = 30.0  # an event whose retries ran out is tried again by the fleet after this
_REDIS_ERRORS = (redis.RedisError, OSError, ValueError)
# Outcomes that leave the event in the fleet queue (nothing the server said makes it hopeless).
_KEEP = {
    (Outcome.FAILED, Reason.RETRIES_EXHAUSTED),
    (Outcome.DROPPED, Reason.SHUTDOWN),
    (Outcome.DROPPED, Reason.CLOSED),
    (Outcome.DROPPED, Reason.QUEUE_FULL),
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
        self.member = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._link = Link(self._url)
        self._lock = threading.Lock()
        self._mine: dict[str, Tracked] = {}  # tracked here, in the fleet queue, no outcome yet
        self._held: dict[str, str] = {}  # customer -> id of the head this member claimed
        self._behalf: dict[str, str] = {}  # id -> live member it was claimed for
        self._unpushed: deque[Tracked] = deque()  # a push whose reply was lost: retried
        self._acks: deque[tuple[str, str]] = deque()  # (customer, id) acks that failed
        self._acking = 0  # acks on their way (a sender's thread)
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
        self.pushed = 0
        self.delivered_for_others = 0
        self.direct = 0
        self.errors = 0
        self._view: dict[str, Any] = {"members": 0, "queue_depth": 0, "claims": 0}

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
        """Join the fleet (once; cheap to call on every event) and start the local replay."""
        self._local.start_replay()
        if self._thread is not None or self._closed:
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

    def hold_back(self, item: Tracked) -> Union[Result, float, None]:
        """A claimed head goes now (its claim is the customer's turn); others ask the local part."""
        event = item.event
        if event is not None and self._held.get(event.customer_key) == event.event_id:
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
        if rest and self._link.up and self._push([items[i] for i in rest], self._link.client()):
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
        eid = event.event_id
        return eid in self._mine or self._held.get(event.customer_key) == eid

    def _settle_fleet(self, item: Tracked, final: Result) -> Result:
        event = item.event
        assert event is not None  # noqa: S101
        customer, eid = event.customer_key, event.event_id
        keep = (final.outcome, final.reason) in _KEEP
        with self._lock:
            held = self._held.get(customer) == eid
            if held:
                del self._held[customer]
            own = self._mine.pop(eid, None) is not None
            origin = self._behalf.pop(eid, None)
        if held and keep:
            delay = 0.0 if final.outcome is Outcome.DROPPED else _RETRY_LATER_S
            self._release([(customer, eid if own else "")], delay)
        elif held:
            self._ack(customer, eid, origin, final)
        return in_fleet(final) if keep else final

    # -- Redis calls from a sender's thread -------------------------------------------------

    def _ack(self, customer: str, eid: str, origin: Optional[str], final: Result) -> None:
        with self._lock:
            self._acking += 1  # its reply may hand this member a claim: no reconciling now
        try:
            client = self._link.client()
            keep = "0" if self._halted and not self._mine else "1"
            args = [self._prefix, self.member, customer, eid, _now_ms(), keep]
            nxt = scripts.run(client, scripts.ACK, *args)
            if origin is not None:
                self._notify(client, origin, final)
            if nxt:
                self._queue_claim(customer, nxt[0], bool(nxt[1]))
        except _REDIS_ERRORS as exc:
            self._link.failed(exc)
            self._acks.append((customer, eid))
        finally:
            with self._lock:
                self._acking -= 1

    def _notify(self, client: redis.Redis, origin: str, final: Result) -> None:
        notice = {k: final[k] for k in ("success", "status_code", "message", "error", "data")}
        notice.update(
            event_id=final.event_id,
            details=final.details,
            outcome=str(final.outcome),
            reason=str(final.reason),
        )
        key = f"{self._prefix}done:{origin}"
        pipe = client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(notice, default=str))
        pipe.pexpire(key, _NOTICE_TTL_MS)
        pipe.execute()
        self.delivered_for_others += 1

    def _release(self, claims: list[tuple[str, str]], delay_s: float) -> None:
        if not claims:
            return
        args: list[Any] = [self._prefix, self.member, _now_ms() + int(delay_s * 1000)]
        for customer, orphan in claims:
            args += [customer, orphan]
        try:
            scripts.run(self._link.client(), scripts.RELEASE, *args)
        except _REDIS_ERRORS as exc:  # the claims lapse with this member's key instead
            self._link.failed(exc)

    # -- the fleet thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_beat = next_tick = 0.0
        while not self._stop.is_set():
            busy = False
            if self._link.usable():
                try:
                    client = self._link.client()
                    now = time.monotonic()
                    if now >= next_beat:
                        self._beat(client)
                        next_beat = now + BEAT_S
                    self._link.worked()
                    busy = self._drain(client) | self._claim(client)
                    self._retry_acks(client)
                    self._read_notices(client)
                    if self._health is not None and now >= next_tick:
                        self._health.tick()
                        next_tick = now + TICK_S
                except _REDIS_ERRORS as exc:
                    self._link.failed(exc)
                except Exception:  # a bug of ours must not end the fleet thread
                    self.errors += 1
                    logger.exception("unexpected error in the fleet thread")
            if not self._link.up:
                busy = self._direct() or busy
            if not busy:
                self._wake.wait(POLL_S)
                self._wake.clear()

    def _beat(self, client: redis.Redis) -> None:
        now = _now_ms()
        p = self._prefix
        pipe = client.pipeline(transaction=False)
        pipe.set(p + "m:" + self.member, "1", px=int(MEMBER_TTL_S * 1000))
        pipe.zadd(p + "members", {self.member: now})
        pipe.zremrangebyscore(p + "members", 0, now - int(MEMBER_TTL_S * 1000))
        pipe.eval(scripts.REAP, 0, p, now)
        pipe.zcard(p + "members")
        pipe.get(p + "depth")
        pipe.hgetall(p + "claims")
        *_, members, depth, claims = pipe.execute()
        self._view = {"members": members, "queue_depth": int(depth or 0), "claims": len(claims)}
        self._reconcile(claims)
        if self._health is None and self._host is not None:
            gate = self._host.gate
            rpm = self._settings.max_requests_per_minute
            self._health = FleetHealth(client, p, self.member, gate, rpm)

    def _reconcile(self, claims: dict[bytes, bytes]) -> None:
        """Give back claims Redis holds for this member that it never heard of.

        A claim whose reply was lost (the link broke mid-call) would otherwise hold its
        customer for as long as this member lives.
        """
        me = self.member.encode()
        with self._lock:
            if self._acking or self._acks:
                return  # an ack's reply may still bring its claim: next beat
            lost = [
                c.decode() for c, m in claims.items() if m == me and c.decode() not in self._held
            ]
        if lost:
            logger.debug("giving back %d claim(s) whose reply was lost", len(lost))
            self._release([(c, "") for c in lost], 0.0)

    def _drain(self, client: redis.Redis) -> bool:
        """Push what was tracked here (a lost reply's batch first)."""
        intake = self._intake
        if self._unpushed:
            batch = list(self._unpushed)
            if not self._push(batch, client):
                return False
            self._unpushed.clear()
        if intake is None:
            return False
        items = intake.take(_PUSH_BATCH)
        if not items:
            return False
        if not self._push(items, client):
            self._unpushed.extend(items)  # maybe in Redis already: pushed again, never sent here
        intake.task_done(len(items))
        return True

    def _push(self, items: list[Tracked], client: redis.Redis) -> bool:
        args: list[Any] = [self._prefix, _now_ms(), _SEEN_TTL_S]
        for item in items:
            event = item.event
            if event is not None:
                args += [event.customer_key, event.event_id, encode(self.member, event)]
        with self._lock:  # before the push: a claim may come back before its reply
            for item in items:
                if item.event is not None:
                    self._mine[item.event.event_id] = item
        try:
            scripts.run(client, scripts.PUSH, *args)
        except _REDIS_ERRORS as exc:
            with self._lock:
                for item in items:
                    if item.event is not None:
                        self._mine.pop(item.event.event_id, None)
            self._link.failed(exc)
            return False
        self.pushed += len(items)
        kept = [item for item in items if item._kept]
        if kept:  # safe in Redis: the local copies (journal records, spool rows) let go
            self._local.settle(kept, [in_fleet(_handed(item)) for item in kept])
            for item in kept:
                item._kept = 0
        return True

    def _claim(self, client: redis.Redis) -> bool:
        want = self._cap - len(self._held)
        if want <= 0 or (self._halted and not self._mine) or self._host is None:
            return False
        got = scripts.run(
            client, scripts.CLAIM, self._prefix, self.member, _now_ms(), want, self._cap
        )
        for i in range(0, len(got), 3):
            self._queue_claim(got[i].decode("utf-8"), got[i + 1], bool(got[i + 2]))
        return bool(got)

    def _queue_claim(self, customer: str, raw: bytes, origin_alive: bool) -> None:
        host = self._host
        assert host is not None  # noqa: S101  # claims start after attach
        try:
            record = decode(raw)
        except (ValueError, KeyError, TypeError, IndexError):
            self.errors += 1
            logger.error("dropping an unreadable entry of the fleet queue (customer %r)", customer)
            head = raw.split(b"\n", 2)[1].decode("utf-8", "replace") if raw.count(b"\n") else ""
            scripts.run(
                self._link.client(),
                scripts.ACK,
                self._prefix,
                self.member,
                customer,
                head,
                _now_ms(),
                "0",
            )
            return
        event = record.event
        eid = event.event_id
        with self._lock:
            self._held[customer] = eid
            item = self._mine.get(eid) if record.origin == self.member else None
            if item is None and record.origin and record.origin != self.member and origin_alive:
                self._behalf[eid] = record.origin
        if item is None:
            item = Tracked(event)
            if eid not in self._behalf:
                host.admit(item)  # nobody else waits for it: this member's books count it
        self._claimed.put(item)
        host.start_senders()

    def _retry_acks(self, client: redis.Redis) -> None:
        while self._acks:
            customer, eid = self._acks[0]
            scripts.run(
                client, scripts.ACK, self._prefix, self.member, customer, eid, _now_ms(), "0"
            )
            self._acks.popleft()

    def _read_notices(self, client: redis.Redis) -> None:
        if not self._mine:
            return
        raw: Any = client.lpop(f"{self._prefix}done:{self.member}", 200)
        for entry in raw or ():
            notice = json.loads(entry)
            with self._lock:
                item = self._mine.pop(notice["event_id"], None)
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
        with self._lock:
            claims = [(c, eid if eid in self._mine else "") for c, eid in self._held.items()]
            self._held.clear()
        if self._link.up:
            self._release(claims, 0.0)
            try:
                client = self._link.client()
                client.delete(self._prefix + "m:" + self.member)
                client.zrem(self._prefix + "members", self.member)
            except _REDIS_ERRORS:
                logger.debug("leaving the fleet: Redis did not answer", exc_info=True)
        self._link.close()
        self._local.close()

    def stats(self) -> DurabilityStats:
        """The local part's counters, and the fleet as this member sees it."""
        out = self._local.stats()
        health = self._health
        out["fleet"] = {
            "redis": self._link.where,
            "link": "up" if self._link.up else "down" if self._link.lost_at else "connecting",
            "link_error": None if self._link.up else self._link.last_error,
            "member": self.member,
            "members": self._view["members"],
            "queue_depth": self._view["queue_depth"],
            "claims": self._view["claims"],
            "claimed_here": len(self._held),
            "paused_by": health.paused_by if health is not None else None,
            "pushed": self.pushed,
            "delivered_for_others": self.delivered_for_others,
            "sent_without_fleet": self.direct,
            "errors": self.errors,
        }
        return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _handed(item: Tracked) -> Result:
    return Result(
        success=False,
        message="handed to the fleet",
        event_id=item.event_id,
        outcome=Outcome.DROPPED,
        reason=Reason.SHUTDOWN,
        event=item.event,
    )
