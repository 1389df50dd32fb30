"""`probe replay`: run captures through the pipeline and report what was found and what went wrong.

A capture that is corrupt or cut short is read up to its last good record and reported; the next
captures are still read, and every event found is written before the run reports the error.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import IO

from probe.bundles.library import LoadPolicy, LoadReport, MarkerLibrary
from probe.bundles.signing import TrustStore
from probe.bundles.versions import VersionState
from probe.capture.reader import read_capture
from probe.clock import Clock
from probe.config import Config
from probe.errors import CaptureError, MarkerError
from probe.notify.notifier import Notifier
from probe.notify.delivery import SinkStatistics
from probe.pipeline import Pipeline
from probe.progress import Progress
from probe.record.events import EventWriter, rfc3339
from probe.store.ring import RingStore


@dataclass
class ReplayResult:
    pipeline: Pipeline
    writer: EventWriter
    library: MarkerLibrary
    store: RingStore | None = None
    notifier: Notifier | None = None
    undelivered: dict[str, int] = field(default_factory=dict)
    """Per sink, notifications still spooled when the replay ended."""
    captures: int = 0
    capture_errors: list[CaptureError] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0
    """Seconds of CPU this process spent over the same span (its delivery process apart)."""
    warnings: list[str] = field(default_factory=list)


def load_library(config: Config, paths: list[str], require_signature: bool = False) -> MarkerLibrary:
    """The marker files, admitted under the configuration's [markers] rules; any refusal is an
    error (a replay never runs on part of what it was given). `require_signature` is the mode's
    default when the configuration does not say."""
    section = config.markers
    required = section.require_signature if section.require_signature is not None else require_signature
    policy = LoadPolicy(required, TrustStore(section.trust_store) if section.trust_store else None, VersionState(section.state_file or None))
    library = MarkerLibrary(policy)
    report = library.load(paths)
    if report.refused:
        more = f" (and {len(report.refused) - 1} more refused)" if len(report.refused) > 1 else ""
        raise MarkerError(report.refused[0] + more)
    return library


def replay(config: Config, captures: list[str], marker_paths: list[str], events: IO[str], progress: Progress | None = None) -> ReplayResult:
    return run_replay(config, captures, load_library(config, marker_paths), events, progress)


def run_replay(config: Config, captures: list[str], library: MarkerLibrary, events: IO[str], progress: Progress | None = None, store: RingStore | None = None, notifier: Notifier | None = None, clock: Clock | None = None) -> ReplayResult:
    """Replay with markers already loaded (so that a bad marker file is reported before the
    events file is touched). With a `store`, every event revision is stored too; with a
    `notifier`, events and bundle activations are notified, and the replay waits at its end up
    to [notify] drain_timeout for the sinks to acknowledge them. The caller closes both."""
    writer = EventWriter(events, config.probe, config.events.max_tlp)
    pipeline = Pipeline(config, library, writer, store, notifier)
    pipeline.record_load(LoadReport(accepted=list(library.bundles.values())), (clock or Clock()).now())
    result = ReplayResult(pipeline, writer, library, store, notifier)
    started, started_cpu = time.perf_counter(), time.process_time()
    # The packet path makes no reference cycles, so the cyclic collector would only spend time
    # rescanning the flow table as it grows; it is paused for the replay.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for path in captures:
            result.captures += 1
            pipeline.start_capture()
            try:
                for batch in read_capture(path):
                    pipeline.process_batch(batch)
                    if progress is not None:
                        progress.update(pipeline.packets, pipeline.bytes)
            except CaptureError as error:
                result.capture_errors.append(error.with_traceback(None))
        pipeline.finish()
        if store is not None:
            store.flush()
        result.elapsed, result.cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if notifier is not None:
            result.undelivered = notifier.outbox.drain(config.notify.drain_timeout)
    finally:
        if collecting:
            gc.enable()
    if progress is not None:
        progress.close()
    result.warnings = marker_warnings(library, pipeline.first_timestamp, pipeline.last_timestamp)
    return result


def marker_warnings(library: MarkerLibrary, first: int | None, last: int) -> list[str]:
    """Say so when markers were given but some, or all, could never match: feed entries that
    could not be read, bundles whose window excludes the whole capture."""
    warnings = []
    for bundle in library.bundles.values():
        for note in bundle.notes:
            warnings.append(note)
        if first is not None and ((bundle.valid_from is not None and bundle.valid_from > last) or (bundle.valid_until is not None and bundle.valid_until < first)):
            warnings.append(f"{bundle.path}: bundle {bundle.id} version {bundle.version} is valid from {_time(bundle.valid_from)} to {_time(bundle.valid_until)}, which excludes the whole capture: none of its markers can match")
    active = [marker for bundle in library.bundles.values() for marker, _ in bundle.validity_groups()]
    if library.bundles and not library.active.active_count:
        warnings.append("no marker of the files given can match: nothing can match")
    elif first is not None and not any((m.valid_from is None or m.valid_from <= last) and (m.valid_until is None or m.valid_until >= first) for m in active):
        warnings.append("no marker is valid during the capture's time range: nothing could match")
    return warnings


def _time(timestamp: int | None) -> str:
    return "-" if timestamp is None else rfc3339(timestamp)


def write_summary(result: ReplayResult, stream: IO[str] = sys.stderr) -> None:
    pipeline, decoder = result.pipeline, result.pipeline.decoder
    reassembler, flows = pipeline.reassembler, pipeline.flows
    rate = pipeline.packets / result.elapsed if result.elapsed else 0.0
    lines = [
        f"captures: {result.captures} ({len(result.capture_errors)} with errors)",
        f"packets: {pipeline.packets}  bytes: {pipeline.bytes}",
        f"decode errors: {sum(decoder.malformed.values())}" + (" (" + ", ".join(f"{kind} {count}" for kind, count in sorted(decoder.malformed.items())) + ")" if decoder.malformed else ""),
        f"truncated packets: {decoder.truncated}  non-IP frames: {decoder.not_ip}" + (f"  unsupported link types: {dict(decoder.unsupported_linktypes)}" if decoder.unsupported_linktypes else ""),
        f"fragments: {reassembler.reassembled} datagrams reassembled, {reassembler.timed_out} incomplete, {reassembler.overlaps} dropped for overlap, {reassembler.dropped} dropped at limits",
        f"flows: {flows.created} created, {flows.expired} ended by idle timeout, {flows.evicted} evicted",
        f"anomalies: {sum(pipeline.anomalies.values())}" + (" (" + ", ".join(f"{kind} {count}" for kind, count in sorted(pipeline.anomalies.items())) + ")" if pipeline.anomalies else ""),
        f"markers: {result.library.active.active_count} active, from {len(result.library.bundles)} bundle(s)",
        f"events: {result.writer.written}" + (" (" + ", ".join(f"{kind} {count}" for kind, count in sorted(result.writer.by_marker_type.items())) + ")" if result.writer.written else ""),
        *store_summary(result.store),
        *notification_summary(result.notifier),
        f"elapsed: {result.elapsed:.2f} s  ({rate:,.0f} packets/s, {pipeline.bytes * 8 / result.elapsed / 1e6 if result.elapsed else 0:,.1f} Mbit/s; {result.cpu:.2f} s of CPU in this process)",
    ]
    stream.write("".join(f"probe: {line}\n" for line in lines))


def store_summary(store: RingStore | None) -> list[str]:
    if store is None:
        return []
    lines = [f"store: {store.stored} records stored in {store.directory}" + (f", {store.not_stored} NOT stored (disk errors)" if store.not_stored else "")]
    if store.expired_on_arrival:
        lines.append(f"store: {store.expired_on_arrival} event revisions not stored: already past their retention (their last packet is older than the retention allows)")
    if store.evicted_segments:
        lines.append(f"store: {store.evicted_segments} segments ({store.evicted_records} records) evicted at max_bytes")
    return lines


def notification_summary(notifier: Notifier | None) -> list[str]:
    if notifier is None:
        return []
    outbox = notifier.outbox
    line = f"notifications: {notifier.made} spooled"
    if notifier.suppressed:
        line += f", {notifier.suppressed} detections not notified (their marker was over [notify] marker_rate; counted in suppressed notifications, stored)"
    if outbox.dropped:
        line += f", {outbox.dropped} DROPPED (spool full or disk errors; the events are in the store)"
    if notifier.expired_on_arrival:
        line += f", {notifier.expired_on_arrival} not made: already past their retention"
    lines = [line]
    for sink in outbox.sinks:
        statistics = outbox.statistics.get(sink.name, SinkStatistics())
        lines.append(f"sink {sink.name} ({sink.describe()}{', best-effort' if sink.best_effort else ''}): {statistics.delivered} delivered, {statistics.filtered} filtered out, {statistics.pending} waiting in the spool" + (f" after {statistics.failures} failed attempts" if statistics.failures else ""))
    return lines
