"""``close()`` answers with what it did: its result, its warning and ``stats()`` agree."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import pytest

from cms_shipper import CMSClient

from .conftest import FAST, TOKEN, ClientFactory, adds_up, unused_port, wait_until

_SHUTDOWN_LINE = re.compile(
    r"(\d+) event\(s\) not delivered within the [\d.]+ s shutdown budget: "
    r"(\d+) saved to the spool, (\d+) dropped"
)


@pytest.mark.parametrize("with_spool", [False, True], ids=["memory", "spool"])
def test_close_with_the_api_down_answers_as_its_warning_and_stats_say(
    with_spool: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool: Optional[str] = str(tmp_path / "spool.db") if with_spool else None
    client = CMSClient(
        token=TOKEN,
        host=f"http://127.0.0.1:{unused_port()}",
        spool_path=spool,
        **{**FAST, "max_concurrent_requests": 4},
    )
    for i in range(12):
        client.track_lead("signup", f"u{i}", click_id="c")
    assert wait_until(lambda: client.stats()["circuit"] != "closed")
    with caplog.at_level(logging.WARNING, logger="cms_shipper"):
        closed = client.close(0.3)
    lines = [m for m in (_SHUTDOWN_LINE.search(r.getMessage()) for r in caplog.records) if m]
    assert len(lines) == 1
    given_up, saved, dropped = (int(g) for g in lines[0].groups())
    assert given_up == 12 and saved + dropped == 12
    assert (saved, dropped) == ((12, 0) if with_spool else (0, 12))
    # The result counts what close itself settled: as the warning says, nothing left.
    assert (closed.spooled, closed.dropped, closed.pending) == (saved, dropped, 0)
    assert closed.timed_out and not closed
    stats = client.stats()
    assert (stats["spooled"], stats["dropped"], stats["pending"]) == (saved, dropped, 0)
    # Nothing is shown queued, scheduled or in flight that is not really there.
    assert (stats["queue_depth"], stats["scheduled"], stats["in_flight"]) == (0, 0, 0)
    assert stats["closed"] and adds_up(stats)
    assert client.close(0.3) == closed  # idempotent: the same answer again


def test_close_in_time_says_so(make_client: ClientFactory) -> None:
    client = make_client()
    for i in range(5):
        client.track_lead("signup", f"u{i}", click_id="c")
    closed = client.close(5.0)
    assert (closed.delivered, closed.pending, closed.timed_out) == (5, 0, False) and closed
    stats = client.stats()
    assert (stats["queue_depth"], stats["scheduled"], stats["in_flight"]) == (0, 0, 0)
