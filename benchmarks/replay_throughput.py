"""Throughput benchmark of `probe replay` on a large mixed capture, with tcpdump and tshark baselines.

Run from the repository root:

    .venv/bin/python benchmarks/replay_throughput.py [--packets N] [--out DIR] [--seed S] [--runs N] [--warmup N]
                                                     [--skip-baselines] [--regenerate]

The capture, the two marker bundles and the expected events come from `mixed_capture.generate` and
are reused between runs while their packet count, seed and generator version are unchanged. The
probe replays the capture with `markers.json` (the replay issue's types: ipv4, cidr, domain) and
with `markers-all.json` (those and every other type), alternately, `--runs` pairs, so that the
ratio of the two is taken in the same run under the same load. Every figure is the wall-clock time
of a whole process (start-up and marker loading included), measured in the same run so that the
ratios are comparable even on a shared machine. See benchmarks/README.md.

The exit code reflects only the event checks (0: the events of every run as expected, 1: they
differ or the probe failed); the throughput and memory targets are printed as information.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from mixed_capture import GENERATOR_VERSION, PCAP_HEADER  # noqa: E402

BASELINE_ADDRESSES = 1_000
DEFAULT_TIMEOUT = 900.0
# The replay issue: its marker types only (markers.json).
TARGET_PACKETS_PER_SECOND = 500_000
TARGET_TCPDUMP_RATIO = 10.0
TARGET_PEAK_MB = 300.0
# The marker-types issue: every marker type active (markers-all.json), single process.
TARGET_ALL_SHARE = 0.60  # of the packets/s with the replay issue's types, same run
TARGET_ALL_PACKETS_PER_SECOND = 300_000
TARGET_ALL_PEAK_MB = 500.0


@dataclass(frozen=True)
class Variant:
    """One of the two marker sets the probe replays the capture with."""

    label: str
    markers: str  # bundle file name in the output directory
    expected_key: str  # its counts by marker id in expected.json
    events: str  # events file name


OLD = Variant("old types (ipv4, cidr, domain)", "markers.json", "events_by_marker", "events-old.jsonl")
ALL = Variant("every type", "markers-all.json", "events_by_marker_all", "events-all.jsonl")


@dataclass
class Run:
    """One child process: its wall time, peak resident memory and what it said on stderr."""

    command: list[str]
    wall: float
    cpu: float  # user + system seconds of the process alone: what other load on the host moves least
    maxrss_kib: int
    exit_code: int | None  # None when it was killed at the timeout
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.exit_code == 0

    @property
    def peak_mb(self) -> float:
        return self.maxrss_kib * 1024 / 1e6  # ru_maxrss is in KiB on Linux

    def failure(self) -> str:
        if self.timed_out:
            return f"timed out after {self.wall:.0f} s"
        tail = " | ".join(self.stderr.strip().splitlines()[-3:])
        return f"exit code {self.exit_code}" + (f": {tail}" if tail else "")


def _force_fork() -> None:
    """A preexec_fn, which makes subprocess fork instead of vfork or posix_spawn.

    On exec, Linux keeps in the new program's ru_maxrss the peak RSS of the address space it
    replaces. After a vfork that address space is this script's, so every child would report at
    least this script's own peak; after a fork it is a copy holding only this script's current
    anonymous memory (~10 MB). `measurement_floor` prints what remains.
    """


def run_measured(command: list[str], timeout: float, stdout=subprocess.DEVNULL) -> Run:
    """Run `command`, timing it with perf_counter and reaping it with os.wait4 for its own rusage.

    stderr goes to a temporary file (no pipe to drain while waiting); a timer kills the child at the
    timeout, after which wait4 returns at once.
    """
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=errors, preexec_fn=_force_fork)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            while True:
                try:
                    _, status, usage = os.wait4(process.pid, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        errors.seek(0)
        text = errors.read().decode("utf-8", "replace")
    timed_out = killed.is_set()
    return Run(command, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, None if timed_out else process.returncode, text, timed_out)


def measurement_floor() -> float:
    """Peak RSS (MB) reported for a trivial program spawned the same way: below it, figures mean nothing."""
    true = shutil.which("true")
    return run_measured([true] if true else [sys.executable, "-c", ""], 30).peak_mb


# --- the capture -------------------------------------------------------------------------------


def prepare_capture(out: Path, packets: int, seed: int, regenerate: bool) -> dict:
    stamp_path = out / "stamp.json"
    stamp = {"packets": packets, "seed": seed, "generator": GENERATOR_VERSION}
    files = [out / "mixed.pcap", out / "markers.json", out / "markers-all.json", out / "expected.json"]
    if not regenerate and all(path.exists() for path in files) and stamp_path.exists():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                expected = json.loads((out / "expected.json").read_text())
                print(f"capture: reusing {out / 'mixed.pcap'} ({expected['packets']:,} packets, seed {seed})")
                return expected
        except (ValueError, KeyError):
            pass
    print(f"capture: generating {packets:,} packets with seed {seed} into {out} ...", flush=True)
    stamp_path.unlink(missing_ok=True)  # a generation cut short must not be reused
    started = time.perf_counter()
    # In a child process: the generator holds every flow in memory (~550 MB for a million packets),
    # which this script must not keep while it spawns the processes whose memory it measures.
    code = "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); from mixed_capture import generate; generate(Path(sys.argv[2]), packets=int(sys.argv[3]), seed=int(sys.argv[4]))"
    subprocess.run([sys.executable, "-c", code, str(BENCHMARKS), str(out), str(packets), str(seed)], check=True)
    expected = json.loads((out / "expected.json").read_text())
    stamp_path.write_text(json.dumps(stamp) + "\n")
    print(f"capture: generated in {time.perf_counter() - started:.1f} s")
    return expected


# --- the probe ---------------------------------------------------------------------------------


def find_probe(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "probe"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("probe")
    if found:
        return found
    sys.exit("replay_throughput: no `probe` executable next to the Python interpreter nor on PATH (give --probe)")


def check_events(events_path: Path, wanted: dict[str, int]) -> tuple[int, list[str]]:
    """Count events per marker id and compare with the generator's counts; return (found, differences)."""
    found: Counter[str] = Counter()
    differences = []
    with open(events_path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                found[json.loads(line)["marker"]["id"]] += 1
            except (ValueError, KeyError, TypeError) as error:
                differences.append(f"line {number}: not an event with marker.id ({error!r})")
    for marker in sorted(set(wanted) | set(found)):
        if found.get(marker, 0) != wanted.get(marker, 0):
            differences.append(f"{marker}: {found.get(marker, 0)} found, {wanted.get(marker, 0)} expected")
    return sum(found.values()), differences


def summary_packets(stderr: str) -> int | None:
    """The packet count from the probe's summary line `probe: packets: N  bytes: M`, if present."""
    for line in stderr.splitlines():
        if line.startswith("probe: packets:"):
            try:
                return int(line.split()[2])
            except (IndexError, ValueError):
                return None
    return None


def summary_loop_rate(stderr: str) -> float | None:
    """Packets/s over the probe's packet loop, from `probe: elapsed: S s  (N packets/s, ...)`."""
    for line in stderr.splitlines():
        if line.startswith("probe: elapsed:") and "(" in line:
            try:
                return float(line.split("(", 1)[1].split()[0].replace(",", ""))
            except (IndexError, ValueError):
                return None
    return None


@dataclass
class Measured:
    """The runs of one variant and their event checks."""

    variant: Variant
    runs: list[Run]
    checks: list[tuple[int, list[str]] | None]  # per run: (events found, differences); None: no events file

    def ok_runs(self) -> list[Run]:
        return [run for run in self.runs if run.ok]

    def median_run(self) -> Run:
        """The first failed run if any, else the run of median wall time."""
        return next((run for run in self.runs if not run.ok), sorted(self.runs, key=lambda run: run.wall)[len(self.runs) // 2])

    def median(self, values: list[float]) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def rate(self, packets: int) -> float | None:
        """Packets/s of the median wall time, None if a run failed."""
        if len(self.ok_runs()) != len(self.runs):
            return None
        return packets / self.median([run.wall for run in self.runs])  # type: ignore[operator]

    def loop_rate(self) -> float | None:
        return self.median([rate for rate in (summary_loop_rate(run.stderr) for run in self.ok_runs()) if rate is not None])

    def median_peak(self) -> float | None:
        return self.median([run.peak_mb for run in self.runs])

    def largest_peak(self) -> float:
        return max(run.peak_mb for run in self.runs)

    def events(self) -> int | None:
        found = [check[0] for check in self.checks if check is not None]
        return found[-1] if found else None

    def passed(self) -> bool:
        return all(run.ok for run in self.runs) and all(check is not None and not check[1] for check in self.checks)


def run_variant(probe: str, out: Path, variant: Variant, timeout: float) -> tuple[Run, tuple[int, list[str]] | None]:
    """One replay with the variant's bundle, then the check of its events against expected.json."""
    events_path = out / variant.events
    events_path.unlink(missing_ok=True)
    command = [probe, "replay", str(out / "mixed.pcap"), "--markers", str(out / variant.markers), "--events", str(events_path)]
    run = run_measured(command, timeout)
    if not events_path.exists() or run.timed_out:
        return run, None
    expected = json.loads((out / "expected.json").read_text())[variant.expected_key]
    return run, check_events(events_path, expected)


def report_variant(measured: Measured, expected: dict, packets: int) -> None:
    """The variant's wall times, the median run's summary, and its event checks."""
    variant = measured.variant
    runs = measured.runs
    print(f"\n{variant.label} ({variant.markers}): wall times {', '.join(f'{run.wall:.2f} s' for run in runs)}; "
          f"peak RSS {', '.join(f'{run.peak_mb:.0f}' for run in runs)} MB; the median run's summary:")
    chosen = measured.median_run()
    print(chosen.stderr.rstrip() or "(nothing on stderr)")
    for number, run in enumerate(runs, 1):
        if not run.ok:
            print(f"probe run {number}: FAILED ({run.failure()})")
            if "Traceback" in run.stderr and run is not chosen:
                print(run.stderr[run.stderr.index("Traceback"):].rstrip())
    counted = summary_packets(chosen.stderr)
    if counted is not None and counted != packets:
        print(f"note: the probe's summary counts {counted:,} packets, the capture holds {packets:,}")
    total = expected["events" if variant is OLD else "events_all"]
    failing = [(number, check) for number, check in enumerate(measured.checks, 1) if check is None or check[1]]
    if not failing:
        found = measured.events()
        print(f"events: {found} found, {total} expected, check OK (every one of {len(runs)} runs)")
        return
    for number, check in failing:
        if check is None:
            print(f"events of run {number}: no events file, check FAILED")
            continue
        found, differences = check
        print(f"events of run {number}: {found} found, {total} expected, check FAILED ({len(differences)} difference(s)):")
        for line in differences[:10]:
            print(f"  {line}")
        if len(differences) > 10:
            print(f"  ... and {len(differences) - 10} more")


# --- the baselines -----------------------------------------------------------------------------


def baseline_addresses(markers_path: Path) -> list[str]:
    bundle = json.loads(markers_path.read_text())
    addresses = [marker["value"] for marker in bundle["markers"] if marker.get("type") == "ipv4"]
    return addresses[:BASELINE_ADDRESSES]


def run_tcpdump(out: Path, addresses: list[str], timeout: float) -> tuple[Run, Run] | str:
    """tcpdump -O with a `host A or host B ...` filter, on the capture and on an empty capture."""
    tcpdump = shutil.which("tcpdump")
    if not tcpdump:
        return "tcpdump not found"
    filter_path = out / "tcpdump-filter.txt"
    filter_path.write_text(" or ".join(f"host {address}" for address in addresses) + "\n")
    empty = out / "header-only.pcap"
    empty.write_bytes(PCAP_HEADER)  # 24 bytes: tcpdump compiles the filter, then reads no packet
    base = [tcpdump, "-O", "-n", "-w", "/dev/null", "-F", str(filter_path), "-r"]
    compile_only = run_measured(base + [str(empty)], timeout)
    if not compile_only.ok:
        return f"tcpdump on the header-only capture: {compile_only.failure()}"
    whole = run_measured(base + [str(out / "mixed.pcap")], timeout)
    return whole, compile_only


def tshark_set(tshark: str, addresses: list[str], empty: Path) -> str:
    """`{A, B, C}` for Wireshark >= 4.0 (commas are required), `{A B C}` for older versions."""
    for separator in (", ", " "):
        expression = "ip.addr in {" + separator.join(addresses[:2]) + "}"
        check = subprocess.run([tshark, "-n", "-r", str(empty), "-Y", expression], capture_output=True, timeout=120)
        if check.returncode == 0:
            return "ip.addr in {" + separator.join(addresses) + "}"
    return "ip.addr in {" + ", ".join(addresses) + "}"


def run_tshark(out: Path, addresses: list[str], timeout: float) -> Run | str:
    tshark = shutil.which("tshark")
    if not tshark:
        return "tshark not found"
    empty = out / "header-only.pcap"
    empty.write_bytes(PCAP_HEADER)
    expression = tshark_set(tshark, addresses, empty)
    return run_measured([tshark, "-n", "-r", str(out / "mixed.pcap"), "-Y", expression], timeout)


# --- the report --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    text = (result.stdout + result.stderr).strip().splitlines()
    return next((line for line in text if "version" in line.lower() or line.startswith("TShark")), text[0] if text else "?")


def print_machine() -> None:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    print("machine:")
    print(f"  nproc: {cpus}   CPU: {cpu_model()}   load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  python: {platform.python_version()} ({sys.executable})")
    print(f"  tcpdump: {tool_version(['tcpdump', '--version'])}   tshark: {tool_version(['tshark', '--version'])}")


def rate_text(value: float | None) -> str:
    return f"{value:>14,.0f}" if value is not None else f"{'-':>14}"


def ratio_text(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a is not None and b else "n/a"


def share_text(a: float | None, b: float | None) -> str:
    return f"{a / b:.1%}" if a is not None and b else "n/a"


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets to generate (default: 1,000,000)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "out", help="directory of the capture, markers and events (default: benchmarks/out)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default: 7)")
    parser.add_argument("--skip-baselines", action="store_true", help="do not run tcpdump and tshark")
    parser.add_argument("--regenerate", action="store_true", help="generate the capture even if a matching one exists")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds allowed to each process (default: {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--runs", type=int, default=3, help="pairs of probe runs (old types, every type), alternated; medians are reported (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="pairs run first and not counted: the first run of a series meets cold caches (default: 1)")
    parser.add_argument("--probe", metavar="PATH", help="probe executable (default: `probe` next to the Python interpreter, else on PATH)")
    args = parser.parse_args()

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print_machine()
    expected = prepare_capture(out, args.packets, args.seed, args.regenerate)
    packets, wire_bytes = expected["packets"], expected["bytes"]
    print(f"capture: {packets:,} packets, {wire_bytes:,} bytes, {expected['flows']:,} flows ({', '.join(f'{kind} {count:,}' for kind, count in expected['flows_by_kind'].items())}), "
          f"{expected['events']:,} expected events with markers.json, {expected['events_all']:,} with markers-all.json")
    print(f"capture: packets by kind: {', '.join(f'{kind} {count:,}' for kind, count in expected['packets_by_kind'].items())}; "
          f"{', '.join(f'{key} {value:,}' for key, value in expected['traffic'].items())}")
    print(f"markers.json: {', '.join(f'{kind} {count:,}' for kind, count in expected['markers'].items())}")
    print(f"markers-all.json: {', '.join(f'{kind} {count:,}' for kind, count in expected['markers_all'].items())}")
    print(f"expected events by type with markers-all.json: {', '.join(f'{kind} {count:,}' for kind, count in expected['events_by_type_all'].items())}")

    # 1. The probe, alternately with each bundle: old, all, old, all...
    probe_path = find_probe(args.probe)
    floor = measurement_floor()
    pairs = max(1, args.runs)
    for variant in (OLD, ALL):
        print(f"\n$ {probe_path} replay {out / 'mixed.pcap'} --markers {out / variant.markers} --events {out / variant.events}")
    print(f"  {pairs} pair(s), alternated: {', '.join(['old, all'] * pairs)}, after {args.warmup} warm-up pair(s) not counted", flush=True)
    for pair in range(max(0, args.warmup)):
        for variant in (OLD, ALL):
            run, _ = run_variant(probe_path, out, variant, args.timeout)
            print(f"  warm-up {pair + 1}, {variant.label}: {run.wall:.2f} s, {'ok' if run.ok else f'FAILED ({run.failure()})'} (not counted)", flush=True)
    measured = {variant: Measured(variant, [], []) for variant in (OLD, ALL)}
    for pair in range(pairs):
        for variant in (OLD, ALL):
            run, check = run_variant(probe_path, out, variant, args.timeout)
            measured[variant].runs.append(run)
            measured[variant].checks.append(check)
            state = "ok" if run.ok else f"FAILED ({run.failure()})"
            events = "no events file" if check is None else f"{check[0]} events{'' if not check[1] else f', {len(check[1])} difference(s)'}"
            print(f"  pair {pair + 1}, {variant.label}: {run.wall:.2f} s, peak RSS {run.peak_mb:.0f} MB, {events}, {state}", flush=True)
    for variant in (OLD, ALL):
        report_variant(measured[variant], expected, packets)
    failed = not all(measured[variant].passed() for variant in (OLD, ALL))
    old, every = measured[OLD], measured[ALL]

    # 2. The baselines.
    tcpdump_whole = tcpdump_net = tshark_rate = None
    notes = []
    if not args.skip_baselines:
        addresses = baseline_addresses(out / "markers.json")
        print(f"\nbaselines: {len(addresses)} ipv4 marker addresses, timeout {args.timeout:.0f} s each", flush=True)
        result = run_tcpdump(out, addresses, args.timeout)
        if isinstance(result, str):
            notes.append(f"tcpdump: {result}")
        else:
            whole, compile_only = result
            print(f"$ {' '.join(whole.command)}")
            print(f"  filter compile (header-only capture): {compile_only.wall:.2f} s, whole run: {whole.wall:.2f} s")
            if whole.ok:
                tcpdump_whole = packets / whole.wall
                if whole.wall > compile_only.wall:
                    tcpdump_net = packets / (whole.wall - compile_only.wall)
                else:
                    notes.append("tcpdump: the whole run took less than the compile alone; no net figure")
            else:
                notes.append(f"tcpdump: {whole.failure()}")
        result = run_tshark(out, addresses, args.timeout)
        if isinstance(result, str):
            notes.append(f"tshark: {result}")
        else:
            print(f"$ {' '.join(result.command[:5])} 'ip.addr in {{...{len(addresses)} addresses...}}' > /dev/null")
            print(f"  whole run: {result.wall:.2f} s, peak RSS {result.peak_mb:,.0f} MB")
            if result.ok:
                tshark_rate = packets / result.wall
            else:
                notes.append(f"tshark: {result.failure()}")

    # 3. The table.
    probe_rate, all_rate = old.rate(packets), every.rate(packets)
    print(f"\nresults (whole-process wall clock, same run; median of {pairs} run(s) per bundle, alternated):")
    print(f"  {'':34}{'packets/s':>14}{'Mbit/s':>10}{'peak RSS MB':>13}{'max RSS MB':>12}{'events':>9}{'wall s':>9}{'loop pkt/s':>12}")
    for label, item, rate in (("probe replay, old types", old, probe_rate), ("probe replay, every type", every, all_rate)):
        wall = item.median([run.wall for run in item.runs])
        mbit = f"{wire_bytes * 8 / wall / 1e6:,.1f}" if rate is not None and wall else "-"
        events = item.events()
        loop = item.loop_rate()
        print(f"  {label:34}{rate_text(rate)}{mbit:>10}{item.median_peak():>13,.1f}{item.largest_peak():>12,.1f}"
              f"{(events if events is not None else '-'):>9}{wall:>9.2f}{(f'{loop:,.0f}' if loop else '-'):>12}")
    pair_ratios = [a.wall / b.wall for a, b in zip(old.runs, every.runs) if a.ok and b.ok]
    print(f"  {'ratio every type / old types (medians)':<52}{share_text(all_rate, probe_rate):>8}"
          + (f"   per pair: {', '.join(f'{ratio:.1%}' for ratio in pair_ratios)}" if pair_ratios else ""))
    print(f"  {'ratio every type / old types (packet loop)':<52}{share_text(every.loop_rate(), old.loop_rate()):>8}")
    cpu_old = old.median([run.cpu for run in old.runs if run.ok])
    cpu_every = every.median([run.cpu for run in every.runs if run.ok])
    print(f"  {'ratio every type / old types (packets per CPU s)':<52}{share_text(cpu_old, cpu_every):>8}"
          + (f"   {cpu_old:.2f} s and {cpu_every:.2f} s of CPU" if cpu_old and cpu_every else ""))
    if not args.skip_baselines:
        print(f"  {'tcpdump -O (whole process)':34}{rate_text(tcpdump_whole)}")
        print(f"  {'tcpdump -O (excluding compile)':34}{rate_text(tcpdump_net)}")
        print(f"  {'tshark -Y (whole process)':34}{rate_text(tshark_rate)}")
        print(f"  {'ratio probe (old types) / tcpdump -O (whole)':<52}{ratio_text(probe_rate, tcpdump_whole):>8}")
        print(f"  {'ratio probe (old types) / tcpdump -O (excl. compile)':<52}{ratio_text(probe_rate, tcpdump_net):>8}")
        print(f"  {'ratio probe (old types) / tshark':<52}{ratio_text(probe_rate, tshark_rate):>8}")
    print("  note: peak RSS is ru_maxrss of the probe process alone (os.wait4), in MB of 10^6 bytes; a trivial")
    print(f"        program spawned the same way reports {floor:.1f} MB, the floor of this measurement")
    print("  note: loop pkt/s is the probe's own figure over its packet loop (start-up and marker loading excluded)")
    for note in notes:
        print(f"  note: {note}")

    print("\ntargets of the replay issue, old types (informative; the exit code reflects only the event checks):")
    print(f"  {f'>= {TARGET_PACKETS_PER_SECOND:,} packets/s':<46}{verdict(None if probe_rate is None else probe_rate >= TARGET_PACKETS_PER_SECOND):>8}")
    if not args.skip_baselines:
        for label, baseline in (("whole", tcpdump_whole), ("excluding compile", tcpdump_net)):
            passed = None if probe_rate is None or not baseline else probe_rate / baseline >= TARGET_TCPDUMP_RATIO
            print(f"  {f'>= {TARGET_TCPDUMP_RATIO:.0f}x tcpdump -O ({label})':<46}{verdict(passed):>8}")
    print(f"  {f'peak memory < {TARGET_PEAK_MB:.0f} MB (largest run)':<46}{verdict(old.largest_peak() < TARGET_PEAK_MB if all(run.ok for run in old.runs) else None):>8}")
    print("targets of the marker-types issue, every type active, single process (informative):")
    share = None if all_rate is None or not probe_rate else all_rate / probe_rate
    print(f"  {f'>= {TARGET_ALL_SHARE:.0%} of the old types packets/s (same run)':<46}{verdict(None if share is None else share >= TARGET_ALL_SHARE):>8}"
          + (f"   {share:.1%}" if share is not None else ""))
    print(f"  {f'>= {TARGET_ALL_PACKETS_PER_SECOND:,} packets/s':<46}{verdict(None if all_rate is None else all_rate >= TARGET_ALL_PACKETS_PER_SECOND):>8}"
          + (f"   {all_rate:,.0f}" if all_rate is not None else ""))
    every_ok = all(run.ok for run in every.runs)
    print(f"  {f'peak memory < {TARGET_ALL_PEAK_MB:.0f} MB (largest run)':<46}{verdict(every.largest_peak() < TARGET_ALL_PEAK_MB if every_ok else None):>8}"
          + (f"   {every.largest_peak():,.1f} MB" if every_ok else ""))
    print(f"events check: old types {'OK' if old.passed() else 'FAILED'}, every type {'OK' if every.passed() else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
