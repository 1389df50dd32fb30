"""`probe run`: the live service on a tap or SPAN host.

One main process and `workers` worker processes:

- the main process's reader thread takes blocks from the interfaces' kernel rings, spreads their
  frames over the workers by a symmetric hash of the innermost addresses, and queues them in
  shared memory (a full queue drops the batch and counts it: capture never waits);
- each worker runs the pipeline (decode, flows, match) on its share and sends what it records;
- the main thread makes those calls on the one store and the one outbox, answers signals
  (SIGHUP reload, SIGTERM stop), keeps the status snapshot behind `probe status` and the
  metrics endpoint, and pings the systemd watchdog.

A worker that dies, or a reader that fails, stops the service with an error (systemd restarts it):
a probe silently missing part of its traffic would give false confidence.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from probe.bundles.library import LoadPolicy, LoadReport, MarkerLibrary
from probe.bundles.signing import TrustStore
from probe.bundles.versions import VersionState
from probe.capture.live import CaptureSet
from probe.clock import NANOSECONDS, Clock
from probe.config import Config, check_live, load_config
from probe.errors import MarkerError, ProbeError
from probe.fleet.agent import FleetAgent
from probe.fleet.bundles import installed_bundles
from probe.notify.notifier import Notifier, open_notifier
from probe.record.events import Event
from probe.service.dispatch import KIND_FINISH, KIND_MARKERS, FrameHasher, FrameQueue, split_batch
from probe.service.status import serve_metrics, serve_status
from probe.service.systemd import SystemdNotifier
from probe.service.worker import run_worker
from probe.store.records import BundleRecord, bundle_records
from probe.store.ring import RingStore

log = logging.getLogger("probe")

WORKER_START_TIMEOUT = 120.0
SNAPSHOT_INTERVAL = 1.0
DROP_WARNING_INTERVAL = 10.0
"""Frames lost at the kernel's ring or a worker's queue are logged at most this often (with the
count since the last warning), so a sustained overload is loud without flooding the journal."""
OUTBOX_STATUS_INTERVAL = 2.0
LIVE_SECTIONS = ("markers",)
"""Configuration sections a SIGHUP applies; the others take effect at the next start."""


class Recorder:
    """Makes, on the one store and notifier, the calls the workers' pipelines made.

    The workers cannot know which detections the notifier suppressed (its token bucket is per
    marker, across workers), so they send every revision and the recorder drops those of events
    not notified. A bundle's expiry is noticed by every worker and recorded once."""

    def __init__(self, store: RingStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        self.events_by_type: Counter[str] = Counter()
        self._notified: set[bytes] = set()
        self._expiries_seen: set[tuple[str, str, str, int]] = set()

    def apply(self, calls: list[tuple]) -> None:
        for call in calls:
            name = call[0]
            if name == "append":
                self._append(call[1])
            elif name == "detected":
                if self.notifier.detected(call[1]):
                    self._notified.add(call[1].event_digest)
            elif name == "revised":
                self._revised(call[1], call[2])
            elif name == "report_suppressed":
                self.notifier.report_suppressed()
            elif self._first_time(name, call[1]):
                if name == "append_bundle":
                    self.store.append_bundle(call[1])
                else:
                    self.notifier.bundle_changed(call[1])

    def _append(self, event: Event) -> None:
        self.store.append(event)
        if event.revision == 0:
            self.events_by_type[event.marker.type] += 1

    def _revised(self, event: Event, final: bool) -> None:
        digest = event.event_digest
        if digest in self._notified:
            self.notifier.revised(event, final)
            if final:
                self._notified.discard(digest)

    def _first_time(self, name: str, record: BundleRecord) -> bool:
        if record.action != "expired":
            return True
        key = (name, record.issuer, record.bundle, record.version)
        if key in self._expiries_seen:
            return False
        self._expiries_seen.add(key)
        return True

    def bundles_changed(self, report: LoadReport, now: int) -> None:
        for record in bundle_records(report, now):
            self.store.append_bundle(record)
            self.notifier.bundle_changed(record)


class Worker:
    """The main process's handle on one worker: its process, queue, results and last figures."""

    def __init__(self, number: int, config: Config, markers: bytes, context: Any) -> None:
        self.number = number
        ours, theirs = context.Pipe(duplex=True)
        self.results, results_end = context.Pipe(duplex=False)
        self.queue = FrameQueue(config.service.worker_queue_bytes, ours)
        self.process = context.Process(target=run_worker, args=(config, markers, self.queue.memory.name, theirs, results_end), name=f"probe-worker-{number}", daemon=True)
        self.process.start()
        theirs.close()
        results_end.close()
        self.statistics: dict[str, Any] = {}
        self.finished = False
        self.rate = 0.0
        self._rate_mark = (time.monotonic(), 0)

    def receive(self, recorder: Recorder) -> None:
        try:
            calls, self.statistics, self.finished = pickle.loads(self.results.recv_bytes())
        except EOFError:
            raise ProbeError(f"worker {self.number} (pid {self.process.pid}) died (exit code {self.process.exitcode}); the service stops so that systemd restarts it") from None
        recorder.apply(calls)

    def figures(self) -> dict[str, Any]:
        now, packets = time.monotonic(), self.statistics.get("packets", 0)
        then, before = self._rate_mark
        if now - then >= SNAPSHOT_INTERVAL:
            self.rate = (packets - before) / (now - then)
            self._rate_mark = (now, packets)
        queue = self.queue
        return {"worker": self.number, "pid": self.process.pid, **self.statistics, "packets_per_second": round(self.rate, 1), "queue_bytes": queue.pending(), "dispatch_dropped_batches": queue.dropped_batches, "dispatch_dropped_frames": queue.dropped_frames}


def library_policy(config: Config, clock: Clock) -> LoadPolicy:
    """The live service's admission rules: signatures required unless the configuration says
    otherwise, and expired bundles refused by the wall clock."""
    section = config.markers
    required = section.require_signature if section.require_signature is not None else True
    return LoadPolicy(required, TrustStore(section.trust_store) if section.trust_store else None, VersionState(section.state_file or None), clock.now)


class Service:
    def __init__(self, config_path: str, clock: Clock) -> None:
        self.config_path = config_path
        self.config = config = load_config(config_path)
        check_live(config, config_path)
        self.clock = clock
        self.systemd = SystemdNotifier()
        self.started = clock.now()
        self.library = MarkerLibrary(library_policy(config, clock))
        report = self.library.load(self._marker_files())
        for line in report.refused:
            log.error(line)
        if not self.library.bundles and not config.fleet.bundle_bucket:
            raise MarkerError(f"{config_path}: markers.files: no marker bundle could be loaded; the probe would detect nothing")
        if not self.library.bundles:
            log.warning(f"no marker bundle loaded yet: detection starts with the first bundle fetched from bucket {config.fleet.bundle_bucket}")
        self.activated: dict[tuple[str, str], int] = {bundle.key: self.started for bundle in self.library.bundles.values()}
        self._generation = self.library.generation
        self.captures = CaptureSet(config.capture.interfaces, config.capture.bpf_filter, config.capture.snaplen, config.capture.buffer_bytes)
        self.workers: list[Worker] = []
        self.store: RingStore | None = None
        self.notifier: Notifier | None = None
        self._control = None
        self._stop_requested = False
        self._reload_requested = False
        self._reload_reports: list[LoadReport] = []
        """Loads finished on the reload thread (SIGHUP, or a bundle from the fleet's bus)."""
        self.fleet: FleetAgent | None = None
        self._reader_stop = threading.Event()
        self._reader_failure: BaseException | None = None
        self._snapshot: dict[str, Any] = {}
        self._drops_warned = {"kernel": 0, "queue": 0}
        self._drops_warned_at = 0.0
        self._outbox_statistics: dict[str, Any] = {}
        try:
            self._open(report)
        except BaseException:
            self._close()
            raise

    def _open(self, report: LoadReport) -> None:
        config = self.config
        self.store = RingStore(config.store.directory, config.store, self.clock, config.probe)
        self.notifier = open_notifier(config, self.clock)
        assert self.notifier is not None  # check_live requires an authority sink
        self.recorder = Recorder(self.store, self.notifier)
        self.recorder.bundles_changed(report, self.started)
        context = multiprocessing.get_context("spawn")  # nothing of this process (threads, locks, descriptors) leaks into a worker
        markers = self._markers_message()
        self.workers = [Worker(number, config, markers, context) for number in range(config.service.workers)]
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        for worker in self.workers:  # each says it is up with its first figures
            if not worker.results.poll(max(0.0, deadline - time.monotonic())):
                raise ProbeError(f"worker {worker.number} did not start within {WORKER_START_TIMEOUT:.0f} s")
            worker.receive(self.recorder)
        self._refresh_snapshot()
        self._control = serve_status(config.service.control_socket, self.snapshot)
        if config.service.metrics_address:
            serve_metrics(config.service.metrics_address, self.snapshot)
        self._reader = threading.Thread(target=self._read, name="capture-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch_outbox, name="outbox-status", daemon=True).start()
        if config.fleet.servers and (config.fleet.bundle_bucket or config.fleet.status_bucket):
            self.fleet = FleetAgent(config, self._bundle_directory(), self.snapshot, self.offer_bundle)
            self.fleet.start()

    def _bundle_directory(self) -> str:
        return self.config.fleet.bundle_directory or os.path.join(self.config.store.directory, "fleet-bundles")

    def _marker_files(self) -> list[str]:
        """The configured marker files, and the bundles fetched from the fleet's bus earlier."""
        fetched = installed_bundles(self._bundle_directory()) if self.config.fleet.bundle_bucket else []
        return list(self.config.markers.files) + fetched

    def offer_bundle(self, path: str, outcome: Callable[[LoadReport], None]) -> None:
        """A bundle fetched from the bus, loaded like a reloaded file (on the reload thread);
        `outcome` learns whether it was admitted."""
        def done(report: LoadReport) -> None:
            outcome(report)
            self._reload_done(report)
        self.library.load_in_background([path], done)

    def _markers_message(self) -> bytes:
        return pickle.dumps((self.library.bundles, self.library.active), pickle.HIGHEST_PROTOCOL)

    def run(self) -> None:
        """Until SIGTERM or SIGINT: then stop within `stop_timeout` (a second one exits at once)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        interfaces = ", ".join(self.config.capture.interfaces)
        log.info(f"capturing on {interfaces} with {len(self.workers)} worker(s)")
        self.systemd.notify("READY=1", f"STATUS=capturing on {interfaces}")
        next_ping = next_snapshot = time.monotonic()
        try:
            while not self._stop_requested:
                self._receive(SNAPSHOT_INTERVAL / 4)
                self.store.flush_if_due()  # type: ignore[union-attr]
                if self._reader_failure is not None:
                    raise ProbeError(f"capture failed: {self._reader_failure}")
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                while self._reload_reports:
                    self._reloaded(self._reload_reports.pop(0))
                now = time.monotonic()
                if now >= next_snapshot:
                    next_snapshot = now + SNAPSHOT_INTERVAL
                    self._refresh_snapshot()
                    self._warn_of_drops()
                    self.systemd.notify(f"STATUS={self._status_line()}")
                if self.systemd.watchdog_interval and now >= next_ping:
                    next_ping = now + self.systemd.watchdog_interval
                    self.systemd.notify("WATCHDOG=1")
        finally:
            self._stop()

    def _receive(self, timeout: float) -> None:
        pending = {worker.results: worker for worker in self.workers if not worker.finished}
        if not pending:
            time.sleep(timeout)
            return
        for connection in wait(list(pending), timeout):
            pending[connection].receive(self.recorder)  # type: ignore[index]

    def _on_stop(self, number: int, frame: object) -> None:
        if self._stop_requested:
            log.error(f"second {signal.Signals(number).name}: exiting at once; events not yet stored are lost")
            os._exit(1)
        self._stop_requested = True

    def _on_reload(self, number: int, frame: object) -> None:
        self._reload_requested = True

    def _read(self) -> None:
        """The reader thread: blocks from the rings to the workers' queues."""
        queues = [worker.queue for worker in self.workers]
        hasher = FrameHasher(len(queues)) if len(queues) > 1 else None
        captures = self.captures
        def dispatch(batches: list) -> None:
            for batch in batches:
                if hasher is None:
                    queues[0].put(batch)
                    continue
                for queue, part in zip(queues, split_batch(batch, hasher.assign(batch), len(queues))):
                    if part is not None:
                        queue.put(part)

        try:
            while not self._reader_stop.is_set():
                captures.wait(0.05)
                dispatch(captures.read())
            for _ in range(max(capture.blocks for capture in captures.captures)):  # at stop: what the rings held then
                batches = captures.read()
                if not batches:
                    break
                dispatch(batches)
        except BaseException as error:
            self._reader_failure = error

    def _reload(self) -> None:
        """SIGHUP: read the configuration again and apply its [markers] section (new bundles, new
        versions, trust store); other sections wait for a restart, which a warning says."""
        log.info("reload requested")
        try:
            config = load_config(self.config_path)
            check_live(config, self.config_path)
        except ProbeError as error:
            log.error(f"reload: {error}; the running configuration stays, bundles are reloaded from it")
            config = self.config
        for section in dataclasses.fields(Config):
            if section.name not in LIVE_SECTIONS and getattr(config, section.name) != getattr(self.config, section.name):
                log.warning(f"reload: [{section.name}] changed: it takes effect at the next start (systemctl restart probe)")
        if config.markers != self.config.markers:
            policy = library_policy(config, self.clock)
            policy.versions = self.library.policy.versions  # what was accepted stays the floor, whatever the state file says
            self.library.policy = policy
            self.config = dataclasses.replace(self.config, markers=config.markers)
        self.library.load_in_background(self._marker_files(), self._reload_done)

    def _reload_done(self, report: LoadReport) -> None:
        self._reload_reports.append(report)

    def _reloaded(self, report: LoadReport) -> None:
        now = self.clock.now()
        for line in report.refused:
            log.error(f"reload: {line}")
        if self.library.generation != self._generation:
            self._generation = self.library.generation
            for bundle in report.accepted:
                self.activated[bundle.key] = now
            markers = self._markers_message()
            for worker in self.workers:
                worker.queue.send(KIND_MARKERS, markers)
            log.info(f"reload: {self.library.active.active_count} markers active from {len(self.library.bundles)} bundle(s)")
        self.recorder.bundles_changed(report, now)

    def _watch_outbox(self) -> None:
        """The delivery process's figures, asked for on a thread of its own: a slow answer must
        not hold the main loop."""
        while not self._stop_requested:
            try:
                self.notifier.outbox.pending()  # type: ignore[union-attr]
                self._outbox_statistics = {name: dataclasses.asdict(statistics) for name, statistics in self.notifier.outbox.statistics.items()}  # type: ignore[union-attr]
            except ProbeError as error:
                if not self._stop_requested:
                    log.warning(f"outbox status: {error}")
            time.sleep(OUTBOX_STATUS_INTERVAL)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def _refresh_snapshot(self) -> None:
        now = self.clock.now()
        store = self.store
        assert store is not None and self.notifier is not None
        times = [summary.time_min for summary in store.segments() if summary.time_min is not None]
        interfaces = {}
        for capture in self.captures.captures:
            received, dropped = capture.statistics()
            interfaces[capture.interface] = {"received": received, "dropped": dropped, "frames": capture.frames, "bytes": capture.bytes}
        sinks = {name: {key: figures.get(key, 0) for key in ("delivered", "filtered", "failures", "pending")} for name, figures in self._outbox_statistics.items()}
        self._snapshot = {
            "probe": {"name": self.config.probe.name, "site": self.config.probe.site, "pid": os.getpid(), "uptime_seconds": (now - self.started) // NANOSECONDS, "declaration": self.config.declaration.reference},
            "interfaces": interfaces,
            "workers": [worker.figures() for worker in self.workers],
            "events": {"total": sum(self.recorder.events_by_type.values()), "by_marker_type": dict(self.recorder.events_by_type)},
            "bundles": [{"issuer": bundle.issuer, "id": bundle.id, "version": bundle.version, "age_seconds": (now - self.activated.get(bundle.key, self.started)) // NANOSECONDS} for bundle in self.library.bundles.values()],
            "markers_active": self.library.active.active_count,
            "store": {"bytes": store.total_bytes(), "oldest_record_age_seconds": (now - min(times)) // NANOSECONDS if times else None},
            "outbox": {"dropped": self.notifier.outbox.dropped, "sinks": sinks},
        }

    def _warn_of_drops(self) -> None:
        now = time.monotonic()
        if now - self._drops_warned_at < DROP_WARNING_INTERVAL:
            return
        snapshot = self._snapshot
        totals = {"kernel": sum(interface["dropped"] for interface in snapshot["interfaces"].values()), "queue": sum(worker["dispatch_dropped_frames"] for worker in snapshot["workers"])}
        advice = {"kernel": "the capture ring was full: raise capture.buffer_bytes, or add workers", "queue": "a worker's queue was full: the workers cannot keep up (add workers, or check the store's disk: a slow disk holds the main process)"}
        for where, total in totals.items():
            if total > self._drops_warned[where]:
                log.warning(f"{total - self._drops_warned[where]} frames dropped ({where}) since the last warning: {advice[where]}")
                self._drops_warned[where] = total
                self._drops_warned_at = now

    def _status_line(self) -> str:
        snapshot = self._snapshot
        packets = sum(worker.get("packets", 0) for worker in snapshot["workers"])
        drops = sum(interface["dropped"] for interface in snapshot["interfaces"].values())
        return f"{packets} packets, {snapshot['events']['total']} events, {drops} kernel drops"

    def _stop(self) -> None:
        """Stop capture, let every worker end its flows (their final revisions are stored and
        notified), flush the store, close the outbox; within `stop_timeout`."""
        self.systemd.notify("STOPPING=1")
        self._stop_requested = True
        deadline = time.monotonic() + self.config.service.stop_timeout
        self._reader_stop.set()
        if getattr(self, "_reader", None) is not None:
            self._reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.process.is_alive():
                worker.queue.send(KIND_FINISH)
        try:
            while any(not worker.finished for worker in self.workers) and time.monotonic() < deadline:
                self._receive(min(0.5, max(0.0, deadline - time.monotonic())))
        except ProbeError as error:
            log.error(str(error))
        unfinished = [worker.number for worker in self.workers if not worker.finished]
        if unfinished:
            log.error(f"worker(s) {unfinished} did not finish within stop_timeout ({self.config.service.stop_timeout:.0f} s): the last revisions of their open flows are lost (earlier revisions are stored)")
        self._close()

    def _close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.process.kill()
            worker.queue.close()
        if self.store is not None:
            self.store.flush()
            self.store.close()
        if self.notifier is not None:
            self.notifier.outbox.close()
        self.captures.close()
        if self._control is not None:
            self._control.shutdown()
            os.unlink(self.config.service.control_socket)
