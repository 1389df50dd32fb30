"""A flow's small client-side buffer, alive only while a handshake or header block is incomplete.

A post-quantum ClientHello or a long HTTP header block spans several TCP segments, which may arrive
retransmitted, reordered or overlapping. Bytes are placed by sequence number: a retransmission adds
nothing, a segment ahead of a gap waits (bounded), and the first copy of any byte wins. The buffer
holds at most `limit` bytes and is dropped as soon as the parser has what it needs.
"""

from __future__ import annotations

SEQUENCE_SPACE = 1 << 32
MAX_WAITING_SEGMENTS = 16


class ClientStream:
    __slots__ = ("next_seq", "data", "waiting", "limit")

    def __init__(self, next_seq: int, limit: int) -> None:
        self.next_seq = next_seq
        self.data = b""
        self.waiting: dict[int, bytes] = {}
        self.limit = limit

    def add(self, seq: int, payload: bytes) -> bool:
        """Place a segment; True when the contiguous data grew."""
        offset = (seq - self.next_seq) % SEQUENCE_SPACE
        if offset >= SEQUENCE_SPACE // 2:  # starts before what we have: keep only its new tail
            overlap = SEQUENCE_SPACE - offset
            if overlap >= len(payload):
                return False
            payload = payload[overlap:]
            offset = 0
        if offset:
            if len(self.waiting) < MAX_WAITING_SEGMENTS and len(self.data) + offset + len(payload) <= self.limit:
                self.waiting.setdefault(seq, payload)
            return False
        self.data += payload
        self.next_seq = (self.next_seq + len(payload)) % SEQUENCE_SPACE
        while self.waiting:
            for waiting_seq in list(self.waiting):
                if (waiting_seq - self.next_seq) % SEQUENCE_SPACE >= SEQUENCE_SPACE // 2 or waiting_seq == self.next_seq:
                    self.add(waiting_seq, self.waiting.pop(waiting_seq))
                    break
            else:
                break
        if len(self.data) > self.limit:
            self.data = self.data[: self.limit]
        return True
