"""IPv4 and IPv6 fragment reassembly, bounded per source, in total and in time.

A full-size frame mirrored through GRE or ERSPAN over a 1500-byte link always arrives as fragments
of the carrier datagram, so without reassembly the inner flow is invisible. Mirror ports also lose
packets under load: a datagram whose first fragment arrived but whose others never do is still
inspected, as far as its contiguous bytes from offset 0 go, when it times out or the input ends.
Overlapping fragments (a classic evasion) are not resolved: the datagram is dropped and counted.
"""

from __future__ import annotations

from probe.decode.packet import Packet

MAX_FRAGMENTS_PER_DATAGRAM = 128
MAX_DATAGRAM_BYTES = 65_535


class _Datagram:
    __slots__ = ("first", "source", "started", "pieces", "total", "size", "cut")

    def __init__(self, first: Packet, source: bytes, started: int) -> None:
        self.first = first  # the packet of the first fragment to arrive carries addresses and encapsulation
        self.source = source
        self.started = started
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # known once the last fragment (more-fragments clear) arrives
        self.size = 0
        self.cut = False  # a fragment was cut by the snap length: the datagram's end is not its true end


class FragmentReassembler:
    """Holds fragments until their datagram is whole; every byte held is released on completion,
    timeout, eviction or `flush`."""

    def __init__(self, timeout_ns: int, max_datagrams: int, max_per_source: int, max_bytes: int) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_per_source = max_per_source
        self.max_bytes = max_bytes
        self._datagrams: dict[tuple, _Datagram] = {}
        self._per_source: dict[bytes, int] = {}
        self.bytes_held = 0
        self.reassembled = 0
        self.overlaps = 0
        self.dropped = 0
        self.timed_out = 0

    def add(self, version: int, key: tuple, offset: int, more: bool, payload: bytes, packet: Packet, cut: bool = False) -> tuple[Packet, bytes, bool] | None:
        """Add one fragment (`cut`: the snap length shortened it); return (packet, datagram payload,
        whether it is complete) when this fragment completes it."""
        if not payload:  # carries nothing, and a zero-length piece could never be stepped over
            self.dropped += 1
            return None
        full_key = (version, *key)
        datagram = self._datagrams.get(full_key)
        if datagram is None:
            source = key[0]
            if self._per_source.get(source, 0) >= self.max_per_source:
                self.dropped += 1
                return None
            while len(self._datagrams) >= self.max_datagrams:
                self._discard(next(iter(self._datagrams)))
                self.dropped += 1
            datagram = self._datagrams[full_key] = _Datagram(packet, source, packet.timestamp)
            self._per_source[source] = self._per_source.get(source, 0) + 1
        else:
            datagram.first.wirelen += packet.wirelen
            datagram.first.timestamp = packet.timestamp
        end = offset + len(payload)
        if end > MAX_DATAGRAM_BYTES or len(datagram.pieces) >= MAX_FRAGMENTS_PER_DATAGRAM or (not more and datagram.total >= 0 and datagram.total != end):
            self._discard(full_key)
            self.dropped += 1
            return None
        existing = datagram.pieces.get(offset)
        if existing is not None and existing == payload:
            return None  # the same fragment twice, as a SPAN port sending ingress and egress copies
        while self.bytes_held + len(payload) > self.max_bytes:
            victim = next((other for other in self._datagrams if other != full_key), None)
            self._discard(victim or full_key)
            self.dropped += 1
            if victim is None:  # this datagram alone would exceed the limit
                return None
        datagram.cut |= cut
        for start, piece in datagram.pieces.items():
            if start < end and offset < start + len(piece):
                self._discard(full_key)
                self.overlaps += 1
                return None
        datagram.pieces[offset] = payload
        datagram.size += len(payload)
        self.bytes_held += len(payload)
        if not more:
            datagram.total = end
        if datagram.total < 0 or datagram.size != datagram.total:
            return None
        whole = b"".join(datagram.pieces[start] for start in sorted(datagram.pieces))
        self._discard(full_key)
        self.reassembled += 1
        return datagram.first, whole, not datagram.cut

    def expire(self, now: int) -> list[tuple[Packet, bytes]]:
        """Release datagrams older than the timeout; return the first-fragment prefixes to inspect."""
        limit = now - self.timeout_ns
        leftovers = []
        while self._datagrams:
            key, datagram = next(iter(self._datagrams.items()))
            if datagram.started > limit:
                break
            leftovers += self._leftover(key)
        return leftovers

    def flush(self) -> list[tuple[Packet, bytes]]:
        """Release every datagram at end of input; return the first-fragment prefixes to inspect."""
        leftovers = []
        while self._datagrams:
            leftovers += self._leftover(next(iter(self._datagrams)))
        return leftovers

    def _leftover(self, key: tuple) -> list[tuple[Packet, bytes]]:
        datagram = self._datagrams[key]
        self._discard(key)
        self.timed_out += 1
        if 0 not in datagram.pieces:
            return []
        prefix, position = [], 0
        while position in datagram.pieces:
            piece = datagram.pieces[position]
            prefix.append(piece)
            position += len(piece)
        return [(datagram.first, b"".join(prefix))]

    def _discard(self, key: tuple) -> None:
        datagram = self._datagrams.pop(key)
        self.bytes_held -= datagram.size
        remaining = self._per_source[datagram.source] - 1
        if remaining:
            self._per_source[datagram.source] = remaining
        else:
            del self._per_source[datagram.source]

    def __len__(self) -> int:
        return len(self._datagrams)
