"""The process's clients: rebuilt in a forked child, retired when dropped, closed at exit.

The registry holds each client's *pipeline* (its queue, books and threads) strongly until
the pipeline is closed, and the client handle only through a ``weakref.finalize``. So:

- a handle the application drops (a client made in ``main()``, or one per request) is
  collected as usual, but what it accepted is not lost: its pipeline is *retired* (nothing
  more is claimed from the spool, the queue is sent at once) and, once nothing is pending,
  closed by the process's one reaper thread, which ends its threads, connections and spool
  handle; if the process exits first, the exit hook closes it with the others;
- one ``atexit`` hook for the whole process closes every pipeline still open, each within
  its own ``shutdown_timeout_s`` counted from one start: the exit takes the largest budget,
  not the sum;
- a closed pipeline leaves the registry, so clients created and closed leave nothing behind.

The finalizer may run in any thread at any point (cyclic garbage collection), even inside
one of our own locks, so all it does is a ``SimpleQueue.put``, which is safe there; the
reaper does the rest. The reaper runs while the process has open pipelines and ends with
the last one.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol

from cms_shipper._log import flush_suppressed, logger

__all__ = ["Settings", "open_pipelines", "register"]


class Settings(Protocol):
    """What the lifecycle reads of a client's settings."""

    @property
    def shutdown_timeout_s(self) -> float: ...


class _Ledger(Protocol):
    on_empty: Optional[Callable[[], None]]


class _Pipeline(Protocol):
    """What the registry needs of a client's pipeline."""

    pid: int
    closed: bool
    retiring: bool
    on_closed: Any

    @property
    def ledger(self) -> _Ledger: ...

    @property
    def settings(self) -> Settings: ...

    def after_fork(self) -> None: ...

    def retire(self) -> None: ...

    def wake(self) -> None: ...

    def pending(self) -> int: ...

    def close(
        self, timeout_s: Optional[float] = None, *, deadline: Optional[float] = None
    ) -> object: ...


class _Registry:
    """The open pipelines of this process and the reaper thread that closes retired ones."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler closing a client may run while this thread holds it.
        self.lock = threading.RLock()
        self.open: dict[int, _Pipeline] = {}  # id -> pipeline, in creation order
        self.inbox: queue.SimpleQueue[Optional[tuple[str, _Pipeline]]] = queue.SimpleQueue()
        self.reaper: Optional[threading.Thread] = None


_registry = _Registry()


def register(client: object, pipeline: _Pipeline) -> None:
    """Keep ``pipeline`` until it is closed; retire it when ``client`` is collected."""
    reg = _registry
    with reg.lock:
        reg.open[id(pipeline)] = pipeline
        pipeline.on_closed = _closed
        if reg.reaper is None:
            _start_reaper(reg)
    # atexit=False: the exit hook below closes every open pipeline, this one included.
    weakref.finalize(client, _collected, pipeline).atexit = False


def _start_reaper(reg: _Registry) -> None:
    """Start ``reg``'s reaper thread (under its lock, or where nothing else runs yet)."""
    reg.reaper = threading.Thread(target=_reap, name="cms-shipper-reaper", daemon=True)
    reg.reaper.start()


def open_pipelines() -> list[_Pipeline]:
    """The pipelines of this process not closed yet, oldest first."""
    with _registry.lock:
        return list(_registry.open.values())


def _collected(pipeline: _Pipeline) -> None:
    # Any thread, any moment, maybe inside one of our locks: a SimpleQueue.put only. The
    # registry is looked up now, not when registered: a forked child has its own.
    _registry.inbox.put(("collected", pipeline))


def _closed(pipeline: _Pipeline) -> None:
    reg = _registry
    with reg.lock:
        reg.open.pop(id(pipeline), None)
        if not reg.open:
            reg.inbox.put(None)  # the reaper ends with the last open pipeline


def _reap() -> None:
    """The reaper thread: retire collected pipelines, close them once nothing is pending."""
    reg = _registry
    while True:
        message = reg.inbox.get()
        if message is None:
            with reg.lock:
                if not reg.open and reg.reaper is threading.current_thread():
                    reg.reaper = None
                    return
            continue
        what, pipeline = message
        if pipeline.closed or pipeline.pid != os.getpid():
            continue
        try:
            if what == "collected":
                pipeline.retire()
                pipeline.ledger.on_empty = lambda p=pipeline: reg.inbox.put(("idle", p))
            if pipeline.pending() == 0:
                pipeline.close()
        except Exception:  # the reaper must outlive any one pipeline's trouble
            logger.warning("closing a collected client failed", exc_info=True)


def _close_all_at_exit() -> None:
    """The exit hook: close every open pipeline of this process, each within its budget."""
    pid = os.getpid()
    # A forked child inherits the parent's pipelines. One rebuilt in the child (fork hook
    # or first track) carries the child's pid and flushes the child's own events; one still
    # carrying the parent's has tracked nothing here, and the parent's are not ours to send.
    pipelines = [p for p in open_pipelines() if p.pid == pid and not p.closed]
    started = time.monotonic()
    for pipeline in pipelines:
        pipeline.wake()  # all send at once: the later ones do not wait for the earlier ones
    for pipeline in pipelines:
        pipeline.close(deadline=started + pipeline.settings.shutdown_timeout_s)
    flush_suppressed()  # also for clients closed earlier: their collapsed repeats, counted


atexit.register(_close_all_at_exit)


def _after_fork_in_child() -> None:
    global _registry  # the parent's locks and reaper do not cross a fork
    inherited, _registry = _registry, _Registry()
    for pipeline in inherited.open.values():
        if pipeline.retiring or pipeline.closed:
            continue  # its handle is gone: nothing can track on it in this process
        pipeline.after_fork()
        _registry.open[id(pipeline)] = pipeline
    # The reaper starts again here if any pipeline is open, else with the next client.
    if _registry.open:
        _start_reaper(_registry)


if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
