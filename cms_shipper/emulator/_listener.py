"""Where the emulator listens, and the refuse-mode outage: stop listening, then come back.

During a refuse outage there is no listening socket at all, so the kernel refuses new
connections (ECONNREFUSED) and no request reaches the emulator. At its end a fresh server
binds the same port again (SO_REUSEADDR: connections left in TIME_WAIT do not block it),
so the emulator's URL stays valid. Every change happens under one lock; a timer ends the
outage by itself, and an outage id tells a stale timer that its outage is over.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from cms_shipper.emulator._server import EmulatorServer
from cms_shipper.emulator._state import State

__all__ = ["Listener"]

logger = logging.getLogger("cms_shipper.emulator")

_POLL_S = 0.05  # how often serve_forever notices shutdown(); bounds how long stop() takes
_JOIN_S = 2.0
_REBIND_RETRY_S = 0.05


class Listener:
    """Serves a ``State`` on one address; can stop listening for a while and come back."""

    def __init__(self, host: str, port: int, state: State) -> None:
        self.host, self.port = host, port  # port 0 until the first start() picks one
        self._state = state
        self._lock = threading.Lock()
        self._server: Optional[EmulatorServer] = None
        self._thread: Optional[threading.Thread] = None
        self._started = False
        self._refusing = False
        self._timer: Optional[threading.Timer] = None
        self._outage_id = 0

    @property
    def running(self) -> bool:
        """Started and not stopped (a refuse outage included)."""
        return self._started

    @property
    def refusing(self) -> bool:
        """Whether a refuse outage holds: nothing listens on the port."""
        return self._refusing

    def start(self) -> None:
        """Bind, listen and serve in a daemon thread."""
        with self._lock:
            if self._started:
                raise RuntimeError("the emulator is already running")
            self._listen()
            self._started = True

    def stop(self) -> None:
        """Stop serving, close every connection and end any refuse outage; idempotent."""
        with self._lock:
            self._started = self._refusing = False
            timer, self._timer = self._timer, None
            self._close()
        if timer is not None:
            timer.cancel()
            # Outside the lock: a timer that already fired waits for it, then finds nothing to do.
            timer.join(_JOIN_S)

    def refuse(self, duration_s: Optional[float]) -> None:
        """Stop listening and drop every connection for ``duration_s`` (None: until ended)."""
        with self._lock:
            if not self._started:
                raise RuntimeError("start the emulator before a refuse outage")
            self._close()
            self._refusing = True
            self._outage_id += 1
            self._cancel_timer()
            if duration_s is not None:
                self._schedule(duration_s)

    def end_refusal(self) -> None:
        """End a refuse outage now (listen again); nothing to do without one."""
        self._end(None)

    def _end(self, outage_id: Optional[int]) -> None:
        with self._lock:
            if not self._refusing or outage_id not in (None, self._outage_id):
                return  # no outage, or the timer of an outage that was replaced or ended
            self._cancel_timer()
            try:
                self._listen()
            except OSError:
                # Rare: the port was handed to a client socket meanwhile. Try again shortly.
                logger.warning("emulator could not listen on port %s yet; retrying", self.port)
                self._schedule(_REBIND_RETRY_S)
                return
            self._refusing = False

    def _schedule(self, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self._end, args=(self._outage_id,))
        timer.name = f"cms-shipper-emulator-{self.port}-outage"
        timer.daemon = True  # an emulator left running must not hold up interpreter exit
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        # Cancel only: joining here, under the lock, could wait on a timer waiting for it.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _listen(self) -> None:
        server = EmulatorServer((self.host, self.port), self._state)
        self.port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name=f"cms-shipper-emulator-{self.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.stop()
        if thread is not None:
            thread.join(_JOIN_S)
