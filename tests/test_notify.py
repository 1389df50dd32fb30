"""Notifications end to end: real receivers on loopback (tests/receivers.py), real spool files.

Captures are crafted at EPOCH (2023-11-14) and replayed with the clock six days later, as in the
store's tests; the outage test runs the real console script, stopped and started again.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probe.capture.frames import FrameBatch
from probe.clock import Clock, add_months, parse_instant
from probe.config import Config, parse_config
from probe.errors import ConfigError, NotifyError
from probe.notify.notifier import Notifier, open_notifier
from probe.notify.outbox import Outbox
from probe.notify.sinks.build import build_sinks
from probe.notify import spool as spool_module
from probe.notify.spool import SPOOL_MAGIC, SpoolWriter
from probe.pipeline import Pipeline
from probe.record.events import EventWriter
from probe.replay import load_library, run_replay
from probe.store.framing import read_frames, read_header
from probe.store.query import EventFilter, latest_events
from probe.store.records import BundleRecord
from probe.store.ring import RingStore
from tests.receivers import DatagramReceiver, StreamReceiver, WebhookReceiver, free_port, make_certificates, syslog_json, wait_until
from tests.test_cli import EPOCH, PROBE, assert_single_error, dns_exchange, events_of, http_get, tcp_session, udp_packets, write_bundle, write_pcap

NOW = "2023-11-20T00:00:00Z"
CLOCK = Clock(parse_instant(NOW))
MARKERS = [
    {"id": "m-domain", "type": "domain", "value": "evil.example", "severity": "high"},
    {"id": "m-address", "type": "ipv4", "value": "203.0.113.9", "severity": "low"},
    {"id": "m-host", "type": "http_host", "value": "c2.example", "tlp": "red"},
]


def dns_flows(count: int, start: float = EPOCH, name: str = "www.evil.example") -> list:
    """`count` DNS exchanges from distinct client ports: `count` events of m-domain."""
    return [packet for number in range(count) for packet in dns_exchange("192.0.2.11", "198.51.100.53", name, start=start + number * 0.01, cport=40000 + number)]


def three_events() -> list:
    packets = udp_packets("192.0.2.10", "203.0.113.9", count=3, start=EPOCH) + dns_exchange("192.0.2.11", "198.51.100.53", "www.evil.example", start=EPOCH + 1) + tcp_session("192.0.2.12", 45000, "198.51.100.80", 80, http_get("c2.example"), start=EPOCH + 2)
    return sorted(packets, key=lambda packet: packet.time)


def make_config(tmp_path: Path, sinks: list[dict], **notify: Any) -> Config:
    return parse_config({
        "probe": {"name": "probe-paris-01", "site": "paris-ix"},
        "declaration": {"reference": "DECL-2023-042"},
        "notify": {"spool_directory": str(tmp_path / "spool"), "retry_initial": 0.05, "retry_max": 0.2, "drain_timeout": 10, **notify},
        "sinks": sinks,
    })


def replay_with(tmp_path: Path, config: Config, packets: list, markers: list[dict] = MARKERS, store: RingStore | None = None, close: bool = True) -> tuple[Notifier, list[dict]]:
    """Replay `packets` through the configured sinks; the notifier (closed unless told) and the
    final events."""
    capture = write_pcap(tmp_path / f"capture-{time.monotonic_ns()}.pcap", packets)
    library = load_library(config, [str(write_bundle(tmp_path / "markers.json", markers))])
    notifier = open_notifier(config, CLOCK)
    assert notifier is not None
    events = io.StringIO()
    try:
        run_replay(config, [str(capture)], library, events, store=store, notifier=notifier, clock=CLOCK)
    finally:
        if close:
            notifier.outbox.close()
    return notifier, events_of(events.getvalue())


def of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [document for document in documents if document["notification"] == kind]


# --- what a notification holds ------------------------------------------------------------------


def test_webhook_receives_each_event_signed_with_its_idempotency_key(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret-shared-with-the-authority\n")
    secret.chmod(0o600)
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/notify", "hmac_secret_file": str(secret)}])
        notifier, events = replay_with(tmp_path, config, three_events())
    finally:
        receiver.stop()
    assert len(events) == 3
    for headers, body in receiver.requests:
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Probe-Signature"] == "sha256=" + hmac.new(b"s3cret-shared-with-the-authority", body, hashlib.sha256).hexdigest()
        assert headers["Idempotency-Key"] == json.loads(body)["idempotency_key"]
    documents = receiver.documents
    assert all(document["probe"] == {"name": "probe-paris-01", "site": "paris-ix", "declaration": "DECL-2023-042"} for document in documents)
    (bundle,) = of_kind(documents, "bundle")
    assert bundle["bundle"]["action"] == "activated" and bundle["bundle"]["id"] == "test-bundle"
    notified = of_kind(documents, "event")
    by_event: dict[str, list[dict]] = {}
    for document in notified:
        by_event.setdefault(document["event"]["event_id"], []).append(document)
        assert document["idempotency_key"] == f"{document['event']['event_id']}/{document['event']['revision']}"
    assert set(by_event) == {event["event_id"] for event in events}
    for event in events:  # detected at once (revision 0), ended with the final counters
        detected, ended = by_event[event["event_id"]]
        assert (detected["stage"], detected["event"]["revision"]) == ("detected", 0)
        assert ended["stage"] == "ended" and ended["event"] == {key: value for key, value in event.items() if key != "probe"}
    assert notifier.made == len(documents) == 7 and not notifier.outbox.statistics["anssi"].pending


def test_each_sink_applies_its_own_filter_and_tlp_rule(tmp_path: Path):
    everything, high, green = WebhookReceiver().start(), WebhookReceiver().start(), WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [
            {"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{everything.port}/"},
            {"name": "soc-high", "type": "webhook", "min_severity": "high", "url": f"http://127.0.0.1:{high.port}/"},
            {"name": "partner", "type": "webhook", "marker_types": ["http_host", "ipv4"], "max_tlp": "green", "url": f"http://127.0.0.1:{green.port}/"},
        ])
        notifier, _ = replay_with(tmp_path, config, three_events())
    finally:
        for receiver in (everything, high, green):
            receiver.stop()
    ids = lambda receiver: sorted({document["event"]["marker"]["id"] for document in of_kind(receiver.documents, "event")})  # noqa: E731
    assert ids(everything) == ["m-address", "m-domain", "m-host"]
    assert ids(high) == ["m-domain", "m-host"]  # m-host has no severity: a filter never hides what it cannot judge
    assert ids(green) == ["m-address", "m-host"]
    red = [document["event"]["marker"] for document in of_kind(green.documents, "event") if document["event"]["marker"]["id"] == "m-host"]
    assert red and all(marker == {"id": "m-host", "tlp": "red", "bundle": "test-bundle", "bundle_version": 7} for marker in red)
    full = [document["event"]["marker"] for document in of_kind(everything.documents, "event") if document["event"]["marker"]["id"] == "m-host"]
    assert all(marker["value"] == "c2.example" for marker in full)
    assert len(of_kind(high.documents, "bundle")) == len(of_kind(green.documents, "bundle")) == 1  # bundle history goes to every sink
    assert [statistics.filtered for statistics in notifier.outbox.statistics.values()] == [0, 2, 2]


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix-stream", "unix-datagram"])
def test_syslog_sinks_send_rfc5424_messages_carrying_the_json(tmp_path: Path, transport: str):
    path = str(tmp_path / "log.sock")
    receiver: StreamReceiver | DatagramReceiver
    if transport == "udp":
        receiver = DatagramReceiver()
        sink = {"transport": "udp", "address": f"127.0.0.1:{receiver.port}"}
    elif transport == "tcp":
        receiver = StreamReceiver().start()
        sink = {"transport": "tcp", "address": f"127.0.0.1:{receiver.port}"}
    else:
        receiver = StreamReceiver(socket.AF_UNIX, path).start() if transport == "unix-stream" else DatagramReceiver(socket.AF_UNIX, path)
        sink = {"transport": "unix", "path": path}
    try:
        config = make_config(tmp_path, [{"name": "siem", "type": "syslog", "authority": True, "facility": "local3", **sink}])
        _, events = replay_with(tmp_path, config, three_events())
        assert wait_until(lambda: len(receiver.messages) == 7)
    finally:
        receiver.stop()
    first = receiver.messages[0].split(b" ", 7)
    assert first[0] == b"<157>1" and first[2:4] == [b"probe-paris-01", b"probe"] and first[4].isdigit() and first[5] == b"bundle"  # local3 (19) * 8 + notice (5)
    documents = [syslog_json(message) for message in receiver.messages]
    assert {document["event"]["event_id"] for document in of_kind(documents, "event")} == {event["event_id"] for event in events}
    severities = {syslog_json(message)["event"]["marker"]["id"]: message.split(b" ", 1)[0] for message in receiver.messages if b" event - " in message}
    assert severities == {"m-domain": b"<155>1", "m-address": b"<157>1", "m-host": b"<156>1"}  # high: error, low: notice, none: warning


def test_https_webhook_verifies_the_receiver_against_the_configured_ca(tmp_path: Path):
    ca, certificate, key = make_certificates(tmp_path)
    receiver = WebhookReceiver(certificate=(certificate, key)).start()
    try:
        trusted = make_config(tmp_path / "trusted", [{"name": "anssi", "type": "webhook", "authority": True, "url": f"https://127.0.0.1:{receiver.port}/", "ca_file": str(ca)}])
        replay_with(tmp_path, trusted, three_events())
        assert len(receiver.requests) == 7
        system_cas = make_config(tmp_path / "untrusted", [{"name": "anssi", "type": "webhook", "authority": True, "url": f"https://127.0.0.1:{receiver.port}/"}], drain_timeout=0.5)
        notifier, _ = replay_with(tmp_path, system_cas, three_events())
    finally:
        receiver.stop()
    assert len(receiver.requests) == 7  # the unknown CA got nothing
    assert notifier.outbox.statistics["anssi"].pending == 7 and notifier.outbox.statistics["anssi"].failures


# --- the outbox: spooled first, nothing lost, in order -------------------------------------------


def test_unreachable_receiver_at_start_is_no_error_and_the_spool_is_private(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    port = free_port()
    config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], drain_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="probe"):
        notifier, _ = replay_with(tmp_path, config, three_events())
    assert notifier.outbox.statistics["anssi"].pending == 7
    assert any("sink anssi" in record.getMessage() and "Connection refused" in record.getMessage() and "kept in the spool" in record.getMessage() for record in caplog.records)
    spool = tmp_path / "spool"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    files = [path for path in spool.rglob("*") if path.is_file()]
    assert any(path.suffix == ".spool" for path in files)
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    receiver = WebhookReceiver(port).start()  # the same spool, a new process start: the backlog goes out, in order
    try:
        outbox = Outbox(config, CLOCK)
        assert outbox.drain(10) == {}
        outbox.close()
    finally:
        receiver.stop()
    documents = receiver.documents
    assert len(documents) == 7 and documents[0]["notification"] == "bundle"
    revisions = [(document["event"]["event_id"], document["event"]["revision"]) for document in of_kind(documents, "event")]
    assert all(revisions.index((event_id, 0)) < revisions.index((event_id, 1)) for event_id, _ in revisions)
    assert not [path for path in spool.glob("*.spool")], "every sink acknowledged everything: the spool is empty"


def test_a_sink_that_fails_holds_back_no_other_sink_and_gets_its_backlog_in_order(tmp_path: Path):
    healthy = WebhookReceiver().start()
    failing = WebhookReceiver().start()
    failing.status = 503
    try:
        config = make_config(tmp_path, [
            {"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{healthy.port}/"},
            {"name": "soc", "type": "webhook", "url": f"http://127.0.0.1:{failing.port}/"},
        ], drain_timeout=1)
        notifier, _ = replay_with(tmp_path, config, dns_flows(20), close=False)
        assert len(healthy.requests) == 41 and not failing.requests
        assert notifier.outbox.pending() == {"anssi": 0, "soc": 41}
        failing.status = 200
        assert notifier.outbox.drain(10) == {}
        notifier.outbox.close()
    finally:
        healthy.stop()
        failing.stop()
    assert [body for _, body in failing.requests] == [body for _, body in healthy.requests]


def test_a_torn_spool_tail_is_cut_and_what_came_before_is_delivered(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    port = free_port()
    config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], drain_timeout=0.2)
    replay_with(tmp_path, config, three_events())
    (segment,) = (tmp_path / "spool").glob("*.spool")
    data = segment.read_bytes()
    _, start = read_header(str(segment), data, SPOOL_MAGIC)
    payloads, end = read_frames(data, start)
    assert len(payloads) == 7 and end == len(data)
    with open(segment, "ab") as stream:  # a crash in the middle of an append
        stream.write(data[start : start + 20])
    receiver = WebhookReceiver(port).start()
    try:
        with caplog.at_level(logging.WARNING, logger="probe"):
            outbox = Outbox(config, CLOCK)
        assert outbox.drain(10) == {}
        outbox.close()
    finally:
        receiver.stop()
    assert len(receiver.requests) == 7
    assert any("torn tail of 20 bytes cut" in record.getMessage() for record in caplog.records)


def test_spool_cap_drops_counts_and_reports_without_blocking(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    port = free_port()
    config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], spool_max_bytes=12_000, drain_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="probe"):
        notifier, _ = replay_with(tmp_path, config, dns_flows(40), close=False)
    outbox = notifier.outbox
    assert outbox.dropped > 0 and notifier.made + outbox.dropped == 81
    assert sum("spool_max_bytes" in record.getMessage() for record in caplog.records) == 1  # once per episode
    assert outbox.spool.total_bytes() <= 12_000
    receiver = WebhookReceiver(port).start()
    try:
        assert outbox.drain(10) == {}
        dropped = outbox.dropped
        notifier.bundle_changed(BundleRecord(CLOCK.now(), "refused", "", "", 0, "", "x.json: refused: unsigned"))  # the spool takes it, then the count of what was lost
        assert outbox.drain(10) == {}
        outbox.close()
    finally:
        receiver.stop()
    reports = [document["dropped"] for document in of_kind(receiver.documents, "dropped")]  # one per episode of a full spool
    assert reports and sum(report["count"] for report in reports) == dropped
    assert all("spool_max_bytes" in report["reason"] for report in reports)
    assert receiver.documents[-1]["notification"] in ("bundle", "dropped") and of_kind(receiver.documents, "bundle")[-1]["bundle"]["action"] == "refused"
    assert len(receiver.documents) == notifier.made + len(reports)


def test_spooled_notifications_past_their_retention_are_deleted_unsent(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    port = free_port()
    config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], drain_timeout=0.2)
    replay_with(tmp_path, config, three_events())
    later = Clock(add_months(parse_instant(NOW), 6))
    receiver = WebhookReceiver(port).start()
    try:
        with caplog.at_level(logging.WARNING, logger="probe"):
            outbox = Outbox(config, later)
        assert outbox.drain(5) == {}
        outbox.close()
    finally:
        receiver.stop()
    assert not receiver.requests
    assert not list((tmp_path / "spool").glob("*.spool"))
    assert any("7 notifications deleted undelivered" in record.getMessage() for record in caplog.records)


def test_events_already_past_retention_are_not_notified(tmp_path: Path):
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}])
        capture = write_pcap(tmp_path / "old.pcap", three_events())
        library = load_library(config, [str(write_bundle(tmp_path / "markers.json", MARKERS))])
        notifier = open_notifier(config, Clock())  # today: the 2023 capture is past six months
        assert notifier is not None
        run_replay(config, [str(capture)], library, io.StringIO(), notifier=notifier, clock=Clock())
        notifier.outbox.close()
    finally:
        receiver.stop()
    assert notifier.expired_on_arrival == 6
    assert [document["notification"] for document in receiver.documents] == ["bundle"]


def test_a_second_process_cannot_use_the_same_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(spool_module, "LOCK_WAIT", 0.2)
    config = make_config(tmp_path, [{"name": "out", "type": "stdout", "authority": True}])
    first = SpoolWriter(config.spool_directory, 1 << 20, ["out"])
    try:
        with pytest.raises(NotifyError, match="in use by another probe process"):
            SpoolWriter(config.spool_directory, 1 << 20, ["out"])
    finally:
        first.close()


def test_a_removed_sink_is_forgotten_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    port = free_port()
    config = make_config(tmp_path, [{"name": "old", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], drain_timeout=0.2)
    replay_with(tmp_path, config, three_events())
    with caplog.at_level(logging.WARNING, logger="probe"):
        spool = SpoolWriter(config.spool_directory, 1 << 20, ["new"])
        spool.close()
    assert any("sink 'old' is no longer configured" in record.getMessage() and "after number 0 (up to 7) will not be sent" in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "spool" / "cursors" / "old").exists()


# --- without delay, without flooding -------------------------------------------------------------


def frames_of(packets: list) -> FrameBatch:
    """One batch of the packets, as live capture hands them over."""
    frames = [bytes(packet) for packet in packets]
    lengths = np.array([len(frame) for frame in frames], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    timestamps = np.array([int(packet.time * 1e9) for packet in packets], dtype=np.int64)
    return FrameBatch(b"".join(frames), offsets, lengths, lengths.copy(), timestamps, np.ones(len(frames), dtype=np.int64))


def test_a_long_flow_is_updated_at_the_interval_and_ended_once(tmp_path: Path):
    """One UDP flow to a marked address, a packet every 10 s for 200 s, among other traffic, in
    batches of 10 s as live capture gives them: detected at once, updated every 60 s of capture
    time with the counters then, ended with its final counters; the store has each revision."""
    receiver = WebhookReceiver().start()
    store = RingStore(str(tmp_path / "store"), parse_config({}).store, CLOCK)
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}])
        library = load_library(config, [str(write_bundle(tmp_path / "markers.json", MARKERS))])
        notifier = open_notifier(config, CLOCK)
        assert notifier is not None
        events = io.StringIO()
        pipeline = Pipeline(config, library, EventWriter(events), store, notifier)
        for second in range(0, 200, 10):
            background = [packet for number in range(40) for packet in udp_packets(f"192.0.2.{100 + number}", "198.51.100.1", count=1, start=EPOCH + second + 0.001, sport=30000 + second)]
            pipeline.process_batch(frames_of(udp_packets("192.0.2.10", "203.0.113.9", count=1, start=EPOCH + second) + background))
        pipeline.finish()
        store.flush()
        assert notifier.outbox.drain(10) == {}
        notifier.outbox.close()
    finally:
        receiver.stop()
        store.close()
    notified = of_kind(receiver.documents, "event")
    assert [document["stage"] for document in notified] == ["detected", "updated", "updated", "updated", "ended"]
    assert [document["event"]["revision"] for document in notified] == [0, 1, 2, 3, 4]
    assert [document["event"]["packets"] for document in notified] == [1, 7, 13, 19, 20]
    assert len({document["event"]["event_id"] for document in notified}) == 1
    (event,) = events_of(events.getvalue())
    assert event["revision"] == 4 and event["packets"] == 20
    with RingStore(str(tmp_path / "store"), parse_config({}).store, CLOCK, writable=False) as reader:
        revisions = sorted(record.revision for summary in reader.segments("events") for record in reader.read(summary))
        (latest,) = latest_events(reader, EventFilter())
    assert revisions == [0, 1, 2, 3, 4]
    assert latest.revision == 4 and latest.packets == 20


def test_a_marker_over_its_rate_is_summarised_not_flooded(tmp_path: Path):
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}], marker_burst=5, marker_rate=0.001)
        notifier, events = replay_with(tmp_path, config, dns_flows(50))
    finally:
        receiver.stop()
    assert len(events) == 50
    notified = of_kind(receiver.documents, "event")
    assert len({document["event"]["event_id"] for document in notified}) == 5
    assert len(notified) == 10  # detected and ended, for the five within the burst only
    (summary,) = of_kind(receiver.documents, "suppressed")
    assert summary["suppressed"]["count"] == 45 == notifier.suppressed
    assert summary["suppressed"]["marker"]["id"] == "m-domain"


# --- configuration errors name the key -----------------------------------------------------------


def run_with_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "probe.toml"
    config.write_text(textwrap.dedent(text), encoding="utf-8")
    bundle = write_bundle(tmp_path / "markers.json", MARKERS)
    capture = write_pcap(tmp_path / "capture.pcap", three_events())
    return subprocess.run([str(PROBE), "replay", str(capture), "--markers", str(bundle), "--config", str(config), "--now", NOW], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("sink", "needles"), [
    ('type = "smtp"', ("sinks[0].type", "unknown sink type 'smtp'", "webhook")),
    ('type = "webhook"\nurl = "ftp://collector.example/"', ("sinks[0].url", "not an http:// or https:// URL")),
    ('type = "webhook"\nurl = "https://collector.example:99999/"', ("sinks[0].url", "invalid port")),
    ('type = "syslog"\naddress = "collector.example"', ("sinks[0].address", "not host:port")),
    ('type = "syslog"\nurl = "https://collector.example/"', ("sinks[0].url", "not a key of syslog sinks")),
    ('type = "stdout"\nmarker_types = ["ipv4"]', ("sinks[0]", "authority sink receives every event", "marker_types")),
    ('type = "stdout"\nmin_severity = "urgent"', ("sinks[0].min_severity", "must be one of")),
])
def test_bad_sink_configuration_names_the_key(tmp_path: Path, sink: str, needles: tuple[str, ...]):
    authority = "true" if "marker_types" in sink else "false"
    result = run_with_config(tmp_path, f'[notify]\nspool_directory = "{tmp_path / "spool"}"\n[[sinks]]\nname = "s"\nauthority = {authority}\n{sink}\n')
    assert_single_error(result, *needles)


def test_bad_ca_file_and_secret_file_name_the_key(tmp_path: Path):
    (tmp_path / "not-a-ca.pem").write_text("hello")
    head = f'[notify]\nspool_directory = "{tmp_path / "spool"}"\n[[sinks]]\nname = "anssi"\ntype = "webhook"\nauthority = true\n'
    assert_single_error(run_with_config(tmp_path, head + f'url = "https://127.0.0.1:1/"\nca_file = "{tmp_path / "not-a-ca.pem"}"\n'), "sink anssi: ca_file", "cannot load CA certificates")
    assert_single_error(run_with_config(tmp_path, head + f'url = "https://127.0.0.1:1/"\nca_file = "{tmp_path / "missing.pem"}"\n'), "sink anssi: ca_file", "cannot load CA certificates")
    assert_single_error(run_with_config(tmp_path, head + f'url = "http://127.0.0.1:1/"\nhmac_secret_file = "{tmp_path / "missing"}"\n'), "sink anssi: hmac_secret_file", "cannot read it")
    readable = tmp_path / "readable.secret"
    readable.write_text("s3cret")
    readable.chmod(0o644)
    assert_single_error(run_with_config(tmp_path, head + f'url = "http://127.0.0.1:1/"\nhmac_secret_file = "{readable}"\n'), "hmac_secret_file", "chmod 600")


def test_duplicate_sink_names_and_missing_spool_are_refused():
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.name: 'a' names two sinks"):
        parse_config({"sinks": [{"name": "a", "type": "stdout"}, {"name": "a", "type": "stdout"}]})
    config = parse_config({"sinks": [{"name": "a", "type": "stdout", "authority": True}]})
    with pytest.raises(NotifyError, match="spool_directory"):
        Outbox(config, CLOCK)


def test_replay_warns_when_no_sink_reaches_the_authority(tmp_path: Path):
    receiver = StreamReceiver().start()
    try:
        result = run_with_config(tmp_path, f'[notify]\nspool_directory = "{tmp_path / "spool"}"\n[[sinks]]\nname = "soc"\ntype = "syslog"\ntransport = "tcp"\naddress = "127.0.0.1:{receiver.port}"\n')
    finally:
        receiver.stop()
    assert result.returncode == 0, result.stderr
    assert "no sink has authority = true" in result.stderr
    assert "probe: sink soc (syslog over tcp to 127.0.0.1:" in result.stderr and "7 delivered" in result.stderr


# --- the outage, through the real console script ------------------------------------------------


def test_outage_then_restart_delivers_exactly_the_events_found(tmp_path: Path):
    """The receiver is down while a replay finds N events; the probe stops; it starts again
    (`probe outbox deliver`) while the receiver is still down; the receiver comes back: exactly
    the N event ids arrive, each revision under its own key, duplicates only under the same key."""
    port = free_port()
    config = tmp_path / "probe.toml"
    config.write_text(textwrap.dedent(f"""\
        [probe]
        name = "probe-paris-01"
        [notify]
        spool_directory = "{tmp_path / 'spool'}"
        drain_timeout = 0.5
        retry_initial = 0.1
        retry_max = 0.4
        [[sinks]]
        name = "anssi"
        type = "webhook"
        authority = true
        url = "http://127.0.0.1:{port}/v1/notifications"
    """), encoding="utf-8")
    capture = write_pcap(tmp_path / "capture.pcap", sorted(dns_flows(25) + three_events(), key=lambda packet: packet.time))
    bundle = write_bundle(tmp_path / "markers.json", MARKERS)
    replay = subprocess.run([str(PROBE), "replay", str(capture), "--markers", str(bundle), "--config", str(config), "--now", NOW, "--events", str(tmp_path / "events.jsonl")], capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "Connection refused" in replay.stderr and "55 notifications not yet acknowledged stay in the spool" in replay.stderr
    found = {event["event_id"] for event in events_of((tmp_path / "events.jsonl").read_text())}
    assert len(found) == 27
    deliver = subprocess.Popen([str(PROBE), "outbox", "deliver", "--config", str(config), "--now", NOW, "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the restarted probe retries against the receiver that is still down
    receiver = WebhookReceiver(port).start()
    try:
        _, stderr = deliver.communicate(timeout=90)
    finally:
        receiver.stop()
    assert deliver.returncode == 0, stderr
    assert "55 waiting, 55 delivered" in stderr
    documents = receiver.documents
    keys = [document["idempotency_key"] for document in documents]
    assert len(set(keys)) == 55
    first_of_key: dict[str, dict] = {}
    for document in documents:
        assert first_of_key.setdefault(document["idempotency_key"], document) == document  # a duplicate is the same notification
    assert {document["event"]["event_id"] for document in of_kind(documents, "event")} == found
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_file_sink_rotates_by_size_and_deletes_rotated_files_at_their_retention(tmp_path: Path):
    path = tmp_path / "notifications.jsonl"
    config = make_config(tmp_path, [{"name": "archive", "type": "file", "authority": True, "path": str(path), "max_bytes": 4000}])
    _, events = replay_with(tmp_path, config, dns_flows(20))
    files = sorted(tmp_path.glob("notifications.jsonl*"))
    assert len(files) > 3 and all(stat.S_IMODE(file.stat().st_mode) == 0o600 for file in files)
    lines = [json.loads(line) for file in files for line in file.read_text().splitlines()]
    assert len(lines) == 41 and {line["event"]["event_id"] for line in lines if line["notification"] == "event"} == {event["event_id"] for event in events}
    rotated = [file.name for file in files if file != path]
    assert all(name.startswith("notifications.jsonl.20240514T2213") for name in rotated), rotated  # the deadline of their earliest record: six months after the capture
    for months, left in ((1, len(files)), (7, 0)):  # a start later: the file being written is rotated too, and each goes at its deadline
        later = Clock(add_months(parse_instant(NOW), months))
        build_sinks(config, later)[0].close()
        assert len(list(tmp_path.glob("notifications.jsonl*"))) == left


# --- bad input and odd receivers -----------------------------------------------------------------


def test_a_long_answer_and_a_connection_closed_while_idle_cost_no_retry(tmp_path: Path):
    """A receiver that echoes what it got (an answer longer than one read), and closes kept-alive
    connections after 0.3 s idle: every notification is delivered once, none counts as failed."""
    receiver = WebhookReceiver()
    receiver.answer = b"x" * 5000
    receiver.idle_timeout = 0.3
    receiver.start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}])
        notifier, _ = replay_with(tmp_path, config, three_events(), close=False)
        assert notifier.outbox.drain(10) == {}
        time.sleep(0.8)  # the receiver closes the idle connection
        notifier.bundle_changed(BundleRecord(CLOCK.now(), "refused", "", "", 0, "", "late.json: refused: unsigned"))
        assert notifier.outbox.drain(10) == {}
        notifier.outbox.close()
    finally:
        receiver.stop()
    assert len(receiver.requests) == len({document["idempotency_key"] for document in receiver.documents}) == 8
    assert notifier.outbox.statistics["anssi"].failures == 0


def test_free_text_in_a_key_is_percent_encoded_for_the_header(tmp_path: Path):
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}], marker_burst=1, marker_rate=0.001)
        replay_with(tmp_path, config, dns_flows(3), markers=[{"id": "marqueur—tor é", "type": "domain", "value": "evil.example"}])
    finally:
        receiver.stop()
    (summary,) = of_kind(receiver.documents, "suppressed")
    assert summary["idempotency_key"].startswith("suppressed/test-bundle/marqueur%E2%80%94tor%20%C3%A9/")
    assert summary["suppressed"]["marker"]["id"] == "marqueur—tor é" and summary["suppressed"]["count"] == 2
    assert all(headers["Idempotency-Key"] == json.loads(body)["idempotency_key"] for headers, body in receiver.requests)


def test_a_segment_left_empty_by_a_crash_is_dropped_and_nothing_is_lost(tmp_path: Path):
    port = free_port()
    config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{port}/"}], drain_timeout=0.2)
    replay_with(tmp_path, config, three_events())
    empty = tmp_path / "spool" / "0000000000000008.spool"
    empty.write_bytes(b"")  # created, never written: a power cut
    empty.chmod(0o600)
    receiver = WebhookReceiver(port).start()
    try:
        notifier, _ = replay_with(tmp_path, config, dns_flows(2, start=EPOCH + 50))
    finally:
        receiver.stop()
    assert len(receiver.requests) == 7 + 5 and notifier.outbox.dropped == 0
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_file_sink_keeps_a_torn_last_line_and_refuses_a_file_not_its_own(tmp_path: Path):
    path = tmp_path / "notifications.jsonl"
    config = make_config(tmp_path, [{"name": "archive", "type": "file", "authority": True, "path": str(path)}])
    replay_with(tmp_path, config, three_events())
    with open(path, "ab") as stream:
        stream.write(b'{"notification":"ev')  # a crash in the middle of a line
    build_sinks(config, CLOCK)[0].close()
    (rotated,) = tmp_path.glob("notifications.jsonl.*")
    assert len(rotated.read_bytes().splitlines()) == 8  # kept, rotated, the torn line with the rest
    path.write_text("not a notification\n")
    with pytest.raises(NotifyError, match=r"sink archive: path .*notifications.jsonl: line 1 is not a notification this sink wrote"):
        build_sinks(config, CLOCK)
    assert path.read_text() == "not a notification\n"


def test_file_sink_applies_retention_while_idle(tmp_path: Path):
    path = tmp_path / "notifications.jsonl"
    config = make_config(tmp_path, [{"name": "archive", "type": "file", "authority": True, "path": str(path)}])
    moment = Clock(parse_instant(NOW))
    (sink,) = build_sinks(config, moment)
    deadline = parse_instant(NOW) + 60 * 10**9
    sink.deliver([({"notification": "bundle", "n": 1}, deadline)])
    sink.maintain(parse_instant(NOW))
    assert path.exists()
    moment.fixed = deadline + 1
    sink.maintain(moment.fixed)  # the earliest line's deadline passed: rotated, then deleted
    assert not list(tmp_path.glob("notifications.jsonl*"))
    sink.close()


def test_a_filter_reveals_nothing_the_sink_may_not_see(tmp_path: Path):
    """A sink limited to green that wants only high severity: a red marker's severity is withheld
    from it, so the filter cannot judge it and lets it through, rather than sending exactly the
    red events that are high."""
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [
            {"name": "anssi", "type": "stdout", "authority": True},
            {"name": "partner", "type": "webhook", "min_severity": "high", "max_tlp": "green", "url": f"http://127.0.0.1:{receiver.port}/"},
        ])
        replay_with(tmp_path, config, three_events(), markers=[
            {"id": "m-domain", "type": "domain", "value": "evil.example", "severity": "low", "tlp": "red"},
            {"id": "m-address", "type": "ipv4", "value": "203.0.113.9", "severity": "low"},
        ])
    finally:
        receiver.stop()
    markers = [document["event"]["marker"] for document in of_kind(receiver.documents, "event")]
    assert markers and all(marker == {"id": "m-domain", "tlp": "red", "bundle": "test-bundle", "bundle_version": 7} for marker in markers)


@pytest.mark.parametrize(("notify", "sinks", "message"), [
    ({}, [{"name": "a", "type": "webhook", "url": "http://collector.example/a b"}], r"sinks\[0\]\.url: .*spaces"),
    ({}, [{"name": "a", "type": "webhook", "url": "https://user:pw@collector.example/"}], r"sinks\[0\]\.url: .*user name"),
    ({}, [{"name": "a", "type": "file", "path": "x.jsonl"}, {"name": "b", "type": "file", "path": "./x.jsonl"}], r"sinks\[1\]\.path: \./x.jsonl is the file of another sink"),
    ({"retry_initial": 10.0, "retry_max": 5.0}, [], r"notify\.retry_initial: longer than retry_max"),
    ({"spool_max_bytes": 4096}, [], r"notify\.spool_max_bytes: must be at least 8192"),
])
def test_more_bad_notification_settings_name_the_key(notify: dict, sinks: list, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_config({"notify": notify, "sinks": sinks})


def test_outbox_deliver_refuses_a_spool_that_is_not_there(tmp_path: Path):
    config = tmp_path / "probe.toml"
    config.write_text('[[sinks]]\nname = "anssi"\ntype = "stdout"\nauthority = true\n')
    result = subprocess.run([str(PROBE), "outbox", "deliver", "--config", str(config), "--spool", str(tmp_path / "typo")], capture_output=True, text=True, timeout=60)
    assert_single_error(result, "typo: no spool there")
    assert not (tmp_path / "typo").exists()


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return int(stream.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_killed_probe_loses_nothing_and_its_delivery_process_goes(tmp_path: Path):
    """SIGKILL while the replay waits for an unreachable receiver: the delivery process notices
    and stops; a new start takes the spool (waiting for it if need be) and delivers everything."""
    port = free_port()
    config = tmp_path / "probe.toml"
    config.write_text(textwrap.dedent(f"""\
        [notify]
        spool_directory = "{tmp_path / 'spool'}"
        drain_timeout = 600
        retry_initial = 0.1
        retry_max = 0.2
        [[sinks]]
        name = "anssi"
        type = "webhook"
        authority = true
        url = "http://127.0.0.1:{port}/"
    """), encoding="utf-8")
    capture = write_pcap(tmp_path / "capture.pcap", dns_flows(10))
    bundle = write_bundle(tmp_path / "markers.json", MARKERS)
    replay = subprocess.Popen([str(PROBE), "replay", str(capture), "--markers", str(bundle), "--config", str(config), "--now", NOW, "--events", str(tmp_path / "events.jsonl")], stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: len(list((tmp_path / "spool").glob("*.spool"))) == 1)
    children = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(int(pid)) == replay.pid]
    assert len(children) == 1  # the delivery process
    time.sleep(1.0)  # the replay is done matching and waits for the receiver
    replay.kill()
    replay.wait()
    assert wait_until(lambda: not os.path.exists(f"/proc/{children[0]}") or " Z " in open(f"/proc/{children[0]}/stat").read(), timeout=30), "the delivery process outlived the probe"
    receiver = WebhookReceiver(port).start()
    try:
        deliver = subprocess.run([str(PROBE), "outbox", "deliver", "--config", str(config), "--now", NOW, "--timeout", "30"], capture_output=True, text=True, timeout=90)
    finally:
        receiver.stop()
    assert deliver.returncode == 0, deliver.stderr
    documents = receiver.documents
    assert len({document["event"]["event_id"] for document in of_kind(documents, "event")}) == 10
    assert len({document["idempotency_key"] for document in documents}) == 21  # 10 detected, 10 ended, 1 bundle


def test_a_delivery_process_that_dies_is_started_again(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    receiver = WebhookReceiver().start()
    try:
        config = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}])
        notifier, _ = replay_with(tmp_path, config, three_events(), close=False)
        assert notifier.outbox.drain(10) == {}
        with caplog.at_level(logging.WARNING, logger="probe"):
            os.kill(notifier.outbox._process.pid, signal.SIGKILL)
            assert wait_until(lambda: any("starting it again" in record.getMessage() for record in caplog.records))
            notifier.bundle_changed(BundleRecord(CLOCK.now(), "refused", "", "", 0, "", "late.json: refused: unsigned"))
            assert notifier.outbox.drain(20) == {}
        notifier.outbox.close()
    finally:
        receiver.stop()
    assert [document["notification"] for document in receiver.documents] == ["bundle"] + ["event"] * 6 + ["bundle"]


def test_a_sink_added_to_an_empty_spool_has_nothing_pending(tmp_path: Path):
    receiver = WebhookReceiver().start()
    try:
        first = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}])
        replay_with(tmp_path, first, three_events())
        both = make_config(tmp_path, [{"name": "anssi", "type": "webhook", "authority": True, "url": f"http://127.0.0.1:{receiver.port}/"}, {"name": "soc", "type": "stdout"}])
        outbox = Outbox(both, CLOCK)
        try:
            assert outbox.pending() == {"anssi": 0, "soc": 0}
            assert outbox.drain(5) == {}
        finally:
            outbox.close()
    finally:
        receiver.stop()
