"""Shared pieces for tests that run the real client against the real emulator."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import requests

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


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A started emulator (token ``TOKEN``) driven without the client."""
    with Emulator(token=TOKEN) as emulator:
        yield emulator


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A plain requests session for talking to the emulator directly."""
    with requests.Session() as http:
        yield http


def journey(client: CMSClient, customer: str, steps: int) -> list[str]:
    """A deferred set-up, follow-ups and a sale for one customer; returns event names sent."""
    names = [f"{customer}-setup"]
    client.track_lead(names[0], customer, click_id=f"clk-{customer}", mode="deferred")
    for step in range(steps):
        names.append(f"{customer}-step{step}")
        client.track_lead(names[-1], customer)
    names.append(f"{customer}-sale")
    client.track_sale(names[-1], customer, f"inv-{customer}", 1500, "USD")
    return names


def journeys_from_threads(
    client: CMSClient, *, threads: int, customers: int, steps: int
) -> dict[str, list[str]]:
    """Each of ``threads`` callers tracks ``customers`` journeys at once; names by customer."""
    sent: dict[str, list[str]] = {}
    lock = threading.Lock()

    def caller(worker: int) -> None:
        for n in range(customers):
            customer = f"w{worker}-c{n}"
            names = journey(client, customer, steps)
            with lock:
                sent[customer] = names

    callers = [threading.Thread(target=caller, args=(w,)) for w in range(threads)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(60.0)
    return sent


def received_names(emulator: Emulator) -> dict[str, list[str]]:
    """The event names the emulator recorded, by customer, in the order recorded."""
    received: dict[str, list[str]] = defaultdict(list)
    for event in emulator.events:
        received[event.payload["customerExternalId"]].append(event.payload["eventName"])
    return dict(received)
