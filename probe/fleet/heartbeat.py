"""Heartbeats: each running probe puts its figures under its key of the status bucket every
`[fleet] heartbeat_interval`; `probe fleet status` reads the bucket. A heartbeat holds counts and
bundle identities, never an event."""

from __future__ import annotations

import json
import time
from typing import Any

import nats.js.errors

from probe.config import Config
from probe.errors import FleetError
from probe.fleet.bus import Bus


def snapshot_packets(snapshot: dict[str, Any]) -> int:
    """Packets the live service's workers took, in all (its status snapshot)."""
    return sum(worker.get("packets", 0) for worker in snapshot["workers"])


def heartbeat(snapshot: dict[str, Any], interval: float, packets_per_second: float, refused: str | None) -> dict[str, Any]:
    """The heartbeat of a live service's status snapshot."""
    probe = snapshot["probe"]
    return {
        "probe": probe["name"], "site": probe["site"], "time": time.time(), "interval": interval, "uptime_seconds": probe["uptime_seconds"],
        "bundles": [{"issuer": bundle["issuer"], "id": bundle["id"], "version": bundle["version"]} for bundle in snapshot["bundles"]],
        "markers_active": snapshot["markers_active"], "packets": snapshot_packets(snapshot),
        "packets_per_second": packets_per_second, "events": snapshot["events"]["total"], "events_by_marker_type": snapshot["events"]["by_marker_type"],
        "refused": refused,
    }


def read_heartbeats(config: Config) -> dict[str, dict[str, Any]]:
    """The last heartbeat of every probe, by `<site>.<probe>`."""
    if not config.fleet.servers:
        raise FleetError("fleet.servers: no bus configured")
    with Bus(config.fleet, config.probe, "probe fleet status") as bus:
        return bus.call(_read(bus, config.fleet.status_bucket), config.fleet.connect_timeout * 4 + 1)


async def _read(bus: Bus, bucket: str) -> dict[str, dict[str, Any]]:
    try:
        store = await bus.jetstream.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        raise FleetError(f"fleet.status_bucket: bucket {bucket!r} does not exist on the bus: run probe fleet setup") from None
    try:
        keys = await store.keys()
    except nats.js.errors.NoKeysError:
        return {}
    beats = {}
    for key in keys:
        entry = await store.get(key)
        if entry.value:
            beats[key] = json.loads(entry.value)
    return beats
