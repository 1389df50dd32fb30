"""The ring store: retention by the calendar, record classes, revisions, permissions, size cap,
bad inputs, and the history of bundle versions. Crash safety is in test_store_crash.py, the
content allowlist in test_minimisation.py, the command line in test_store_cli.py."""

from __future__ import annotations

import io
import os
import struct
import time
from pathlib import Path

import msgpack
import pytest

from probe.bundles.library import LoadReport, MarkerLibrary
from probe.clock import Clock, add_months
from probe.config import Config, StoreSection
from probe.errors import StoreError
from probe.match.markers import Marker
from probe.pipeline import Pipeline
from probe.record.events import EventWriter
from probe.store.framing import FORMAT_VERSION, PREAMBLE, SEGMENT_MAGIC, frame
from probe.store.query import EventFilter, latest_events, parse_network
from probe.store.records import BundleRecord
from probe.store.retention import BUNDLES_CLASS
from probe.store.ring import RingStore
from tests.bundle_support import write_bundle
from tests.store_support import DOMAIN_MARKER, instant, make_event, open_store


def stored_ids(store) -> set[str]:
    return {event.event_id for event in latest_events(store, EventFilter())}


def files_under(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*.seg")}


# Calendar arithmetic


def test_add_months_keeps_the_day_or_ends_a_shorter_month():
    assert add_months(instant("2026-01-15T10:00:00Z"), 6) == instant("2026-07-15T10:00:00Z")
    assert add_months(instant("2026-08-31T00:00:00Z"), 6) == instant("2027-03-01T00:00:00Z")
    assert add_months(instant("2027-08-31T10:00:00Z"), 6) == instant("2028-03-01T00:00:00Z")
    assert add_months(instant("2027-08-29T10:00:00Z"), 6) == instant("2028-02-29T10:00:00Z")
    assert add_months(instant("2026-11-28T23:59:59Z"), 3) == instant("2027-02-28T23:59:59Z")
    assert add_months(instant("2026-11-30T00:00:00Z"), 3) == instant("2027-03-01T00:00:00Z")
    assert add_months(instant("2026-07-31T12:00:00Z"), 4) == instant("2026-12-01T00:00:00Z")
    assert add_months(instant("2026-07-31T12:00:00Z"), 5) == instant("2026-12-31T12:00:00Z")


def test_expiry_never_goes_backwards_and_the_cached_cutoff_agrees_with_it():
    """Around every month end of a leap and a common year: a later record never expires earlier,
    and `cutoff` (what appends and reads compare with) says exactly what `expired` says."""
    from probe.config import StoreSection
    from probe.store.retention import Retention

    retention = Retention(StoreSection(class_retention_months={"network": 3}))
    step = 3 * 3600 * 10**9
    for months, record_class in ((6, "events"), (3, "network")):
        times = [instant(f"{year}-{month:02d}-27T00:00:00Z") + number * step for year in (2027, 2028) for month in range(1, 13) for number in range(48)]
        expiries = [add_months(time, months) for time in times]
        assert expiries == sorted(expiries)
        for now in expiries[::7]:
            for probe_now in (now, now + 10**9, now - 10**9):
                cutoff = retention.cutoff(record_class, probe_now)
                assert all((time <= cutoff) == retention.expired(record_class, time, probe_now - probe_now % 10**9) for time in times)


# Retention, driven by the clock


def test_records_expire_exactly_six_calendar_months_after_their_last_packet(tmp_path: Path):
    """Events of months 0..7 (one a month); the clock moves month by month; each time exactly the
    events younger than six months remain, both for queries and on disk after a purge."""
    months = [f"2026-{month:02d}-10T12:00:00Z" for month in range(1, 9)]
    events = [make_event(when, client_port=40000 + number) for number, when in enumerate(months)]
    with open_store(tmp_path / "store", "2026-08-10T13:00:00Z") as store:
        for event in events:
            store.append(event)
        store.flush()
    for step in range(0, 9):
        now = add_months(instant("2026-08-10T13:00:00Z"), step)
        with open_store(tmp_path / "store", now) as store:  # each open purges
            expected = {event.event_id for event in events if add_months(event.last_seen, 6) > now}
            assert stored_ids(store) == expected, f"step {step}"
            kept_periods = {Path(summary.path).name for summary in store.segments("events")}
            assert len(kept_periods) == len(expected)
            assert all(store.retention.expiry("events", summary.time_max) > now for summary in store.segments("events"))


def test_a_record_is_gone_at_its_expiry_to_the_second_and_never_returned_after(tmp_path: Path):
    event = make_event("2026-03-31T23:30:00Z")
    with open_store(tmp_path / "store", "2026-04-01T00:00:00Z") as store:
        store.append(event)
        store.flush()
    expiry = add_months(event.last_seen, 6)
    assert expiry == instant("2026-10-01T00:00:00Z")  # no 31 September: the end of September
    with open_store(tmp_path / "store", expiry - 1) as store:
        assert stored_ids(store) == {event.event_id}
    with open_store(tmp_path / "store", expiry) as store:
        assert stored_ids(store) == set()
        assert not files_under(tmp_path / "store")


def test_an_expired_record_is_not_returned_while_its_segment_still_holds_a_live_one(tmp_path: Path):
    """Two records in one hourly segment, expiring 40 minutes apart: between the two expiries the
    segment stays on disk but returns only the live record."""
    early, late = make_event("2026-02-01T10:05:00Z", client_port=1), make_event("2026-02-01T10:45:00Z", client_port=2)
    with open_store(tmp_path / "store", "2026-02-02T00:00:00Z") as store:
        store.append(early)
        store.append(late)
        store.flush()
    with open_store(tmp_path / "store", "2026-08-01T10:30:00Z") as store:
        assert len(store.segments("events")) == 1
        assert stored_ids(store) == {late.event_id}
    with open_store(tmp_path / "store", "2026-08-01T10:45:00Z") as store:
        assert store.segments("events") == []


def test_a_shorter_class_expires_after_three_months_while_the_default_keeps_six(tmp_path: Path):
    """Network markers (ipv4) mapped to a three-month class (CPCE R10-14 IV); domains keep six."""
    settings = {"class_retention_months": {"network": 3}, "class_by_type": {"ipv4": "network"}}
    network_event = make_event("2026-01-10T00:00:00Z", client_port=1)
    domain_event = make_event("2026-01-10T00:00:00Z", client_port=2, marker=DOMAIN_MARKER)
    with open_store(tmp_path / "store", "2026-01-11T00:00:00Z", **settings) as store:
        store.append(network_event)
        store.append(domain_event)
        store.flush()
    assert {path.split("/")[1] for path in files_under(tmp_path / "store")} == {"network", "events"}
    with open_store(tmp_path / "store", "2026-04-09T23:59:59Z", **settings) as store:
        assert stored_ids(store) == {network_event.event_id, domain_event.event_id}
    with open_store(tmp_path / "store", "2026-04-10T00:00:00Z", **settings) as store:
        assert stored_ids(store) == {domain_event.event_id}
        assert [summary.record_class for summary in store.segments() if summary.record_class != "bundles"] == ["events"]
    with open_store(tmp_path / "store", "2026-07-10T00:00:00Z", **settings) as store:
        assert stored_ids(store) == set()


def test_a_marker_or_its_bundle_names_its_class(tmp_path: Path):
    """`retention_class` in a bundle applies to its markers; a marker's own wins."""
    path = write_bundle(tmp_path / "b.json", [
        {"id": "plain", "type": "ipv4", "value": "198.51.100.1"},
        {"id": "own", "type": "ipv4", "value": "198.51.100.2", "retention_class": "short"},
    ], retention_class="network")
    library = MarkerLibrary()
    report = library.load([str(path)])
    assert not report.refused
    markers = {marker.id: marker for marker in next(iter(library.bundles.values())).markers}
    settings = {"class_retention_months": {"network": 3, "short": 1}}
    with open_store(tmp_path / "store", "2026-01-11T00:00:00Z", **settings) as store:
        assert store.retention.class_of(markers["plain"]) == "network"
        assert store.retention.class_of(markers["own"]) == "short"
        store.append(make_event("2026-01-10T00:00:00Z", marker=markers["own"]))
        store.flush()
    assert files_under(tmp_path / "store") == {"segments/short/20260110T000000Z.seg"}
    with open_store(tmp_path / "store", "2026-02-10T00:00:00Z", **settings) as store:
        assert stored_ids(store) == set()


def test_a_bundle_with_a_bad_retention_class_is_refused(tmp_path: Path):
    path = write_bundle(tmp_path / "b.json", [{"id": "x", "type": "ipv4", "value": "198.51.100.1", "retention_class": "audit"}])
    report = MarkerLibrary().load([str(path)])
    assert report.refused and "retention_class" in report.refused[0]


def test_events_already_past_retention_are_counted_not_stored(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-11-01T00:00:00Z") as store:
        store.append(make_event("2026-04-30T23:59:59Z"))
        store.append(make_event("2026-05-01T00:00:01Z", client_port=2))
        store.flush()
        assert store.expired_on_arrival == 1
        assert store.stored == 1


# Revisions and segments


def test_queries_return_the_latest_revision_even_across_segments(tmp_path: Path):
    """Revision 0 at the first hit (10:59), revision 1 when the flow ended (11:20): two hourly
    segments, one event, its final counters."""
    first = make_event("2026-06-01T10:59:00Z", revision=0, duration=1)
    final = first._replace(revision=1, last_seen=instant("2026-06-01T11:20:00Z"), packets=900, bytes=120_000)
    assert first.event_id == final.event_id
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(first)
        store.append(final)
        store.flush()
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        assert len(store.segments("events")) == 2
        (event,) = latest_events(store, EventFilter())
        assert event == final
        (only_first,) = latest_events(store, EventFilter(until=instant("2026-06-01T11:00:00Z"), since=instant("2026-06-01T10:00:00Z")))
        assert only_first.revision == 1


def test_events_read_back_equal_what_was_written(tmp_path: Path):
    """Times to the microsecond (what events carry), IPv6, VLAN and tunnel encapsulation, a marker
    with every field."""
    marker = Marker(id="full", type="domain", value="evil.example", bundle="b2", bundle_version=7, severity="critical", reference="https://cert.example/advisory/1", tlp="amber", issuer="anssi", retention_class="events")
    tunnel = [{"type": "vlan", "id": 12}, {"type": "gre", "src": "203.0.113.1", "dst": "203.0.113.2", "key": 5}, {"type": "erspan", "version": 2, "session": 9}]
    events = [
        make_event("2026-06-01T10:00:00.123456Z", client="2001:db8::1", server="2001:db8::2", marker=marker, encapsulation=tunnel),
        make_event("2026-06-01T10:00:01.000001Z", client_port=65535, encapsulation=[{"type": "vlan", "id": 4094}]),
    ]
    events.append(events[1]._replace(opened=events[1].first_seen + 5000, src_port=1))  # first seen moved earlier than the opening packet
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for event in events:
            store.append(event)
        store.flush()
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        read = sorted(latest_events(store, EventFilter()), key=lambda event: event.src_port)
    assert sorted(events, key=lambda event: event.src_port) == read


def test_address_and_marker_filters_use_the_segment_index(tmp_path: Path):
    """Many segments; a filter reads only the segments whose summary may hold an answer, and
    answers exactly."""
    events = [make_event(f"2026-06-{day:02d}T{hour:02d}:30:00Z", client=f"10.{day}.{hour}.5", client_port=hour) for day in range(1, 11) for hour in range(0, 24, 3)]
    with open_store(tmp_path / "store", "2026-06-20T00:00:00Z") as store:
        for event in events:
            store.append(event)
        store.flush()
    with open_store(tmp_path / "store", "2026-06-20T00:00:00Z") as store:
        wanted = parse_network("10.4.9.5")
        candidates = [summary for summary in store.segments() if EventFilter(network=wanted).may_hold(summary)]
        assert len(candidates) < 4  # one, plus Bloom false positives
        assert [event.src for event in latest_events(store, EventFilter(network=wanted))] == [make_event("2026-06-04T09:30:00Z", client="10.4.9.5").src]
        assert len(latest_events(store, EventFilter(network=parse_network("10.4.0.0/16")))) == 8
        day = latest_events(store, EventFilter(since=instant("2026-06-05"), until=instant("2026-06-06")))
        assert len(day) == 8
        assert latest_events(store, EventFilter(marker="no-such-marker")) == []
        assert len(latest_events(store, EventFilter(marker="b1/m-ip"))) == len(events)
        target = events[17]
        assert latest_events(store, EventFilter(event=target.event_id)) == [target]


# Durability bookkeeping


def test_nothing_is_acknowledged_before_flush(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(make_event("2026-06-01T10:00:00Z"))
        assert store.stored == 0
        acknowledged = store.flush()
        assert store.stored == 1 and len(acknowledged) == 1


def test_flush_if_due_waits_at_most_the_flush_interval(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z", flush_interval=0.05) as store:
        store.append(make_event("2026-06-01T10:00:00Z"))
        assert store.flush_if_due() == []
        time.sleep(0.06)
        assert len(store.flush_if_due()) == 1


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z"):
        with pytest.raises(StoreError, match=f"in use by another probe process \\(pid {os.getpid()}\\)"):
            open_store(tmp_path / "store", "2026-06-02T00:00:00Z")


# Permissions and bad inputs


def test_a_new_store_is_private(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(make_event("2026-06-01T10:00:00Z"))
        store.flush()
    for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {mode:o}"


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o702])
def test_a_store_directory_others_can_read_or_write_is_refused_with_the_fix(tmp_path: Path, mode: int):
    directory = tmp_path / "store"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(StoreError, match=f"mode {mode:04o} .* run chmod 700 {directory}"):
        open_store(directory, "2026-06-02T00:00:00Z")


def test_a_segment_others_can_read_is_refused(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(make_event("2026-06-01T10:00:00Z"))
    segment = next((tmp_path / "store").rglob("*.seg"))
    segment.chmod(0o644)
    with pytest.raises(StoreError, match="run chmod 600"):
        open_store(tmp_path / "store", "2026-06-02T00:00:00Z")


def test_a_missing_store_is_an_error_for_readers(tmp_path: Path):
    with pytest.raises(StoreError, match="no store there"):
        RingStore(str(tmp_path / "absent"), StoreSection(), writable=False)


def test_a_store_path_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(tmp_path / "file", "2026-06-02T00:00:00Z")


def _segment_bytes(version: int, records: list[bytes]) -> bytes:
    header = frame(msgpack.packb({"class": "events", "base": 0}))
    return PREAMBLE.pack(SEGMENT_MAGIC, version, len(header)) + header + b"".join(frame(record) for record in records)


def test_a_segment_of_a_future_format_version_is_refused_not_misread(tmp_path: Path):
    directory = tmp_path / "store" / "segments" / "events"
    directory.mkdir(parents=True, mode=0o700)
    (tmp_path / "store").chmod(0o700)
    (tmp_path / "store" / "segments").chmod(0o700)
    path = directory / "20260601T100000Z.seg"
    path.write_bytes(_segment_bytes(FORMAT_VERSION + 1, [msgpack.packb([0, 1, 2])]))
    path.chmod(0o600)
    for writable in (True, False):
        with pytest.raises(StoreError, match=f"{path}: written by store format version {FORMAT_VERSION + 1}, this probe reads up to version {FORMAT_VERSION}"):
            RingStore(str(tmp_path / "store"), StoreSection(), writable=writable)
    assert path.read_bytes() == _segment_bytes(FORMAT_VERSION + 1, [msgpack.packb([0, 1, 2])])  # untouched


def test_a_foreign_file_among_segments_is_refused_by_name(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(make_event("2026-06-01T10:00:00Z"))
    stray = tmp_path / "store" / "segments" / "events" / "notes.txt"
    stray.write_text("x")
    stray.chmod(0o600)
    with pytest.raises(StoreError, match="notes.txt: not a segment of this store"):
        open_store(tmp_path / "store", "2026-06-02T00:00:00Z")
    stray.unlink()
    segment = next((tmp_path / "store").rglob("*.seg"))
    segment.write_bytes(b"GARBAGE!" + struct.pack("<HI", 1, 0))
    with pytest.raises(StoreError, match="not a probe store file"):
        open_store(tmp_path / "store", "2026-06-02T00:00:00Z")


# Size cap


def test_the_oldest_segments_are_evicted_at_max_bytes_each_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    events = [make_event(f"2026-06-01T{hour:02d}:10:00Z", client_port=hour) for hour in range(12)]
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for event in events:
            store.append(event)
        store.flush()
        per_segment = max(summary.length + summary.index_length for summary in store.segments("events"))
    limit = per_segment * 5  # room for five of the thirteen segments
    caplog.set_level("WARNING", logger="probe.store")
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z", max_bytes=limit) as store:
        store.append(make_event("2026-06-01T12:10:00Z", client_port=99))
        store.flush()
        assert store.total_bytes() <= limit
        assert store.evicted_segments == 8
        kept = stored_ids(store)
    assert events[0].event_id not in kept and events[-1].event_id in kept
    evictions = [record.getMessage() for record in caplog.records if "evicted before its retention ended" in record.getMessage()]
    assert len(evictions) == store.evicted_segments
    assert any("% of max_bytes" in record.getMessage() for record in caplog.records)


# Bundle history


def test_bundle_activations_refusals_and_expiries_are_kept(tmp_path: Path):
    good = write_bundle(tmp_path / "good.json", [{"id": "a", "type": "ipv4", "value": "198.51.100.1"}], valid_until="2026-06-01T12:00:00Z")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    library = MarkerLibrary()
    report = library.load([str(good), str(bad)])
    with open_store(tmp_path / "store", "2026-06-01T10:00:00Z") as store:
        pipeline = Pipeline(Config(), library, EventWriter(io.StringIO()), store)
        pipeline.record_load(report, store.clock.now())
        for moment in ("2026-06-01T11:00:00Z", "2026-06-01T13:00:00Z", "2026-06-01T14:00:00Z"):  # the capture's clock
            pipeline.now = instant(moment)
            pipeline.note_expired_bundles()
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        records = [record for summary in store.segments(BUNDLES_CLASS) for record in store.read(summary)]
    assert [record.action for record in records] == ["activated", "refused", "expired"]
    activated, refused, expired = records
    assert isinstance(activated, BundleRecord) and (activated.bundle, activated.version, activated.digest) == ("test-bundle", 1, library.bundles[("test", "test-bundle")].digest)
    assert "bad.json" in refused.reason and "not valid JSON" in refused.reason
    assert expired.time == instant("2026-06-01T12:00:00Z")


def test_record_load_takes_the_report_of_a_refused_reload(tmp_path: Path):
    with open_store(tmp_path / "store", "2026-06-01T10:00:00Z") as store:
        Pipeline(Config(), MarkerLibrary(), EventWriter(io.StringIO()), store).record_load(LoadReport(refused=["x.json: refused: unsigned"]), store.clock.now())
    with open_store(tmp_path / "store", "2026-06-01T10:00:00Z") as store:
        (record,) = [record for summary in store.segments(BUNDLES_CLASS) for record in store.read(summary)]
    assert record.action == "refused" and record.reason == "x.json: refused: unsigned"


def test_reading_skips_nothing_silently_when_a_sealed_segment_rots(tmp_path: Path):
    """A byte flipped inside a sealed segment (after it was indexed): the records before it are
    returned, none after it, and the problem is reported."""
    events = [make_event("2026-06-01T10:00:00Z", client_port=port) for port in range(1, 6)]
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for event in events:
            store.append(event)
            store.flush()
    segment = next((tmp_path / "store" / "segments" / "events").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF
    segment.write_bytes(bytes(data))
    store = RingStore(str(tmp_path / "store"), StoreSection(), Clock(instant("2026-06-02T00:00:00Z")), writable=False)
    returned = latest_events(store, EventFilter())
    assert sorted(event.src_port for event in returned) == [1, 2, 3, 4]
    assert any("unreadable from byte" in problem for problem in store.problems)



def test_a_reader_purges_at_open_unless_a_writer_holds_the_store(tmp_path: Path):
    """Every open purges: a reader does it itself when no writing process runs; beside a writer
    (which purges on its own every minute) it leaves the files alone but returns nothing expired."""
    event = make_event("2026-01-10T00:00:00Z")
    with open_store(tmp_path / "store", "2026-01-11T00:00:00Z") as store:
        store.append(event)
    later = instant("2026-07-10T00:00:00Z")
    with open_store(tmp_path / "store", "2026-01-11T00:00:00Z"):
        reader = RingStore(str(tmp_path / "store"), StoreSection(), Clock(later), writable=False)
        assert stored_ids(reader) == set()
        assert files_under(tmp_path / "store")
    reader = RingStore(str(tmp_path / "store"), StoreSection(), Clock(later), writable=False)
    assert reader.purged_segments == 1 and not files_under(tmp_path / "store")
    assert open_store(tmp_path / "store", later).maintaining  # the reader released the lock


def test_a_refused_event_leaves_its_segment_readable(tmp_path: Path):
    """An event the allowlist refuses must not leave a marker or encapsulation declared in the
    segment's dictionary but never written: the next event would refer to nothing."""
    from probe.store.records import RecordError

    tunnel = [{"type": "vlan", "id": 7}]
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for bad in (make_event("2026-06-01T10:00:00Z", encapsulation=tunnel)._replace(matched_on="http.path"), make_event("2026-06-01T10:00:00Z")._replace(encapsulation=[{"type": "vlan", "payload": "x"}])):
            with pytest.raises(RecordError):
                store.append(bad)
        good = make_event("2026-06-01T10:00:00Z", encapsulation=tunnel)
        store.append(good)
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        assert latest_events(store, EventFilter()) == [good]


def test_an_index_left_half_written_by_a_killed_process_is_removed_at_open(tmp_path: Path):
    """A kill while sealing leaves `<segment>.idx.<pid>.tmp`; a later process with the same pid
    must still be able to seal that segment."""
    store = open_store(tmp_path / "store", "2026-06-02T00:00:00Z")
    store.append(make_event("2026-06-01T10:00:00Z"))
    store.flush()
    store._release_lock()  # dies without sealing
    segment = next((tmp_path / "store").rglob("*.seg"))
    stale = segment.with_name(segment.name[:-4] + f".idx.{os.getpid()}.tmp")
    stale.write_bytes(b"half an index")
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as reopened:
        assert len(latest_events(reopened, EventFilter())) == 1
    assert not stale.exists() and segment.with_suffix(".idx").exists()


def test_a_full_period_goes_on_in_a_new_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """However many events one period holds, a segment stays bounded: a full one is sealed and the
    period continues in `<start>-1.seg`, `<start>-2.seg`...; every part is read back, and a later
    writer appends to the last part."""
    import probe.store.ring as ring

    monkeypatch.setattr(ring, "MAX_SEGMENT_RECORDS", 10)
    events = [make_event("2026-06-01T10:30:00Z", client_port=port) for port in range(25)]
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for event in events:
            store.append(event)
    names = sorted(path.name for path in (tmp_path / "store" / "segments" / "events").glob("*.seg"))
    assert names == ["20260601T100000Z-1.seg", "20260601T100000Z-2.seg", "20260601T100000Z.seg"]
    late = make_event("2026-06-01T10:40:00Z", client_port=99)
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        assert [summary.records for summary in store.segments("events")] == [10, 10, 5]
        store.append(late)
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        assert [summary.records for summary in store.segments("events")] == [10, 10, 6]
        assert stored_ids(store) == {event.event_id for event in [*events, late]}


def test_ipv6_filters_that_cover_ipv4_addresses_find_them(tmp_path: Path):
    """IPv4 addresses are kept as IPv4: `::/0` covers them, `::ffff:a.b.c.d/n` means the IPv4
    network, and the pre-filter agrees with the exact test."""
    v4 = make_event("2026-06-01T10:00:00Z", client="192.0.2.10", client_port=1)
    v6 = make_event("2026-06-01T10:00:00Z", client="2001:db8::10", server="2001:db8::7", client_port=2)
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        store.append(v4)
        store.append(v6)
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        def found(text: str) -> set[int]:
            return {event.src_port for event in latest_events(store, EventFilter(network=parse_network(text)))}

        assert found("::/0") == {1, 2}
        assert found("::ffff:192.0.2.0/120") == {1}
        assert found("::ffff:192.0.2.10") == {1}
        assert found("2001:db8::/32") == {2}
        assert found("0.0.0.0/0") == {1}


def test_more_periods_at_once_than_open_segments_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Captures out of time order open many periods: the oldest open segment is sealed to make
    room, never the one just opened."""
    import probe.store.ring as ring

    monkeypatch.setattr(ring, "MAX_OPEN_SEGMENTS", 3)
    events = [make_event(f"2026-06-01T{hour:02d}:10:00Z", client_port=hour) for hour in (9, 8, 7, 6, 5, 4, 3)]
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        for event in events:
            store.append(event)
        assert store.not_stored == 0
    with open_store(tmp_path / "store", "2026-06-02T00:00:00Z") as store:
        assert stored_ids(store) == {event.event_id for event in events}


def test_a_purge_keeps_a_segment_whose_waiting_record_is_still_live(tmp_path: Path):
    old, waiting = make_event("2026-01-01T05:01:00Z", client_port=1), make_event("2026-01-01T05:40:00Z", client_port=2)
    with open_store(tmp_path / "store", "2026-01-02T00:00:00Z") as store:
        store.append(old)
        store.flush()
        store.append(waiting)
        assert store.purge(now=instant("2026-07-01T05:05:00Z")) == []
        store.flush()
    with open_store(tmp_path / "store", "2026-07-01T05:05:00Z") as store:
        assert stored_ids(store) == {waiting.event_id}


def test_the_writer_purges_audit_records_other_processes_appended(tmp_path: Path):
    """Queries append audit records beside the running writer; its purge reads the audit segments
    again, so they expire like everything else."""
    from probe.store.records import AuditRecord

    with open_store(tmp_path / "store", "2026-01-02T00:00:00Z") as writer:
        writer.append(make_event("2026-01-01T10:00:00Z"))
        writer.flush()
        reader = RingStore(str(tmp_path / "store"), StoreSection(), Clock(instant("2026-01-02T00:00:00Z")), writable=False)
        reader.append_audit(AuditRecord(instant("2026-01-01T11:00:00Z"), "alice", 1000, "query", {"ip": "192.0.2.10"}, "ticket", 1))
        assert (tmp_path / "store" / "segments" / "audit").exists()
        deleted = writer.purge(now=instant("2026-07-01T11:00:00Z"))
        assert {summary.record_class for summary in deleted} == {"events", "audit"}
    assert not list((tmp_path / "store" / "segments").rglob("*.seg"))


def test_damage_inside_a_segment_sets_it_aside_instead_of_cutting_acknowledged_records(tmp_path: Path):
    """A crash tears only the tail; a bad header or a bad frame followed by good ones is damage:
    the whole segment is set aside as `.corrupt` (reported), not truncated, and deleted only when
    its period's retention ends."""
    for where in ("header", "middle"):
        directory = tmp_path / where
        events = [make_event("2026-06-01T10:00:00Z", client_port=port) for port in range(1, 6)]
        with open_store(directory, "2026-06-02T00:00:00Z") as store:
            for event in events:
                store.append(event)
                store.flush()
        segment = next((directory / "segments" / "events").glob("*.seg"))
        data = bytearray(segment.read_bytes())
        data[20 if where == "header" else len(data) // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
        segment.with_suffix(".idx").unlink()  # as if it was never sealed
        with open_store(directory, "2026-06-02T00:00:00Z") as store:
            assert stored_ids(store) == set()
            assert any("set aside" in line for line in store.recovered)
        aside = segment.with_name(segment.name + ".corrupt")
        assert aside.read_bytes() == bytes(data) and not segment.exists()
        with open_store(directory, "2026-12-01T10:59:59Z"):
            assert aside.exists()
        with open_store(directory, "2026-12-01T11:00:00Z"):
            assert not aside.exists()
