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
import threading
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
TIME_FIELDS = ("event_id", "flow_id", "timestamp", "flow_start", "first_seen", "last_seen")
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
        _run("ip", "-n", capture, "link", "set", "lo", "up")  # the metrics endpoint listens on its loopback
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
    merged = {key: sorted({value for truth in truths for value in truth[key]}) for key in ("dns_qnames", "tls_sni", "quic_sni", "ja3", "quic_ja3", "http_hosts", "inner_ipv4", "inner_ipv6")}
    planted_bundle(merged, path)
    return path


AUTHORITY_FILE_SINK = '[[sinks]]\nname = "authority"\ntype = "file"\nauthority = true\npath = "{directory}/notifications.jsonl"\n'


def _configuration(directory: Path, bundle: Path, workers: int, live: bool, sinks: str = AUTHORITY_FILE_SINK) -> Path:
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
""" + sinks.format(directory=directory)
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


class RunningProbe:
    """`probe run` in the capture namespace, with a configuration written by the test."""

    def __init__(self, network, directory: Path, bundle: Path, environment: dict | None = None, sinks: str = AUTHORITY_FILE_SINK, **sections: str) -> None:
        """`sections`: lines added to a section of the test configuration, e.g. service="workers = 2"."""
        self.directory = directory
        self.sender, namespace = network
        self.namespace = namespace
        self.config = _configuration(directory, bundle, 1, live=True, sinks=sinks)
        text = self.config.read_text()
        if "metrics_address" in sections.get("service", ""):
            text = text.replace('metrics_address = ""\n', "")
        for section, lines in sections.items():
            text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n")
        self.config.write_text(text)
        self.process = subprocess.Popen(["ip", "netns", "exec", namespace, PROBE, "run", "--config", str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(environment or {})})
        _wait_for(lambda: _status(directory) is not None or self.process.poll() is not None, 120, "probe run to answer on its control socket")
        assert self.process.poll() is None, self.process.communicate()[1]

    def status(self) -> dict:
        status = _status(self.directory)
        assert status is not None
        return status

    def send(self, capture: Path) -> None:
        before = sum(worker["packets"] for worker in self.status()["workers"])
        result = subprocess.run(["ip", "netns", "exec", self.sender, "tcpreplay", "-i", "send0", "--topspeed", str(capture)], capture_output=True, text=True, check=True)
        sent = int(result.stdout.split("Actual: ")[1].split()[0])
        _wait_for(lambda: sum(worker["packets"] for worker in self.status()["workers"]) >= before + sent, 60, "the frames sent to be counted")

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=timeout)
        return self.process.returncode, errors

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def running(network, bundle, tmp_path):
    started: list[RunningProbe] = []

    def start(environment: dict | None = None, markers: Path | None = None, **sections: str) -> RunningProbe:
        probe = RunningProbe(network, tmp_path / f"run{len(started)}", markers or bundle, environment, **sections)
        started.append(probe)
        return probe

    yield start
    for probe in started:
        probe.close()


def _capture_named(captures: list[Path], name: str) -> Path:
    return next(path for path in captures if path.name == name)


def test_sighup_activates_a_new_bundle_version_without_restart(running, captures, tmp_path) -> None:
    """The first version knows nothing of tls13-sni.pcap; the second plants its addresses. After
    SIGHUP the same traffic hits, the probe never restarted, and the store keeps both versions'
    history."""
    markers = tmp_path / "bundle.json"
    decoy = {"id": "decoy", "type": "ipv4", "value": "198.18.7.7"}
    markers.write_text(json.dumps({"id": "reload", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [decoy]}))
    probe = running(markers=markers)
    pid = probe.status()["probe"]["pid"]
    capture = _capture_named(captures, "tls13-sni.pcap")
    probe.send(capture)
    assert probe.status()["events"]["total"] == 0
    planted = [{"id": f"address-{position}", "type": "ipv4", "value": address} for position, address in enumerate(truth_of(capture)["inner_ipv4"])]
    markers.write_text(json.dumps({"id": "reload", "issuer": "test", "version": 2, "created": "2026-11-02T00:00:00Z", "markers": [decoy, *planted]}))
    probe.process.send_signal(signal.SIGHUP)
    _wait_for(lambda: probe.status()["bundles"][0]["version"] == 2, 30, "version 2 to be active")
    probe.send(capture)
    status = probe.status()
    assert status["probe"]["pid"] == pid
    assert status["events"]["by_marker_type"].get("ipv4", 0) > 0
    code, errors = probe.stop()
    assert code == 0, errors
    stored = _stored_events(probe.directory / "store")
    assert {(event["marker"]["bundle_version"], event["marker"]["id"]) for event in stored} <= {(2, marker["id"]) for marker in planted}
    assert len(stored) == status["events"]["total"]


def test_sigterm_is_bounded_and_a_second_one_exits_at_once(running, captures) -> None:
    """A worker that stops answering (SIGSTOP) cannot hold the stop beyond stop_timeout; the
    probe says what was lost and exits 0. A second SIGTERM during the stop exits at once."""
    probe = running(service="stop_timeout = 2.0")
    probe.send(_capture_named(captures, "dns-udp.pcap"))
    os.kill(probe.status()["workers"][0]["pid"], signal.SIGSTOP)
    started = time.monotonic()
    code, errors = probe.stop()
    assert code == 0, errors
    assert 2.0 <= time.monotonic() - started < 10.0
    assert "did not finish within stop_timeout" in errors

    second = running(service="stop_timeout = 30.0")
    os.kill(second.status()["workers"][0]["pid"], signal.SIGSTOP)
    second.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    second.process.send_signal(signal.SIGTERM)
    _, errors = second.process.communicate(timeout=10)
    assert time.monotonic() - started < 2.0
    assert second.process.returncode == 1 and "second SIGTERM: exiting at once" in errors


def test_systemd_notifications_and_metrics(running, captures, tmp_path) -> None:
    """READY, STATUS and WATCHDOG over a real NOTIFY_SOCKET, STOPPING at SIGTERM; the Prometheus
    endpoint on loopback serves the same figures as probe status."""
    import socket

    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    probe = running(service=f'metrics_address = "127.0.0.1:{port}"', environment={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []

    def listen() -> None:  # as systemd does: read every message as it comes
        while True:
            try:
                messages.extend(listener.recv(4096).decode().split("\n"))
            except OSError:
                return

    threading.Thread(target=listen, daemon=True).start()

    def received(wanted: str) -> bool:
        _wait_for(lambda: any(message.startswith(wanted) for message in messages), 30, wanted)
        return True

    assert received("READY=1") and received("STATUS=") and received("WATCHDOG=1")
    probe.send(_capture_named(captures, "dns-udp.pcap"))
    time.sleep(1.2)  # one snapshot interval
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
    metrics = subprocess.run(["ip", "netns", "exec", probe.namespace, sys.executable, "-c", fetch], capture_output=True, text=True, check=True).stdout
    status = probe.status()
    assert f'probe_worker_packets_total{{worker="0"}} {float(status["workers"][0]["packets"])}' in metrics
    assert 'probe_kernel_drops_total{interface="tap0"} 0.0' in metrics
    assert 'probe_bundle_active{id="planted",issuer="test",version="1"} 1.0' in metrics
    assert "probe_outbox_depth{" in metrics and "probe_store_bytes " in metrics
    code, errors = probe.stop()
    assert code == 0, errors
    assert received("STOPPING=1")
    listener.close()


def test_kernel_drops_are_counted_and_a_dead_sink_holds_nothing(running, captures) -> None:
    """The main process frozen (SIGSTOP) while traffic comes: the kernel's ring (1 MiB blocks, the
    smallest) overflows, and the drops are read, reported and warned of once it runs again. The
    only sink (the authority's webhook) is unreachable all along: events are stored, nothing waits
    on it, and the outbox holds its notifications."""
    probe = running(sinks='[[sinks]]\nname = "authority"\ntype = "webhook"\nauthority = true\nurl = "http://127.0.0.1:9/unreachable"\n', capture="buffer_bytes = 1048576")
    capture = _capture_named(captures, "http-bro-org-browsing.pcap")
    os.kill(probe.process.pid, signal.SIGSTOP)  # ip netns exec runs the probe in its own process (exec)
    try:
        subprocess.run(["ip", "netns", "exec", probe.sender, "tcpreplay", "-i", "send0", "--topspeed", "--loop", "8", str(capture)], capture_output=True, check=True)
    finally:
        os.kill(probe.process.pid, signal.SIGCONT)
    _wait_for(lambda: probe.status()["interfaces"]["tap0"]["dropped"] > 0, 30, "the kernel's drops to be reported")
    _wait_for(lambda: (lambda tap: tap["frames"] == tap["received"] - tap["dropped"])(probe.status()["interfaces"]["tap0"]), 30, "the ring to be read")
    assert probe.status()["interfaces"]["tap0"]["received"] == 8 * 751  # the kernel counts its drops among the frames received
    _wait_for(lambda: probe.status()["outbox"]["sinks"].get("authority", {}).get("failures", 0) > 0, 30, "the webhook's failures")
    status = probe.status()
    assert status["events"]["total"] > 0 and status["outbox"]["sinks"]["authority"]["pending"] > 0
    code, errors = probe.stop()
    assert code == 0, errors
    assert "frames dropped (kernel) since the last warning: the capture ring was full" in errors


def test_a_flood_of_new_flows_stays_within_the_flow_table(running, tmp_path) -> None:
    """20,000 one-packet flows against a table of 1,000: the table never holds more, the rest are
    evicted and counted, and the events of evicted flows are kept."""
    from scapy.all import IP, UDP, Ether, wrpcap

    flood = tmp_path / "flood.pcap"
    wrpcap(str(flood), [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", dst="198.18.7.7") / UDP(sport=40000, dport=53) for n in range(20000)])
    probe = running(flows="max_flows = 1000")
    probe.send(flood)
    worker = probe.status()["workers"][0]
    assert worker["flows_active"] <= 1000 and worker["flows_created"] == 20000 and worker["flows_evicted"] >= 19000
    code, errors = probe.stop()
    assert code == 0, errors
    decoy_events = [event for event in _stored_events(probe.directory / "store") if event["marker"]["id"] == "decoy-v4"]
    assert len(decoy_events) == 20000  # the bundle's decoy 198.18.7.7 is in every flow
