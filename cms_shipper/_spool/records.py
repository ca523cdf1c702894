"""The journal's records on disk: their format, and reading a dead owner's files.

A record is ``[length u32][crc32 u32][state u8][body]``; the body is the event as JSON
(``encode``). The writer (``journal.Journal``) writes the length while it holds the
file's lock (so the file can always be walked), then the body, the checksum and last the
state ``LIVE``; an answer sets the state to ``DONE`` (one byte). Files are
``<spool>.owners/<owner>.<n>.journal``. When the owner dies, another process reads its
live records (``read_live``: torn or corrupt ones are skipped), moves them into the
spool's ``events`` table and marks them done in place (``mark_done``) or deletes the
files.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct
import zlib
from typing import NamedTuple

from cms_shipper._events import Event
from cms_shipper._log import logger

__all__ = [
    "DONE",
    "HEADER",
    "LENGTH",
    "LIVE",
    "SUFFIX",
    "Live",
    "all_done",
    "encode",
    "journal_files",
    "mark_done",
    "read_live",
]

LENGTH = struct.Struct("<I")
HEADER = 9  # length, crc32, state
LIVE, DONE = 1, 2
SUFFIX = ".journal"


def encode(event: Event) -> bytes:
    record = [
        event.event_id,
        event.endpoint,
        event.customer_key,
        event.payload,
        event.tracked_at,
        event.timestamp,
    ]
    return json.dumps(record, separators=(",", ":")).encode("ascii")


def all_done(mm: mmap.mmap, end: int) -> bool:
    """True when every record up to ``end`` is done (one being written is not)."""
    offset = 0
    while offset + HEADER <= end:
        (length,) = LENGTH.unpack_from(mm, offset)
        if length == 0:
            return True
        if mm[offset + 8] != DONE:
            return False
        offset += HEADER + length
    return True


class Live(NamedTuple):
    """The live records of a dead owner's journal files (and where each is: file, offset)."""

    events: list[Event]
    files: list[str]
    where: list[tuple[str, int]]


def mark_done(where: list[tuple[str, int]]) -> None:
    """Mark records of a dead owner's files done (one byte each, in place: no new space)."""
    by_file: dict[str, list[int]] = {}
    for path, offset in where:
        by_file.setdefault(path, []).append(offset)
    for path, offsets in by_file.items():
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            for offset in offsets:
                os.pwrite(fd, bytes([DONE]), offset + 8)
        except OSError as exc:
            logger.warning("cannot mark records done in %s: %s", path, exc)
        finally:
            os.close(fd)


def journal_files(directory: str) -> dict[str, list[str]]:
    """Journal files in ``directory``, by owner name (as in its lock file's name)."""
    out: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + SUFFIX))):
        name = os.path.basename(path)[: -len(SUFFIX)].rsplit(".", 1)[0]
        out.setdefault(name, []).append(path)
    return out


def read_live(files: list[str]) -> Live:
    """Every live record in ``files``, oldest first; torn or corrupt ones are skipped."""
    events: list[Event] = []
    where: list[tuple[str, int]] = []
    for path in files:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            continue  # taken over and removed meanwhile: its records are rows now
        except OSError as exc:
            logger.warning("cannot read the spool journal %s: %s", path, exc)
            continue
        offset = 0
        while offset + HEADER <= len(data):
            (length,) = LENGTH.unpack_from(data, offset)
            if length == 0:
                break  # the end of what was written
            body = bytes(data[offset + HEADER : offset + HEADER + length])
            if data[offset + 8] == LIVE and LENGTH.unpack_from(data, offset + 4)[0] == zlib.crc32(
                body
            ):
                try:
                    event_id, endpoint, _customer, payload, tracked_at, timestamp = json.loads(body)
                    events.append(Event.of(event_id, endpoint, payload, tracked_at, timestamp))
                    where.append((path, offset))
                except (ValueError, TypeError) as exc:
                    logger.warning("skipped a bad record in %s: %s", path, exc)
            offset += HEADER + length
    return Live(events, files, where)
