"""MISP event JSON (MISP's `describeTypes.json` names the attribute types): `{"Event": {...}}`, a
REST search answer `{"response": [{"Event": {...}}, ...]}`, a list of such, or a bare event.

Attributes are read at event level and inside each `Object`; only `to_ids: true` ones are meant
for detection, so the others are skipped (and counted) unless `include_all`. Marker ids are the
attribute uuid, with `#ip` for the address half of a `domain|ip` attribute.

`ip-src` and `ip-dst` both match either address of a flow: MISP authors mix up the two sides, and
a missed match costs more than a marker hitting the other side. For the same reason `ip-dst|port`
keeps its port (the destination's, so the server's: the probe's port constraint) but `ip-src|port`
drops its port, the client's ephemeral port, which no constraint of the probe expresses; the
address is imported and the dropped ports counted in a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from probe.bundles.format import strictest_tlp
from probe.bundles.importing import ImportReport, load_json
from probe.bundles.values import normalise_value
from probe.errors import MarkerError

SUPPORTED_TYPES = ("ip-src", "ip-dst", "ip-src|port", "ip-dst|port", "domain", "hostname", "domain|ip", "url", "ja3-fingerprint-md5", "x509-fingerprint-sha256", "yara")
EVENT_KEYS = {"Attribute", "Object", "info", "uuid"}
"""An object with none of these is no MISP event, whatever wraps it."""
SEVERITY = {"1": "high", "2": "medium", "3": "low"}
"""MISP threat_level_id → severity; 4 (undefined) gives none."""
TLP_TAGS = {"tlp:white": "clear", "tlp:clear": "clear", "tlp:green": "green", "tlp:amber": "amber", "tlp:amber+strict": "amber+strict", "tlp:red": "red"}
YARA_RULE_NAME = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def read_misp(path: Path, report: ImportReport, include_all: bool = False) -> Iterator[dict]:
    """Markers of every event's supported attributes, with the event's severity (threat level),
    reference (info and uuid) and the strictest TLP tag of the event and the attribute. An
    attribute of another type or with a bad value is refused with its uuid."""
    skipped = deleted = source_ports = 0
    for event in _events(path, load_json(path)):
        event_fields = _event_fields(event)
        for number, attribute in enumerate(_attributes(event), 1):
            if not isinstance(attribute, dict) or not isinstance(attribute.get("uuid"), str):
                report.refused.append(f"{path}:event {event.get('uuid', '?')} attribute #{number}: not an attribute object with a uuid")
                continue
            if _true(attribute.get("deleted")):
                deleted += 1
                continue
            if not include_all and not _true(attribute.get("to_ids")):
                skipped += 1
                continue
            kind, value, uuid = attribute.get("type"), attribute.get("value"), attribute["uuid"]
            if kind not in SUPPORTED_TYPES:
                report.refused.append(f"{path}:{uuid}: MISP type {kind!r} not supported (supported: {', '.join(SUPPORTED_TYPES)})")
                continue
            try:
                if not isinstance(value, str):
                    raise ValueError("the value is not a string")
                markers = _attribute_markers(kind, value, uuid)
            except ValueError as error:
                report.refused.append(f"{path}:{uuid}: {kind}: {error}")
                continue
            source_ports += kind == "ip-src|port"
            tlp = strictest_tlp(event_fields.get("tlp"), _tlp(attribute))
            for marker in markers:
                yield marker | event_fields | ({"tlp": tlp} if tlp else {})
    if skipped:
        report.notes.append(f"{path}: {skipped} attribute{'s' if skipped > 1 else ''} with to_ids false skipped (--all imports them)")
    if deleted:
        report.notes.append(f"{path}: {deleted} deleted attribute{'s' if deleted > 1 else ''} skipped")
    if source_ports:
        report.notes.append(f"{path}: ip-src|port: the source port of {source_ports} attribute{'s' if source_ports > 1 else ''} dropped (a client port, not the server port a constraint names); addresses imported")


def _events(path: Path, document: object) -> list[dict]:
    items = document.get("response") if isinstance(document, dict) and "response" in document else document
    items = items if isinstance(items, list) else [items]
    events = [item.get("Event", item) if isinstance(item, dict) else item for item in items]
    for event in events:
        if not isinstance(event, dict) or not EVENT_KEYS & event.keys() or not isinstance(event.get("Attribute", []), list) or not isinstance(event.get("Object", []), list):
            raise MarkerError(f"{path}: not a MISP event: expected {{\"Event\": {{..., \"Attribute\": [...], \"Object\": [...]}}}}")
    return events


def _attributes(event: dict) -> Iterator[object]:
    yield from event.get("Attribute", [])
    for misp_object in event.get("Object", []):
        if isinstance(misp_object, dict) and isinstance(misp_object.get("Attribute"), list):
            yield from misp_object["Attribute"]


def _event_fields(event: dict) -> dict:
    """Marker keys every attribute of the event shares."""
    fields = {}
    severity = SEVERITY.get(str(event.get("threat_level_id")))
    if severity:
        fields["severity"] = severity
    info, uuid = event.get("info"), event.get("uuid")
    reference = " ".join(part for part in (info if isinstance(info, str) else "", f"(MISP event {uuid})" if isinstance(uuid, str) else "") if part)
    if reference:
        fields["reference"] = reference
    tlp = _tlp(event)
    if tlp:
        fields["tlp"] = tlp
    return fields


def _tlp(tagged: dict) -> str | None:
    """The strictest TLP tag of an event or attribute: a marker is never less protected than its
    MISP source says."""
    tags = tagged.get("Tag")
    labels = [TLP_TAGS.get(str(tag.get("name", "")).lower()) for tag in tags if isinstance(tag, dict)] if isinstance(tags, list) else []
    return strictest_tlp(*labels)


def _true(flag: object) -> bool:
    """MISP writes booleans as true, 1 or "1" depending on version and export path."""
    return flag is True or flag == 1 or flag in ("1", "true", "True")


def _attribute_markers(kind: str, value: str, uuid: str) -> list[dict]:
    """The markers of one supported attribute; raises ValueError saying what is wrong."""
    if kind in ("ip-src", "ip-dst"):
        return [_address_marker(uuid, value)]
    if kind in ("ip-src|port", "ip-dst|port"):
        address, port = _pair(value)
        marker = _address_marker(uuid, address)
        if kind == "ip-dst|port":
            marker["constraints"] = {"port": _port(port)}
        return [marker]
    if kind in ("domain", "hostname"):
        return [_domain_marker(uuid, value)]
    if kind == "domain|ip":
        name, address = _pair(value)
        return [_domain_marker(uuid, name), _address_marker(f"{uuid}#ip", address)]
    if kind == "yara":
        _, rule = normalise_value("yara", value)
        found = YARA_RULE_NAME.search(rule)
        return [{"id": uuid, "type": "yara", "value": rule, "name": found.group(1) if found else uuid}]
    marker_type = {"url": "url", "ja3-fingerprint-md5": "ja3", "x509-fingerprint-sha256": "x509_sha256"}[kind]
    marker_type, canonical = normalise_value(marker_type, value)
    return [{"id": uuid, "type": marker_type, "value": canonical}]


def _pair(value: str) -> tuple[str, str]:
    first, bar, second = value.partition("|")
    if not bar:
        raise ValueError(f"{value!r} is not a composite value (two parts joined by '|')")
    return first, second


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


def _address_marker(marker_id: str, value: str) -> dict:
    """An address, or a network when the value has a prefix length (MISP allows CIDRs in ip-*)."""
    marker_type, canonical = normalise_value("cidr" if "/" in value else "address", value)
    return {"id": marker_id, "type": marker_type, "value": canonical}


def _domain_marker(marker_id: str, value: str) -> dict:
    _, name = normalise_value("domain", value)
    return {"id": marker_id, "type": "domain", "value": name, "match": "subdomains"}
