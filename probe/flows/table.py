"""The flow table: the one owner of per-flow state and of its limits.

A flow is keyed by its canonical 5-tuple (the lower (address, port) side first), so both directions
reach the same entry. What every packet touches (packet and byte counters, last activity, timeout
class) lives in numpy arrays indexed by the flow's slot, so that a batch's flows are counted, timed
out and evicted with a handful of vector operations; what only some flows need (a handshake buffer,
the markers they hit) lives on the `Flow` object. Everything a flow holds is released when it ends:
nothing of a non-matching flow outlives its timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from probe.config import FlowsSection
from probe.decode.packet import PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from probe.decode.quic import QuicInitialReader
    from probe.flows.inspection import FlowInspection
    from probe.record.events import Hit

NANOSECONDS: Final = 1_000_000_000
NO_ENCAPSULATION: list[dict] = []
"""Shared by every untagged packet and flow; never mutated."""

INSPECT_WATCH: Final = 0
"""Client segments are inspected only when they start like a TLS handshake or an HTTP request."""
INSPECT_STREAM: Final = 1
"""The flow's bytes are being read (`Flow.inspection`): every packet of the directions still read
goes to the readers."""
INSPECT_DONE: Final = 2
"""Every decision about the flow's bytes is made (bypassed), or the flow is closed: its packets are
counted, never inspected."""

CLASS_TCP: Final = 0
CLASS_UDP: Final = 1
CLASS_OTHER: Final = 2
CLASS_CLOSED: Final = 3
FREE: Final = -1
INITIAL_SLOTS: Final = 1024
EVICTION_SHARE: Final = 100
"""When the table is full, 1/EVICTION_SHARE of it (the longest idle flows) is evicted at once, so
that a flood of new flows does not pay a full scan each."""


def canonical_key(src: bytes, sport: int, dst: bytes, dport: int, proto: int) -> tuple[bytes, bool]:
    """Flow key of a packet and whether the packet's source is the key's first side."""
    a = src + sport.to_bytes(2, "big")
    b = dst + dport.to_bytes(2, "big")
    if a <= b:
        return a + b + bytes((proto,)), True
    return b + a + bytes((proto,)), False


class Flow:
    """One bidirectional flow. `client_is_a` says which key side opened it (events' `src`)."""

    __slots__ = ("key", "slot", "client_is_a", "timeout_class", "inspect", "inspection", "stream_start", "hits", "fin_a", "fin_b", "final", "encapsulation", "opened")

    def __init__(self, key: bytes, slot: int, client_is_a: bool, timeout_class: int, opened: int) -> None:
        self.key = key
        self.opened = opened
        """Time of its first packet in capture order: with the key, what its event ids derive
        from (first seen may move earlier when capture timestamps step back)."""
        self.slot = slot
        self.client_is_a = client_is_a
        self.timeout_class = timeout_class
        self.inspect = INSPECT_WATCH
        self.inspection: FlowInspection | QuicInitialReader | None = None
        """Its TCP stream readers, or a QUIC client's Initial reader, while reading."""
        self.stream_start = -1
        """Sequence number of the client's first byte when its SYN was seen, until the readers
        are made."""
        self.hits: dict[tuple[str, str], Hit] | None = None
        """By (bundle, marker id)."""
        self.fin_a = False
        self.fin_b = False
        self.final: tuple[int, int, int, int] | None = None
        """Counters as they were at the packet that closed the flow (its events report these)."""
        self.encapsulation = NO_ENCAPSULATION
        """Of its first packet: what an event found later (after a marker reload) records."""

    @property
    def proto(self) -> int:
        return self.key[36]

    def endpoints(self) -> tuple[bytes, int, bytes, int]:
        """(client address, client port, server address, server port)."""
        key = self.key
        a = (key[0:16], int.from_bytes(key[16:18], "big"))
        b = (key[18:34], int.from_bytes(key[34:36], "big"))
        client, server = (a, b) if self.client_is_a else (b, a)
        return client[0], client[1], server[0], server[1]

    def server_port(self) -> int:
        key = self.key
        return int.from_bytes(key[34:36] if self.client_is_a else key[16:18], "big")


class FlowTable:
    """Creates, finds, counts, expires and evicts flows within the configured limits."""

    def __init__(self, limits: FlowsSection) -> None:
        self.max_flows = limits.max_flows
        self.timeouts = [int(seconds * NANOSECONDS) for seconds in (limits.tcp_timeout, limits.udp_timeout, limits.other_timeout, limits.tcp_closed_timeout)]
        self._timeout_of_class = np.array(self.timeouts, dtype=np.int64)
        self.flows: dict[bytes, Flow] = {}
        self.created = 0
        self.evicted = 0
        self.expired = 0
        self._allocate(INITIAL_SLOTS)

    def _allocate(self, size: int) -> None:
        self._class = np.full(size, FREE, dtype=np.int64)
        self._first_seen = np.zeros(size, dtype=np.int64)
        self._last_seen = np.zeros(size, dtype=np.int64)
        self._packets = np.zeros(size, dtype=np.int64)
        self._bytes = np.zeros(size, dtype=np.int64)
        self._slot_flows: list[Flow | None] = [None] * size
        self._free = list(range(size - 1, -1, -1))

    def _grow(self) -> None:
        old = len(self._class)
        for name in ("_class", "_first_seen", "_last_seen", "_packets", "_bytes"):
            array = getattr(self, name)
            grown = np.full(2 * old, FREE, dtype=np.int64) if name == "_class" else np.zeros(2 * old, dtype=np.int64)
            grown[:old] = array
            setattr(self, name, grown)
        self._slot_flows += [None] * old
        self._free = list(range(2 * old - 1, old - 1, -1)) + self._free

    def reserve(self, count: int, keep: np.ndarray | None = None) -> list[Flow]:
        """Make room for `count` new flows, evicting the longest idle ones (never the slots in
        `keep`) if the table would overflow; return the evicted flows so that their events can be
        written."""
        excess = len(self.flows) + count - self.max_flows
        if excess <= 0:
            return []
        evictable = self._class != FREE
        if keep is not None:
            evictable[keep] = False
        live = np.flatnonzero(evictable)
        victims = min(len(live), max(excess, self.max_flows // EVICTION_SHARE))
        oldest = live[np.argpartition(self._last_seen[live], victims - 1)[:victims]] if victims < len(live) else live
        evicted = self._forget(oldest)
        self.evicted += len(evicted)
        return evicted

    def create(self, key: bytes, client_is_a: bool, timestamp: int) -> Flow:
        """Add a flow (the caller has made room with `reserve`)."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        proto = key[36]
        timeout_class = CLASS_TCP if proto == PROTO_TCP else CLASS_UDP if proto == PROTO_UDP else CLASS_OTHER
        flow = Flow(key, slot, client_is_a, timeout_class, timestamp)
        self.flows[key] = flow
        self._slot_flows[slot] = flow
        self._class[slot] = timeout_class
        self._first_seen[slot] = timestamp
        self._last_seen[slot] = timestamp
        self._packets[slot] = 0
        self._bytes[slot] = 0
        self.created += 1
        return flow

    def account(self, flow: Flow, wirelen: int, timestamp: int) -> None:
        """Count one packet (the per-frame route)."""
        slot = flow.slot
        self._packets[slot] += 1
        self._bytes[slot] += wirelen
        if timestamp > self._last_seen[slot]:
            self._last_seen[slot] = timestamp
        elif timestamp < self._first_seen[slot]:  # capture timestamps may step back
            self._first_seen[slot] = timestamp

    def account_groups(self, slots: np.ndarray, packets: np.ndarray, byte_counts: np.ndarray, first_seen: np.ndarray, last_seen: np.ndarray) -> None:
        """Count a batch's packets of distinct flows at once."""
        self._packets[slots] += packets
        self._bytes[slots] += byte_counts
        self._first_seen[slots] = np.minimum(self._first_seen[slots], first_seen)
        self._last_seen[slots] = np.maximum(self._last_seen[slots], last_seen)

    def idle_for(self, flow: Flow, timestamp: int) -> bool:
        """Whether a packet at `timestamp` comes after the flow's idle timeout (it ended before)."""
        return timestamp - int(self._last_seen[flow.slot]) > self.timeouts[flow.timeout_class]

    def states(self, slots: np.ndarray, first_timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the flows in `slots`: (closed, idle past their timeout at `first_timestamps`)."""
        classes = self._class[slots]
        return classes == CLASS_CLOSED, first_timestamps - self._last_seen[slots] > self._timeout_of_class[classes]

    def snapshot(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(packets, bytes, first seen, last seen) of many slots; -1 stands for a flow not yet there."""
        there = slots >= 0
        safe = np.where(there, slots, 0)
        return (
            np.where(there, self._packets[safe], 0),
            np.where(there, self._bytes[safe], 0),
            np.where(there, self._first_seen[safe], np.iinfo(np.int64).max),
            np.where(there, self._last_seen[safe], np.iinfo(np.int64).min),
        )

    def counters(self, flow: Flow) -> tuple[int, int, int, int]:
        """(packets, bytes, first seen, last seen) of a flow."""
        slot = flow.slot
        return int(self._packets[slot]), int(self._bytes[slot]), int(self._first_seen[slot]), int(self._last_seen[slot])

    def close(self, flow: Flow) -> None:
        """A TCP flow ended by FIN or RST is kept briefly, so that its last ACKs and retransmissions
        do not open a second flow with the same key."""
        flow.timeout_class = CLASS_CLOSED
        self._class[flow.slot] = CLASS_CLOSED
        flow.inspection = None
        flow.inspect = INSPECT_DONE

    def remove(self, flow: Flow) -> None:
        """Forget a flow; its counters stay readable until its slot is reused."""
        del self.flows[flow.key]
        slot = flow.slot
        self._class[slot] = FREE
        self._slot_flows[slot] = None
        self._free.append(slot)

    def expire(self, now: int) -> list[Flow]:
        """Remove and return the flows idle for longer than their class's timeout."""
        live = self._class != FREE
        idle = np.flatnonzero(live & (now - self._last_seen > self._timeout_of_class[np.where(live, self._class, 0)]))
        ended = self._forget(idle)
        self.expired += len(ended)
        return ended

    def _forget(self, slots: np.ndarray) -> list[Flow]:
        """Remove the flows in `slots` at once; their counters stay readable until reuse."""
        slot_list = slots.tolist()
        slot_flows, flows = self._slot_flows, self.flows
        ended = [slot_flows[slot] for slot in slot_list]
        for slot, flow in zip(slot_list, ended):
            del flows[flow.key]  # type: ignore[union-attr]
            slot_flows[slot] = None
        self._class[slots] = FREE
        self._free += slot_list
        return ended  # type: ignore[return-value]

    def drain(self) -> list[Flow]:
        """Remove and return every flow (end of input). As after any removal, a flow's counters stay
        readable until its slot is reused; `shrink` then gives the memory back."""
        ended = list(self.flows.values())
        size = len(self._class)
        self.flows = {}
        self._class[:] = FREE
        self._slot_flows = [None] * size
        self._free = list(range(size - 1, -1, -1))
        return ended

    def shrink(self) -> None:
        """Return the slot arrays to their first size once the table is empty."""
        if not self.flows:
            self._allocate(INITIAL_SLOTS)

    def __len__(self) -> int:
        return len(self.flows)
