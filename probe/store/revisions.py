"""Which event revisions a store already holds: how `probe collect` recognises a notification it
has stored before (a message redelivered after a crash, or published again by a probe after an
outage longer than JetStream's de-duplication window).

A revision is stored in the segment of its record class and of the period of its last packet, so
only that segment's parts can hold it. A sealed part answers from its Bloom filter of event ids
first; a part that may hold it, or one still open for appending, is read once and its (event id,
revision, observer) triples kept: the open ones while they are open (kept up to date as events
are appended), the others in a small cache.
"""

from __future__ import annotations

from collections import OrderedDict

from probe.record.events import Event
from probe.store.ring import RingStore
from probe.store.index import SegmentSummary

CACHED_SEGMENTS = 16
Revision = tuple[bytes, int, tuple[str, str] | None]
"""(event digest, revision, observing probe): one probe's notification of one revision."""


class StoredRevisions:
    def __init__(self, store: RingStore) -> None:
        self.store = store
        self._open: dict[str, set[Revision]] = {}
        self._sealed: OrderedDict[str, set[Revision]] = OrderedDict()

    def append_new(self, event: Event) -> bool:
        """Queue `event` in the store unless the store holds that revision already (False then)."""
        key = _revision(event)
        if len(self._open) > len(self.store.writers):
            self._open = {path: revisions for path, revisions in self._open.items() if path in self.store.writers}
        record_class = self.store.retention.class_of(event.marker)
        base = event.last_seen - event.last_seen % self.store.period
        if any(self._holds(summary, key) for summary in self.store.segments_of(record_class, base)):
            return False
        path = self.store.append(event)
        if path is not None:  # the part appended to (reopened if it was sealed, perhaps sealed again already)
            self._sealed.pop(path, None)
            revisions = self._open.get(path)
            if revisions is not None:
                revisions.add(key)
        return True

    def forget_open(self) -> None:
        """The store dropped queued records (a failed write): read the open segments again."""
        self._open.clear()

    def _holds(self, summary: SegmentSummary, key: Revision) -> bool:
        if summary.path in self.store.writers:
            return key in self._open_revisions(summary.path)
        return summary.may_contain(key[0]) and key in self._sealed_revisions(summary.path)

    def _open_revisions(self, path: str) -> set[Revision]:
        revisions = self._open.get(path)
        if revisions is None:
            revisions = self._open[path] = self._read(path)
            revisions.update(_revision(event) for event in self.store.writers[path].records if isinstance(event, Event))
        return revisions

    def _sealed_revisions(self, path: str) -> set[Revision]:
        revisions = self._sealed.get(path)
        if revisions is None:
            revisions = self._sealed[path] = self._read(path)
            if len(self._sealed) > CACHED_SEGMENTS:
                self._sealed.popitem(last=False)
        else:
            self._sealed.move_to_end(path)
        return revisions

    def _read(self, path: str) -> set[Revision]:
        return {_revision(record) for record in self.store.read(self.store.summaries[path]) if isinstance(record, Event)}


def _revision(event: Event) -> Revision:
    return (event.event_digest, event.revision, event.observer)
