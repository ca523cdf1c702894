"""A caller at a full queue takes no lock another thread may hold (issue 19).

With several threads calling ``track_*`` while the queue is full, every call settles a
dropped event. Any lock on that path turns GIL switches into convoys of the callers, so
the path must not wait for one: these tests hold the ledger's and the log's locks in
another thread and require full-queue calls to return meanwhile, with the counts exact.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from cms_shipper import CMSClient

TOKEN = "test-token"


def _while_held(lock: Any, calls: Callable[[], list[Any]]) -> list[Any]:
    """Run ``calls`` in a thread while this thread holds ``lock``; fail if it blocks."""
    out: list[Any] = []
    with lock:
        worker = threading.Thread(target=lambda: out.extend(calls()), daemon=True)
        worker.start()
        worker.join(10.0)
        blocked = worker.is_alive()
    worker.join(10.0)
    assert not blocked, "track_lead waited for a lock held by another thread"
    return out


@pytest.mark.parametrize("which", ["ledger", "log"])
def test_full_queue_calls_wait_for_no_lock(which: str) -> None:
    # Nothing listens on the discard port: the first event stays pending, the queue full.
    client = CMSClient(token=TOKEN, host="http://127.0.0.1:9", max_queue_size=1)
    try:
        first = client.track_lead(event_name="e", customer_external_id="c0")
        assert first.message == "queued"
        client.track_lead(event_name="e", customer_external_id="c1")  # dropped: logged once
        pipeline = client._pipeline
        lock = pipeline.ledger._lock if which == "ledger" else pipeline._settler.reporter._log._lock

        def calls() -> list[Any]:
            return [
                client.track_lead(event_name="e", customer_external_id=f"c{i}")
                for i in range(2, 202)
            ]

        answers = _while_held(lock, calls)
        assert [a.reason for a in answers] == ["queue_full"] * 200
        stats = client.stats()
        assert stats["tracked"] == 202
        assert stats["dropped"] == 201
        assert stats["pending"] == 1
    finally:
        client.close(timeout_s=0.5)


def test_outcomes_resolved_from_many_threads_are_counted_once() -> None:
    client = CMSClient(token=TOKEN, host="http://127.0.0.1:9", max_queue_size=50)
    try:
        pipeline = client._pipeline
        for i in range(50):
            client.track_lead(event_name="e", customer_external_id=f"c{i}")
        items = pipeline.ledger.outstanding()
        barrier = threading.Barrier(4)

        def settle() -> None:
            barrier.wait()
            for item in items:  # every thread tries to settle every event
                pipeline._settler.internal_error(item)

        threads = [threading.Thread(target=settle) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30.0)
        stats = client.stats()
        assert stats["pending"] == 0
        assert stats["tracked"] == 50
        assert stats["dropped"] == 50
        assert all(item.final is not None for item in items)
    finally:
        client.close(timeout_s=0.5)
