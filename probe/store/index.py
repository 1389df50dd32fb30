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

from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key
from probe.record.events import Event
from probe.store.framing import INDEX_MAGIC, file_header, read_file, read_header, write_atomically
from probe.store.records import Record, record_time

BITS_PER_KEY = 10
HASHES = 7
"""About 1 % false positives at ten bits per key."""
ENUMERATED_NETWORKS = 4096
"""A CIDR filter covering more /24 (/48) networks than this reads every segment of the time range."""


def address_keys(address: bytes) -> tuple[bytes, bytes]:
    """The filter keys of an address: itself, and its /24 (IPv4) or /48 (IPv6) network."""
    network = address[:15] if address[:12] == IPV4_MAPPED_PREFIX else address[:6]
    return address, b"net" + network


def network_keys(text: str) -> list[bytes] | None:
    """Keys that a CIDR's addresses would have put in a filter, or None when there are too many
    to enumerate (every segment must then be read)."""
    network = ipaddress.ip_network(text, strict=False)
    if network.num_addresses == 1:
        return [address_key(str(network.network_address))]
    width = 24 if network.version == 4 else 48
    if network.prefixlen >= width:
        return [address_keys(address_key(str(network.network_address)))[1]]
    if network.prefixlen < width - 12:
        return None
    return [address_keys(address_key(str(subnet.network_address)))[1] for subnet in network.subnets(new_prefix=width)]


class Bloom:
    def __init__(self, bits: bytearray) -> None:
        self.bits = bits

    @classmethod
    def of(cls, keys: set[bytes]) -> Bloom:
        size = max(64, len(keys) * BITS_PER_KEY)
        bloom = cls(bytearray((size + 7) // 8))
        for key in keys:
            for position in bloom._positions(key):
                bloom.bits[position >> 3] |= 1 << (position & 7)
        return bloom

    def may_contain(self, key: bytes) -> bool:
        bits = self.bits
        return all(bits[position >> 3] & (1 << (position & 7)) for position in self._positions(key))

    def _positions(self, key: bytes) -> list[int]:
        digest = hashlib.blake2b(key, digest_size=16).digest()
        first, second = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        size = len(self.bits) * 8
        return [(first + number * second) % size for number in range(HASHES)]


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
    markers: dict[str, int] = field(default_factory=dict)
    """Records by marker, as `bundle/marker id`."""
    keys: set[bytes] | None = field(default_factory=set)
    """Filter keys while the segment is open; None once sealed (then `bloom` answers)."""
    bloom: Bloom | None = None
    index_length: int = 0
    """Bytes of its index file (counted against max_bytes with the segment)."""

    def add(self, record: Record) -> None:
        time = record_time(record)
        self.records += 1
        self.time_min = time if self.time_min is None else min(self.time_min, time)
        self.time_max = time if self.time_max is None else max(self.time_max, time)
        start = record.first_seen if isinstance(record, Event) else time
        self.first_min = start if self.first_min is None else min(self.first_min, start)
        if isinstance(record, Event):
            marker = f"{record.marker.bundle}/{record.marker.id}"
            self.markers[marker] = self.markers.get(marker, 0) + 1
            if self.keys is not None:
                self.keys.add(record.event_id.encode())
                self.keys.update(address_keys(record.src))
                self.keys.update(address_keys(record.dst))

    def may_contain(self, key: bytes) -> bool:
        if self.keys is not None:
            return key in self.keys
        return self.bloom is None or self.bloom.may_contain(key)

    def overlaps(self, since: int | None, until: int | None) -> bool:
        if self.time_max is None:
            return False
        return (since is None or self.time_max >= since) and (until is None or (self.first_min or 0) < until)

    def has_marker(self, marker_id: str) -> bool:
        return any(key.split("/", 1)[1] == marker_id or key == marker_id for key in self.markers)

    def index_path(self) -> str:
        return self.path[: -len(".seg")] + ".idx"

    def seal(self) -> None:
        """Write the index file (atomically) and answer from the Bloom filter from now on."""
        if self.keys is not None:
            self.bloom = Bloom.of(self.keys)
            self.keys = None
        header = {"class": self.record_class, "base": self.base, "length": self.length, "records": self.records, "time_min": self.time_min, "time_max": self.time_max, "first_min": self.first_min, "markers": self.markers, "bloom": bytes(self.bloom.bits) if self.bloom else b""}
        data = file_header(INDEX_MAGIC, header)
        write_atomically(self.index_path(), data)
        self.index_length = len(data)


def load_summary(path: str, record_class: str, base: int, length: int) -> SegmentSummary | None:
    """The sealed summary of the segment at `path` if its index is intact and covers exactly its
    `length` bytes; None otherwise (the segment must be read)."""
    index_path = path[: -len(".seg")] + ".idx"
    try:
        data = read_file(index_path)
    except FileNotFoundError:
        return None
    header, end = read_header(index_path, data, INDEX_MAGIC)
    if not header or end != len(data) or header.get("length") != length or header.get("class") != record_class or header.get("base") != base:
        return None
    summary = SegmentSummary(path, record_class, base, length, header["records"], header["time_min"], header["time_max"], header["first_min"], header["markers"], None, Bloom(bytearray(header["bloom"])) if header["bloom"] else None, len(data))
    return summary


def remove_index(path: str) -> None:
    try:
        os.unlink(path[: -len(".seg")] + ".idx")
    except FileNotFoundError:
        pass

