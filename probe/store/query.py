"""Reading events back: filters, each event's latest revision, and the operator-facing views.

A query opens only the segments whose summary may hold an answer (time span, marker, Bloom filter
of addresses and ids), reads them through the CRC check, drops expired records, and keeps each
event's latest revision. Views: a table for a terminal, JSON Lines (the same records `probe
replay` writes), CSV; and per subscriber address, for an operator's customer-care system.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from probe.config import ProbeSection
from probe.decode.packet import IPV4_MAPPED_PREFIX, PROTO_NAMES, address_key, address_text
from probe.errors import StoreError
from probe.record.events import Event, event_record, json_lines, marker_fields, rfc3339, seen_by
from probe.store.index import SegmentSummary, event_key, network_keys
from probe.store.records import SegmentDictionary
from probe.store.retention import AUDIT_CLASS, BUNDLES_CLASS
from probe.store.ring import RingStore

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EventFilter:
    since: int | None = None
    """Events whose span [first seen, last seen] reaches this time or later (nanoseconds)."""
    until: int | None = None
    """...and began before this time."""
    marker: str | None = None
    """A marker id, or `bundle/marker id`."""
    network: IPNetwork | None = None
    """Either side's address in this network (a single address is a /32 or /128)."""
    event: str | None = None

    def may_hold(self, summary: SegmentSummary) -> bool:
        if summary.record_class in (BUNDLES_CLASS, AUDIT_CLASS) or not summary.overlaps(self.since, self.until):
            return False
        if self.marker is not None and not summary.has_marker(self.marker):
            return False
        if self.event is not None and not summary.may_contain(event_key(self.event)):
            return False
        if self.network is not None:
            keys = self._network_keys
            if keys is not None and not any(summary.may_contain(key) for key in keys):
                return False
        return True

    @cached_property
    def _network_keys(self) -> list[bytes] | None:
        return network_keys(str(self.network))

    def matches(self, event: Event) -> bool:
        if self.since is not None and event.last_seen < self.since:
            return False
        if self.until is not None and event.first_seen >= self.until:
            return False
        if self.marker is not None and self.marker not in (event.marker.id, f"{event.marker.bundle}/{event.marker.id}"):
            return False
        if self.network is not None:
            low, high = self._address_range
            if not (low <= event.src <= high or low <= event.dst <= high):
                return False
        return self.event is None or event.event_id == self.event

    @cached_property
    def _address_range(self) -> tuple[bytes, bytes]:
        """First and last address of the network in the 16-byte form, which sorts like the
        addresses themselves."""
        network = self.network
        assert network is not None
        return address_key(str(network.network_address)), address_key(str(network.broadcast_address))

    def row_test(self, base: int) -> Callable[[list, SegmentDictionary], bool] | None:
        """A test of stored event rows (segment starting at `base` microseconds) that rejects,
        before decoding, rows outside the time window or the network, or of another marker;
        `matches` decides."""
        since = None if self.since is None else self.since // 1000 - base
        until = None if self.until is None else -(-self.until // 1000) - base
        if self.network is not None:
            low, high = self._address_range
            if low[:12] == IPV4_MAPPED_PREFIX and high[:12] == IPV4_MAPPED_PREFIX:
                low_row, high_row = int.from_bytes(low[12:], "big"), int.from_bytes(high[12:], "big")
            else:
                low_row, high_row = low, high
        elif since is None and until is None and self.marker is None:
            return None
        wanted_marker = self.marker

        def inside(address: int | bytes) -> bool:
            """An IPv4 row holds an integer, an IPv6 row 16 bytes; both compare in the 16-byte form."""
            if type(address) is type(low_row):
                return low_row <= address <= high_row  # type: ignore[operator]
            if type(address) is int:
                address = IPV4_MAPPED_PREFIX + address.to_bytes(4, "big")
            return low <= address <= high  # type: ignore[operator]

        def test(row: list, dictionary: SegmentDictionary) -> bool:
            first = row[1] - row[10]
            if (since is not None and first + row[11] < since) or (until is not None and first >= until):
                return False
            if wanted_marker is not None:
                marker = dictionary.marker_list[row[8]]
                if wanted_marker != marker.id and wanted_marker != f"{marker.bundle}/{marker.id}":
                    return False
            return self.network is None or inside(row[3]) or inside(row[5])

        return test


def parse_network(text: str) -> IPNetwork:
    """An address or network; one inside ::ffff:0:0/96 is the IPv4 network it maps (events keep
    IPv4 addresses as IPv4)."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise StoreError(f"{text!r} is not an address or a network in CIDR form") from None
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
    return network


def latest_events(store: RingStore, event_filter: EventFilter) -> list[Event]:
    """Each matching event's latest revision, oldest first."""
    latest: dict[tuple, Event] = {}
    for summary in store.segments():
        if not event_filter.may_hold(summary):
            continue
        for record in store.read(summary, wanted=event_filter.row_test(summary.base // 1000)):
            if isinstance(record, Event) and event_filter.matches(record):
                identity = (record.marker.bundle, record.marker.id, record.proto, record.src, record.src_port, record.dst, record.dst_port, record.opened, record.observer)
                known = latest.get(identity)
                if known is None or (record.revision, record.last_seen) > (known.revision, known.last_seen):
                    latest[identity] = record
    return [latest[identity] for identity in sorted(latest, key=lambda identity: (latest[identity].first_seen, identity[:-1], identity[-1] or ()))]


CSV_COLUMNS = ("event_id", "revision", "first_seen", "last_seen", "proto", "src_ip", "src_port", "dest_ip", "dest_port", "direction", "matched_on", "marker_id", "marker_type", "marker_value", "bundle", "bundle_version", "packets", "bytes", "hits", "probe", "site")


def format_events(events: list[Event], output_format: str, probe: ProbeSection, max_tlp: str) -> str:
    if output_format == "jsonl":
        return json_lines([event_record(event, probe, max_tlp) for event in events])
    rows = [_row(event, probe, max_tlp) for event in events]
    if output_format == "csv":
        return _csv(CSV_COLUMNS, rows)
    return _table(("first_seen", "last_seen", "proto", "src", "dest", "marker", "value", "packets", "event_id", "probe"), [(row[2], row[3], row[4], f"{row[5]}:{row[6]}", f"{row[7]}:{row[8]}", row[11], row[13], row[16], row[0], row[19]) for row in rows])


def _row(event: Event, probe: ProbeSection, max_tlp: str) -> tuple:
    marker = marker_fields(event.marker, max_tlp)
    name, site = seen_by(event, probe)
    return (
        event.event_id, event.revision, rfc3339(event.first_seen), rfc3339(event.last_seen), PROTO_NAMES.get(event.proto, str(event.proto)),
        address_text(event.src), event.src_port, address_text(event.dst), event.dst_port, "to_server" if event.to_server else "to_client", event.matched_on,
        marker["id"], marker.get("type", ""), marker.get("value", marker.get("name", "")), marker["bundle"], marker["bundle_version"], event.packets, event.bytes, event.hits,
        name, site,
    )


SUBSCRIBER_COLUMNS = ("subscriber_ip", "subscriber_port", "side", "first_seen", "last_seen", "proto", "peer_ip", "peer_port", "event_id", "marker_id", "marker_type", "marker_value", "severity", "bundle", "bundle_version")


def subscriber_rows(events: list[Event], prefixes: list[IPNetwork], max_tlp: str) -> list[tuple]:
    """One row per (subscriber address, event), by address then time: each side of an event that
    is inside the operator's subscriber space, with its port and the exact first and last times
    (what identifies a subscriber behind carrier-grade NAT)."""
    rows = []
    for event in events:
        marker = marker_fields(event.marker, max_tlp)
        for side, address, port, peer, peer_port in (("src", event.src, event.src_port, event.dst, event.dst_port), ("dest", event.dst, event.dst_port, event.src, event.src_port)):
            text = address_text(address)
            if any(ipaddress.ip_address(text) in prefix for prefix in prefixes):
                rows.append((text, port, side, rfc3339(event.first_seen), rfc3339(event.last_seen), PROTO_NAMES.get(event.proto, str(event.proto)), address_text(peer), peer_port, event.event_id, marker["id"], marker.get("type", ""), marker.get("value", marker.get("name", "")), marker.get("severity", ""), marker["bundle"], marker["bundle_version"]))
    rows.sort(key=lambda row: (address_key(row[0]), row[3], row[8]))
    return rows


def format_subscribers(rows: list[tuple]) -> str:
    return _csv(SUBSCRIBER_COLUMNS, rows)


def _csv(columns: tuple[str, ...], rows: list[tuple]) -> str:
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return output.getvalue()


def _table(columns: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [tuple(str(value) for value in row) for row in rows]
    widths = [max([len(column)] + [len(row[position]) for row in cells]) for position, column in enumerate(columns)]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in [columns, *cells]]
    return "\n".join(lines) + "\n"
