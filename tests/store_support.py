"""Helpers for store tests: events built directly (no capture needed) and stores opened on tmp_path."""

from __future__ import annotations

from pathlib import Path

from probe.clock import NANOSECONDS, Clock, parse_instant
from probe.config import StoreSection
from probe.decode.packet import address_key
from probe.match.markers import Marker
from probe.record.events import Event
from probe.store.ring import RingStore

MARKER = Marker(id="m-ip", type="ipv4", value="198.51.100.7", bundle="b1", bundle_version=3, severity="high", issuer="test")
DOMAIN_MARKER = Marker(id="m-domain", type="domain", value="evil.example", bundle="b1", bundle_version=3, subdomains=True, issuer="test")


def instant(text: str) -> int:
    return parse_instant(text)


def make_event(when: str | int, client: str = "192.0.2.10", server: str = "198.51.100.7", client_port: int = 40000, marker: Marker = MARKER, revision: int = 1, duration: float = 2.0, encapsulation: list[dict] | None = None) -> Event:
    """An event whose last packet is at `when` (RFC 3339 text or nanoseconds)."""
    last = instant(when) if isinstance(when, str) else when
    first = last - int(duration * NANOSECONDS)
    return Event(revision, first, 6, address_key(client), client_port, address_key(server), 443, True, "ip.dst", marker, encapsulation or [], first, first, last, 12, 3400, 1)


def open_store(directory: Path, now: str | int, **settings: object) -> RingStore:
    fixed = instant(now) if isinstance(now, str) else now
    return RingStore(str(directory), StoreSection(**settings), Clock(fixed))  # type: ignore[arg-type]
