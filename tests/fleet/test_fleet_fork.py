"""A forked child in fleet mode is a member of its own: new name, connection and thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from cms_shipper.emulator import Emulator

from ..integration.conftest import TOKEN
from .conftest import RedisServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from cms_shipper import CMSClient

    client = CMSClient(flush_interval_s=0.02, shutdown_timeout_s=10.0)
    client.track_lead("parent-before-fork", "parent", click_id="clk-parent")
    client.flush(10.0)            # the parent's fleet thread and senders run at fork time
    parent = client.stats()["fleet"]["member"]
    pid = os.fork()
    if pid == 0:
        for i in range(5):
            client.track_lead(f"child-{i}", f"child-{i}", click_id="clk-child")
        ok = bool(client.flush(10.0))
        member = client.stats()["fleet"]["member"]
        ok = bool(client.close(10.0)) and ok
        print(json.dumps({"child": member}), flush=True)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    client.track_lead("parent-after-fork", "parent")
    ok = bool(client.close(10.0))
    print(json.dumps({"parent": parent}), flush=True)
    sys.exit(os.waitstatus_to_exitcode(status) or (0 if ok else 4))
    """
)


def test_a_forked_child_joins_the_fleet_as_a_member_of_its_own(
    cms_emulator: Emulator, redis_server: RedisServer
) -> None:
    env = {**os.environ, "CMS_HOST": cms_emulator.url, "CMS_BEARER_TOKEN": TOKEN,
           "CMS_REDIS_URL": redis_server.url}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    names = Counter(e.payload["eventName"] for e in cms_emulator.events)
    expected = ["parent-before-fork", "parent-after-fork"] + [f"child-{i}" for i in range(5)]
    assert names == Counter(expected), names
    members = [line for line in done.stdout.splitlines() if line.startswith("{")]
    child, parent = (next(iter(json.loads(m).values())) for m in members)
    assert child != parent  # the child is a new member, not the parent's name
    assert redis_server.client().keys("*m:*") == []  # both left the fleet at close
