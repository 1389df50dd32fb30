"""`Spool`: the outbox on disk. A notification is written here before any sink sees it, and its
bytes go once every sink has acknowledged it or its retention has passed.

Layout of a spool directory (0700, files 0600):

    lock                      held by the one process that spools and delivers
    <first sequence>.spool    segments: a checked header, then CRC32C-framed msgpack entries
    cursors/<sink name>       the last sequence number that sink acknowledged

Entries are numbered in the order they were made (detection order) and every sink reads them in
that order from its cursor, so a sink that is down holds back nothing of the others and receives
its backlog, in order, when it comes back. The process that makes notifications only appends
(page cache, no fsync: matching never waits on the disk); a sink's delivery thread fsyncs what was
appended before it sends any of it, so nothing is sent that a crash could take back. A segment is
closed at 1 MiB or after a minute and deleted when every sink's cursor has passed its last entry,
or when its latest retention deadline has passed (such entries are never sent). A cursor is
saved at most every half second: after a crash a sink may receive again what it acknowledged just
before (at-least-once delivery; the idempotency key tells receivers it is the same notification).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from contextlib import suppress
from typing import Any, NamedTuple

import msgpack

from probe.errors import NotifyError, StoreError
from probe.store.framing import FRAME, file_header, frame, read_file, read_frames, read_header, sync_directory, write_all, write_atomically
from probe.store.ring import check_private

log = logging.getLogger("probe.notify")

SPOOL_MAGIC = b"PRBSPOOL"
SEGMENT_BYTES = 1 << 20
SEGMENT_SECONDS = 60.0
CURSOR_SAVE_INTERVAL = 0.5
RESERVED_BYTES = 4096
FRAME_OVERHEAD = FRAME.size
SEGMENT_NAME = re.compile(r"(\d{16})\.spool")


class SpoolEntry(NamedTuple):
    sequence: int
    created: int
    """Wall-clock nanoseconds when the notification was made (what delivery latency counts from)."""
    expires: int
    """When the data it holds must be gone: the store's retention deadline of the same record."""
    document: dict[str, Any]


class SpoolFull(NotifyError):
    """The spool is at its size cap or the disk refused the write; the entry was not taken."""


class Segment:
    __slots__ = ("first", "last", "path", "size", "durable", "latest_expiry", "opened", "descriptor")

    def __init__(self, first: int, path: str) -> None:
        self.first = first
        self.last = first - 1
        self.path = path
        self.size = 0
        self.durable = 0
        self.latest_expiry = 0
        self.opened = time.monotonic()
        self.descriptor: int | None = None


class Spool:
    def __init__(self, directory: str, max_bytes: int, sinks: list[str]) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.segments: list[Segment] = []
        self.cursors: dict[str, int] = {}
        self._saved: dict[str, int] = {}
        self._saved_at: dict[str, float] = {}
        self._positions: dict[str, tuple[str, int, int]] = {}
        """Per sink, where its last read ended: segment path, byte offset, last sequence read."""
        self.recovered: list[str] = []
        self.expired = 0
        """Entries deleted undelivered (to some sink) because their retention passed."""
        self._lock_descriptor = self._open_directory()
        try:
            self._load_segments()
            self._load_cursors(sinks)
            self.next_sequence = max([segment.last for segment in self.segments] + list(self.cursors.values()) + [0]) + 1
        except BaseException:
            os.close(self._lock_descriptor)
            raise

    # Opening

    def _open_directory(self) -> int:
        directory = self.directory
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700)
                sync_directory(os.path.dirname(os.path.abspath(directory)))
            check_private(directory, True)
            os.makedirs(os.path.join(directory, "cursors"), mode=0o700, exist_ok=True)
            descriptor = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except StoreError as error:
            raise NotifyError(f"spool {error}") from None
        except OSError as error:
            raise NotifyError(f"{directory}: cannot open the notification spool: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise NotifyError(f"{directory}: the notification spool is in use by another probe process; give each process its own [notify] spool_directory") from None
        return descriptor

    def _load_segments(self) -> None:
        for name in sorted(os.listdir(self.directory)):
            match = SEGMENT_NAME.fullmatch(name)
            if match is None:
                continue
            path = os.path.join(self.directory, name)
            check_private(path, False)
            segment = Segment(int(match.group(1)), path)
            data = read_file(path)
            _, start = read_header(path, data, SPOOL_MAGIC)
            payloads, end = read_frames(data, start) if start else ([], 0)
            for payload in payloads:
                sequence, _, expires, _ = msgpack.unpackb(payload)
                segment.last = sequence
                segment.latest_expiry = max(segment.latest_expiry, expires)
            if end < len(data):
                with open(path, "r+b") as stream:
                    stream.truncate(end)
                    os.fsync(stream.fileno())
                message = f"{path}: torn tail of {len(data) - end} bytes cut (a crash while spooling; those notifications were never sent)"
                self.recovered.append(message)
                log.warning(message)
            segment.size = segment.durable = end
            self.segments.append(segment)

    def _load_cursors(self, sinks: list[str]) -> None:
        first = self.segments[0].first if self.segments else 1
        directory = os.path.join(self.directory, "cursors")
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            text = read_file(path).strip()
            cursor = int(text) if text.isdigit() else None
            if name not in sinks:
                pending = sum(segment.last - max(segment.first - 1, cursor or 0) for segment in self.segments if segment.last > (cursor or 0))
                log.warning(f"{path}: sink {name!r} is no longer configured; its cursor is removed" + (f" and the {pending} notifications spooled for it will not be sent" if pending else ""))
                os.unlink(path)
            elif cursor is None:
                log.warning(f"{path}: unreadable cursor; sink {name} receives again everything the spool holds")
            else:
                self.cursors[name] = self._saved[name] = cursor
        for name in sinks:
            self.cursors.setdefault(name, first - 1)

    # Appending (the thread that makes notifications)

    def append(self, created: int, expires: int, document: dict[str, Any], reserved: bool = False) -> int:
        """Spool one notification; its sequence number. Raises `SpoolFull` when the size cap is
        reached or the disk refuses it; what was spooled before is intact. The last
        `RESERVED_BYTES` under the cap are kept for the notification that reports the drops
        (`reserved`), so that once the spool takes notifications again it can take that one."""
        payload = frame(msgpack.packb([self.next_sequence, created, expires, document]))
        limit = self.max_bytes if reserved else self.max_bytes - RESERVED_BYTES
        with self._lock:
            if self.total_bytes() + len(payload) > limit:
                self._reclaim_active()
            if self.total_bytes() + len(payload) > limit:
                raise SpoolFull(f"{self.directory}: the spool holds {self.total_bytes()} bytes, at its cap ([notify] spool_max_bytes = {self.max_bytes})")
            segment = self._active()
            try:
                write_all(segment.descriptor, payload)  # type: ignore[arg-type]
            except OSError as error:
                with suppress(OSError):
                    os.ftruncate(segment.descriptor, segment.size)  # type: ignore[arg-type]
                raise SpoolFull(f"{segment.path}: cannot spool: {error.strerror}") from None
            segment.size += len(payload)
            segment.last = self.next_sequence
            segment.latest_expiry = max(segment.latest_expiry, expires)
            self.next_sequence += 1
            return segment.last

    def _reclaim_active(self) -> None:
        """At the cap, the segment being appended to goes too if every sink has all of it (it is
        otherwise kept until it is a minute old or full, to spare a file per notification)."""
        segment = self.segments[-1] if self.segments else None
        if segment is not None and segment.last <= min(self.cursors.values(), default=segment.last):
            if segment.descriptor is not None:
                os.close(segment.descriptor)
                segment.descriptor = None
            self._delete(segment)

    def _active(self) -> Segment:
        """The segment being appended to; a new one after 1 MiB or a minute."""
        segment = self.segments[-1] if self.segments else None
        if segment is not None and segment.descriptor is not None:
            if segment.size < SEGMENT_BYTES and time.monotonic() - segment.opened < SEGMENT_SECONDS:
                return segment
            self._seal(segment)
        path = os.path.join(self.directory, f"{self.next_sequence:016d}.spool")
        segment = Segment(self.next_sequence, path)
        header = file_header(SPOOL_MAGIC, {"first": self.next_sequence})
        try:
            segment.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            write_all(segment.descriptor, header)
            sync_directory(self.directory)
        except OSError as error:
            if segment.descriptor is not None:
                os.close(segment.descriptor)
            with suppress(OSError):
                os.unlink(path)
            raise SpoolFull(f"{path}: cannot create a spool segment: {error.strerror}") from None
        segment.size = len(header)
        self.segments.append(segment)
        return segment

    def _seal(self, segment: Segment) -> None:
        descriptor, segment.descriptor = segment.descriptor, None
        try:
            os.fsync(descriptor)  # type: ignore[arg-type]
            segment.durable = segment.size
        finally:
            os.close(descriptor)  # type: ignore[arg-type]

    # Delivering (one thread per sink)

    def durable_sequence(self) -> int:
        """Make every entry appended so far durable (one fsync shared by the sinks); the last
        sequence number a sink may now send."""
        with self._lock:
            if not self.segments:
                return self.next_sequence - 1
            segment = self.segments[-1]
            if segment.descriptor is None or segment.durable == segment.size:
                return segment.last
            descriptor, size, last = os.dup(segment.descriptor), segment.size, segment.last
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        with self._lock:
            segment.durable = max(segment.durable, size)
        return last

    def read(self, sink: str, upto: int, limit: int) -> list[SpoolEntry]:
        """Up to `limit` entries after the sink's cursor, up to `upto` (what is durable). Each
        sink reads on from where its previous read ended, so an entry is parsed once per sink."""
        after = self.cursors[sink]
        entries: list[SpoolEntry] = []
        with self._lock:
            segments = [(segment.path, segment.durable) for segment in self.segments if segment.last > after and segment.first <= upto]
        position = self._positions.get(sink)
        for path, durable in segments:
            resume = position is not None and position[0] == path and position[2] == after
            try:
                with open(path, "rb") as stream:
                    if resume:
                        base = position[1]  # type: ignore[index]
                        stream.seek(base)
                        data = stream.read(max(0, durable - base))
                        offset = 0
                    else:
                        base = 0
                        data = stream.read(durable)
                        offset = read_header(path, data, SPOOL_MAGIC)[1]
            except FileNotFoundError:  # expired and deleted meanwhile
                continue
            if not offset and not resume:
                continue
            for payload in read_frames(data, offset)[0]:
                entry = SpoolEntry(*msgpack.unpackb(payload))
                if entry.sequence > upto or len(entries) >= limit:
                    return entries
                offset += FRAME_OVERHEAD + len(payload)
                if entry.sequence > after:
                    entries.append(entry)
                    self._positions[sink] = (path, base + offset, entry.sequence)
        return entries

    def acknowledge(self, sink: str, sequence: int) -> None:
        """The sink has what is numbered up to `sequence`; segments every sink has passed go. The
        cursor file is written outside the lock: appending never waits for its fsync."""
        with self._lock:
            self.cursors[sink] = sequence
            done = min(self.cursors.values())
            for segment in [segment for segment in self.segments[:-1] if segment.last <= done]:
                self._delete(segment)
        if time.monotonic() - self._saved_at.get(sink, 0.0) >= CURSOR_SAVE_INTERVAL:
            self._save_cursor(sink)

    def collect(self, now: int) -> None:
        """Delete the segments whose every entry is past its retention, sent or not."""
        with self._lock:
            for segment in [segment for segment in self.segments if segment.latest_expiry and segment.latest_expiry <= now]:
                undelivered = sum(max(0, segment.last - max(cursor, segment.first - 1)) for cursor in self.cursors.values())
                if undelivered:
                    self.expired += undelivered
                    log.warning(f"{segment.path}: {undelivered} notifications deleted undelivered: their retention passed while their sinks were unreachable")
                if segment.descriptor is not None:
                    os.close(segment.descriptor)
                    segment.descriptor = None
                self._delete(segment)
            for sink, cursor in self.cursors.items():  # past the entries deleted
                remaining = [segment for segment in self.segments if segment.last > cursor]
                self.cursors[sink] = max(cursor, remaining[0].first - 1) if remaining else self.next_sequence - 1

    def pending(self, sink: str) -> int:
        """Entries spooled that `sink` has not acknowledged (those its filter skips included)."""
        with self._lock:
            return max(0, self.next_sequence - 1 - self.cursors[sink])

    def total_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def _delete(self, segment: Segment) -> None:
        with suppress(FileNotFoundError):
            os.unlink(segment.path)
        self.segments.remove(segment)

    def _save_cursor(self, sink: str) -> None:
        """Best effort: a cursor that cannot be saved (full disk) stays in memory; after a crash
        that sink receives again what it acknowledged since the last save."""
        sequence = self.cursors[sink]
        self._saved_at[sink] = time.monotonic()
        if self._saved.get(sink) == sequence:
            return
        try:
            write_atomically(os.path.join(self.directory, "cursors", sink), str(sequence).encode())
        except OSError as error:
            log.warning(f"{self.directory}: cursor of sink {sink} not saved ({error.strerror}); after a crash it would receive again up to {sequence - self._saved.get(sink, 0)} notifications")
            return
        self._saved[sink] = sequence

    def close(self) -> None:
        """Save every cursor; delete everything when every sink has everything."""
        for sink in self.cursors:
            self._save_cursor(sink)
        with self._lock:
            done = min(self.cursors.values(), default=self.next_sequence - 1)
            for segment in list(self.segments):
                if segment.descriptor is not None:
                    with suppress(OSError):
                        self._seal(segment)
                if segment.last <= done:
                    self._delete(segment)
            with suppress(OSError):
                sync_directory(self.directory)
        os.close(self._lock_descriptor)
