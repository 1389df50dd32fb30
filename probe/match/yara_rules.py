"""`yara` markers compiled once per marker set into one `yara.Rules`, matched against the first
bytes of each direction of a flow.

Each marker's text is compiled in a namespace of its own, named by its position ("m12"): a text
may hold several rules (a match of any maps back to its marker), and rule names, `global` and
`private` rules of one marker cannot reach another's.

What a rule can reach is what the probe gives it: the buffer. Rules are compiled with includes
disabled (an `include` would read a file of the probe's host at load time; such a marker is
refused) and without external variables (a rule naming one does not compile). The `console`
module would write values read from the payload to the probe's standard output: its messages are
discarded. The other modules YARA is built with here (pe, elf, dotnet, math, hash, string, time)
only read the buffer.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import yara

from probe.match.markers import Marker

YARA_TIMEOUT_SECONDS = 1
"""Longest one buffer may take to match, the shortest libyara can count: a slow rule costs the
worker at most this per buffer, then the buffer counts as a timeout and matches nothing."""


class YaraMatcher:
    """Every `yara` marker of one marker set, compiled once; picklable (workers receive it)."""

    def __init__(self, rules: Any, positions: dict[str, int], timeout: int) -> None:
        self.timeouts = 0
        """Buffers whose matching ran out of time (in this process)."""
        self.errors = 0
        """Buffers whose matching failed otherwise (in this process)."""
        self._rules = rules
        self._positions = positions
        """Namespace → position of its marker in the markers given to `build`."""
        self._timeout = timeout

    @classmethod
    def build(cls, markers: Sequence[Marker], timeout: int) -> YaraMatcher:
        """Compile the `yara` markers among `markers` (other types are left out); `match` reports
        positions in `markers`. Raises ValueError naming a marker whose text does not compile
        here (an include, an external variable), for its bundle to be refused."""
        sources = {f"m{position}": marker.value for position, marker in enumerate(markers) if marker.type == "yara"}
        try:
            rules = yara.compile(sources=sources, includes=False)
        except yara.Error as error:
            raise ValueError(_culprit(markers, sources) or f"YARA markers do not compile together: {error}") from None
        return cls(rules, {namespace: int(namespace[1:]) for namespace in sources}, timeout)

    def match(self, data: bytes) -> list[int]:
        """Positions of the markers with a rule matching `data`. Never raises: a timeout or a
        libyara error counts and matches nothing (libyara reports no rule before every
        condition is evaluated)."""
        try:
            matches = self._rules.match(data=data, timeout=self._timeout, console_callback=_discard)
        except yara.TimeoutError:
            self.timeouts += 1
            return []
        except yara.Error:
            self.errors += 1
            return []
        positions = self._positions
        return list(dict.fromkeys(positions[match.namespace] for match in matches))

    def __getstate__(self) -> dict[str, Any]:
        """`yara.Rules` pickles through its own saved form; the counters stay with the process."""
        saved = io.BytesIO()
        self._rules.save(file=saved)
        return {"rules": saved.getvalue(), "positions": self._positions, "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.timeouts = self.errors = 0
        self._rules = yara.load(file=io.BytesIO(state["rules"]))
        self._positions = state["positions"]
        self._timeout = state["timeout"]


def _culprit(markers: Sequence[Marker], sources: dict[str, str]) -> str | None:
    """libyara names a line, not the namespace it failed in: each text is compiled alone to find
    the marker at fault."""
    for namespace, text in sources.items():
        try:
            yara.compile(source=text, includes=False)
        except yara.Error as error:
            marker = markers[int(namespace[1:])]
            if "includes are disabled" in str(error):
                return f"YARA marker {marker.id}: include directives are refused (a rule may not read the probe's files)"
            return f"YARA marker {marker.id} does not compile: {error}"
    return None


def _discard(message: str) -> None:
    """`console` module output: it may hold payload, which the probe never writes out."""
