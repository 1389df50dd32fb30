"""The fleet's bus: events/s from 4 publishing probes through a three-node JetStream cluster into
the collector's store, and the end-to-end latency (detection to collector fsync) at 1,000 events/s.

Run from the repository root (needs nats-server, Debian package nats-server):

    .venv/bin/python benchmarks/fleet.py [--events 40000] [--latency-seconds 20] [--rate 1000]

A 3-node nats-server JetStream cluster is started on loopback in a temporary directory
(tests/natsserver.py) and `probe fleet setup --replicas 3` creates the stream. Each publisher is
a process of its own holding the probe's own `nats` sink (`NatsSink`, from a probe configuration
with a `[[sinks]] type = "nats"`), to which it hands event notification documents
(`event_document`, stage detected, one distinct synthetic flow each) with `sink.deliver()`: what
the probe's delivery process does with what it takes from the outbox. The outbox and the packet
path are not part of this measure (benchmarks/notify.py and replay_throughput.py cover them).

(a) **Throughput.** `probe collect` runs as a process; 4 publishers hand over `--events` events
    in all, as fast as acknowledgements allow, in chunks of 64 (the delivery process's chunk).
    The rate is the events found in the collector's store (read back at the end: each must be
    there exactly once, else exit 1) divided by the time from the publishers' start to the moment
    the stream is drained (the collector's consumer has nothing pending and nothing unacknowledged:
    it acknowledges a batch only once its store fsync'd it). The publishers' own rate (to the
    stream's acknowledgement) is printed beside it.
(b) **Latency.** The collector runs in this process (`Collector(config, Clock()).run()`, the code
    of `probe collect`), its store's `flush` wrapped to note the time after each fsync for every
    event it made durable. 4 publishers at `--rate`/4 events/s each, in a batch every 10 ms, for
    `--latency-seconds`. An event's detection time is when its publisher builds its document and
    hands it to the sink: the synthetic event's own `timestamp` (its first packet), which the
    collector stores, so that latency = fsync time - stored timestamp (one host, one clock).

Both runs start once the collector is at work (its durable consumer has a fetch waiting) and every
publisher process holds its sink: neither measure includes a process starting or connecting.

Everything shares this machine's cores: the 3 nats-server nodes, the 4 publishers and the
collector. The goals (>= 5,000 events/s, p99 <= 1 s) are printed as PASS/FAIL for information;
the exit status reflects only the correctness checks (every event stored exactly once).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


from natsserver import NATS_SERVER_MISSING, NatsCluster, consumer_state, nats_server_path, stored_revisions, wait_collecting  # noqa: E402
from probe.clock import Clock  # noqa: E402
from probe.config import load_config  # noqa: E402
from probe.decode.packet import IPV4_MAPPED_PREFIX  # noqa: E402
from probe.match.markers import Marker  # noqa: E402
from probe.record.events import Event  # noqa: E402

PROBE = str(Path(sys.executable).with_name("probe"))
PUBLISHERS = 4
CHUNK = 64
"""Documents per `deliver` call at full speed: the delivery process's DELIVERY_CHUNK."""
TICK = 0.010
"""Seconds between two paced batches in the latency run."""
GOAL_RATE = 5000.0
GOAL_P99 = 1.0
MARKERS = [Marker(f"marked-{position}", "ipv4", f"198.51.100.{position + 1}", "fleet", 1) for position in range(10)]
MACHINE = f"{os.cpu_count()} cores shared by 3 nats-server nodes, {PUBLISHERS} publishers and the collector"


def configuration(directory: Path, name: str, servers: list[str], sink: bool) -> Path:
    """A probe's (sink = True: a `nats` sink) or the collector's configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""
[probe]
name = "{name}"
site = "bench"
[store]
directory = "{directory}/store"
[fleet]
servers = [{", ".join(f'"{server}"' for server in servers)}]
connect_timeout = 5.0
"""
    if sink:
        text += '[[sinks]]\nname = "fleet"\ntype = "nats"\nauthority = true\n'
    path = directory / "probe.toml"
    path.write_text(text)
    return path


def synthetic_event(publisher: int, sequence: int, now: int) -> Event:
    """A detection (revision 0) of a flow of its own: client 10.<publisher>.x.y, port by sequence."""
    client = IPV4_MAPPED_PREFIX + bytes([10, publisher, sequence // 256 % 256, sequence % 256])
    marker = MARKERS[sequence % len(MARKERS)]
    server = IPV4_MAPPED_PREFIX + bytes(int(part) for part in marker.value.split("."))
    port = 1024 + sequence // 65536
    return Event(0, now, 17, client, port, server, 53, True, "ip.dst", marker, [], now, now, now, 1, 66, 1)


def publisher(index: int, config_path: str, count: int, rate: float, seconds: float, ready: multiprocessing.synchronize.Semaphore, start: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    """Hands events to the probe's nats sink: `count` at full speed in chunks of CHUNK, or (rate >
    0) `rate` per second for `seconds`, a batch every TICK. Reports (events, seconds, error)."""
    from probe.notify.documents import event_document, probe_identity
    from probe.notify.sinks.nats import NatsSink

    config = load_config(config_path)
    sink = NatsSink(config.sinks[0], config)
    identity = probe_identity(config)
    sent = 0
    error = ""
    sink.deliver([])  # connects: the measure starts with the sink at work
    ready.release()
    start.wait()
    began = time.monotonic()
    try:
        if rate <= 0:
            while sent < count:
                now = time.time_ns()
                batch = [(event_document(synthetic_event(index, sequence, now + sequence), "detected", identity, now), 0) for sequence in range(sent, min(count, sent + CHUNK))]
                sink.deliver(batch)
                sent += len(batch)
        else:
            total = int(rate * seconds)
            while sent < total:
                due = min(total, int((time.monotonic() - began) * rate) + 1)
                if due > sent:
                    batch = []
                    for sequence in range(sent, due):
                        now = time.time_ns()
                        batch.append((event_document(synthetic_event(index, sequence, now), "detected", identity, now), 0))
                    sink.deliver(batch)
                    sent = due
                pause = began + (sent / rate) - time.monotonic()
                time.sleep(max(pause, TICK))
    except Exception as failure:  # the parent reports it
        error = f"{type(failure).__name__}: {failure}"
    elapsed = time.monotonic() - began
    sink.close()
    results.put((index, sent, elapsed, error))


def start_publishers(configs: list[Path], offset: int, count: int, rate: float, seconds: float) -> tuple[list, multiprocessing.synchronize.Event, multiprocessing.Queue]:
    """The publisher processes, each with its sink made and waiting for `start`."""
    context = multiprocessing.get_context("spawn")
    ready = context.Semaphore(0)
    start = context.Event()
    results = context.Queue()
    processes = [context.Process(target=publisher, args=(offset + index, str(config), count, rate, seconds, ready, start, results)) for index, config in enumerate(configs)]
    for process in processes:
        process.start()
    for _ in processes:
        if not ready.acquire(timeout=120):
            for process in processes:
                process.terminate()
            raise RuntimeError("a publisher process did not connect within 120 s (is the cluster up?)")
    return processes, start, results


def collect_results(processes: list, results: multiprocessing.Queue, timeout: float) -> list[tuple[int, int, float, str]]:
    reports = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(10)
    return sorted(reports)


def wait_drained(servers: list[str], timeout: float) -> float:
    """time.monotonic() once the stream is empty and the consumer has nothing unacknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer_state(servers) == (0, 0, 0):
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"the stream was not drained within {timeout:.0f} s: {consumer_state(servers)}")


def throughput(work: Path, servers: list[str], events: int) -> tuple[bool, float]:
    per_publisher = events // PUBLISHERS
    total = per_publisher * PUBLISHERS
    collector_config = configuration(work / "collector-a", "collector", servers, sink=False)
    configs = [configuration(work / f"probe-{index + 1}", f"probe-{index + 1}", servers, sink=True) for index in range(PUBLISHERS)]
    collector = subprocess.Popen([PROBE, "collect", "--config", str(collector_config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        processes, start, results = start_publishers(configs, 1, per_publisher, 0.0, 0.0)
        wait_collecting(servers, 120)
        began = time.monotonic()
        start.set()
        reports = collect_results(processes, results, 600)
        published = time.monotonic()
        drained = wait_drained(servers, 600)
    finally:
        collector.send_signal(signal.SIGTERM)
        _, log = collector.communicate(timeout=60)
    ok = True
    for index, sent, elapsed, error in reports:
        if error or sent != per_publisher:
            print(f"publisher {index}: {sent} of {per_publisher} events sent: {error}")
            ok = False
    if collector.returncode != 0:
        print(f"probe collect exited with status {collector.returncode}:\n{log}")
        ok = False
    records = stored_revisions(collector_config)
    repeated = sum(1 for seen in records.values() if seen > 1)
    if len(records) != total or repeated:
        print(f"collector's store: {len(records)} distinct events of {total} published, {repeated} stored more than once")
        ok = False
    stored = sum(records.values())
    publish_seconds = published - began
    seconds = drained - began
    rate = stored / seconds
    print(f"(a) throughput: {PUBLISHERS} publishers x {per_publisher:,} events, chunks of {CHUNK}, `probe collect` beside them")
    print(f"    published (stream-acknowledged): {total:,} events in {publish_seconds:.2f} s = {total / publish_seconds:,.0f} events/s"
          f" (per publisher: {', '.join(f'{sent / elapsed:,.0f}' for _, sent, elapsed, _ in reports)})")
    print(f"    end to end (in the collector's store, fsync'd and acknowledged): {stored:,} events in {seconds:.2f} s = {rate:,.0f} events/s"
          f" (drained {drained - published:.2f} s after the last publish)  [{MACHINE}]")
    print(f"    goal >= {GOAL_RATE:,.0f} events/s: {'PASS' if rate >= GOAL_RATE else 'FAIL'}")
    print(f"    check: {len(records):,} distinct events stored of {total:,} published, {repeated} more than once: {'ok' if ok else 'FAILED'}")
    return ok, rate


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(work: Path, servers: list[str], rate: float, seconds: float) -> bool:
    from probe.fleet.collector import Collector

    collector_config = configuration(work / "collector-b", "collector", servers, sink=False)
    configs = [configuration(work / f"paced-{index + 1}", f"paced-{index + 1}", servers, sink=True) for index in range(PUBLISHERS)]
    collector = Collector(load_config(str(collector_config)), Clock())
    latencies: list[int] = []
    flush = collector.store.flush

    def noted_flush() -> list:
        acknowledged = flush()
        fsynced = time.time_ns()
        latencies.extend(fsynced - record.timestamp for record in acknowledged if isinstance(record, Event))
        return acknowledged

    collector.store.flush = noted_flush  # type: ignore[method-assign]
    processes, start, results = start_publishers(configs, 101, 0, rate / PUBLISHERS, seconds)
    outcome: dict = {}

    def conduct() -> None:
        """Starts the publishers, waits for them and for the drained stream, then stops the
        collector (its SIGTERM handler: it finishes the batch under way)."""
        try:
            wait_collecting(servers, 120)
            start.set()
            outcome["reports"] = collect_results(processes, results, seconds + 120)
            wait_drained(servers, 120)
        except Exception as error:
            outcome["error"] = f"{type(error).__name__}: {error}"
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    conductor = threading.Thread(target=conduct, daemon=True)
    conductor.start()
    collector.run()
    conductor.join(30)
    ok = "error" not in outcome
    if not ok:
        print(f"latency run: {outcome['error']}")
    reports = outcome.get("reports", [])
    sent = sum(report[1] for report in reports)
    for index, count, elapsed, error in reports:
        if error:
            print(f"publisher {index}: {error}")
            ok = False
    records = stored_revisions(collector_config)
    if len(records) != sent or any(seen > 1 for seen in records.values()) or len(latencies) != sent:
        print(f"collector's store: {len(records)} distinct events of {sent} published ({len(latencies)} fsyncs noted)")
        ok = False
    achieved = sent / max(report[2] for report in reports) if reports else 0.0
    values = [value / 1e9 for value in latencies] or [0.0]
    p50, p99, worst = percentile(values, 0.50), percentile(values, 0.99), max(values)
    print(f"(b) latency, detection (hand-off to the nats sink) to collector fsync: {sent:,} events at {achieved:,.0f} events/s"
          f" ({PUBLISHERS} publishers x {rate / PUBLISHERS:,.0f}/s, a batch every {TICK * 1000:.0f} ms, {seconds:g} s)")
    print(f"    p50 {p50 * 1000:,.1f} ms, p99 {p99 * 1000:,.1f} ms, max {worst * 1000:,.1f} ms  [{MACHINE}]")
    print(f"    goal p99 <= {GOAL_P99:g} s: {'PASS' if p99 <= GOAL_P99 else 'FAIL'}")
    print(f"    check: {len(records):,} distinct events stored of {sent:,} published, each fsync noted: {'ok' if ok else 'FAILED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events published in the throughput run (all publishers together)")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of the paced latency run")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the latency run (all publishers together)")
    arguments = parser.parse_args()
    if nats_server_path() is None:
        print(NATS_SERVER_MISSING, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as directory:
        work = Path(directory)
        cluster = NatsCluster(work / "nats", size=3).start()
        try:
            admin = configuration(work / "admin", "admin", cluster.urls, sink=False)
            setup = subprocess.run([PROBE, "fleet", "setup", "--config", str(admin), "--replicas", "3"], capture_output=True, text=True, timeout=120)
            if setup.returncode != 0:
                print(f"probe fleet setup failed: {setup.stderr}", file=sys.stderr)
                return 1
            print(f"nats-server cluster of 3 nodes on loopback ({subprocess.run([nats_server_path(), '--version'], capture_output=True, text=True).stdout.strip()}), stream PROBE_EVENTS, 3 replicas, work-queue retention")
            ok, _ = throughput(work, cluster.urls, arguments.events)
            ok = latency(work, cluster.urls, arguments.rate, arguments.latency_seconds) and ok
        finally:
            cluster.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
