"""The HTTP wire per request, inside urllib3's connection and http.client's response.

Two fast paths where the standard library does costly work that never changes:

- ``HeaderLines``: http.client validates and encodes every header line it writes, and
  urllib3 scans each for its skip marker: seven lines per request, the same ones every
  time. A connection keeps each line it has written once (checked by http.client then)
  and writes the kept bytes after that.
- ``FinalResponse``: http.client parses a response's head with the ``email`` package,
  which builds a MIME message from it (about a sixth of a sender's CPU per event). A head
  whose lines are all plain ``Name: value`` lines is read into the same
  ``http.client.HTTPMessage`` directly; any other head (folded lines, stray text, an
  empty name) goes through the ``email`` parser as before, so what comes out is the
  same. It also skips informational (1xx) replies before the final one.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any, Optional

__all__ = ["FinalResponse", "HeaderLines", "read_head"]

_MAXLINE = 65536  # http.client's limits on a head
_MAXHEADERS = 100
_KEPT_LINES = 64  # per connection: the fixed headers and a few Content-Length values
# A line the email parser would read as "name: value" with nothing else to it: a name of
# printable ASCII but ':' (feedparser's own rule), no CR or LF inside the value.
_PLAIN = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n")


class HeaderLines:
    """A connection mixin that writes each distinct header line's checked bytes again."""

    _buffer: list[bytes]  # http.client's output buffer
    _lines: Optional[dict[tuple[Any, ...], bytes]] = None

    def putheader(self, header: Any, *values: Any) -> None:
        """Write a header line: checked and encoded by http.client the first time only."""
        key = (header, *values)
        lines = self._lines
        if lines is None:
            lines = self._lines = {}
        try:
            line = lines.get(key)
        except TypeError:  # an unhashable value: nothing to keep
            line, key = None, ()
        if line is not None:
            self._buffer.append(line)
            return
        before = len(self._buffer)
        super().putheader(header, *values)  # type: ignore[misc]
        plain = all(type(part) is str for part in key)
        if plain and len(self._buffer) == before + 1 and len(lines) < _KEPT_LINES:
            lines[key] = self._buffer[-1]


def read_head(fp: Any) -> http.client.HTTPMessage:
    """A response's header lines, up to the blank line, as http.client's ``parse_headers``."""
    lines = _read_lines(fp)
    message = http.client.HTTPMessage()
    for raw in lines[:-1]:
        match = _PLAIN.fullmatch(raw.decode("iso-8859-1"))
        if match is None:  # anything unusual: the email package, as http.client does
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)
        message[match.group(1)] = match.group(2)
    return message


def _read_lines(fp: Any) -> list[bytes]:
    """The head's raw lines, the blank line (or end of input) last; http.client's limits."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > _MAXHEADERS:
            raise http.client.HTTPException(f"got more than {_MAXHEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            return lines


class FinalResponse(http.client.HTTPResponse):
    """http.client's response, reading its head with ``read_head``, 1xx replies skipped.

    ``http.client`` skips ``100 Continue`` only: a ``103 Early Hints`` would be taken for
    the answer (and the real one left on the connection for the next request to read).
    ``101 Switching Protocols`` is final, as HTTP says.
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not (100 <= status < 200) or status == 101:
                return version, status, reason
            _read_lines(self.fp)  # the informational reply's headers

    def begin(self) -> None:
        """Read status and head, then what http.client derives from them (same rules)."""
        if self.headers is not None:
            return
        version, status, reason = self._read_status()
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11  # HTTP/1.x for x >= 1
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = read_head(self.fp)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:  # a nonsensical negative length is ignored
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        # Open, not chunked and no length: the body ends when the connection closes.
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
