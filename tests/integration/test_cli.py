"""The command line in real subprocesses, against the emulator."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cms_shipper.emulator import Emulator

from .conftest import TOKEN, unused_port

LEAD = [
    "lead",
    "--event-name",
    "signup",
    "--customer-external-id",
    "user_42",
    "--click-id",
    "clk_1",
]
SALE = ["sale", "--event-name", "purchase", "--customer-external-id", "user_42",
        "--invoice-id", "inv_1", "--currency", "usd", "--click-id", "clk_1"]  # fmt: skip


def cli(
    *args: str, token: str | None = TOKEN, host: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    if token is not None:
        env["CMS_BEARER_TOKEN"] = token
    if host is not None:
        env["CMS_HOST"] = host
    done = subprocess.run(
        [sys.executable, "-m", "cms_shipper", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return done


def test_lead_prints_the_result_and_exits_zero(cms_emulator: Emulator) -> None:
    done = cli(*LEAD, host=cms_emulator.url)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["success"] is True and answer["status_code"] == 200
    assert answer["outcome"] == "delivered"
    assert cms_emulator.events[0].payload["clickId"] == "clk_1"
    assert TOKEN not in done.stdout + done.stderr


def test_sale_then_the_same_invoice_is_a_duplicate(cms_emulator: Emulator) -> None:
    assert cli(*SALE, "--amount", "4999", host=cms_emulator.url).returncode == 0
    again = cli(*SALE, "--amount", "4999", host=cms_emulator.url)
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "duplicate"
    assert cms_emulator.events[0].payload["amount"] == 4999
    assert cms_emulator.events[0].payload["currency"] == "USD"


@pytest.mark.parametrize(
    ("command", "field"),
    [([*LEAD, "--customer-email", "not-an-email"], "customer_email"),
     ([*SALE, "--amount", "4999", "--currency", "US"], "currency")],
)  # fmt: skip
def test_invalid_input_exits_two_with_a_422_naming_the_field(
    cms_emulator: Emulator, command: list[str], field: str
) -> None:
    done = cli(*command, host=cms_emulator.url)
    assert done.returncode == 2  # local validation, like a float --amount: nothing sent
    answer = json.loads(done.stdout)
    assert answer["status_code"] == 422 and field in answer["details"]
    assert done.stderr.startswith(f"cms-shipper: not delivered: rejected (invalid): {field}: ")
    assert cms_emulator.requests == []


def test_amount_must_be_whole_cents_on_the_command_line_too(cms_emulator: Emulator) -> None:
    done = cli(*SALE, "--amount", "49.99", host=cms_emulator.url)
    assert done.returncode == 2 and "argument --amount" in done.stderr
    assert "must be an int number of cents" in done.stderr
    assert "(for 49.99 send 4999)" in done.stderr and "invalid int value" not in done.stderr
    assert cms_emulator.requests == []


def test_wrong_token_exits_one_with_401(cms_emulator: Emulator) -> None:
    done = cli(*LEAD, token="wrong-token", host=cms_emulator.url)
    assert done.returncode == 1 and json.loads(done.stdout)["status_code"] == 401


def test_token_file(cms_emulator: Emulator, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    done = cli(*LEAD, "--token-file", str(token_file), token=None, host=cms_emulator.url)
    assert done.returncode == 0, done.stderr


def test_missing_token_exits_two_naming_the_variable_and_the_flag() -> None:
    done = cli(*LEAD, token=None, host="http://127.0.0.1:9")  # env without CMS_BEARER_TOKEN
    assert done.returncode == 2
    assert "CMS_BEARER_TOKEN" in done.stderr and "--token-file FILE" in done.stderr
    # The library's advice is for Python callers, not for the shell.
    assert "token=..." not in done.stderr and "disabled=True" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_host_is_named_by_its_flag() -> None:
    done = cli(*LEAD, "--host", "ftp://example.com")
    assert done.returncode == 2 and done.stderr.startswith("cms-shipper: --host: ")
    assert "Traceback" not in done.stderr


# Interpreter start-up on a slow, busy machine, on top of the second the command may take.
START_UP_SLACK_S = 4.0


@pytest.mark.parametrize("timeout_s", [2.0, 6.0])
def test_timeout_s_is_the_time_it_takes_to_give_up_against_a_closed_port(
    timeout_s: float,
) -> None:
    started = time.monotonic()
    done = cli(*LEAD, "--timeout-s", f"{timeout_s:g}", host=f"http://127.0.0.1:{unused_port()}")
    took = time.monotonic() - started
    # A bound both ways: it kept trying until about S (it used to give up at S/5 to S/2),
    # and it ended within a second of S (plus the interpreter's start-up).
    assert timeout_s - 1.0 <= took <= timeout_s + 1.0 + START_UP_SLACK_S, took
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert (answer["outcome"], answer["reason"]) == ("failed", "retries_exhausted")
    # What happened: the last cause, the attempts made and the time spent.
    said = re.search(r"\(gave up after (\d+) attempts? in ([\d.]+) s\)$", answer["error"])
    assert said and "Connection refused" in answer["error"], answer["error"]
    attempts, spent = int(said.group(1)), float(said.group(2))
    assert attempts >= 2 and timeout_s - 1.0 <= spent <= timeout_s + 0.5
    assert (
        done.stderr.strip()
        == f"cms-shipper: not delivered: failed (retries_exhausted): {answer['error']}"
    )


def test_timeout_s_cuts_off_an_attempt_the_server_holds(cms_emulator: Emulator) -> None:
    cms_emulator.configure(latency_s=30.0)
    started = time.monotonic()
    done = cli(*LEAD, "--timeout-s", "2", host=cms_emulator.url)
    assert time.monotonic() - started <= 2.0 + 1.0 + START_UP_SLACK_S
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error.startswith("Timeout: no complete answer by the end of the time given"), error


@pytest.mark.parametrize("command", [[], ["lead"], ["sale"], ["emulator"], ["demo"], ["spool"]])
def test_help_everywhere_lists_the_exit_codes(command: list[str]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0 and "usage: cms-shipper" in done.stdout
    codes = re.findall(r"^\s+([012])  \S", done.stdout.split("exit status", 1)[-1], re.MULTILINE)
    assert "exit status" in done.stdout and "0" in codes and "2" in codes, done.stdout


def test_every_commands_help_lists_its_exit_statuses() -> None:
    from cms_shipper.cli.main import _parser  # the parser itself: every command, in-process

    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) >= {"lead", "sale", "emulator", "spool", "demo"}
    for name, sub in {"": parser, **commands.choices}.items():
        text = sub.format_help()
        assert "exit status" in text and re.search(r"\b0\b", text), name


HELP_MENTIONS = {
    "lead": ["ISO 8601, e.g. 2026-11-24T10:00:00Z", "naive means UTC", "(default: now)",
             'only "deferred"', "needs --click-id", "CMS_BEARER_TOKEN", "(default: 15)"],
    "sale": ["4999 for 49.99", "e.g. USD", "--token-file FILE", "ISO 8601"],
    "emulator": ["(default: 8787)", "(default: 127.0.0.1)", "(default: test-token)",
                 "--quiet", "--latency-ms MS", "0 to 1", "(default: random)"],
    "demo": ["(default: 400)", "(default: 4)", "(default: 1)"],
    "spool": ["status print what the spool holds", "replay send what it holds",
              "purge delete every event", "(default: 300)", "(default: ask)",
              "(default: $CMS_HOST, else https://api.cme.sh)", "(default: $CMS_BEARER_TOKEN)"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(HELP_MENTIONS))
def test_help_gives_formats_and_defaults(command: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    for mention in HELP_MENTIONS[command]:
        assert mention in text, mention


def test_every_flag_has_help() -> None:
    for command in HELP_MENTIONS:
        lines = cli(command, "--help").stdout.splitlines()
        options = lines[next(i for i, line in enumerate(lines) if line == "options:") :]
        for i, line in enumerate(options):
            words = line.split()
            if line.startswith("  -") and len(words) <= 2:  # the flag alone: help on the next line
                assert options[i + 1].startswith(" " * 10), (command, line)


@pytest.mark.parametrize("quiet", [False, True])
def test_emulator_command_serves_until_stopped(quiet: bool) -> None:
    port = unused_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cms_shipper", "emulator", "--port", str(port)]
        + (["--quiet"] if quiet else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/_emulator/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the emulator did not come up"
                time.sleep(0.05)
        body = {"eventName": "signup", "customerExternalId": "u1", "clickId": "c1"}
        answer = requests.post(url + "/track/lead", json=body, timeout=5,
                               headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert answer.status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in out and "CMS_HOST" in out
    logged = [line for line in err.splitlines() if "/track/" in line]
    if quiet:
        assert logged == []
    else:
        assert len(logged) == 1 and "POST /track/lead 200 customerExternalId=u1" in logged[0]
        assert logged[0].endswith(" ms")
    assert TOKEN not in err


def test_emulator_on_a_busy_port_names_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("emulator", "--port", str(port), timeout=30)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_runs_and_its_books_add_up() -> None:
    done = cli("demo", "--events", "120", token=None, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Accounting: tracked = sum of outcomes: yes" in done.stdout
    assert "Per-customer order in the API's record: held" in done.stdout
    assert "p99" in done.stdout


def test_a_short_demo_explains_only_what_happened_in_it() -> None:
    # 10 events end long before the outage planned 0.8 s in; seed 1 sends no float amount.
    done = cli("demo", "--events", "10", token=None, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "0.5 s outage 0.8 s into the run (if it lasts that long)" in out
    assert "The outage planned 0.8 s in did not happen: the run ended before." in out
    assert "outage midway" not in out and "A 0.5 s outage began" not in out
    assert re.search(r"^  rejected +0$", out, re.MULTILINE), out
    assert "float amounts" not in out  # nothing rejected: nothing to explain
    # Timed after the warm-up: the timed calls and the warm-up calls are the 10 tracked.
    timed = re.search(r"\((\d+) calls; each thread's first call, its warm-up \((\d+) calls", out)
    assert timed and int(timed.group(1)) + int(timed.group(2)) == 10, out


def _fill_spool(path: Path, count: int) -> None:
    from cms_shipper import CMSClient

    client = CMSClient(token=TOKEN, host=f"http://127.0.0.1:{unused_port()}", spool_path=str(path),
                       retry_max_attempts=1, flush_interval_s=0.01)  # fmt: skip
    for i in range(count):
        client.track_lead(f"lead-{i}", f"cust-{i}", click_id=f"clk-{i}")
    client.close(0.0)


def test_spool_status_replay_and_purge(cms_emulator: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    _fill_spool(path, 12)
    status = cli("spool", "status", "--path", str(path))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["by_endpoint"] == {"lead": 12}
    replay = cli("spool", "replay", "--path", str(path), host=cms_emulator.url)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    summary = json.loads(replay.stdout)
    assert summary["delivered"] == 12 and summary["left_kept"] == 0
    assert "12/12" in replay.stderr  # the progress bar reached the end
    assert len(cms_emulator.events) == 12
    _fill_spool(path, 3)
    refused = cli("spool", "purge", "--path", str(path))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = cli("spool", "purge", "--path", str(path), "--yes")
    assert purged.returncode == 0 and "Deleted 3" in purged.stdout
    assert json.loads(cli("spool", "status", "--path", str(path)).stdout)["total"] == 0


def test_spool_command_on_a_missing_file_exits_two(tmp_path: Path) -> None:
    done = cli("spool", "status", "--path", str(tmp_path / "nope.db"))
    assert done.returncode == 2 and "no spool" in done.stderr
