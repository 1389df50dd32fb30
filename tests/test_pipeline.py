"""Names recognised by content on any port, across segments and through an explicit proxy."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

from scapy.all import IP, TCP, Ether, Raw, wrpcap

from probe.config import Config
from probe.replay import replay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_capture import client_hello  # noqa: E402

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"


def session(client_port: int, server_port: int, client_segments: list[bytes], server_segments: list[bytes] = ()) -> list:
    """A TCP session: handshake, the client's segments (the server's answer after the first), FINs."""
    seq, ack = 1000, 5000
    packets = [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER) / TCP(sport=client_port, dport=server_port, flags="S", seq=seq - 1),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=SERVER, dst=CLIENT) / TCP(sport=server_port, dport=client_port, flags="SA", seq=ack - 1, ack=seq),
    ]
    for number, segment in enumerate(client_segments):
        packets.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER) / TCP(sport=client_port, dport=server_port, flags="PA", seq=seq, ack=ack) / Raw(segment))
        seq += len(segment)
        if number == 0:
            for answer in server_segments:
                packets.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=SERVER, dst=CLIENT) / TCP(sport=server_port, dport=client_port, flags="PA", seq=ack, ack=seq) / Raw(answer))
                ack += len(answer)
    packets.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER) / TCP(sport=client_port, dport=server_port, flags="FA", seq=seq, ack=ack))
    packets.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=SERVER, dst=CLIENT) / TCP(sport=server_port, dport=client_port, flags="FA", seq=ack, ack=seq + 1))
    for number, packet in enumerate(packets):
        packet.time = 1_700_000_000 + client_port + number / 100
    return packets


def events_for(tmp_path: Path, packets: list, names: list[str]) -> list[dict]:
    wrpcap(str(tmp_path / "capture.pcap"), packets)
    markers = [{"id": name, "type": "domain", "value": name, "match": "exact"} for name in names]
    (tmp_path / "markers.json").write_text(json.dumps({"id": "test", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": markers}))
    events = io.StringIO()
    replay(Config(), [str(tmp_path / "capture.pcap")], [str(tmp_path / "markers.json")], events)
    return [json.loads(line) for line in events.getvalue().splitlines()]


def test_client_hello_after_connect_through_a_proxy_split_over_segments(tmp_path: Path) -> None:
    hello = client_hello("inner.example", random.Random(1), post_quantum=True)
    connect = b"CONNECT proxied.example:443 HTTP/1.1\r\nHost: proxied.example:443\r\n\r\n"
    packets = session(40000, 3128, [connect, hello[:700], hello[700:]], [b"HTTP/1.1 200 Connection established\r\n\r\n"])
    found = {(event["marker"]["id"], event["matched_on"], event["dest_port"]) for event in events_for(tmp_path, packets, ["proxied.example", "inner.example"])}
    assert found == {("proxied.example", "http.host", 3128), ("inner.example", "tls.sni", 3128)}


def test_tls_and_http_on_unusual_ports_and_a_hello_in_one_byte_segments(tmp_path: Path) -> None:
    hello = client_hello("tls.example", random.Random(2), post_quantum=False)
    request = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: WWW.Http.Example.\r\n\r\n"
    trickle = client_hello("trickle.example", random.Random(3), post_quantum=False)
    packets = session(40001, 8443, [hello]) + session(40002, 2222, [request[:20], request[20:]]) + session(40003, 5000, [trickle[:1], trickle[1:2], trickle[2:7], trickle[7:]])
    events = events_for(tmp_path, packets, ["tls.example", "www.http.example", "trickle.example"])
    assert {(event["marker"]["value"], event["matched_on"]) for event in events} == {("tls.example", "tls.sni"), ("www.http.example", "http.host"), ("trickle.example", "tls.sni")}
    assert all(event["direction"] == "to_server" and event["src_ip"] == CLIENT for event in events)


def test_a_retransmitted_hello_is_read_once(tmp_path: Path) -> None:
    """The stream is reassembled before it is read: a retransmission carries no new byte, so it
    is counted as a packet of the flow, not as a second sighting of the name."""
    hello = client_hello("again.example", random.Random(4), post_quantum=False)
    packets = session(40004, 443, [hello])
    packets.insert(3, packets[2].copy())  # the same segment twice, as a retransmission
    (event,) = events_for(tmp_path, packets, ["again.example"])
    assert event["hits"] == 1 and event["packets"] == len(packets)


def test_tls_and_http_on_dns_ports_are_still_read(tmp_path: Path) -> None:
    """DNS ports carry DNS over TCP, but an attacker may send a ClientHello or a request there."""
    packets = session(40010, 53, [client_hello("port53.example", random.Random(5), post_quantum=False)])
    packets += session(40011, 5353, [b"GET / HTTP/1.1\r\nHost: mdns-port.example\r\n\r\n"])
    found = {(event["marker"]["value"], event["matched_on"]) for event in events_for(tmp_path, packets, ["port53.example", "mdns-port.example"])}
    assert found == {("port53.example", "tls.sni"), ("mdns-port.example", "http.host")}


def test_the_same_marker_id_in_two_bundles_gives_two_distinct_events(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "capture.pcap"), session(40012, 443, [client_hello("twice.example", random.Random(6), post_quantum=False)]))
    for name in ("one", "two"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"id": name, "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [{"id": "m-001", "type": "domain", "value": "twice.example"}]}))
    events = io.StringIO()
    replay(Config(), [str(tmp_path / "capture.pcap")], [str(tmp_path / "one.json"), str(tmp_path / "two.json")], events)
    records = [json.loads(line) for line in events.getvalue().splitlines()]
    assert sorted(record["marker"]["bundle"] for record in records) == ["one", "two"]
    assert len({record["event_id"] for record in records}) == 2


def test_a_new_connection_on_the_ports_of_an_ended_one_is_a_new_flow(tmp_path: Path, monkeypatch) -> None:
    """Two connections on one 5-tuple, one after the other: two events, whatever the batching."""
    import probe.capture.reader
    import probe.pipeline

    first = session(40020, 443, [client_hello("reused.example", random.Random(7), post_quantum=False)])
    second = session(40020, 443, [client_hello("reused.example", random.Random(8), post_quantum=False)])
    for packet in second:
        packet.time += 1
    runs = []
    for chunk, vector_run in ((16 << 20, 1), (800, 1), (16 << 20, 10**9)):  # vector route, small batches, per frame
        monkeypatch.setattr(probe.capture.reader, "CHUNK_SIZE", chunk)
        monkeypatch.setattr(probe.pipeline, "MIN_VECTOR_RUN", vector_run)
        runs.append(sorted((event["event_id"], event["packets"], event["first_seen"]) for event in events_for(tmp_path, first + second, ["reused.example"])))
        # The same with the first connection's close and the second connection in a second capture.
        wrpcap(str(tmp_path / "a.pcap"), first[:-2])
        wrpcap(str(tmp_path / "b.pcap"), first[-2:] + second)
        events = io.StringIO()
        replay(Config(), [str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap")], [str(tmp_path / "markers.json")], events)
        assert sorted((event["event_id"], event["packets"], event["first_seen"]) for event in map(json.loads, events.getvalue().splitlines())) == runs[-1]
    assert len(runs[0]) == 2 and runs[0][0][2] != runs[0][1][2]
    assert runs[0] == runs[1] == runs[2]
