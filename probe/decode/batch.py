"""Batch classifier: decodes the common frames of a whole batch with vector operations.

Most of what a mirror port carries is plain Ethernet (optionally one 802.1Q tag), IPv4 without
options or IPv6 without extension headers, and TCP or UDP, whole. For those frames every field the
pipeline needs sits at a fixed or computable offset, so numpy gathers it for the whole batch at
once; per-packet Python then runs only for the few packets that may carry a name and for frames
this classifier leaves to the per-frame decoder (`probe.decode.frame`): tunnels, MPLS, QinQ,
fragments, IP options, IPv6 extension headers, other link types, truncated or odd frames.
"""

from __future__ import annotations

import numpy as np

from probe.capture.frames import FrameBatch
from probe.decode.frame import GENEVE_PORT, LINKTYPE_ETHERNET, VXLAN_PORT
from probe.decode.packet import PROTO_TCP, PROTO_UDP
from probe.match.name_filter import NAME_COLUMNS, NameFilter

KEY_BYTES = 37  # address A (16), port A (2), address B (16), port B (2), protocol (1)
DNS_PORTS = frozenset((53, 5353, 5355))
"""DNS, mDNS and LLMNR: their messages carry query names in both directions."""
_DNS_PORT_ARRAY = np.array(sorted(DNS_PORTS))
HTTP_METHOD_PREFIXES = frozenset((b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"TRAC", b"CONN"))
"""First four bytes of the requests inspected for a Host header."""
HTTP_METHOD_WORDS = np.array(sorted(int.from_bytes(prefix, "big") for prefix in HTTP_METHOD_PREFIXES), dtype=np.int64)
HEADER_REACH = 72
"""Bytes past a frame's start that the header gathers may touch (Ethernet, one tag, IPv6, TCP to
its flags). Frames too close to the buffer's end are left to the per-frame decoder, so the buffer
is never copied to pad it."""
DNS_HEADER = 12
MAX_EXTENSIONS_WALKED = 24
MAX_LABELS_WALKED = 10
MIN_CLASSIFIED_PAYLOAD = 6
"""Shorter client segments are always inspected: a ClientHello or request sent a few bytes per
segment must not slip past the prefix test."""
QUIC_MIN_INITIAL = 1200
"""RFC 9000 14.1: a client pads every datagram carrying an Initial to at least this."""
_IPV4_MAPPED_LOW = np.uint64(0xFFFF_0000_0000)
"""Low half of ::ffff:0.0.0.0, to which an IPv4 address is added."""
_EIGHT_BYTES = np.arange(8)


def _u16(buffer: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return (buffer[positions].astype(np.int64) << 8) | buffer[positions + 1]


def _u64(buffer: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(buffer[positions[:, None] + _EIGHT_BYTES]).view(">u8").ravel().astype(np.uint64)


def _u32(buffer: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return (_u16(buffer, positions) << 16) | _u16(buffer, positions + 2)


class FastFrames:
    """The classified frames of one batch, as parallel arrays, plus the frames left to the
    per-frame decoder (`others`, indices into the batch)."""

    ARRAYS = ("frames", "timestamps", "wirelens", "protos", "sports", "dports", "vlans", "flags", "seqs", "acks", "payload_offsets", "payload_lengths", "first_words", "sixth_bytes", "src_is_a", "lanes")
    buffer: np.ndarray
    timestamps: np.ndarray
    wirelens: np.ndarray
    protos: np.ndarray
    sports: np.ndarray
    dports: np.ndarray
    vlans: np.ndarray
    flags: np.ndarray
    seqs: np.ndarray
    acks: np.ndarray
    payload_offsets: np.ndarray
    payload_lengths: np.ndarray
    first_words: np.ndarray
    sixth_bytes: np.ndarray
    src_is_a: np.ndarray
    lanes: np.ndarray

    def __init__(self, others: np.ndarray) -> None:
        self.others = others
        self.count = 0
        self.frames = np.empty(0, dtype=np.int64)
        """Batch index of each classified frame, ascending."""

    def runs(self, minimum: int) -> list[tuple[int, int]]:
        """Ranges [start, end) of batch indices where at least `minimum` consecutive frames were
        classified: those go through the vector route, everything between them frame by frame, so
        that packets are accounted in capture order whichever route they take."""
        if not self.count:
            return []
        breaks = np.flatnonzero(np.diff(self.frames) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [self.count]))
        long_enough = ends - starts >= minimum
        return list(zip(self.frames[starts[long_enough]].tolist(), (self.frames[ends[long_enough] - 1] + 1).tolist()))

    def between(self, start: int, end: int) -> FastFrames:
        """The classified frames whose batch index lies in [start, end)."""
        low, high = np.searchsorted(self.frames, [start, end])
        subset = FastFrames(self.others)
        subset.buffer = self.buffer
        for name in self.ARRAYS:
            setattr(subset, name, getattr(self, name)[low:high])
        subset.count = int(high - low)
        return subset

    def without(self, packets: np.ndarray) -> FastFrames:
        """These frames minus the given rows (which the caller handles frame by frame)."""
        keep = np.ones(self.count, dtype=bool)
        keep[packets] = False
        subset = FastFrames(self.others)
        subset.buffer = self.buffer
        for name in self.ARRAYS:
            setattr(subset, name, getattr(self, name)[keep])
        subset.count = int(keep.sum())
        return subset

    def columns(self, packets: np.ndarray, names: tuple[str, ...]) -> list[list]:
        """The named fields of the given packets as Python lists, ready to zip: one conversion per
        column instead of one numpy scalar per field and packet."""
        return [getattr(self, name)[packets].tolist() for name in names]

    def candidates(self, names: NameFilter, every_hello: bool, answers: bool, initials: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Packets that may carry something a marker knows: (DNS queries over UDP, DNS responses
        over UDP, TCP segments that may start or continue a ClientHello, HTTP request or DNS
        message, QUIC client Initials). TCP content decides, not the port. The questions of DNS
        queries and the server names of ClientHellos found whole in their segment are read here for
        the whole batch, and only those `names` cannot rule out go on, unless `every_hello` (JA3,
        JA4 or certificate markers need every handshake). `answers`: responses go on whole (their
        records may hold a marked address or name); else they are screened like queries.
        `initials`: UDP datagrams shaped like a QUIC client Initial (long header, padded to 1,200
        bytes) go on."""
        lengths = self.payload_lengths
        tcp = self.protos == PROTO_TCP
        dns = (np.isin(self.sports, _DNS_PORT_ARRAY) | np.isin(self.dports, _DNS_PORT_ARRAY)) & (lengths > 0)
        client_hello = self._hello_starts(slice(None))
        request = np.isin(self.first_words, HTTP_METHOD_WORDS)
        tiny = lengths < MIN_CLASSIFIED_PAYLOAD
        udp_dns = dns & ~tcp
        responses = np.flatnonzero(udp_dns & ((self.first_words >> 8) & 0x80 != 0)) if answers else np.empty(0, dtype=np.int64)
        questions = np.flatnonzero(udp_dns & ((self.first_words >> 8) & 0x80 == 0)) if answers else np.flatnonzero(udp_dns)
        questions = questions[names.may_hit(*dns_question_names(self.buffer, self.payload_offsets[questions], lengths[questions]))]
        hellos = np.flatnonzero(client_hello)
        if not every_hello:
            hellos = hellos[self._hello_names_may_hit(names, hellos)]
        others = np.flatnonzero(tcp & (lengths > 0) & ~client_hello & (dns | request | tiny))
        quic = np.flatnonzero(~tcp & ~dns & (self.first_words >> 30 == 3) & (lengths >= QUIC_MIN_INITIAL)) if initials else np.empty(0, dtype=np.int64)
        return questions, responses, np.union1d(hellos, others), quic

    def hellos_ruled_out(self, names: NameFilter, packets: np.ndarray) -> np.ndarray:
        """Of `packets`, which are ClientHellos whose server name lies whole in their segment and
        `names` rules out: nothing of them can hit a name marker."""
        found = np.zeros(len(packets), dtype=bool)
        hellos = np.flatnonzero(self._hello_starts(packets))
        if len(hellos):
            found[hellos] = ~self._hello_names_may_hit(names, packets[hellos])
        return found

    def _hello_starts(self, packets: np.ndarray | slice) -> np.ndarray:
        """Whether each packet's payload starts a TLS ClientHello: a handshake record of major
        version 3 whose first message is of type 1."""
        words = self.first_words[packets]
        return (self.protos[packets] == PROTO_TCP) & (words >> 24 == 0x16) & ((words >> 16) & 0xFF == 3) & (self.sixth_bytes[packets] == 1)

    def _hello_names_may_hit(self, names: NameFilter, hellos: np.ndarray) -> np.ndarray:
        """Of ClientHellos, which may name a marked domain (those whose name the vector reader
        cannot judge included)."""
        return names.may_hit(*client_hello_server_names(self.buffer, self.payload_offsets[hellos], self.payload_lengths[hellos]))


def _bytes_at(buffer: np.ndarray, positions: np.ndarray, limits: np.ndarray, width: int) -> np.ndarray:
    """`width` bytes from each position, never read past each row's limit (repeats its last byte)."""
    return buffer[np.minimum(positions[:, None] + np.arange(width), limits[:, None] - 1)]


def dns_question_names(buffer: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dotted question names of single-question DNS messages, as NameFilter takes them; length -1
    where the name uses compression, is longer than the filter reads, or the message is odd."""
    count = len(offsets)
    ends = offsets + lengths
    judged = (lengths > DNS_HEADER) & (buffer[np.minimum(offsets + 4, ends - 1)] == 0) & (buffer[np.minimum(offsets + 5, ends - 1)] == 1)
    wire = _bytes_at(buffer, offsets + DNS_HEADER, ends, NAME_COLUMNS + 2).astype(np.int64)
    rows = np.arange(count)
    position = np.zeros(count, dtype=np.int64)
    open_name = judged.copy()
    boundaries = np.zeros((count, NAME_COLUMNS + 2), dtype=bool)
    for _ in range(MAX_LABELS_WALKED + 1):
        length = wire[rows, np.minimum(position, NAME_COLUMNS + 1)]
        judged &= ~open_name | ((length < 64) & (position <= NAME_COLUMNS) & (offsets + DNS_HEADER + position < ends))
        open_name &= judged & (length != 0)
        if not open_name.any():
            break
        boundaries[rows[open_name], position[open_name]] = True
        position = np.where(open_name, position + length + 1, position)
    judged &= ~open_name & (position > 0)
    names = wire[:, 1 : NAME_COLUMNS + 1].astype(np.uint8)
    names[boundaries[:, 1 : NAME_COLUMNS + 1]] = ord(".")
    return names, np.where(judged, position - 1, -1)


def client_hello_server_names(buffer: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Server names of ClientHellos whose server_name extension lies whole in this segment, as
    NameFilter takes them; length -1 where that is not the case or anything looks odd."""
    count = len(offsets)
    ends = offsets + np.minimum(lengths, 5 + _u16(buffer, offsets + 3))  # this segment's part of the first record
    safe = np.maximum(ends - 1, offsets)
    judged = (lengths >= 48) & (buffer[offsets + 5] == 1)

    def byte(position: np.ndarray) -> np.ndarray:
        return buffer[np.minimum(position, safe)].astype(np.int64)

    def word(position: np.ndarray) -> np.ndarray:
        return (byte(position) << 8) | byte(position + 1)

    position = offsets + 9 + 34
    position = position + 1 + byte(position)  # session id
    position = position + 2 + word(position)  # cipher suites
    position = position + 1 + byte(position)  # compression methods
    extensions_end = np.minimum(position + 2 + word(position), ends)
    position = position + 2
    server_name = np.full(count, -1, dtype=np.int64)
    for _ in range(MAX_EXTENSIONS_WALKED):
        walking = judged & (server_name < 0) & (position + 4 <= extensions_end)
        if not walking.any():
            break
        found = walking & (word(position) == 0)
        server_name = np.where(found, position + 4, server_name)
        position = np.where(walking & ~found, position + 4 + word(position + 2), position)
    # server_name_list length (2), name_type (1) = host_name, name length (2), name
    name_start = server_name + 5
    name_length = word(server_name + 3)
    judged &= (server_name >= 0) & (byte(server_name + 2) == 0) & (name_start + name_length <= ends)
    names = _bytes_at(buffer, np.where(judged, name_start, offsets), np.maximum(ends, offsets + 1), NAME_COLUMNS)
    return names, np.where(judged, name_length, -1)


def classify_batch(batch: FrameBatch) -> FastFrames:
    data = batch.data if len(batch.data) >= HEADER_REACH else bytes(batch.data).ljust(HEADER_REACH, b"\0")
    buffer = np.frombuffer(data, dtype=np.uint8)
    start = batch.offsets
    end = start + batch.caplens
    whole = (batch.caplens == batch.wirelens) & (batch.linktypes == LINKTYPE_ETHERNET) & (batch.caplens >= 34) & (start + HEADER_REACH <= len(data))
    start = np.where(whole, start, 0)
    ethertype = _u16(buffer, start + 12)
    tagged = ethertype == 0x8100
    vlans = np.where(tagged, _u16(buffer, start + 14) & 0x0FFF, -1)
    l3 = start + 14 + 4 * tagged
    ethertype = np.where(tagged, _u16(buffer, start + 16), ethertype)
    version_byte = buffer[l3].astype(np.int64)
    ipv4 = (ethertype == 0x0800) & (version_byte == 0x45)
    ipv6 = (ethertype == 0x86DD) & (version_byte >> 4 == 6)
    proto = np.where(ipv4, buffer[l3 + 9], buffer[l3 + 6]).astype(np.int64)
    ip_end = np.where(ipv4, l3 + _u16(buffer, l3 + 2), l3 + 40 + _u16(buffer, l3 + 4))
    not_fragment = (_u16(buffer, l3 + 6) & 0x3FFF) == 0
    l4 = l3 + np.where(ipv4, 20, 40)
    tcp = proto == PROTO_TCP
    udp = proto == PROTO_UDP
    header_length = np.where(tcp, (buffer[l4 + 12].astype(np.int64) >> 4) * 4, 8)
    sports = _u16(buffer, l4)
    dports = _u16(buffer, l4 + 2)
    tunnel = udp & ((dports == VXLAN_PORT) | (dports == GENEVE_PORT) | (sports == VXLAN_PORT) | (sports == GENEVE_PORT))
    udp_length_agrees = _u16(buffer, l4 + 4) == ip_end - l4  # else the per-frame decoder judges it
    fast = whole & ((ipv4 & not_fragment) | ipv6) & (tcp | (udp & udp_length_agrees)) & ~tunnel & (udp | (header_length >= 20)) & (l4 + header_length <= ip_end) & (ip_end <= end) & (ip_end > l4)
    fast_index = np.flatnonzero(fast)
    frames = FastFrames(np.flatnonzero(~fast))
    frames.count = len(fast_index)
    frames.frames = fast_index
    frames.buffer = buffer
    if not frames.count:
        return frames

    l3, l4, ip_end, ipv4 = l3[fast_index], l4[fast_index], ip_end[fast_index], ipv4[fast_index]
    frames.timestamps = batch.timestamps[fast_index]
    frames.wirelens = batch.wirelens[fast_index]
    frames.protos = proto[fast_index]
    frames.sports = sports[fast_index]
    frames.dports = dports[fast_index]
    frames.vlans = vlans[fast_index]
    is_tcp = frames.protos == PROTO_TCP
    frames.flags = np.where(is_tcp, buffer[l4 + 13], 0).astype(np.int64)
    frames.seqs = np.where(is_tcp, _u32(buffer, l4 + 4), 0)
    frames.acks = np.where(is_tcp, _u32(buffer, l4 + 8), 0)
    frames.payload_offsets = l4 + header_length[fast_index]
    frames.payload_lengths = ip_end - frames.payload_offsets
    classified = frames.payload_lengths >= MIN_CLASSIFIED_PAYLOAD
    first_byte = np.where(classified, frames.payload_offsets, 0)
    frames.first_words = np.where(classified, _u32(buffer, first_byte), -1)
    frames.sixth_bytes = np.where(classified, buffer[first_byte + 5], -1)

    # Addresses as two big-endian 64-bit halves (IPv4 mapped into ::ffff:0:0/96), so that the
    # canonical order of the two sides and the grouping work on integers, not on byte strings.
    count = frames.count
    source_high, source_low = np.zeros(count, dtype=np.uint64), np.zeros(count, dtype=np.uint64)
    destination_high, destination_low = np.zeros(count, dtype=np.uint64), np.zeros(count, dtype=np.uint64)
    v4 = np.flatnonzero(ipv4)
    v6 = np.flatnonzero(~ipv4)
    source_low[v4] = _IPV4_MAPPED_LOW | _u32(buffer, l3[v4] + 12).astype(np.uint64)
    destination_low[v4] = _IPV4_MAPPED_LOW | _u32(buffer, l3[v4] + 16).astype(np.uint64)
    source_high[v6], source_low[v6] = _u64(buffer, l3[v6] + 8), _u64(buffer, l3[v6] + 16)
    destination_high[v6], destination_low[v6] = _u64(buffer, l3[v6] + 24), _u64(buffer, l3[v6] + 32)
    sports, dports = frames.sports, frames.dports
    src_is_a = (source_high < destination_high) | ((source_high == destination_high) & ((source_low < destination_low) | ((source_low == destination_low) & (sports <= dports))))
    lanes = np.empty((count, 5), dtype=np.uint64)
    lanes[:, 0] = np.where(src_is_a, source_high, destination_high)
    lanes[:, 1] = np.where(src_is_a, source_low, destination_low)
    lanes[:, 2] = np.where(src_is_a, destination_high, source_high)
    lanes[:, 3] = np.where(src_is_a, destination_low, source_low)
    lanes[:, 4] = ((np.where(src_is_a, sports, dports) << 24) | (np.where(src_is_a, dports, sports) << 8) | frames.protos).astype(np.uint64)
    frames.src_is_a = src_is_a
    frames.lanes = lanes
    return frames


class FlowGroups:
    """The classified packets of a batch grouped by flow key."""

    def __init__(self, frames: FastFrames) -> None:
        """One stable sort of the keys' hashes gives everything: groups, each group's packets in
        capture order, and per-group sums and extremes as reductions over contiguous runs."""
        lanes = frames.lanes
        hashes = _lane_hashes(lanes)
        order = np.argsort(hashes, kind="stable")
        sorted_lanes = lanes[order]
        new_group = np.empty(len(order), dtype=bool)
        new_group[0] = True
        np.any(sorted_lanes[1:] != sorted_lanes[:-1], axis=1, out=new_group[1:])
        sorted_hashes = hashes[order]
        if (new_group[1:] & (sorted_hashes[1:] == sorted_hashes[:-1])).any():  # two keys share a hash
            order = np.lexsort(lanes.T[::-1])
            sorted_lanes = lanes[order]
            np.any(sorted_lanes[1:] != sorted_lanes[:-1], axis=1, out=new_group[1:])
        starts = np.flatnonzero(new_group)
        self._order = order
        self._starts = np.append(starts, len(order))
        self.counts = np.diff(self._starts)
        self.first = order[starts]
        self._row_group = np.cumsum(new_group) - 1  # group of each row in sorted order
        self.inverse = np.empty(len(order), dtype=np.int64)
        self.inverse[order] = self._row_group
        records = flow_keys(sorted_lanes[starts])
        self.key_matrix = records.view(np.uint8).reshape(-1, KEY_BYTES)
        raw = records.tobytes()
        self.keys = [raw[position : position + KEY_BYTES] for position in range(0, len(raw), KEY_BYTES)]
        timestamps = frames.timestamps[order]
        self.bytes = np.add.reduceat(frames.wirelens[order], starts)
        self.last_seen = np.maximum.reduceat(timestamps, starts)
        self.earliest = np.minimum.reduceat(timestamps, starts)
        self.first_timestamps = frames.timestamps[self.first]
        gaps = np.zeros(len(order), dtype=np.int64)
        gaps[1:] = np.abs(np.diff(timestamps))
        gaps[starts] = 0
        self.longest_gap = np.maximum.reduceat(gaps, starts)
        flags = frames.flags[order]
        from_a = frames.src_is_a[order]
        fin = (flags & 0x01) != 0
        reset = (flags & 0x04) != 0
        self.fin_a = np.logical_or.reduceat(fin & from_a, starts)
        self.fin_b = np.logical_or.reduceat(fin & ~from_a, starts)
        self.reset = np.logical_or.reduceat(reset, starts)
        # A SYN after both FINs or a RST of its group is a new connection on the same ports.
        fin_a_rows, fin_b_rows = fin & from_a, fin & ~from_a
        before = (_count_before(fin_a_rows, starts, self.counts), _count_before(fin_b_rows, starts, self.counts), _count_before(reset, starts, self.counts))
        ended_before = ((before[0] > 0) & (before[1] > 0)) | (before[2] > 0)
        pure_syn = (flags & 0x12) == 0x02
        self.restarts = np.logical_or.reduceat(pure_syn & ended_before, starts)
        self.has_pure_syn = np.logical_or.reduceat(pure_syn, starts)
        self._rows = (before[0] + fin_a_rows, before[1] + fin_b_rows, before[2] + reset, frames.wirelens[order], timestamps)
        self.protos = frames.protos[self.first]

    def closing_counters(self, groups: np.ndarray, prior_a: np.ndarray, prior_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For TCP groups that end in this batch (their flows had sent FIN from side A / side B
        before it, as `prior_a` / `prior_b` say): packets, bytes, earliest and latest time of the
        batch's packets up to and including the one that ended the flow. An event reports these, so
        that late ACKs after the close count the same whatever the batching."""
        fin_a_through, fin_b_through, reset_through, wirelens, timestamps = self._rows
        starts, counts, row_group = self._starts[:-1], self.counts, self._row_group
        had_a = np.zeros(len(counts), dtype=bool)
        had_b = np.zeros(len(counts), dtype=bool)
        had_a[groups], had_b[groups] = prior_a, prior_b
        ended = ((had_a[row_group] | (fin_a_through > 0)) & (had_b[row_group] | (fin_b_through > 0))) | (reset_through > 0)
        rows = np.arange(len(row_group))
        close = np.minimum(np.minimum.reduceat(np.where(ended, rows, len(rows)), starts), self._starts[1:] - 1)[groups]  # at most the group's last row
        first_rows = starts[groups]
        cumulative = np.cumsum(wirelens)
        byte_counts = cumulative[close] - cumulative[first_rows] + wirelens[first_rows]
        # Running extremes within each group: shift each group's (relative) times into its own range.
        relative = timestamps - timestamps.min()
        span = int(relative.max()) + 1
        if span * len(counts) < 1 << 62:
            shift = row_group * span
            latest = np.maximum.accumulate(relative + shift)[close] - shift[close]
            earliest = span - 1 - (np.maximum.accumulate(span - 1 - relative + shift)[close] - shift[close])
        else:  # times too far apart to shift: one slice per group
            latest = np.array([relative[start : end + 1].max() for start, end in zip(first_rows.tolist(), close.tolist())], dtype=np.int64)
            earliest = np.array([relative[start : end + 1].min() for start, end in zip(first_rows.tolist(), close.tolist())], dtype=np.int64)
        base = timestamps.min()
        return close - first_rows + 1, byte_counts, earliest + base, latest + base

    def ending(self) -> np.ndarray:
        """Groups with a FIN or RST in this batch."""
        return np.flatnonzero(self.fin_a | self.fin_b | self.reset)

    def packets_of(self, group: int) -> np.ndarray:
        """The group's packets in capture order."""
        return self._order[self._starts[group] : self._starts[group + 1]]


def _count_before(events: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For rows sorted by group: how many of the group's earlier rows are True."""
    running = np.cumsum(events, dtype=np.int64)
    through = running - events
    return through - np.repeat(through[starts], counts)


_HASH_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD], dtype=np.uint64)
KEY_RECORD = np.dtype([("a_high", ">u8"), ("a_low", ">u8"), ("a_port", ">u2"), ("b_high", ">u8"), ("b_low", ">u8"), ("b_port", ">u2"), ("proto", "u1")])
"""The flow key's byte layout (as `probe.flows.table.canonical_key` builds it), as a record."""


def flow_keys(lanes: np.ndarray) -> np.ndarray:
    """Flow keys (KEY_RECORD records, 37 bytes each) of rows of canonical lanes."""
    records = np.empty(len(lanes), dtype=KEY_RECORD)
    records["a_high"], records["a_low"], records["b_high"], records["b_low"] = lanes[:, 0], lanes[:, 1], lanes[:, 2], lanes[:, 3]
    records["a_port"] = lanes[:, 4] >> np.uint64(24)
    records["b_port"] = (lanes[:, 4] >> np.uint64(8)) & np.uint64(0xFFFF)
    records["proto"] = lanes[:, 4] & np.uint64(0xFF)
    return records


def _lane_hashes(lanes: np.ndarray) -> np.ndarray:
    """64-bit hash of each row of lanes: sorting these is far cheaper than sorting the rows (the
    caller sorts the rows themselves in the rare batch where two share a hash)."""
    with np.errstate(over="ignore"):
        mixed = lanes * _HASH_MULTIPLIERS
        mixed ^= mixed >> np.uint64(29)
        return np.bitwise_xor.reduce(mixed, axis=1)

