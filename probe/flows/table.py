"""The flow table: the one owner of per-flow state and of its limits.

A flow is keyed by its canonical 5-tuple (the lower (address, port) side first), so both directions
reach the same entry. Flows are kept in one OrderedDict per timeout class; a flow is not
moved when a packet touches it (that would cost every packet), instead expiry and eviction look at
the oldest entries and requeue those that were active since. Everything a flow holds is released
when it ends: nothing of a non-matching flow outlives its timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from probe.config import FlowsSection
from probe.decode.packet import PROTO_TCP, PROTO_UDP

if TYPE_CHECKING:
    from probe.flows.stream import ClientStream
    from probe.record.events import Hit

NANOSECONDS = 1_000_000_000

INSPECT_WATCH = 0
"""Client segments are inspected only when they start like a TLS handshake or an HTTP request."""
INSPECT_BUFFERING = 1
"""A ClientHello, HTTP header block or DNS message is incomplete: every client segment is needed."""
INSPECT_DONE = 2
"""The flow is closed: its late packets are counted, never inspected."""

CLASS_TCP, CLASS_UDP, CLASS_OTHER, CLASS_CLOSED = range(4)


def canonical_key(src: bytes, sport: int, dst: bytes, dport: int, proto: int) -> tuple[bytes, bool]:
    """Flow key of a packet and whether the packet's source is the key's first side."""
    a = src + sport.to_bytes(2, "big")
    b = dst + dport.to_bytes(2, "big")
    if a <= b:
        return a + b + bytes((proto,)), True
    return b + a + bytes((proto,)), False


class Flow:
    """One bidirectional flow. `client_is_a` says which key side opened it (events' `src`)."""

    __slots__ = (
        "key",
        "client_is_a",
        "first_seen",
        "last_seen",
        "queued_at",
        "packets",
        "bytes",
        "timeout_class",
        "inspect",
        "stream",
        "client_isn",
        "hits",
        "fin_a",
        "fin_b",
    )

    def __init__(self, key: bytes, client_is_a: bool, timestamp: int, timeout_class: int) -> None:
        self.key = key
        self.client_is_a = client_is_a
        self.first_seen = timestamp
        self.last_seen = timestamp
        self.queued_at = timestamp
        self.packets = 0
        self.bytes = 0
        self.timeout_class = timeout_class
        self.inspect = INSPECT_WATCH
        self.stream: ClientStream | None = None
        self.client_isn = -1
        self.hits: dict[int, Hit] | None = None
        self.fin_a = False
        self.fin_b = False

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


class FlowTable:
    """Creates, finds, expires and evicts flows within the configured limits."""

    def __init__(self, limits: FlowsSection) -> None:
        self.max_flows = limits.max_flows
        self.timeouts = [
            int(limits.tcp_timeout * NANOSECONDS),
            int(limits.udp_timeout * NANOSECONDS),
            int(limits.other_timeout * NANOSECONDS),
            int(limits.tcp_closed_timeout * NANOSECONDS),
        ]
        self.flows: dict[bytes, Flow] = {}
        self._queues: list[OrderedDict[bytes, Flow]] = [OrderedDict() for _ in range(4)]
        self.created = 0
        self.evicted = 0
        self.expired = 0

    def create(self, key: bytes, client_is_a: bool, timestamp: int) -> tuple[Flow, Flow | None]:
        """Add a flow; when the table is full, the longest-idle flow is evicted and returned so its
        events can be written."""
        evicted = self._evict_one() if len(self.flows) >= self.max_flows else None
        proto = key[36]
        timeout_class = CLASS_TCP if proto == PROTO_TCP else CLASS_UDP if proto == PROTO_UDP else CLASS_OTHER
        flow = Flow(key, client_is_a, timestamp, timeout_class)
        self.flows[key] = flow
        self._queues[timeout_class][key] = flow
        self.created += 1
        return flow, evicted

    def close(self, flow: Flow) -> None:
        """A TCP flow ended by FIN or RST is kept briefly, so that its last ACKs and retransmissions
        do not open a second flow with the same key."""
        del self._queues[flow.timeout_class][flow.key]
        flow.timeout_class = CLASS_CLOSED
        flow.queued_at = flow.last_seen
        self._queues[CLASS_CLOSED][flow.key] = flow
        flow.stream = None
        flow.inspect = INSPECT_DONE

    def remove(self, flow: Flow) -> None:
        del self.flows[flow.key]
        del self._queues[flow.timeout_class][flow.key]

    def expire(self, now: int) -> list[Flow]:
        """Remove and return the flows idle for longer than their class's timeout."""
        ended = []
        for timeout_class, queue in enumerate(self._queues):
            limit = now - self.timeouts[timeout_class]
            while queue:
                key, flow = next(iter(queue.items()))
                if flow.queued_at > limit:
                    break
                if flow.last_seen > limit:
                    flow.queued_at = flow.last_seen
                    queue.move_to_end(key)
                else:
                    del queue[key]
                    del self.flows[key]
                    self.expired += 1
                    ended.append(flow)
        return ended

    def drain(self) -> list[Flow]:
        """Remove and return every flow (end of input)."""
        ended = list(self.flows.values())
        self.flows = {}
        self._queues = [OrderedDict() for _ in range(4)]
        return ended

    def _evict_one(self) -> Flow:
        while True:
            oldest = min((queue for queue in self._queues if queue), key=lambda queue: next(iter(queue.values())).queued_at)
            key, flow = next(iter(oldest.items()))
            if flow.last_seen > flow.queued_at:
                flow.queued_at = flow.last_seen
                oldest.move_to_end(key)
                continue
            del oldest[key]
            del self.flows[key]
            self.evicted += 1
            return flow

    def __len__(self) -> int:
        return len(self.flows)
