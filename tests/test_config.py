"""The TOML configuration: loading and validation (`probe.config`), and what `--config` changes in a
real `probe replay` run (the console script, as a subprocess)."""

from __future__ import annotations

import dataclasses

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from probe.config import Config, SinkSection, load_config, parse_config
from probe.errors import ConfigError

PROJECT_ROOT = Path(__file__).parents[1]
PROBE = Path(sys.executable).with_name("probe")
EXAMPLE_CONFIG = PROJECT_ROOT / "systemd" / "probe.toml"
EPOCH = 1_700_000_000


# --- helpers ------------------------------------------------------------------------------------


def run_probe(*args: object) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(PROBE), *map(str, args)], input=b"", capture_output=True, cwd=PROJECT_ROOT, timeout=60)
    return subprocess.CompletedProcess(completed.args, completed.returncode, completed.stdout.decode(), completed.stderr.decode())


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def marker_ids(events: list[dict]) -> set[str]:
    return {event["marker"]["id"] for event in events}


def summary_line(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"probe: {prefix}")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_only_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""
    return lines[0]


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_bundle(path: Path, markers: list[dict]) -> Path:
    path.write_text(json.dumps({"id": path.stem, "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": markers}), encoding="utf-8")
    return path


def toml_string(path: Path) -> str:
    return json.dumps(str(path))  # a JSON string is a valid TOML basic string


ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def udp_flows(count: int, server_prefix: str = "203.0.113.", start: float = EPOCH) -> list:
    """`count` UDP flows, two packets each, one flow after the other."""
    packets = []
    for number in range(count):
        for direction in range(2):
            src, dst = ("192.0.2.10", f"{server_prefix}{number + 1}")
            sport, dport = 50000 + number, 9999
            if direction:
                src, dst, sport, dport = dst, src, dport, sport
            packet = ETHER / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"x" * 20)
            packet.time = start + number + direction * 0.01
            packets.append(packet)
    return packets


def write_pcap(path: Path, packets: list) -> Path:
    wrpcap(str(path), packets)
    return path


@pytest.fixture
def bundle_a(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle-a.json", [{"id": "a-net", "type": "cidr", "value": "203.0.113.0/24"}])


@pytest.fixture
def bundle_b(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle-b.json", [{"id": "b-one", "type": "ipv4", "value": "203.0.113.1"}])


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    return write_pcap(tmp_path / "flows.pcap", udp_flows(5))


# --- load_config --------------------------------------------------------------------------------


def test_example_configuration_loads():
    config = load_config(str(EXAMPLE_CONFIG))
    assert isinstance(config, Config)
    assert config.flows.max_flows == 1_000_000
    assert config.flows.tcp_timeout == 300.0 and isinstance(config.flows.tcp_timeout, float)
    assert config.flows.udp_timeout == 60.0
    assert config.flows.other_timeout == 60.0
    assert config.flows.tcp_closed_timeout == 10.0
    assert config.flows.handshake_buffer_bytes == 16384
    assert config.fragments.timeout == 30.0
    assert config.fragments.max_datagrams == 10000
    assert config.fragments.max_per_source == 512
    assert config.fragments.max_bytes == 32 * 1024 * 1024
    assert config.markers.files == ()
    assert config.events.path == "-"
    assert config.probe.site == ""
    assert config.probe.name == socket.gethostname()  # commented out in the example: the default


def test_example_configuration_documents_every_key():
    """systemd/probe.toml is the commented example of every key: its values are the defaults."""
    assert load_config(str(EXAMPLE_CONFIG)) == Config()
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    for section in ("probe", "flows", "fragments", "markers", "events"):
        assert f"[{section}]" in text
    for section in dataclasses.fields(Config):
        keys = dataclasses.fields(SinkSection if section.name == "sinks" else section.default_factory)
        for key in keys:
            assert f"\n{key.name} = " in text or f"\n# {key.name} = " in text, f"{section.name}.{key.name}"
    assert "\n# [[sinks]]\n" in text


def test_no_configuration_gives_the_defaults():
    assert load_config(None) == Config()


def test_values_are_read(tmp_path: Path):
    path = write_config(
        tmp_path / "probe.toml",
        '[probe]\nname = "probe-lab-01"\nsite = "lab"\n'
        "[flows]\nmax_flows = 10\ntcp_timeout = 1.5\nudp_timeout = 2\n"
        "[fragments]\nmax_per_source = 3\n"
        '[markers]\nfiles = ["a.json", "b.dat"]\n'
        '[events]\npath = "/tmp/events.jsonl"\n',
    )
    config = load_config(str(path))
    assert config.probe.name == "probe-lab-01" and config.probe.site == "lab"
    assert config.flows.max_flows == 10
    assert config.flows.tcp_timeout == 1.5
    assert config.flows.udp_timeout == 2.0 and isinstance(config.flows.udp_timeout, float)
    assert config.flows.other_timeout == 60.0  # untouched keys keep their defaults
    assert config.fragments.max_per_source == 3
    assert config.markers.files == ("a.json", "b.dat")
    assert config.events.path == "/tmp/events.jsonl"


def test_empty_file_gives_the_defaults(tmp_path: Path):
    assert load_config(str(write_config(tmp_path / "empty.toml", ""))) == Config()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        pytest.param("[flow]\nmax_flows = 2\n", ("[flow]",), id="unknown-section"),
        pytest.param("[flows]\nmax_flow = 2\n", ("flows.max_flow",), id="unknown-key"),
        pytest.param("[fragments]\ntimeout_seconds = 2\n", ("fragments.timeout_seconds",), id="unknown-key-fragments"),
        pytest.param('[flows]\nmax_flows = "10"\n', ("flows.max_flows",), id="string-for-int"),
        pytest.param("[flows]\nmax_flows = 2.5\n", ("flows.max_flows",), id="float-for-int"),
        pytest.param("[flows]\nmax_flows = true\n", ("flows.max_flows",), id="bool-for-int"),
        pytest.param('[flows]\ntcp_timeout = "300"\n', ("flows.tcp_timeout",), id="string-for-seconds"),
        pytest.param("[flows]\nudp_timeout = false\n", ("flows.udp_timeout",), id="bool-for-seconds"),
        pytest.param("[probe]\nname = 7\n", ("probe.name",), id="int-for-string"),
        pytest.param('[markers]\nfiles = "a.json"\n', ("markers.files",), id="string-for-list"),
        pytest.param('[markers]\nrequire_signature = "yes"\n', ("markers.require_signature", "true or false"), id="string-for-bool"),
        pytest.param('[events]\nmax_tlp = "white"\n', ("events.max_tlp", "amber+strict"), id="unknown-tlp"),
        pytest.param("[markers]\nfiles = [1, 2]\n", ("markers.files",), id="ints-in-list"),
        pytest.param("[events]\npath = []\n", ("events.path",), id="list-for-string"),
        pytest.param("[flows]\nmax_flows = 0\n", ("flows.max_flows", "greater than 0"), id="zero-max-flows"),
        pytest.param("[flows]\nmax_flows = -5\n", ("flows.max_flows",), id="negative-max-flows"),
        pytest.param("[flows]\ntcp_timeout = -1\n", ("flows.tcp_timeout",), id="negative-timeout"),
        pytest.param("[flows]\nhandshake_buffer_bytes = 0\n", ("flows.handshake_buffer_bytes",), id="zero-buffer"),
        pytest.param("[fragments]\ntimeout = 0.0\n", ("fragments.timeout",), id="zero-fragment-timeout"),
        pytest.param("[fragments]\nmax_bytes = 0\n", ("fragments.max_bytes",), id="zero-fragment-bytes"),
        pytest.param("flows = 3\n", ("[flows]",), id="section-not-a-table"),
    ],
)
def test_invalid_configuration_names_the_key(tmp_path: Path, text: str, needles: tuple[str, ...]):
    path = write_config(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert "\n" not in message


def test_invalid_toml_names_the_file(tmp_path: Path):
    path = write_config(tmp_path / "broken.toml", "[flows\nmax_flows = 2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(path) in str(raised.value)
    assert "TOML" in str(raised.value)


def test_duplicate_key_is_invalid_toml(tmp_path: Path):
    path = write_config(tmp_path / "twice.toml", "[flows]\nmax_flows = 2\nmax_flows = 3\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(path) in str(raised.value)


def test_not_utf8_names_the_file(tmp_path: Path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[probe]\nsite = "Orléans"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(path) in str(raised.value)


def test_missing_file_names_the_file(tmp_path: Path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(path) in str(raised.value)


def test_directory_names_the_file(tmp_path: Path):
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path))
    assert str(tmp_path) in str(raised.value)


def test_parse_config_names_its_origin():
    with pytest.raises(ConfigError) as raised:
        parse_config({"flows": {"max_flows": 0}}, "override")
    assert str(raised.value).startswith("override: flows.max_flows")


# --- the configuration through the CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param("[nope]\n", "[nope]", id="unknown-section"),
        pytest.param("[flows]\nmax_flowz = 2\n", "flows.max_flowz", id="unknown-key"),
        pytest.param('[flows]\nmax_flows = "many"\n', "flows.max_flows", id="wrong-type"),
        pytest.param("[flows]\nmax_flows = 0\n", "flows.max_flows", id="non-positive"),
        pytest.param("[flows\n", "TOML", id="invalid-toml"),
    ],
)
def test_cli_refuses_a_bad_configuration(tmp_path: Path, capture: Path, bundle_a: Path, text: str, needle: str):
    config = write_config(tmp_path / "bad.toml", text)
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert_only_error(result, str(config), needle)


def test_cli_refuses_a_missing_configuration(tmp_path: Path, capture: Path, bundle_a: Path):
    missing = tmp_path / "missing.toml"
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", missing)
    assert_only_error(result, str(missing))


def test_cli_accepts_the_example_configuration(capture: Path, bundle_a: Path):
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", EXAMPLE_CONFIG)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"a-net"}


def test_config_markers_and_events_are_used_without_options(tmp_path: Path, capture: Path, bundle_a: Path):
    out = tmp_path / "from-config.jsonl"
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bundle_a)}]\n[events]\npath = {toml_string(out)}\n")
    result = run_probe("replay", capture, "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = events_of(out.read_text(encoding="utf-8"))
    assert marker_ids(events) == {"a-net"}
    assert len(events) == 5


def test_markers_option_overrides_the_config(tmp_path: Path, capture: Path, bundle_a: Path, bundle_b: Path):
    out = tmp_path / "from-config.jsonl"
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bundle_a)}]\n[events]\npath = {toml_string(out)}\n")
    result = run_probe("replay", capture, "--config", config, "--markers", bundle_b)
    assert result.returncode == 0, result.stderr
    events = events_of(out.read_text(encoding="utf-8"))  # [events] still applies
    assert marker_ids(events) == {"b-one"}
    assert "probe: markers: 1 active, from 1 bundle(s)" in result.stderr


def test_events_option_overrides_the_config(tmp_path: Path, capture: Path, bundle_a: Path):
    configured = tmp_path / "from-config.jsonl"
    given = tmp_path / "from-option.jsonl"
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bundle_a)}]\n[events]\npath = {toml_string(configured)}\n")
    result = run_probe("replay", capture, "--config", config, "--events", given)
    assert result.returncode == 0, result.stderr
    assert not configured.exists()
    assert marker_ids(events_of(given.read_text(encoding="utf-8"))) == {"a-net"}  # [markers] still applies


def test_events_dash_overrides_a_configured_file(tmp_path: Path, capture: Path, bundle_a: Path):
    configured = tmp_path / "from-config.jsonl"
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bundle_a)}]\n[events]\npath = {toml_string(configured)}\n")
    result = run_probe("replay", capture, "--config", config, "--events", "-")
    assert result.returncode == 0, result.stderr
    assert not configured.exists()
    assert marker_ids(events_of(result.stdout)) == {"a-net"}


def test_several_marker_files_from_the_config(tmp_path: Path, capture: Path, bundle_a: Path, bundle_b: Path):
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bundle_a)}, {toml_string(bundle_b)}]\n")
    result = run_probe("replay", capture, "--config", config)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"a-net", "b-one"}
    assert "probe: markers: 2 active, from 2 bundle(s)" in result.stderr


def test_empty_marker_list_in_config_and_no_option_is_exit_2(tmp_path: Path, capture: Path):
    config = write_config(tmp_path / "probe.toml", "[markers]\nfiles = []\n")
    result = run_probe("replay", capture, "--config", config)
    assert_only_error(result, "--markers")


def test_bad_marker_file_named_in_config_is_exit_2(tmp_path: Path, capture: Path):
    bad = write_bundle(tmp_path / "bad.json", [{"id": "broken", "type": "ipv4", "value": "not-an-address"}])
    config = write_config(tmp_path / "probe.toml", f"[markers]\nfiles = [{toml_string(bad)}]\n")
    result = run_probe("replay", capture, "--config", config)
    assert_only_error(result, str(bad), "broken")


def test_unwritable_configured_events_path_is_exit_2(tmp_path: Path, capture: Path, bundle_a: Path):
    out = tmp_path / "no-such-dir" / "events.jsonl"
    config = write_config(tmp_path / "probe.toml", f"[events]\npath = {toml_string(out)}\n")
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert_only_error(result, str(out))


def test_probe_name_and_site_reach_the_events(tmp_path: Path, capture: Path, bundle_a: Path):
    config = write_config(tmp_path / "probe.toml", '[probe]\nname = "probe-lab-01"\nsite = "tap-7"\n')
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert events
    assert {(event["probe"]["name"], event["probe"]["site"]) for event in events} == {("probe-lab-01", "tap-7")}


def test_default_probe_name_is_the_host_name(capture: Path, bundle_a: Path):
    result = run_probe("replay", capture, "--markers", bundle_a)
    assert result.returncode == 0, result.stderr
    assert {(event["probe"]["name"], event["probe"]["site"]) for event in events_of(result.stdout)} == {(socket.gethostname(), "")}


# --- limits reach the pipeline ------------------------------------------------------------------


def test_max_flows_evicts(tmp_path: Path, capture: Path, bundle_a: Path):
    config = write_config(tmp_path / "probe.toml", "[flows]\nmax_flows = 2\n")
    result = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert result.returncode == 0, result.stderr
    assert summary_line(result.stderr, "flows: ") == "probe: flows: 5 created, 0 ended by idle timeout, 3 evicted"
    events = events_of(result.stdout)
    assert len(events) == 5  # an evicted flow's events are written, not lost
    assert {event["dest_ip"] for event in events} == {f"203.0.113.{n}" for n in range(1, 6)}
    assert all(event["packets"] == 2 for event in events)


def test_default_max_flows_evicts_nothing(capture: Path, bundle_a: Path):
    result = run_probe("replay", capture, "--markers", bundle_a)
    assert result.returncode == 0, result.stderr
    assert summary_line(result.stderr, "flows: ") == "probe: flows: 5 created, 0 ended by idle timeout, 0 evicted"


def split_http_request(tmp_path: Path) -> Path:
    """A TCP flow whose HTTP request head is split over two segments; the first one is 150 bytes
    and already holds the Host header, the head ends in the second."""
    client, server, cport, sport = "192.0.2.10", "192.0.2.80", 41000, 80
    first = b"GET / HTTP/1.1\r\nHost: www.evil.example\r\nX-Pad: " + b"a" * 100
    second = b"\r\nAccept: */*\r\n\r\n"
    c, s = 1000, 5000

    def out(**kw):
        return ETHER / IP(src=client, dst=server) / TCP(sport=cport, dport=sport, **kw)

    def back(**kw):
        return ETHER / IP(src=server, dst=client) / TCP(sport=sport, dport=cport, **kw)

    packets = [
        out(flags="S", seq=c),
        back(flags="SA", seq=s, ack=c + 1),
        out(flags="A", seq=c + 1, ack=s + 1),
        out(flags="PA", seq=c + 1, ack=s + 1) / Raw(first),
        out(flags="PA", seq=c + 1 + len(first), ack=s + 1) / Raw(second),
        back(flags="A", seq=s + 1, ack=c + 1 + len(first) + len(second)),
    ]
    for number, packet in enumerate(packets):
        packet.time = EPOCH + number * 0.001
    return write_pcap(tmp_path / "split.pcap", packets)


def test_handshake_buffer_limit_reaches_the_pipeline(tmp_path: Path):
    capture = split_http_request(tmp_path)
    bundle = write_bundle(tmp_path / "domain.json", [{"id": "evil", "type": "domain", "value": "evil.example"}])
    default = run_probe("replay", capture, "--markers", bundle)
    assert default.returncode == 0, default.stderr
    assert marker_ids(events_of(default.stdout)) == {"evil"}
    assert summary_line(default.stderr, "anomalies: ") == "probe: anomalies: 0"
    config = write_config(tmp_path / "probe.toml", "[flows]\nhandshake_buffer_bytes = 64\n")
    small = run_probe("replay", capture, "--markers", bundle, "--config", config)
    assert small.returncode == 0, small.stderr
    assert summary_line(small.stderr, "anomalies: ") == "probe: anomalies: 1 (handshake.overflow 1)"
    assert marker_ids(events_of(small.stdout)) == set()


def first_fragments(count: int) -> list:
    """First fragments (more-fragments set, offset 0) of `count` UDP datagrams whose other
    fragments never arrive."""
    packets = []
    for number in range(count):
        datagram = IP(src="192.0.2.10", dst="203.0.113.1", id=100 + number) / UDP(sport=50000 + number, dport=9999) / Raw(b"y" * 200)
        raw = bytes(datagram)
        header = IP(raw[:20])
        header.flags = "MF"
        header.frag = 0
        header.len = None
        header.chksum = None
        packet = ETHER / IP(bytes(header)[:20]) / Raw(raw[20:20 + 96])
        del packet[IP].len
        del packet[IP].chksum
        packet.time = EPOCH + number * 0.001
        packets.append(packet)
    return packets


def test_fragment_limits_reach_the_pipeline(tmp_path: Path, bundle_a: Path):
    capture = write_pcap(tmp_path / "fragments.pcap", first_fragments(3))
    default = run_probe("replay", capture, "--markers", bundle_a)
    assert default.returncode == 0, default.stderr
    assert summary_line(default.stderr, "fragments: ") == "probe: fragments: 0 datagrams reassembled, 3 incomplete, 0 dropped for overlap, 0 dropped at limits"
    config = write_config(tmp_path / "probe.toml", "[fragments]\nmax_datagrams = 1\n")
    limited = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert limited.returncode == 0, limited.stderr
    assert summary_line(limited.stderr, "fragments: ") == "probe: fragments: 0 datagrams reassembled, 1 incomplete, 0 dropped for overlap, 2 dropped at limits"
    config = write_config(tmp_path / "per-source.toml", "[fragments]\nmax_per_source = 2\n")
    per_source = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert per_source.returncode == 0, per_source.stderr
    assert summary_line(per_source.stderr, "fragments: ") == "probe: fragments: 0 datagrams reassembled, 2 incomplete, 0 dropped for overlap, 1 dropped at limits"


def test_udp_timeout_reaches_the_pipeline(tmp_path: Path, bundle_a: Path):
    """Two packets of one 5-tuple 30 s apart: one flow with the default 60 s timeout, two flows
    (each with its own event) when udp_timeout is 5 s."""
    packets = []
    for offset in (0, 30):
        packet = ETHER / IP(src="192.0.2.10", dst="203.0.113.1") / UDP(sport=50000, dport=9999) / Raw(b"z" * 10)
        packet.time = EPOCH + offset
        packets.append(packet)
    capture = write_pcap(tmp_path / "gap.pcap", packets)
    default = run_probe("replay", capture, "--markers", bundle_a)
    assert default.returncode == 0, default.stderr
    assert summary_line(default.stderr, "flows: ").startswith("probe: flows: 1 created,")
    assert len(events_of(default.stdout)) == 1
    config = write_config(tmp_path / "probe.toml", "[flows]\nudp_timeout = 5\n")
    short = run_probe("replay", capture, "--markers", bundle_a, "--config", config)
    assert short.returncode == 0, short.stderr
    assert summary_line(short.stderr, "flows: ").startswith("probe: flows: 2 created,"), short.stderr
    assert len(events_of(short.stdout)) == 2


@pytest.mark.parametrize("value", ["inf", "nan", "1e12"])
def test_timeouts_that_are_not_finite_or_absurd_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="flows.tcp_timeout"):
        parse_config(tomllib.loads(f"[flows]\ntcp_timeout = {value}\n"))
