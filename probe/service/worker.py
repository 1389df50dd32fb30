"""A worker process: decode and match the frames the reader hands it.

Each worker runs a whole `Pipeline` on the flows the dispatcher's hash gives it. The store and
the notifier live in the main process only (one writer each, one token bucket per marker), so a
worker's pipeline is given a `Forwarder` in their place: every call it would make on them is
collected and sent, once per batch, to the main process, which makes the call for real.
"""

from __future__ import annotations

import ctypes
import pickle
import signal
import struct
import time
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from probe.bundles.library import MarkerLibrary
from probe.capture.frames import FrameBatch
from probe.config import Config
from probe.pipeline import Pipeline
from probe.process import forbid_core_dumps
from probe.record.events import Event
from probe.service.dispatch import KIND_BATCH, KIND_FINISH, KIND_MARKERS, join_batches, take_batch
from probe.store.records import BundleRecord

IDLE_TICK = 0.1
"""Seconds without a batch after which the worker moves its clock by the host's own, so that
flows and fragments expire on a quiet link."""
STATISTICS_INTERVAL = 1.0
MAX_JOINED_FRAMES = 65536
"""Queued batches are joined into one up to this many frames (a few MiB)."""
PR_SET_PDEATHSIG = 1
RELEASE = struct.Struct("=Q")


class Forwarder:
    """Stands for the store and the notifier in a worker's pipeline.

    `detected` answers True: whether the marker is over its rate is decided by the main process's
    notifier, which drops the revisions of the detections it suppressed."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.calls: list[tuple] = []
        self.pipeline: Pipeline | None = None
        self._sent_at = 0.0

    def append(self, event: Event) -> None:
        self.calls.append(("append", event))

    def append_bundle(self, record: BundleRecord) -> None:
        self.calls.append(("append_bundle", record))

    def detected(self, event: Event) -> bool:
        self.calls.append(("detected", event))
        return True

    def revised(self, event: Event, final: bool) -> None:
        self.calls.append(("revised", event, final))

    def bundle_changed(self, record: BundleRecord) -> None:
        self.calls.append(("bundle_changed", record))

    def report_suppressed(self) -> None:
        self.calls.append(("report_suppressed",))

    def flush_if_due(self) -> None:
        """Called by the pipeline after each batch: send what it recorded, and the counters once
        a second."""
        now = time.monotonic()
        if self.calls or now - self._sent_at >= STATISTICS_INTERVAL:
            self.send(False)
            self._sent_at = now

    def send(self, finished: bool) -> None:
        calls, self.calls = self.calls, []
        self.connection.send_bytes(pickle.dumps((calls, worker_statistics(self.pipeline), finished), pickle.HIGHEST_PROTOCOL))  # type: ignore[arg-type]


def worker_statistics(pipeline: Pipeline) -> dict[str, Any]:
    decoder = pipeline.decoder
    return {
        "packets": pipeline.packets,
        "bytes": pipeline.bytes,
        "decode_errors": sum(decoder.malformed.values()) + sum(decoder.unsupported_linktypes.values()),
        "truncated": decoder.truncated,
        "flows_active": len(pipeline.flows),
        "flows_created": pipeline.flows.created,
        "flows_evicted": pipeline.flows.evicted,
        "anomalies": dict(pipeline.anomalies),
    }


def run_worker(config: Config, markers: bytes, memory_name: str, batches: Connection, results: Connection) -> None:
    """The worker's life: batches until told to finish. The main process coordinates stopping,
    so SIGINT and SIGTERM are ignored here; if the main process dies, so does the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    forbid_core_dumps()
    memory = SharedMemory(name=memory_name)  # the main process owns it (and its resource tracker, shared, unlinks it if the probe dies)
    library = MarkerLibrary()
    library.bundles, library.active = pickle.loads(markers)
    forwarder = Forwarder(results)
    pipeline = forwarder.pipeline = Pipeline(config, library, None, forwarder, forwarder)
    forwarder.send(False)

    def take(message: bytes) -> FrameBatch:
        batch, taken = take_batch(memory, message)
        batches.send_bytes(RELEASE.pack(taken))  # copied out: the reader may reuse the space
        return batch

    following = b""
    try:
        while True:
            if not following:
                if not batches.poll(IDLE_TICK):
                    pipeline.advance(time.time_ns())
                    forwarder.flush_if_due()
                    continue
                following = batches.recv_bytes()
            message, following = following, b""
            kind = message[0]
            if kind == KIND_BATCH:
                waiting = [take(message)]
                frames = len(waiting[0])
                while frames < MAX_JOINED_FRAMES and batches.poll(0):
                    following = batches.recv_bytes()
                    if following[0] != KIND_BATCH:
                        break
                    waiting.append(take(following))
                    frames += len(waiting[-1])
                    following = b""
                pipeline.process_batch(join_batches(waiting))
            elif kind == KIND_MARKERS:
                library.bundles, library.active = pickle.loads(message[1:])
            elif kind == KIND_FINISH:
                pipeline.finish()
                forwarder.send(True)
                return
    except EOFError:  # the main process is gone
        return
    finally:
        memory.close()
