"""DNS answers (CNAME targets, A/AAAA addresses) and every HTTP request of a kept-alive connection.

Address and domain markers must see a resolution towards a marked host even when the connection
is not seen, and url / http_host markers must see the requests after the first on a connection.
Besides the expected values the tests check the parsers' contracts: never raise on any bytes,
bounded work, answers only from a response's answer section, request bodies never taken for
requests, and the same requests whatever the chunking of the stream. Real captures are compared
with what tshark dissects.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from probe.decode import dns as dns_mod
from probe.decode import http as http_mod
from probe.decode.dns import DnsAnswers, DnsMessage, dns_query_names, dns_tcp_answers, dns_tcp_query_names, read_dns_message
from probe.decode.http import HttpRequest, HttpRequestStream
from probe.decode.packet import address_key
from fuzz_support import mutate

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"
NO_CAPTURES = f"no shared capture corpus at {CAPTURES}"
NO_TSHARK = "tshark is not installed"


# --------------------------------------------------------------------------------------------
# DNS builders (by hand, so that every byte under test is known)
# --------------------------------------------------------------------------------------------


def wire_name(name: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\x00"


def response(questions: list[bytes], answers: list[bytes], flags: int = 0x8180, qdcount: int | None = None, ancount: int | None = None) -> bytes:
    """questions: encoded QNAMEs (QTYPE A, QCLASS IN appended); answers: encoded records."""
    header = struct.pack("!HHHHHH", 0x4242, flags, len(questions) if qdcount is None else qdcount, len(answers) if ancount is None else ancount, 0, 0)
    return header + b"".join(q + b"\x00\x01\x00\x01" for q in questions) + b"".join(answers)


def record(owner: bytes, record_type: int, data: bytes, record_class: int = 1, length: int | None = None) -> bytes:
    return owner + struct.pack("!HHIH", record_type, record_class, 300, len(data) if length is None else length) + data


def a_record(owner: bytes, address: str, record_class: int = 1) -> bytes:
    return record(owner, 1, address_key(address)[12:], record_class)


def aaaa_record(owner: bytes, address: str) -> bytes:
    return record(owner, 28, address_key(address))


QUESTION = b"\xc0\x0c"  # pointer to the first question's name (offset 12)


def answers_of(message) -> tuple[list[str], list[bytes]]:
    result = read_dns_message(message)
    return result.cname_targets, result.addresses


# --------------------------------------------------------------------------------------------
# DNS answers
# --------------------------------------------------------------------------------------------


def test_dns_scapy_cname_chain_a_and_aaaa():
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    message = DNS(
        id=7,
        qr=1,
        rd=1,
        ra=1,
        qd=DNSQR(qname="WWW.Example.COM", qtype="A"),
        an=[
            DNSRR(rrname="www.example.com", type="CNAME", rdata="Web.Example.NET."),
            DNSRR(rrname="web.example.net", type="CNAME", rdata="edge.example.org"),
            DNSRR(rrname="edge.example.org", type="A", rdata="192.0.2.1"),
            DNSRR(rrname="edge.example.org", type="A", rdata="192.0.2.2"),
            DNSRR(rrname="edge.example.org", type="AAAA", rdata="2001:db8::1"),
        ],
    )
    expected = DnsMessage(
        ["www.example.com"],
        ["web.example.net", "edge.example.org"],
        [address_key("192.0.2.1"), address_key("192.0.2.2"), address_key("2001:db8::1")],
        True,
    )
    assert read_dns_message(bytes(message)) == expected
    assert read_dns_message(bytes(message.compress())) == expected
    # IPv4 answers take the probe's address form: IPv4-mapped IPv6.
    assert expected.addresses[0] == b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])


def test_dns_answers_only_in_responses():
    answers = [record(QUESTION, 5, wire_name(b"alias.example")), a_record(QUESTION, "192.0.2.9")]
    as_response = response([wire_name(b"q.example")], answers)
    as_query = response([wire_name(b"q.example")], answers, flags=0x0100)
    assert read_dns_message(as_response) == (["q.example"], ["alias.example"], [address_key("192.0.2.9")], True)
    # A query carrying records (mDNS known answers, or a forged one) says nothing of a resolution.
    assert read_dns_message(as_query) == (["q.example"], [], [], False)
    assert read_dns_message(response([wire_name(b"q.example")], [], flags=0x8183)) == (["q.example"], [], [], True)  # NXDOMAIN


def test_dns_answer_section_only():
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    message = DNS(
        id=1,
        qr=1,
        qd=DNSQR(qname="www.example.com"),
        an=[DNSRR(rrname="www.example.com", rdata="192.0.2.1")],
        ns=[DNSRR(rrname="example.com", type="NS", rdata="ns1.example.com")],
        ar=[DNSRR(rrname="ns1.example.com", rdata="198.51.100.53"), DNSRR(rrname="other.example", type="CNAME", rdata="glue.example")],
    )
    assert answers_of(bytes(message)) == ([], [address_key("192.0.2.1")])


def test_dns_other_record_types_and_classes():
    answers = [
        record(QUESTION, 16, b"\x0bv=spf1 -all"),  # TXT
        record(QUESTION, 12, wire_name(b"ptr.example")),  # PTR: not a CNAME target
        record(QUESTION, 1, b"\x0a\x00\x00\x01", record_class=3),  # CHAOS class: not an address
        a_record(QUESTION, "192.0.2.3", record_class=0x8001),  # mDNS cache-flush bit
        record(QUESTION, 39, wire_name(b"dname.example")),  # DNAME: not read
        aaaa_record(QUESTION, "::ffff:192.0.2.4"),
    ]
    message = response([wire_name(b"host.local")], answers)
    assert answers_of(message) == ([], [address_key("192.0.2.3"), address_key("192.0.2.4")])
    # mDNS responses carry no question.
    announcement = response([], [a_record(wire_name(b"printer.local"), "169.254.1.2", 0x8001)], flags=0x8400)
    assert read_dns_message(announcement) == ([], [], [address_key("169.254.1.2")], True)


def test_dns_cname_compression_pointers():
    question = wire_name(b"www.example.com")  # at offset 12; "example.com" at 16
    first_target = b"\x03cdn\xc0\x10"  # cdn.example.com, into the question
    first = record(QUESTION, 5, first_target)
    first_rdata = 12 + len(question) + 4 + 2 + 10  # owner pointer, then TYPE..RDLENGTH
    # A chain: "edge" + pointer to the first CNAME's data, which itself ends in a pointer.
    second = record(struct.pack("!H", 0xC000 | first_rdata), 5, b"\x04edge" + struct.pack("!H", 0xC000 | first_rdata))
    address = a_record(struct.pack("!H", 0xC000 | (first_rdata + 6 + 2 + 10)), "192.0.2.5")
    message = response([question], [first, second, address])
    assert read_dns_message(message) == (["www.example.com"], ["cdn.example.com", "edge.cdn.example.com"], [address_key("192.0.2.5")], True)
    # An owner name written out in full (no pointer) is stepped over as well.
    spelled = response([question], [record(wire_name(b"www.example.com"), 5, b"\xc0\x10"), a_record(wire_name(b"example.com"), "192.0.2.6")])
    assert answers_of(spelled) == (["example.com"], [address_key("192.0.2.6")])


def test_dns_bad_pointers_in_cname_skip_only_that_record():
    question = wire_name(b"q.example")
    after = a_record(QUESTION, "192.0.2.7")
    for rdata in (
        b"\xc0\x00",  # into the header
        b"\x01a\xc0\xff",  # past the end
        b"\x01a\xc0",  # cut pointer
        b"\x41abc\x00",  # extended label type
    ):
        assert answers_of(response([question], [record(QUESTION, 5, rdata), after])) == ([], [address_key("192.0.2.7")]), rdata
    # A pointer loop: the record's data points at itself.
    loop_at = 12 + len(question) + 4 + 2 + 10
    looped = record(QUESTION, 5, struct.pack("!H", 0xC000 | loop_at))
    assert answers_of(response([question], [looped, after])) == ([], [address_key("192.0.2.7")])
    # Two CNAMEs pointing at each other.
    second_at = loop_at + 2 + 2 + 10
    ping = record(QUESTION, 5, struct.pack("!H", 0xC000 | second_at))
    pong = record(QUESTION, 5, struct.pack("!H", 0xC000 | loop_at))
    assert answers_of(response([question], [ping, pong, after])) == ([], [address_key("192.0.2.7")])
    # A forward pointer (to a later record's data) is followed, as resolvers do.
    later_at = loop_at + 2 + 2 + 10
    forward = record(QUESTION, 5, struct.pack("!H", 0xC000 | later_at))
    assert answers_of(response([question], [forward, record(QUESTION, 16, wire_name(b"later.example"))])) == (["later.example"], [])
    # A bad owner name ends the section: where the record's fields start is unknown.
    assert answers_of(response([question], [a_record(QUESTION, "192.0.2.8"), a_record(b"\x81x\x00", "192.0.2.9")])) == ([], [address_key("192.0.2.8")])


def test_dns_rdlength_lying():
    question = wire_name(b"q.example")
    good = a_record(QUESTION, "192.0.2.10")
    for bad in (
        record(QUESTION, 1, b"\xc0\x00\x02\x01\x00"),  # A of 5 bytes
        record(QUESTION, 1, b"\xc0\x00\x02"),  # A of 3 bytes
        record(QUESTION, 28, b"\x20\x01\x0d\xb8"),  # AAAA of 4 bytes
        record(QUESTION, 5, b"\x04long"),  # the name would go on in the next record (a pointer)
        record(QUESTION, 5, b""),  # empty CNAME data
    ):
        assert answers_of(response([question], [bad, good])) == ([], [address_key("192.0.2.10")]), bad
    # Trailing bytes after a CNAME's name inside its RDLENGTH do not hide the name.
    padded = record(QUESTION, 5, wire_name(b"padded.example") + b"\xff\xff")
    assert answers_of(response([question], [padded, good])) == (["padded.example"], [address_key("192.0.2.10")])
    # RDLENGTH past the end of the message: the records before it are kept.
    overlong = record(QUESTION, 1, b"\xc0\x00\x02\x0b", length=400)
    assert answers_of(response([question], [good, overlong])) == ([], [address_key("192.0.2.10")])
    # ANCOUNT larger than the records present.
    assert answers_of(response([question], [good], ancount=5)) == ([], [address_key("192.0.2.10")])


def test_dns_truncated_at_every_offset():
    question = wire_name(b"www.example.com")
    answers = [record(QUESTION, 5, b"\x03cdn\xc0\x10"), a_record(QUESTION, "192.0.2.11"), aaaa_record(QUESTION, "2001:db8::b")]
    message = response([question], answers)
    full = read_dns_message(message)
    assert full == (["www.example.com"], ["cdn.example.com"], [address_key("192.0.2.11"), address_key("2001:db8::b")], True)
    for cut in range(len(message)):
        part = read_dns_message(message[:cut])
        assert part.questions in ([], full.questions)
        assert part.cname_targets == full.cname_targets[: len(part.cname_targets)]
        assert part.addresses == full.addresses[: len(part.addresses)]
        assert len(part.addresses) < 2


def test_dns_answer_count_is_bounded():
    question = wire_name(b"many.example")
    answers = [a_record(QUESTION, f"192.0.2.{i}") for i in range(dns_mod.MAX_ANSWERS + 6)]
    addresses = answers_of(response([question], answers))[1]
    assert addresses == [address_key(f"192.0.2.{i}") for i in range(dns_mod.MAX_ANSWERS)]
    # Past MAX_QUESTIONS questions the answers' start is unknown: none are read.
    questions = [wire_name(b"q.example")] * (dns_mod.MAX_QUESTIONS + 1)
    message = response(questions, [a_record(QUESTION, "192.0.2.1")])
    result = read_dns_message(message)
    assert len(result.questions) == dns_mod.MAX_QUESTIONS and result.addresses == [] and result.is_response


def test_dns_compression_bomb_in_answers_is_bounded():
    long_name = wire_name(b".".join([b"a"] * 127))
    answers = [record(QUESTION, 5, b"\xc0\x0c")] * dns_mod.MAX_ANSWERS
    message = response([long_name], answers)
    started = time.perf_counter()
    result = read_dns_message(message)
    assert time.perf_counter() - started < 0.05
    assert len(result.questions) == 1 and 0 < len(result.cname_targets) < 10
    # Broken names spend the budget too (~100 steps each: too long once the pointer is followed),
    # so a flood of them ends the section instead of being stepped over one by one.
    broken = record(QUESTION, 5, b"\x3f" + b"b" * 63 + b"\xc0\x0c")
    address = a_record(QUESTION, "192.0.2.1")
    assert answers_of(response([long_name], [broken] * 5 + [address])) == ([], [address_key("192.0.2.1")])
    assert answers_of(response([long_name], [broken] * 20 + [address])) == ([], [])


def test_dns_accepts_any_bytes_like():
    message = response([wire_name(b"Host.Example")], [record(QUESTION, 5, wire_name(b"Alias.Example")), a_record(QUESTION, "192.0.2.12")])
    expected = (["host.example"], ["alias.example"], [address_key("192.0.2.12")], True)
    for form in (message, bytearray(message), memoryview(message), memoryview(b"xx" + message)[2:]):
        result = read_dns_message(form)
        assert result == expected and all(type(address) is bytes for address in result.addresses)
    for data in (b"", bytes(12), b"\x00\x00\x80\x00" + bytes(8), bytes(17)):
        assert read_dns_message(data) == ([], [], [], False)


def test_dns_tcp_messages_at_every_split():
    query = response([wire_name(b"one.example")], [], flags=0x0100)
    first = response([wire_name(b"one.example")], [a_record(QUESTION, "192.0.2.13")])
    second = response([wire_name(b"two.example")], [record(QUESTION, 5, wire_name(b"alias.example")), aaaa_record(QUESTION, "2001:db8::d")])
    # A query's records are not answers, even inside a stream of responses.
    forged = response([wire_name(b"three.example")], [a_record(QUESTION, "198.51.100.1")], flags=0x0100)
    stream = b"".join(struct.pack("!H", len(m)) + m for m in (query, first, forged, second)) + b"\x00\x00"
    expected = DnsAnswers(["alias.example"], [address_key("192.0.2.13"), address_key("2001:db8::d")])
    assert dns_tcp_answers(stream) == (expected, len(stream))
    for cut in range(len(stream) + 1):
        answers, used = dns_tcp_answers(memoryview(stream)[:cut])
        rest, rest_used = dns_tcp_answers(stream[used:])
        assert (answers.names + rest.names, answers.addresses + rest.addresses) == expected and used + rest_used == len(stream)
    # The question names of the same stream, for the client's side.
    assert dns_tcp_query_names(stream) == (["one.example", "one.example", "three.example", "two.example"], len(stream))
    for incomplete in (b"\x00", b"\xff\xff" + bytes(10), b""):
        assert dns_tcp_answers(incomplete) == (([], []), 0)


def test_dns_fuzz_never_raises():
    rng = random.Random(5353)
    seeds = [
        response([wire_name(b"www.example.com")], [record(QUESTION, 5, b"\x03cdn\xc0\x10"), a_record(QUESTION, "192.0.2.1"), aaaa_record(QUESTION, "2001:db8::1")]),
        response([], [a_record(wire_name(b"p.local"), "169.254.1.1", 0x8001)] * 3, flags=0x8400),
    ]
    for i in range(30000):
        data = mutate(rng, rng.choice(seeds)) if i % 3 else rng.randbytes(rng.randrange(40)) + rng.choice(seeds)[12:]
        result = dns_mod._read_message(data)  # past the public function's exception net
        assert result.questions == dns_query_names(data)
        assert len(result.cname_targets) + len(result.addresses) <= dns_mod.MAX_ANSWERS
        assert all(type(a) is bytes and len(a) == 16 for a in result.addresses)
        assert all(isinstance(n, str) and n for n in result.cname_targets)
        assert not (result.cname_targets or result.addresses) or result.is_response


# --------------------------------------------------------------------------------------------
# DNS answers in real captures, compared with tshark's answer section
# --------------------------------------------------------------------------------------------


def _tshark_json(path: Path, display_filter: str) -> list:
    """tshark's JSON, objects as lists of pairs: one frame may hold two DNS layers (same key)."""
    done = subprocess.run(
        ["tshark", "-r", str(path), "-Y", display_filter, "-T", "json", "-J", "frame dns mdns"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout, object_pairs_hook=lambda pairs: pairs)


def _tshark_dns_answers(path: Path) -> list[tuple[int, set[str], set[bytes]]]:
    """(frame, CNAME targets, addresses) of every DNS/mDNS response, from its answer section."""
    responses = []
    for frame in _tshark_json(path, "dns.flags.response == 1"):
        layers = dict(dict(frame)["_source"])["layers"]
        number = int(dict(dict(layers)["frame"])["frame.number"])
        for key, layer in layers:
            if key not in ("dns", "mdns") or not int(dict(layer)["dns.flags"], 16) & 0x8000:
                continue
            targets: set[str] = set()
            addresses: set[bytes] = set()
            for section, records in layer:
                if section != "Answers":  # tshark's dns.a also holds authority and additional records
                    continue
                for _summary, fields in records:
                    for name, value in fields:
                        if name in ("dns.a", "dns.aaaa"):
                            addresses.add(address_key(value))
                        elif name == "dns.cname":
                            targets.add(value.lower().rstrip("."))
            responses.append((number, targets, addresses))
    return responses


def _segments(path: Path):
    """(frame number, protocol, (src, sport, dst, dport), TCP seq, payload) of each TCP/UDP packet.

    Scapy dissects the headers; the payload is cut from the frame's own bytes by the header and
    IP length fields, since rebuilding scapy's upper layers need not give the bytes sent.
    """
    from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6, RawPcapReader

    for number, (frame, _meta) in enumerate(RawPcapReader(str(path)), 1):
        packet = Ether(frame)
        offset = 14 + 4 * sum(1 for layer in packet.layers() if layer is Dot1Q)
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        if isinstance(ip, IP):
            header, ip_end = ip.ihl * 4, offset + ip.len
        elif ip is not None and ip.nh in (6, 17):  # no extension headers
            header, ip_end = 40, offset + 40 + ip.plen
        else:
            continue
        transport = ip.payload
        if isinstance(transport, TCP):
            start = offset + header + transport.dataofs * 4
            yield number, "tcp", (ip.src, transport.sport, ip.dst, transport.dport), transport.seq, frame[start:ip_end]
        elif isinstance(transport, UDP):
            yield number, "udp", (ip.src, transport.sport, ip.dst, transport.dport), 0, frame[offset + header + 8 : ip_end]


def _in_order(by_seq: dict[int, bytes]) -> list[bytes]:
    """A direction's payloads in sequence order, retransmitted and overlapping bytes left out."""
    ordered = sorted(by_seq.items())
    base = ordered[0][0]
    chunks, stream_len = [], 0
    for seq, payload in ordered:
        offset = (seq - base) % 2**32
        if offset + len(payload) > stream_len and offset <= stream_len:
            chunks.append(payload[stream_len - offset :])
            stream_len = offset + len(payload)
    return chunks


def _probe_dns_answers(path: Path) -> tuple[dict[int, tuple[set[str], set[bytes]]], list[tuple[set[str], set[bytes]]]]:
    """UDP responses by frame number; responses over TCP (all streams, both directions)."""
    udp: dict[int, tuple[set[str], set[bytes]]] = {}
    directions: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for number, protocol, (src, sport, dst, dport), seq, payload in _segments(path):
        if protocol == "udp" and {53, 5353, 5355} & {sport, dport}:
            message = read_dns_message(payload)
            if message.is_response:
                udp[number] = (set(message.cname_targets), set(message.addresses))
        elif protocol == "tcp" and 53 in (sport, dport) and payload:
            directions[(src, sport, dst, dport)].setdefault(seq, payload)
    tcp = []
    for chunks in directions.values():
        stream = b"".join(_in_order(chunks))
        pos = 0
        while pos + 2 <= len(stream):  # one message at a time, to compare each with tshark's
            stop = pos + 2 + int.from_bytes(stream[pos : pos + 2], "big")
            answers, used = dns_tcp_answers(stream[pos:stop])
            if used and stream[pos + 4] & 0x80:
                tcp.append((set(answers.names), set(answers.addresses)))
            pos = stop
    return udp, tcp


DNS_CAPTURES = ["dns-udp.pcap", "dns-tcp.pcap", "mixed-iphone-mdns-many-answers.pcap"]


@pytest.mark.skipif(not CAPTURES.is_dir(), reason=NO_CAPTURES)
@pytest.mark.skipif(shutil.which("tshark") is None, reason=NO_TSHARK)
@pytest.mark.parametrize("name", DNS_CAPTURES)
def test_capture_dns_answers_match_tshark(name):
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"{path} is not in the corpus")
    truth = _tshark_dns_answers(path)
    assert truth, "tshark saw no DNS response"
    udp, tcp = _probe_dns_answers(path)
    tcp_truth = []
    for number, targets, addresses in truth:
        if number in udp:
            assert udp[number] == (targets, addresses), number
        else:
            tcp_truth.append((targets, addresses))
    assert len(udp) + len(tcp) == len(truth)
    assert sorted(tcp, key=repr) == sorted(tcp_truth, key=repr)
    assert any(addresses for _, _, addresses in truth)


# --------------------------------------------------------------------------------------------
# HTTP requests on a kept-alive connection
# --------------------------------------------------------------------------------------------


def feed_all(chunks) -> tuple[list[HttpRequest], HttpRequestStream]:
    stream = HttpRequestStream()
    requests = []
    for chunk in chunks:
        requests += stream.feed(chunk)
    return requests, stream


def request(host: str | None, path: str | None, port: int | None = None, target_host: str | None = None, connect: bool = False) -> HttpRequest:
    return HttpRequest(host, port, path, target_host, connect)


FIRST = b"GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.org\r\nAccept: */*\r\n\r\n"
SECOND = b"GET /style.css HTTP/1.1\r\nHost: www.example.org\r\nConnection: keep-alive\r\n\r\n"


def test_http_pipelined_split_at_every_offset():
    stream = FIRST + SECOND
    expected = [request("www.example.org", "/index.html?q=1"), request("www.example.org", "/style.css")]
    whole, state = feed_all([stream])
    assert whole == expected and state.status == http_mod.NEED_MORE
    for cut in range(len(stream) + 1):
        requests, state = feed_all([stream[:cut], stream[cut:]])
        assert requests == expected and state.status == http_mod.NEED_MORE, cut
    for first in range(1, len(stream), 7):
        for second in range(first, len(stream), 11):
            assert feed_all([stream[:first], stream[first:second], stream[second:]])[0] == expected
    # Byte by byte, each request is returned by the call with its last byte.
    state = HttpRequestStream()
    returned_at = [i for i in range(len(stream)) if state.feed(stream[i : i + 1])]
    assert returned_at == [len(FIRST) - 1, len(stream) - 1]


def test_http_content_length_body_is_not_a_request():
    body = b"GET /hidden HTTP/1.1\r\nHost: body.example\r\n\r\n"
    post = b"POST /upload HTTP/1.1\r\nHost: api.example\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    stream = post + SECOND
    expected = [request("api.example", "/upload"), request("www.example.org", "/style.css")]
    for cut in range(len(stream) + 1):
        requests, state = feed_all([stream[:cut], stream[cut:]])
        assert requests == expected and state.status == http_mod.NEED_MORE, cut
    # The same lengths written twice, or as a list, agree; disagreeing ones end the stream.
    same = b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nokGET /next HTTP/1.1\r\n\r\n"
    assert feed_all([same])[0] == [request("a.example", "/"), request(None, "/next")]
    for framing in (b"Content-Length: 2\r\nContent-Length: 3", b"Content-Length: -1", b"Content-Length: 0x10", b"Content-Length: " + b"9" * 30):
        requests, state = feed_all([b"POST / HTTP/1.1\r\nHost: a.example\r\n" + framing + b"\r\n\r\nokGET /next HTTP/1.1\r\n\r\n"])
        assert requests == [request("a.example", "/")] and state.status == http_mod.MALFORMED and not state.overflowed, framing
    # A large body arriving in pieces is stepped over, not buffered.
    big, state = feed_all([b"PUT /f HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"] + [b"GET / HTTP/1.1\r\n\r\n" * 1000] * 55 + [SECOND[:10]])
    assert big == [request(None, "/f")] and state.status == http_mod.NEED_MORE and not state._head


def test_http_chunked_body_with_extensions_and_trailers():
    body = (
        b"7;name=value;other=\"quoted\"\r\nGET / H\r\n"
        b"1A \t;ext\r\n" + b"POST /x HTTP/1.1\r\n\r\nzzzzzz\r\n"
        b"000\r\n"
        b"Trailer-One: 1\r\nGET /trailer HTTP/1.1\r\n\r\n"
    )
    head = b"POST /chunks HTTP/1.1\r\nHost: Chunk.Example\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
    stream = head + body + SECOND
    expected = [request("chunk.example", "/chunks"), request("www.example.org", "/style.css")]
    for cut in range(len(stream) + 1):
        requests, state = feed_all([stream[:cut], stream[cut:]])
        assert requests == expected and state.status == http_mod.NEED_MORE, cut
    assert feed_all([stream[i : i + 1] for i in range(len(stream))])[0] == expected
    # Bare LF line ends and a body without trailers.
    lf = b"POST /lf HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n" + SECOND
    assert feed_all([lf])[0] == [request(None, "/lf"), request("www.example.org", "/style.css")]
    # Transfer-Encoding wins over Content-Length.
    both = b"POST /both HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SECOND
    assert len(feed_all([both])[0]) == 2


def test_http_chunked_framing_errors():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body in (b"\r\n", b"xyz\r\n", b"3xyz\r\n", b"3\r\nabcX", b"3\r\nabc\rX", b"0\r\n\rX", b"1" * 17 + b"\r\n"):
        requests, state = feed_all([head + body + SECOND])
        assert len(requests) == 1 and state.status == http_mod.MALFORMED, body
    # A coding list not ending in chunked leaves the body's end unknown.
    requests, state = feed_all([b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + SECOND])
    assert requests == [request(None, "/")] and state.status == http_mod.MALFORMED
    assert state.feed(SECOND) == []


def test_http_keep_alive_third_request_after_bodies():
    stream = (
        b"POST /form HTTP/1.1\r\nHost: one.example\r\nContent-Length: 11\r\n\r\nhello world"
        b"\r\n"  # a stray CRLF after a body, as old clients send
        b"PUT /data HTTP/1.1\r\nHost: two.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"DELETE /item/7 HTTP/1.1\r\nHost: three.example:8443\r\n\r\n"
    )
    expected = [request("one.example", "/form"), request("two.example", "/data"), request("three.example", "/item/7", 8443)]
    for cut in range(len(stream) + 1):
        assert feed_all([stream[:cut], stream[cut:]])[0] == expected, cut


def test_http_target_forms_host_and_port():
    def one(head: bytes) -> HttpRequest:
        requests, state = feed_all([head])
        assert len(requests) == 1, head
        return requests[0]

    assert one(b"GET http://User:pw@Abs.Example:8080/p/A?q=1 HTTP/1.1\r\nHost: abs.example:8080\r\n\r\n") == request("abs.example", "/p/A?q=1", 8080, "abs.example")
    assert one(b"GET HTTP://abs.example?x HTTP/1.0\r\nHost: hdr.example\r\n\r\n") == request("hdr.example", "/?x", None, "abs.example")
    assert one(b"GET http://[2001:DB8::2]:81 HTTP/1.1\r\n\r\n") == request("2001:db8::2", "/", 81, "2001:db8::2")
    assert one(b"OPTIONS * HTTP/1.1\r\nHost: star.example\r\n\r\n") == request("star.example", "*")
    # Host header: port, mixed case of the name and value, trailing dot, IPv6 literal.
    assert one(b"GET /Case/Kept HTTP/1.1\r\nhOsT: WWW.Example.COM.:8080\r\n\r\n") == request("www.example.com", "/Case/Kept", 8080)
    assert one(b"GET / HTTP/1.1\r\nHOST: [2001:db8::1]:443\r\n\r\n") == request("2001:db8::1", "/", 443)
    assert one(b"GET / HTTP/1.1\r\nHost: example.com:99999\r\n\r\n") == request("example.com", "/", None)
    assert one(b"GET / HTTP/1.1\r\nHost: example.com:http\r\n\r\n") == request("example.com", "/", None)
    # The path's bytes survive: no percent-decoding, no case change, non-ASCII as latin-1.
    assert one(b"GET /%41b/\xc3\xa9 HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n") == request("bücher.example", "/%41b/\xc3\xa9")
    assert one(b"GET  /spaces   HTTP/1.1\nHost: lf.example\n\n") == request("lf.example", "/spaces")


def test_http_connect_then_tls():
    connect = b"CONNECT Tunnel.Example:443 HTTP/1.1\r\nHost: ignored.example:443\r\n\r\n"
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
    stream = FIRST + connect + hello
    expected = [request("www.example.org", "/index.html?q=1"), request("tunnel.example", None, 443, "tunnel.example", True)]
    for cut in range(len(stream) + 1):
        state = HttpRequestStream()
        requests = state.feed(stream[:cut])
        if state.status == http_mod.TUNNEL:
            tunnelled = stream[:cut][state.tunnel_offset :] + stream[cut:]
        else:
            requests += state.feed(stream[cut:])
            tunnelled = stream[cut:][state.tunnel_offset :]
        assert requests == expected and state.status == http_mod.TUNNEL, cut
        assert tunnelled == hello, cut
        assert state.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    state = HttpRequestStream()
    assert state.feed(connect) == [expected[1]] and state.tunnel_offset == len(connect)


def test_http_head_size_bound():
    line = b"GET / HTTP/1.1\r\nHost: big.example\r\n"
    filler = http_mod.MAX_HEADER_LEN - len(line) - len(b"X: \r\n\r\n")
    exact = line + b"X: " + b"a" * filler + b"\r\n\r\n"
    assert len(exact) == http_mod.MAX_HEADER_LEN
    over = line + b"X: " + b"a" * (filler + 1) + b"\r\n\r\n"
    for chunks in ([exact], [exact[:100], exact[100:]], [exact[i : i + 1000] for i in range(0, len(exact), 1000)]):
        assert feed_all(chunks)[0] == [request("big.example", "/")]
    for chunks in ([over], [over[:100], over[100:]], [over[i : i + 1000] for i in range(0, len(over), 1000)]):
        requests, state = feed_all(chunks)
        assert requests == [] and state.status == http_mod.MALFORMED and state.overflowed
        assert len(state._head) == 0
    # The bound counts from each request's start, not from the connection's.
    assert len(feed_all([FIRST * 400])[0]) == 400
    # A head fed one byte at a time costs linear work, not quadratic.
    state = HttpRequestStream()
    started = time.perf_counter()
    for i in range(len(exact)):
        state.feed(exact[i : i + 1])
    assert state.status == http_mod.NEED_MORE and time.perf_counter() - started < 1.0


def test_http_not_http():
    for data in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"get / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET /\r\n\r\n",
        b"A" * (http_mod.MAX_METHOD_LEN + 1) + b" / HTTP/1.1\r\n\r\n",
        bytes(range(256)),
    ):
        state = HttpRequestStream()
        assert state.feed(data) == [] and state.status == http_mod.NOT_HTTP, data
        assert state.feed(FIRST) == []
    # Decided from the first bytes, before a whole head arrived.
    state = HttpRequestStream()
    assert state.feed(b"\x16\x03") == [] and state.status == http_mod.NOT_HTTP
    for prefix in (b"G", b"GET", b"GET /", b"GET / HTTP/1."):
        state = HttpRequestStream()
        assert state.feed(prefix) == [] and state.status == http_mod.NEED_MORE
    # After a request, bytes that are not one (e.g. an upgraded protocol) end the stream.
    requests, state = feed_all([FIRST + b"\x82\x85\x00\x00\x00\x00hello"])
    assert len(requests) == 1 and state.status == http_mod.NOT_HTTP


def test_http_gap_then_resync():
    post = b"POST /upload HTTP/1.1\r\nHost: up.example\r\nContent-Length: 100000\r\n\r\n"
    state = HttpRequestStream()
    assert state.feed(post + b"x" * 500) == [request("up.example", "/upload")]
    state.gap()  # part of the body was lost: where it ends is unknown
    assert state.feed(b"more body bytes\r\n\r\n") == []
    assert state.feed(b"ABC DEF\r\n\r\n") == []  # starts like a method token, but is no request line
    assert state.feed(b"\r\n" + FIRST) == []  # a request must start at a chunk's first byte
    assert state.status == http_mod.NEED_MORE
    assert state.feed(SECOND[:5]) == []
    assert state.feed(SECOND[5:] + FIRST) == [request("www.example.org", "/style.css"), request("www.example.org", "/index.html?q=1")]
    # Once in sync again, bytes that are not a request end the stream as usual.
    assert state.feed(b"\x00\x01") == [] and state.status == http_mod.NOT_HTTP
    # A gap inside a buffered head drops it.
    state = HttpRequestStream()
    state.feed(FIRST[:20])
    state.gap()
    assert state.feed(FIRST[20:]) == [] and state.feed(SECOND) == [request("www.example.org", "/style.css")]
    # A connection picked up mid-stream starts with a gap.
    state = HttpRequestStream()
    state.gap()
    assert state.feed(b"\x00tail of something") == [] and state.status == http_mod.NEED_MORE
    assert state.feed(FIRST) == [request("www.example.org", "/index.html?q=1")]
    # An oversized head after a gap is discarded too.
    state = HttpRequestStream()
    state.gap()
    assert state.feed(b"GET /" + b"a" * http_mod.MAX_HEADER_LEN) == [] and state.status == http_mod.NEED_MORE and not state.overflowed
    assert state.feed(SECOND) == [request("www.example.org", "/style.css")]


def test_http_any_bytes_like_and_first_request_end():
    for form in (bytearray(FIRST + SECOND), memoryview(b"xx" + FIRST + SECOND)[2:]):
        assert len(feed_all([form])[0]) == 2
    assert feed_all([b""])[0] == []
    # The first request's head ends exactly at len(FIRST): the byte before it completes nothing,
    # that byte completes the first request, and the second request starts right after it.
    stream = FIRST + SECOND
    state = HttpRequestStream()
    assert state.feed(stream[: len(FIRST) - 1]) == [] and state.status == http_mod.NEED_MORE
    assert state.feed(stream[len(FIRST) - 1 : len(FIRST)]) == [request("www.example.org", "/index.html?q=1")]
    assert state.feed(stream[len(FIRST) :]) == [request("www.example.org", "/style.css")] and state.status == http_mod.NEED_MORE


def test_http_fuzz_never_raises():
    rng = random.Random(8080)
    seeds = [
        FIRST + SECOND,
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n" + SECOND,
        b"POST /l HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + FIRST,
        b"CONNECT a.example:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
    ]
    for i in range(6000):
        data = mutate(rng, rng.choice(seeds)) if i % 4 else rng.randbytes(rng.randrange(80))
        state = HttpRequestStream()
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
        for start, stop in zip([0] + cuts, cuts + [len(data)]):
            if rng.random() < 0.1:
                state.gap()
            if state.status == http_mod.NEED_MORE and data[start:stop]:
                for found in state._feed(data[start:stop]):  # past feed's exception net
                    assert isinstance(found, HttpRequest) and (found.path is None) == found.connect
            assert state.status in (http_mod.NEED_MORE, http_mod.NOT_HTTP, http_mod.MALFORMED, http_mod.TUNNEL)
            assert len(state._head) <= http_mod.MAX_HEADER_LEN and state._body >= 0


# --------------------------------------------------------------------------------------------
# HTTP requests in a real capture, compared with tshark
# --------------------------------------------------------------------------------------------


def _tshark_http_requests(path: Path) -> list[tuple[str, str]]:
    done = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "http.request", "-T", "fields", "-e", "http.host", "-e", "http.request.uri"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [tuple(line.split("\t")) for line in done.stdout.splitlines() if line]


def _probe_http_requests(path: Path) -> list[tuple[str | None, str | None]]:
    """Every request of every client direction, each direction fed segment by segment in order."""
    directions: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for _number, protocol, key, seq, payload in _segments(path):
        if protocol == "tcp" and payload:
            directions[key].setdefault(seq, payload)  # a retransmission repeats a seq: kept once
    found = []
    for chunks in directions.values():
        requests = feed_all(_in_order(chunks))[0]
        found += [(r.host if r.port is None else f"{r.host}:{r.port}", r.path) for r in requests]
    return found


@pytest.mark.skipif(not CAPTURES.is_dir(), reason=NO_CAPTURES)
@pytest.mark.skipif(shutil.which("tshark") is None, reason=NO_TSHARK)
def test_capture_http_requests_match_tshark():
    path = CAPTURES / "http-bro-org-browsing.pcap"
    if not path.is_file():
        pytest.skip(f"{path} is not in the corpus")
    found = _probe_http_requests(path)
    expected = [(host.lower(), uri) for host, uri in _tshark_http_requests(path)]
    assert len(expected) == 31
    assert sorted(found) == sorted(expected)
    truth = json.loads((CAPTURES / "truth" / f"{path.name}.json").read_text())
    assert {host for host, _ in found} == set(truth["http_hosts"])
    assert {uri for _, uri in found} == set(truth["http_uris"])
