"""What a store record may hold: the allowlist, enforced where records are encoded.

An event record is a msgpack array of exactly the `Event` fields (network metadata, counters,
the marker's identity, encapsulation ids), each of a fixed type; anything else, a field the
allowlist does not name or a value of the wrong kind, is refused before it reaches a file. Markers
and encapsulations are declared once per segment and referred to by number, and times are
microseconds relative to the segment's start, which keeps an event near 50 bytes; an IPv4 address
is stored as an integer (5 bytes packed), an IPv6 address as its 16 bytes. Ids are not
stored: they derive from the stored fields (`Event.event_id`).

The two other record classes have a fixed shape too: the history of bundle versions (`bundles`)
and the audit log (`audit`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import msgpack

from probe.bundles.values import PATTERN_TYPES
from probe.config import SUBJECT_TOKEN
from probe.decode.packet import IPV4_MAPPED_PREFIX
from probe.match.markers import Marker
from probe.record.events import Event

if TYPE_CHECKING:
    from probe.bundles.library import LoadReport

KIND_MARKER = -1
KIND_ENCAPSULATION = -2
KIND_BUNDLE = -3
KIND_AUDIT = -4
KIND_OBSERVER = -5
"""An event record starts with its revision (>= 0); every other record with one of these."""

MATCHED_ON = ("ip.src", "ip.dst", "dns.query", "tls.sni", "http.host", "http.url", "tls.ja3", "tls.ja4", "tls.cert_sha256", "payload", "quic.sni", "dns.answer", "yara")
"""Where a marker can be seen, by code; `flags` holds the code shifted left by one. Codes are
kept forever (stored records use them): new places are appended."""
MATCHED_ON_CODES = {name: code for code, name in enumerate(MATCHED_ON)}
ENCAPSULATION_FIELDS = {"type": str, "id": int, "label": int, "src": str, "dst": str, "key": int, "vni": int, "version": int, "session": int}
"""Layer fields an event may record: tunnel endpoints and ids, never anything from the payload."""
ENCAPSULATION_TYPES = frozenset({"vlan", "mpls", "gre", "erspan", "vxlan", "geneve", "ipip", "6in4", "4in6", "ip6ip6"})
MARKER_FIELDS = ("id", "type", "value", "bundle", "bundle_version", "severity", "reference", "tlp", "name", "issuer", "retention_class")
"""The marker's own identity as supplied by its issuer; the value of a pattern type is left out."""
BUNDLE_ACTIONS = ("activated", "refused", "expired")
AUDIT_FILTERS = frozenset({"since", "until", "marker", "ip", "prefix", "event", "format", "for_authority", "now"})
NO_ENCAPSULATION_REFERENCE = 0
pack = msgpack.Packer().pack
"""One packer for every event row (`msgpack.packb` builds one per call)."""


class BundleRecord(NamedTuple):
    """A change of the active marker set: a version activated, a file refused, a version expired."""

    time: int
    action: str
    issuer: str
    bundle: str
    version: int
    digest: str
    reason: str


def bundle_records(report: LoadReport, now: int) -> list[BundleRecord]:
    """The history a load leaves: each bundle version activated, each file refused with its
    reason, so that any event can be tied to the markers in force."""
    records = [BundleRecord(now, "activated", bundle.issuer, bundle.id, bundle.version, bundle.digest, "") for bundle in report.accepted]
    return records + [BundleRecord(now, "refused", "", "", 0, "", reason) for reason in report.refused]


class AuditRecord(NamedTuple):
    """Who read the store, what for, and how much they got."""

    time: int
    user: str
    uid: int
    command: str
    filters: dict[str, str]
    purpose: str
    returned: int


class RecordError(ValueError):
    """A record the allowlist refuses (a programming error: nothing reaches a file)."""


class SegmentDictionary:
    """The markers, encapsulations and (on a collector) observing probes a segment's events
    refer to by number. Each is declared by a record of its own before its first use, so a
    segment read from its start, or cut at any frame, resolves every reference it holds."""

    def __init__(self) -> None:
        self.markers: dict[Marker, int] = {}
        self.encapsulations: dict[bytes, int] = {}
        self.observers: dict[tuple[str, str], int] = {}
        self.marker_list: list[Marker] = []
        self.encapsulation_list: list[list[dict]] = [[]]
        self.observer_list: list[tuple[str, str]] = []

    def size(self) -> tuple[int, int, int]:
        return len(self.marker_list), len(self.encapsulation_list), len(self.observer_list)

    def rollback(self, size: tuple[int, int, int]) -> None:
        """Forget declarations written after `size` (their frames were not stored)."""
        markers, encapsulations, observers = size
        for marker in self.marker_list[markers:]:
            del self.markers[marker]
        del self.marker_list[markers:]
        for packed, number in list(self.encapsulations.items()):
            if number >= encapsulations:
                del self.encapsulations[packed]
        del self.encapsulation_list[encapsulations:]
        for observer in self.observer_list[observers:]:
            del self.observers[observer]
        del self.observer_list[observers:]

    def declare(self, record: list) -> None:
        """Take a declaration read back from a segment."""
        kind, number, content = record
        if kind == KIND_MARKER:
            marker = _declared_marker(tuple(content))
            if number != len(self.marker_list):
                raise RecordError(f"marker declared as number {number}, expected {len(self.marker_list)}")
            self.markers[marker] = number
            self.marker_list.append(marker)
        elif kind == KIND_OBSERVER:
            if number != len(self.observer_list):
                raise RecordError(f"observer declared as number {number}, expected {len(self.observer_list)}")
            observer = (str(content[0]), str(content[1]))
            self.observers[observer] = number
            self.observer_list.append(observer)
        else:
            if number != len(self.encapsulation_list):
                raise RecordError(f"encapsulation declared as number {number}, expected {len(self.encapsulation_list)}")
            self.encapsulations[msgpack.packb(content)] = number
            self.encapsulation_list.append(content)


def encode_event(event: Event, dictionary: SegmentDictionary, base: int) -> list[bytes]:
    """The msgpack payloads for `event` in a segment starting at `base` (microseconds): the
    declarations it needs first, then the event. Every field is checked and every payload made
    before the dictionary changes, so a refused event leaves the segment as it was."""
    revision, timestamp, proto, src, src_port, dst, dst_port, to_server, matched_on, marker, encapsulation, opened, first_seen, last_seen, packets, byte_count, hits, observer = event
    where = MATCHED_ON_CODES.get(matched_on)
    if where is None:
        raise RecordError(f"matched_on {matched_on!r} is not in the allowlist")
    try:  # `|` takes integers only: a float, text or None is refused here, a bool just below
        if (revision | proto | src_port | dst_port | packets | byte_count | hits) < 0 or (src_port | dst_port) > 0xFFFF or proto > 0xFF or (timestamp | opened | first_seen | last_seen) < 0:
            raise RecordError(f"a count, port or time is out of range: {(revision, proto, src_port, dst_port, packets, byte_count, hits)}")
    except TypeError:
        raise RecordError("an event's counts, ports and times must be integers") from None
    if bool in {type(revision), type(proto), type(src_port), type(dst_port), type(packets), type(byte_count), type(hits), type(timestamp), type(opened), type(first_seen), type(last_seen)}:
        raise RecordError("an event's counts, ports and times must be integers, not true or false")
    first = first_seen // 1000
    timestamp //= 1000
    if type(src) is not bytes or type(dst) is not bytes or len(src) != 16 or len(dst) != 16:
        raise RecordError("expected 16-byte addresses")
    if observer is not None and not (type(observer) is tuple and len(observer) == 2 and all(type(text) is str and SUBJECT_TOKEN.fullmatch(text) for text in observer)):
        raise RecordError(f"an event's observer is a probe's (name, site), each 1-64 letters, digits, '-' or '_', not {observer!r:.80}")
    row = [
        revision, timestamp - base, proto, int.from_bytes(src[12:], "big") if src[:12] == IPV4_MAPPED_PREFIX else src, src_port,
        int.from_bytes(dst[12:], "big") if dst[:12] == IPV4_MAPPED_PREFIX else dst, dst_port,
        (where << 1) | bool(to_server), None, NO_ENCAPSULATION_REFERENCE, timestamp - first, last_seen // 1000 - first,
        packets, byte_count, hits,
    ]
    opened //= 1000
    if opened != first or observer is not None:
        row.append(opened - first)
    try:
        packed = msgpack.packb([_checked_layer(layer) for layer in encapsulation]) if encapsulation else None
    except OverflowError:
        raise RecordError("an encapsulation id is too large to store") from None
    declarations = []
    marker_number = dictionary.markers.get(marker)
    new_marker = marker_number is None
    if new_marker:
        marker_number = len(dictionary.marker_list)
        declarations.append(msgpack.packb([KIND_MARKER, marker_number, encode_marker(marker)]))
    row[8] = marker_number
    new_encapsulation = new_observer = False
    encapsulation_number = observer_number = 0
    if packed is not None:
        encapsulation_number = dictionary.encapsulations.get(packed)
        new_encapsulation = encapsulation_number is None
        if new_encapsulation:
            encapsulation_number = len(dictionary.encapsulation_list)
            declarations.append(msgpack.packb([KIND_ENCAPSULATION, encapsulation_number, msgpack.unpackb(packed)]))
        row[9] = encapsulation_number
    if observer is not None:
        observer_number = dictionary.observers.get(observer)
        new_observer = observer_number is None
        if new_observer:
            observer_number = len(dictionary.observer_list)
            declarations.append(msgpack.packb([KIND_OBSERVER, observer_number, list(observer)]))
        row.append(observer_number)
    try:
        declarations.append(pack(row))
    except OverflowError:
        raise RecordError(f"a count or time is too large to store: {(revision, packets, byte_count, hits, timestamp, last_seen)}") from None
    # Only now, with every payload made, does the dictionary change.
    if new_marker:
        dictionary.markers[marker] = marker_number
        dictionary.marker_list.append(marker)
    if new_encapsulation:
        dictionary.encapsulations[packed] = encapsulation_number
        dictionary.encapsulation_list.append(encapsulation)
    if new_observer:
        dictionary.observers[observer] = observer_number
        dictionary.observer_list.append(observer)
    return declarations


def decode_event(row: list, dictionary: SegmentDictionary, base: int) -> Event:
    revision, timestamp, proto, src, src_port, dst, dst_port, flags, marker_number, encapsulation_number, back, duration, packets, byte_count, hits = row[:15]
    timestamp += base
    first = timestamp - back
    opened = first + row[15] if len(row) > 15 else first
    return Event(
        revision, timestamp * 1000, proto, _address_bytes(src), src_port, _address_bytes(dst), dst_port, bool(flags & 1), MATCHED_ON[flags >> 1],
        dictionary.marker_list[marker_number], dictionary.encapsulation_list[encapsulation_number], opened * 1000, first * 1000, (first + duration) * 1000,
        packets, byte_count, hits, dictionary.observer_list[row[16]] if len(row) > 16 else None,
    )


def encode_marker(marker: Marker) -> list:
    value = "" if marker.type in PATTERN_TYPES else marker.value
    fields = [marker.id, marker.type, value, marker.bundle, marker.bundle_version, marker.severity, marker.reference, marker.tlp, marker.name, marker.issuer, marker.retention_class]
    for name, field in zip(MARKER_FIELDS, fields):
        if field is not None and not isinstance(field, int if name == "bundle_version" else str):
            raise RecordError(f"marker field {name} holds {type(field).__name__}")
    return fields


def decode_marker(fields: list) -> Marker:
    values = dict(zip(MARKER_FIELDS, fields))
    return Marker(**values)


@functools.lru_cache(maxsize=65536)
def _declared_marker(fields: tuple) -> Marker:
    """Every segment declares the markers it uses: a query reading many segments decodes each
    marker once."""
    return decode_marker(list(fields))


def encode_bundle(record: BundleRecord) -> bytes:
    if record.action not in BUNDLE_ACTIONS:
        raise RecordError(f"bundle action {record.action!r} is not one of {BUNDLE_ACTIONS}")
    return msgpack.packb([KIND_BUNDLE, record.time // 1000, record.action, record.issuer, record.bundle, _count(record.version), record.digest, record.reason])


def encode_audit(record: AuditRecord) -> bytes:
    unknown = set(record.filters) - AUDIT_FILTERS
    if unknown:
        raise RecordError(f"audit filters {sorted(unknown)} are not in the allowlist")
    return msgpack.packb([KIND_AUDIT, record.time // 1000, record.user, _count(record.uid), record.command, {key: str(value) for key, value in record.filters.items()}, record.purpose, _count(record.returned)])


Record = Event | BundleRecord | AuditRecord


def decode_records(payloads: list[bytes], base: int, dictionary: SegmentDictionary | None = None, wanted: Callable[[list, SegmentDictionary], bool] | None = None) -> Iterator[Record]:
    """The records of a segment's frames, in order; declarations update `dictionary`. `wanted`
    screens event rows before they are decoded (a query's cheap pre-filter)."""
    dictionary = dictionary if dictionary is not None else SegmentDictionary()
    unpack = msgpack.unpackb
    for payload in payloads:
        row = unpack(payload)
        kind = row[0]
        if kind >= 0:
            if wanted is None or wanted(row, dictionary):
                yield decode_event(row, dictionary, base)
        elif kind == KIND_MARKER or kind == KIND_ENCAPSULATION or kind == KIND_OBSERVER:
            dictionary.declare(row)
        elif kind == KIND_BUNDLE:
            yield BundleRecord(row[1] * 1000, *row[2:])
        elif kind == KIND_AUDIT:
            yield AuditRecord(row[1] * 1000, *row[2:])
        else:
            raise RecordError(f"unknown record kind {kind}")


def record_time(record: Record) -> int:
    """The time retention counts from: an event's last packet, or when the record was made."""
    return record.last_seen if isinstance(record, Event) else record.time


def _checked_layer(layer: dict) -> dict:
    if type(layer) is not dict:
        raise RecordError(f"an encapsulation layer is a table of fields, not {layer!r:.40}")
    if layer.get("type") not in ENCAPSULATION_TYPES:
        raise RecordError(f"encapsulation type {layer.get('type')!r} is not in the allowlist")
    for name, value in layer.items():
        expected = ENCAPSULATION_FIELDS.get(name)
        if expected is None or not isinstance(value, expected) or isinstance(value, bool):
            raise RecordError(f"encapsulation field {name}={value!r} is not in the allowlist")
    return layer


def _count(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordError(f"expected a count, got {value!r}")
    return value


def _port(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise RecordError(f"expected a port, got {value!r}")
    return value


def _address_bytes(value: int | bytes) -> bytes:
    return IPV4_MAPPED_PREFIX + value.to_bytes(4, "big") if isinstance(value, int) else value
