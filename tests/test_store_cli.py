"""`probe replay --store` and `probe store ...` end to end: the real console script, real files.

Captures are crafted at EPOCH (2023-11-14), so every command judges retention with --now a few
days later; without it those events are already past the six months and not stored.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from probe.store.records import KIND_AUDIT, KIND_BUNDLE
from tests.test_cli import EPOCH, PROBE, assert_single_error, dns_exchange, events_of, run_probe, tcp_session, http_get, udp_packets, write_bundle, write_pcap

NOW = "2023-11-20T00:00:00Z"
"""Six days after the crafted captures."""


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    """A store holding the events of one capture: an address hit on UDP, a DNS hit, an HTTP hit."""
    bundle = write_bundle(tmp_path / "markers.json", [
        {"id": "m-address", "type": "ipv4", "value": "203.0.113.9", "severity": "high"},
        {"id": "m-domain", "type": "domain", "value": "evil.example"},
        {"id": "m-host", "type": "http_host", "value": "c2.example", "tlp": "red"},
    ])
    packets = udp_packets("192.0.2.10", "203.0.113.9", count=3, start=EPOCH) + dns_exchange("192.0.2.11", "198.51.100.53", "www.evil.example", start=EPOCH + 1) + tcp_session("192.0.2.12", 45000, "198.51.100.80", 80, http_get("c2.example"), start=EPOCH + 2)
    capture = write_pcap(tmp_path / "capture.pcap", sorted(packets, key=lambda packet: packet.time))
    result = run_probe("replay", capture, "--markers", bundle, "--store", tmp_path / "store", "--now", NOW, "--events", tmp_path / "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert "probe: store: 7 records stored" in result.stderr  # 3 events x 2 revisions + 1 bundle activation
    return tmp_path / "store"


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def store_command(store: Path, command: str, *args: object, purpose: str | None = "incident 42: characterise the C2", env: dict | None = None) -> subprocess.CompletedProcess:
    arguments = [str(PROBE), "store", command, "--store", str(store), "--now", NOW, *map(str, args)]
    if purpose is not None:
        arguments += ["--purpose", purpose]
    completed = subprocess.run(arguments, capture_output=True, text=True, timeout=60, env=env)
    return completed


def raw_records(store: Path, record_class: str) -> list[list]:
    """Every record of a class, read straight from the segment files (not through the probe)."""
    from probe.store.framing import SEGMENT_MAGIC, read_frames, read_header

    records = []
    for segment in sorted((store / "segments" / record_class).glob("*.seg")):
        data = segment.read_bytes()
        _, start = read_header(str(segment), data, SEGMENT_MAGIC)
        payloads, end = read_frames(data, start)
        assert end == len(data)
        records += [msgpack.unpackb(payload) for payload in payloads]
    return records


def test_replay_stores_revision_0_at_the_first_hit_and_the_final_revision_at_flow_end(replayed: Path):
    revisions = [record[0] for record in raw_records(replayed, "events") if record[0] >= 0]
    assert sorted(revisions) == [0, 0, 0, 1, 1, 1]
    result = store_command(replayed, "query", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert [event["revision"] for event in events] == [1, 1, 1]
    file_events = events_of((replayed.parent / "events.jsonl").read_text())
    assert sorted(events, key=lambda event: event["event_id"]) == sorted(file_events, key=lambda event: event["event_id"])


def test_replay_of_a_capture_past_its_retention_stores_nothing_and_says_so(tmp_path: Path):
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "m", "type": "ipv4", "value": "203.0.113.9"}])
    capture = write_pcap(tmp_path / "capture.pcap", udp_packets("192.0.2.10", "203.0.113.9", start=EPOCH))
    result = run_probe("replay", capture, "--markers", bundle, "--store", tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert "2 event revisions not stored: already past their retention" in result.stderr
    assert not (tmp_path / "store" / "segments" / "events").exists()
    assert len(events_of(result.stdout)) == 1  # still detected and reported


def test_a_retention_beyond_six_months_is_refused_at_start_with_the_legal_reason(tmp_path: Path):
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "m", "type": "ipv4", "value": "203.0.113.9"}])
    capture = write_pcap(tmp_path / "capture.pcap", udp_packets("192.0.2.10", "203.0.113.9", start=EPOCH))
    for text in ("[store]\nretention_months = 7\n", "[store]\nclass_retention_months = { network = 12 }\n"):
        result = run_probe("replay", capture, "--markers", bundle, "--config", config_file(tmp_path, text), "--store", tmp_path / "store")
        assert_single_error(result, "refused", "six months at most", "L33-14")
        assert not (tmp_path / "store").exists()


def test_a_world_readable_store_is_refused_by_every_command(tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    store.chmod(0o755)
    bundle = write_bundle(tmp_path / "markers.json", [{"id": "m", "type": "ipv4", "value": "203.0.113.9"}])
    capture = write_pcap(tmp_path / "capture.pcap", udp_packets("192.0.2.10", "203.0.113.9", start=EPOCH))
    assert_single_error(run_probe("replay", capture, "--markers", bundle, "--store", store), f"run chmod 700 {store}")
    for command in ("query", "stats", "purge"):
        result = store_command(store, command, purpose="x" if command == "query" else None)
        assert result.returncode == 2 and f"run chmod 700 {store}" in result.stderr, result.stderr


def test_every_query_needs_a_purpose(replayed: Path):
    for command, extra in (("query", ()), ("export", ("--for-authority", "--marker", "m-address")), ("subscribers", ()), ("audit", ())):
        missing = store_command(replayed, command, *extra, purpose=None)
        assert missing.returncode == 2 and "Missing option '--purpose'" in missing.stderr
        blank = store_command(replayed, command, *extra, purpose="  ")
        assert blank.returncode == 2 and "--purpose must say why" in blank.stderr, blank.stderr
    assert [record for record in raw_records(replayed, "events")]  # the store is untouched
    assert not (replayed / "segments" / "audit").exists()  # and nothing was shown, nothing audited


def test_queries_filter_by_time_marker_and_address(replayed: Path):
    def ids(*args: object) -> list[str]:
        result = store_command(replayed, "query", "--format", "jsonl", *args)
        assert result.returncode == 0, result.stderr
        return [event["marker"]["id"] for event in events_of(result.stdout)]

    assert ids() == ["m-address", "m-domain", "m-host"]
    assert ids("--marker", "m-domain") == ["m-domain"]
    assert ids("--ip", "192.0.2.12") == ["m-host"]
    assert ids("--ip", "192.0.2.8/30") == ["m-address", "m-domain"]
    assert ids("--ip", "203.0.113.9") == ["m-address"]
    assert ids("--since", "2023-11-14T22:13:21Z") == ["m-domain", "m-host"]
    assert ids("--until", "2023-11-14T22:13:21Z") == ["m-address"]  # until is exclusive: the DNS query began at 22:13:21
    assert ids("--until", "2023-11-14T22:13:21.5Z") == ["m-address", "m-domain"]
    assert ids("--since", "2023-11-15") == []
    table = store_command(replayed, "query")
    assert table.stdout.splitlines()[0].split()[:3] == ["first_seen", "last_seen", "proto"]
    rows = list(csv.DictReader(io.StringIO(store_command(replayed, "query", "--format", "csv").stdout)))
    assert [row["marker_id"] for row in rows] == ["m-address", "m-domain", "m-host"]
    assert rows[2]["marker_value"] == "c2.example"


def test_the_tlp_limit_of_the_configuration_applies_to_store_outputs(replayed: Path, tmp_path: Path):
    config = config_file(tmp_path, "[events]\nmax_tlp = \"amber\"\n")
    result = store_command(replayed, "query", "--format", "jsonl", "--marker", "m-host", "--config", config)
    (event,) = events_of(result.stdout)
    assert event["marker"] == {"id": "m-host", "tlp": "red", "bundle": "test-bundle", "bundle_version": 7}


def test_every_query_and_export_is_audited_with_who_what_why_and_how_many(replayed: Path):
    store_command(replayed, "query", "--ip", "192.0.2.8/30", purpose="ticket 1")
    store_command(replayed, "export", "--for-authority", "--marker", "m-domain", "--format", "stix", purpose="ANSSI request 7")
    result = store_command(replayed, "audit", "--format", "jsonl", purpose="monthly review")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    user = pwd.getpwuid(os.getuid()).pw_name
    assert [(record["command"], record["purpose"], record["returned"], record["user"]) for record in records] == [("query", "ticket 1", 2, user), ("export", "ANSSI request 7", 1, user)]
    assert records[0]["filters"] == {"ip": "192.0.2.8/30", "format": "table", "now": NOW}
    assert records[1]["filters"]["for_authority"] == "True" and records[1]["filters"]["marker"] == "m-domain"
    again = store_command(replayed, "audit", "--format", "jsonl", purpose="second look")
    assert [json.loads(line)["command"] for line in again.stdout.splitlines()] == ["query", "export", "audit"]  # reading the log is audited too
    assert [record[4] for record in raw_records(replayed, "audit") if record[0] == KIND_AUDIT] == ["query", "export", "audit", "audit"]


@pytest.mark.skipif(os.getuid() != 0, reason="only root can act for another user as sudo does")
def test_the_audit_names_the_user_behind_sudo(replayed: Path):
    """Run with sudo's SUDO_UID: the record names that user, not the account the command ran as."""
    nobody = pwd.getpwnam("nobody")
    login_uid = Path("/proc/self/loginuid").read_text().strip()
    environment = {**os.environ, "SUDO_UID": str(nobody.pw_uid), "SUDO_USER": "nobody"}
    store_command(replayed, "query", purpose="on behalf", env=environment)
    result = store_command(replayed, "audit", "--format", "jsonl", purpose="check")
    first = json.loads(result.stdout.splitlines()[0])
    if login_uid == "4294967295":  # no login session: sudo's variables are what tell
        assert (first["user"], first["uid"]) == ("nobody", nobody.pw_uid)
    else:  # a login session: the kernel's login uid wins over anything in the environment
        assert first["uid"] == int(login_uid)


def test_export_for_the_authority_as_stix_sightings_of_the_markers_indicators(replayed: Path):
    result = store_command(replayed, "export", "--for-authority", "--marker", "m-address", "--format", "stix")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    objects = {stix_object["type"]: stix_object for stix_object in bundle["objects"]}
    assert set(objects) == {"ipv4-addr", "network-traffic", "observed-data", "sighting"}
    sighting, observed, traffic = objects["sighting"], objects["observed-data"], objects["network-traffic"]
    from probe.bundles.stix import indicator_id
    from probe.match.markers import Marker

    assert sighting["sighting_of_ref"] == indicator_id(Marker("m-address", "ipv4", "203.0.113.9", "test-bundle", 7), "test-bundle")
    assert sighting["observed_data_refs"] == [observed["id"]]
    assert traffic["id"] in observed["object_refs"]
    assert (traffic["src_port"], traffic["dst_port"], traffic["protocols"]) == (50000, 9999, ["ipv4", "udp"])
    addresses = {stix_object["value"] for stix_object in bundle["objects"] if stix_object["type"] == "ipv4-addr"}
    assert addresses == {"192.0.2.10", "203.0.113.9"}
    assert set(observed) == {"type", "spec_version", "id", "created", "modified", "first_observed", "last_observed", "number_observed", "object_refs"}
    one = store_command(replayed, "export", "--for-authority", "--event", sighting["description"].split()[3], "--format", "jsonl")
    assert [event["marker"]["id"] for event in events_of(one.stdout)] == ["m-address"]
    assert store_command(replayed, "export", "--for-authority", "--format", "jsonl").returncode == 2


def test_export_of_a_marker_imported_from_stix_refers_to_its_own_indicator(tmp_path: Path):
    indicator = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d", "objects": [
        {"type": "indicator", "spec_version": "2.1", "id": indicator, "created": "2023-01-01T00:00:00Z", "modified": "2023-01-01T00:00:00Z", "pattern": "[ipv4-addr:value = '203.0.113.9']", "pattern_type": "stix", "valid_from": "2023-01-01T00:00:00Z"},
    ]}))
    capture = write_pcap(tmp_path / "capture.pcap", udp_packets("192.0.2.10", "203.0.113.9", start=EPOCH))
    assert run_probe("replay", capture, "--markers", feed, "--store", tmp_path / "store", "--now", NOW).returncode == 0
    result = store_command(tmp_path / "store", "export", "--for-authority", "--marker", indicator, "--format", "stix")
    sightings = [stix_object for stix_object in json.loads(result.stdout)["objects"] if stix_object["type"] == "sighting"]
    assert [sighting["sighting_of_ref"] for sighting in sightings] == [indicator]


def test_subscribers_lists_each_subscriber_address_with_ports_and_exact_times(replayed: Path, tmp_path: Path):
    config = config_file(tmp_path, '[store]\nsubscriber_prefixes = ["192.0.2.0/24"]\n')
    result = store_command(replayed, "subscribers", "--config", config)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["subscriber_ip"], row["subscriber_port"], row["side"], row["peer_ip"], row["marker_id"]) for row in rows] == [
        ("192.0.2.10", "50000", "src", "203.0.113.9", "m-address"),
        ("192.0.2.11", "40000", "src", "198.51.100.53", "m-domain"),
        ("192.0.2.12", "45000", "src", "198.51.100.80", "m-host"),
    ]
    assert rows[0]["first_seen"] == "2023-11-14T22:13:20.000000Z" and rows[0]["last_seen"] == "2023-11-14T22:13:20.002000Z"
    narrowed = store_command(replayed, "subscribers", "--config", config, "--prefix", "192.0.2.8/30")
    assert [row["subscriber_ip"] for row in csv.DictReader(io.StringIO(narrowed.stdout))] == ["192.0.2.10", "192.0.2.11"]
    outside = store_command(replayed, "subscribers", "--config", config, "--prefix", "10.0.0.0/8")
    assert outside.returncode == 2 and "not inside the subscriber prefixes" in outside.stderr
    unconfigured = store_command(replayed, "subscribers")
    assert unconfigured.returncode == 2 and "subscriber_prefixes" in unconfigured.stderr


def test_stats_and_purge_by_the_clock(replayed: Path):
    stats = store_command(replayed, "stats", purpose=None)
    assert stats.returncode == 0, stats.stderr
    assert "class events (events, kept 6 months): 1 segments, 6 records" in stats.stdout
    assert "marker test-bundle/m-address: 2 records" in stats.stdout
    assert "next expiry: in 176 d 22 h 13 min" in stats.stdout  # 2023-11-14T22:13:20Z + 6 months
    kept = subprocess.run([str(PROBE), "store", "purge", "--store", str(replayed), "--now", "2024-05-14T00:00:00Z"], capture_output=True, text=True)
    assert kept.returncode == 0 and "purged 0 segment(s)" in kept.stdout
    purged = subprocess.run([str(PROBE), "store", "purge", "--store", str(replayed), "--now", "2024-05-15T00:00:00Z"], capture_output=True, text=True)
    assert purged.returncode == 0 and "purged 1 segment(s)" in purged.stdout, purged.stdout
    assert not list((replayed / "segments" / "events").glob("*.seg"))
    assert [record[2] for record in raw_records(replayed, "bundles") if record[0] == KIND_BUNDLE] == ["activated"]


DISK_FULL_WRITER = """
import os, sys
from probe.clock import Clock, parse_instant
from probe.config import StoreSection
from probe.store.ring import RingStore
from tests.store_support import make_event

directory, filler = sys.argv[1], sys.argv[2]
store = RingStore(os.path.join(directory, "store"), StoreSection(), Clock(parse_instant("2026-06-02T00:00:00Z")))
acknowledged = []

def append(count, offset):
    for number in range(count):
        store.append(make_event("2026-06-01T10:00:00Z", client_port=offset + number))
        if number % 50 == 49:
            acknowledged.extend(event.event_id for event in store.flush())
    acknowledged.extend(event.event_id for event in store.flush())

append(400, 0)
stored_before = store.stored
with open(filler, "wb", buffering=0) as stream:  # fill the disk
    try:
        while True:
            stream.write(b"x" * 4096)
    except OSError:
        pass
append(2000, 10000)
print("not_stored", store.not_stored, "stored_during", store.stored - stored_before, flush=True)
os.unlink(filler)
before = store.stored
append(400, 20000)
print("stored_after", store.stored - before, flush=True)
store.close()
reader = RingStore(os.path.join(directory, "store"), StoreSection(), Clock(parse_instant("2026-06-02T00:00:00Z")), writable=False)
found = {record.event_id for summary in reader.segments("events") for record in reader.read(summary)}
print("lost", len(set(acknowledged) - found), "acknowledged", len(acknowledged), flush=True)
"""


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None, reason="a real full disk needs a private tmpfs mount (root and unshare)")
def test_a_full_disk_is_reported_counted_and_storing_resumes_when_space_returns(tmp_path: Path):
    """A 1 MiB tmpfs in a private mount namespace: fill it, keep appending (every record refused
    is counted, the error logged once), free it, and storing resumes; nothing acknowledged is lost."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(DISK_FULL_WRITER)
    command = f"mount -t tmpfs -o size=1m tmpfs {mount_point} && chmod 700 {mount_point} && cd {Path(__file__).parents[1]} && PYTHONPATH=. {sys.executable} {script} {mount_point} {mount_point}/filler"
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = dict(zip(result.stdout.split()[::2], map(int, result.stdout.split()[1::2])))
    assert figures["not_stored"] > 0 and figures["stored_during"] < 2000
    assert figures["stored_after"] == 400
    assert figures["lost"] == 0 and figures["acknowledged"] >= 800
    errors = [line for line in result.stderr.splitlines() if "cannot store events: No space left on device" in line]
    assert errors, result.stderr
    assert len(errors) < 5  # reported once per outage, not once per record
    assert "storing again" in result.stderr


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run the probe as another user (setpriv)")
def test_a_store_of_another_user_is_refused_with_who_owns_it(replayed: Path):
    """Run as `nobody` (able to reach the interpreter, so that the probe's own check is what
    refuses): the store belongs to root, and the message says whose it is and what to do."""
    nobody = pwd.getpwnam("nobody").pw_uid
    command = [shutil.which("setpriv"), f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", str(PROBE), "store", "query", "--store", str(replayed), "--now", NOW, "--purpose", "x"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"{replayed}: owned by root (uid 0), not by this user (uid {nobody}): run the command as the store's owner, e.g. sudo -u root probe" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None, reason="a real full disk needs a private tmpfs mount (root and unshare)")
def test_a_query_that_cannot_be_audited_shows_nothing(replayed: Path, tmp_path: Path):
    """The audit record comes first: on a full disk the query fails with the reason, and not one
    event reaches stdout."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    fill = f"dd if=/dev/zero of={mount_point}/filler bs=4096 2>/dev/null; true"
    query = f"{PROBE} store query --store {mount_point}/store --now {NOW} --purpose 'full disk' --format jsonl"
    command = f"mount -t tmpfs -o size=1m tmpfs {mount_point} && cp -a {replayed} {mount_point}/store && {fill} && {query}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "cannot write the audit record, so nothing is shown: No space left on device" in result.stderr
    assert result.stdout == ""


def test_now_may_look_back_but_never_ahead(replayed: Path, tmp_path: Path):
    """A future --now would purge what the law still allows to keep: refused, nothing deleted.
    Audit records keep the real time whatever --now says (and record the --now given)."""
    segments = sorted(path.name for path in replayed.rglob("*.seg"))
    for command in ("stats", "purge"):
        result = subprocess.run([str(PROBE), "store", command, "--store", str(replayed), "--now", "2099-01-01"], capture_output=True, text=True)
        assert result.returncode == 2 and "later than the current time" in result.stderr, result.stderr
    future = store_command(replayed, "query", purpose="x")
    assert future.returncode == 0
    assert sorted(path.name for path in replayed.rglob("*.seg") if "audit" not in str(path)) == [name for name in segments]
    bundle = write_bundle(tmp_path / "m.json", [{"id": "m", "type": "ipv4", "value": "203.0.113.9"}])
    capture = write_pcap(tmp_path / "c.pcap", udp_packets("192.0.2.10", "203.0.113.9", start=EPOCH))
    assert_single_error(run_probe("replay", capture, "--markers", bundle, "--store", tmp_path / "s", "--now", "2099-01-01"), "later than the current time")
    audit = json.loads(store_command(replayed, "audit", "--format", "jsonl", purpose="y").stdout.splitlines()[0])
    assert audit["time"] > "2026" and audit["filters"]["now"] == NOW
