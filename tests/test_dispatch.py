"""Spreading frames over workers: the hash is symmetric and follows the innermost addresses,
fragments meet their datagram's worker, and the shared-memory queue hands batches over whole,
in order, dropping (and counting) what does not fit. Plus the live capture's 802.1Q tag
restoration and the live configuration's refusals."""

from __future__ import annotations

import random
import subprocess
import sys
from multiprocessing import Pipe
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest
from scapy.all import GRE, IP, TCP, UDP, VXLAN, Dot1Q, Ether, IPv6, Raw, fragment

from probe.capture.frames import FrameBatch
from probe.capture.live import _restore_tags
from probe.config import check_live, parse_config
from probe.errors import InterfaceError, ConfigError
from probe.capture.bpf import compile_filter
from probe.service.dispatch import FrameHasher, FrameQueue, join_batches, split_batch, take_batch

PROBE = str(Path(sys.executable).with_name("probe"))
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"  # given, so scapy never asks the network for them


def batch_of(frames: list[bytes]) -> FrameBatch:
    lengths = np.array([len(frame) for frame in frames], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return FrameBatch(b"".join(frames), offsets, lengths, lengths.copy(), np.arange(len(frames), dtype=np.int64) + 1_700_000_000 * 10**9, np.ones(len(frames), dtype=np.int64))


def random_address(generator: random.Random, version: int) -> str:
    if version == 4:
        return ".".join(str(generator.randrange(1, 255)) for _ in range(4))
    return "2001:db8::" + ":".join(f"{generator.randrange(65536):x}" for _ in range(3))


def both_directions(client: str, server: str, sport: int, dport: int, wrap=lambda packet: packet) -> list[bytes]:
    layer = IP if ":" not in client else IPv6
    forward = wrap(layer(src=client, dst=server) / TCP(sport=sport, dport=dport, flags="S"))
    backward = wrap(layer(src=server, dst=client) / TCP(sport=dport, dport=sport, flags="SA"))
    return [bytes(Ether(src=MAC_A, dst=MAC_B) / forward) if not isinstance(forward, Ether) else bytes(forward), bytes(Ether(src=MAC_A, dst=MAC_B) / backward) if not isinstance(backward, Ether) else bytes(backward)]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_both_directions_of_a_flow_reach_the_same_worker(workers: int) -> None:
    generator = random.Random(workers)
    frames = []
    for position in range(200):
        version = 4 if position % 2 else 6
        frames += both_directions(random_address(generator, version), random_address(generator, version), generator.randrange(1024, 65536), 443)
    assigned = FrameHasher(workers).assign(batch_of(frames))
    assert (assigned[0::2] == assigned[1::2]).all()
    assert set(assigned.tolist()) == set(range(workers)), "some worker gets nothing"


def test_tunnelled_flows_spread_by_their_inner_addresses() -> None:
    """One GRE or VXLAN mirror session (fixed outer addresses) carries many inner flows: they
    spread over the workers, each inner flow hashed as if it were not tunnelled, directions
    together, and a 802.1Q tag changes nothing."""
    generator = random.Random(7)
    gre = lambda packet: IP(src="192.0.2.1", dst="192.0.2.2") / GRE() / packet  # noqa: E731
    vxlan = lambda packet: IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=50000, dport=4789) / VXLAN(vni=42) / Ether(src=MAC_A, dst=MAC_B) / packet  # noqa: E731
    tagged = lambda packet: Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=12) / packet  # noqa: E731
    plain, wrapped = [], []
    for _ in range(100):
        client, server, sport = random_address(generator, 4), random_address(generator, 4), generator.randrange(1024, 65536)
        plain += both_directions(client, server, sport, 80)
        wrapped += both_directions(client, server, sport, 80, gre) + both_directions(client, server, sport, 80, vxlan) + both_directions(client, server, sport, 80, tagged)
    hasher = FrameHasher(2)
    plain_workers = hasher.assign(batch_of(plain)).reshape(-1, 2)
    wrapped_workers = hasher.assign(batch_of(wrapped)).reshape(-1, 6)
    assert (wrapped_workers == plain_workers[:, :1]).all()
    assert set(plain_workers[:, 0].tolist()) == {0, 1}


def test_fragments_reach_the_worker_of_their_host_pair() -> None:
    """Later fragments carry no ports: the hash uses addresses only, so every fragment of a
    datagram, and every flow between the same two hosts, meets in one worker."""
    generator = random.Random(3)
    frames, expected_groups = [], []
    for group in range(60):
        client, server = random_address(generator, 4), random_address(generator, 4)
        datagram = IP(src=client, dst=server) / UDP(sport=5353, dport=53) / Raw(b"x" * 3000)
        pieces = [bytes(Ether(src=MAC_A, dst=MAC_B) / piece) for piece in fragment(datagram, fragsize=1000)]
        other_flow = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=server, dst=client) / TCP(sport=443, dport=40000))
        frames += pieces + [other_flow]
        expected_groups += [group] * (len(pieces) + 1)
    assigned = FrameHasher(3).assign(batch_of(frames))
    groups = np.array(expected_groups)
    for group in range(60):
        assert len(set(assigned[groups == group].tolist())) == 1


def test_split_batches_keep_each_frame_whole_and_in_order() -> None:
    frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=f"10.0.0.{n % 7 + 1}", dst="10.0.1.1") / UDP() / Raw(bytes([n]) * n)) for n in range(50)]
    batch = batch_of(frames)
    assigned = FrameHasher(3).assign(batch)
    parts = split_batch(batch, assigned, 3)
    for worker, part in enumerate(parts):
        wanted = [frame for frame, owner in zip(frames, assigned.tolist()) if owner == worker]
        if part is None:
            assert not wanted
            continue
        got = [part.data[offset : offset + length] for offset, length in zip(part.offsets.tolist(), part.caplens.tolist())]
        assert got == wanted
        assert (np.diff(part.timestamps) > 0).all()


def test_joined_batches_are_the_frames_of_each_in_order() -> None:
    frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / IP(dst=f"10.0.0.{n + 1}") / UDP() / Raw(bytes([n]) * n)) for n in range(30)]
    parts = [batch_of(frames[:7]), batch_of(frames[7:8]), batch_of(frames[8:])]
    joined = join_batches(parts)
    assert [joined.data[offset : offset + length] for offset, length in zip(joined.offsets.tolist(), joined.caplens.tolist())] == frames
    assert len(joined) == 30 and (joined.wirelens == joined.caplens).all()


def test_frame_queue_hands_batches_over_and_drops_what_does_not_fit() -> None:
    ours, theirs = Pipe(duplex=True)
    queue = FrameQueue(64 * 1024, ours)
    memory = SharedMemory(name=queue.memory.name)
    try:
        frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / IP() / UDP() / Raw(b"a" * 1000)) for _ in range(10)]
        batch = batch_of(frames)
        taken = []
        for _ in range(3):
            assert queue.put(batch)
            got, release = take_batch(memory, theirs.recv_bytes())
            assert got.data == batch.data and all((getattr(got, name) == getattr(batch, name)).all() for name in ("offsets", "caplens", "wirelens", "timestamps", "linktypes"))
            taken.append(release)
        for release in taken:  # the worker gives the space back once it copied the batch
            theirs.send_bytes(release.to_bytes(8, sys.byteorder))
        accepted = 0
        while queue.put(batch):  # nothing taken any more: the ring fills up
            accepted += 1
        need = (len(batch.data) + 7) // 8 * 8 + 5 * 8 * len(batch)
        assert accepted in (64 * 1024 // need - 1, 64 * 1024 // need)  # one ring end may be skipped at the wrap
        assert queue.dropped_batches == 1 and queue.dropped_frames == 10
        assert accepted * need <= queue.pending() <= 64 * 1024
    finally:
        memory.close()
        queue.close()


def test_stripped_vlan_tags_are_put_back() -> None:
    frames = [bytes(Ether(dst="02:00:00:00:00:01") / IP() / UDP()), bytes(Ether(dst="02:00:00:00:00:02") / IP() / TCP())]
    tagged = bytes(Ether(dst="02:00:00:00:00:02") / Dot1Q(vlan=300, prio=5) / IP() / TCP())
    offsets, caplens, wirelens = [0, len(frames[0])], [len(frame) for frame in frames], [len(frame) for frame in frames]
    data = _restore_tags(b"".join(frames), offsets, caplens, wirelens, [(1, 0x8100, (5 << 13) | 300)])
    assert data[offsets[1] : offsets[1] + caplens[1]] == tagged
    assert wirelens == [len(frames[0]), len(tagged)] and data[: caplens[0]] == frames[0]


LIVE = {
    "declaration": {"reference": "DECL-1", "declared_by": "Operator SA", "declared_on": "2026-11-01", "interfaces": ["eth1"]},
    "capture": {"interfaces": ["eth1"]},
    "store": {"directory": "/var/lib/probe/store"},
    "sinks": [{"name": "anssi", "type": "file", "path": "/tmp/n.jsonl", "authority": True}],
}


@pytest.mark.parametrize(("change", "message"), [
    (lambda raw: raw["declaration"].pop("declared_by"), "declaration.declared_by: required by probe run"),
    (lambda raw: raw["declaration"].pop("reference"), "declaration.reference: required by probe run"),
    (lambda raw: raw["declaration"].update(interfaces=[]), "declaration.interfaces: required by probe run"),
    (lambda raw: raw["capture"].update(interfaces=["eth1", "eth2"]), "capture.interfaces: eth2 not covered by the declaration"),
    (lambda raw: raw["sinks"][0].update(authority=False), "needs a sink with authority = true"),
    (lambda raw: raw.pop("store"), "store.directory: required by probe run"),
])
def test_live_start_is_refused_without_what_the_law_requires(change, message) -> None:
    raw = {key: (dict(value) if isinstance(value, dict) else [dict(item) for item in value]) for key, value in LIVE.items()}
    check_live(parse_config(raw), "probe.toml")
    change(raw)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_live(parse_config(raw), "probe.toml")


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("declaration", "declared_on", "yesterday", "not a date YYYY-MM-DD"),
    ("capture", "snaplen", 10, "between 64 and 262144"),
    ("service", "workers", 65, "at most 64 worker processes"),
    ("service", "metrics_address", "localhost", "not host:port"),
    ("capture", "interfaces", ["eth1", "eth1"], "listed twice"),
])
def test_live_keys_are_checked(section, key, value, message) -> None:
    with pytest.raises(ConfigError, match=f"{section}.{key}: .*{message}"):
        parse_config({section: {key: value}})


def test_capture_filter_errors_name_the_filter() -> None:
    assert compile_filter("udp port 53", 65535)[-1][0] == 0x06  # ends in a return
    with pytest.raises(InterfaceError, match=r"capture.bpf_filter: 'udp prot 53': .*syntax error"):
        compile_filter("udp prot 53", 65535)


def test_probe_run_refuses_an_undeclared_deployment_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "probe.toml"
    config.write_text('[capture]\ninterfaces = ["eth1"]\n')
    result = subprocess.run([PROBE, "run", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "declaration.reference: required by probe run" in result.stderr
