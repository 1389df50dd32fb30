"""Seeded generator of a large mixed capture and marker sets with a known number of hits.

The traffic imitates what a mirror port sees, with realistic frame sizes and interleaved flows:

- TCP sessions carrying TLS: ClientHellos of a few dozen client profiles (browsers with GREASE and
  shuffled extensions, TLS libraries, TLS 1.2-only stacks, rare ones), a share of them
  post-quantum and so larger than one segment; the server's flight answers with TLS 1.3 (its
  ServerHello selects 0x0304, the rest is encrypted) or, from a quarter of the servers and to
  TLS 1.2-only clients, TLS 1.2 (ServerHello, a Certificate message of 2-3 certificates of
  1-1.5 KB, ServerKeyExchange, ServerHelloDone, over 2-4 segments); then encrypted records;
- HTTP/1.1 connections, some kept alive for 2-3 requests, GET and POST (bodies split across
  segments), answered with status line, headers and body;
- UDP DNS queries with their answers;
- QUIC v1 connections: client Initial datagrams (>= 1,200 bytes) carrying a ClientHello with a
  server name, protected as RFC 9001 5 says (AES-128-GCM, AES-ECB header protection, keys from
  the Destination Connection ID) so that anyone can decrypt them, a post-quantum hello split over
  two Initial packets; the server's long-header datagrams, then short-header 1-RTT datagrams;
- part of it over IPv6 and part of it 802.1Q-tagged.

Packets are built with `struct` (scapy would take many minutes for a million frames). Two marker
bundles: `markers.json` with the types of the replay issue (ipv4, cidr, domain) and
`markers-all.json` with those and every other type (ipv6, http_host, tls_sni, url, ja3, ja4,
x509_sha256, bytes, yara), mostly decoys that never match. The expected events of each are derived
from what was generated (the client hellos' fingerprints, the certificates' digests, the requests,
the bytes of each TCP direction, up to the end of the cleartext handshake in TLS, scanned with `re`
and `yara`), never from the probe's pipeline.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import json
import random
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

GENERATOR_VERSION = 3
"""Changes whenever the same packets and seed would give another capture, other markers or other
expected events (3: a TLS direction's bytes are matched up to the end of its cleartext handshake)."""

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
DNS_RESOLVERS = ["9.9.9.9", "1.1.1.1", "8.8.8.8", "8.8.4.4"]
DNS_RESOLVERS_V6 = ["2001:db8:53::1", "2001:db8:53::2"]
DNS_ANSWER = "192.0.2.80"

# Share of flows by kind (weights), and of the planted content (probabilities per flow).
FLOW_WEIGHTS = {"tls": 44, "http": 20, "dns": 32, "quic": 4}
MARKED_NAME_SHARE = 0.01  # a flow whose name is one of the 150 marked domains
TLS12_SERVER_SHARE = 0.25  # servers that answer with TLS 1.2 (certificates in the clear)
KEEP_ALIVE_SHARE = 0.3  # HTTP connections with 2-3 requests
POST_SHARE = 0.1  # HTTP requests with a body
PLANT = {
    "tls_sni": 0.003,  # TLS and QUIC flows to the tls_sni marker's name
    "quic_domain": 0.03,  # QUIC flows to a subdomain of the QUIC domain marker
    "url_dl": 0.004,  # HTTP connections to the url marker's host, one request under its path
    "url_gate": 0.004,  # HTTP connections to the port-8080 url marker's host (half on port 80)
    "http_host": 0.003,  # HTTP connections to the http_host marker's host
    "exfil_post": 0.005,  # a POST whose body holds the literal, split across two segments
    "pe_download": 0.005,  # a response whose body is a PE file (hex pattern + YARA r0)
    "beacon_cookie": 0.004,  # a request with the cookie of the regex pattern
    "bot_agent": 0.004,  # a request with the User-Agent of YARA rule r1
}

EXFIL_LITERAL = "cmd=exfil&session=7Hq2ZpX4vLr9Kd"
PE_HEADER_HEX = "4d5a90000300000004000000ffff0000b800000000000000400000000000000000"
BEACON_REGEX = r"beacon-id=[0-9a-f]{16};"
BOT_AGENT = "BenchBot/2.1 (+http://bench.invalid/bot)"
DOS_STUB = b"This program cannot be run in DOS mode.\r\r\n$"
PLANTED_YARA = {
    "r0": 'rule r0 { strings: $mz = { 4D 5A 90 00 03 00 00 00 } $dos = "This program cannot be run in DOS mode" condition: $mz and $dos }',
    "r1": 'rule r1 { strings: $ua = "BenchBot/2.1" condition: $ua }',
}
DECOY_REGEXES = [
    r"evil[0-9]{4}beacon",
    r"X-Implant-Id: [A-Z]{8}\r\n",
    r"/c2/[a-f0-9]{32}/poll",
    r"(?i)powershell\s+-enc\s+[A-Za-z0-9+/=]{40}",
    r"cmd\.exe /c [a-z]{3,8} ",
    r"beacon_[0-9]{6}_end",
    r"\x00\x13\x37[\x00-\x0f]{4}\xca\xfe",
]
PATTERN_DEPTH = 65_536  # [flows] pattern_depth: bytes of each TCP direction matched by bytes markers
YARA_DEPTH = 4_096  # [flows] yara_depth: bytes of each TCP direction matched by yara markers

PATH_WORDS = ["static", "img", "api", "v1", "index.html", "app.js"]
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "curl/8.4.0",
    "python-requests/2.31.0",
]
CONTENT_TYPES = ["text/html; charset=utf-8", "application/javascript", "image/png", "application/json", "application/octet-stream"]


@dataclass
class Flow:
    kind: str  # "tls", "http", "dns" or "quic"
    client: str
    server: str
    sport: int
    dport: int
    name: str
    vlan: int | None
    start: float
    packets: list[tuple[bool, int, bytes]] = field(default_factory=list)  # (to_server, flags, payload)
    # What the generator planted, for the expected events (dropped once they are counted).
    hello: bytes = b""  # TLS: the ClientHello record(s); QUIC: the ClientHello message
    certificates: tuple[str, ...] = ()  # SHA-256 of the server's TLS 1.2 certificates
    requests: list[tuple[str, int, str]] = field(default_factory=list)  # HTTP: (host, port, path)


@dataclass(frozen=True)
class HelloProfile:
    """What makes a ClientHello's JA3 and JA4: the client's lists, in its order."""

    name: str
    suites: tuple[int, ...]
    extensions: tuple[int, ...]
    groups: tuple[int, ...] = (0x001D, 0x0017, 0x0018)
    pq_groups: tuple[int, ...] = (0x11EC, 0x001D, 0x0017)
    signatures: tuple[int, ...] = (0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806)
    alpn: tuple[bytes, ...] = (b"h2", b"http/1.1")
    versions: tuple[int, ...] = (0x0304, 0x0303)
    grease: bool = False  # RFC 8701 values in suites, extensions, groups, versions, key shares
    shuffle: bool = False  # extension order permuted per connection (Chrome since 2023)
    quic: bool = False  # QUIC: transport parameters, no legacy session id
    pq_share: float = 0.1  # connections with a post-quantum key share


BROWSER_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
DEFAULT_PROFILE = HelloProfile("default", BROWSER_SUITES, (0x0000, 0x000A, 0x000B, 0x000D, 0x0010, 0x002B, 0x0033))
"""The hello `client_hello` makes without a profile (the tests use it)."""
OPENSSL_SUITES = (0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA, 0xC02B, 0xC02F, 0x009E, 0xC024, 0xC028, 0x006B, 0xC023, 0xC027, 0x0067, 0xC00A, 0xC014, 0x0039, 0xC009, 0xC013, 0x0033, 0x009D, 0x009C, 0x003D, 0x003C, 0x0035, 0x002F, 0x00FF)
SCHANNEL_SUITES = (0xC02C, 0xC02B, 0xC030, 0xC02F, 0xC024, 0xC023, 0xC028, 0xC027, 0xC00A, 0xC009, 0xC014, 0xC013, 0x009D, 0x009C, 0x003D, 0x003C, 0x0035, 0x002F, 0x000A)
COMMON_TCP_PROFILES = [
    (40, HelloProfile("chrome", BROWSER_SUITES, (0x0000, 0x0017, 0xFF01, 0x000A, 0x000B, 0x0023, 0x0010, 0x0005, 0x000D, 0x0012, 0x0033, 0x002D, 0x002B, 0x001B, 0x4469, 0xFE0D),
                      pq_groups=(0x11EC, 0x001D, 0x0017, 0x0018), grease=True, shuffle=True, pq_share=0.6)),
    (20, HelloProfile("firefox", (0x1301, 0x1303, 0x1302, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030, 0xC00A, 0xC009, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035),
                      (0x0000, 0x0017, 0xFF01, 0x000A, 0x000B, 0x0023, 0x0010, 0x0005, 0x0022, 0x0033, 0x002B, 0x000D, 0x002D, 0x001C, 0x001B, 0xFE0D),
                      groups=(0x001D, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101), pq_groups=(0x11EC, 0x001D, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101), pq_share=0.3)),
    (10, HelloProfile("safari", BROWSER_SUITES[:9] + (0xC00A, 0xC009, 0xC014, 0xC013, 0x009D, 0x009C, 0x0035, 0x002F),
                      (0x0000, 0x0017, 0xFF01, 0x000A, 0x000B, 0x0010, 0x0005, 0x000D, 0x0012, 0x0033, 0x002D, 0x002B, 0x001B, 0x0015),
                      grease=True, pq_share=0.0)),
    (8, HelloProfile("curl", OPENSSL_SUITES, (0x0000, 0x000B, 0x000A, 0x0023, 0x0010, 0x0016, 0x0017, 0x0031, 0x000D, 0x002B, 0x002D, 0x0033),
                     groups=(0x001D, 0x0017, 0x001E, 0x0019, 0x0018), pq_share=0.0)),
    (5, HelloProfile("python", OPENSSL_SUITES, (0x0000, 0x000B, 0x000A, 0x0023, 0x0016, 0x0017, 0x0031, 0x000D, 0x002B, 0x002D, 0x0033),
                     groups=(0x001D, 0x0017, 0x001E, 0x0019, 0x0018), alpn=(), pq_share=0.0)),
    (5, HelloProfile("go", (0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0xC00A, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035, 0xC012, 0x000A, 0x1301, 0x1302, 0x1303),
                     (0x0000, 0x0005, 0x000A, 0x000B, 0x000D, 0xFF01, 0x0012, 0x0010, 0x002B, 0x0033), groups=(0x001D, 0x0017, 0x0018, 0x0019), pq_share=0.2)),
    (6, HelloProfile("schannel-tls12", SCHANNEL_SUITES, (0x0000, 0x0005, 0x000A, 0x000B, 0x000D, 0x0023, 0x0010, 0x0017, 0xFF01),
                     groups=(0x001D, 0x0017, 0x0018), versions=(), pq_share=0.0)),
    (3, HelloProfile("java-tls12", (0xC02C, 0xC02B, 0xC030, 0x009D, 0xC02E, 0xC032, 0x009F, 0x00A3, 0xC02F, 0x009C, 0xC02D, 0xC031, 0x009E, 0x00A2, 0xC024, 0xC028, 0x003D),
                     (0x0000, 0x0005, 0x000A, 0x000B, 0x000D, 0x0032, 0x0017, 0xFF01), groups=(0x0017, 0x0018, 0x0019), alpn=(), versions=(), pq_share=0.0)),
    (3, DEFAULT_PROFILE),
]
COMMON_QUIC_PROFILES = [
    (70, HelloProfile("chrome-quic", (0x1301, 0x1302, 0x1303), (0x0000, 0x000A, 0x000D, 0x0010, 0x002B, 0x0033, 0x002D, 0x001B, 0x0039, 0x4469, 0xFE0D),
                      groups=(0x001D, 0x0017, 0x0018), pq_groups=(0x11EC, 0x001D, 0x0017, 0x0018), alpn=(b"h3",), versions=(0x0304,),
                      grease=True, shuffle=True, quic=True, pq_share=0.5)),
    (25, HelloProfile("firefox-quic", (0x1301, 0x1303, 0x1302), (0x0000, 0x000A, 0x0010, 0x0005, 0x0022, 0x0033, 0x002B, 0x000D, 0x002D, 0x001C, 0x0039, 0x001B),
                      alpn=(b"h3",), versions=(0x0304,), quic=True, pq_share=0.3)),
]
RARE_TCP_PROFILES, RARE_TCP_WEIGHT = 24, 0.1  # each used by ~0.1 % of TLS connections
RARE_QUIC_PROFILES, RARE_QUIC_WEIGHT = 4, 1.25  # each used by ~1.2 % of QUIC connections

SUITE_POOL = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035, 0xC009, 0xC00A, 0x0039,
              0x0033, 0x003C, 0x003D, 0x009E, 0x009F, 0xC023, 0xC024, 0xC027, 0xC028, 0x000A, 0x0005, 0x0004, 0x00FF)
OPTIONAL_EXTENSIONS = (0x0017, 0xFF01, 0x0023, 0x0005, 0x0012, 0x002D, 0x001B, 0x0016, 0x0031, 0x001C, 0x0022)
SIGNATURE_POOL = (0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203, 0x0201, 0x0807, 0x0808)
GROUP_POOL = (0x0017, 0x0018, 0x0019, 0x001E, 0x0100, 0x0101)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _grease(rng: random.Random) -> int:
    return 0x0A0A + 0x1010 * rng.randrange(16)


def _u16s(values) -> bytes:
    return struct.pack(f"!{len(values)}H", *values)


def _varint(value: int, size: int | None = None) -> bytes:
    """RFC 9000 16 variable-length integer."""
    if size is None:
        size = 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8
    return (({1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2)) | value).to_bytes(size, "big")


def _transport_parameters(scid: bytes) -> bytes:
    """QUIC transport parameters of a client (RFC 9000 18.2), initial_source_connection_id last."""
    parameters = [(0x01, _varint(30_000, 4)), (0x03, _varint(1472, 2)), (0x04, _varint(15_728_640, 4)), (0x05, _varint(6_291_456, 4)),
                  (0x06, _varint(6_291_456, 4)), (0x07, _varint(6_291_456, 4)), (0x08, _varint(100, 2)), (0x09, _varint(103, 2)), (0x0F, scid)]
    return b"".join(_varint(kind) + _varint(len(value)) + value for kind, value in parameters)


def client_hello(name: str, rng: random.Random, post_quantum: bool, profile: HelloProfile | None = None, quic_scid: bytes = b"") -> bytes:
    """A ClientHello in a TLS record (QUIC carries the message after the 5-byte record header).

    Without a profile, the same hello as every earlier version of this module (tests use it)."""

    def extension(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    profile = profile or DEFAULT_PROFILE
    key_share = struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
    if post_quantum:
        key_share = struct.pack("!HH", 0x11EC, 1216) + rng.randbytes(1216) + key_share
    groups = list(profile.pq_groups if post_quantum else profile.groups)
    versions = list(profile.versions)
    suites = list(profile.suites)
    order = list(profile.extensions)
    if profile.shuffle:
        rng.shuffle(order)
    if profile.grease:
        grease_suite, grease_group, grease_version, grease_first, grease_last = (_grease(rng) for _ in range(5))
        if grease_last == grease_first:
            grease_last ^= 0x1010
        suites.insert(0, grease_suite)
        groups.insert(0, grease_group)
        versions.insert(0, grease_version)
        key_share = struct.pack("!HH", grease_group, 1) + b"\x00" + key_share
        order = [grease_first] + order + [grease_last]
    host = name.encode()
    alpn = b"".join(bytes((len(protocol),)) + protocol for protocol in profile.alpn)
    bodies = {
        0x0000: struct.pack("!HBH", len(host) + 3, 0, len(host)) + host,
        0x000A: struct.pack("!H", 2 * len(groups)) + _u16s(groups),
        0x000B: b"\x01\x00",
        0x000D: struct.pack("!H", 2 * len(profile.signatures)) + _u16s(profile.signatures),
        0x0010: struct.pack("!H", len(alpn)) + alpn,
        0x002B: bytes((2 * len(versions),)) + _u16s(versions),
        0x0033: struct.pack("!H", len(key_share)) + key_share,
        0x0005: b"\x01\x00\x00\x00\x00",
        0x001B: b"\x02\x00\x02",
        0x001C: b"\x40\x01",
        0x0022: b"\x00\x08\x04\x03\x05\x03\x06\x03\x02\x03",
        0x002D: b"\x01\x01",
        0x0032: struct.pack("!H", 2 * len(profile.signatures)) + _u16s(profile.signatures),
        0x4469: b"\x00\x03" + (bytes((len(profile.alpn[0]),)) + profile.alpn[0] if profile.alpn else b"\x02h2"),
        0xFF01: b"\x00",
    }
    if profile.quic:
        bodies[0x0039] = _transport_parameters(quic_scid)
    if 0xFE0D in order:  # a GREASE ECH, as browsers send without an ECH configuration
        payload = rng.choice([144, 176, 208, 240])
        bodies[0xFE0D] = b"\x00\x00\x01\x00\x01" + bytes((rng.randrange(256),)) + b"\x00\x20" + rng.randbytes(32) + struct.pack("!H", payload) + rng.randbytes(payload)
    if profile.grease:
        bodies[order[-1]] = b"\x00"
    client_random = rng.randbytes(32)
    session_id = b"\x00" if profile.quic else b"\x20" + rng.randbytes(32)
    head = b"\x03\x03" + client_random + session_id + struct.pack("!H", 2 * len(suites)) + _u16s(suites) + b"\x01\x00"
    extensions = b"".join(extension(kind, bodies.get(kind, b"")) for kind in order if kind != 0x0015)
    if 0x0015 in order:  # padding to 512 bytes (BoringSSL), present even when nothing is needed
        needed = max(0, 512 - 4 - len(head) - 2 - len(extensions) - 4)
        extensions = b"".join(extension(kind, bodies.get(kind, b"") if kind != 0x0015 else bytes(needed)) for kind in order)
    body = head + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def rare_profile(rng: random.Random, number: int, quic: bool) -> HelloProfile:
    """A client seldom seen: its own suites, extensions and signature algorithms."""
    signatures = tuple(rng.sample(SIGNATURE_POOL, rng.randrange(3, 9)))
    groups = (0x001D,) + tuple(rng.sample(GROUP_POOL, rng.randrange(0, 4)))
    if quic:
        suites = tuple(rng.sample((0x1301, 0x1302, 0x1303), rng.randrange(1, 4)))
        extensions = [0x0000, 0x000A, 0x000D, 0x0010, 0x002B, 0x0033, 0x0039] + rng.sample(OPTIONAL_EXTENSIONS, rng.randrange(0, 5))
        rng.shuffle(extensions)
        return HelloProfile(f"rare-quic-{number}", suites, tuple(extensions), groups=groups, signatures=signatures, alpn=(b"h3",), versions=(0x0304,), quic=True, pq_share=0.0)
    tls13 = rng.random() < 0.7
    suites = rng.sample(SUITE_POOL, rng.randrange(5, 25))
    if tls13 and 0x1301 not in suites:
        suites.insert(0, 0x1301)
    alpn = rng.choice([(b"h2", b"http/1.1"), (b"http/1.1",), ()])
    extensions = [0x0000, 0x000A, 0x000B, 0x000D] + rng.sample(OPTIONAL_EXTENSIONS, rng.randrange(0, 6)) + ([0x0010] if alpn else []) + ([0x002B, 0x0033] if tls13 else [])
    rng.shuffle(extensions)
    return HelloProfile(f"rare-{number}", tuple(suites), tuple(extensions), groups=groups, signatures=signatures, alpn=alpn, versions=(0x0304, 0x0303) if tls13 else (), pq_share=0.0)


def dns_message(name: str, ident: int, answer: str | None) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    flags, answers = (0x8180, 1) if answer else (0x0100, 0)
    message = struct.pack("!HHHHHH", ident, flags, 1, answers, 0, 0) + qname + b"\x00\x01\x00\x01"
    if answer:
        message += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04" + ipaddress.IPv4Address(answer).packed
    return message


# --- TLS server side -----------------------------------------------------------------------------


def tls_record(content: int, data: bytes) -> bytes:
    return bytes((content,)) + b"\x03\x03" + struct.pack("!H", len(data)) + data


def handshake_message(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + len(body).to_bytes(3, "big") + body


def server_hello(rng: random.Random, tls12: bool, post_quantum: bool) -> bytes:
    def extension(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    if tls12:
        suite = rng.choice([0xC02F, 0xC02B, 0xC030])
        extensions = extension(0xFF01, b"\x00") + extension(0x000B, b"\x01\x00") + extension(0x0017, b"")
    else:
        suite = rng.choice([0x1301, 0x1302, 0x1303])
        share = struct.pack("!HH", 0x11EC, 1120) + rng.randbytes(1120) if post_quantum else struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
        extensions = extension(0x002B, b"\x03\x04") + extension(0x0033, share)
    body = b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + struct.pack("!H", suite) + b"\x00" + struct.pack("!H", len(extensions)) + extensions
    return handshake_message(2, body)


def certificate_der(rng: random.Random, size: int) -> bytes:
    """DER-looking bytes (a SEQUENCE header, then noise): only their SHA-256 matters."""
    return b"\x30\x82" + struct.pack("!H", size - 4) + rng.randbytes(size - 4)


def tls12_server_flight(rng: random.Random, chain: list[bytes]) -> bytes:
    """ServerHello, Certificate, ServerKeyExchange, ServerHelloDone: in one record or one each."""
    certificates = b"".join(len(der).to_bytes(3, "big") + der for der in chain)
    messages = [
        server_hello(rng, True, False),
        handshake_message(11, len(certificates).to_bytes(3, "big") + certificates),
        handshake_message(12, b"\x03\x00\x1d\x20" + rng.randbytes(32) + b"\x08\x04\x01\x00" + rng.randbytes(256)),
        handshake_message(14, b""),
    ]
    if rng.random() < 0.5:
        return tls_record(0x16, b"".join(messages))
    return b"".join(tls_record(0x16, message) for message in messages)


def tls13_server_flight(rng: random.Random, post_quantum: bool) -> bytes:
    """ServerHello (supported_versions 0x0304), ChangeCipherSpec, then the encrypted rest."""
    return tls_record(0x16, server_hello(rng, False, post_quantum)) + tls_record(0x14, b"\x01") + tls_record(0x17, rng.randbytes(rng.randrange(2500, 4500)))


def segments(data: bytes, mss: int, cuts: tuple[int, ...] = ()) -> list[bytes]:
    """`data` cut at `cuts` and wherever a piece would exceed `mss`."""
    pieces = []
    start = 0
    for stop in sorted(set(cuts) | {len(data)}):
        while stop - start > mss:
            pieces.append(data[start : start + mss])
            start += mss
        if stop > start:
            pieces.append(data[start:stop])
            start = stop
    return pieces


# --- QUIC ----------------------------------------------------------------------------------------


def quic_initial(frames: bytes, dcid: bytes, scid: bytes, packet_number: int, number_len: int, size: int, keys) -> bytes:
    """One client Initial packet (QUIC v1) protected as RFC 9001 5 says, PADDING frames up to
    `size` bytes (at least what the frames need)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    start = bytes((0xC0 | (number_len - 1),)) + (1).to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid + _varint(0)
    overhead = len(start) + 2 + number_len + 16
    frames += bytes(max(0, size - overhead - len(frames)))
    header = start + _varint(number_len + len(frames) + 16, 2) + packet_number.to_bytes(number_len, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, frames, header)
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sealed[4 - number_len : 20 - number_len])
    masked = bytearray(header)
    masked[0] ^= mask[0] & 0x0F
    for index in range(number_len):
        masked[len(header) - number_len + index] ^= mask[1 + index]
    return bytes(masked) + sealed


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def quic_packets(hello: bytes, dcid: bytes, scid: bytes, rng: random.Random, stats: dict) -> list[tuple[bool, int, bytes]]:
    """A QUIC v1 connection: the client's Initial(s) with the ClientHello, the server's
    long-header datagrams, the client's second flight, then 1-RTT short-header datagrams."""
    from probe.decode.quic import VERSION_1, client_initial_keys

    server_cid = rng.randbytes(8)
    keys = client_initial_keys(VERSION_1, dcid)
    size = rng.choice([1200, 1250, 1252, 1357])
    number_len = rng.choice([1, 2, 4])
    if len(hello) > 1000:  # a post-quantum hello: two Initial packets in two datagrams
        cut = len(hello) // 2 + rng.randrange(-100, 100)
        initials = [crypto_frame(0, hello[:cut]), crypto_frame(cut, hello[cut:])]
        stats["quic_split_hellos"] += 1
    elif rng.random() < 0.3:  # Chrome's way: the hello in pieces out of order, with PINGs
        cut = rng.randrange(50, len(hello) - 50)
        initials = [crypto_frame(cut, hello[cut:]) + b"\x01" + crypto_frame(0, hello[:cut])]
    else:
        initials = [crypto_frame(0, hello)]
    packets = [(True, 0, quic_initial(frames, dcid, scid, number, number_len, size, keys)) for number, frames in enumerate(initials)]

    def long_header(first: int, destination: bytes, source: bytes, length: int) -> bytes:
        start = bytes((first | rng.randrange(16),)) + (1).to_bytes(4, "big") + bytes((len(destination),)) + destination + bytes((len(source),)) + source
        return start + rng.randbytes(length - len(start))

    def short_header(destination: bytes, length: int) -> bytes:
        return bytes((0x40 | rng.randrange(64),)) + destination + rng.randbytes(length - 1 - len(destination))

    packets.append((False, 0, long_header(0xC0, scid, server_cid, rng.randrange(1200, 1253))))  # Initial + Handshake
    packets.append((False, 0, long_header(0xE0, scid, server_cid, rng.randrange(600, 1253))))  # Handshake
    packets.append((True, 0, long_header(0xC0, server_cid, scid, size)))  # Initial ACK + Handshake, padded
    packets.append((True, 0, short_header(server_cid, rng.randrange(80, 400))))  # the request
    for number in range(2 + rng.randrange(7)):
        packets.append((False, 0, short_header(scid, rng.randrange(1000, 1353))))
        if number % 2:
            packets.append((True, 0, short_header(server_cid, rng.randrange(35, 60))))
    return packets


# --- flows ---------------------------------------------------------------------------------------


def http_request(rng: random.Random, host: str, path: str, agent: str, cookie: str | None, body: bytes | None) -> bytes:
    method = "POST" if body is not None else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {agent}", "Accept: */*", "Accept-Encoding: gzip"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if body is not None:
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def form_body(rng: random.Random, size: int) -> bytes:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    fields = []
    while sum(len(item) + 1 for item in fields) < size:
        fields.append("".join(rng.choice(letters) for _ in range(rng.randrange(3, 8))) + "=" + "".join(rng.choice(letters) for _ in range(rng.randrange(8, 40))))
    return "&".join(fields).encode()


def pe_file(rng: random.Random, size: int) -> bytes:
    header = bytearray(bytes.fromhex(PE_HEADER_HEX).ljust(0x40, b"\0"))
    header[0x3C:0x40] = (0x80).to_bytes(4, "little")
    stub = bytes.fromhex("0e1fba0e00b409cd21b8014ccd21") + DOS_STUB
    image = bytes(header) + stub.ljust(0x40, b"\0") + b"PE\0\0\x64\x86"
    return image + rng.randbytes(max(0, size - len(image)))


def http_response(rng: random.Random, body_size: int, pe: bool) -> bytes:
    body = pe_file(rng, body_size) if pe else rng.randbytes(body_size)
    content_type = "application/vnd.microsoft.portable-executable" if pe else rng.choice(CONTENT_TYPES)
    head = f"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    return head.encode() + body


def random_path(rng: random.Random) -> str:
    return "/" + "/".join(rng.choice(PATH_WORDS) for _ in range(3))


def answer(flow_packets: list, rng: random.Random, data: bytes, mss: int) -> None:
    """Server segments of `data`, the client acknowledging every other one."""
    pieces = segments(data, mss)
    for number, piece in enumerate(pieces):
        flow_packets.append((False, PSH | ACK if number == len(pieces) - 1 else ACK, piece))
        if number % 2 or number == len(pieces) - 1:
            flow_packets.append((True, ACK, b""))


def build_http(flow: Flow, rng: random.Random, plants: set[str], stats: dict) -> list[tuple[bool, int, bytes]]:
    mss = rng.choice([1448, 1460, 1380])
    count = 1 if rng.random() >= KEEP_ALIVE_SHARE else rng.choice([2, 3])
    if count > 1:
        stats["http_keep_alive_flows"] += 1
    stats["http_requests"] += count
    special = {plant: rng.randrange(count) for plant in sorted(plants)}  # which request carries each plant
    packets: list[tuple[bool, int, bytes]] = []
    for number in range(count):
        path = random_path(rng)
        if special.get("url_dl") == number:
            path = f"/dl/{rng.randbytes(6).hex()}.bin"
        elif special.get("url_gate") == number:
            path = f"/gate.php?id={rng.randrange(10**6)}"
        agent = BOT_AGENT if special.get("bot_agent") == number else rng.choice(USER_AGENTS)
        cookie = None
        if special.get("beacon_cookie") == number:
            cookie = f"beacon-id={rng.randbytes(8).hex()}; theme=dark"
        elif rng.random() < 0.3:
            cookie = f"sid={rng.randbytes(8).hex()}; theme=light"
        body = None
        cuts: tuple[int, ...] = ()
        if special.get("exfil_post") == number:
            before, after = form_body(rng, rng.randrange(40, 600)), form_body(rng, rng.randrange(20, 300))
            body = before + b"&" + EXFIL_LITERAL.encode() + b"&" + after
        elif rng.random() < POST_SHARE:
            body = form_body(rng, rng.randrange(60, 1500))
        request = http_request(rng, flow.name, path, agent, cookie, body)
        if special.get("exfil_post") == number:
            start = request.index(EXFIL_LITERAL.encode())
            cuts = (start + rng.randrange(1, len(EXFIL_LITERAL)),)  # the literal split across two segments
        elif body is not None and rng.random() < 0.5:
            cuts = (len(request) - len(body),)  # headers, then the body
        flow.requests.append((flow.name, flow.dport, path))
        for piece in segments(request, mss, cuts):
            packets.append((True, PSH | ACK, piece))
        answer(packets, rng, http_response(rng, rng.randrange(800, 6500), special.get("pe_download") == number), mss)
    return packets


def build_tls(flow: Flow, rng: random.Random, profile: HelloProfile, tls12: bool, chain: list[bytes], stats: dict) -> list[tuple[bool, int, bytes]]:
    mss = rng.choice([1448, 1460, 1380])
    post_quantum = rng.random() < profile.pq_share
    hello = client_hello(flow.name, rng, post_quantum, profile)
    flow.hello = hello
    packets = [(True, PSH | ACK, piece) for piece in segments(hello, 1400)]
    tls12 = tls12 or not profile.versions
    if tls12:
        stats["tls12_flows"] += 1
        flight = tls12_server_flight(rng, chain)
        flow.certificates = tuple(hashlib.sha256(der).hexdigest() for der in chain)
        client_finish = tls_record(0x16, handshake_message(16, b"\x20" + rng.randbytes(32))) + tls_record(0x14, b"\x01") + tls_record(0x16, rng.randbytes(40))
    else:
        flight = tls13_server_flight(rng, post_quantum and 0x11EC in profile.pq_groups)
        client_finish = tls_record(0x14, b"\x01") + tls_record(0x17, rng.randbytes(53))
    stats["server_flight_segments"] += len(segments(flight, mss))
    answer(packets, rng, flight, mss)
    packets.append((True, PSH | ACK, client_finish))
    if tls12:
        packets.append((False, PSH | ACK, tls_record(0x14, b"\x01") + tls_record(0x16, rng.randbytes(40))))
    packets.append((True, PSH | ACK, tls_record(0x17, rng.randbytes(rng.randrange(100, 700)))))
    for _ in range(1 + rng.randrange(5)):
        size = rng.randrange(1200, mss + 1)
        packets.append((False, ACK, tls_record(0x17, rng.randbytes(size - 5))))
        if rng.random() < 0.5:
            packets.append((True, ACK, b""))
    return packets


def build_flow(flow: Flow, rng: random.Random, plants: set[str] | None = None, profile: HelloProfile | None = None, tls12: bool = False, chain: list[bytes] | None = None,
               stats: dict | None = None) -> None:
    stats = stats if stats is not None else _new_stats()
    if flow.kind == "dns":
        ident = rng.randrange(65536)
        flow.packets = [(True, 0, dns_message(flow.name, ident, None)), (False, 0, dns_message(flow.name, ident, DNS_ANSWER))]
        return
    if flow.kind == "quic":
        profile = profile or COMMON_QUIC_PROFILES[0][1]
        dcid, scid = rng.randbytes(8), rng.randbytes(rng.choice([0, 8]))
        hello = client_hello(flow.name, rng, rng.random() < profile.pq_share, profile, scid)[5:]
        flow.hello = hello
        flow.packets = quic_packets(hello, dcid, scid, rng, stats)
        return
    handshake = [(True, SYN, b""), (False, SYN | ACK, b""), (True, ACK, b"")]
    if flow.kind == "tls":
        data = build_tls(flow, rng, profile or DEFAULT_PROFILE, tls12, chain or [], stats)
    else:
        data = build_http(flow, rng, plants or set(), stats)
    closing = [(True, FIN | ACK, b""), (False, FIN | ACK, b""), (True, ACK, b"")]
    flow.packets = handshake + data + closing


def frame(flow: Flow, to_server: bool, flags: int, payload: bytes, seq: int, ack: int) -> bytes:
    src, dst = (flow.client, flow.server) if to_server else (flow.server, flow.client)
    sport, dport = (flow.sport, flow.dport) if to_server else (flow.dport, flow.sport)
    if flow.kind in ("dns", "quic"):
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        proto = 17
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 64240, 0, 0) + payload
        proto = 6
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
        ethertype = 0x86DD
    else:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        ip = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethertype = 0x0800
    macs = (SERVER_MAC + CLIENT_MAC) if to_server else (CLIENT_MAC + SERVER_MAC)
    if flow.vlan is not None:
        return macs + struct.pack("!HHH", 0x8100, flow.vlan, ethertype) + ip + l4
    return macs + struct.pack("!H", ethertype) + ip + l4


def random_name(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["".join(rng.choice(letters) for _ in range(rng.randrange(4, 12))) for _ in range(rng.randrange(2, 4))]
    return ".".join(words) + "." + rng.choice(["com", "net", "org", "fr", "io", "de"])


def _new_stats() -> dict:
    return {"tls12_flows": 0, "server_flight_segments": 0, "quic_split_hellos": 0, "http_requests": 0, "http_keep_alive_flows": 0}


# --- ground truth --------------------------------------------------------------------------------


class AddressMarkers:
    """Address and network markers, looked up the slow and obvious way (with a cache)."""

    def __init__(self) -> None:
        self.exact: dict[int, list[str]] = {}
        self.networks: dict[tuple[int, int, int], list[str]] = {}
        self.prefixes: set[tuple[int, int]] = set()
        self.cache: dict[str, tuple[str, ...]] = {}

    def add(self, marker: dict) -> None:
        if marker["type"] == "cidr":
            network = ipaddress.ip_network(marker["value"])
            self.networks.setdefault((network.version, network.prefixlen, int(network.network_address)), []).append(marker["id"])
            self.prefixes.add((network.version, network.prefixlen))
        else:
            self.exact.setdefault(int(ipaddress.ip_address(marker["value"])), []).append(marker["id"])

    def hits(self, text: str) -> tuple[str, ...]:
        found = self.cache.get(text)
        if found is None:
            address = ipaddress.ip_address(text)
            value, bits = int(address), address.max_prefixlen
            found = tuple(self.exact.get(value, ()))
            for version, prefix in sorted(self.prefixes):
                if version == address.version:
                    found += tuple(self.networks.get((version, prefix, value >> (bits - prefix) << (bits - prefix)), ()))
            self.cache[text] = found
        return found


class Truth:
    """The events each bundle must give: which markers hit which generated flow."""

    def __init__(self, old: list[dict], new: list[dict]) -> None:
        self.old_addresses, self.new_addresses = AddressMarkers(), AddressMarkers()
        self.domains: dict[str, tuple[str, bool]] = {}  # name -> (id, subdomains)
        self.server_names: dict[str, list[str]] = {}
        self.http_hosts: dict[str, list[str]] = {}
        self.urls: dict[str, list[tuple[int | None, str, str]]] = {}
        self.fingerprints: dict[str, list[str]] = {}
        self.certificates: dict[str, list[str]] = {}
        self.literals: list[tuple[bytes, str]] = []
        self.regexes: list[tuple[re.Pattern[bytes], str]] = []
        for marker in old:
            if marker["type"] == "domain":
                self.domains[marker["value"]] = (marker["id"], marker.get("match", "subdomains") == "subdomains")
            else:
                self.old_addresses.add(marker)
        for marker in new:
            kind, value = marker["type"], marker["value"]
            if kind in ("ipv6", "ipv4", "cidr"):
                self.new_addresses.add(marker)
            elif kind == "tls_sni":
                self.server_names.setdefault(value, []).append(marker["id"])
            elif kind == "http_host":
                self.http_hosts.setdefault(value, []).append(marker["id"])
            elif kind == "url":
                host, _, path = value.partition("/")
                name, colon, port = host.rpartition(":")
                self.urls.setdefault(name if colon else host, []).append((int(port) if colon else None, "/" + path, marker["id"]))
            elif kind in ("ja3", "ja4"):
                self.fingerprints.setdefault(value, []).append(marker["id"])
            elif kind == "x509_sha256":
                self.certificates.setdefault(value, []).append(marker["id"])
            elif kind == "bytes":
                if marker["encoding"] == "regex":
                    self.regexes.append((re.compile(value.encode()), marker["id"]))
                else:
                    self.literals.append((bytes.fromhex(value) if marker["encoding"] == "hex" else value.encode(), marker["id"]))
        import yara_x

        compiler = yara_x.Compiler()
        for marker in new:
            if marker["type"] == "yara":
                compiler.new_namespace(marker["id"])
                compiler.add_source(marker["value"])
        self.yara = yara_x.Scanner(compiler.build())

    def name_hits(self, name: str) -> list[str]:
        labels = name.split(".")
        found = []
        for index in range(len(labels)):
            marker = self.domains.get(".".join(labels[index:]))
            if marker is not None and (index == 0 or marker[1]):
                found.append(marker[0])
        return found

    def hits(self, flow: Flow) -> tuple[set[str], set[str]]:
        """(markers of markers.json, markers only in markers-all.json) hitting the flow."""
        from probe.decode import tls

        old: set[str] = set()
        new: set[str] = set()
        for address in (flow.client, flow.server):
            old.update(self.old_addresses.hits(address))
            new.update(self.new_addresses.hits(address))
        if flow.kind == "dns":
            old.update(self.name_hits(flow.name))
            old.update(self.old_addresses.hits(DNS_ANSWER))  # the A record of the answer
            new.update(self.new_addresses.hits(DNS_ANSWER))
            return old, new
        old.update(self.name_hits(flow.name))
        if flow.kind in ("tls", "quic"):
            new.update(self.server_names.get(flow.name, ()))
            hello = tls.fingerprint_client_hello(flow.hello, "q") if flow.kind == "quic" else tls.read_client_hello(flow.hello)
            assert hello.status == tls.DONE and hello.server_name == flow.name, (flow, hello)
            new.update(self.fingerprints.get(hello.ja3, ()))
            new.update(self.fingerprints.get(hello.ja4.lower(), ()))
            for digest in flow.certificates:
                new.update(self.certificates.get(digest, ()))
        if flow.kind == "http":
            new.update(self.http_hosts.get(flow.name, ()))
            for host, port, path in flow.requests:
                for marker_port, prefix, marker in self.urls.get(host, ()):
                    if (marker_port is None or marker_port == port) and path.startswith(prefix):
                        new.add(marker)
        if flow.kind in ("tls", "http"):
            for to_server in (True, False):
                stream = b"".join(payload for direction, _, payload in flow.packets if direction == to_server)
                if flow.kind == "tls":  # read up to the end of the cleartext handshake only
                    handshake = tls.read_client_hello(stream) if to_server else tls.read_server_certificates(stream)
                    assert handshake.status in (tls.DONE, tls.ENCRYPTED), (flow, handshake.status)
                    stream = stream[: handshake.end]
                scanned = stream[:PATTERN_DEPTH]
                new.update(marker for literal, marker in self.literals if literal in scanned)
                new.update(marker for pattern, marker in self.regexes if pattern.search(scanned))
                new.update(match.namespace for match in self.yara.scan(stream[:YARA_DEPTH]).matching_rules)
        return old, new


# --- markers -------------------------------------------------------------------------------------


def fingerprints_of(profile: HelloProfile) -> tuple[str, str]:
    """JA3 and JA4 (lower case) of a hello of this profile, over TCP or QUIC as the profile is."""
    from probe.decode import tls

    hello = client_hello("fingerprint.example", random.Random(0), False, profile, b"\x01" * 8)
    result = tls.fingerprint_client_hello(hello[5:], "q") if profile.quic else tls.read_client_hello(hello)
    return result.ja3, result.ja4.lower()  # type: ignore[union-attr]


def new_type_markers(rng: random.Random, planted: dict) -> list[dict]:
    """Every marker type the replay issue did not have: planted values first, then decoys."""
    markers: list[dict] = []

    def add(kind: str, prefix: str, values: list[str], total: int, decoy, **extra) -> None:
        values = list(values)
        while len(values) < total:
            values.append(decoy())
        for index, value in enumerate(values):
            markers.append({"id": f"bench-{prefix}-{index}", "type": kind, "value": value, **extra})

    hexdigits = lambda count: rng.randbytes(count).hex()  # noqa: E731
    add("ipv6", "ipv6", planted["ipv6"], 1_000, lambda: str(ipaddress.IPv6Address((0xFD << 120) | rng.getrandbits(120))))
    add("http_host", "http-host", planted["http_host"], 100, lambda: random_name(rng) + ".invalid")
    add("tls_sni", "sni", planted["tls_sni"], 100, lambda: random_name(rng) + ".invalid")
    add("url", "url", planted["url"], 100, lambda: f"{random_name(rng)}.invalid/{rng.choice(PATH_WORDS)}/{hexdigits(4)}")
    add("ja3", "ja3", planted["ja3"], 1_000, lambda: hexdigits(16))
    add("ja4", "ja4", planted["ja4"], 1_000, lambda: f"{rng.choice('tq')}{rng.choice(['13', '12'])}{rng.choice('di')}{rng.randrange(2, 60):02d}{rng.randrange(2, 25):02d}{rng.choice(['h2', 'h1', 'h3', '00'])}_{hexdigits(6)}_{hexdigits(6)}")
    add("x509_sha256", "x509", planted["x509"], 1_000, lambda: hexdigits(32))
    # bytes: the planted three, 7 decoy regexes, then random literals and hex strings.
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/"
    patterns = [(EXFIL_LITERAL, "literal", "exfil-form"), (PE_HEADER_HEX[:40], "hex", "pe-header"), (BEACON_REGEX, "regex", "beacon-cookie")]
    patterns += [(expression, "regex", f"decoy-regex-{index}") for index, expression in enumerate(DECOY_REGEXES)]
    while len(patterns) < 200:
        number = len(patterns)
        if number % 3:
            patterns.append(("".join(rng.choice(letters) for _ in range(rng.randrange(8, 17))), "literal", f"decoy-literal-{number}"))
        else:
            patterns.append((hexdigits(rng.randrange(8, 17)), "hex", f"decoy-hex-{number}"))
    for index, (value, encoding, name) in enumerate(patterns):
        markers.append({"id": f"bench-bytes-{index}", "type": "bytes", "value": value, "encoding": encoding, "name": name})
    rules = dict(PLANTED_YARA)
    while len(rules) < 50:
        number = len(rules)
        rules[f"r{number}"] = f"rule r{number} {{ strings: $a = {{ {rng.randbytes(8).hex(' ').upper()} }} condition: $a }}"
    for name, rule in rules.items():
        markers.append({"id": name, "type": "yara", "value": rule, "name": name})
    return markers


def write_bundle(path: Path, bundle_id: str, markers: list[dict]) -> None:
    bundle = {"id": bundle_id, "issuer": "benchmark", "version": 1, "created": "2026-01-01T00:00:00Z", "markers": markers}
    path.write_text(json.dumps(bundle))


def count_types(markers: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker in markers:
        counts[marker["type"]] = counts.get(marker["type"], 0) + 1
    return counts


def _by_type(events: dict[str, int], type_of: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for marker, number in events.items():
        counts[type_of[marker]] = counts.get(type_of[marker], 0) + number
    return dict(sorted(counts.items()))


# --- the capture ---------------------------------------------------------------------------------


def generate(out_dir: Path, packets: int = 1_000_000, seed: int = 7) -> dict:
    """Write `mixed.pcap`, `markers.json` (ipv4, cidr, domain), `markers-all.json` (every type)
    and `expected.json` (`events_by_marker` for markers.json, `events_by_marker_all` for
    markers-all.json)."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Traffic addresses live in 1.0.0.0-99.255.255.255 (not 10/8, the clients'); decoy markers live
    # in 128.0.0.0 and above (IPv6 decoys in fd00::/8).
    servers: list[str] = []
    while len(servers) < 20_000:
        value = rng.randrange(0x01000000, 0x64000000)
        if value >> 24 != 10:
            servers.append(str(ipaddress.IPv4Address(value)))
    servers6 = [f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}" for _ in range(2_000)]
    names = [random_name(rng) for _ in range(60_000)]
    marked_names = rng.sample(names, 150)
    subdomain_parents = marked_names[:50]  # marked as a parent; traffic uses a subdomain of it
    marked_addresses = rng.sample(servers, 150)
    cidr_hosts = rng.sample([s for s in servers if s not in marked_addresses], 30)
    planted_cidrs = [str(ipaddress.IPv4Network(f"{h}/{rng.choice([16, 20, 24, 28])}", strict=False)) for h in cidr_hosts]
    unmarked = sorted(set(names) - set(marked_names))
    quic_domain = "quic-cdn." + random_name(rng)
    url_dl_host, url_gate_host, http_host_name, sni_name = rng.sample(unmarked, 4)

    # markers.json: the replay issue's types, as before, and the QUIC domain.
    markers = []
    for index, address in enumerate(marked_addresses):
        markers.append({"id": f"bench-ip-{index}", "type": "ipv4", "value": address})
    while len(markers) < 10_000:
        markers.append({"id": f"bench-ip-{len(markers)}", "type": "ipv4", "value": str(ipaddress.IPv4Address(rng.randrange(0x80000000, 0xDF000000)))})
    for index, network in enumerate(planted_cidrs):
        markers.append({"id": f"bench-cidr-{index}", "type": "cidr", "value": network})
    for index in range(len(planted_cidrs), 500):
        base = rng.randrange(0x80000000, 0xDF000000)
        markers.append({"id": f"bench-cidr-{index}", "type": "cidr", "value": str(ipaddress.IPv4Network(f"{ipaddress.IPv4Address(base)}/{rng.randrange(8, 31)}", strict=False))})
    for index, name in enumerate(marked_names):
        markers.append({"id": f"bench-domain-{index}", "type": "domain", "value": name, "match": "subdomains" if index < 50 else "exact"})
    markers.append({"id": "bench-quic-domain-0", "type": "domain", "value": quic_domain, "match": "subdomains"})
    while len(markers) < 20_500:
        markers.append({"id": f"bench-domain-{len(markers)}", "type": "domain", "value": random_name(rng) + ".invalid", "match": "subdomains"})

    # Client profiles, certificate chains, and what of them the new markers plant.
    tcp_profiles = COMMON_TCP_PROFILES + [(RARE_TCP_WEIGHT, rare_profile(rng, number, False)) for number in range(RARE_TCP_PROFILES)]
    quic_profiles = COMMON_QUIC_PROFILES + [(RARE_QUIC_WEIGHT, rare_profile(rng, number, True)) for number in range(RARE_QUIC_PROFILES)]
    rare_tcp = [profile for _, profile in tcp_profiles[len(COMMON_TCP_PROFILES):]]
    rare_quic = [profile for _, profile in quic_profiles[len(COMMON_QUIC_PROFILES):]]
    planted_ja3 = [fingerprints_of(profile)[0] for profile in rare_tcp[0:3] + rare_quic[0:1]]
    planted_ja4 = [fingerprints_of(profile)[1] for profile in rare_tcp[3:6] + rare_quic[1:2]]
    intermediates = [certificate_der(rng, rng.randrange(1000, 1500)) for _ in range(40)]
    chains = []
    for number in range(400):
        leaf = certificate_der(rng, rng.randrange(1000, 1500))
        # The first two intermediates sign three chains each; the others share the rest.
        first = number // 3 if number < 6 else rng.randrange(2, len(intermediates))
        chains.append([leaf, intermediates[first]] + ([intermediates[rng.randrange(2, len(intermediates))]] if rng.random() < 0.5 else []))
    digest = lambda der: hashlib.sha256(der).hexdigest()  # noqa: E731
    planted_x509 = [digest(chains[10][0]), digest(chains[11][0]), digest(chains[12][0]), digest(intermediates[0])]
    planted = {
        "ipv6": rng.sample(servers6, 3),
        "http_host": [http_host_name],
        "tls_sni": [sni_name],
        "url": [f"{url_dl_host}/dl/", f"{url_gate_host}:8080/gate.php"],
        "ja3": planted_ja3,
        "ja4": planted_ja4,
        "x509": planted_x509,
    }
    new_markers = new_type_markers(rng, planted)
    write_bundle(out_dir / "markers.json", "benchmark", markers)
    write_bundle(out_dir / "markers-all.json", "benchmark-all", markers + new_markers)
    truth = Truth(markers, new_markers)

    heap: list[tuple[float, int, int]] = []
    flows: list[Flow] = []
    expected: dict[str, int] = {}
    expected_all: dict[str, int] = {}
    flows_by_kind = {kind: 0 for kind in FLOW_WEIGHTS}
    packets_by_kind = {kind: 0 for kind in FLOW_WEIGHTS}
    stats = _new_stats()
    tls12_servers: dict[str, bool] = {}
    server_chains: dict[str, int] = {}
    kinds, weights = list(FLOW_WEIGHTS), list(FLOW_WEIGHTS.values())
    total = 0
    clock = 1_700_000_000.0
    while total < packets:
        kind = rng.choices(kinds, weights=weights)[0]
        v6 = rng.random() < 0.15
        if kind == "dns":
            server = rng.choice(DNS_RESOLVERS_V6 if v6 else DNS_RESOLVERS)
            dport = 53
        else:
            server = rng.choice(servers6 if v6 else servers)
            dport = {"tls": 443, "quic": 443}.get(kind) or rng.choice([80, 80, 8080])
        client = f"2001:db8:c::{rng.randrange(1, 65536):x}" if v6 else f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        name = rng.choice(names)
        if rng.random() < MARKED_NAME_SHARE:
            name = rng.choice(marked_names)
            if name in subdomain_parents:
                name = "www." + name
        plants = {plant for plant, share in PLANT.items() if rng.random() < share}
        if kind in ("tls", "quic") and "tls_sni" in plants:
            name = sni_name
        elif kind == "quic" and "quic_domain" in plants:
            name = f"{rng.choice(['www', 'cdn', 'edge'])}{rng.randrange(100)}.{quic_domain}"
        elif kind == "http":
            if "url_dl" in plants:
                name = url_dl_host
            elif "url_gate" in plants:
                name, dport = url_gate_host, rng.choice([8080, 80])
            elif "http_host" in plants:
                name = http_host_name
        clock += rng.expovariate(1 / 0.0005)
        flow = Flow(kind, client, server, rng.randrange(1024, 65536), dport, name, rng.randrange(1, 4095) if rng.random() < 0.2 else None, clock)
        if kind == "tls":
            profile = rng.choices([p for _, p in tcp_profiles], weights=[w for w, _ in tcp_profiles])[0]
            if server not in tls12_servers:
                tls12_servers[server] = rng.random() < TLS12_SERVER_SHARE
                server_chains[server] = rng.randrange(len(chains))
            build_flow(flow, rng, profile=profile, tls12=tls12_servers[server], chain=chains[server_chains[server]], stats=stats)
        elif kind == "quic":
            build_flow(flow, rng, profile=rng.choices([p for _, p in quic_profiles], weights=[w for w, _ in quic_profiles])[0], stats=stats)
        else:
            build_flow(flow, rng, plants=plants & {"url_dl", "url_gate", "exfil_post", "pe_download", "beacon_cookie", "bot_agent"}, stats=stats)
        old_hits, new_hits = truth.hits(flow)
        for marker in old_hits:
            expected[marker] = expected.get(marker, 0) + 1
            expected_all[marker] = expected_all.get(marker, 0) + 1
        for marker in new_hits - old_hits:
            expected_all[marker] = expected_all.get(marker, 0) + 1
        flow.hello, flow.certificates, flow.requests = b"", (), []
        flows.append(flow)
        flows_by_kind[kind] += 1
        packets_by_kind[kind] += len(flow.packets)
        heapq.heappush(heap, (flow.start, len(flows) - 1, 0))
        total += len(flow.packets)

    written = 0
    byte_count = 0
    with open(out_dir / "mixed.pcap", "wb") as out:
        out.write(PCAP_HEADER)
        sequence = {}
        while heap:
            when, index, position = heapq.heappop(heap)
            flow = flows[index]
            to_server, flags, payload = flow.packets[position]
            seqs = sequence.setdefault(index, [rng.randrange(2**32), rng.randrange(2**32)])
            own, other = (0, 1) if to_server else (1, 0)
            data = frame(flow, to_server, flags, payload, seqs[own], seqs[other])
            seqs[own] = (seqs[own] + len(payload) + (1 if flags & (SYN | FIN) else 0)) % 2**32
            seconds = int(when)
            out.write(struct.pack("<IIII", seconds, int((when - seconds) * 1_000_000), len(data), len(data)))
            out.write(data)
            written += 1
            byte_count += len(data)
            if position + 1 < len(flow.packets):
                heapq.heappush(heap, (when + rng.expovariate(1 / 0.02), index, position + 1))
            else:
                flows[index] = None  # type: ignore[call-overload]
                sequence.pop(index)
    all_markers = markers + new_markers
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "packets": written,
        "bytes": byte_count,
        "flows": len(flows),
        "flows_by_kind": flows_by_kind,
        "packets_by_kind": packets_by_kind,
        "traffic": stats,
        "markers": count_types(markers),
        "markers_all": count_types(all_markers),
        "events_by_marker": dict(sorted(expected.items())),
        "events": sum(expected.values()),
        "events_by_marker_all": dict(sorted(expected_all.items())),
        "events_all": sum(expected_all.values()),
    }
    type_of = {marker["id"]: marker["type"] for marker in all_markers}
    summary["events_by_type"] = _by_type(expected, type_of)
    summary["events_by_type_all"] = _by_type(expected_all, type_of)
    (out_dir / "expected.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary
