"""Event records: one per (flow, marker), holding network metadata and the marker's own identity.

The law (CPCE L34-1 VI) forbids keeping the content of communications: a record names the marker's
value, never the observed name (a subdomain) nor any payload byte. Field names follow Suricata's
eve.json where a counterpart exists. Identifiers are derived from the marker id, the flow's
canonical 5-tuple and its first-packet time, so a capture gives the same ids in every run, and the
store, which keeps exactly those fields, derives them again instead of keeping them.
"""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import datetime, timedelta, timezone
from typing import IO, NamedTuple

from probe.config import ProbeSection
from probe.decode.packet import IPV4_MAPPED_PREFIX, PROTO_NAMES, address_text
from probe.flows.table import Flow, canonical_key
from probe.bundles.values import PATTERN_TYPES
from probe.match.markers import TLP_LEVELS, Marker


class Hit:
    """The first packet of a flow that hit a marker, how many packets hit it since, and the
    event's last revision (its number, the flow's packet count then, and when)."""

    __slots__ = ("marker", "matched_on", "to_server", "timestamp", "encapsulation", "count", "revision", "revised_packets", "revised_at", "notified")

    def __init__(self, marker: Marker, matched_on: str, to_server: bool, timestamp: int, encapsulation: list[dict]) -> None:
        self.marker = marker
        self.matched_on = matched_on
        self.to_server = to_server
        self.timestamp = timestamp
        self.encapsulation = encapsulation
        self.count = 1
        self.revision = 0
        self.revised_packets = 0
        self.revised_at = timestamp
        self.notified = False
        """The first detection was notified (not suppressed by its marker's rate): so are its
        revisions."""


class Event(NamedTuple):
    """Everything the probe may keep of a detected event, and nothing else: network metadata,
    counters and the marker's identity. This tuple is the allowlist; the store writes these
    fields and no other. Times are nanoseconds since the epoch; addresses the 16-byte form."""

    revision: int
    """0 at the first hit; then one more at each update while the flow goes on, and with the
    final counters when it ends (the highest revision of an event is its final state)."""
    timestamp: int
    """Of the first packet that hit."""
    proto: int
    src: bytes
    """The client (the side that opened the flow)."""
    src_port: int
    dst: bytes
    dst_port: int
    to_server: bool
    """The marked value is on the server's side (`direction: to_server`)."""
    matched_on: str
    marker: Marker
    encapsulation: list[dict]
    opened: int
    """The flow's first packet in capture order: the ids derive from it."""
    first_seen: int
    last_seen: int
    packets: int
    bytes: int
    hits: int
    observer: tuple[str, str] | None = None
    """(name, site) of the probe that saw it, on a collector's store, which holds the events of
    many probes; None on a probe's own store (its own name and site are in its configuration)."""

    @property
    def event_id(self) -> str:
        digest = self.event_digest.hex()
        return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"

    @property
    def event_digest(self) -> bytes:
        """The 16 bytes `event_id` spells (what the store's index keeps)."""
        return hashlib.sha256(self.marker.bundle.encode() + b"\0" + self.marker.id.encode() + b"\0" + self._flow_key()).digest()[:16]

    @property
    def flow_id(self) -> int:
        """Suricata-style integer flow id, stable across runs and worker counts (fits a JSON double)."""
        digest = hashlib.sha256(self._flow_key()).digest()
        return int.from_bytes(digest[:7], "big") >> 3  # 53 bits: exact in every JSON reader

    def _flow_key(self) -> bytes:
        """The flow's canonical key and opening time (microseconds: what the store keeps)."""
        key, _ = canonical_key(self.src, self.src_port, self.dst, self.dst_port, self.proto)
        return key + (self.opened // 1000).to_bytes(8, "big")


def flow_event(flow: Flow, hit: Hit, counters: tuple[int, int, int, int], revision: int) -> Event:
    """`counters`: the flow's (packets, bytes, first seen, last seen) from the flow table. At the
    first hit the table may not have counted the hitting packet yet: the event still covers it."""
    client, client_port, server, server_port = flow.endpoints()
    packets, byte_count, first_seen, last_seen = counters
    if revision == 0:
        first_seen, last_seen, packets = min(first_seen, hit.timestamp), max(last_seen, hit.timestamp), max(packets, 1)
    return Event(revision, hit.timestamp, flow.proto, client, client_port, server, server_port, hit.to_server, hit.matched_on, hit.marker, hit.encapsulation, flow.opened, first_seen, last_seen, packets, byte_count, hit.count)


def rfc3339(timestamp: int) -> str:
    seconds, nanoseconds = divmod(timestamp, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanoseconds // 1000:06d}Z"


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of a time `rfc3339` wrote, to the microsecond it writes. The
    collector reads four per event: `fromisoformat` is C, several times faster than `strptime`,
    and the integer division keeps every microsecond that a float timestamp would round."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time: it has no UTC offset")
    return (moment - EPOCH) // MICROSECOND * 1000


PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


def event_from_record(record: dict, observer: tuple[str, str] | None = None) -> Event:
    """The event an eve.json-style record (`event_fields`) was written from, as far as a store
    keeps it: what the collector stores of the notification of the probe `observer`. A message
    from the bus is input like a capture: every field the event's ids derive from is checked
    here. Raises ValueError (or KeyError, TypeError) naming the field, not the message: the
    caller says which message it was; the store's encoder checks the rest."""
    proto = record["proto"]
    proto = PROTO_NUMBERS[proto] if proto in PROTO_NUMBERS else checked_integer(int(proto) if isinstance(proto, str) and proto.isdigit() else proto, "proto", 0xFF)
    encapsulation = record["encapsulation"]
    if type(encapsulation) is not list or not all(type(layer) is dict for layer in encapsulation):
        raise ValueError(f"encapsulation {encapsulation!r:.40} is not a list of layers")
    return Event(
        checked_integer(record["revision"], "revision"), checked_time(record, "timestamp"), proto,
        address_bytes(record["src_ip"]), checked_integer(record["src_port"], "src_port", 0xFFFF), address_bytes(record["dest_ip"]), checked_integer(record["dest_port"], "dest_port", 0xFFFF),
        record["direction"] == "to_server", checked_text(record["matched_on"], "matched_on"),
        marker_from_fields(record["marker"]),
        encapsulation, checked_time(record, "flow_start"), checked_time(record, "first_seen"), checked_time(record, "last_seen"),
        checked_integer(record["packets"], "packets"), checked_integer(record["bytes"], "bytes"), checked_integer(record["hits"], "hits"), observer,
    )


def marker_from_fields(fields: dict) -> Marker:
    """The marker a notification's `marker_fields` were written from, each field checked."""
    if "type" not in fields:
        raise ValueError("its marker's type and value are withheld (TLP): the sender must publish with max_tlp = red")
    return Marker(checked_text(fields["id"], "marker id"), checked_text(fields["type"], "marker type"), checked_text(fields.get("value", ""), "marker value"), checked_text(fields["bundle"], "marker bundle"), checked_integer(fields["bundle_version"], "bundle_version"),
                  severity=checked_optional_text(fields.get("severity"), "marker severity"), tlp=_tlp(fields.get("tlp")), name=checked_optional_text(fields.get("name"), "marker name"))


LARGEST_COUNT = 2**63 - 1
"""What a store row's integer may hold (msgpack's signed 64 bits)."""


def checked_integer(value: object, name: str, limit: int = LARGEST_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise ValueError(f"{name} {value!r:.40} is not an integer from 0 to {limit}")
    return value


def checked_time(record: dict, name: str) -> int:
    moment = parse_rfc3339(record[name])
    if moment < 0:
        raise ValueError(f"{name} {record[name]!r:.40} is before 1970")
    return moment


def checked_text(value: object, name: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{name} {value!r:.40} is not text")
    return value


def checked_optional_text(value: object, name: str) -> str | None:
    return None if value is None else checked_text(value, name)


def _tlp(value: object) -> str | None:
    if value is not None and value not in TLP_LEVELS:
        raise ValueError(f"marker tlp {value!r:.40} is not one of {', '.join(TLP_LEVELS)}")
    return value  # type: ignore[return-value]


def address_bytes(text: str) -> bytes:
    """The 16-byte form of an address's text (IPv4 as IPv4-mapped IPv6). `inet_pton`: the
    collector reads two per event, and `ipaddress` is fifteen times slower."""
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return IPV4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise ValueError(f"{text!r} is not an IP address") from None


def marker_fields(marker: Marker, max_tlp: str) -> dict:
    """What an event says of its marker: its identity, and its value unless that is a pattern or
    rule (which could be payload) or labelled above what this output may carry."""
    fields: dict = {"id": marker.id, "type": marker.type}
    if marker.type in PATTERN_TYPES:
        fields["name"] = marker.name
    else:
        fields["value"] = marker.value
    if marker.severity is not None:
        fields["severity"] = marker.severity
    if marker.tlp is not None:
        fields["tlp"] = marker.tlp
    fields["bundle"] = marker.bundle
    fields["bundle_version"] = marker.bundle_version
    return withhold_marker_values(fields, max_tlp)


WITHHELD_ABOVE_TLP = ("type", "value", "name", "severity")


def withhold_marker_values(fields: dict, max_tlp: str) -> dict:
    """The TLP rule, on a marker's fields as `marker_fields` wrote them: a marker labelled above
    `max_tlp` keeps only its id, label, bundle and version. Applied again to each notification
    sink's copy of a spooled document, whose fields were written for the highest label."""
    tlp = fields.get("tlp")
    if tlp is None or TLP_LEVELS.index(tlp) <= TLP_LEVELS.index(max_tlp):
        return fields
    return {name: value for name, value in fields.items() if name not in WITHHELD_ABOVE_TLP}


def seen_by(event: Event, probe: ProbeSection) -> tuple[str, str]:
    """(name, site) of the probe that saw the event: `probe`, whose store or output this is,
    unless the event names another (a collector's store)."""
    return event.observer or (probe.name, probe.site)


def event_record(event: Event, probe: ProbeSection, max_tlp: str = "red") -> dict:
    """The event as eve.json-style JSON, naming the probe that saw it (`seen_by`)."""
    record = event_fields(event, max_tlp)
    name, site = seen_by(event, probe)
    record["probe"] = {"name": name, "site": site}
    return record


def event_fields(event: Event, max_tlp: str = "red") -> dict:
    """The event's own fields (a notification names the probe once, beside them)."""
    return {
        "event_id": event.event_id,
        "timestamp": rfc3339(event.timestamp),
        "event_type": "marker",
        "flow_id": event.flow_id,
        "proto": PROTO_NAMES.get(event.proto, str(event.proto)),
        "src_ip": address_text(event.src),
        "src_port": event.src_port,
        "dest_ip": address_text(event.dst),
        "dest_port": event.dst_port,
        "direction": "to_server" if event.to_server else "to_client",
        "vlan": [layer["id"] for layer in event.encapsulation if layer["type"] == "vlan"],
        "matched_on": event.matched_on,
        "marker": marker_fields(event.marker, max_tlp),
        "encapsulation": event.encapsulation,
        "flow_start": rfc3339(event.opened),
        "first_seen": rfc3339(event.first_seen),
        "last_seen": rfc3339(event.last_seen),
        "packets": event.packets,
        "bytes": event.bytes,
        "hits": event.hits,
        "revision": event.revision,
    }


def json_lines(records: list[dict]) -> str:
    """Event records as JSON Lines, compact: what `probe replay` and the store's outputs print."""
    return "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records)


class EventWriter:
    """Writes each event's final revision as JSON Lines, flushed after every group so a reader sees
    them at once."""

    def __init__(self, stream: IO[str], probe: ProbeSection | None = None, max_tlp: str = "red") -> None:
        self.stream = stream
        self.probe = probe or ProbeSection()
        self.max_tlp = max_tlp
        self.written = 0
        self.by_marker_type: dict[str, int] = {}

    def write(self, events: list[Event]) -> None:
        if not events:
            return
        records = [event_record(event, self.probe, self.max_tlp) for event in events]
        self.stream.write(json_lines(records))
        self.stream.flush()
        self.written += len(records)
        for record in records:
            kind = record["marker"].get("type", "withheld")
            self.by_marker_type[kind] = self.by_marker_type.get(kind, 0) + 1
