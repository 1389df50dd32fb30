"""The probe's spine: frames in, events out (capture → decode → flows → match → record).

`Pipeline.process_batch` takes one `FrameBatch`. The batch classifier decodes the common frames
(Ethernet, VLAN, IPv4/IPv6, TCP/UDP) for the whole batch at once and aggregates them per flow, so
that a packet which can hit no marker costs a few vector operations and a share of one flow-table
update. Only packets that may carry a name a marker knows (DNS questions and ClientHello server
names the vector name filter cannot rule out, HTTP requests, the rest of an incomplete handshake)
and frames the classifier does not handle (tunnels, fragments, MPLS, other link types, anything
odd) go through per-packet Python code. Both routes end in the same flow table, marker index and
event records, and packets are accounted in capture order whichever route they take.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, Protocol

import numpy as np
from mypy_extensions import mypyc_attr

from probe.capture.frames import FrameBatch, FrameBuffer
from probe.config import Config
from probe.decode import dns, quic, tls
from probe.decode.batch import DNS_PORTS, HTTP_METHOD_PREFIXES, MIN_CLASSIFIED_PAYLOAD, FastFrames, FlowGroups, classify_batch
from probe.decode.fragments import FragmentReassembler
from probe.decode.frame import FrameDecoder
from probe.decode.packet import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet
from probe.flows.inspection import FlowInspection, Inspector
from probe.flows.table import CLASS_CLOSED, INSPECT_DONE, INSPECT_STREAM, INSPECT_WATCH, NANOSECONDS, NO_ENCAPSULATION, Flow, FlowTable, canonical_key
from probe.bundles.library import LoadReport, MarkerLibrary
from probe.match.compiled import CompiledMarkers
from probe.match.markers import Marker
from probe.record.events import Event, EventWriter, Hit, flow_event
from probe.store.records import BundleRecord, bundle_records

QUIC_ANOMALIES: Final = {quic.BAD_TAG: "quic.bad_tag", quic.UNKNOWN_VERSION: "quic.unknown_version", quic.MALFORMED: "quic.malformed"}
FEW_FLOWS: Final = 8
"""Flows drained one by one: fewer than this, their packets are gathered group by group rather
than by a pass over the whole batch."""
CLOCK_FRAMES: Final = 63
"""The expiry clock is the median time of this many latest frames."""
MIN_VECTOR_RUN = 32
"""Fewer consecutive classified frames than this cost less frame by frame than in vector setup."""
INSPECTED_COLUMNS: Final = ("payload_offsets", "payload_lengths", "src_is_a", "protos", "sports", "dports", "seqs", "acks", "flags", "timestamps", "vlans")


def vlan_encapsulation(vlan: int) -> list[dict]:
    return NO_ENCAPSULATION if vlan < 0 else [{"type": "vlan", "id": vlan}]


def starts_like_handshake(payload: bytes) -> bool:
    """Whether a client segment may begin a TLS ClientHello or an HTTP request (the same test as
    `FastFrames.candidates`, one packet at a time)."""
    return len(payload) < MIN_CLASSIFIED_PAYLOAD or (payload[0] == 0x16 and payload[1] == 3 and payload[5] == 1) or payload[:4] in HTTP_METHOD_PREFIXES


class EventStore(Protocol):
    """Where events and bundle versions are kept: the ring store, or in a live service's worker,
    the channel to the main process that owns it."""

    def append(self, event: Event) -> object: ...

    def append_bundle(self, record: BundleRecord) -> object: ...

    def flush_if_due(self) -> object: ...


class EventNotifier(Protocol):
    """Who is told of events as they are detected: the notifier, or in a live service's worker, the
    channel to the main process that owns it."""

    def detected(self, event: Event) -> bool: ...

    def revised(self, event: Event, final: bool) -> None: ...

    def bundle_changed(self, record: BundleRecord) -> None: ...

    def report_suppressed(self) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the conformance tests subclass it to note what it decoded
class Pipeline:
    def __init__(self, config: Config, library: MarkerLibrary, writer: EventWriter | None, store: EventStore | None = None, notifier: EventNotifier | None = None) -> None:
        """`writer`, when given, receives each event's final revision; `store` every revision;
        `notifier` every revision of the events it notified at their first hit."""
        self.config = config
        self.library = library
        self.anomalies: Counter[str] = Counter()
        self.inspector = Inspector(config.flows, self.anomalies)
        self._observed: list[tuple[str, Any, bool]] = []
        self._use_markers(library.active)
        self.writer = writer
        self.store = store
        self.notifier = notifier
        self.update_interval = int(config.notify.update_interval * NANOSECONDS)
        self._next_update = 0
        self._flows_with_hits: set[Flow] = set()
        self._expired_bundles: set[tuple[tuple[str, str], int]] = set()
        fragments = config.fragments
        self.reassembler = FragmentReassembler(int(fragments.timeout * NANOSECONDS), fragments.max_datagrams, fragments.max_per_source, fragments.max_bytes)
        self.decoder = FrameDecoder(self.reassembler)
        self.flows = FlowTable(config.flows)
        self.packets = 0
        self.bytes = 0
        self.first_timestamp: int | None = None
        self.last_timestamp = 0
        self.now = 0
        self._recent = np.empty(0, dtype=np.int64)
        self._closing: list[Flow] = []
        # Per protocol, the longest silence inside one flow that the batch route may account
        # without checking timeouts packet by packet.
        limits = config.flows
        self._gap_limits = np.full(256, int(limits.other_timeout * NANOSECONDS), dtype=np.int64)
        self._gap_limits[PROTO_TCP] = int(min(limits.tcp_timeout, limits.tcp_closed_timeout) * NANOSECONDS)
        self._gap_limits[PROTO_UDP] = int(limits.udp_timeout * NANOSECONDS)

    def _use_markers(self, compiled: CompiledMarkers) -> None:
        self.compiled = compiled
        self.index = compiled.index
        self.name_filter = compiled.name_filter
        self.inspector.use(compiled)
        index = compiled.index
        self._reads_names = bool(index.exact_names or index.parent_names or index.server_names or index.http_hosts or index.urls)
        self._reads_streams = self._reads_names or compiled.fingerprints or compiled.certificates or compiled.payload
        """TCP flows seen from their SYN are read from their first byte (a handshake sent out of
        order or in pieces is reassembled); others when a segment starts like a handshake."""
        self._reads_answers = index.has_address_markers or bool(index.exact_names or index.parent_names)
        self._reads_initials = self._reads_names or compiled.fingerprints

    def _match_open_flows(self) -> None:
        """Test the flows already open against a new version's address markers: a session that
        outlives a reload (a long-lived C2 connection) is matched like one that starts after it.
        The hit is dated at the latest packet seen, and records the flow's first encapsulation."""
        index = self.index
        flows = [flow for flow in self.flows.flows.values() if flow.timeout_class != CLASS_CLOSED]
        if not index.has_address_markers or not flows:
            return
        keys = np.frombuffer(b"".join(flow.key for flow in flows), dtype=np.uint8).reshape(len(flows), -1)
        may_hit = index.address_candidates(keys[:, 0:16]) | index.address_candidates(keys[:, 18:34])
        for position in np.flatnonzero(may_hit).tolist():
            flow = flows[position]
            for is_client, address in ((flow.client_is_a, flow.key[0:16]), (not flow.client_is_a, flow.key[18:34])):
                for marker in index.match_address(address):
                    if not flow.hits or (marker.bundle, marker.id) not in flow.hits:  # hit when the flow started
                        self._hit(flow, marker, "ip.src" if is_client else "ip.dst", not is_client, self.last_timestamp, flow.encapsulation)

    def process_batch(self, batch: FrameBatch) -> None:
        if not len(batch):
            return
        if self.library.active is not self.compiled:  # a reload published a new version: take it now, between two packets
            self._use_markers(self.library.active)
            self._match_open_flows()
        self.packets += len(batch)
        self.bytes += int(batch.wirelens.sum())
        if self.first_timestamp is None:
            self.first_timestamp = int(batch.timestamps[0])
        self.last_timestamp = max(self.last_timestamp, int(batch.timestamps.max()))
        fast = classify_batch(batch)
        position = 0
        for start, end in fast.runs(MIN_VECTOR_RUN):
            self._decode_frames(batch, np.arange(position, start))
            self._fast_packets(batch, fast.between(start, end))
            position = end
        self._decode_frames(batch, np.arange(position, len(batch)))
        # The expiry clock follows the (lower) median of the last frames seen, not the latest
        # frame: one stamped far ahead of the rest (a bad clock on the capture host) would
        # otherwise end every flow, however the input is cut into batches.
        recent = np.concatenate((self._recent, batch.timestamps[-CLOCK_FRAMES:]))[-CLOCK_FRAMES:]
        self._recent = recent
        middle = (len(recent) - 1) // 2
        self._move_clock(max(self.now, int(np.partition(recent, middle)[middle])))

    def advance(self, now: int) -> None:
        """Live capture: time goes on when no packet comes, and flows, fragments and updates
        must expire by it (`now` is the capture host's clock, which stamps the packets)."""
        if now > self.now:
            self._move_clock(now)

    def _move_clock(self, now: int) -> None:
        self.now = now
        for packet in self.decoder.expire_fragments(self.now):
            self.handle_packet(packet)
        self._close_ended_flows()
        for flow in self.flows.expire(self.now):
            self._end_flow(flow)
        self.note_expired_bundles()
        if self.notifier is not None and self.now >= self._next_update:
            self._update_open_events()
        if self.store is not None:
            self.store.flush_if_due()

    def record_load(self, report: LoadReport, now: int) -> None:
        """Keep and notify the history of the marker set: each bundle version activated, each
        file refused (with its reason), so that any event can be tied to the markers in force and
        the authority knows which markers this probe runs."""
        for record in bundle_records(report, now):
            self._bundle_changed(record)

    def note_expired_bundles(self) -> None:
        """Record, once, each active bundle whose validity ended before the capture's clock."""
        for bundle in self.library.bundles.values():
            if bundle.valid_until is not None and bundle.valid_until < self.now and (bundle.key, bundle.version) not in self._expired_bundles:
                self._expired_bundles.add((bundle.key, bundle.version))
                self._bundle_changed(BundleRecord(bundle.valid_until, "expired", bundle.issuer, bundle.id, bundle.version, bundle.digest, "valid_until passed"))

    def _bundle_changed(self, record: BundleRecord) -> None:
        if self.store is not None:
            self.store.append_bundle(record)
        if self.notifier is not None:
            self.notifier.bundle_changed(record)

    def _update_open_events(self) -> None:
        """With sinks: revise the events of flows still going on whose packet count moved since
        their last revision, once per `update_interval` of capture time each (checked between
        batches, every eighth of it), and send the counts of detections suppressed meanwhile.
        The store keeps every revision; without sinks an event has two (first hit, flow end)."""
        interval = self.update_interval
        self._next_update = self.now + interval // 8
        counters_of = self.flows.counters
        for flow in self._flows_with_hits:
            counters = counters_of(flow)
            for hit in flow.hits.values():  # type: ignore[union-attr]
                if counters[0] > hit.revised_packets and self.now - hit.revised_at >= interval:
                    self._revise(flow, hit, counters, False)
        self.notifier.report_suppressed()  # type: ignore[union-attr]

    def _revise(self, flow: Flow, hit: Hit, counters: tuple[int, int, int, int], final: bool) -> Event:
        hit.revision += 1
        hit.revised_packets = counters[0]
        hit.revised_at = self.now
        event = flow_event(flow, hit, counters, hit.revision)
        if self.store is not None:
            self.store.append(event)
        if hit.notified:
            self.notifier.revised(event, final)  # type: ignore[union-attr]
        return event

    def start_capture(self) -> None:
        """Each capture runs the expiry clock from its own start, so captures given out of time
        order do not end each other's flows."""
        self.now = 0
        self._next_update = 0
        self._recent = np.empty(0, dtype=np.int64)

    def _decode_frames(self, batch: FrameBatch, frames: np.ndarray) -> None:
        """The per-frame route, in capture order: frames the classifier left out, short runs
        between them, and flows whose packets straddle an idle timeout."""
        if not len(frames):
            return
        data = batch.data
        decode = self.decoder.decode
        rows = zip(batch.offsets[frames].tolist(), batch.caplens[frames].tolist(), batch.wirelens[frames].tolist(), batch.linktypes[frames].tolist(), batch.timestamps[frames].tolist())
        for offset, caplen, wirelen, linktype, timestamp in rows:
            packet = decode(data, offset, caplen, wirelen, linktype, timestamp)
            if packet is not None:
                self.handle_packet(packet)

    def finish(self) -> None:
        """End of input: inspect what fragments were left, then end every flow."""
        for packet in self.decoder.flush_fragments():
            self.handle_packet(packet)
        self._close_ended_flows()
        for flow in self.flows.drain():
            if flow.hits or flow.inspection is not None:
                self._end_flow(flow)
        self.flows.shrink()
        self.note_expired_bundles()
        if self.notifier is not None:
            self.notifier.report_suppressed()

    def handle_packet(self, packet: Packet) -> None:
        """Account and inspect one packet decoded by the per-frame decoder."""
        proto = packet.proto
        key, src_is_a = canonical_key(packet.src, packet.sport, packet.dst, packet.dport, proto)
        table = self.flows
        flow = table.flows.get(key)
        flags = packet.tcp_flags
        if flow is not None and table.idle_for(flow, packet.timestamp):
            self._expire(flow)
            flow = None
        if flow is None or (flags & (TCP_SYN | TCP_ACK) == TCP_SYN and flow.fin_a and flow.fin_b):
            if flow is not None:  # a new connection on the ports of one that ended (FINs or RST)
                self._end_flow(flow)
                table.remove(flow)
            for evicted in table.reserve(1):
                self._end_flow(evicted)
            flow = self._new_flow(key, src_is_a, packet.timestamp, flags, packet.sport, packet.dport, packet.tcp_seq, packet.encapsulation, self.index.has_address_markers)
        from_client = src_is_a == flow.client_is_a
        table.account(flow, packet.wirelen, packet.timestamp)
        if packet.payload or (flags & TCP_SYN and flow.inspect == INSPECT_STREAM):
            self._inspect(flow, proto, from_client, packet.sport, packet.dport, packet.tcp_seq, packet.tcp_ack, flags, packet.payload, packet.timestamp, packet.encapsulation)
        if flags & (TCP_FIN | TCP_RST) and proto == PROTO_TCP:
            fin = bool(flags & TCP_FIN)
            if self._tcp_end(flow, fin and src_is_a, fin and not src_is_a, bool(flags & TCP_RST)):
                flow.final = table.counters(flow)

    def _inspect(self, flow: Flow, proto: int, from_client: bool, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes, timestamp: int, encapsulation: list[dict]) -> None:
        """Read a packet's payload for what markers may know: DNS messages in either direction,
        QUIC client Initials, and TCP streams (handshakes recognised by content whatever the port,
        byte patterns, YARA)."""
        dns_port = sport in DNS_PORTS or dport in DNS_PORTS
        if proto == PROTO_UDP:
            if dns_port:
                self._dns_message(flow, payload, from_client, timestamp, encapsulation)
            elif from_client and (flow.inspection is not None or (self._reads_initials and quic.looks_like_initial(payload))):
                self._quic(flow, payload, timestamp, encapsulation)
            return
        if proto != PROTO_TCP or flow.inspect == INSPECT_DONE:
            return
        inspection = flow.inspection
        server_syn = not payload and not from_client and flags & TCP_SYN
        if server_syn and flags & TCP_ACK:
            self._client_start(flow, ack)
        if inspection is None:
            if not payload and from_client and flow.stream_start == (seq + 1) & 0xFFFFFFFF:
                return  # the SYN the flow was made from: its stream's start is known
            if server_syn and not (self.compiled.payload or self.compiled.certificates or dns_port):
                return  # the server's side is not read: nothing to make yet
            if flow.inspect != INSPECT_STREAM and not (payload and from_client and (dns_port or starts_like_handshake(payload))):
                return
            # Readers are made at the flow's first byte (or, for one picked up mid-stream, at a
            # segment that starts like a handshake): a flow that never carries one costs none.
            inspection = flow.inspection = self.inspector.start(flow.server_port(), dns_port)
            if flow.stream_start >= 0:
                self.inspector.syn(inspection, True, flow.stream_start - 1)
            flow.inspect = INSPECT_STREAM
        if not payload:
            self.inspector.syn(inspection, from_client, seq)  # type: ignore[arg-type]
            return
        observed = self._observed
        if not self.inspector.segment(inspection, from_client, seq, payload, bool(flags & TCP_SYN), observed):  # type: ignore[arg-type]
            flow.inspection = None
            flow.inspect = INSPECT_DONE  # bypassed: every decision about its bytes is made
        if observed:
            self._record_observed(flow, timestamp, encapsulation)

    def _client_start(self, flow: Flow, ack: int) -> None:
        """The client's stream starts where the server's SYN-ACK says: a decoy SYN with another
        sequence number, before or after the real one, does not move it."""
        inspection = flow.inspection
        if inspection is None:
            flow.stream_start = ack
        elif inspection.__class__ is FlowInspection:
            self.inspector.client_start(inspection, ack)  # type: ignore[arg-type]

    def _record_observed(self, flow: Flow, timestamp: int, encapsulation: list[dict]) -> None:
        """Look up what the readers saw and record the hits; the values are dropped here."""
        index = self.index
        markers: tuple[Marker, ...]
        for matched_on, value, to_server in self._observed:
            if matched_on == "payload" or matched_on == "yara":
                markers = (value,)
            elif matched_on == "tls.sni" or matched_on == "quic.sni":
                markers = index.match_server_name(value)
            elif matched_on == "http.host":
                markers = index.match_http_host(value)
            elif matched_on == "http.url":
                markers = index.match_url(*value)
            elif matched_on == "tls.ja3" or matched_on == "tls.ja4":
                markers = index.match_fingerprint(value)
            elif matched_on == "tls.cert_sha256":
                markers = index.match_certificate(value)
            elif matched_on == "dns.answer" and value.__class__ is bytes:
                markers = index.match_address(value)
            else:  # dns.query, dns.answer (a CNAME target)
                markers = index.match_name(value)
            for marker in markers:
                self._hit(flow, marker, matched_on, to_server, timestamp, encapsulation)
        self._observed.clear()

    def _dns_message(self, flow: Flow, payload: bytes, from_client: bool, timestamp: int, encapsulation: list[dict]) -> None:
        message = dns.read_dns_message(payload)
        self._match_names(flow, message.questions, "dns.query", from_client, timestamp, encapsulation)
        if message.is_response and self._reads_answers:
            index = self.index
            for name in message.cname_targets:
                for marker in index.match_name(name):
                    self._hit(flow, marker, "dns.answer", from_client, timestamp, encapsulation)
            for address in message.addresses:
                for marker in index.match_address(address):
                    self._hit(flow, marker, "dns.answer", from_client, timestamp, encapsulation)

    def _quic(self, flow: Flow, payload: bytes, timestamp: int, encapsulation: list[dict]) -> None:
        """A QUIC client's Initial packets, decrypted with the keys anyone can derive from them,
        until the ClientHello is whole; nothing else of the connection is decrypted. The CRYPTO
        bytes a reader holds are charged to the reassembly budget."""
        budget = self.inspector.budget
        reader = flow.inspection
        if reader is None:
            if budget.used > budget.limit:
                self.anomalies["quic.budget"] += 1
                return
            reader = flow.inspection = quic.QuicInitialReader()
            flow.inspect = INSPECT_STREAM
        held, rejected = reader.buffered_bytes, reader.rejected  # type: ignore[union-attr]
        status = reader.feed(payload)  # type: ignore[union-attr]
        budget.used += reader.buffered_bytes - held  # type: ignore[union-attr]
        if reader.rejected != rejected:  # type: ignore[union-attr]
            self.anomalies["quic.bad_tag"] += 1
        if status == quic.NEED_MORE:
            return
        flow.inspection = None
        # A first datagram that does not authenticate may be forged by anyone who sees the flow:
        # the next Initial starts a new reader rather than let it end the reading.
        flow.inspect = INSPECT_WATCH if status == quic.BAD_TAG else INSPECT_DONE
        if status == quic.DONE:
            hello = tls.fingerprint_client_hello(reader.client_hello, "q")  # type: ignore[union-attr,arg-type]
            if hello.status == tls.DONE:
                observed = self._observed
                if hello.server_name:
                    observed.append(("quic.sni", hello.server_name, True))
                observed.append(("tls.ja3", hello.ja3, False))
                observed.append(("tls.ja4", hello.ja4.lower(), False))  # type: ignore[union-attr]  # bundles hold JA4s in lower case
                self._record_observed(flow, timestamp, encapsulation)
            else:
                self.anomalies["quic.malformed"] += 1
        elif status != quic.NOT_QUIC:
            self.anomalies[QUIC_ANOMALIES[status]] += 1

    def _fast_packets(self, batch: FrameBatch, fast: FastFrames) -> None:
        """Account the classifier's packets per flow, then inspect the few that need it."""
        groups = FlowGroups(fast)
        table = self.flows
        flows_by_group, slots, known, closed, idle = self._look_up(groups)
        # Flows whose packets cross a flow boundary inside the batch (an idle timeout, or a new
        # connection on the ports of one that ended) are accounted exactly, frame by frame.
        exact = (groups.longest_gap > self._gap_limits[groups.protos]) | groups.restarts | (groups.has_pure_syn & closed)
        for group in np.flatnonzero(groups.has_pure_syn & known & ~closed).tolist():  # ended earlier in this batch
            ended = flows_by_group[group]
            exact[group] |= ended is not None and ended.fin_a and ended.fin_b
        if exact.any():
            packets = np.sort(np.concatenate([groups.packets_of(group) for group in np.flatnonzero(exact).tolist()]))
            self._decode_frames(batch, fast.frames[packets])
            fast = fast.without(packets)
            if not fast.count:
                return
            groups = FlowGroups(fast)
            flows_by_group, slots, known, closed, idle = self._look_up(groups)
        data = batch.data
        for group in np.flatnonzero(idle).tolist():  # silent past its timeout: that flow ended
            self._expire(flows_by_group[group])  # type: ignore[arg-type]  # known: not None
            flows_by_group[group] = None
        counted = known & ~closed & ~idle
        opening = np.flatnonzero(~counted)
        if len(opening) + int(counted.sum()) > table.max_flows:
            # The table cannot hold this run's flows all at once: exact route, frame by frame.
            self._decode_frames(batch, fast.frames)
            return
        ending = groups.ending()
        before_batch = table.snapshot(np.where(counted[ending], slots[ending], -1))
        table.account_groups(slots[counted], groups.counts[counted], groups.bytes[counted], groups.earliest[counted], groups.last_seen[counted])
        if len(opening):
            self._open_flows(fast, groups, opening, flows_by_group, slots[counted])
            opened = np.array([flows_by_group[group].slot for group in opening.tolist()], dtype=np.int64)  # type: ignore[union-attr]
            table.account_groups(opened, groups.counts[opening], groups.bytes[opening], groups.earliest[opening], groups.last_seen[opening])
        opened_flows: list[Flow] = flows_by_group  # type: ignore[assignment]  # every group has its flow now
        streaming = [group for group, flow in enumerate(opened_flows) if flow.inspect == INSPECT_STREAM]
        self._inspect_fast(data, fast, groups, opened_flows, streaming)
        closed_now = []
        for position, (group, fin_a, fin_b, reset) in enumerate(zip(ending.tolist(), groups.fin_a[ending].tolist(), groups.fin_b[ending].tolist(), groups.reset[ending].tolist())):
            flow = opened_flows[group]
            if flow.timeout_class != CLASS_CLOSED:
                had_a, had_b = flow.fin_a, flow.fin_b
                if self._tcp_end(flow, fin_a, fin_b, reset):
                    closed_now.append((position, group, had_a, had_b, flow))
        if closed_now:
            positions, closing_groups, had_a, had_b, flows = zip(*closed_now)
            packets, byte_counts, earliest, latest = groups.closing_counters(np.array(closing_groups), np.array(had_a), np.array(had_b))
            picked = np.array(positions)
            old_packets, old_bytes, old_first, old_last = (column[picked] for column in before_batch)
            finals = zip((old_packets + packets).tolist(), (old_bytes + byte_counts).tolist(), np.minimum(old_first, earliest).tolist(), np.maximum(old_last, latest).tolist())
            for flow, final in zip(flows, finals):
                flow.final = final

    def _look_up(self, groups: FlowGroups) -> tuple[list[Flow | None], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The groups' flows and slots, which exist, which are closed, which were idle past their
        timeout before this batch."""
        get = self.flows.flows.get
        flows_by_group = [get(key) for key in groups.keys]
        slots = np.array([-1 if flow is None else flow.slot for flow in flows_by_group], dtype=np.int64)
        known = slots >= 0
        closed, idle = self.flows.states(np.where(known, slots, 0), groups.first_timestamps)
        closed &= known
        return flows_by_group, slots, known, closed, idle & known & ~closed

    def _open_flows(self, fast: FastFrames, groups: FlowGroups, opening: np.ndarray, flows_by_group: list[Flow | None], active: np.ndarray) -> None:
        """Create the flows first seen in this batch; `active` are the slots of flows this batch
        already counted, which eviction must leave alone."""
        index = self.index
        if index.has_address_markers:
            keys = groups.key_matrix[opening]
            may_hit = (index.address_candidates(keys[:, 0:16]) | index.address_candidates(keys[:, 18:34])).tolist()
        else:
            may_hit = [False] * len(opening)
        firsts = fast.columns(groups.first[opening], ("src_is_a", "timestamps", "flags", "sports", "dports", "seqs", "vlans"))
        keys = groups.keys
        table = self.flows
        for evicted in table.reserve(len(opening), keep=active):
            self._end_flow(evicted)
            for group in opening.tolist():  # an evicted closed flow is no longer there to reopen
                if flows_by_group[group] is evicted:
                    flows_by_group[group] = None
        for group, check_addresses, src_is_a, timestamp, flags, sport, dport, seq, vlan in zip(opening.tolist(), may_hit, *firsts):
            flow = flows_by_group[group]
            if flow is not None:
                if not table.idle_for(flow, timestamp):
                    continue  # late packets of a closed flow (a new connection takes the exact route)
                table.remove(flow)
            flows_by_group[group] = self._new_flow(keys[group], src_is_a, timestamp, flags, sport, dport, seq, vlan_encapsulation(vlan), check_addresses)

    def _inspect_fast(self, data: FrameBuffer, fast: FastFrames, groups: FlowGroups, flows_by_group: list[Flow], streaming: list[int]) -> None:
        """Per-packet inspection of the classifier's packets that may carry something a marker
        knows, in capture order per flow. A flow whose stream is being read takes all its packets
        of the batch along (those of the directions still read)."""
        drained = self._drain_streams(data, fast, groups, flows_by_group, streaming, -1)
        compiled = self.compiled
        questions, responses, handshakes, initials = fast.candidates(self.name_filter, compiled.fingerprints or compiled.certificates, self._reads_answers, self._reads_initials)
        if len(questions):
            self._dns_fast(data, fast, groups, flows_by_group, questions)
        candidates = np.concatenate((responses, handshakes, initials))
        if not len(candidates):
            return
        candidates.sort()
        inspect = self._inspect
        for packet, group, start, length, src_is_a, proto, sport, dport, seq, ack, flags, timestamp, vlan in zip(candidates.tolist(), groups.inverse[candidates].tolist(), *fast.columns(candidates, INSPECTED_COLUMNS)):
            flow = flows_by_group[group]
            if flow.inspect == INSPECT_DONE or (drained and packet in drained):
                continue
            was_streaming = flow.inspect == INSPECT_STREAM
            inspect(flow, proto, src_is_a == flow.client_is_a, sport, dport, seq, ack, flags, data[start : start + length], timestamp, vlan_encapsulation(vlan))
            if flow.inspect == INSPECT_STREAM and not was_streaming:
                drained |= self._drain_streams(data, fast, groups, flows_by_group, [group], packet)

    def _dns_fast(self, data: FrameBuffer, fast: FastFrames, groups: FlowGroups, flows_by_group: list[Flow], packets: np.ndarray) -> None:
        """DNS queries over UDP, the most numerous candidates: decode and match first, and look up
        what a hit records only for the rare message that hits."""
        query_names = dns.dns_query_names
        match_name = self.index.match_name
        for packet, start, length in zip(packets.tolist(), fast.payload_offsets[packets].tolist(), fast.payload_lengths[packets].tolist()):
            for name in query_names(data[start : start + length]):
                markers = match_name(name)
                if markers:
                    flow = flows_by_group[int(groups.inverse[packet])]
                    timestamp, encapsulation = int(fast.timestamps[packet]), vlan_encapsulation(int(fast.vlans[packet]))
                    for marker in markers:
                        self._hit(flow, marker, "dns.query", bool(fast.src_is_a[packet]) == flow.client_is_a, timestamp, encapsulation)

    def _drain_streams(self, data: FrameBuffer, fast: FastFrames, groups: FlowGroups, flows_by_group: list[Flow], streaming: list[int], after: int) -> set[int]:
        """Every packet after `after` of the flows being read, in capture order, but those of a
        direction no longer read (the bulk of a download once its headers are seen) and empty
        segments other than SYNs; selected for all the flows at once. Returns the packets
        read."""
        if not streaming:
            return set()
        count = len(flows_by_group)
        reads_a = np.zeros(count, dtype=bool)
        reads_b = np.zeros(count, dtype=bool)
        client_a = np.zeros(count, dtype=bool)
        compiled = self.compiled
        both_sides = compiled.payload or compiled.certificates
        for group in streaming:
            flow = flows_by_group[group]
            client_a[group] = flow.client_is_a
            inspection = flow.inspection
            if inspection.__class__ is FlowInspection:
                reads_client = inspection.may_read(True)  # type: ignore[union-attr]
                reads_server = inspection.may_read(False)  # type: ignore[union-attr]
            elif inspection is None:  # read from its first byte, readers not made yet
                reads_client, reads_server = True, both_sides or flow.server_port() in DNS_PORTS
            else:  # a QUIC client's Initials
                reads_client, reads_server = True, False
            reads_a[group] = reads_client if flow.client_is_a else reads_server
            reads_b[group] = reads_server if flow.client_is_a else reads_client
        if len(streaming) <= FEW_FLOWS:
            packets = np.concatenate([groups.packets_of(group) for group in streaming])
            packets.sort()
        else:
            packets = np.flatnonzero(reads_a[groups.inverse] | reads_b[groups.inverse])
        if after >= 0:
            packets = packets[packets > after]
        packet_groups = groups.inverse[packets]
        from_a = fast.src_is_a[packets]
        flags = fast.flags[packets]
        syn = (flags & TCP_SYN) != 0
        read = np.where(from_a, reads_a[packet_groups], reads_b[packet_groups])
        # A server's SYN-ACK tells where its client's stream starts, whether its side is read or not.
        syn_ack = syn & ((flags & TCP_ACK) != 0) & (from_a != client_a[packet_groups])
        packets = packets[(read & ((fast.payload_lengths[packets] > 0) | syn)) | syn_ack]
        ruled_out = self._hellos_ruled_out(fast, packets)
        inspect = self._inspect
        drained = set()
        for packet, group, start, length, src_is_a, proto, sport, dport, seq, ack, flags, timestamp, vlan in zip(packets.tolist(), groups.inverse[packets].tolist(), *fast.columns(packets, INSPECTED_COLUMNS)):
            flow = flows_by_group[group]
            if flow.inspect != INSPECT_STREAM:
                continue  # its reading ended in this batch: the candidates' test decides on the rest
            drained.add(packet)
            if not length and flags & TCP_SYN and src_is_a != flow.client_is_a and not (reads_a[group] if src_is_a else reads_b[group]):
                self._client_start(flow, ack)  # a SYN-ACK of a side not read
                continue
            if ruled_out and packet in ruled_out and self._first_bytes(flow, seq):
                self._bypass(flow, timestamp, vlan_encapsulation(vlan))
                continue
            inspect(flow, proto, src_is_a == flow.client_is_a, sport, dport, seq, ack, flags, data[start : start + length], timestamp, vlan_encapsulation(vlan))
        return drained

    def _hellos_ruled_out(self, fast: FastFrames, packets: np.ndarray) -> set[int]:
        """Of `packets`, the ClientHellos whose server name (whole in the segment) the vector name
        filter rules out, when names are all the markers read in streams: such a hello, a client's
        first bytes, settles its flow without being parsed (the rest of a TLS stream is
        encrypted)."""
        compiled = self.compiled
        if compiled.fingerprints or compiled.certificates or compiled.payload or not len(packets):
            return set()
        return set(packets[fast.hellos_ruled_out(self.name_filter, packets)].tolist())

    def _first_bytes(self, flow: Flow, seq: int) -> bool:
        """Whether a client segment at `seq` holds the first bytes of the client's stream."""
        if flow.inspection is None:
            return flow.stream_start < 0 or (seq - flow.stream_start) & 0xFFFFFFFF == 0
        return self.inspector.first_bytes(flow.inspection, seq)  # type: ignore[arg-type]

    def _bypass(self, flow: Flow, timestamp: int, encapsulation: list[dict]) -> None:
        """Every decision about the flow's bytes is made: release its readers; its later packets
        are only counted."""
        if flow.inspection is not None:
            self.inspector.finish(flow.inspection, self._observed)  # type: ignore[arg-type]
        flow.inspection = None
        flow.inspect = INSPECT_DONE
        if self._observed:
            self._record_observed(flow, timestamp, encapsulation)

    def _new_flow(self, key: bytes, src_is_a: bool, timestamp: int, flags: int, sport: int, dport: int, seq: int, encapsulation: list[dict], check_addresses: bool) -> Flow:
        """Create a flow, decide which side is the client, test its addresses when they may hit a
        marker, and start reading a TCP flow seen from its SYN when markers read streams."""
        if flags & TCP_SYN:
            client_is_a = src_is_a if not flags & TCP_ACK else not src_is_a
        else:  # picked up mid-stream: a well-known source port answering a high port is the server
            client_is_a = not src_is_a if sport < 1024 <= dport else src_is_a
        flow = self.flows.create(key, client_is_a, timestamp)
        flow.encapsulation = encapsulation
        if check_addresses:
            index = self.index
            for is_client, address in ((client_is_a, key[0:16]), (not client_is_a, key[18:34])):
                for marker in index.match_address(address):
                    self._hit(flow, marker, "ip.src" if is_client else "ip.dst", not is_client, timestamp, encapsulation)
        if flags & TCP_SYN and key[36] == PROTO_TCP and self._reads_streams:
            flow.inspect = INSPECT_STREAM
            if not flags & TCP_ACK:
                flow.stream_start = (seq + 1) & 0xFFFFFFFF  # the client's stream starts after its SYN
        return flow

    def _match_names(self, flow: Flow, names: list[str], matched_on: str, to_server: bool, timestamp: int, encapsulation: list[dict]) -> None:
        match_name = self.index.match_name
        for name in names:
            for marker in match_name(name):
                self._hit(flow, marker, matched_on, to_server, timestamp, encapsulation)

    def _hit(self, flow: Flow, marker: Marker, matched_on: str, to_server: bool, timestamp: int, encapsulation: list[dict]) -> None:
        """Record that `marker` hit `flow`; `to_server`: the marked value is on the server's side."""
        if not marker.valid_at(timestamp):
            return
        if marker.constraints is not None and not marker.constraints.allow(flow.proto, flow.server_port(), to_server):
            return
        hits = flow.hits
        if hits is None:
            hits = flow.hits = {}
            self._flows_with_hits.add(flow)
        # By (bundle, marker id), not by version: a marker still in the next version of its bundle
        # is the same event (one event id), which keeps the version that hit first.
        key = (marker.bundle, marker.id)
        hit = hits.get(key)
        if hit is None:
            hit = hits[key] = Hit(marker, matched_on, to_server, timestamp, encapsulation)
            if self.store is not None or self.notifier is not None:
                event = flow_event(flow, hit, self.flows.counters(flow), 0)
                hit.revised_packets, hit.revised_at = event.packets, timestamp
                if self.store is not None:
                    self.store.append(event)
                if self.notifier is not None:
                    hit.notified = self.notifier.detected(event)
        else:
            hit.count += 1

    def _tcp_end(self, flow: Flow, fin_a: bool, fin_b: bool, reset: bool) -> bool:
        """A TCP flow ends at its RST or once both sides sent FIN; its events are written at the end
        of the batch with the counters as they were at the closing packet (which the caller keeps
        in `flow.final`). True when the flow ended now."""
        already_ending = flow.fin_a and flow.fin_b
        flow.fin_a |= fin_a
        flow.fin_b |= fin_b
        if (reset or (flow.fin_a and flow.fin_b)) and not already_ending and flow.timeout_class != CLASS_CLOSED:
            self._closing.append(flow)
            flow.fin_a = flow.fin_b = True
            return True
        return False

    def _close_ended_flows(self) -> None:
        for flow in self._closing:
            if self.flows.flows.get(flow.key) is flow and flow.timeout_class != CLASS_CLOSED:
                self._end_flow(flow)
                self.flows.close(flow)
        self._closing = []

    def _expire(self, flow: Flow) -> None:
        """End a flow found idle for longer than its timeout when its next packet arrives."""
        self.flows.remove(flow)
        self.flows.expired += 1
        self._end_flow(flow)

    def _end_flow(self, flow: Flow) -> None:
        """Match what the flow's YARA buffers hold, write its events and drop everything it held."""
        inspection = flow.inspection
        flow.inspection = None
        if inspection.__class__ is FlowInspection:
            self.inspector.finish(inspection, self._observed)  # type: ignore[arg-type]
            if self._observed:
                self._record_observed(flow, self.flows.counters(flow)[3], flow.encapsulation)
        elif inspection is not None:  # a QUIC reader left waiting: its bytes go back
            self.inspector.budget.used -= inspection.buffered_bytes  # type: ignore[union-attr]
        if flow.hits:
            counters = flow.final or self.flows.counters(flow)
            finals = [self._revise(flow, hit, counters, True) for hit in flow.hits.values()]
            if self.writer is not None:
                self.writer.write(finals)
            self._flows_with_hits.discard(flow)
        flow.hits = None
