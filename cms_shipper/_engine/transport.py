"""How to send: one JSON POST through requests' adapter, over pooled keep-alive connections.

The transport knows nothing of retries or threads' roles. Per attempt it fills in a
prepared-request template (the thread's own copy) and hands it to the session's adapter:
no per-request header merging, hooks, cookies or environment look-ups. Every attempt is
bounded: connect and read timeouts per socket operation, their sum for the whole attempt
(``_deadline``), at most ``MAX_REPLY_BYTES`` of a reply body read (the rest is discarded
with the connection). Informational replies (``103 Early Hints``, ...) before the final
answer are skipped. The header lines written and the answer's head read are ``wire``'s
fast paths (the same bytes, the same parse, a fraction of the CPU). ``send`` never
raises: failures come back as a ``Reply``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from email.utils import parsedate_to_datetime
from time import time as _now
from typing import Any, NamedTuple, Optional

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from cms_shipper._config import Secret
from cms_shipper._engine.deadline import Slot, Watchdog, WatchedAdapter
from cms_shipper._log import MAX_ERROR_TEXT, one_line
from cms_shipper._version import __version__

__all__ = ["MAX_ERROR_TEXT", "MAX_REPLY_BYTES", "Reply", "Transport", "parse_retry_after"]

MAX_REPLY_BYTES = 64 * 1024  # the API's JSON answers are a few hundred bytes
_POOL_PREFIX = re.compile(r"^\w+\(host=[^)]*\): ")


class Reply(NamedTuple):
    """What one attempt got back: a status and body, or a network error."""

    status_code: Optional[int]
    body: Any = None  # parsed JSON when it parses, else a bounded single line of text
    error: Optional[str] = None  # e.g. "ConnectionError: ..."
    retry_after_s: Optional[float] = None  # uncapped; whoever waits applies the cap
    unreachable: bool = False  # never reached the server: refused, DNS, connect timeout


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date, RFC 9110).

    None when absent or unreadable; never raises, whatever the header holds.
    """
    if value is None:
        return None
    try:
        value = value.strip()
        if value.isascii() and value.isdigit():
            return float(value)  # a huge value becomes inf, never an OverflowError
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (_now() if now is None else now))
    except Exception:  # malformed dates raise TypeError, ValueError, IndexError, OverflowError
        return None


def parse_body(data: bytes, complete: bool) -> Any:
    """The JSON value of a complete body, else (or if it does not parse) bounded text."""
    text = data[:MAX_REPLY_BYTES].decode("utf-8", "replace")
    if complete:
        # Not JSON, or nested past the recursion limit: bounded text then.
        with contextlib.suppress(Exception):
            return json.loads(text)
    return one_line(text) or None


class _OneHostAdapter(WatchedAdapter):
    """requests' adapter, trimmed through its subclassing hooks for one fixed host.

    Per request requests would parse the URL again, rebuild the pool key, re-check the
    CA bundle on disk and build a ``Response`` with a cookie jar and an encoding guess:
    about 65 µs of a ~500 µs request, none of which one host with fixed settings needs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: Any = None
        self._paths: dict[str, str] = {}
        self._verified: Any = None

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """The host's pool, looked up once (host, proxies and TLS settings never change)."""
        if self._pool is None:
            self._pool = super().get_connection_with_tls_context(request, verify, *args, **kwargs)
        return self._pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Check and apply the TLS settings once per pool."""
        if conn is not self._verified:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
            self._verified = conn

    def request_url(self, request: Any, proxies: Any) -> str:
        """The request target, computed once per endpoint."""
        url = request.url
        path = self._paths.get(url)
        if path is None:
            path = self._paths[url] = super().request_url(request, proxies)
        return path

    def build_response(self, req: Any, resp: Any) -> Any:
        """The urllib3 response itself: the transport reads status, headers and body only."""
        return resp

    def close(self) -> None:
        """Close the pools and their connections.

        The cached pool is closed explicitly: urllib3 2's ``PoolManager.clear()`` only
        forgets its pools, whose sockets then stay open until garbage collection (one open
        connection, and a server-side handler, per closed client).
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        super().close()


class Transport:
    """POSTs event bodies to the API over one adapter's keep-alive connection pool."""

    def __init__(
        self,
        host: str,
        token: Optional[Secret],
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        *,
        callers_wait: bool = False,
    ) -> None:
        self._host = host
        self._timeout = (connect_timeout_s, read_timeout_s)
        # At most max_connections sockets, whatever the number of threads sending: in
        # sync_mode (callers_wait) further callers wait for one to be free, each wait
        # bounded by the attempt deadlines of the requests ahead of them.
        self._adapter = _OneHostAdapter(
            pool_connections=1,
            pool_maxsize=max_connections,
            max_retries=0,
            pool_block=callers_wait,
        )
        # requests would read proxy and CA settings from the environment on every request;
        # read them once.
        self._proxies = requests.utils.get_environ_proxies(host)
        # Verification only applies to https; a bundle path costs a stat() per request.
        self._verify = _ca_bundle() if host.startswith("https:") else True
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": f"cms-shipper/{__version__} {requests.utils.default_user_agent()}",
        }
        if token is not None:
            headers["Authorization"] = "Bearer " + token.reveal()
        self._template = requests.Request("POST", host, headers=headers, data=b"{}").prepare()
        self._local = threading.local()
        self._watchdog = Watchdog(connect_timeout_s + read_timeout_s)

    def __repr__(self) -> str:
        return f"Transport(host={self._host!r})"

    def _own(self) -> tuple[requests.PreparedRequest, Slot]:
        local = self._local
        try:
            return local.prep, local.slot
        except AttributeError:
            prep = self._template.copy()
            # A plain dict: urllib3 copies and walks the headers per request, which for
            # requests' case-insensitive dict costs a lower() and a call per line. The
            # names are the template's own, spelt one way, so nothing looks them up by case.
            prep.headers = dict(prep.headers)  # type: ignore[assignment]
            local.prep, local.slot = prep, Slot()
            return local.prep, local.slot

    def send(self, path: str, body: bytes, deadline: Optional[float] = None) -> Reply:
        """POST ``body`` (JSON bytes) to ``path``; return the reply; never raise.

        ``deadline`` (monotonic), when given, cuts the attempt off then if it ends sooner
        than its own timeouts would (``sync_mode``'s budget). Redirects are not followed: a
        redirected POST would turn into a GET and lose the event, so a 3xx comes back as it is.
        """
        prep, slot = self._own()
        prep.url = self._host + path
        prep.body = body
        prep.headers["Content-Length"] = str(len(body))
        timeout = self._timeout
        if deadline is not None:
            left = max(0.001, deadline - time.monotonic())
            timeout = (min(timeout[0], left), min(timeout[1], left))
        self._watchdog.arm(slot, deadline)
        try:
            response: Any = self._adapter.send(
                prep,
                stream=True,
                timeout=timeout,
                verify=self._verify,
                proxies=self._proxies,
            )
        except Exception as exc:  # requests' errors, and anything a hostile peer provokes
            expired = self._watchdog.disarm(slot)
            why = self._describe(exc, expired, slot.capped)
            return Reply(None, error=why, unreachable=_unreachable(exc))
        try:
            return self._read(response, slot)
        finally:
            self._watchdog.disarm(slot)

    def _read(self, raw: Any, slot: Slot) -> Reply:
        """Status, Retry-After and at most MAX_REPLY_BYTES of the body of a urllib3 response."""
        try:
            data = raw.read(MAX_REPLY_BYTES + 1) or b""
            complete = len(data) <= MAX_REPLY_BYTES and not slot.expired
        except Exception:  # cut off by the watchdog, or the connection broke mid-body
            data, complete = b"", False
        if complete:
            raw.release_conn()  # read to its end: the connection goes back to the pool
        else:
            raw.close()  # unread bytes on the wire: the connection cannot be reused
            raw.release_conn()
        return Reply(
            raw.status,
            parse_body(data, complete),
            None,
            parse_retry_after(raw.headers.get("Retry-After")),
        )

    def _describe(self, exc: BaseException, expired: bool, capped: bool = False) -> str:
        if expired and capped:
            return "Timeout: no complete answer by the end of the time given; attempt cut off"
        if expired:
            return (
                f"Timeout: no complete answer within {self._watchdog.budget_s:g} s "
                "(connect_timeout_s + read_timeout_s); attempt cut off"
            )
        kind = "Timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
        # requests wraps urllib3's error, whose text repeats the pool and connection class.
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        text = str(reason if isinstance(reason, BaseException) else exc)
        return one_line(f"{kind}: {_POOL_PREFIX.sub('', text)}")

    def sent_in_flight(self) -> int:
        """Requests written out and not answered yet: the server may have acted on them."""
        return self._watchdog.sent()

    def close(self) -> None:
        """Close every pooled connection and stop the watchdog; safe to call more than once."""
        self._watchdog.stop()
        self._adapter.close()


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # NameResolutionError (DNS) is a NewConnectionError too.
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _ca_bundle() -> Any:
    """What requests' ``trust_env`` would have used for TLS verification."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
