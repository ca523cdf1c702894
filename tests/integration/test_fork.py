"""A forked child (gunicorn --preload style) gets fresh machinery and its events arrive."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from cms_shipper.emulator import Emulator

from .conftest import TOKEN

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from cms_shipper import CMSClient

    client = CMSClient(flush_interval_s=0.02, shutdown_timeout_s=10.0)
    client.track_lead("parent-before-fork", "parent", click_id="clk-parent")
    client.flush(10.0)            # the parent's worker threads are running at fork time
    pid = os.fork()
    if pid == 0:
        # The child: new queue, locks, threads and sessions, started lazily.
        for i in range(5):
            client.track_lead(f"child-{i}", "child", click_id="clk-child")
        if sys.argv[1] == "close":
            ok = bool(client.close(10.0))
            os._exit(0 if ok else 3)
        sys.exit(0)               # the exit hook flushes in the child
    _, status = os.waitpid(pid, 0)
    client.track_lead("parent-after-fork", "parent")
    ok = bool(client.close(10.0))
    sys.exit(os.waitstatus_to_exitcode(status) or (0 if ok else 4))
    """
)


@pytest.mark.parametrize("spool", [False, True], ids=["memory", "write-ahead spool"])
@pytest.mark.parametrize("child_ends_with", ["close", "exit hook"])
def test_forked_child_delivers_its_events(
    cms_emulator: Emulator, child_ends_with: str, spool: bool, tmp_path: Path
) -> None:
    env = {**os.environ, "CMS_HOST": cms_emulator.url, "CMS_BEARER_TOKEN": TOKEN}
    if spool:  # the child must not reuse the parent's SQLite connection
        env.update(CMS_SPOOL_PATH=str(tmp_path / "spool.db"), CMS_WRITE_AHEAD="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "close" if child_ends_with == "close" else "exit"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = [e.payload["eventName"] for e in cms_emulator.events]
    assert sorted(names) == sorted(
        ["parent-before-fork", "parent-after-fork"] + [f"child-{i}" for i in range(5)]
    )
    child = [n for n in names if n.startswith("child")]
    assert child == [f"child-{i}" for i in range(5)]  # in order
    assert max(Counter(names).values()) == 1
    if spool:
        with sqlite3.connect(tmp_path / "spool.db") as db:
            assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
