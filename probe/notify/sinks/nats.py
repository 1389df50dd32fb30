"""NATS sink: each notification published to the fleet's JetStream stream, for `probe collect`.

Subject `probe.events.<site>.<probe>`; `<site>.<probe>/` and the document's idempotency key
(`<event_id>/<revision>` for an event) are the `Nats-Msg-Id` header, so JetStream stores a retried
publish once within its de-duplication window (the collector's store recognises older repeats).
A notification counts as delivered only on the stream's publish acknowledgement: until then the
outbox keeps it. A batch is published without waiting between messages, then its
acknowledgements are awaited in order.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from probe.config import Config, SinkSection
from probe.errors import FleetError, NotifyError
from probe.fleet.bus import Bus, connect_options, event_subject, probe_key
from probe.notify.sinks import Sink, SinkError


class NatsSink(Sink):
    def __init__(self, section: SinkSection, config: Config) -> None:
        super().__init__(section)
        self.fleet = config.fleet
        self.probe = config.probe
        self.subject = event_subject(config.probe)
        self.message_prefix = f"{probe_key(config.probe)}/"
        """JetStream de-duplicates message ids across the stream: two probes that saw one event
        publish the same idempotency key, and neither may make the other's look like a repeat."""
        self._bus: Bus | None = None
        try:
            connect_options(config.fleet, config.probe, f"sink {self.name} of probe")
        except FleetError as error:
            raise NotifyError(f"sink {self.name}: {error}") from None

    def describe(self) -> str:
        return f"nats {self.subject} → stream {self.fleet.stream}"

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        try:
            if self._bus is None:
                self._bus = Bus(self.fleet, self.probe, f"sink {self.name} of probe")
            self._bus.connect()
            acknowledged = self._bus.call(self._publish([document for document, _ in documents]), self.fleet.connect_timeout * 2 + 1)
        except FleetError as error:
            raise SinkError(f"{self.describe()}: {error}", 0) from None
        if acknowledged[0] < len(documents):
            raise SinkError(f"{self.describe()}: {acknowledged[1]}", acknowledged[0])

    async def _publish(self, documents: list[dict[str, Any]]) -> tuple[int, str]:
        """(documents acknowledged in order, why the next one was not)."""
        assert self._bus is not None
        jetstream = self._bus.jetstream
        pending = []
        for document in documents:
            body = json.dumps(document, separators=(",", ":")).encode()
            pending.append(await jetstream.publish_async(self.subject, body, stream=self.fleet.stream, headers={"Nats-Msg-Id": f"{self.message_prefix}{document['idempotency_key']}"}))
        for position, future in enumerate(pending):
            try:
                await asyncio.wait_for(future, self.fleet.connect_timeout)
            except Exception as error:
                for rest in pending[position:]:
                    rest.cancel()
                return position, self._bus.explain(error)
        return len(documents), ""

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
