"""Per-segment summaries, so that a query opens only the segments that can hold an answer.

A summary holds a segment's time range, its record count by marker, and a Bloom filter of its
event ids, addresses and address networks (/24 for IPv4, /48 for IPv6), about one byte per key.
A sealed segment keeps its summary in an `.idx` file beside it, written when the segment is
sealed and valid only while the segment has the length it records; a segment without a valid
index (the one being written, or one cut by a crash) is summarised by reading it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field

import msgpack
import numpy as np

from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key
from probe.record.events import Event
from probe.store.framing import INDEX_MAGIC, file_header, frame, read_file, read_frames, read_header, write_atomically
from probe.store.records import Record, record_time

BITS_PER_KEY = 10
HASHES = 7
"""About 1 % false positives at ten bits per key."""
ENUMERATED_NETWORKS = 4096
"""A CIDR filter covering more /24 (/48) networks than this reads every segment of the time range."""


def network_key(address: bytes) -> bytes:
    """The filter key of an address's /24 (IPv4) or /48 (IPv6) network."""
    return b"net" + (address[:15] if address[:12] == IPV4_MAPPED_PREFIX else address[:6])


def event_key(event_id: str) -> bytes:
    """The filter key of an event id (its 16 bytes)."""
    try:
        return bytes.fromhex(event_id.replace("-", ""))
    except ValueError:
        return event_id.encode()


def network_keys(text: str) -> list[bytes] | None:
    """Keys that a CIDR's addresses would have put in a filter, or None when there are too many
    to enumerate (every segment must then be read)."""
    network = ipaddress.ip_network(text, strict=False)
    if network.num_addresses == 1:
        return [address_key(str(network.network_address))]
    width = 24 if network.version == 4 else 48
    if network.prefixlen >= width:
        return [network_key(address_key(str(network.network_address)))]
    if network.prefixlen < width - 12:
        return None
    return [network_key(address_key(str(subnet.network_address))) for subnet in network.subnets(new_prefix=width)]


class Bloom:
    """Positions `(h1 + i * h2) mod size` for i < HASHES, from a 16-byte BLAKE2b of the key, with
    h1 and h2 reduced modulo the size first so that numpy (building) and Python (testing) agree."""

    def __init__(self, bits: bytearray) -> None:
        self.bits = bits

    @classmethod
    def of(cls, keys: set[bytes]) -> Bloom:
        size = max(64, (len(keys) * BITS_PER_KEY + 7) // 8 * 8)
        digests = np.frombuffer(b"".join(hashlib.blake2b(key, digest_size=16).digest() for key in keys), dtype="<u8").reshape(-1, 2)
        first, second = digests[:, 0] % np.uint64(size), (digests[:, 1] | np.uint64(1)) % np.uint64(size)
        positions = (first[:, None] + np.arange(HASHES, dtype=np.uint64)[None, :] * second[:, None]) % np.uint64(size)
        bits = np.zeros(size, dtype=bool)
        bits[positions.ravel()] = True
        return cls(bytearray(np.packbits(bits, bitorder="little").tobytes()))

    def may_contain(self, key: bytes) -> bool:
        bits = self.bits
        size = len(bits) * 8
        digest = hashlib.blake2b(key, digest_size=16).digest()
        first, second = int.from_bytes(digest[:8], "little") % size, (int.from_bytes(digest[8:], "little") | 1) % size
        for number in range(HASHES):
            position = (first + number * second) % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
        return True


@dataclass
class SegmentSummary:
    path: str
    record_class: str
    base: int
    """Start of the segment's period (nanoseconds)."""
    length: int = 0
    """Bytes of the segment that the summary covers."""
    records: int = 0
    time_min: int | None = None
    """Earliest and latest record time (what retention counts from)."""
    time_max: int | None = None
    first_min: int | None = None
    """Earliest time any of its events began: with `time_max`, the span a time filter tests."""
    marker_counts: dict[str, int] | None = field(default_factory=dict)
    """Records by marker, as `bundle/marker id`; None until read from a sealed index."""
    events: dict[tuple, Event] | None = field(default_factory=dict)
    """While the segment is open: one revision of each of its events, by identity (their filter
    keys are made when the segment is sealed, once per event rather than per revision); None once
    sealed (then `bloom` answers)."""
    bloom: Bloom | None = None
    index_length: int = 0
    """Bytes of its index file (counted against max_bytes with the segment)."""
    index_details: int = 0
    """Bytes of the index's second frame (records by marker, Bloom filter), read when needed."""
    details_lost: bool = False
    """The index changed or broke after the open: every marker and key may be there."""

    def add(self, record: Record) -> None:
        time = record_time(record)
        self.records += 1
        self.time_min = time if self.time_min is None else min(self.time_min, time)
        self.time_max = time if self.time_max is None else max(self.time_max, time)
        if isinstance(record, Event):
            self.first_min = record.first_seen if self.first_min is None else min(self.first_min, record.first_seen)
            marker = f"{record.marker.bundle}/{record.marker.id}"
            counts = self.markers
            counts[marker] = counts.get(marker, 0) + 1
            if self.events is not None:
                self.events[record.marker.bundle, record.marker.id, record.src, record.src_port, record.dst, record.dst_port, record.proto, record.opened] = record
        else:
            self.first_min = time if self.first_min is None else min(self.first_min, time)

    @property
    def markers(self) -> dict[str, int]:
        if self.marker_counts is None:
            self._load_details()
        return self.marker_counts  # type: ignore[return-value]

    def may_contain(self, key: bytes) -> bool:
        if self.events is not None:
            return key in self.keys()
        if self.marker_counts is None:
            self._load_details()
        return self.details_lost or self.bloom is None or self.bloom.may_contain(key)

    def keys(self) -> set[bytes]:
        """Filter keys of an open segment's events: id, addresses, their networks."""
        assert self.events is not None
        keys = {event.event_digest for event in self.events.values()}
        addresses = {address for event in self.events.values() for address in (event.src, event.dst)}
        return keys | addresses | {network_key(address) for address in addresses}

    def overlaps(self, since: int | None, until: int | None) -> bool:
        if self.time_max is None:
            return False
        return (since is None or self.time_max >= since) and (until is None or (self.first_min or 0) < until)

    def has_marker(self, marker: str) -> bool:
        """`marker`: `bundle/marker id`, or a marker id of any bundle."""
        counts = self.markers
        if self.details_lost or marker in counts:
            return True
        suffix = "/" + marker
        return any(key.endswith(suffix) for key in counts)

    def index_path(self) -> str:
        return self.path[: -len(".seg")] + ".idx"

    def seal(self) -> None:
        """Write the index file (atomically) and answer from the Bloom filter from now on."""
        if self.events is not None:
            self.bloom = Bloom.of(self.keys())
            self.events = None
        details = frame(msgpack.packb({"markers": self.markers, "bloom": bytes(self.bloom.bits) if self.bloom else b""}))
        header = {"class": self.record_class, "base": self.base, "length": self.length, "records": self.records, "time_min": self.time_min, "time_max": self.time_max, "first_min": self.first_min, "details": len(details)}
        data = file_header(INDEX_MAGIC, header) + details
        write_atomically(self.index_path(), data)
        self.index_length, self.index_details = len(data), len(details)

    def _load_details(self) -> None:
        """Read the records by marker and the Bloom filter, which only some queries need. An
        index damaged or replaced since the open answers "maybe" (the segment is then read)."""
        self.marker_counts, self.bloom = {}, None
        try:
            data = read_file(self.index_path())
        except FileNotFoundError:
            self.details_lost = True
            return
        payloads, end = read_frames(data, len(data) - self.index_details, len(data))
        if len(payloads) != 1 or end != len(data) or len(data) != self.index_length:
            self.details_lost = True
            return
        details = msgpack.unpackb(payloads[0])
        self.marker_counts = details["markers"]
        self.bloom = Bloom(bytearray(details["bloom"])) if details["bloom"] else None


INDEX_HEAD = 4096
"""Bytes of an index read at open: its header, well under this (the details follow)."""


def load_summary(path: str, record_class: str, base: int, length: int) -> SegmentSummary | None:
    """The sealed summary of the segment at `path` if its index is intact and covers exactly its
    `length` bytes; None otherwise (the segment must be read). Only the index's header is read."""
    index_path = path[: -len(".seg")] + ".idx"
    try:
        with open(index_path, "rb") as stream:
            head = stream.read(INDEX_HEAD)
            size = os.fstat(stream.fileno()).st_size
    except FileNotFoundError:
        return None
    header, end = read_header(index_path, head, INDEX_MAGIC)
    if not header or header.get("length") != length or header.get("class") != record_class or header.get("base") != base or end + header.get("details", -1) != size:
        return None
    summary = SegmentSummary(path, record_class, base, length, header["records"], header["time_min"], header["time_max"], header["first_min"], None, None, None, size)
    summary.index_details = header["details"]
    return summary


def remove_index(path: str) -> None:
    try:
        os.unlink(path[: -len(".seg")] + ".idx")
    except FileNotFoundError:
        pass
