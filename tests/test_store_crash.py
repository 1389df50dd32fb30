"""Crash safety of the ring store: a writer killed with SIGKILL at random points, again and again,
over one store, never loses an event it acknowledged, and no damaged tail (a torn frame, garbage,
a bad checksum, zeros, a new segment cut inside its header) is ever returned as a record.

Each writer is a process of its own, forked by tests/store_writer.py (which imports the store once,
so that 150 writers cost seconds, not the 0.2 s of Python's start each), so that SIGKILL cuts it
wherever it happens to be: opening and recovering what the previous kill left, appending, fsyncing,
sealing a segment, reopening a sealed one, and the kernel closes its descriptors and releases the
store's lock as after a real crash. It writes each id the store acknowledged to a file this test
created, so a complete line there is a promise the store made before the kill. Every stored record
must equal, field for field, the synthetic event its number denotes: a record decoded from damaged
bytes cannot pass. A small write is never cut by SIGKILL (the kernel finishes it), so the damage a
power cut or a full disk leaves inside a frame is injected between kills: sometimes left for the
next writer to recover, sometimes recovered here, where each truncation is checked against this
file's own reading of the frames, independent of the store's reader.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from random import Random

import msgpack
import pytest
from crc32c import crc32c

from probe.clock import Clock
from probe.record.events import Event
from probe.store.framing import FRAME, MAX_FRAME, PREAMBLE, SEGMENT_MAGIC
from probe.store.index import event_key, load_summary
from probe.store.ring import RingStore, segment_base, segment_name
from tests.store_writer import EPOCH, EVENTS_PER_WRITER, HOUR, NOW, SECTION, event_number, synthetic_event

WRITER = Path(__file__).with_name("store_writer.py")
KILLS = 150
"""Writer processes started and killed over the same store (the requirement is at least 100)."""
SEED = 20260301
DAMAGE_EVERY = 4
"""Every fourth kill, a segment is damaged and left for the next writer to recover."""
CHECK_EVERY = 15
"""Every fifteenth kill, two segments are damaged and the whole store is checked and recovered here."""
EARLY_KILL_SHARE = 0.2
"""Kills within 4 ms of the fork, most while the store opens, takes its lock and recovers; the
others land 1 to 60 ms after the writer said the store was open, while it appends, fsyncs, seals
and reopens segments."""
EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DAMAGES = ("torn frame", "bad checksum", "flipped payload bit", "garbage", "zeros", "oversized length")
"""Tails appended to an existing segment. The other damage, a new segment cut inside its header,
is `NEW_SEGMENT_CUT`."""
NEW_SEGMENT_CUT = "new segment cut in its header"


# Reading segments without the store's reader


@dataclass
class SegmentScan:
    """What a segment file holds by this test's own reading: the length up to the first frame that
    does not check (0 when the header itself is incomplete), the good frames after the header,
    and how many of them are records (the others declare markers and encapsulations)."""

    good_length: int
    frames: list[bytes]
    records: int


def scan_segment(data: bytes) -> SegmentScan:
    """Frames are `u32 length | u32 CRC32C(length bytes + payload) | payload` after a preamble
    (magic, version, header length) and a framed header."""
    if len(data) < PREAMBLE.size:
        return SegmentScan(0, [], 0)
    magic, _, header_length = PREAMBLE.unpack_from(data)
    assert magic == SEGMENT_MAGIC, "no test damage touches a segment's magic"
    position = PREAMBLE.size
    frames = []
    while position + FRAME.size <= len(data):
        length, checksum = FRAME.unpack_from(data, position)
        end = position + FRAME.size + length
        if end > len(data) or crc32c(data[position : position + 4] + data[position + FRAME.size : end]) != checksum:
            break
        frames.append(data[position:end])
        position = end
    if not frames or len(frames[0]) != header_length:
        return SegmentScan(0, [], 0)
    records = sum(1 for whole in frames[1:] if msgpack.unpackb(whole[FRAME.size :])[0] >= 0)
    return SegmentScan(position, frames[1:], records)


def segment_files(directory: Path) -> list[Path]:
    return sorted((directory / "segments" / "events").glob("*.seg"))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under the store's segments, by path: to show that a reader changed nothing."""
    return {str(path): path.read_bytes() for path in sorted((directory / "segments").rglob("*")) if path.is_file()}


# Checking what the store returns


@contextmanager
def writer_running(directory: Path) -> Iterator[None]:
    """Hold the store's lock as a live writing process does, so that a reader opened meanwhile
    only reads (it may not truncate or purge beside a writer)."""
    descriptor = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(descriptor)


def open_store(directory: Path, writable: bool) -> RingStore:
    return RingStore(str(directory), SECTION, Clock(NOW), writable=writable)


def check_record(record: object, path: str) -> int:
    """The number of the synthetic event `record` must be, after checking that it is that event
    in every field and that it sits in the segment of its period."""
    assert isinstance(record, Event), f"{path}: returned {record!r}, not an event"
    number = event_number(record)
    assert 0 <= number < KILLS * EVENTS_PER_WRITER, f"{path}: an event numbered {number}, which no writer wrote"
    assert record == synthetic_event(number), f"{path}: record {record} differs from what writer wrote as number {number}"
    assert Path(path).name == segment_name(record.last_seen - record.last_seen % HOUR), f"{path}: holds an event of another period"
    return number


def read_all(store: RingStore) -> dict[str, list[Event]]:
    """Every record of every segment, checked one by one; each segment's summary (from its index
    or its frames) must agree with what it holds, or a query using it could miss events."""
    contents: dict[str, list[Event]] = {}
    for summary in store.segments():
        records = list(store.read(summary))
        numbers = [check_record(record, summary.path) for record in records]
        assert len(set(numbers)) == len(numbers), f"{summary.path}: an event stored twice"
        assert summary.records == len(records), f"{summary.path}: summary counts {summary.records} records, the segment holds {len(records)}"
        if records:
            assert summary.time_min == min(record.last_seen for record in records) and summary.time_max == max(record.last_seen for record in records)
            assert summary.first_min == min(record.first_seen for record in records)
            unfindable = [record.event_id for record in records if not summary.may_contain(event_key(record.event_id))]
            assert not unfindable, f"{summary.path}: its index would hide {unfindable}"
        contents[summary.path] = records
    assert store.problems == []
    return contents


def stored_ids(contents: dict[str, list[Event]]) -> set[str]:
    numbers = Counter(event_number(record) for records in contents.values() for record in records)
    assert all(count == 1 for count in numbers.values()), "an event stored in two segments"
    return {record.event_id for records in contents.values() for record in records}


def check_store(directory: Path, acknowledged: set[str], recover_as_writer: bool) -> int:
    """Read the store beside a (simulated) writer, which must change nothing, then open it to
    recover, which must cut exactly each damaged tail this test finds, delete each segment left
    with no record, and keep every record. Both reads must return only good records and every
    acknowledged one. The number of records stored."""
    before = snapshot(directory)
    scans = {path: scan_segment(before[str(path)]) for path in segment_files(directory)}
    with writer_running(directory):
        reader = open_store(directory, writable=False)
        assert not reader.maintaining and reader.recovered == []
        beside_writer = read_all(reader)
    assert snapshot(directory) == before, "a reader beside a writer changed the store"
    assert {path: len(records) for path, records in beside_writer.items() if records} == {str(path): scan.records for path, scan in scans.items() if scan.records}
    missing = acknowledged - stored_ids(beside_writer)
    assert not missing, f"{len(missing)} acknowledged events not returned, e.g. {sorted(missing)[:3]}"

    damaged = {str(path): scan for path, scan in scans.items() if scan.good_length < len(before[str(path)])}
    with open_store(directory, writable=recover_as_writer) as store:
        assert store.maintaining
        recovered = read_all(store)
        assert len(store.recovered) == len(damaged), store.recovered
        for path, scan in damaged.items():
            lost = len(before[path]) - scan.good_length
            assert any(message.startswith(f"{path}: ") and f"tail of {lost} bytes truncated at byte {scan.good_length} " in message for message in store.recovered), (path, lost, scan.good_length, store.recovered)
    assert {path: records for path, records in recovered.items() if records} == {path: records for path, records in beside_writer.items() if records}
    for path, scan in scans.items():
        index = path.with_suffix(".idx")
        if scan.records:
            assert path.read_bytes() == before[str(path)][: scan.good_length], f"{path}: not cut to its last good frame"
            summary = load_summary(str(path), "events", segment_base(path.name), scan.good_length)
            assert summary is not None and summary.records == scan.records, f"{path}: no valid index after recovery"
        else:
            assert not path.exists() and not index.exists(), f"{path}: a segment without a record was kept"
    return sum(len(records) for records in recovered.values())


# Damage


def damage_bytes(kind: str, last_frame: bytes, choices: Random) -> bytes:
    """A tail that is not a good frame: a copy of the segment's last frame cut short or with one bit
    of its checksum or payload flipped (a CRC catches every single-bit error), random bytes, the
    zeros a power cut can leave, or a length beyond any frame's."""
    if kind == "torn frame":
        return last_frame[: choices.randint(1, len(last_frame) - 1)]
    if kind in ("bad checksum", "flipped payload bit"):
        damaged = bytearray(last_frame)
        damaged[choices.randint(4, 7) if kind == "bad checksum" else choices.randint(FRAME.size, len(last_frame) - 1)] ^= 1 << choices.randint(0, 7)
        return bytes(damaged)
    if kind == "garbage":
        return choices.randbytes(choices.randint(1, 512))
    if kind == "zeros":
        return bytes(choices.randint(1, 4096))
    assert kind == "oversized length"
    return (MAX_FRAME + 1).to_bytes(4, "little") + choices.randbytes(choices.randint(0, 64))


def append_damage(path: Path, kind: str, choices: Random) -> bytes:
    scan = scan_segment(path.read_bytes())
    damage = damage_bytes(kind, scan.frames[-1], choices)
    with open(path, "ab") as stream:
        stream.write(damage)
    return damage


def create_cut_segment(directory: Path, choices: Random) -> Path:
    """A segment for a period after every existing one, cut inside its header (a crash right after
    creating it): the header of an existing segment, up to a random byte."""
    existing = segment_files(directory)
    source = next(data for data in (path.read_bytes() for path in existing) if scan_segment(data).frames)
    header = source[: PREAMBLE.size + PREAMBLE.unpack_from(source)[2]]
    base = max(segment_base(path.name) for path in existing) + choices.randint(1, 2) * HOUR
    path = existing[0].with_name(segment_name(base))
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, header[: choices.randrange(len(header))])
    finally:
        os.close(descriptor)
    return path


def damage_a_segment(directory: Path, choices: Random) -> None:
    """Damage one segment, then show that a reader returns exactly its good records: never one
    decoded from the damage."""
    kind = choices.choice(DAMAGES + (NEW_SEGMENT_CUT,))
    whole = [path for path in segment_files(directory) if scan_segment(path.read_bytes()).frames]
    if not whole:
        return
    if kind == NEW_SEGMENT_CUT:
        path, good_records = create_cut_segment(directory, choices), 0
    else:
        path = choices.choice(whole)
        good_records = scan_segment(path.read_bytes()).records
        append_damage(path, kind, choices)
    with writer_running(directory):
        reader = open_store(directory, writable=False)
        records = list(reader.read(reader.summaries[str(path)]))
    assert reader.problems == []
    assert len(records) == good_records, f"{path} after {kind}: {len(records)} records returned, {good_records} good"
    for record in records:
        check_record(record, str(path))


# The writer processes


@dataclass
class WriterRun:
    pid: int
    report: Path
    """Where it writes the ids acknowledged."""
    opened: bool = False
    """It said the store was open (recovered, locked): later kills land while it appends."""


class WriterServer:
    """tests/store_writer.py serving: it forks one writer process per run, each killed here."""

    def __init__(self, directory: Path, work: Path) -> None:
        work.mkdir()
        self.work = work
        self.log_path = work / "writers.log"
        environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")  # one thread: safe to fork
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(WRITER), str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=environment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def said(self, run: WriterRun) -> list[str]:
        """The next line of the server or of its writer, as words; notes the writer's `opened`."""
        words = self.process.stdout.readline().decode().split()
        assert words and words[0] in ("started", "opened", "ended"), f"writer server said {words}: {self.log()}"
        if words[0] == "opened":
            run.opened = True
        return words

    def start(self, iteration: int, seed: int) -> WriterRun:
        """Fork writer `iteration` (it is opening the store by the time this returns)."""
        report = self.work / f"{iteration}.ids"
        report.touch(0o600, exist_ok=False)
        self.process.stdin.write(f"run {iteration} {seed} {report}\n".encode())
        self.process.stdin.flush()
        run = WriterRun(0, report)
        while (words := self.said(run))[0] != "started":
            pass
        run.pid = int(words[1])
        return run

    def wait_until_open(self, run: WriterRun) -> None:
        while not run.opened:
            words = self.said(run)
            assert words[0] == "opened", f"writer {run.pid} ended before it opened the store: {self.log()}"

    def kill(self, run: WriterRun) -> list[str]:
        """SIGKILL the writer (the server waits for it, so the pid is still its own); the ids it
        reported as acknowledged, complete lines only."""
        os.kill(run.pid, signal.SIGKILL)
        while (words := self.said(run))[0] != "ended":
            pass
        assert words[1:] == [str(run.pid), str(-signal.SIGKILL)], f"writer {run.pid} ended on its own ({words}) before the kill: {self.log()}"
        ids = [line.decode() for line in run.report.read_bytes().split(b"\n")[:-1]]
        assert all(EVENT_ID.fullmatch(event_id) for event_id in ids), "a malformed line in the writer's report"
        return ids

    def close(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0, self.log()
        self.process.stdout.close()


def test_sigkill_at_random_points_never_loses_an_acknowledged_event_nor_returns_a_corrupt_one(tmp_path: Path) -> None:
    """150 writers over one store, each killed at a random point; every fourth kill a segment is
    damaged for the next writer to recover, every fifteenth the whole store is damaged, read,
    recovered and read again here. Every acknowledged id must be there each time, and every
    record returned must be exactly one the writers wrote."""
    directory = tmp_path / "store"
    choices = Random(SEED)
    acknowledged: set[str] = set()
    runs_with_acknowledgements = 0
    kills_before_open = 0
    checks = 0
    writers = WriterServer(directory, tmp_path / "writers")
    try:
        for iteration in range(KILLS):
            run = writers.start(iteration, choices.randrange(1 << 32))
            if choices.random() < EARLY_KILL_SHARE:
                time.sleep(choices.uniform(0, 0.004))
            else:
                writers.wait_until_open(run)
                time.sleep(choices.uniform(0.001, 0.060))
            reported = writers.kill(run)
            kills_before_open += not run.opened
            assert len(set(reported)) == len(reported) and acknowledged.isdisjoint(reported), "an event acknowledged twice"
            acknowledged.update(reported)
            runs_with_acknowledgements += bool(reported)
            if iteration % CHECK_EVERY == CHECK_EVERY - 1:
                damage_a_segment(directory, choices)
                damage_a_segment(directory, choices)
                check_store(directory, acknowledged, recover_as_writer=checks % 2 == 0)
                checks += 1
            elif iteration % DAMAGE_EVERY == DAMAGE_EVERY - 1:
                damage_a_segment(directory, choices)
    finally:
        writers.close()
    stored = check_store(directory, acknowledged, recover_as_writer=True)
    assert checks == KILLS // CHECK_EVERY
    assert len(acknowledged) >= 1000, f"only {len(acknowledged)} events acknowledged in {KILLS} runs: the writers barely wrote"
    assert stored >= len(acknowledged)
    assert kills_before_open >= 1, "no kill landed while the store was opening and recovering"
    assert runs_with_acknowledgements >= KILLS // 2, f"only {runs_with_acknowledgements} of {KILLS} kills landed after a flush"


# Each damage, in one process and exactly


def write_events(directory: Path, numbers: range) -> dict[str, list[Event]]:
    """Store the synthetic events `numbers` and close (which seals every segment); the events by
    segment path, in the order written."""
    expected: dict[str, list[Event]] = {}
    with open_store(directory, writable=True) as store:
        for number in numbers:
            event = synthetic_event(number)
            store.append(event)
            path = str(directory / "segments" / "events" / segment_name(event.last_seen - event.last_seen % HOUR))
            expected.setdefault(path, []).append(event)
        assert len(store.flush()) == len(numbers)
    return expected


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed with index", "being written"])
@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_tail_is_never_returned_and_is_cut_at_the_next_recovering_open(tmp_path: Path, kind: str, sealed: bool) -> None:
    """A segment sealed with its index (the index no longer matches its length, so the segment is
    read again) or one being written when the process died (no index): a reader beside a writer
    returns exactly the records before the damage and changes nothing; the next writer cuts the
    damage off exactly, indexes the segment again and appends after it."""
    directory = tmp_path / "store"
    expected = write_events(directory, range(100))
    assert len(expected) >= 3
    target = Path(next(iter(expected)))
    if not sealed:
        target.with_suffix(".idx").unlink()
    good = target.read_bytes()
    damage = append_damage(target, kind, Random(kind))
    before = snapshot(directory)

    with writer_running(directory):
        reader = open_store(directory, writable=False)
        assert reader.summaries[str(target)].length == len(good)
        assert read_all(reader) == expected
    assert snapshot(directory) == before

    with open_store(directory, writable=True) as store:
        assert len(store.recovered) == 1
        assert store.recovered[0].startswith(f"{target}: ") and f"tail of {len(damage)} bytes truncated at byte {len(good)} " in store.recovered[0]
        assert read_all(store) == expected
    assert target.read_bytes() == good
    summary = load_summary(str(target), "events", segment_base(target.name), len(good))
    assert summary is not None and summary.records == len(expected[str(target)])

    later = [synthetic_event(EVENTS_PER_WRITER + sequence) for sequence in range(5)]
    assert {event.last_seen - event.last_seen % HOUR for event in later} == {EPOCH}
    with open_store(directory, writable=True) as store:
        assert store.recovered == []
        for event in later:
            store.append(event)
        assert store.flush() == later
    expected[str(target)] += later
    with writer_running(directory):
        assert read_all(open_store(directory, writable=False)) == expected


def test_a_new_segment_cut_anywhere_in_its_header_is_skipped_then_removed(tmp_path: Path) -> None:
    """A crash right after a segment was created leaves it empty or cut inside its header, at any
    byte: a reader opens the store, returns the other segments' records and nothing from that one;
    the next recovering open deletes it, and the period can be written again."""
    directory = tmp_path / "store"
    expected = write_events(directory, range(40))
    source = Path(next(iter(expected))).read_bytes()
    header = source[: PREAMBLE.size + PREAMBLE.unpack_from(source)[2]]
    late = synthetic_event(EVENTS_PER_WRITER * 30)
    cut_segment = directory / "segments" / "events" / segment_name(late.last_seen - late.last_seen % HOUR)
    assert str(cut_segment) not in expected
    for cut in range(len(header)):
        descriptor = os.open(cut_segment, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(descriptor, header[:cut])
        os.close(descriptor)
        with writer_running(directory):
            reader = open_store(directory, writable=False)
            assert list(reader.read(reader.summaries[str(cut_segment)])) == []
            assert {path: records for path, records in read_all(reader).items() if records} == expected, f"cut at byte {cut}"
        assert cut_segment.read_bytes() == header[:cut]
        with open_store(directory, writable=cut % 2 == 0) as store:
            assert len(store.recovered) == (1 if cut else 0)
            assert all(message.startswith(f"{cut_segment}: ") and f"tail of {cut} bytes truncated at byte 0 " in message for message in store.recovered)
            assert read_all(store) == expected
        assert not cut_segment.exists() and not cut_segment.with_suffix(".idx").exists()
    with open_store(directory, writable=True) as store:
        store.append(late)
        assert store.flush() == [late]
    with writer_running(directory):
        assert read_all(open_store(directory, writable=False)) == expected | {str(cut_segment): [late]}
