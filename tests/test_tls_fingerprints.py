"""JA3 / JA4 of ClientHellos and SHA-256 of server certificates (probe/decode/tls.py).

References, so that the tests do not check the code against itself:
* JA4: the worked example of FoxIO's specification (technical_details/JA4.md) and the outputs FoxIO
  publishes for its own test captures (captures/ja4/expected.json, captures/ja4/LICENSE-NOTICE.md);
* JA3: tshark's `tls.handshake.ja3` of the shared corpus (../shared/captures/truth/*.json);
* certificates: the DER bytes tshark dissects, hashed here.
The QUIC ClientHellos are taken out of their encrypted Initial packets by tshark (`-x` prints the
decrypted and reassembled CRYPTO data), then handed to fingerprint_client_hello.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import struct
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from probe.capture.reader import read_capture
from probe.decode import tls
from probe.decode.fragments import FragmentReassembler
from probe.decode.frame import FrameDecoder
from probe.decode.packet import PROTO_TCP, TCP_SYN
from probe.decode.tls import fingerprint_client_hello, read_client_hello, read_server_certificates
from fuzz_support import mutate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "captures"
PROJECT_CAPTURES = Path(__file__).resolve().parents[1] / "captures"
JA4_CAPTURES = PROJECT_CAPTURES / "ja4"
JA4_EXPECTED = json.loads((JA4_CAPTURES / "expected.json").read_text())["captures"]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (the README's set-up installs it)")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared capture corpus not found at {SHARED} (it sits beside the project root)")


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def u16s(values, length_bytes: int = 2) -> bytes:
    data = b"".join(struct.pack("!H", value) for value in values)
    return len(data).to_bytes(length_bytes, "big") + data


def sni_body(name: bytes) -> bytes:
    entry = struct.pack("!BH", 0, len(name)) + name
    return struct.pack("!H", len(entry)) + entry


def alpn_body(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return struct.pack("!H", len(entries)) + entries


def handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def hello_message(ciphers, extensions: list[bytes] | None, version: int = 0x0303) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32)) + b"\x20" + bytes(32) + u16s(ciphers) + b"\x01\x00"
    if extensions is not None:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return handshake(1, body)


def records(data: bytes, sizes=(), content_type: int = 0x16) -> bytes:
    """`data` in records of the given fragment sizes, the rest in one last record."""
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return b"".join(bytes([content_type, 3, 3]) + struct.pack("!H", len(c)) + c for c in out if c)


# The example of the JA4 specification (technical_details/JA4.md, "Example"): its 15 ciphers, its 16
# extensions in their order, its signature algorithms; it gives t13d1516h2_8daaf6152771_e5627efa2ab1.
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
SPEC_SIGNATURES = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
# The same hello's JA3 string, written out by hand from the JA3 definition (GREASE-free).
SPEC_JA3_TEXT = "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,27-0-51-16-17513-23-45-13-5-35-18-43-65281-11-10-21,29-23-24,0"


def spec_extensions(grease: bool = False, replace: dict[int, bytes] | None = None, drop=()) -> list[bytes]:
    grease_values = [0x2A2A] if grease else []
    bodies = {
        0x001B: b"\x02\x00\x02",
        0x0000: sni_body(b"example.com"),
        0x0033: struct.pack("!HHH", 36, 0x001D, 32) + bytes(32),
        0x0010: alpn_body(b"h2", b"http/1.1"),
        0x4469: b"\x00\x03\x02h2",
        0x0017: b"",
        0x002D: b"\x01\x01",
        0x000D: u16s(([0x3A3A] if grease else []) + SPEC_SIGNATURES),
        0x0005: b"\x01\x00\x00\x00\x00",
        0x0023: b"",
        0x0012: b"",
        0x002B: u16s(grease_values + [0x0304, 0x0303], 1),
        0xFF01: b"\x00",
        0x000B: b"\x01\x00",
        0x000A: u16s(grease_values + [0x001D, 0x0017, 0x0018]),
        0x0015: bytes(10),
    }
    bodies.update(replace or {})
    out = [ext(t, b) for t, b in bodies.items() if t not in drop]
    if grease:
        out.insert(0, ext(0x1A1A, b""))
        out.append(ext(0xFAFA, b"\x00"))
    return out


def spec_hello(grease: bool = False, **changes) -> bytes:
    ciphers = ([0x0A0A] if grease else []) + SPEC_CIPHERS
    return hello_message(ciphers, spec_extensions(grease, **changes))


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# JA4 / JA3 rules
# --------------------------------------------------------------------------------------------


def test_ja4_specification_example():
    message = spec_hello()
    result = read_client_hello(records(message))
    assert result.status == tls.DONE and result.server_name == "example.com"
    assert result.ja4 == SPEC_JA4
    assert result.ja3 == hashlib.md5(SPEC_JA3_TEXT.encode()).hexdigest()
    # The spec's raw form, hashed here: the extension list and its signature algorithms.
    assert SPEC_JA4.endswith(sha12("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"))


def test_grease_is_left_out_everywhere():
    plain = read_client_hello(records(spec_hello()))
    greased_message = spec_hello(grease=True)
    for value in (b"\x0a\x0a", b"\x1a\x1a", b"\x2a\x2a", b"\x3a\x3a", b"\xfa\xfa"):
        assert value in greased_message
    greased = read_client_hello(records(greased_message))
    assert (greased.ja3, greased.ja4, greased.server_name) == (plain.ja3, plain.ja4, plain.server_name)
    # Every GREASE value of RFC 8701 and nothing else.
    assert tls._GREASE == {0x0A0A + 0x1010 * i for i in range(16)}


def test_ja4_underscore_and_signatures():
    # The spec: without signature algorithms the list "ends without an underscore" (6d807ffa2a79).
    empty = read_client_hello(records(spec_hello(replace={0x000D: u16s([])})))
    assert empty.ja4 == "t13d1516h2_8daaf6152771_6d807ffa2a79"
    absent = read_client_hello(records(spec_hello(drop=(0x000D,))))
    assert absent.ja4 == "t13d1515h2_8daaf6152771_" + sha12("0005,000a,000b,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01")
    # Signature algorithms keep their order (only the extensions are sorted).
    reordered = read_client_hello(records(spec_hello(replace={0x000D: u16s(SPEC_SIGNATURES[::-1])})))
    assert reordered.ja4.split("_")[2] == sha12("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_" + ",".join(f"{s:04x}" for s in SPEC_SIGNATURES[::-1]))


def test_ja4_empty_lists_are_zeros():
    # Only SNI and ALPN: both are counted but not hashed, leaving an empty list.
    only_named = read_client_hello(records(hello_message([0x1301], [ext(0, sni_body(b"a.example")), ext(16, alpn_body(b"h2"))])))
    assert only_named.ja4 == f"t12d0102h2_{sha12('1301')}_000000000000"
    # Only GREASE cipher suites: none counted, none hashed.
    grease_only = read_client_hello(records(hello_message([0x0A0A], [ext(13, u16s([0x0403]))])))
    assert grease_only.ja4 == f"t12i000100_000000000000_{sha12('000d_0403')}"
    # No extensions at all: JA3 keeps its empty fields.
    bare = read_client_hello(records(hello_message([0x002F, 0x0035], None, version=0x0301)))
    assert bare.ja4 == f"t10i020000_{sha12('002f,0035')}_000000000000"
    assert bare.ja3 == hashlib.md5(b"769,47-53,,,").hexdigest()


@pytest.mark.parametrize(
    ("protocols", "code"),
    [
        ((b"h2", b"http/1.1"), "h2"),
        ((b"http/1.1",), "h1"),
        ((b"h",), "hh"),  # a single character is both the first and the last
        ((b"",), "00"),  # an empty first value
        ((), "00"),  # an empty list
        (None, "00"),  # no ALPN extension
        # The specification's hex examples.
        ((b"\xab",), "ab"),
        ((b"\x20",), "20"),
        ((b"\xab\xcd",), "ad"),
        ((b"\x20\x61",), "21"),
        ((b"\x30\xab",), "3b"),
        ((b"\x61\x20",), "60"),
        ((b"\x30\x31\xab\xcd",), "3d"),
        ((b"\x30\xab\xcd\x31",), "01"),
    ],
)
def test_ja4_alpn_characters(protocols, code):
    extensions = [ext(0, sni_body(b"a.example"))] + ([] if protocols is None else [ext(16, alpn_body(*protocols))])
    result = read_client_hello(records(hello_message([0x1301], extensions)))
    assert result.status == tls.DONE
    assert result.ja4[8:10] == code


@pytest.mark.parametrize(
    ("legacy", "supported", "code"),
    [
        (0x0303, None, "12"),
        (0x0302, None, "11"),
        (0x0301, None, "10"),
        (0x0300, None, "s3"),
        (0x0304, None, "13"),
        (0x0305, None, "00"),  # unknown
        (0x0303, [0x0A0A, 0x0304, 0x0303], "13"),  # the highest non-GREASE value
        (0x0303, [0x0302, 0x0301], "11"),
        (0x0301, [0x0303, 0xFAFA], "12"),
        (0x0303, [0x1A1A], "12"),  # only GREASE: the legacy version
        (0x0303, [0x7F1C], "00"),  # a TLS 1.3 draft
    ],
)
def test_ja4_version(legacy, supported, code):
    extensions = [] if supported is None else [ext(43, u16s(supported, 1))]
    result = read_client_hello(records(hello_message([0x1301], extensions, version=legacy)))
    assert result.ja4[1:3] == code
    assert result.ja3 == hashlib.md5(f"{legacy},4865,{'43' if supported is not None else ''},,".encode()).hexdigest()


def test_ja4_counts_stop_at_99():
    ciphers = [0x0100 + i for i in range(120)]
    extensions = [ext(0x1000 + i, b"") for i in range(120)]
    result = read_client_hello(records(hello_message(ciphers, extensions)))
    assert result.ja4[:10] == "t12i999900"
    assert result.ja4.split("_")[1] == sha12(",".join(f"{c:04x}" for c in ciphers))


def test_sni_extension_decides_d_or_i():
    empty_sni = read_client_hello(records(hello_message([0x1301], [ext(0, b"")])))
    assert empty_sni.server_name is None and empty_sni.ja4[3] == "d"
    without = read_client_hello(records(hello_message([0x1301], [ext(23, b"")])))
    assert without.ja4[3] == "i"


def test_fingerprints_only_when_done():
    stream = records(spec_hello())
    for cut in (0, 3, 9, len(stream) - 1):
        result = read_client_hello(stream[:cut])
        assert result.status == tls.NEED_MORE and result.ja3 is None and result.ja4 is None
    assert read_client_hello(b"GET / HTTP/1.1\r\n") == (tls.NOT_TLS, None, 0, None, None)


# --------------------------------------------------------------------------------------------
# One parser, two entry points
# --------------------------------------------------------------------------------------------


def test_handshake_message_entry_point():
    message = spec_hello(grease=True)
    over_tcp = read_client_hello(records(message))
    quic = fingerprint_client_hello(message, "q")
    assert quic.status == tls.DONE and quic.end == len(message)
    assert (quic.server_name, quic.ja3) == (over_tcp.server_name, over_tcp.ja3)
    assert quic.ja4 == "q" + over_tcp.ja4[1:]
    assert fingerprint_client_hello(memoryview(b"xx" + message + b"\x02\x00")[2:], "q") == quic  # what follows is not read
    assert read_client_hello(records(message), "q").ja4 == quic.ja4
    for cut in range(len(message)):
        result = fingerprint_client_hello(message[:cut], "q")
        assert result.status == tls.NEED_MORE and cut < result.end <= len(message), (cut, result)
    assert fingerprint_client_hello(b"\x02" + message[1:], "q").status == tls.NOT_TLS
    assert fingerprint_client_hello(handshake(1, bytes(40)), "q").status == tls.MALFORMED
    assert fingerprint_client_hello(b"\x01" + (tls.MAX_HELLO_LEN + 1).to_bytes(3, "big"), "q").status == tls.MALFORMED
    assert fingerprint_client_hello(message[:38] + b"\x21" + message[39:], "q").status == tls.MALFORMED  # session id > 32


@pytest.mark.parametrize("sizes", [[1], [4], [5, 5], [40], [100], [60, 60, 60], [1] * 30])
def test_hello_split_across_records(sizes):
    message = spec_hello(grease=True)
    whole = read_client_hello(records(message))
    stream = records(message, sizes)
    assert stream.count(b"\x16\x03\x03") > len(sizes)
    split = read_client_hello(stream)
    assert split == (tls.DONE, whole.server_name, len(stream), whole.ja3, whole.ja4)
    for cut in range(0, len(stream), 7):
        result = read_client_hello(stream[:cut])
        assert result.status == tls.NEED_MORE and cut < result.end <= len(stream)


def test_truncated_hellos_wait_then_impossible_totals_are_malformed():
    stream = records(spec_hello())
    for cut in range(len(stream)):
        result = read_client_hello(stream[:cut])
        assert result.status == tls.NEED_MORE and cut < result.end <= len(stream), (cut, result)
    # A handshake length beyond the bound: refused from its header, before any body arrives.
    assert read_client_hello(b"\x16\x03\x01\x40\x00\x01\x01\x00\x01").status == tls.MALFORMED
    assert read_client_hello(b"\x16\x03\x01\x00\x04\x01\x00\x00\x10").status == tls.MALFORMED  # below any hello
    # A hello whose content needs more than its handshake length gives it.
    message = spec_hello()
    short = message[:1] + (len(message) - 4 - 30).to_bytes(3, "big") + message[4:-30]
    assert read_client_hello(records(short)).status == tls.MALFORMED
    assert fingerprint_client_hello(short, "t").status == tls.MALFORMED


_BROKEN_LISTS = [
    # (extension, what the fingerprints read of it)
    (ext(13, bytes.fromhex("000a040305030603080408050806")), ("sig", [0x0403, 0x0503, 0x0603, 0x0804, 0x0805])),  # says 10 bytes, has 12
    (ext(13, b"\x00\x06\x04\x03"), ("sig", [0x0403])),  # says 6, has 2
    (ext(13, b"\x00\x03\x04\x03\x08"), ("sig", [0x0403])),  # odd length
    (ext(10, b"\x00\x08\x00\x1d\x00\x17"), ("groups", "29-23")),
    (ext(10, b"\x00"), ("groups", "")),
    (ext(43, b"\x04\x03\x04\x03"), ("version", "13")),
    (ext(43, b""), ("version", "12")),
    (ext(11, b"\x02\x00"), ("points", "0")),
    (ext(11, b""), ("points", "")),
    (ext(16, b"\x00\x05\x02h2"), ("alpn", "h2")),  # list length lies, first name whole
    (ext(16, b"\x00\x03\x05h2"), ("alpn", "00")),  # first name overruns
    (ext(16, b"\x00"), ("alpn", "00")),
]


@pytest.mark.parametrize(("bad", "expected"), _BROKEN_LISTS, ids=[e.hex() for e, _ in _BROKEN_LISTS])
def test_broken_lists_read_only_for_fingerprints_keep_the_server_name(bad, expected):
    """A server that does not use such an extension ignores its content, so a client could break
    it to blind the probe: the hello stays DONE, its lists read as far as their bytes go."""
    message = hello_message([0x1301], [ext(0, sni_body(b"kept.example")), bad, ext(0xFF01, b"\x00")])
    result = read_client_hello(records(message))
    assert result.status == tls.DONE and result.server_name == "kept.example"
    assert fingerprint_client_hello(message, "q") == (tls.DONE, "kept.example", len(message), result.ja3, "q" + result.ja4[1:])
    kind, value = expected
    ja3_fields = ["771", "4865", f"0-{bad[1]}-65281", "", ""]
    if kind == "sig":
        assert result.ja4.split("_", 2)[2] == sha12("000d,ff01_" + ",".join(f"{s:04x}" for s in value))
    elif kind == "groups":
        ja3_fields[3] = value
        assert result.ja3 == hashlib.md5(",".join(ja3_fields).encode()).hexdigest()
    elif kind == "points":
        ja3_fields[4] = value
        assert result.ja3 == hashlib.md5(",".join(ja3_fields).encode()).hexdigest()
    elif kind == "version":
        assert result.ja4[1:3] == value
    else:
        assert result.ja4[8:10] == value


@pytest.mark.parametrize(
    "bad",
    [ext(0, b"\x00\x05\x00\x00\x09abc"), ext(0, b"\x00\x01\x00"), ext(0, b"\x00\x09\x00\x00\x01a")],  # name overruns, entry cut, list lies
)
def test_lying_server_name_lengths_are_malformed(bad):
    message = hello_message([0x1301], [ext(23, b""), bad])
    assert read_client_hello(records(message)).status == tls.MALFORMED
    assert fingerprint_client_hello(message, "q").status == tls.MALFORMED


def test_lying_outer_lengths_are_malformed():
    message = spec_hello()
    body = message[4:]
    exts_at = 2 + 32 + 1 + 32 + 2 + 2 * len(SPEC_CIPHERS) + 2  # version, random, session id, suites, compression
    for offset, value in [
        (exts_at, 0xFFFF),  # extensions block beyond the hello
        (exts_at + 2 + 2, 0xFFFF),  # first extension beyond the block
        (2 + 32 + 1 + 32, 0xFFFE),  # cipher suites beyond the hello
        (2 + 32 + 1 + 32, 0x0001),  # odd cipher suites length
    ]:
        broken = body[:offset] + struct.pack("!H", value) + body[offset + 2 :]
        assert read_client_hello(records(handshake(1, broken))).status == tls.MALFORMED, offset
        assert fingerprint_client_hello(handshake(1, broken), "t").status == tls.MALFORMED, offset


def test_duplicate_extensions():
    twice_alpn = hello_message([0x1301], [ext(16, alpn_body(b"h2")), ext(16, alpn_body(b"x1"))])
    result = read_client_hello(records(twice_alpn))
    assert result.status == tls.DONE and result.ja4[6:10] == "02h2"  # counted twice, the first one read
    twice_sni = hello_message([0x1301], [ext(0, sni_body(b"a.example")), ext(0, sni_body(b"b.example"))])
    assert read_client_hello(records(twice_sni)).status == tls.MALFORMED


def test_parsing_is_fast():
    stream = records(spec_hello(grease=True, replace={0x0015: bytes(1200)}))
    started = time.perf_counter()
    for _ in range(2000):
        read_client_hello(stream)
    assert time.perf_counter() - started < 2.0  # ~1 ms each at most, typically a few tens of µs


# --------------------------------------------------------------------------------------------
# Server certificates
# --------------------------------------------------------------------------------------------


def server_hello(version: int = 0x0303, extensions: list[bytes] | None = None) -> bytes:
    body = struct.pack("!H", version) + bytes(32) + b"\x00" + b"\xc0\x2f" + b"\x00"
    if extensions is not None:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return handshake(2, body)


def certificate_message(certificates: list[bytes]) -> bytes:
    entries = b"".join(len(c).to_bytes(3, "big") + c for c in certificates)
    return handshake(11, len(entries).to_bytes(3, "big") + entries)


CERTS = [random.Random(i).randbytes(size) for i, size in enumerate((1400, 1100, 900))]
CERT_HASHES = tuple(hashlib.sha256(c).hexdigest() for c in CERTS)
FLIGHT = server_hello(extensions=[ext(0xFF01, b"\x00"), ext(11, b"\x01\x00")]) + certificate_message(CERTS) + handshake(12, bytes(300)) + handshake(14, b"")


@pytest.mark.parametrize("sizes", [[], [len(FLIGHT) - 4], [60], [100, 1000], [1] * 200, [9, 7, 1000, 3, 2000]])
def test_certificates_over_records(sizes):
    stream = records(FLIGHT, sizes)
    result = read_server_certificates(stream)
    assert result.status == tls.DONE and result.sha256 == CERT_HASHES
    assert result.end <= len(stream)
    assert read_server_certificates(bytearray(stream)) == result
    assert read_server_certificates(memoryview(b"zz" + stream)[2:]) == result


@pytest.mark.parametrize("sizes", [[], [1500], [200, 200, 200]])
def test_certificates_over_segments(sizes):
    stream = records(FLIGHT, sizes) + b"\x14\x03\x03\x00\x01\x01"
    full = read_server_certificates(stream)
    first_done = None
    for cut in range(0, len(stream)):
        result = read_server_certificates(stream[:cut])
        if result.status == tls.DONE:
            first_done = cut if first_done is None else first_done
            assert result == full
        else:
            assert first_done is None, cut
            assert result.status == tls.NEED_MORE and cut < result.end <= len(stream), (cut, result)
    # Done as soon as the Certificate message is complete, not at the end of its record.
    certificate_end = len(records(FLIGHT[: FLIGHT.index(certificate_message(CERTS)) + len(certificate_message(CERTS))], sizes))
    assert first_done == certificate_end


def test_tls13_certificates_are_encrypted():
    hello13 = server_hello(extensions=[ext(51, struct.pack("!HH", 29, 32) + bytes(32)), ext(43, b"\x03\x04")])
    stream = records(hello13) + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x20" + bytes(32)
    assert read_server_certificates(stream) == (tls.ENCRYPTED, (), len(records(hello13)))
    assert read_server_certificates(records(hello13)[:-1]).status == tls.NEED_MORE
    draft = server_hello(extensions=[ext(43, b"\x7f\x1c")])
    assert read_server_certificates(records(draft)).status == tls.ENCRYPTED
    assert read_server_certificates(records(server_hello(extensions=[ext(43, b"\x03\x03")]))).status == tls.MALFORMED


def test_handshakes_without_certificate():
    hello = records(server_hello())
    ccs = b"\x14\x03\x03\x00\x01\x01"
    assert read_server_certificates(hello + ccs) == (tls.DONE, (), len(hello) + len(ccs))  # resumed session
    anonymous = records(server_hello() + handshake(12, bytes(40)) + handshake(14, b""))
    assert read_server_certificates(anonymous) == (tls.DONE, (), len(anonymous))
    fatal = b"\x15\x03\x03\x00\x02\x02\x28"
    assert read_server_certificates(fatal) == (tls.DONE, (), len(fatal))
    warning = b"\x15\x03\x01\x00\x02\x01\x70"  # unrecognized_name, then the flight goes on
    assert read_server_certificates(warning + records(FLIGHT)).sha256 == CERT_HASHES
    assert read_server_certificates(records(server_hello() + certificate_message([]))) == (tls.DONE, (), len(records(server_hello() + certificate_message([]))))


def test_server_not_tls():
    for data in (b"HTTP/1.1 200 OK\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", records(spec_hello()), b"\x17\x03\x03\x00\x10", b"\x16\x02"):
        assert read_server_certificates(data) == (tls.NOT_TLS, (), 0), data
    assert read_server_certificates(b"").status == tls.NEED_MORE


def test_certificate_lengths_that_overflow_are_malformed():
    hello = server_hello()

    def certificate_body(list_length: int, *entries: tuple[int, bytes]) -> bytes:
        return list_length.to_bytes(3, "big") + b"".join(n.to_bytes(3, "big") + data for n, data in entries)

    cert = bytes(100)
    for body in (
        certificate_body(200, (100, cert)),  # list longer than the message
        certificate_body(50, (100, cert)),  # list shorter than its certificates
        certificate_body(103, (0xFFFFFF, cert)),  # certificate length overflows the list
        certificate_body(106, (100, cert), (0, b"")),  # empty certificate
        certificate_body(105, (100, cert)) + b"\x00\x00",  # entry header cut
        b"\x00\x00",  # list length cut
    ):
        stream = records(hello + handshake(11, body) + handshake(14, b""))
        assert read_server_certificates(stream).status == tls.MALFORMED, body[:8].hex()
    # A Certificate message above the bound is refused from its header: nothing more is buffered.
    header = b"\x0b" + (tls.MAX_CERTIFICATE_LEN + 1).to_bytes(3, "big")
    assert read_server_certificates(records(hello + header)).status == tls.MALFORMED
    at_bound = records(hello + b"\x0b" + tls.MAX_CERTIFICATE_LEN.to_bytes(3, "big"))
    result = read_server_certificates(at_bound)
    assert result.status == tls.NEED_MORE and result.end <= len(at_bound) + tls.MAX_CERTIFICATE_LEN + 5 * (tls.MAX_CERTIFICATE_LEN // 16384 + 1)


def test_server_flight_protocol_errors():
    hello = records(server_hello())
    assert read_server_certificates(hello + b"\x17\x03\x03\x00\x05hello").status == tls.MALFORMED  # data before the handshake ended
    assert read_server_certificates(records(server_hello()[:38] + b"\x21" + server_hello()[39:])).status == tls.MALFORMED  # session id > 32
    lying = server_hello(extensions=[ext(43, b"\x03\x04")])
    assert read_server_certificates(records(lying[:-8] + b"\x00\x09" + lying[-6:])).status == tls.MALFORMED  # extensions length lies
    assert read_server_certificates(records(handshake(2, bytes(37)))).status == tls.MALFORMED  # too short
    assert read_server_certificates(records(server_hello()[:20]) + b"\x14\x03\x03\x00\x01\x01").status == tls.MALFORMED
    assert read_server_certificates(hello + b"\x16\x02\x00").status == tls.MALFORMED  # wrong major version
    assert read_server_certificates(b"\x16\x03\x03\x00\x00").status == tls.MALFORMED  # empty record


def test_server_too_many_records_is_malformed_and_fast():
    stream = records(FLIGHT, [1] * (len(FLIGHT) - 1))
    started = time.perf_counter()
    assert read_server_certificates(stream).status == tls.MALFORMED
    assert time.perf_counter() - started < 0.2


# --------------------------------------------------------------------------------------------
# Fuzzing (internal parsers, past the public safety net, so that a bug raises)
# --------------------------------------------------------------------------------------------


def test_fuzz_never_raises():
    rng = random.Random(2024)
    hellos = [records(spec_hello(grease=True)), records(spec_hello(), [30, 50]), records(hello_message([0x1301], None))]
    flights = [records(FLIGHT), records(FLIGHT, [50, 700]), records(server_hello(extensions=[ext(43, b"\x03\x04")]))]
    for _ in range(4000):
        data = mutate(rng, rng.choice(hellos))
        result = tls._parse(data, "t", True)
        assert result.status in (tls.NOT_TLS, tls.NEED_MORE, tls.DONE, tls.MALFORMED)
        assert (result.ja3 is not None) == (result.status == tls.DONE) == (result.ja4 is not None)
        if result.status == tls.NEED_MORE:
            assert result.end > len(data)
        message = mutate(rng, spec_hello())
        assert tls._message(message, "q").status in (tls.NOT_TLS, tls.NEED_MORE, tls.DONE, tls.MALFORMED)
        data = mutate(rng, rng.choice(flights))
        certificates = tls._server_flight(data)
        assert certificates.status in (tls.NOT_TLS, tls.NEED_MORE, tls.DONE, tls.MALFORMED, tls.ENCRYPTED)
        if certificates.status == tls.NEED_MORE:
            assert certificates.end > len(data)
        assert not certificates.sha256 or certificates.status == tls.DONE


# --------------------------------------------------------------------------------------------
# Real captures
# --------------------------------------------------------------------------------------------


def tcp_streams(path: Path) -> dict[tuple, bytes]:
    """Each direction's TCP payload from its first byte, in sequence order (retransmissions and
    out-of-order segments put in place), decoded by the probe's own frame decoder."""
    decoder = FrameDecoder(FragmentReassembler(30 * 10**9, 1000, 100, 10**7))
    segments: dict[tuple, list[tuple[int, bytes]]] = defaultdict(list)
    start: dict[tuple, int] = {}

    def add(packet) -> None:
        if packet is None or packet.proto != PROTO_TCP:
            return
        key = (packet.src, packet.sport, packet.dst, packet.dport)
        if packet.tcp_flags & TCP_SYN:
            start[key] = (packet.tcp_seq + 1) % 2**32
        if packet.payload:
            start.setdefault(key, packet.tcp_seq)
            segments[key].append((packet.tcp_seq, bytes(packet.payload)))

    for batch in read_capture(str(path)):
        for offset, caplen, wirelen, linktype, timestamp in zip(batch.offsets.tolist(), batch.caplens.tolist(), batch.wirelens.tolist(), batch.linktypes.tolist(), batch.timestamps.tolist()):
            add(decoder.decode(batch.data, offset, caplen, wirelen, linktype, timestamp))
    for packet in decoder.flush_fragments():
        add(packet)
    streams = {}
    for key, items in segments.items():
        data = bytearray()
        for offset, payload in sorted(((seq - start[key]) % 2**32, payload) for seq, payload in items):
            if offset < 2**31 and offset <= len(data) < offset + len(payload):
                data += payload[len(data) - offset :]
        streams[key] = bytes(data)
    return streams


def client_hellos(stream: bytes) -> list[tls.ClientHello]:
    """The ClientHellos at the start of a client stream: one, or two after a HelloRetryRequest
    (with a ChangeCipherSpec record between them)."""
    found = []
    pos = 0
    while pos < len(stream):
        hello = read_client_hello(stream[pos:])
        if hello.status != tls.DONE:
            break
        found.append(hello)
        pos += hello.end
        while stream[pos : pos + 1] == b"\x14":
            pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
    return found


def tshark(*args: str) -> str:
    done = subprocess.run([TSHARK, "-o", "tcp.reassemble_out_of_order:TRUE", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


_HEX_LINE = re.compile(r"^[0-9a-f]{4,}  ((?:[0-9a-f]{2} ?){1,16})")


def tshark_data_sources(path: Path, display_filter: str) -> list[tuple[str, bytes]]:
    """Every data source of `tshark -x`, titled: "Frame (...)", "Decrypted QUIC (...)",
    "Reassembled QUIC CRYPTO (...)" (the first data source of a frame has no title line)."""
    sources: list[tuple[str, bytearray]] = []
    title = ""
    current: bytearray | None = None
    for line in tshark("-r", str(path), "-Y", display_filter, "-x").splitlines():
        match = _HEX_LINE.match(line)
        if match:
            if current is None:
                current = bytearray()
                sources.append((title, current))
            current += bytes.fromhex(match.group(1))
        else:
            current = None
            title = line
    return [(title, bytes(data)) for title, data in sources]


def tshark_quic_hellos(path: Path) -> list[tuple[bytes, str, str]]:
    """(ClientHello message, tshark's JA3, tshark's SNI) of each QUIC Initial ClientHello: from the
    reassembled CRYPTO data when tshark shows some (the decrypted packet then holds only pieces),
    else from the decrypted packet, where one CRYPTO frame holds it whole."""
    display_filter = "quic && tls.handshake.type == 1"
    sources = sorted(tshark_data_sources(path, display_filter), key=lambda source: not source[0].startswith("Reassembled"))
    hellos = []
    for line in tshark("-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "tls.handshake.length", "-e", "tls.handshake.ja3", "-e", "tls.handshake.extensions_server_name").splitlines():
        length, ja3, name = line.split("\t")
        size = int(length.split(",")[0])
        header = b"\x01" + size.to_bytes(3, "big") + b"\x03\x03"
        data = next(data for _, data in sources if header in data)
        at = data.index(header)
        hellos.append((data[at : at + 4 + size], ja3, name))
    return hellos


def tshark_certificate_chains(path: Path) -> set[tuple[str, ...]]:
    chains = set()
    for line in tshark("-r", str(path), "-Y", "tls.handshake.certificate", "-T", "fields", "-e", "tls.handshake.certificate").splitlines():
        chains.add(tuple(hashlib.sha256(bytes.fromhex(der.replace(":", ""))).hexdigest() for der in line.split(",")))
    return chains


def _truth(name: str) -> dict:
    return json.loads((SHARED / "truth" / f"{name}.json").read_text())


def _shared_with(predicate) -> list[str]:
    if not SHARED.is_dir():
        return []
    return sorted(p.name for p in SHARED.iterdir() if p.suffix in (".pcap", ".pcapng") and (SHARED / "truth" / f"{p.name}.json").is_file() and predicate(_truth(p.name)))


_JA4_TCP = sorted(name for name, vector in JA4_EXPECTED.items() if vector["transport"] == "t")
_JA4_QUIC = sorted(name for name, vector in JA4_EXPECTED.items() if vector["transport"] == "q")


@pytest.mark.parametrize("name", _JA4_TCP)
def test_foxio_reference_vectors_over_tcp(name):
    vector = JA4_EXPECTED[name]
    hellos = [hello for stream in tcp_streams(JA4_CAPTURES / name).values() for hello in client_hellos(stream)]
    assert len(hellos) == 1
    hello = hellos[0]
    assert hello.server_name == vector["server_name"]
    assert hello.ja3 == vector["ja3"]
    # Where the reference implementations depart from the specification, the specification wins;
    # the rest of the fingerprint is still theirs.
    assert hello.ja4 == vector.get("ja4_spec", vector["ja4"])
    assert hello.ja4[:8] + hello.ja4[10:] == vector["ja4"][:8] + vector["ja4"][10:]


@needs_tshark
@pytest.mark.parametrize("name", _JA4_QUIC)
def test_foxio_reference_vectors_over_quic(name):
    vector = JA4_EXPECTED[name]
    ((message, tshark_ja3, tshark_name),) = tshark_quic_hellos(JA4_CAPTURES / name)
    result = fingerprint_client_hello(message, "q")
    assert result.status == tls.DONE and result.end == len(message)
    assert (result.ja4, result.ja3, result.server_name) == (vector["ja4"], vector["ja3"], vector["server_name"])
    assert (tshark_ja3, tshark_name) == (vector["ja3"], vector["server_name"])


@needs_shared
@pytest.mark.parametrize("name", _shared_with(lambda truth: truth.get("ja3")))
def test_ja3_equals_tshark_truth(name):
    ours = {hello.ja3 for stream in tcp_streams(SHARED / name).values() for hello in client_hellos(stream)}
    assert ours == set(_truth(name)["ja3"])


@needs_shared
@needs_tshark
@pytest.mark.parametrize("name", _shared_with(lambda truth: truth.get("quic_ja3")))
def test_quic_ja3_equals_tshark_truth(name):
    results = [fingerprint_client_hello(message, "q") for message, _, _ in tshark_quic_hellos(SHARED / name)]
    assert all(result.status == tls.DONE and result.ja4.startswith("q") for result in results)
    assert {result.ja3 for result in results} == set(_truth(name)["quic_ja3"])
    assert {result.server_name for result in results} == {n.lower() for n in _truth(name)["quic_sni"]}


_CERTIFICATE_CAPTURES = [JA4_CAPTURES / name for name in _JA4_TCP] + [SHARED / name for name in _shared_with(lambda truth: truth.get("features", {}).get("tls") and not truth.get("tshark_rc"))]


@needs_tshark
@pytest.mark.parametrize("path", _CERTIFICATE_CAPTURES, ids=[p.name for p in _CERTIFICATE_CAPTURES])
def test_certificate_hashes_equal_tshark(path):
    ours = set()
    for stream in tcp_streams(path).values():
        result = read_server_certificates(stream)
        assert result.status in (tls.NOT_TLS, tls.DONE, tls.ENCRYPTED), result
        if result.sha256:
            ours.add(result.sha256)
    assert ours == tshark_certificate_chains(path)


@needs_tshark
def test_certificate_hashes_of_a_tls12_capture_are_found():
    path = JA4_CAPTURES / "https3-301-get.pcap"
    (chain,) = tshark_certificate_chains(path)
    assert len(chain) == 2
    server = [stream for key, stream in tcp_streams(path).items() if key[1] == 443]
    assert read_server_certificates(server[0]).sha256 == chain


@pytest.mark.parametrize("path", [PROJECT_CAPTURES / "tls13-sni.pcap", JA4_CAPTURES / "tls-non-ascii-alpn.pcapng"], ids=lambda p: p.name)
def test_tls13_server_is_encrypted(path):
    statuses = [read_server_certificates(stream).status for key, stream in tcp_streams(path).items() if key[1] == 443]
    assert statuses == [tls.ENCRYPTED]
