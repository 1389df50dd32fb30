"""How long each record may be kept, and when it expires: the law's time limits in one place.

A record expires a whole number of calendar months after its own time (an event's last packet,
a bundle or audit record's making): six months at most (CPCE art. L33-14), less for a class the
operator limits further (three months for network-security data, art. R10-14 IV). Each class has
its own segments, so one class's limit never keeps another's records.
"""

from __future__ import annotations

from probe.clock import add_months
from probe.config import MAXIMUM_RETENTION_MONTHS, StoreSection
from probe.match.markers import Marker

DEFAULT_CLASS = "events"
BUNDLES_CLASS = "bundles"
AUDIT_CLASS = "audit"


class Retention:
    def __init__(self, section: StoreSection) -> None:
        self.default_months = section.retention_months
        self.class_months = dict(section.class_retention_months)
        self.class_by_type = dict(section.class_by_type)

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
