"""A live probe's side of the fleet (`probe run` with a [fleet] section): heartbeats and bundles.

One thread, one bus connection. Every `heartbeat_interval` it puts the service's figures in the
status bucket. It watches the bundle bucket: each new object is fetched, unpacked
(`fleet/bundles.py`) and offered to the service, whose marker library admits it or refuses it
like a bundle file given by SIGHUP; the outcome comes back through `offered`. The bus being
unreachable stops neither capture nor detection: the thread logs it once per outage and tries
again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from probe.bundles.library import LoadReport
from probe.config import Config
from probe.errors import ProbeError
from probe.fleet.bundles import MAX_ARCHIVE_BYTES, discard, keep_only, unpack_bundle
from probe.fleet.bus import Bus, probe_key
from probe.fleet.heartbeat import heartbeat, snapshot_packets

log = logging.getLogger("probe.fleet")
RETRY_DELAY = 2.0


class FleetAgent:
    def __init__(self, config: Config, bundle_directory: str, snapshot: Callable[[], dict[str, Any]], offer: Callable[[str, Callable[[LoadReport], None]], None]) -> None:
        self.config = config
        self.bundle_directory = bundle_directory
        self._snapshot = snapshot
        self._offer = offer
        self.refused: str | None = None
        """The last bundle from the bus that was refused, and why (in every heartbeat)."""
        self.fetched = 0
        self._seen: dict[str, str] = {}
        """Object name → digest of the version last offered."""
        self._stop = threading.Event()
        self._failing: str | None = None
        self._last_packets: tuple[float, int] | None = None
        self._thread = threading.Thread(target=self._run, name="fleet-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.config.fleet.connect_timeout + 2)

    def _run(self) -> None:
        bus: Bus | None = None
        fleet = self.config.fleet
        next_beat = 0.0
        while not self._stop.is_set():
            try:
                if bus is None:
                    bus = Bus(fleet, self.config.probe, "probe")
                bus.connect()
                if fleet.bundle_bucket:
                    self._fetch_bundles(bus)
                if fleet.status_bucket and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + fleet.heartbeat_interval
                    self._beat(bus)
                if self._failing is not None:
                    log.info(f"fleet bus reachable again ({', '.join(fleet.servers)})")
                    self._failing = None
            except ProbeError as error:
                if str(error) != self._failing:
                    log.warning(f"fleet: {error}; detection goes on, trying again every {RETRY_DELAY:g} s")
                    self._failing = str(error)
            self._stop.wait(min(RETRY_DELAY, fleet.heartbeat_interval))
        if bus is not None:
            bus.close()

    def _beat(self, bus: Bus) -> None:
        snapshot = self._snapshot()
        if not snapshot:
            return
        now = time.monotonic()
        packets = snapshot_packets(snapshot)
        rate = 0.0
        if self._last_packets is not None and now > self._last_packets[0]:
            rate = (packets - self._last_packets[1]) / (now - self._last_packets[0])
        self._last_packets = (now, packets)
        document = heartbeat(snapshot, self.config.fleet.heartbeat_interval, rate, self.refused)
        bus.call(self._put_heartbeat(bus, json.dumps(document).encode()), self.config.fleet.connect_timeout + 1)

    async def _put_heartbeat(self, bus: Bus, value: bytes) -> None:
        store = await bus.jetstream.key_value(self.config.fleet.status_bucket)
        await store.put(probe_key(self.config.probe), value)

    def _fetch_bundles(self, bus: Bus) -> None:
        for name, archive in bus.call(self._new_objects(bus), self.config.fleet.connect_timeout * 4 + 1):
            try:
                path = unpack_bundle(name, archive, self.bundle_directory)
            except (ProbeError, OSError) as error:
                self._refused(f"{name}: {error}")
                continue
            self.fetched += 1
            log.info(f"fleet: bundle {name} fetched from bucket {self.config.fleet.bundle_bucket}: {path}")
            self._offer(path, lambda report, path=path: self._outcome(path, report))

    async def _new_objects(self, bus: Bus) -> list[tuple[str, bytes]]:
        """Objects whose digest changed since last seen, fetched whole."""
        store = await bus.jetstream.object_store(self.config.fleet.bundle_bucket)
        try:
            infos = await store.list()
        except Exception as error:  # nats-py raises NotFoundError for an empty bucket
            if "no objects" in str(error).lower() or type(error).__name__ == "NotFoundError":
                return []
            raise
        fetched = []
        for info in infos:
            if info.deleted or self._seen.get(info.name) == info.digest:
                continue
            if info.size is not None and info.size > MAX_ARCHIVE_BYTES:
                self._seen[info.name] = info.digest
                self._refused(f"{info.name}: {info.size:,} bytes, more than a bundle archive may hold")
                continue
            result = await asyncio.wait_for(store.get(info.name), self.config.fleet.connect_timeout * 4)
            self._seen[info.name] = info.digest
            fetched.append((info.name, result.data))
        return fetched

    def _outcome(self, path: str, report: LoadReport) -> None:
        """Called by the service once the library has judged a fetched bundle."""
        if any(bundle.path == path for bundle in report.accepted):
            keep_only(path)
            return
        reasons = [line for line in report.refused if path in line] or report.refused
        discard(path)
        self._refused("; ".join(reasons) or f"{path}: refused")

    def _refused(self, reason: str) -> None:
        self.refused = reason
        log.error(f"fleet: bundle refused: {reason}")
