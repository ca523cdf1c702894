"""The fleet queue keeps a customer's events in the order they were tracked.

A member pushes what it tracked within milliseconds, but a process's first push (thread
start, connection) takes longer: a follow-up tracked a few milliseconds after its set-up,
in another process, could reach Redis first. ``benchmarks/fleet.py`` (4 processes, set-ups
then follow-ups a few milliseconds later) measured 15 follow-ups of 60 sent before their
set-up when the queue kept push order; these tests run the scripts against the real
server, with explicit clocks.
"""

from __future__ import annotations

from typing import Any

import redis

from cms_shipper._events import Event
from cms_shipper._fleet import scripts
from cms_shipper._fleet.records import decode, encode, tracked_us

from .conftest import RedisServer

P = "cms-shipper:test:"
T0 = 1_800_000_000.0  # seconds
WINDOW = scripts.ORDER_WINDOW_MS


def event(eid: str, customer: str, at: float) -> Event:
    payload = {"eventName": eid, "customerExternalId": customer}
    return Event.of(eid, "lead", payload, at, None)


def push(client: redis.Redis, origin: str, e: Event, now_ms: int) -> Any:
    record = encode(origin, e)
    return scripts.run(client, scripts.PUSH, P, now_ms, 60, WINDOW,
                       e.customer_key, e.event_id, tracked_us(e), record)  # fmt: skip


def queue(client: redis.Redis, customer: str) -> list[str]:
    return [decode(raw).event.event_id for raw in client.lrange(P + "q:" + customer, 0, -1)]


def claim(client: redis.Redis, member: str, now_ms: int) -> list[str]:
    got = scripts.run(client, scripts.CLAIM, P, member, now_ms, 4, 4)
    return [decode(got[i + 1]).event.event_id for i in range(0, len(got), 3)]


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def test_an_event_pushed_late_goes_before_later_tracked_events_of_other_members(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    # The follow-up (tracked 5 ms after the set-up, by B) reaches Redis first.
    assert push(client, "B", event("follow-up", "u1", T0 + 0.005), ms(T0 + 0.006)) == 1
    assert push(client, "A", event("set-up", "u1", T0), ms(T0 + 0.012)) == 1
    assert queue(client, "u1") == ["set-up", "follow-up"]
    assert claim(client, "C", ms(T0 + 1)) == ["set-up"]


def test_a_members_own_events_keep_their_order_whatever_its_clock_says(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    push(client, "A", event("first", "u1", T0 + 0.005), ms(T0))
    push(client, "A", event("second", "u1", T0), ms(T0))  # the clock stepped back
    push(client, "B", event("other", "u1", T0 + 0.001), ms(T0))
    # B's event was tracked between A's two by the clock; A's order is A's own.
    assert queue(client, "u1") == ["first", "second", "other"]


def test_a_head_being_sent_is_never_passed(redis_server: RedisServer) -> None:
    client = redis_server.client()
    push(client, "B", event("follow-up", "u1", T0 + 0.005), ms(T0))
    assert claim(client, "B", ms(T0 + 1)) == ["follow-up"]  # on the wire now
    push(client, "A", event("set-up", "u1", T0), ms(T0 + 1))
    assert queue(client, "u1") == ["follow-up", "set-up"]


def test_a_new_head_waits_the_order_window_after_it_was_tracked(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    push(client, "B", event("follow-up", "u1", T0), ms(T0))
    assert claim(client, "C", ms(T0) + WINDOW - 1) == []
    push(client, "A", event("set-up", "u1", T0 - 0.002), ms(T0) + WINDOW - 1)
    assert claim(client, "C", ms(T0) + WINDOW) == ["set-up"]


def test_the_next_head_handed_on_by_an_ack_also_waits_the_window(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    push(client, "A", event("one", "u1", T0), ms(T0))
    assert claim(client, "A", ms(T0 + 1)) == ["one"]
    push(client, "A", event("two", "u1", T0 + 1), ms(T0 + 1))
    # Acked 10 ms after "two" was tracked: the claim is not handed on yet...
    ack = [P, "A", "u1", "one", ms(T0 + 1) + 10, "1", WINDOW]
    assert scripts.run(client, scripts.ACK, *ack) == []
    assert client.hget(P + "claims", "u1") is None
    # ..."two" waits in the ready line until its window has passed.
    assert claim(client, "C", ms(T0 + 1) + WINDOW - 1) == []
    assert claim(client, "C", ms(T0 + 1) + WINDOW) == ["two"]
