"""Notification documents: what the authority and the operator's collectors receive.

A document is JSON, the same for every sink but for the TLP rule, which each sink applies to its
own copy (`for_sink`). Every document carries an `idempotency_key`, stable across retries and
restarts, so a receiver drops a second delivery of the same notification (delivery is at least
once), and the probe's identity, so the authority knows which declared device saw it:

    {"notification": "event", "idempotency_key": "<event_id>/<revision>", "created": ...,
     "probe": {"name": ..., "site": ..., "declaration": ...},
     "stage": "detected" | "updated" | "ended", "event": {<the event record, as in eve.json>}}

Other kinds: `bundle` (a marker bundle activated, refused or expired), `suppressed` (detections of
a marker beyond its rate, counted, not sent one by one) and `dropped` (notifications the full
spool could not take; the events are in the store). An event document holds the event record's
allowlist and nothing else: metadata, counters, encapsulation ids and the marker's identity.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from probe.config import Config
from probe.match.markers import Marker
from probe.record.events import Event, checked_integer, checked_text, checked_time, event_fields, marker_fields, marker_from_fields, rfc3339, withhold_marker_values
from probe.store.records import BUNDLE_ACTIONS, BundleRecord

STAGES = ("detected", "updated", "ended")


def probe_identity(config: Config) -> dict[str, str]:
    return {"name": config.probe.name, "site": config.probe.site, "declaration": config.declaration.reference}


def _document(kind: str, key: str, identity: dict[str, str], created: int | None = None) -> dict[str, Any]:
    """`key` is percent-encoded to printable ASCII: it travels in an HTTP header, and marker ids
    and refusal reasons are free text."""
    return {"notification": kind, "idempotency_key": urllib.parse.quote(key, safe="/-._~:+@"), "created": rfc3339(time.time_ns() if created is None else created), "probe": identity}


def event_document(event: Event, stage: str, identity: dict[str, str], created: int) -> dict[str, Any]:
    """`stage`: detected (revision 0, at the first hit), updated (counters of a flow still going
    on) or ended (the flow's final counters). `created`: when the notification was spooled."""
    record = event_fields(event)
    document = _document("event", f"{record['event_id']}/{event.revision}", identity, created)
    document["stage"] = stage
    document["event"] = record
    return document


def event_item(event: Event, stage: str) -> list:
    """The compact form an event notification is spooled in: the event's allowlisted fields and
    what its notification says of the marker. Made on the packet path, so kept cheap; the
    delivery process turns it into the document (`spooled_document`)."""
    marker = event.marker
    return [STAGES.index(stage), event.revision, event.timestamp, event.proto, event.src, event.src_port, event.dst, event.dst_port, event.to_server, event.matched_on,
            [marker.id, marker.type, marker.value, marker.bundle, marker.bundle_version, marker.severity, marker.tlp, marker.name], event.encapsulation,
            event.opened, event.first_seen, event.last_seen, event.packets, event.bytes, event.hits]


def spooled_document(item: Any, identity: dict[str, str], created: int) -> dict[str, Any]:
    """A spooled entry's document: as spooled, or made from an event's compact form (the same
    document at every delivery: `created` is when the entry was spooled)."""
    if isinstance(item, dict):
        return item
    stage, revision, timestamp, proto, src, src_port, dst, dst_port, to_server, matched_on, marker, encapsulation, opened, first_seen, last_seen, packets, byte_count, hits = item
    marker_id, kind, value, bundle, bundle_version, severity, tlp, name = marker
    event = Event(revision, timestamp, proto, src, src_port, dst, dst_port, to_server, matched_on, Marker(marker_id, kind, value, bundle, bundle_version, severity=severity, tlp=tlp, name=name), encapsulation, opened, first_seen, last_seen, packets, byte_count, hits)
    return event_document(event, STAGES[stage], identity, created)


def bundle_document(record: BundleRecord, identity: dict[str, str]) -> dict[str, Any]:
    """Which markers this probe runs: each bundle version activated, each file refused (with the
    reason), each version whose validity ended."""
    key = f"bundle/{record.action}/{record.issuer}/{record.bundle}/{record.version}/{record.time}" if record.bundle else f"bundle/{record.action}/{record.time}/{record.reason}"
    document = _document("bundle", key, identity)
    document["bundle"] = {"time": rfc3339(record.time), "action": record.action, "issuer": record.issuer, "id": record.bundle, "version": record.version, "sha256": record.digest, "reason": record.reason}
    return document


def suppressed_document(marker: Marker, count: int, first: int, last: int, identity: dict[str, str]) -> dict[str, Any]:
    """Detections of one marker not notified one by one: the marker went over its rate."""
    document = _document("suppressed", f"suppressed/{marker.bundle}/{marker.id}/{first}", identity)
    document["suppressed"] = {"marker": marker_fields(marker, "red"), "count": count, "first": rfc3339(first), "last": rfc3339(last)}
    return document


def dropped_document(count: int, first: int, last: int, reason: str, identity: dict[str, str]) -> dict[str, Any]:
    """Notifications lost because the spool could not take them; the events are in the store
    (`probe store export --for-authority` over the time range)."""
    document = _document("dropped", f"dropped/{identity['name']}/{first}", identity)
    document["dropped"] = {"count": count, "first": rfc3339(first), "last": rfc3339(last), "reason": reason}
    return document


def forwarded_document(document: dict[str, Any], event: Event | None, identity: dict[str, str]) -> dict[str, Any]:
    """A collector's copy of a notification a probe published: made again from its checked
    fields (`event`: the one checked already), with `identity` the probe the bus says sent it.
    Nothing the probe wrote is passed on as it was, so a malformed document stops here, not in
    a sink's delivery. Raises ValueError (KeyError, TypeError) naming the field."""
    kind = document["notification"]
    if kind == "event" and event is not None:
        if document["stage"] not in STAGES:
            raise ValueError(f"stage {document['stage']!r:.40} is not one of {', '.join(STAGES)}")
        return event_document(event, document["stage"], identity, checked_time(document, "created"))
    if kind == "bundle":
        fields = document["bundle"]
        if fields["action"] not in BUNDLE_ACTIONS:
            raise ValueError(f"bundle action {fields['action']!r:.40} is not one of {', '.join(BUNDLE_ACTIONS)}")
        record = BundleRecord(checked_time(fields, "time"), fields["action"], checked_text(fields["issuer"], "bundle issuer"), checked_text(fields["id"], "bundle id"),
                              checked_integer(fields["version"], "bundle version"), checked_text(fields["sha256"], "bundle sha256"), checked_text(fields["reason"], "bundle reason"))
        return bundle_document(record, identity)
    if kind == "suppressed":
        fields = document["suppressed"]
        return suppressed_document(marker_from_fields(fields["marker"]), checked_integer(fields["count"], "suppressed count"), checked_time(fields, "first"), checked_time(fields, "last"), identity)
    if kind == "dropped":
        fields = document["dropped"]
        return dropped_document(checked_integer(fields["count"], "dropped count"), checked_time(fields, "first"), checked_time(fields, "last"), checked_text(fields["reason"], "dropped reason"), identity)
    raise ValueError(f"notification kind {kind!r:.40} is not one a probe sends")


def document_marker(document: dict[str, Any]) -> dict[str, Any] | None:
    """The marker fields of an event or suppressed document (what sinks filter on)."""
    if document["notification"] == "event":
        return document["event"]["marker"]
    if document["notification"] == "suppressed":
        return document["suppressed"]["marker"]
    return None


def for_sink(document: dict[str, Any], max_tlp: str) -> dict[str, Any]:
    """A sink's copy of a spooled document, with the TLP rule applied to its marker."""
    marker = document_marker(document)
    if marker is None:
        return document
    limited = withhold_marker_values(marker, max_tlp)
    if limited is marker:
        return document
    copy = dict(document)
    part = "event" if document["notification"] == "event" else "suppressed"
    copy[part] = {**document[part], "marker": limited}
    return copy
