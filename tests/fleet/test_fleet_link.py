"""Fleet mode when Redis is away, restarts, or is asked for what it must never hold."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cms_shipper import CMSClient
from cms_shipper.emulator import Emulator
from cms_shipper.errors import ConfigurationError

from ..integration.conftest import FAST, TOKEN, adds_up, unused_port, wait_until
from .conftest import RedisServer

_made: list[CMSClient] = []


@pytest.fixture(autouse=True)
def _close_every_client() -> Iterator[None]:
    """A test that fails midway must not leave members behind: a live member of the same
    fleet (one token, one Redis) would claim the next tests' events."""
    yield
    while _made:
        _made.pop().close(0)


def client_for(emulator: Emulator, redis_url: str, **options: Any) -> CMSClient:
    client = CMSClient(token=TOKEN, host=emulator.url, redis_url=redis_url, **{**FAST, **options})
    _made.append(client)
    return client


def lead(client: CMSClient, i: int) -> None:
    client.track_lead("signup", f"cust-{i}", click_id=f"click-{i}", mode="deferred")


def delivered_once(emulator: Emulator, n: int) -> bool:
    seen = Counter(e.payload["customerExternalId"] for e in emulator.events)
    return set(seen) == {f"cust-{i}" for i in range(n)} and set(seen.values()) == {1}


def fleet_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "fleet link" in r.getMessage()
    ]


def test_redis_never_reachable_costs_nothing(
    cms_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://:never-shown-pw@127.0.0.1:{unused_port()}/0"
    client = client_for(cms_emulator, url)
    for i in range(50):
        lead(client, i)
    result = client.flush(20.0)
    stats = client.stats()
    assert result.delivered == 50 and result.pending == 0
    assert delivered_once(cms_emulator, 50)
    assert stats["fleet"] is not None and stats["fleet"]["link"] == "down"
    assert stats["fleet"]["sent_without_fleet"] == 50
    client.close()
    warnings = fleet_warnings(caplog)
    assert len(warnings) == 1 and "unavailable" in warnings[0], warnings
    shown = "\n".join([caplog.text, repr(stats), repr(client), repr(client.settings)])
    assert "never-shown-pw" not in shown


def test_redis_killed_and_restarted_midway_loses_and_repeats_nothing(
    cms_emulator: Emulator, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A slow API keeps events in the fleet queue while Redis goes away and comes back.
    cms_emulator.configure(latency_s=0.05)
    client = client_for(cms_emulator, redis_server.url)
    for i in range(100):
        lead(client, i)
    assert wait_until(lambda: client.stats()["fleet"]["pushed"] == 100, 10.0)
    redis_server.kill()  # SIGKILL: its append-only file (fsync always) holds the queue
    for i in range(100, 150):
        lead(client, i)  # tracked while Redis is down: sent by this process alone
    assert wait_until(lambda: client.stats()["fleet"]["link"] == "down", 10.0)
    redis_server.start()
    assert wait_until(lambda: client.stats()["fleet"]["link"] == "up", 10.0)
    result = client.flush(60.0)
    assert result.pending == 0, client.stats()
    assert delivered_once(cms_emulator, 150)
    stats = client.stats()
    assert adds_up(stats) and stats["delivered"] == 150
    client.close()
    warnings = fleet_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "lost" in warnings[0] and "back" in warnings[1]
    check = redis_server.client()
    assert wait_until(lambda: check.hlen(_key("claims")) == 0, 5.0)


def _key(name: str) -> str:
    from cms_shipper._fleet.scripts import namespace

    return namespace(TOKEN) + name


def test_the_token_never_reaches_redis(cms_emulator: Emulator, redis_server: RedisServer) -> None:
    cms_emulator.outage()  # events stay in the fleet queue while Redis is read
    client = client_for(cms_emulator, redis_server.url)
    for i in range(20):
        lead(client, i)
    assert wait_until(lambda: client.stats()["fleet"]["pushed"] == 20, 10.0)
    check = redis_server.client()
    dump = []
    for key in check.scan_iter():
        kind = check.type(key)
        dump.append(key)
        if kind == b"string":
            dump.append(check.get(key) or b"")
        elif kind == b"list":
            dump.extend(check.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in check.hgetall(key).items():
                dump += [field, value]
        elif kind == b"zset":
            dump.extend(check.zrange(key, 0, -1))
    assert any(b"cust-3" in blob for blob in dump)  # the dump does hold the events
    assert not any(TOKEN.encode() in blob for blob in dump)
    cms_emulator.end_outage()
    assert client.flush(20.0).delivered == 20
    client.close()


def test_without_redis_url_nothing_of_fleet_mode_is_imported() -> None:
    script = textwrap.dedent(
        """
        import sys
        from cms_shipper import CMSClient
        client = CMSClient(token="t", host="http://127.0.0.1:9")
        client.close(0)
        print(sorted(m for m in ("redis", "limits", "cms_shipper._fleet") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", 6379])
def test_a_redis_url_that_is_not_one_is_named(url: object) -> None:
    with pytest.raises(ConfigurationError, match="redis_url"):
        CMSClient(token=TOKEN, host="http://127.0.0.1:9", redis_url=url)  # type: ignore[arg-type]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cms_shipper", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_stats_and_the_fleet_status_command_show_the_fleet(
    cms_emulator: Emulator, redis_server: RedisServer
) -> None:
    cms_emulator.outage()  # the circuit opens: the fleet is paused, the events wait
    a = client_for(cms_emulator, redis_server.url)
    for i in range(30):
        lead(a, i)
    assert wait_until(lambda: (a.stats()["fleet"] or {}).get("paused_by") is not None, 15.0)
    b = client_for(cms_emulator, redis_server.url)
    b.flush(0)  # joins a paused fleet (at its first event or flush): claims nothing
    a_member = a.stats()["fleet"]["member"]  # type: ignore[index]
    # B learns the outage from the fleet (its view of the queue is refreshed every second,
    # the pause within a tick).
    seen = lambda: b.stats()["fleet"] or {}  # noqa: E731
    assert wait_until(
        lambda: (
            (seen().get("members"), seen().get("queue_depth"), seen().get("paused_by"))
            == (2, 30, a_member)
        ),
        5.0,
    ), seen()
    fleet = b.stats()["fleet"]
    assert fleet is not None and fleet["link"] == "up"
    out = cli("fleet", "status", "--redis-url", redis_server.url, env={"CMS_BEARER_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["queue_depth"] == 30 and len(status["members"]) == 2
    assert status["paused"]["by"] == fleet["paused_by"]
    cms_emulator.end_outage()
    assert a.flush(30.0).delivered == 30
    a.close()
    b.close()
    # Another token's fleet on the same Redis is empty: keys are per token.
    other = cli("fleet", "status", "--redis-url", redis_server.url, env={"CMS_BEARER_TOKEN": "x"})
    assert json.loads(other.stdout)["queue_depth"] == 0


def test_the_fleet_status_command_never_prints_the_password() -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{unused_port()}/0"
    out = cli(
        "fleet", "status", "--redis-url", url, "--timeout-s", "0.5", env={"CMS_BEARER_TOKEN": TOKEN}
    )
    assert out.returncode == 1
    assert "hunter2-secret" not in out.stdout + out.stderr
    assert "127.0.0.1" in out.stdout


def test_the_opentelemetry_bridge_exports_the_fleet(
    cms_emulator: Emulator, redis_server: RedisServer
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from cms_shipper.integrations.opentelemetry import instrument

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    cms_emulator.outage()  # the events wait in the fleet's queue; the fleet is paused
    client = client_for(cms_emulator, redis_server.url)
    with instrument(client, meter_provider=provider):
        for i in range(12):
            lead(client, i)
        view = lambda: client.stats()["fleet"] or {}  # noqa: E731
        assert wait_until(lambda: view().get("queue_depth") == 12 and view().get("paused_by"), 15.0)
        data = reader.get_metrics_data()
        assert data is not None
        points = {
            metric.name: [p.value for p in metric.data.data_points]
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        assert points["cms_shipper.fleet.link.up"] == [1]
        assert points["cms_shipper.fleet.members"] == [1]
        assert points["cms_shipper.fleet.queue.size"] == [12]
        assert points["cms_shipper.fleet.paused"] == [1]
    cms_emulator.end_outage()
    assert client.flush(30.0).delivered == 12
    client.close()
    provider.shutdown()


def test_one_failing_customer_holds_back_no_one_else_in_the_fleet(
    cms_emulator: Emulator, redis_server: RedisServer
) -> None:
    cms_emulator.fail_customer("cust-0", status=500)  # every request of hers fails
    a = client_for(cms_emulator, redis_server.url)
    b = client_for(cms_emulator, redis_server.url)
    hers = b.track_lead("signup", "cust-0", click_id="click-0", mode="deferred")
    for i in range(1, 40):
        lead(a if i % 2 else b, i)
    assert wait_until(lambda: len(cms_emulator.events) == 39, 30.0), len(cms_emulator.events)

    def tried() -> int:
        return sum(1 for r in cms_emulator.requests if r.payload["customerExternalId"] == "cust-0")

    # Only she waits: when her retries run out she stays in the fleet's queue (her tracker
    # answers spooled, in_fleet) and the fleet tries her again after the longest backoff.
    before = tried()
    assert wait_until(lambda: tried() > before + 4, 10.0)
    assert b.flush(10.0).pending == 0
    mine = hers.wait(0)
    assert (mine.outcome, mine.reason) == ("spooled", "in_fleet"), mine
    # Whichever member claims her again admits her anew (as a replay), and answers the
    # same when her retries run out: nothing of hers is counted otherwise.
    for member in (a, b):
        assert set(member.stats()["reasons"].get("spooled", {"in_fleet": 0})) == {"in_fleet"}
        assert "failed" not in member.stats()["reasons"]
    cms_emulator.clear_customer_failures()
    assert wait_until(lambda: delivered_once(cms_emulator, 40), 10.0)
    a.close()
    b.close()
    # After close, stats() shows the fleet as the member left it, not its last beat's view.
    left = b.stats()["fleet"]
    assert left is not None
    assert (left["queue_depth"], left["claims"], left["members"]) == (0, 0, 0), left


def test_max_requests_per_minute_is_the_fleets_total(
    cms_emulator: Emulator, redis_server: RedisServer
) -> None:
    # 6 a minute for the fleet: two members get 6 requests out between them, not 6 each.
    a = client_for(cms_emulator, redis_server.url, max_requests_per_minute=6)
    b = client_for(cms_emulator, redis_server.url, max_requests_per_minute=6)
    for i in range(20):
        lead(a if i % 2 else b, i)
    assert cms_emulator.wait_for_events(6, 10.0)
    assert not cms_emulator.wait_for_events(7, 2.0)  # the window's budget is spent
    assert len(cms_emulator.requests) == 6  # and nothing was wasted on a 429
    a.close(0.5)
    b.close(0.5)
    left = [a.stats(), b.stats()]
    # Left in the fleet's queue (reason in_fleet): the 14, each counted once by the process
    # that tracked it, plus any the second to close took over from the first (replayed).
    in_fleet = sum(s["reasons"].get("spooled", {}).get("in_fleet", 0) for s in left)
    assert in_fleet - sum(s["replayed"] for s in left) == 14
    assert sum(s["delivered"] for s in left) == 6
