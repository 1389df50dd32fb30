"""`probe run` on a real network: two network namespaces joined by a veth pair (MTU 9000), the
shared captures replayed into one end with tcpreplay, the probe capturing on the other end.

Two comparisons, since an event id derives from its flow's first-packet time, which on a live link
is the time of the replay:
- exact: the live events equal, field for field (ids and timestamps included), those of
  `probe replay` on a recording that tcpdump made of the same link in the same run: the live
  path (ring, tag restoration, dispatch, workers, one store) adds and loses nothing;
- against the original captures: the same markers, flows, directions, encapsulations and
  counters as `probe replay` of the captures themselves, timestamps and ids aside.
With 2 workers the events equal those with 1 worker (the same comparison).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from truth_support import planted_bundle, shared_captures, truth_of

PROBE = str(Path(sys.executable).with_name("probe"))
LIVE_CAPTURES = [
    # Ethernet, neither cut by a snap length nor corrupt; tunnelled and tagged ones included.
    "bigendian.pcap",
    "dns-tcp.pcap",
    "dns-udp.pcap",
    "erspan-type2.pcap",
    "gre-erspan-vxlan-nested.pcap",
    "gre-sample.pcap",
    "gre-teb-mirror-mixed.pcap",
    "http-bro-org-browsing.pcap",
    "ipv4-frag-dns.pcap",
    "ipv6-ext-dstopts.pcap",
    "ipv6-http.pcap",
    "mpls-basic.pcap",
    "qinq-802.1ad.pcap",
    "quic-ietf-initial.pcap",
    "tcp-retransmissions.pcap",
    "tls-split-clienthello.pcap",
    "tls12-sni.pcap",
    "tls13-sni.pcap",
    "vlan-mpls-mixed.pcap",
    "vlan-two-tags.pcap",
    # Not vxlan-http.pcap: one of its frames is 9100 bytes, beyond the link's MTU of 9000 (VXLAN is
    # in gre-erspan-vxlan-nested.pcap).
]
TIME_FIELDS = ("event_id", "flow_id", "timestamp", "first_seen", "last_seen")
WEEK = 7 * 24 * 3600


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and packet sockets"
    for tool in ("ip", "tcpreplay", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (.ci/setup installs iproute2, tcpreplay and tcpdump)"
    probe = subprocess.run(["ip", "netns", "add", f"probe-check-{os.getpid()}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"probe-check-{os.getpid()}"], check=True)
    return None


pytestmark = pytest.mark.skipif(_missing_requirements() is not None, reason=str(_missing_requirements()))


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def network():
    """(sender namespace, capture namespace); the veth ends are `send0` and `tap0`."""
    sender, capture = f"probe-send-{os.getpid()}", f"probe-tap-{os.getpid()}"
    for namespace in (sender, capture):
        _run("ip", "netns", "add", namespace)
        # Nothing of the namespaces' own stacks on the wire: no IPv6 router solicitations or DAD.
        _run("ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    try:
        _run("ip", "link", "add", "send0", "netns", sender, "mtu", "9000", "type", "veth", "peer", "name", "tap0", "netns", capture, "mtu", "9000")
        _run("ip", "-n", sender, "link", "set", "send0", "up")
        _run("ip", "-n", capture, "link", "set", "tap0", "up")
        yield sender, capture
    finally:
        for namespace in (sender, capture):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.fixture(scope="module")
def captures() -> list[Path]:
    available = {path.name: path for path in shared_captures()}
    return [available[name] for name in LIVE_CAPTURES]


@pytest.fixture(scope="module")
def bundle(captures, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("markers") / "planted.json"
    truths = [truth_of(capture) for capture in captures]
    merged = {key: sorted({value for truth in truths for value in truth[key]}) for key in ("dns_qnames", "tls_sni", "http_hosts", "inner_ipv4", "inner_ipv6")}
    planted_bundle(merged, path)
    return path


def _configuration(directory: Path, bundle: Path, workers: int, live: bool) -> Path:
    """The same [flows] (timeouts of a week, so that the captures' own silences split no flow
    that the live replay, seconds long, keeps whole) for live and replay runs; a store and an
    authority sink for the live one."""
    directory.mkdir(parents=True)
    outputs = ""
    if live:
        (directory / "store").mkdir(mode=0o700)
        outputs = f"""
[store]
directory = "{directory}/store"
[[sinks]]
name = "authority"
type = "file"
authority = true
path = "{directory}/notifications.jsonl"
"""
    config = directory / "probe.toml"
    config.write_text(outputs + f"""
[probe]
name = "live-test"
[declaration]
reference = "TEST-DECLARATION-1"
declared_by = "Test operator"
declared_on = "2026-11-01"
interfaces = ["tap0"]
[capture]
interfaces = ["tap0"]
[service]
workers = {workers}
metrics_address = ""
control_socket = "{directory}/control.sock"
[flows]
tcp_timeout = {WEEK}
udp_timeout = {WEEK}
other_timeout = {WEEK}
tcp_closed_timeout = {WEEK}
[fragments]
timeout = {WEEK}
[markers]
files = ["{bundle}"]
require_signature = false
""")
    return config


def _status(directory: Path) -> dict | None:
    result = subprocess.run([PROBE, "status", "--json", "--socket", str(directory / "control.sock")], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _live_run(network, captures: list[Path], bundle: Path, directory: Path, workers: int) -> tuple[list[dict], Path, dict]:
    """Run the probe on tap0 while the captures are sent into send0; its stored events, the
    tcpdump recording of the same link, and the probe's last status."""
    sender, capture_namespace = network
    config = _configuration(directory, bundle, workers, live=True)
    probe = subprocess.Popen(["ip", "netns", "exec", capture_namespace, PROBE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recording = directory / "recording.pcap"
    tcpdump = None
    try:
        _wait_for(lambda: _status(directory) is not None or probe.poll() is not None, 120, "probe run to answer on its control socket")
        assert probe.poll() is None, probe.communicate()[1]
        tcpdump = subprocess.Popen(["ip", "netns", "exec", capture_namespace, "tcpdump", "-i", "tap0", "-w", str(recording), "-s", "0", "--time-stamp-precision=nano", "-U", "-p"], stderr=subprocess.PIPE, text=True)
        assert "listening on" in tcpdump.stderr.readline()
        sent = 0
        for path in captures:
            result = subprocess.run(["ip", "netns", "exec", sender, "tcpreplay", "-i", "send0", "--topspeed", str(path)], capture_output=True, text=True)
            assert result.returncode == 0 and "Failed packets:            0" in result.stdout, f"{path.name}: {result.stdout} {result.stderr}"
            sent += int(result.stdout.split("Actual: ")[1].split()[0])
        _wait_for(lambda: sum(worker.get("packets", 0) for worker in (_status(directory) or {"workers": []})["workers"]) >= sent, 60, f"the workers to count the {sent} frames sent")
        status = _status(directory)
        assert status is not None
        probe.send_signal(signal.SIGTERM)
        _, errors = probe.communicate(timeout=60)
        assert probe.returncode == 0, errors
    finally:
        if probe.poll() is None:
            probe.kill()
        if tcpdump is not None:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=10)
    interface = status["interfaces"]["tap0"]
    assert interface["frames"] == sent and interface["dropped"] == 0
    return _stored_events(directory / "store"), recording, status


def _stored_events(store: Path) -> list[dict]:
    result = subprocess.run([PROBE, "store", "query", "--store", str(store), "--format", "jsonl", "--purpose", "live capture test"], capture_output=True, text=True, check=True)
    return sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda event: (event["event_id"]))


def _replayed_events(directory: Path, bundle: Path, inputs: list[Path]) -> list[dict]:
    config = _configuration(directory, bundle, 1, live=False)
    events = directory / "events.jsonl"
    command = [PROBE, "replay", *map(str, inputs), "--config", str(config), "--events", str(events)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in events.read_text().splitlines()]


def _without_time(events: list[dict]) -> list[str]:
    return sorted(json.dumps({key: value for key, value in event.items() if key not in TIME_FIELDS + ("probe",)}, sort_keys=True) for event in events)


def _final(events: list[dict]) -> list[dict]:
    return sorted(({key: value for key, value in event.items() if key != "probe"} for event in events), key=lambda event: event["event_id"])


@pytest.mark.parametrize("workers", [1, 2])
def test_live_capture_gives_the_events_of_replay(network, captures, bundle, tmp_path, workers) -> None:
    live, recording, status = _live_run(network, captures, bundle, tmp_path / "live", workers)
    assert live, "the planted markers gave no event"
    assert all(worker["packets"] > 0 for worker in status["workers"]), "a worker received nothing"

    recorded = _replayed_events(tmp_path / "recorded", bundle, [recording])
    assert _final(live) == _final(recorded)

    original = _replayed_events(tmp_path / "original", bundle, captures)
    assert _without_time(live) == _without_time(original)
