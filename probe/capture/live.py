"""Live capture: an AF_PACKET socket with a TPACKET_V3 ring, one per interface.

The kernel fills blocks of the ring with many frames and hands a block over when it is full or
`BLOCK_TIMEOUT_MS` old; one block becomes one `FrameBatch`, so the per-frame cost in Python is
only the walk of the block's frame headers. A block is copied out (one memcpy) and given back to
the kernel at once, so the ring stays free for bursts while the batch is matched.

On receive the kernel moves the outer 802.1Q tag of a frame into the frame's metadata; it is put
back in place, so that a frame decodes the same as in a capture file. The kernel's counters of
frames received and dropped for want of ring space are read with PACKET_STATISTICS.
"""

from __future__ import annotations

import mmap
import select
import socket
import struct

import numpy as np

from probe.capture.bpf import attach_filter, compile_filter
from probe.capture.frames import FrameBatch
from probe.errors import InterfaceError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

BLOCK_SIZE = 1 << 20
"""One block, one batch: large enough for any snap length, small enough to be handed over often."""
FRAME_SIZE = 2048
BLOCK_TIMEOUT_MS = 10
"""A block is handed over at most this late, so a quiet link still gives short batches (the
pipeline checks updates and reloads between batches)."""

BLOCK_HEADER = struct.Struct("=IIIII")
"""tpacket_block_desc: version, offset_to_priv, then block_status, num_pkts, offset_to_first_pkt."""
FRAME_HEADER = struct.Struct("=IIIIIIHHIIH")
"""tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net, rxhash, vlan_tci, vlan_tpid."""
RELEASE = struct.Struct("=I")
BLOCK_STATUS_AT = 8

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
ARPHRD_LINKTYPES = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}
"""Device type in /sys/class/net/<name>/type → pcap link type (Ethernet, loopback, tun)."""


def interface_linktype(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/type", encoding="ascii") as file:
            device_type = int(file.read())
    except FileNotFoundError:
        raise InterfaceError(f"capture.interfaces: no interface named {name!r} on this host") from None
    if device_type not in ARPHRD_LINKTYPES:
        raise InterfaceError(f"capture.interfaces: {name}: device type {device_type} is not Ethernet, loopback or raw IP; the probe cannot decode its frames")
    return ARPHRD_LINKTYPES[device_type]


class LiveCapture:
    """One interface, promiscuous, behind a capture filter, read block by block."""

    def __init__(self, interface: str, bpf_filter: str, snaplen: int, buffer_bytes: int) -> None:
        self.interface = interface
        self.linktype = interface_linktype(interface)
        self.received = 0
        """Frames that passed the filter (PACKET_STATISTICS tp_packets, which counts the dropped
        ones too), since start."""
        self.dropped = 0
        """Frames the kernel dropped for want of ring space (tp_drops), since start."""
        self.frames = 0
        self.bytes = 0
        instructions = compile_filter(bpf_filter, snaplen, self.linktype)
        try:
            self.socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise InterfaceError(f"capture on {interface} needs CAP_NET_RAW: run as root, or under the systemd unit (probe install-service)") from None
        try:
            self._open(instructions, buffer_bytes)
        except OSError as error:
            self.socket.close()
            raise InterfaceError(f"capture on {interface}: {error.strerror or error}") from None
        self._block = 0

    def _open(self, instructions: list, buffer_bytes: int) -> None:
        sock = self.socket
        # The filter goes on before the bind, so no unfiltered frame ever enters the ring.
        attach_filter(sock, instructions)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # a tap port never sends: what this host sends is not mirrored traffic
        except OSError:
            pass  # kernels before 4.20: outgoing frames are rare on a capture interface
        self.blocks = max(2, buffer_bytes // BLOCK_SIZE)
        request = struct.pack("=7I", BLOCK_SIZE, self.blocks, FRAME_SIZE, BLOCK_SIZE // FRAME_SIZE * self.blocks, BLOCK_TIMEOUT_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        self.ring = mmap.mmap(sock.fileno(), BLOCK_SIZE * self.blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        index = socket.if_nametoindex(self.interface)
        sock.bind((self.interface, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("=iHH8s", index, PACKET_MR_PROMISC, 0, b""))
        self.statistics()  # frames counted before the filter was in place are not ours

    def fileno(self) -> int:
        return self.socket.fileno()

    def ready(self) -> bool:
        return bool(BLOCK_HEADER.unpack_from(self.ring, self._block * BLOCK_SIZE)[2] & TP_STATUS_USER)

    def read_block(self) -> FrameBatch | None:
        """The next block the kernel handed over, as a batch (None when it has none ready)."""
        ring = self.ring
        base = self._block * BLOCK_SIZE
        _, _, status, count, first = BLOCK_HEADER.unpack_from(ring, base)
        if not status & TP_STATUS_USER:
            return None
        frames = self._frames(ring, base, first, count)
        RELEASE.pack_into(ring, base + BLOCK_STATUS_AT, TP_STATUS_KERNEL)
        self._block = (self._block + 1) % self.blocks
        return frames

    def _frames(self, ring: mmap.mmap, base: int, first: int, count: int) -> FrameBatch | None:
        if not count:
            return None
        header_at = FRAME_HEADER.unpack_from
        offsets, caplens, wirelens, timestamps = [], [], [], []
        tagged = []
        position = base + first
        end = position
        for _ in range(count):
            next_offset, seconds, nanoseconds, snaplen, length, status, mac, _, _, tci, tpid = header_at(ring, position)
            offsets.append(position + mac - base)
            caplens.append(snaplen)
            wirelens.append(length)
            timestamps.append(seconds * 1_000_000_000 + nanoseconds)
            if status & TP_STATUS_VLAN_VALID:
                tagged.append((len(offsets) - 1, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci))
            end = position + mac + snaplen
            position += next_offset
        data = ring[base:end]
        self.frames += count
        self.bytes += sum(wirelens)
        if tagged and self.linktype == LINKTYPE_ETHERNET:
            data = _restore_tags(data, offsets, caplens, wirelens, tagged)
        return FrameBatch(
            data=data,
            offsets=np.array(offsets, dtype=np.int64),
            caplens=np.array(caplens, dtype=np.int64),
            wirelens=np.array(wirelens, dtype=np.int64),
            timestamps=np.array(timestamps, dtype=np.int64),
            linktypes=np.full(count, self.linktype, dtype=np.int64),
        )

    def statistics(self) -> tuple[int, int]:
        """Add the kernel's counters since the last call (reading resets them); the totals."""
        packets, drops, _ = struct.unpack("=III", self.socket.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        self.received += packets
        self.dropped += drops
        return self.received, self.dropped

    def close(self) -> None:
        self.ring.close()
        self.socket.close()


def _restore_tags(data: bytes, offsets: list[int], caplens: list[int], wirelens: list[int], tagged: list[tuple[int, int, int]]) -> bytes:
    """Rebuild the block's frames with each stripped 802.1Q tag back after the MAC addresses
    (`offsets`, `caplens` and `wirelens` are corrected in place)."""
    pieces = []
    position = 0
    shift = 0
    tags = {frame: struct.pack("!HH", tpid, tci & 0xFFFF) for frame, tpid, tci in tagged}
    for frame, (offset, caplen) in enumerate(zip(offsets, caplens)):
        tag = tags.get(frame)
        offsets[frame] = offset + shift
        if tag is None or caplen < 12:
            continue
        pieces.append(data[position : offset + 12])
        pieces.append(tag)
        position = offset + 12
        shift += 4
        caplens[frame] = caplen + 4
        wirelens[frame] += 4
    pieces.append(data[position:])
    return b"".join(pieces)


class CaptureSet:
    """Every configured interface, read in turn; `wait` sleeps until one has a block."""

    def __init__(self, interfaces: tuple[str, ...], bpf_filter: str, snaplen: int, buffer_bytes: int) -> None:
        self.captures: list[LiveCapture] = []
        try:
            for name in interfaces:
                self.captures.append(LiveCapture(name, bpf_filter, snaplen, buffer_bytes))
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        for capture in self.captures:
            self._poll.register(capture, select.POLLIN | select.POLLERR)

    def read(self) -> list[FrameBatch]:
        """The blocks ready now, at most one per interface (so one busy link does not starve the
        others)."""
        batches = []
        for capture in self.captures:
            batch = capture.read_block()
            if batch is not None:
                batches.append(batch)
        return batches

    def wait(self, timeout: float) -> None:
        if not any(capture.ready() for capture in self.captures):
            try:
                self._poll.poll(int(timeout * 1000))
            except InterruptedError:
                pass

    def statistics(self) -> dict[str, tuple[int, int]]:
        """Per interface: frames received and dropped by the kernel since start."""
        return {capture.interface: capture.statistics() for capture in self.captures}

    def close(self) -> None:
        for capture in self.captures:
            capture.close()
        self.captures = []

