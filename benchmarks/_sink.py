"""A loopback sink: answers every POST 200 at once (or after a set latency) and counts.

Run as a child process by ``_support.SinkProcess`` (``python _sink.py LATENCY_S LIFETIME_S``):
it prints its URL, serves until its stdin closes (or its lifetime ends), and needs
nothing but the standard library. Peer SDKs are measured against the same server:

- every POST is read to its Content-Length and answered ``200`` with
  ``{"status": true, "success": true, "data": "ok"}`` (what both our client and the
  vendor SDK expect from /track/lead, and a 2xx is all Segment's /v1/batch needs);
- ``GET /_sink/stats`` returns the counts: requests by path, events (1 per request,
  or the length of the JSON ``batch`` list for /v1/batch), and the wall-clock time of
  the first and last request received (``time.time()``, shared with the clients on
  this machine); ``GET /_sink/stats?reset=1`` reads them and starts from zero.

HTTP/1.1 keep-alive, Nagle off (headers and body are two writes), one thread per
connection: the same shape as the emulator, without its rules and record.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict

_REPLY = json.dumps({"status": True, "success": True, "data": "ok"}).encode()


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.events = 0
        self.by_path: Dict[str, int] = {}
        self.first = 0.0
        self.last = 0.0

    def add(self, path: str, events: int, at: float) -> None:
        with self.lock:
            self.requests += 1
            self.events += events
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.first = self.first or at
            self.last = max(self.last, at)

    def read(self, reset: bool) -> Dict[str, Any]:
        with self.lock:
            out = {
                "requests": self.requests, "events": self.events,
                "by_path": dict(self.by_path), "first": self.first, "last": self.last,
            }  # fmt: skip
            if reset:
                self.reset()
            return out


class SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.counts = _Counts()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SinkServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def parse_request(self) -> bool:
        """Stamp the arrival of the request line: the latency counts from here."""
        self.arrived = time.monotonic()
        return super().parse_request()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        received = time.time()
        path = self.path.split("?", 1)[0]
        events = 1
        if path == "/v1/batch":
            try:
                events = len(json.loads(body).get("batch") or [])
            except (ValueError, AttributeError):
                events = 0
        self.server.counts.add(path, events, received)
        if self.server.latency_s > 0:
            # Answer latency_s after the request arrived, not after parsing it: a "20 ms
            # round trip" that sleeps 20 ms on top of the parsing took 21.6 ms here.
            time.sleep(max(0.0, self.arrived + self.server.latency_s - time.monotonic()))
        self._send(_REPLY)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path != "/_sink/stats":
            self._send(b'{"error": "not found"}', 404)
            return
        stats = self.server.counts.read(reset="reset=1" in query)
        self._send(json.dumps(stats).encode())

    def _send(self, data: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    latency_s, lifetime_s = float(sys.argv[1]), float(sys.argv[2])
    watchdog = threading.Timer(lifetime_s, os._exit, (3,))  # hard bound, whatever happens
    watchdog.daemon = True
    watchdog.start()
    server = SinkServer(latency_s)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
