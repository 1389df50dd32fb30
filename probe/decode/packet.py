"""What decoding a frame yields: the innermost flow and the encapsulation around it.

Addresses are kept as 16-byte strings (IPv4 mapped into ::ffff:0:0/96) so that IPv4 and IPv6 flows
share one key layout, one flow table and one address index.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

IPV4_MAPPED_PREFIX: Final = b"\0" * 10 + b"\xff\xff"

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58

PROTO_NAMES: Final = {PROTO_ICMP: "ICMP", PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_ICMPV6: "IPv6-ICMP", 132: "SCTP"}

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10


class Packet:
    """One decoded frame (or reassembled datagram), reduced to what flows and markers need.

    `payload` is the transport payload and lives only until the packet has been inspected: it is
    never stored in a flow or an event.
    """

    __slots__ = (
        "timestamp",
        "wirelen",
        "src",
        "dst",
        "proto",
        "sport",
        "dport",
        "tcp_flags",
        "tcp_seq",
        "tcp_ack",
        "payload",
        "encapsulation",
        "truncated",
    )

    def __init__(self, timestamp: int, wirelen: int) -> None:
        self.timestamp = timestamp
        self.wirelen = wirelen
        self.src = b""
        self.dst = b""
        self.proto = 0
        self.sport = 0
        self.dport = 0
        self.tcp_flags = 0
        self.tcp_seq = 0
        self.tcp_ack = 0
        self.payload = b""
        self.encapsulation: list[dict] = []
        self.truncated = False


def address_text(address: bytes) -> str:
    """Text form of a 16-byte flow address (IPv4-mapped addresses print as IPv4)."""
    if address[:12] == IPV4_MAPPED_PREFIX:
        return str(ipaddress.IPv4Address(address[12:]))
    return str(ipaddress.IPv6Address(address))


def address_key(text: str) -> bytes:
    """16-byte flow address of an IPv4 or IPv6 address in text form."""
    try:
        return IPV4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return socket.inet_pton(socket.AF_INET6, text)
