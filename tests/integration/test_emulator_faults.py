"""The emulator's harsher faults over real loopback sockets: the trouble a client must survive.

Refused connections, per-customer failures, 429s without Retry-After, and replies that
trickle, swell, never end or nest deep. No test sleeps for luck: each one waits on a
condition with a deadline, or on what the server itself promised.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
import requests

from cms_shipper.cli import main
from cms_shipper.emulator import Emulator

from .conftest import unused_port

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEAD: dict[str, Any] = {"eventName": "signup", "customerExternalId": "u1", "clickId": "clk_1"}
ENDLESS_HEAD = b'{"success": false, "error": "'
KIB = 1024
MIB = KIB * KIB


def lead(**changes: Any) -> dict[str, Any]:
    return {**LEAD, **changes}


def post(
    http: requests.Session, emu: Emulator, payload: Any, endpoint: str = "lead", **options: Any
) -> requests.Response:
    options.setdefault("headers", AUTH)
    return http.post(f"{emu.url}/track/{endpoint}", json=payload, timeout=(2, 10), **options)


def poll(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def send(port: int, payload: Any) -> socket.socket:
    """A raw connection that has sent one POST /track/lead; the caller reads the answer."""
    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /track/lead HTTP/1.1\r\nHost: emulator\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (TOKEN.encode(), len(body), body)
    )
    return sock


def read_head(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    """The status line and headers (lower-cased names, ':status' for the status code)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(64 * KIB)
        assert chunk, "the connection closed before the headers"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {":status": status_line.split()[1]}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, rest


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(min(64 * KIB, n - len(data)))
        assert chunk, f"the connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def hung_up(sock: socket.socket, timeout_s: float = 2.0) -> bool:
    """True once the peer closed or reset the connection; fails on a timeout instead."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(64 * KIB):
            pass
    except ConnectionResetError:
        pass
    return True


def listening(port: int) -> Optional[bool]:
    """True: a connection was accepted; False: refused; None: reset (caught mid-change)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return False
    except ConnectionResetError:
        return None
    return True


def emulator_threads(port: int) -> list[str]:
    prefix = f"cms-shipper-emulator-{port}"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


# The rate limit without Retry-After.


def test_rate_limit_429_can_come_without_retry_after(session: requests.Session) -> None:
    with Emulator(rate_limit=1, rate_limit_retry_after=False) as emu:
        assert post(session, emu, lead()).status_code == 200
        limited = post(session, emu, lead())
        assert limited.status_code == 429 and limited.json()["type"] == "rate_limited"
        assert "Retry-After" not in limited.headers
        emu.configure(rate_limit_retry_after=True)
        assert int(post(session, emu, lead()).headers["Retry-After"]) >= 1
        assert len(emu.events) == 1


# The refuse-mode outage.


def test_refuse_outage_refuses_connections_then_listens_again_by_itself(
    emu: Emulator, session: requests.Session
) -> None:
    assert post(session, emu, lead()).status_code == 200  # leaves a keep-alive connection
    with send(emu.port, lead(customerExternalId="idle")) as idle:
        headers, rest = read_head(idle)
        read_exactly(idle, int(headers["content-length"]) - len(rest))  # now idle, kept alive
        started = time.monotonic()
        emu.outage(0.6, mode="refuse")
        assert emu.outage_active and emu.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", emu.port), timeout=2)
        with pytest.raises(requests.ConnectionError):
            post(session, emu, lead(customerExternalId="during"))
        assert hung_up(idle)  # the idle keep-alive connection was shut down too
    assert poll(lambda: not emu.outage_active)  # ended by its timer; nothing triggered it
    assert time.monotonic() - started >= 0.6
    assert post(session, emu, lead(customerExternalId="after")).status_code == 200  # same URL
    logged = [(r.payload["customerExternalId"], r.status) for r in emu.requests]
    assert logged == [("u1", 200), ("idle", 200), ("after", 200)]  # "during" never arrived


def test_end_outage_reset_and_a_new_outage_each_end_a_refuse_outage(
    emu: Emulator, session: requests.Session
) -> None:
    emu.outage(mode="refuse")  # no duration: until ended
    assert listening(emu.port) is False and emu.outage_active
    emu.end_outage()
    assert not emu.outage_active and post(session, emu, lead()).status_code == 200
    emu.outage(30.0, mode="refuse")
    emu.reset()
    assert not emu.outage_active and post(session, emu, lead()).status_code == 200
    emu.outage(30.0, mode="refuse")
    emu.outage(status=502)  # a new outage replaces the current one
    assert emu.outage_active and post(session, emu, lead()).status_code == 502
    emu.end_outage()
    assert not emu.outage_active and post(session, emu, lead()).status_code == 200


def test_a_refuse_outage_cuts_off_requests_in_flight_unrecorded(session: requests.Session) -> None:
    outcome: list[BaseException] = []

    def held() -> None:
        try:
            requests.post(f"{emu.url}/track/lead", json=LEAD, headers=AUTH, timeout=(2, 20))
        except requests.RequestException as exc:
            outcome.append(exc)

    with Emulator(latency_s=30.0) as emu:
        caller = threading.Thread(target=held)
        caller.start()
        try:
            assert poll(lambda: emu.in_flight == 1)
            emu.outage(mode="refuse")
            caller.join(2.0)
            assert not caller.is_alive() and isinstance(outcome[0], requests.ConnectionError)
            assert poll(lambda: emu.in_flight == 0)
            emu.configure(latency_s=0.0)
            emu.end_outage()
            assert post(session, emu, lead(customerExternalId="u2")).status_code == 200
            assert [e.payload["customerExternalId"] for e in emu.events] == ["u2"]
        finally:
            emu.stop()
            caller.join(20.0)


def test_stop_during_a_refuse_outage_is_prompt_and_leaves_nothing_running() -> None:
    emu = Emulator().start()
    port = emu.port
    try:
        emu.outage(30.0, mode="refuse")
        assert emulator_threads(port) == [f"cms-shipper-emulator-{port}-outage"]
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 1.0
        assert not emu.running and not emu.outage_active and emulator_threads(port) == []
        assert listening(port) is False
        with emu:  # and it starts again on the same port
            assert requests.get(f"{emu.url}/_emulator/health", timeout=5).json() == {"ok": True}
        assert emu.port == port and emulator_threads(port) == []
    finally:
        emu.stop()


def test_a_refuse_outage_needs_a_running_emulator() -> None:
    with pytest.raises(RuntimeError, match="start"):
        Emulator().outage(1.0, mode="refuse")


@pytest.mark.parametrize(
    ("arguments", "name"),
    [({"duration_s": -1}, "duration_s"), ({"duration_s": float("nan")}, "duration_s"),
     ({"status": 200}, "status"), ({"mode": "crash"}, "mode")],
)  # fmt: skip
def test_outage_rejects_bad_arguments(arguments: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Emulator().outage(**arguments)


# Per-customer failures.


def test_fail_customer_fails_only_that_customer_and_honours_count(
    emu: Emulator, session: requests.Session
) -> None:
    emu.fail_customer("bad", status=502, count=2)
    first = post(session, emu, lead(customerExternalId="bad"))
    assert first.status_code == 502
    assert first.json() == {
        "success": False, "error": first.json()["error"], "type": "server_error", "statusCode": 502,
    }  # fmt: skip
    assert post(session, emu, lead(customerExternalId="good")).status_code == 200
    assert (
        session.post(f"{emu.url}/track/lead", data=b"{", headers=AUTH, timeout=5).status_code == 400
    )
    assert post(session, emu, lead(customerExternalId="bad")).status_code == 502
    assert post(session, emu, lead(customerExternalId="bad")).status_code == 200  # count used
    logged = [(r.payload and r.payload["customerExternalId"], r.status) for r in emu.requests]
    assert logged == [("bad", 502), ("good", 200), (None, 400), ("bad", 502), ("bad", 200)]
    assert [e.payload["customerExternalId"] for e in emu.events] == ["good", "bad"]


def test_fail_customer_in_reset_mode_lasts_until_cleared(
    emu: Emulator, session: requests.Session
) -> None:
    emu.fail_customer("bad", mode="reset")
    emu.fail_customer("worse", status=500)
    sale = {**lead(customerExternalId="bad"), "invoiceId": "i1", "amount": 1, "currency": "USD"}
    for payload, endpoint in [(lead(customerExternalId="bad"), "lead")] * 2 + [(sale, "sale")]:
        with pytest.raises(requests.ConnectionError):
            post(session, emu, payload, endpoint)
    assert post(session, emu, lead(customerExternalId="worse")).status_code == 500
    emu.clear_customer_failures("bad")
    assert post(session, emu, lead(customerExternalId="bad")).status_code == 200
    assert post(session, emu, lead(customerExternalId="worse")).status_code == 500
    emu.clear_customer_failures()
    assert post(session, emu, lead(customerExternalId="worse")).status_code == 200
    logged = [(r.path, r.payload["customerExternalId"], r.status) for r in emu.requests]
    assert logged == [
        ("/track/lead", "bad", None), ("/track/lead", "bad", None), ("/track/sale", "bad", None),
        ("/track/lead", "worse", 500), ("/track/lead", "bad", 200),
        ("/track/lead", "worse", 500), ("/track/lead", "worse", 200),
    ]  # fmt: skip
    assert [e.payload["customerExternalId"] for e in emu.events] == ["bad", "worse"]
    emu.fail_customer("bad")
    emu.reset()  # takes every rule with it
    assert post(session, emu, lead(customerExternalId="bad")).status_code == 200
    assert [r.status for r in emu.requests] == [200]
    assert len(emu.events) == 1


@pytest.mark.parametrize(
    ("arguments", "name"),
    [(("",), "customer_external_id"), ((42,), "customer_external_id"),
     (("c", {"status": 200}), "status"), (("c", {"status": True}), "status"),
     (("c", {"count": 0}), "count"), (("c", {"count": 1.5}), "count"),
     (("c", {"count": True}), "count"), (("c", {"mode": "refuse"}), "mode")],
)  # fmt: skip
def test_fail_customer_rejects_bad_arguments(arguments: tuple[Any, ...], name: str) -> None:
    customer, *rest = arguments
    with pytest.raises(ValueError, match=name):
        Emulator().fail_customer(customer, **(rest[0] if rest else {}))


# Reply faults.


@pytest.mark.parametrize(
    "changes",
    [{"rate_limit_retry_after": 1}, {"trickle_interval_s": -0.1},
     {"trickle_interval_s": float("inf")}, {"reply_padding_bytes": -1},
     {"reply_padding_bytes": 1.5}, {"reply_padding_bytes": True}, {"endless_reply": "yes"},
     {"nested_reply_depth": -1}, {"nested_reply_depth": 2.0}],
)  # fmt: skip
def test_fault_settings_are_validated(changes: dict[str, Any]) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=name):
        Emulator(**changes)
    emu = Emulator()
    with pytest.raises(ValueError, match=name):
        emu.configure(**changes)


def test_trickled_reply_sends_headers_at_once_then_one_byte_per_interval() -> None:
    interval_s, depth = 0.04, 8
    with Emulator(trickle_interval_s=interval_s, nested_reply_depth=depth) as emu:
        started = time.monotonic()
        with send(emu.port, lead()) as sock:
            headers, rest = read_head(sock)
            length = int(headers["content-length"])
            assert headers[":status"] == "200" and length == 2 * depth
            assert len(rest) <= depth  # the headers came first; the body had barely begun
            body = rest + read_exactly(sock, length - len(rest))
            elapsed = time.monotonic() - started
        assert body == b"[" * depth + b"]" * depth
        assert elapsed >= (length - 1) * interval_s
        assert emu.wait_for_events(1, 2.0)


def test_stop_cuts_a_trickle_short_and_other_connections_are_served_meanwhile(
    session: requests.Session,
) -> None:
    with Emulator(trickle_interval_s=10.0) as emu, send(emu.port, lead()) as sock:
        headers, rest = read_head(sock)  # at once, though each body byte takes 10 s
        assert int(headers["content-length"]) > len(rest)
        emu.configure(trickle_interval_s=0.0)  # for the next answers only
        assert post(session, emu, lead(customerExternalId="u2")).status_code == 200
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 1.0
        assert hung_up(sock)  # cut off now, not after 10 s per byte
        assert poll(lambda: emu.in_flight == 0, 2.0)


def test_padded_reply_has_an_accurate_length_whatever_the_status(
    emu: Emulator, session: requests.Session
) -> None:
    emu.configure(reply_padding_bytes=300_000)
    accepted = post(session, emu, lead())
    assert int(accepted.headers["Content-Length"]) == len(accepted.content)
    body = accepted.json()
    assert body["success"] is True and body["padding"] == "x" * 300_000
    invalid = post(session, emu, lead(customerEmail="not-an-email"))
    assert invalid.status_code == 422 and int(invalid.headers["Content-Length"]) == len(
        invalid.content
    )
    assert "email" in invalid.json()["details"]["customerEmail"]
    assert len(invalid.json()["padding"]) == 300_000
    emu.configure(reply_padding_bytes=3)
    assert post(session, emu, lead()).content.endswith(b'"padding": "xxx"}')
    # Control routes stay plain, so that a test can still look at the record.
    assert session.get(f"{emu.url}/_emulator/health", timeout=5).content == b'{"ok": true}'
    assert len(emu.events) == 2


def test_a_huge_padded_reply_costs_the_emulator_little_memory() -> None:
    padding = 64 * MIB
    buffer = bytearray(MIB)
    with Emulator(reply_padding_bytes=padding) as emu:
        tracemalloc.start()
        try:
            with send(emu.port, lead()) as sock:
                headers, rest = read_head(sock)
                received = len(rest)
                while received < int(headers["content-length"]):
                    n = sock.recv_into(buffer)
                    assert n, "the connection closed early"
                    received += n
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received == int(headers["content-length"]) > padding
    assert peak < MIB  # a 64 KiB chunk at a time, never the whole 64 MiB body


def test_hanging_up_on_a_padded_reply_is_quiet_and_the_emulator_serves_on(
    session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="cms_shipper.emulator"),
        Emulator(reply_padding_bytes=32 * MIB) as emu,
    ):
        with send(emu.port, lead()) as sock:
            read_head(sock)
            sock.recv(64 * KIB)
        # Closed with unread data: the writer gets a reset or a broken pipe.
        assert poll(lambda: emu.in_flight == 0)  # the writer gave up
        emu.configure(reply_padding_bytes=0)
        assert post(session, emu, lead()).status_code == 200
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == []  # no traceback, not even at DEBUG


@contextlib.contextmanager
def endless_answer(emu: Emulator) -> Iterator[http.client.HTTPResponse]:
    """An answer to one POST /track/lead; leaving the block hangs up."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        conn.request("POST", "/track/lead", body=json.dumps(LEAD), headers=AUTH)
        with conn.getresponse() as answer:  # it holds the socket (the answer says close)
            yield answer
    finally:
        conn.close()


def cut_off(answer: http.client.HTTPResponse) -> bool:
    """True once the answer ended mid-body; fails on the socket timeout instead."""
    try:
        while answer.read(64 * KIB):
            pass
    except (http.client.IncompleteRead, ConnectionResetError):
        pass
    return True


def test_endless_reply_streams_until_the_client_hangs_up(
    emu: Emulator, session: requests.Session
) -> None:
    emu.configure(endless_reply=True)
    with endless_answer(emu) as answer:
        assert answer.status == 200  # the event was accepted; only the body misbehaves
        assert answer.getheader("Transfer-Encoding") == "chunked"
        assert answer.getheader("Content-Length") is None
        first = answer.read(64 * KIB)
        assert len(first) == 64 * KIB and first.startswith(ENDLESS_HEAD)
        assert first[len(ENDLESS_HEAD) :].strip(b" ") == b""
        assert len(answer.read(256 * KIB)) == 256 * KIB  # and more keeps coming
    assert poll(lambda: emu.in_flight == 0)  # the writer noticed the hang-up
    emu.configure(endless_reply=False)
    assert post(session, emu, lead(customerExternalId="u2")).status_code == 200
    assert len(emu.events) == 2


def test_stop_cuts_an_endless_reply_short() -> None:
    with Emulator(endless_reply=True) as emu, endless_answer(emu) as answer:
        assert answer.read(64 * KIB).startswith(ENDLESS_HEAD)  # then the client stalls
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 1.0
        assert cut_off(answer)
        assert poll(lambda: emu.in_flight == 0, 2.0)


def test_nested_reply_is_that_deep_and_the_answer_is_otherwise_unchanged(
    emu: Emulator, session: requests.Session
) -> None:
    emu.configure(nested_reply_depth=50)
    accepted = post(session, emu, lead())
    assert accepted.status_code == 200 and accepted.headers["Content-Length"] == "100"
    assert depth_of(accepted.json()) == 50
    assert emu.wait_for_events(1, 2.0)  # the event was still recorded
    unauthorized = post(session, emu, lead(), headers={})
    assert unauthorized.status_code == 401 and depth_of(unauthorized.json()) == 50
    emu.configure(nested_reply_depth=100_000)  # deeper than most JSON parsers go
    deep = post(session, emu, lead(customerExternalId="u2"))
    assert deep.headers["Content-Length"] == "200000"
    assert deep.content == b"[" * 100_000 + b"]" * 100_000
    assert len(emu.events) == 2


# The command line.


def test_emulator_command_line_faults() -> None:
    port = unused_port()
    command = [
        sys.executable, "-m", "cms_shipper", "emulator", "--port", str(port),
        "--rate-limit", "2", "--no-retry-after", "--nested-reply-depth", "3",
        "--fail-customer", "bad", "--fail-customer", "worse", "--fail-customer-status", "502",
        "--outage-after-s", "0", "--outage-s", "0.6", "--outage-mode", "refuse",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def status(customer: str) -> tuple[int, Optional[str], str]:
        answer = requests.post(
            f"{base}/track/lead", json=lead(customerExternalId=customer), headers=AUTH, timeout=5
        )
        return answer.status_code, answer.headers.get("Retry-After"), answer.text

    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and base in proc.stdout.readline()  # it listens
            assert poll(lambda: listening(port) is False)  # the outage came by itself...
            assert poll(lambda: listening(port) is True)  # ...and went, on the same port
            assert status("bad") == status("worse") == (502, None, "[[[]]]")
            assert status("good") == status("good") == (200, None, "[[[]]]")
            assert status("good") == (429, None, "[[[]]]")  # no Retry-After
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


@pytest.mark.parametrize(
    "flags",
    [["--outage-s", "-1"], ["--outage-after-s", "-1"], ["--outage-after-s", "nan"],
     ["--outage-s", "1", "--outage-status", "200"], ["--trickle-interval-s", "-1"],
     ["--reply-padding-bytes", "-1"], ["--nested-reply-depth", "-1"],
     ["--fail-customer", "x", "--fail-customer-status", "99"]],
)  # fmt: skip
def test_emulator_command_rejects_bad_fault_values_before_listening(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    port = unused_port()
    assert main(["emulator", "--port", str(port), *flags]) == 2
    assert capsys.readouterr().err.startswith("cms-shipper: ")
    assert listening(port) is False


def test_emulator_command_help_lists_the_faults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    shown = capsys.readouterr().out
    for flag in ("--no-retry-after", "--outage-mode", "--fail-customer", "--endless-reply"):
        assert flag in shown
