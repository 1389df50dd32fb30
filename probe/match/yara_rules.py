"""`yara` markers compiled once per marker set into one YARA-X rule set, matched against the first
bytes of each direction of a flow.

YARA-X (the `yara-x` package, the YARA project's successor) rather than libyara: its scanner is
made once and reused, so matching a 4 KiB buffer against the benchmark's 50 rules takes about
2 µs where `yara.Rules.match` takes 14 µs, most of it setting up a scanner per call; with every
TCP flow's two directions matched, that was a sixth of the replay's time. Rules written for YARA
compile unchanged, but for the few constructs YARA-X documents as incompatible.

Each marker's text is compiled in a namespace of its own, named by its position ("m12"): a text
may hold several rules (a match of any maps back to its marker), and rule names, `global` and
`private` rules of one marker cannot reach another's.

What a rule can reach is what the probe gives it: the buffer. Rules are compiled with includes
disabled (an `include` would read a file of the probe's host at load time; such a marker is
refused) and without external variables (a rule naming one does not compile). The `console`
module would write values read from the payload out: its messages are discarded. The other
modules only read the buffer.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import yara_x

from probe.match.markers import Marker

YARA_TIMEOUT_SECONDS = 1
"""Longest one buffer may take to match: a slow rule costs the worker at most about this per
buffer (YARA-X checks its clock once a second), then the buffer counts as a timeout and matches
nothing."""


def add_rule(compiler: Any, text: str) -> None:
    """Add one marker's rule text to a compiler made by `new_compiler`. Raises ValueError saying
    on one line why it does not compile (YARA-X's first line, and what its caret line points
    at)."""
    try:
        compiler.add_source(text)
    except yara_x.CompileError as error:
        if "includes are disabled" in str(error):
            raise ValueError("include directives are refused (a rule may not read the probe's files)") from None
        lines = str(error).splitlines()
        detail = next((line.split("^", 1)[1].strip(" ^") for line in lines[1:] if "^" in line), "")
        raise ValueError(f"does not compile: {lines[0]} ({detail})" if detail else f"does not compile: {lines[0]}") from None


def new_compiler() -> Any:
    """Includes refused; regular expressions read as libyara reads them (`/ab{/`, `\\R`), so
    that rules written for YARA compile."""
    compiler = yara_x.Compiler(relaxed_re_syntax=True)
    compiler.enable_includes(False)
    return compiler


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
        self._scanner: Any = None
        """Made by the first `match`: a YARA-X scanner belongs to the thread that made it (the
        pipeline's), and a marker set is built on the reload thread of the live service."""
        self._clears_modules = bool(rules.imports())
        """Rules import modules (pe, dotnet...): what those derive from a buffer stays in the
        scanner until its next scan, so an empty scan follows each match to drop it."""

    @classmethod
    def build(cls, markers: Sequence[Marker], timeout: int) -> YaraMatcher:
        """Compile the `yara` markers among `markers` (other types are left out); `match` reports
        positions in `markers`. Raises ValueError naming a marker whose text does not compile
        here (an include, an external variable), for its bundle to be refused."""
        compiler = new_compiler()
        positions = {}
        for position, marker in enumerate(markers):
            if marker.type != "yara":
                continue
            namespace = f"m{position}"
            compiler.new_namespace(namespace)
            try:
                add_rule(compiler, marker.value)
            except ValueError as error:
                raise ValueError(f"YARA marker {marker.id}: {error}") from None
            positions[namespace] = position
        return cls(compiler.build(), positions, timeout)

    def match(self, data: bytes) -> list[int]:
        """Positions of the markers with a rule matching `data`. Never raises: a timeout or a
        scan error counts and matches nothing (no rule is reported before every condition is
        evaluated)."""
        scanner = self._scanner
        if scanner is None:
            scanner = self._scanner = yara_x.Scanner(self._rules)
            scanner.set_timeout(self._timeout)
            scanner.console_log(_discard)
        try:
            matches = scanner.scan(data).matching_rules
            if self._clears_modules:
                scanner.scan(b"")
        except yara_x.TimeoutError:
            self.timeouts += 1
            return []
        except yara_x.ScanError:
            self.errors += 1
            return []
        if not matches:
            return []
        positions = self._positions
        return list(dict.fromkeys(positions[match.namespace] for match in matches))

    def __getstate__(self) -> dict[str, Any]:
        """The rules pickle through YARA-X's own serialised form; the counters and the scanner stay
        with the process."""
        saved = io.BytesIO()
        self._rules.serialize_into(saved)
        return {"rules": saved.getvalue(), "positions": self._positions, "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(yara_x.Rules.deserialize_from(io.BytesIO(state["rules"])), state["positions"], state["timeout"])  # type: ignore[misc]


def _discard(message: str) -> None:
    """`console` module output: it may hold payload, which the probe never writes out."""
