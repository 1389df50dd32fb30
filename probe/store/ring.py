"""`RingStore`: append-only segments of event records, durable before acknowledged, expiring on time.

Layout of a store directory (0700, files 0600):

    lock                         held by the one process that writes events
    audit.lock                   held briefly by whoever appends an audit record
    segments/<class>/<UTC start>.seg   records of one class whose time falls in one period
    segments/<class>/<UTC start>.idx   its summary, once sealed (index.py)

A record goes to the segment of its class and of the period holding its time (an event's last
packet), so a segment's records expire within one period of each other and a segment is deleted
as soon as its last record expires. Records wait in memory at most `flush_interval`; `flush`
writes them, fsyncs, and only then counts them as stored (acknowledged). A crash can cut only
what was not acknowledged: at the next open each segment that was being written is read back,
its torn or corrupt tail (the first frame whose CRC fails, and all after it) is truncated and
reported. A write that fails (disk full) stores nothing of that flush, counts the records it
drops, truncates the segment back to its acknowledged length, and the next flush tries again.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime, timezone

from probe.clock import NANOSECONDS, Clock
from probe.config import ProbeSection, StoreSection
from probe.errors import StoreError
from probe.record.events import Event
from probe.store.framing import SEGMENT_MAGIC, file_header, frame, frames_resume, header_complete, read_file, read_frames, read_header, sync_directory, write_all
from probe.store.index import SegmentSummary, load_summary, remove_index
from probe.store.records import AuditRecord, BundleRecord, Record, RecordError, SegmentDictionary, decode_records, encode_audit, encode_bundle, encode_event, record_time
from probe.store.retention import AUDIT_CLASS, BUNDLES_CLASS, Retention

log = logging.getLogger("probe.store")

SEGMENTS = "segments"
MAX_PENDING = 65_536
"""Records waiting before a flush is forced, whatever the interval."""
MAX_OPEN_SEGMENTS = 64
MAX_SEGMENT_RECORDS = 65_536
"""A segment this full is sealed and its period goes on in a new part: what a segment's summary
holds in memory until it is sealed stays bounded, whatever the event rate."""
PURGE_INTERVAL = 60.0
"""Seconds of wall time between two purges while events are written."""
SIZE_WARNING = 0.8
LOCK_WAIT = 5.0
"""Seconds a writer waits for the store's lock (a reader holds it while it purges at open)."""


SEGMENT_NAME = re.compile(r"(\d{8}T\d{6}Z)(?:-([1-9]\d{0,8}))?\.seg")
"""`<UTC period start>.seg`, then `<UTC period start>-<part>.seg` when a period fills one."""


def segment_name(base: int, part: int = 0) -> str:
    stamp = datetime.fromtimestamp(base // NANOSECONDS, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}.seg" if part == 0 else f"{stamp}-{part}.seg"


@functools.lru_cache(maxsize=4096)
def segment_path(directory: str, record_class: str, base: int, part: int = 0) -> str:
    """Where a store keeps one part of a class's segment (asked for each record a collector takes)."""
    return os.path.join(directory, SEGMENTS, record_class, segment_name(base, part))


def segment_base(name: str) -> int | None:
    match = SEGMENT_NAME.fullmatch(name)
    if match is None:
        return None
    moment = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * NANOSECONDS


def segment_part(name: str) -> int:
    match = SEGMENT_NAME.fullmatch(name)
    return int(match.group(2) or 0) if match else 0


def check_private(path: str, is_directory: bool) -> None:
    """Refuse a store path that another user could read or write, or that belongs to another user."""
    status = os.stat(path)
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        wanted = "700" if is_directory else "600"
        raise StoreError(f"{path}: mode {mode:04o} lets other users read or write stored events; the law restricts them to the probe: run chmod {wanted} {path}")
    user = os.geteuid()
    if status.st_uid != user:  # root too: files it created would lock the owner out
        owner = _user_name(status.st_uid)
        raise StoreError(f"{path}: owned by {owner} (uid {status.st_uid}), not by this user (uid {user}): run the command as the store's owner, e.g. sudo -u {owner} probe ...")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class SegmentWriter:
    """A segment open for appending: its descriptor, its dictionary of markers and encapsulations,
    and the frames not yet acknowledged."""

    def __init__(self, summary: SegmentSummary, descriptor: int, dictionary: SegmentDictionary, header: bytes, new_entry: bool) -> None:
        self.summary = summary
        self.descriptor = descriptor
        self.dictionary = dictionary
        self.header = header
        """Written with the first frames, while the file is empty."""
        self.new_entry = new_entry
        """The file's directory entry is not yet durable."""
        self.frames: list[bytes] = []
        self.records: list[Record] = []
        self.mark = dictionary.size()

    @property
    def base_microseconds(self) -> int:
        return self.summary.base // 1000

    def write(self) -> int:
        """Write and fsync the pending frames; the bytes written."""
        data = b"".join(self.frames)
        if self.summary.length == 0:
            data = self.header + data
        write_all(self.descriptor, data)
        os.fsync(self.descriptor)
        if self.new_entry:
            sync_directory(os.path.dirname(self.summary.path))
            self.new_entry = False
        return len(data)

    def commit(self, written: int) -> list[Record]:
        self.summary.length += written
        for record in self.records:
            self.summary.add(record)
        records = self.records
        self.frames, self.records = [], []
        self.mark = self.dictionary.size()
        return records

    def drop_pending(self) -> int:
        """Forget the frames a failed write did not store (and the declarations among them); the
        number of records dropped."""
        dropped = len(self.records)
        self.frames, self.records = [], []
        self.dictionary.rollback(self.mark)
        return dropped

    def truncate(self) -> None:
        """Put the file back to its acknowledged length (a failed write may have left part of it)."""
        os.ftruncate(self.descriptor, self.summary.length)

    def close(self) -> None:
        os.close(self.descriptor)


class RingStore:
    """One store directory. `writable`: this process appends events (it takes the store's lock,
    recovers torn tails and purges); otherwise it only reads, and appends audit records."""

    def __init__(self, directory: str, section: StoreSection, clock: Clock | None = None, probe: ProbeSection | None = None, writable: bool = True) -> None:
        self.directory = directory
        self.section = section
        self.clock = clock or Clock()
        self.probe = probe or ProbeSection()
        self.writable = writable
        self.retention = Retention(section)
        self.period = section.segment_period * NANOSECONDS
        self.summaries: dict[str, SegmentSummary] = {}
        self.writers: dict[str, SegmentWriter] = {}
        self._open_writers: dict[tuple[str, int], SegmentWriter] = {}
        """The same writers by (class, period start): what `append` looks up."""
        self._last_part: dict[tuple[str, int], int] = {}
        self.stored = 0
        """Records acknowledged (written and fsync'd) by this process."""
        self.not_stored = 0
        """Records dropped because the disk refused them (full, quota, I/O error)."""
        self.expired_on_arrival = 0
        """Events already past their retention when they were found (an old capture)."""
        self.evicted_segments = 0
        self.evicted_records = 0
        self.purged_segments = 0
        self.recovered: list[str] = []
        """One line per segment whose torn tail was truncated, or that was set aside, at open."""
        self.quarantined: dict[str, tuple[str, int]] = {}
        """Damaged segments set aside (`.corrupt`), by path: their class and period start."""
        self.problems: list[str] = []
        """Segments that could not be read whole (reported, never returned as records)."""
        self._pending = 0
        self._oldest_pending = 0.0
        self._latest = 0
        self._failure: str | None = None
        self._size_warned = False
        self._last_purge = time.monotonic()
        self._lock_descriptor: int | None = None
        self._audit_descriptor: int | None = None
        self._open_directory()
        self.maintaining = self._take_lock(must=writable)
        """This process holds the store's lock: it truncates torn tails and purges at open (a
        reader does too when no writing process is running)."""
        try:
            self._load_segments()
            if self.maintaining:
                self.purge()
        except BaseException:
            self.close()
            raise
        if not writable:
            self._release_lock()

    # Opening

    def _open_directory(self) -> None:
        directory = self.directory
        if not os.path.exists(directory):
            if not self.writable:
                raise StoreError(f"{directory}: no store there (give the directory events were stored in, with --store or [store] directory)")
            try:
                os.makedirs(directory, mode=0o700)
                sync_directory(os.path.dirname(os.path.abspath(directory)))
            except OSError as error:
                raise StoreError(f"{directory}: cannot create the store directory: {error.strerror}") from None
        if not os.path.isdir(directory):
            raise StoreError(f"{directory}: not a directory")
        check_private(directory, True)
        if not os.access(directory, os.R_OK | os.X_OK | (os.W_OK if self.writable else 0)):
            raise StoreError(f"{directory}: permission denied: run the command as the store's owner")
        segments = os.path.join(directory, SEGMENTS)
        if not os.path.isdir(segments) and self.writable:
            os.mkdir(segments, 0o700)
            sync_directory(directory)

    def _take_lock(self, must: bool) -> bool:
        """Take the store's lock; when another process holds it, an error if `must`, else False."""
        path = os.path.join(self.directory, "lock")
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            if must:
                raise StoreError(f"{path}: cannot open the store's lock: {error.strerror}") from None
            return False
        deadline = time.monotonic() + (LOCK_WAIT if must else 0)
        while True:  # a reader holds the lock for the moment of its open: a writer waits that out
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
                os.close(descriptor)
                if must:
                    raise StoreError(f"{self.directory}: the store is in use by another probe process (pid {owner}); it purges and writes on its own, stop it first") from None
                return False
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        self._lock_descriptor = descriptor
        return True

    def _release_lock(self) -> None:
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)
            self._lock_descriptor = None

    def _load_segments(self) -> None:
        root = os.path.join(self.directory, SEGMENTS)
        if not os.path.isdir(root):
            return
        check_private(root, True)
        for record_class in sorted(os.listdir(root)):
            with self._audit_lock() if record_class == AUDIT_CLASS else nullcontext():
                self._load_class(record_class)

    def _load_class(self, record_class: str) -> None:
        """Summaries of one class's segments (audit segments: under the audit lock, since other
        processes append to them)."""
        class_directory = os.path.join(self.directory, SEGMENTS, record_class)
        check_private(class_directory, True)
        for name in sorted(os.listdir(class_directory)):
            path = os.path.join(class_directory, name)
            if name.endswith(".tmp"):  # an index being written when a process died: never valid
                if self.maintaining:
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                continue
            if name.endswith(".idx"):
                continue
            if name.endswith(".corrupt"):
                quarantined_base = segment_base(name[: -len(".corrupt")])
                if quarantined_base is not None:
                    check_private(path, False)
                    self.quarantined[path] = (record_class, quarantined_base)
                    continue
            base = segment_base(name)
            if base is None:
                raise StoreError(f"{path}: not a segment of this store (names are <UTC start>[-<part>].seg); move it out of {self.directory}")
            check_private(path, False)
            summary = self._summary(path, record_class, base)
            if summary is not None:
                self.summaries[path] = summary
                key = (record_class, base)
                self._last_part[key] = max(self._last_part.get(key, 0), segment_part(name))

    def _summary(self, path: str, record_class: str, base: int) -> SegmentSummary | None:
        """A segment's summary: its index when valid, otherwise read from the segment itself (and,
        in the writing process, its torn tail truncated and its index written)."""
        size = os.path.getsize(path)
        summary = load_summary(path, record_class, base, size)
        if summary is not None:
            return summary
        summary = self._read_back(path, record_class, base, SegmentDictionary(), repair=self.maintaining)
        if summary is None or not self.maintaining:
            return summary
        if summary.records == 0:
            self._delete(summary)
            return None
        _write_index(summary)
        return summary

    def _read_back(self, path: str, record_class: str, base: int, dictionary: SegmentDictionary, repair: bool) -> SegmentSummary | None:
        """A segment read whole: its summary, `dictionary` filled with its declarations. With
        `repair` (the caller holds the lock of that class), a torn tail is truncated, and damage
        inside the segment sets it aside (None)."""
        data = read_file(path)
        header, start = read_header(path, data, SEGMENT_MAGIC)
        payloads, end = read_frames(data, start) if header else ([], 0)
        summary = SegmentSummary(path, record_class, base, end)
        try:
            for record in decode_records(payloads, base // 1000, dictionary):
                summary.add(record)
        except (RecordError, ValueError, TypeError, IndexError) as error:
            raise StoreError(f"{path}: a record that passed its CRC cannot be decoded ({error}); the segment was not written by this probe version") from None
        if not repair:
            return summary
        if (not header and header_complete(data)) or (header and end < len(data) and frames_resume(data, end)):
            self._quarantine(path, record_class, base, f"damaged at byte {end}, with good records after the damage: not a torn tail")
            return None
        if end < len(data):
            self._truncate(path, end, len(data) - end, summary.records)
        return summary

    def _quarantine(self, path: str, record_class: str, base: int, reason: str) -> None:
        """Set a damaged segment aside whole (`.corrupt`), never truncating acknowledged records:
        it is no longer read, and is deleted when its period's retention ends."""
        os.replace(path, path + ".corrupt")
        remove_index(path)
        sync_directory(os.path.dirname(path))
        self.quarantined[path + ".corrupt"] = (record_class, base)
        message = f"{path}: {reason}; set aside as {os.path.basename(path)}.corrupt for inspection (deleted when its retention ends)"
        self.recovered.append(message)
        log.error(message)

    def _truncate(self, path: str, end: int, lost: int, kept: int) -> None:
        descriptor = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(descriptor, end)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        message = f"{path}: torn or corrupt tail of {lost} bytes truncated at byte {end} ({kept} records before it intact; none of them was lost)"
        self.recovered.append(message)
        log.warning(message)

    # Appending

    def append(self, event: Event) -> str | None:
        """Queue an event revision; it is stored (acknowledged) at the next flush. The segment part
        it went to (None: expired on arrival, or no segment could be opened)."""
        record_class = self.retention.class_of(event.marker)
        time_of = event.last_seen
        if time_of <= self.retention.cutoff(record_class, self.clock.now()):
            self.expired_on_arrival += 1
            return None
        writer = self._open_writers.get((record_class, time_of - time_of % self.period)) or self._writer(record_class, time_of)
        if writer is None:
            return None
        writer.frames += [frame(payload) for payload in encode_event(event, writer.dictionary, writer.base_microseconds)]
        self._queued(writer, event, time_of)
        return writer.summary.path

    def append_bundle(self, record: BundleRecord) -> None:
        """Queue a change of the active marker set (history of which bundle versions were in force)."""
        writer = self._writer(BUNDLES_CLASS, record.time)
        if writer is not None:
            writer.frames.append(frame(encode_bundle(record)))
            self._queued(writer, record, record.time)

    def _queued(self, writer: SegmentWriter, record: Record, time_of: int) -> None:
        writer.records.append(record)
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending += 1
        if time_of > self._latest:
            self._latest = time_of
        if self._pending >= MAX_PENDING:
            self.flush()
        if writer.summary.records + len(writer.records) >= MAX_SEGMENT_RECORDS and writer.summary.path in self.writers:
            self.flush()
            if writer.summary.path in self.writers:
                self._seal(writer)

    def flush_if_due(self) -> list[Record]:
        """Flush when the oldest waiting record has waited `flush_interval`; purge every minute."""
        if self._pending and time.monotonic() - self._oldest_pending >= self.section.flush_interval:
            return self.flush()
        if time.monotonic() - self._last_purge >= PURGE_INTERVAL:
            self.purge()
        return []

    def flush(self) -> list[Record]:
        """Write and fsync every waiting record; the records acknowledged (durable) by this call.
        A disk that refuses the write drops that segment's waiting records, counted in
        `not_stored`; what was acknowledged before is intact."""
        acknowledged: list[Record] = []
        for writer in list(self.writers.values()):
            if not writer.records:
                continue
            try:
                written = writer.write()
            except OSError as error:
                self._write_failed(writer, error)
                continue
            acknowledged += writer.commit(written)
        self._pending = 0
        if acknowledged:
            self.stored += len(acknowledged)
            if self._failure is not None:
                log.warning(f"{self.directory}: storing again ({self.not_stored} records could not be stored meanwhile)")
                self._failure = None
            self._seal_behind()
            self._check_size()
        return acknowledged

    def _write_failed(self, writer: SegmentWriter, error: OSError) -> None:
        dropped = writer.drop_pending()
        try:
            writer.truncate()
        except OSError:  # cannot even truncate: reopen (and recover) it at the next record
            self._forget(writer)
        self.not_stored += dropped
        self._report_failure(writer.summary.path, error)

    def _report_failure(self, path: str, error: OSError) -> None:
        """Log a storage failure once per outage (the count goes on in `not_stored`)."""
        reason = error.strerror or str(error)
        if self._failure != reason:
            log.error(f"{path}: cannot store events: {reason}; matching goes on, {self.not_stored} records not stored so far (counted until storing resumes)")
        self._failure = reason

    def _writer(self, record_class: str, when: int) -> SegmentWriter | None:
        """The open segment of this class and of the period of `when`: its last part, or a new
        part when that one is full."""
        base = when - when % self.period
        writer = self._open_writers.get((record_class, base))
        if writer is not None:
            return writer
        part = self._last_part.get((record_class, base), 0)
        path = segment_path(self.directory, record_class, base, part)
        summary = self.summaries.get(path)
        if summary is not None and summary.records >= MAX_SEGMENT_RECORDS:
            part += 1
            path = segment_path(self.directory, record_class, base, part)
        self._last_part[record_class, base] = part
        try:
            writer = self._open_writer(path, record_class, base)
        except OSError as error:
            self.not_stored += 1
            self._report_failure(path, error)
            return None
        if len(self.writers) >= MAX_OPEN_SEGMENTS:
            self.flush()
            self._seal(min(self.writers.values(), key=lambda candidate: candidate.summary.base))
        self.writers[path] = writer
        self._open_writers[record_class, base] = writer
        return writer

    def _open_writer(self, path: str, record_class: str, base: int) -> SegmentWriter:
        """Open a segment for appending: a new file, or one sealed earlier (read back first, so
        that its dictionary goes on and its summary stays whole)."""
        class_directory = os.path.dirname(path)
        if not os.path.isdir(class_directory):
            os.mkdir(class_directory, 0o700)
            sync_directory(os.path.dirname(class_directory))
        dictionary = SegmentDictionary()
        header = file_header(SEGMENT_MAGIC, {"class": record_class, "base": base, "period": self.section.segment_period, "probe": self.probe.name, "site": self.probe.site})
        existing = self.summaries.get(path)
        if existing is None and not os.path.exists(path):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            summary = SegmentSummary(path, record_class, base)
            self.summaries[path] = summary
            return SegmentWriter(summary, descriptor, dictionary, header, True)
        summary = self._read_back(path, record_class, base, dictionary, repair=True)
        if summary is None:  # set aside: the period starts again in a new file
            self.summaries.pop(path, None)
            return self._open_writer(path, record_class, base)
        remove_index(path)
        self.summaries[path] = summary
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        return SegmentWriter(summary, descriptor, dictionary, header, False)

    def _seal_behind(self) -> None:
        """Seal the segments two periods behind the latest record: flows end within their idle
        timeout, so later records for those periods are rare (a sealed segment reopens if one comes)."""
        for writer in list(self.writers.values()):
            if writer.summary.base + 2 * self.period <= self._latest and not writer.records:
                self._seal(writer)

    def _forget(self, writer: SegmentWriter) -> None:
        del self.writers[writer.summary.path]
        del self._open_writers[writer.summary.record_class, writer.summary.base]
        writer.close()

    def _seal(self, writer: SegmentWriter) -> None:
        """Close a segment and write its index. An index that cannot be written (disk full) costs
        only speed: the next open reads the segment instead."""
        self._forget(writer)
        if writer.summary.records:
            _write_index(writer.summary)

    def close(self) -> None:
        """Flush, seal every open segment, release the lock."""
        if self.writers:
            self.flush()
            for writer in list(self.writers.values()):
                self._seal(writer)
        self._release_lock()

    # Expiry and size

    def purge(self, now: int | None = None) -> list[SegmentSummary]:
        """Delete every segment whose records have all expired; the segments deleted. Audit
        segments, which other processes append to, are read again and deleted under their lock."""
        now = self.clock.now() if now is None else now
        self._last_purge = time.monotonic()
        deleted = []
        with self._audit_lock():
            if os.path.isdir(os.path.join(self.directory, SEGMENTS, AUDIT_CLASS)):
                for path in [path for path, summary in self.summaries.items() if summary.record_class == AUDIT_CLASS]:
                    del self.summaries[path]
                self._load_class(AUDIT_CLASS)
            for summary in list(self.summaries.values()):
                latest = summary.time_max
                writer = self.writers.get(summary.path)
                if writer is not None and writer.records:  # waiting records count too
                    latest = max([record_time(record) for record in writer.records] + ([latest] if latest is not None else []))
                if latest is not None and self.retention.expired(summary.record_class, latest, now):
                    self._delete(summary)
                    deleted.append(summary)
            for path, (record_class, base) in list(self.quarantined.items()):
                if self.retention.expired(record_class, base + self.period - 1, now):
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                    del self.quarantined[path]
        self.purged_segments += len(deleted)
        return deleted

    def _delete(self, summary: SegmentSummary) -> None:
        writer = self.writers.get(summary.path)
        if writer is not None:  # expired while open, waiting records included (or evicted: counted there)
            self._forget(writer)
        with self._audit_lock() if summary.record_class == AUDIT_CLASS else nullcontext():
            for path in (summary.path, summary.index_path()):
                with suppress(FileNotFoundError):
                    os.unlink(path)
        sync_directory(os.path.dirname(summary.path))
        self.summaries.pop(summary.path, None)

    def total_bytes(self) -> int:
        return sum(summary.length + summary.index_length for summary in self.summaries.values())

    def _check_size(self) -> None:
        """Warn at 80 % of `max_bytes`; beyond it, evict the oldest sealed segments, each logged."""
        limit = self.section.max_bytes
        total = self.total_bytes()
        if total >= SIZE_WARNING * limit and not self._size_warned:
            log.warning(f"{self.directory}: the store holds {total} bytes, {total * 100 // limit} % of max_bytes ({limit}); the oldest segments will be evicted at the cap")
            self._size_warned = True
        elif total < SIZE_WARNING * limit:
            self._size_warned = False
        if total <= limit:
            return
        for summary in sorted(self.summaries.values(), key=lambda candidate: (candidate.time_min or 0, candidate.path)):
            if total <= limit:
                break
            if summary.path in self.writers or summary.record_class == AUDIT_CLASS:
                continue
            total -= summary.length + summary.index_length
            self._delete(summary)
            self.evicted_segments += 1
            self.evicted_records += summary.records
            log.warning(f"{summary.path}: evicted before its retention ended to stay under max_bytes ({limit}): {summary.records} records from {_moment(summary.time_min)} to {_moment(summary.time_max)}")

    # Reading

    def segments_of(self, record_class: str, base: int) -> list[SegmentSummary]:
        """The parts of one class's segment for the period starting at `base`: the only ones that
        can hold a record of that class and period (found without going through every segment)."""
        parts = (self.summaries.get(segment_path(self.directory, record_class, base, part)) for part in range(self._last_part.get((record_class, base), 0) + 1))
        return [summary for summary in parts if summary is not None]

    def segments(self, record_class: str | None = None) -> list[SegmentSummary]:
        return sorted((summary for summary in self.summaries.values() if record_class is None or summary.record_class == record_class), key=lambda summary: (summary.base, summary.record_class, segment_part(os.path.basename(summary.path))))

    def read(self, summary: SegmentSummary, now: int | None = None, wanted: Callable[[list, SegmentDictionary], bool] | None = None) -> Iterator[Record]:
        """The unexpired records of one segment, in the order they were written (the event rows
        `wanted` accepts, when given). A frame that does not check ends the segment for this read
        (reported in `problems`), and nothing after it is returned."""
        now = self.clock.now() if now is None else now
        try:
            data = read_file(summary.path)
        except FileNotFoundError:  # purged meanwhile by the writing process
            return
        header, start = read_header(summary.path, data, SEGMENT_MAGIC)
        if not header:
            if summary.length:
                self.problems.append(f"{summary.path}: its header no longer checks: none of its records are returned")
            return
        payloads, end = read_frames(data, start)
        if end < summary.length:  # bytes known good when summarised no longer check
            self.problems.append(f"{summary.path}: unreadable from byte {end} (CRC does not check): the records after it are not returned")
        cutoff = self.retention.cutoff(summary.record_class, now)
        for record in decode_records(payloads, summary.base // 1000, wanted=wanted):
            if record_time(record) > cutoff:
                yield record

    def append_audit(self, record: AuditRecord) -> None:
        """Append one audit record, durably, before the caller shows anything it audited. Works
        beside the writing process: audit segments have a lock of their own."""
        with self._audit_lock():
            base = record.time - record.time % self.period
            path = segment_path(self.directory, AUDIT_CLASS, base)
            try:
                writer = self._open_writer(path, AUDIT_CLASS, base)
            except OSError as error:
                raise StoreError(f"{path}: cannot write the audit record, so nothing is shown: {error.strerror}") from None
            writer.frames.append(frame(encode_audit(record)))
            writer.records.append(record)
            try:
                writer.commit(writer.write())
            except OSError as error:
                writer.drop_pending()
                with suppress(OSError):
                    writer.truncate()
                raise StoreError(f"{path}: cannot write the audit record, so nothing is shown: {error.strerror}") from None
            finally:
                writer.close()
            _write_index(writer.summary)

    @contextmanager
    def _audit_lock(self) -> Iterator[None]:
        """Held while audit segments are appended to, recovered or deleted; re-entrant within
        this process (a second flock on another descriptor would wait for the first)."""
        if self._audit_descriptor is not None:
            yield
            return
        descriptor = os.open(os.path.join(self.directory, "audit.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self._audit_descriptor = descriptor
            yield
        finally:
            self._audit_descriptor = None
            os.close(descriptor)

    def __enter__(self) -> RingStore:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def _write_index(summary: SegmentSummary) -> None:
    """Seal a summary into its index. An index that cannot be written (disk full) costs only
    speed: the next open reads the segment instead."""
    try:
        summary.seal()
    except OSError as error:
        log.warning(f"{summary.index_path()}: index not written ({error.strerror}); the segment will be read whole at the next open")


def _moment(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp // NANOSECONDS, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

