"""Per-process hooks: rebuild every live client in a forked child, close it at exit.

Both hold clients weakly, so a client that the application drops can still be
collected. A client only needs two things of its own for them: ``_after_fork()`` (rebuild
the per-process machinery if the pid changed) and ``close()``, plus ``_pid``.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Callable, Protocol

__all__ = ["register"]


class _Client(Protocol):
    _pid: int

    def _after_fork(self) -> None: ...

    def close(self) -> object: ...


_LIVE: weakref.WeakSet[_Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_LIVE):
        client._after_fork()


if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def register(client: _Client) -> Callable[[], None]:
    """Rebuild ``client`` after fork and close it at exit; returns the exit hook to unregister."""
    _LIVE.add(client)
    ref = weakref.ref(client)

    def hook() -> None:
        alive = ref()
        # A forked child inherits the hook too. Once the client has rebuilt itself there
        # (fork hook or first track), _pid is the child's and the child flushes its own
        # events; otherwise the child has tracked nothing and the parent's are not its own.
        if alive is not None and os.getpid() == alive._pid:
            alive.close()

    atexit.register(hook)
    return hook
