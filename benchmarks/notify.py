"""Notification sinks: delivery latency to local receivers, and what notifying costs `probe replay`.

Run from the repository root:

    .venv/bin/python benchmarks/notify.py [--quick]

It measures, in one run:

(a) **Latency.** Detections are made through the probe's own notifier (`open_notifier`, one sink,
    the outbox's spool and its delivery process) at a steady 1,000 events/s for `--seconds` (10 s;
    `--quick`: 3 s), in batches of 10 every 10 ms. Each notification's latency is taken from the
    sink's statistics: from its creation (when the outbox spools it) to its acknowledgement by the
    sink (a 200 answer for the webhook; the completed write for syslog over TCP, which
    acknowledges nothing more). The webhook (HTTP/1.1, kept alive) and the syslog TCP receiver
    (octet-counted frames) run in a separate process at the lowest CPU priority (they stand for
    receivers on other hosts), and are measured in separate runs, one sink each. The outbox is then drained and p50, p99
    and max are reported with the count delivered, which must equal the count made.
(b) **Cost.** `probe replay` of the seeded mixed capture of `mixed_capture.py` (600,000 packets,
    generated once under `--out` and reused; one event per 500 packets, far denser than a mirror
    port's) runs alternately without sinks and with a webhook sink (authority = true) to the same
    local receiver, `--runs` pairs (9; `--quick`: 3), the order flipped at every pair. The
    figures are the probe's own (its stderr summary, over the packet loop, before the final wait
    for the sinks): packets per second of wall clock, and packets per second of CPU of the probe's
    own process. The goal is judged on the latter, the median of the per-pair ratios (each pair
    ran back to back, so a shared machine's drift between pairs cancels out): what notifying adds
    to the matching process's work. The delivery process and the receiver run beside it; on a
    host with a core for each, that is the throughput lost. On this 2-vCPU machine they share the
    second vCPU with everything else, and the wall-clock ratios, also printed, show what that
    contention costs here. The capture's packets are from
    November 2023, so the replays judge retention with `--now` set shortly after the capture's
    last packet: by the wall clock every event would be past its retention and none notified.

Goals (issue 6): p99 <= 1 s to a healthy receiver; replay throughput reduced by less than 5 %.
They are printed beside the figures for information; the exit code is 1 only when a check fails
(a notification made but not delivered, a probe run that failed, a replay that notified nothing).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import multiprocessing
import os
import platform
import re
import shutil
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from replay_throughput import cpu_model, find_probe, prepare_capture  # noqa: E402

from probe.clock import Clock  # noqa: E402
from probe.config import parse_config  # noqa: E402
from probe.decode.packet import address_key  # noqa: E402
from probe.match.markers import Marker  # noqa: E402
from probe.notify.notifier import open_notifier  # noqa: E402
from probe.notify.delivery import LATENCY_SAMPLES  # noqa: E402
from probe.record.events import Event  # noqa: E402

RATE = 1_000
BATCH = 10
GOAL_P99_SECONDS = 1.0
GOAL_SLOWDOWN = 0.05
DRAIN_TIMEOUT = 120.0
SUMMARY_ELAPSED = re.compile(r"^probe: elapsed: ([0-9.]+) s\s+\(([0-9,]+) packets/s", re.MULTILINE)
SUMMARY_CPU = re.compile(r"^probe: elapsed: .*; ([0-9.]+) s of CPU in this process\)", re.MULTILINE)
SUMMARY_PACKETS = re.compile(r"^probe: packets: ([0-9]+)", re.MULTILINE)
SUMMARY_NOTIFICATIONS = re.compile(r"^probe: notifications: (\d+) spooled(.*)$", re.MULTILINE)
SUMMARY_SINK = re.compile(r"^probe: sink (\S+) \(.*\): (\d+) delivered, (\d+) filtered out, (\d+) waiting in the spool", re.MULTILINE)
SUMMARY_EVENTS = re.compile(r"^probe: events: (\d+)", re.MULTILINE)


# --- the receivers (a separate process) ---------------------------------------------------------


def receivers_main(control) -> None:
    """A webhook (HTTP/1.1 keep-alive, 200 to every POST) and a syslog TCP listener (octet-counted
    frames), on loopback ports of their own; counts what they received, answers `counts`,
    `reset` and `stop` on the control pipe. At the lowest CPU priority: it stands for receivers on
    other hosts, and must not take the probe's cores when both want them."""
    os.nice(19)
    lock = threading.Lock()
    counts = {"webhook": 0, "webhook_keys": set(), "syslog": 0, "syslog_bad": 0}

    class Webhook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            key = self.headers.get("Idempotency-Key")
            with lock:
                counts["webhook"] += 1
                counts["webhook_keys"].add(key)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *arguments: object) -> None:
            pass

    class Syslog(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            stream = self.rfile
            while True:
                digits = b""
                while True:
                    character = stream.read(1)
                    if not character:
                        return
                    if character == b" ":
                        break
                    digits += character
                if not digits.isdigit():
                    with lock:
                        counts["syslog_bad"] += 1
                    return
                length = int(digits)
                message = stream.read(length)
                if len(message) < length:
                    return
                with lock:
                    counts["syslog"] += 1

    class SyslogServer(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    ThreadingHTTPServer.daemon_threads = True
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    syslog = SyslogServer(("127.0.0.1", 0), Syslog)
    for server in (webhook, syslog):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    control.send((webhook.server_address[1], syslog.server_address[1]))
    while True:
        try:
            command = control.recv()
        except EOFError:
            break
        if command == "counts":
            with lock:
                control.send({"webhook": counts["webhook"], "webhook_keys": len(counts["webhook_keys"]), "syslog": counts["syslog"], "syslog_bad": counts["syslog_bad"]})
        elif command == "reset":
            with lock:
                counts.update(webhook=0, webhook_keys=set(), syslog=0, syslog_bad=0)
            control.send("ok")
        else:
            break
    webhook.shutdown()
    syslog.shutdown()


class Receivers:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.control, child = context.Pipe()
        self.process = context.Process(target=receivers_main, args=(child,), name="notify-receivers", daemon=True)
        self.process.start()
        if not self.control.poll(60):
            raise RuntimeError("the receivers process did not start")
        self.webhook_port, self.syslog_port = self.control.recv()

    def counts(self) -> dict[str, int]:
        self.control.send("counts")
        return self.control.recv()

    def reset(self) -> None:
        self.control.send("reset")
        self.control.recv()

    def stop(self) -> None:
        try:
            self.control.send("stop")
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def sink_section(kind: str, receivers: Receivers) -> dict:
    if kind == "webhook":
        return {"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{receivers.webhook_port}/notify", "authority": True}
    return {"name": "syslog", "type": "syslog", "transport": "tcp", "address": f"127.0.0.1:{receivers.syslog_port}"}


# --- (a) latency ------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank of sorted `values`."""
    return values[max(0, math.ceil(fraction * len(values)) - 1)]


@dataclass
class Latency:
    sink: str
    made: int = 0
    delivered: int = 0
    received: int = 0
    samples: list[float] = field(default_factory=list)
    achieved_rate: float = 0.0
    behind_max: float = 0.0
    """Largest lag of a batch behind its slot in the schedule (seconds)."""
    call_mean: float = 0.0
    call_p99: float = 0.0
    """Seconds a `detected` call takes (document, spool append, wake-up): the probe's own cost."""
    drain: float = 0.0
    undelivered: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def quantiles(self) -> tuple[float, float, float] | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return percentile(ordered, 0.50), percentile(ordered, 0.99), ordered[-1]


def make_events(count: int) -> list[Event]:
    """`count` first detections of distinct flows (client address and port), 1 ms of capture time
    apart, their last packet now (so well within retention)."""
    marker = Marker("bench-notify", "ipv4", "198.51.100.7", "benchmark", 1, severity="high")
    server = address_key("198.51.100.7")
    now = time.time_ns()
    first = now - count * 1_000_000
    events = []
    for number in range(count):
        client = address_key(str(ipaddress.IPv4Address(0x0A000000 + number // 50_000 + 1)))
        timestamp = first + number * 1_000_000
        events.append(Event(0, timestamp, 6, client, 10_000 + number % 50_000, server, 443, True, "ip.dst", marker, [], timestamp, timestamp, now, 1, 571, 1))
    return events


def measure_latency(kind: str, receivers: Receivers, seconds: float, spool_root: Path) -> Latency:
    result = Latency("webhook" if kind == "webhook" else "syslog tcp")
    total = int(seconds * RATE)
    events = make_events(total)
    spool = tempfile.mkdtemp(prefix=f"spool-{kind}-", dir=spool_root)
    config = parse_config({
        "probe": {"name": "bench-notify"},
        "sinks": [sink_section(kind, receivers)],
        "notify": {"spool_directory": spool, "marker_rate": 100_000.0, "marker_burst": 1_000_000},
    })
    receivers.reset()
    notifier = open_notifier(config, Clock())
    assert notifier is not None
    outbox = notifier.outbox
    calls: list[float] = []
    try:
        interval = BATCH / RATE
        started = time.perf_counter()
        for index in range(0, total, BATCH):
            slot = started + (index // BATCH) * interval
            wait = slot - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                result.behind_max = max(result.behind_max, -wait)
            for event in events[index : index + BATCH]:
                before = time.perf_counter()
                notifier.detected(event)
                calls.append(time.perf_counter() - before)
        result.achieved_rate = total / (time.perf_counter() - started) if total else 0.0
        drain_started = time.perf_counter()
        result.undelivered = outbox.drain(DRAIN_TIMEOUT)
        result.drain = time.perf_counter() - drain_started
    finally:
        outbox.close()
        shutil.rmtree(spool, ignore_errors=True)
    (sink_statistics,) = outbox.statistics.values()
    result.made = notifier.made
    result.delivered = sink_statistics.delivered
    result.samples = list(sink_statistics.latencies)
    counts = receivers.counts()
    result.received = counts["webhook_keys"] if kind == "webhook" else counts["syslog"]
    if calls:
        ordered = sorted(calls)
        result.call_mean = statistics.fmean(calls)
        result.call_p99 = percentile(ordered, 0.99)
    if notifier.made != total:
        result.problems.append(f"{total - notifier.made} of {total} detections not spooled (suppressed {notifier.suppressed}, past retention {notifier.expired_on_arrival}, dropped {outbox.dropped})")
    if result.delivered != result.made:
        result.problems.append(f"{result.delivered} delivered of {result.made} made" + (f"; still pending after {DRAIN_TIMEOUT:.0f} s: {result.undelivered}" if result.undelivered else ""))
    if result.received != result.made:
        result.problems.append(f"the receiver got {result.received} distinct notifications of {result.made} made")
    if kind == "webhook" and counts["webhook"] != counts["webhook_keys"]:
        print(f"  note: the webhook received {counts['webhook'] - counts['webhook_keys']} duplicate deliveries (same Idempotency-Key)")
    if counts["syslog_bad"]:
        result.problems.append(f"the syslog receiver read {counts['syslog_bad']} badly framed message(s)")
    if sink_statistics.failures:
        result.problems.append(f"{sink_statistics.failures} failed delivery attempts to a healthy receiver")
    if len(result.samples) < min(result.delivered, LATENCY_SAMPLES):
        result.problems.append(f"{len(result.samples)} latency samples for {result.delivered} deliveries")
    return result


def print_latency(result: Latency, seconds: float) -> None:
    print(f"(a) {result.sink}: {result.made:,} detections over {seconds:g} s at {result.achieved_rate:,.0f}/s "
          f"(schedule {RATE:,}/s; largest lag behind it {result.behind_max * 1e3:.1f} ms)")
    quantiles = result.quantiles()
    if quantiles:
        p50, p99, worst = quantiles
        note = f" (the last {len(result.samples):,}: the sink keeps {LATENCY_SAMPLES:,} samples)" if result.delivered > len(result.samples) else ""
        print(f"    latency created -> acknowledged: p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  max {worst * 1e3:.2f} ms  over {len(result.samples):,} notifications{note}")
    print(f"    delivered {result.delivered:,} of {result.made:,} made, received {result.received:,}; drain after the last detection {result.drain * 1e3:.0f} ms")
    print(f"    `detected` call in this process: mean {result.call_mean * 1e6:.0f} us, p99 {result.call_p99 * 1e6:.0f} us")
    for problem in result.problems:
        print(f"    FAIL: {problem}")


# --- (b) replay cost -------------------------------------------------------------------------


@dataclass
class Replay:
    sinks: bool
    wall: float
    exit_code: int
    stderr: str
    rate: float | None = None
    cpu_rate: float | None = None
    """Packets per second of CPU of the probe's own process (its delivery process apart)."""
    notifications: int | None = None
    delivered: int | None = None
    waiting: int | None = None
    received: int | None = None
    events: int | None = None
    suppressed: str = ""


def capture_end(path: Path) -> int:
    """Seconds (epoch) of the last packet of a classic little-endian microsecond pcap."""
    last = 0
    with open(path, "rb") as stream:
        stream.seek(24)
        while True:
            header = stream.read(16)
            if len(header) < 16:
                return last
            seconds, _, caplen, _ = struct.unpack("<IIII", header)
            last = max(last, seconds)
            stream.seek(caplen, os.SEEK_CUR)


def run_replay(probe: str, capture: Path, markers: Path, config: Path, now_text: str, sinks: bool, receivers: Receivers) -> Replay:
    command = [probe, "replay", str(capture), "--markers", str(markers), "--events", "/dev/null", "--config", str(config), "--now", now_text]
    receivers.reset()
    started = time.perf_counter()
    process = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = Replay(sinks, time.perf_counter() - started, process.returncode, process.stderr)
    if (match := SUMMARY_ELAPSED.search(run.stderr)) is not None:
        run.rate = float(match.group(2).replace(",", ""))
    if (cpu := SUMMARY_CPU.search(run.stderr)) is not None and (packets := SUMMARY_PACKETS.search(run.stderr)) is not None and float(cpu.group(1)):
        run.cpu_rate = int(packets.group(1)) / float(cpu.group(1))
    if (match := SUMMARY_EVENTS.search(run.stderr)) is not None:
        run.events = int(match.group(1))
    if (match := SUMMARY_NOTIFICATIONS.search(run.stderr)) is not None:
        run.notifications = int(match.group(1))
        run.suppressed = match.group(2).strip(", ")
    if (match := SUMMARY_SINK.search(run.stderr)) is not None:
        run.delivered, run.waiting = int(match.group(2)), int(match.group(4))
    if sinks:
        run.received = receivers.counts()["webhook_keys"]
    return run


def replay_problems(run: Replay) -> list[str]:
    problems = []
    if run.exit_code != 0:
        tail = " | ".join(run.stderr.strip().splitlines()[-3:])
        problems.append(f"probe replay exited with {run.exit_code}: {tail}")
    if run.rate is None:
        problems.append("no `probe: elapsed:` line in the probe's summary")
    if run.sinks:
        if not run.notifications:
            problems.append(f"no notification made ({run.notifications!r} spooled): the run measures nothing")
        elif run.delivered != run.notifications or run.waiting or run.received != run.notifications:
            problems.append(f"{run.notifications} notifications spooled, {run.delivered} delivered, {run.waiting} left waiting, {run.received} received")
    elif run.notifications is not None:
        problems.append("notifications made by a run without sinks")
    return problems


def measure_replay(args: argparse.Namespace, out: Path, receivers: Receivers) -> tuple[list[Replay], dict, list[str]]:
    expected = prepare_capture(out, args.packets, args.seed, args.regenerate)
    capture, markers = out / "mixed.pcap", out / "markers.json"
    last = capture_end(capture)
    now_text = datetime.fromtimestamp(last + 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"capture: {expected['packets']:,} packets, {expected['events']:,} expected events, last packet at "
          f"{datetime.fromtimestamp(last, timezone.utc):%Y-%m-%dT%H:%M:%SZ}; replays judge retention with --now {now_text}")
    probe = find_probe(args.probe)
    work = Path(tempfile.mkdtemp(prefix="replay-", dir=out))
    plain = work / "without-sinks.toml"
    plain.write_text('[probe]\nname = "bench-notify"\n')
    runs: list[Replay] = []
    problems: list[str] = []
    try:
        for pair in range(args.runs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for sinks in order:
                config = plain
                if sinks:
                    spool = work / f"spool-{pair}"
                    config = work / f"with-webhook-{pair}.toml"
                    config.write_text(
                        '[probe]\nname = "bench-notify"\n\n'
                        f'[notify]\nspool_directory = "{spool}"\ndrain_timeout = 30.0\n\n'
                        f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:{receivers.webhook_port}/notify"\nauthority = true\n'
                    )
                run = run_replay(probe, capture, markers, config, now_text, sinks, receivers)
                runs.append(run)
                label = "with webhook" if sinks else "without sinks"
                rate = f"{run.rate:>12,.0f} packets/s" if run.rate is not None else f"{'-':>12} packets/s"
                rate += f" {run.cpu_rate:>12,.0f} per CPU second" if run.cpu_rate is not None else ""
                extra = ""
                if sinks:
                    extra = f"  notifications: {run.notifications} spooled, {run.delivered} delivered, {run.received} received"
                    if run.notifications and run.rate:
                        extra += f" ({run.notifications / (expected['packets'] / run.rate):,.0f}/s of packet loop)"
                    if run.suppressed:
                        extra += f" ({run.suppressed})"
                print(f"  pair {pair + 1} {label:<14}{rate}  whole process {run.wall:5.2f} s  events {run.events}{extra}", flush=True)
                for problem in replay_problems(run):
                    problems.append(f"pair {pair + 1} {label}: {problem}")
                    print(f"    FAIL: {problem}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs, expected, problems


# --- the report ------------------------------------------------------------------------------


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def machine_line() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{platform.platform()}, {cpus} CPUs ({cpu_model()}), load average {load}, Python {platform.python_version()}"


def slower_text(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f} ({abs(1 - ratio) * 100:.1f} % {'slower' if ratio <= 1 else 'faster'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s of detections per sink and 2 replay pairs")
    parser.add_argument("--seconds", type=float, help="seconds of detections at 1,000/s per sink (default: 10; --quick: 3)")
    parser.add_argument("--runs", type=int, help="replay pairs, without and with sinks (default: 9; --quick: 3)")
    parser.add_argument("--packets", type=int, default=600_000, help="packets of the replayed capture (default: 600,000)")
    parser.add_argument("--seed", type=int, default=7, help="capture generator seed (default: 7)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "out" / "notify", help="directory of the capture and the spools (default: benchmarks/out/notify)")
    parser.add_argument("--regenerate", action="store_true", help="generate the capture even if a matching one exists")
    parser.add_argument("--probe", metavar="PATH", help="probe executable (default: `probe` next to the Python interpreter, else on PATH)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    args.runs = max(1, args.runs if args.runs is not None else (3 if args.quick else 9))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    print(f"machine: {machine_line()}")
    print(f"started: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; spools under {out}")
    receivers = Receivers()
    print(f"receivers (separate process, pid {receivers.process.pid}): webhook http://127.0.0.1:{receivers.webhook_port}/notify, syslog tcp 127.0.0.1:{receivers.syslog_port}\n")
    failed = False
    try:
        latencies = []
        for kind in ("webhook", "syslog"):
            result = measure_latency(kind, receivers, seconds, out)
            print_latency(result, seconds)
            latencies.append(result)
            failed |= not result.ok
        print(f"\n(b) probe replay, {args.runs} pairs without / with a webhook sink (authority), order flipped at every pair:", flush=True)
        runs, expected, problems = measure_replay(args, out, receivers)
        failed |= bool(problems)
    finally:
        receivers.stop()

    plain = [run.rate for run in runs if not run.sinks and run.rate is not None]
    sinked = [run.rate for run in runs if run.sinks and run.rate is not None]
    plain_median = statistics.median(plain) if plain else None
    sinked_median = statistics.median(sinked) if sinked else None
    ratio = sinked_median / plain_median if plain_median and sinked_median else None
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    pair_ratios, cpu_ratios = [], []
    for first, second in pairs:
        with_run, without_run = (first, second) if first.sinks else (second, first)
        if with_run.rate and without_run.rate:
            pair_ratios.append(with_run.rate / without_run.rate)
        if with_run.cpu_rate and without_run.cpu_rate:
            cpu_ratios.append(with_run.cpu_rate / without_run.cpu_rate)
    notified = [run.notifications for run in runs if run.sinks and run.notifications is not None]

    print(f"\nresults ({datetime.now(timezone.utc):%Y-%m-%d}; {machine_line()}):")
    print(f"  {'figure':<52}{'value':<40}{'goal':<24}verdict")
    for result in latencies:
        quantiles = result.quantiles()
        if quantiles:
            p50, p99, worst = quantiles
            value = f"p50 {p50 * 1e3:.1f} / p99 {p99 * 1e3:.1f} / max {worst * 1e3:.1f} ms"
            passed = p99 <= GOAL_P99_SECONDS
        else:
            value, passed = "no samples", None
        print(f"  {f'(a) {result.sink} latency at {RATE:,}/s':<52}{value:<40}{f'p99 <= {GOAL_P99_SECONDS:g} s':<24}{verdict(passed)}")
        print(f"  {f'(a) {result.sink} delivered / made':<52}{f'{result.delivered:,} / {result.made:,}':<40}{'all':<24}{verdict(result.ok)}")
    print(f"  {'(b) replay without sinks, median packets/s':<52}{(f'{plain_median:,.0f} ({len(plain)} runs)' if plain_median else '-'):<40}")
    print(f"  {'(b) replay with webhook sink, median packets/s':<52}{(f'{sinked_median:,.0f} ({len(sinked)} runs)' if sinked_median else '-'):<40}")
    print(f"  {'(b) wall clock: ratio of the medians':<52}{(f'{ratio:.3f}' if ratio is not None else '-'):<40}")
    if pair_ratios:
        print(f"  {'(b) wall clock: median of the per-pair ratios':<52}{slower_text(statistics.median(pair_ratios)):<40}")
        print(f"  {'(b) wall clock: per-pair ratios':<52}{', '.join(f'{value:.3f}' for value in pair_ratios)}")
    paired = statistics.median(cpu_ratios) if cpu_ratios else None
    print(f"  {'(b) matching process CPU: median per-pair ratio':<52}{slower_text(paired):<40}{f'< {GOAL_SLOWDOWN * 100:.0f} % slower':<24}{verdict(None if paired is None else 1 - paired < GOAL_SLOWDOWN)}")
    if cpu_ratios:
        print(f"  {'(b) matching process CPU: per-pair ratios':<52}{', '.join(f'{value:.3f}' for value in cpu_ratios)}")
    if notified:
        print(f"  {'(b) notifications per replay (spooled = delivered)':<52}{f'{min(notified):,}' + (f'-{max(notified):,}' if max(notified) != min(notified) else ''):<40}{'> 0':<24}{verdict(min(notified) > 0)}")
    print(f"  capture: {expected['packets']:,} packets, {expected['events']:,} events; packets/s is the probe's own figure (packet loop, final drain excluded)")
    print("  goals are informative; the exit code is 1 only when a check above failed")
    if failed:
        print("FAIL: see the FAIL lines above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
