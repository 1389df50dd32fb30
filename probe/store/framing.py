"""Segment and index files: a checked header, then records framed as length + CRC32C + msgpack.

Each frame is `u32 length | u32 CRC32C(length bytes + payload) | payload`, so a torn write (a
crash mid-append) or a corrupt byte is found at the first frame that does not check, and nothing
after a bad frame is ever read as a record. The header names the format version: a file written
by a newer probe is refused, never guessed at.
"""

from __future__ import annotations

import os
import struct
from contextlib import suppress

import msgpack
from crc32c import crc32c

from probe.errors import StoreError

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"PRBSEGMT"
INDEX_MAGIC = b"PRBINDEX"
FRAME = struct.Struct("<II")
PREAMBLE = struct.Struct("<8sHI")
"""Magic, format version, header length."""
MAX_FRAME = 1 << 20
"""No record is near this; a larger length is corruption."""


def frame(payload: bytes) -> bytes:
    length = len(payload).to_bytes(4, "little")
    return length + crc32c(payload, crc32c(length)).to_bytes(4, "little") + payload


def file_header(magic: bytes, header: dict) -> bytes:
    """The preamble and a framed msgpack header."""
    packed = frame(msgpack.packb(header))
    return PREAMBLE.pack(magic, FORMAT_VERSION, len(packed)) + packed


def read_header(path: str, data: bytes | memoryview, magic: bytes) -> tuple[dict, int]:
    """The header of a segment or index file and where its records start. A file cut inside its
    header (a crash while creating it) gives an empty header and position 0."""
    if len(data) < PREAMBLE.size:
        return {}, 0
    found, version, length = PREAMBLE.unpack_from(data)
    if found != magic:
        raise StoreError(f"{path}: not a probe store file (bad magic); move it out of the store directory")
    if version > FORMAT_VERSION:
        raise StoreError(f"{path}: written by store format version {version}, this probe reads up to version {FORMAT_VERSION}: read this store with the newer probe that wrote it")
    payloads, end = read_frames(data, PREAMBLE.size, PREAMBLE.size + length)
    if not payloads or end != PREAMBLE.size + length:
        return {}, 0
    header = msgpack.unpackb(payloads[0])
    if not isinstance(header, dict):
        raise StoreError(f"{path}: header is not a map; the file is not a probe store file")
    return header, end


def read_frames(data: bytes | memoryview, start: int, stop: int | None = None) -> tuple[list[bytes], int]:
    """Payloads of the good frames from `start`, and where the first bad or incomplete frame (or
    the end) is."""
    stop = len(data) if stop is None else min(stop, len(data))
    payloads = []
    position = start
    unpack = FRAME.unpack_from
    while position + 8 <= stop:
        length, checksum = unpack(data, position)
        end = position + 8 + length
        if length > MAX_FRAME or end > stop:
            break
        payload = bytes(data[position + 8 : end])
        if crc32c(payload, crc32c(data[position : position + 4])) != checksum:
            break
        payloads.append(payload)
        position = end
    return payloads, position


def header_complete(data: bytes) -> bool:
    """Whether a file holds all the bytes its preamble announces for its header: if so, a header
    that does not check was damaged, not cut short by a crash."""
    return len(data) >= PREAMBLE.size and len(data) >= PREAMBLE.size + PREAMBLE.unpack_from(data)[2]


def frames_resume(data: bytes, start: int) -> bool:
    """Whether, somewhere after `start`, a chain of good frames runs to the very end of `data`:
    then a bad frame at `start` is damage inside the file, not a tail torn by a crash (a crash
    cuts only the last write, after which nothing follows)."""
    end = len(data)
    for position in range(start + 1, end - FRAME.size + 1):
        length = int.from_bytes(data[position : position + 4], "little")
        if length <= MAX_FRAME and position + FRAME.size + length <= end:
            payloads, stop = read_frames(data, position)
            if payloads and stop == end:
                return True
    return False


def read_file(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def sync_directory(path: str) -> None:
    """Make a created, renamed or deleted entry of `path` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` whole (mode 0600): a crash leaves the old file or the new one."""
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            write_all(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    sync_directory(os.path.dirname(path))
