"""Flow state: bounded, expired on time, and released when flows end (the law's "destroyed
immediately": nothing of a non-matching flow outlives it)."""

from __future__ import annotations

import gc
import io
import json
import sys
import tracemalloc
from pathlib import Path

import pytest

from probe.config import Config, FlowsSection, parse_config
import probe.replay
from probe.flows.table import CLASS_CLOSED, FlowTable, canonical_key
from probe.pipeline import Pipeline
from probe.replay import replay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_capture import generate  # noqa: E402

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30,000-packet capture of ~3,000 interleaved flows, made by the benchmark's generator."""
    directory = tmp_path_factory.mktemp("mixed")
    generate(directory, packets=30_000, seed=3)
    return directory


def test_memory_of_ended_flows_is_returned(mixed: Path) -> None:
    from probe.pipeline import Pipeline
    from probe.replay import load_library
    from probe.capture.reader import read_capture
    from probe.record.events import EventWriter

    library = load_library(Config(), [str(mixed / "markers.json")])
    # A first replay does what happens once per process (numpy imports numpy.ma at its first
    # np.unique, say), so that what is measured below is what flows leave behind.
    warm_up = Pipeline(Config(), library, EventWriter(io.StringIO()))
    for batch in read_capture(str(mixed / "mixed.pcap")):
        warm_up.process_batch(batch)
    warm_up.finish()
    del warm_up, batch
    writer = EventWriter(io.StringIO())
    gc.collect()
    tracemalloc.start()
    pipeline = Pipeline(Config(), library, writer)
    baseline, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for batch in read_capture(str(mixed / "mixed.pcap")):
        pipeline.process_batch(batch)
        del batch
    flows_during = len(pipeline.flows)
    pipeline.finish()
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"flow state: peak {peak - baseline} bytes above the start, {after - baseline} after")
    assert flows_during > 1000
    assert len(pipeline.flows) == 0 and len(pipeline.reassembler) == 0
    assert peak - baseline > 1_000_000, "the replay should have used memory while flows lived"
    # What remains is the events written (in the StringIO) and counters, not flow state.
    assert after - baseline < 0.02 * (peak - baseline) + len(writer.stream.getvalue()) * 2, (baseline, peak, after)


def test_events_equal_the_generators_ground_truth(mixed: Path) -> None:
    events = io.StringIO()
    replay(Config(), [str(mixed / "mixed.pcap")], [str(mixed / "markers.json")], events)
    found: dict[str, int] = {}
    for line in events.getvalue().splitlines():
        marker = json.loads(line)["marker"]["id"]
        found[marker] = found.get(marker, 0) + 1
    expected = json.loads((mixed / "expected.json").read_text())["events_by_marker"]
    assert expected and found == expected


def test_flow_table_evicts_the_longest_idle_flow_when_full() -> None:
    table = FlowTable(FlowsSection(max_flows=3))
    keys = [canonical_key(bytes(15) + bytes((number,)), 1000, bytes(16), 80, 6)[0] for number in range(4)]
    flows = [table.create(key, True, number * SECOND) for number, key in enumerate(keys[:3])]
    table.account(flows[0], 60, 10 * SECOND)  # the first flow is active again: the second is now the idlest
    assert table.reserve(1) == [flows[1]]
    table.create(keys[3], True, 11 * SECOND)
    assert table.evicted == 1 and len(table) == 3
    assert table.counters(flows[0]) == (1, 60, 0, 10 * SECOND)


def test_flows_expire_by_their_protocol_timeout() -> None:
    table = FlowTable(FlowsSection(tcp_timeout=300, udp_timeout=60, tcp_closed_timeout=10))
    tcp = table.create(canonical_key(bytes(16), 1, bytes(15) + b"\x01", 2, 6)[0], True, 0)
    udp = table.create(canonical_key(bytes(16), 1, bytes(15) + b"\x01", 2, 17)[0], True, 0)
    closed = table.create(canonical_key(bytes(16), 3, bytes(15) + b"\x01", 4, 6)[0], True, 0)
    table.close(closed)
    assert closed.timeout_class == CLASS_CLOSED
    assert table.expire(5 * SECOND) == []
    assert table.expire(11 * SECOND) == [closed]
    assert table.expire(61 * SECOND) == [udp]
    table.account(tcp, 60, 200 * SECOND)
    assert table.expire(301 * SECOND) == []
    assert table.expire(501 * SECOND) == [tcp]
    assert len(table) == 0 and table.expired == 3


def test_the_table_grows_and_gives_memory_back() -> None:
    table = FlowTable(FlowsSection())
    flows = [table.create(canonical_key(number.to_bytes(16, "big"), 1, bytes(16), 2, 17)[0], True, number) for number in range(5000)]
    assert len(table) == 5000 and len({flow.slot for flow in flows}) == 5000
    assert table.drain() == flows and len(table) == 0
    assert table.counters(flows[-1])[3] == 4999  # still readable until the slots are reused
    table.shrink()
    assert table.create(b"k" * 37, True, 1).slot == 0


def test_idle_timeout_splits_a_flow_the_same_way_in_any_batching(tmp_path: Path) -> None:
    """Two packets of one UDP 5-tuple 90 s apart are two flows (udp_timeout 60 s), whether they
    arrive in one batch or two."""
    from scapy.all import IP, UDP, Ether, Raw, wrpcap

    packets = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="198.51.100.9") / UDP(sport=4000, dport=9999) / Raw(b"x" * 10) for _ in range(2)]
    packets[0].time, packets[1].time = 1_700_000_000, 1_700_000_090
    wrpcap(str(tmp_path / "gap.pcap"), packets)
    (tmp_path / "m.json").write_text(json.dumps({"id": "t", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [{"id": "m", "type": "ipv4", "value": "198.51.100.9"}]}))
    config = parse_config({"flows": {"udp_timeout": 60}})
    events = io.StringIO()
    replay(config, [str(tmp_path / "gap.pcap")], [str(tmp_path / "m.json")], events)
    records = [json.loads(line) for line in events.getvalue().splitlines()]
    assert len(records) == 2 and len({record["event_id"] for record in records}) == 2
    assert all(record["packets"] == 1 for record in records)


def test_a_batch_with_more_flows_than_the_table_loses_no_event_and_keeps_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scapy.all import DNS, DNSQR, IP, UDP, Ether, wrpcap

    packets = []
    for round_number in range(2):
        for number in range(15):
            packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=f"192.0.2.{number + 1}", dst="198.51.100.53") / UDP(sport=5000 + number, dport=53) / DNS(id=number, qd=DNSQR(qname="evil.example"))
            packet.time = 1_700_000_000 + round_number + number / 100
            packets.append(packet)
    wrpcap(str(tmp_path / "many.pcap"), packets)
    (tmp_path / "m.json").write_text(json.dumps({"id": "t", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [{"id": "m", "type": "domain", "value": "evil.example"}]}))
    largest = []

    class WatchedPipeline(Pipeline):
        """Notes the table's size after each flow it creates (the compiled table's methods cannot be
        patched)."""

        def _new_flow(self, *arguments):
            flow = super()._new_flow(*arguments)
            largest.append(len(self.flows))
            return flow

    monkeypatch.setattr(probe.replay, "Pipeline", WatchedPipeline)
    events = io.StringIO()
    result = replay(parse_config({"flows": {"max_flows": 10}}), [str(tmp_path / "many.pcap")], [str(tmp_path / "m.json")], events)
    hits = sum(json.loads(line)["hits"] for line in events.getvalue().splitlines())
    assert hits == 30  # every query's hit was written, in one event or another
    assert max(largest) <= 10 and result.pipeline.flows.evicted >= 5


def test_a_frame_from_the_future_or_captures_out_of_order_do_not_split_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe.capture.reader
    from scapy.all import IP, UDP, Ether, Raw, wrpcap

    def frame(source: str, when: float):
        packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=source, dst="198.51.100.7") / UDP(sport=4000, dport=6000) / Raw(b"x" * 20)
        packet.time = when
        return packet

    start = 1_700_000_000
    flow = [frame("10.0.0.1", start + second * 10) for second in range(31)]  # 300 s, a packet every 10 s
    wrpcap(str(tmp_path / "future.pcap"), flow[:15] + [frame("10.0.0.2", start + 1_000_000_000)] + flow[15:])
    wrpcap(str(tmp_path / "earlier.pcap"), flow[:15])
    wrpcap(str(tmp_path / "later.pcap"), [frame("10.0.0.3", start + 10_000)])
    wrpcap(str(tmp_path / "rest.pcap"), flow[15:])
    (tmp_path / "m.json").write_text(json.dumps({"id": "t", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [{"id": "m", "type": "ipv4", "value": "198.51.100.7"}]}))
    monkeypatch.setattr(probe.capture.reader, "CHUNK_SIZE", 100)  # about one frame per batch
    for captures in (["future.pcap"], ["later.pcap", "earlier.pcap", "rest.pcap"]):
        events = io.StringIO()
        replay(Config(), [str(tmp_path / name) for name in captures], [str(tmp_path / "m.json")], events)
        counts = sorted(json.loads(line)["packets"] for line in events.getvalue().splitlines() if json.loads(line)["src_ip"] == "10.0.0.1")
        assert counts == [31], captures


def test_events_do_not_depend_on_batching_or_route(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same capture cut into large batches, into batches of a few frames, or sent frame by
    frame gives the same events, counters included (late ACKs after a close count the same)."""
    import probe.capture.reader
    import probe.pipeline

    runs = []
    for chunk, vector_run in ((16 << 20, 1), (4000, 1), (16 << 20, 10**9)):
        monkeypatch.setattr(probe.capture.reader, "CHUNK_SIZE", chunk)
        monkeypatch.setattr(probe.pipeline, "MIN_VECTOR_RUN", vector_run)
        events = io.StringIO()
        replay(Config(), [str(mixed / "mixed.pcap")], [str(mixed / "markers.json")], events)
        runs.append(sorted(events.getvalue().splitlines()))
    assert len(runs[0]) > 30
    assert runs[0] == runs[1] == runs[2]
