"""Per-frame decoder (`probe.decode.frame`): every link type and encapsulation, IP fragment
reassembly (plain and carrying tunnels), bounded reassembly, bad and hostile input, fuzzing, and
agreement between the batch classifier (`probe.decode.batch`) and the per-frame decoder.

Frames are built with scapy; the tunnel headers scapy is awkward with (ERSPAN II/III, Geneve,
MPLS, VXLAN) are packed by hand with struct so that every bit the decoder reads is under the
test's control.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from scapy.config import conf
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, fragment6
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from probe.capture.frames import FrameBatch
from probe.decode.batch import HEADER_REACH, KEY_BYTES, classify_batch, flow_keys
from probe.decode.fragments import FragmentReassembler
from probe.decode.frame import FrameDecoder
from probe.decode.packet import Packet, address_text

conf.verb = 0

T0 = 1_700_000_000 * 1_000_000_000
SECOND = 1_000_000_000

# --- addresses and payloads ---------------------------------------------------------------------

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
INNER_MAC = {"src": "a2:00:00:00:00:0a", "dst": "a2:00:00:00:00:0b"}  # first nibble not 0/4/6
A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::a", "2001:db8:1::b"
M4S, M4D = "10.20.30.1", "10.20.30.2"  # middle tunnel endpoints
O4S, O4D = "203.0.113.1", "203.0.113.2"  # outer tunnel endpoints
O6S, O6D = "2001:db8:ffff::1", "2001:db8:ffff::2"

HTTP = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
TLS = bytes.fromhex("160301002a0100002603031122334455")  # start of a ClientHello
DNS_QUERY = bytes(DNS(id=0x4242, rd=1, qd=DNSQR(qname="marker.example.org", qtype="A")))


def inner(kind: str):
    """Scapy IP packet of one innermost flow and what decoding it must yield:
    (layer, (src, dst, proto, sport, dport, payload-or-None))."""
    if kind == "tcp4":
        return IP(src=A4, dst=B4, id=11) / TCP(sport=40001, dport=80, flags="PA", seq=1000) / Raw(HTTP), (A4, B4, 6, 40001, 80, HTTP)
    if kind == "tcp6":
        return IPv6(src=A6, dst=B6) / TCP(sport=40002, dport=443, flags="PA", seq=2000) / Raw(TLS), (A6, B6, 6, 40002, 443, TLS)
    if kind == "udp4":
        return IP(src=A4, dst=B4, id=12) / UDP(sport=33333, dport=53) / Raw(DNS_QUERY), (A4, B4, 17, 33333, 53, DNS_QUERY)
    if kind == "udp6":
        return IPv6(src=A6, dst=B6) / UDP(sport=33334, dport=53) / Raw(DNS_QUERY), (A6, B6, 17, 33334, 53, DNS_QUERY)
    if kind == "icmp4":
        return IP(src=A4, dst=B4, id=13) / ICMP(type=8, id=7, seq=1) / Raw(b"ping"), (A4, B4, 1, 0, 0, None)
    if kind == "icmp6":
        return IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=7, seq=1) / Raw(b"ping"), (A6, B6, 58, 0, 0, None)
    raise ValueError(kind)


def ether(layer, **fields) -> bytes:
    return bytes(Ether(**MAC, **fields) / layer)


def ether_raw(ethertype: int, payload: bytes) -> bytes:
    return bytes(Ether(type=ethertype, **MAC)) + payload


def inner_ether(layer) -> bytes:
    return bytes(Ether(**INNER_MAC) / layer)


# --- hand-built tunnel headers ------------------------------------------------------------------


def gre(protocol: int, *, checksum: bool = False, key: int | None = None, sequence: int | None = None, extra_flags: int = 0) -> bytes:
    flags = extra_flags | (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | (0x1000 if sequence is not None else 0)
    header = struct.pack("!HH", flags, protocol)
    if checksum:
        header += b"\x12\x34\x00\x00"
    if key is not None:
        header += struct.pack("!I", key)
    if sequence is not None:
        header += struct.pack("!I", sequence)
    return header


def erspan2(session: int, vlan: int = 0) -> bytes:
    """ERSPAN type II: Ver=1 | VLAN(12) / COS(3) En(2) T(1) Session(10) / Reserved(12) Index(20).
    COS, En and T are set so that a decoder not masking the session id is caught."""
    return struct.pack("!HHI", (1 << 12) | vlan, (5 << 13) | (3 << 11) | (1 << 10) | session, 0x000ABCDE)


def erspan3(session: int, platform: bool) -> bytes:
    """ERSPAN type III: Ver=2 | VLAN / COS BSO T Session / timestamp / SGT P FT HW-ID D Gra O,
    then the 8-byte platform sub-header when O is set."""
    word0 = (2 << 28) | (7 << 13) | (2 << 11) | (1 << 10) | session
    word2 = (0xBEEF << 16) | (1 << 15) | (0x2A << 4) | (1 << 3) | (3 << 1) | (1 if platform else 0)
    header = struct.pack("!IIHH", word0, 0x01020304, word2 >> 16, word2 & 0xFFFF)
    if platform:
        header += struct.pack("!II", (3 << 26) | 0x1234, 0x55667788)
    return header


def vxlan(vni: int) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8)


def geneve(vni: int, protocol: int, options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    return struct.pack("!BBHI", len(options) // 4, 0, protocol, vni << 8) + options


GENEVE_OPTIONS = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\xde\xad\xbe\xef" + struct.pack("!HBB", 0xFFFF, 0x01, 2) + b"\x00" * 8


def mpls(*labels: int, bottom: bool = True) -> bytes:
    out = b""
    for index, label in enumerate(labels):
        last = bottom and index == len(labels) - 1
        out += struct.pack("!I", (label << 12) | (0b101 << 9) | (0x100 if last else 0) | 64)
    return out


def outer4(proto: int, payload: bytes, src: str = O4S, dst: str = O4D) -> bytes:
    return ether(IP(src=src, dst=dst, proto=proto, id=99) / Raw(payload))


def outer6(next_header: int, payload: bytes) -> bytes:
    return ether(IPv6(src=O6S, dst=O6D, nh=next_header) / Raw(payload))


def outer_udp4(sport: int, dport: int, payload: bytes, src: str = O4S, dst: str = O4D) -> bytes:
    return ether(IP(src=src, dst=dst, id=98) / UDP(sport=sport, dport=dport) / Raw(payload))


def gre_entry(src: str = O4S, dst: str = O4D, **fields) -> dict:
    return {"type": "gre", "src": src, "dst": dst, **fields}


def sll2(protocol: int) -> bytes:
    """LINKTYPE_LINUX_SLL2 header: protocol, reserved, ifindex, ARPHRD, packet type, address length, address."""
    return struct.pack("!HHIHBB8s", protocol, 0, 3, 1, 0, 6, bytes.fromhex("020000000001") + b"\0\0")


# --- the catalogue of valid frames --------------------------------------------------------------


@dataclass
class Case:
    name: str
    frame: bytes
    expected: tuple  # (src, dst, proto, sport, dport, payload or None)
    encapsulation: list
    linktype: int = 1
    fast: bool = False  # whether the batch classifier must take it


def build_cases() -> list[Case]:
    cases: list[Case] = []

    def add(name, frame, kind_or_expected, encapsulation=(), linktype=1, fast=False):
        expected = inner(kind_or_expected)[1] if isinstance(kind_or_expected, str) else kind_or_expected
        cases.append(Case(name, frame, expected, list(encapsulation), linktype, fast))

    for kind in ("tcp4", "tcp6", "udp4", "udp6", "icmp4", "icmp6"):
        layer, expected = inner(kind)
        add(f"ether-{kind}", ether(layer), expected, fast=kind[:3] in ("tcp", "udp"))
    # Ethernet padding after a short IPv4 datagram is not payload
    short = bytes(Ether(**MAC) / IP(src=A4, dst=B4) / UDP(sport=1000, dport=2000) / Raw(b"abc"))
    add("ether-padded-udp4", short.ljust(60, b"\0"), (A4, B4, 17, 1000, 2000, b"abc"), fast=True)
    add("ether-tcp4-syn-no-payload", ether(IP(src=A4, dst=B4) / TCP(sport=5555, dport=22, flags="S", seq=77)), (A4, B4, 6, 5555, 22, b""), fast=True)

    # 802.1Q, QinQ
    for kind in ("tcp4", "tcp6", "udp4"):
        layer, _ = inner(kind)
        add(f"dot1q-{kind}", ether(Dot1Q(vlan=100, prio=5) / layer), kind, [{"type": "vlan", "id": 100}], fast=True)
    layer, _ = inner("tcp4")
    add("qinq-88a8", ether(Dot1AD(vlan=10, prio=3) / Dot1Q(vlan=20) / layer), "tcp4", [{"type": "vlan", "id": 10}, {"type": "vlan", "id": 20}])
    add("qinq-9100", ether(Dot1Q(vlan=30) / Dot1Q(vlan=40) / layer, type=0x9100), "tcp4", [{"type": "vlan", "id": 30}, {"type": "vlan", "id": 40}])
    add("qinq-8100-8100", ether(Dot1Q(vlan=4095) / Dot1Q(vlan=1) / layer), "tcp4", [{"type": "vlan", "id": 4095}, {"type": "vlan", "id": 1}])

    # MPLS: 1 and 3 labels carrying IPv4 and IPv6 (type guessed by the first nibble)
    for kind in ("tcp4", "tcp6"):
        layer, _ = inner(kind)
        add(f"mpls1-{kind}", ether_raw(0x8847, mpls(1000) + bytes(layer)), kind, [{"type": "mpls", "label": 1000}])
        add(f"mpls3-{kind}", ether_raw(0x8847, mpls(16, 17, 0xFFFFF) + bytes(layer)), kind, [{"type": "mpls", "label": label} for label in (16, 17, 0xFFFFF)])
    add("mpls-multicast-udp4", ether_raw(0x8848, mpls(555) + bytes(inner("udp4")[0])), "udp4", [{"type": "mpls", "label": 555}])
    layer, _ = inner("tcp4")
    # pseudowire with control word carrying Ethernet (VLAN-tagged inside), and without control word
    add(
        "mpls-pw-cw-ether",
        ether_raw(0x8847, mpls(200, 300) + b"\x00\x00\x00\x2a" + inner_ether(Dot1Q(vlan=7) / layer)),
        "tcp4",
        [{"type": "mpls", "label": 200}, {"type": "mpls", "label": 300}, {"type": "vlan", "id": 7}],
    )
    add("mpls-pw-no-cw-ether", ether_raw(0x8847, mpls(201) + inner_ether(layer)), "tcp4", [{"type": "mpls", "label": 201}])
    add("dot1q-mpls-tcp4", ether(Dot1Q(vlan=9, type=0x8847) / Raw(mpls(3000) + bytes(layer))), "tcp4", [{"type": "vlan", "id": 9}, {"type": "mpls", "label": 3000}])

    # IPv4 options, IPv6 extension headers
    add("ipv4-router-alert", ether(IP(src=A4, dst=B4, options=[IPOption_Router_Alert()]) / TCP(sport=40001, dport=80, flags="PA", seq=1000) / Raw(HTTP)), "tcp4")
    add("ipv4-record-route", ether(IP(src=A4, dst=B4, options=[IPOption_RR(routers=["1.2.3.4", "5.6.7.8", "9.9.9.9"])]) / UDP(sport=33333, dport=53) / Raw(DNS_QUERY)), "udp4")
    tcp6_transport = TCP(sport=40002, dport=443, flags="PA", seq=2000) / Raw(TLS)
    base6 = IPv6(src=A6, dst=B6)
    add("ipv6-hop-by-hop", ether(base6 / IPv6ExtHdrHopByHop() / tcp6_transport), "tcp6")
    add("ipv6-destination-options", ether(base6 / IPv6ExtHdrDestOpt() / tcp6_transport), "tcp6")
    add("ipv6-routing", ether(base6 / IPv6ExtHdrRouting(addresses=["2001:db8::99", "2001:db8::98"]) / tcp6_transport), "tcp6")
    add("ipv6-hbh-routing-dest", ether(base6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::99"]) / IPv6ExtHdrDestOpt() / tcp6_transport), "tcp6")
    add("ipv6-atomic-fragment", ether(base6 / IPv6ExtHdrFragment(id=5, offset=0, m=0) / tcp6_transport), "tcp6")
    add("ipv6-hbh-udp", ether(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / UDP(sport=33334, dport=53) / Raw(DNS_QUERY)), "udp6")
    add("ipv6-dest-icmp6", ether(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest()), (A6, B6, 58, 0, 0, None))

    # GRE
    tcp4_bytes, tcp6_bytes = bytes(inner("tcp4")[0]), bytes(inner("tcp6")[0])
    add("gre-ipv4", outer4(47, gre(0x0800) + tcp4_bytes), "tcp4", [gre_entry()])
    add("gre-ipv6", outer4(47, gre(0x86DD) + tcp6_bytes), "tcp6", [gre_entry()])
    add("gre-key-seq", outer4(47, gre(0x0800, key=0xDEADBEEF, sequence=7) + tcp4_bytes), "tcp4", [gre_entry(key=0xDEADBEEF)])
    add("gre-seq-only", outer4(47, gre(0x0800, sequence=8) + tcp4_bytes), "tcp4", [gre_entry()])
    add("gre-checksum-key-seq", outer4(47, gre(0x86DD, checksum=True, key=42, sequence=9) + tcp6_bytes), "tcp6", [gre_entry(key=42)])
    add("gre-over-ipv6", outer6(47, gre(0x0800, key=1) + tcp4_bytes), "tcp4", [gre_entry(O6S, O6D, key=1)])
    add("gre-teb", outer4(47, gre(0x6558) + inner_ether(inner("tcp4")[0])), "tcp4", [gre_entry()])
    add("gre-teb-vlan-key", outer4(47, gre(0x6558, key=77) + inner_ether(Dot1Q(vlan=12) / inner("udp6")[0])), "udp6", [gre_entry(key=77), {"type": "vlan", "id": 12}])
    add("gre-mpls", outer4(47, gre(0x8847) + mpls(44) + tcp4_bytes), "tcp4", [gre_entry(), {"type": "mpls", "label": 44}])

    # ERSPAN
    mirrored = inner_ether(inner("tcp4")[0])
    add("erspan1", outer4(47, gre(0x88BE) + mirrored), "tcp4", [gre_entry()])
    add("erspan2", outer4(47, gre(0x88BE, sequence=1) + erspan2(0x2AB) + mirrored), "tcp4", [gre_entry(), {"type": "erspan", "version": 2, "session": 0x2AB}])
    add("erspan2-key", outer4(47, gre(0x88BE, key=5, sequence=2) + erspan2(1) + mirrored), "tcp4", [gre_entry(key=5), {"type": "erspan", "version": 2, "session": 1}])
    add("erspan3", outer4(47, gre(0x22EB, sequence=1) + erspan3(0x3FF, platform=False) + mirrored), "tcp4", [gre_entry(), {"type": "erspan", "version": 3, "session": 0x3FF}])
    add("erspan3-platform", outer4(47, gre(0x22EB, sequence=1) + erspan3(17, platform=True) + mirrored), "tcp4", [gre_entry(), {"type": "erspan", "version": 3, "session": 17}])
    add("erspan3-over-ipv6", outer6(47, gre(0x22EB, sequence=3) + erspan3(18, platform=True) + inner_ether(inner("udp6")[0])), "udp6", [gre_entry(O6S, O6D), {"type": "erspan", "version": 3, "session": 18}])

    # VXLAN, Geneve
    add("vxlan-dst", outer_udp4(55555, 4789, vxlan(5000) + inner_ether(inner("tcp4")[0])), "tcp4", [{"type": "vxlan", "src": O4S, "dst": O4D, "vni": 5000}])
    add("vxlan-src-only", outer_udp4(4789, 55556, vxlan(0xFFFFFF) + inner_ether(inner("udp6")[0])), "udp6", [{"type": "vxlan", "src": O4S, "dst": O4D, "vni": 0xFFFFFF}])
    add("vxlan-over-ipv6", ether(IPv6(src=O6S, dst=O6D) / UDP(sport=1, dport=4789) / Raw(vxlan(3) + inner_ether(inner("tcp4")[0]))), "tcp4", [{"type": "vxlan", "src": O6S, "dst": O6D, "vni": 3}])
    add("geneve-ether-options", outer_udp4(50000, 6081, geneve(777, 0x6558, GENEVE_OPTIONS) + inner_ether(inner("tcp4")[0])), "tcp4", [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 777}])
    add("geneve-ether-no-options", outer_udp4(50000, 6081, geneve(778, 0x6558) + inner_ether(inner("tcp6")[0])), "tcp6", [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 778}])
    add("geneve-ipv4", outer_udp4(50001, 6081, geneve(779, 0x0800) + tcp4_bytes), "tcp4", [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 779}])
    add("geneve-ipv4-options", outer_udp4(50002, 6081, geneve(780, 0x0800, GENEVE_OPTIONS) + bytes(inner("udp4")[0])), "udp4", [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 780}])
    add("geneve-ipv6", outer_udp4(6081, 50003, geneve(781, 0x86DD) + tcp6_bytes), "tcp6", [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 781}])

    # IP in IP
    add("ipip", outer4(4, tcp4_bytes), "tcp4", [{"type": "ipip", "src": O4S, "dst": O4D}])
    add("6in4", outer4(41, tcp6_bytes), "tcp6", [{"type": "6in4", "src": O4S, "dst": O4D}])
    add("4in6", outer6(4, tcp4_bytes), "tcp4", [{"type": "4in6", "src": O6S, "dst": O6D}])
    add("ip6ip6", outer6(41, bytes(inner("icmp6")[0])), "icmp6", [{"type": "ip6ip6", "src": O6S, "dst": O6D}])
    add("ipip-icmp", outer4(4, bytes(inner("icmp4")[0])), "icmp4", [{"type": "ipip", "src": O4S, "dst": O4D}])

    # nested: GRE -> ERSPAN II -> Ethernet -> VLAN -> VXLAN -> IPv4/TCP
    vxlan_in_vlan = inner_ether(Dot1Q(vlan=77) / IP(src=M4S, dst=M4D) / UDP(sport=60000, dport=4789) / Raw(vxlan(9) + inner_ether(inner("tcp4")[0])))
    add(
        "nested-gre-erspan-vlan-vxlan",
        outer4(47, gre(0x88BE, sequence=4) + erspan2(5) + vxlan_in_vlan),
        "tcp4",
        [gre_entry(), {"type": "erspan", "version": 2, "session": 5}, {"type": "vlan", "id": 77}, {"type": "vxlan", "src": M4S, "dst": M4D, "vni": 9}],
    )
    add(
        "nested-qinq-mpls-gre-geneve-6in4",
        ether(Dot1AD(vlan=1) / Dot1Q(vlan=2, type=0x8847) / Raw(mpls(10, 11) + bytes(IP(src=O4S, dst=O4D, proto=47) / Raw(gre(0x0800) + bytes(IP(src=M4S, dst=M4D) / UDP(sport=9, dport=6081) / Raw(geneve(12, 0x0800) + bytes(IP(src="10.9.9.9", dst="10.9.9.8", proto=41) / Raw(tcp6_bytes)))))))),
        "tcp6",
        [
            {"type": "vlan", "id": 1},
            {"type": "vlan", "id": 2},
            {"type": "mpls", "label": 10},
            {"type": "mpls", "label": 11},
            gre_entry(),
            {"type": "geneve", "src": M4S, "dst": M4D, "vni": 12},
            {"type": "6in4", "src": "10.9.9.9", "dst": "10.9.9.8"},
        ],
    )

    # other link types
    for kind in ("tcp4", "tcp6", "udp4", "icmp6"):
        layer, _ = inner(kind)
        raw = bytes(layer)
        ethertype = 0x0800 if raw[0] >> 4 == 4 else 0x86DD
        add(f"raw101-{kind}", raw, kind, linktype=101)
        add(f"raw{228 if ethertype == 0x0800 else 229}-{kind}", raw, kind, linktype=228 if ethertype == 0x0800 else 229)
        add(f"sll-{kind}", bytes(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x01\0\0", proto=ethertype)) + raw, kind, linktype=113)
        add(f"sll2-{kind}", sll2(ethertype) + raw, kind, linktype=276)
        family = 2 if ethertype == 0x0800 else 30
        add(f"null-le-{kind}", struct.pack("<I", family) + raw, kind, linktype=0)
        add(f"null-be-{kind}", struct.pack(">I", 2 if ethertype == 0x0800 else 24) + raw, kind, linktype=0)
        add(f"loop-{kind}", struct.pack(">I", 2 if ethertype == 0x0800 else 24) + raw, kind, linktype=108)
    add("sll-vlan-tcp4", bytes(CookedLinux(proto=0x8100)) + bytes(Dot1Q(vlan=33) / inner("tcp4")[0]), "tcp4", [{"type": "vlan", "id": 33}], linktype=113)
    add("sll-gre-tcp4", bytes(CookedLinux(proto=0x0800)) + bytes(IP(src=O4S, dst=O4D, proto=47) / Raw(gre(0x0800) + tcp4_bytes)), "tcp4", [gre_entry()], linktype=113)
    add("raw-vxlan-tcp4", bytes(IP(src=O4S, dst=O4D) / UDP(sport=1, dport=4789) / Raw(vxlan(1) + inner_ether(inner("tcp4")[0]))), "tcp4", [{"type": "vxlan", "src": O4S, "dst": O4D, "vni": 1}], linktype=101)
    return cases


CASES = build_cases()
CASE_BY_NAME = {case.name: case for case in CASES}
assert len(CASE_BY_NAME) == len(CASES)


# --- helpers ------------------------------------------------------------------------------------


def new_decoder(timeout_ns: int = 30 * SECOND, max_datagrams: int = 1024, max_per_source: int = 256, max_bytes: int = 16 << 20) -> FrameDecoder:
    return FrameDecoder(FragmentReassembler(timeout_ns, max_datagrams, max_per_source, max_bytes))


def decode(decoder: FrameDecoder, frame: bytes, linktype: int = 1, caplen: int | None = None, wirelen: int | None = None, timestamp: int = T0) -> Packet | None:
    caplen = len(frame) if caplen is None else caplen
    wirelen = caplen if wirelen is None else wirelen
    return decoder.decode(frame, 0, caplen, wirelen, linktype, timestamp)


def flow_of(packet: Packet) -> tuple:
    return (address_text(packet.src), address_text(packet.dst), packet.proto, packet.sport, packet.dport)


def summary(packet: Packet | None):
    if packet is None:
        return None
    return (packet.src, packet.dst, packet.proto, packet.sport, packet.dport, packet.tcp_flags, packet.tcp_seq, bytes(packet.payload), packet.encapsulation, packet.truncated, packet.timestamp, packet.wirelen)


def counters(decoder: FrameDecoder) -> tuple:
    reassembler = decoder.reassembler
    return (dict(decoder.malformed), decoder.truncated, decoder.not_ip, dict(decoder.unsupported_linktypes), reassembler.reassembled, reassembler.overlaps, reassembler.dropped, reassembler.bytes_held)


def assert_expected(packet: Packet | None, expected: tuple, encapsulation: list) -> None:
    assert packet is not None
    src, dst, proto, sport, dport, payload = expected
    assert flow_of(packet) == (src, dst, proto, sport, dport)
    if payload is not None:
        assert packet.payload == payload
    assert packet.encapsulation == encapsulation


def assert_clean(decoder: FrameDecoder) -> None:
    assert not decoder.malformed
    assert decoder.truncated == 0
    assert decoder.not_ip == 0
    assert not decoder.unsupported_linktypes


# --- every encapsulation and link type ----------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decodes_innermost_flow_and_encapsulation(case: Case) -> None:
    decoder = new_decoder()
    packet = decode(decoder, case.frame, case.linktype, timestamp=T0 + 5)
    assert_expected(packet, case.expected, case.encapsulation)
    assert packet.truncated is False
    assert packet.timestamp == T0 + 5
    assert packet.wirelen == len(case.frame)
    assert_clean(decoder)
    assert len(decoder.reassembler) == 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decode_reads_only_its_own_bytes(case: Case) -> None:
    """The same frame inside a larger buffer, after and before other bytes, decodes identically:
    nothing before `start` or past `start + caplen` is read."""
    alone = new_decoder()
    expected = summary(decode(alone, case.frame, case.linktype))
    for filler in (b"\x00", b"\xff", b"\x45", b"\x08"):
        embedded = new_decoder()
        prefix, suffix = filler * 37, filler * 300
        packet = embedded.decode(prefix + case.frame + suffix, len(prefix), len(case.frame), len(case.frame), case.linktype, T0)
        assert summary(packet) == expected
        assert counters(embedded) == counters(alone)


def test_tcp_fields() -> None:
    decoder = new_decoder()
    frame = ether(IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="FA", seq=0xFEDCBA98, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / Raw(b"data"))
    packet = decode(decoder, frame)
    assert packet.tcp_flags == 0x11
    assert packet.tcp_seq == 0xFEDCBA98
    assert packet.payload == b"data"  # after the TCP options


def test_sctp_ports() -> None:
    decoder = new_decoder()
    frame = ether(IP(src=A4, dst=B4, proto=132) / Raw(struct.pack("!HHII", 2905, 2906, 0, 0)))
    assert flow_of(decode(decoder, frame)) == (A4, B4, 132, 2905, 2906)


def test_unsupported_linktype_is_counted() -> None:
    decoder = new_decoder()
    frame = CASE_BY_NAME["ether-tcp4"].frame
    assert decode(decoder, frame, linktype=147) is None
    assert decode(decoder, frame, linktype=147) is None
    assert decode(decoder, frame, linktype=9999) is None
    assert decoder.unsupported_linktypes == {147: 2, 9999: 1}
    assert not decoder.malformed and decoder.not_ip == 0


def test_non_ip_frames_are_counted_not_ip() -> None:
    decoder = new_decoder()
    assert decode(decoder, ether(ARP(psrc=A4, pdst=B4))) is None
    assert decode(decoder, ether(Dot1Q(vlan=5) / ARP())) is None
    assert decode(decoder, bytes(CookedLinux(proto=0x0806)) + bytes(ARP()), linktype=113) is None
    assert decoder.not_ip == 3
    assert not decoder.malformed


def test_tunnel_carrying_non_ip_yields_the_tunnel_flow() -> None:
    decoder = new_decoder()
    packet = decode(decoder, outer4(47, gre(0x6558) + inner_ether(ARP())))
    assert packet is not None
    assert (address_text(packet.src), address_text(packet.dst), packet.proto) == (O4S, O4D, 47)
    assert packet.encapsulation == [gre_entry()]
    assert decoder.not_ip == 0


def test_vxlan_port_without_vxlan_flag_is_plain_udp() -> None:
    decoder = new_decoder()
    body = struct.pack("!II", 0, 0) + b"not a vxlan frame"
    packet = decode(decoder, outer_udp4(1234, 4789, body))
    assert flow_of(packet) == (O4S, O4D, 17, 1234, 4789)
    assert packet.payload == body
    assert packet.encapsulation == []


# --- fragments ----------------------------------------------------------------------------------

DNS_RESPONSE = bytes(
    DNS(id=7, qr=1, aa=1, qd=DNSQR(qname="frag.example.net", qtype="TXT"), an=DNSRR(rrname="frag.example.net", type="TXT", rdata=["x" * 200, "y" * 150]))
)


def dns_datagram4(ident: int = 0x2222, src: str = A4, dst: str = B4):
    return IP(src=src, dst=dst, id=ident) / UDP(sport=53, dport=33333) / Raw(DNS_RESPONSE)


def frames_of(packets) -> list[bytes]:
    return [ether(packet) for packet in packets]


def feed(decoder: FrameDecoder, frames: list[bytes], linktype: int = 1) -> list[Packet]:
    results = []
    for index, frame in enumerate(frames):
        packet = decode(decoder, frame, linktype, timestamp=T0 + index)
        if packet is not None:
            results.append(packet)
    return results


def ipv4_fragment(ident: int, offset: int, more: bool, payload: bytes, src: str = A4, dst: str = B4, proto: int = 17) -> bytes:
    return ether(IP(src=src, dst=dst, id=ident, proto=proto, flags="MF" if more else 0, frag=offset // 8) / Raw(payload))


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_ipv4_fragments_reassemble(order: str) -> None:
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    assert len(fragments) >= 4
    if order == "reversed":
        fragments.reverse()
    elif order == "shuffled":
        random.Random(4).shuffle(fragments)
        assert fragments != frames_of(fragment(dns_datagram4(), fragsize=96))
    decoder = new_decoder()
    results = [decode(decoder, frame, timestamp=T0 + index) for index, frame in enumerate(fragments)]
    assert all(result is None for result in results[:-1])
    packet = results[-1]
    assert flow_of(packet) == (A4, B4, 17, 53, 33333)
    assert packet.payload == DNS_RESPONSE
    assert packet.encapsulation == []
    assert packet.truncated is False
    assert decoder.reassembler.reassembled == 1
    assert decoder.reassembler.bytes_held == 0 and len(decoder.reassembler) == 0
    assert packet.wirelen == sum(len(frame) for frame in fragments)
    assert packet.timestamp == T0 + len(fragments) - 1
    assert_clean(decoder)
    assert decoder.flush_fragments() == []


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled"])
def test_ipv6_fragments_reassemble(order: str) -> None:
    datagram = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=0xABCDEF) / UDP(sport=53, dport=33334) / Raw(DNS_RESPONSE)
    fragments = frames_of(fragment6(datagram, 200))
    assert len(fragments) >= 3
    if order == "reversed":
        fragments.reverse()
    elif order == "shuffled":
        random.Random(6).shuffle(fragments)
    decoder = new_decoder()
    results = feed(decoder, fragments)
    assert len(results) == 1
    packet = results[0]
    assert flow_of(packet) == (A6, B6, 17, 53, 33334)
    assert packet.payload == DNS_RESPONSE
    assert decoder.reassembler.reassembled == 1
    assert decoder.reassembler.bytes_held == 0
    assert_clean(decoder)


def test_ipv6_fragments_after_extension_header() -> None:
    datagram = IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=77) / TCP(sport=40002, dport=443, flags="PA", seq=5) / Raw(TLS * 30)
    decoder = new_decoder()
    results = feed(decoder, frames_of(fragment6(datagram, 200)))
    assert len(results) == 1
    assert flow_of(results[0]) == (A6, B6, 6, 40002, 443)
    assert results[0].payload == TLS * 30
    assert results[0].tcp_seq == 5


def test_reassembled_datagram_with_snaplen_cut_fragment_is_truncated() -> None:
    """The last fragment cut by the snap length completes the datagram short: the packet that
    comes out must say it is truncated (its payload is not the whole datagram's)."""
    datagram = IP(src=A4, dst=B4, id=5) / UDP(sport=53, dport=3333) / Raw(b"Z" * 300)
    first, last = frames_of(fragment(datagram, fragsize=160))
    decoder = new_decoder()
    assert decode(decoder, first) is None
    packet = decoder.decode(last, 0, len(last) - 50, len(last), 1, T0 + 1)
    assert decoder.truncated == 1
    assert packet is not None and flow_of(packet) == (A4, B4, 17, 53, 3333)
    assert packet.payload == b"Z" * 250
    assert packet.truncated is True


def test_fragments_of_different_datagrams_interleaved() -> None:
    first = frames_of(fragment(dns_datagram4(ident=1), fragsize=96))
    second = frames_of(fragment(dns_datagram4(ident=2, src="192.0.2.77"), fragsize=96))
    interleaved = [frame for pair in zip(first, second) for frame in pair]
    decoder = new_decoder()
    results = feed(decoder, interleaved)
    assert sorted(address_text(packet.src) for packet in results) == ["192.0.2.1", "192.0.2.77"]
    assert all(packet.payload == DNS_RESPONSE for packet in results)
    assert decoder.reassembler.reassembled == 2


def test_fragments_inside_a_tunnel_keep_the_tunnel() -> None:
    inner_fragments = fragment(dns_datagram4(), fragsize=128)
    frames = [outer4(47, gre(0x0800, key=3) + bytes(piece)) for piece in inner_fragments]
    decoder = new_decoder()
    results = feed(decoder, frames[::-1])
    assert len(results) == 1
    assert flow_of(results[0]) == (A4, B4, 17, 53, 33333)
    assert results[0].payload == DNS_RESPONSE
    assert results[0].encapsulation == [gre_entry(key=3)]


def full_size_inner_frame() -> tuple[bytes, bytes]:
    payload = bytes(range(256)) * 5 + bytes(180)  # 1460 bytes: the inner IP datagram is 1500 bytes
    frame = inner_ether(IP(src=A4, dst=B4, id=5) / TCP(sport=40001, dport=443, flags="A", seq=31337) / Raw(payload))
    assert len(frame) == 1514
    return frame, payload


@pytest.mark.parametrize(
    "tunnel",
    ["gre-teb", "erspan2", "erspan3", "vxlan", "geneve"],
)
def test_fragmented_tunnel_carrying_full_size_frame(tunnel: str) -> None:
    frame, payload = full_size_inner_frame()
    if tunnel == "vxlan":
        outer = IP(src=O4S, dst=O4D, id=500) / UDP(sport=40000, dport=4789) / Raw(vxlan(42) + frame)
        encapsulation = [{"type": "vxlan", "src": O4S, "dst": O4D, "vni": 42}]
    elif tunnel == "geneve":
        outer = IP(src=O4S, dst=O4D, id=500) / UDP(sport=40000, dport=6081) / Raw(geneve(43, 0x6558, GENEVE_OPTIONS) + frame)
        encapsulation = [{"type": "geneve", "src": O4S, "dst": O4D, "vni": 43}]
    elif tunnel == "gre-teb":
        outer = IP(src=O4S, dst=O4D, id=500, proto=47) / Raw(gre(0x6558) + frame)
        encapsulation = [gre_entry()]
    elif tunnel == "erspan2":
        outer = IP(src=O4S, dst=O4D, id=500, proto=47) / Raw(gre(0x88BE, sequence=1) + erspan2(9) + frame)
        encapsulation = [gre_entry(), {"type": "erspan", "version": 2, "session": 9}]
    else:
        outer = IP(src=O4S, dst=O4D, id=500, proto=47) / Raw(gre(0x22EB, sequence=1) + erspan3(10, platform=True) + frame)
        encapsulation = [gre_entry(), {"type": "erspan", "version": 3, "session": 10}]
    pieces = fragment(outer, fragsize=1480)  # a 1500-byte link
    assert len(pieces) == 2
    frames = frames_of(pieces)
    assert max(len(f) for f in frames) == 1514
    decoder = new_decoder()
    assert decode(decoder, frames[0], timestamp=T0) is None
    packet = decode(decoder, frames[1], timestamp=T0 + 1)
    assert packet is not None
    assert flow_of(packet) == (A4, B4, 6, 40001, 443)
    assert packet.payload == payload
    assert packet.tcp_seq == 31337
    assert packet.encapsulation == encapsulation
    assert packet.truncated is False
    assert decoder.reassembler.reassembled == 1
    assert decoder.reassembler.bytes_held == 0
    assert_clean(decoder)


def test_fragmented_ipv6_outer_gre() -> None:
    frame, payload = full_size_inner_frame()
    outer = IPv6(src=O6S, dst=O6D) / IPv6ExtHdrFragment(id=9) / Raw(gre(0x6558) + frame)
    outer[IPv6ExtHdrFragment].nh = 47
    pieces = fragment6(outer, 1500)
    assert len(pieces) == 2
    decoder = new_decoder()
    results = feed(decoder, frames_of(pieces))
    assert len(results) == 1
    assert flow_of(results[0]) == (A4, B4, 6, 40001, 443)
    assert results[0].payload == payload
    assert results[0].encapsulation == [gre_entry(O6S, O6D)]


def test_overlapping_fragments_are_dropped_and_counted() -> None:
    body = bytes(UDP(sport=53, dport=33333, len=8 + 40)) + b"A" * 40  # 48 bytes
    decoder = new_decoder()
    assert decode(decoder, ipv4_fragment(3, 0, True, body[:24])) is None
    # a second fragment starting inside the first one, with different bytes
    assert decode(decoder, ipv4_fragment(3, 16, True, b"B" * 16)) is None
    assert decoder.reassembler.overlaps == 1
    assert len(decoder.reassembler) == 0 and decoder.reassembler.bytes_held == 0
    # the rest of the datagram never completes it
    assert decode(decoder, ipv4_fragment(3, 24, False, body[24:])) is None
    assert decoder.reassembler.reassembled == 0
    # same offset, different content
    decoder = new_decoder()
    assert decode(decoder, ipv4_fragment(4, 8, True, b"C" * 16)) is None
    assert decode(decoder, ipv4_fragment(4, 8, True, b"D" * 16)) is None
    assert decoder.reassembler.overlaps == 1
    assert decode(decoder, ipv4_fragment(4, 0, True, body[:8])) is None
    assert decode(decoder, ipv4_fragment(4, 24, False, body[24:])) is None
    assert decoder.reassembler.reassembled == 0


def test_overlapping_ipv6_fragments_are_dropped() -> None:
    datagram = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=31) / UDP(sport=53, dport=33334) / Raw(DNS_RESPONSE)
    pieces = fragment6(datagram, 200)
    evil = pieces[1].copy()
    evil[Raw].load = bytes(len(evil[Raw].load))
    evil[IPv6ExtHdrFragment].offset -= 1  # 8 bytes back: overlaps the first piece
    decoder = new_decoder()
    results = feed(decoder, frames_of([pieces[0], evil, *pieces[1:]]))
    assert results == []
    assert decoder.reassembler.overlaps == 1


def test_exact_duplicate_fragment_is_ignored() -> None:
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    decoder = new_decoder()
    results = feed(decoder, [fragments[0], fragments[0], fragments[1], fragments[1], *fragments[2:]])
    assert len(results) == 1
    assert results[0].payload == DNS_RESPONSE
    assert decoder.reassembler.reassembled == 1
    assert decoder.reassembler.overlaps == 0
    assert decoder.reassembler.dropped == 0


def test_first_fragment_alone_is_flushed_truncated() -> None:
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    decoder = new_decoder()
    assert decode(decoder, fragments[0]) is None
    assert decode(decoder, fragments[2]) is None  # a hole at fragment 1
    leftovers = decoder.flush_fragments()
    assert len(leftovers) == 1
    packet = leftovers[0]
    assert packet.truncated is True
    assert flow_of(packet) == (A4, B4, 17, 53, 33333)
    assert packet.payload == DNS_RESPONSE[: 96 - 8]
    assert decoder.reassembler.timed_out == 1
    assert len(decoder.reassembler) == 0 and decoder.reassembler.bytes_held == 0
    assert decoder.flush_fragments() == []


def test_first_fragment_of_tunnel_flushed_with_inner_flow() -> None:
    frame, payload = full_size_inner_frame()
    outer = IP(src=O4S, dst=O4D, id=501, proto=47) / Raw(gre(0x88BE, sequence=1) + erspan2(3) + frame)
    first = frames_of(fragment(outer, fragsize=1480))[0]
    decoder = new_decoder()
    assert decode(decoder, first) is None
    (packet,) = decoder.flush_fragments()
    assert packet.truncated is True
    assert flow_of(packet) == (A4, B4, 6, 40001, 443)
    assert packet.encapsulation == [gre_entry(), {"type": "erspan", "version": 2, "session": 3}]
    assert payload.startswith(packet.payload) and 0 < len(packet.payload) < len(payload)


def test_only_later_fragments_flush_to_nothing() -> None:
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    decoder = new_decoder()
    feed(decoder, fragments[1:])
    assert decoder.flush_fragments() == []
    assert decoder.reassembler.timed_out == 1


def test_fragments_expire_after_timeout() -> None:
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    decoder = new_decoder(timeout_ns=2 * SECOND)
    assert decode(decoder, fragments[0], timestamp=T0) is None
    assert decoder.expire_fragments(T0 + SECOND) == []
    (packet,) = decoder.expire_fragments(T0 + 3 * SECOND)
    assert packet.truncated is True and flow_of(packet) == (A4, B4, 17, 53, 33333)
    # the rest, arriving late, does not complete anything
    assert feed(decoder, fragments[1:]) == []
    assert decoder.reassembler.reassembled == 0


def first_fragment(ident: int, src: str, size: int = 64) -> bytes:
    return ipv4_fragment(ident, 0, True, bytes(UDP(sport=53, dport=9, len=8 + size + 8)) + bytes(size), src=src)


def last_fragment(ident: int, src: str, size: int = 64) -> bytes:
    return ipv4_fragment(ident, 8 + size, False, bytes(8), src=src)


def test_max_per_source_enforced() -> None:
    decoder = new_decoder(max_per_source=2)
    reassembler = decoder.reassembler
    for ident in (1, 2, 3):
        assert decode(decoder, first_fragment(ident, A4)) is None
    assert reassembler.dropped == 1
    assert len(reassembler) == 2
    assert decode(decoder, first_fragment(4, "192.0.2.200")) is None  # another source still has room
    assert len(reassembler) == 3 and reassembler.dropped == 1
    assert decode(decoder, last_fragment(3, A4)) is None  # datagram 3 was never admitted
    assert reassembler.dropped == 2
    for ident in (1, 2):
        packet = decode(decoder, last_fragment(ident, A4))
        assert packet is not None and flow_of(packet) == (A4, B4, 17, 53, 9)
    assert reassembler.reassembled == 2
    assert decode(decoder, first_fragment(5, A4)) is None  # room again for the first source
    assert len(reassembler) == 2 and reassembler.dropped == 2


def test_max_datagrams_enforced() -> None:
    decoder = new_decoder(max_datagrams=3)
    reassembler = decoder.reassembler
    sources = [f"192.0.2.{n}" for n in range(10, 14)]
    for ident, source in enumerate(sources):
        assert decode(decoder, first_fragment(ident, source)) is None
        assert len(reassembler) <= 3
    assert reassembler.dropped == 1
    assert len(reassembler) == 3
    results = [decode(decoder, last_fragment(ident, source)) for ident, source in enumerate(sources) if ident]
    assert [address_text(packet.src) for packet in results if packet is not None] == sources[1:]
    assert decode(decoder, last_fragment(0, sources[0])) is None  # the oldest was evicted: never completes
    assert reassembler.reassembled == 3


def test_bytes_held_never_exceeds_max_bytes_across_datagrams() -> None:
    decoder = new_decoder(max_bytes=4000)
    reassembler = decoder.reassembler
    for ident in range(20):
        decode(decoder, first_fragment(ident, f"192.0.2.{ident + 1}", size=1400))
        assert reassembler.bytes_held <= 4000
    assert reassembler.dropped > 0
    assert reassembler.bytes_held == sum(len(piece) for datagram in reassembler._datagrams.values() for piece in datagram.pieces.values())


def test_bytes_held_never_exceeds_max_bytes_within_one_datagram() -> None:
    """One datagram arriving as many non-final fragments must not grow the store past max_bytes."""
    decoder = new_decoder(max_bytes=4000)
    reassembler = decoder.reassembler
    for index in range(20):
        decode(decoder, ipv4_fragment(77, index * 1480, True, bytes(1480)))
        assert reassembler.bytes_held <= 4000, f"after fragment {index}: {reassembler.bytes_held} bytes held"


def test_bytes_held_released_when_reassembled_or_flushed() -> None:
    decoder = new_decoder()
    fragments = frames_of(fragment(dns_datagram4(), fragsize=96))
    feed(decoder, fragments[:-1])
    assert decoder.reassembler.bytes_held > 0
    feed(decoder, fragments[-1:])
    assert decoder.reassembler.bytes_held == 0
    feed(decoder, fragments[:-1])
    decoder.flush_fragments()
    assert decoder.reassembler.bytes_held == 0 and len(decoder.reassembler) == 0


# --- bad input ----------------------------------------------------------------------------------

TCP_FRAME = CASE_BY_NAME["ether-tcp4"].frame  # 14 Ethernet + 20 IPv4 + 20 TCP + HTTP


def test_snaplen_cut_inside_tcp_header() -> None:
    decoder = new_decoder()
    caplen = 14 + 20 + 16  # after the flags, before the end of the TCP header
    packet = decoder.decode(TCP_FRAME[:caplen], 0, caplen, len(TCP_FRAME), 1, T0)
    assert decoder.truncated == 1
    assert not decoder.malformed
    assert packet is not None
    assert flow_of(packet) == (A4, B4, 6, 40001, 80)
    assert packet.payload == b""


def test_snaplen_cut_inside_header_marks_packet_truncated() -> None:
    """A packet returned from a frame the snap length cut inside a header is truncated."""
    decoder = new_decoder()
    caplen = 14 + 20 + 16
    packet = decoder.decode(TCP_FRAME[:caplen], 0, caplen, len(TCP_FRAME), 1, T0)
    assert packet is not None
    assert packet.truncated is True


def test_snaplen_cut_before_tcp_ports() -> None:
    decoder = new_decoder()
    caplen = 14 + 20 + 2
    packet = decoder.decode(TCP_FRAME[:caplen], 0, caplen, len(TCP_FRAME), 1, T0)
    assert decoder.truncated == 1 and not decoder.malformed
    assert packet is not None
    assert (address_text(packet.src), address_text(packet.dst), packet.proto) == (A4, B4, 6)


@pytest.mark.parametrize(
    "name,kind,outer",
    [
        ("ether-tcp6", "tcp6", None),
        ("qinq-88a8", "tcp4", None),
        ("mpls3-tcp4", "tcp4", None),
        ("gre-ipv4", "tcp4", (O4S, O4D, 47)),
        ("vxlan-dst", "tcp4", (O4S, O4D, 17)),
        ("4in6", "tcp4", (O6S, O6D, 4)),
    ],
)
def test_snaplen_cut_inside_innermost_ip_header(name: str, kind: str, outer: tuple | None) -> None:
    """Cut inside the innermost IP header: no inner addresses. Without a complete outer IP header
    nothing comes out; inside a tunnel the packet carries the tunnel's own flow so far."""
    case = CASE_BY_NAME[name]
    caplen = case.frame.rindex(bytes(inner(kind)[0])) + 10
    decoder = new_decoder()
    packet = decoder.decode(case.frame[:caplen], 0, caplen, len(case.frame), 1, T0)
    assert decoder.truncated == 1
    assert not decoder.malformed
    if outer is None:
        assert packet is None
    else:
        assert packet is not None
        assert (address_text(packet.src), address_text(packet.dst), packet.proto) == outer
        assert packet.encapsulation == case.encapsulation


def test_snaplen_cut_inside_outermost_ip_header_yields_nothing() -> None:
    for name in ("ether-tcp4", "ether-tcp6", "raw101-tcp4"):
        case = CASE_BY_NAME[name]
        offset = 0 if case.linktype == 101 else 14
        decoder = new_decoder()
        caplen = offset + 12
        assert decoder.decode(case.frame[:caplen], 0, caplen, len(case.frame), case.linktype, T0) is None
        assert decoder.truncated == 1 and not decoder.malformed


def test_snaplen_cut_inside_payload() -> None:
    decoder = new_decoder()
    caplen = len(TCP_FRAME) - 10
    packet = decoder.decode(TCP_FRAME, 0, caplen, len(TCP_FRAME), 1, T0)
    assert decoder.truncated == 1
    assert packet.truncated is True
    assert flow_of(packet) == (A4, B4, 6, 40001, 80)
    assert packet.payload == HTTP[:-10]
    assert packet.wirelen == len(TCP_FRAME)


def test_snaplen_cut_inside_tunnel_payload() -> None:
    frame = CASE_BY_NAME["erspan3-platform"].frame
    decoder = new_decoder()
    caplen = len(frame) - 20
    packet = decoder.decode(frame, 0, caplen, len(frame), 1, T0)
    assert packet.truncated is True and decoder.truncated == 1
    assert flow_of(packet) == (A4, B4, 6, 40001, 80)
    assert packet.payload == HTTP[:-20]
    assert packet.encapsulation == CASE_BY_NAME["erspan3-platform"].encapsulation


def test_frame_shorter_than_ip_total_length_is_malformed() -> None:
    decoder = new_decoder()
    cut = TCP_FRAME[:-10]
    assert decode(decoder, cut) is None  # caplen == wirelen: not the snap length
    assert decoder.malformed == {"ip_length_exceeds_frame": 1}
    assert decoder.truncated == 0
    cut6 = CASE_BY_NAME["ether-tcp6"].frame[:-3]
    assert decode(decoder, cut6) is None
    assert decoder.malformed == {"ip_length_exceeds_frame": 2}


def test_frame_ending_inside_header_without_snaplen_is_malformed() -> None:
    decoder = new_decoder()
    assert decode(decoder, TCP_FRAME[:14 + 10]) is None
    assert decode(decoder, TCP_FRAME[:10]) is None
    assert decoder.malformed == {"frame_too_short": 2}
    assert decoder.truncated == 0


def with_byte(frame: bytes, position: int, value: int) -> bytes:
    return frame[:position] + bytes([value]) + frame[position + 1 :]


def bad_frames() -> list[tuple[str, bytes, int, str]]:
    """(name, frame, linktype, malformed kind)."""
    tcp = TCP_FRAME
    udp = CASE_BY_NAME["ether-udp4"].frame
    deep_ipip = bytes(inner("tcp4")[0])
    for level in range(12):
        deep_ipip = bytes(IP(src=f"10.0.{level}.1", dst=f"10.0.{level}.2", proto=4) / Raw(deep_ipip))
    deep_gre = bytes(inner("tcp4")[0])
    for level in range(12):
        deep_gre = bytes(IP(src=f"10.1.{level}.1", dst=f"10.1.{level}.2", proto=47) / Raw(gre(0x0800) + deep_gre))
    deep_vxlan = inner_ether(inner("udp4")[0])
    for level in range(13):
        deep_vxlan = inner_ether(IP(src=f"10.2.{level}.1", dst=f"10.2.{level}.2") / UDP(sport=1, dport=4789) / Raw(vxlan(level) + deep_vxlan))
    deep_vlan = ether_raw(0x8100, b"".join(struct.pack("!HH", n, 0x8100) for n in range(12)) + struct.pack("!HH", 12, 0x0800) + bytes(inner("tcp4")[0]))
    deep_pw = inner_ether(inner("tcp4")[0])
    for level in range(13):
        deep_pw = ether_raw(0x8847, mpls(100 + level) + b"\0\0\0\0" + deep_pw)
    ipv6_ext_past_end = ether(IPv6(src=A6, dst=B6, nh=0) / Raw(bytes([6, 200]) + bytes(6) + bytes(TCP(sport=1, dport=2))))
    many_ext = IPv6(src=A6, dst=B6)
    for _ in range(20):
        many_ext = many_ext / IPv6ExtHdrDestOpt()
    return [
        ("ipv4-ihl-4", with_byte(tcp, 14, 0x44), 1, "ipv4_bad_header"),
        ("ipv4-ihl-0", with_byte(tcp, 14, 0x40), 1, "ipv4_bad_header"),
        ("ipv4-version-5", with_byte(tcp, 14, 0x55), 1, "ipv4_bad_header"),
        ("ipv4-version-6-in-0800", with_byte(tcp, 14, 0x65), 1, "ipv4_bad_header"),
        ("ipv6-version-4-in-86dd", with_byte(CASE_BY_NAME["ether-tcp6"].frame, 14, 0x45), 1, "ipv6_bad_header"),
        ("raw-version-7", with_byte(bytes(inner("tcp4")[0]), 0, 0x75), 101, "ip_bad_version"),
        ("null-version-0", struct.pack("<I", 2) + bytes(40), 0, "ip_bad_version"),
        ("ipv4-total-length-below-ihl", ether_raw(0x0800, struct.pack("!BBHHHBBH4s4s", 0x46, 0, 20, 0, 0, 64, 6, 0, bytes(4), bytes(4)) + bytes(4 + 20)), 1, "ipv4_bad_length"),
        ("tcp-data-offset-4", with_byte(tcp, 14 + 20 + 12, 0x40), 1, "tcp_bad_header"),
        ("tcp-data-offset-0", with_byte(tcp, 14 + 20 + 12, 0x00), 1, "tcp_bad_header"),
        ("udp-length-7", udp[: 14 + 20 + 4] + struct.pack("!H", 7) + udp[14 + 20 + 6 :], 1, "udp_bad_length"),
        ("udp-length-0", udp[: 14 + 20 + 4] + struct.pack("!H", 0) + udp[14 + 20 + 6 :], 1, "udp_bad_length"),
        ("gre-routing-bit", outer4(47, gre(0x0800, extra_flags=0x4000) + bytes(4) + bytes(inner("tcp4")[0])), 1, "gre_unsupported_header"),
        ("gre-version-1", outer4(47, gre(0x880B, extra_flags=0x0001, key=0x00100000) + bytes(inner("tcp4")[0])), 1, "gre_unsupported_header"),
        ("mpls-20-labels-no-bottom", ether_raw(0x8847, mpls(*range(20), bottom=False) + bytes(inner("tcp4")[0])), 1, "mpls_too_many_labels"),
        ("mpls-17-labels", ether_raw(0x8847, mpls(*range(17)) + bytes(inner("tcp4")[0])), 1, "mpls_too_many_labels"),
        ("ipv6-extension-past-end", ipv6_ext_past_end, 1, "ipv6_bad_extension_header"),
        ("ipv6-20-extension-headers", ether(many_ext / TCP(sport=1, dport=2)), 1, "ipv6_too_many_extension_headers"),
        ("13-nested-ipip", ether(IP(src=O4S, dst=O4D, proto=4) / Raw(deep_ipip)), 1, "too_many_layers"),
        ("13-nested-gre", outer4(47, gre(0x0800) + deep_gre), 1, "too_many_layers"),
        ("13-nested-vxlan", deep_vxlan, 1, "too_many_layers"),
        ("13-vlan-tags", deep_vlan, 1, "too_many_layers"),
        ("13-nested-mpls-pseudowires", deep_pw, 1, "too_many_layers"),
        ("gre-erspan2-short", outer4(47, gre(0x88BE, sequence=1) + bytes(4)), 1, "frame_too_short"),
        ("geneve-options-past-end", outer_udp4(1, 6081, struct.pack("!BBHI", 63, 0, 0x6558, 1) + bytes(20)), 1, "frame_too_short"),
    ]


BAD_FRAMES = bad_frames()


@pytest.mark.parametrize("name,frame,linktype,kind", BAD_FRAMES, ids=[item[0] for item in BAD_FRAMES])
def test_bad_input_is_counted_by_kind(name: str, frame: bytes, linktype: int, kind: str) -> None:
    decoder = new_decoder()
    assert decode(decoder, frame, linktype) is None
    assert decoder.malformed == {kind: 1}
    assert decoder.truncated == 0


def test_twelve_nested_tunnels_are_still_decoded() -> None:
    nested = bytes(inner("tcp4")[0])
    for level in range(11, -1, -1):
        nested = bytes(IP(src=f"10.0.{level}.1", dst=f"10.0.{level}.2", proto=4) / Raw(nested))
    decoder = new_decoder()
    packet = decode(decoder, ether(Raw(nested), type=0x0800))
    assert_expected(packet, inner("tcp4")[1], [{"type": "ipip", "src": f"10.0.{level}.1", "dst": f"10.0.{level}.2"} for level in range(12)])
    assert_clean(decoder)


def deep_pseudowire_frame(levels: int) -> bytes:
    frame = inner_ether(inner("tcp4")[0])
    for level in range(levels):
        frame = bytes(Ether(type=0x8847, **INNER_MAC)) + mpls(100 + level % 1000) + frame  # no control word: 18 bytes a level
    return frame


def test_deeply_nested_mpls_pseudowires_do_not_raise() -> None:
    """A jumbo frame of Ethernet-over-MPLS pseudowires nested a few hundred deep: the layer limit
    must stop it (counted), not Python's recursion limit."""
    frame = deep_pseudowire_frame(480)
    assert len(frame) <= 9000
    decoder = new_decoder()
    assert decode(decoder, frame) is None
    assert decoder.malformed == {"too_many_layers": 1}


def test_deeply_nested_pseudowires_in_reassembled_gre_do_not_raise() -> None:
    """The same through 1500-byte-MTU fragments of a GRE datagram: reachable by anyone who can put
    packets on a mirrored link."""
    payload = gre(0x8847) + mpls(1) + deep_pseudowire_frame(1500)
    pieces = fragment(IP(src=O4S, dst=O4D, id=3, proto=47) / Raw(payload), fragsize=1480)
    decoder = new_decoder()
    for frame in frames_of(pieces):
        assert decode(decoder, frame) is None
    assert decoder.reassembler.reassembled == 1
    assert decoder.malformed == {"too_many_layers": 1}


def test_frames_shorter_than_link_header() -> None:
    decoder = new_decoder()
    for linktype, size in ((1, 13), (113, 15), (276, 19), (0, 4), (101, 0), (108, 3)):
        assert decoder.decode(b"\x45" * size, 0, size, size, linktype, T0) is None
    assert decoder.malformed == {"frame_too_short": 6}


# --- fuzzing ------------------------------------------------------------------------------------

FUZZ_LINKTYPES = (1, 101, 113, 276, 0)


def corpus_for(linktype: int) -> list[bytes]:
    """Valid frames for a link type: the catalogue's own, plus every IP packet re-wrapped."""
    frames = [case.frame for case in CASES if case.linktype == linktype]
    ip_packets = [case.frame for case in CASES if case.linktype == 101]
    ip_packets += [bytes(piece) for piece in fragment(dns_datagram4(), fragsize=96)]
    ip_packets += [bytes(piece) for piece in fragment6(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=1) / UDP(sport=53, dport=1) / Raw(DNS_RESPONSE), 200)]
    ether_frames = [case.frame for case in CASES if case.linktype == 1] + [frame for _, frame, linktype, _ in BAD_FRAMES if linktype == 1 and len(frame) < 2000]
    for packet in ip_packets:
        ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
        if linktype == 1:
            frames.append(ether_raw(ethertype, packet))
        elif linktype == 113:
            frames.append(bytes(CookedLinux(proto=ethertype)) + packet)
        elif linktype == 276:
            frames.append(sll2(ethertype) + packet)
        elif linktype == 0:
            frames.append(struct.pack("<I", 2 if ethertype == 0x0800 else 30) + packet)
    if linktype == 1:
        frames += ether_frames
    if linktype == 101:
        frames += ip_packets
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        operation = rng.random()
        if not data:
            break
        position = rng.randrange(len(data))
        if operation < 0.45:
            data[position] = rng.randrange(256)
        elif operation < 0.6:
            data[position] ^= 1 << rng.randrange(8)
        elif operation < 0.75:
            del data[rng.randrange(len(data)) :]
        elif operation < 0.85:
            del data[position]
        else:
            data.insert(position, rng.randrange(256))
    return bytes(data)


def fuzz_inputs(rng: random.Random, linktype: int) -> list[tuple[bytes, int]]:
    """(frame, wirelen): 5,000 random strings and 5,000 mutations of valid frames."""
    inputs = []
    for _ in range(5000):
        size = rng.choice((rng.randrange(0, 40), rng.randrange(0, 120), rng.randrange(0, 1600)))
        frame = rng.randbytes(size)
        if linktype == 1 and size >= 14 and rng.random() < 0.5:  # make the random bytes reach further
            frame = frame[:12] + rng.choice((b"\x08\x00\x45", b"\x86\xdd\x60", b"\x81\x00\x00", b"\x88\x47\x00", b"\x88\xa8\x00")) + frame[15:]
        inputs.append((frame, len(frame) + (rng.randrange(1, 100) if rng.random() < 0.2 else 0)))
    corpus = corpus_for(linktype)
    for _ in range(5000):
        frame = mutate(rng, rng.choice(corpus))
        inputs.append((frame, len(frame) + (rng.randrange(1, 100) if rng.random() < 0.2 else 0)))
    return inputs


@pytest.mark.parametrize("linktype", FUZZ_LINKTYPES)
def test_fuzz_never_raises(linktype: int) -> None:
    """Random and mutated frames never raise, and decode the same inside a larger buffer as alone
    (no read outside the frame's captured bytes)."""
    rng = random.Random(1000 + linktype)
    inputs = fuzz_inputs(rng, linktype)
    alone = new_decoder(max_datagrams=64, max_bytes=1 << 20)
    embedded = new_decoder(max_datagrams=64, max_bytes=1 << 20)
    filler = rng.randbytes(2048)
    decoded = 0
    for index, (frame, wirelen) in enumerate(inputs):
        timestamp = T0 + index * 1_000_000
        try:
            first = alone.decode(frame, 0, len(frame), wirelen, linktype, timestamp)
            prefix = filler[: index % 64]
            second = embedded.decode(prefix + frame + filler, len(prefix), len(frame), wirelen, linktype, timestamp)
        except Exception as error:  # report the input, not just the traceback
            raise AssertionError(f"decode raised {error!r} on linktype {linktype}, wirelen {wirelen}, frame {frame.hex()}") from error
        assert summary(first) == summary(second), f"frame {frame.hex()} decodes differently inside a larger buffer"
        decoded += first is not None
        if index % 997 == 0:
            alone.expire_fragments(timestamp)
            embedded.expire_fragments(timestamp)
    assert [summary(p) for p in alone.flush_fragments()] == [summary(p) for p in embedded.flush_fragments()]
    assert counters(alone) == counters(embedded)
    assert decoded > 500  # the mutations kept many frames decodable
    assert sum(alone.malformed.values()) + alone.truncated > 500


def test_fuzz_unsupported_linktypes_never_raise() -> None:
    rng = random.Random(7)
    decoder = new_decoder()
    for _ in range(2000):
        frame = rng.randbytes(rng.randrange(0, 100))
        decoder.decode(frame, 0, len(frame), len(frame), rng.choice((12, 14, 108, 228, 229, 147, 274)), T0)
    assert decoder.unsupported_linktypes.keys() <= {147, 274}


# --- batch classifier agreement -----------------------------------------------------------------


@dataclass
class BatchFrame:
    name: str
    data: bytes  # captured bytes
    wirelen: int
    linktype: int
    fast: bool


def batch_frames() -> list[BatchFrame]:
    frames = [BatchFrame(case.name, case.frame, len(case.frame), case.linktype, case.fast) for case in CASES]
    for index, piece in enumerate(frames_of(fragment(dns_datagram4(ident=0x3333), fragsize=96))):
        frames.append(BatchFrame(f"ipv4-fragment-{index}", piece, len(piece), 1, False))
    datagram6 = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=0x4444) / UDP(sport=53, dport=33334) / Raw(DNS_RESPONSE)
    for index, piece in enumerate(frames_of(fragment6(datagram6, 200))):
        frames.append(BatchFrame(f"ipv6-fragment-{index}", piece, len(piece), 1, False))
    frame, _ = full_size_inner_frame()
    outer = IP(src=O4S, dst=O4D, id=600) / UDP(sport=40000, dport=4789) / Raw(vxlan(42) + frame)
    for index, piece in enumerate(frames_of(fragment(outer, fragsize=1480))):
        frames.append(BatchFrame(f"vxlan-fragment-{index}", piece, len(piece), 1, False))
    for name in ("ether-tcp4", "ether-tcp6", "dot1q-tcp4", "ether-udp4"):
        full = CASE_BY_NAME[name].frame
        frames.append(BatchFrame(f"{name}-snaplen-payload", full[:-5], len(full), 1, False))
        frames.append(BatchFrame(f"{name}-snaplen-header", full[:40], len(full), 1, False))
    for name, frame, linktype, _ in BAD_FRAMES:
        if not name.startswith("udp-length"):  # see test_batch_classifier_checks_udp_length
            frames.append(BatchFrame(f"bad-{name}", frame, len(frame), linktype, False))
    frames.append(BatchFrame("frame-too-short", TCP_FRAME[:-10], len(TCP_FRAME) - 10, 1, False))
    frames.append(BatchFrame("arp", ether(ARP()), 42, 1, False))
    return frames


def make_batch(frames: list[BatchFrame]) -> FrameBatch:
    offsets, position = [], 0
    for frame in frames:
        offsets.append(position)
        position += len(frame.data)
    return FrameBatch(
        data=b"".join(frame.data for frame in frames),
        offsets=np.array(offsets, dtype=np.int64),
        caplens=np.array([len(frame.data) for frame in frames], dtype=np.int64),
        wirelens=np.array([frame.wirelen for frame in frames], dtype=np.int64),
        timestamps=np.arange(len(frames), dtype=np.int64) * 1000 + T0,
        linktypes=np.array([frame.linktype for frame in frames], dtype=np.int64),
    )


def fast_results(batch: FrameBatch) -> tuple[set[int], dict[int, tuple]]:
    """Classifier's view of every fast frame: index -> (src, dst, proto, sport, dport, payload, vlan, flags, seq)."""
    fast = classify_batch(batch)
    others = set(fast.others.tolist())
    fast_indices = [index for index in range(len(batch)) if index not in others]
    assert len(fast_indices) == fast.count
    assert len(others) == len(fast.others)  # no index twice
    results = {}
    if not fast.count:
        return others, results
    keys = flow_keys(fast.lanes)
    assert keys.itemsize == KEY_BYTES and len(keys) == fast.count
    for row, index in enumerate(fast_indices):
        key = keys[row].tobytes()
        side_a = (key[0:16], int.from_bytes(key[16:18], "big"))
        side_b = (key[18:34], int.from_bytes(key[34:36], "big"))
        (src, sport), (dst, dport) = (side_a, side_b) if fast.src_is_a[row] else (side_b, side_a)
        assert key[36] == fast.protos[row]
        assert (sport, dport) == (fast.sports[row], fast.dports[row])
        offset, length = int(fast.payload_offsets[row]), int(fast.payload_lengths[row])
        assert length >= 0
        payload = batch.data[offset : offset + length]
        assert offset + length <= batch.offsets[index] + batch.caplens[index]
        results[index] = (src, dst, int(fast.protos[row]), sport, dport, payload, int(fast.vlans[row]), int(fast.flags[row]), int(fast.seqs[row]))
        assert fast.timestamps[row] == batch.timestamps[index] and fast.wirelens[row] == batch.wirelens[index]
    return others, results


def decoder_view(decoder: FrameDecoder, batch: FrameBatch, index: int) -> tuple | None:
    packet = decoder.decode(batch.data, int(batch.offsets[index]), int(batch.caplens[index]), int(batch.wirelens[index]), int(batch.linktypes[index]), int(batch.timestamps[index]))
    if packet is None:
        return None
    vlans = [entry["id"] for entry in packet.encapsulation if entry["type"] == "vlan"]
    return (packet.src, packet.dst, packet.proto, packet.sport, packet.dport, packet.payload, vlans[0] if vlans else -1, packet.tcp_flags if packet.proto == 6 else 0, packet.tcp_seq if packet.proto == 6 else 0)


def assert_batch_agrees(frames: list[BatchFrame]) -> None:
    batch = make_batch(frames)
    others, fast = fast_results(batch)
    decoder = new_decoder()
    mismatches = []
    for index, frame in enumerate(frames):
        expected = decoder_view(decoder, batch, index)
        if index in fast:
            if fast[index] != expected:
                mismatches.append((frame.name, fast[index], expected))
            if len(frame.data) != frame.wirelen:
                mismatches.append((frame.name, "truncated frame classified", None))
    assert not mismatches, mismatches


def test_batch_classifier_agrees_with_decoder() -> None:
    frames = batch_frames()
    batch = make_batch(frames)
    others, fast = fast_results(batch)
    expected_fast = {index for index, frame in enumerate(frames) if frame.fast}
    names = {index: frame.name for index, frame in enumerate(frames)}
    assert {names[i] for i in fast} == {names[i] for i in expected_fast}
    assert others == set(range(len(frames))) - expected_fast
    assert_batch_agrees(frames)


def test_batch_classifier_agrees_in_shuffled_order() -> None:
    frames = batch_frames()
    random.Random(3).shuffle(frames)
    # a small fast-eligible frame must not end up last (it would be too near the end of the buffer)
    frames.append(BatchFrame("tail-padding", bytes(200), 200, 101, False))
    assert_batch_agrees(frames)
    others, fast = fast_results(make_batch(frames))
    assert {frame.name for index, frame in enumerate(frames) if index in fast} == {frame.name for frame in frames if frame.fast}


def test_batch_frame_near_end_of_buffer_goes_to_decoder() -> None:
    head = CASE_BY_NAME["ether-tcp4"]
    tail = CASE_BY_NAME["ether-padded-udp4"]  # 60 bytes: fewer than HEADER_REACH before the end
    assert len(tail.frame) < HEADER_REACH
    frames = [BatchFrame(head.name, head.frame, len(head.frame), 1, True), BatchFrame(tail.name, tail.frame, len(tail.frame), 1, True)]
    batch = make_batch(frames)
    others, fast = fast_results(batch)
    assert others == {1}
    assert 0 in fast
    decoder = new_decoder()
    packet = decoder.decode(batch.data, int(batch.offsets[1]), int(batch.caplens[1]), int(batch.wirelens[1]), 1, T0)
    assert flow_of(packet) == (A4, B4, 17, 1000, 2000)
    assert packet.payload == b"abc"
    # and a one-frame batch shorter than HEADER_REACH
    single = make_batch(frames[1:])
    others, fast = fast_results(single)
    assert not fast or fast[0] == decoder_view(new_decoder(), single, 0)


def test_batch_of_only_others() -> None:
    frames = [BatchFrame(name, CASE_BY_NAME[name].frame, len(CASE_BY_NAME[name].frame), CASE_BY_NAME[name].linktype, False) for name in ("gre-ipv4", "sll-tcp4", "qinq-88a8", "mpls1-tcp4")]
    others, fast = fast_results(make_batch(frames))
    assert others == {0, 1, 2, 3} and not fast


@pytest.mark.parametrize("udp_length", [0, 4, 7, 8 + 3])
def test_batch_classifier_checks_udp_length(udp_length: int) -> None:
    """UDP whose length field disagrees with the IP payload: where the classifier takes the frame,
    it must see what the decoder sees (decoder: < 8 is malformed; otherwise the UDP length bounds
    the payload)."""
    udp = CASE_BY_NAME["ether-udp4"].frame
    bad = udp[: 14 + 20 + 4] + struct.pack("!H", udp_length) + udp[14 + 20 + 6 :]
    filler = CASE_BY_NAME["ether-tcp4"]
    frames = [BatchFrame(f"udp-length-{udp_length}", bad, len(bad), 1, False), BatchFrame(filler.name, filler.frame, len(filler.frame), 1, True)]
    assert_batch_agrees(frames)


def test_zero_length_first_fragment_is_dropped_not_looped_on() -> None:
    decoder = new_decoder()
    assert decode(decoder, ether(IP(src=A4, dst=B4, flags="MF", frag=0, proto=17))) is None
    assert decoder.flush_fragments() == [] and decoder.reassembler.dropped == 1


def test_inner_icmp_in_vxlan_does_not_inherit_the_tunnel_ports() -> None:
    frame = outer_udp4(51000, 4789, vxlan(7) + inner_ether(IP(src="10.0.0.5", dst="198.51.100.7") / ICMP()))
    packet = decode(new_decoder(), frame)
    assert packet is not None and packet.proto == 1 and (packet.sport, packet.dport) == (0, 0)


def test_ipv6_extension_header_after_the_fragment_header_is_read_after_reassembly() -> None:
    datagram = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment() / IPv6ExtHdrDestOpt() / UDP(sport=3333, dport=53) / Raw(b"q" * 120)
    decoder = new_decoder()
    results = [decode(decoder, ether(fragment)) for fragment in fragment6(datagram, 100)]
    packet = [result for result in results if result is not None][-1]
    assert (packet.proto, packet.sport, packet.dport, packet.payload) == (17, 3333, 53, b"q" * 120)


def test_fragments_nested_in_reassembled_fragments_are_bounded() -> None:
    """A crafted chain of IPv6 datagrams, each reassembled from fragments whose payload starts with
    another Fragment header, must end in a counted error, not in unbounded recursion."""
    levels = 400
    source, destination = socket.inet_pton(socket.AF_INET6, A6), socket.inet_pton(socket.AF_INET6, B6)

    def ipv6(payload: bytes) -> bytes:
        return struct.pack("!IHBB", 6 << 28, len(payload), 44, 64) + source + destination + payload

    def fragment_header(next_header: int, offset: int, more: bool, identification: int) -> bytes:
        return struct.pack("!BBHI", next_header, 0, (offset & 0xFFF8) | int(more), identification)

    last_offset = 8 * levels
    frames = [ipv6(fragment_header(17 if level == levels else 44, last_offset, False, level) + bytes(8)) for level in range(levels, 0, -1)]
    first = b"".join(fragment_header(44, 0, True, level) for level in range(2, levels + 1)) + bytes(8)
    frames.append(ipv6(fragment_header(44, 0, True, 1) + first))
    decoder = new_decoder(max_per_source=1024)
    for frame in frames:
        decode(decoder, ether_raw(0x86DD, frame))
    assert decoder.malformed["too_many_nested_fragments"] == 1
