"""The fleet's link to Redis: one connection pool per process, its state, its two warnings.

Built lazily in the fleet thread (so constructing a client never waits for Redis) and again
in a forked child. Short socket timeouts: a Redis that hangs costs a sender at most a
moment, never an event. The URL may carry a password: only ``safe_url`` (without it) is
ever logged or shown.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cms_shipper._log import logger, one_line

__all__ = ["RETRY_S", "Link", "safe_url"]

RETRY_S = 1.0  # after a failure, how long before the link is tried again
_CONNECT_TIMEOUT_S = 1.0
_SOCKET_TIMEOUT_S = 2.0


def safe_url(url: str) -> str:
    """``url`` without its user name and password (for logs, reprs, ``stats()``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "redis://(unparsable URL)"


class Link:
    """A Redis client that says once when it is lost and once when it is back."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.where = safe_url(url)
        self._client: Optional[redis.Redis] = None
        self._lock = threading.Lock()
        self.up = False
        self.ever_up = False
        self.retry_at = 0.0
        self.lost_at: Optional[float] = None  # time.time() the link was lost
        self.last_error: Optional[str] = None

    def client(self) -> redis.Redis:
        """The process's Redis client (made on first use; connects lazily)."""
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self._url,
                    socket_connect_timeout=_CONNECT_TIMEOUT_S,
                    socket_timeout=_SOCKET_TIMEOUT_S,
                    retry=Retry(NoBackoff(), 0),  # the fleet thread retries, not redis-py
                    health_check_interval=10,
                    client_name="cms-shipper",
                )
            return self._client

    def usable(self) -> bool:
        """Up, or due for another try."""
        return self.up or time.monotonic() >= self.retry_at

    def worked(self) -> None:
        """A command went through."""
        if self.up:
            return
        self.up = True
        if self.ever_up or self.lost_at is not None:
            down_s = time.time() - self.lost_at if self.lost_at is not None else 0.0
            logger.warning(
                "fleet link to %s is back after %.1f s: sharing the fleet's queue again",
                self.where,
                down_s,
            )
        self.ever_up = True
        self.lost_at = None

    def failed(self, exc: BaseException) -> None:
        """A command failed: the link is down until ``RETRY_S`` from now."""
        self.retry_at = time.monotonic() + RETRY_S
        self.last_error = one_line(f"{type(exc).__name__}: {exc}").replace(self._url, self.where)
        if self.up or self.lost_at is None:
            self.lost_at = time.time()
            logger.warning(
                "fleet link to %s %s (%s): events are delivered by this process alone "
                "until it is back",
                self.where,
                "lost" if self.up else "unavailable",
                self.last_error,
            )
        self.up = False

    def close(self) -> None:
        """Close the pool's connections."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
                client.connection_pool.disconnect()
            except Exception:
                logger.debug("closing the fleet's Redis connections failed", exc_info=True)
