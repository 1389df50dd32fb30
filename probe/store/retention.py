"""How long each record may be kept, and when it expires: the law's time limits in one place.

A record expires a whole number of calendar months after its own time (an event's last packet,
a bundle or audit record's making): six months at most (CPCE art. L33-14), less for a class the
operator limits further (three months for network-security data, art. R10-14 IV). Each class has
its own segments, so one class's limit never keeps another's records.
"""

from __future__ import annotations

from probe.clock import NANOSECONDS, add_months
from probe.config import MAXIMUM_RETENTION_MONTHS, StoreSection
from probe.match.markers import Marker

DEFAULT_CLASS = "events"
BUNDLES_CLASS = "bundles"
AUDIT_CLASS = "audit"
DAY = 86400 * NANOSECONDS


class Retention:
    def __init__(self, section: StoreSection) -> None:
        self.default_months = section.retention_months
        self.class_months = dict(section.class_retention_months)
        self.class_by_type = dict(section.class_by_type)
        self._cutoffs: dict[str, tuple[int, int]] = {}

    def months(self, record_class: str) -> int:
        if record_class in (BUNDLES_CLASS, AUDIT_CLASS):
            return MAXIMUM_RETENTION_MONTHS
        return self.class_months.get(record_class, self.default_months)

    def class_of(self, marker: Marker) -> str:
        """The marker's own class, else its type's class in the configuration, else the default."""
        return marker.retention_class or self.class_by_type.get(marker.type) or DEFAULT_CLASS

    def expiry(self, record_class: str, time: int) -> int:
        """When a record of `record_class` made at `time` (nanoseconds) must be gone."""
        return add_months(time, self.months(record_class))

    def expired(self, record_class: str, time: int, now: int) -> bool:
        return self.expiry(record_class, time) <= now

    def cutoff(self, record_class: str, now: int) -> int:
        """The latest record time already expired at `now` (rounded down to the second): a record
        of time t has expired when t <= cutoff. Found once per class and second, so that
        appending or reading a record costs one comparison."""
        second = now - now % NANOSECONDS
        cached = self._cutoffs.get(record_class)
        if cached is not None and cached[0] == second:
            return cached[1]
        months = self.months(record_class)
        low, high = add_months(second, -months) - 4 * DAY, second  # expiry is monotonic in the record time
        while low < high:
            middle = (low + high + 1) // 2
            if add_months(middle, months) <= second:
                low = middle
            else:
                high = middle - 1
        self._cutoffs[record_class] = (second, low)
        return low
