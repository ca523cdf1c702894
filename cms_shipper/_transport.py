"""How to send: one JSON POST over a pooled keep-alive ``requests.Session``.

The transport knows nothing of retries or threads' roles. Each calling thread gets its own
Session (sessions are not documented as thread-safe; each lane sends one request at a
time, so one keep-alive connection per lane is exactly the pool it needs). ``send`` never
raises: network failures come back as a ``Reply`` with ``error`` set.
"""

from __future__ import annotations

import os
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, Optional

import requests
from requests.adapters import HTTPAdapter

from cms_shipper._config import Secret
from cms_shipper._version import __version__

__all__ = ["Reply", "Transport", "parse_retry_after"]

_MAX_ERROR_TEXT = 300


class Reply(NamedTuple):
    """What one attempt got back: a status and body, or a network error."""

    status_code: Optional[int]
    body: Any = None  # parsed JSON when it parses, else text
    error: Optional[str] = None  # network failure, e.g. "ConnectionError: ..."
    retry_after_s: Optional[float] = None


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _parse_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:_MAX_ERROR_TEXT]


class Transport:
    """POSTs event bodies to the API with per-thread keep-alive sessions."""

    def __init__(
        self, host: str, token: Optional[Secret], connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._host = host
        self._token = token
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport(host={self._host!r})"

    def _session(self) -> requests.Session:
        session: Optional[requests.Session] = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # requests re-reads proxy and CA settings from the environment on every request
            # (about 30% of the client's CPU per event); read them once per session.
            session.trust_env = False
            session.proxies.update(requests.utils.get_environ_proxies(self._host))
            session.verify = _ca_bundle()
            # Retries are the policy's job; the adapter must not add its own.
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = (
                f"cms-shipper/{__version__} {requests.utils.default_user_agent()}"
            )
            if self._token is not None:
                session.headers["Authorization"] = "Bearer " + self._token.reveal()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def send(self, path: str, body: dict[str, Any]) -> Reply:
        """POST ``body`` as JSON to ``path``; return the reply; never raise.

        Redirects are not followed: a redirected POST would turn into a GET and lose the
        event, so a 3xx comes back as it is.
        """
        try:
            response = self._session().post(
                self._host + path, json=body, timeout=self._timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return Reply(None, error=_describe(exc))
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Reply(response.status_code, _parse_body(response), None, retry_after)

    def close(self) -> None:
        """Close every session this transport opened; safe to call more than once."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _ca_bundle() -> Any:
    """What ``trust_env`` would have used for TLS verification."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _describe(exc: requests.RequestException) -> str:
    kind = "Timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
    text = f"{kind}: {exc}"
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."
