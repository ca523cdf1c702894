"""``handle_sigterm``: SIGTERM to a real subprocess flushes, bounded, then behaves as before.

Each child holds its event (``flush_interval_s=5``), so what reaches the emulator was sent
because of the signal. The child logs at INFO to stdout, merged with stderr, read line by
line by a thread; every wait has a deadline and every child is killed after the test.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest

from cms_shipper.emulator import Emulator

from .conftest import TOKEN

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = textwrap.dedent(
    """
    import logging, os, queue, signal, sys, threading, time
    from cms_shipper import CMSClient

    mode, url, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    logging.basicConfig(level=logging.INFO, format="LOG %(message)s", stream=sys.stdout)
    options = {"token": "test-token", "host": url, "flush_interval_s": 5.0,
               "shutdown_timeout_s": budget, "retry_initial_backoff_s": 0.01,
               "retry_max_backoff_s": 0.05}
    if mode != "env":
        options["handle_sigterm"] = mode != "off"
    clients = []

    def previous(signum, frame):
        print(f"previous handler: signum={signum} delivered={clients[0].stats()['delivered']}",
              flush=True)
        sys.exit(3)

    if mode == "previous":
        signal.signal(signal.SIGTERM, previous)
    if mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "thread":
        for _ in range(2):
            starter = threading.Thread(target=lambda: clients.append(CMSClient(**options)))
            starter.start()
            starter.join()
        print("default:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
    else:
        clients = [CMSClient(**options) for _ in range(3 if mode == "many" else 1)]
    for n, client in enumerate(clients):
        client.track_lead("signup", f"user-{n}", click_id=f"clk-{n}")
    if mode == "fork":
        child = os.fork()
        if child == 0:
            clients[0].track_lead("signup", "forked", click_id="clk-forked")
            print("forked ready", os.getpid(), flush=True)
            while True:
                time.sleep(0.05)
        status = os.waitpid(child, 0)[1]
        print("forked child ended by signal", os.WTERMSIG(status), flush=True)
    commands = queue.Queue()
    threading.Thread(target=lambda: [commands.put(line) for line in sys.stdin], daemon=True).start()
    print("ready", flush=True)
    while True:  # short waits: a signal landing just before a blocking call is seen here
        try:
            commands.get(timeout=0.05)
        except queue.Empty:
            continue
        # "track": one more event, flushed; the client is still open
        clients[0].track_lead("signup", "later", click_id="clk-later")
        clients[0].flush(5.0)
        print(f"still running: delivered={clients[0].stats()['delivered']}", flush=True)
        break
    """
)


class Child:
    """A child running ``CHILD``; its output lines are read by a thread into a queue."""

    def __init__(
        self, mode: str, url: str, budget: float, env: dict[str, str], prefix: list[str]
    ) -> None:
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-c", CHILD, mode, url, str(budget)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self.output: list[str] = []
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, pattern: str, timeout_s: float = 10.0) -> re.Match[str]:
        """The first new line matching ``pattern``; fails at the deadline or end of output."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"{pattern!r} not seen; output:\n{self.text()}")
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def term(self) -> float:
        """Send SIGTERM; the moment it was sent."""
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    def wait(self, timeout_s: float) -> tuple[int, float]:
        """The exit code and the moment the exit was seen, within ``timeout_s``."""
        code = self.process.wait(timeout=timeout_s)
        return code, time.monotonic()

    def text(self) -> str:
        """Everything the child wrote (reads what is left once it has ended)."""
        if self.process.poll() is not None:
            self._reader.join(timeout=5.0)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.output.append(line)
        return "".join(self.output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5.0)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def start(emu: Emulator) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def run(mode: str, budget: float = 5.0, prefix: Sequence[str] = (), **env: str) -> Child:
        full = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
        child = Child(mode, emu.url, budget, {**full, **env}, list(prefix))
        children.append(child)
        return child

    yield run
    for child in children:
        child.kill()
        assert TOKEN not in "".join(child.output)


def customers(emu: Emulator) -> list[str]:
    return sorted(event.payload["customerExternalId"] for event in emu.events)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_sigterm_flushes_then_dies_by_the_signal(
    start: Callable[..., Child], emu: Emulator, how: str
) -> None:
    child = start("arg") if how == "argument" else start("env", CMS_HANDLE_SIGTERM="1")
    child.expect("on SIGTERM, flush within shutdown_timeout_s, then die by SIGTERM")
    child.expect("^ready")
    assert emu.events == []  # held: flush_interval_s=5
    child.term()
    code, _ = child.wait(timeout_s=5.0)
    assert code == -signal.SIGTERM, child.text()
    assert emu.wait_for_events(1, timeout_s=1.0)
    assert customers(emu) == ["user-0"]


def test_without_the_option_the_event_is_lost(start: Callable[..., Child], emu: Emulator) -> None:
    child = start("off")
    child.expect("^ready")
    child.term()
    code, _ = child.wait(timeout_s=5.0)
    assert code == -signal.SIGTERM
    assert emu.events == []  # the process is gone: nothing can arrive later
    assert "handle_sigterm" not in child.text()


def test_a_previous_python_handler_is_called_after_the_flush(
    start: Callable[..., Child], emu: Emulator
) -> None:
    child = start("previous")
    child.expect("then call the previous handler __main__.previous")
    child.expect("^ready")
    child.term()
    # It sees the event delivered: it runs after the flush, with the same signal number.
    child.expect(f"previous handler: signum={int(signal.SIGTERM)} delivered=1")
    code, _ = child.wait(timeout_s=5.0)
    assert code == 3  # its sys.exit(3) decides
    assert customers(emu) == ["user-0"]


def test_with_sigterm_ignored_it_flushes_and_keeps_running(
    start: Callable[..., Child], emu: Emulator
) -> None:
    child = start("ignore")
    child.expect("then keep running")
    child.expect("^ready")
    child.term()
    assert emu.wait_for_events(1, timeout_s=5.0)
    child.expect("flushing 1 client")
    assert child.process.stdin is not None
    child.process.stdin.write("track\n")  # still alive, and the client still open
    child.process.stdin.flush()
    child.expect("still running: delivered=2")
    code, _ = child.wait(timeout_s=5.0)
    assert code == 0, child.text()
    assert customers(emu) == ["later", "user-0"]


def test_from_a_non_main_thread_it_logs_once_and_installs_nothing(
    start: Callable[..., Child], emu: Emulator
) -> None:
    child = start("thread")
    child.expect("default: True")  # two clients asked; SIGTERM still has its default
    child.expect("^ready")
    child.term()
    code, _ = child.wait(timeout_s=5.0)
    assert code == -signal.SIGTERM
    lines = [line for line in child.text().splitlines() if "handle_sigterm" in line]
    assert lines == ["LOG handle_sigterm: not the main thread; SIGTERM left alone"]
    assert emu.events == []


def test_a_flush_that_cannot_finish_is_bounded_by_the_largest_budget(
    start: Callable[..., Child], emu: Emulator
) -> None:
    emu.configure(latency_s=30.0)
    child = start("many", budget=1.0)  # three clients, 1 s each: bounded by 1 s, not 3 s
    child.expect("^ready")
    sent = child.term()
    code, ended = child.wait(timeout_s=10.0)
    assert code == -signal.SIGTERM
    assert ended - sent < 1.0 + 1.0, child.text()  # 1 s budget, 0.25 s to report, slack
    warnings = re.findall(r"1 event\(s\) not delivered within the 1 s", child.text())
    assert len(warnings) == 3, child.text()  # each client said what it gave up on


def test_a_second_sigterm_during_a_slow_flush_ends_the_process_at_once(
    start: Callable[..., Child], emu: Emulator
) -> None:
    emu.configure(latency_s=30.0)
    child = start("arg", budget=10.0)
    child.expect("^ready")
    child.term()
    child.expect("SIGTERM received; closing 1 client")  # the flush is under way
    sent = child.term()
    code, ended = child.wait(timeout_s=5.0)
    assert code == -signal.SIGTERM
    assert ended - sent < 1.0, child.text()  # not the 10 s budget


def test_a_forked_child_flushes_its_own_events_only(
    start: Callable[..., Child], emu: Emulator
) -> None:
    child = start("fork")
    forked = int(child.expect(r"^forked ready (\d+)").group(1))
    try:
        os.kill(forked, signal.SIGTERM)
        child.expect(f"forked child ended by signal {int(signal.SIGTERM)}")
        assert emu.wait_for_events(1, timeout_s=1.0)
        assert customers(emu) == ["forked"]  # not the parent's queued event
        child.expect("^ready")
        child.term()
        code, _ = child.wait(timeout_s=5.0)
        assert code == -signal.SIGTERM
        assert emu.wait_for_events(2, timeout_s=1.0)
        assert customers(emu) == ["forked", "user-0"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forked, signal.SIGKILL)


def pid_namespace() -> list[str]:
    """A command prefix that runs the rest as PID 1 of a new PID namespace, or a skip."""
    tool = shutil.which("unshare")
    if tool is None or not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("needs unshare and /proc/<pid>/task/<tid>/children")
    for user in ([], ["--user", "--map-root-user"]):  # root, or an unprivileged user
        prefix = [tool, *user, "--pid", "--fork", "--kill-child"]
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        if probe.returncode == 0:
            return prefix
    pytest.skip("no permission to create a PID namespace")


def test_as_pid_1_it_flushes_then_exits_143(start: Callable[..., Child], emu: Emulator) -> None:
    # PID 1 (a container's first process) is not killed by a signal it has no handler for:
    # re-raising SIGTERM does nothing, so the handler exits with 128 + 15 itself.
    child = start("arg", prefix=pid_namespace())
    child.expect("^ready")
    pid = child.process.pid
    inner = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    try:
        os.kill(inner, signal.SIGTERM)  # from outside, as docker stop does
        code, _ = child.wait(timeout_s=5.0)
        assert code == 128 + signal.SIGTERM, child.text()
        assert customers(emu) == ["user-0"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(inner, signal.SIGKILL)
