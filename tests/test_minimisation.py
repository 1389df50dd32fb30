"""Minimisation, proven (CPCE art. L33-14: keep what characterises an event, never the content).

The probe may write an event record made of an allowlist of fields only: network metadata,
counters, the marker's identity and value, the bundle's id and version, and encapsulation ids. The
tests below do not trust that claim: they replay a capture whose payloads carry unique canary
strings, in matching and non-matching flows and in every DNS, TLS and HTTP field that did not
match, through the real console script, then read every file the probe wrote (store, events, logs,
command outputs, its working and temporary directories) as raw bytes and through the store's own
reader. No canary, and no innermost address of a flow that matched nothing, may be anywhere, in
text or packed form. Tunnel endpoints recorded in a matching event's encapsulation are allowed,
and checked to be there, so that the search cannot pass because nothing was written at all.

The record encoder is checked to refuse anything outside the allowlist, and the probe process to
disable core dumps, so that a crash cannot write traffic to disk either.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

pytest.importorskip("scapy")

from scapy.layers.dns import DNS, DNSQR, DNSRR  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import GRE, Dot1Q, Ether  # noqa: E402
from scapy.layers.vxlan import VXLAN  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from bundle_support import write_bundle  # noqa: E402
from receivers import DatagramReceiver, StreamReceiver, WebhookReceiver, free_port, wait_until  # noqa: E402
from probe.clock import Clock, parse_instant  # noqa: E402
from probe.config import StoreSection  # noqa: E402
from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key, address_text  # noqa: E402
from probe.match.markers import Marker  # noqa: E402
from probe.record.events import Event  # noqa: E402
from probe.notify.documents import spooled_document  # noqa: E402
from probe.notify.spool import SPOOL_MAGIC  # noqa: E402
from probe.store.framing import INDEX_MAGIC, SEGMENT_MAGIC, read_file, read_frames, read_header  # noqa: E402
from probe.store.records import (  # noqa: E402
    AUDIT_FILTERS,
    ENCAPSULATION_FIELDS,
    ENCAPSULATION_TYPES,
    KIND_AUDIT,
    KIND_BUNDLE,
    KIND_ENCAPSULATION,
    KIND_MARKER,
    KIND_OBSERVER,
    MARKER_FIELDS,
    MATCHED_ON,
    AuditRecord,
    BundleRecord,
    RecordError,
    SegmentDictionary,
    decode_records,
    encode_audit,
    encode_event,
    encode_marker,
)
from probe.store.retention import AUDIT_CLASS, BUNDLES_CLASS, DEFAULT_CLASS  # noqa: E402
from probe.store.ring import RingStore  # noqa: E402

PROJECT_ROOT = Path(__file__).parents[1]
PROBE = Path(sys.executable).with_name("probe")

START = 1_793_534_400  # 2026-11-01T12:00:00Z, after the bundle's creation (2026-11-01T00:00:00Z)
NOW = "2026-11-02T00:00:00Z"
"""Retention is judged as of this time: the capture's events are then a few hours old."""
PURPOSE = "minimisation test: characterise the events of the crafted capture"
BUNDLE_ID = "test-bundle"

EVIL = "evil.example"
MARKED_IPV4 = "203.0.113.77"
MARKED_IPV6 = "2001:db8:bad::77"
MARKERS = [
    {"id": "m-evil", "type": "domain", "value": EVIL, "match": "subdomains", "severity": "high", "reference": "https://cert.example/advisory/1", "tlp": "green"},
    {"id": "m-ip4", "type": "ipv4", "value": MARKED_IPV4},
    {"id": "m-ip6", "type": "ipv6", "value": MARKED_IPV6},
]
STORED_MARKERS = {
    "m-evil": ["m-evil", "domain", EVIL, BUNDLE_ID, 1, "high", "https://cert.example/advisory/1", "green", None, "test", None],
    "m-ip4": ["m-ip4", "ipv4", MARKED_IPV4, BUNDLE_ID, 1, None, None, None, None, "test", None],
    "m-ip6": ["m-ip6", "ipv6", MARKED_IPV6, BUNDLE_ID, 1, None, None, None, None, "test", None],
}
"""Each marker as a store declaration must hold it: the issuer's fields in MARKER_FIELDS order."""

VXLAN_TUNNEL = ("198.51.100.1", "198.51.100.2")
GRE_TUNNEL = ("198.51.100.11", "198.51.100.12")
VXLAN_ENCAPSULATION = [{"type": "vlan", "id": 301}, {"type": "vxlan", "src": VXLAN_TUNNEL[0], "dst": VXLAN_TUNNEL[1], "vni": 5001}]
GRE_ENCAPSULATION = [{"type": "gre", "src": GRE_TUNNEL[0], "dst": GRE_TUNNEL[1], "key": 77}]

EXPECTED_EVENTS = {
    ("m-evil", "dns.query", "192.0.2.10", "192.0.2.53", "[]"),
    ("m-evil", "tls.sni", "192.0.2.10", "192.0.2.44", "[]"),
    ("m-evil", "http.host", "192.0.2.10", "192.0.2.80", "[]"),
    ("m-ip4", "ip.dst", "192.0.2.10", MARKED_IPV4, "[]"),
    ("m-ip6", "ip.dst", "2001:db8:1::10", MARKED_IPV6, "[]"),
    ("m-evil", "http.host", "192.0.2.110", "192.0.2.180", json.dumps(VXLAN_ENCAPSULATION, sort_keys=True)),
    ("m-evil", "dns.query", "192.0.2.120", "192.0.2.153", json.dumps(GRE_ENCAPSULATION, sort_keys=True)),
}
"""(marker, matched_on, src, dest, encapsulation) of every event the capture must give, no more."""

SUBSCRIBER_CONFIG = """
[probe]
name = "minimisation-probe"
site = "tap-1"

[store]
subscriber_prefixes = ["192.0.2.0/24", "2001:db8:1::/48"]
"""

Wrap = Callable[[Packet], Packet]
"""Builds the frame as captured around an innermost IP packet (plain Ethernet, or a tunnel)."""


# --- canaries and addresses ---------------------------------------------------------------------


class Canaries:
    """Unique canary strings: a sequence number and a random token, so that none can be a part of
    another, nor of anything the probe writes by chance."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def __call__(self) -> str:
        canary = f"CANARY-{len(self.issued):02d}-{secrets.token_hex(6)}"
        self.issued.append(canary)
        return canary

    def b(self) -> bytes:
        return self().encode()


def canary_needles(canary: str) -> list[bytes]:
    """Forms a canary could be written in, lower-cased (files are searched lower-cased): as is,
    its random token alone (a name truncated or re-cased still shows it), and hex-encoded."""
    lower = canary.lower()
    return [lower.encode(), lower.rsplit("-", 1)[1].encode(), lower.encode().hex().encode()]


def address_text_needles(text: str) -> list[bytes]:
    """Text forms of an address, lower-cased: canonical, exploded (IPv6), IPv4-mapped and as a
    decimal integer (IPv4)."""
    address = ipaddress.ip_address(text)
    forms = {str(address), address.exploded}
    if address.version == 4:
        forms |= {f"::ffff:{address}", str(int(address))}
    return [form.lower().encode() for form in sorted(forms)]


def address_packed_needles(text: str) -> list[bytes]:
    """Binary forms: the 4 or 16 network-order bytes, the 16-byte IPv4-mapped form the probe keeps
    internally, and the msgpack uint32 (0xce + 4 bytes) the store packs an IPv4 address as."""
    address = ipaddress.ip_address(text)
    if address.version == 6:
        return [address.packed]
    return [address.packed, IPV4_MAPPED_PREFIX + address.packed, b"\xce" + address.packed]


# --- building the capture -----------------------------------------------------------------------


def ip_layer(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def plain(inner: Packet) -> Packet:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / inner


def in_vxlan(vlan: int, outer: tuple[str, str], vni: int) -> Wrap:
    def wrap(inner: Packet) -> Packet:
        return Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / Dot1Q(vlan=vlan) / IP(src=outer[0], dst=outer[1]) / UDP(sport=49152, dport=4789) / VXLAN(flags=0x08, vni=vni) / Ether(src="02:00:00:00:02:01", dst="02:00:00:00:02:02") / inner

    return wrap


def in_gre(outer: tuple[str, str], key: int) -> Wrap:
    def wrap(inner: Packet) -> Packet:
        return Ether(src="02:00:00:00:03:01", dst="02:00:00:00:03:02") / IP(src=outer[0], dst=outer[1]) / GRE(key_present=1, key=key) / inner

    return wrap


def stamped(packets: list[Packet], start: float) -> list[Packet]:
    for number, packet in enumerate(packets):
        packet.time = start + number * 0.001
    return packets


def tcp_session(client: str, cport: int, server: str, sport: int, exchanges: list[tuple[bytes, bytes]], start: float, wrap: Wrap = plain) -> list[Packet]:
    """A complete TCP flow: handshake, each (request, response) exchange, FIN both ways, last ACK."""
    c, s = 1000, 5000
    to_server = lambda **kw: wrap(ip_layer(client, server) / TCP(sport=cport, dport=sport, **kw))  # noqa: E731
    to_client = lambda **kw: wrap(ip_layer(server, client) / TCP(sport=sport, dport=cport, **kw))  # noqa: E731
    packets = [to_server(flags="S", seq=c), to_client(flags="SA", seq=s, ack=c + 1), to_server(flags="A", seq=c + 1, ack=s + 1)]
    c, s = c + 1, s + 1
    for request, response in exchanges:
        packets.append(to_server(flags="PA", seq=c, ack=s) / Raw(request))
        c += len(request)
        packets.append(to_client(flags="PA", seq=s, ack=c) / Raw(response))
        s += len(response)
    packets += [to_server(flags="FA", seq=c, ack=s), to_client(flags="FA", seq=s, ack=c + 1), to_server(flags="A", seq=c + 1, ack=s + 1)]
    return stamped(packets, start)


def udp_exchange(client: str, cport: int, server: str, sport: int, datagrams: list[tuple[bool, bytes]], start: float, wrap: Wrap = plain) -> list[Packet]:
    """UDP datagrams of one flow; each is (sent by the client, payload)."""
    packets = [wrap(ip_layer(client, server) / UDP(sport=cport, dport=sport) / Raw(payload)) if from_client else wrap(ip_layer(server, client) / UDP(sport=sport, dport=cport) / Raw(payload)) for from_client, payload in datagrams]
    return stamped(packets, start)


def dns_exchange(client: str, server: str, names: list[str], answers: list[str], start: float, wrap: Wrap = plain, cport: int = 40000) -> list[Packet]:
    """A query with every name in `names` as a question, and a response repeating them with a
    CNAME and a TXT answer carrying canaries that were never asked for."""
    questions = [DNSQR(qname=name) for name in names]
    query = DNS(id=0x4242, rd=1, qd=questions)
    records = [DNSRR(rrname=names[0], type="CNAME", rdata=answers[0]), DNSRR(rrname=answers[0], type="TXT", rdata=[answers[1]])]
    response = DNS(id=0x4242, qr=1, rd=1, ra=1, qd=questions, an=records)
    return udp_exchange(client, cport, server, 53, [(True, bytes(query)), (False, bytes(response))], start, wrap)


def dns_over_tcp(message: DNS) -> bytes:
    data = bytes(message)
    return struct.pack("!H", len(data)) + data


def tls_extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def client_hello(server_name: str, canary: Canaries) -> bytes:
    """A TLS 1.3-style ClientHello whose only matching field is the SNI: canaries fill the client
    random, the session id, the ALPN list, a session ticket and a GREASE extension."""
    name = server_name.encode()
    server_name_list = struct.pack("!BH", 0, len(name)) + name
    protocols = b"".join(bytes([len(protocol)]) + protocol for protocol in (canary.b(), b"h2"))
    extensions = (
        tls_extension(16, struct.pack("!H", len(protocols)) + protocols)
        + tls_extension(0, struct.pack("!H", len(server_name_list)) + server_name_list)
        + tls_extension(35, canary.b() * 2)
        + tls_extension(0x4A4A, canary.b())
    )
    random = canary.b().ljust(32, b"\x00")
    session_id = canary.b().ljust(32, b"\x00")
    body = b"\x03\x03" + random + bytes([len(session_id)]) + session_id + struct.pack("!H", 4) + b"\x13\x01\x13\x02" + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tls_record(content_type: int, data: bytes) -> bytes:
    return bytes([content_type]) + b"\x03\x03" + struct.pack("!H", len(data)) + data


def tls_session(client: str, cport: int, server: str, server_name: str, canary: Canaries, start: float, wrap: Wrap = plain) -> list[Packet]:
    """ClientHello, a server flight and application data both ways: canaries everywhere but the
    matching SNI."""
    server_flight = tls_record(0x16, b"\x02\x00\x00\x46" + canary.b() + b"certificate CN=" + canary.b())
    return tcp_session(client, cport, server, 443, [(client_hello(server_name, canary), server_flight), (tls_record(0x17, canary.b()), tls_record(0x17, canary.b()))], start, wrap)


def http_request(host: str, canary: Canaries) -> bytes:
    """A POST whose only matching field is the Host: canaries in the path, the query, headers,
    a cookie, the user agent and the body."""
    body = b"secret=" + canary.b() + b"&token=" + canary.b()
    head = (
        f"POST /{canary()}/login?next={canary()} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {canary()}\r\n"
        f"X-Api-Key: {canary()}\r\nCookie: session={canary()}; theme=dark\r\nReferer: http://{canary()}.ref.example/\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def http_response(canary: Canaries) -> bytes:
    body = canary.b()
    return f"HTTP/1.1 200 OK\r\nSet-Cookie: id={canary()}\r\nServer: {canary()}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class Traffic:
    packets: list[Packet]
    canaries: list[str]
    forbidden: list[str]
    """Innermost addresses of flows that matched nothing (and endpoints of tunnels carrying only
    such flows): none may be written anywhere."""
    allowed: set[str] = field(default_factory=set)
    """Innermost addresses of matching flows and endpoints of tunnels carrying one: they may be
    (and are) written."""


def crafted_traffic() -> Traffic:
    canary = Canaries()
    marked = lambda: f"{canary()}.{EVIL}"  # noqa: E731  a matching name whose subdomain label is a canary
    vxlan = in_vxlan(301, VXLAN_TUNNEL, 5001)
    gre = in_gre(GRE_TUNNEL, 77)
    flows: list[list[Packet]] = []

    # Matching flows, plain Ethernet: each field that did not match carries a canary.
    flows.append(dns_exchange("192.0.2.10", "192.0.2.53", [marked(), f"{canary()}.harmless.example"], [f"{canary()}.cdn.example", canary()], START))
    flows.append(tls_session("192.0.2.10", 41002, "192.0.2.44", marked(), canary, START + 1))
    flows.append(tcp_session("192.0.2.10", 41003, "192.0.2.80", 80, [(http_request(marked(), canary), http_response(canary)), (http_request(f"{canary()}.elsewhere.example", canary), http_response(canary))], START + 2))
    flows.append(tcp_session("192.0.2.10", 41004, MARKED_IPV4, 8443, [(canary.b() * 3, canary.b()), (canary.b(), canary.b())], START + 3))
    flows.append(udp_exchange("2001:db8:1::10", 41005, MARKED_IPV6, 5555, [(True, canary.b()), (False, canary.b()), (True, canary.b())], START + 4))

    # Flows that match nothing, between addresses that appear nowhere else; IPv4 and IPv6.
    flows.append(tcp_session("198.18.7.21", 42000, "198.18.7.22", 80, [(http_request(f"{canary()}.harmless.example", canary), http_response(canary))], START + 5))
    flows.append(dns_exchange("198.18.9.31", "198.18.9.32", [f"{canary()}.other.example", f"{canary()}-evil.example", f"{EVIL}.{canary()}.test"], [f"{canary()}.cdn.example", canary()], START + 6, cport=40001))
    flows.append(tls_session("198.18.11.41", 42001, "198.18.11.42", f"{canary()}.harmless.example", canary, START + 7))
    flows.append(udp_exchange("198.18.13.51", 42002, "198.18.13.52", 9999, [(True, canary.b() * 4), (False, canary.b())], START + 8))
    flows.append(stamped([plain(IP(src="198.18.19.81", dst="198.18.19.82") / ICMP(type=8, id=7, seq=1) / Raw(canary.b())), plain(IP(src="198.18.19.82", dst="198.18.19.81") / ICMP(type=0, id=7, seq=1) / Raw(canary.b()))], START + 9))
    flows.append(tcp_session("2001:db8:cafe::21", 42003, "2001:db8:cafe::22", 80, [(http_request(f"{canary()}.harmless6.example", canary), http_response(canary))], START + 10))
    flows.append(dns_exchange("2001:db8:beef::31", "2001:db8:beef::53", [f"{canary()}.other6.example"], [f"{canary()}.cdn6.example", canary()], START + 11, cport=40002))
    flows.append(tls_session("fd00:c0de::41", 42004, "fd00:c0de::42", f"{canary()}.harmless6.example", canary, START + 12))
    flows.append(tcp_session("198.18.21.91", 42005, "198.18.21.92", 53, [(dns_over_tcp(DNS(id=7, rd=1, qd=[DNSQR(qname=f"{canary()}.tcp.example")])), dns_over_tcp(DNS(id=7, qr=1, rcode=3, qd=[DNSQR(qname=f"{canary()}.tcp.example")])))], START + 13))

    # Tunnelled flows: one matching flow inside VLAN 301 + VXLAN and one inside GRE (their tunnel
    # endpoints are recorded, and allowed); a flow matching nothing inside the same VXLAN tunnel;
    # a flow matching nothing inside a GRE tunnel of its own (nothing of it may be recorded).
    flows.append(tcp_session("192.0.2.110", 43000, "192.0.2.180", 80, [(http_request(marked(), canary), http_response(canary))], START + 14, vxlan))
    flows.append(dns_exchange("192.0.2.120", "192.0.2.153", [marked()], [f"{canary()}.cdn.example", canary()], START + 15, gre, cport=40003))
    flows.append(dns_exchange("198.18.15.61", "198.18.15.62", [f"{canary()}.inner.example"], [f"{canary()}.cdn.example", canary()], START + 16, vxlan, cport=40004))
    flows.append(tcp_session("198.18.17.71", 43001, "198.18.17.72", 80, [(http_request(f"{canary()}.tunnelled.example", canary), http_response(canary))], START + 17, in_gre(("198.18.17.1", "198.18.17.2"), 99)))

    forbidden = [
        "198.18.7.21", "198.18.7.22", "198.18.9.31", "198.18.9.32", "198.18.11.41", "198.18.11.42", "198.18.13.51", "198.18.13.52",
        "198.18.19.81", "198.18.19.82", "2001:db8:cafe::21", "2001:db8:cafe::22", "2001:db8:beef::31", "2001:db8:beef::53",
        "fd00:c0de::41", "fd00:c0de::42", "198.18.21.91", "198.18.21.92", "198.18.15.61", "198.18.15.62",
        "198.18.17.71", "198.18.17.72", "198.18.17.1", "198.18.17.2",
    ]
    allowed = {"192.0.2.10", "192.0.2.53", "192.0.2.44", "192.0.2.80", MARKED_IPV4, "2001:db8:1::10", MARKED_IPV6, "192.0.2.110", "192.0.2.180", "192.0.2.120", "192.0.2.153", *VXLAN_TUNNEL, *GRE_TUNNEL}
    return Traffic([packet for flow in flows for packet in flow], canary.issued, forbidden, allowed)


# --- running the probe --------------------------------------------------------------------------


def sinks_config(outputs: Path, webhook: int, syslog_tcp: int, syslog_udp: int) -> str:
    """Every kind of sink, one of them down so that the spool keeps what the others received."""
    return f"""
[notify]
drain_timeout = 2
retry_initial = 0.1
retry_max = 0.2

[[sinks]]
name = "archive"
type = "file"
authority = true
path = "{outputs / 'notifications.jsonl'}"

[[sinks]]
name = "anssi"
type = "webhook"
url = "http://127.0.0.1:{webhook}/v1/notifications"

[[sinks]]
name = "soc-tcp"
type = "syslog"
transport = "tcp"
address = "127.0.0.1:{syslog_tcp}"

[[sinks]]
name = "soc-udp"
type = "syslog"
address = "127.0.0.1:{syslog_udp}"

[[sinks]]
name = "down"
type = "webhook"
url = "http://127.0.0.1:{free_port()}/"
"""


@dataclass
class Run:
    traffic: Traffic
    inputs: Path
    store: Path
    outputs: Path
    replay_stderr: str

    def scanned_roots(self) -> list[Path]:
        return [self.store, self.outputs]


def run_probe(run_dir: Path, name: str, *args: object) -> subprocess.CompletedProcess:
    """Run the console script from an empty working directory in the output area, with HOME and
    TMPDIR there too, so that anything it might write by the way is searched as well; stdout and
    stderr go to files of the output area."""
    environment = {**os.environ, "HOME": str(run_dir / "home"), "TMPDIR": str(run_dir / "tmp")}
    with open(run_dir / f"{name}.stdout", "wb") as stdout, open(run_dir / f"{name}.stderr", "wb") as stderr:
        completed = subprocess.run([str(PROBE), *map(str, args)], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=run_dir / "cwd", env=environment, timeout=60)
    result = subprocess.CompletedProcess(completed.args, completed.returncode, (run_dir / f"{name}.stdout").read_text(encoding="utf-8"), (run_dir / f"{name}.stderr").read_text(encoding="utf-8"))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, (name, result.returncode, result.stderr)
    return result


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Replay the canary capture into a store and an events file, then query, export, list
    subscribers, read the audit log and the statistics, each output kept in a file."""
    root = tmp_path_factory.mktemp("minimisation")
    inputs, outputs, store = root / "inputs", root / "outputs", root / "store"
    for directory in (inputs, outputs, outputs / "cwd", outputs / "home", outputs / "tmp"):
        directory.mkdir()
    traffic = crafted_traffic()
    capture = inputs / "canaries.pcap"
    wrpcap(str(capture), traffic.packets)
    bundle = write_bundle(inputs / "markers.json", MARKERS)
    config = inputs / "probe.toml"
    webhook, syslog_tcp, syslog_udp = WebhookReceiver().start(), StreamReceiver().start(), DatagramReceiver()
    config.write_text(SUBSCRIBER_CONFIG + sinks_config(outputs, webhook.port, syslog_tcp.port, syslog_udp.port), encoding="utf-8")
    common = ("--config", config, "--now", NOW)

    try:
        replay = run_probe(outputs, "replay", "replay", capture, "--markers", bundle, "--store", store, "--events", outputs / "events.jsonl", *common)
        assert wait_until(lambda: len(syslog_udp.messages) == len(syslog_tcp.messages) == len(webhook.requests))
    finally:
        webhook.stop()
        syslog_tcp.stop()
        syslog_udp.stop()
    received = outputs / "received"
    received.mkdir()
    (received / "webhook.jsonl").write_bytes(b"".join(body + b"\n" for _, body in webhook.requests))
    (received / "webhook-headers.txt").write_text("".join(f"{headers}\n" for headers, _ in webhook.requests), encoding="utf-8")
    (received / "syslog-tcp.log").write_bytes(b"".join(message + b"\n" for message in syslog_tcp.messages))
    (received / "syslog-udp.log").write_bytes(b"".join(message + b"\n" for message in syslog_udp.messages))
    run_probe(outputs, "query-jsonl", "store", "query", "--store", store, "--format", "jsonl", "--purpose", PURPOSE, *common)
    run_probe(outputs, "query-csv", "store", "query", "--store", store, "--format", "csv", "--ip", "192.0.2.0/24", "--purpose", PURPOSE, *common)
    run_probe(outputs, "query-table", "store", "query", "--store", store, "--marker", "m-evil", "--purpose", PURPOSE, *common)
    run_probe(outputs, "export-stix", "store", "export", "--for-authority", "--marker", "m-evil", "--format", "stix", "--store", store, "--purpose", PURPOSE, *common)
    run_probe(outputs, "export-jsonl", "store", "export", "--for-authority", "--marker", f"{BUNDLE_ID}/m-ip6", "--store", store, "--purpose", PURPOSE, *common)
    run_probe(outputs, "subscribers", "store", "subscribers", "--store", store, "--purpose", PURPOSE, *common)
    run_probe(outputs, "audit", "store", "audit", "--store", store, "--format", "jsonl", "--purpose", PURPOSE, *common)
    run_probe(outputs, "stats", "store", "stats", "--store", store, *common)
    return Run(traffic, inputs, store, outputs, replay.stderr)


def written_files(run: Run) -> Iterator[Path]:
    for root in run.scanned_roots():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield path


def event_key(event: dict) -> tuple[str, str, str, str, str]:
    return (event["marker"]["id"], event["matched_on"], event["src_ip"], event["dest_ip"], json.dumps(event["encapsulation"], sort_keys=True))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_store(run: Run) -> RingStore:
    return RingStore(str(run.store), StoreSection(), Clock(parse_instant(NOW)), writable=False)


# --- the events were written: the search below cannot pass on empty outputs -------------------


def test_the_canaries_and_addresses_really_are_in_the_capture(probe_run: Run):
    """Every canary and every forbidden address is in the input, so finding none in the outputs
    means the probe dropped them, not that the capture never held them."""
    data = (probe_run.inputs / "canaries.pcap").read_bytes()
    lowered = data.lower()
    assert len(probe_run.traffic.canaries) == len(set(probe_run.traffic.canaries)) > 100
    for canary in probe_run.traffic.canaries:
        assert canary.lower().encode() in lowered, canary
    for address in probe_run.traffic.forbidden:
        assert ipaddress.ip_address(address).packed in data, address
    assert not set(probe_run.traffic.forbidden) & probe_run.traffic.allowed


def test_every_matching_flow_was_written_and_stored(probe_run: Run):
    outputs = probe_run.outputs
    assert {event_key(event) for event in jsonl(outputs / "events.jsonl")} == EXPECTED_EVENTS
    assert {event_key(event) for event in jsonl(outputs / "query-jsonl.stdout")} == EXPECTED_EVENTS
    assert len(jsonl(outputs / "query-jsonl.stdout")) == len(EXPECTED_EVENTS)
    assert "probe: events: 7 " in probe_run.replay_stderr, probe_run.replay_stderr
    assert f"store: 15 records stored in {probe_run.store}" in probe_run.replay_stderr, probe_run.replay_stderr  # 7 events x 2 revisions + 1 bundle activation
    csv_rows = (outputs / "query-csv.stdout").read_text(encoding="utf-8").splitlines()
    assert len(csv_rows) == 1 + 6  # header, and every event with an address in 192.0.2.0/24
    stix = json.loads((outputs / "export-stix.stdout").read_text(encoding="utf-8"))
    assert sum(stix_object["type"] == "sighting" for stix_object in stix["objects"]) == 5
    assert [event["marker"]["id"] for event in jsonl(outputs / "export-jsonl.stdout")] == ["m-ip6"]
    subscribers = (outputs / "subscribers.stdout").read_text(encoding="utf-8")
    assert "192.0.2.10" in subscribers and "2001:db8:1::10" in subscribers
    audit = jsonl(outputs / "audit.stdout")
    assert [record["command"] for record in audit] == ["query", "query", "query", "export", "export", "subscribers"]
    assert all(record["purpose"] == PURPOSE for record in audit)


def test_tunnel_endpoints_of_a_matching_event_are_recorded(probe_run: Run):
    """The one exception to 'no address but the flow's': the tunnels a matching flow came
    through, with their ids. They are allowed, and they must be there."""
    events = {event_key(event)[:4]: event for event in jsonl(probe_run.outputs / "events.jsonl")}
    assert events["m-evil", "http.host", "192.0.2.110", "192.0.2.180"]["encapsulation"] == VXLAN_ENCAPSULATION
    assert events["m-evil", "http.host", "192.0.2.110", "192.0.2.180"]["vlan"] == [301]
    assert events["m-evil", "dns.query", "192.0.2.120", "192.0.2.153"]["encapsulation"] == GRE_ENCAPSULATION
    with open_store(probe_run) as store:
        encapsulations = [record.encapsulation for summary in store.segments(DEFAULT_CLASS) for record in store.read(summary)]
    assert VXLAN_ENCAPSULATION in encapsulations and GRE_ENCAPSULATION in encapsulations


def test_every_sink_received_the_events_and_the_spool_kept_them_for_the_one_down(probe_run: Run):
    """The notifications exist, so that searching them below means something: every sink got
    each event's revisions, and the spool (inside the store directory) holds them for the sink
    that was down."""
    found = {event["event_id"] for event in jsonl(probe_run.outputs / "events.jsonl")}
    received = probe_run.outputs / "received"
    for documents in (
        jsonl(probe_run.outputs / "notifications.jsonl"),
        jsonl(received / "webhook.jsonl"),
        [json.loads(line.split(" ", 7)[7]) for line in (received / "syslog-tcp.log").read_text(encoding="utf-8").splitlines()],
        [json.loads(line.split(" ", 7)[7]) for line in (received / "syslog-udp.log").read_text(encoding="utf-8").splitlines()],
    ):
        assert {document["event"]["event_id"] for document in documents if document["notification"] == "event"} == found
        assert len(documents) == 2 * len(found) + 1  # detected and ended, and the bundle's activation
    spooled = list((probe_run.store / "spool").glob("*.spool"))
    assert spooled and sum(path.stat().st_size for path in spooled) > 1000
    assert "sink down:" in probe_run.replay_stderr and "15 notifications not yet acknowledged stay in the spool" in probe_run.replay_stderr


def test_the_probe_wrote_store_segments_indexes_and_outputs(probe_run: Run):
    """The search covers the files it should: segments and indexes of every record class, the
    lock files, the events file, every command's output and log."""
    names = {path.relative_to(probe_run.store).as_posix() for path in written_files(probe_run) if path.is_relative_to(probe_run.store)}
    for record_class in (DEFAULT_CLASS, BUNDLES_CLASS, AUDIT_CLASS):
        assert any(re.fullmatch(rf"segments/{record_class}/\d{{8}}T\d{{6}}Z\.seg", name) for name in names), (record_class, names)
        assert any(re.fullmatch(rf"segments/{record_class}/\d{{8}}T\d{{6}}Z\.idx", name) for name in names), (record_class, names)
    assert {"lock", "audit.lock"} <= names
    outputs = {path.name for path in written_files(probe_run) if path.is_relative_to(probe_run.outputs)}
    assert {"events.jsonl", "replay.stderr", "query-jsonl.stdout", "export-stix.stdout", "subscribers.stdout", "audit.stdout", "stats.stdout"} <= outputs


# --- nothing else was written -------------------------------------------------------------------


def test_no_canary_in_any_file_the_probe_wrote(probe_run: Run):
    """Raw bytes of every file (and every file name), case-insensitive, in plain and hex form."""
    leaks = []
    for path in written_files(probe_run):
        lowered = path.read_bytes().lower()
        name = str(path).lower().encode()
        for canary in probe_run.traffic.canaries:
            for needle in canary_needles(canary):
                if needle in lowered or needle in name:
                    leaks.append(f"{path}: {needle.decode()} (canary {canary})")
    assert not leaks, "payload content written by the probe:\n" + "\n".join(leaks)


def test_no_address_of_a_non_matching_flow_in_any_file_the_probe_wrote(probe_run: Run):
    """Text forms searched case-insensitively, packed forms (4 and 16 bytes, IPv4-mapped, msgpack
    uint32) in the raw bytes; the tunnel endpoints allowed are not among the addresses searched."""
    leaks = []
    for path in written_files(probe_run):
        data = path.read_bytes()
        lowered = data.lower()
        for address in probe_run.traffic.forbidden:
            for needle in address_text_needles(address):
                if needle in lowered:
                    leaks.append(f"{path}: {needle.decode()} (text of {address})")
            for needle in address_packed_needles(address):
                if needle in data:
                    leaks.append(f"{path}: {needle.hex()} (packed {address})")
    assert not leaks, "addresses of flows that matched nothing written by the probe:\n" + "\n".join(leaks)


def test_store_reader_returns_only_allowlisted_fields(probe_run: Run):
    """Every record read back through the store's own reader has the allowlist's shape, refers only
    to matching flows and their tunnels, and holds no canary anywhere in its representation."""
    traffic = probe_run.traffic
    needles = [needle for canary in traffic.canaries for needle in canary_needles(canary)]
    forbidden_texts = {address.lower() for address in traffic.forbidden}
    defaults = Marker("", "", "", "", 0)
    unlisted_marker_fields = [name for name in Marker._fields if name not in MARKER_FIELDS]
    kinds: dict[type, int] = {}
    with open_store(probe_run) as store:
        for summary in store.segments():
            for record in store.read(summary):
                kinds[type(record)] = kinds.get(type(record), 0) + 1
                text = repr(record).lower().encode()
                assert not [needle for needle in needles if needle in text], record
                if isinstance(record, Event):
                    assert summary.record_class == DEFAULT_CLASS
                    assert {address_text(record.src), address_text(record.dst)} <= traffic.allowed - set(VXLAN_TUNNEL) - set(GRE_TUNNEL), record
                    assert not {address_text(record.src), address_text(record.dst)} & forbidden_texts
                    assert record.matched_on in MATCHED_ON
                    assert isinstance(record.marker, Marker)
                    assert [getattr(record.marker, name) for name in unlisted_marker_fields] == [getattr(defaults, name) for name in unlisted_marker_fields], record.marker
                    assert [getattr(record.marker, name) for name in MARKER_FIELDS] == STORED_MARKERS[record.marker.id]
                    for layer in record.encapsulation:
                        assert layer["type"] in ENCAPSULATION_TYPES and set(layer) <= set(ENCAPSULATION_FIELDS), layer
                    assert record.encapsulation in ([], VXLAN_ENCAPSULATION, GRE_ENCAPSULATION)
                    for name in ("revision", "timestamp", "proto", "src_port", "dst_port", "opened", "first_seen", "last_seen", "packets", "bytes", "hits"):
                        assert type(getattr(record, name)) is int, (name, record)
                elif isinstance(record, BundleRecord):
                    assert summary.record_class == BUNDLES_CLASS
                    assert (record.action, record.issuer, record.bundle, record.version, record.reason) == ("activated", "test", BUNDLE_ID, 1, "")
                    assert re.fullmatch(r"[0-9a-f]{64}", record.digest)
                else:
                    assert isinstance(record, AuditRecord) and summary.record_class == AUDIT_CLASS
                    assert set(record.filters) <= AUDIT_FILTERS and record.purpose == PURPOSE
        assert not store.problems, store.problems
    assert kinds == {Event: 14, BundleRecord: 1, AuditRecord: 7}, kinds


def test_store_files_hold_exactly_the_allowlisted_record_shapes(probe_run: Run):
    """Below the reader: every frame of every segment, decoded as msgpack, is one of the five
    record shapes of probe/store/records.py, with the types the allowlist names; every address is
    a matching flow's; every string of the event class is a marker's identity or a matching
    tunnel's endpoint; index and segment headers hold their fixed keys only."""
    allowed_keys = {address_key(address) for address in probe_run.traffic.allowed}
    tunnel_strings = {"vlan", "vxlan", "gre", *VXLAN_TUNNEL, *GRE_TUNNEL}
    frames_seen = 0
    for path in sorted(probe_run.store.rglob("*.seg")):
        record_class = path.parent.name
        data = read_file(str(path))
        header, start = read_header(str(path), data, SEGMENT_MAGIC)
        assert set(header) == {"class", "base", "period", "probe", "site"} and header["class"] == record_class, header
        payloads, end = read_frames(data, start)
        assert end == len(data), f"{path}: {len(data) - end} bytes that are not frames"
        for payload in payloads:
            frames_seen += 1
            row = msgpack.unpackb(payload)
            kind = row[0]
            if record_class == DEFAULT_CLASS and kind >= 0:
                assert len(row) in (15, 16), row
                for position, value in enumerate(row):
                    if position in (3, 5):
                        address = IPV4_MAPPED_PREFIX + value.to_bytes(4, "big") if isinstance(value, int) else value
                        assert address in allowed_keys, (path, row)
                    else:
                        assert type(value) is int, (path, position, row)
                assert row[7] >> 1 < len(MATCHED_ON)
            elif record_class == DEFAULT_CLASS and kind == KIND_MARKER:
                assert len(row) == 3 and row[2] in STORED_MARKERS.values(), row
            elif record_class == DEFAULT_CLASS and kind == KIND_ENCAPSULATION:
                assert len(row) == 3 and row[2] in (VXLAN_ENCAPSULATION, GRE_ENCAPSULATION), row
                assert {value for layer in row[2] for value in layer.values() if isinstance(value, str)} <= tunnel_strings
            elif record_class == BUNDLES_CLASS:
                assert kind == KIND_BUNDLE and len(row) == 8 and row[2:6] == ["activated", "test", BUNDLE_ID, 1] and row[7] == "", row
                assert re.fullmatch(r"[0-9a-f]{64}", row[6]), row
            elif record_class == AUDIT_CLASS:
                assert kind == KIND_AUDIT and len(row) == 8 and set(row[5]) <= AUDIT_FILTERS, row
            else:
                pytest.fail(f"{path}: record {row!r} of no allowed shape")
    assert frames_seen == 7 * 2 + 3 + 2 + 1 + 7  # events x 2 revisions, markers, encapsulations, bundle, audits
    for path in sorted(probe_run.store.rglob("*.idx")):
        data = read_file(str(path))
        header, end = read_header(str(path), data, INDEX_MAGIC)
        assert set(header) == {"class", "base", "length", "records", "time_min", "time_max", "first_min", "details"}, header
        payloads, details_end = read_frames(data, end)
        assert details_end == len(data) and len(payloads) == 1
        details = msgpack.unpackb(payloads[0])
        assert set(details) == {"markers", "bloom"} and isinstance(details["bloom"], bytes)
        assert set(details["markers"]) <= {f"{BUNDLE_ID}/{marker}" for marker in STORED_MARKERS}
    leftovers = {path.relative_to(probe_run.store).as_posix() for path in probe_run.store.rglob("*") if path.is_file() and path.suffix not in (".seg", ".idx", ".spool")}
    assert leftovers == {"lock", "audit.lock", "spool/lock", *(f"spool/cursors/{sink}" for sink in ("archive", "anssi", "soc-tcp", "soc-udp", "down"))}, leftovers


def test_spooled_notifications_hold_exactly_the_event_record(probe_run: Run):
    """Every spool entry is [sequence, made, retention deadline, item]; an event's item is the
    compact form of the event record's allowlisted fields (addresses those of matching flows),
    the document it becomes holds exactly the fields of the record written to events.jsonl, and
    the other items are bundle documents."""
    record_fields = set(jsonl(probe_run.outputs / "events.jsonl")[0]) - {"probe"}
    allowed_keys = {address_key(address) for address in probe_run.traffic.allowed}
    kinds = []
    for path in sorted((probe_run.store / "spool").glob("*.spool")):
        data = read_file(str(path))
        _, start = read_header(str(path), data, SPOOL_MAGIC)
        payloads, end = read_frames(data, start)
        assert end == len(data)
        for payload in payloads:
            sequence, made, deadline, item = msgpack.unpackb(payload)
            assert all(type(value) is int for value in (sequence, made, deadline))
            document = spooled_document(item, {"name": "minimisation-probe", "site": "tap-1", "declaration": ""}, made)
            kinds.append(document["notification"])
            if document["notification"] == "event":
                assert isinstance(item, list) and len(item) == 18 and item[4] in allowed_keys and item[6] in allowed_keys, item
                assert set(document) == {"notification", "idempotency_key", "created", "probe", "stage", "event"}
                assert set(document["event"]) == record_fields
            else:
                assert set(item) == {"notification", "idempotency_key", "created", "probe", "bundle"} and item["probe"]["name"] == "minimisation-probe"
    assert sorted(kinds) == ["bundle"] + ["event"] * 14


# --- the encoder refuses anything outside the allowlist -----------------------------------------


EVENT_ALLOWLIST = ("revision", "timestamp", "proto", "src", "src_port", "dst", "dst_port", "to_server", "matched_on", "marker", "encapsulation", "opened", "first_seen", "last_seen", "packets", "bytes", "hits", "observer")


def allowed_event(**changes: object) -> Event:
    marker = Marker("m-evil", "domain", EVIL, BUNDLE_ID, 1, subdomains=True, issuer="test")
    event = Event(0, START * 10**9, 6, address_key("192.0.2.10"), 41000, address_key("192.0.2.80"), 80, True, "http.host", marker, [], START * 10**9, START * 10**9, START * 10**9 + 5_000_000, 8, 900, 1)
    return event._replace(**changes)


def test_event_tuple_is_the_allowlist():
    """An event is a fixed tuple: no field can be added to one, and adding a field to the type
    changes this list (a deliberate, reviewed change)."""
    assert Event._fields == EVENT_ALLOWLIST
    with pytest.raises(TypeError):
        Event(*allowed_event(), "CANARY")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Event(*allowed_event()._replace(observer=("probe-1", "tap-1")), "CANARY")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        allowed_event()._replace(payload=b"CANARY")
    assert encode_event(allowed_event(), SegmentDictionary(), START * 10**6)


@pytest.mark.parametrize(
    "changes",
    [
        {"matched_on": "http.path"},
        {"matched_on": "CANARY.evil.example"},
        {"encapsulation": [{"type": "vlan", "id": 1, "payload": "CANARY"}]},
        {"encapsulation": [{"type": "http", "id": 1}]},
        {"encapsulation": [{"id": 1}]},
        {"encapsulation": [{"type": "vlan", "id": "CANARY"}]},
        {"encapsulation": [{"type": "gre", "src": b"\xc6\x12\x07\x15", "dst": "198.51.100.2"}]},
        {"encapsulation": [{"type": "vxlan", "vni": True}]},
        {"src": b"\xc6\x12\x07\x15"},
        {"dst": "198.18.7.22"},
        {"src_port": 70000},
        {"packets": -1},
        {"hits": "1"},
        {"revision": True},
        {"marker": Marker("m-evil", "domain", EVIL, BUNDLE_ID, 1, severity=b"CANARY")},  # type: ignore[arg-type]
        {"observer": "CANARY"},
        {"observer": (b"CANARY", "tap-1")},
        {"observer": ("probe-1", "tap-1", "CANARY")},
        {"observer": ("probe-1", "C" * 65)},
        {"observer": ("", "tap-1")},
        {"observer": ("GET /CANARY HTTP/1.1", "tap-1")},
        {"packets": 2**64},
        {"last_seen": 2**80},
        {"encapsulation": ["CANARY"]},
        {"marker": Marker("m-evil", "domain", EVIL, BUNDLE_ID, "1")},  # type: ignore[arg-type]
    ],
)
def test_a_record_outside_the_allowlist_cannot_be_encoded(changes: dict):
    """Refused before anything is written, and without a trace in the segment's dictionary: the
    next event's references stay valid."""
    dictionary = SegmentDictionary()
    with pytest.raises(RecordError):
        encode_event(allowed_event(**changes), dictionary, START * 10**6)
    assert dictionary.size() == (0, 1, 0) and not dictionary.markers and not dictionary.observers


def test_a_collectors_record_names_its_observer_once_per_segment():
    """On a collector, each event names the probe that saw it: a (name, site) declared once per
    segment, then referred to by number, like markers and encapsulations."""
    dictionary = SegmentDictionary()
    base = START * 10**6
    events = [allowed_event(observer=("probe-1", "tap-1")), allowed_event(observer=("probe-2", "tap-2"), revision=1), allowed_event(observer=("probe-1", "tap-1"), revision=2), allowed_event(revision=3)]
    payloads = [payload for event in events for payload in encode_event(event, dictionary, base)]
    rows = [msgpack.unpackb(payload) for payload in payloads]
    assert [row for row in rows if row[0] == KIND_OBSERVER] == [[KIND_OBSERVER, 0, ["probe-1", "tap-1"]], [KIND_OBSERVER, 1, ["probe-2", "tap-2"]]]
    assert [len(row) for row in rows if row[0] >= 0] == [17, 17, 17, 15], "a probe's own event holds no observer"
    assert [(event.revision, event.observer) for event in decode_records(payloads, base)] == [(event.revision, event.observer) for event in events]


def test_a_pattern_marker_is_stored_without_its_pattern():
    """`bytes` and `yara` values could be payload: the store keeps the rule's name instead."""
    marker = Marker("m-bytes", "bytes", "CANARY-pattern-0000", BUNDLE_ID, 1, name="exfil-rule")
    encoded = encode_marker(marker)
    assert "CANARY-pattern-0000" not in repr(encoded)
    assert dict(zip(MARKER_FIELDS, encoded))["name"] == "exfil-rule"
    assert all(b"CANARY" not in payload for payload in encode_event(allowed_event(marker=marker, matched_on="payload"), SegmentDictionary(), START * 10**6))


def test_an_audit_record_outside_the_allowlist_cannot_be_encoded():
    with pytest.raises(RecordError):
        encode_audit(AuditRecord(START * 10**9, "analyst", 1000, "query", {"payload": "CANARY"}, PURPOSE, 1))
    assert encode_audit(AuditRecord(START * 10**9, "analyst", 1000, "query", {"marker": "m-evil"}, PURPOSE, 1))


# --- no core dump -------------------------------------------------------------------------------


NOBODY = 65534


def unprivileged(command: list[str]) -> tuple[list[str], int]:
    """The command as an unprivileged user, and that user's uid.

    /proc/<pid>/status belongs to the process's user while the process is dumpable, and to root
    once it is not (the kernel hides a non-dumpable process from its own user). Seen by root, a
    root process's files belong to root either way, so as root the command runs as `nobody`,
    given only CAP_DAC_READ_SEARCH (ambient) to reach the interpreter under /root and the test's
    files; a capability kept this way does not make a process non-dumpable (the control shows it).
    """
    if os.geteuid() != 0:
        return command, os.getuid()
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the probe as an unprivileged user"
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return prefix + command, NOBODY


def core_limits(pid: int) -> tuple[str, str] | None:
    for line in Path(f"/proc/{pid}/limits").read_text(encoding="ascii").splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line[len("Max core file size") :].split()[:2]
            return soft, hard
    return None


def process_state(pid: int) -> tuple[str, tuple[str, str] | None, int]:
    """(command line, core limits, owner of /proc/<pid>/status) of a running process."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return command, core_limits(pid), os.stat(f"/proc/{pid}/status").st_uid


def wait_for(process: subprocess.Popen, ready: Callable[[tuple[str, tuple[str, str] | None, int]], bool], wait: float = 15) -> tuple[str, tuple[str, str] | None, int]:
    """Poll the process's state until `ready` holds (or `wait` runs out); the last state seen."""
    deadline = time.monotonic() + wait
    state = process_state(process.pid)
    while not ready(state) and time.monotonic() < deadline:
        assert process.poll() is None, f"exited early with {process.returncode}"
        time.sleep(0.02)
        state = process_state(process.pid)
    return state


def test_the_probe_process_cannot_dump_core(tmp_path: Path):
    """The real console script, blocked reading a capture from a pipe kept open: its core size
    limit is 0 (soft and hard: it cannot raise it again) and it is not dumpable (its /proc files
    belong to root, unlike those of a control process of the same user and the same
    interpreter). Then the capture arrives, and the same process replays it."""
    bundle = write_bundle(tmp_path / "markers.json", MARKERS)
    control_command, user = unprivileged([sys.executable, "-c", "import sys; sys.stdin.buffer.read()"])
    probe_command, _ = unprivileged([str(PROBE), "replay", "-", "--markers", str(bundle), "--events", "-"])

    control = subprocess.Popen(control_command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        command, _, owner = wait_for(control, lambda state: "sys.stdin.buffer.read" in state[0] and state[2] == user)
        assert "sys.stdin.buffer.read" in command and owner == user, f"the control process should be dumpable: /proc/{control.pid}/status belongs to uid {owner}, not {user}"
    finally:
        control.communicate(timeout=30)

    probe = subprocess.Popen(probe_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        command, limits, owner = wait_for(probe, lambda state: "replay" in state[0] and state[1] == ("0", "0") and state[2] == 0)
        assert "replay" in command, command
        assert limits == ("0", "0"), f"Max core file size of the probe process: {limits}"
        assert owner == 0, f"/proc/{probe.pid}/status belongs to uid {owner}: the probe process is still dumpable"
        packets = tcp_session("192.0.2.10", 41000, "192.0.2.80", 80, [(b"GET / HTTP/1.1\r\nHost: www.evil.example\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")], START)
        wrpcap(str(tmp_path / "stdin.pcap"), packets)
        stdout, stderr = probe.communicate((tmp_path / "stdin.pcap").read_bytes(), timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.communicate()
    assert probe.returncode == 0, stderr.decode()
    assert [json.loads(line)["marker"]["id"] for line in stdout.decode().splitlines()] == ["m-evil"]
