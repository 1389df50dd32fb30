"""Which event revisions a store already holds: how `probe collect` recognises a notification it
has stored before (a message redelivered after a crash, or published again by a probe after an
outage longer than JetStream's de-duplication window).

A revision is stored in the segment of its record class and of the period of its last packet, so
only that segment's parts can hold it. A sealed part answers from its Bloom filter of event ids
first; a part that may hold it, or one still open for appending, is read once and its (event id,
revision) pairs kept: the open ones while they are open (kept up to date by `added`), the
others in a small cache.
"""

from __future__ import annotations

from collections import OrderedDict

from probe.record.events import Event
from probe.store.ring import RingStore

CACHED_SEGMENTS = 16


class StoredRevisions:
    def __init__(self, store: RingStore) -> None:
        self.store = store
        self._open: dict[str, set[tuple[bytes, int]]] = {}
        self._sealed: OrderedDict[str, set[tuple[bytes, int]]] = OrderedDict()

    def holds(self, event: Event) -> bool:
        key = (event.event_digest, event.revision)
        for summary in self._candidates(event):
            if summary.path in self.store.writers:
                if key in self._open_revisions(summary.path):
                    return True
            elif summary.may_contain(key[0]) and key in self._sealed_revisions(summary.path):
                return True
        return False

    def added(self, events: list[Event]) -> None:
        """Events just appended (queued in the store's open segments)."""
        for event in events:
            for summary in self._candidates(event):
                revisions = self._open.get(summary.path)
                if summary.path in self.store.writers and revisions is not None:
                    revisions.add((event.event_digest, event.revision))

    def forget_open(self) -> None:
        """The store dropped queued records (a failed write): read the open segments again."""
        self._open.clear()

    def _candidates(self, event: Event) -> list:
        store = self.store
        record_class = store.retention.class_of(event.marker)
        base = event.last_seen - event.last_seen % store.period
        for path in [path for path in self._open if path not in store.writers]:  # sealed since: read again if needed
            del self._open[path]
        return [summary for summary in store.summaries.values() if summary.base == base and summary.record_class == record_class] + [
            writer.summary for path, writer in store.writers.items() if path not in store.summaries and writer.summary.base == base and writer.summary.record_class == record_class]

    def _open_revisions(self, path: str) -> set[tuple[bytes, int]]:
        revisions = self._open.get(path)
        if revisions is None:
            revisions = self._open[path] = self._read(path)
            writer = self.store.writers[path]
            revisions.update((event.event_digest, event.revision) for event in writer.records if isinstance(event, Event))
        return revisions

    def _sealed_revisions(self, path: str) -> set[tuple[bytes, int]]:
        revisions = self._sealed.get(path)
        if revisions is None:
            revisions = self._sealed[path] = self._read(path)
            if len(self._sealed) > CACHED_SEGMENTS:
                self._sealed.popitem(last=False)
        else:
            self._sealed.move_to_end(path)
        return revisions

    def _read(self, path: str) -> set[tuple[bytes, int]]:
        summary = self.store.summaries.get(path) or self.store.writers[path].summary
        return {(record.event_digest, record.revision) for record in self.store.read(summary) if isinstance(record, Event)}
