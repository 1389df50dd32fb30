"""One complete version of the marker set, compiled for matching.

Built outside the hot path (in the background on a reload) from the active bundles, then handed to
the pipeline whole: the pipeline takes the new version between two batches, so every packet is
matched against exactly one complete version, never a half-built one. Byte patterns and YARA rules
are compiled here, once per version, never per flow.
"""

from __future__ import annotations

from probe.bundles.format import Bundle
from probe.match.index import MarkerIndex
from probe.match.name_filter import NameFilter
from probe.match.patterns import PatternMatcher
from probe.match.yara_rules import YARA_TIMEOUT_SECONDS, YaraMatcher


class CompiledMarkers:
    def __init__(self, bundles: list[Bundle]) -> None:
        self.bundles = bundles
        self.index = index = MarkerIndex(bundles)
        self.name_filter = NameFilter(index)
        self.patterns = PatternMatcher.build(index.pattern_markers) if index.pattern_markers else None
        self.yara = YaraMatcher.build(index.yara_markers, YARA_TIMEOUT_SECONDS) if index.yara_markers else None
        self.fingerprints = bool(index.fingerprints)
        """Every ClientHello must be read (the name filter cannot rule one out)."""
        self.certificates = bool(index.certificates)
        """The server side of TLS flows must be read up to its Certificate message."""
        self.payload = self.patterns is not None or self.yara is not None
        """Every TCP flow's first bytes, both directions, must be read."""

    @property
    def active_count(self) -> int:
        return self.index.active
