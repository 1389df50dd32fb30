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
    assert len(records) == 2 * packets, "every packet (its own flow) hit the first and the last marker of its version"
    markers_by_packet: dict[int, set[str]] = {}
    for record in records:
        number = int.from_bytes(bytes(int(part) for part in record["src_ip"].split(".")[1:]), "big")
        markers_by_packet.setdefault(number, set()).add(record["marker"]["id"])
    versions_by_packet = {}
    for number, marker_ids in markers_by_packet.items():
        (version,) = {marker_id.rsplit("-v", 1)[1] for marker_id in marker_ids}
        assert marker_ids == {f"catch-all-v{version}", f"destination-v{version}"}, "both ends of one complete version"
        versions_by_packet[number] = int(version)
    assert sorted(versions_by_packet) == list(range(packets)), "no packet skipped"
    in_capture_order = [versions_by_packet[number] for number in range(packets)]
    assert in_capture_order == sorted(in_capture_order), "a version, once taken, is never left for an older one"
    counts = {version: in_capture_order.count(version) for version in set(in_capture_order)}
    assert sum(counts.values()) == packets
    assert len(counts) >= 5, f"swaps happened during the replay: {counts}"
    assert library.generation >= 12
