"""Markers as the matcher sees them, whatever file they were loaded from."""

from __future__ import annotations

from dataclasses import dataclass

ADDRESS_TYPES = ("ipv4", "ipv6")
ACTIVE_TYPES = ("ipv4", "ipv6", "cidr", "domain")
"""Types this version matches; a file's markers of any other type are reported as not loaded."""


@dataclass(frozen=True, slots=True)
class Marker:
    id: str
    type: str
    value: str
    """Normalised value: the canonical text of an address or network, a lower-case name without
    trailing dot. This, never the observed traffic, is what an event records."""
    bundle: str
    bundle_version: int
    subdomains: bool = False
    """Domain markers: also match every name below `value`."""
    valid_from: int | None = None
    """Nanoseconds since the epoch; the marker matches no packet captured before."""
    valid_until: int | None = None

    def valid_at(self, timestamp: int) -> bool:
        return (self.valid_from is None or timestamp >= self.valid_from) and (self.valid_until is None or timestamp <= self.valid_until)


@dataclass
class MarkerFile:
    """What loading one file gave: its markers and what it could not use."""

    path: str
    bundle: str
    bundle_version: int
    markers: list[Marker]
    not_loaded: dict[str, int]
    """Count of entries per type this version does not match (reported, never silently dropped)."""
