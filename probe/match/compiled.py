"""One complete version of the marker set, compiled for matching.

Built outside the hot path (in the background on a reload) from the active bundles, then handed to
the pipeline whole: the pipeline takes the new version between two batches, so every packet is
matched against exactly one complete version, never a half-built one.
"""

from __future__ import annotations

from probe.bundles.format import Bundle
from probe.match.index import MarkerIndex
from probe.match.name_filter import NameFilter


class CompiledMarkers:
    def __init__(self, bundles: list[Bundle]) -> None:
        self.bundles = bundles
        self.index = MarkerIndex(bundles)
        self.name_filter = NameFilter(self.index)

    @property
    def active_count(self) -> int:
        return self.index.active

    @property
    def inactive(self) -> dict[str, int]:
        return self.index.inactive
