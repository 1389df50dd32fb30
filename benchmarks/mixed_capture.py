"""Seeded generator of a large mixed capture and a marker set with a known number of hits.

The traffic imitates what a mirror port sees: TCP sessions carrying TLS ClientHellos (a share of
them post-quantum and so larger than one segment) and HTTP/1.1 requests, UDP DNS queries with
their answers, part of it over IPv6 and part of it 802.1Q-tagged, with realistic frame sizes and
interleaved flows. Packets are built with `struct` (scapy would take many minutes for a million
frames). The expected events are derived from what was generated, not from the probe.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
DNS_RESOLVERS = ["9.9.9.9", "1.1.1.1", "8.8.8.8", "8.8.4.4"]
DNS_RESOLVERS_V6 = ["2001:db8:53::1", "2001:db8:53::2"]


@dataclass
class Flow:
    kind: str  # "tls", "http" or "dns"
    client: str
    server: str
    sport: int
    dport: int
    name: str
    vlan: int | None
    start: float
    packets: list[tuple[bool, int, bytes]] = field(default_factory=list)  # (to_server, flags, payload)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def client_hello(name: str, rng: random.Random, post_quantum: bool) -> bytes:
    def extension(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    host = name.encode()
    server_name = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    groups = [0x11EC, 0x001D, 0x0017] if post_quantum else [0x001D, 0x0017, 0x0018]
    key_share = struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
    if post_quantum:
        key_share = struct.pack("!HH", 0x11EC, 1216) + rng.randbytes(1216) + key_share
    extensions = b"".join(
        [
            extension(0x0000, server_name),
            extension(0x000A, struct.pack("!H", 2 * len(groups)) + struct.pack(f"!{len(groups)}H", *groups)),
            extension(0x000B, b"\x01\x00"),
            extension(0x000D, bytes.fromhex("000c040305030603080408050806")),
            extension(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
            extension(0x002B, b"\x04\x03\x04\x03\x03"),
            extension(0x0033, struct.pack("!H", len(key_share)) + key_share),
        ]
    )
    suites = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    body = (
        b"\x03\x03"
        + rng.randbytes(32)
        + b"\x20"
        + rng.randbytes(32)
        + struct.pack("!H", 2 * len(suites))
        + struct.pack(f"!{len(suites)}H", *suites)
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def dns_message(name: str, ident: int, answer: str | None) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    flags, answers = (0x8180, 1) if answer else (0x0100, 0)
    message = struct.pack("!HHHHHH", ident, flags, 1, answers, 0, 0) + qname + b"\x00\x01\x00\x01"
    if answer:
        message += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04" + ipaddress.IPv4Address(answer).packed
    return message


def build_flow(flow: Flow, rng: random.Random) -> None:
    if flow.kind == "dns":
        ident = rng.randrange(65536)
        flow.packets = [(True, 0, dns_message(flow.name, ident, None)), (False, 0, dns_message(flow.name, ident, "192.0.2.80"))]
        return
    handshake = [(True, SYN, b""), (False, SYN | ACK, b""), (True, ACK, b"")]
    if flow.kind == "tls":
        hello = client_hello(flow.name, rng, post_quantum=rng.random() < 0.1)
        request = [(True, PSH | ACK, hello[i : i + 1400]) for i in range(0, len(hello), 1400)]
        answers = 2 + rng.randrange(5)
    else:
        path = "/" + "/".join(rng.choice(["static", "img", "api", "v1", "index.html", "app.js"]) for _ in range(3))
        headers = f"GET {path} HTTP/1.1\r\nHost: {flow.name}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
        request = [(True, PSH | ACK, headers.encode())]
        answers = 1 + rng.randrange(5)
    data = []
    for _ in range(answers):
        data.append((False, ACK, rng.randbytes(rng.randrange(1200, 1449))))
        if rng.random() < 0.5:
            data.append((True, ACK, b""))
    closing = [(True, FIN | ACK, b""), (False, FIN | ACK, b""), (True, ACK, b"")]
    flow.packets = handshake + request + data + closing


def frame(flow: Flow, to_server: bool, flags: int, payload: bytes, seq: int, ack: int) -> bytes:
    src, dst = (flow.client, flow.server) if to_server else (flow.server, flow.client)
    sport, dport = (flow.sport, flow.dport) if to_server else (flow.dport, flow.sport)
    if flow.kind == "dns":
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


def generate(out_dir: Path, packets: int = 1_000_000, seed: int = 7) -> dict:
    """Write `mixed.pcap`, `markers.json` (the project's bundle format) and `expected.json`."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Traffic addresses live in 1.0.0.0-99.255.255.255; decoy markers live in 128.0.0.0 and above.
    servers = [str(ipaddress.IPv4Address(rng.randrange(0x01000000, 0x64000000))) for _ in range(20_000)]
    servers6 = [f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}" for _ in range(2_000)]
    names = [random_name(rng) for _ in range(60_000)]
    marked_names = rng.sample(names, 150)
    subdomain_parents = marked_names[:50]  # marked as a parent; traffic uses a subdomain of it
    marked_addresses = rng.sample(servers, 150)
    cidr_hosts = rng.sample([s for s in servers if s not in marked_addresses], 30)
    planted_cidrs = [str(ipaddress.IPv4Network(f"{h}/{rng.choice([16, 20, 24, 28])}", strict=False)) for h in cidr_hosts]

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
    while len(markers) < 20_500:
        markers.append({"id": f"bench-domain-{len(markers)}", "type": "domain", "value": random_name(rng) + ".invalid", "match": "subdomains"})
    bundle = {"id": "benchmark", "issuer": "benchmark", "version": 1, "created": "2026-01-01T00:00:00Z", "markers": markers}
    (out_dir / "markers.json").write_text(json.dumps(bundle))

    ip_markers = {m["value"]: m["id"] for m in markers if m["type"] == "ipv4"}
    cidr_markers = [(ipaddress.IPv4Network(v), f"bench-cidr-{i}") for i, v in enumerate(planted_cidrs)]
    name_markers = {m["value"]: (m["id"], m.get("match")) for m in markers if m["type"] == "domain"}

    heap: list[tuple[float, int, int]] = []
    flows: list[Flow] = []
    expected: dict[str, int] = {}
    total = 0
    clock = 1_700_000_000.0
    while total < packets:
        kind = rng.choices(["tls", "http", "dns"], weights=[45, 20, 35])[0]
        v6 = rng.random() < 0.15
        if kind == "dns":
            server = rng.choice(DNS_RESOLVERS_V6 if v6 else DNS_RESOLVERS)
            dport = 53
        else:
            server = rng.choice(servers6 if v6 else servers)
            dport = 443 if kind == "tls" else rng.choice([80, 80, 8080])
        client = f"2001:db8:c::{rng.randrange(1, 65536):x}" if v6 else f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        name = rng.choice(names)
        if rng.random() < 0.01:
            name = rng.choice(marked_names)
            if name in subdomain_parents:
                name = "www." + name
        clock += rng.expovariate(1 / 0.0005)
        flow = Flow(kind, client, server, rng.randrange(1024, 65536), dport, name, rng.randrange(1, 4095) if rng.random() < 0.2 else None, clock)
        build_flow(flow, rng)
        flows.append(flow)
        heapq.heappush(heap, (flow.start, len(flows) - 1, 0))
        total += len(flow.packets)
        hits = []
        if server in ip_markers:
            hits.append(ip_markers[server])
        if not v6:
            hits += [marker for network, marker in cidr_markers if ipaddress.IPv4Address(server) in network]
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in name_markers and (i == 0 or name_markers[candidate][1] != "exact"):
                hits.append(name_markers[candidate][0])
        for marker in hits:
            expected[marker] = expected.get(marker, 0) + 1

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
    summary = {"packets": written, "bytes": byte_count, "flows": len(flows), "events_by_marker": expected, "events": sum(expected.values())}
    (out_dir / "expected.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary
