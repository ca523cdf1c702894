"""One round-trip measurement in a fresh process: run by ``round_trip.py``, not by hand.

``python _round_trip_child.py SPEC_JSON`` delivers ``events`` leads (the six string fields
the shared referee sends) to ``host`` and prints ``result {json}`` with how many were
answered and the seconds from the first send to the last answer:

- ``ours``: one thread tracks them on a ``CMSClient`` (``options`` as given, defaults
  otherwise), then ``flush`` waits for every outcome;
- ``urllib3``: ``lanes`` threads sharing one ``urllib3.HTTPConnectionPool`` (ours'
  timeouts, no retries) POST the same bodies with the same headers: the HTTP stack
  ``cms_shipper`` is built on, with nothing of ``cms_shipper`` around it;
- ``bare``: ``lanes`` threads, one keep-alive socket each (blocking, no timeouts), write
  request bytes built beforehand (the headers and body fields ``cms_shipper`` sends) and
  read each answer's head and body; ``spin_us`` of CPU (the GIL held) is spent between an
  answer and the lane's next request, to show how the rate depends on a client's cost
  per request.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List
from urllib.parse import urlsplit

import requests
import urllib3
from _child import report

from cms_shipper import CMSClient, __version__

TOKEN = "bench_token_0123456789abcdef"


def _fields(i: int) -> Dict[str, str]:
    return {
        "event_name": "signup_completed",
        "customer_external_id": f"user_{i:08d}",
        "click_id": f"clk_{i:08d}",
        "customer_name": f"Bench User {i}",
        "customer_email": f"user{i}@example.com",
        "customer_avatar": f"https://example.com/avatars/{i}.png",
    }


def _in_lanes(lane: Callable[[int], None], lanes: int) -> float:
    """Run ``lane(k)`` for each lane in a thread of its own, to the end; when they started."""
    threads = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started


def run_ours(spec: Dict[str, Any]) -> Dict[str, Any]:
    client = CMSClient(token=TOKEN, host=spec["host"], **spec["options"])
    started = time.perf_counter()
    for i in range(spec["events"]):
        client.track_lead(**_fields(i))
    client.flush(timeout_s=spec["flush_s"])
    wall_s = time.perf_counter() - started
    delivered = client.stats()["delivered"]
    client.close(timeout_s=5.0)
    return {"answered": delivered, "wall_s": wall_s}


def _requests(host: str, lanes: int, events: int) -> List[List[bytes]]:
    """Each lane's request bytes: the lines and body fields cms_shipper writes."""
    url = urlsplit(host)
    head = (
        "POST /track/lead HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Accept: application/json\r\nAccept-Encoding: identity\r\n"
        f"User-Agent: cms-shipper/{__version__} {requests.utils.default_user_agent()}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {{length}}\r\n\r\n"
    )
    out: List[List[bytes]] = [[] for _ in range(lanes)]
    for i in range(events):
        f = _fields(i)
        body = json.dumps(
            {
                "eventName": f["event_name"],
                "customerExternalId": f["customer_external_id"],
                "clickId": f["click_id"],
                "customerName": f["customer_name"],
                "customerEmail": f["customer_email"],
                "customerAvatar": f["customer_avatar"],
                "timestamp": "2026-01-01T00:00:00.000Z",
            },
            separators=(",", ":"),
        ).encode()
        line = head.format(host=url.netloc, length=len(body)).encode("latin-1")
        out[i % lanes].append(line + body)
    return out


def run_bare(spec: Dict[str, Any]) -> Dict[str, Any]:
    url = urlsplit(spec["host"])
    spin_s = spec["spin_us"] / 1e6
    work = _requests(spec["host"], spec["lanes"], spec["events"])
    answered = [0] * len(work)
    last = [0.0] * len(work)

    def lane(k: int) -> None:
        sock = socket.create_connection((url.hostname, url.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for request in work[k]:
            if spin_s:
                until = time.perf_counter() + spin_s
                while time.perf_counter() < until:
                    pass
            sock.sendall(request)
            length = 0
            while True:
                line = reader.readline()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                if line in (b"\r\n", b""):
                    break
            reader.read(length)
            answered[k] += 1
            last[k] = time.perf_counter()
        sock.close()

    started = _in_lanes(lane, len(work))
    return {"answered": sum(answered), "wall_s": max(last) - started}


def run_urllib3(spec: Dict[str, Any]) -> Dict[str, Any]:
    url = urlsplit(spec["host"])
    work = _requests(spec["host"], spec["lanes"], spec["events"])
    pool = urllib3.HTTPConnectionPool(url.hostname, url.port, maxsize=spec["lanes"])
    timeout = urllib3.Timeout(connect=5.0, read=10.0)
    answered = [0] * len(work)
    last = [0.0] * len(work)

    def lane(k: int) -> None:
        for request in work[k]:
            head, _, body = request.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = dict(line.split(": ", 1) for line in lines if not line.startswith("Host"))
            answer = pool.urlopen(
                "POST", "/track/lead", body=body, headers=headers, timeout=timeout,
                retries=False, redirect=False,
            )  # fmt: skip
            if answer.status == 200:
                answered[k] += 1
            last[k] = time.perf_counter()

    started = _in_lanes(lane, len(work))
    pool.close()
    return {"answered": sum(answered), "wall_s": max(last) - started}


def main() -> None:
    spec = json.loads(sys.argv[1])
    run = {"ours": run_ours, "urllib3": run_urllib3, "bare": run_bare}[spec["client"]]
    report(lambda: run(spec))


if __name__ == "__main__":
    main()
