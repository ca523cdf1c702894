"""Shared by the benchmarks: servers and clients in child processes, percentiles, tables.

The emulator and the sink run in their own processes so that their HTTP handling does
not compete with the client for its GIL (in production the API is on another machine);
each client under test runs in yet another, fresh process (``Child``) so that imports,
threads and heaps of one do not leak into the next. Every child has a hard time bound
and is killed when it is over it. Children that import ``cms_shipper`` get the source
tree to import it from on ``PYTHONPATH``: this checkout ("ours") or a previous one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import requests

__all__ = [
    "REPO_ROOT", "TOKEN", "Child", "ChildError", "EmulatorProcess", "SinkProcess",
    "emulator_capabilities", "machine", "percentile", "table", "trees", "unused_port",
]  # fmt: skip

TOKEN = "test-token"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
# git -C <repo> worktree add /tmp/cms_prev <previous main>: a source tree, read only.
DEFAULT_BASELINE = "/tmp/cms_prev"  # noqa: S108
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_EMULATOR_CHILD = """
import json, os, sys, threading
from cms_shipper.emulator import Emulator

config = json.loads(sys.argv[1])
watchdog = threading.Timer(config["lifetime_s"], os._exit, (3,))  # hard bound
watchdog.daemon = True
watchdog.start()
emulator = Emulator(token=config["token"], **config["init"]).start()
for name, args, kwargs in config["faults"]:
    getattr(emulator, name)(*args, **kwargs)
print(emulator.url, flush=True)
for line in sys.stdin:  # one JSON [method, args, kwargs] a line, until the parent closes stdin
    name, args, kwargs = json.loads(line)
    try:
        getattr(emulator, name)(*args, **kwargs)
        print("ok", flush=True)
    except Exception as exc:
        print("error " + repr(exc), flush=True)
emulator.stop()
"""
_CAPABILITIES = """
import inspect, json
from cms_shipper.emulator import Emulator
print(json.dumps({"init": list(inspect.signature(Emulator.__init__).parameters),
                  "methods": [n for n in dir(Emulator) if not n.startswith("_")]}))
"""


class ChildError(RuntimeError):
    """A child process failed, said something unexpected, or ran out of time (and was killed)."""


def _env(pythonpath: Optional[str]) -> Dict[str, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


class Child:
    """A Python child process with a hard deadline, spoken to one line at a time.

    Lines are read by a thread into a queue so that every read has a timeout; stderr goes
    to a temporary file (its tail is quoted in errors). ``close()`` kills it if still alive.
    """

    def __init__(self, argv: List[str], *, timeout_s: float, pythonpath: Optional[str] = None):
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.last_peak_rss_kb: Optional[int] = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, env=_env(pythonpath), cwd=HERE,
        )  # fmt: skip
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):  # closed under us by close()
            pass
        self._lines.put(None)

    def readline(self) -> str:
        """The next line; ChildError (after killing the child) on EOF or past the deadline."""
        try:
            line = self._lines.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            self.close()
            raise ChildError(f"timed out after {self.timeout_s:g} s (killed)") from None
        if line is None:
            tail = self.stderr_tail()
            self.close()
            raise ChildError(f"exited ({self.proc.returncode}): {tail}")
        return line

    def expect(self, prefix: str) -> str:
        """Read lines until one starting with ``prefix``; returns the rest of it."""
        while True:
            line = self.readline()
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self) -> Dict[str, Any]:
        """The child's ``result {json}`` line."""
        figures: Dict[str, Any] = json.loads(self.expect("result "))
        return figures

    def peak_rss_kb(self) -> Optional[int]:
        """The child's peak resident memory so far (Linux /proc), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stderr_tail(self, chars: int = 200) -> str:
        """The last line the child wrote to stderr (an exception's message, usually)."""
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
        return lines[-1][-chars:] if lines else "(no stderr)"

    def close(self) -> None:
        """Kill the child if it still runs (noting its peak RSS first) and reap it."""
        if self.proc.poll() is None:
            self.last_peak_rss_kb = self.peak_rss_kb()
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()


class _ServerProcess:
    """A server in a child process: prints its URL, serves until its stdin closes."""

    url = ""

    def _start(self, argv: List[str], lifetime_s: float) -> None:
        self._child = Child(argv, timeout_s=lifetime_s + 5, pythonpath=REPO_ROOT)
        self._child.deadline = time.monotonic() + _START_TIMEOUT_S
        self.url = self._child.readline().strip()
        if not self.url.startswith("http://"):
            self._child.close()
            raise ChildError(f"the server did not start: {self.url} {self._child.stderr_tail()}")

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        proc = self._child.proc
        if proc.stdin is not None and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(_STOP_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._child.close()


class EmulatorProcess(_ServerProcess):
    """``cms_shipper.emulator.Emulator`` (this checkout's) in a child process.

    ``emulator_kwargs`` go to ``Emulator(...)``; ``faults`` is a list of
    ``(method, args, kwargs)`` called on it right after it starts (e.g.
    ``("outage", [3.0], {"mode": "refuse"})``); ``call`` does the same at any time.
    The record is read over its HTTP routes.
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        *,
        faults: Sequence[Tuple[str, Sequence[Any], Dict[str, Any]]] = (),
        lifetime_s: float = 3600.0,
        **emulator_kwargs: Any,
    ) -> None:
        init = dict(emulator_kwargs)
        if latency_s:
            init["latency_s"] = latency_s
        self._config = {
            "token": TOKEN, "init": init, "lifetime_s": lifetime_s,
            "faults": [[name, list(args), dict(kwargs)] for name, args, kwargs in faults],
        }  # fmt: skip
        self.lifetime_s = lifetime_s

    def __enter__(self) -> EmulatorProcess:
        self._start(["-c", _EMULATOR_CHILD, json.dumps(self._config)], self.lifetime_s)
        requests.get(f"{self.url}/_emulator/health", timeout=_START_TIMEOUT_S).raise_for_status()
        return self

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``Emulator.<method>(*args, **kwargs)`` in the child; ChildError if it raised."""
        self._child.deadline = time.monotonic() + _START_TIMEOUT_S
        self._child.send(json.dumps([method, list(args), kwargs]))
        answer = self._child.readline()
        if answer != "ok":
            raise ChildError(f"emulator.{method}: {answer}")

    def _get(self, route: str) -> Any:
        answer = requests.get(f"{self.url}/_emulator/{route}", timeout=60)
        answer.raise_for_status()
        return answer.json()[route]

    def events(self) -> List[Dict[str, Any]]:
        """Every event the emulator recorded, in order (``seq``, ``payload``, ``received_at``)."""
        events: List[Dict[str, Any]] = self._get("events")
        return events

    def requests(self) -> List[Dict[str, Any]]:
        """Every /track request it saw (``path``, ``status``, ``payload``, ``time``)."""
        log: List[Dict[str, Any]] = self._get("requests")
        return log

    def reset(self) -> None:
        """Forget every recorded event and API state."""
        requests.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()


class SinkProcess(_ServerProcess):
    """The loopback sink of ``_sink.py`` in a child process; ``stats()`` reads its counts."""

    def __init__(self, latency_s: float = 0.0, *, lifetime_s: float = 3600.0) -> None:
        self.latency_s, self.lifetime_s = latency_s, lifetime_s

    def __enter__(self) -> SinkProcess:
        argv = [os.path.join(HERE, "_sink.py"), str(self.latency_s), str(self.lifetime_s)]
        self._start(argv, self.lifetime_s)
        return self

    def stats(self, *, reset: bool = False) -> Dict[str, Any]:
        """requests, events, by_path, first, last (time.time() of the first/last request)."""
        query = "?reset=1" if reset else ""
        answer = requests.get(f"{self.url}/_sink/stats{query}", timeout=30)
        answer.raise_for_status()
        stats: Dict[str, Any] = answer.json()
        return stats


class ReadySink:
    """A sink script that prints ``READY {json}`` with its port (the referee's ``sink.py``);
    ``latency_ms``, when given, is passed as its ``--latency-ms``."""

    def __init__(self, path: str, latency_ms: Optional[float] = None) -> None:
        self.path, self.latency_ms = path, latency_ms

    def __enter__(self) -> ReadySink:
        latency = [] if self.latency_ms is None else ["--latency-ms", str(self.latency_ms)]
        self.proc = subprocess.Popen(
            [sys.executable, self.path, "--max-seconds", "3600", *latency],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise ChildError(f"the sink did not start: {line!r}")
        self.url = f"http://127.0.0.1:{json.loads(line[6:])['port']}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def emulator_capabilities() -> Dict[str, List[str]]:
    """This checkout's ``Emulator``: its constructor's parameters and public methods."""
    done = subprocess.run(
        [sys.executable, "-c", _CAPABILITIES], capture_output=True, text=True,
        timeout=60, env=_env(REPO_ROOT), check=True,
    )  # fmt: skip
    capabilities: Dict[str, List[str]] = json.loads(done.stdout)
    return capabilities


def trees(baseline: Optional[str]) -> List[Tuple[str, str]]:
    """``(label, source tree)`` for this checkout and, if given and present, the baseline."""
    out = [("ours", REPO_ROOT)]
    if baseline and os.path.isfile(os.path.join(baseline, "cms_shipper", "__init__.py")):
        rev = subprocess.run(
            ["git", "-C", baseline, "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()  # fmt: skip
        out.append((f"prev@{rev}" if rev else "previous", os.path.abspath(baseline)))
    elif baseline:
        print(f"note: no cms_shipper source tree at {baseline}; baseline rows skipped")
    return out


def machine() -> str:
    """One line: cores, CPU, Python, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"machine: nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 2, last_left: bool = False
) -> str:
    """A plain-text table; the first ``left`` columns (and the last one, if ``last_left``)
    are left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: List[str]) -> str:
        lefts = set(range(left)) | ({len(widths) - 1} if last_left else set())
        parts = [
            c.ljust(w) if i in lefts else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "-" * len(line(cells[0]))]
    return "\n".join(out + [line(r) for r in cells[1:]])


def time_calls(track: Any, threads: int, calls: int, prefix: str) -> List[int]:
    """Time ``calls`` ``track_lead`` calls in each of ``threads`` threads started together.

    Each call is timed in its own thread with ``perf_counter_ns`` (nanoseconds); every
    call has its own customer, ``<prefix>-t<thread>-c<call>``.
    """
    samples = [[0] * calls for _ in range(threads)]
    customers = [[f"{prefix}-t{t}-c{i}" for i in range(calls)] for t in range(threads)]
    barrier = threading.Barrier(threads)

    def caller(index: int) -> None:
        out, names, clock = samples[index], customers[index], time.perf_counter_ns
        barrier.wait()
        for i in range(calls):
            start = clock()
            track(event_name="signup_started", customer_external_id=names[i], click_id="clk_1")
            out[i] = clock() - start

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [ns for thread_samples in samples for ns in thread_samples]


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """The nearest-rank ``p``-th percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def unused_port() -> int:
    """A loopback port nobody listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
