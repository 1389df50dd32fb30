"""Classic pcap records to FrameBatches.

The per-record Python work is kept to finding where each record starts; everything else (lengths,
timestamps, bounds checks) is read for the whole buffer at once with numpy, because a Python loop
touching several fields per packet cannot keep up with the probe's target packet rate.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

from probe.capture.frames import FrameBatch
from probe.errors import CaptureError

HEADER_SIZE = 24
RECORD_HEADER_SIZE = 16
CAPLEN_FIELD = 8
"""Offset of the captured length in a record header (after the seconds and fraction)."""
MAX_CAPLEN = 256 * 1024
"""No link type the probe decodes has frames this large; a larger length means a corrupt record."""
SNAPLEN_SLACK = 64 * 1024
"""Some writers put more bytes in a record than the snaplen they declared; tolerate that much."""

# File magic as bytes on disk -> (byte order, nanoseconds per unit of the fractional timestamp).
MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


class PcapParser:
    """Turns buffers of consecutive pcap records into batches.

    Besides the file header's settings it keeps only `need`, so the caller can hand it any buffer
    that starts at a record boundary.
    """

    def __init__(self, path: str, header: bytes) -> None:
        order, self._fraction_ns = MAGICS[header[:4]]
        self._path = path
        snaplen, linktype = struct.unpack_from(order + "II", header, 16)
        self._linktype = linktype & 0xFFFF  # the upper bits carry FCS flags, not the link type
        self._max_caplen = min(snaplen + SNAPLEN_SLACK, MAX_CAPLEN) if snaplen else MAX_CAPLEN
        self._caplen_at = struct.Struct(order + "I").unpack_from
        self._header_dtype = np.dtype(order + "u4")
        self.need = RECORD_HEADER_SIZE
        """Size of the first record not completely in the last buffer parsed (header size if unknown)."""

    def parse(self, buf: bytes | mmap.mmap, base: int, start: int = 0, stop: int | None = None) -> tuple[FrameBatch | None, int, CaptureError | None]:
        """Return the batch of complete records in `buf[start:stop]` (a record boundary at
        `start`), how many bytes they span, and the corruption that stopped the walk, if any
        (`base` is `buf`'s offset in the stream). Frame offsets index `buf` itself, so a mapped
        file is never copied."""
        # The walk tracks each record's caplen field rather than its start, which saves an addition
        # per record; an unpack running off the buffer's end ends the walk instead of a bounds test
        # per record.
        end = len(buf) if stop is None else stop
        past_end = end + CAPLEN_FIELD
        caplen_at = self._caplen_at
        caplen_fields: list[int] = []
        append = caplen_fields.append
        field = start + CAPLEN_FIELD
        try:
            while True:
                next_field = field + RECORD_HEADER_SIZE + caplen_at(buf, field)[0]
                if next_field > past_end:
                    break
                append(field)
                field = next_field
        except struct.error:
            pass

        pos = field - CAPLEN_FIELD
        error = None
        self.need = RECORD_HEADER_SIZE
        if pos + RECORD_HEADER_SIZE <= end:
            caplen = caplen_at(buf, field)[0]
            if caplen > self._max_caplen:
                error = self._too_large(base + pos, caplen)
            self.need = RECORD_HEADER_SIZE + caplen
        if not caplen_fields:
            return None, 0, error

        starts = np.array(caplen_fields, dtype=np.int64) - CAPLEN_FIELD
        every_window = np.lib.stride_tricks.sliding_window_view(np.frombuffer(buf, np.uint8), RECORD_HEADER_SIZE)
        headers = every_window[starts].view(self._header_dtype)  # seconds, fraction, caplen, wirelen
        caplens = headers[:, 2].astype(np.int64)
        oversized = np.flatnonzero(caplens > self._max_caplen)
        if oversized.size:
            first_bad = int(oversized[0])
            pos = int(starts[first_bad])
            error = self._too_large(base + pos, int(caplens[first_bad]))
            if not first_bad:
                return None, 0, error
            starts, headers, caplens = starts[:first_bad], headers[:first_bad], caplens[:first_bad]

        seconds = headers[:, 0].astype(np.int64)
        fractions = headers[:, 1].astype(np.int64)
        batch = FrameBatch(
            data=buf,
            offsets=starts + RECORD_HEADER_SIZE,
            caplens=caplens,
            wirelens=headers[:, 3].astype(np.int64),
            timestamps=seconds * 1_000_000_000 + fractions * self._fraction_ns,
            linktypes=np.full(len(starts), self._linktype, dtype=np.int64),
        )
        return batch, pos - start, error

    def cut_short(self, tail: bytes) -> str:
        """Describe a stream that ended inside the record `tail` starts."""
        if len(tail) < RECORD_HEADER_SIZE:
            return f"capture cut short: record header has only {len(tail)} of {RECORD_HEADER_SIZE} bytes"
        caplen = self._caplen_at(tail, CAPLEN_FIELD)[0]
        remaining = len(tail) - RECORD_HEADER_SIZE
        return f"capture cut short: record header says {caplen} bytes but only {remaining} remain"

    def _too_large(self, offset: int, caplen: int) -> CaptureError:
        problem = f"corrupt record: captured length {caplen} exceeds {self._max_caplen}"
        return CaptureError(self._path, offset, problem)
