"""Per-frame decoder for every link type and encapsulation the probe accepts.

The batch classifier (`probe.decode.batch`) handles plain Ethernet/VLAN + IPv4/IPv6 + TCP/UDP frames
with vector operations; every other frame comes here: tunnels of mirrored traffic (GRE, ERSPAN II
and III, VXLAN, Geneve, IP-in-IP, 6in4/4in6), MPLS, IP options and IPv6 extension headers,
fragments, cooked and loopback link types, and anything cut short or malformed. Layers are peeled
from the outside in until the innermost IP header and its transport; each tunnel and tag is
recorded as encapsulation metadata. Malformed frames are counted by kind and dropped.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Final

from probe.capture.frames import FrameBuffer
from probe.decode.fragments import FragmentReassembler
from probe.decode.packet import IPV4_MAPPED_PREFIX, PROTO_TCP, PROTO_UDP, Packet, address_text

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
RAW_IP_LINKTYPES: Final = (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, 12, 14)

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
ETHERTYPE_VLAN: Final = 0x8100
ETHERTYPE_QINQ: Final = 0x88A8
ETHERTYPE_QINQ_OLD: Final = 0x9100
ETHERTYPE_MPLS: Final = 0x8847
ETHERTYPE_MPLS_MULTICAST: Final = 0x8848
ETHERTYPE_TEB: Final = 0x6558
ETHERTYPE_ERSPAN_2: Final = 0x88BE
ETHERTYPE_ERSPAN_3: Final = 0x22EB

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
MAX_LAYERS: Final = 12
MAX_MPLS_LABELS: Final = 16
MAX_NESTED_REASSEMBLIES: Final = 3
"""A tunnel's fragments may carry an inner fragment; deeper nesting is an attack."""

_u16: Final = struct.Struct("!H").unpack_from
_u32: Final = struct.Struct("!I").unpack_from
_ipv4_header: Final = struct.Struct("!BxHHHxB2x4s4s").unpack_from
_tcp_header: Final = struct.Struct("!HHIIBB").unpack_from
_ports: Final = struct.Struct("!HH").unpack_from

IPV6_EXTENSION_HEADERS: Final = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
IP_IN_IP_NAMES: Final = {(4, 4): "ipip", (4, 41): "6in4", (6, 4): "4in6", (6, 41): "ip6ip6"}


class Malformed(Exception):
    """A frame that cannot be decoded; its `kind` names the counter it lands in."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class CutShort(Exception):
    """The frame's captured bytes end inside a header: the snap length cut it."""


class FrameDecoder:
    """Decodes frames into `Packet`s, counting what it could not decode and why.

    Without a reassembler, fragments are passed on as they come, each with its (innermost)
    addresses, and nothing is held: what the live service's dispatcher needs to pick a worker.
    """

    def __init__(self, reassembler: FragmentReassembler | None) -> None:
        self.reassembler = reassembler
        self.malformed: Counter[str] = Counter()
        self.truncated = 0
        self.not_ip = 0
        self.unsupported_linktypes: Counter[int] = Counter()
        self._reassemblies = 0

    def decode(self, data: FrameBuffer, start: int, caplen: int, wirelen: int, linktype: int, timestamp: int) -> Packet | None:
        """Decode one frame; None when it is not IP, is malformed, or is a fragment held back."""
        packet = Packet(timestamp, wirelen)
        end = start + caplen
        cut_by_snaplen = self._cut_by_snaplen = caplen < wirelen
        try:
            if linktype == LINKTYPE_ETHERNET:
                result = self._ethernet(packet, data, start, end, 0)
            elif linktype == LINKTYPE_LINUX_SLL:
                self._need(start + 16, end)
                result = self._ethertype(packet, data, _u16(data, start + 14)[0], start + 16, end, 0)
            elif linktype == LINKTYPE_LINUX_SLL2:
                self._need(start + 20, end)
                result = self._ethertype(packet, data, _u16(data, start)[0], start + 20, end, 0)
            elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
                self._need(start + 5, end)
                result = self._ip_by_version(packet, data, start + 4, end, 0)
            elif linktype in RAW_IP_LINKTYPES:
                result = self._ip_by_version(packet, data, start, end, 0)
            else:
                self.unsupported_linktypes[linktype] += 1
                return None
        except CutShort:
            if not cut_by_snaplen:
                self.malformed["frame_too_short"] += 1
                return None
            self.truncated += 1
            packet.truncated = True
            return packet if packet.src else None
        except Malformed as error:
            self.malformed[error.kind] += 1
            return None
        if cut_by_snaplen:
            self.truncated += 1
            packet.truncated = True
        return result

    def decode_reassembled(self, packet: Packet, version: int, payload: bytes, complete: bool = True) -> Packet | None:
        """Continue decoding a reassembled IP datagram above its IP header; an incomplete one (a
        first fragment whose others never came) is decoded as far as its bytes go."""
        self._cut_by_snaplen = not complete
        packet.truncated = not complete
        if self._reassemblies >= MAX_NESTED_REASSEMBLIES:  # fragments inside reassembled fragments inside...
            self.malformed["too_many_nested_fragments"] += 1
            return None
        self._reassemblies += 1
        try:
            if version == 6:
                return self._ipv6_payload(packet, payload, packet.proto, 0, len(payload), len(payload), len(packet.encapsulation))
            return self._transport(packet, payload, packet.proto, 0, len(payload), version, len(packet.encapsulation))
        except CutShort:
            if not complete:
                return packet
            self.malformed["reassembled_datagram_too_short"] += 1
            return None
        except Malformed as error:
            self.malformed[error.kind] += 1
            return None
        finally:
            self._reassemblies -= 1

    def expire_fragments(self, now: int) -> list[Packet]:
        """Decode the first fragments of datagrams that timed out incomplete."""
        return self._leftovers(self.reassembler.expire(now)) if self.reassembler is not None else []

    def flush_fragments(self) -> list[Packet]:
        """Decode the first fragments of datagrams still incomplete at end of input."""
        return self._leftovers(self.reassembler.flush()) if self.reassembler is not None else []

    def _leftovers(self, leftovers: list[tuple[Packet, bytes]]) -> list[Packet]:
        decoded = []
        for packet, prefix in leftovers:
            version = 4 if packet.src[:12] == IPV4_MAPPED_PREFIX else 6
            result = self.decode_reassembled(packet, version, prefix, complete=False)
            if result is not None:
                decoded.append(result)
        return decoded

    @staticmethod
    def _need(position: int, end: int) -> None:
        if position > end:
            raise CutShort

    def _datagram_end(self, position: int, length: int, end: int) -> int:
        """End of an IP datagram: its stated length, trimming Ethernet padding; a stated length
        beyond the captured bytes is only legitimate when the snap length cut the frame."""
        if not length:  # segmentation offload leaves 0 here: trust the frame
            return end
        if position + length <= end:
            return position + length
        if self._cut_by_snaplen:
            return end
        raise Malformed("ip_length_exceeds_frame")

    def _ethernet(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        self._need(position + 14, end)
        return self._ethertype(packet, data, _u16(data, position + 12)[0], position + 14, end, depth)

    def _ethertype(self, packet: Packet, data: FrameBuffer, ethertype: int, position: int, end: int, depth: int) -> Packet | None:
        if depth > MAX_LAYERS:
            raise Malformed("too_many_layers")
        while ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD):
            self._need(position + 4, end)
            tci, ethertype = struct.unpack_from("!HH", data, position)
            packet.encapsulation.append({"type": "vlan", "id": tci & 0x0FFF})
            position += 4
            depth += 1
            if depth > MAX_LAYERS:
                raise Malformed("too_many_layers")
        if ethertype == ETHERTYPE_IPV4:
            return self._ipv4(packet, data, position, end, depth)
        if ethertype == ETHERTYPE_IPV6:
            return self._ipv6(packet, data, position, end, depth)
        if ethertype in (ETHERTYPE_MPLS, ETHERTYPE_MPLS_MULTICAST):
            return self._mpls(packet, data, position, end, depth)
        if packet.src:  # a tunnel carrying something other than IP: the tunnel is the innermost flow
            return packet
        self.not_ip += 1
        return None

    def _mpls(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        for _ in range(MAX_MPLS_LABELS):
            self._need(position + 4, end)
            entry = _u32(data, position)[0]
            packet.encapsulation.append({"type": "mpls", "label": entry >> 12})
            position += 4
            if entry & 0x100:
                break
        else:
            raise Malformed("mpls_too_many_labels")
        self._need(position + 1, end)
        nibble = data[position] >> 4
        if nibble in (4, 6):
            return self._ip_by_version(packet, data, position, end, depth + 1)
        if nibble == 0:  # pseudowire control word, then the customer's Ethernet frame
            position += 4
        return self._ethernet(packet, data, position, end, depth + 1)

    def _ip_by_version(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        self._need(position + 1, end)
        version = data[position] >> 4
        if version == 4:
            return self._ipv4(packet, data, position, end, depth)
        if version == 6:
            return self._ipv6(packet, data, position, end, depth)
        raise Malformed("ip_bad_version")

    def _ipv4(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        if depth > MAX_LAYERS:
            raise Malformed("too_many_layers")
        self._need(position + 20, end)
        version_ihl, total_length, identification, fragment, proto, src, dst = _ipv4_header(data, position)
        header_length = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or header_length < 20:
            raise Malformed("ipv4_bad_header")
        if total_length and total_length < header_length:
            raise Malformed("ipv4_bad_length")
        datagram_end = self._datagram_end(position, total_length, end)
        packet.src = IPV4_MAPPED_PREFIX + src
        packet.dst = IPV4_MAPPED_PREFIX + dst
        packet.proto = proto
        packet.sport = packet.dport = 0  # an outer UDP tunnel's ports are not the inner flow's
        self._need(position + header_length, end)
        payload_start = position + header_length
        if fragment & 0x3FFF:
            return self._fragment(packet, 4, (src, dst, identification, proto), (fragment & 0x1FFF) * 8, bool(fragment & 0x2000), data[payload_start:datagram_end])
        return self._transport(packet, data, proto, payload_start, datagram_end, 4, depth)

    def _ipv6(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        if depth > MAX_LAYERS:
            raise Malformed("too_many_layers")
        self._need(position + 40, end)
        if data[position] >> 4 != 6:
            raise Malformed("ipv6_bad_header")
        payload_length = _u16(data, position + 4)[0]
        next_header = data[position + 6]
        packet.src = data[position + 8 : position + 24]
        packet.dst = data[position + 24 : position + 40]
        packet.sport = packet.dport = 0
        position += 40
        datagram_end = self._datagram_end(position, payload_length, end)
        return self._ipv6_payload(packet, data, next_header, position, datagram_end, end, depth)

    def _ipv6_payload(self, packet: Packet, data: FrameBuffer, next_header: int, position: int, datagram_end: int, end: int, depth: int) -> Packet | None:
        """Extension headers, then the transport; also where a reassembled datagram resumes, since
        headers may follow the Fragment header."""
        for _ in range(MAX_LAYERS):
            if next_header in IPV6_EXTENSION_HEADERS:
                self._need(position + 2, end)
                next_header, length = data[position], (data[position + 1] + 1) * 8
            elif next_header == 51:  # authentication header counts 4-byte words
                self._need(position + 2, end)
                next_header, length = data[position], (data[position + 1] + 2) * 4
            elif next_header == 44:
                self._need(position + 8, end)
                fragment, identification = struct.unpack_from("!HI", data, position + 2)
                packet.proto = data[position]
                position += 8
                if fragment & 0xFFF9:
                    key = (packet.src, packet.dst, identification, packet.proto)
                    return self._fragment(packet, 6, key, fragment & 0xFFF8, bool(fragment & 1), data[position:datagram_end])
                next_header = packet.proto  # an atomic fragment: the whole datagram is here
                continue
            else:
                break
            position += length
            if position > datagram_end:
                raise Malformed("ipv6_bad_extension_header")
        else:
            raise Malformed("ipv6_too_many_extension_headers")
        packet.proto = next_header
        return self._transport(packet, data, next_header, position, datagram_end, 6, depth)

    def _fragment(self, packet: Packet, version: int, key: tuple, offset: int, more: bool, payload: bytes) -> Packet | None:
        """Hand a fragment to the reassembler; decode the datagram when it is complete."""
        if self.reassembler is None:
            return packet
        done = self.reassembler.add(version, key, offset, more, payload, packet, self._cut_by_snaplen)
        if done is None:
            return None
        first, whole, complete = done
        return self.decode_reassembled(first, version, whole, complete)

    def _transport(self, packet: Packet, data: FrameBuffer, proto: int, position: int, end: int, version: int, depth: int) -> Packet | None:
        packet.proto = proto
        if proto == PROTO_TCP:
            self._need(position + 4, end)
            packet.sport, packet.dport = _ports(data, position)
            self._need(position + 14, end)
            packet.sport, packet.dport, packet.tcp_seq, packet.tcp_ack, offset, packet.tcp_flags = _tcp_header(data, position)
            header_length = (offset >> 4) * 4
            if header_length < 20:
                raise Malformed("tcp_bad_header")
            self._need(position + header_length, end)
            packet.payload = data[position + header_length : end]
            return packet
        if proto == PROTO_UDP:
            self._need(position + 8, end)
            packet.sport, packet.dport, length = struct.unpack_from("!HHH", data, position)
            if length < 8:
                raise Malformed("udp_bad_length")
            payload_end = min(end, position + length)
            if VXLAN_PORT in (packet.dport, packet.sport) and payload_end - position >= 16 and data[position + 8] & 0x08:
                return self._vxlan(packet, data, position + 8, payload_end, depth)
            if GENEVE_PORT in (packet.dport, packet.sport) and payload_end - position >= 16 and data[position + 8] >> 6 == 0:
                return self._geneve(packet, data, position + 8, payload_end, depth)
            packet.payload = data[position + 8 : payload_end]
            return packet
        if proto == 47:
            return self._gre(packet, data, position, end, depth)
        if proto == 4 or proto == 41:
            packet.encapsulation.append(self._tunnel(IP_IN_IP_NAMES[version, proto], packet))
            inner = self._ipv4 if proto == 4 else self._ipv6
            return inner(packet, data, position, end, depth + 1)
        if proto == 132:  # SCTP ports, so that SCTP flows are told apart
            self._need(position + 4, end)
            packet.sport, packet.dport = _ports(data, position)
        return packet

    @staticmethod
    def _tunnel(kind: str, packet: Packet, **fields: int) -> dict:
        """Encapsulation entry of a tunnel, with the endpoints of the IP header carrying it."""
        return {"type": kind, "src": address_text(packet.src), "dst": address_text(packet.dst), **fields}

    def _gre(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        self._need(position + 4, end)
        flags, protocol = struct.unpack_from("!HH", data, position)
        if flags & 0x4007:  # routing present or a version other than 0: not a mirroring tunnel
            raise Malformed("gre_unsupported_header")
        header_length = 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
        self._need(position + header_length, end)
        fields = {}
        if flags & 0x2000:
            fields["key"] = _u32(data, position + 4 + 4 * bool(flags & 0x8000))[0]
        position += header_length
        if protocol == ETHERTYPE_ERSPAN_2 and flags & 0x1000:
            self._need(position + 8, end)
            packet.encapsulation.append(self._tunnel("gre", packet, **fields))
            session = _u16(data, position + 2)[0] & 0x03FF
            packet.encapsulation.append({"type": "erspan", "version": 2, "session": session})
            return self._ethernet(packet, data, position + 8, end, depth + 1)
        if protocol == ETHERTYPE_ERSPAN_3:
            self._need(position + 12, end)
            packet.encapsulation.append(self._tunnel("gre", packet, **fields))
            session = _u16(data, position + 2)[0] & 0x03FF
            packet.encapsulation.append({"type": "erspan", "version": 3, "session": session})
            platform_subheader = 8 if data[position + 11] & 0x01 else 0
            return self._ethernet(packet, data, position + 12 + platform_subheader, end, depth + 1)
        packet.encapsulation.append(self._tunnel("gre", packet, **fields))
        if protocol in (ETHERTYPE_TEB, ETHERTYPE_ERSPAN_2):  # ERSPAN type I has no header of its own
            return self._ethernet(packet, data, position, end, depth + 1)
        return self._ethertype(packet, data, protocol, position, end, depth + 1)

    def _vxlan(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        vni = _u32(data, position + 4)[0] >> 8
        packet.encapsulation.append(self._tunnel("vxlan", packet, vni=vni))
        return self._ethernet(packet, data, position + 8, end, depth + 1)

    def _geneve(self, packet: Packet, data: FrameBuffer, position: int, end: int, depth: int) -> Packet | None:
        options_length = (data[position] & 0x3F) * 4
        protocol = _u16(data, position + 2)[0]
        vni = _u32(data, position + 4)[0] >> 8
        packet.encapsulation.append(self._tunnel("geneve", packet, vni=vni))
        position += 8 + options_length
        if protocol == ETHERTYPE_TEB:
            return self._ethernet(packet, data, position, end, depth + 1)
        return self._ethertype(packet, data, protocol, position, end, depth + 1)
