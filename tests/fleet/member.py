"""A fleet member for the tests: one real process with a client in fleet mode.

Run as ``python member.py '<json>'``. The JSON says: ``host``, ``redis_url``, ``token``,
``options`` (client options), ``leads`` (a list of ``[event_name, customer, click_id]``,
click_id may be null; tracked as deferred set-ups when they carry one), ``hold_s`` (stay a
member that long after tracking, delivering for the fleet), ``close_timeout_s``;
``redis_url_off`` (true: the same process without fleet mode).
It prints one JSON line per stage: ``{"stage": "tracked"}``, ``{"stage": "pushed"}`` once
the fleet holds all it tracked, and ``{"stage": "closed", "close": ..., "stats": ...}``.
"""

from __future__ import annotations

import json
import sys
import time

from cms_shipper import CMSClient


def say(**line: object) -> None:
    print(json.dumps(line, default=str), flush=True)


def main() -> None:
    spec = json.loads(sys.argv[1])
    redis_url = None if spec.get("redis_url_off") else spec["redis_url"]
    client = CMSClient(
        token=spec["token"], host=spec["host"], redis_url=redis_url, **spec["options"]
    )
    say(stage="started")
    if not spec["leads"]:
        client.flush(0)  # joins the fleet (a client joins at its first event or flush)
    for name, customer, click_id in spec["leads"]:
        if click_id:
            client.track_lead(name, customer, click_id=click_id, mode="deferred")
        else:
            client.track_lead(name, customer)
    say(stage="tracked")
    deadline = time.monotonic() + 30.0
    while redis_url and time.monotonic() < deadline:
        fleet = client.stats()["fleet"] or {}
        if fleet.get("pushed", 0) >= len(spec["leads"]):
            break
        time.sleep(0.01)
    say(stage="pushed", fleet=client.stats()["fleet"])
    time.sleep(spec.get("hold_s", 0.0))
    result = client.close(spec.get("close_timeout_s", 30.0))
    say(stage="closed", close=dict(result), stats=client.stats())


if __name__ == "__main__":
    main()
