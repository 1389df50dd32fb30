"""`probe replay` end to end: the real console script run as a subprocess.

Inputs are built in tmp_path (scapy for packets, struct for damaged files); the checks are those a
user or an operator relies on: exit codes, the one-line error on stderr, the JSON Lines events and
their fields, and that no payload content or non-matching traffic ever reaches any output.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from probe.bundles.values import value_id

PROJECT_ROOT = Path(__file__).parents[1]
PROBE = Path(sys.executable).with_name("probe")
CAPTURES = PROJECT_ROOT / "captures"
EXAMPLE_BUNDLE = PROJECT_ROOT / "markers" / "example-bundle.json"

EPOCH = 1_700_000_000  # 2023-11-14: every crafted packet is captured after this
CANARY = "CANARY-7f3a9c"

EVENT_FIELDS = {
    "event_id",
    "timestamp",
    "event_type",
    "flow_id",
    "proto",
    "src_ip",
    "src_port",
    "dest_ip",
    "dest_port",
    "direction",
    "vlan",
    "matched_on",
    "marker",
    "encapsulation",
    "flow_start",
    "first_seen",
    "last_seen",
    "packets",
    "bytes",
    "hits",
    "revision",
    "probe",
}
MARKER_FIELDS = {"id", "type", "value", "bundle", "bundle_version", "severity", "tlp"}
"""`severity` and `tlp` only when the marker has them (the example bundle's have)."""
PROBE_FIELDS = {"name", "site"}


# --- running the CLI ----------------------------------------------------------------------------


def run_probe(*args: object, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the console script; stdout and stderr come back as text."""
    completed = subprocess.run(
        [str(PROBE), *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=PROJECT_ROOT,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(completed.args, completed.returncode, completed.stdout.decode("utf-8"), completed.stderr.decode("utf-8"))


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def marker_ids(events: list[dict]) -> set[str]:
    return {event["marker"]["id"] for event in events}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("probe: error:")]


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def assert_single_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 with exactly one `probe: error:` line that contains every needle; return that line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert_no_traceback(result)
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_only_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """An error reported before any processing: stderr is that one line and nothing else."""
    line = assert_single_error(result, *needles)
    assert result.stderr.strip().splitlines() == [line], result.stderr
    return line


# --- building inputs ----------------------------------------------------------------------------


def write_bundle(path: Path, markers: list[dict], **bundle: object) -> Path:
    document = {"id": "test-bundle", "issuer": "test", "version": 7, "created": "2026-11-01T00:00:00Z", **bundle, "markers": markers}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def stamped(packets: list, start: float, step: float = 0.001) -> list:
    for number, packet in enumerate(packets):
        packet.time = start + number * step
    return packets


def tcp_session(client: str, cport: int, server: str, sport: int, request: bytes, response: bytes = b"HTTP/1.1 204 No Content\r\n\r\n", start: float = EPOCH) -> list:
    """A complete TCP flow: handshake, one request and one response, FIN both ways, last ACK."""
    c, s = 1000, 5000
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    to_server = lambda **kw: ether / IP(src=client, dst=server) / TCP(sport=cport, dport=sport, **kw)  # noqa: E731
    to_client = lambda **kw: ether / IP(src=server, dst=client) / TCP(sport=sport, dport=cport, **kw)  # noqa: E731
    packets = [
        to_server(flags="S", seq=c),
        to_client(flags="SA", seq=s, ack=c + 1),
        to_server(flags="A", seq=c + 1, ack=s + 1),
        to_server(flags="PA", seq=c + 1, ack=s + 1) / Raw(request),
        to_client(flags="A", seq=s + 1, ack=c + 1 + len(request)),
        to_client(flags="PA", seq=s + 1, ack=c + 1 + len(request)) / Raw(response),
        to_server(flags="FA", seq=c + 1 + len(request), ack=s + 1 + len(response)),
        to_client(flags="FA", seq=s + 1 + len(response), ack=c + 2 + len(request)),
        to_server(flags="A", seq=c + 2 + len(request), ack=s + 2 + len(response)),
    ]
    return stamped(packets, start)


def http_get(host: str, path: str = "/", body: bytes = b"") -> bytes:
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\nAccept: */*\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def dns_exchange(client: str, server: str, name: str, start: float = EPOCH, cport: int = 40000) -> list:
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    query = ether / IP(src=client, dst=server) / UDP(sport=cport, dport=53) / DNS(id=0x4242, rd=1, qd=DNSQR(qname=name))
    answer = ether / IP(src=server, dst=client) / UDP(sport=53, dport=cport) / DNS(id=0x4242, qr=1, rd=1, ra=1, rcode=3, qd=DNSQR(qname=name))
    return stamped([query, answer], start)


def udp_packets(client: str, server: str, count: int = 2, start: float = EPOCH, payload: bytes = b"hello", sport: int = 50000, dport: int = 9999) -> list:
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return stamped([ether / IP(src=client, dst=server) / UDP(sport=sport, dport=dport) / Raw(payload) for _ in range(count)], start)


def client_hello(server_name: str) -> bytes:
    """A minimal TLS 1.2-framed ClientHello with one server_name extension."""
    name = server_name.encode()
    server_name_list = struct.pack("!BH", 0, len(name)) + name
    sni = struct.pack("!H", len(server_name_list)) + server_name_list
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + struct.pack("!H", 2) + b"\x13\x01" + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def write_pcap(path: Path, packets: list) -> Path:
    wrpcap(str(path), packets)
    return path


def pcap_bytes(packets: list, tmp_path: Path, name: str = "scratch.pcap") -> bytes:
    return write_pcap(tmp_path / name, packets).read_bytes()


@pytest.fixture
def address_bundle(tmp_path: Path) -> Path:
    """Two address markers, one for each capture of the multi-capture tests, and a domain."""
    return write_bundle(
        tmp_path / "markers.json",
        [
            {"id": "m-first", "type": "ipv4", "value": "203.0.113.1"},
            {"id": "m-second", "type": "ipv4", "value": "203.0.113.2"},
            {"id": "m-host", "type": "domain", "value": "evil.example"},
        ],
    )


def capture_hitting(tmp_path: Path, name: str, server: str, start: float = EPOCH) -> Path:
    return write_pcap(tmp_path / name, udp_packets("192.0.2.10", server, count=3, start=start))


# --- the README example ---------------------------------------------------------------------------


EXPECTED_EXAMPLE = {
    ("example-domain-tls13", "tls.sni"),
    ("example-domain-tls13", "dns.query"),
    ("example-host-httpbin", "http.host"),
    ("example-ip-cloudflare", "ip.dst"),
    ("example-domain-github", "dns.query"),
}


def shipped_captures() -> list[Path]:
    captures = sorted(CAPTURES.glob("*.pcap"))
    assert len(captures) >= 4
    return captures


def test_readme_example_finds_the_example_markers():
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE)
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    events = events_of(result.stdout)
    found = {(event["marker"]["id"], event["matched_on"]) for event in events}
    assert EXPECTED_EXAMPLE <= found
    assert "example-cidr-nested" in marker_ids(events)
    assert not any("decoy" in marker_id for marker_id in marker_ids(events))
    assert marker_ids(events) == {"example-domain-tls13", "example-host-httpbin", "example-ip-cloudflare", "example-cidr-nested", "example-domain-github"}
    for event in events:
        assert event["marker"]["bundle"] == "example"
        assert event["marker"]["bundle_version"] == 1
        assert event["event_type"] == "marker"
    # An event records the marker's value, never the observed name.
    tls13 = [event for event in events if event["marker"]["id"] == "example-domain-tls13"]
    assert {event["marker"]["value"] for event in tls13} == {"tls13.com"}
    assert "enabled.tls13.com" not in result.stdout
    assert "www.github.com" not in result.stdout
    summary = [line for line in result.stderr.splitlines() if line.startswith("probe: ")]
    assert any(line.startswith("probe: events: ") for line in summary), result.stderr
    assert f"probe: events: {len(events)}" in result.stderr
    assert not error_lines(result.stderr)


def test_events_option_writes_the_file_not_stdout(tmp_path: Path):
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE, "--events", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = events_of(out.read_text(encoding="utf-8"))
    assert {(event["marker"]["id"], event["matched_on"]) for event in events} >= EXPECTED_EXAMPLE
    assert "probe: events: " in result.stderr


def test_events_dash_is_stdout(tmp_path: Path):
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE, "--events", "-")
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) >= {"example-domain-tls13", "example-host-httpbin"}


def test_fail_on_event_exits_1_when_events_are_found(tmp_path: Path):
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE, "--events", out, "--fail-on-event")
    assert result.returncode == 1, result.stderr
    assert_no_traceback(result)
    assert not error_lines(result.stderr)
    assert events_of(out.read_text(encoding="utf-8"))


def test_fail_on_event_exits_0_when_nothing_matches(tmp_path: Path):
    bundle = write_bundle(tmp_path / "nothing.json", [{"id": "never", "type": "ipv4", "value": "198.51.100.250"}])
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", *shipped_captures(), "--markers", bundle, "--events", out, "--fail-on-event")
    assert result.returncode == 0, result.stderr
    assert out.exists() and out.read_text(encoding="utf-8") == ""
    assert "probe: events: 0" in result.stderr


def test_events_path_that_cannot_be_written_is_exit_2(tmp_path: Path):
    result = run_probe("replay", CAPTURES / "dns-udp.pcap", "--markers", EXAMPLE_BUNDLE, "--events", tmp_path / "no-such-dir" / "events.jsonl")
    assert_only_error(result, "no-such-dir")


def test_no_marker_file_is_exit_2():
    result = run_probe("replay", CAPTURES / "dns-udp.pcap")
    assert_only_error(result, "--markers")


def test_no_capture_is_a_usage_error():
    result = run_probe("replay", "--markers", EXAMPLE_BUNDLE)
    assert result.returncode == 2
    assert_no_traceback(result)


# --- event records ------------------------------------------------------------------------------


def test_event_fields_are_exactly_the_documented_ones():
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines
    for line in lines:
        event = json.loads(line)
        assert set(event) == EVENT_FIELDS, sorted(set(event) ^ EVENT_FIELDS)
        assert set(event["marker"]) == MARKER_FIELDS, event["marker"]
        assert set(event["probe"]) == PROBE_FIELDS, event["probe"]
        assert event["event_type"] == "marker"
        assert event["direction"] in ("to_server", "to_client")
        assert event["proto"] in ("TCP", "UDP")
        assert isinstance(event["flow_id"], int) and event["flow_id"] >= 0
        assert isinstance(event["vlan"], list) and all(isinstance(v, int) for v in event["vlan"])
        assert isinstance(event["encapsulation"], list) and all(isinstance(layer, dict) and "type" in layer for layer in event["encapsulation"])
        for key in ("src_port", "dest_port", "packets", "bytes", "hits"):
            assert isinstance(event[key], int) and event[key] >= 0, key
        assert event["hits"] >= 1
        for key in ("timestamp", "flow_start", "first_seen", "last_seen"):
            assert isinstance(event[key], str) and event[key].endswith("Z"), key
        assert event["first_seen"] <= event["timestamp"] <= event["last_seen"]


def test_flow_id_fits_a_json_double():
    """probe/record/events.py promises a flow id that "fits a JSON double": at most 2**53, so that
    JavaScript, jq and every JSON reader that parses numbers as doubles keep it exact."""
    result = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE)
    assert result.returncode == 0, result.stderr
    flow_ids = {event["flow_id"] for event in events_of(result.stdout)}
    too_large = sorted(flow_id for flow_id in flow_ids if flow_id > 2**53)
    assert not too_large, f"flow ids above 2**53 lose precision as JSON doubles: {too_large}"
    for flow_id in flow_ids:
        assert int(float(flow_id)) == flow_id


def test_crafted_event_fields_are_exactly_the_documented_ones(tmp_path: Path, address_bundle: Path):
    packets = tcp_session("192.0.2.10", 41000, "192.0.2.80", 80, http_get("www.evil.example")) + udp_packets("192.0.2.11", "203.0.113.1", start=EPOCH + 1)
    capture = write_pcap(tmp_path / "c.pcap", packets)
    result = run_probe("replay", capture, "--markers", address_bundle)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert {(e["marker"]["id"], e["matched_on"]) for e in events} == {("m-host", "http.host"), ("m-first", "ip.dst")}
    for event in events:
        assert set(event) == EVENT_FIELDS
        assert set(event["marker"]) == MARKER_FIELDS - {"severity", "tlp"}
        assert set(event["probe"]) == PROBE_FIELDS
        assert event["marker"]["bundle"] == "test-bundle" and event["marker"]["bundle_version"] == 7
    http = next(e for e in events if e["matched_on"] == "http.host")
    assert (http["src_ip"], http["src_port"], http["dest_ip"], http["dest_port"], http["proto"]) == ("192.0.2.10", 41000, "192.0.2.80", 80, "TCP")
    assert http["direction"] == "to_server"
    assert http["packets"] == 8  # up to the second FIN, which ended the flow; its last ACK comes after
    assert http["marker"]["value"] == "evil.example"


def test_event_ids_are_identical_across_runs(tmp_path: Path):
    first = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE)
    second = run_probe("replay", *shipped_captures(), "--markers", EXAMPLE_BUNDLE)
    assert first.returncode == second.returncode == 0
    ids_first = [event["event_id"] for event in events_of(first.stdout)]
    ids_second = [event["event_id"] for event in events_of(second.stdout)]
    assert ids_first and sorted(ids_first) == sorted(ids_second)
    assert len(set(ids_first)) == len(ids_first), "event ids must be unique"
    assert sorted(first.stdout.splitlines()) == sorted(second.stdout.splitlines())


# --- no payload content, no non-matching traffic, in any output ----------------------------------


NON_MATCHING_ADDRESSES = ("198.18.7.21", "198.18.7.22", "198.18.9.31", "198.18.9.32", "198.18.11.41", "198.18.11.42")


def canary_capture(tmp_path: Path) -> Path:
    lower = CANARY.lower()
    body = f"secret={CANARY}&again={lower}".encode()
    packets = []
    # Matching flows: the canary is in the payload around the matched name, and in the name itself.
    packets += tcp_session("192.0.2.10", 41000, "192.0.2.80", 80, http_get("www.evil.example", f"/{CANARY}/x?q={CANARY}", body), response=b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + CANARY.encode(), start=EPOCH)
    packets += tcp_session("192.0.2.10", 41001, "192.0.2.81", 8080, http_get(f"{lower}.evil.example", f"/{CANARY}", body), start=EPOCH + 1)
    packets += dns_exchange("192.0.2.10", "192.0.2.53", f"{lower}.evil.example", start=EPOCH + 2)
    packets += tcp_session("192.0.2.10", 41002, "192.0.2.44", 443, client_hello(f"{lower}.evil.example") + CANARY.encode(), response=CANARY.encode(), start=EPOCH + 3)
    # Non-matching flows between addresses no marker names, carrying the canary too.
    packets += tcp_session(NON_MATCHING_ADDRESSES[0], 42000, NON_MATCHING_ADDRESSES[1], 80, http_get(f"{lower}.harmless.example", f"/{CANARY}", body), start=EPOCH + 4)
    packets += dns_exchange(NON_MATCHING_ADDRESSES[2], NON_MATCHING_ADDRESSES[3], f"{lower}.other.example", start=EPOCH + 5)
    packets += udp_packets(NON_MATCHING_ADDRESSES[4], NON_MATCHING_ADDRESSES[5], count=3, payload=CANARY.encode() * 4, start=EPOCH + 6)
    packets += tcp_session(NON_MATCHING_ADDRESSES[4], 42001, NON_MATCHING_ADDRESSES[5], 443, client_hello(f"{lower}.harmless.example"), start=EPOCH + 7)
    return write_pcap(tmp_path / "canary.pcap", packets)


def test_no_payload_content_nor_non_matching_flow_in_any_output(tmp_path: Path):
    capture = canary_capture(tmp_path)
    assert CANARY.encode() in capture.read_bytes()  # the canary really is in the input
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "m-evil", "type": "domain", "value": "evil.example", "match": "subdomains"}])
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", capture, "--markers", bundle, "--events", out)
    assert result.returncode == 0, result.stderr
    events_text = out.read_text(encoding="utf-8")
    events = events_of(events_text)
    # The matching flows were found, through every route the canary name took.
    assert {event["matched_on"] for event in events} == {"http.host", "dns.query", "tls.sni"}
    assert {event["dest_ip"] for event in events} == {"192.0.2.80", "192.0.2.81", "192.0.2.53", "192.0.2.44"}
    assert {event["marker"]["value"] for event in events} == {"evil.example"}
    every_output = {"events file": events_text, "stdout": result.stdout, "stderr": result.stderr}
    for where, text in every_output.items():
        lowered = text.lower()
        assert CANARY.lower() not in lowered, where
        assert CANARY.lower().encode().hex() not in lowered, where
        assert "7f3a9c" not in lowered, where
        for address in NON_MATCHING_ADDRESSES:
            assert address not in text, (where, address)
        for name in ("harmless.example", "other.example", "www.evil.example", "secret="):
            assert name not in lowered, (where, name)


def test_no_payload_content_on_stdout_either(tmp_path: Path):
    capture = canary_capture(tmp_path)
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "m-evil", "type": "domain", "value": "evil.example", "match": "subdomains"}])
    result = run_probe("replay", capture, "--markers", bundle, "--fail-on-event")
    assert result.returncode == 1, result.stderr
    assert events_of(result.stdout)
    for text in (result.stdout, result.stderr):
        assert CANARY.lower() not in text.lower()
        assert not any(address in text for address in NON_MATCHING_ADDRESSES)


# --- damaged and unusual captures ---------------------------------------------------------------


def test_cut_short_capture_then_valid_capture(tmp_path: Path, address_bundle: Path):
    first = capture_hitting(tmp_path, "first.pcap", "203.0.113.1")
    whole = first.read_bytes()
    cut = tmp_path / "cut-short.pcap"
    cut.write_bytes(whole[:-7])  # the last record's data is missing its end
    second = capture_hitting(tmp_path, "second.pcap", "203.0.113.2", start=EPOCH + 10)
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", cut, second, "--markers", address_bundle, "--events", out)
    line = assert_single_error(result, str(cut), "byte offset")
    assert "cut short" in line
    assert str(second) not in line
    events = events_of(out.read_text(encoding="utf-8"))
    assert marker_ids(events) == {"m-first", "m-second"}
    first_event = next(event for event in events if event["marker"]["id"] == "m-first")
    assert first_event["packets"] == 2  # the two complete records before the cut one
    assert "probe: captures: 2 (1 with errors)" in result.stderr


def test_cut_short_record_header(tmp_path: Path, address_bundle: Path):
    whole = capture_hitting(tmp_path, "first.pcap", "203.0.113.1").read_bytes()
    cut = tmp_path / "cut-header.pcap"
    cut.write_bytes(whole + b"\x01\x02\x03\x04\x05")  # a record header of 5 of its 16 bytes
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", cut, "--markers", address_bundle, "--events", out)
    assert_single_error(result, str(cut), "byte offset", f"byte offset {len(whole)}")
    assert marker_ids(events_of(out.read_text(encoding="utf-8"))) == {"m-first"}


def test_corrupt_record_length_mid_capture(tmp_path: Path, address_bundle: Path):
    first = capture_hitting(tmp_path, "first.pcap", "203.0.113.1").read_bytes()
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(first + struct.pack("<IIII", EPOCH, 0, 0x7FFFFFF0, 0x7FFFFFF0) + b"\x00" * 64)
    second = capture_hitting(tmp_path, "second.pcap", "203.0.113.2", start=EPOCH + 10)
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", corrupt, second, "--markers", address_bundle, "--events", out)
    assert_single_error(result, str(corrupt), f"byte offset {len(first)}")
    assert marker_ids(events_of(out.read_text(encoding="utf-8"))) == {"m-first", "m-second"}


def test_bad_magic_is_exit_2_naming_the_file(tmp_path: Path, address_bundle: Path):
    bad = tmp_path / "not-a-capture.pcap"
    bad.write_bytes(b"GIF89a" + bytes(200))
    result = run_probe("replay", bad, "--markers", address_bundle)
    assert_single_error(result, str(bad))
    assert result.stdout == ""


def test_bad_magic_first_does_not_stop_the_next_capture(tmp_path: Path, address_bundle: Path):
    bad = tmp_path / "not-a-capture.pcap"
    bad.write_bytes(b"this is text, not a capture\n" * 4)
    second = capture_hitting(tmp_path, "second.pcap", "203.0.113.2")
    result = run_probe("replay", bad, second, "--markers", address_bundle)
    assert_single_error(result, str(bad))
    assert marker_ids(events_of(result.stdout)) == {"m-second"}


def test_missing_capture_is_exit_2(tmp_path: Path, address_bundle: Path):
    missing = tmp_path / "does-not-exist.pcap"
    result = run_probe("replay", missing, "--markers", address_bundle)
    assert_single_error(result, str(missing))


def test_empty_capture_is_exit_2(tmp_path: Path, address_bundle: Path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    result = run_probe("replay", empty, "--markers", address_bundle)
    line = assert_single_error(result, str(empty))
    assert "empty" in line


def test_truncated_file_header_is_exit_2(tmp_path: Path, address_bundle: Path):
    whole = capture_hitting(tmp_path, "first.pcap", "203.0.113.1").read_bytes()
    short = tmp_path / "short-header.pcap"
    short.write_bytes(whole[:10])
    result = run_probe("replay", short, "--markers", address_bundle)
    assert_single_error(result, str(short))


def test_gzip_capture_works(tmp_path: Path, address_bundle: Path):
    plain = capture_hitting(tmp_path, "plain.pcap", "203.0.113.1").read_bytes()
    compressed = tmp_path / "capture.pcap.gz"
    compressed.write_bytes(gzip.compress(plain))
    result = run_probe("replay", compressed, "--markers", address_bundle)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"m-first"}


def test_truncated_gzip_is_exit_2_with_events_before(tmp_path: Path, address_bundle: Path):
    packets = udp_packets("192.0.2.10", "203.0.113.1", count=200, payload=os.urandom(400))
    compressed = gzip.compress(pcap_bytes(packets, tmp_path))
    broken = tmp_path / "broken.pcap.gz"
    broken.write_bytes(compressed[: len(compressed) * 3 // 4])
    result = run_probe("replay", broken, "--markers", address_bundle)
    assert_single_error(result, str(broken))
    assert marker_ids(events_of(result.stdout)) == {"m-first"}


def test_pcapng_capture_works(tmp_path: Path, address_bundle: Path):
    from scapy.utils import wrpcapng

    capture = tmp_path / "capture.pcapng"
    wrpcapng(str(capture), udp_packets("192.0.2.10", "203.0.113.1", count=3))
    assert capture.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    result = run_probe("replay", capture, "--markers", address_bundle)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert marker_ids(events) == {"m-first"}
    assert events[0]["first_seen"] == "2023-11-14T22:13:20.000000Z"


def test_stdin_dash_reads_a_piped_capture(tmp_path: Path, address_bundle: Path):
    data = capture_hitting(tmp_path, "piped.pcap", "203.0.113.1").read_bytes()
    result = run_probe("replay", "-", "--markers", address_bundle, stdin=data)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"m-first"}


def test_stdin_dash_reads_a_piped_gzip_capture(tmp_path: Path, address_bundle: Path):
    data = capture_hitting(tmp_path, "piped.pcap", "203.0.113.1").read_bytes()
    result = run_probe("replay", "-", "--markers", address_bundle, stdin=gzip.compress(data))
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"m-first"}


def test_empty_stdin_is_exit_2(address_bundle: Path):
    result = run_probe("replay", "-", "--markers", address_bundle, stdin=b"")
    assert_single_error(result, "-:")


def test_exit_2_wins_over_events_found(tmp_path: Path, address_bundle: Path):
    good = capture_hitting(tmp_path, "good.pcap", "203.0.113.1")
    whole = capture_hitting(tmp_path, "other.pcap", "203.0.113.2", start=EPOCH + 10).read_bytes()
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(whole[:-3])
    out = tmp_path / "events.jsonl"
    result = run_probe("replay", good, corrupt, "--markers", address_bundle, "--events", out, "--fail-on-event")
    assert_single_error(result, str(corrupt), "byte offset")
    assert marker_ids(events_of(out.read_text(encoding="utf-8"))) == {"m-first", "m-second"}


def test_exit_2_wins_over_events_found_with_missing_capture(tmp_path: Path, address_bundle: Path):
    good = capture_hitting(tmp_path, "good.pcap", "203.0.113.1")
    result = run_probe("replay", good, tmp_path / "missing.pcap", "--markers", address_bundle, "--fail-on-event")
    assert_single_error(result, "missing.pcap")
    assert marker_ids(events_of(result.stdout)) == {"m-first"}


# --- marker files -------------------------------------------------------------------------------


@pytest.fixture
def any_capture(tmp_path: Path) -> Path:
    return capture_hitting(tmp_path, "any.pcap", "203.0.113.1")


def test_invalid_json_bundle(tmp_path: Path, any_capture: Path):
    bundle = tmp_path / "broken.json"
    bundle.write_text('{"id": "x", "markers": [\n  {"id": "a", "type": "ipv4", "value": "192.0.2.1"},\n]\n}', encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", bundle)
    line = assert_only_error(result, str(bundle), "line 3")
    assert "JSON" in line


def test_bundle_marker_with_invalid_ipv4(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "bad-ip.json", [{"id": "ok", "type": "ipv4", "value": "192.0.2.1"}, {"id": "bad-address", "type": "ipv4", "value": "192.0.2.300"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    line = assert_only_error(result, str(bundle), "bad-address")
    assert "192.0.2.300" in line


def test_bundle_marker_ipv6_value_for_ipv4_type(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "wrong-family.json", [{"id": "wrong-family", "type": "ipv4", "value": "2001:db8::1"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert_only_error(result, str(bundle), "wrong-family")


def test_bundle_marker_with_unknown_type(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "unknown-type.json", [{"id": "strange", "type": "mac", "value": "00:11:22:33:44:55"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    line = assert_only_error(result, str(bundle), "strange")
    assert "mac" in line


def test_bundle_with_duplicate_marker_id(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "duplicate.json", [{"id": "twice", "type": "ipv4", "value": "192.0.2.1"}, {"id": "twice", "type": "ipv4", "value": "192.0.2.2"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert_only_error(result, str(bundle), "twice")


def test_bundle_without_markers_list(tmp_path: Path, any_capture: Path):
    bundle = tmp_path / "no-markers.json"
    bundle.write_text('{"id": "x"}', encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert_only_error(result, str(bundle), "markers")


def test_bundle_time_without_zone(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "zone.json", [{"id": "naive", "type": "ipv4", "value": "192.0.2.1", "valid_until": "2030-01-01T00:00:00"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert_only_error(result, str(bundle), "naive", "valid_until")


def test_missing_marker_file(tmp_path: Path, any_capture: Path):
    missing = tmp_path / "missing-markers.json"
    result = run_probe("replay", any_capture, "--markers", missing)
    assert_only_error(result, str(missing))


def test_second_marker_file_error_names_that_file(tmp_path: Path, any_capture: Path, address_bundle: Path):
    bad = write_bundle(tmp_path / "second.json", [{"id": "bad-cidr", "type": "cidr", "value": "10.0.0.0/33"}])
    result = run_probe("replay", any_capture, "--markers", address_bundle, "--markers", bad)
    line = assert_only_error(result, str(bad), "bad-cidr")
    assert str(address_bundle) not in line
    assert result.stdout == ""


def test_zeek_intel_with_wrong_column_count(tmp_path: Path, any_capture: Path):
    intel = tmp_path / "intel.dat"
    intel.write_text("#fields\tindicator\tindicator_type\tmeta.source\n203.0.113.1\tIntel::ADDR\tcert\n203.0.113.2\tIntel::ADDR\n", encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", intel)
    assert_only_error(result, f"{intel}:3")


def test_zeek_intel_without_fields_header(tmp_path: Path, any_capture: Path):
    intel = tmp_path / "no-header.dat"
    intel.write_text("# a comment\n203.0.113.1\tIntel::ADDR\tcert\n", encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", intel)
    line = assert_only_error(result, str(intel))
    assert "#fields" in line


def test_zeek_intel_with_invalid_address(tmp_path: Path, any_capture: Path):
    intel = tmp_path / "bad-address.dat"
    intel.write_text("#fields\tindicator\tindicator_type\tmeta.source\n203.0.113.1\tIntel::ADDR\tcert\n203.0.113.999\tIntel::ADDR\tcert\n", encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", intel)
    assert_only_error(result, f"{intel}:3")


def test_zeek_intel_loads_and_matches(tmp_path: Path, any_capture: Path):
    intel = tmp_path / "intel.dat"
    intel.write_text("#fields\tindicator\tindicator_type\tmeta.source\tmeta.do_notice\n203.0.113.1\tIntel::ADDR\tcert\tT\n198.51.100.0/24\tIntel::SUBNET\tcert\t-\n", encoding="utf-8")
    result = run_probe("replay", any_capture, "--markers", intel)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert marker_ids(events) == {f"ipv4/{value_id('203.0.113.1')}"}
    assert events[0]["marker"]["bundle"].startswith("intel-")
    assert events[0]["marker"]["bundle_version"] == 0
    assert "probe: warning:" not in result.stderr


def test_every_marker_type_loads_without_a_warning(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(
        tmp_path / "every-type.json",
        [
            {"id": "fingerprint", "type": "ja3", "value": "e7d705a3286e19ea42f587b344ee6865"},
            {"id": "url", "type": "url", "value": "http://evil.example/x"},
            {"id": "pattern", "type": "bytes", "value": "evil", "name": "evil bytes"},
            {"id": "address", "type": "ipv4", "value": "203.0.113.1"},
        ],
    )
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert "probe: warning:" not in result.stderr
    assert marker_ids(events_of(result.stdout)) == {"address"}
    assert "probe: markers: 4 active, from 1 bundle(s)" in result.stderr


def test_zeek_intel_url_lines_match_http_requests(tmp_path: Path):
    intel = tmp_path / "intel.dat"
    intel.write_text(
        "#fields\tindicator\tindicator_type\tmeta.source\n"
        "EU.httpbin.org/image/\tIntel::URL\tcert\n"
        "eu.httpbin.org/image/png\tIntel::URL\tcert\n",
        encoding="utf-8",
    )
    result = run_probe("replay", str(Path(__file__).resolve().parents[1] / "captures" / "vxlan-http.pcap"), "--markers", intel)
    assert result.returncode == 0, result.stderr
    assert "probe: warning:" not in result.stderr
    (event,) = events_of(result.stdout)
    assert (event["matched_on"], event["marker"]["value"], event["direction"]) == ("http.url", "eu.httpbin.org/image/", "to_server")


def test_markers_expired_before_the_capture_warn(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(
        tmp_path / "expired.json",
        [
            {"id": "old-1", "type": "ipv4", "value": "203.0.113.1", "valid_until": "2020-01-01T00:00:00Z"},
            {"id": "old-2", "type": "domain", "value": "evil.example", "valid_until": "2021-06-01T00:00:00Z"},
        ],
    )
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("probe: warning:")]
    assert any("no marker is valid during the capture's time range" in line for line in warnings), result.stderr
    assert result.stdout == ""


def test_bundle_validity_bounds_its_markers(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "future.json", [{"id": "later", "type": "ipv4", "value": "203.0.113.1"}], valid_from="2030-01-01T00:00:00Z")
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert result.returncode == 0, result.stderr
    assert "no marker is valid during the capture's time range" in result.stderr
    assert result.stdout == ""


def test_a_marker_valid_during_the_capture_gives_no_warning(tmp_path: Path, any_capture: Path):
    bundle = write_bundle(tmp_path / "current.json", [{"id": "now", "type": "ipv4", "value": "203.0.113.1", "valid_from": "2023-01-01T00:00:00Z", "valid_until": "2024-01-01T00:00:00Z"}])
    result = run_probe("replay", any_capture, "--markers", bundle)
    assert result.returncode == 0, result.stderr
    assert "probe: warning:" not in result.stderr
    assert marker_ids(events_of(result.stdout)) == {"now"}


# --- streaming: an event is written before the end of the input ---------------------------------


def test_event_written_before_end_of_piped_input(tmp_path: Path):
    """A complete TCP flow hitting a marker, then packets of another flow, arrive on a pipe that
    stays open: the flow's event must be written without waiting for the end of the input."""
    packets = tcp_session("192.0.2.10", 43000, "192.0.2.80", 80, http_get("www.stream.example"))
    packets += udp_packets("192.0.2.20", "192.0.2.21", count=5, start=EPOCH + 1)
    data = pcap_bytes(packets, tmp_path)
    header, records = data[:24], data[24:]
    seen, stderr, exited_early, code = stream_until_event(tmp_path, [header, records], "m-stream")
    assert exited_early is None, f"probe exited (code {exited_early}) while its input was still open: {stderr}"
    assert "m-stream" in seen, (
        "no event line written within 10 s while stdin stayed open: the capture reader waits to fill "
        "a whole chunk from the pipe instead of handing on the bytes that have arrived"
    )
    assert code == 0, stderr
    events = events_of((tmp_path / "stream-events.jsonl").read_text(encoding="utf-8"))
    assert marker_ids(events) == {"m-stream"}
    assert len(events) == 1
    assert events[0]["matched_on"] == "http.host" and events[0]["packets"] == 8  # up to the closing FIN


def stream_until_event(tmp_path: Path, chunks: list[bytes], marker_id: str, wait: float = 10) -> tuple[str, str, int | None, int]:
    """Feed `chunks` to `probe replay -` through a pipe kept open; poll the events file until it
    holds `marker_id` (or `wait` runs out); then close stdin. Return (events seen while stdin was
    open, stderr, exit code if the probe exited early, final exit code)."""
    bundle = write_bundle(tmp_path / "stream-markers.json", [{"id": marker_id, "type": "domain", "value": "stream.example"}])
    out = tmp_path / "stream-events.jsonl"
    process = subprocess.Popen(
        [str(PROBE), "replay", "-", "--markers", str(bundle), "--events", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    seen = ""
    exited_early = None
    try:
        for chunk in chunks:
            process.stdin.write(chunk)
        process.stdin.flush()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if out.exists():
                seen = out.read_text(encoding="utf-8")
                if seen.endswith("\n") and marker_id in seen:
                    break
            if process.poll() is not None:
                exited_early = process.returncode
                break
            time.sleep(0.05)
    finally:
        try:
            _, stderr = process.communicate(timeout=30)  # closes stdin: end of input
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    return seen, stderr.decode(), exited_early, process.returncode


def test_event_written_before_end_of_piped_gzip_input(tmp_path: Path):
    """The same with a gzip stream flushed (Z_SYNC_FLUSH) after the packets: every byte needed to
    decompress them has arrived, so the event can be written before the input ends."""
    import zlib

    packets = tcp_session("192.0.2.10", 43000, "192.0.2.80", 80, http_get("www.stream.example"))
    packets += udp_packets("192.0.2.20", "192.0.2.21", count=5, start=EPOCH + 1)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
    flushed = compressor.compress(pcap_bytes(packets, tmp_path)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    seen, stderr, exited_early, code = stream_until_event(tmp_path, [flushed], "m-gzip-stream")
    assert exited_early is None, (exited_early, stderr)
    assert "m-gzip-stream" in seen, (
        "no event within 10 s while a gzip-compressed stdin stayed open: the gzip reader waits to fill "
        "its read buffer from the pipe instead of decompressing the bytes that have arrived"
    )
    # the stream was never finished (no gzip trailer): exit 2 naming stdin is the right end
    assert code == 2 and "probe: error: -:" in stderr, stderr


def test_piped_capture_in_pieces_gives_the_same_events_as_the_file(tmp_path: Path):
    """Flow timeouts are a property of the capture's timestamps, not of how its bytes arrived.
    Flow A (hitting a marker) is silent for 101 s, longer than the default udp_timeout of 60 s,
    while flow B has a packet at 100 s; A then sends again at 101 s. Read from a file and read from
    a pipe that delivers the capture in two pieces (cut after B's packet), the events must be the
    same: the same flows, the same ids."""
    bundle = write_bundle(tmp_path / "net.json", [{"id": "m-net", "type": "cidr", "value": "203.0.113.0/24"}])
    packets = udp_packets("192.0.2.10", "203.0.113.1", count=1, start=EPOCH)
    packets += udp_packets("192.0.2.11", "198.51.100.1", count=1, start=EPOCH + 100)
    packets += udp_packets("192.0.2.10", "203.0.113.1", count=1, start=EPOCH + 101)
    capture = write_pcap(tmp_path / "gap.pcap", packets)
    data = capture.read_bytes()
    from_file = run_probe("replay", capture, "--markers", bundle)
    assert from_file.returncode == 0, from_file.stderr
    process = subprocess.Popen([str(PROBE), "replay", "-", "--markers", str(bundle)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT_ROOT)
    cut = 24 + 2 * (16 + len(bytes(packets[0])))
    try:
        process.stdin.write(data[:cut])
        process.stdin.flush()
        time.sleep(1)
        process.stdin.write(data[cut:])
    finally:
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    file_events = sorted((e["event_id"], e["packets"], e["first_seen"]) for e in events_of(from_file.stdout))
    pipe_events = sorted((e["event_id"], e["packets"], e["first_seen"]) for e in events_of(stdout.decode()))
    flows_line = lambda text: next(line for line in text.splitlines() if line.startswith("probe: flows: "))  # noqa: E731
    assert pipe_events == file_events, (flows_line(from_file.stderr), flows_line(stderr.decode()))


# --- help ---------------------------------------------------------------------------------------


def test_replay_help_mentions_the_exit_codes():
    result = run_probe("replay", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "Exit codes" in text or "exit codes" in text.lower()
    for code in ("0", "1", "2"):
        assert any(line.strip().startswith(code + " ") for line in text.splitlines()), code
    assert "--fail-on-event" in text and "--markers" in text and "--events" in text and "--config" in text


def test_top_level_help_mentions_the_exit_codes():
    result = run_probe("--help")
    assert result.returncode == 0
    assert "replay" in result.stdout
    assert "exit code" in result.stdout.lower(), result.stdout


def test_unknown_option_is_a_usage_error():
    result = run_probe("replay", "x.pcap", "--markers", "m.json", "--no-such-option")
    assert result.returncode == 2
    assert_no_traceback(result)


def test_a_bad_marker_file_leaves_an_existing_events_file_untouched(tmp_path: Path, any_capture: Path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"kept": true}\n')
    bad = tmp_path / "bad.json"
    bad.write_text('{"markers": [{"id": "x", "type": "bogus", "value": "y"}]}')
    result = run_probe("replay", any_capture, "--markers", bad, "--events", events)
    assert_only_error(result, str(bad))
    assert events.read_text() == '{"kept": true}\n'
