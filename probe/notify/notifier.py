"""`Notifier`: what the authority is told, and when.

The first detection of a (flow, marker) is notified at once (CPCE art. L33-14: without delay).
Later packets of that flow do not each make a notification: the pipeline revises the event when
the flow ends, and every `update_interval` while it goes on and keeps counting, and the revisions
of a notified event are notified too, with the same event id and the next revision number.

A marker that suddenly matches everything (a bad value, a popular address) must not flood the
receivers: each marker has a token bucket of `marker_burst` detections refilled at `marker_rate`
per second of capture time. A detection beyond it is stored as always, but not notified, nor are
its revisions; the count of such detections per marker goes out in one `suppressed` notification
at the next update interval, so the authority knows, and can export them from the store.

A notification is never made for data already past its retention (the store's rule, by the
same clock), and every one carries the retention deadline of what it holds into the spool.
"""

from __future__ import annotations

from typing import Any

from probe.clock import NANOSECONDS, Clock
from probe.config import Config
from probe.match.markers import Marker
from probe.notify.documents import bundle_document, event_item, probe_identity, suppressed_document
from probe.notify.outbox import Outbox
from probe.record.events import Event
from probe.store.records import BundleRecord
from probe.store.retention import BUNDLES_CLASS, Retention


class MarkerRate:
    """A token bucket in capture time."""

    __slots__ = ("tokens", "time")

    def __init__(self, tokens: float, time: int) -> None:
        self.tokens = tokens
        self.time = time


class Suppressed:
    __slots__ = ("marker", "count", "first", "last")

    def __init__(self, marker: Marker, time: int) -> None:
        self.marker = marker
        self.count = 0
        self.first = self.last = time


class Notifier:
    def __init__(self, config: Config, outbox: Outbox, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock
        self.identity = probe_identity(config)
        self.retention = Retention(config.store)
        self.rate_per_nanosecond = config.notify.marker_rate / NANOSECONDS
        self.burst = float(config.notify.marker_burst)
        self._rates: dict[tuple[str, str], MarkerRate] = {}
        self._suppressed: dict[tuple[str, str], Suppressed] = {}
        self._expiries: dict[tuple[str, int], int] = {}
        self.made = 0
        """Notifications handed to the outbox."""
        self.suppressed = 0
        """Detections not notified: their marker was over its rate."""
        self.expired_on_arrival = 0

    def detected(self, event: Event) -> bool:
        """Revision 0 of an event. False when its marker is over its rate: then neither it nor
        its revisions are notified."""
        marker = event.marker
        key = (marker.bundle, marker.id)
        moment = event.timestamp
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = MarkerRate(self.burst, moment)
        elif moment > rate.time:
            rate.tokens = min(self.burst, rate.tokens + (moment - rate.time) * self.rate_per_nanosecond)
            rate.time = moment
        if rate.tokens < 1.0:
            suppressed = self._suppressed.get(key)
            if suppressed is None:
                suppressed = self._suppressed[key] = Suppressed(marker, moment)
            suppressed.count += 1
            suppressed.first, suppressed.last = min(suppressed.first, moment), max(suppressed.last, moment)
            self.suppressed += 1
            return False
        rate.tokens -= 1.0
        self._put(event_item(event, "detected"), self._event_expiry(event))
        return True

    def revised(self, event: Event, final: bool) -> None:
        """A later revision of a notified event: its flow ended (`final`), or goes on."""
        self._put(event_item(event, "ended" if final else "updated"), self._event_expiry(event))

    def _event_expiry(self, event: Event) -> int:
        """The retention deadline of the event's last packet, found once per class and second
        (the second's start: a deadline up to a second early, which the law allows)."""
        record_class = self.retention.class_of(event.marker)
        second = event.last_seen - event.last_seen % NANOSECONDS
        key = (record_class, second)
        expiry = self._expiries.get(key)
        if expiry is None:
            if len(self._expiries) > 4096:
                self._expiries.clear()
            expiry = self._expiries[key] = self.retention.expiry(record_class, second)
        return expiry

    def bundle_changed(self, record: BundleRecord) -> None:
        self._put(bundle_document(record, self.identity), self.retention.expiry(BUNDLES_CLASS, record.time))

    def report_suppressed(self) -> None:
        """One `suppressed` notification per marker that went over its rate since the last call."""
        for suppressed in self._suppressed.values():
            document = suppressed_document(suppressed.marker, suppressed.count, suppressed.first, suppressed.last, self.identity)
            self._put(document, self.retention.expiry(self.retention.class_of(suppressed.marker), suppressed.last))
        self._suppressed.clear()

    def _put(self, document: dict[str, Any], expires: int) -> None:
        if expires <= self.clock.now():
            self.expired_on_arrival += 1
        elif self.outbox.put(document, expires):
            self.made += 1

def open_notifier(config: Config, clock: Clock) -> Notifier | None:
    """The configured sinks behind their outbox, its delivery process started; None without sinks."""
    if not config.sinks:
        return None
    return Notifier(config, Outbox(config, clock), clock)
