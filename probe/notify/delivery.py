"""The delivery process: reads the spool and delivers to every sink, beside the probe.

It runs as a child of the probe (`python -m probe.notify.delivery`), so that rendering documents,
TLS, HTTP and syslog framing never take the probe's interpreter from packet matching: the probe
only appends to the spool and writes one byte to a pipe. One thread per sink makes the spool
durable, reads its sink's next entries in detection order, applies the sink's filter and TLP rule,
delivers, and moves the sink's cursor past what was acknowledged. A failed delivery is retried,
the same entries in the same order, after a delay that doubles from `retry_initial` up to
`retry_max`, each drawn between half and all of it (jitter: many probes do not hit a recovered
receiver in step). A sink unreachable at start is no error: it is reported once, and its
notifications wait.

The probe talks to it over a connection (`outbox.py`): `drain`, `status` and `stop` requests, and
back the replies and this process's log messages, which the probe logs as its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import select
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from probe.clock import Clock
from probe.config import Config
from probe.errors import ProbeError
from probe.notify.documents import for_sink, probe_identity, spooled_document
from probe.notify.sinks import Sink, SinkError
from probe.notify.sinks.build import build_sinks
from probe.notify.spool import SpoolEntry, SpoolReader
from probe.process import forbid_core_dumps

log = logging.getLogger("probe.notify")

READ_BATCH = 256
DELIVERY_CHUNK = 64
GATHER = 0.05
"""Seconds a woken delivery thread waits for more notifications: one fsync and one read for a
burst, at the cost of 50 ms of latency. Fewer fsyncs matter: each one makes the kernel commit
its journal, on whichever core it likes, the probe's included."""
NICENESS = 10
"""Delivery yields the CPU to packet matching when both want it; its deadline is a second."""
IDLE_WAKE = 1.0
"""Seconds an idle delivery thread sleeps before it looks for expired entries again."""
BUSY_WAKE = 0.05
LATENCY_SAMPLES = 100_000


@dataclass
class SinkStatistics:
    """One sink's figures, kept by its delivery thread and sent to the probe as they are."""

    delivered: int = 0
    filtered: int = 0
    """Entries this sink's filter did not take."""
    failures: int = 0
    pending: int = 0
    """Entries not yet acknowledged, filled in when the probe asks."""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    """Seconds from a notification's spooling to its acknowledgement, the latest kept."""


class DeliveryThread(threading.Thread):
    def __init__(self, delivery: Delivery, sink: Sink) -> None:
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.delivery = delivery
        self.sink = sink
        self.statistics = SinkStatistics()
        self._waiting: list[SpoolEntry] = []
        self._failing_since: float | None = None

    def run(self) -> None:
        delivery = self.delivery
        delay = delivery.retry_initial
        while not delivery.stopping.is_set():
            try:
                if not self._waiting:
                    appended = delivery.appended
                    self._waiting = delivery.read(self.sink.name)
                    if not self._waiting:
                        delivery.idle(appended)
                        self.sink.maintain(delivery.clock.now())
                        continue
                self._deliver()
            except Exception as error:  # noqa: BLE001 (a sink or the spool's disk: retried, never fatal)
                if delivery.stopping.is_set():
                    break  # a delivery cut short to stop: what was sent is acknowledged
                self.statistics.failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    where = f"sink {self.sink.name}: {error}" if isinstance(error, SinkError) else f"sink {self.sink.name}: {type(error).__name__}: {error}"
                    log.warning(f"{where}; notifications are kept in the spool and retried (at least once, in order)")
                delivery.stopping.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, delivery.retry_max)
                continue
            if self._failing_since is not None:
                log.warning(f"sink {self.sink.name}: delivering again after {time.monotonic() - self._failing_since:.1f} s")
                self._failing_since = None
            delay = delivery.retry_initial

    def _deliver(self) -> None:
        """Send what the filter takes of the waiting entries, a chunk at a time (so that a stop
        waits for one chunk at most, and a crash repeats one chunk at most); acknowledge each
        chunk, and on failure the prefix that was delivered."""
        delivery = self.delivery
        while self._waiting and not delivery.stopping.is_set():
            chunk = self._waiting[:DELIVERY_CHUNK]
            now = delivery.clock.now()
            taken: list[tuple[SpoolEntry, dict[str, Any]]] = []
            for entry in chunk:
                if entry.expires > now:  # past its retention: never sent
                    document = for_sink(spooled_document(entry.item, delivery.identity, entry.created), self.sink.max_tlp)
                    if self.sink.wants(document):
                        taken.append((entry, document))
            try:
                if taken:
                    self.sink.deliver([(document, entry.expires) for entry, document in taken])
            except SinkError as error:
                if error.delivered:
                    self._acknowledge(chunk, [entry for entry, _ in taken[: error.delivered]], taken[error.delivered - 1][0].sequence)
                raise
            self._acknowledge(chunk, [entry for entry, _ in taken], chunk[-1].sequence)

    def _acknowledge(self, chunk: list[SpoolEntry], delivered: list[SpoolEntry], last: int) -> None:
        acknowledged = time.time_ns()
        statistics = self.statistics
        statistics.delivered += len(delivered)
        statistics.filtered += sum(1 for entry in chunk if entry.sequence <= last) - len(delivered)
        statistics.latencies.extend((acknowledged - entry.created) / 1e9 for entry in delivered)
        self.delivery.acknowledge(self.sink.name, last)
        self._waiting = [entry for entry in self._waiting if entry.sequence > last]


class Delivery:
    """The delivery process's state: the spool reader (shared by the threads under one lock),
    the sinks and their threads."""

    def __init__(self, config: Config, clock: Clock, earlier_runs: int) -> None:
        self.clock = clock
        self.identity = probe_identity(config)
        self.retry_initial = config.notify.retry_initial
        self.retry_max = config.notify.retry_max
        self.sinks = build_sinks(config, clock)
        self.reader = SpoolReader(config.spool_directory, [sink.name for sink in self.sinks], earlier_runs)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition()
        self.appended = 0
        """Wake-ups from the probe: a thread sleeps only if none came since it last looked."""
        self._last_delivery = 0.0
        self.threads = [DeliveryThread(self, sink) for sink in self.sinks]
        for sink in self.sinks:
            sink.stopping = self.stopping

    def start(self) -> None:
        with self._lock:
            self.reader.collect(self.clock.now())
        for thread in self.threads:
            thread.start()

    def read(self, sink: str) -> list[SpoolEntry]:
        with self._lock:
            self.reader.sync()
            entries = self.reader.read(sink, READ_BATCH)
        if entries:
            self._last_delivery = time.monotonic()
        return entries

    def acknowledge(self, sink: str, sequence: int) -> None:
        with self._lock:
            self.reader.acknowledge(sink, sequence)

    def wake(self) -> None:
        with self._wakeup:
            self.appended += 1
            self._wakeup.notify_all()

    def idle(self, appended: int) -> None:
        """Sleep until the probe spools more (unless it did since `appended`, or its segment grew):
        a second at most when all is quiet, a few milliseconds while notifications come (the probe
        wakes this process at most every 5 ms); then a little more, so that what it spools
        meanwhile goes in the same fsync and read. Delete what expired."""
        with self._lock:
            grew = self.reader.grew()
        with self._wakeup:
            if self.appended == appended and not grew and not self.stopping.is_set():
                self._wakeup.wait(BUSY_WAKE if time.monotonic() - self._last_delivery < 1.0 else IDLE_WAKE)
        self.stopping.wait(GATHER)
        with self._lock:
            self.reader.collect(self.clock.now())

    def statistics(self, last: int) -> dict[str, SinkStatistics]:
        with self._lock:
            return {thread.sink.name: dataclasses.replace(thread.statistics, pending=self.reader.pending(thread.sink.name, last)) for thread in self.threads}

    def drain(self, last: int, timeout: float, probe: int) -> dict[str, int]:
        """Wait until every sink acknowledged up to `last`, or `timeout`, or the probe (process
        `probe`) is gone; what each sink has left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                left = {sink: self.reader.pending(sink, last) for sink in self.reader.cursors}
            if not any(left.values()) or time.monotonic() >= deadline or os.getppid() != probe:
                with self._lock:  # the probe reads them (its size cap)
                    for sink in self.reader.cursors:
                        self.reader.save_cursor(sink)
                return {sink: count for sink, count in left.items() if count}
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        self.wake()
        for thread in self.threads:
            thread.join()
        for sink in self.sinks:
            sink.close()
        with self._lock:
            self.reader.close()


class ForwardToProbe(logging.Handler):
    """This process's log messages, sent to the probe, which logs them as its own."""

    def __init__(self, connection: Connection, lock: threading.Lock) -> None:
        super().__init__(logging.WARNING)
        self.connection = connection
        self.send_lock = lock
        """Shared with the replies (logging.Handler's own `lock` is another)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.send_lock:
                self.connection.send(("log", record.levelno, record.getMessage()))
        except OSError:
            pass  # the probe is gone; nothing to tell


def watch_wakeups(descriptor: int, delivery: Delivery) -> None:
    while True:
        select.select([descriptor], [], [])
        try:
            if not os.read(descriptor, 4096):
                return  # the probe closed its end
        except BlockingIOError:
            continue
        delivery.wake()


def main() -> None:
    forbid_core_dumps()
    os.nice(NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the probe says when to stop (Ctrl-C or systemd reach the whole group)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    probe = os.getppid()
    connection = Connection(int(sys.argv[1]))
    wakeups = int(sys.argv[2])
    os.set_blocking(wakeups, False)
    send_lock = threading.Lock()
    logger = logging.getLogger("probe")
    logger.addHandler(ForwardToProbe(connection, send_lock))
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        config, fixed_now, earlier_runs = connection.recv()
        delivery = Delivery(config, Clock(fixed_now), earlier_runs)
        delivery.start()
    except (ProbeError, OSError) as error:
        with suppress(OSError):
            connection.send((0, "failed", str(error)))
        sys.exit(1)
    threading.Thread(target=watch_wakeups, args=(wakeups, delivery), daemon=True).start()
    try:
        with send_lock:
            connection.send((0, "ready", None))
        while True:
            request_id, kind, *arguments = connection.recv()
            if kind == "drain":
                reply: Any = delivery.drain(arguments[0], arguments[1], probe)
            elif kind == "status":
                reply = delivery.statistics(arguments[0])
            else:
                delivery.stop()
                reply = delivery.statistics(arguments[0])
            with send_lock:
                connection.send((request_id, {"drain": "drained", "status": "status"}.get(kind, "stopped"), reply))
            if kind == "stop":
                return
    except (EOFError, OSError):  # the probe died: keep what is spooled for its next start
        delivery.stop()


if __name__ == "__main__":
    # Run the module under its own name, not as __main__: what it sends the probe (SinkStatistics)
    # must unpickle there as probe.notify.delivery's.
    from probe.notify import delivery

    delivery.main()
