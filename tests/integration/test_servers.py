"""Real server processes: a gunicorn master with preloaded workers, a Celery prefork worker.

In both, the client sits on events (a batch that never fills, an interval that never passes)
until the worker process ends, so what reaches the emulator was sent at shutdown: in a
gunicorn worker by the ``worker_exit`` hook (the client's own exit hook alone also does it:
workers leave through ``sys.exit``), in a Celery child by the ``worker_process_shutdown``
signal (children leave through ``os._exit``, which skips exit hooks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from cms_shipper.emulator import Emulator

from .conftest import TOKEN

HERE = Path(__file__).resolve().parent
FRAMEWORKS = HERE.parents[1] / "examples" / "frameworks"
GUNICORN = "gunicorn -c gunicorn_conf.py --preload --workers 2 --bind 127.0.0.1:0 flask_app:app"
UWSGI = "--master --workers 2 --http-socket 127.0.0.1:0 --module flask_app:app --master-fifo"
CELERY_WORKER = (
    "celery -A celery_worker_app worker --pool=prefork --concurrency=2 --loglevel=INFO"
    " --without-gossip --without-mingle --without-heartbeat"
)
HOLD = {"batch_size": 1000, "flush_interval_s": 3600.0}  # send nothing until closed


class Server:
    """A child process whose merged output is read by a thread, with deadline-bound waits."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = 60.0) -> list[str]:
        """The output lines matching ``pattern`` once there are ``count`` (or at the deadline)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.matching(pattern)) >= count, timeout=timeout_s)
            found = self.matching(pattern)
        assert len(found) >= count, f"{pattern!r} x{count} not seen:\n{self.output}"
        return found

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful for both servers), then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10.0)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def serve(cms_emulator: Emulator) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(args: list[str], cwd: Path, **env: str) -> Server:
        full_env = {
            **os.environ,
            "CMS_HOST": cms_emulator.url,
            "CMS_BEARER_TOKEN": TOKEN,
            "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
            **env,
        }
        server = Server(args, full_env, cwd)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
        assert TOKEN not in server.output


def journeys_in_order(emulator: Emulator, users: list[str]) -> None:
    """Each user's three events arrived, in the order the requests tracked them."""
    assert emulator.wait_for_events(3 * len(users), timeout_s=5.0)
    seen: dict[str, list[Any]] = {}
    for event in emulator.events:
        seen.setdefault(event.payload["customerExternalId"], []).append(event.payload["eventName"])
    assert seen == {user: ["signup", "email_verified", "purchase"] for user in users}


def signups(url: str, count: int) -> list[str]:
    """POST /signup with a cms_rf cookie for ``count`` users; their ids.

    Only deferred set-ups, one per user: a user's later requests could land on another worker,
    and order across processes is not the client's to keep (see the README).
    """
    users = [f"user_{n}" for n in range(count)]
    for n, user in enumerate(users):
        answer = requests.post(  # a new connection each time: spread over the workers
            f"{url}/signup", data={"user_id": user}, cookies={"cms_rf": f"clk_{n}"}, timeout=10
        )
        assert answer.json() == {"tracked": True}
    return users


def signups_arrived(emulator: Emulator, users: list[str]) -> None:
    assert emulator.wait_for_events(len(users), timeout_s=5.0)
    arrived = {(e.payload["customerExternalId"], e.payload["clickId"]) for e in emulator.events}
    assert arrived == {(user, f"clk_{n}") for n, user in enumerate(users)}


def test_gunicorn_preload_workers_deliver_at_graceful_shutdown(
    serve: Callable[..., Server], cms_emulator: Emulator
) -> None:
    pytest.importorskip("gunicorn")
    server = serve(
        [sys.executable, "-m", *GUNICORN.split()],
        FRAMEWORKS,
        FLASK_CMS_OPTIONS=json.dumps(HOLD),
    )
    address = re.search(r"Listening at: (\S+)", server.wait_for("Listening at")[0])
    assert address is not None
    server.wait_for("Booting worker", count=2)
    users = signups(address.group(1), 8)
    assert cms_emulator.events == []  # held in the workers' queues
    assert server.stop() == 0, server.output
    signups_arrived(cms_emulator, users)


@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_uwsgi_preforked_workers_deliver_at_graceful_stop(
    serve: Callable[..., Server], cms_emulator: Emulator, tmp_path: Path, spool: bool
) -> None:
    # uWSGI loads the app in the master and forks in C, without Python's fork hooks: each
    # worker's client notices the new pid on its first track and rebuilds itself. With a
    # spool, the master that only built the client has no file open to hand on, so the
    # workers use the spool (before: they ran in memory only, with an ERROR line).
    options = {**HOLD, "spool_path": str(tmp_path / "spool.db")} if spool else HOLD
    uwsgi = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
    if uwsgi is None:
        pytest.skip("uwsgi is not installed")
    fifo = tmp_path / "master.fifo"
    server = serve(
        [uwsgi, *UWSGI.split(), str(fifo)],
        FRAMEWORKS,
        FLASK_CMS_OPTIONS=json.dumps(options),
    )
    bound = server.wait_for(r"bound to TCP address 127\.0\.0\.1:\d+")[0]
    port = re.search(r"127\.0\.0\.1:(\d+)", bound)
    assert port is not None
    server.wait_for("spawned uWSGI worker", count=2)
    users = signups(f"http://127.0.0.1:{port.group(1)}", 8)
    assert cms_emulator.events == []  # held in the workers' queues
    fifo.write_text("q")  # graceful shutdown: workers finish, run exit hooks, then leave
    assert server.process.wait(timeout=60.0) == 0, server.output
    signups_arrived(cms_emulator, users)
    assert "memory only" not in server.output, server.output  # every worker used its spool


def test_celery_prefork_children_flush_at_warm_shutdown(
    serve: Callable[..., Server], cms_emulator: Emulator, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    from celery import Celery

    transport = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
                 "control_folder": str(tmp_path / "control")}  # fmt: skip
    server = serve(
        [sys.executable, "-m", *CELERY_WORKER.split()],
        HERE / "apps",
        CELERY_FS_FOLDER=str(tmp_path),
        CMS_OPTIONS=json.dumps(HOLD),
    )
    server.wait_for(r"\bready\b")
    sender = Celery(broker="filesystem://")
    sender.conf.broker_transport_options = transport
    users = [f"user_{n}" for n in range(4)]
    for n, user in enumerate(users):
        sender.send_task("track_journey", args=[user, f"clk_{n}", f"inv_{n}"])
    done = server.wait_for(r"track_journey\[.*\] succeeded", count=len(users))
    children = {int(line.rsplit(":", 1)[1]) for line in done}
    assert server.process.pid not in children  # the tasks ran in forked children
    assert cms_emulator.events == []  # held in the children's queues
    assert server.stop() == 0, server.output  # warm shutdown; children leave with os._exit
    journeys_in_order(cms_emulator, users)
