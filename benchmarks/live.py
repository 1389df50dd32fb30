"""Live capture: the highest replay rate `probe run` takes without losing a frame, and its CPU
time per packet, with 1 and 2 workers.

Run as root from the repository root:

    .venv/bin/python benchmarks/live.py            # 50 ... 800 Mbps then --topspeed, 2-6 minutes
    .venv/bin/python benchmarks/live.py --quick    # 100 and 400 Mbps then --topspeed, about 1 minute

What it does:

1. **Traffic.** A seeded pcap of mixed traffic built with scapy (about 35,000 frames): TCP
   sessions with handshakes, data segments of 100-1400 bytes and closes (HTTP requests and TLS
   ClientHellos with SNI), UDP DNS queries and answers, a fifth of the flows 802.1Q-tagged, some in
   GRE and some in VXLAN; a few flows carry the marker bundle's addresses and names. It is cached
   in the system's temporary directory (`probe-live-benchmark/`), since scapy takes a while.
2. **Link.** Two network namespaces joined by a veth pair (MTU 9000), as in tests/test_live.py:
   tcpreplay sends into `send0`, `probe run` captures on `tap0` with the default ring buffer.
3. **Points.** For each worker count, one `probe run`; then, rate after rate, tcpreplay sends the
   pcap `--loop`ed enough times for the point to last a few seconds (at least `--packets`
   frames): `--mbps R` from 50 to 800, then `--topspeed`. Raising stops at the first point with
   a loss. Per point: tcpreplay's Actual (frames sent) and Rated (achieved pps and Mbps) lines;
   from `probe status`, the change of the kernel's counters (frames received, dropped for want
   of ring space), of the frames dropped at a full worker queue (dispatch) and of each worker's
   packets; the CPU time (utime + stime from /proc/<pid>/stat) of the probe's main process and
   of its workers over the point, divided by the packets the workers processed; and the
   catch-up, the most CPU time one probe process spent after the sender stopped. Near zero, the
   probe kept pace; larger, its ring and queues (by default 64 MiB, and 32 MiB a worker) held a
   backlog that a longer burst at that rate would have overflowed.
4. **Summary.** Per worker count, the highest achieved rate with no loss (and, if lower, the
   highest the probe also kept pace with), with the CPU per packet at that point and the main
   process's share apart. The main process reads the ring and dispatches, so its figure with 2
   workers minus its figure with 1 worker (which skips the inner-address hash and the split) is
   what the dispatch costs per packet.

A loss is any frame sent and not processed: kernel drops, dispatch drops, or frames the kernel
never handed to the packet socket (sent minus received: the veth's backlog overflowing). On a
2-core machine tcpreplay runs on the same cores as the probe; its CPU share is printed beside
each point. This script prints figures; it asserts nothing about them. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scapy.all import DNS, DNSQR, DNSRR, GRE, IP, TCP, UDP, VXLAN, Dot1Q, Ether, Packet, PcapWriter, Raw
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName, TLS_Ext_SupportedGroups
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

from probe.errors import ProbeError
from probe.service.status import read_status

PROBE = str(Path(sys.executable).with_name("probe"))
GENERATOR_VERSION = 1
"""Part of the cached pcap's name: raise it whenever the traffic below changes."""
CACHE = Path(tempfile.gettempdir()) / "probe-live-benchmark"
MTU = 9000
SEND, TAP = "send0", "tap0"
FULL_RATES: list[int | None] = [50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800, None]
"""Mbps for tcpreplay --mbps; None is --topspeed."""
QUICK_RATES: list[int | None] = [100, 400, None]
MIN_SECONDS = 4.0
"""A --mbps point sends for at least this long (more loops at higher rates)."""
TOPSPEED_FACTOR = 4
"""--topspeed sends this many times --packets: it goes fast, and must still last a few seconds."""
IDLE_SECONDS = 3.0
STARTUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 120.0
STATUS_POLL = 0.5
KEPT_PACE_SECONDS = 0.1
"""A point the probe kept pace with: it caught up within this much CPU time of one process after
the sender stopped (0.01-0.05 s at low rates: the last block, idle ticks); beyond it, the ring
and the queues held a backlog, which a longer burst at that rate could have overflowed."""
SETTLED_FOR = 1.5
"""Seconds the status must stay unchanged (and consistent) after a send before a point is read:
more than the probe's snapshot interval (1 s) and its ring's block timeout (10 ms)."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
"""Unicast and foreign to both veth ends: the capture namespace's stack ignores the frames."""
TUNNEL_ENDPOINTS = ("192.0.2.1", "192.0.2.2")
RESOLVERS = ("9.9.9.9", "1.1.1.1")
VLANS = (100, 200, 300)
MARKED_IP = "203.0.113.66"
MARKED_NETWORK_HOST = "203.0.113.200"
MARKED_SNI_DOMAIN = "c2.malicious.example"
MARKED_DNS_NAME = "login-bank.phish.example"
BUNDLE = {
    "id": "live-benchmark",
    "issuer": "benchmark",
    "version": 1,
    "created": "2026-11-01T00:00:00Z",
    "tlp": "clear",
    "markers": [
        {"id": "bench-ip", "type": "ipv4", "value": MARKED_IP, "severity": "high"},
        {"id": "bench-cidr", "type": "cidr", "value": "203.0.113.128/25", "severity": "medium"},
        {"id": "bench-domain-c2", "type": "domain", "value": MARKED_SNI_DOMAIN, "match": "subdomains", "severity": "high"},
        {"id": "bench-domain-phish", "type": "domain", "value": MARKED_DNS_NAME, "match": "exact", "severity": "medium"},
        {"id": "bench-decoy-ipv6", "type": "ipv6", "value": "2001:db8::dead:beef", "severity": "low"},
        {"id": "bench-decoy-domain", "type": "domain", "value": "decoy.example.invalid", "severity": "low"},
    ],
}


# --- traffic ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    pcap: Path
    bundle: Path
    packets: int
    bytes: int


class TrafficBuilder:
    """The frames of a mirror port's flows, as (time, frame), merged in time order by `build`.

    Every flow gets its encapsulation once (plain, 802.1Q, GRE or VXLAN), as a mirrored session
    would; the few marked flows are drawn among the others, so they share their mix."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.frames: list[tuple[float, Packet]] = []
        self.names = [f"{self.rng.choice(('www', 'api', 'cdn', 'static', 'mail'))}.site{number}.example.com" for number in range(400)]

    def encapsulation(self) -> str:
        return self.rng.choices(("plain", "vlan", "gre", "vxlan"), weights=(70, 20, 5, 5))[0]

    def wrap(self, inner: Packet, encapsulation: str, vlan: int, vni: int) -> Packet:
        outer = Ether(src=CLIENT_MAC, dst=SERVER_MAC)
        if encapsulation == "vlan":
            return outer / Dot1Q(vlan=vlan) / inner
        if encapsulation == "gre":
            return outer / IP(src=TUNNEL_ENDPOINTS[0], dst=TUNNEL_ENDPOINTS[1]) / GRE() / inner
        if encapsulation == "vxlan":
            inner_ethernet = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
            return outer / IP(src=TUNNEL_ENDPOINTS[0], dst=TUNNEL_ENDPOINTS[1]) / UDP(sport=self.rng.randrange(49152, 65535), dport=4789) / VXLAN(vni=vni) / inner_ethernet / inner
        return outer / inner

    def subscriber(self) -> str:
        return f"10.20.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"

    def server(self) -> str:
        return f"198.18.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"

    def tcp_flow(self, start: float, server: str, dport: int, first_payload: bytes) -> None:
        """Handshake, the client's first segment, 2-14 answer segments of 100-1400 bytes (the
        client acknowledging every other one), and both FINs."""
        rng = self.rng
        client, sport = self.subscriber(), rng.randrange(1024, 65535)
        encapsulation, vlan, vni = self.encapsulation(), rng.choice(VLANS), rng.randrange(1, 1 << 24)
        client_seq, server_seq = rng.randrange(1 << 32), rng.randrange(1 << 32)
        now = start
        segments: list[tuple[bool, str, bytes]] = [(True, "S", b""), (False, "SA", b""), (True, "A", b""), (True, "PA", first_payload)]
        answers = rng.randrange(2, 15)
        for number in range(answers):
            payload = rng.randbytes(rng.randrange(100, 1401))
            if number == 0 and dport == 80:
                payload = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + payload[60:]
            segments.append((False, "PA" if number == answers - 1 else "A", payload))
            if number % 2:
                segments.append((True, "A", b""))
        segments += [(True, "FA", b""), (False, "FA", b""), (True, "A", b"")]
        for to_server, flags, payload in segments:
            now += rng.uniform(0.0002, 0.02)
            if to_server:
                segment = IP(src=client, dst=server) / TCP(sport=sport, dport=dport, flags=flags, seq=client_seq, ack=server_seq if flags != "S" else 0)
            else:
                segment = IP(src=server, dst=client) / TCP(sport=dport, dport=sport, flags=flags, seq=server_seq, ack=client_seq)
            if payload:
                segment = segment / Raw(payload)
            advance = len(payload) + (1 if "S" in flags or "F" in flags else 0)
            if to_server:
                client_seq = (client_seq + advance) % (1 << 32)
            else:
                server_seq = (server_seq + advance) % (1 << 32)
            self.frames.append((now, self.wrap(segment, encapsulation, vlan, vni)))

    def http_request(self, name: str) -> bytes:
        path = "/" + "/".join(self.rng.choice(("img", "js", "api", "v1", "assets", "index")) for _ in range(self.rng.randrange(1, 4)))
        request = f"GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n"
        padding = max(0, self.rng.randrange(100, 600) - len(request) - 20)
        return (request + f"Cookie: id={'x' * padding}\r\n\r\n").encode()

    def client_hello(self, name: str) -> bytes:
        hello = TLSClientHello(gmt_unix_time=self.rng.randrange(1 << 32), random_bytes=self.rng.randbytes(28), sid=self.rng.randbytes(32), ciphers=[0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030], ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=name.encode())]), TLS_Ext_SupportedGroups(groups=[0x001D, 0x0017, 0x0018])])
        return bytes(TLS(msg=[hello]))

    def dns_exchange(self, start: float, name: str) -> None:
        rng = self.rng
        client, resolver, sport, identifier = self.subscriber(), rng.choice(RESOLVERS), rng.randrange(1024, 65535), rng.randrange(1 << 16)
        encapsulation, vlan, vni = self.encapsulation(), rng.choice(VLANS), rng.randrange(1, 1 << 24)
        query = IP(src=client, dst=resolver) / UDP(sport=sport, dport=53) / DNS(id=identifier, rd=1, qd=DNSQR(qname=name))
        answer = IP(src=resolver, dst=client) / UDP(sport=53, dport=sport) / DNS(id=identifier, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, ttl=300, rdata=self.server()))
        self.frames.append((start, self.wrap(query, encapsulation, vlan, vni)))
        self.frames.append((start + rng.uniform(0.001, 0.03), self.wrap(answer, encapsulation, vlan, vni)))

    def build(self, tcp_flows: int, dns_exchanges: int, span: float) -> list[tuple[float, Packet]]:
        """A third of the TCP flows are TLS, the others HTTP. 2 % of TCP flows are marked: by
        their server's address (a marked one or one in the marked network), or by a name under
        the marked domain (SNI or Host); 1 % of DNS exchanges ask for a marked name."""
        rng = self.rng
        for _ in range(tcp_flows):
            server, name = self.server(), rng.choice(self.names)
            if rng.random() < 0.02:
                if rng.random() < 0.6:
                    server = rng.choice((MARKED_IP, MARKED_NETWORK_HOST))
                else:
                    name = f"beacon{rng.randrange(100)}.{MARKED_SNI_DOMAIN}"
            if rng.random() < 1 / 3:
                self.tcp_flow(rng.uniform(0, span), server, 443, self.client_hello(name))
            else:
                self.tcp_flow(rng.uniform(0, span), server, 80, self.http_request(name))
        for _ in range(dns_exchanges):
            marked = rng.random() < 0.01
            self.dns_exchange(rng.uniform(0, span), rng.choice((MARKED_DNS_NAME, f"update.{MARKED_SNI_DOMAIN}")) if marked else rng.choice(self.names))
        return sorted(self.frames, key=lambda pair: pair[0])


def prepare_traffic(seed: int) -> Traffic:
    """The cached pcap and bundle for this seed, generated first if missing."""
    CACHE.mkdir(mode=0o700, exist_ok=True)
    stem = CACHE / f"traffic-v{GENERATOR_VERSION}-seed{seed}"
    pcap, bundle, figures = stem.with_suffix(".pcap"), stem.with_suffix(".bundle.json"), stem.with_suffix(".json")
    if not (pcap.exists() and figures.exists()):
        print(f"generating {pcap} with scapy (once; about half a minute)", flush=True)
        started = time.monotonic()
        frames = TrafficBuilder(seed).build(tcp_flows=1_600, dns_exchanges=2_500, span=10.0)
        partial = pcap.with_suffix(".partial")
        writer = PcapWriter(str(partial), linktype=1, sync=False)
        total_bytes = 0
        base = 1_763_900_000.0  # any: tcpreplay paces by --mbps, and the probe stamps frames itself
        for moment, frame in frames:
            frame.time = base + moment
            total_bytes += len(frame)
            writer.write(frame)
        writer.close()
        partial.rename(pcap)
        figures.write_text(json.dumps({"packets": len(frames), "bytes": total_bytes}))
        print(f"  {len(frames):,} frames, {total_bytes:,} bytes, in {time.monotonic() - started:.0f} s", flush=True)
    bundle.write_text(json.dumps(BUNDLE, indent=1))
    counts = json.loads(figures.read_text())
    return Traffic(pcap, bundle, counts["packets"], counts["bytes"])


# --- the link and the probe ---------------------------------------------------------------------


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


class Link:
    """Two network namespaces and a veth pair between them; `close` deletes both namespaces (and
    so the pair)."""

    def __init__(self) -> None:
        self.sender, self.capture = f"probe-bench-send-{os.getpid()}", f"probe-bench-tap-{os.getpid()}"
        self.created: list[str] = []
        try:
            for namespace in (self.sender, self.capture):
                run("ip", "netns", "add", namespace)
                self.created.append(namespace)
                # Nothing of the namespaces' own stacks on the wire: no IPv6 router solicitations or DAD.
                run("ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            run("ip", "link", "add", SEND, "netns", self.sender, "mtu", str(MTU), "type", "veth", "peer", "name", TAP, "netns", self.capture, "mtu", str(MTU))
            run("ip", "-n", self.sender, "link", "set", SEND, "up")
            run("ip", "-n", self.capture, "link", "set", TAP, "up")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for namespace in self.created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.created = []


def write_config(directory: Path, bundle: Path, workers: int) -> Path:
    """What `probe run` needs and no more: the declaration, the capture on tap0 with the default
    ring, a store and a file sink for the authority, the unsigned benchmark bundle."""
    (directory / "store").mkdir(mode=0o700)
    config = directory / "probe.toml"
    config.write_text(f"""
[probe]
name = "live-benchmark"
[declaration]
reference = "BENCHMARK-DECLARATION-1"
declared_by = "Benchmark"
declared_on = "2026-11-01"
interfaces = ["{TAP}"]
[capture]
interfaces = ["{TAP}"]
[service]
workers = {workers}
metrics_address = ""
control_socket = "{directory}/control.sock"
[store]
directory = "{directory}/store"
[[sinks]]
name = "authority"
type = "file"
authority = true
path = "{directory}/notifications.jsonl"
[markers]
files = ["{bundle}"]
require_signature = false
""")
    return config


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5), counted after the ")"


class LiveProbe:
    """`probe run` in the capture namespace, in a session of its own so that a Ctrl-C reaches
    only this script, which then stops the probe itself."""

    def __init__(self, link: Link, directory: Path, bundle: Path, workers: int) -> None:
        directory.mkdir()
        self.socket = str(directory / "control.sock")
        self.log = directory / "probe.log"
        config = write_config(directory, bundle, workers)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(["ip", "netns", "exec", link.capture, PROBE, "run", "--config", str(config)], stdout=log, stderr=log, start_new_session=True)
        try:
            status = self._wait_started()
        except BaseException:  # Ctrl-C during the start too: the probe is not left running
            self.stop()
            raise
        self.pid = status["probe"]["pid"]
        self.worker_pids = [worker["pid"] for worker in status["workers"]]

    def _wait_started(self) -> dict:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (status := self.try_status()) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"probe run did not start: {self.log_tail()}")
            time.sleep(0.2)
        return status

    def try_status(self) -> dict | None:
        try:
            return read_status(self.socket)
        except ProbeError:
            return None

    def status(self) -> dict:
        status = self.try_status()
        if status is None:
            raise RuntimeError(f"probe run stopped answering: {self.log_tail()}")
        return status

    def cpu(self) -> list[float]:
        """CPU seconds so far: the main process's, then each worker's."""
        return [cpu_seconds(pid) for pid in (self.pid, *self.worker_pids)]

    def helpers_cpu(self) -> float:
        """CPU seconds of the main process's other children (the outbox's delivery process,
        multiprocessing's resource tracker): not counted in the figures per packet."""
        children = {int(pid) for task in Path(f"/proc/{self.pid}/task").iterdir() for pid in (task / "children").read_text().split()}
        return sum(cpu_seconds(pid) for pid in children - set(self.worker_pids))

    def log_tail(self) -> str:
        return " | ".join(self.log.read_text().strip().splitlines()[-5:])

    def stop(self) -> int:
        """SIGTERM, as systemd would; killed if it has not exited within a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# --- one rate point -----------------------------------------------------------------------------


@dataclass
class Counters:
    """The figures of `probe status` a point compares before and after."""

    received: int
    kernel_dropped: int
    frames: int
    worker_packets: list[int]
    dispatch_dropped: int

    @classmethod
    def of(cls, status: dict) -> Counters:
        interface = status["interfaces"][TAP]
        workers = status["workers"]
        return cls(interface["received"], interface["dropped"], interface["frames"], [worker.get("packets", 0) for worker in workers], sum(worker["dispatch_dropped_frames"] for worker in workers))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.received - other.received, self.kernel_dropped - other.kernel_dropped, self.frames - other.frames, [a - b for a, b in zip(self.worker_packets, other.worker_packets)], self.dispatch_dropped - other.dispatch_dropped)

    def settled(self) -> bool:
        """Every frame the kernel kept was read, and every frame read was processed or dropped
        at dispatch (the kernel's `received` includes its drops)."""
        return self.frames == self.received - self.kernel_dropped and sum(self.worker_packets) + self.dispatch_dropped == self.frames


@dataclass
class Sent:
    """tcpreplay's own report."""

    packets: int
    failed: int
    seconds: float
    mbps: float
    pps: float
    cpu: float

    ACTUAL = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([0-9.]+) seconds")
    RATED = re.compile(r"Rated: [0-9.]+ Bps, ([0-9.]+) Mbps, ([0-9.]+) pps")
    FAILED = re.compile(r"Failed packets:\s+(\d+)")

    @classmethod
    def parse(cls, output: str, cpu: float) -> Sent:
        actual, rated, failed = cls.ACTUAL.search(output), cls.RATED.search(output), cls.FAILED.search(output)
        if not (actual and rated and failed):
            raise RuntimeError(f"tcpreplay's report not understood: {output}")
        return cls(int(actual[1]), int(failed[1]), float(actual[3]), float(rated[1]), float(rated[2]), cpu)


@dataclass
class Point:
    workers: int
    rate: int | None
    sent: Sent
    seen: Counters
    cpu_main: float
    cpu_workers: float
    catch_up: float
    """The most CPU seconds one probe process spent after the sender stopped: about how long the
    probe took to work through what the ring and the queues held then."""

    @property
    def label(self) -> str:
        return "topspeed" if self.rate is None else f"{self.rate} Mbps"

    @property
    def processed(self) -> int:
        return sum(self.seen.worker_packets)

    @property
    def unseen(self) -> int:
        """Frames sent that the packet socket never saw (dropped in the veth's backlog)."""
        return self.sent.packets - self.seen.received

    @property
    def lossless(self) -> bool:
        return self.seen.kernel_dropped == 0 and self.seen.dispatch_dropped == 0 and self.unseen == 0 and self.sent.failed == 0

    def per_packet_us(self, seconds: float) -> float:
        return seconds / self.processed * 1e6 if self.processed else math.nan


def send(link: Link, traffic: Traffic, rate: int | None, loops: int) -> Sent:
    """tcpreplay from the sender namespace, the pcap preloaded in memory (-K) so that disk reads
    set no pace. `--timer=nano` sleeps between frames where the default timer (gtod) spins: the
    same achieved rates here, for a quarter to three quarters of a core instead of a whole one,
    which the probe shares. Its CPU time comes from this process's waited-for children; it
    includes the kernel's delivery of the frames (veth, packet socket, copy into the probe's
    ring), done in the sender's context."""
    pace = ["--topspeed"] if rate is None else ["--mbps", str(rate), "--timer=nano"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(["ip", "netns", "exec", link.sender, "tcpreplay", "-i", SEND, "-K", "--loop", str(loops), *pace, str(traffic.pcap)], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"tcpreplay failed: {result.stderr.strip() or result.stdout.strip()}")
    return Sent.parse(result.stdout, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def loops_for(traffic: Traffic, rate: int | None, packets: int) -> int:
    """Enough loops for `packets` frames and, at a set rate, MIN_SECONDS of sending."""
    if rate is None:
        return math.ceil(TOPSPEED_FACTOR * packets / traffic.packets)
    return max(math.ceil(packets / traffic.packets), math.ceil(MIN_SECONDS * rate * 1e6 / (8 * traffic.bytes)))


def settled_status(probe: LiveProbe, before: Counters) -> Counters:
    """The counters once the probe has caught up with what was sent: consistent and unchanged
    for SETTLED_FOR seconds."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = Counters.of(probe.status()) - before
        if now != last:
            last, since = now, time.monotonic()
        elif now.settled() and time.monotonic() - since >= SETTLED_FOR:
            return now
        time.sleep(STATUS_POLL)
    raise RuntimeError(f"the probe did not catch up within {DRAIN_TIMEOUT:.0f} s: {last}")


def measure(probe: LiveProbe, link: Link, traffic: Traffic, workers: int, rate: int | None, packets: int) -> Point:
    before = Counters.of(probe.status())
    cpu_before = probe.cpu()
    sent = send(link, traffic, rate, loops_for(traffic, rate, packets))
    cpu_sent = probe.cpu()
    seen = settled_status(probe, before)
    cpu_after = probe.cpu()
    used = [after - start for after, start in zip(cpu_after, cpu_before)]
    catch_up = max(after - at_end for after, at_end in zip(cpu_after, cpu_sent))
    return Point(workers, rate, sent, seen, used[0], sum(used[1:]), catch_up)


# --- a worker count, the report -----------------------------------------------------------------


@dataclass
class Series:
    workers: int
    points: list[Point]
    idle_cpu_per_second: float
    helpers_cpu: float
    events: dict
    exit_code: int

    def best(self) -> Point | None:
        """The highest point with no loss (points rise until the first loss)."""
        lossless = [point for point in self.points if point.lossless]
        return lossless[-1] if lossless else None

    def best_kept_pace(self) -> Point | None:
        """The highest point below the first with a loss or a backlog at the sender's end: near
        saturation the backlog comes and goes from one point to the next, so a later point that
        happened to end without one does not count."""
        kept = None
        for point in self.points:
            if not point.lossless or point.catch_up > KEPT_PACE_SECONDS:
                break
            kept = point
        return kept


def run_series(link: Link, traffic: Traffic, directory: Path, workers: int, rates: list[int | None], packets: int) -> Series:
    probe = LiveProbe(link, directory / f"workers-{workers}", traffic.bundle, workers)
    try:
        before = sum(probe.cpu())
        time.sleep(IDLE_SECONDS)
        idle = (sum(probe.cpu()) - before) / IDLE_SECONDS
        points = []
        for rate in rates:
            point = measure(probe, link, traffic, workers, rate, packets)
            points.append(point)
            print_row(point, flush=True)
            if not point.lossless:
                break
        helpers, events = probe.helpers_cpu(), probe.status()["events"]
    finally:
        code = probe.stop()
    if code != 0:
        print(f"  probe run exited with {code}: {probe.log_tail()}")
    return Series(workers, points, idle, helpers, events, code)


HEADER = (
    "| workers | rate | sent (Actual) | achieved pps | achieved Mbps | kernel received | kernel dropped | unseen | dispatch dropped | worker packets | CPU µs/packet | main µs/packet | catch-up s | tcpreplay CPU |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def print_row(point: Point, flush: bool = False) -> None:
    seen, sent = point.seen, point.sent
    workers = " + ".join(f"{count:,}" for count in seen.worker_packets)
    sender_share = sent.cpu / sent.seconds * 100 if sent.seconds else math.nan
    print(
        f"| {point.workers} | {point.label} | {sent.packets:,} | {sent.pps:,.0f} | {sent.mbps:,.1f} | {seen.received:,} | {seen.kernel_dropped:,} | {point.unseen:,} | {seen.dispatch_dropped:,} | {workers} "
        f"| {point.per_packet_us(point.cpu_main + point.cpu_workers):.2f} | {point.per_packet_us(point.cpu_main):.2f} | {point.catch_up:.2f} | {sender_share:.0f} % |",
        flush=flush,
    )


def summary_lines(series: Series) -> list[str]:
    """The highest zero-drop rate, and the highest the probe also kept pace with."""
    best, kept = series.best(), series.best_kept_pace()
    if best is None:
        return [f"workers={series.workers}: no rate tried was free of loss (lowest: {series.points[0].label})"]
    lines = [
        f"workers={series.workers}: highest zero-drop rate {best.sent.mbps:,.1f} Mbps ({best.sent.pps:,.0f} pps), "
        f"CPU {best.per_packet_us(best.cpu_main + best.cpu_workers):.2f} µs/packet (main process {best.per_packet_us(best.cpu_main):.2f} µs/packet); "
        f"point: {best.label}, caught up {best.catch_up:.2f} s of CPU after the sender stopped"
    ]
    if kept is not best:
        pace = "none" if kept is None else f"{kept.sent.mbps:,.1f} Mbps ({kept.sent.pps:,.0f} pps)"
        lines.append(f"workers={series.workers}: highest rate kept pace with (every point up to it caught up within {KEPT_PACE_SECONDS} s of CPU): {pace}")
    return lines


def dispatch_cost_line(one: Series, two: Series) -> str:
    """Main process µs/packet with 2 workers minus with 1, at the set rates both took without
    loss (not --topspeed, whose rate differs from one run to the other)."""
    singles = {point.rate: point for point in one.points if point.lossless and point.rate is not None}
    differences = [(point.label, point.per_packet_us(point.cpu_main) - singles[point.rate].per_packet_us(singles[point.rate].cpu_main)) for point in two.points if point.lossless and point.rate in singles]
    if not differences:
        return "inner-address dispatch: no rate where both worker counts were free of loss"
    listed = ", ".join(f"{label} {difference:+.2f}" for label, difference in differences)
    return f"inner-address dispatch (main process, 2 workers minus 1 worker): {statistics.median(difference for _, difference in differences):+.2f} µs/packet median ({listed})"


def machine_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    version = subprocess.run(["tcpreplay", "--version"], capture_output=True, text=True)
    tcpreplay = (version.stdout + version.stderr).split("\n", 1)[0]
    return f"machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}, {tcpreplay}, load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"


def check_requirements() -> None:
    if os.geteuid() != 0:
        sys.exit("live.py: needs root (network namespaces, packet sockets)")
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            sys.exit(f"live.py: {tool} not installed (.ci/setup installs iproute2 and tcpreplay)")
    if not Path(PROBE).exists():
        sys.exit(f"live.py: no probe executable at {PROBE}: run with the venv's python")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 400 Mbps then --topspeed, 100,000 frames a point")
    parser.add_argument("--packets", type=int, help="frames per --mbps point at least (default 200,000; --quick 100,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    check_requirements()
    rates = QUICK_RATES if arguments.quick else FULL_RATES
    packets = arguments.packets or (100_000 if arguments.quick else 200_000)

    # SIGTERM unwinds like Ctrl-C, so that the probe is stopped and the namespaces deleted.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    traffic = prepare_traffic(arguments.seed)
    print(machine_line())
    print(f"traffic: {traffic.pcap} ({traffic.packets:,} frames, {traffic.bytes:,} bytes, {traffic.bytes / traffic.packets:.0f} bytes a frame on average), looped; at least {packets:,} frames a point")
    print("tcpreplay runs on the same cores as the probe: its CPU share is the last column")
    started = time.monotonic()
    link = None
    directory = Path(tempfile.mkdtemp(prefix="probe-live-benchmark-"))
    series: list[Series] = []
    try:
        link = Link()
        print(HEADER, flush=True)
        for workers in arguments.workers:
            series.append(run_series(link, traffic, directory, workers, rates, packets))
    finally:
        if link is not None:
            link.close()
        shutil.rmtree(directory, ignore_errors=True)
    print()
    for one in series:
        print(f"workers={one.workers}: idle {one.idle_cpu_per_second * 1000:.1f} ms CPU/s (main + workers); delivery process and resource tracker {one.helpers_cpu:.2f} s over the run (not in the figures); events {one.events['total']} {one.events['by_marker_type']}")
    for one in series:
        print("\n".join(summary_lines(one)))
    by_workers = {one.workers: one for one in series}
    if 1 in by_workers and 2 in by_workers:
        print(dispatch_cost_line(by_workers[1], by_workers[2]))
    print(f"elapsed {time.monotonic() - started:.0f} s")
    return 0 if all(one.exit_code == 0 for one in series) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("live.py: interrupted (the probe was stopped and the namespaces deleted)")
