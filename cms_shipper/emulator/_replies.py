"""Writing answers, and the reply faults: trickled, padded, endless or deeply nested bodies.

A body is a sequence of chunks of at most 64 KiB, written as they are produced, so that a
300 MB padded reply costs the emulator one chunk of memory. Every wait goes through the
server's ``stopping`` Event, so ``stop()`` cuts a trickle or an endless reply short.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Dict, Optional, Tuple

from cms_shipper.emulator._settings import Settings

__all__ = ["CHUNK_BYTES", "Body", "shape", "write"]

CHUNK_BYTES = 64 * 1024
ENDLESS_HEAD = b'{"success": false, "error": "'


@dataclass(frozen=True)
class Body:
    """A reply body: its exact length (None: chunked, and it never ends) and its chunks."""

    length: Optional[int]
    chunks: Iterable[bytes]


def shape(body: Dict[str, Any], faults: Optional[Settings]) -> Body:
    """The body to send for ``body`` under the reply faults (None: no faults, as for controls)."""
    if faults is not None and faults.endless_reply:
        spaces = itertools.repeat(b" " * CHUNK_BYTES)
        return Body(None, itertools.chain((ENDLESS_HEAD,), spaces))
    depth = 0 if faults is None else faults.nested_reply_depth
    if depth:
        return Body(2 * depth, itertools.chain(_repeat(b"[", depth), _repeat(b"]", depth)))
    data = json.dumps(body).encode("utf-8")
    padding = 0 if faults is None else faults.reply_padding_bytes
    if not padding:
        return Body(len(data), (data,))
    # Re-open the object to add the field; the padding itself is streamed, never built whole.
    head = data[:-1] + (b', "padding": "' if body else b'"padding": "')
    tail = b'"}'
    chunks = itertools.chain((head,), _repeat(b"x", padding), (tail,))
    return Body(len(head) + padding + len(tail), chunks)


def write(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: Tuple[Tuple[str, str], ...],
    body: Body,
    trickle_s: float,
    stopping: threading.Event,
) -> bool:
    """Send a whole answer; False when ``stopping`` cut it short. OSErrors propagate."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    if body.length is None:
        handler.send_header("Transfer-Encoding", "chunked")
        handler.close_connection = True  # the body never ends: no other request follows
    else:
        handler.send_header("Content-Length", str(body.length))
    for name, value in headers:
        handler.send_header(name, value)
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()  # status line and headers leave now, whatever the body does
    wire = body.chunks if body.length is not None else _chunked(body.chunks)
    if trickle_s > 0:
        return _trickle(handler.wfile, wire, trickle_s, stopping)
    for chunk in wire:
        if stopping.is_set():
            return False
        handler.wfile.write(chunk)
    return True


def _trickle(
    out: io.BufferedIOBase, wire: Iterable[bytes], interval_s: float, stopping: threading.Event
) -> bool:
    """One byte, then a wait, then the next: the body takes (bytes - 1) x interval."""
    first = True
    for chunk in wire:
        for i in range(len(chunk)):
            if not first and stopping.wait(interval_s):
                return False
            first = False
            out.write(chunk[i : i + 1])
    return True


def _repeat(byte: bytes, count: int) -> Iterator[bytes]:
    """``count`` copies of ``byte``, in chunks of at most CHUNK_BYTES."""
    block = byte * min(count, CHUNK_BYTES)
    full, rest = divmod(count, CHUNK_BYTES)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def _chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """HTTP/1.1 chunked framing around each chunk."""
    for chunk in chunks:
        if chunk:  # an empty chunk would mean the end of the body
            yield b"%x\r\n%b\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"
