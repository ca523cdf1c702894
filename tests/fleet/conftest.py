"""A real ``redis-server`` for fleet mode, started by the test session on a free loopback port.

One server for the session (append-only file on, so a restart keeps what it had), flushed
before each test. ``redis_server.restart()`` stops it and starts it again on the same port
and files; ``redis_server.stop()`` stops it. If ``redis-server`` is not on PATH, the fleet
tests fail with a message saying how to install it (``.ci/run`` does).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import redis

__all__ = ["RedisServer"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on loopback, with its data directory."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: apt-get install redis-server (see .ci/run)")
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        """Start the server and wait until it answers PING (10 s at most)."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10.0
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM: it writes its append-only file first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10.0)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and files."""
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        """A plain client to look at the server from the test."""
        return redis.Redis.from_url(self.url, socket_timeout=5.0)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's server, running and empty."""
    if redis_session.process is None or redis_session.process.poll() is not None:
        redis_session.start()
    client = redis_session.client()
    client.flushall()
    client.close()
    yield redis_session
