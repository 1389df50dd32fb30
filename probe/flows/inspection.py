"""What a TCP flow's bytes are read for, per direction, and when reading stops.

A TCP flow being inspected holds a `FlowInspection`: per direction, a `StreamReassembler` (in-order
bytes out of reordered, retransmitted and overlapping segments, bounded) feeding the readers the
marker set needs:

- the handshake reader, chosen by the first bytes of the stream, not by port: on the client's side
  a TLS ClientHello (server name, JA3, JA4), HTTP requests on a kept-alive connection (host, URL),
  DNS over TCP (questions); on the server's side a TLS ≤ 1.2 Certificate message (SHA-256 of each
  certificate) and DNS answers;
- the byte-pattern stream (Hyperscan streaming mode: the matcher keeps its state, not the bytes),
  up to `pattern_depth`;
- the YARA buffer, up to `yara_depth`, matched once full or when the flow ends.

Each reader drops out as soon as its decision is made; a direction without readers releases its
reassembler, and a flow with neither direction left is bypassed: its later packets cost the
flow-table lookup and nothing else. What is read comes out as observations, `(matched_on, value)`,
for the pipeline to look up in the marker index; the bytes themselves are dropped once read
(nothing of a non-matching stream outlives the decision).
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from probe.config import FlowsSection
from probe.decode import dns, http, tls
from probe.decode.batch import HTTP_METHOD_PREFIXES
from probe.flows.reassembly import ReassemblyBudget, StreamReassembler
from probe.match.compiled import CompiledMarkers
from probe.match.patterns import PatternStream

FOLLOWED_DEPTH: Final = (1 << 31) - 1
"""Depth of a stream read for the flow's whole life (HTTP requests, DNS over TCP), up to the
reassembler's largest depth (2 GiB)."""

DNS_MESSAGE_BYTES: Final = 2 + 65_535
"""The largest DNS-over-TCP message with its length prefix: held whole whatever
handshake_buffer_bytes says, since a query padded past that bound would otherwise go unread."""

PATIENT_PARSES: Final = 16
"""Parse attempts of one incomplete TLS message before they are spaced out."""

# Handshake readers: none, not chosen yet (a client's or a server's first bytes not seen), and one
# per protocol.
READ_NONE: Final = 0
READ_PENDING: Final = 1
READ_SERVER_PENDING: Final = 2
READ_TLS_CLIENT: Final = 3
READ_TLS_SERVER: Final = 4
READ_HTTP: Final = 5
READ_DNS: Final = 6


class DirectionReader:
    """One direction of one inspected TCP flow."""

    __slots__ = ("reassembler", "reader", "pending", "wanted", "attempts", "http", "patterns", "yara", "from_client")

    def __init__(self, reassembler: StreamReassembler, reader: int, from_client: bool) -> None:
        self.reassembler = reassembler
        self.reader = reader
        self.from_client = from_client
        self.pending = b""
        """Bytes of an incomplete handshake message (at most handshake_buffer_bytes) or DNS message
        (at most DNS_MESSAGE_BYTES)."""
        self.wanted = 0
        """How many bytes `pending` must hold before the message can be parsed further: a hello in
        many tiny records is not parsed again at each byte."""
        self.attempts = 0
        self.http: http.HttpRequestStream | None = None
        self.patterns: PatternStream | None = None
        """PatternStream while the direction is within `pattern_depth`."""
        self.yara: bytearray | None = None
        """The first `yara_depth` bytes, while not yet matched."""

    @property
    def reading(self) -> bool:
        return self.reader != READ_NONE or self.patterns is not None or self.yara is not None


class FlowInspection:
    """The readers of one TCP flow (`Flow.inspection`), both directions; built by `Inspector`."""

    __slots__ = ("client", "server", "server_port", "dns_port", "compiled", "server_start", "server_ended")

    def __init__(self, compiled: CompiledMarkers, server_port: int, dns_port: bool) -> None:
        self.compiled = compiled
        """The marker version the flow started with: its pattern streams belong to it."""
        self.client: DirectionReader | None = None
        self.server: DirectionReader | None = None
        self.server_port = server_port
        self.dns_port = dns_port
        self.server_start = -1
        """The server's SYN sequence number, for a server side made after it (certificates)."""
        self.server_ended = False
        """The server's side was read and released: it is never made again mid-stream."""

    def may_read(self, from_client: bool) -> bool:
        """Whether this direction's next packets may be read: the server's side is added when the
        client's reveals a TLS handshake and certificate markers exist."""
        if from_client:
            return self.client is not None
        return self.server is not None or (self.client is not None and self.compiled.certificates)


class Inspector:
    """Reads inspected flows' streams for one marker set version and one configuration."""

    def __init__(self, limits: FlowsSection, anomalies: Counter[str]) -> None:
        """`anomalies`: bad input by kind (`tls.malformed`, `tcp.overlap_conflict`...), counted
        and skipped, never fatal; the summary and the live status report them."""
        self.budget = ReassemblyBudget(limits.reassembly_max_bytes)
        self.buffer_limit = limits.handshake_buffer_bytes
        self.pattern_depth = limits.pattern_depth
        self.yara_depth = limits.yara_depth
        self.anomalies = anomalies
        self.compiled: CompiledMarkers | None = None

    def use(self, compiled: CompiledMarkers) -> None:
        """A new marker version applies to flows opened from now on; flows already read keep the
        pattern streams of the version they started with until they end."""
        self.compiled = compiled

    def start(self, server_port: int, dns_port: bool) -> FlowInspection:
        """Readers for a TCP flow: both directions when payload markers exist, else the client's
        handshake (the server's side is added when a TLS ClientHello asks for certificates)."""
        inspection = FlowInspection(self.compiled, server_port, dns_port)  # type: ignore[arg-type]
        inspection.client = self._direction(inspection, True, READ_PENDING)
        if inspection.compiled.payload or dns_port:
            inspection.server = self._direction(inspection, False, READ_DNS if dns_port else READ_SERVER_PENDING)
        return inspection

    def _direction(self, inspection: FlowInspection, from_client: bool, reader: int) -> DirectionReader:
        compiled = inspection.compiled
        direction = DirectionReader(StreamReassembler(self.buffer_limit, self.budget), reader, from_client)
        depth = FOLLOWED_DEPTH if reader == READ_DNS else self.buffer_limit if reader not in (READ_NONE, READ_SERVER_PENDING) else 0
        if compiled.patterns is not None:
            direction.patterns = compiled.patterns.open()
            depth = max(depth, self.pattern_depth)
        if compiled.yara is not None:
            direction.yara = bytearray()
            depth = max(depth, self.yara_depth)
        direction.reassembler.depth = depth
        return direction

    def client_start(self, inspection: FlowInspection, seq: int) -> None:
        """The server acknowledged the client's SYN: the client's stream starts at `seq`, unless
        bytes were already read (then the earlier start stands)."""
        if inspection.client is not None:
            inspection.client.reassembler.restart(seq)

    def syn(self, inspection: FlowInspection, from_client: bool, seq: int) -> None:
        """The stream of this direction starts after the SYN's sequence number."""
        direction = inspection.client if from_client else inspection.server
        if direction is not None:
            direction.reassembler.add(seq, b"", True)
        elif not from_client:
            inspection.server_start = seq

    def first_bytes(self, inspection: FlowInspection, seq: int) -> bool:
        """Whether a client segment at `seq` would be the first bytes of the client's stream,
        nothing else read or waiting: what lets a hello settled by the batch screen end the
        reading without being parsed."""
        client = inspection.client
        if client is None or client.pending or client.reader != READ_PENDING:
            return False
        return client.reassembler.starts_at(seq)

    def segment(self, inspection: FlowInspection, from_client: bool, seq: int, payload: bytes, syn: bool, out: list) -> bool:
        """Read one TCP segment (`syn`: it carries the SYN flag, its data follows the SYN's
        sequence number); observations are appended to `out`. False once the flow has nothing
        left to read (the caller bypasses it)."""
        direction = inspection.client if from_client else inspection.server
        if direction is None:
            return inspection.client is not None or inspection.server is not None
        reassembler = direction.reassembler
        conflicts, refused = reassembler.conflicts, reassembler.refused
        data = reassembler.add(seq, payload, syn)
        if reassembler.conflicts != conflicts:
            self.anomalies["tcp.overlap_conflict"] += reassembler.conflicts - conflicts
        if reassembler.refused != refused:
            self.anomalies["tcp.segment_refused"] += reassembler.refused - refused
        if reassembler.gap_before:
            self._gap(inspection, direction, out)
        if data:
            self._read(inspection, direction, data, out)
        if reassembler.done or not direction.reading:
            self._finish_direction(inspection, direction, out)
        return inspection.client is not None or inspection.server is not None

    def finish(self, inspection: FlowInspection, out: list) -> None:
        """The flow ended: the holes left will not be filled, so what waits after them is read
        (patterns and YARA see it, after a gap); then the YARA buffers are matched and everything
        is released."""
        for direction in (inspection.client, inspection.server):
            if direction is None:
                continue
            reassembler = direction.reassembler
            while reassembler.waiting and not reassembler.done and direction.reading:
                data = reassembler.skip_gap()
                self._gap(inspection, direction, out)
                if data:
                    self._read(inspection, direction, data, out)
            if direction.pending and direction.reader in (READ_TLS_CLIENT, READ_TLS_SERVER):  # waiting to parse again
                direction.wanted = 0
                self._handshake(inspection, direction, b"", out)
            self._finish_direction(inspection, direction, out)

    def _gap(self, inspection: FlowInspection, direction: DirectionReader, out: list) -> None:
        """Bytes are missing: no pattern may match across them, and a handshake cut by them is
        lost (counted); HTTP resynchronises on the next request line."""
        self.anomalies["tcp.gap"] += 1
        if direction.yara is not None:  # a rule must not match across the missing bytes
            self._match_yara(inspection, direction, out)
        if direction.patterns is not None:
            direction.patterns.reset()
        if direction.http is not None:
            self.budget.used -= direction.http.buffered  # the head cut by the gap is dropped
            direction.http.gap()
        elif direction.reader != READ_NONE and direction.pending:
            self._hold(direction, b"")
            direction.reader = READ_NONE

    def _read(self, inspection: FlowInspection, direction: DirectionReader, data: bytes, out: list) -> None:
        """The handshake reader first: where it finds the end of a TLS handshake, the bytes after
        it (encrypted) are neither scanned nor matched, and reading stops."""
        cleartext_end = self._handshake(inspection, direction, data, out) if direction.reader != READ_NONE else -1
        if cleartext_end >= 0:
            data = data[:cleartext_end]
        if direction.patterns is not None:
            for position in direction.patterns.scan(data):
                out.append(("payload", inspection.compiled.index.pattern_markers[position], direction.from_client))
            if direction.reassembler.delivered >= self.pattern_depth:
                direction.patterns.close()
                direction.patterns = None
        if direction.yara is not None:
            added = data[: self.yara_depth - len(direction.yara)]
            budget = self.budget
            if budget.used + len(added) > budget.limit:  # the process holds all it may: match what is here
                self.anomalies["yara.budget"] += 1
                self._match_yara(inspection, direction, out)
            else:
                direction.yara += added
                budget.used += len(added)
                if len(direction.yara) >= self.yara_depth:
                    self._match_yara(inspection, direction, out)
        if cleartext_end >= 0:
            self._stop_payload(inspection, direction, out)

    def _match_yara(self, inspection: FlowInspection, direction: DirectionReader, out: list) -> None:
        buffer, direction.yara = direction.yara, None
        self.budget.used -= len(buffer)  # type: ignore[arg-type]
        matcher = inspection.compiled.yara
        if buffer and matcher is not None:
            timeouts, errors = matcher.timeouts, matcher.errors
            for position in matcher.match(bytes(buffer)):
                out.append(("yara", inspection.compiled.index.yara_markers[position], direction.from_client))
            if matcher.timeouts != timeouts:
                self.anomalies["yara.timeout"] += 1
            if matcher.errors != errors:
                self.anomalies["yara.error"] += 1

    def _finish_direction(self, inspection: FlowInspection, direction: DirectionReader, out: list) -> None:
        if direction.pending and direction.reader != READ_NONE:
            self.anomalies["handshake.incomplete"] += 1
        self._stop_payload(inspection, direction, out)
        direction.reassembler.release()
        direction.reader = READ_NONE
        self._hold(direction, b"")
        self._end_http(direction)
        if inspection.client is direction:
            inspection.client = None
        elif inspection.server is direction:
            inspection.server = None
            inspection.server_ended = True

    def _handshake(self, inspection: FlowInspection, direction: DirectionReader, data: bytes, out: list) -> int:
        """The handshake reader of a direction: the first bytes choose it, then it reads until its
        message is complete, keeping only an incomplete remainder. Returns where in `data` the
        direction's cleartext ends when these bytes complete a TLS handshake message that ends it
        (the rest is encrypted), else -1."""
        held = len(direction.pending)
        if direction.reader == READ_SERVER_PENDING:  # a TLS server's flight ends its cleartext
            if data[0] != 0x16:
                direction.reader = READ_NONE
                return -1
            direction.reader = READ_TLS_SERVER
            direction.reassembler.depth = max(direction.reassembler.depth, self.buffer_limit)
        if direction.reader == READ_PENDING:
            if direction.pending:
                data = direction.pending + data
                self._hold(direction, b"")
            reader = _choose(inspection, data)
            if reader == READ_PENDING:
                self._hold(direction, data)
                return -1
            direction.reader = reader
            if reader in (READ_HTTP, READ_DNS):  # every request or query of the connection
                direction.reassembler.depth = FOLLOWED_DEPTH
            if reader == READ_HTTP:
                direction.http = http.HttpRequestStream(self.buffer_limit)
            elif reader == READ_NONE:
                return -1
        if direction.reader == READ_HTTP:
            cleartext_end = self._http(inspection, direction, data, out)
            return max(cleartext_end - held, 0) if cleartext_end >= 0 else -1
        data = direction.pending + data if direction.pending else data
        reader = direction.reader
        if len(data) < direction.wanted:  # the message cannot be complete yet
            self._keep(direction, data, self.buffer_limit)
            return -1
        cleartext_end = -1
        if reader == READ_TLS_CLIENT:
            hello = tls.read_client_hello(data, "t", inspection.compiled.fingerprints)
            if hello.status == tls.NEED_MORE:
                self._wait(direction, data, hello.end)
                return -1
            direction.reader = READ_NONE
            if hello.status == tls.DONE:
                self._client_hello(inspection, hello, out)
                cleartext_end = max(hello.end - held, 0)
            elif inspection.dns_port:  # a DNS query whose first bytes looked like a ClientHello's
                direction.reader = READ_DNS
                direction.reassembler.depth = FOLLOWED_DEPTH
                self._dns(direction, data, out)
                return -1
            elif hello.status == tls.MALFORMED:
                self.anomalies["tls.malformed"] += 1
        elif reader == READ_TLS_SERVER:
            certificates = tls.read_server_certificates(data)
            if certificates.status == tls.NEED_MORE:
                self._wait(direction, data, certificates.end)
                return -1
            direction.reader = READ_NONE
            if certificates.status == tls.MALFORMED:
                self.anomalies["tls.malformed"] += 1
            elif certificates.status != tls.NOT_TLS:
                for digest in certificates.sha256:
                    out.append(("tls.cert_sha256", digest, False))
                cleartext_end = max(certificates.end - held, 0)
        elif reader == READ_DNS:
            self._dns(direction, data, out)
            return -1
        self._hold(direction, b"")
        return cleartext_end

    def _stop_payload(self, inspection: FlowInspection, direction: DirectionReader, out: list) -> None:
        """Byte patterns and YARA have seen all they will of this direction: the YARA buffer is
        matched now and the pattern stream closed."""
        if direction.yara is not None:
            self._match_yara(inspection, direction, out)
        if direction.patterns is not None:
            direction.patterns.close()
            direction.patterns = None

    def _client_hello(self, inspection: FlowInspection, hello: tls.ClientHello, out: list) -> None:
        if hello.server_name:
            out.append(("tls.sni", hello.server_name, True))
        if hello.ja3:
            out.append(("tls.ja3", hello.ja3, False))
        if hello.ja4:
            out.append(("tls.ja4", hello.ja4.lower(), False))
        if not inspection.compiled.certificates or inspection.server_ended:
            return
        if inspection.server is None:
            server = inspection.server = self._direction(inspection, False, READ_TLS_SERVER)
            if inspection.server_start >= 0:
                server.reassembler.add(inspection.server_start, b"", True)
        elif inspection.server.reader in (READ_NONE, READ_SERVER_PENDING) and not inspection.server.reassembler.delivered:
            inspection.server.reader = READ_TLS_SERVER
            inspection.server.reassembler.depth = max(inspection.server.reassembler.depth, self.buffer_limit)

    def _wait(self, direction: DirectionReader, data: bytes, needed: int) -> None:
        """Keep an incomplete TLS message until `needed` bytes are there. After PATIENT_PARSES
        attempts (a message sent in thousands of tiny records), each attempt waits for half as much
        again, so that parsing stays O(n log n); the flow's end parses what is left."""
        direction.attempts += 1
        direction.wanted = needed if direction.attempts < PATIENT_PARSES else max(needed, len(data) + len(data) // 2)
        self._keep(direction, data, self.buffer_limit)

    def _keep(self, direction: DirectionReader, data: bytes, limit: int) -> None:
        """Keep an incomplete message until more bytes come, within `limit` and the process's
        budget; beyond either, the message is given up (counted)."""
        budget = self.budget
        if len(data) >= limit or budget.used + len(data) - len(direction.pending) > budget.limit:
            self.anomalies["handshake.overflow"] += 1
            direction.reader = READ_NONE
            self._hold(direction, b"")
        else:
            self._hold(direction, bytes(data))

    def _hold(self, direction: DirectionReader, data: bytes) -> None:
        """Every byte kept between two segments is charged to the shared budget."""
        self.budget.used += len(data) - len(direction.pending)
        direction.pending = data

    def _http(self, inspection: FlowInspection, direction: DirectionReader, data: bytes, out: list) -> int:
        """Requests of a kept-alive connection; a CONNECT hands the rest to the TLS reader, whose
        cleartext end (in `data`) is returned, else -1."""
        stream = direction.http
        held = stream.buffered  # type: ignore[union-attr]
        requests = stream.feed(data)  # type: ignore[union-attr]
        budget = self.budget
        budget.used += stream.buffered - held  # type: ignore[union-attr]
        for request in requests:
            for host in {request.host, request.target_host} - {None}:
                out.append(("http.host", host, True))
            if request.path is not None and request.host is not None:
                out.append(("http.url", (request.host, request.port or inspection.server_port, request.path), True))
        status = stream.status  # type: ignore[union-attr]
        if status == http.NEED_MORE and budget.used <= budget.limit:
            return -1
        self._end_http(direction)
        if status == http.TUNNEL:  # a TLS session follows the CONNECT request
            direction.reader = READ_PENDING
            direction.reassembler.depth = max(self._depth(direction), direction.reassembler.position + self.buffer_limit)
            offset = stream.tunnel_offset  # type: ignore[union-attr]
            cleartext_end = self._handshake(inspection, direction, data[offset:], out) if offset < len(data) else -1
            return offset + cleartext_end if cleartext_end >= 0 else -1
        if status == http.NEED_MORE or stream.overflowed:  # type: ignore[union-attr]
            self.anomalies["handshake.overflow"] += 1
        elif status == http.MALFORMED:
            self.anomalies["http.malformed"] += 1
        direction.reader = READ_NONE
        direction.reassembler.depth = max(self._depth(direction), 1)
        return -1

    def _end_http(self, direction: DirectionReader) -> None:
        """Stop reading requests; the header bytes the stream held go back to the budget."""
        if direction.http is not None:
            self.budget.used -= direction.http.buffered
            direction.http = None

    def _depth(self, direction: DirectionReader) -> int:
        """How far a direction must still be read for its patterns and YARA buffer."""
        return max(self.pattern_depth if direction.patterns is not None else 0, self.yara_depth if direction.yara is not None else 0)

    def _dns(self, direction: DirectionReader, data: bytes, out: list) -> None:
        if direction.from_client:
            names, consumed = dns.dns_tcp_query_names(data)
            for name in names:
                out.append(("dns.query", name, True))
        else:
            answers, consumed = dns.dns_tcp_answers(data)
            for name in answers.names:
                out.append(("dns.answer", name, False))
            for address in answers.addresses:
                out.append(("dns.answer", address, False))
        rest = data[consumed:]
        if rest:
            self._keep(direction, rest, DNS_MESSAGE_BYTES)
        else:
            self._hold(direction, b"")


def _choose(inspection: FlowInspection, data: bytes) -> int:
    """The handshake reader of a client stream, from its first bytes: READ_PENDING while they are
    fewer than a record header or a method (an evasion sends handshakes a byte per segment), or,
    on a DNS port, than what tells a DNS query from a ClientHello or a request line."""
    if data[0] == 0x16 and (len(data) < 2 or data[1] == 3):
        if not inspection.dns_port:
            return READ_TLS_CLIENT if len(data) >= 2 else READ_PENDING
        # On a DNS port, a query 5,632-5,887 bytes long starts with 16 03 too: a ClientHello's
        # sixth byte is its handshake type, 1.
        if len(data) < 6:
            return READ_PENDING
        return READ_TLS_CLIENT if data[5] == 1 else READ_DNS
    if data[:4] in HTTP_METHOD_PREFIXES:
        if not inspection.dns_port:
            return READ_HTTP
        # A query 18,245 bytes long whose id reads "T " starts with "GET " too, but a DNS header
        # has control bytes (flags, question count) where a request line has none.
        if len(data) < 8:
            return READ_PENDING
        return READ_HTTP if min(data[4:8]) >= 0x20 else READ_DNS
    if len(data) < 4 and any(prefix.startswith(data) for prefix in HTTP_METHOD_PREFIXES):
        return READ_PENDING
    return READ_DNS if inspection.dns_port else READ_NONE
