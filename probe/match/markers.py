"""Markers as the matcher sees them, whatever file they were loaded from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

ADDRESS_TYPES = ("ipv4", "ipv6")
TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
"""Traffic Light Protocol 2.0, least to most restricted."""
SEVERITIES = ("info", "low", "medium", "high", "critical")
RECORD_CLASS = re.compile(r"[a-z0-9_-]{1,32}")
"""Name of a store record class (a directory name): what a marker's `retention_class` may say."""
RESERVED_CLASSES = ("bundles", "audit")
"""The store's own record classes: bundle history and audit log."""


@dataclass(frozen=True, slots=True)
class Constraints:
    """Conditions on the flow a marker may hit; None means any."""

    protocols: frozenset[int] | None = None
    """IP protocol numbers."""
    ports: frozenset[int] | None = None
    """The flow's server (responder) port."""
    to_server: bool | None = None
    """True: the marked value is on the server's side; False: on the client's."""

    def allow(self, proto: int, server_port: int, to_server: bool) -> bool:
        return (self.protocols is None or proto in self.protocols) and (self.ports is None or server_port in self.ports) and (self.to_server is None or to_server == self.to_server)


class Marker(NamedTuple):
    """Immutable and hashable (flows key their hits by marker); a tuple, because a marker from a
    companion file is built at each hit, and a tuple is built in half the time of a frozen
    dataclass."""

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
    severity: str | None = None
    reference: str | None = None
    tlp: str | None = None
    """The stricter of the marker's and its bundle's labels."""
    name: str | None = None
    """`bytes` and `yara`: what events carry instead of the pattern or rule."""
    encoding: str | None = None
    """`bytes`: literal, hex or regex."""
    constraints: Constraints | None = None
    issuer: str = ""
    retention_class: str | None = None
    """The store's record class for its events (its own retention limit); None: by type."""

    def valid_at(self, timestamp: int) -> bool:
        return (self.valid_from is None or timestamp >= self.valid_from) and (self.valid_until is None or timestamp <= self.valid_until)
