"""Spreading captured frames over worker processes, and the shared-memory queue to each.

A worker must see every packet of the flows it holds, in both directions, fragments included;
the kernel's PACKET_FANOUT_HASH hashes the outer headers, so on mirrored traffic a whole
GRE/ERSPAN/VXLAN session would land on one worker and the two directions of an MPLS path could
split. The reader therefore hashes the innermost IP addresses, in canonical order (symmetric):
not the ports, because a datagram's later fragments carry none and must meet their first one in
the same worker. Common frames are hashed for the whole batch with the vector classifier; the
rest are decoded one by one just far enough to find their innermost addresses.

Frames go to a worker through a ring of shared memory (one copy in, one copy out); a small
descriptor and the worker's release travel through a pipe, whose system calls also order the
memory accesses of the two processes. A batch that finds the ring full is dropped and counted:
capture never waits for a worker.
"""

from __future__ import annotations

import struct
import threading
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from probe.capture.frames import FrameBatch
from probe.decode.batch import classify_batch
from probe.decode.frame import FrameDecoder

MIXERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], dtype=np.uint64)
DESCRIPTOR = struct.Struct("=BQQQQ")
"""kind, ring position, data bytes, frames, bytes of ring taken (wasted end of ring included)."""
KIND_BATCH = 1
KIND_MARKERS = 2
"""Followed by the pickled (bundles, compiled markers) the worker must match with from now on."""
KIND_FINISH = 3
"""End every flow, send the last events, exit."""
ARRAYS = ("offsets", "caplens", "wirelens", "timestamps", "linktypes")


def _mix(lanes: np.ndarray) -> np.ndarray:
    """A 64-bit hash of canonical address lanes (a-high, a-low, b-high, b-low)."""
    with np.errstate(over="ignore"):
        value = (lanes[:, 0] * MIXERS[0]) ^ (lanes[:, 1] * MIXERS[1]) ^ (lanes[:, 2] * MIXERS[2]) ^ (lanes[:, 3] * MIXERS[3])
        value ^= value >> np.uint64(29)
        value *= MIXERS[0]
        value ^= value >> np.uint64(32)
    return value


class FrameHasher:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.decoder = FrameDecoder(None)  # fragments passed through: each gives its addresses at once

    def assign(self, batch: FrameBatch) -> np.ndarray:
        """The worker of each frame of the batch."""
        lanes = np.zeros((len(batch), 4), dtype=np.uint64)
        fast = classify_batch(batch)
        if fast.count:
            lanes[fast.frames] = fast.lanes[:, :4]
        others = fast.others.tolist()
        if others:
            decode = self.decoder.decode
            data = batch.data
            rows = zip(others, batch.offsets[others].tolist(), batch.caplens[others].tolist(), batch.wirelens[others].tolist(), batch.linktypes[others].tolist())
            for frame, offset, caplen, wirelen, linktype in rows:
                packet = decode(data, offset, caplen, wirelen, linktype, 0)
                if packet is not None and packet.src:
                    low, high = sorted((packet.src, packet.dst))
                    lanes[frame] = struct.unpack("!QQQQ", low + high)
        return (_mix(lanes) % np.uint64(self.workers)).astype(np.int64)


def split_batch(batch: FrameBatch, workers: np.ndarray, count: int) -> list[FrameBatch | None]:
    """One batch per worker with its frames, in capture order (None for a worker with none)."""
    parts: list[FrameBatch | None] = []
    data = batch.data
    for worker in range(count):
        frames = np.flatnonzero(workers == worker)
        if not len(frames):
            parts.append(None)
            continue
        offsets, caplens = batch.offsets[frames], batch.caplens[frames]
        pieces = b"".join([data[offset : offset + caplen] for offset, caplen in zip(offsets.tolist(), caplens.tolist())])
        new_offsets = np.concatenate(([0], np.cumsum(caplens)[:-1])).astype(np.int64)
        parts.append(FrameBatch(pieces, new_offsets, caplens, batch.wirelens[frames], batch.timestamps[frames], batch.linktypes[frames]))
    return parts


class FrameQueue:
    """The reader's end of one worker's queue: frames into shared memory, descriptors down the pipe."""

    def __init__(self, size: int, connection: Connection) -> None:
        self.memory = SharedMemory(create=True, size=size)
        self.size = size
        self.connection = connection
        self.written = 0
        """Ring bytes taken since start (a monotonic position)."""
        self.released = 0
        self.dropped_batches = 0
        self.dropped_frames = 0
        self._sending = threading.Lock()
        self._receiving = threading.Lock()

    def send(self, kind: int, payload: bytes = b"") -> None:
        """A control message (from the main thread while the reader thread queues batches)."""
        with self._sending:
            self.connection.send_bytes(bytes((kind,)) + payload)

    def put(self, batch: FrameBatch) -> bool:
        """Queue a batch for the worker; False (counted) when its ring has no room for it."""
        self._collect_releases()
        count = len(batch)
        data_size = (len(batch.data) + 7) & ~7
        need = data_size + 8 * count * len(ARRAYS)
        position = self.written % self.size
        skip = self.size - position if position + need > self.size else 0
        if self.written + skip + need - self.released > self.size:
            self.dropped_batches += 1
            self.dropped_frames += count
            return False
        position = (position + skip) % self.size
        buffer = self.memory.buf
        buffer[position : position + len(batch.data)] = batch.data
        at = position + data_size
        for name in ARRAYS:
            column = np.ascontiguousarray(getattr(batch, name), dtype=np.int64)
            buffer[at : at + 8 * count] = column.tobytes()
            at += 8 * count
        self.written += skip + need
        with self._sending:
            self.connection.send_bytes(DESCRIPTOR.pack(KIND_BATCH, position, len(batch.data), count, skip + need))
        return True

    def _collect_releases(self) -> None:
        """Read the worker's releases (by the reader thread before a put, by the main thread for
        the status on a quiet link)."""
        connection = self.connection
        with self._receiving:
            while connection.poll():
                self.released += struct.unpack("=Q", connection.recv_bytes())[0]

    def pending(self) -> int:
        """Ring bytes the worker has not taken yet."""
        self._collect_releases()
        return self.written - self.released

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()


def join_batches(batches: list[FrameBatch]) -> FrameBatch:
    """Several queued batches as one: a worker that fell behind takes all that wait at once, and
    the pipeline's cost per batch is spread over more frames exactly when that matters."""
    if len(batches) == 1:
        return batches[0]
    starts = np.cumsum([0] + [len(batch.data) for batch in batches[:-1]])
    columns = {name: np.concatenate([getattr(batch, name) for batch in batches]) for name in ARRAYS if name != "offsets"}
    offsets = np.concatenate([batch.offsets + start for batch, start in zip(batches, starts.tolist())])
    return FrameBatch(b"".join(batch.data for batch in batches), offsets, **columns)


def take_batch(memory: SharedMemory, descriptor: bytes) -> tuple[FrameBatch, int]:
    """The worker's end: copy a batch out of the ring; the ring bytes to release."""
    _, position, data_size, count, taken = DESCRIPTOR.unpack(descriptor)
    buffer = memory.buf
    data = bytes(buffer[position : position + data_size])
    at = position + ((data_size + 7) & ~7)
    columns = []
    for _ in ARRAYS:
        columns.append(np.frombuffer(buffer[at : at + 8 * count], dtype=np.int64).copy())
        at += 8 * count
    return FrameBatch(data, *columns), taken
