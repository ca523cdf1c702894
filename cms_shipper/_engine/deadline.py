"""One attempt never outlives its deadline, whatever the server trickles.

Socket timeouts bound each ``recv``, not an attempt: a server that sends one byte every
half second keeps a request alive for as long as it likes. So each attempt is *armed*
with a deadline (connect + read timeout) and a watchdog thread shuts down the socket of
any attempt still running at its deadline; the blocked read then fails at once.

To know the socket, the transport's connection pool builds ``_WatchedHTTPConnection``s,
which tell the attempt running in the current thread which connection carries it. Name
resolution (``getaddrinfo``) cannot be interrupted this way; it is bounded by the system
resolver's own timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable, Optional

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cms_shipper._engine.wire import FinalResponse, HeaderLines

__all__ = ["Slot", "Watchdog", "WatchedAdapter"]

_current = threading.local()  # .slot: the attempt running in this thread, if armed


class Slot:
    """One thread's attempt: its deadline, its connection, whether it was cut off or sent."""

    __slots__ = ("capped", "conn", "deadline", "expired", "sent")

    def __init__(self) -> None:
        self.deadline: Optional[float] = None
        self.conn: Any = None
        self.expired = False
        self.capped = False  # the deadline is the caller's, sooner than the attempt budget
        self.sent = False  # the request is on the wire: the server may act on it


def _note_connection(conn: Any) -> None:
    slot: Optional[Slot] = getattr(_current, "slot", None)
    if slot is not None:
        slot.conn = conn


def _note_sent() -> None:
    slot: Optional[Slot] = getattr(_current, "slot", None)
    if slot is not None:
        slot.sent = True


class _OneWrite:
    """A connection that writes a request's head and body in one ``sendall``.

    urllib3 writes the head, then each body chunk: two system calls per event, each
    releasing and retaking the GIL (a socket with a timeout polls first: four), which
    the ``track_*`` callers of the process pay for. The bytes ``request`` writes are held
    and written once at its end; nothing is written if it fails.
    """

    _held: Optional[list[bytes]] = None

    def send(self, data: Any) -> None:
        held = self._held
        if held is not None and isinstance(data, bytes):
            held.append(data)
            return
        super().send(data)  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note_connection(self)
        held: list[bytes] = []
        self._held = held
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._held = None
        super().send(b"".join(held))  # type: ignore[misc]  # connects if need be
        _note_sent()


class _WatchedHTTPConnection(_OneWrite, HeaderLines, HTTPConnection):
    response_class = FinalResponse


class _WatchedHTTPSConnection(_OneWrite, HeaderLines, HTTPSConnection):
    response_class = FinalResponse


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _Pool, "https": _HTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose pools report each attempt's connection to the watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Build the pool manager as requests does, with watched connection pools."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The proxy manager as requests builds it, with watched connection pools."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class Watchdog:
    """A lazily started daemon thread that cuts off attempts past their deadline."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._cond = threading.Condition()
        self._armed: set[Slot] = set()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def arm(self, slot: Slot, deadline: Optional[float] = None) -> None:
        """Start timing an attempt in the current thread; cut it at ``deadline`` if sooner."""
        with self._cond:
            slot.deadline = self._clock() + self.budget_s
            slot.capped = deadline is not None and deadline < slot.deadline
            if slot.capped:
                slot.deadline = deadline
                self._cond.notify_all()  # earlier than the thread's next look: tell it
            slot.conn, slot.expired, slot.sent = None, False, False
            self._armed.add(slot)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="cms-shipper-watchdog", daemon=True
                )
                self._thread.start()
        _current.slot = slot

    def disarm(self, slot: Slot) -> bool:
        """The attempt is over; True if the watchdog had cut it off."""
        _current.slot = None
        with self._cond:
            self._armed.discard(slot)
            slot.deadline, slot.conn = None, None
            return slot.expired

    def sent(self) -> int:
        """Attempts running now whose request was written out (not refused, not connecting)."""
        with self._cond:
            return sum(1 for slot in self._armed if slot.sent)

    def stop(self) -> None:
        """End the thread (attempts still armed are no longer timed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        # Armed attempts renew their deadlines all the time; waking at the earliest one
        # (or, with none armed, one budget later, which no new deadline can precede by
        # more than that) keeps this thread asleep almost always.
        with self._cond:
            while not self._stopped:
                now = self._clock()
                earliest = now + self.budget_s
                for slot in list(self._armed):
                    deadline = slot.deadline
                    if deadline is None:
                        continue
                    if deadline <= now:
                        self._cut(slot)
                    else:
                        earliest = min(earliest, deadline)
                self._cond.wait(max(0.001, earliest - now))

    def _cut(self, slot: Slot) -> None:
        slot.expired = True
        slot.deadline = None
        self._armed.discard(slot)
        sock = getattr(slot.conn, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
