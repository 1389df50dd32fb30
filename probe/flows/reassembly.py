"""In-order bytes of one TCP flow direction, as far as inspection needs them (`depth`).

The consumers (the TLS/HTTP handshake parser, a streaming byte-pattern matcher, a YARA buffer of the
first kilobytes) see each byte of the stream once, in order, without the reassembler keeping what it
delivered: `StreamReassembler.add` returns the bytes that became contiguous with a segment, usually
the segment's payload object itself (no copy), and nothing beyond `depth` bytes from the stream
start, after which the reassembler is `done` and holds nothing.

Stream start: one past the SYN's sequence number when the caller passes the SYN (`syn=True`), else
the sequence number of the first segment seen (a flow picked up mid-stream). Sequence numbers are
modulo 2**32; offsets are counted from the stream start, so a wrap inside the stream is invisible.

Overlap policy, first copy wins: a byte once received, delivered or waiting, is never replaced. A
passive probe cannot know how the receiving host resolves overlapping segments (operating systems
differ, which is what overlap evasion exploits), so it keeps what it saw first (Suricata's "first"
policy, and that of the handshake buffer this replaces) and counts each segment that disagrees
with bytes already received (`conflicts`) for the pipeline to report as a possible evasion. A
disagreement with delivered bytes can be seen only within the last delivery, kept by reference (no
copy) for that purpose when the shared budget stays at most half used with it; older delivered
bytes are forgotten.

Bounds: per direction at most MAX_WAITING_SEGMENTS pieces (touching pieces are joined when the
bound is reached), spanning at most MAX_AHEAD bytes, wait ahead of a hole, never beyond
`depth`; every byte held by every reassembler (waiting pieces and the last delivery) is charged to
one `ReassemblyBudget`. When an out-of-order segment cannot be held, the hole before the earliest
byte known is taken as lost (a capture drop that will not be repaired): the reassembler skips to
that byte, counts a gap, and delivers what is contiguous from there; if the segment still cannot be
held, it is refused and counted. The caller may also skip the hole itself (`skip_gap`, at FIN or
idle), and must `release` a reassembler it drops before it is `done`.

Gaps are reported through `gap_before`, set by every `add` and `skip_gap` call: True when the bytes
that call returned do not follow the bytes returned before (a streaming matcher must then be reset
rather than match across the missing bytes). A call reports at most one gap.
"""

from __future__ import annotations

from bisect import insort
from typing import Final

SEQUENCE_SPACE: Final = 1 << 32
SEQUENCE_MASK: Final = SEQUENCE_SPACE - 1
HALF_SEQUENCE_SPACE: Final = SEQUENCE_SPACE >> 1
MAX_WAITING_SEGMENTS: Final = 32
"""Pieces one direction may hold ahead of a hole: a few windows' worth of ordinary reordering,
while a flood of tiny out-of-order segments costs a bounded list."""
MAX_AHEAD: Final = 1 << 16
"""How far past a hole one direction may hold bytes, whatever its depth: a stream followed for its
whole life (HTTP requests) must not hold megabytes behind a hole that will never be filled."""


class ReassemblyBudget:
    """The bytes held by all the reassemblers of a process, against one limit, so that memory stays
    bounded whatever the number of streams being inspected.

    A last delivery, kept only to detect conflicting retransmissions, is kept only when the budget
    stays at most half used with it (`last_delivery_limit`), so that those never crowd out the
    segments waiting for a hole.
    """

    __slots__ = ("limit", "last_delivery_limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"reassembly budget must not be negative, got {limit}")
        self.limit = limit
        self.last_delivery_limit = limit // 2
        self.used = 0


class StreamReassembler:
    """One direction of a TCP flow, delivered in order up to `depth` bytes from its start.

    Attributes the caller reads: `delivered` (bytes returned so far), `position` (stream offset of
    the next byte: `delivered` plus the bytes lost in gaps), `gaps`, `conflicts`, `refused` (segments
    that could not be held), `gap_before` (see the module docstring) and `done` (depth reached:
    everything is released and the caller may drop the reassembler).
    """

    __slots__ = ("depth", "budget", "origin", "position", "delivered", "gaps", "conflicts", "refused", "done", "gap_before", "waiting", "last_delivery")

    def __init__(self, depth: int, budget: ReassemblyBudget) -> None:
        if not 0 < depth < HALF_SEQUENCE_SPACE:  # offsets are told apart from old data by sign
            raise ValueError(f"reassembly depth must be between 1 and {HALF_SEQUENCE_SPACE - 1}, got {depth}")
        self.depth = depth
        self.budget = budget
        self.origin = -1  # sequence number of stream offset 0, set by the first segment
        self.position = 0
        self.delivered = 0
        self.gaps = 0
        self.conflicts = 0
        self.refused = 0
        self.done = False
        self.gap_before = False
        self.waiting: list[tuple[int, bytes]] = []  # (stream offset, piece): sorted, disjoint, all after `position`
        self.last_delivery = b""  # the bytes returned last, ending at `position`

    def add(self, seq: int, payload: bytes, syn: bool = False) -> bytes:
        """Place one segment (`syn`: it carries the SYN flag) and return the bytes that became
        contiguous with it, in stream order, possibly b"". `payload` must be `bytes`, not a view of
        a capture buffer: the reassembler may keep a reference to it."""
        self.gap_before = False
        if syn:
            seq += 1  # the SYN takes one sequence number; data it carries (TCP Fast Open) follows
        if self.origin < 0:
            self.origin = seq & SEQUENCE_MASK
        start = (seq - self.origin) & SEQUENCE_MASK
        size = len(payload)
        position = self.position
        if start == position and not self.waiting and 0 < size < self.depth - position:
            # The common case, the next segment exactly: delivered as it is, kept by reference.
            self.position = position + size
            self.delivered += size
            budget = self.budget
            used = budget.used - len(self.last_delivery)
            if used + size <= budget.last_delivery_limit:
                budget.used = used + size
                self.last_delivery = payload
            elif self.last_delivery:
                budget.used = used
                self.last_delivery = b""
            return payload
        return self._place(start, payload)

    def restart(self, seq: int) -> None:
        """Move the stream's start to `seq` (the first byte's number) while nothing was received:
        a SYN-ACK acknowledges the real SYN, whatever decoy came first."""
        if not self.delivered and not self.waiting and not self.gaps:
            self.origin = seq & SEQUENCE_MASK

    def starts_at(self, seq: int) -> bool:
        """Whether a segment at `seq` would be the stream's first bytes (nothing delivered or
        waiting, and the stream starts there or has no start yet)."""
        return not self.delivered and not self.waiting and (self.origin < 0 or (seq - self.origin) & SEQUENCE_MASK == 0)

    def skip_gap(self) -> bytes:
        """Give up on the hole before the first waiting piece (the caller knows it will not be
        filled: FIN, idle, or data waiting far ahead) and return what is contiguous after it."""
        self.gap_before = False
        if not self.waiting:
            return b""
        chunks: list[bytes] = []
        self._skip(chunks)
        return self._deliver(chunks)

    def release(self) -> None:
        """Forget every byte held and give it back to the budget: at FIN, RST, idle timeout or
        eviction, or whenever the caller no longer needs the stream."""
        held = len(self.last_delivery)
        for _, piece in self.waiting:
            held += len(piece)
        self.budget.used -= held
        self.waiting.clear()
        self.last_delivery = b""

    def _place(self, start: int, payload: bytes) -> bytes:
        """Everything but the next segment exactly: trimming to the depth and to what was delivered,
        overlaps, out-of-order segments and the bounds."""
        if self.done or not payload:
            return b""
        if start >= HALF_SEQUENCE_SPACE:
            start -= SEQUENCE_SPACE  # data from before the stream start (before a mid-stream pick-up)
        end = start + len(payload)
        depth = self.depth
        if end > depth:
            if start >= depth:
                return b""
            payload = payload[: depth - start]
            end = depth
        position = self.position
        conflict = False
        if start < position:  # a retransmission: only its new tail counts
            conflict = self._disagrees_with_last_delivery(start, payload)
            if end <= position:
                if conflict:
                    self.conflicts += 1
                return b""
            payload = payload[position - start :]
            start = position
        if len(self.waiting) >= MAX_WAITING_SEGMENTS:
            self._coalesce()
        added, disagrees = self._fill_holes(start, payload)
        if conflict or disagrees:
            self.conflicts += 1
        if not added:
            return b""
        chunks: list[bytes] = []
        if start == position:  # the new bytes fill the hole at `position`, hence every hole they cover
            self._drain(chunks)
        elif self._over_bounds():
            self._skip(chunks)
            if self._over_bounds():
                self._refuse(added)
        if not chunks:
            return b""
        return self._deliver(chunks)

    def _disagrees_with_last_delivery(self, start: int, payload: bytes) -> bool:
        """Whether a retransmission differs from the delivered bytes it overlaps, as far as the last
        delivery shows them."""
        last = self.last_delivery
        last_start = self.position - len(last)
        low = max(start, last_start)
        high = min(start + len(payload), self.position)
        return low < high and payload[low - start : high - start] != last[low - last_start : high - last_start]

    def _fill_holes(self, start: int, payload: bytes) -> tuple[list[tuple[int, bytes]], bool]:
        """Queue the parts of a segment (at or after `position`) that no waiting piece covers, and
        charge them to the budget; return them, and whether the covered parts disagree."""
        end = start + len(payload)
        added: list[tuple[int, bytes]] = []
        disagrees = False
        cursor = start
        for held_start, held in self.waiting:
            if held_start >= end:
                break
            held_end = held_start + len(held)
            if held_end <= cursor:
                continue
            if held_start > cursor:
                added.append((cursor, payload[cursor - start : held_start - start]))
                cursor = held_start
            overlap_end = min(held_end, end)
            if not disagrees:
                disagrees = payload[cursor - start : overlap_end - start] != held[cursor - held_start : overlap_end - held_start]
            cursor = overlap_end
        if cursor < end:
            added.append((cursor, payload[cursor - start :] if cursor > start else payload))
        charged = 0
        for item in added:
            insort(self.waiting, item)
            charged += len(item[1])
        self.budget.used += charged
        return added, disagrees

    def _over_bounds(self) -> bool:
        """Whether this direction or the process holds more than it may (pieces just queued are
        charged first, then given back if they cannot stay)."""
        budget = self.budget
        waiting = self.waiting
        if len(waiting) > MAX_WAITING_SEGMENTS or budget.used > budget.limit:
            return True
        return bool(waiting) and waiting[-1][0] + len(waiting[-1][1]) - self.position > MAX_AHEAD

    def _coalesce(self) -> None:
        """Join touching pieces into one, so that a stream sent in tiny segments in reverse order
        (each touching the piece after it) holds one piece, not one per segment. Only once the
        piece bound is reached, and before the new segment's pieces are queued; each run of
        touching pieces is joined in one copy."""
        joined: list[tuple[int, bytes]] = []
        run: list[bytes] = []
        run_start = run_end = 0
        for start, piece in self.waiting:
            if run and start == run_end:
                run.append(piece)
            else:
                if run:
                    joined.append((run_start, run[0] if len(run) == 1 else b"".join(run)))
                run, run_start = [piece], start
            run_end = start + len(piece)
        if run:
            joined.append((run_start, run[0] if len(run) == 1 else b"".join(run)))
        self.waiting[:] = joined

    def _skip(self, chunks: list[bytes]) -> None:
        """Jump over the hole before the first waiting piece and collect what follows it."""
        self.position = self.waiting[0][0]
        self.gaps += 1
        self.gap_before = True
        self._drain(chunks)

    def _drain(self, chunks: list[bytes]) -> None:
        """Collect the waiting pieces contiguous with `position`, giving their bytes back."""
        waiting = self.waiting
        position = self.position
        released = 0
        while waiting and waiting[0][0] == position:
            piece = waiting.pop(0)[1]
            chunks.append(piece)
            position += len(piece)
            released += len(piece)
        self.position = position
        self.budget.used -= released

    def _refuse(self, added: list[tuple[int, bytes]]) -> None:
        """Drop the pieces of a segment that still cannot be held after a gap was skipped."""
        self.refused += 1
        budget = self.budget
        waiting = self.waiting
        position = self.position
        for item in added:
            if item[0] >= position:  # not delivered after the gap
                waiting.remove(item)
                budget.used -= len(item[1])

    def _deliver(self, chunks: list[bytes]) -> bytes:
        """Account the collected bytes and return them in one piece; at depth, release everything."""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.delivered += len(data)
        if self.position >= self.depth:
            self.done = True
            self.release()
            return data
        budget = self.budget
        used = budget.used - len(self.last_delivery)
        if used + len(data) <= budget.last_delivery_limit:
            budget.used = used + len(data)
            self.last_delivery = data
        else:
            budget.used = used
            self.last_delivery = b""
        return data
