"""`Outbox`: the spool and one delivery thread per sink.

`put` appends to the spool and wakes the threads; it never waits on a sink or on fsync, so packet
matching goes on whatever the receivers do. Each thread makes the spool durable, reads its sink's
next entries in detection order, applies the sink's filter and TLP rule, delivers, and moves the
sink's cursor past what was acknowledged. A failed delivery is retried, the same entries in the
same order, after a delay that doubles from `retry_initial` up to `retry_max`, each drawn at
random between half and all of it (jitter: many probes do not retry a recovered receiver in step).
A sink unreachable at start is no error: it is reported once, and its notifications wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import Any

from probe.clock import Clock, add_months
from probe.config import MAXIMUM_RETENTION_MONTHS, Config, NotifySection
from probe.errors import NotifyError
from probe.notify.documents import dropped_document, for_sink
from probe.notify.sinks import Sink, SinkError
from probe.notify.sinks.jsonl import FileSink, StdoutSink
from probe.notify.sinks.syslog import SyslogSink
from probe.notify.sinks.webhook import WebhookSink
from probe.notify.spool import Spool, SpoolEntry, SpoolFull
from probe.store.retention import Retention

log = logging.getLogger("probe.notify")

READ_BATCH = 256
IDLE_WAKE = 1.0
"""Seconds an idle delivery thread sleeps before it looks for expired entries again."""
LATENCY_SAMPLES = 100_000


def build_sinks(config: Config, clock: Clock) -> list[Sink]:
    """The configured sinks, their files, secrets and certificates checked now, before any
    traffic is read; a problem is a `NotifyError` naming the sink and its key."""
    retention = Retention(config.store)
    shortest = min([retention.default_months, *retention.class_months.values()])
    sinks: list[Sink] = []
    for section in config.sinks:
        if section.type == "file":
            sinks.append(FileSink(section, clock, shortest))
        elif section.type == "stdout":
            sinks.append(StdoutSink(section))
        elif section.type == "syslog":
            sinks.append(SyslogSink(section, config.probe.name))
        else:
            sinks.append(WebhookSink(section))
    return sinks


class SinkStatistics:
    def __init__(self) -> None:
        self.delivered = 0
        self.filtered = 0
        """Entries this sink's filter did not take."""
        self.failures = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        """Seconds from a notification's making to its acknowledgement, latest first out."""


class DeliveryThread(threading.Thread):
    def __init__(self, outbox: Outbox, sink: Sink) -> None:
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.outbox = outbox
        self.sink = sink
        self.statistics = SinkStatistics()
        self._waiting: list[SpoolEntry] = []
        self._failing_since: float | None = None

    def run(self) -> None:
        outbox, spool = self.outbox, self.outbox.spool
        delay = outbox.section.retry_initial
        while not outbox.stopping.is_set():
            try:
                if not self._waiting:
                    appended = outbox.appended
                    self._waiting = spool.read(self.sink.name, spool.durable_sequence(), READ_BATCH)
                    if not self._waiting:
                        outbox.idle(appended)
                        continue
                self._deliver()
            except (SinkError, OSError, ValueError) as error:  # the spool's disk too: retried, never fatal
                self.statistics.failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    where = f"sink {self.sink.name}: {error}" if isinstance(error, SinkError) else f"{spool.directory}: spool unreadable for sink {self.sink.name}: {error}"
                    log.warning(f"{where}; notifications are kept in the spool and retried (at least once, in order)")
                outbox.stopping.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, outbox.section.retry_max)
                continue
            if self._failing_since is not None:
                log.warning(f"sink {self.sink.name}: delivering again after {time.monotonic() - self._failing_since:.1f} s ({spool.pending(self.sink.name)} notifications still waiting)")
                self._failing_since = None
            delay = outbox.section.retry_initial

    def _deliver(self) -> None:
        """Send what the filter takes of the waiting entries; acknowledge, even on failure, the
        prefix that was delivered or skipped."""
        now = self.outbox.clock.now()
        sink, statistics = self.sink, self.statistics
        taken: list[SpoolEntry] = []
        for entry in self._waiting:
            if entry.expires <= now:
                self.outbox.expired += 1
            elif sink.wants(entry.document):
                taken.append(entry)
            else:
                statistics.filtered += 1
        try:
            if taken:
                sink.deliver([(for_sink(entry.document, sink.max_tlp), entry.expires) for entry in taken])
        except SinkError as error:
            if error.delivered:
                last = taken[error.delivered - 1].sequence
                self._acknowledge(taken[: error.delivered], [entry for entry in self._waiting if entry.sequence <= last], last)
            raise
        self._acknowledge(taken, self._waiting, self._waiting[-1].sequence)

    def _acknowledge(self, delivered: list[SpoolEntry], done: list[SpoolEntry], last: int) -> None:
        acknowledged = time.time_ns()
        self.statistics.delivered += len(delivered)
        self.statistics.latencies.extend((acknowledged - entry.created) / 1e9 for entry in delivered)
        self.outbox.spool.acknowledge(self.sink.name, last)
        self._waiting = self._waiting[len(done) :]


class Outbox:
    def __init__(self, directory: str, section: NotifySection, sinks: list[Sink], clock: Clock, identity: dict[str, str]) -> None:
        if not directory:
            raise NotifyError("sinks are configured but there is no spool to keep their notifications until delivered: set [notify] spool_directory (or [store] directory)")
        self.section = section
        self.sinks = sinks
        self.clock = clock
        self.identity = identity
        """The probe's name, site and declaration, for the notifications the outbox makes itself."""
        self.spool = Spool(directory, section.spool_max_bytes, [sink.name for sink in sinks])
        self.spool.collect(clock.now())
        self.stopping = threading.Event()
        self._wakeup = threading.Condition()
        self.appended = 0
        """Notifications spooled by this process: a delivery thread sleeps only if none came
        since it last looked."""
        self.dropped = 0
        """Notifications the spool could not take (full, or the disk refused them)."""
        self.dropped_first = 0
        self.dropped_last = 0
        self._dropped_reported = 0
        self._drop_reason: str | None = None
        self.expired = 0
        """Entries a sink skipped because their retention passed before it could take them."""
        self.threads = [DeliveryThread(self, sink) for sink in sinks]
        for thread in self.threads:
            thread.start()

    def put(self, document: dict[str, Any], expires: int) -> bool:
        """Spool a notification for every sink; False when the spool could not take it (counted
        in `dropped`, logged once until the spool takes notifications again). The first one it
        takes again is followed by a `dropped` notification with the count of those lost."""
        created = time.time_ns()
        try:
            self.spool.append(created, expires, document)
        except SpoolFull as error:
            self.dropped += 1
            self.dropped_first = self.dropped_first or created
            self.dropped_last = created
            if self._drop_reason is None:
                log.error(f"{error}: notifications are dropped (counted; the events are still stored) until the sinks catch up")
            self._drop_reason = str(error)
            return False
        if self.dropped > self._dropped_reported:
            self._report_dropped(created)
        with self._wakeup:
            self.appended += 1
            self._wakeup.notify_all()
        return True

    def _report_dropped(self, now: int) -> None:
        count = self.dropped - self._dropped_reported
        report = dropped_document(count, self.dropped_first, self.dropped_last, self._drop_reason or "", self.identity)
        try:
            self.spool.append(now, add_months(self.clock.now(), MAXIMUM_RETENTION_MONTHS), report, reserved=True)
        except SpoolFull:
            return  # with the next notification the spool takes
        log.warning(f"{self.spool.directory}: spooling again; {count} notifications were dropped, reported to every sink")
        self._dropped_reported = self.dropped
        self.dropped_first = 0
        self._drop_reason = None

    def idle(self, appended: int) -> None:
        """A delivery thread found nothing to send: sleep until the next `put` (unless one came
        since it looked, `appended`), a second at most, and delete what expired meanwhile."""
        with self._wakeup:
            if self.appended == appended and not self.stopping.is_set():
                self._wakeup.wait(IDLE_WAKE)
        self.spool.collect(self.clock.now())

    def pending(self) -> dict[str, int]:
        return {sink.name: self.spool.pending(sink.name) for sink in self.sinks}

    def drain(self, timeout: float) -> dict[str, int]:
        """Wait until every sink has acknowledged everything spooled, or `timeout` seconds;
        what each sink still has pending."""
        deadline = time.monotonic() + timeout
        while any(self.pending().values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {name: count for name, count in self.pending().items() if count}

    def close(self) -> None:
        """Stop the threads (a delivery under way finishes or times out) and save the cursors;
        what is not delivered stays spooled for the next start."""
        self.stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        for thread in self.threads:
            thread.join()
        for sink in self.sinks:
            sink.close()
        self.spool.close()
