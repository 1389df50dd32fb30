"""Evasion tests in the suricata-verify spirit: crafted traffic that spreads what a marker must see
over pieces (TCP segments at every split offset, one-byte segments, reordered, duplicated and
overlapping segments, IPv4 and IPv6 fragments, QUIC Initials over two packets, mixed case, a flow
picked up mid-stream), each with its expected events, and the same traffic with names no marker
knows as controls (no event).

The many split-offset cases share one capture (one flow each, told apart by client port) run in
this process; a sample goes through `probe replay` to show the CLI gives the same events.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrFragment, Raw, fragment, fragment6, wrpcap

from bundle_support import write_bundle
from probe.config import Config
from probe.decode import tls
from probe.decode.quic import VERSION_1, VERSION_2
from probe.replay import replay
from test_quic import client_hello as quic_client_hello, crypto_frame, protect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_capture import client_hello  # noqa: E402

PROBE = str(Path(sys.executable).with_name("probe"))
CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8::20"
ETHER = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
MARKED, UNMARKED = "evil.example", "benign.example"
HELLO = client_hello(MARKED, random.Random(11), post_quantum=False)
SUITES = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
CONTROL_HELLO = client_hello(UNMARKED, random.Random(11), post_quantum=False).replace(SUITES, SUITES[:-2] + b"\x00\x3c", 1)
"""Another name and another cipher suite: neither the name nor the JA3 or JA4 markers hit."""
PQ_HELLO = client_hello(MARKED, random.Random(12), post_quantum=True)


def _tcp(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int, payload: bytes = b"") -> Ether:
    packet = Ether(**ETHER) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    return packet / Raw(payload) if payload else packet


def connection(port: int, segments: list[tuple[int, bytes]], syn: bool = True, client_isn: int = 1000, server_port: int = 443) -> list:
    """A TCP connection whose client sends `segments` (stream offset, bytes) in the given order,
    the server acknowledging; FINs at the end. `syn=False`: picked up after its handshake."""
    server_isn = 90000
    packets = []
    if syn:
        packets += [_tcp(CLIENT, SERVER, port, server_port, "S", client_isn - 1, 0), _tcp(SERVER, CLIENT, server_port, port, "SA", server_isn - 1, client_isn), _tcp(CLIENT, SERVER, port, server_port, "A", client_isn, server_isn)]
    end = client_isn
    for offset, data in segments:
        packets.append(_tcp(CLIENT, SERVER, port, server_port, "PA", (client_isn + offset) % (1 << 32), server_isn, data))
        end = max(end, client_isn + offset + len(data))
    packets += [_tcp(CLIENT, SERVER, port, server_port, "FA", end % (1 << 32), server_isn), _tcp(SERVER, CLIENT, server_port, port, "FA", server_isn, (end + 1) % (1 << 32))]
    return packets


def stamp(packets: list, start: float = 1_700_000_000.0) -> list:
    for number, packet in enumerate(packets):
        packet.time = start + number / 1000
    return packets


def marker_bundle(path: Path) -> Path:
    fingerprints = tls.read_client_hello(HELLO)
    return write_bundle(path, [
        {"id": "name", "type": "domain", "value": MARKED},
        {"id": "ja3", "type": "ja3", "value": fingerprints.ja3},
        {"id": "ja4", "type": "ja4", "value": fingerprints.ja4},
    ])


def events_of(tmp_path: Path, packets: list, bundle: Path | None = None) -> list[dict]:
    capture = tmp_path / "evasion.pcap"
    wrpcap(str(capture), stamp(packets))
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(bundle or marker_bundle(tmp_path / "markers.json"))], events)
    return [json.loads(line) for line in events.getvalue().splitlines()]


def detections(events: list[dict]) -> dict[int, set[tuple[str, str]]]:
    found: dict[int, set[tuple[str, str]]] = {}
    for event in events:
        found.setdefault(event["src_port"], set()).add((event["marker"]["id"], event["matched_on"]))
    return found


FULL_HELLO = {("name", "tls.sni"), ("ja3", "tls.ja3"), ("ja4", "tls.ja4")}


def test_a_client_hello_split_into_two_segments_at_every_offset(tmp_path: Path) -> None:
    packets = []
    for offset in range(1, len(HELLO)):
        packets += connection(10000 + offset, [(0, HELLO[:offset]), (offset, HELLO[offset:])])
    for offset in range(1, len(CONTROL_HELLO), 7):
        packets += connection(40000 + offset, [(0, CONTROL_HELLO[:offset]), (offset, CONTROL_HELLO[offset:])])
    found = detections(events_of(tmp_path, packets))
    assert found == {10000 + offset: FULL_HELLO for offset in range(1, len(HELLO))}


def test_one_byte_segments_reordered_duplicated_and_wrapping_sequence_numbers(tmp_path: Path) -> None:
    rng = random.Random(5)
    one_byte = [(offset, HELLO[offset : offset + 1]) for offset in range(len(HELLO))]
    shuffled = [(offset, PQ_HELLO[offset : offset + 300]) for offset in range(0, len(PQ_HELLO), 300)]
    rng.shuffle(shuffled)
    duplicated = shuffled + shuffled[:3]
    rng.shuffle(duplicated)
    packets = connection(20001, one_byte) + connection(20002, shuffled) + connection(20003, duplicated)
    packets += connection(20004, [(0, PQ_HELLO[:700]), (700, PQ_HELLO[700:])], client_isn=(1 << 32) - 350)  # the sequence wraps inside the hello
    packets += connection(20005, list(reversed(one_byte)))
    found = detections(events_of(tmp_path, packets))
    assert found[20001] == FULL_HELLO and found[20005] == FULL_HELLO
    assert {port: {hit for hit in hits if hit[0] == "name"} for port, hits in found.items()} == {port: {("name", "tls.sni")} for port in range(20001, 20006)}


def test_an_overlapping_retransmission_with_different_content_keeps_the_first_copy(tmp_path: Path) -> None:
    """First copy wins (flows/reassembly.py): a later overlapping segment cannot rewrite bytes
    already received, whichever of the two carries the marked name."""
    position = HELLO.index(MARKED.encode())
    forged = HELLO[: position] + UNMARKED[: len(MARKED)].encode().ljust(len(MARKED), b"x") + HELLO[position + len(MARKED) :]
    cut = position + len(MARKED)
    marked_first = [(0, HELLO[:cut]), (0, forged[:cut]), (cut, HELLO[cut:])]
    forged_first = [(0, forged[:cut]), (0, HELLO[:cut]), (cut, HELLO[cut:])]
    capture = tmp_path / "overlap.pcap"
    wrpcap(str(capture), stamp(connection(21001, marked_first) + connection(21002, forged_first)))
    events = io.StringIO()
    result = replay(Config(), [str(capture)], [str(marker_bundle(tmp_path / "markers.json"))], events)
    found = detections([json.loads(line) for line in events.getvalue().splitlines()])
    assert found == {21001: FULL_HELLO, 21002: FULL_HELLO - {("name", "tls.sni")}}
    assert result.pipeline.anomalies["tcp.overlap_conflict"] == 2


def test_a_client_hello_picked_up_mid_stream(tmp_path: Path) -> None:
    packets = connection(22001, [(0, HELLO)], syn=False) + connection(22002, [(0, CONTROL_HELLO)], syn=False)
    found = detections(events_of(tmp_path, packets))
    assert found == {22001: FULL_HELLO}


def _dns_query(name: str, sport: int, version: int) -> Ether:
    padding = Raw(b"\x00" * 0)  # the name itself spans the fragment boundary
    question = UDP(sport=sport, dport=53) / DNS(id=sport, rd=1, qd=DNSQR(qname=name)) / padding
    if version == 4:
        return Ether(**ETHER) / IP(src=CLIENT, dst=SERVER, id=sport) / question
    return Ether(**ETHER) / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(id=sport) / question


def test_a_marked_name_split_across_ipv4_and_ipv6_fragments(tmp_path: Path) -> None:
    long_marked = ".".join(["a" * 40] * 3) + "." + MARKED
    long_unmarked = ".".join(["a" * 40] * 3) + "." + UNMARKED
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "name", "type": "domain", "value": MARKED, "match": "subdomains"}])
    packets = []
    for sport, name in ((23001, long_marked), (23002, long_unmarked)):
        packets += fragment(_dns_query(name, sport, 4)[IP], fragsize=48)
        packets += fragment6(_dns_query(name, sport + 10, 6)[IPv6], 120)
    packets = [Ether(**ETHER) / packet if not packet.haslayer(Ether) else packet for packet in packets]
    packets.reverse()  # the last fragment first
    found = detections(events_of(tmp_path, packets, bundle))
    assert found == {23001: {("name", "dns.query")}, 23011: {("name", "dns.query")}}


def _dns_over_tcp(name: str, length: int = 0, flags: int = 0x0100) -> bytes:
    """One length-prefixed DNS query, padded after its question to `length` bytes when given."""
    message = bytes(DNS(id=7, qd=DNSQR(qname=name)))
    message = message[:2] + flags.to_bytes(2, "big") + message[4:]
    message += bytes(max(length - len(message), 0))
    return len(message).to_bytes(2, "big") + message


def test_dns_over_tcp_is_read_whatever_its_length_says_and_for_the_whole_connection(tmp_path: Path) -> None:
    """On a DNS port, a query 5,632-5,887 bytes long starts with 16 03 like a TLS record, and one
    18,245 bytes long with id "T " like "GET ": each is read as DNS unless it is a ClientHello or a
    request line, and a TLS reading that fails falls back to DNS. A connection's queries are read
    to its end, not to a depth. A hello or a request on port 53 is still read as such."""
    def segments(stream: bytes, size: int = 1400) -> list[tuple[int, bytes]]:
        return [(offset, stream[offset : offset + size]) for offset in range(0, len(stream), size)]

    long_query = _dns_over_tcp(MARKED, 0x1603)
    assert long_query[:2] == b"\x16\x03"
    looks_like_a_hello = _dns_over_tcp(MARKED, 0x1603, flags=0x0101)  # sixth byte 01, as a ClientHello's
    many = b"".join(_dns_over_tcp(f"host{number}.{UNMARKED}") for number in range(2500)) + _dns_over_tcp(MARKED)
    assert len(many) > 70_000
    packets = connection(35001, segments(long_query), server_port=53) + connection(35002, segments(looks_like_a_hello), server_port=53)
    packets += connection(35003, segments(many), server_port=53) + connection(35004, [(0, HELLO)], server_port=53)
    packets += connection(35005, segments(_dns_over_tcp(UNMARKED, 0x1603)), server_port=53)
    like_a_request = _dns_over_tcp(MARKED, 0x4745)  # length "GE", then its id made "T "
    like_a_request = like_a_request[:2] + b"T " + like_a_request[4:]
    assert like_a_request[:4] == b"GET "
    request = b"GET / HTTP/1.1\r\nHost: " + MARKED.encode() + b"\r\n\r\n"
    packets += connection(35006, segments(like_a_request), server_port=53) + connection(35007, [(0, request)], server_port=53)
    found = detections(events_of(tmp_path, packets))
    assert found == {35001: {("name", "dns.query")}, 35002: {("name", "dns.query")}, 35003: {("name", "dns.query")}, 35004: FULL_HELLO, 35006: {("name", "dns.query")}, 35007: {("name", "http.host")}}


def test_mixed_case_names_match(tmp_path: Path) -> None:
    mixed = "EvIl.ExAmPlE"
    hello = client_hello(mixed, random.Random(13), post_quantum=False)
    request = f"GET /x HTTP/1.1\r\nhOsT: WWW.{mixed}\r\n\r\n".encode()
    dns_query = Ether(**ETHER) / IP(src=CLIENT, dst=SERVER) / UDP(sport=24003, dport=53) / DNS(id=1, rd=1, qd=DNSQR(qname=mixed))
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "name", "type": "domain", "value": MARKED, "match": "subdomains"}])
    found = detections(events_of(tmp_path, connection(24001, [(0, hello)]) + connection(24002, [(0, request)]) + [dns_query], bundle))
    assert found == {24001: {("name", "tls.sni")}, 24002: {("name", "http.host")}, 24003: {("name", "dns.query")}}


def test_the_cli_gives_the_same_events_as_the_library(tmp_path: Path) -> None:
    packets = stamp(connection(25001, [(offset, HELLO[offset : offset + 5]) for offset in range(0, len(HELLO), 5)][::-1]) + connection(25002, [(0, CONTROL_HELLO)]))
    capture = tmp_path / "sample.pcap"
    wrpcap(str(capture), packets)
    bundle = marker_bundle(tmp_path / "markers.json")
    result = subprocess.run([PROBE, "replay", str(capture), "--markers", str(bundle), "--events", str(tmp_path / "events.jsonl")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cli = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert detections(cli) == {25001: FULL_HELLO}
    assert cli == events_of(tmp_path / "library", packets, bundle) if (tmp_path / "library").mkdir() is None else False


@pytest.mark.parametrize(("kind", "anomaly"), [("truncated", "handshake.incomplete"), ("lying", "tls.malformed")])
def test_broken_hellos_are_counted_and_skipped(tmp_path: Path, kind: str, anomaly: str) -> None:
    """A hello cut short (the flow ends first) or declaring a length no hello has: counted by kind,
    the flow's other markers and the next flow unaffected."""
    broken = HELLO[:60] if kind == "truncated" else HELLO[:5] + b"\x01\xff\xff\xff" + HELLO[9:]
    capture = tmp_path / "broken.pcap"
    wrpcap(str(capture), stamp(connection(26001, [(0, broken)]) + connection(26002, [(0, HELLO)])))
    events = io.StringIO()
    result = replay(Config(), [str(capture)], [str(marker_bundle(tmp_path / "markers.json"))], events)
    assert detections([json.loads(line) for line in events.getvalue().splitlines()]) == {26002: FULL_HELLO}
    assert result.pipeline.anomalies == {anomaly: 1}
    assert result.pipeline.inspector.budget.used == 0  # every byte held was given back


def _quic_datagrams(name: bytes, version: int) -> list[bytes]:
    """A ClientHello too big for one Initial, in two Initial packets sent in two datagrams."""
    hello = quic_client_hello(name, size=1800)
    return [protect(crypto_frame(0, hello[:1000]), version=version, packet_number=0, pad_to=1200), protect(crypto_frame(1000, hello[1000:]), version=version, packet_number=1, pad_to=1200)]


def _udp(sport: int, dport: int, payload: bytes) -> Ether:
    return Ether(**ETHER) / IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=dport) / Raw(payload)


def test_a_quic_initial_split_over_two_packets_in_either_order(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "name", "type": "domain", "value": MARKED}])
    packets = []
    for sport, version, name, reverse in ((27001, VERSION_1, MARKED, False), (27002, VERSION_2, MARKED, True), (27003, VERSION_1, UNMARKED, False)):
        datagrams = _quic_datagrams(name.encode(), version)
        packets += [_udp(sport, 443, datagram) for datagram in (datagrams[::-1] if reverse else datagrams)]
    assert detections(events_of(tmp_path, packets, bundle)) == {27001: {("name", "quic.sni")}, 27002: {("name", "quic.sni")}}


def test_quic_packets_with_bad_tags_or_unknown_versions_are_counted(tmp_path: Path) -> None:
    good = _quic_datagrams(MARKED.encode(), VERSION_1)
    forged = bytearray(good[0])
    forged[-1] ^= 1  # the AEAD tag no longer authenticates
    unknown = bytearray(good[0])
    unknown[1:5] = (0x0A1A2A3A).to_bytes(4, "big")
    forged_second = bytearray(good[1])
    forged_second[-1] ^= 1
    packets = [_udp(28001, 443, bytes(forged)), _udp(28001, 443, good[0]), _udp(28001, 443, bytes(forged_second)), _udp(28001, 443, good[1]), _udp(28002, 443, bytes(unknown))]
    capture = tmp_path / "quic.pcap"
    wrpcap(str(capture), stamp(packets))
    events = io.StringIO()
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "name", "type": "domain", "value": MARKED}])
    result = replay(Config(), [str(capture)], [str(bundle)], events)
    assert detections([json.loads(line) for line in events.getvalue().splitlines()]) == {28001: {("name", "quic.sni")}}  # forged datagrams do not end the reading
    assert result.pipeline.anomalies == {"quic.bad_tag": 2}  # an unknown version's packet is not an Initial: not read at all
    assert result.pipeline.inspector.budget.used == 0


PATTERN = b"beacon-7f3a9c"


def _payload_bundle(path: Path) -> Path:
    rule = 'rule staged { strings: $a = "MZ-stage2-loader" condition: $a at 0 }'
    return write_bundle(path, [
        {"id": "literal", "type": "bytes", "value": PATTERN.decode(), "name": "beacon literal"},
        {"id": "hex", "type": "bytes", "value": "de ad be ef 00 01", "encoding": "hex", "name": "magic"},
        {"id": "regex", "type": "bytes", "value": "cmd=[a-z]{4}&id=[0-9]{6}", "encoding": "regex", "name": "command"},
        {"id": "rule", "type": "yara", "value": rule, "name": "stage 2 loader"},
    ])


def test_byte_patterns_and_yara_match_across_segments_in_both_directions(tmp_path: Path) -> None:
    request = b"POST /up HTTP/1.1\r\nHost: x.example\r\nContent-Length: 60\r\n\r\n" + b"a" * 20 + PATTERN + b"cmd=exec&id=123456" + b"b" * 9
    packets = []
    for cut in range(1, len(request)):
        packets += connection(30000 + cut, [(cut, request[cut:]), (0, request[:cut])])
    answer = b"MZ-stage2-loader" + b"\xde\xad\xbe\xef\x00\x01" + bytes(200)
    server_isn = 90000
    flow = connection(31001, [(0, b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n")])
    flow[4:4] = [_tcp(SERVER, CLIENT, 443, 31001, "PA", server_isn + 8, 1000, answer[8:]), _tcp(SERVER, CLIENT, 443, 31001, "PA", server_isn, 1000, answer[:8])]
    control = connection(31002, [(0, request.replace(PATTERN, b"beacon-000000").replace(b"exec", b"EXEC"))])
    found = detections(events_of(tmp_path, packets + flow + control, _payload_bundle(tmp_path / "markers.json")))
    expected_request = {("literal", "payload"), ("regex", "payload")}
    assert found == {**{30000 + cut: expected_request for cut in range(1, len(request))}, 31001: {("rule", "yara"), ("hex", "payload")}}


def _record(content: int, body: bytes) -> bytes:
    return bytes((content, 3, 3)) + len(body).to_bytes(2, "big") + body


def test_byte_patterns_and_yara_stop_where_the_tls_cleartext_ends_inside_a_segment(tmp_path: Path) -> None:
    """The encrypted records that follow a ClientHello or a TLS 1.3 ServerHello in the same segment
    are neither scanned nor matched; the hello itself is."""
    encrypted = _record(0x17, b"MZ-stage2-loader" + PATTERN)
    in_hello = client_hello(PATTERN.decode() + ".example", random.Random(11), post_quantum=False)
    server_hello = _record(0x16, b"\x02\x00\x00\x56\x03\x03" + bytes(32) + b"\x00\x13\x01\x00\x00\x2e\x00\x2b\x00\x02\x03\x04\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(32))
    assert tls.read_server_certificates(server_hello).status == tls.ENCRYPTED
    server_isn = 90000
    packets = connection(34001, [(0, HELLO + encrypted)]) + connection(34002, [(0, in_hello + encrypted)])
    after_server_hello = connection(34003, [(0, HELLO)])
    after_server_hello[4:4] = [_tcp(SERVER, CLIENT, 443, 34003, "PA", server_isn, 1000 + len(HELLO), server_hello + _record(0x14, b"\x01") + encrypted)]
    found = detections(events_of(tmp_path, packets + after_server_hello, _payload_bundle(tmp_path / "markers.json")))
    assert found == {34002: {("literal", "payload")}}
    # The same after a CONNECT request, and with the first bytes held before the reader is chosen:
    # the three bytes right after the hello are not read either.
    connect = b"CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n\r\n"
    tunnels = connection(34004, [(0, connect + HELLO + b"XYZ" + encrypted)]) + connection(34005, [(0, connect[:3]), (3, connect[3:] + HELLO + b"XYZ" + encrypted)])
    tunnels += connection(34006, [(0, HELLO[:1]), (1, HELLO[1:] + b"XYZ" + encrypted)]) + connection(34007, [(0, connect + b"XYZ")])
    bundle = write_bundle(tmp_path / "short.json", [
        {"id": "short", "type": "bytes", "value": "XYZ", "name": "three bytes"},
        {"id": "rule", "type": "yara", "value": 'rule short { strings: $a = "XYZ" condition: $a }', "name": "three bytes"},
    ])
    assert detections(events_of(tmp_path, tunnels, bundle)) == {34007: {("short", "payload"), ("rule", "yara")}}


def test_payload_events_say_the_direction_never_the_bytes(tmp_path: Path) -> None:
    request = b"GET /?q=" + PATTERN + b" HTTP/1.1\r\nHost: x.example\r\n\r\n"
    events = events_of(tmp_path, connection(32001, [(0, request)]), _payload_bundle(tmp_path / "markers.json"))
    (event,) = events
    assert (event["matched_on"], event["direction"], event["marker"]["name"]) == ("payload", "to_server", "beacon literal")
    assert PATTERN.decode() not in json.dumps(event) and "value" not in event["marker"]


def test_a_yara_rule_that_times_out_is_counted_and_skipped(tmp_path: Path) -> None:
    # True for any buffer (here the hello: the zeros after it are not read, as if encrypted), but
    # only after about filesize⁴ steps: the timeout decides.
    slow = 'import "math"\nrule slow { condition: for all i in (0..filesize) : (for all j in (0..filesize) : (for all k in (0..filesize) : (math.entropy(i, j) >= 0))) }'
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "slow", "type": "yara", "value": slow, "name": "slow"}, {"id": "name", "type": "domain", "value": MARKED}])
    capture = tmp_path / "slow.pcap"
    wrpcap(str(capture), stamp(connection(33001, [(0, HELLO + bytes(4096))])))
    events = io.StringIO()
    result = replay(Config(), [str(capture)], [str(bundle)], events)
    assert detections([json.loads(line) for line in events.getvalue().splitlines()]) == {33001: {("name", "tls.sni")}}
    assert result.pipeline.anomalies == {"yara.timeout": 1}
    assert result.pipeline.inspector.budget.used == 0


def _random_sessions(rng: random.Random, count: int) -> list:
    """Sessions reusing ports, segments of both sides shuffled or cut short, some ended by FIN or
    RST, some silent past their idle timeout: what makes per-batch shortcuts go wrong."""
    payloads = [HELLO, CONTROL_HELLO, PQ_HELLO, b"GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n" * 3, b"MZ-stage2-loader" + rng.randbytes(9000) + PATTERN]
    packets, now = [], 1_700_000_000.0
    for _ in range(count):
        port = 40000 + rng.randrange(40)
        isn, server_isn = rng.randrange(1 << 32), rng.randrange(1 << 32)
        session = [_tcp(CLIENT, SERVER, port, 443, "S", isn, 0), _tcp(SERVER, CLIENT, 443, port, "SA", server_isn, (isn + 1) % (1 << 32))]
        sent, answer = rng.choice(payloads), rng.choice(payloads)
        pieces = [(True, offset, sent[offset : offset + 1400]) for offset in range(0, len(sent), 1400)] + [(False, offset, answer[offset : offset + 700]) for offset in range(0, len(answer), 700)]
        if rng.random() < 0.5:
            rng.shuffle(pieces)
        if rng.random() < 0.3:
            pieces = pieces[:-1]
        for from_client, offset, data in pieces:
            session.append(_tcp(CLIENT, SERVER, port, 443, "PA", (isn + 1 + offset) % (1 << 32), server_isn, data) if from_client else _tcp(SERVER, CLIENT, 443, port, "PA", (server_isn + 1 + offset) % (1 << 32), isn, data))
        if rng.random() < 0.4:
            session.append(_tcp(CLIENT, SERVER, port, 443, "R" if rng.random() < 0.5 else "FA", (isn + 1 + len(sent)) % (1 << 32), server_isn))
        for packet in session:
            packet.time = now
            now += 400.0 if rng.random() < 0.01 else 0.001
        packets += session
    return packets


def test_results_do_not_depend_on_the_route_or_on_batch_cuts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader at once, over one capture: the vector route in whole batches, in batches of a
    packet or two, and every frame through the per-frame decoder give the same events, and every
    byte held is given back."""
    import probe.capture.reader
    import probe.pipeline

    capture = tmp_path / "sessions.pcap"
    wrpcap(str(capture), _random_sessions(random.Random(7), 150))
    bundle = write_bundle(tmp_path / "markers.json", [
        {"id": "name", "type": "domain", "value": MARKED},
        {"id": "ja3", "type": "ja3", "value": tls.read_client_hello(HELLO).ja3},
        {"id": "certificate", "type": "x509_sha256", "value": "0" * 64},
        {"id": "url", "type": "url", "value": "evil.example/x"},
        {"id": "literal", "type": "bytes", "value": PATTERN.decode(), "name": "beacon literal"},
        {"id": "rule", "type": "yara", "value": 'rule staged { strings: $a = "MZ-stage2-loader" condition: $a }', "name": "stage 2 loader"},
    ])
    found = {}
    for route, chunk, vector_run in (("vector", probe.capture.reader.CHUNK_SIZE, 1), ("tiny batches", 300, 1), ("per frame", probe.capture.reader.CHUNK_SIZE, 10**9)):
        monkeypatch.setattr(probe.capture.reader, "CHUNK_SIZE", chunk)
        monkeypatch.setattr(probe.pipeline, "MIN_VECTOR_RUN", vector_run)
        events = io.StringIO()
        result = replay(Config(), [str(capture)], [str(bundle)], events)
        found[route] = sorted(events.getvalue().splitlines())
        assert result.pipeline.inspector.budget.used == 0, route
    assert len({event["marker"]["id"] for event in map(json.loads, found["vector"])}) >= 5
    assert found["vector"] == found["tiny batches"] == found["per frame"]


def test_a_decoy_syn_does_not_move_the_stream_start(tmp_path: Path) -> None:
    """A SYN with another initial sequence number, before or after the real one: the server's
    SYN-ACK says which one it acknowledged, and the stream starts there; data on a SYN is read."""
    packets = []
    for port, decoy_first in ((29001, True), (29002, False)):
        isn, decoy, server_isn = 1000, 1000 + (1 << 31), 90000
        syns = [_tcp(CLIENT, SERVER, port, 443, "S", decoy - 1, 0), _tcp(CLIENT, SERVER, port, 443, "S", isn - 1, 0)]
        packets += (syns if decoy_first else syns[::-1]) + [
            _tcp(SERVER, CLIENT, 443, port, "SA", server_isn - 1, isn),
            _tcp(CLIENT, SERVER, port, 443, "PA", isn, server_isn, HELLO),
            _tcp(CLIENT, SERVER, port, 443, "FA", isn + len(HELLO), server_isn),
        ]
    packets += [  # TCP Fast Open: the hello rides on the SYN, which the SYN-ACK acknowledges with it
        _tcp(CLIENT, SERVER, 29003, 443, "S", 999, 0, HELLO),
        _tcp(SERVER, CLIENT, 443, 29003, "SA", 89999, 1000 + len(HELLO)),
        _tcp(CLIENT, SERVER, 29003, 443, "FA", 1000 + len(HELLO), 90000),
    ]
    for bundle in (write_bundle(tmp_path / "names.json", [{"id": "name", "type": "domain", "value": MARKED}]), marker_bundle(tmp_path / "markers.json")):
        assert {port for port, hits in detections(events_of(tmp_path, packets, bundle)).items() if ("name", "tls.sni") in hits} == {29001, 29002, 29003}
