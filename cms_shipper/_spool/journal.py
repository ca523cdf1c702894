"""The write-ahead journal: each event copied into a memory-mapped file before track_* returns.

``track_*`` with ``write_ahead`` must not wait on the disk, nor give up the GIL: a thread
that releases it for an I/O call (SQLite's, or ``os.write``'s) may wait milliseconds to
get it back while the sender threads run Python code. So the journal is a set of files of
this owner, ``<spool>.owners/<owner>.<n>.journal``, mapped into memory (``mmap``,
``MAP_SHARED``): a write is a memory copy into the page cache, which the kernel keeps and
writes back even if the process is killed (SIGKILL, OOM). A power loss of the machine may
lose recent records, as with the spool's ``synchronous=NORMAL``.

Records are in ``records``' format: the length is written while the writer holds the
file's lock (so the file can always be walked), then the body, the checksum and last the
state ``LIVE``. A final answer sets the state to ``DONE`` (one byte: no I/O, no
transaction); a spill moves the event into the spool's ``events`` table and then marks it
``DONE``. A file whose records are all done is deleted once a newer one is in use. When
the owner dies, another process reads its live records (``records.read_live``), moves
them into ``events`` and deletes its files.

Files are allocated in full when created (``posix_fallocate`` where available), so a full
disk shows up as a failed ``track_*`` write-ahead (counted, kept in memory), never as a
SIGBUS later.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import zlib
from typing import Optional

from cms_shipper._events import Event
from cms_shipper._log import logger
from cms_shipper._spool.disk import free_bytes, on_disk, wal_limit
from cms_shipper._spool.records import DONE, HEADER, LENGTH, LIVE, SUFFIX, all_done, encode

__all__ = ["FAILED", "FULL", "MAX_FILES", "SEGMENT_BYTES", "Journal", "JournalError"]

FULL = 0  # write(): over max_bytes, not stored
FAILED = -1  # write(): this event cannot be stored (encoding, or the journal failed)
SEGMENT_BYTES = 1 << 20  # one journal file; its records' handles are n * SEGMENT_BYTES + offset
MAX_FILES = 4  # files a process writes into at once, however many threads write


class JournalError(Exception):
    """The journal cannot take a write now (closed, not registered, no file)."""


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
        path = f"{self._prefix}.{number}{SUFFIX}"
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
            body = encode(event)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            logger.debug("cannot store event %r: %s", event.event_id, exc)
            return FAILED
        size = HEADER + len(body)
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
                        mm[offset : offset + 4] = LENGTH.pack(len(body))
                    except ValueError as exc:  # closed meanwhile
                        raise JournalError("the spool is closed") from exc
                    break
            # another writer took the last of its room: start again (the loop's test)
        try:
            mm[offset + HEADER : offset + size] = body
            mm[offset + 4 : offset + 8] = LENGTH.pack(zlib.crc32(body))
            mm[offset + 8] = LIVE
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
                    segment.mm[offset + 8] = DONE

    def tidy(self) -> None:
        """Delete files whose records are all done that nobody alive writes into (or full)."""
        with self._lock:
            for segment in list(self._segments.values()):
                in_use = not segment.retired and segment.users() > 0
                if not in_use and all_done(segment.mm, segment.end):
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
            return not all(all_done(s.mm, s.end) for s in self._segments.values())

    def close(self) -> None:
        """Unmap the files; delete them unless records are live (another process takes
        those over). Idempotent; writes after it fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = not all(all_done(s.mm, s.end) for s in self._segments.values())
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
