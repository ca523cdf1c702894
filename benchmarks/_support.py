"""Shared by the benchmarks: an emulator in a child process, and percentiles.

The emulator runs in its own process so that its HTTP handling does not compete with
the client for this process's GIL: in production the API is on another machine.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from types import TracebackType
from typing import Any, Optional, Sequence, Type

import requests

__all__ = ["EmulatorProcess", "percentile", "unused_port"]

TOKEN = "test-token"
_CHILD = """
import sys
from cms_shipper.emulator import Emulator

emulator = Emulator(token=sys.argv[1], latency_s=float(sys.argv[2])).start()
print(emulator.url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
emulator.stop()
"""
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


class EmulatorProcess:
    """``cms_shipper.emulator.Emulator`` in a child process; read it over its HTTP routes."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.url = ""
        self._proc: Optional[subprocess.Popen[str]] = None

    def __enter__(self) -> EmulatorProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, TOKEN, str(self.latency_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.__exit__(None, None, None)
            raise RuntimeError("the emulator process did not start")
        requests.get(f"{self.url}/_emulator/health", timeout=_START_TIMEOUT_S).raise_for_status()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def events(self) -> list[dict[str, Any]]:
        """Every event the emulator recorded, in order (``seq``, ``payload``, ``received_at``)."""
        answer = requests.get(f"{self.url}/_emulator/events", timeout=60)
        answer.raise_for_status()
        events: list[dict[str, Any]] = answer.json()["events"]
        return events

    def reset(self) -> None:
        """Forget every recorded event and API state."""
        requests.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """The nearest-rank ``p``-th percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def unused_port() -> int:
    """A loopback port nobody listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
