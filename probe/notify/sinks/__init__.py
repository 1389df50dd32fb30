"""Notification sinks: where notifications go. Each sink is given, in detection order, the
documents its filter takes, and acknowledges them by returning; `SinkError` says how many of them
it had delivered before it failed. One module per transport: `jsonl.py` (file, stdout),
`syslog.py` (RFC 5424 over UDP, TCP or a Unix socket), `webhook.py` (HTTP(S) POST), `nats.py`
(the fleet's JetStream stream)."""

from __future__ import annotations

import threading
from typing import Any

from probe.config import SinkSection
from probe.match.markers import SEVERITIES
from probe.notify.documents import document_marker


class SinkError(Exception):
    """A delivery failed; the first `delivered` documents of the call had been acknowledged."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink:
    best_effort = False
    """The transport acknowledges nothing: a completed send counts as delivered."""
    stopping: threading.Event | None = None
    """Set when delivery stops: a sink sending one document at a time checks it between two."""

    def __init__(self, section: SinkSection) -> None:
        self.section = section
        self.name = section.name
        self.authority = section.authority
        self.max_tlp = section.max_tlp
        self._types = frozenset(section.marker_types)
        self._min_severity = SEVERITIES.index(section.min_severity) if section.min_severity else None

    def wants(self, document: dict[str, Any]) -> bool:
        """An authority sink takes everything; others filter events (and suppressed counts) by
        marker type and severity, judged on the sink's own copy (its TLP rule applied, so that a
        filter reveals nothing the sink may not see). A marker without a severity, or whose type
        and severity its label withholds, passes: a filter never hides what it cannot judge."""
        if self.authority:
            return True
        marker = document_marker(document)
        if marker is None:
            return True
        if self._types and "type" in marker and marker["type"] not in self._types:
            return False
        severity = marker.get("severity")
        return self._min_severity is None or severity is None or SEVERITIES.index(severity) >= self._min_severity

    def describe(self) -> str:
        raise NotImplementedError

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        """Send (document, retention deadline) pairs in order; return once all are acknowledged."""
        raise NotImplementedError

    def check_stopping(self, delivered: int) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise SinkError("stopping", delivered)

    def maintain(self, now: int) -> None:
        """Periodic work while idle (a file sink's retention)."""

    def close(self) -> None:
        """Release connections and files."""
