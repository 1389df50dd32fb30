"""Characterisation data for the authority (CPCE art. L2321-3) as STIX 2.1 (JSON Lines: query.py).

A STIX export holds, per event, a `sighting` of the marker's indicator (the id it was imported
with, or the one `probe markers export` gives it) and the `observed-data` it rests on: the
addresses and a `network-traffic` object with ports, protocols and times. Nothing else of the
traffic exists in the store, so nothing else can be exported. Ids are deterministic (UUIDv5), so
exporting the same events twice gives the same objects.
"""

from __future__ import annotations

import json
import uuid

from probe.bundles.stix import indicator_id
from probe.config import ProbeSection
from probe.decode.packet import IPV4_MAPPED_PREFIX, PROTO_NAMES, address_text
from probe.record.events import Event, rfc3339, seen_by

STIX_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
"""The namespace STIX 2.1 gives for the ids of cyber-observable objects."""
EXPORT_NAMESPACE = uuid.UUID("6f0e3f52-8f0a-5c2e-9d0b-3c1e4b5a7d21")


def export_stix(events: list[Event], probe: ProbeSection) -> str:
    objects: dict[str, dict] = {}
    for event in events:
        for stix_object in _event_objects(event, probe):
            objects[stix_object["id"]] = stix_object
    bundle_id = uuid.uuid5(EXPORT_NAMESPACE, ",".join(sorted(_sighting_key(event) for event in events)))
    return json.dumps({"type": "bundle", "id": f"bundle--{bundle_id}", "objects": list(objects.values())}, indent=1) + "\n"


def _event_objects(event: Event, probe: ProbeSection) -> list[dict]:
    source, destination = _address_object(event.src), _address_object(event.dst)
    version = "ipv4" if event.src[:12] == IPV4_MAPPED_PREFIX else "ipv6"
    traffic = {
        "type": "network-traffic",
        "spec_version": "2.1",
        "start": rfc3339(event.first_seen),
        "end": rfc3339(event.last_seen),
        "src_ref": source["id"],
        "dst_ref": destination["id"],
        "src_port": event.src_port,
        "dst_port": event.dst_port,
        "protocols": [version, PROTO_NAMES.get(event.proto, str(event.proto)).lower()],
    }
    traffic["id"] = _observable_id("network-traffic", {key: traffic[key] for key in ("start", "end", "src_ref", "dst_ref", "src_port", "dst_port", "protocols")})
    stamp = rfc3339(event.last_seen)
    observed = {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": f"observed-data--{uuid.uuid5(EXPORT_NAMESPACE, 'observed/' + _sighting_key(event))}",
        "created": stamp,
        "modified": stamp,
        "first_observed": rfc3339(event.first_seen),
        "last_observed": stamp,
        "number_observed": 1,
        "object_refs": [traffic["id"], source["id"], destination["id"]],
    }
    sighting = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": f"sighting--{uuid.uuid5(EXPORT_NAMESPACE, 'sighting/' + _sighting_key(event))}",
        "created": stamp,
        "modified": stamp,
        "first_seen": rfc3339(event.first_seen),
        "last_seen": stamp,
        "count": event.hits,
        "sighting_of_ref": indicator_id(event.marker, event.marker.bundle),
        "observed_data_refs": [observed["id"]],
        "description": f"probe {seen_by(event, probe)[0]} event {event.event_id} (revision {event.revision}): marker {event.marker.id} of bundle {event.marker.bundle} version {event.marker.bundle_version}, matched on {event.matched_on}",
    }
    return [source, destination, traffic, observed, sighting]


def _sighting_key(event: Event) -> str:
    """One sighting per probe that saw the event: a collector's store may hold one event seen at
    two tap points (a probe's own store names no observer: its ids stay as they were)."""
    return event.event_id if event.observer is None else f"{event.event_id}/{event.observer[1]}.{event.observer[0]}"


def _address_object(address: bytes) -> dict:
    kind = "ipv4-addr" if address[:12] == IPV4_MAPPED_PREFIX else "ipv6-addr"
    value = address_text(address)
    return {"type": kind, "spec_version": "2.1", "id": _observable_id(kind, {"value": value}), "value": value}


def _observable_id(kind: str, contributing: dict) -> str:
    return f"{kind}--{uuid.uuid5(STIX_NAMESPACE, json.dumps(contributing, sort_keys=True, separators=(',', ':')))}"

