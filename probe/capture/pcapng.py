"""pcapng blocks to FrameBatches.

Unlike classic pcap, every packet depends on state (byte order, the interface's link type and
timestamp unit) and block layouts differ, so blocks are walked one by one in Python. pcapng is the
rarer input for the probe, so this trades speed for simplicity.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from probe.capture.frames import FrameBatch
from probe.capture.pcap import MAX_CAPLEN
from probe.errors import CaptureError

MAGIC = b"\x0a\x0d\x0d\x0a"
HEADER_SIZE = 28
"""Smallest Section Header Block: a file shorter than this has no complete header."""
MIN_BLOCK_LENGTH = 12
"""Type, length and trailing length, with an empty body."""
MAX_BLOCK_LENGTH = 16 * 1024 * 1024
"""Non-packet blocks (name resolution, decryption secrets) can be large, but not this large."""

SECTION_HEADER = 0x0A0D0D0A
INTERFACE_DESCRIPTION = 1
OBSOLETE_PACKET = 2
SIMPLE_PACKET = 3
ENHANCED_PACKET = 6

OPTION_END = 0
OPTION_TSRESOL = 9
OPTION_TSOFFSET = 14

PACKET_DATA_START = 28  # in both Enhanced and obsolete Packet Blocks
SIMPLE_DATA_START = 12
INTERFACE_OPTIONS_START = 16
BYTE_ORDER_MAGICS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Interface(NamedTuple):
    """What a packet needs from its interface: nanoseconds = units * scale // divisor + offset_ns."""

    linktype: int
    scale: int
    divisor: int
    offset_ns: int


class _Layouts:
    """The struct readers of one byte order, built once per order instead of per block."""

    def __init__(self, order: str) -> None:
        self.u16 = struct.Struct(order + "H").unpack_from
        self.u32 = struct.Struct(order + "I").unpack_from
        self.i64 = struct.Struct(order + "q").unpack_from
        self.enhanced = struct.Struct(order + "5I").unpack_from
        self.obsolete = struct.Struct(order + "HHIIII").unpack_from
        self.option = struct.Struct(order + "HH").unpack_from


_LAYOUTS = {order: _Layouts(order) for order in BYTE_ORDER_MAGICS.values()}


class PcapngParser:
    """Turns buffers of consecutive pcapng blocks into batches, carrying section state across them."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._layouts = _LAYOUTS["<"]
        self._interfaces: list[Interface] = []
        self._last_timestamp = 0
        self._base = 0
        self.need = MIN_BLOCK_LENGTH
        """Size of the first block not completely in the last buffer parsed (header size if unknown)."""

    def parse(self, buf: bytes, base: int) -> tuple[FrameBatch | None, int, CaptureError | None]:
        """Return the batch of packets in the complete blocks of `buf`, how many bytes those blocks
        span, and the corruption that stopped the walk, if any (`base`: `buf`'s stream offset)."""
        self._base = base
        offsets: list[int] = []
        caplens: list[int] = []
        wirelens: list[int] = []
        timestamps: list[int] = []
        linktypes: list[int] = []
        end = len(buf)
        pos = 0
        error = None
        self.need = MIN_BLOCK_LENGTH
        while end - pos >= MIN_BLOCK_LENGTH:
            try:
                length = self._block_length(buf, pos)
                if end - pos < length:
                    self.need = length
                    break
                layouts = self._layouts
                if layouts.u32(buf, pos + length - 4)[0] != length:
                    raise self._corrupt(pos, f"corrupt block: trailing length differs from length {length}")
                block_type = layouts.u32(buf, pos)[0]
                if block_type == ENHANCED_PACKET or block_type == OBSOLETE_PACKET:
                    if length < PACKET_DATA_START + 4:
                        raise self._corrupt(pos, f"corrupt block: packet block of {length} bytes")
                    if block_type == ENHANCED_PACKET:
                        interface_id, high, low, caplen, wirelen = layouts.enhanced(buf, pos + 8)
                    else:
                        interface_id, _drops, high, low, caplen, wirelen = layouts.obsolete(buf, pos + 8)
                    if caplen > MAX_CAPLEN:
                        raise self._too_large(pos, caplen)
                    if PACKET_DATA_START + caplen > length - 4:
                        raise self._corrupt(pos, f"corrupt record: captured length {caplen} overruns its block")
                    interface = self._interface(pos, interface_id)
                    units = high << 32 | low
                    timestamp = units * interface.scale // interface.divisor + interface.offset_ns
                    if not INT64_MIN <= timestamp <= INT64_MAX:
                        raise self._corrupt(pos, "corrupt record: timestamp out of range")
                    self._last_timestamp = timestamp
                    offsets.append(pos + PACKET_DATA_START)
                    caplens.append(caplen)
                    wirelens.append(wirelen)
                    timestamps.append(timestamp)
                    linktypes.append(interface.linktype)
                elif block_type == SIMPLE_PACKET:
                    if length < SIMPLE_DATA_START + 4:
                        raise self._corrupt(pos, f"corrupt block: simple packet block of {length} bytes")
                    wirelen = layouts.u32(buf, pos + 8)[0]
                    caplen = min(wirelen, length - SIMPLE_DATA_START - 4)
                    if caplen > MAX_CAPLEN:
                        raise self._too_large(pos, caplen)
                    linktype = self._interface(pos, 0).linktype
                    offsets.append(pos + SIMPLE_DATA_START)
                    caplens.append(caplen)
                    wirelens.append(wirelen)
                    timestamps.append(self._last_timestamp)  # the block carries none
                    linktypes.append(linktype)
                elif block_type == INTERFACE_DESCRIPTION:
                    self._interfaces.append(self._describe_interface(buf, pos, length))
                elif block_type == SECTION_HEADER:
                    self._interfaces = []
            except CaptureError as exc:
                error = exc
                break
            pos += length

        if not offsets:
            return None, pos, error
        batch = FrameBatch(
            data=buf,
            offsets=np.array(offsets, dtype=np.int64),
            caplens=np.array(caplens, dtype=np.int64),
            wirelens=np.array(wirelens, dtype=np.int64),
            timestamps=np.array(timestamps, dtype=np.int64),
            linktypes=np.array(linktypes, dtype=np.int64),
        )
        return batch, pos, error

    def cut_short(self, tail: bytes) -> str:
        """Describe a stream that ended inside the block `tail` starts."""
        if len(tail) < MIN_BLOCK_LENGTH:
            return f"capture cut short: block header has only {len(tail)} of {MIN_BLOCK_LENGTH} bytes"
        length = self._block_length(tail, 0)
        return f"capture cut short: block header says {length} bytes but only {len(tail)} remain"

    def _block_length(self, buf: bytes, pos: int) -> int:
        """Read and check the leading length of the block at `pos`; a Section Header Block first
        switches to its own byte order, which its length is written in."""
        if buf[pos : pos + 4] == MAGIC:
            byte_order_magic = buf[pos + 8 : pos + 12]
            order = BYTE_ORDER_MAGICS.get(byte_order_magic)
            if order is None:
                raise self._corrupt(pos, f"corrupt section header: byte-order magic {byte_order_magic.hex()}")
            self._layouts = _LAYOUTS[order]
        length = self._layouts.u32(buf, pos + 4)[0]
        if length % 4 or length < MIN_BLOCK_LENGTH or length > MAX_BLOCK_LENGTH:
            raise self._corrupt(pos, f"corrupt block: length {length}")
        return length

    def _interface(self, pos: int, interface_id: int) -> Interface:
        if interface_id >= len(self._interfaces):
            raise self._corrupt(pos, f"corrupt record: interface {interface_id} not described in its section")
        return self._interfaces[interface_id]

    def _describe_interface(self, buf: bytes, pos: int, length: int) -> Interface:
        """Read an Interface Description Block's link type and the options that fix how its
        packets' timestamps convert to nanoseconds (default unit: microseconds)."""
        layouts = self._layouts
        if length < INTERFACE_OPTIONS_START + 4:
            raise self._corrupt(pos, f"corrupt interface description: length {length}")
        linktype = layouts.u16(buf, pos + 8)[0]
        scale, divisor, offset_ns = 1000, 1, 0
        option = pos + INTERFACE_OPTIONS_START
        options_end = pos + length - 4
        while option + 4 <= options_end:
            code, size = layouts.option(buf, option)
            if code == OPTION_END:
                break
            if option + 4 + size > options_end:
                raise self._corrupt(pos, f"corrupt interface description: option {code} overruns the block")
            if code == OPTION_TSRESOL and size >= 1:
                resolution = buf[option + 4]
                if resolution & 0x80:
                    scale, divisor = 1_000_000_000, 2 ** (resolution & 0x7F)
                elif resolution <= 9:
                    scale, divisor = 10 ** (9 - resolution), 1
                else:
                    scale, divisor = 1, 10 ** (resolution - 9)
            elif code == OPTION_TSOFFSET and size >= 8:
                offset_ns = layouts.i64(buf, option + 4)[0] * 1_000_000_000
            option += 4 + ((size + 3) & ~3)
        return Interface(linktype, scale, divisor, offset_ns)

    def _too_large(self, pos: int, caplen: int) -> CaptureError:
        return self._corrupt(pos, f"corrupt record: captured length {caplen} exceeds {MAX_CAPLEN}")

    def _corrupt(self, pos: int, problem: str) -> CaptureError:
        return CaptureError(self._path, self._base + pos, problem)
