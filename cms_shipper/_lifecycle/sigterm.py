"""``handle_sigterm=True``: turn SIGTERM into a bounded flush, then the previous behaviour.

A plain process stopped with SIGTERM (``docker stop``, Kubernetes, systemd) dies without
running exit hooks, so its queued events are lost. Opted in, the first client in a process
installs one handler for all; the pipeline of every client that asked is held weakly (the
process's registry keeps it until it is closed, so a client the application dropped is
covered too) and, on the signal, closed in its own thread within its own
``shutdown_timeout_s``: the stop waits for the
largest budget (plus a moment for ``close()`` to report), not the sum. Then the previous
behaviour: a Python handler is called with the same ``(signum, frame)`` (the clients are
closed: such handlers end the process); ``SIG_DFL`` is restored and SIGTERM raised again, so
the process dies by the signal as the platform expects (as PID 1, which the kernel does not
kill that way, it raises ``SystemExit(143)``); under ``SIG_IGN`` the process goes on, so the
clients are flushed, not closed.

The handler runs in the main thread between two bytecodes, perhaps inside ``track_*`` or
holding a lock. So the main thread only starts a bare ``_thread`` (``threading`` takes module
locks the interrupted code may hold) and waits for it with the deadline; locks are taken by
the flushing threads, never by the waiting main thread. A second SIGTERM during the wait
goes straight to the previous behaviour. A forked child inherits the handler: it closes only
the clients that belong to its pid, as the exit hook does.

Where a server owns SIGTERM (gunicorn, uWSGI, a Celery worker, uvicorn) or a handler was
installed outside Python, nothing is installed: one INFO line says who owns the signal; its
own shutdown hooks flush. Only the main thread of the main interpreter can install a handler:
elsewhere, one INFO line and nothing else (a client created in another thread once the
handler exists joins it). ``install`` never raises.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any, Optional, Protocol

from cms_shipper._lifecycle.registry import Settings
from cms_shipper._log import logger

__all__ = ["install"]


class Pipeline(Protocol):
    """What SIGTERM handling needs of a client's pipeline."""

    @property
    def pid(self) -> int: ...

    @property
    def settings(self) -> Settings: ...

    def flush(self, timeout_s: Optional[float] = None) -> object: ...

    def close(self, timeout_s: Optional[float] = None) -> object: ...


# After the largest budget, a moment for close() to count and log what it gave up on.
_REPORT_S = 0.25
_SLICE_S = 0.05  # how late a second SIGTERM during the flush may be noticed
# A handler from one of these packages means that server runs this process (uvicorn's starts
# a graceful stop, in which requests still track); and who flushes there instead.
_SERVERS = {
    "gunicorn": "gunicorn: workers flush in worker_exit and the exit hook",
    "uwsgi": "uWSGI: workers flush in the exit hook on a graceful stop",
    "celery": "Celery: children flush in worker_process_shutdown",
    "uvicorn": "uvicorn: its graceful stop runs the lifespan's aclose and the exit hook",
}
# Modules present only in those servers' processes, because their handlers may come after
# the client (gunicorn's arbiter, Celery's command line; a prefork child has SIG_DFL back)
# or from C, where Python sees a stale SIG_IGN or SIG_DFL (uWSGI's embedded ``uwsgi``).
_SERVER_MODULES = {
    "uwsgi": "uwsgi",
    "gunicorn.arbiter": "gunicorn",
    "celery.bin.celery": "celery",
    "celery.apps.worker": "celery",
}


class _State:
    """The process's one handler: what it chains to, whom it flushes, what it said."""

    def __init__(self) -> None:
        self.clients: weakref.WeakSet[Pipeline] = weakref.WeakSet()
        self.previous: Any = signal.SIG_DFL  # what SIGTERM did before our handler
        self.flushing_pid: Optional[int] = None  # while a flush runs: a 2nd SIGTERM skips it
        self.said: set[tuple[int, str]] = set()


_state = _State()


def install(client: Pipeline) -> None:
    """Have SIGTERM flush ``client`` within its budget, then do what it did before."""
    try:
        _install(client)
    except Exception:  # an opt-in convenience must never break the client's construction
        logger.warning("handle_sigterm: SIGTERM handler not installed", exc_info=True)


def _install(client: Pipeline) -> None:
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:  # installed already (in this process or before a fork)
        _state.clients.add(client)
        return
    owner = _owner(current)
    if owner is not None:
        name, _, flushes = owner.partition(": ")
        _say(f"handle_sigterm: {name} owns SIGTERM here; left alone ({flushes})")
        return
    if threading.current_thread() is not threading.main_thread():
        _say("handle_sigterm: not the main thread; SIGTERM left alone")
        return
    _state.previous = current  # set first: a signal right after installing chains to it
    _state.clients.add(client)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # the main thread of a sub-interpreter
        _state.clients.discard(client)
        _say("handle_sigterm: not the main interpreter; SIGTERM left alone")
        return
    logger.info("handle_sigterm: on SIGTERM, flush within shutdown_timeout_s, then %s", _then())


def _then() -> str:
    """The previous behaviour, in words, for the log line."""
    previous = _state.previous
    if callable(previous):
        name = getattr(previous, "__qualname__", type(previous).__qualname__)
        return f"call the previous handler {getattr(previous, '__module__', '?')}.{name}"
    return "keep running" if previous == signal.SIG_IGN else "die by SIGTERM as before"


def _owner(current: Any) -> Optional[str]:
    """Who owns SIGTERM here if not the application (a server, or C code), and who flushes."""
    if current is None:  # installed outside Python: replacing it could break its owner
        return "a handler installed outside Python: it decides"
    target = getattr(current, "func", current)  # see through functools.partial
    package = (getattr(target, "__module__", None) or "").partition(".")[0]
    if package in _SERVERS:
        return _SERVERS[package]
    for module, server in _SERVER_MODULES.items():
        if module in sys.modules:
            return _SERVERS[server]
    return None


def _say(message: str) -> None:
    """Log ``message`` at INFO once per process, however many clients ask."""
    key = (os.getpid(), message)
    if key not in _state.said:
        _state.said.add(key)
        logger.info(message)


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    """The handler: flush (bounded), then the previous behaviour; a repeat skips the flush."""
    pid = os.getpid()
    if _state.flushing_pid != pid:  # not a second SIGTERM arriving while we flush
        _state.flushing_pid = pid
        try:
            _flush_all(pid)
        finally:
            _state.flushing_pid = None
    _chain(signum, frame)


def _flush_all(pid: int) -> None:
    """Flush this process's clients in helper threads; wait at most the largest budget."""
    # A client rebuilt in a forked child carries the child's pid; one still carrying the
    # parent's has tracked nothing here, and the parent's events are not ours to send.
    clients = [c for c in list(_state.clients) if c.pid == pid]
    if not clients:
        return
    budget = max(c.settings.shutdown_timeout_s for c in clients) + _REPORT_S
    deadline = time.monotonic() + budget
    keep_open = _state.previous == signal.SIG_IGN  # the process goes on: flush, do not close
    done = _thread.allocate_lock()
    done.acquire()
    _thread.start_new_thread(_flush_in_threads, (clients, keep_open, deadline, done))
    # In short slices: a second SIGTERM runs _on_sigterm (and so _chain) from in here, but
    # one that lands just before a blocking wait is only seen at the next bytecode.
    while not done.acquire(timeout=_SLICE_S):
        if time.monotonic() >= deadline:
            break


def _flush_in_threads(
    clients: list[Pipeline], keep_open: bool, deadline: float, done: _thread.LockType
) -> None:
    try:
        logger.info(
            "handle_sigterm: SIGTERM received; %s %d client(s) within shutdown_timeout_s",
            "flushing" if keep_open else "closing",
            len(clients),
        )
        workers = [threading.Thread(target=_flush_one, args=(c, keep_open)) for c in clients]
        for worker in workers:
            worker.daemon = True  # past the deadline nobody waits for it
            worker.start()
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
    finally:
        done.release()


def _flush_one(client: Pipeline, keep_open: bool) -> None:
    try:
        if keep_open:
            client.flush(client.settings.shutdown_timeout_s)
        else:
            client.close()  # idempotent: the exit hook, if it runs later, returns at once
    except Exception:  # flush and close never raise; the signal path must not either
        logger.warning("handle_sigterm: flushing a client failed", exc_info=True)


def _chain(signum: int, frame: Optional[FrameType]) -> None:
    """Do what SIGTERM did before our handler."""
    previous = _state.previous
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL: die by the signal (143 in a shell)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        # Still here: PID 1 (of a container), for which the kernel drops a signal that has
        # no handler. The platform wants the process gone: exit as a shell would report it.
        sys.exit(128 + signum)
