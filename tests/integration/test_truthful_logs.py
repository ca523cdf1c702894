"""With logging unconfigured, stderr alone accounts for every event not delivered.

Real subprocesses that never configure logging (Python's last-resort handler prints
WARNING and above to stderr) and end without calling ``close()``: the exit hook runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from cms_shipper.emulator import Emulator

from .conftest import TOKEN

_REJECTIONS = textwrap.dedent(
    """
    import sys
    from cms_shipper import CMSClient

    client = CMSClient(flush_interval_s=0.02)
    n = int(sys.argv[1])
    for i in range(n):
        client.track_lead(f"signup{i}", "refused", click_id="c")  # the API answers 422
        client.track_lead(f"signup{i}", "forbidden", click_id="c")  # the API answers 403
        client.track_sale("buy", f"u{i}", f"inv{i}", 49.99, "USD")  # invalid here
        client.track_lead(f"signup{i}", f"fine{i}", click_id="c")  # delivered
    """
)

_OUTAGE = textwrap.dedent(
    """
    import time
    from cms_shipper import CMSClient
    from cms_shipper.emulator import Emulator

    with Emulator(token="test-token") as emulator:
        emulator.outage(mode="refuse")
        client = CMSClient(token="test-token", host=emulator.url, flush_interval_s=0.02,
                           retry_initial_backoff_s=0.01)
        result = client.track_lead("signup", "u1", click_id="c")
        deadline = time.monotonic() + 20
        while client.stats()["circuit"] == "closed" and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.end_outage()
        print(result.wait(30).outcome, flush=True)
        client.close(5)
    """
)


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _accounted(stderr: str, kind: str) -> int:
    """How many events the lines about ``kind`` stand for (first lines and flushed counts)."""
    total = 0
    for line in stderr.splitlines():
        if kind not in line:
            continue
        flushed = re.search(r"\(the last of (\d+) similar messages? suppressed", line)
        total += int(flushed.group(1)) if flushed else 1
        between = re.search(r"\((\d+) similar messages? suppressed", line)
        if between and not flushed:
            total += int(between.group(1))
    return total


def test_a_script_that_exits_accounts_on_stderr_for_every_rejected_event(
    cms_emulator: Emulator,
) -> None:
    cms_emulator.fail_customer("refused", status=422)
    cms_emulator.fail_customer("forbidden", status=403)
    n = 25
    done = _run(_REJECTIONS, str(n), env={"CMS_HOST": cms_emulator.url, "CMS_BEARER_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert _accounted(err, "rejected (http_error, HTTP 422)") == n, err
    assert _accounted(err, "rejected (http_error, HTTP 403)") == n, err
    assert _accounted(err, "rejected (invalid, HTTP 422): amount") == n, err
    summary = [line for line in err.splitlines() if line.startswith("client closed: ")]
    assert summary == [
        f"client closed: {4 * n} event(s) tracked, {n} delivered, 0 duplicate; not delivered: "
        f"{3 * n} rejected, 0 failed, 0 dropped, 0 spooled, 0 pending"
    ], err
    assert len(cms_emulator.events) == n and TOKEN not in err


def test_an_outage_shows_its_start_and_its_end_on_stderr() -> None:
    done = _run(_OUTAGE, env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "delivered\n"
    lines = done.stderr.splitlines()
    opened = [i for i, line in enumerate(lines) if line.startswith("circuit opened (")]
    closed = [i for i, line in enumerate(lines) if line.startswith("circuit closed after ")]
    assert len(opened) == 1 and len(closed) == 1, done.stderr
    assert opened[0] < closed[0] and lines[closed[0]].endswith("sending resumed")
    # Everything was delivered: no summary of losses.
    assert not any(line.startswith("client closed: ") for line in lines), done.stderr
