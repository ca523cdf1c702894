"""No SQLite connection or lock crosses a fork: each spool closes its file before ``fork()``.

SQLite's locks on a file are POSIX locks, held per process, and within a process SQLite
keeps one record of them per file (by device and inode) that every connection to it
shares. A forked child inherits that record, not the locks. A connection the child opens
itself would then believe it holds locks it does not, so another process closing the file
last (the parent, or an operator's ``cms-shipper spool replay``) checkpoints and deletes
the WAL under the child: its commits are lost although they were reported ``spooled``.
SQLite's advice (https://www.sqlite.org/howtocorrupt.html, 2.6): a connection used in a
child must be opened in the child, and one opened in the parent must not even be closed
there.

So before every ``os.fork()`` (Python's ``before`` hook: ``multiprocessing``, gunicorn,
Celery prefork), each spool of this process waits for its statement in progress (at most
``FORK_WAIT_S``), closes its connection in the parent, where it was opened, and keeps its
lock across the fork. The parent opens the file again at its next statement; the child
holds no connection and opens its own. If a fork skips Python's hooks (uWSGI forks in C)
or a statement outlasted ``FORK_WAIT_S``, the child inherits an open connection: it keeps
it unused and unclosed (``keep_inherited``) and never opens that file itself
(``refuse_inherited``); it goes on in memory only, and the error says why.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Protocol

__all__ = ["FORK_WAIT_S", "InheritedConnection", "keep_inherited", "refuse_inherited", "track"]

FORK_WAIT_S = 3.0  # a statement in progress (its busy wait included) delays a fork this long


class InheritedConnection(Exception):
    """This forked child inherited an open connection to the file: it must not open it."""


class _Parkable(Protocol):
    def park(self, wait_s: float) -> bool: ...

    def unpark(self) -> None: ...


_guard = threading.Lock()  # held across a fork: no spool is created while it is under way
_spools: weakref.WeakSet[_Parkable] = weakref.WeakSet()
_parked: list[_Parkable] = []
_kept: list[object] = []  # inherited connections: never used, never closed (closing harms)
_inherited: set[tuple[int, int]] = set()  # (device, inode) of files open at a hook-less fork
_holding = [False]  # _before holds _guard


def track(spool: _Parkable) -> None:
    """Close ``spool``'s connection before each fork of this process (while it lives)."""
    with _guard:
        _spools.add(spool)


def keep_inherited(path: str, connection: object) -> None:
    """In a child: hold the parent's open ``connection`` for ever; ``path`` is not reopened."""
    _kept.append(connection)
    with contextlib.suppress(OSError):
        stat = os.stat(path)
        _inherited.add((stat.st_dev, stat.st_ino))


def refuse_inherited(path: str) -> None:
    """Raise InheritedConnection if this process inherited an open connection to ``path``."""
    if not _inherited:
        return
    try:
        stat = os.stat(path)
    except OSError:
        return
    if (stat.st_dev, stat.st_ino) in _inherited:
        raise InheritedConnection(
            f"this process was forked while its parent had {path} open, without Python's fork"
            " hooks (uWSGI without --py-call-osafterfork?) or during a statement longer than"
            f" {FORK_WAIT_S:g} s; SQLite cannot use a file from both sides of a fork, so this"
            " process does not open it (let the parent track nothing before forking)"
        )


def _before() -> None:
    _holding[0] = _guard.acquire(timeout=FORK_WAIT_S)  # else a spool being made: no connection yet
    for spool in list(_spools):
        if spool.park(FORK_WAIT_S):
            _parked.append(spool)


def _after_in_parent() -> None:
    while _parked:
        _parked.pop().unpark()
    if _holding[0]:
        _holding[0] = False
        _guard.release()


def _after_in_child() -> None:
    global _guard  # a parent thread may have held it: not here
    _guard, _holding[0] = threading.Lock(), False
    while _parked:
        _parked.pop().unpark()


if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
