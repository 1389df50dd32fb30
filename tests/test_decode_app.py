"""Application-layer name extraction: DNS question names, TLS SNI, HTTP Host.

These parsers see hostile bytes, so besides the expected names the tests check the contracts that
keep the probe alive and honest: never raise (fuzzing calls the internal parsers directly, past the
public functions' safety net, so a bug shows up as an exception instead of a silent MALFORMED),
NEED_MORE for every proper prefix of a valid message (a caller buffering TCP segments must never
be told to give up early), and bounded work on compression and fragmentation bombs.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest

from probe.decode import dns as dns_mod
from probe.decode import http as http_mod
from probe.decode import tls as tls_mod
from probe.decode.dns import dns_query_names, dns_tcp_query_names
from probe.decode.http import HttpRequest, HttpRequestStream
from probe.decode.tls import read_client_hello
from fuzz_support import mutate

CAPTURES = Path(__file__).parents[2] / "shared" / "captures"


# --------------------------------------------------------------------------------------------
# Builders (by hand, so that every byte under test is known)
# --------------------------------------------------------------------------------------------


def wire_name(name: bytes) -> bytes:
    if not name:
        return b"\x00"
    return b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\x00"


def dns_message(*questions: bytes, qdcount: int | None = None, flags: int = 0x0100, tail: bytes = b"") -> bytes:
    """questions: already-encoded QNAMEs; QTYPE A / QCLASS IN is appended to each."""
    count = len(questions) if qdcount is None else qdcount
    header = struct.pack("!HHHHHH", 0x1234, flags, count, 0, 0, 0)
    return header + b"".join(q + b"\x00\x01\x00\x01" for q in questions) + tail


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def hello_body(exts: list[bytes] | None, session_id: bytes = bytes(32), suites=(0x1301, 0x1302, 0xC02F)) -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
    body += b"\x01\x00"
    if exts is not None:
        joined = b"".join(exts)
        body += struct.pack("!H", len(joined)) + joined
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, sizes: list[int] | None = None, content_type: int = 0x16, version: bytes = b"\x03\x01") -> bytes:
    """Split a handshake message into records of the given fragment sizes (rest in the last)."""
    chunks = []
    pos = 0
    for size in sizes or []:
        chunks.append(message[pos : pos + size])
        pos += size
    chunks.append(message[pos:])
    return b"".join(bytes([content_type]) + version + struct.pack("!H", len(c)) + c for c in chunks if c)


def client_hello(sni: bytes | None = b"example.com", extra: tuple[bytes, ...] = (), sizes: list[int] | None = None) -> bytes:
    exts = ([sni_ext(sni)] if sni is not None else []) + list(extra)
    return records(handshake(hello_body(exts)), sizes)


def pq_client_hello(sni: bytes, total: int = 1800) -> bytes:
    """A Chrome-like TLS 1.3 hello with an X25519MLKEM768 (0x11EC) key share, padded to `total`."""
    shares = struct.pack("!HH", 0x11EC, 1216) + bytes(random.Random(7).randbytes(1216))
    shares += struct.pack("!HH", 0x001D, 32) + bytes(32)
    exts = [
        ext(0x0A0A, b""),  # GREASE
        sni_ext(sni),
        ext(23, b""),
        ext(65281, b"\x00"),
        ext(10, struct.pack("!H", 8) + struct.pack("!HHHH", 0x11EC, 0x001D, 0x0017, 0x0018)),
        ext(11, b"\x01\x00"),
        ext(35, b""),
        ext(16, b"\x00\x0c\x02h2\x08http/1.1"),
        ext(5, b"\x01\x00\x00\x00\x00"),
        ext(13, b"\x00\x08\x04\x03\x08\x04\x04\x01\x05\x03"),
        ext(51, struct.pack("!H", len(shares)) + shares),
        ext(45, b"\x01\x01"),
        ext(43, b"\x06\x0a\x0a\x03\x04\x03\x03"),
        ext(27, b"\x02\x00\x02"),
    ]
    base = len(records(handshake(hello_body(exts))))
    pad = total - base - 4
    assert pad >= 0
    exts.append(ext(21, bytes(pad)))
    out = records(handshake(hello_body(exts)))
    assert len(out) == total
    return out


# --------------------------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------------------------


def test_dns_scapy_query_and_response():
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    query = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="WWW.Example.COM.", qtype="AAAA")))
    assert dns_query_names(query) == ["www.example.com"]
    response = DNS(
        id=7,
        qr=1,
        qd=DNSQR(qname="www.example.com"),
        an=[DNSRR(rrname="www.example.com", rdata="192.0.2.1"), DNSRR(rrname="www.example.com", rdata="192.0.2.2")],
    )
    compressed = bytes(response.compress()) if hasattr(response, "compress") else bytes(response)
    assert dns_query_names(compressed) == ["www.example.com"]
    assert dns_query_names(bytes(response)) == ["www.example.com"]
    two = bytes(DNS(qd=[DNSQR(qname="a.example"), DNSQR(qname="B.example.")]))
    assert dns_query_names(two) == ["a.example", "b.example"]


def test_dns_accepts_any_bytes_like():
    msg = dns_message(wire_name(b"Host.Example"))
    for form in (msg, bytearray(msg), memoryview(msg), memoryview(b"xx" + msg)[2:]):
        assert dns_query_names(form) == ["host.example"]


def test_dns_compression_pointers_in_question():
    first = wire_name(b"www.example.com")
    # Second question: "mail" + pointer to "example.com" inside the first question (offset 12+4).
    second = b"\x04mail\xc0" + bytes([12 + 4])
    # Third: a bare pointer to the second question, which itself ends in a pointer (a chain).
    third_off = 12 + len(first) + 4
    third = b"\xc0" + bytes([third_off])
    msg = dns_message(first, second, third)
    assert dns_query_names(msg) == ["www.example.com", "mail.example.com", "mail.example.com"]


def test_dns_pointer_loops_and_bad_pointers():
    self_loop = dns_message(b"\xc0\x0c")
    assert dns_query_names(self_loop) == []
    # a -> pointer to b; b -> pointer back to a
    two_loop = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\xc0\x11" + b"\x01b\xc0\x0c" + b"\x00\x01\x00\x01"
    assert dns_query_names(two_loop) == []
    into_header = dns_message(b"\x01a\xc0\x02")
    assert dns_query_names(into_header) == []
    past_end = dns_message(b"\x01a\xc0\xff")
    assert dns_query_names(past_end) == []
    cut_pointer = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\xc0"
    assert dns_query_names(cut_pointer) == []
    # A forward pointer (legal target, odd but harmless) is followed.
    forward = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x12\x00\x01\x00\x01" + wire_name(b"fwd.example")
    assert dns_query_names(forward) == ["fwd.example"]


def test_dns_pointer_chain_limit():
    # A chain of MAX_POINTER_HOPS + 1 pointers each to the next: refused; one fewer: accepted.
    def chain(hops: int) -> bytes:
        header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
        question_len = 2 + 4
        body = bytearray(b"\xc0\x00\x00\x01\x00\x01")
        base = 12 + question_len
        for i in range(hops - 1):
            body += struct.pack("!H", 0xC000 | (base + 2 * (i + 1)))
        body += wire_name(b"deep.example")
        body[0:2] = struct.pack("!H", 0xC000 | base)
        return header + bytes(body)

    assert dns_query_names(chain(dns_mod.MAX_POINTER_HOPS)) == ["deep.example"]
    assert dns_query_names(chain(dns_mod.MAX_POINTER_HOPS + 1)) == []


def test_dns_name_length_limit_and_label_types():
    ok = b".".join([b"a" * 63] * 3 + [b"b" * 61])  # 3*64 + 62 + 1 = 255 octets on the wire
    too_long = b".".join([b"a" * 63] * 3 + [b"b" * 62])  # 256
    assert dns_query_names(dns_message(wire_name(ok))) == [ok.decode()]
    assert dns_query_names(dns_message(wire_name(too_long))) == []
    # The same limit applies to a name assembled through a pointer.
    prefix = wire_name(b"a" * 63 + b"." + b"a" * 63 + b"." + b"a" * 63)[:-1]  # 192 octets
    fits = dns_message(wire_name(b"b" * 51 + b".x.example"), prefix + b"\xc0\x0c")  # 192 + 63
    assert len(dns_query_names(fits)) == 2
    spliced = dns_message(wire_name(b"b" * 52 + b".x.example"), prefix + b"\xc0\x0c")  # 192 + 64
    assert dns_query_names(spliced) == []
    assert dns_query_names(dns_message(b"\x41abc\x00")) == []  # 0x40 extended label type
    assert dns_query_names(dns_message(b"\x81abc\x00")) == []  # 0x80 reserved


def test_dns_counts_roots_and_sizes():
    assert dns_query_names(b"") == []
    assert dns_query_names(bytes(12)) == []
    assert dns_query_names(dns_message(wire_name(b"a.example"), qdcount=0)) == []
    assert dns_query_names(dns_message(wire_name(b"a.example"), qdcount=2)) == []  # second missing
    assert dns_query_names(dns_message(b"\x00")) == []  # root: no entry
    assert dns_query_names(dns_message(b"\x00", wire_name(b"ns.example"))) == ["ns.example"]
    assert dns_query_names(dns_message(wire_name(b"a.example"))[:-1]) == []  # QCLASS cut
    # A '.' byte inside the last label does not produce a trailing dot.
    assert dns_query_names(dns_message(b"\x02a.\x00")) == ["a"]
    # mDNS: many questions in one query, each a pointer to a shared suffix.
    first = wire_name(b"_ipp._tcp.local")
    others = [bytes([len(s)]) + s + b"\xc0\x11" for s in (b"_svc%d" % i for i in range(16))]
    names = dns_query_names(dns_message(first, *others, flags=0))
    assert names[0] == "_ipp._tcp.local" and names[1] == "_svc0._tcp.local" and len(names) == 17
    capped = dns_message(*([wire_name(b"q.example")] * (dns_mod.MAX_QUESTIONS + 5)))
    assert len(dns_query_names(capped)) == dns_mod.MAX_QUESTIONS


def test_dns_non_ascii_labels():
    assert dns_query_names(dns_message(wire_name("Ünï.Example".encode()))) == ["Ünï.example"]  # ASCII-only lowering
    assert dns_query_names(dns_message(wire_name(b"\xe9t\xc9.EXAMPLE"))) == ["\xe9t\xc9.example"]


def test_dns_compression_bomb_is_bounded():
    # 64 questions each pointing at a 127-label name: ~10,000 label reads without a budget.
    long_name = wire_name(b".".join([b"a"] * 127))
    questions = [long_name] + [b"\xc0\x0c"] * 63
    msg = dns_message(*questions)
    started = time.perf_counter()
    assert dns_query_names(msg) == []
    assert time.perf_counter() - started < 0.05


def test_dns_every_prefix_never_raises():
    msg = dns_message(wire_name(b"www.example.com"), b"\x04mail\xc0\x10")
    assert dns_query_names(msg) == ["www.example.com", "mail.example.com"]
    for cut in range(len(msg)):
        assert dns_query_names(msg[:cut]) == []


def test_dns_tcp_framing():
    m1 = dns_message(wire_name(b"one.example"))
    m2 = dns_message(wire_name(b"two.example"))
    stream = struct.pack("!H", len(m1)) + m1 + b"\x00\x00" + struct.pack("!H", len(m2)) + m2
    assert dns_tcp_query_names(stream) == (["one.example", "two.example"], len(stream))
    for cut in range(len(stream) + 1):
        names, used = dns_tcp_query_names(memoryview(stream)[:cut])
        rest_names, rest_used = dns_tcp_query_names(stream[used:])
        assert names + rest_names == ["one.example", "two.example"]
        assert used + rest_used == len(stream)
    assert dns_tcp_query_names(b"\x01") == ([], 0)
    assert dns_tcp_query_names(b"\xff\xff" + bytes(100)) == ([], 0)


def test_dns_scapy_tcp_stream():
    from scapy.layers.dns import DNS, DNSQR

    msgs = [bytes(DNS(id=i, qd=DNSQR(qname=f"h{i}.Example.org"))) for i in range(3)]
    stream = b"".join(struct.pack("!H", len(m)) + m for m in msgs)
    assert dns_tcp_query_names(stream) == (["h0.example.org", "h1.example.org", "h2.example.org"], len(stream))


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def assert_prefix_contract(stream: bytes, name: str | None) -> None:
    """Every proper prefix waits (with a sound lower bound); the whole stream yields the name."""
    for cut in range(len(stream)):
        result = read_client_hello(stream[:cut])
        assert result.status == tls_mod.NEED_MORE, (cut, result)
        assert cut < result.end <= len(stream), (cut, result)
    result = read_client_hello(stream)
    assert result[:3] == (tls_mod.DONE, name, len(stream))


_SCAPY_TLS_HELLO = """
import sys
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS
hello = TLS(msg=[TLSClientHello(ciphers=[0x1301, 0xC02F], ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=b"Scapy.Example.")])])])
sys.stdout.write(bytes(hello).hex())
"""


def test_tls_scapy_client_hello():
    # In a child process: importing scapy's TLS layer binds it to TCP/443 for the whole process,
    # which would change how the capture test below sees TCP payloads.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SCAPY_TLS_HELLO], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:  # scapy's TLS layer needs the `cryptography` package to build records
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"scapy TLS layer unusable here: {last}")
    stream = bytes.fromhex(done.stdout)
    assert read_client_hello(stream)[:3] == (tls_mod.DONE, "scapy.example", len(stream))


def test_tls_single_record():
    stream = client_hello(b"WWW.Example.COM.")
    assert read_client_hello(stream)[:3] == (tls_mod.DONE, "www.example.com", len(stream))
    assert read_client_hello(bytearray(stream)).server_name == "www.example.com"
    assert read_client_hello(memoryview(b"zz" + stream)[2:]).server_name == "www.example.com"
    assert_prefix_contract(stream, "www.example.com")


def test_tls_without_sni():
    no_sni = client_hello(None, extra=(ext(10, b"\x00\x02\x00\x1d"),))
    assert read_client_hello(no_sni)[:3] == (tls_mod.DONE, None, len(no_sni))
    no_exts = records(handshake(hello_body(None)))
    assert read_client_hello(no_exts)[:3] == (tls_mod.DONE, None, len(no_exts))
    empty_sni_ext = records(handshake(hello_body([ext(0, b"")])))
    assert read_client_hello(empty_sni_ext).status == tls_mod.DONE
    other_type = client_hello(None, extra=(sni_ext(b"x.example", name_type=7),))
    assert read_client_hello(other_type)[:3] == (tls_mod.DONE, None, len(other_type))


@pytest.mark.parametrize("first", [1, 2, 3, 4, 5, 40, 60])
def test_tls_split_over_two_records(first):
    stream = client_hello(b"split.example", sizes=[first])
    assert stream.count(b"\x16\x03\x01") >= 2
    assert_prefix_contract(stream, "split.example")


def test_tls_split_over_many_records():
    message = handshake(hello_body([sni_ext(b"tiny.example")]))
    one_byte = records(message, sizes=[1] * (len(message) - 1))
    assert read_client_hello(one_byte)[:3] == (tls_mod.DONE, "tiny.example", len(one_byte))
    # TLS 1.2 record version and a split in the middle of the name itself.
    at_name = records(message, sizes=[len(message) - 5], version=b"\x03\x03")
    assert_prefix_contract(at_name, "tiny.example")


def test_tls_too_many_records_is_malformed_and_fast():
    message = handshake(hello_body([sni_ext(b"x.example"), ext(21, bytes(3000))]))
    stream = records(message, sizes=[1] * (len(message) - 1))
    started = time.perf_counter()
    assert read_client_hello(stream).status == tls_mod.MALFORMED
    assert time.perf_counter() - started < 0.1


def test_tls_post_quantum_hello_over_two_segments():
    stream = pq_client_hello(b"pq.Example.net")
    assert len(stream) == 1800
    assert b"\x11\xec\x04\xc0" in stream  # group 0x11EC, 1216-byte share
    first_segment = stream[:1448]
    result = read_client_hello(first_segment)
    assert result.status == tls_mod.NEED_MORE and result.end == 1800
    assert_prefix_contract(stream, "pq.example.net")
    fragmented = records(stream[5:], sizes=[1000])
    assert read_client_hello(fragmented)[:3] == (tls_mod.DONE, "pq.example.net", len(fragmented))


def test_tls_done_end_and_following_records():
    hello = client_hello(b"a.example")
    ccs = b"\x14\x03\x03\x00\x01\x01"
    early = b"\x17\x03\x03\x00\x05hello"
    assert read_client_hello(hello + ccs + early)[:3] == (tls_mod.DONE, "a.example", len(hello))
    # The record completing the hello also carries the start of another handshake message.
    message = handshake(hello_body([sni_ext(b"b.example")]))
    stream = records(message + b"\x0f\x00\x00\x10", sizes=[30])
    result = read_client_hello(stream)
    assert result[:3] == (tls_mod.DONE, "b.example", len(stream))


def test_tls_not_tls():
    for data in (
        b"GET / HTTP/1.1\r\n",
        b"\x17\x03\x03\x00\x10",
        b"\x16\x02\x00",
        b"\x16\x03\x01\x00\x40\x02",  # ServerHello
        b"\x80\x2e\x01\x03\x01\x00\x15",  # SSLv2-compatible ClientHello
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00",
    ):
        assert read_client_hello(data)[:3] == (tls_mod.NOT_TLS, None, 0), data
    assert read_client_hello(b"").status == tls_mod.NEED_MORE


def test_tls_malformed():
    good_body = hello_body([sni_ext(b"m.example")])

    def body_cases():
        yield b"\x03\x03" + bytes(32) + b"\x21" + bytes(33) + good_body[67:]  # session id > 32
        yield good_body[:35] + b"\x00\x03\x13\x01\x13" + good_body[41:]  # odd suites length
        yield good_body[:-1]  # server_name extension cut short
        # Extensions block length at 77..78, first extension length at 81..82.
        yield good_body[:77] + (int.from_bytes(good_body[77:79], "big") + 4).to_bytes(2, "big") + good_body[79:]
        yield good_body[:81] + b"\x00\x40" + good_body[83:]
        yield hello_body([sni_ext(b"a.example"), sni_ext(b"b.example")])  # two SNI extensions
        yield hello_body([ext(0, b"\x00\x05\x00\x00\x09abc")])  # name overruns list
        yield hello_body([ext(0, b"\x00\x01\x00")])  # entry header cut

    for body in body_cases():
        stream = records(handshake(body))
        assert read_client_hello(stream).status == tls_mod.MALFORMED, body.hex()
    tiny = records(handshake(bytes(40)))
    assert read_client_hello(tiny).status == tls_mod.MALFORMED
    huge = b"\x16\x03\x01\x40\x00\x01" + (tls_mod.MAX_HELLO_LEN + 1).to_bytes(3, "big")
    assert read_client_hello(huge).status == tls_mod.MALFORMED
    huge_split = b"\x16\x03\x01\x00\x02\x01\x01" + b"\x16\x03\x01\x00\x02\x00\x01"
    assert read_client_hello(huge_split).status == tls_mod.MALFORMED
    assert read_client_hello(b"\x16\x03\x01\x00\x00\x01").status == tls_mod.MALFORMED
    assert read_client_hello(b"\x16\x03\x01\x48\x01\x01").status == tls_mod.MALFORMED
    message = handshake(good_body)
    interleaved = records(message[:20]) + b"\x15\x03\x01\x00\x02\x01\x00" + records(message[20:])
    assert read_client_hello(interleaved).status == tls_mod.MALFORMED
    wrong_major = records(message[:20]) + b"\x16\x02\x01"
    assert read_client_hello(wrong_major).status == tls_mod.MALFORMED


def test_tls_non_ascii_sni():
    assert read_client_hello(client_hello("bücher.Example".encode())).server_name == "bücher.example"
    assert read_client_hello(client_hello(b"\xff.example")).server_name == "\xff.example"
    assert read_client_hello(client_hello(b".")).server_name is None


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def http_feed(data) -> tuple[list[HttpRequest], HttpRequestStream]:
    """A new HttpRequestStream fed `data` in one call: the requests it returned, and the stream."""
    stream = HttpRequestStream()
    return stream.feed(data), stream


def http_one(data) -> HttpRequest:
    """The one request whose head `data` holds."""
    requests, _ = http_feed(data)
    assert len(requests) == 1, bytes(data)
    return requests[0]


def http_head_end(data: bytes) -> int:
    """Offset just after the first request head in `data` (0 if none): fed one byte at a time,
    the stream returns a request with the byte that completes its head."""
    stream = HttpRequestStream()
    for i in range(len(data)):
        if stream.feed(data[i : i + 1]):
            return i + 1
    return 0


def assert_http_prefixes_wait(stream: bytes) -> None:
    for cut in range(len(stream)):
        requests, state = http_feed(stream[:cut])
        assert requests == [] and state.status == http_mod.NEED_MORE, stream[:cut]


def test_http_scapy_request():
    from scapy.layers.http import HTTP, HTTPRequest

    request = bytes(HTTP() / HTTPRequest(Method=b"GET", Path=b"/index.html", Host=b"Www.Example.ORG:8080", User_Agent=b"t"))
    requests, state = http_feed(request)
    assert requests == [HttpRequest("www.example.org", 8080, "/index.html", None, False)] and state.status == http_mod.NEED_MORE
    assert http_head_end(request) == len(request)
    assert_http_prefixes_wait(request)
    post = bytes(HTTP() / HTTPRequest(Method=b"POST", Path=b"/api", Host=b"api.example", Content_Length=b"2") / b"{}")
    assert http_one(post).host == "api.example" and post[http_head_end(post) :] == b"{}"


def test_http_host_header_forms():
    def host(value: bytes) -> str | None:
        return http_one(b"GET / HTTP/1.1\r\nAccept: */*\r\n" + value + b"\r\n\r\n").host

    assert host(b"Host: Example.COM") == "example.com"
    assert host(b"hOsT:example.com:443") == "example.com"
    assert host(b"HOST: \t example.com. \t") == "example.com"
    assert host(b"Host: example.com.:8080") == "example.com"
    assert host(b"Host: [2001:DB8::1]:8080") == "2001:db8::1"
    assert host(b"Host: [2001:db8::1]") == "2001:db8::1"
    assert host(b"Host: 2001:db8::1") == "2001:db8::1"  # unbracketed literal kept whole
    assert host(b"Host: 192.0.2.7:80") == "192.0.2.7"
    assert host(b"Host: [broken") is None
    assert host(b"Host:") is None
    assert host(b"X-Forwarded-Host: other.example") is None
    assert host(b"Host : spaced.example") is None  # not a Host field (RFC 9112 5.1)
    two = b"Host: first.example\r\nHost: second.example"
    assert host(two) == "first.example"


def test_http_request_forms():
    r = http_one(b"GET http://User:pw@Abs.Example:8080/p?q=1 HTTP/1.1\r\n\r\n")
    assert (r.host, r.target_host) == ("abs.example", "abs.example")
    r = http_one(b"GET HTTP://abs.example?x HTTP/1.0\r\nHost: hdr.example\r\n\r\n")
    assert (r.host, r.target_host) == ("hdr.example", "abs.example")
    r = http_one(b"GET http://[2001:db8::2]:81/ HTTP/1.1\r\n\r\n")
    assert r.host == "2001:db8::2"
    r = http_one(b"OPTIONS * HTTP/1.1\r\nHost: star.example\r\n\r\n")
    assert (r.host, r.target_host) == ("star.example", None)
    no_host = b"GET /no-host HTTP/1.0\r\n\r\n"
    assert http_one(no_host) == HttpRequest(None, None, "/no-host", None, False)
    assert http_head_end(no_host) == len(no_host)
    r = http_one(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\r\n")
    assert r.host == "239.255.255.250"
    propfind = b"PROPFIND /d/ HTTP/1.1\nHost: dav.example\n\nbody"
    r = http_one(propfind)
    assert (r.host, http_head_end(propfind)) == ("dav.example", len(b"PROPFIND /d/ HTTP/1.1\nHost: dav.example\n\n"))
    r = http_one(b"GET  /x   HTTP/1.1\r\nHost: spaces.example\r\n\r\n")
    assert r.host == "spaces.example"
    r = http_one(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n")
    assert r.host == "bücher.example"


def test_http_connect_then_client_hello():
    request = b"CONNECT Tunnel.Example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\nProxy-Connection: keep-alive\r\n\r\n"
    hello = pq_client_hello(b"inner.example")
    stream = request + hello
    requests, state = http_feed(stream)
    assert requests == [HttpRequest("tunnel.example", 443, None, "tunnel.example", True)] and state.status == http_mod.TUNNEL
    assert state.tunnel_offset == len(request)
    assert read_client_hello(stream[state.tunnel_offset :])[:3] == (tls_mod.DONE, "inner.example", len(hello))
    assert_http_prefixes_wait(request)
    v6 = http_one(b"CONNECT [2001:db8::3]:443 HTTP/1.1\r\nHost: ignored.example\r\n\r\n")
    assert (v6.host, v6.connect) == ("2001:db8::3", True)


def test_http_not_http():
    for data in (
        b"\x16\x03\x01\x02\x00\x01",
        b"get / HTTP/1.1\r\n",
        b"GET /\r\n",  # HTTP/0.9
        b"GET / HTTP/2.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET / http/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"EHLO mail.example\r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET \x01 HTTP/1.1\r\n",
        b"GET /\tx HTTP/1.1\r\n",
        b"A" * (http_mod.MAX_METHOD_LEN + 1) + b" / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\rX",
    ):
        requests, state = http_feed(data)
        assert requests == [] and state.status == http_mod.NOT_HTTP, data
    for data in (b"", b"G", b"GET", b"GET ", b"GET /", b"GET / HTTP/1.", b"A" * http_mod.MAX_METHOD_LEN):
        requests, state = http_feed(data)
        assert requests == [] and state.status == http_mod.NEED_MORE, data


def test_http_head_size_limit():
    line = b"GET / HTTP/1.1\r\nHost: big.example\r\n"
    filler_len = http_mod.MAX_HEADER_LEN - len(line) - len(b"X: \r\n\r\n")
    exact = line + b"X: " + b"a" * filler_len + b"\r\n\r\n"
    assert len(exact) == http_mod.MAX_HEADER_LEN
    assert http_one(exact).host == "big.example"
    over = line + b"X: " + b"a" * (filler_len + 1) + b"\r\n\r\n"
    requests, state = http_feed(over)
    assert requests == [] and state.status == http_mod.MALFORMED and state.overflowed
    requests, state = http_feed(over[: http_mod.MAX_HEADER_LEN - 1])
    assert requests == [] and state.status == http_mod.NEED_MORE
    long_target = b"GET /" + b"a" * http_mod.MAX_HEADER_LEN
    requests, state = http_feed(long_target)
    assert requests == [] and state.status == http_mod.MALFORMED and state.overflowed
    requests, state = http_feed(long_target[:1000])
    assert requests == [] and state.status == http_mod.NEED_MORE


def test_http_every_prefix_waits():
    request = b"GET http://abs.example/x HTTP/1.1\r\nUser-Agent: t\r\nHost: [::1]:80\r\n\r\n"
    assert_http_prefixes_wait(request)
    assert http_one(request).host == "::1"
    lf_only = b"HEAD / HTTP/1.0\nHost: lf.example\n\n"
    assert_http_prefixes_wait(lf_only)
    assert http_one(memoryview(lf_only)).host == "lf.example"


# --------------------------------------------------------------------------------------------
# Fuzzing (internal parsers, without the public functions' exception net)
# --------------------------------------------------------------------------------------------


def _check_dns(data: bytes) -> None:
    names = dns_mod._query_names(data)
    assert isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    assert len(names) <= dns_mod.MAX_QUESTIONS
    names, used = dns_tcp_query_names(data)
    assert 0 <= used <= len(data)


def _check_tls(data: bytes) -> None:
    result = tls_mod._parse(data, "t", True)
    assert result.status in (tls_mod.NOT_TLS, tls_mod.NEED_MORE, tls_mod.DONE, tls_mod.MALFORMED)
    if result.status == tls_mod.NEED_MORE:
        assert result.end > len(data)
    assert result.server_name is None or (result.status == tls_mod.DONE and isinstance(result.server_name, str))


def _check_http(data: bytes) -> None:
    stream = HttpRequestStream()
    requests = stream._feed(data)  # past feed's exception net
    assert stream.status in (http_mod.NOT_HTTP, http_mod.NEED_MORE, http_mod.MALFORMED, http_mod.TUNNEL)
    if stream.status == http_mod.TUNNEL:
        assert requests[-1].connect and 0 < stream.tunnel_offset <= len(data)
    assert all(r.host is None or isinstance(r.host, str) for r in requests)


def test_fuzz_random_inputs():
    rng = random.Random(20240501)
    prefixes = [b"", b"\x16\x03\x01", b"\x16\x03\x01\x00\x80\x01\x00\x00\x7c", b"GET ", b"CONNECT ", b"\x12\x34\x01\x00\x00\x01"]
    for i in range(20000):
        data = rng.choice(prefixes) + rng.randbytes(rng.randrange(0, 300))
        _check_dns(data)
        _check_tls(data)
        _check_http(data)
        if i % 4 == 0:
            # Random bytes that are mostly HTTP-ish text.
            text = bytes(rng.choice(b"GET /HTTP1.0:\r\n host[]") for _ in range(rng.randrange(60)))
            _check_http(text)


def test_fuzz_mutated_valid_messages():
    rng = random.Random(99)
    seeds = [
        dns_message(wire_name(b"www.example.com"), b"\x04mail\xc0\x10"),
        dns_message(wire_name(b"a.b.c.d.example"), qdcount=3),
        client_hello(b"fuzz.example"),
        client_hello(b"fuzz.example", sizes=[3, 30]),
        pq_client_hello(b"pq.example"),
        b"GET http://a.example/ HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\n\r\n" + client_hello(b"in.example"),
    ]
    for seed in seeds:
        for _ in range(3000):
            data = mutate(rng, seed)
            _check_dns(data)
            _check_tls(data)
            _check_http(data)
    # Public entry points with the same kind of input, all three accept bytes-likes.
    for _ in range(2000):
        data = mutate(rng, rng.choice(seeds))
        dns_query_names(memoryview(data))
        read_client_hello(bytearray(data))
        HttpRequestStream().feed(memoryview(data))


# --------------------------------------------------------------------------------------------
# Real captures (a test aid; the full conformance run lives elsewhere)
# --------------------------------------------------------------------------------------------

def _has_names(capture: Path) -> bool:
    truth = capture.parent / "truth" / f"{capture.name}.json"
    return truth.is_file() and any(json.loads(truth.read_text()).get(key) for key in ("dns_qnames", "tls_sni", "http_hosts"))


_CAPTURE_FILES = sorted(p.name for p in CAPTURES.glob("*.pcap*") if _has_names(p)) if CAPTURES.is_dir() else []


def _truth_host(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host[1 : host.find("]")]
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def _transport_payload(layer) -> bytes:
    """Payload of a dissected TCP/UDP layer, from the IP length, not from scapy's upper layers.

    Scapy's class for the payload depends on which layers are loaded (its TLS layer, once
    imported anywhere in the process, turns TCP/443 payloads into Padding when it cannot parse
    them), so only the byte counts are trusted.
    """
    from scapy.all import IP, UDP, IPv6

    raw = bytes(layer)
    header = 8 if isinstance(layer, UDP) else layer.dataofs * 4
    if isinstance(layer, UDP) and layer.len:
        return raw[header : max(header, layer.len)]
    ip = layer.underlayer
    while ip is not None and not isinstance(ip, (IP, IPv6)):
        ip = ip.underlayer
    if isinstance(ip, IP) and ip.len:
        return raw[header : max(header, ip.len - ip.ihl * 4)]
    if isinstance(ip, IPv6) and ip.plen:
        ext_len = len(bytes(ip.payload)) - len(raw)
        return raw[header : max(header, ip.plen - ext_len)]
    return raw[header:]


def _names_in_capture(path: Path) -> tuple[set[str], set[str], set[str]]:
    from scapy.all import IP, TCP, UDP, IPv6, Loopback, PcapReader

    dns_names: set[str] = set()
    segments: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    http_hosts: set[str] = set()
    try:
        reader = PcapReader(str(path))
        packets = []
        for pkt in reader:  # the corrupt capture ends in a cut record: keep what came before
            packets.append(pkt)
    except Exception:
        pass
    for pkt in packets:
        if pkt.haslayer(Loopback) and not (pkt.haslayer(IP) or pkt.haslayer(IPv6)):
            raw = bytes(pkt)[4:]  # BSD AF_INET6 = 30 is not known to scapy's DLT_NULL decoder
            pkt = IPv6(raw) if raw and raw[0] >> 4 == 6 else IP(raw)
        for kind in (UDP, TCP):
            for nb in (1, 2, 3):  # tunnels: inner layers too
                layer = pkt.getlayer(kind, nb=nb)
                if layer is None:
                    break
                payload = _transport_payload(layer)
                ports = (layer.sport, layer.dport)
                if kind is UDP:
                    if {53, 5353, 5355} & set(ports):
                        dns_names.update(dns_query_names(payload))
                    if 1900 in ports:
                        http_hosts.update(r.host for r in HttpRequestStream().feed(payload) if r.host)
                elif payload:
                    key = (layer.underlayer.src, layer.underlayer.dst, *ports)
                    segments[key].setdefault(layer.seq, payload)
    sni: set[str] = set()
    for key, by_seq in segments.items():
        ordered = sorted(by_seq.items())
        base = ordered[0][0]
        stream = b""
        for seq, payload in ordered:
            offset = (seq - base) % 2**32
            if offset <= len(stream) < offset + len(payload):
                stream = stream[:offset] + payload
        if 53 in key[2:]:
            dns_names.update(dns_tcp_query_names(stream)[0])
        hello = read_client_hello(stream)
        if hello.server_name:
            sni.add(hello.server_name)
        requests, state = http_feed(stream)
        http_hosts.update(r.host for r in requests if r.host)
        if state.status == http_mod.TUNNEL:
            hello = read_client_hello(stream[state.tunnel_offset :])
            if hello.server_name:
                sni.add(hello.server_name)
    return dns_names, sni, http_hosts


@pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"no shared capture corpus at {CAPTURES}")
@pytest.mark.parametrize("name", _CAPTURE_FILES)
def test_capture_names_match_truth(name):
    truth_path = CAPTURES / "truth" / f"{name}.json"
    if not truth_path.is_file():
        pytest.skip(f"no truth file for {name}")
    truth = json.loads(truth_path.read_text())
    want_dns = {n.lower().rstrip(".") for n in truth.get("dns_qnames", [])}
    want_sni = {n.lower().rstrip(".") for n in truth.get("tls_sni", [])}
    want_http = {_truth_host(h) for h in truth.get("http_hosts", [])}
    dns_names, sni, http_hosts = _names_in_capture(CAPTURES / name)
    assert want_dns <= dns_names, sorted(want_dns - dns_names)
    assert want_sni <= sni, sorted(want_sni - sni)
    assert want_http <= http_hosts, sorted(want_http - http_hosts)
