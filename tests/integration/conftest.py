"""Shared pieces for tests that run the real client against the real emulator."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from cms_shipper import CMSClient
from cms_shipper.emulator import Emulator

TOKEN = "test-token"
# Fast but real: short batching interval and backoff so tests spend little time asleep.
FAST = {
    "flush_interval_s": 0.02,
    "retry_initial_backoff_s": 0.01,
    "retry_max_backoff_s": 0.05,
    "retry_max_attempts": 4,
    "connect_timeout_s": 2.0,
    "read_timeout_s": 5.0,
    "shutdown_timeout_s": 5.0,
}

ClientFactory = Callable[..., CMSClient]


@pytest.fixture
def make_client(cms_emulator: Emulator) -> Iterator[ClientFactory]:
    """Build clients pointed at the emulator; every one is closed (bounded) after the test."""
    clients: list[CMSClient] = []

    def factory(**options: Any) -> CMSClient:
        settings = {"token": TOKEN, "host": cms_emulator.url, **FAST, **options}
        client = CMSClient(**settings)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close(timeout_s=2.0)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until true or the deadline; for state with no event to wait on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def unused_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def adds_up(stats: dict[str, Any]) -> bool:
    """tracked + replayed = every outcome (spooled included) + pending."""
    parts = ("delivered", "duplicate", "rejected", "failed", "dropped", "spooled", "pending")
    return stats["tracked"] + stats["replayed"] == sum(stats[p] for p in parts)
