"""Opening a capture (file, standard input, gzip-compressed or not) and streaming it as FrameBatches.

Captures can be far larger than memory and can arrive on a pipe, so they are read in fixed-size
chunks; a parser turns the complete records of each chunk into one batch and the incomplete record
at its end starts the next chunk.
"""

from __future__ import annotations

import gzip
import io
import mmap
import os
import select
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from probe.capture import pcap, pcapng
from probe.capture.frames import FrameBatch
from probe.errors import CaptureError

CHUNK_SIZE = 16 * 1024 * 1024
"""Bytes read per step: large enough to amortise per-batch costs, small enough to keep memory flat."""
GZIP_MAGIC = b"\x1f\x8b"
GZIP_STEP = 256 * 1024
STDIN_PATH = "-"


class _Prepended:
    """A stream with bytes already read from it put back in front, so that sniffing the gzip magic
    also works on pipes, which cannot seek back."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int) -> bytes:
        head, self._head = self._head, b""
        if len(head) >= size:
            self._head = head[size:]
            return head[:size]
        return head + self._stream.read(size - len(head))

    def read_available(self, size: int) -> bytes:
        """Up to `size` bytes, returning as soon as the pipe has nothing more ready: a slow feed
        (a live `tcpdump -w -` upstream) reaches the matcher at once, a fast one in big chunks."""
        parts = [self._head] if self._head else []
        total = len(self._head)
        self._head = b""
        try:
            descriptor = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return b"".join(parts) + self._stream.read(size - total)
        while total < size:
            if parts and not select.select([descriptor], [], [], 0)[0]:
                break
            part = self._stream.read1(size - total) if hasattr(self._stream, "read1") else os.read(descriptor, size - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        return b"".join(parts)


class _GzipStream:
    """Decompresses as a stream, handing out every byte decompressed before a fault and raising the
    fault (as OSError, like any other read failure) only on the next read, so the frames before a
    damaged or truncated stretch still get delivered."""

    def __init__(self, compressed: BinaryIO | _Prepended) -> None:
        self._live = isinstance(compressed, _Prepended)
        self._gzip = gzip.GzipFile(fileobj=_AvailableBytes(compressed) if self._live else compressed, mode="rb")
        self._fault: OSError | None = None
        self._leftover = b""

    def read(self, size: int) -> bytes:
        """Up to `size` bytes. Decompression always asks for a large step (small ones leave output
        inside zlib until more input arrives, which on a pipe may be never); what exceeds `size`
        waits for the next call. On a pipe it returns as soon as something was decompressed."""
        parts = [self._leftover[:size]] if self._leftover else []
        self._leftover = self._leftover[size:]
        remaining = size - sum(map(len, parts))
        while remaining > 0 and not (self._live and parts):
            if self._fault is not None:
                if parts:
                    break
                raise self._fault
            try:
                part = self._gzip.read1(max(remaining, GZIP_STEP))
            except (OSError, EOFError, zlib.error) as exc:
                self._fault = OSError(f"gzip: {exc}")
                continue
            if not part:
                break
            self._leftover = part[remaining:]
            parts.append(part[:remaining])
            remaining -= len(parts[-1])
        return b"".join(parts)


class _AvailableBytes:
    """Lets the gzip decompressor read a pipe without blocking for more than has arrived."""

    def __init__(self, stream: _Prepended) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read_available(size if size >= 0 else CHUNK_SIZE)


class CaptureReader:
    """An open capture whose header has been checked. Iterate it once for its batches; close it (or
    use it in a `with`) to release the file if iteration stops early."""

    def __init__(self, path: str, file: BinaryIO) -> None:
        self.path = path
        self._file = file
        self._stream: BinaryIO | _Prepended | _GzipStream = file
        self._map: mmap.mmap | None = None
        seekable = file.seekable()
        start_position = file.tell() if seekable else 0
        start = self._read(len(GZIP_MAGIC), 0)
        if seekable:
            file.seek(start_position)
        else:
            self._stream = _Prepended(start, file)
        is_gzip = start == GZIP_MAGIC
        if is_gzip:
            self._stream = _GzipStream(self._stream)
        self._rereads = seekable and not is_gzip
        magic = self._read_exact(4)
        if not magic:
            raise CaptureError(path, 0, "empty file")
        if magic in pcap.MAGICS:
            self.format = "pcap"
            header = magic + self._read_exact(pcap.HEADER_SIZE - len(magic))
            self._check_header(header, pcap.HEADER_SIZE)
            self._parser: pcap.PcapParser | pcapng.PcapngParser = pcap.PcapParser(path, header)
            self._pending = b""
            self._offset = pcap.HEADER_SIZE
            self._map = self._map_file() if self._rereads else None
        elif magic == pcapng.MAGIC:
            self.format = "pcapng"
            header = magic + self._read_exact(pcapng.HEADER_SIZE - len(magic))
            self._check_header(header, pcapng.HEADER_SIZE)
            self._parser = pcapng.PcapngParser(path)
            self._pending = header  # the Section Header Block is parsed like any other block
            self._offset = 0
        else:
            self._check_header(magic, 4)
            raise CaptureError(path, 0, f"not a pcap or pcapng capture (magic {magic.hex()})")

    def _map_file(self) -> mmap.mmap | None:
        """A regular file is mapped rather than read: its frames are then never copied."""
        try:
            return mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None

    def _mapped_batches(self, data: mmap.mmap) -> Iterator[FrameBatch]:
        """Batches of a mapped file. Pages behind the last batch are handed back to the kernel
        once it is processed, so the process holds about one chunk of the file at a time (a batch
        kept longer still reads correctly: its pages come back from the page cache)."""
        parser = self._parser
        offset, size = self._offset, len(data)
        released = 0
        while offset < size:
            stop = min(size, offset + max(CHUNK_SIZE, parser.need))
            batch, consumed, error = parser.parse(data, 0, offset, stop)  # type: ignore[call-arg]
            if batch is not None:
                yield batch
            if error is not None:
                raise error
            if not consumed and stop == size:
                raise CaptureError(self.path, offset, parser.cut_short(data[offset:size]))
            offset += consumed
            behind = offset - offset % mmap.PAGESIZE
            if behind > released:
                data.madvise(mmap.MADV_DONTNEED, released, behind - released)
                released = behind

    def __iter__(self) -> Iterator[FrameBatch]:
        if self._map is not None:
            yield from self._mapped_batches(self._map)
            return
        parser = self._parser
        pending, offset = self._pending, self._offset
        while True:
            buf = self._next_buffer(pending, max(CHUNK_SIZE, parser.need - len(pending)), offset)
            if len(buf) == len(pending):
                if pending:
                    raise CaptureError(self.path, offset, parser.cut_short(pending))
                return
            batch, consumed, error = parser.parse(buf, offset)
            if batch is not None:
                yield batch
            if error is not None:
                raise error
            pending = buf[consumed:]
            offset += consumed

    def close(self) -> None:
        self._map = None  # batches still in use keep the mapping alive; it goes with the last of them
        if self.path != STDIN_PATH:
            self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_buffer(self, pending: bytes, size: int, offset: int) -> bytes:
        """Return `pending` followed by up to `size` further bytes of the stream."""
        if self._rereads and pending:
            # Reading the tail again costs far less than copying each chunk behind it.
            self._file.seek(-len(pending), os.SEEK_CUR)
            return self._read(len(pending) + size, offset)
        if isinstance(self._stream, _Prepended):
            try:
                chunk = self._stream.read_available(size)
            except OSError as exc:
                raise CaptureError(self.path, offset, f"read failed: {exc.strerror or exc}") from exc
        else:
            chunk = self._read(size, offset)
        return pending + chunk if pending else chunk

    def _read(self, size: int, offset: int) -> bytes:
        try:
            return self._stream.read(size)
        except OSError as exc:
            raise CaptureError(self.path, offset, f"read failed: {exc.strerror or exc}") from exc

    def _read_exact(self, size: int) -> bytes:
        """A header: `size` bytes unless the stream ends first, however a pipe delivers them."""
        parts = []
        while size > 0:
            part = self._read(size, 0)
            if not part:
                break
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def _check_header(self, header: bytes, size: int) -> None:
        if len(header) < size:
            raise CaptureError(self.path, 0, "truncated file header")


def open_capture(path: str) -> CaptureReader:
    """Open `path` (`-` for standard input), transparently decompressing gzip, and check its header,
    so that an unusable capture is reported before any processing starts."""
    is_stdin = path == STDIN_PATH
    try:
        file = sys.stdin.buffer if is_stdin else open(path, "rb")  # CaptureReader closes it
    except OSError as exc:
        raise CaptureError(path, 0, exc.strerror or str(exc)) from exc
    try:
        return CaptureReader(path, file)
    except BaseException:
        if not is_stdin:
            file.close()
        raise


def read_capture(path: str) -> Iterator[FrameBatch]:
    """Stream the batches of the capture at `path` (`-` for standard input), closing it afterwards.

    Raises CaptureError once every frame before the unreadable point has been yielded."""
    with open_capture(path) as reader:
        yield from reader
