"""One process's membership of the fleet: what it holds, and its Redis calls.

``Member`` keeps what this process knows about the fleet queue: the events it tracked
that are there without an outcome yet (``mine``), the customer heads it claimed
(``held``), the members it delivers for (``behalf``), the pushes and acks whose replies
were lost (retried). Its methods are the Lua scripts and pipelines of ``_fleet.scripts``,
called from the fleet thread (push, claim, beat, notices) or from a sender (ack,
release). ``_fleet.keeper`` decides when; this module only knows how.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from typing import Any, Optional

import redis

from cms_shipper._fleet import scripts
from cms_shipper._fleet.link import Link
from cms_shipper._fleet.records import encode, tracked_us
from cms_shipper._log import logger
from cms_shipper.results import Result, Tracked

__all__ = ["BEAT_S", "MEMBER_TTL_S", "REDIS_ERRORS", "Claim", "Member"]

BEAT_S = 1.0  # how often a member renews its key and reaps the dead's claims
MEMBER_TTL_S = 4.0  # a member that renewed nothing for this long is dead to the fleet
_SEEN_TTL_S = 7 * 24 * 3600  # a push retried within this long adds nothing twice
_NOTICE_TTL_MS = 3_600_000
_NOTICES_PER_READ = 200
REDIS_ERRORS = (redis.RedisError, OSError, ValueError)

Claim = tuple[str, bytes, bool]  # customer, its head's record, whether its origin is alive


class Member:
    """This process in the fleet: a fresh name, link and books for each process (fork)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.prefix = prefix
        self.link = Link(url)
        self.lock = threading.Lock()
        self.mine: dict[str, Tracked] = {}  # tracked here, in the fleet queue, no outcome yet
        self.held: dict[str, str] = {}  # customer -> id of the head this member claimed
        self.behalf: dict[str, str] = {}  # id -> live member it was claimed for
        self.unpushed: deque[Tracked] = deque()  # a push whose reply was lost: retried
        self._acks: deque[tuple[str, str]] = deque()  # (customer, id) acks that failed
        self._acking = 0  # acks on their way (a sender's thread)
        self.pushed = 0
        self.delivered_for_others = 0
        self.view: dict[str, Any] = {"members": 0, "queue_depth": 0, "claims": 0}

    def client(self) -> redis.Redis:
        return self.link.client()

    # -- the fleet thread's calls -----------------------------------------------------------

    def push(self, items: list[Tracked]) -> bool:
        """Add ``items`` to the fleet queue (idempotent by event id); False if Redis failed."""
        args: list[Any] = [self.prefix, now_ms(), _SEEN_TTL_S, scripts.ORDER_WINDOW_MS]
        for item in items:
            event = item.event
            if event is not None:
                args += [event.customer_key, event.event_id, tracked_us(event),
                         encode(self.name, event)]  # fmt: skip
        with self.lock:  # before the push: a claim may come back before its reply
            for item in items:
                if item.event is not None:
                    self.mine[item.event.event_id] = item
        try:
            scripts.run(self.client(), scripts.PUSH, *args)
        except REDIS_ERRORS as exc:
            with self.lock:
                for item in items:
                    if item.event is not None:
                        self.mine.pop(item.event.event_id, None)
            self.link.failed(exc)
            return False
        self.pushed += len(items)
        return True

    def claim(self, want: int, cap: int) -> list[Claim]:
        """Claim up to ``want`` ready heads, the fleet holding at most ``cap`` claims."""
        got = scripts.run(self.client(), scripts.CLAIM, self.prefix, self.name, now_ms(), want, cap)
        return [
            (got[i].decode("utf-8"), got[i + 1], bool(got[i + 2])) for i in range(0, len(got), 3)
        ]

    def beat(self) -> None:
        """Renew this member's key, reap the dead's claims, read the fleet's figures."""
        now = now_ms()
        p, ttl_ms = self.prefix, int(MEMBER_TTL_S * 1000)
        pipe = self.client().pipeline(transaction=False)
        pipe.set(p + "m:" + self.name, "1", px=ttl_ms)
        pipe.zadd(p + "members", {self.name: now})
        pipe.zremrangebyscore(p + "members", 0, now - ttl_ms)
        pipe.eval(scripts.REAP, 0, p, now)
        pipe.zcard(p + "members")
        pipe.get(p + "depth")
        pipe.hgetall(p + "claims")
        *_, members, depth, claims = pipe.execute()
        self.view = {"members": members, "queue_depth": int(depth or 0), "claims": len(claims)}
        self._reconcile(claims)

    def _reconcile(self, claims: dict[bytes, bytes]) -> None:
        """Give back claims Redis holds for this member that it never heard of.

        A claim whose reply was lost (the link broke mid-call) would otherwise hold its
        customer for as long as this member lives.
        """
        me = self.name.encode()
        with self.lock:
            if self._acking or self._acks:
                return  # an ack's reply may still bring its claim: next beat
            lost = [
                c.decode() for c, m in claims.items() if m == me and c.decode() not in self.held
            ]
        if lost:
            logger.debug("giving back %d claim(s) whose reply was lost", len(lost))
            self.release([(c, "") for c in lost], 0.0)

    def retry_acks(self) -> None:
        """Acks that failed while the link was down, in order."""
        while self._acks:
            customer, eid = self._acks[0]
            self._run_ack(self.client(), customer, eid, keep=False)
            self._acks.popleft()

    def notices(self) -> list[dict[str, Any]]:
        """Outcomes other members reached for events tracked here."""
        if not self.mine:
            return []
        raw: Any = self.client().lpop(f"{self.prefix}done:{self.name}", _NOTICES_PER_READ)
        return [json.loads(entry) for entry in raw or ()]

    def drop_unreadable(self, customer: str, raw: bytes) -> None:
        """Ack a head that cannot be decoded, so its customer's next event can go."""
        head = raw.split(b"\n", 2)[1].decode("utf-8", "replace") if raw.count(b"\n") else ""
        self._run_ack(self.client(), customer, head, keep=False)

    def _run_ack(self, client: redis.Redis, customer: str, eid: str, *, keep: bool) -> Any:
        args = [self.prefix, self.name, customer, eid, now_ms(), "1" if keep else "0"]
        return scripts.run(client, scripts.ACK, *args, scripts.ORDER_WINDOW_MS)

    # -- a sender's calls ---------------------------------------------------------------------

    def ack(
        self, customer: str, eid: str, origin: Optional[str], final: Result, keep_claiming: bool
    ) -> Optional[Claim]:
        """The head ``eid`` has its outcome: remove it, tell its origin, claim the next one.

        Returns the customer's next head when the script claimed it for this member. A
        failed ack is retried by the fleet thread (``retry_acks``).
        """
        with self.lock:
            self._acking += 1  # its reply may hand this member a claim: no reconciling now
        try:
            client = self.client()
            nxt = self._run_ack(client, customer, eid, keep=keep_claiming)
            if origin is not None:
                self._notify(client, origin, final)
            return (customer, nxt[0], bool(nxt[1])) if nxt else None
        except REDIS_ERRORS as exc:
            self.link.failed(exc)
            self._acks.append((customer, eid))
            return None
        finally:
            with self.lock:
                self._acking -= 1

    def _notify(self, client: redis.Redis, origin: str, final: Result) -> None:
        notice = {k: final[k] for k in ("success", "status_code", "message", "error", "data")}
        notice.update(
            event_id=final.event_id,
            details=final.details,
            outcome=str(final.outcome),
            reason=str(final.reason),
        )
        key = f"{self.prefix}done:{origin}"
        pipe = client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(notice, default=str))
        pipe.pexpire(key, _NOTICE_TTL_MS)
        pipe.execute()
        self.delivered_for_others += 1

    def release(self, claims: list[tuple[str, str]], delay_s: float) -> None:
        """Give claims back to the fleet; a non-empty id also leaves that event's origin."""
        if not claims:
            return
        args: list[Any] = [self.prefix, self.name, now_ms() + int(delay_s * 1000)]
        for customer, orphan in claims:
            args += [customer, orphan]
        try:
            scripts.run(self.client(), scripts.RELEASE, *args)
        except REDIS_ERRORS as exc:  # the claims lapse with this member's key instead
            self.link.failed(exc)

    def leave(self) -> None:
        """Give back every claim and drop this member's key (close)."""
        with self.lock:
            claims = [(c, eid if eid in self.mine else "") for c, eid in self.held.items()]
            self.held.clear()
        if self.link.up:
            self.release(claims, 0.0)
            try:
                client = self.client()
                p = self.prefix
                pipe = client.pipeline(transaction=False)
                pipe.delete(p + "m:" + self.name)
                pipe.zrem(p + "members", self.name)
                pipe.zcard(p + "members")
                pipe.get(p + "depth")
                pipe.hlen(p + "claims")
                *_, members, depth, claims = pipe.execute()
                # stats() after close shows the fleet as this member left it, not as it
                # was at the last beat.
                self.view = {"members": members, "queue_depth": int(depth or 0), "claims": claims}
            except REDIS_ERRORS:
                logger.debug("leaving the fleet: Redis did not answer", exc_info=True)
        self.link.close()


def now_ms() -> int:
    return int(time.time() * 1000)
