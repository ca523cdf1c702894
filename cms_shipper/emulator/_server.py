"""HTTP on top of ``State``: a threading HTTP/1.1 server with keep-alive and control routes.

Every answer carries Content-Length and every body is read to exactly its length, so
keep-alive connections stay in step (but for the endless reply fault, which is chunked
and closes). ``stop()`` must return promptly whatever handlers are doing: latency and
trickle wait on an ``Event`` that ``stop()`` sets, and open connections (idle keep-alive
ones included) are shut down so their threads leave at once, even mid-write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Set, Tuple

from cms_shipper.emulator._replies import shape, write
from cms_shipper.emulator._rules import Answer, error
from cms_shipper.emulator._settings import Settings
from cms_shipper.emulator._state import State, TrackRequest
from cms_shipper.emulator._validation import Endpoint

__all__ = ["EmulatorServer"]

logger = logging.getLogger("cms_shipper.emulator")

MAX_BODY_BYTES = 1024 * 1024
ENDPOINTS: Dict[str, Endpoint] = {"/track/lead": "lead", "/track/sale": "sale"}


class EmulatorServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its ``State`` and can drop every connection."""

    daemon_threads = True  # a handler stuck on a slow client must not hold up exit
    # SO_REUSEADDR: after a refuse outage the same port is bound again, while the
    # connections it dropped may still sit in TIME_WAIT.
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], state: State) -> None:
        self.state = state
        self.stopping = threading.Event()
        self._connections: Set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def add_connection(self, conn: socket.socket) -> None:
        """Track an open connection so that ``stop`` can shut it down."""
        with self._connections_lock:
            self._connections.add(conn)
        if self.stopping.is_set():  # accepted while stopping: stop() may have missed it
            _shutdown(conn)

    def discard_connection(self, conn: socket.socket) -> None:
        """Forget a connection that its handler has finished with."""
        with self._connections_lock:
            self._connections.discard(conn)

    def stop(self) -> None:
        """Wake sleeping handlers, stop accepting, close the listener and every connection."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            _shutdown(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures at DEBUG instead of printing tracebacks to stderr."""
        logger.debug("emulator handler failed for %s", client_address, exc_info=True)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    server_version = "cms-shipper-emulator"
    sys_version = ""
    # Headers and body go out in two writes; with Nagle on, the second one waits ~40 ms
    # for the client's delayed ACK on every keep-alive request.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        self.server.add_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.discard_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no token; headers are never logged.
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Control routes; anything else is 404 or 405."""
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/_emulator/health":
            self._send(Answer(200, {"ok": True}))
        elif path == "/_emulator/events":
            self._send(Answer(200, {"events": [asdict(e) for e in state.events()]}))
        elif path == "/_emulator/requests":
            self._send(Answer(200, {"requests": [asdict(r) for r in state.requests()]}))
        elif path in ENDPOINTS or path == "/_emulator/reset":
            self._send(error(405, "Method not allowed"))
        else:
            self._send(error(404, "Not found"))

    def do_POST(self) -> None:
        """The /track endpoints and the reset control route."""
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        if self.server.stopping.is_set():  # a request that raced stop(): no answer
            self._abort()
            return
        if path == "/_emulator/reset":
            self.server.state.reset()
            self._send(Answer(200, {"ok": True}))
        elif path.startswith("/_emulator/"):
            self._send(error(404, "Not found"))
        else:
            self._track(path, body)

    def _track(self, path: str, body: bytes) -> None:
        state, started = self.server.state, time.monotonic()
        payload = _parse_json(body)
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            state.log(path, 404, payload, time.time())
            self._answer(path, payload, started, error(404, "Not found"))
            return
        state.enter()
        try:
            self._answer(path, payload, started, self._decide(path, endpoint, payload))
        finally:
            state.leave()

    def _decide(self, path: str, endpoint: Endpoint, payload: Any) -> Optional[Answer]:
        """The answer to a /track request; None when ``stop()`` cut the latency wait short."""
        state, arrived_at = self.server.state, time.time()
        answer = state.arrive(path, payload, arrived_at)
        if answer is not None:
            return answer
        # Held here, outside the lock; stop() sets the event and cuts the wait short.
        if self.server.stopping.wait(state.settings.latency_s):
            return None
        auth = self.headers.get("Authorization")
        return state.decide(TrackRequest(path, endpoint, auth, payload, arrived_at))

    def _answer(self, path: str, payload: Any, started: float, answer: Optional[Answer]) -> None:
        """Log the request if asked to, then answer it (None: close unanswered)."""
        settings = self.server.state.settings
        if settings.log_requests:
            # Before the body goes out: the client cannot see its answer before the line is
            # written, and an endless or trickled reply is logged too.
            status = None if answer is None else answer.status
            _log_request(self.command, path, status, payload, started)
        if answer is None:
            self._abort()
        else:
            self._send(answer, settings)

    def _read_body(self) -> Optional[bytes]:
        """Exactly Content-Length bytes; None (after answering) when that is impossible."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # the body is still on the wire: resync impossible
            self._send(error(411, "Content-Length required"))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            status = 400 if length < 0 else 413
            self._send(error(status, "Invalid or too large Content-Length"))
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, answer: Answer, faults: Optional[Settings] = None) -> None:
        """Answer, with the reply faults of ``faults`` (None: control routes, bad bodies)."""
        if answer.status is None:
            self._abort()
            return
        body = shape(answer.body or {}, faults)
        trickle_s = 0.0 if faults is None else faults.trickle_interval_s
        try:
            done = write(self, answer.status, answer.headers, body, trickle_s, self.server.stopping)
        except OSError:  # the client went away first (reset, broken pipe); nothing to tell it
            self.close_connection = True
            return
        if not done:  # stop() came mid-body: cut it off like a crashed server would
            self._abort()

    def _abort(self) -> None:
        """Close the connection without any answer (RST, no FIN), like a crashed server."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


def _log_request(
    method: str, path: str, status: Optional[int], payload: Any, started: float
) -> None:
    """One INFO line for a /track request; headers (the token) are never part of it."""
    customer = payload.get("customerExternalId") if isinstance(payload, dict) else None
    logger.info(
        "%s %s %s customerExternalId=%s %.1f ms",
        method,
        _shown(path),
        "-" if status is None else status,
        "-" if customer is None else _shown(str(customer)),
        (time.monotonic() - started) * 1000.0,
    )


def _shown(text: str, limit: int = 120) -> str:
    """The text as is when plain, else its repr: a client's line breaks cannot forge log lines."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return text if text.isprintable() and " " not in text else repr(text)


def _parse_json(body: bytes) -> Any:
    """The decoded JSON body, or None when it is not JSON at all."""
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
