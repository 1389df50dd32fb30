"""Hot reload: bundles swapped many times while traffic is matched; every packet meets exactly one
complete version of the markers, and none is skipped."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np

from bundle_support import write_bundle
from probe.bundles.library import MarkerLibrary
from probe.capture.frames import FrameBatch
from probe.config import Config
from probe.pipeline import Pipeline
from probe.record.events import EventWriter

LINKTYPE_ETHERNET = 1
FILLER_MARKERS = 20_000
"""Domains in each version besides its catch-all, so that compiling a version takes a while and a
half-built one would be seen."""


def udp_frame(number: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of its own flow: the source address counts the frames."""
    source = bytes([10, (number >> 16) & 0xFF, (number >> 8) & 0xFF, number & 0xFF])
    ip = bytes([0x45, 0, 0, 29, 0, 0, 0x40, 0, 64, 17, 0, 0]) + source + bytes([192, 0, 2, 1])
    udp = (40000).to_bytes(2, "big") + (9999).to_bytes(2, "big") + (9).to_bytes(2, "big") + bytes(2) + b"x"
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + udp


def batch_of(first: int, count: int) -> FrameBatch:
    frames = [udp_frame(number) for number in range(first, first + count)]
    offsets = np.cumsum([0] + [len(frame) for frame in frames[:-1]]).astype(np.int64)
    lengths = np.array([len(frame) for frame in frames], dtype=np.int64)
    timestamps = 1_790_000_000_000_000_000 + np.arange(first, first + count, dtype=np.int64) * 1000
    return FrameBatch(b"".join(frames), offsets, lengths, lengths.copy(), timestamps, np.full(count, LINKTYPE_ETHERNET, dtype=np.int64))


def version_bundle(directory: Path, version: int) -> str:
    """A catch-all network first, the destination's address last, many markers between: a packet
    matched against a version half built would miss one of the two."""
    markers = [{"id": f"catch-all-v{version}", "type": "cidr", "value": "0.0.0.0/0"}]
    markers += [{"id": f"filler-{number}", "type": "domain", "value": f"filler-{number}.v{version}.example"} for number in range(FILLER_MARKERS)]
    markers += [{"id": f"destination-v{version}", "type": "ipv4", "value": "192.0.2.1"}]
    return str(write_bundle(directory / f"bundle-v{version}.json", markers, id="reloaded", version=version))


def test_every_packet_meets_exactly_one_complete_version(tmp_path: Path) -> None:
    library = MarkerLibrary()
    assert not library.load([version_bundle(tmp_path, 1)]).refused
    events = io.StringIO()
    pipeline = Pipeline(Config(), library, EventWriter(events))
    done = threading.Event()
    refusals: list[str] = []

    def reload_repeatedly() -> None:
        """As the live service does on SIGHUP or a new file: one background load after another."""
        version = 2
        while not done.is_set():
            library.load_in_background([version_bundle(tmp_path, version)], lambda report: refusals.extend(report.refused)).join()
            version += 1

    reloader = threading.Thread(target=reload_repeatedly)
    reloader.start()
    packets = batches = 0
    sizes = [8, 40, 3, 100, 16, 64]  # both the per-frame and the vector route
    try:
        while library.generation < 12 or batches < 300:
            size = sizes[batches % len(sizes)]
            pipeline.process_batch(batch_of(packets, size))
            packets += size
            batches += 1
    finally:
        done.set()
        reloader.join()
    pipeline.finish()
    assert not refusals
    records = [json.loads(line) for line in events.getvalue().splitlines()]
    markers_by_flow: dict[int, dict[int, set[str]]] = {}
    for record in records:
        number = int.from_bytes(bytes(int(part) for part in record["src_ip"].split(".")[1:]), "big")
        marker = record["marker"]
        markers_by_flow.setdefault(number, {}).setdefault(marker["bundle_version"], set()).add(marker["id"])
    assert sorted(markers_by_flow) == list(range(packets)), "no packet skipped"
    taken = {version for versions in markers_by_flow.values() for version in versions}
    first_version = {}
    for number, versions in markers_by_flow.items():
        for version, marker_ids in versions.items():
            assert marker_ids == {f"catch-all-v{version}", f"destination-v{version}"}, "both ends of one complete version, never a mix"
        first_version[number] = min(versions)
        assert set(versions) == {version for version in taken if version >= first_version[number]}, "an open flow meets every later version too"
    in_capture_order = [first_version[number] for number in range(packets)]
    assert in_capture_order == sorted(in_capture_order), "a version, once taken, is never left for an older one"
    counts = {version: in_capture_order.count(version) for version in set(in_capture_order)}
    assert sum(counts.values()) == packets
    assert len(counts) >= 5, f"swaps happened during the replay: {counts}"
    assert library.generation >= 12


def tcp_frame(flags: int, sequence: int) -> bytes:
    """A frame of one long TCP session, 10.9.9.9:40000 -> 198.51.100.66:443."""
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 9, 9, 9, 198, 51, 100, 66])
    tcp = (40000).to_bytes(2, "big") + (443).to_bytes(2, "big") + sequence.to_bytes(4, "big") + bytes(4) + bytes([0x50, flags]) + (65535).to_bytes(2, "big") + bytes(4)
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + tcp


def single_batch(frame: bytes, timestamp: int) -> FrameBatch:
    one = np.array([len(frame)], dtype=np.int64)
    return FrameBatch(frame, np.zeros(1, dtype=np.int64), one, one.copy(), np.array([timestamp], dtype=np.int64), np.full(1, LINKTYPE_ETHERNET, dtype=np.int64))


def test_a_flow_open_across_a_reload_meets_the_new_versions_address_markers(tmp_path: Path) -> None:
    """A C2 session that started before the marker arrived is reported once the marker loads, and
    a marker kept by the next version stays one event."""
    start = 1_790_000_000_000_000_000
    library = MarkerLibrary()
    kept = {"id": "kept", "type": "cidr", "value": "198.51.100.0/24"}
    assert not library.load([str(write_bundle(tmp_path / "v1.json", [kept], id="c2", version=1))]).refused
    events = io.StringIO()
    pipeline = Pipeline(Config(), library, EventWriter(events))
    pipeline.process_batch(single_batch(tcp_frame(0x02, 1), start))
    pipeline.process_batch(single_batch(tcp_frame(0x10, 2), start + 1_000_000_000))
    new = {"id": "c2-server", "type": "ipv4", "value": "198.51.100.66"}
    assert not library.load([str(write_bundle(tmp_path / "v2.json", [kept, new], id="c2", version=2))]).refused
    pipeline.process_batch(single_batch(tcp_frame(0x10, 3), start + 2_000_000_000))
    pipeline.finish()
    records = {record["marker"]["id"]: record for record in map(json.loads, events.getvalue().splitlines())}
    assert set(records) == {"kept", "c2-server"}
    assert records["kept"]["marker"]["bundle_version"] == 1 and records["c2-server"]["marker"]["bundle_version"] == 2
    assert records["c2-server"]["matched_on"] == "ip.dst" and records["c2-server"]["packets"] == 3
    assert records["c2-server"]["timestamp"].startswith("2026-09-21T")
