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

from probe.capture.reader import read_capture
from probe.config import Config
from probe.errors import CaptureError
from probe.match.loader import load_marker_file
from probe.match.markers import Marker, MarkerFile
from probe.pipeline import Pipeline
from probe.progress import Progress
from probe.record.events import EventWriter


@dataclass
class ReplayResult:
    pipeline: Pipeline
    writer: EventWriter
    marker_files: list[MarkerFile]
    captures: int = 0
    capture_errors: list[CaptureError] = field(default_factory=list)
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)


def load_markers(paths: list[str]) -> tuple[list[MarkerFile], list[Marker]]:
    files = [load_marker_file(path) for path in paths]
    return files, [marker for marker_file in files for marker in marker_file.markers]


def replay(config: Config, captures: list[str], marker_paths: list[str], events: IO[str], progress: Progress | None = None) -> ReplayResult:
    return run_replay(config, captures, load_markers(marker_paths)[0], events, progress)


def run_replay(config: Config, captures: list[str], marker_files: list[MarkerFile], events: IO[str], progress: Progress | None = None) -> ReplayResult:
    """Replay with markers already loaded (so that a bad marker file is reported before the
    events file is touched)."""
    markers = [marker for marker_file in marker_files for marker in marker_file.markers]
    writer = EventWriter(events)
    pipeline = Pipeline(config, markers, writer)
    result = ReplayResult(pipeline, writer, marker_files)
    started = time.perf_counter()
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
    finally:
        if collecting:
            gc.enable()
    if progress is not None:
        progress.close()
    result.elapsed = time.perf_counter() - started
    result.warnings = marker_warnings(marker_files, markers, pipeline)
    return result


def marker_warnings(marker_files: list[MarkerFile], markers: list[Marker], pipeline: Pipeline) -> list[str]:
    """Say so when markers were given but some, or all, could never match."""
    warnings = []
    for marker_file in marker_files:
        for kind, count in sorted(marker_file.not_loaded.items()):
            warnings.append(f"{marker_file.path}: {count} marker(s) of type {kind} not loaded: this version does not match that type")
    if marker_files and not markers:
        warnings.append("no marker could be loaded from the marker files given: nothing can match")
    elif markers and pipeline.first_timestamp is not None:
        first, last = pipeline.first_timestamp, pipeline.last_timestamp
        if not any((m.valid_from is None or m.valid_from <= last) and (m.valid_until is None or m.valid_until >= first) for m in markers):
            warnings.append("no marker is valid during the capture's time range: nothing could match")
    return warnings


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
        f"flows: {flows.created} created, {flows.expired} ended by idle timeout, {flows.evicted} evicted, {pipeline.handshake_overflows} handshake buffers overflowed",
        f"markers: {len(pipeline.markers)} loaded from {len(result.marker_files)} file(s)",
        f"events: {result.writer.written}" + (" (" + ", ".join(f"{kind} {count}" for kind, count in sorted(result.writer.by_marker_type.items())) + ")" if result.writer.written else ""),
        f"elapsed: {result.elapsed:.2f} s  ({rate:,.0f} packets/s, {pipeline.bytes * 8 / result.elapsed / 1e6 if result.elapsed else 0:,.1f} Mbit/s)",
    ]
    stream.write("".join(f"probe: {line}\n" for line in lines))
