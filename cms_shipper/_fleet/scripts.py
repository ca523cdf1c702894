"""The fleet's shared state in Redis: its keys, and the Lua scripts that change it atomically.

Everything of one token lives under one prefix, ``cms-shipper:<hash of the token>:``, so
two tokens sharing a Redis never mix and the token itself never reaches Redis:

- ``q:<customer>``: a list, the customer's events in the order they were tracked, whichever
  member tracked them (``PUSH`` puts an event pushed late, by a member that was slower to
  reach Redis, before the later-tracked events of other members that are not yet sent).
  Each entry is ``origin \\n event id \\n tracked_us \\n event JSON`` (``origin`` is the
  member that tracked it, or empty once nobody waits for its outcome).
- ``ready``: a sorted set of customers whose head may be claimed, scored by the time (ms)
  from which it may (a customer whose retry is parked there waits for its score). A new
  customer's head waits ``ORDER_WINDOW_MS`` after it was tracked, so that an earlier event
  of that customer still on its way from another member can take its place first.
- ``claims``: a hash, customer -> member, for customers whose head a member is sending.
  At most one claim per customer: at most one request per customer in the whole fleet.
- ``m:<member>``: a key with a short expiry that a live member keeps renewing; ``members``
  a sorted set of members by when they were last seen.
- ``seen:<event id>``: makes pushing idempotent (a push retried after a lost reply).
- ``done:<member>``: outcomes of a live member's events that another member delivered.
- ``depth``: how many events the fleet queue holds.
- ``health`` and ``probe``: the API's health as the fleet sees it (``_fleet.health``).

The scripts touch keys they build from the prefix, so the fleet needs one Redis (or a
Sentinel-managed primary), not Redis Cluster. Times are milliseconds from the member's
clock, compared only with times from the same kind of clock of other members: keep the
fleet's clocks in sync (NTP), as every Redis-based queue asks.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "ACK",
    "CLAIM",
    "DROP_PROBE",
    "ORDER_WINDOW_MS",
    "PUSH",
    "REAP",
    "RELEASE",
    "namespace",
    "run",
]

# How long a customer's head waits, after it was tracked, before it may be claimed: a member
# pushes what it tracked within milliseconds, and a process's first push (thread start,
# connection) within tens; an earlier event of the same customer arriving meanwhile from
# another member goes first. Small against the client's own batching (``flush_interval_s``).
ORDER_WINDOW_MS = 100


def run(client: Any, script: str, *args: Any) -> Any:
    """Run one of these scripts (redis-py caches nothing for ``eval``; they are small)."""
    return client.eval(script, 0, *args)


def namespace(token: str) -> str:
    """The key prefix of one token's fleet: a hash, never the token itself."""
    digest = hashlib.sha256(b"cms-shipper fleet\0" + token.encode("utf-8")).hexdigest()
    return f"cms-shipper:{digest[:20]}:"


_HEAD = """
local function parse(rec)
  local origin, id, at = string.match(rec, '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n')
  return origin, id, tonumber(at)
end
local function alive(p, origin)
  if origin == '' then return 0 end
  return redis.call('EXISTS', p .. 'm:' .. origin)
end
"""

# ARGV: prefix, now_ms, seen_ttl_s, order_window_ms, then (customer, event id, tracked_us,
# record) per event. An event goes after its customer's events tracked before it, after its
# own member's (their order is the member's), and after a head being sent; before the rest.
# Returns how many events were new (a retried push adds nothing twice).
PUSH = (
    _HEAD
    + """
local p, now, ttl, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local added = 0
for i = 5, #ARGV, 4 do
  local c, id, at, rec = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  if redis.call('SET', p .. 'seen:' .. id, '1', 'NX', 'EX', ttl) then
    local q = p .. 'q:' .. c
    local claimed = redis.call('HEXISTS', p .. 'claims', c) == 1
    local first = claimed and 1 or 0
    local origin = parse(rec)
    local pivot = nil
    local k = redis.call('LLEN', q) - 1
    while k >= first do
      local other = redis.call('LINDEX', q, k)
      local o, _, t = parse(other)
      if o == origin or t == nil or t <= at then break end
      pivot = other
      k = k - 1
    end
    if pivot then
      redis.call('LINSERT', q, 'BEFORE', pivot, rec)
    else
      redis.call('RPUSH', q, rec)
    end
    if not claimed then
      redis.call('ZADD', p .. 'ready', 'NX', math.max(now, math.floor(at / 1000) + window), c)
    end
    added = added + 1
  end
end
if added > 0 then redis.call('INCRBY', p .. 'depth', added) end
return added
"""
)

# ARGV: prefix, member, now_ms, how many, the fleet's cap on claims.
# Returns {customer, record, origin alive (0/1), ...} for each customer claimed.
CLAIM = (
    _HEAD
    + """
local p, me, now, want, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local room = math.min(want, cap - redis.call('HLEN', p .. 'claims'))
local out = {}
if room <= 0 then return out end
-- While the fleet is paused, nothing is claimed; once the pause is due, only what the
-- fleet's one probe needs (the member holding the probe right, or any before it is taken).
local health = redis.call('HMGET', p .. 'health', 'resume_at', 'probe_only')
if health[1] then
  if tonumber(now) < tonumber(health[1]) then return out end
  if health[2] == '1' then
    local prober = redis.call('GET', p .. 'probe')
    if prober and prober ~= me then return out end
    room = 1
  end
end
local customers = redis.call('ZRANGEBYSCORE', p .. 'ready', '-inf', now, 'LIMIT', 0, room)
for _, c in ipairs(customers) do
  redis.call('ZREM', p .. 'ready', c)
  local rec = redis.call('LINDEX', p .. 'q:' .. c, 0)
  if rec then
    redis.call('HSET', p .. 'claims', c, me)
    local origin = parse(rec)
    table.insert(out, c)
    table.insert(out, rec)
    table.insert(out, alive(p, origin))
  end
end
return out
"""
)

# ARGV: prefix, member, customer, event id, now_ms, keep (1: keep the claim and return the
# customer's next record, if any), order_window_ms. The event has its outcome: it leaves the
# queue if it is still the customer's head; a claim that is still ours passes on, unless
# the next record is younger than the order window (then it waits in ``ready``). Returns {}
# or {record, origin alive} when the claim was kept for the next record.
ACK = (
    _HEAD
    + """
local p, me, c, id, now, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local window = tonumber(ARGV[7])
local q = p .. 'q:' .. c
local head = redis.call('LINDEX', q, 0)
if head then
  local _, hid = parse(head)
  if hid == id then
    redis.call('LPOP', q)
    redis.call('DECR', p .. 'depth')
  end
end
if redis.call('HGET', p .. 'claims', c) ~= me then return {} end
local nxt = redis.call('LINDEX', q, 0)
if not nxt then
  redis.call('HDEL', p .. 'claims', c)
  return {}
end
local origin, _, at = parse(nxt)
local due = now
if at then due = math.max(now, math.floor(at / 1000) + window) end
if keep == '1' and due <= now then
  return {nxt, alive(p, origin)}
end
redis.call('HDEL', p .. 'claims', c)
redis.call('ZADD', p .. 'ready', due, c)
return {}
"""
)

# ARGV: prefix, member, ready_at_ms, then (customer, event id or '') per claim to give back.
# The head stays where it is (its customer's order holds); with an event id, the head is
# marked as nobody's (its origin stops waiting for it). Returns how many were given back.
RELEASE = (
    _HEAD
    + """
local p, me, at = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV, 2 do
  local c, orphan = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', p .. 'claims', c) == me then
    local q = p .. 'q:' .. c
    local head = redis.call('LINDEX', q, 0)
    if head and orphan ~= '' then
      local origin, hid = parse(head)
      if hid == orphan and origin ~= '' then
        redis.call('LSET', q, 0, string.sub(head, #origin + 1))
      end
    end
    redis.call('HDEL', p .. 'claims', c)
    if head then redis.call('ZADD', p .. 'ready', at, c) end
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, now_ms. Claims of members that stopped renewing their key go back to the
# ready line at once: a SIGKILLed member's work is picked up by the others within seconds.
REAP = (
    _HEAD
    + """
local p, now = ARGV[1], ARGV[2]
local claims = redis.call('HGETALL', p .. 'claims')
local n = 0
for i = 1, #claims, 2 do
  local c, member = claims[i], claims[i + 1]
  if redis.call('EXISTS', p .. 'm:' .. member) == 0 then
    redis.call('HDEL', p .. 'claims', c)
    if redis.call('EXISTS', p .. 'q:' .. c) == 1 then
      redis.call('ZADD', p .. 'ready', now, c)
    end
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, member. The probe right goes back, if this member holds it.
DROP_PROBE = """
local key = ARGV[1] .. 'probe'
if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) return 1 end
return 0
"""
