"""The write-ahead journal: each event copied into a memory-mapped file before track_* returns.

``track_*`` with ``write_ahead`` must not wait on the disk, nor give up the GIL: a thread
that releases it for an I/O call (SQLite's, or ``os.write``'s) may wait milliseconds to
get it back while the sender threads run Python code. So the journal is a set of files of
this owner, ``<spool>.owners/<owner>.<n>.journal``, mapped into memory (``mmap``,
``MAP_SHARED``): a write is a memory copy into the page cache, which the kernel keeps and
writes back even if the process is killed (SIGKILL, OOM). A power loss of the machine may
lose recent records, as with the spool's ``synchronous=NORMAL``.

A record is ``[length u32][crc32 u32][state u8][body]``; the body is the event as JSON.
The length is written while the writer holds the journal's lock (so the file can always be
walked), then the body, the checksum and last the state ``LIVE``. A final answer sets the
state to ``DONE`` (one byte: no I/O, no transaction); a spill moves the event into the
spool's ``events`` table and then marks it ``DONE``. A file whose records are all done is
deleted once a newer one is in use. When the owner dies, another process reads its live
records (``read_live``), moves them into ``events`` and deletes its files.

Files are allocated in full when created (``posix_fallocate`` where available), so a full
disk shows up as a failed ``track_*`` write-ahead (counted, kept in memory), never as a
SIGBUS later.
"""

from __future__ import annotations

import contextlib
import glob
import json
import mmap
import os
import struct
import threading
import zlib
from typing import NamedTuple, Optional

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool.disk import free_bytes, on_disk, wal_limit

__all__ = [
    "FAILED",
    "FULL",
    "Journal",
    "JournalError",
    "Live",
    "journal_files",
    "mark_done",
    "read_live",
]

FULL = 0  # write(): over max_bytes, not stored
FAILED = -1  # write(): this event cannot be stored (encoding, or the journal failed)
SEGMENT_BYTES = 1 << 20  # one journal file; its records' handles are n * SEGMENT_BYTES + offset
_LENGTH = struct.Struct("<I")
_HEADER = 9  # length, crc32, state
_LIVE, _DONE = 1, 2
_SUFFIX = ".journal"
MAX_FILES = 4  # files a process writes into at once, however many threads write


class JournalError(Exception):
    """The journal cannot take a write now (closed, not registered, no file)."""


def _encode(event: Event) -> bytes:
    record = [
        event.event_id,
        event.endpoint,
        event.customer_key,
        event.payload,
        event.tracked_at,
        event.timestamp,
    ]
    return json.dumps(record, separators=(",", ":")).encode("ascii")


class _Segment:
    """One mapped journal file; its writers take room for a record under its lock."""

    __slots__ = ("end", "lock", "mm", "number", "path", "retired", "threads")

    def __init__(self, path: str, number: int, mm: mmap.mmap) -> None:
        self.path = path
        self.number = number
        self.mm = mm
        self.end = 0  # the next record's offset
        self.lock = threading.Lock()  # held while a writer takes room (and writes its length)
        self.retired = False  # full: nobody writes here again; deleted once all done
        self.threads: list[threading.Thread] = []  # its writers

    def users(self) -> int:
        """Writers still alive (ended ones are forgotten)."""
        self.threads = [thread for thread in self.threads if thread.is_alive()]
        return len(self.threads)


def _all_done(mm: mmap.mmap, end: int) -> bool:
    """True when every record up to ``end`` is done (one being written is not)."""
    offset = 0
    while offset + _HEADER <= end:
        (length,) = _LENGTH.unpack_from(mm, offset)
        if length == 0:
            return True
        if mm[offset + 8] != _DONE:
            return False
        offset += _HEADER + length
    return True


class Journal:
    """This owner's write-ahead records, in memory-mapped files; thread-safe.

    A process writes into at most ``files_for(max_bytes)`` files at a time (4, fewer under a
    small bound), however many threads write: each thread appends to the file it was
    given, a file of its own while there are few writers, else one it shares. A writer
    takes the file's lock only to take room for its record (a few bytecodes; a writer
    never waits for another's copy, and a lock nobody holds does not give up the GIL), and
    the journal's lock only to start or change files (one write in several thousand) and
    to tidy up. ``done`` marks a record with one byte. A full file is retired; retired files
    and those no live thread writes into are deleted by ``tidy`` (the heartbeat) and
    ``close`` once their records are all done.
    """

    def __init__(self, directory: str, name: str, *, max_bytes: Optional[int]) -> None:
        self._prefix = os.path.join(directory, name)
        self._directory = directory
        self._spool = directory.rsplit(".owners", 1)[0]  # Owners.directory: <spool>.owners
        self._max_bytes = max_bytes
        self._files = files_for(max_bytes)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._segments: dict[int, _Segment] = {}
        self._numbers = 0
        self._closed = False
        self.registered = False  # the owner's heartbeat row is in the spool (a fallback)

    def _roll(self, size: int) -> _Segment:
        """A file for this thread: one nobody alive writes into, a new one while this
        process has fewer than its share, else the one with the fewest writers. Servers
        that start a thread per request, or pools of 64 threads, thus use a few files."""
        with self._lock:
            if self._closed:
                raise JournalError("the spool is closed")
            me = threading.current_thread()
            old: Optional[_Segment] = getattr(self._local, "segment", None)
            if old is not None:
                if old.end + size > SEGMENT_BYTES:
                    old.retired = True  # full for this record: nobody writes here again
                with contextlib.suppress(ValueError):
                    old.threads.remove(me)
            room = [
                s
                for s in self._segments.values()
                if not s.retired and s.end + size <= SEGMENT_BYTES
            ]
            free = [s for s in room if s.users() == 0]
            active = sum(1 for s in self._segments.values() if not s.retired)
            if free:
                segment = free[0]
            elif room and (active >= self._files or not self._fits()):
                segment = min(room, key=_Segment.users)
            elif self._fits():
                segment = self._start()
            else:
                raise _Full
            segment.threads.append(me)
        self._local.segment = segment
        return segment

    def _fits(self) -> bool:
        """True if one more file keeps every file of the spool within ``max_bytes`` and
        leaves room on the disk for the WAL to be checkpointed."""
        if free_bytes(self._spool) < SEGMENT_BYTES + wal_limit(self._max_bytes):
            return False
        return (
            self._max_bytes is None
            or on_disk(self._spool, self._directory) + SEGMENT_BYTES <= self._max_bytes
        )

    def _start(self) -> _Segment:
        """Create a file, allocate it in full and map it (under the lock)."""
        self._numbers += 1
        number = self._numbers
        path = f"{self._prefix}.{number}{_SUFFIX}"
        try:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, SEGMENT_BYTES)
                else:  # sparse: a full disk could fault on a later write (documented)
                    os.ftruncate(fd, SEGMENT_BYTES)
                mm = mmap.mmap(fd, SEGMENT_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise JournalError(f"cannot start a journal file: {exc}") from exc
        segment = _Segment(path, number, mm)
        self._segments[number] = segment
        return segment

    def write(self, event: Event) -> int:
        """Store ``event``; its handle (> 0), ``FULL`` or ``FAILED``. No I/O, no wait,
        except to start a new file (one write in several thousand)."""
        try:
            body = _encode(event)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            logger.debug("cannot store event %r: %s", event.event_id, exc)
            return FAILED
        size = _HEADER + len(body)
        if size > SEGMENT_BYTES:
            return FAILED
        if not self.registered:
            raise JournalError("the spool has not registered this process yet")
        segment: Optional[_Segment] = getattr(self._local, "segment", None)
        while True:
            try:
                if segment is None or segment.retired or segment.end + size > SEGMENT_BYTES:
                    segment = self._roll(size)
            except _Full:
                return FULL
            mm = segment.mm
            with segment.lock:  # room for this record; its length keeps the file walkable
                offset = segment.end
                if offset + size <= SEGMENT_BYTES:
                    segment.end = offset + size
                    try:
                        mm[offset : offset + 4] = _LENGTH.pack(len(body))
                    except ValueError as exc:  # closed meanwhile
                        raise JournalError("the spool is closed") from exc
                    break
            # another writer took the last of its room: start again (the loop's test)
        try:
            mm[offset + _HEADER : offset + size] = body
            mm[offset + 4 : offset + 8] = _LENGTH.pack(zlib.crc32(body))
            mm[offset + 8] = _LIVE
        except ValueError as exc:  # closed meanwhile
            raise JournalError("the spool is closed") from exc
        return segment.number * SEGMENT_BYTES + offset + 1

    def done(self, handles: list[int]) -> None:
        """These events have their answer (or a row in ``events`` now): not replayed."""
        for handle in handles:
            number, offset = divmod(handle - 1, SEGMENT_BYTES)
            segment = self._segments.get(number)
            if segment is not None:
                with contextlib.suppress(ValueError, IndexError):  # tidied or closed meanwhile
                    segment.mm[offset + 8] = _DONE

    def tidy(self) -> None:
        """Delete files whose records are all done that nobody alive writes into (or full)."""
        with self._lock:
            for segment in list(self._segments.values()):
                in_use = not segment.retired and segment.users() > 0
                if not in_use and _all_done(segment.mm, segment.end):
                    self._drop(segment)

    def _drop(self, segment: _Segment) -> None:
        """Unmap and delete a file whose records are all done (under the lock)."""
        self._segments.pop(segment.number, None)
        with contextlib.suppress(OSError, ValueError):
            segment.mm.close()
        with contextlib.suppress(OSError):
            os.unlink(segment.path)

    def holds_live(self) -> bool:
        """True while some record here is live (its event has no answer yet)."""
        with self._lock:
            return not all(_all_done(s.mm, s.end) for s in self._segments.values())

    def close(self) -> None:
        """Unmap the files; delete them unless records are live (another process takes
        those over). Idempotent; writes after it fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = not all(_all_done(s.mm, s.end) for s in self._segments.values())
            for segment in list(self._segments.values()):
                if live:
                    with contextlib.suppress(OSError, ValueError):
                        segment.mm.close()
                else:
                    self._drop(segment)
            self._segments.clear()

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's mappings without touching its files."""
        for segment in list(self._segments.values()):
            with contextlib.suppress(Exception):
                segment.mm.close()  # unmaps the child's copy only
        self._segments, self._closed = {}, True
        self._local = threading.local()


def files_for(max_bytes: Optional[int]) -> int:
    """Files a process writes into at once: 4, or fewer so they take at most a quarter of
    ``max_bytes`` (one at least)."""
    if max_bytes is None:
        return MAX_FILES
    return max(1, min(MAX_FILES, max_bytes // (4 * SEGMENT_BYTES)))


class _Full(Exception):
    """A new file would take the spool past ``max_bytes``."""


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
                os.pwrite(fd, bytes([_DONE]), offset + 8)
        except OSError as exc:
            logger.warning("cannot mark records done in %s: %s", path, exc)
        finally:
            os.close(fd)


def journal_files(directory: str) -> dict[str, list[str]]:
    """Journal files in ``directory``, by owner name (as in its lock file's name)."""
    out: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + _SUFFIX))):
        name = os.path.basename(path)[: -len(_SUFFIX)].rsplit(".", 1)[0]
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
        except OSError as exc:
            logger.warning("cannot read the spool journal %s: %s", path, exc)
            continue
        offset = 0
        while offset + _HEADER <= len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            if length == 0:
                break  # the end of what was written
            body = bytes(data[offset + _HEADER : offset + _HEADER + length])
            if data[offset + 8] == _LIVE and _LENGTH.unpack_from(data, offset + 4)[0] == zlib.crc32(
                body
            ):
                try:
                    event_id, endpoint, _customer, payload, tracked_at, timestamp = json.loads(body)
                    events.append(Event.of(event_id, endpoint, payload, tracked_at, timestamp))
                    where.append((path, offset))
                except (ValueError, TypeError) as exc:
                    logger.warning("skipped a bad record in %s: %s", path, exc)
            offset += _HEADER + length
    return Live(events, files, where)
