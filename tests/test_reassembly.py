"""The per-direction stream reassembler: in-order delivery whatever the segmentation, order,
duplicates and sequence wrap; first copy wins on overlaps (and disagreements are counted); waiting
data bounded per direction and by the shared budget, gaps skipped and reported; nothing held after
release or depth."""

from __future__ import annotations

import itertools
import random

import pytest

from probe.flows.reassembly import MAX_WAITING_SEGMENTS, ReassemblyBudget, StreamReassembler

ISN = 1_000_000
STREAM = bytes(random.Random(0).randrange(256) for _ in range(5_000))


def reassembler(depth: int = 65_536, limit: int = 1 << 20) -> StreamReassembler:
    return StreamReassembler(depth, ReassemblyBudget(limit))


def split(data: bytes, points: list[int]) -> list[tuple[int, bytes]]:
    """(offset, payload) segments of `data` cut at `points`."""
    bounds = [0, *sorted(set(points)), len(data)]
    return [(low, data[low:high]) for low, high in zip(bounds, bounds[1:]) if high > low]


def test_in_order_segments_are_delivered_as_they_are() -> None:
    stream = reassembler()
    offset = 0
    for payload in (b"GET / HTTP/1.1\r\n", b"Host: example.org\r\n", b"\r\n"):
        assert stream.add(ISN + offset, payload) is payload  # no copy on the common path
        offset += len(payload)
        assert not stream.gap_before
    assert (stream.delivered, stream.position, stream.gaps, stream.conflicts) == (offset, offset, 0, 0)
    assert stream.budget.used == 2  # the last delivery, kept by reference for conflict checks
    stream.release()
    assert stream.budget.used == 0


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_order_of_four_segments_delivers_the_stream(order: tuple[int, ...]) -> None:
    stream = reassembler()
    stream.add(ISN - 1, b"", syn=True)
    segments = split(STREAM[:400], [100, 180, 300])
    delivered = b"".join(stream.add(ISN + segments[index][0], segments[index][1]) for index in order)
    assert delivered == STREAM[:400]
    assert (stream.gaps, stream.conflicts, stream.refused, stream.waiting) == (0, 0, 0, [])
    stream.release()
    assert stream.budget.used == 0


def test_exact_duplicates_add_nothing() -> None:
    stream = reassembler()
    first, second, third = split(STREAM[:300], [100, 200])
    assert stream.add(ISN + first[0], first[1]) == first[1]
    assert stream.add(ISN + first[0], first[1]) == b""  # retransmission of delivered data
    assert stream.add(ISN + third[0], third[1]) == b""
    assert stream.add(ISN + third[0], third[1]) == b""  # retransmission of waiting data
    assert len(stream.waiting) == 1
    assert stream.add(ISN + second[0], second[1]) == second[1] + third[1]
    assert (stream.delivered, stream.conflicts) == (300, 0)


def test_retransmission_delivers_only_its_new_tail() -> None:
    stream = reassembler()
    stream.add(ISN, STREAM[:100])
    assert stream.add(ISN + 60, STREAM[60:150]) == STREAM[100:150]
    assert stream.add(ISN, STREAM[:200]) == STREAM[150:200]
    assert (stream.delivered, stream.conflicts) == (200, 0)


def test_conflicting_copy_of_delivered_bytes_is_counted_and_ignored() -> None:
    stream = reassembler()
    assert stream.add(ISN, b"GET /evil HTTP/1.1\r\n") == b"GET /evil HTTP/1.1\r\n"
    assert stream.add(ISN, b"GET /fine HTTP/1.1\r\n") == b""
    assert stream.conflicts == 1
    assert stream.add(ISN + 5, b"fine HTTP/1.1\r\nHost") == b"Host"  # the first copy still wins
    assert stream.conflicts == 2
    assert stream.delivered == 24


def test_conflicting_copy_of_waiting_bytes_is_counted_and_ignored() -> None:
    stream = reassembler()
    stream.add(ISN, b"GET ")
    assert stream.add(ISN + 8, b"ABCD") == b""
    assert stream.add(ISN + 6, b"xxWXYZ") == b""  # its first two bytes are new, the rest disagrees
    assert stream.conflicts == 1
    assert stream.add(ISN + 4, b"/p") == b"/pxxABCD"
    assert stream.delivered == 12


def test_segment_over_delivered_and_waiting_bytes_fills_only_the_hole() -> None:
    stream = reassembler()
    stream.add(ISN, b"0123456789")
    stream.add(ISN + 20, b"KLMNOPQRST")
    result = stream.add(ISN + 5, b"#####abcdefghij#####")  # disagrees with both sides of the hole
    assert result == b"abcdefghijKLMNOPQRST"
    assert (stream.conflicts, stream.delivered, stream.waiting) == (1, 30, [])


def test_sequence_numbers_wrap() -> None:
    isn = 0xFFFFFF00
    stream = reassembler()
    stream.add(isn, b"", syn=True)
    segments = split(STREAM[:1_000], [100, 255, 256, 400, 700])
    received = [stream.add((isn + 1 + offset) % (1 << 32), payload) for offset, payload in reversed(segments)]
    assert b"".join(received) == STREAM[:1_000]
    assert stream.add((isn + 1 + 250) % (1 << 32), STREAM[250:1_100]) == STREAM[1_000:1_100]


def test_mid_stream_pick_up_starts_at_the_first_segment_seen() -> None:
    stream = reassembler()
    assert stream.add(ISN + 5_000, STREAM[:100]) == STREAM[:100]
    assert stream.add(ISN + 4_900, b"x" * 100) == b""  # from before the pick-up
    assert stream.add(ISN + 4_950, b"x" * 50 + STREAM[:150]) == STREAM[100:150]
    assert stream.add(ISN + 4_990, b"y" * 10 + STREAM[:100]) == b""  # its bytes before the start are not compared
    assert stream.conflicts == 0
    assert stream.delivered == 150


def test_syn_starts_the_stream_one_past_its_sequence_number() -> None:
    stream = reassembler()
    assert stream.add(ISN, b"", syn=True) == b""
    assert stream.add(ISN + 11, STREAM[10:20]) == b""  # the first data segment is late
    assert stream.add(ISN + 1, STREAM[:10]) == STREAM[:20]
    assert stream.add(ISN, b"", syn=True) == b""  # a retransmitted SYN


def test_syn_data_is_delivered() -> None:
    stream = reassembler()
    assert stream.add(ISN, STREAM[:50], syn=True) == STREAM[:50]  # TCP Fast Open
    assert stream.add(ISN, STREAM[:60], syn=True) == STREAM[50:60]
    assert stream.add(ISN + 61, STREAM[60:70]) == STREAM[60:70]


def test_delivery_stops_exactly_at_depth() -> None:
    stream = reassembler(depth=250)
    stream.add(ISN - 1, b"", syn=True)
    assert stream.add(ISN + 300, STREAM[300:400]) == b""  # beyond depth: never held
    assert stream.add(ISN + 200, STREAM[200:300]) == b""
    assert stream.waiting == [(200, STREAM[200:250])]
    assert stream.add(ISN, STREAM[:100]) == STREAM[:100]
    assert not stream.done
    assert stream.add(ISN + 100, STREAM[100:200]) == STREAM[100:250]
    assert (stream.done, stream.delivered, stream.position) == (True, 250, 250)
    assert stream.budget.used == 0  # released by itself at depth
    assert stream.add(ISN + 250, STREAM[250:300]) == b""
    assert stream.add(ISN + 200, b"different" * 10) == b""


def test_in_order_segment_reaching_depth_is_cut() -> None:
    stream = reassembler(depth=150)
    assert stream.add(ISN, STREAM[:100]) == STREAM[:100]
    assert stream.add(ISN + 100, STREAM[100:200]) == STREAM[100:150]
    assert stream.done and stream.budget.used == 0


def test_hole_never_filled_is_skipped_when_waiting_is_full() -> None:
    stream = reassembler()
    stream.add(ISN, STREAM[:10])
    for index in range(MAX_WAITING_SEGMENTS):  # 10 bytes lost, then pieces with 10-byte holes
        assert stream.add(ISN + 20 + 20 * index, STREAM[20 + 20 * index : 30 + 20 * index]) == b""
        assert not stream.gap_before
    assert stream.add(ISN + 1_000, STREAM[1_000:1_010]) == STREAM[20:30]
    assert stream.gap_before
    assert (stream.gaps, stream.refused, stream.position, stream.delivered) == (1, 0, 30, 20)
    assert len(stream.waiting) == MAX_WAITING_SEGMENTS
    assert stream.add(ISN + 30, STREAM[30:40]) == STREAM[30:50]  # the next hole does get filled
    assert not stream.gap_before
    assert stream.skip_gap() == STREAM[60:70]
    assert stream.gap_before and stream.gaps == 2
    stream.release()
    assert stream.budget.used == 0


def test_skip_gap_with_nothing_waiting_does_nothing() -> None:
    stream = reassembler()
    stream.add(ISN, STREAM[:10])
    assert stream.skip_gap() == b""
    assert not stream.gap_before and stream.gaps == 0


def full_of_waiting_pieces() -> StreamReassembler:
    """10 bytes delivered, then MAX_WAITING_SEGMENTS pieces of 10 bytes from offset 100, 10-byte
    holes between them: no place left."""
    stream = reassembler()
    stream.add(ISN, STREAM[:10])
    for index in range(MAX_WAITING_SEGMENTS):
        stream.add(ISN + 100 + 20 * index, STREAM[100 + 20 * index : 110 + 20 * index])
    return stream


def test_segment_earlier_than_the_waiting_ones_is_where_a_skip_lands() -> None:
    stream = full_of_waiting_pieces()
    assert stream.add(ISN + 50, STREAM[50:60]) == STREAM[50:60]
    assert stream.gap_before and stream.position == 60


def test_segment_filling_many_holes_is_refused_when_it_cannot_be_held() -> None:
    stream = full_of_waiting_pieces()
    # 10 new pieces between the waiting ones: one gap skip frees one place, not ten
    assert stream.add(ISN + 200, STREAM[200:400]) == STREAM[100:110]
    assert (stream.gaps, stream.refused) == (1, 1)
    assert len(stream.waiting) == MAX_WAITING_SEGMENTS - 1
    stream.release()
    assert stream.budget.used == 0


def test_budget_shared_by_two_streams_refuses_beyond_its_limit() -> None:
    budget = ReassemblyBudget(1_000)
    first = StreamReassembler(65_536, budget)
    second = StreamReassembler(65_536, budget)
    first.add(ISN, STREAM[:10])
    second.add(ISN, STREAM[:10])
    assert budget.used == 20  # the last deliveries
    first.add(ISN + 100, STREAM[100:800])
    second.add(ISN + 100, STREAM[100:300])
    assert budget.used == 920
    # The second stream skips its hole, which gives back 200 + 10 bytes (its last delivery is now
    # too big to keep), but its new 300 bytes still do not fit beside the first stream's 710.
    assert second.add(ISN + 400, STREAM[400:700]) == STREAM[100:300]
    assert second.gap_before
    assert (second.refused, budget.used) == (1, 710)
    assert second.waiting == []
    assert first.add(ISN + 10, STREAM[10:100]) == STREAM[10:800]  # the first stream's hole fills
    assert budget.used == 0
    second.add(ISN + 300, STREAM[300:310])
    first.release()
    second.release()
    assert budget.used == 0


def test_segment_larger_than_the_budget_is_delivered_after_a_gap() -> None:
    budget = ReassemblyBudget(100)
    stream = StreamReassembler(65_536, budget)
    stream.add(ISN, STREAM[:10])
    assert stream.add(ISN + 20, STREAM[20:300]) == STREAM[20:300]
    assert stream.gap_before and (stream.gaps, stream.refused) == (1, 0)
    assert budget.used == 0


def test_last_delivery_is_not_kept_beyond_half_the_budget() -> None:
    budget = ReassemblyBudget(100)
    stream = StreamReassembler(65_536, budget)
    stream.add(ISN, STREAM[:40])
    assert budget.used == 40
    stream.add(ISN + 40, STREAM[40:100])
    assert (budget.used, stream.last_delivery) == (0, b"")
    stream.add(ISN + 100, STREAM[100:150])
    assert budget.used == 50


def test_flood_of_tiny_out_of_order_segments_stays_bounded() -> None:
    budget = ReassemblyBudget(4_096)
    stream = StreamReassembler(65_536, budget)
    stream.add(ISN, b"x")
    for offset in range(2, 40_000, 2):
        stream.add(ISN + offset, b"y")
        assert len(stream.waiting) <= MAX_WAITING_SEGMENTS
        assert budget.used <= budget.limit
    assert stream.gaps == 20_000 - 1 - MAX_WAITING_SEGMENTS
    stream.release()
    assert budget.used == 0


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        StreamReassembler(0, ReassemblyBudget(10))
    with pytest.raises(ValueError):
        StreamReassembler(1 << 31, ReassemblyBudget(10))
    with pytest.raises(ValueError):
        ReassemblyBudget(-1)


def shuffled_segments(generator: random.Random, data: bytes, max_points: int, extra_copies: int) -> list[tuple[int, bytes]]:
    """`data` cut at random points, with exact duplicates and re-segmented retransmissions, in a
    random order."""
    segments = split(data, generator.sample(range(1, len(data)), generator.randint(0, max_points)))
    segments += generator.choices(segments, k=generator.randint(0, len(segments)))
    for _ in range(extra_copies):
        low = generator.randrange(len(data))
        segments.append((low, data[low : generator.randint(low + 1, len(data))]))
    generator.shuffle(segments)
    return segments


@pytest.mark.parametrize("seed", range(300))
def test_any_segmentation_and_order_delivers_the_stream(seed: int) -> None:
    generator = random.Random(seed)
    isn = generator.randrange(1 << 32)
    depth = generator.choice([len(STREAM), len(STREAM) + 1, 65_536])
    stream = reassembler(depth=depth)
    # at most 16 + 1 + 2 * 4 boundaries: fewer pieces than MAX_WAITING_SEGMENTS can ever wait
    segments = shuffled_segments(generator, STREAM, 16, generator.randint(0, 4))
    if generator.random() < 0.5:
        stream.add(isn, b"", syn=True)
        isn += 1
    else:  # picked up at the first segment: make it the stream's first
        first = next(index for index, (offset, _) in enumerate(segments) if offset == 0)
        segments.insert(0, segments.pop(first))
    delivered = []
    for offset, payload in segments:
        delivered.append(stream.add((isn + offset) % (1 << 32), payload))
        assert not stream.gap_before
    assert b"".join(delivered) == STREAM
    assert (stream.delivered, stream.gaps, stream.conflicts, stream.refused, stream.waiting) == (len(STREAM), 0, 0, 0, [])
    assert stream.done == (depth == len(STREAM))
    stream.release()
    assert stream.budget.used == 0


@pytest.mark.parametrize("seed", range(100))
def test_bounded_reassembly_delivers_stream_bytes_in_order(seed: int) -> None:
    """With the bounds hit (many segments, a small budget), whatever is delivered is the stream's
    own bytes at their place, contiguous unless a gap is reported, and the budget holds."""
    generator = random.Random(seed)
    budget = ReassemblyBudget(generator.choice([64, 512, 2_048]))
    depth = generator.choice([1_000, 4_000, 65_536])
    stream = StreamReassembler(depth, budget)
    segments = shuffled_segments(generator, STREAM, 200, 10)
    stream.add(ISN - 1, b"", syn=True)
    position = 0
    for offset, payload in segments:
        data = stream.add(ISN + offset, payload)
        if data:
            assert data == STREAM[stream.position - len(data) : stream.position]
            assert stream.gap_before or stream.position - len(data) == position
            position = stream.position
        assert budget.used <= budget.limit
        assert len(stream.waiting) <= MAX_WAITING_SEGMENTS
    data = stream.skip_gap()
    assert data == STREAM[stream.position - len(data) : stream.position]
    assert stream.position <= depth
    assert stream.conflicts == 0
    stream.release()
    assert budget.used == 0
