"""Marker index benchmark: build time, peak and retained memory, lookups per second, hostile feed.

Run from the repository root:

    .venv/bin/python benchmarks/marker_index.py [--out DIR] [--seed S] [--reps N] [--regenerate]

It writes (seeded, reused while the parameters are unchanged) two signed bundles whose markers are
all in companion value files, one file per type: `large.json` (1,000,000 ipv4, 100,000 cidr,
1,000,000 domain) and `small.json` (the first 1 % of each file: 10,000 ipv4, 1,000 cidr, 10,000
domain), and a hostile feed. Every figure comes from a fresh child process that builds through
the real path, `MarkerLibrary.load` with a required signature and a trust store:

1. build: wall time of `load`, peak RSS of the child (ru_maxrss, interpreter included) and
   retained RSS (after the build and a gc, minus before it), median of --build-runs children;
2. lookups: both sets loaded in one child, traffic in batches of 4,096 with 1 % hits, through the
   vector pre-filter then the exact lookup for its candidates, as the pipeline does
   (`address_candidates` then `match_address`; `NameFilter.may_hit` then `match_name`), 10k and 1M
   measurements interleaved, median of --reps; plus the exact lookup alone, call by call;
3. hostile feed: domain names that all share one hash in the NameFilter's polynomial hash (the
   index's only hash that is not seeded per process), and one name repeated, against random names
   of the same shape, 25k/50k/100k of each: build time must grow linearly.

The exit code is 0 unless a child failed; the issue's goals are printed as information.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from replay_throughput import cpu_model

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent

SIZES = {"ipv4": 1_000_000, "cidr": 100_000, "domain": 1_000_000}
SMALL_SHARE = 100
"""The small set is the first 1/SMALL_SHARE of each value file: 10k ipv4, 1k cidr, 10k domains."""
BATCH = 4096
PER_CALL = 65_536
"""Keys of the call-by-call measurement (the first of the batched measurement's)."""
HIT_RATE = 0.01
HOSTILE_SIZES = (25_000, 50_000, 100_000)
HOSTILE_KINDS = ("normal", "hostile", "repeated")
ISSUER = "bench"

GOAL_BUILD_S = 20.0
GOAL_PEAK_MB = 1000.0
GOAL_RETAINED_MB = 400.0
GOAL_RATIO = 0.8
GOAL_LINEAR = 1.5
"""Time per name at 100k over time per name at 25k: 1 is linear, 4 quadratic; caches and the
garbage collector's passes over a growing heap account for some tenths."""

TLDS = ("com",) * 40 + ("net",) * 10 + ("org",) * 6 + ("ru", "info", "xyz", "top", "io", "de", "cn", "online", "site", "shop", "fr", "co.uk", "com.br")


# --- generation (child) --------------------------------------------------------------------------


def _labels(rng, count: int, shortest: int, longest: int, first: bytes = b"abcdefghijklmnopqrstuvwxyz", rest: bytes = b"abcdefghijklmnopqrstuvwxyz0123456789") -> list[str]:
    import numpy as np

    lengths = rng.integers(shortest, longest + 1, count)
    matrix = np.frombuffer(rest, np.uint8)[rng.integers(0, len(rest), (count, longest))]
    matrix[:, 0] = np.frombuffer(first, np.uint8)[rng.integers(0, len(first), count)]
    raw = matrix.tobytes()
    return [raw[row * longest : row * longest + length].decode() for row, length in enumerate(lengths.tolist())]


def marker_names(rng, count: int) -> list[str]:
    """Feed-like names: mostly registered domains, some with one or two labels below."""
    tlds = [TLDS[i] for i in rng.integers(0, len(TLDS), count).tolist()]
    names = [f"{label}.{tld}" for label, tld in zip(_labels(rng, count, 5, 16), tlds)]
    depth = rng.random(count)
    subs = _labels(rng, count, 2, 10)
    deeper = _labels(rng, count, 2, 6)
    return [f"{deep}.{sub}.{name}" if roll < 0.05 else f"{sub}.{name}" if roll < 0.30 else name for name, roll, sub, deep in zip(names, depth.tolist(), subs, deeper)]


def traffic_names(rng, count: int) -> list[str]:
    """Names as they appear in DNS queries and SNI: www., bare, or deep under a CDN."""
    tlds = [TLDS[i] for i in rng.integers(0, len(TLDS), count).tolist()]
    bases = [f"{label}.{tld}" for label, tld in zip(_labels(rng, count, 4, 14), tlds)]
    firsts = _labels(rng, count, 2, 8)
    seconds = _labels(rng, count, 2, 8)
    shape = rng.random(count).tolist()
    return [f"www.{base}" if roll < 0.4 else base if roll < 0.7 else f"{a}.{b}.{base}" for base, roll, a, b in zip(bases, shape, firsts, seconds)]


def unique(values: list[str], count: int) -> list[str]:
    kept = list(dict.fromkeys(values))
    if len(kept) < count:
        raise SystemExit(f"generator: only {len(kept)} unique values of {count}")
    return kept[:count]


def ipv4_texts(values) -> list[str]:
    import socket

    return [socket.inet_ntoa(value.to_bytes(4, "big")) for value in values.tolist()]


def generate_values(seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    addresses = np.unique(rng.integers(1 << 24, 224 << 24, int(sizes["ipv4"] * 1.05), dtype=np.int64))
    addresses = rng.permutation(addresses)[: sizes["ipv4"]]
    # Prefix lengths of a blocklist: mostly /24 and longer, a few wide ones; host bits cleared.
    lengths = rng.choice([16, 20, 22, 24, 26, 28, 29, 30, 32], p=[0.005, 0.015, 0.03, 0.55, 0.05, 0.15, 0.05, 0.05, 0.10], size=int(sizes["cidr"] * 1.05))
    bases = rng.integers(1 << 24, 224 << 24, len(lengths), dtype=np.int64) & ~((1 << (32 - lengths)) - 1)
    networks = unique([f"{text}/{length}" for text, length in zip(ipv4_texts(bases), lengths.tolist())], sizes["cidr"])
    names = unique(marker_names(rng, int(sizes["domain"] * 1.05)), sizes["domain"])
    return {"ipv4": ipv4_texts(addresses), "cidr": networks, "domain": names}


def write_bundle(out: Path, name: str, values: dict[str, list[str]], key_path: Path) -> Path:
    """A bundle whose markers are all in companion files, one per type, signed with `key_path`."""
    from probe.bundles.signing import sign_bundle

    entries = []
    for kind, listed in values.items():
        data = ("\n".join(listed) + "\n").encode()
        file_name = f"{name}.{kind}.txt"
        (out / file_name).write_bytes(data)
        entry = {"path": file_name, "type": kind, "id_prefix": f"{name}/{kind}/", "count": len(listed), "sha256": hashlib.sha256(data).hexdigest(), "severity": "medium"}
        if kind == "domain":
            entry["match"] = "subdomains"
        entries.append(entry)
    document = {"id": f"bench-{name}", "issuer": ISSUER, "version": 1, "created": "2026-11-01T00:00:00Z", "tlp": "amber", "markers": [], "value_files": entries}
    path = out / f"{name}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    sign_bundle(str(path), str(key_path))
    return path


def colliding_blocks(length: int, wanted: int) -> list[bytes]:
    """`wanted` distinct lower-case blocks of `length` letters whose NameFilter hashes are equal
    (sum c_i * BASE**i mod 2**64), found by lattice reduction of the kernel of that sum. Since the
    hash of a block at position p is BASE**p times its hash at 0, blocks that collide can be
    concatenated freely: every string of such blocks collides with every other."""
    from probe.match.name_filter import _BASE, _MODULUS

    weights = [pow(_BASE, i, _MODULUS) for i in range(length)]
    basis = [[_MODULUS] + [0] * (length - 1)] + [[-weights[i]] + [int(j == i) for j in range(1, length)] for i in range(1, length)]
    short = lll(basis)
    assert all(sum(x * w for x, w in zip(vector, weights)) % _MODULUS == 0 for vector in short)
    middle = ord("m")
    differences = [tuple([0] * length)]
    signed = [tuple(sign * x for x in vector) for vector in short for sign in (1, -1)]
    for count in (1, 2, 3):
        for combination in itertools.combinations(signed, count):
            total = tuple(map(sum, zip(*combination)))
            if all(-12 <= x <= 13 for x in total):
                differences.append(total)
    blocks = list(dict.fromkeys(bytes(middle + x for x in difference) for difference in differences))
    if len(blocks) < wanted:
        raise SystemExit(f"hostile feed: only {len(blocks)} colliding blocks of {length} letters")
    return blocks[:wanted]


def lll(basis: list[list[int]]) -> list[list[int]]:
    """Integral LLL reduction, delta 0.99 (Cohen, A Course in Computational Algebraic Number
    Theory, algorithm 2.6.7): integers only, exact."""
    b = [list(vector) for vector in basis]
    n = len(b)
    d = [1] + [0] * n  # d[i + 1] belongs to vector i
    lam = [[0] * n for _ in range(n)]

    def dot(u: list[int], v: list[int]) -> int:
        return sum(x * y for x, y in zip(u, v))

    def reduce(k: int, l: int) -> None:
        if 2 * abs(lam[k][l]) > d[l + 1]:
            q = (2 * lam[k][l] + d[l + 1]) // (2 * d[l + 1])
            b[k] = [x - q * y for x, y in zip(b[k], b[l])]
            lam[k][l] -= q * d[l + 1]
            for i in range(l):
                lam[k][i] -= q * lam[l][i]

    def swap(k: int, kmax: int) -> None:
        b[k], b[k - 1] = b[k - 1], b[k]
        for j in range(k - 1):
            lam[k][j], lam[k - 1][j] = lam[k - 1][j], lam[k][j]
        mu = lam[k][k - 1]
        new = (d[k - 1] * d[k + 1] + mu * mu) // d[k]
        for i in range(k + 1, kmax + 1):
            t = lam[i][k]
            lam[i][k] = (d[k + 1] * lam[i][k - 1] - mu * t) // d[k]
            lam[i][k - 1] = (new * t + mu * lam[i][k]) // d[k + 1]
        d[k] = new

    d[1] = dot(b[0], b[0])
    k, kmax = 1, 0
    while k < n:
        if k > kmax:
            kmax = k
            for j in range(k + 1):
                u = dot(b[k], b[j])
                for i in range(j):
                    u = (d[i + 1] * u - lam[k][i] * lam[j][i]) // d[i]
                if j < k:
                    lam[k][j] = u
                else:
                    d[k + 1] = u
        reduce(k, k - 1)
        if 100 * d[k + 1] * d[k - 1] < 99 * d[k] * d[k] - 100 * lam[k][k - 1] ** 2:
            swap(k, kmax)
            k = max(1, k - 1)
        else:
            for l in range(k - 2, -1, -1):
                reduce(k, l)
            k += 1
    return b


def hostile_values(seed: int, count: int) -> tuple[list[str], list[str]]:
    """`count` names of one 60-letter label + `.com` (64 bytes, the most the NameFilter hashes)
    that all share one NameFilter hash, and `count` random names of the same shape."""
    import numpy as np

    from probe.match.name_filter import name_hashes

    blocks = colliding_blocks(20, round(count ** (1 / 3)) + 2)
    rng = np.random.default_rng(seed + 1)
    hostile = [b"".join(parts).decode() + ".com" for parts in itertools.islice(itertools.product(blocks, repeat=3), count)]
    hostile = [hostile[i] for i in rng.permutation(len(hostile)).tolist()]
    assert len(set(hostile)) == count and len(name_hashes(hostile)) == 1, "the hostile names do not all collide"
    normal = [label + ".com" for label in _labels(rng, count, 60, 60, rest=b"abcdefghijklmnopqrstuvwxyz")]
    return hostile, unique(normal, count)


def child_generate(out: Path, seed: int) -> dict:
    from probe.bundles.signing import generate_key_pair

    keys = out / "keys"
    keys.mkdir(exist_ok=True)
    if not (keys / f"{ISSUER}.key").exists():
        generate_key_pair(ISSUER, keys)
    key = keys / f"{ISSUER}.key"
    started = time.perf_counter()
    values = generate_values(seed, SIZES)
    write_bundle(out, "large", values, key)
    write_bundle(out, "small", {kind: listed[: len(listed) // SMALL_SHARE] for kind, listed in values.items()}, key)
    hostile, normal = hostile_values(seed, max(HOSTILE_SIZES))
    for size in HOSTILE_SIZES:
        write_bundle(out, f"hostile-{size // 1000}k", {"domain": hostile[:size]}, key)
        write_bundle(out, f"normal-{size // 1000}k", {"domain": normal[:size]}, key)
        write_bundle(out, f"repeated-{size // 1000}k", {"domain": hostile[:1] * size}, key)
    return {"seconds": time.perf_counter() - started}


# --- measurement helpers (children) -------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def library(out: Path):
    from probe.bundles.library import LoadPolicy, MarkerLibrary
    from probe.bundles.signing import TrustStore

    return MarkerLibrary(LoadPolicy(require_signature=True, trust_store=TrustStore(str(out / "keys"))))


def load(out: Path, name: str):
    markers = library(out)
    report = markers.load([str(out / f"{name}.json")])
    if report.refused:
        raise SystemExit(f"{name}: refused: {report.refused}")
    return markers


def child_build(out: Path, name: str, traced: bool = False) -> dict:
    """One build in this fresh process: its time, the process's peak RSS, and the RSS it keeps.
    `traced`: also the bytes Python and numpy still hold allocated (tracemalloc; slower)."""
    import gc
    import tracemalloc

    markers = library(out)  # imports the probe's modules and numpy: their memory is not the index's
    gc.collect()
    before = rss_mb()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    report = markers.load([str(out / f"{name}.json")])
    seconds = time.perf_counter() - started
    if report.refused:
        raise SystemExit(f"{name}: refused: {report.refused}")
    gc.collect()
    live = tracemalloc.get_traced_memory()[0] / 1e6 if traced else None
    return {"seconds": seconds, "peak_mb": peak_mb(), "before_mb": before, "retained_mb": rss_mb() - before, "live_mb": live, "markers": markers.active.active_count}


def child_stream(out: Path, name: str) -> dict:
    """Reading and normalising the companion files alone, for comparison with the build."""
    from probe.bundles.format import read_file
    from probe.bundles.library import read_source

    path = str(out / f"{name}.json")
    bundle = read_source(path, read_file(path))
    started = time.perf_counter()
    count = sum(1 for value_file in bundle.value_files for _ in value_file.values())
    return {"seconds": time.perf_counter() - started, "markers": count}


def prepare_traffic(out: Path, seed: int, batches: int) -> tuple[dict, dict, int]:
    """Both marker sets, and for each (type, set) the traffic of `batches` batches with 1 % hits:
    addresses as the (n, 16) matrix and the 16-byte keys, names as the (n, NAME_COLUMNS) matrix,
    lengths and strings; the last item is the number of hits planted."""
    import numpy as np

    from probe.decode.packet import IPV4_MAPPED_PREFIX
    from probe.match.name_filter import NAME_COLUMNS

    rng = np.random.default_rng(seed + 2)
    sets = {"10k": load(out, "small").active, "1M": load(out, "large").active}
    large = sets["1M"].index
    listed = {kind: (out / f"large.{kind}.txt").read_text().split() for kind in SIZES}
    count = batches * BATCH
    hit_rows = np.sort(rng.choice(count, int(count * HIT_RATE), replace=False))

    def address_matrix(values: np.ndarray) -> np.ndarray:
        matrix = np.zeros((len(values), 16), dtype=np.uint8)
        matrix[:, :12] = np.frombuffer(IPV4_MAPPED_PREFIX, np.uint8)
        matrix[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
        return matrix

    # Misses: random addresses and names that no marker of the large set (a superset) hits.
    pool = rng.integers(1 << 24, 224 << 24, count * 2, dtype=np.int64)
    pool = pool[~large.address_candidates(address_matrix(pool))][:count]
    names = traffic_names(rng, count * 2)
    names = [name for name in names if len(name) <= NAME_COLUMNS and not large.match_name(name)][:count]
    assert len(pool) == count and len(names) == count
    traffic: dict[tuple[str, str], tuple] = {}
    for size, compiled in sets.items():
        share = 1 if size == "1M" else SMALL_SHARE
        marked = {kind: values[: len(values) // share] for kind, values in listed.items()}
        # ipv4: exact marker addresses; cidr: random addresses inside a random marked network.
        exact = np.array([int.from_bytes(bytes(map(int, text.split("."))), "big") for text in rng.choice(marked["ipv4"], len(hit_rows)).tolist()], dtype=np.int64)
        networks = [text.split("/") for text in rng.choice(marked["cidr"], len(hit_rows)).tolist()]
        inside = np.array([int.from_bytes(bytes(map(int, base.split("."))), "big") + int(rng.integers(0, 1 << (32 - int(length)))) for base, length in networks], dtype=np.int64)
        for kind, hits in (("ipv4", exact), ("cidr", inside)):
            values = pool.copy()
            values[hit_rows] = hits
            matrix = address_matrix(values)
            traffic[kind, size] = (matrix, [bytes(row) for row in matrix], len(hit_rows))
        # domain: half the marked names themselves, half a name below one (www.).
        chosen = rng.choice(marked["domain"], len(hit_rows)).tolist()
        flows = list(names)
        for row, name, below in zip(hit_rows.tolist(), chosen, (rng.random(len(hit_rows)) < 0.5).tolist()):
            flows[row] = f"www.{name}" if below and len(name) + 4 <= NAME_COLUMNS else name
        matrix = np.zeros((count, NAME_COLUMNS), dtype=np.uint8)
        for row, name in enumerate(flows):
            matrix[row, : len(name)] = np.frombuffer(name.encode(), np.uint8)
        traffic["domain", size] = (matrix, np.array([len(name) for name in flows], dtype=np.int64), flows, len(hit_rows))
    return sets, traffic, count


def child_lookups(out: Path, seed: int, reps: int, batches: int) -> dict:
    import numpy as np

    sets, traffic, count = prepare_traffic(out, seed, batches)

    def batched_addresses(compiled, matrix: np.ndarray, keys: list[bytes]) -> int:
        index = compiled.index
        candidates, match = index.address_candidates, index.match_address
        hits = 0
        for start in range(0, len(keys), BATCH):
            for row in np.flatnonzero(candidates(matrix[start : start + BATCH])).tolist():
                if match(keys[start + row]):
                    hits += 1
        return hits

    def batched_names(compiled, matrix: np.ndarray, lengths: np.ndarray, flows: list[str]) -> int:
        may_hit, match = compiled.name_filter.may_hit, compiled.index.match_name
        hits = 0
        for start in range(0, len(flows), BATCH):
            for row in np.flatnonzero(may_hit(matrix[start : start + BATCH], lengths[start : start + BATCH])).tolist():
                if match(flows[start + row]):
                    hits += 1
        return hits

    def per_call(compiled, kind: str, data: tuple) -> int:
        match, keys = (compiled.index.match_name, data[2]) if kind == "domain" else (compiled.index.match_address, data[1])
        return sum(1 for key in keys[:PER_CALL] if match(key))

    timings: dict[str, list[float]] = {}
    for rep in range(reps):
        order = list(sets) if rep % 2 == 0 else list(sets)[::-1]  # interleaved: 10k, 1M, 1M, 10k, ...
        for kind in ("ipv4", "cidr", "domain"):
            for mode in ("batched", "per_call"):
                for size in order:
                    compiled, data = sets[size], traffic[kind, size]
                    started = time.perf_counter()
                    if mode == "per_call":
                        hits = per_call(compiled, kind, data)
                    elif kind == "domain":
                        hits = batched_names(compiled, *data[:3])
                    else:
                        hits = batched_addresses(compiled, *data[:2])
                    timings.setdefault(f"{kind} {mode} {size}", []).append(time.perf_counter() - started)
                    if hits < (data[-1] if mode == "batched" else 1):
                        raise SystemExit(f"{kind} {mode} {size}: {hits} hits, at least {data[-1]} planted")
    return {"lookups": count, "per_call": min(PER_CALL, count), "hits": traffic["ipv4", "1M"][-1], "seconds": {key: statistics.median(values) for key, values in timings.items()}}


def child_hostile(out: Path, reps: int) -> dict:
    import gc

    timings: dict[str, list[float]] = {}
    for rep in range(reps):
        for size in HOSTILE_SIZES:
            for kind in (HOSTILE_KINDS if rep % 2 == 0 else HOSTILE_KINDS[::-1]):
                name = f"{kind}-{size // 1000}k"
                markers = library(out)
                gc.collect()
                started = time.perf_counter()
                report = markers.load([str(out / f"{name}.json")])
                timings.setdefault(name, []).append(time.perf_counter() - started)
                if report.refused or markers.active.active_count != size:  # a repeated name counts each time
                    raise SystemExit(f"{name}: {report.refused or markers.active.active_count}")
                del markers
    return {name: statistics.median(values) for name, values in timings.items()}


# --- the parent ---------------------------------------------------------------------------------


def run_child(out: Path, *arguments: str) -> dict:
    """Run this script as a child in a fresh interpreter; it prints one JSON object."""
    result = subprocess.run([sys.executable, __file__, "--out", str(out), "--child", *arguments], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"marker_index: child {' '.join(arguments)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def verdict(passed: bool) -> str:
    return "goal met" if passed else "goal NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "out" / "marker_index", help="directory of the generated bundles (default: benchmarks/out/marker_index)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed (default: 11)")
    parser.add_argument("--reps", type=int, default=11, help="repetitions of each lookup measurement; medians are reported (default: 11)")
    parser.add_argument("--batches", type=int, default=64, help=f"batches of {BATCH} lookups per measurement (default: 64)")
    parser.add_argument("--build-runs", type=int, default=3, help="build children per set; the median time and the largest memory are reported (default: 3)")
    parser.add_argument("--hostile-reps", type=int, default=3, help="builds of each hostile/normal feed; medians are reported (default: 3)")
    parser.add_argument("--regenerate", action="store_true", help="generate the bundles even if matching ones exist")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out: Path = args.out.resolve()

    if args.child:
        sys.path.insert(0, str(ROOT))
        task, *rest = args.child
        result = {
            "generate": lambda: child_generate(out, int(rest[0])),
            "build": lambda: child_build(out, rest[0], rest[1:] == ["traced"]),
            "stream": lambda: child_stream(out, rest[0]),
            "lookups": lambda: child_lookups(out, int(rest[0]), int(rest[1]), int(rest[2])),
            "hostile": lambda: child_hostile(out, int(rest[0])),
        }[task]()
        print(json.dumps(result))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"python {platform.python_version()} ({sys.executable})")
    stamp = {"seed": args.seed, "sizes": SIZES, "small_share": SMALL_SHARE, "hostile": HOSTILE_SIZES, "format": 2}
    stamp_path = out / "stamp.json"
    if args.regenerate or not stamp_path.exists() or json.loads(stamp_path.read_text()) != json.loads(json.dumps(stamp)):
        stamp_path.unlink(missing_ok=True)
        print(f"generating bundles with seed {args.seed} into {out} ...", flush=True)
        print(f"  generated in {run_child(out, 'generate', str(args.seed))['seconds']:.1f} s")
        stamp_path.write_text(json.dumps(stamp) + "\n")
    else:
        print(f"reusing the bundles in {out} (seed {args.seed})")

    # 1. Build: one fresh child per build.
    builds = {}
    for name in ("small", "large"):
        runs = [run_child(out, "build", name) for _ in range(max(1, args.build_runs))]
        builds[name] = {
            "seconds": statistics.median(run["seconds"] for run in runs),
            "peak_mb": max(run["peak_mb"] for run in runs),
            "retained_mb": max(run["retained_mb"] for run in runs),
            "before_mb": max(run["before_mb"] for run in runs),
            "markers": runs[0]["markers"],
            "all": [run["seconds"] for run in runs],
        }
    stream = run_child(out, "stream", "large")
    traced = run_child(out, "build", "large", "traced")
    print("\nbuild (MarkerLibrary.load, signature required; fresh child per build; time: median, memory: largest):")
    print(f"  {'set':<40}{'markers':>11}{'build s':>9}{'peak MB':>9}{'retained MB':>13}")
    for name, label in (("small", "10k ipv4 + 1k cidr + 10k domain"), ("large", "1M ipv4 + 100k cidr + 1M domain")):
        build = builds[name]
        print(f"  {label:<40}{build['markers']:>11,}{build['seconds']:>9.2f}{build['peak_mb']:>9.0f}{build['retained_mb']:>13.0f}")
    large = builds["large"]
    print(f"  builds of the large set: {', '.join(f'{s:.2f}' for s in large['all'])} s; of which reading + normalising the value files alone: {stream['seconds']:.2f} s")
    print(f"  peak is the child's ru_maxrss (interpreter and numpy included: {large['before_mb']:.0f} MB before loading);")
    print("  retained is the RSS after the build and a gc minus the RSS before it, MB of 10^6 bytes; of it, what")
    print(f"  Python and numpy still hold allocated (tracemalloc, another child): {traced['live_mb']:.0f} MB, the rest is free heap the allocator keeps")

    # 2. Lookups: both sets in one child, interleaved.
    lookups = run_child(out, "lookups", str(args.seed), str(args.reps), str(args.batches))
    seconds, count = lookups["seconds"], lookups["lookups"]
    print(f"\nlookups ({count:,} per measurement, {lookups['hits']:,} hits planted (1 %), median of {args.reps}, 10k and 1M interleaved):")
    print(f"  {'type':<8}{'route':<44}{'10k /s':>13}{'1M /s':>13}{'1M/10k':>8}")
    ratios = {}
    routes = {
        ("ipv4", "batched"): "address_candidates (4096) + match_address",
        ("cidr", "batched"): "address_candidates (4096) + match_address",
        ("domain", "batched"): "NameFilter.may_hit (4096) + match_name",
        ("ipv4", "per_call"): "match_address alone, call by call",
        ("cidr", "per_call"): "match_address alone, call by call",
        ("domain", "per_call"): "match_name alone, call by call",
    }
    for mode in ("batched", "per_call"):
        for kind in ("ipv4", "cidr", "domain"):
            looked_up = count if mode == "batched" else lookups["per_call"]
            small_rate, large_rate = looked_up / seconds[f"{kind} {mode} 10k"], looked_up / seconds[f"{kind} {mode} 1M"]
            ratios[kind, mode] = large_rate / small_rate
            print(f"  {kind:<8}{routes[kind, mode]:<44}{small_rate:>13,.0f}{large_rate:>13,.0f}{ratios[kind, mode]:>8.2f}")
    print("  (the 10k set holds 10k ipv4, 1k cidr, 10k domains: the first 1 % of each file of the 1M set)")

    # 3. Hostile feed.
    hostile = run_child(out, "hostile", str(args.hostile_reps))
    print(f"\nhostile feed (60-letter label + .com; build s, median of {args.hostile_reps}): random names, names that all share one")
    print("NameFilter hash (lattice-reduced, 3 blocks of 20 letters), one name repeated; Python's own str hash is seeded per process")
    print(f"  {'names':>9}{'random':>9}{'colliding':>11}{'repeated':>10}{'colliding/random':>18}{'colliding us/name':>19}")
    smallest, largest = HOSTILE_SIZES[0], HOSTILE_SIZES[-1]
    for size in HOSTILE_SIZES:
        normal, bad, same = (hostile[f"{kind}-{size // 1000}k"] for kind in HOSTILE_KINDS)
        print(f"  {size:>9,}{normal:>9.3f}{bad:>11.3f}{same:>10.3f}{bad / normal:>18.2f}{bad / size * 1e6:>19.2f}")
    growth = {kind: (hostile[f"{kind}-{largest // 1000}k"] / largest) / (hostile[f"{kind}-{smallest // 1000}k"] / smallest) for kind in HOSTILE_KINDS}
    print(f"  time per name at {largest // 1000}k over time per name at {smallest // 1000}k (1.00 = linear): random {growth['normal']:.2f}, colliding {growth['hostile']:.2f}, repeated {growth['repeated']:.2f}")

    print("\ngoals of the issue (informative):")
    goals = [
        (f"build of 2.1M markers < {GOAL_BUILD_S:.0f} s ({large['seconds']:.1f} s)", large["seconds"] < GOAL_BUILD_S),
        (f"peak memory < {GOAL_PEAK_MB:.0f} MB ({large['peak_mb']:.0f} MB)", large["peak_mb"] < GOAL_PEAK_MB),
        (f"retained index < {GOAL_RETAINED_MB:.0f} MB ({large['retained_mb']:.0f} MB)", large["retained_mb"] < GOAL_RETAINED_MB),
    ]
    for kind in ("ipv4", "cidr", "domain"):
        goals.append((f"{kind} lookups/s at 1M >= {GOAL_RATIO:.0%} of 10k (batched {ratios[kind, 'batched']:.2f})", ratios[kind, "batched"] >= GOAL_RATIO))
    worst = max(growth["hostile"], growth["repeated"])
    goals.append((f"hostile feed linear (per-name time growth {worst:.2f} <= {GOAL_LINEAR})", worst <= GOAL_LINEAR))
    for label, passed in goals:
        print(f"  {label:<70}{verdict(passed)}")
    print(f"  (exact lookup call by call, 1M/10k: ipv4 {ratios['ipv4', 'per_call']:.2f}, cidr {ratios['cidr', 'per_call']:.2f}, domain {ratios['domain', 'per_call']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
