"""`StoredRevisions`: how the collector knows a revision is already in its store, whatever the
segment's state (open, sealed, reopened for a late record and sealed again) and across a
restart. A wrong "not held" stores an event twice; a wrong "held" loses one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from probe.record.events import Event
from probe.store.retention import DEFAULT_CLASS
from probe.store.revisions import StoredRevisions
from probe.store.ring import RingStore
from tests.store_support import instant, make_event, open_store

NOW = "2026-06-02T12:00:00Z"
PARIS = ("paris-core-1", "paris")
LYON = ("lyon-core-1", "lyon")


def stored(store: RingStore) -> Counter:
    return Counter((record.event_id, record.revision, record.observer) for summary in store.segments() for record in store.read(summary))


def test_a_revision_is_held_in_an_open_segment_a_sealed_one_and_after_a_restart(tmp_path: Path):
    event = make_event("2026-06-02T08:00:05Z")._replace(observer=PARIS)
    store = open_store(tmp_path / "store", NOW)
    revisions = StoredRevisions(store)
    assert revisions.append_new(event)
    assert not revisions.append_new(event), "queued, not yet written"
    store.flush()
    assert not revisions.append_new(event), "written to the open segment"
    store.close()
    store = open_store(tmp_path / "store", NOW)
    assert not StoredRevisions(store).append_new(event), "sealed, read after a restart"
    store.close()
    assert stored(open_store(tmp_path / "store", NOW)) == Counter({(event.event_id, 1, PARIS): 1})


def sealed_and_cached(tmp_path: Path) -> tuple[RingStore, StoredRevisions, Event]:
    """A store whose 08:00 segment holds one revision, is sealed (a record three hours later
    moved the store on) and was read while sealed, its revisions cached; and that revision."""
    early = make_event("2026-06-02T08:00:05Z", revision=0)._replace(observer=PARIS)
    store = open_store(tmp_path / "store", NOW)
    revisions = StoredRevisions(store)
    assert revisions.append_new(early)
    store.flush()
    assert revisions.append_new(make_event("2026-06-02T11:00:05Z", client_port=50000)._replace(observer=PARIS))
    store.flush()
    assert not revisions.append_new(early), "held: the 08:00 segment is sealed now, and cached"
    return store, revisions, early


def test_a_late_record_in_a_sealed_segment_is_seen_once_the_segment_is_sealed_again(tmp_path: Path):
    """The segment of 08:00 is read while sealed (its revisions cached), reopened for a late
    revision and sealed again at once: a redelivery of that revision must be recognised."""
    store, revisions, early = sealed_and_cached(tmp_path)
    late = early._replace(revision=1)
    assert revisions.append_new(late)
    store.flush()
    assert not revisions.append_new(late), "the redelivered late revision"
    store.flush()
    counts = stored(store)
    assert sorted(revision for event_id, revision, _ in counts if event_id == early.event_id) == [0, 1] and max(counts.values()) == 1, counts
    store.close()


def test_the_same_event_from_two_probes_is_two_records(tmp_path: Path):
    """Two tap points can see one flow: the same event id, each probe's revision stored."""
    event = make_event("2026-06-02T08:00:05Z")
    store = open_store(tmp_path / "store", NOW)
    revisions = StoredRevisions(store)
    assert revisions.append_new(event._replace(observer=PARIS))
    assert revisions.append_new(event._replace(observer=LYON))
    assert not revisions.append_new(event._replace(observer=LYON))
    store.flush()
    assert stored(store) == Counter({(event.event_id, 1, PARIS): 1, (event.event_id, 1, LYON): 1})
    store.close()


def test_a_segment_split_in_parts_is_searched_in_each(tmp_path: Path, monkeypatch):
    """A period whose segment filled up continues in a part of its own (`-1.seg`): a revision in
    the first part is still found."""
    import probe.store.ring as ring

    monkeypatch.setattr(ring, "MAX_SEGMENT_RECORDS", 3)
    store = open_store(tmp_path / "store", NOW)
    revisions = StoredRevisions(store)
    events = [make_event(instant("2026-06-02T08:00:05Z") + position, client_port=40000 + position)._replace(observer=PARIS) for position in range(7)]
    assert all(revisions.append_new(event) for event in events)
    store.flush()
    parts = store.segments_of(DEFAULT_CLASS, instant("2026-06-02T08:00:00Z"))
    assert len(parts) == 3
    reads: Counter = Counter()
    read = store.read
    monkeypatch.setattr(store, "read", lambda summary, *arguments, **options: reads.update([summary.path]) or read(summary, *arguments, **options))
    assert not any(revisions.append_new(event) for event in events)
    assert revisions.append_new(make_event(instant("2026-06-02T08:00:05Z") + 7, client_port=40007)._replace(observer=PARIS))
    assert not any(revisions.append_new(event) for event in events)
    assert all(reads[part.path] <= 1 for part in parts if part.path not in store.writers), ("a sealed part is read once, then answered from the cache even after appends to another part", reads)
    store.close()


def test_a_late_record_that_fills_a_reopened_part_and_seals_it_at_once_is_seen(tmp_path: Path, monkeypatch):
    """The late revision is the part's last room: the store seals the part again within the
    append itself, and a redelivery must still be recognised."""
    import probe.store.ring as ring

    monkeypatch.setattr(ring, "MAX_SEGMENT_RECORDS", 2)
    store, revisions, early = sealed_and_cached(tmp_path)
    late = early._replace(revision=1)
    assert revisions.append_new(late)
    assert not any(summary.path in store.writers for summary in store.segments_of(DEFAULT_CLASS, instant("2026-06-02T08:00:00Z"))), "sealed again, full"
    assert not revisions.append_new(late), "the redelivered late revision"
    store.flush()
    assert max(stored(store).values()) == 1, stored(store)
    store.close()
