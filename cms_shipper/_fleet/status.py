"""The fleet as Redis holds it, read-only: for ``cms-shipper fleet status``."""

from __future__ import annotations

import time
from typing import Any

import redis

from cms_shipper._fleet.link import safe_url
from cms_shipper._fleet.scripts import namespace

__all__ = ["fleet_status"]


def fleet_status(url: str, token: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """Members, queue, claims and the shared health of ``token``'s fleet on ``url``.

    Raises ``redis.RedisError`` (or ``OSError``) when Redis cannot be read.
    """
    p = namespace(token)
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, client_name="cms-shipper"
    )
    try:
        now_ms = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        pipe.zrange(p + "members", 0, -1, withscores=True)
        pipe.get(p + "depth")
        pipe.zcard(p + "ready")
        pipe.zcount(p + "ready", "-inf", now_ms)
        pipe.hgetall(p + "claims")
        pipe.hgetall(p + "health")
        pipe.get(p + "probe")
        members, depth, customers, ready, claims, health, probe = pipe.execute()
    finally:
        client.close()
    by_member: dict[str, int] = {}
    for member in claims.values():
        name = member.decode()
        by_member[name] = by_member.get(name, 0) + 1
    paused = None
    if health:
        resume_in = max(0.0, int(health[b"resume_at"]) / 1000.0 - time.time())
        paused = {
            "mode": health[b"mode"].decode(),
            "cause": health[b"cause"].decode(),
            "by": health[b"by"].decode(),
            "resume_in_s": round(resume_in, 1),
            "probe_only": health[b"probe_only"] == b"1",
            "probe_by": probe.decode() if probe else None,
        }
    return {
        "redis": safe_url(url),
        "members": [
            {
                "member": m.decode(),
                "seen_s_ago": round(max(0.0, now_ms - score) / 1000.0, 1),
                "claims": by_member.get(m.decode(), 0),
            }
            for m, score in members
        ],
        "queue_depth": int(depth or 0),
        "customers_waiting": customers,
        "customers_ready": ready,
        "claims": len(claims),
        "paused": paused,
    }
