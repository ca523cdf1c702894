"""Informational (1xx) replies before the final answer are skipped (issue 16).

A raw socket server answers every request with ``103 Early Hints`` and then ``200``, on one
keep-alive connection. Taken for the answer, the 103 would make each event ``failed
(unexpected_status)`` although the server accepted it, and leave the 200 on the connection
for the next request to read.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from cms_shipper import CMSClient, Outcome

from .conftest import FAST, TOKEN


class EarlyHintsServer:
    """Answers each POST with 103 Early Hints, then 200 and a JSON body; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.bodies: list[dict[str, object]] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                self.bodies.append(json.loads(body))
                answer = b'{"status": true, "data": "ok"}'
                conn.sendall(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hints() -> Iterator[EarlyHintsServer]:
    server = EarlyHintsServer()
    yield server
    server.close()


@pytest.mark.parametrize("sync_mode", [False, True])
def test_early_hints_before_the_answer_are_skipped(
    hints: EarlyHintsServer, sync_mode: bool
) -> None:
    client = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{hints.port}", sync_mode=sync_mode,
                       max_concurrent_requests=1, **FAST)  # fmt: skip
    try:
        results = [client.track_lead(f"lead-{i}", f"c{i}", click_id="k") for i in range(5)]
        finals = [r.wait(10.0) for r in results]
    finally:
        client.close(5.0)
    assert [f.outcome for f in finals] == [Outcome.DELIVERED] * 5, finals
    assert all(f.status_code == 200 and f.data == "ok" for f in finals)
    # Each event sent once, over one kept-alive connection: no answer was left behind on it.
    assert sorted(b["eventName"] for b in hints.bodies) == [f"lead-{i}" for i in range(5)]
    assert hints.connections == 1
