"""`probe collect`: the fleet's events, from the bus into one store, forwarded to the collector's
own sinks.

A durable pull consumer on the events stream hands over batches of messages. Each event
notification becomes the event the probe stored (`event_from_record`), and is appended to the
collector's ring store unless the store already holds that revision (`StoredRevisions`: a
redelivery, or a probe's publish repeated after JetStream's de-duplication window); every new
notification is spooled to the collector's sinks, made again from its checked fields and naming
the probe its subject names (`forwarded_document`). Only once the store has
fsync'd the batch and the outbox has it are the messages acknowledged, so a collector killed at
any point loses nothing and stores nothing twice: what it had not acknowledged comes again, and
what it had stored is recognised. A batch the store could not take (full disk) is
negatively acknowledged, to come again later.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
import nats.errors

from probe.clock import Clock
from probe.config import SUBJECT_TOKEN, Config
from probe.errors import FleetError
from probe.fleet.bus import EVENT_SUBJECTS, Bus, describe_failure
from probe.notify.documents import forwarded_document
from probe.notify.outbox import Outbox
from probe.record.events import event_from_record
from probe.store.retention import BUNDLES_CLASS
from probe.store.revisions import StoredRevisions
from probe.store.ring import RingStore

log = logging.getLogger("probe.collect")
FETCH_BATCH = 512
FETCH_WAIT = 1.0
"""Seconds a fetch waits for messages; also how soon a stop request is seen when idle."""
ACK_WAIT = 30.0
"""Seconds the stream waits for an acknowledgement before it delivers a message again."""
RETRY_DELAY = 5.0
"""Seconds before a batch the store could not take is delivered again."""
MAX_DECLARATION = 256
"""Characters of the declaration reference a probe's notifications carry (forwarded as they say)."""
FUTURE_SKEW = 24 * 3_600_000_000_000
"""How far ahead of the collector's clock an event's times may be (a probe's clock may be off);
beyond it the message is refused, since the store files and expires events by their times."""


@dataclass
class CollectorCounts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    """Event revisions the store already held: redelivered or published again."""
    forwarded: int = 0
    malformed: int = 0
    """Messages that are no notification the collector can read: logged, acknowledged, dropped."""
    retried: int = 0
    """Messages handed back because the store could not take them."""


class Collector:
    def __init__(self, config: Config, clock: Clock) -> None:
        if not config.fleet.servers:
            raise FleetError("fleet.servers: probe collect needs the bus's servers")
        if not config.store.directory:
            raise FleetError("store.directory: probe collect needs its own store")
        self.config = config
        self.clock = clock
        self.counts = CollectorCounts()
        self._stop = False
        self.bus = Bus(config.fleet, config.probe, "collector")
        self.store = RingStore(config.store.directory, config.store, clock, config.probe)
        self.revisions = StoredRevisions(self.store)
        self.outbox = Outbox(config, clock) if config.sinks else None
        self._subscription: Any = None
        self._answering: concurrent.futures.Future | None = None
        """The last batch's acknowledgements, on their way."""

    def run(self) -> None:
        """Until SIGTERM or SIGINT; the batches under way are finished first.

        The next batch is fetched while this one is stored, and acknowledgements go out without
        being waited for: the bus and the store work at the same time. An acknowledgement lost
        on the way only brings its messages again, which the store recognises."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        fleet = self.config.fleet
        log.info(f"collecting stream {fleet.stream} (consumer {fleet.consumer}) from {', '.join(fleet.servers)}")
        fetching: concurrent.futures.Future | None = None
        try:
            while not self._stop or fetching is not None:
                try:
                    self._subscribe()
                    if fetching is None:
                        fetching = self.bus.start(self._fetch())
                    messages = self.bus.result(fetching, FETCH_WAIT + fleet.connect_timeout + 1)
                    fetching = None if self._stop else self.bus.start(self._fetch())
                except FleetError as error:
                    if self._stop:
                        break
                    log.error(f"{error}; trying again in {RETRY_DELAY:g} s")
                    self._subscription = fetching = None
                    self._sleep(RETRY_DELAY)
                    continue
                if messages:
                    self.take(messages)
                self.store.flush_if_due()
        finally:
            self.close()

    def _on_stop(self, number: int, frame: object) -> None:
        self._stop = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and time.monotonic() < deadline:
            time.sleep(0.1)

    def _subscribe(self) -> None:
        if self._subscription is None:
            self.bus.connect()
            self._subscription = self.bus.call(self._pull_subscribe(), self.config.fleet.connect_timeout + 1)

    async def _pull_subscribe(self) -> Any:
        fleet = self.config.fleet
        consumer = ConsumerConfig(durable_name=fleet.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=ACK_WAIT, max_ack_pending=FETCH_BATCH * 8, filter_subject=EVENT_SUBJECTS)
        return await self.bus.jetstream.pull_subscribe(EVENT_SUBJECTS, durable=fleet.consumer, stream=fleet.stream, config=consumer)

    async def _fetch(self) -> list:
        try:
            return await self._subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
        except nats.errors.TimeoutError:
            return []

    def take(self, messages: list) -> None:
        """Store and forward one batch, then acknowledge it (or hand it back)."""
        not_stored = self.store.not_stored
        accepted = []
        for message in messages:
            self.counts.received += 1
            if self._take(message.subject, message.data):
                accepted.append(message)
        self.store.flush()
        if self.store.not_stored > not_stored:
            self.counts.retried += len(accepted)
            self.revisions.forget_open()
            log.error(f"{self.store.directory}: the store could not take {self.store.not_stored - not_stored} event(s): {len(accepted)} message(s) handed back, delivered again in {RETRY_DELAY:g} s")
            taken = {id(message) for message in accepted}
            self._answering = self.bus.start(self._answer([message for message in messages if id(message) not in taken], accepted))
        else:
            self._answering = self.bus.start(self._answer(messages, []))
        self._answering.add_done_callback(self._answered)

    async def _answer(self, done: list, handed_back: list) -> None:
        """Acknowledge what is stored or dropped; hand back what the store could not take."""
        for message in done:
            await message.ack()
        for message in handed_back:
            await message.nak(delay=RETRY_DELAY)
        await self.bus.connection.flush(timeout=int(self.config.fleet.connect_timeout) or 1)

    def _answered(self, answering: concurrent.futures.Future) -> None:
        if not answering.cancelled() and answering.exception() is not None:
            log.warning(f"acknowledgements not confirmed by the bus ({describe_failure(answering.exception(), self.config.fleet)}): their messages come again after {ACK_WAIT:g} s and are recognised as stored")

    def _take(self, subject: str, data: bytes) -> bool:
        """False for a message the collector cannot read (logged, dropped). The probe that saw an
        event is the one its subject names, `probe.events.<site>.<name>`: what the bus let it
        publish to, where a probe's permissions confine it (systemd/nats-authorization.conf).
        What is forwarded is made again from the checked fields, naming that probe."""
        try:
            tokens = subject.split(".")
            if len(tokens) != 4 or not all(SUBJECT_TOKEN.fullmatch(token) for token in tokens[2:]):
                raise ValueError("the subject is not probe.events.<site>.<probe>")
            site, name = tokens[2:]
            document = json.loads(data)
            event = event_from_record(document["event"], (name, site)) if document["notification"] == "event" else None
            if event is not None and max(event.timestamp, event.opened, event.first_seen, event.last_seen) > self.clock.now() + FUTURE_SKEW:
                raise ValueError(f"a time of the event is ahead of this collector's clock by more than {FUTURE_SKEW // 3_600_000_000_000} hours")
            forwarded = None
            if self.outbox is not None:
                declaration = document["probe"].get("declaration", "")
                if not isinstance(declaration, str) or len(declaration) > MAX_DECLARATION:
                    raise ValueError(f"probe declaration {declaration!r:.40} is not a reference of at most {MAX_DECLARATION} characters")
                forwarded = forwarded_document(document, event, {"name": name, "site": site, "declaration": declaration})
        except Exception as error:  # whatever a message makes its reading raise, it is only dropped
            return self._malformed(subject, error)
        if event is not None:
            try:
                if not self.revisions.append_new(event):
                    self.counts.duplicates += 1
                    return True
            except (ValueError, TypeError, OverflowError) as error:  # outside the store's allowlist (RecordError)
                return self._malformed(subject, error)
            self.counts.stored += 1
        if forwarded is not None and self.outbox is not None:
            retention = self.store.retention
            expires = retention.expiry(retention.class_of(event.marker), event.last_seen) if event is not None else retention.expiry(BUNDLES_CLASS, self.clock.now())
            if expires > self.clock.now() and self.outbox.put(forwarded, expires):
                self.counts.forwarded += 1
        return True

    def _malformed(self, subject: str, error: Exception) -> bool:
        self.counts.malformed += 1
        log.error(f"{subject}: a message that is no readable notification, dropped: {type(error).__name__}: {str(error)[:200]}")
        return False

    def close(self) -> None:
        self.store.flush()
        self.store.close()
        if self.outbox is not None:
            self.outbox.close()
        if self._answering is not None:
            concurrent.futures.wait([self._answering], self.config.fleet.connect_timeout + 1)
        self.bus.close()
        counts = self.counts
        log.info(f"stopped: {counts.received} messages, {counts.stored} events stored, {counts.duplicates} already stored, {counts.forwarded} forwarded, {counts.malformed} malformed")
