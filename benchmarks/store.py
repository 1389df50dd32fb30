"""Ring store benchmark: append rate with fsync batching, queries over six months of events, disk bytes per event.

Run from the repository root:

    .venv/bin/python benchmarks/store.py [--events N | --quick] [--directory DIR] [--keep]
                                         [--seed S] [--baseline-events N] [--profile]

It generates, seeded and streaming (never all in memory), `--events` detections (default
10,000,000) spread over six months of capture time, 2026-05-01 to 2026-10-31, the way a live probe
would hand them to the store: each event twice, revision 0 at its first hit and revision 1 with the
final counters when its flow ends, in roughly capture-time order. Subscribers are three IPv4 /16s
and some IPv6 addresses, 1 % of them infected and making 60 % of the events; 300 markers (ipv4,
domain, tls_sni) in three bundles with a skewed popularity; a third of the IPv4 subscribers behind
802.1Q tags. Then, in one run:

1. append: every revision through `RingStore.append`, `flush_if_due` every 256 records and a final
   `flush` + `close`, default [store] settings (flush_interval 1 s, hourly segments); generation is
   timed apart. Every fsync is timed (os.fsync is wrapped for the run).
2. baseline: the first `--baseline-events` events' revisions written as the probe's eve.json would
   (`event_record` + json.dumps, JSON Lines) and as msgpack of the same dicts, each to one file with
   the store's fsync cadence (every 1 s or 65,536 records); the ratios compare them with the store
   over the same records.
3. disk: bytes of the segments and of their indexes, per record and per event.
4. queries: the store reopened read-only (`writable=False`, as `probe store query` opens it); the
   open, one day in the middle, one typical subscriber address, the busiest (infected) subscriber,
   the typical subscriber's /24, one marker of median popularity. Each runs once cold (the store's
   files evicted from the page cache with posix_fadvise) and up to three times warm (median). Each
   answer is checked against the generator's own count.
5. `--profile`: cProfile of appending the first chunks into a fresh store, and of each query once.

`--quick` keeps the six months, so its hourly segments hold a twentieth of the records of the full
run: its append rate and bytes per event carry per-segment costs (files, fsyncs, indexes, marker
declarations) that the full run spreads over twenty times more records. Quote the full run.

The exit code is 1 when a query answer differs from the generator's count, else 0; the issue's
goals are printed as information.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import ipaddress
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(ROOT))

from replay_throughput import cpu_model  # noqa: E402

from probe.clock import NANOSECONDS, Clock, parse_instant  # noqa: E402
from probe.config import ProbeSection, StoreSection  # noqa: E402
from probe.decode.packet import IPV4_MAPPED_PREFIX, address_text  # noqa: E402
from probe.match.markers import Marker  # noqa: E402
from probe.record.events import Event, event_record  # noqa: E402
from probe.store.framing import write_all  # noqa: E402
from probe.store.query import EventFilter, latest_events  # noqa: E402
from probe.store.ring import MAX_PENDING, RingStore  # noqa: E402

CAPTURE_START = parse_instant("2026-05-01T00:00:00Z")
CAPTURE_DAYS = 183
"""2026-05-01 to 2026-10-31: the oldest event is still inside its six months when the clock is read."""
CAPTURE_END = CAPTURE_START + CAPTURE_DAYS * 86400 * NANOSECONDS
LONGEST_FLOW_US = 6 * 3600 * 1_000_000
CLOCK = CAPTURE_END + 7 * 3600 * NANOSECONDS
"""Just after the last revision (a six-hour flow ending after the last first hit): nothing has expired."""
QUERY_DAY = CAPTURE_START + (CAPTURE_DAYS // 2) * 86400 * NANOSECONDS

DEFAULT_EVENTS = 10_000_000
QUICK_EVENTS = 500_000
CHUNK_EVENTS = 100_000
"""Events generated, then appended, at a time: bounds memory, and lets generation be timed apart."""
FLUSH_CHECK_EVERY = 256
"""Records between two `flush_if_due` calls (the pipeline calls it once per packet batch)."""
SLOW_QUERY_SECONDS = 20.0
"""A query slower than this is not repeated: it is bound by decoding, not by the disk, so a warm
run would say the same, and at 10M events each run of such a query takes minutes."""
WARM_RUNS = 3
PROFILE_EVENTS = 200_000
PROFILE_LINES = 14

V4_SUBSCRIBER_NETWORKS = ("100.64.0.0/16", "100.65.0.0/16", "100.66.0.0/16")
VLAN_TAGGED_NETWORK = 2
"""Subscribers of the third /16 reach the tap behind 802.1Q tags (one VLAN per /19)."""
V6_SUBSCRIBERS = 24_000
INFECTED_SHARE = 0.01
INFECTED_EVENTS = 0.6
"""Share of the events made by the infected subscribers (beaconing malware)."""
FAMILY_EVENTS = 0.8
"""Share of an infected subscriber's events that hit its own malware family's marker."""
V4_PEERS = 40_000
V6_PEERS = 6_000
RESOLVERS_V4 = ("100.127.255.1", "100.127.255.2")
RESOLVERS_V6 = ("2a01:db8:53::1", "2a01:db8:53::2")
MARKER_COUNTS = (("ipv4", 120), ("domain", 120), ("tls_sni", 60))
C2_MARKERS = 20
"""The first markers of the ipv4 and of the domain type are the infected hosts' command servers."""
BUNDLES = (("cert-c2", 14, "cert.example"), ("isp-phishing", 7, "isp.example"), ("partner-intel", 3, "partner.example"))
TLDS = ("com", "net", "org", "ru", "xyz", "top", "info", "io", "cn", "online")

ROUTE_IP_DST, ROUTE_IP_SRC, ROUTE_DNS, ROUTE_SNI = range(4)
MATCHED_ON = ("ip.dst", "ip.src", "dns.query", "tls.sni")
ROUTE_PORTS = ((443, 80, 8443, 4444, 8080), (22, 23, 445, 3389, 5900), (53,), (443,))
"""Server ports: outbound to an ipv4 marker; inbound from a scanner; DNS; TLS."""
PROTO_TCP, PROTO_UDP = 6, 17
UDP_TIMEOUT_US = 60 * 1_000_000
TCP_TIMEOUT_US = 300 * 1_000_000
IDLE_TCP_SHARE = 0.3
"""TCP flows that end by idle timeout (written 300 s after their last packet), not FIN/RST."""

GOAL_EVENTS_PER_SECOND = 100_000
GOAL_QUERY_SECONDS = 1.0
GOAL_BYTES_PER_EVENT = 120


# --- the events --------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """What the generator made, counted as it made it, to check every query's answer."""

    subscribers: np.ndarray
    """Events per subscriber (either side of the event)."""
    networks: np.ndarray
    """Events per IPv4 subscriber /24."""
    markers: np.ndarray
    day: int = 0
    """Events whose span [first seen, final last seen] meets QUERY_DAY."""
    events: int = 0
    records: int = 0


class EventGenerator:
    """Seeded and streaming: `chunks()` yields lists of event revisions in the order a live probe
    appends them. Everything random is drawn with numpy a chunk at a time and every object an event
    refers to (addresses, markers, encapsulations) is built once, so that a Python loop only
    assembles tuples: about 2 µs an event instead of the tens a per-event random module would cost."""

    def __init__(self, events: int, seed: int) -> None:
        self.events = events
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.subscribers: list[bytes] = []
        self.encapsulations: list[list[dict]] = []
        vlans = {vlan: [{"type": "vlan", "id": vlan}] for vlan in range(200, 208)}
        for number, text in enumerate(V4_SUBSCRIBER_NETWORKS):
            base = int(ipaddress.IPv4Network(text).network_address)
            for host in range(65536):
                self.subscribers.append(IPV4_MAPPED_PREFIX + (base + host).to_bytes(4, "big"))
                self.encapsulations.append(vlans[200 + host // 8192] if number == VLAN_TAGGED_NETWORK else [])
        self.v4_subscribers = len(self.subscribers)
        raw = rng.integers(0, 256, (V6_SUBSCRIBERS, 12), dtype=np.uint8).tobytes()
        self.subscribers += [b"\x20\x01\x0d\xb8" + raw[row * 12 : row * 12 + 12] for row in range(V6_SUBSCRIBERS)]
        self.encapsulations += [[] for _ in range(V6_SUBSCRIBERS)]
        self.peers_v4 = [IPV4_MAPPED_PREFIX + value.to_bytes(4, "big") for value in rng.integers(int(ipaddress.IPv4Address("20.0.0.0")), int(ipaddress.IPv4Address("99.255.255.255")), V4_PEERS).tolist()]
        raw = rng.integers(0, 256, (V6_PEERS, 15), dtype=np.uint8).tobytes()
        self.peers_v6 = [b"\x2a" + raw[row * 15 : row * 15 + 15] for row in range(V6_PEERS)]
        self.resolvers_v4 = [IPV4_MAPPED_PREFIX + ipaddress.IPv4Address(text).packed for text in RESOLVERS_V4]
        self.resolvers_v6 = [ipaddress.IPv6Address(text).packed for text in RESOLVERS_V6]
        self._make_markers()
        count = len(self.subscribers)
        self.infected = rng.choice(count, int(count * INFECTED_SHARE), replace=False)
        ipv4_c2 = np.arange(C2_MARKERS)
        domain_c2 = np.arange(self.ipv4_markers, self.ipv4_markers + C2_MARKERS)
        self.family = np.where(self.infected < self.v4_subscribers, rng.choice(np.concatenate((ipv4_c2, domain_c2)), len(self.infected)), rng.choice(domain_c2, len(self.infected)))
        self.truth = GroundTruth(np.zeros(count, np.int64), np.zeros(self.v4_subscribers // 256, np.int64), np.zeros(len(self.markers), np.int64))
        self._sequence = 0

    def _make_markers(self) -> None:
        rng = self.rng
        self.markers: list[Marker] = []
        self.marker_addresses: list[bytes | None] = []
        severities = ("high", "critical", "medium", "low")
        for kind, count in MARKER_COUNTS:
            labels = ["".join(chr(97 + letter) for letter in rng.integers(0, 26, int(length)).tolist()) for length in rng.integers(6, 14, count).tolist()]
            for number in range(count):
                bundle, version, issuer = BUNDLES[len(self.markers) % len(BUNDLES)]
                address = None
                if kind == "ipv4":
                    address = IPV4_MAPPED_PREFIX + int(rng.integers(int(ipaddress.IPv4Address("185.0.0.0")), int(ipaddress.IPv4Address("195.255.255.255")))).to_bytes(4, "big")
                    value = address_text(address)
                elif kind == "domain":
                    value = f"{labels[number]}.{TLDS[number % len(TLDS)]}"
                else:
                    value = f"api.{labels[number]}.{TLDS[number % len(TLDS)]}"
                marker_id = f"{kind}-{number:04d}"
                self.markers.append(Marker(marker_id, kind, value, bundle, version, severity=severities[number % 4], tlp="amber" if bundle == "cert-c2" else "green", issuer=issuer))
                self.marker_addresses.append(address)
        self.ipv4_markers = MARKER_COUNTS[0][1]
        self.marker_kinds = np.array([("ipv4", "domain", "tls_sni").index(marker.type) for marker in self.markers])
        ranks = rng.permutation(len(self.markers)) + 1
        weights = 1.0 / ranks**1.1
        self.popularity = weights / weights.sum()
        beyond_ipv4 = weights[self.ipv4_markers :]
        self.popularity_v6 = beyond_ipv4 / beyond_ipv4.sum()

    def chunks(self) -> Iterator[list[Event]]:
        """Lists of revisions: each event's revision 0 at its first hit, its revision 1 when its
        flow ends (at its last packet, or its idle timeout later); the last list drains the
        revisions still waiting."""
        pending: list[tuple[int, int, Event]] = []
        chunk_count = max(1, -(-self.events // CHUNK_EVENTS))
        span_us = (CAPTURE_END - CAPTURE_START) // 1000
        made = 0
        for number in range(chunk_count):
            size = min(CHUNK_EVENTS, self.events - made)
            low = CAPTURE_START // 1000 + span_us * number // chunk_count
            high = CAPTURE_START // 1000 + span_us * (number + 1) // chunk_count
            yield self._chunk(size, low, high, pending)
            made += size
        drained = [heapq.heappop(pending)[2] for _ in range(len(pending))]
        self.truth.records += len(drained)
        yield drained

    def _chunk(self, size: int, low_us: int, high_us: int, pending: list[tuple[int, int, Event]]) -> list[Event]:
        rng = self.rng
        first_us = np.sort(rng.integers(low_us, high_us, size))
        infected_draw = rng.random(size) < INFECTED_EVENTS
        infected_position = rng.integers(0, len(self.infected), size)
        who = np.where(infected_draw, self.infected[infected_position], rng.integers(0, len(self.subscribers), size))
        marker = np.where(infected_draw & (rng.random(size) < FAMILY_EVENTS), self.family[infected_position], rng.choice(len(self.markers), size, p=self.popularity))
        v6 = who >= self.v4_subscribers
        wrong = v6 & (marker < self.ipv4_markers)
        marker[wrong] = self.ipv4_markers + rng.choice(len(self.popularity_v6), int(wrong.sum()), p=self.popularity_v6)
        kind = self.marker_kinds[marker]
        roll = rng.random(size)
        route = np.where(kind == 0, np.where(roll < 0.1, ROUTE_IP_SRC, ROUTE_IP_DST), np.where((kind == 1) & (roll < 0.65), ROUTE_DNS, ROUTE_SNI))
        dns, scan, sni = route == ROUTE_DNS, route == ROUTE_IP_SRC, route == ROUTE_SNI
        tcp_duration = np.clip(rng.lognormal(np.log(20e6), 1.8, size), 50_000, LONGEST_FLOW_US).astype(np.int64)
        duration = np.where(dns, rng.integers(2_000, 200_000, size), np.where(scan, rng.integers(100, 3_000_000, size), tcp_duration))
        hit_offset = np.where(sni, rng.integers(5_000, 150_000, size), 0)
        duration = np.maximum(duration, hit_offset)
        last_us = first_us + duration
        delay = np.where(dns, UDP_TIMEOUT_US, np.where(rng.random(size) < IDLE_TCP_SHARE, TCP_TIMEOUT_US, 0))
        packets = np.where(dns, 2, np.where(scan, rng.integers(1, 4, size), np.clip(rng.lognormal(np.log(25), 1.2, size), 4, 1_000_000).astype(np.int64)))
        byte_count = np.where(dns, rng.integers(120, 600, size), packets * rng.integers(90, 1400, size))
        first_packets = np.where(sni, 4, 1)
        first_bytes = np.where(sni, rng.integers(600, 2_000, size), np.where(dns, rng.integers(60, 120, size), 74))
        hits = np.where(route <= ROUTE_IP_SRC, np.maximum(1, packets // 2), 1)
        port_pick = rng.integers(0, 1 << 16, size)
        source_port = rng.integers(32768, 61000, size)
        peer = rng.integers(0, 1 << 30, size)

        truth = self.truth
        truth.subscribers += np.bincount(who, minlength=len(truth.subscribers))
        truth.networks += np.bincount(who[~v6] // 256, minlength=len(truth.networks))
        truth.markers += np.bincount(marker, minlength=len(truth.markers))
        day_start, day_end = QUERY_DAY // 1000, QUERY_DAY // 1000 + 86400 * 1_000_000
        truth.day += int(np.count_nonzero((last_us >= day_start) & (first_us < day_end)))
        truth.events += size

        records: list[Event] = []
        new_event = tuple.__new__
        subscribers, encapsulations, markers, marker_addresses = self.subscribers, self.encapsulations, self.markers, self.marker_addresses
        peers_v4, peers_v6, resolvers_v4, resolvers_v6 = self.peers_v4, self.peers_v6, self.resolvers_v4, self.resolvers_v6
        v4_subscribers = self.v4_subscribers
        sequence = self._sequence
        columns = zip(
            (first_us * 1000).tolist(), who.tolist(), marker.tolist(), route.tolist(), (hit_offset * 1000).tolist(), (last_us * 1000).tolist(), (delay * 1000).tolist(),
            packets.tolist(), byte_count.tolist(), first_packets.tolist(), first_bytes.tolist(), hits.tolist(), port_pick.tolist(), source_port.tolist(), peer.tolist(),
        )
        for first, subscriber, marker_number, route_code, offset, last, wait, total_packets, total_bytes, packets_0, bytes_0, hit_count, pick, client_port, peer_number in columns:
            while pending and pending[0][0] <= first:
                records.append(heapq.heappop(pending)[2])
            address = subscribers[subscriber]
            is_v6 = subscriber >= v4_subscribers
            ports = ROUTE_PORTS[route_code]
            server_port = ports[pick % len(ports)]
            if route_code == ROUTE_IP_DST:
                client, server, proto, to_server = address, marker_addresses[marker_number], PROTO_TCP, True
            elif route_code == ROUTE_IP_SRC:
                client, server, proto, to_server = marker_addresses[marker_number], address, PROTO_TCP, False
            elif route_code == ROUTE_DNS:
                client, proto, to_server = address, PROTO_UDP, True
                server = resolvers_v6[pick % 2] if is_v6 else resolvers_v4[pick % 2]
            else:
                client, proto, to_server = address, PROTO_TCP, True
                server = peers_v6[peer_number % V6_PEERS] if is_v6 else peers_v4[peer_number % V4_PEERS]
            hit = first + offset
            common = (proto, client, client_port, server, server_port, to_server, MATCHED_ON[route_code], markers[marker_number], encapsulations[subscriber], first, first)
            records.append(new_event(Event, (0, hit, *common, hit, packets_0, bytes_0, 1)))
            final = new_event(Event, (1, hit, *common, last, max(total_packets, packets_0), max(total_bytes, bytes_0), hit_count))
            sequence += 1
            heapq.heappush(pending, (last + wait, sequence, final))
        self._sequence = sequence
        truth.records += len(records)
        return records


# --- fsync accounting --------------------------------------------------------------------------


class FsyncTimer:
    """Wraps os.fsync for the run (the store calls it through the os module), so that the count
    and latency of every fsync, the store's and the baselines', can be reported."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._original = os.fsync

    def __enter__(self) -> FsyncTimer:
        original, durations, clock = self._original, self.durations, time.perf_counter

        def timed_fsync(descriptor: int) -> None:
            started = clock()
            original(descriptor)
            durations.append(clock() - started)

        os.fsync = timed_fsync  # type: ignore[assignment]
        return self

    def __exit__(self, *exception: object) -> None:
        os.fsync = self._original  # type: ignore[assignment]

    def since(self, mark: int) -> list[float]:
        return self.durations[mark:]


def fsync_text(durations: list[float]) -> str:
    if not durations:
        return "no fsync"
    ordered = sorted(durations)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{len(durations):,} fsyncs, {sum(durations):.2f} s in all, median {statistics.median(durations) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {ordered[-1] * 1e3:.1f} ms"


# --- append ------------------------------------------------------------------------------------


@dataclass
class AppendResult:
    events: int
    records: int
    generation_seconds: float
    append_seconds: float
    """append + flush_if_due + the final flush and close, generation excluded."""
    chunk_seconds: list[float]
    chunk_records: list[int]
    flushes: int
    fsyncs: list[float]
    expired_on_arrival: int
    not_stored: int
    stored: int
    peak_rss_mb: float
    truth: GroundTruth
    generator: EventGenerator


def append_all(directory: str, events: int, seed: int, fsyncs: FsyncTimer) -> AppendResult:
    """Append every revision as the pipeline does; time generation and storing apart, chunk by chunk."""
    generator = EventGenerator(events, seed)
    store = RingStore(directory, StoreSection(), Clock(CLOCK), ProbeSection(name="probe-bench", site="pop-1"))
    flushes = [0]
    flush = store.flush

    def counted_flush() -> list:
        flushes[0] += 1
        return flush()

    store.flush = counted_flush  # type: ignore[method-assign]
    fsync_mark = len(fsyncs.durations)
    generation = 0.0
    chunk_seconds: list[float] = []
    chunk_records: list[int] = []
    chunks = generator.chunks()
    started_run = time.perf_counter()
    while True:
        started = time.perf_counter()
        records = next(chunks, None)
        generation += time.perf_counter() - started
        if records is None:
            break
        started = time.perf_counter()
        append, flush_if_due = store.append, store.flush_if_due
        for position, record in enumerate(records):
            append(record)
            if position % FLUSH_CHECK_EVERY == 0:
                flush_if_due()
        chunk_seconds.append(time.perf_counter() - started)
        chunk_records.append(len(records))
        if len(chunk_seconds) % 10 == 0:
            done = sum(chunk_records)
            print(f"  ... {done:,} records appended, {sum(chunk_seconds):.0f} s appending, {generation:.0f} s generating, {time.perf_counter() - started_run:.0f} s elapsed", flush=True)
    started = time.perf_counter()
    store.flush()
    store.close()
    chunk_seconds[-1] += time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return AppendResult(
        generator.truth.events, generator.truth.records, generation, sum(chunk_seconds), chunk_seconds, chunk_records, flushes[0], fsyncs.since(fsync_mark),
        store.expired_on_arrival, store.not_stored, store.stored, peak, generator.truth, generator,
    )


# --- baselines ---------------------------------------------------------------------------------


@dataclass
class BaselineResult:
    label: str
    records: int
    seconds: float
    bytes: int
    fsyncs: list[float]


def write_baseline(path: str, label: str, chunks: list[list[Event]], encode: Callable[[Event], bytes], flush_interval: float, fsyncs: FsyncTimer) -> BaselineResult:
    """One file, records encoded one by one, written and fsync'd with the store's cadence: when the
    oldest waiting record has waited `flush_interval`, or MAX_PENDING records wait."""
    fsync_mark = len(fsyncs.durations)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    pending: list[bytes] = []
    oldest = 0.0
    written = 0

    def flush() -> None:
        nonlocal pending, written
        data = b"".join(pending)
        write_all(descriptor, data)
        os.fsync(descriptor)
        written += len(data)
        pending = []

    records = 0
    started = time.perf_counter()
    try:
        for chunk in chunks:
            for position, record in enumerate(chunk):
                if not pending:
                    oldest = time.monotonic()
                pending.append(encode(record))
                if len(pending) >= MAX_PENDING or (position % FLUSH_CHECK_EVERY == 0 and time.monotonic() - oldest >= flush_interval):
                    flush()
            records += len(chunk)
        if pending:
            flush()
    finally:
        os.close(descriptor)
    return BaselineResult(label, records, time.perf_counter() - started, written, fsyncs.since(fsync_mark))


def run_baselines(work: str, events: int, seed: int, chunk_count: int, fsyncs: FsyncTimer, keep: bool) -> list[BaselineResult]:
    """The same first chunks of records as the store got (the generator is seeded), regenerated
    once and held in memory so that generation stays out of the timing."""
    generator = EventGenerator(events, seed)
    source = generator.chunks()
    chunks = [next(source) for _ in range(chunk_count)]
    probe = ProbeSection(name="probe-bench", site="pop-1")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    packb = msgpack.Packer().pack
    results = []
    encoders: list[tuple[str, str, Callable[[Event], bytes]]] = [
        ("eve.json lines (event_record + json)", "baseline.jsonl", lambda event: (dumps(event_record(event, probe)) + "\n").encode()),
        ("msgpack of the eve dicts", "baseline.msgpack", lambda event: packb(event_record(event, probe))),
    ]
    for label, name, encode in encoders:
        path = os.path.join(work, name)
        results.append(write_baseline(path, label, chunks, encode, StoreSection().flush_interval, fsyncs))
        if not keep:
            os.unlink(path)
    return results


# --- disk --------------------------------------------------------------------------------------


@dataclass
class DiskUsage:
    segment_files: int = 0
    segment_bytes: int = 0
    index_files: int = 0
    index_bytes: int = 0
    allocated_bytes: int = 0
    """st_blocks: what the file system really holds, block rounding included."""
    other_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.segment_bytes + self.index_bytes + self.other_bytes


def disk_usage(directory: str) -> DiskUsage:
    usage = DiskUsage()
    for folder, _, names in os.walk(directory):
        for name in names:
            status = os.stat(os.path.join(folder, name))
            usage.allocated_bytes += status.st_blocks * 512
            if name.endswith(".seg"):
                usage.segment_files += 1
                usage.segment_bytes += status.st_size
            elif name.endswith(".idx"):
                usage.index_files += 1
                usage.index_bytes += status.st_size
            else:
                usage.other_bytes += status.st_size
    return usage


def evict_page_cache(directory: str) -> None:
    """Drop the store's files from the page cache (they are clean: every write was fsync'd), so
    that the next read comes from the disk, as for a query days after the events were stored.
    The host of a virtual machine may still cache the disk below."""
    for folder, _, names in os.walk(directory):
        for name in names:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


# --- queries -----------------------------------------------------------------------------------


@dataclass
class Query:
    label: str
    event_filter: EventFilter
    expected: int


@dataclass
class QueryResult:
    query: Query
    cold: float
    warm: list[float] = field(default_factory=list)
    """Empty when the cold run took longer than SLOW_QUERY_SECONDS."""
    returned: int = 0
    segments_read: int = 0
    final_revisions: bool = True
    """Every event returned is its revision 1 (the latest), as the store holds both of each."""

    @property
    def warm_median(self) -> float:
        return statistics.median(self.warm) if self.warm else self.cold

    @property
    def correct(self) -> bool:
        return self.returned == self.query.expected and self.final_revisions


def open_read_only(directory: str) -> RingStore:
    return RingStore(directory, StoreSection(), Clock(CLOCK), writable=False)


def choose_queries(generator: EventGenerator) -> list[Query]:
    """Targets picked from the generator's counts: a typical subscriber (the median of the
    uninfected IPv4 subscribers with events), the busiest subscriber, the typical one's /24, and
    a marker of median popularity."""
    truth = generator.truth
    v4_counts = truth.subscribers[: generator.v4_subscribers]
    uninfected = np.ones(generator.v4_subscribers, bool)
    uninfected[generator.infected[generator.infected < generator.v4_subscribers]] = False
    candidates = np.flatnonzero(uninfected & (v4_counts > 0))
    median = int(np.median(v4_counts[candidates]))
    typical = int(candidates[np.flatnonzero(v4_counts[candidates] == median)[0]])
    busiest = int(np.argmax(truth.subscribers))
    typical_text = address_text(generator.subscribers[typical])
    busiest_text = address_text(generator.subscribers[busiest])
    network = ipaddress.ip_network(f"{typical_text}/24", strict=False)
    marker_order = np.argsort(truth.markers)
    median_marker = int(marker_order[len(marker_order) // 2])
    marker = generator.markers[median_marker]
    day_text = time.strftime("%Y-%m-%d", time.gmtime(QUERY_DAY // NANOSECONDS))
    return [
        Query(f"one day ({day_text})", EventFilter(since=QUERY_DAY, until=QUERY_DAY + 86400 * NANOSECONDS), truth.day),
        Query(f"typical subscriber {typical_text}", EventFilter(network=ipaddress.ip_network(typical_text)), int(truth.subscribers[typical])),
        Query(f"busiest subscriber {busiest_text}", EventFilter(network=ipaddress.ip_network(busiest_text)), int(truth.subscribers[busiest])),
        Query(f"/24 {network}", EventFilter(network=network), int(truth.networks[typical // 256])),
        Query(f"marker {marker.bundle}/{marker.id}", EventFilter(marker=f"{marker.bundle}/{marker.id}"), int(truth.markers[median_marker])),
    ]


def counting_reads(store: RingStore) -> list[int]:
    """Count the segments a query reads: `latest_events` calls `store.read` once per segment."""
    counter = [0]
    read = store.read

    def counted_read(summary, *arguments, **options):  # type: ignore[no-untyped-def]
        counter[0] += 1
        return read(summary, *arguments, **options)

    store.read = counted_read  # type: ignore[method-assign]
    return counter


def time_open(directory: str) -> tuple[float, list[float], int]:
    """Opening read-only loads every segment's index (summary and Bloom filter): cold once, then warm."""
    evict_page_cache(directory)
    started = time.perf_counter()
    store = open_read_only(directory)
    cold = time.perf_counter() - started
    segments = len(store.summaries)
    warm = []
    for _ in range(WARM_RUNS):
        started = time.perf_counter()
        open_read_only(directory)
        warm.append(time.perf_counter() - started)
    return cold, warm, segments


def run_query(store: RingStore, directory: str, query: Query, reads: list[int]) -> QueryResult:
    evict_page_cache(directory)
    reads[0] = 0
    started = time.perf_counter()
    events = latest_events(store, query.event_filter)
    result = QueryResult(query, time.perf_counter() - started, returned=len(events), segments_read=reads[0])
    result.final_revisions = all(event.revision == 1 for event in events)
    del events
    while result.cold < SLOW_QUERY_SECONDS and len(result.warm) < WARM_RUNS and sum(result.warm) < SLOW_QUERY_SECONDS:
        started = time.perf_counter()
        latest_events(store, query.event_filter)
        result.warm.append(time.perf_counter() - started)
    return result


# --- profiles ----------------------------------------------------------------------------------


def print_profile(title: str, profile: cProfile.Profile) -> None:
    """The functions that take the most time of their own, with their cumulative time."""
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime")
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n  {title} (cProfile, {total:.2f} s of own time in all; top {PROFILE_LINES} by own time)")
    print(f"    {'own s':>7}{'own %':>7}{'cumul s':>9}{'calls':>12}  function")
    for function in stats.fcn_list[:PROFILE_LINES]:  # type: ignore[attr-defined]
        _, calls, own, cumulative, _ = stats.stats[function]  # type: ignore[attr-defined]
        file_name, line, name = function
        where = os.path.relpath(file_name, ROOT) if file_name.startswith(str(ROOT)) else os.path.basename(file_name)
        print(f"    {own:>7.2f}{own / total * 100:>6.1f}%{cumulative:>9.2f}{calls:>12,}  {where}:{line}({name})")


def profile_append(work: str, seed: int) -> None:
    """Profile the first events of a full-size run, whatever --events says: with fewer events over
    the same six months, segments hold fewer records and their fixed costs (files, fsyncs,
    indexes, marker declarations) would weigh more than they do at full size."""
    directory = os.path.join(work, "profile-store")
    generator = EventGenerator(DEFAULT_EVENTS, seed)
    chunks = generator.chunks()
    records: list[Event] = []
    while len(records) < 2 * PROFILE_EVENTS:
        chunk = next(chunks, None)
        if chunk is None:
            break
        records += chunk
    store = RingStore(directory, StoreSection(), Clock(CLOCK), ProbeSection(name="probe-bench", site="pop-1"))
    profile = cProfile.Profile()
    profile.enable()
    for position, record in enumerate(records):
        store.append(record)
        if position % FLUSH_CHECK_EVERY == 0:
            store.flush_if_due()
    store.close()
    profile.disable()
    print_profile(f"append of {len(records):,} records + close", profile)
    shutil.rmtree(directory)


def profile_queries(directory: str, queries: list[Query]) -> None:
    profile = cProfile.Profile()
    profile.enable()
    store = open_read_only(directory)
    profile.disable()
    print_profile("open read-only (warm)", profile)
    for query in queries:
        profile = cProfile.Profile()
        profile.enable()
        latest_events(store, query.event_filter)
        profile.disable()
        print_profile(f"query {query.label} (warm)", profile)


# --- the report --------------------------------------------------------------------------------


def file_system(path: str) -> str:
    """The mount holding `path`: its device and type, since fsync latency is the disk's."""
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount_point, kind = line.split()[:3]
                if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(best[0]):
                    best = (mount_point, device, kind)
    except OSError:
        pass
    return f"{best[2]} on {best[1]} (mounted at {best[0]})"


def code_version() -> str:
    """The commit measured, and whether probe/ differs from it: the store changes often, and a
    figure without the code it measured cannot be compared with the next one."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "probe"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"{commit or 'unknown'}{' with uncommitted changes to probe/' if changed else ''}"


def verdict(passed: bool) -> str:
    return "goal met" if passed else "goal NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help=f"events to generate, each stored as two revisions (default: {DEFAULT_EVENTS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events, for a fast check")
    parser.add_argument("--directory", type=Path, help="work directory (default: a new temporary directory); the store goes in DIR/store")
    parser.add_argument("--keep", action="store_true", help="keep the store and the baseline files")
    parser.add_argument("--seed", type=int, default=5, help="generator seed (default: 5)")
    parser.add_argument("--baseline-events", type=int, default=1_000_000, help="events (whole chunks of 100,000) written by the baselines (default: 1,000,000)")
    parser.add_argument("--profile", action="store_true", help="also profile appending and each query with cProfile")
    args = parser.parse_args()
    events = QUICK_EVENTS if args.quick else args.events

    created = args.directory is None
    work = tempfile.mkdtemp(prefix="store-bench-") if created else str(args.directory.resolve())
    os.makedirs(work, mode=0o700, exist_ok=True)
    directory = os.path.join(work, "store")
    if os.path.exists(directory):
        sys.exit(f"store benchmark: {directory} exists (a kept store?): remove it or give another --directory")

    print(f"machine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"python {platform.python_version()} ({sys.executable}), msgpack {'.'.join(map(str, msgpack.version))}, kernel {platform.release()}")
    print(f"code: {code_version()}")
    print(f"store: {directory}, {file_system(work)}")
    print(f"events: {events:,} over {CAPTURE_DAYS} days from 2026-05-01, two revisions each; seed {args.seed}; clock fixed at 2026-10-31T07:00:00Z")

    failed = False
    try:
        with FsyncTimer() as fsyncs:
            # 1. Append, the garbage collector paused as `probe replay` pauses it.
            print("\nappending ...", flush=True)
            gc.disable()
            try:
                appended = append_all(directory, events, args.seed, fsyncs)
                baseline_chunks = min(len(appended.chunk_seconds) - 1, max(1, -(-args.baseline_events // CHUNK_EVENTS)))
                print("baselines ...", flush=True)
                baselines = run_baselines(work, events, args.seed, baseline_chunks, fsyncs, args.keep)
            finally:
                gc.enable()
            gc.collect()
        usage = disk_usage(directory)

        records = appended.records
        print("\nappend (RingStore.append + flush_if_due every 256 records + final flush/close; default [store]: flush_interval 1 s, hourly segments):")
        print(f"  generation (not counted): {appended.generation_seconds:.1f} s for {appended.events:,} events")
        print(f"  {records:,} records ({appended.events:,} events x 2 revisions) in {appended.append_seconds:.1f} s: "
              f"{appended.events / appended.append_seconds:,.0f} events/s, {records / appended.append_seconds:,.0f} records/s")
        rates = [count / seconds for count, seconds in zip(appended.chunk_records[:-1], appended.chunk_seconds[:-1]) if seconds > 0]
        if rates:
            print(f"  records/s per chunk of {CHUNK_EVENTS:,} events: min {min(rates):,.0f}, median {statistics.median(rates):,.0f}, max {max(rates):,.0f}")
        print(f"  {appended.flushes:,} flushes ({records / max(1, appended.flushes):,.0f} records each); {fsync_text(appended.fsyncs)}")
        print(f"  acknowledged {appended.stored:,}, expired on arrival {appended.expired_on_arrival}, not stored {appended.not_stored}; peak RSS of this process {appended.peak_rss_mb:,.0f} MB")
        if appended.stored != records or appended.expired_on_arrival or appended.not_stored:
            print("  CHECK FAILED: not every record was stored")
            failed = True

        sample_records = sum(appended.chunk_records[:baseline_chunks])
        sample_seconds = sum(appended.chunk_seconds[:baseline_chunks])
        store_rate = sample_records / sample_seconds
        print(f"\nbaselines (the first {sample_records:,} records, {baseline_chunks} chunks, one file each, same fsync cadence):")
        print(f"  {'':40}{'records/s':>12}{'bytes/record':>14}{'store speed x':>15}{'store bytes x':>15}")
        store_bytes_per_record = usage.total_bytes / records
        print(f"  {'ring store (same records)':40}{store_rate:>12,.0f}{store_bytes_per_record:>14.1f}{'1.00':>15}{'1.00':>15}")
        for baseline in baselines:
            rate = baseline.records / baseline.seconds
            per_record = baseline.bytes / baseline.records
            print(f"  {baseline.label:40}{rate:>12,.0f}{per_record:>14.1f}{store_rate / rate:>15.2f}{store_bytes_per_record / per_record:>15.2f}")
        for baseline in baselines:
            print(f"  {baseline.label}: {fsync_text(baseline.fsyncs)}")
        print("  (store speed x > 1: the store is faster; store bytes x < 1: the store is smaller; the store's bytes per")
        print("   record are over the whole run, segments and indexes)")

        print("\ndisk:")
        print(f"  segments: {usage.segment_files:,} files, {usage.segment_bytes:,} bytes; indexes: {usage.index_files:,} files, {usage.index_bytes:,} bytes; other {usage.other_bytes:,} bytes")
        print(f"  per record: {usage.segment_bytes / records:.1f} bytes of segment + {usage.index_bytes / records:.1f} of index = {usage.total_bytes / records:.1f}")
        bytes_per_event = usage.total_bytes / appended.events
        print(f"  per event (both revisions): {usage.segment_bytes / appended.events:.1f} + {usage.index_bytes / appended.events:.1f} = {bytes_per_event:.1f} bytes; "
              f"allocated on disk (block rounding): {usage.allocated_bytes / appended.events:.1f}")

        # 2. Queries.
        print("\nqueries (read-only store; cold: files evicted from the page cache first; warm: median):", flush=True)
        open_cold, open_warm, segments = time_open(directory)
        print(f"  {'':44}{'cold s':>9}{'warm s':>8}{'events':>10}{'expected':>10}{'segments read':>15}  check")
        print(f"  {f'open ({segments:,} segment summaries)':44}{open_cold:>9.3f}{statistics.median(open_warm):>8.3f}")
        store = open_read_only(directory)
        reads = counting_reads(store)
        queries = choose_queries(appended.generator)
        results = []
        for query in queries:
            result = run_query(store, directory, query, reads)
            results.append(result)
            failed |= not result.correct
            check = "OK" if result.correct else ("FAILED" if result.final_revisions else "FAILED (not the latest revision)")
            if not result.warm:
                check += f" (not repeated: slower than {SLOW_QUERY_SECONDS:.0f} s)"
            elif len(result.warm) < WARM_RUNS:
                check += f" ({len(result.warm)} warm run{'s' if len(result.warm) != 1 else ''})"
            print(f"  {query.label:44}{result.cold:>9.3f}{(f'{result.warm_median:.3f}' if result.warm else '-'):>8}{result.returned:>10,}{query.expected:>10,}{f'{result.segments_read:,}/{segments:,}':>15}  {check}", flush=True)
        print("  (a query's time excludes the open; the CLI pays both)")

        print("\ngoals of the issue (informative):")
        events_per_second = appended.events / appended.append_seconds
        day, typical = results[0], results[1]
        goals = [
            (f"append >= {GOAL_EVENTS_PER_SECOND:,} events/s ({events_per_second:,.0f} events/s, {records / appended.append_seconds:,.0f} records/s)", events_per_second >= GOAL_EVENTS_PER_SECOND),
            (f"one-day query < {GOAL_QUERY_SECONDS:.0f} s, open included (cold {open_cold + day.cold:.2f} s, warm {statistics.median(open_warm) + day.warm_median:.2f} s)", open_cold + day.cold < GOAL_QUERY_SECONDS),
            (f"address query < {GOAL_QUERY_SECONDS:.0f} s, open included (typical: cold {open_cold + typical.cold:.2f} s, warm {statistics.median(open_warm) + typical.warm_median:.2f} s)", open_cold + typical.cold < GOAL_QUERY_SECONDS),
            (f"address query < {GOAL_QUERY_SECONDS:.0f} s for the busiest subscriber (cold {open_cold + results[2].cold:.2f} s)", open_cold + results[2].cold < GOAL_QUERY_SECONDS),
            (f"disk <= {GOAL_BYTES_PER_EVENT} bytes per event ({bytes_per_event:.1f})", bytes_per_event <= GOAL_BYTES_PER_EVENT),
        ]
        for label, passed in goals:
            print(f"  {label:<100}{verdict(passed)}")
        print(f"  answers checked against the generator's counts: {'all OK' if not failed else 'FAILED'}")

        if args.profile:
            print("\nprofiles:", flush=True)
            profile_append(work, args.seed)
            profile_queries(directory, queries)
    finally:
        if not args.keep:
            shutil.rmtree(work if created else directory, ignore_errors=True)
        else:
            print(f"\nkept: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
