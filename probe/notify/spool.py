"""The outbox on disk: a notification is written here before any sink sees it, and its bytes go
once every sink has acknowledged it or its retention has passed.

Layout of a spool directory (0700, files 0600):

    lock                      held by the probe process that spools
    <first sequence>.spool    segments: a checked header, then CRC32C-framed msgpack entries
    cursors/<sink name>       the last sequence number that sink acknowledged

An entry is `[sequence, made (wall-clock ns), retention deadline (ns), item]`; the item is a
notification document, or for an event the compact form `notify/documents.py` turns into one.
Entries are numbered in detection order. Two processes share the directory: the probe appends
(`SpoolWriter`: page cache, no fsync, so matching never waits on the disk), and its delivery
process (`SpoolReader`) fsyncs what was appended before it sends any of it, reads each sink's
entries in order from that sink's cursor, moves the cursor past what the sink acknowledged, and
deletes a closed segment once every cursor has passed it, or once the earliest of its deadlines
has passed (an entry past its deadline is never sent). The probe closes a segment at 1 MiB or
after a minute (the delivery process takes a segment over 65 s old as closed). A cursor is
saved at most every half second and whenever a sink is idle: after a crash a sink may receive
again what it acknowledged just before (at-least-once; the idempotency key says it is the same).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
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
LOCK_WAIT = 10.0
"""Seconds a starting probe waits for the spool's lock: the delivery process of a probe that was
killed holds it until it has stopped (one chunk of sending at most)."""
RESERVED_BYTES = 4096
"""Under the cap, kept for the notification that reports drops."""
SEGMENT_NAME = re.compile(r"(\d{16})\.spool")
CURSORS = "cursors"


class SpoolEntry(NamedTuple):
    sequence: int
    created: int
    """Wall-clock nanoseconds when the notification was made (what delivery latency counts from)."""
    expires: int
    """When the data it holds must be gone: the store's retention deadline of the same record."""
    item: Any


class SpoolFull(NotifyError):
    """The spool is at its size cap or the disk refused the write; the entry was not taken."""


def segment_paths(directory: str) -> list[tuple[int, str]]:
    """(first sequence, path) of each segment, oldest first."""
    found = [(SEGMENT_NAME.fullmatch(name), name) for name in os.listdir(directory)]
    return sorted((int(match.group(1)), os.path.join(directory, name)) for match, name in found if match)


def read_cursor(directory: str, sink: str) -> int | None:
    try:
        text = read_file(os.path.join(directory, CURSORS, sink)).strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def entries_of(path: str, data: bytes) -> tuple[list[bytes], int, int]:
    """The framed payloads of a segment's bytes, where its entries start, and where they end."""
    _, start = read_header(path, data, SPOOL_MAGIC)
    if not start:
        return [], 0, 0
    payloads, end = read_frames(data, start)
    return payloads, start, end


class SpoolWriter:
    """The probe's side: recovery at open, appends, the size cap."""

    def __init__(self, directory: str, max_bytes: int, sinks: list[str]) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sinks = sinks
        self.lock_descriptor = self._open_directory()
        self._descriptor: int | None = None
        self._path = ""
        self._size = 0
        self._opened = 0.0
        self._opened_wall = 0
        self._other_bytes = 0
        """Bytes of the segments before the one being appended to, as last counted."""
        try:
            last = self._recover()
            self._forget_removed_sinks(last)
            cursors = [read_cursor(directory, sink) or 0 for sink in sinks]
            self.next_sequence = max([last, *cursors]) + 1
            self._other_bytes = self._count_bytes()
        except BaseException:
            os.close(self.lock_descriptor)
            raise

    def _open_directory(self) -> int:
        directory = self.directory
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700)
                sync_directory(os.path.dirname(os.path.abspath(directory)))
            check_private(directory, True)
            os.makedirs(os.path.join(directory, CURSORS), mode=0o700, exist_ok=True)
            descriptor = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except StoreError as error:
            raise NotifyError(f"spool {error}") from None
        except OSError as error:
            raise NotifyError(f"{directory}: cannot open the notification spool: {error.strerror}") from None
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return descriptor
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    raise NotifyError(f"{directory}: the notification spool is in use by another probe process (or by the delivery process of one that just stopped); give each process its own [notify] spool_directory") from None
                time.sleep(0.05)

    def _recover(self) -> int:
        """Cut the torn tail a crash left (entries never sent: they were not yet durable); the
        last sequence number spooled."""
        last = 0
        for _, path in segment_paths(self.directory):
            check_private(path, False)
            data = read_file(path)
            payloads, start, end = entries_of(path, data)
            if not payloads:  # created, nothing durable in it yet, when a crash came
                os.unlink(path)
                continue
            last = max(last, msgpack.unpackb(payloads[-1])[0])
            if start and end < len(data):
                with open(path, "r+b") as stream:
                    stream.truncate(end)
                    os.fsync(stream.fileno())
                log.warning(f"{path}: torn tail of {len(data) - end} bytes cut (a crash while spooling; those notifications were never sent)")
        return last

    def _forget_removed_sinks(self, last: int) -> None:
        for name in sorted(os.listdir(os.path.join(self.directory, CURSORS))):
            if name.endswith(".tmp"):  # a cursor being saved when a crash came
                os.unlink(os.path.join(self.directory, CURSORS, name))
                continue
            if name in self.sinks:
                continue
            cursor = read_cursor(self.directory, name) or 0
            log.warning(f"{os.path.join(self.directory, CURSORS, name)}: sink {name!r} is no longer configured; its cursor is removed" + (f" and the notifications spooled for it after number {cursor} (up to {last}) will not be sent to it" if last > cursor else ""))
            os.unlink(os.path.join(self.directory, CURSORS, name))

    def _count_bytes(self) -> int:
        total = 0
        for _, path in segment_paths(self.directory):
            if path != self._path:
                with suppress(FileNotFoundError):
                    total += os.path.getsize(path)
        return total

    def append(self, created: int, expires: int, item: Any, reserved: bool = False) -> int:
        """Spool one entry; its sequence number. Raises `SpoolFull` at the size cap (less the last
        `RESERVED_BYTES`, unless `reserved`) or when the disk refuses it; what was spooled before
        is intact."""
        payload = frame(msgpack.packb([self.next_sequence, created, expires, item]))
        limit = self.max_bytes if reserved else self.max_bytes - RESERVED_BYTES
        if self._other_bytes + self._size + len(payload) > limit:
            self._other_bytes = self._count_bytes()  # the delivery process may have deleted some
            if self._other_bytes + self._size + len(payload) > limit and self._descriptor is not None and self._delivered_to_all():
                path = self._path
                self._seal(durable=False)
                with suppress(FileNotFoundError):
                    os.unlink(path)
                self._other_bytes = self._count_bytes()
            if self._other_bytes + self._size + len(payload) > limit:
                raise SpoolFull(f"{self.directory}: the spool holds {self._other_bytes + self._size} bytes, at its cap ([notify] spool_max_bytes = {self.max_bytes})")
        if self._descriptor is None or self._size >= SEGMENT_BYTES or time.monotonic() - self._opened >= SEGMENT_SECONDS or time.time_ns() - self._opened_wall >= SEGMENT_SECONDS * 1_000_000_000:
            self._start_segment()
        try:
            write_all(self._descriptor, payload)  # type: ignore[arg-type]
        except OSError as error:
            with suppress(OSError):
                os.ftruncate(self._descriptor, self._size)  # type: ignore[arg-type]
            raise SpoolFull(f"{self._path}: cannot spool: {error.strerror}") from None
        self._size += len(payload)
        self.next_sequence += 1
        return self.next_sequence - 1

    def _delivered_to_all(self) -> bool:
        """Every sink's saved cursor has passed the segment being appended to."""
        return all((read_cursor(self.directory, sink) or 0) >= self.next_sequence - 1 for sink in self.sinks)

    def _start_segment(self) -> None:
        if self._descriptor is not None:
            self._seal(durable=False)  # the delivery process fsyncs every segment before it sends from it
            self._other_bytes = self._count_bytes()
        path = os.path.join(self.directory, f"{self.next_sequence:016d}.spool")
        opened = time.time_ns()
        header = file_header(SPOOL_MAGIC, {"first": self.next_sequence, "opened": opened})
        descriptor = None
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            write_all(descriptor, header)
        except OSError as error:
            if descriptor is not None:
                os.close(descriptor)
            with suppress(OSError):
                os.unlink(path)
            raise SpoolFull(f"{path}: cannot create a spool segment: {error.strerror}") from None
        self._descriptor, self._path, self._size, self._opened, self._opened_wall = descriptor, path, len(header), time.monotonic(), opened

    def _seal(self, durable: bool = True) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            try:
                if durable:
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
        self._other_bytes += self._size
        self._size = 0
        self._path = ""

    def total_bytes(self) -> int:
        return self._count_bytes() + (self._size if self._descriptor is not None else 0)

    def close(self) -> None:
        """Seal the segment being written; delete every segment all sinks have passed (the
        delivery process has stopped and saved its cursors)."""
        with suppress(OSError):
            self._seal()
        done = min((read_cursor(self.directory, sink) or 0 for sink in self.sinks), default=self.next_sequence - 1)
        paths = segment_paths(self.directory)
        for position, (_, path) in enumerate(paths):
            following = paths[position + 1][0] if position + 1 < len(paths) else self.next_sequence
            if following - 1 <= done:
                with suppress(FileNotFoundError):
                    os.unlink(path)
        with suppress(OSError):
            sync_directory(self.directory)
        os.close(self.lock_descriptor)


class ReadSegment:
    __slots__ = ("first", "path", "opened", "descriptor", "durable", "last", "earliest_expiry")

    def __init__(self, first: int, path: str, opened: int) -> None:
        self.first = first
        self.path = path
        self.opened = opened
        """Wall-clock nanoseconds when the probe started it (from its header)."""
        self.descriptor: int | None = None
        self.durable = 0
        """Bytes fsync'd: what may be sent."""
        self.last: int | None = None
        self.earliest_expiry: int | None = None
        """Both known once the segment is closed and read whole."""


CLOSED_AFTER = (SEGMENT_SECONDS + 5) * 1_000_000_000
"""A segment this old takes no more entries: the probe starts a new one after a minute, by its
monotonic clock and by the wall clock the age here is read on (a clock set forward closes the
segment for both)."""


class SpoolReader:
    """The delivery process's side: durability, each sink's reading and cursor, deletion."""

    def __init__(self, directory: str, sinks: list[str], earlier_runs: int) -> None:
        """`earlier_runs`: the probe's first sequence number this run; segments before it were
        written by an earlier run, and are closed."""
        self.directory = directory
        self.earlier_runs = earlier_runs
        self.segments: list[ReadSegment] = []
        self.refresh()
        first = self.segments[0].first if self.segments else earlier_runs
        # Nothing before `first` is spooled any more: a new sink, or one whose saved cursor lags
        # behind segments already deleted, starts there.
        self.cursors = {sink: max(read_cursor(directory, sink) or 0, first - 1) for sink in sinks}
        self._saved = {sink: read_cursor(directory, sink) for sink in sinks}
        self._saved_at = {sink: 0.0 for sink in sinks}
        for sink in sinks:  # every sink has a cursor file: a sink removed later is known as such
            self.save_cursor(sink)
        self._positions: dict[str, tuple[str, int, int]] = {}
        """Per sink, where its last read ended: segment path, byte offset, last sequence read."""

    def refresh(self) -> None:
        """Take in the segments the probe started since (their directory entries made durable
        with them)."""
        known = {segment.path for segment in self.segments}
        found = False
        for first, path in segment_paths(self.directory):
            if path not in known and (not self.segments or first > self.segments[-1].first):
                try:
                    header, start = read_header(path, read_file(path)[:4096], SPOOL_MAGIC)
                except FileNotFoundError:
                    continue
                if not start or "opened" not in header:
                    break  # created, its header not yet written: taken in at the next look
                self.segments.append(ReadSegment(first, path, header["opened"]))
                found = True
        if found:
            sync_directory(self.directory)

    def grew(self) -> bool:
        """The segment being appended to holds more than was made durable."""
        segment = self.segments[-1] if self.segments else None
        if segment is None or segment.descriptor is None:
            return False
        return os.fstat(segment.descriptor).st_size > segment.durable

    def _closed(self, now: int) -> list[ReadSegment]:
        """The segments the probe appends to no more (a later one exists, or it is over a minute
        old), each read whole once for its last entry and earliest retention deadline."""
        closed = []
        for position, segment in enumerate(self.segments):
            if position + 1 == len(self.segments) and segment.first >= self.earlier_runs and now - segment.opened < CLOSED_AFTER:
                break
            if segment.earliest_expiry is None:
                try:
                    data = read_file(segment.path)
                except FileNotFoundError:
                    continue
                entries = [msgpack.unpackb(payload) for payload in entries_of(segment.path, data)[0]]
                segment.last = max((entry[0] for entry in entries), default=segment.first - 1)
                segment.earliest_expiry = min((entry[2] for entry in entries), default=0)
            closed.append(segment)
        return closed

    def sync(self) -> None:
        """Make what was appended durable (fsync), so that it may be sent."""
        self.refresh()
        for segment in self.segments:
            if segment.descriptor is None:
                try:
                    segment.descriptor = os.open(segment.path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            size = os.fstat(segment.descriptor).st_size
            if size > segment.durable:
                os.fsync(segment.descriptor)
                segment.durable = size

    def read(self, sink: str, limit: int) -> list[SpoolEntry]:
        """Up to `limit` durable entries after the sink's cursor, in order. Each sink reads on
        from where its previous read ended, so an entry is parsed once per sink."""
        after = self.cursors[sink]
        position = self._positions.get(sink)
        entries: list[SpoolEntry] = []
        for segment in self.segments:
            if (segment.last is not None and segment.last <= after) or segment.descriptor is None:
                continue
            resume = position is not None and position[0] == segment.path and position[2] == after
            base = position[1] if resume else 0  # type: ignore[index]
            try:
                data = os.pread(segment.descriptor, max(0, segment.durable - base), base)
            except OSError:
                continue
            if resume:
                payloads, offset = read_frames(data, 0)[0], 0
            else:
                payloads, offset, _ = entries_of(segment.path, data)
            for payload in payloads:
                entry = SpoolEntry(*msgpack.unpackb(payload))
                offset += FRAME.size + len(payload)
                if entry.sequence <= after:
                    continue
                entries.append(entry)
                self._positions[sink] = (segment.path, base + offset, entry.sequence)
                if len(entries) >= limit:
                    return entries
        return entries

    def acknowledge(self, sink: str, sequence: int) -> None:
        """The sink has everything up to `sequence`; closed segments every sink has passed go."""
        self.cursors[sink] = max(self.cursors[sink], sequence)
        self._delete_delivered()
        if time.monotonic() - self._saved_at[sink] >= CURSOR_SAVE_INTERVAL:
            self.save_cursor(sink)

    def _delete_delivered(self) -> None:
        done = min(self.cursors.values())
        for segment in self._closed(time.time_ns()):
            if segment.last is not None and segment.last <= done:
                self._delete(segment)

    def collect(self, now: int) -> None:
        """On every idle second: delete the closed segments every sink has passed, and those
        holding an entry past its retention (the whole segment: its other entries go early,
        which the law allows, rather than one stay late); save the cursors not yet saved."""
        self._delete_delivered()
        for segment in self._closed(time.time_ns()):
            if segment.earliest_expiry is None or segment.earliest_expiry > now:
                continue
            last = segment.last if segment.last is not None else segment.first - 1
            undelivered = sum(max(0, last - max(cursor, segment.first - 1)) for cursor in self.cursors.values())
            if undelivered:
                log.warning(f"{segment.path}: {undelivered} notifications deleted undelivered: the retention of what they hold (or of notifications spooled with them) passed while their sinks could not take them")
            for sink, cursor in self.cursors.items():
                if cursor >= segment.first - 1:  # a sink still behind, in an earlier segment, reads on past the gap
                    self.cursors[sink] = max(cursor, last)
            self._delete(segment)
        for sink in self.cursors:
            self.save_cursor(sink)

    def pending(self, sink: str, last: int) -> int:
        """Entries up to `last` (the probe's latest) that the sink has not acknowledged."""
        return max(0, last - self.cursors[sink])

    def _delete(self, segment: ReadSegment) -> None:
        if segment.descriptor is not None:
            os.close(segment.descriptor)
            segment.descriptor = None
        with suppress(FileNotFoundError):
            os.unlink(segment.path)
        self.segments.remove(segment)

    def save_cursor(self, sink: str) -> None:
        """Best effort: a cursor that cannot be saved (full disk) stays in memory; after a crash
        that sink receives again what it acknowledged since the last save."""
        sequence = self.cursors[sink]
        self._saved_at[sink] = time.monotonic()
        if self._saved.get(sink) == sequence:
            return
        try:
            write_atomically(os.path.join(self.directory, CURSORS, sink), str(sequence).encode())
        except OSError as error:
            log.warning(f"{self.directory}: cursor of sink {sink} not saved ({error.strerror}); after a crash it would receive again up to {sequence - (self._saved.get(sink) or 0)} notifications")
            return
        self._saved[sink] = sequence

    def close(self) -> None:
        for sink in self.cursors:
            self.save_cursor(sink)
        for segment in self.segments:
            if segment.descriptor is not None:
                os.close(segment.descriptor)
                segment.descriptor = None
