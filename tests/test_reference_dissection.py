"""Frame by frame against Wireshark's dissection (through pyshark): the innermost IP addresses,
protocol and ports the per-frame decoder finds in every frame of tunnelled and tagged captures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from probe.capture.reader import read_capture
from probe.decode.fragments import FragmentReassembler
from probe.decode.frame import FrameDecoder
from probe.decode.packet import address_text
from truth_support import shared_captures

pyshark = pytest.importorskip("pyshark")
pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (the README's set-up installs it)")

CAPTURES = ["vxlan-http.pcap", "gre-erspan-vxlan-nested.pcap", "vlan-mpls-mixed.pcap", "mpls-basic.pcap", "ipv6-http.pcap", "gre-sample.pcap", "gre-teb-mirror-mixed.pcap", "sll2-large.pcap"]


def _wireshark_innermost(path: Path) -> list[tuple | None]:
    frames = []
    capture = pyshark.FileCapture(str(path), keep_packets=False)
    try:
        for packet in capture:
            names = [layer.layer_name for layer in packet.layers]
            held = any(layer.layer_name == "ip" and str(layer.get_field_value("flags_mf")) in ("1", "True") for layer in packet.layers)
            if held or "icmp" in names or "icmpv6" in names or not ({"ip", "ipv6"} & set(names)):
                frames.append(None)  # ICMP errors quote another flow; a first fragment waits for the rest
                continue
            last_ip = max(position for position, name in enumerate(names) if name in ("ip", "ipv6"))
            ip = packet.layers[last_ip]
            transport = [layer for layer in packet.layers[last_ip + 1 :] if layer.layer_name in ("tcp", "udp")]
            ports = (int(transport[0].srcport), int(transport[0].dstport)) if transport else None
            frames.append((ip.src, ip.dst, ports))
    finally:
        capture.close()
    return frames


@pytest.mark.parametrize("name", CAPTURES)
def test_innermost_flow_of_every_frame_equals_wireshark(name: str) -> None:
    path = {capture.name: capture for capture in shared_captures()}[name]
    decoder = FrameDecoder(FragmentReassembler(30 * 10**9, 1000, 100, 10**7))
    ours = []
    for batch in read_capture(str(path)):
        for offset, caplen, wirelen, linktype, timestamp in zip(batch.offsets.tolist(), batch.caplens.tolist(), batch.wirelens.tolist(), batch.linktypes.tolist(), batch.timestamps.tolist()):
            packet = decoder.decode(batch.data, offset, caplen, wirelen, linktype, timestamp)
            ours.append(packet)
    wireshark = _wireshark_innermost(path)
    assert len(ours) == len(wireshark)
    compared = 0
    for number, (packet, reference) in enumerate(zip(ours, wireshark), 1):
        if reference is None:
            continue
        assert packet is not None, f"frame {number}: Wireshark found {reference}, the probe nothing"
        assert (address_text(packet.src), address_text(packet.dst)) == reference[:2], f"frame {number}"
        if reference[2] is not None:
            assert (packet.sport, packet.dport) == reference[2], f"frame {number}"
        compared += 1
    assert compared
