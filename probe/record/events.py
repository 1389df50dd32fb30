"""Event records: one per (flow, marker), holding network metadata and the marker's own identity.

The law (CPCE L34-1 VI) forbids keeping the content of communications: a record names the marker's
value, never the observed name (a subdomain) nor any payload byte. Field names follow Suricata's
eve.json where a counterpart exists. Identifiers are derived from the marker id, the flow's
canonical 5-tuple and its first-packet time, so a capture gives the same ids in every run.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import IO

from probe.config import ProbeSection
from probe.decode.packet import PROTO_NAMES, address_text
from probe.flows.table import Flow
from probe.bundles.values import PATTERN_TYPES
from probe.match.markers import TLP_LEVELS, Marker


class Hit:
    """The first packet of a flow that hit a marker, and how many packets hit it since."""

    __slots__ = ("marker", "matched_on", "to_server", "timestamp", "encapsulation", "count")

    def __init__(self, marker: Marker, matched_on: str, to_server: bool, timestamp: int, encapsulation: list[dict]) -> None:
        self.marker = marker
        self.matched_on = matched_on
        self.to_server = to_server
        self.timestamp = timestamp
        self.encapsulation = encapsulation
        self.count = 1


def rfc3339(timestamp: int) -> str:
    seconds, nanoseconds = divmod(timestamp, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanoseconds // 1000:06d}Z"


def flow_id(flow: Flow, first_seen: int) -> int:
    """Suricata-style integer flow id, stable across runs and worker counts (fits a JSON double)."""
    digest = hashlib.sha256(flow.key + first_seen.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:7], "big") >> 3  # 53 bits: exact in every JSON reader


def event_id(marker: Marker, flow: Flow, first_seen: int) -> str:
    digest = hashlib.sha256(marker.bundle.encode() + b"\0" + marker.id.encode() + b"\0" + flow.key + first_seen.to_bytes(8, "big")).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def marker_fields(marker: Marker, max_tlp: str) -> dict:
    """What an event says of its marker: its identity, and its value unless that is a pattern or
    rule (which could be payload) or labelled above what this output may carry."""
    fields: dict = {"id": marker.id}
    if marker.tlp is None or TLP_LEVELS.index(marker.tlp) <= TLP_LEVELS.index(max_tlp):
        fields["type"] = marker.type
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
    return fields


def event_record(flow: Flow, counters: tuple[int, int, int, int], hit: Hit, probe: ProbeSection, max_tlp: str = "red") -> dict:
    """`counters`: the flow's (packets, bytes, first seen, last seen) from the flow table."""
    marker = hit.marker
    client, client_port, server, server_port = flow.endpoints()
    packets, byte_count, first_seen, last_seen = counters
    return {
        "event_id": event_id(marker, flow, first_seen),
        "timestamp": rfc3339(hit.timestamp),
        "event_type": "marker",
        "flow_id": flow_id(flow, first_seen),
        "proto": PROTO_NAMES.get(flow.proto, str(flow.proto)),
        "src_ip": address_text(client),
        "src_port": client_port,
        "dest_ip": address_text(server),
        "dest_port": server_port,
        "direction": "to_server" if hit.to_server else "to_client",
        "vlan": [layer["id"] for layer in hit.encapsulation if layer["type"] == "vlan"],
        "matched_on": hit.matched_on,
        "marker": marker_fields(marker, max_tlp),
        "encapsulation": hit.encapsulation,
        "first_seen": rfc3339(first_seen),
        "last_seen": rfc3339(last_seen),
        "packets": packets,
        "bytes": byte_count,
        "hits": hit.count,
        "probe": {"name": probe.name, "site": probe.site},
    }


class EventWriter:
    """Writes event records as JSON Lines, flushed after every group so a reader sees them at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.written = 0
        self.by_marker_type: dict[str, int] = {}

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self.stream.write("".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records))
        self.stream.flush()
        self.written += len(records)
        for record in records:
            kind = record["marker"].get("type", "withheld")
            self.by_marker_type[kind] = self.by_marker_type.get(kind, 0) + 1
