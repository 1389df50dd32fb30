"""`bytes` markers compiled once per marker set and matched against each direction of a flow as a
stream: a pattern split across two segments matches, and nothing of the payload is kept for it.

Two engines, one API (`PatternMatcher.open()` gives a `PatternStream` per flow direction):

- "hyperscan" (x86_64): every pattern in one Hyperscan database in streaming mode. Between two
  `scan` calls Hyperscan keeps only its stream state, a fixed size per database
  (`PatternMatcher.state_bytes`, a few dozen bytes for a few hundred patterns), never payload.
  Literal and hex markers are written as `\\xHH` escapes, regular expressions are rewritten from
  Python's own parse of them (see `_hyperscan_expression`), so Hyperscan matches what Python's `re`
  would, NUL bytes included.
- "python" (where Hyperscan is not installed): literals and hex with one Aho-Corasick automaton,
  over the new data and the last (longest literal - 1) bytes before it, so that a split literal
  matches; regular expressions with `re`, over the new data and the bytes before it that a match
  completed by it may start in (its longest match, from Python's parse of it, and the bytes its
  assertions look at around it), at most `REGEX_WINDOW`. A match longer than that (`.*`, `+`) is
  missed in this mode when it starts more than `REGEX_WINDOW` bytes before the data that completes
  it. That history is what a stream keeps (`state_bytes`): tens of bytes for bounded patterns.

What a stream means, in both engines:

- each pattern is reported at most once per stream, `reset()` included;
- `reset()` (bytes are missing) starts the stream anew: no match spans the gap, and a pattern
  anchored at the start (`^`, `\\A`) may match the first bytes after it;
- the end of a stream is never known (the probe stops reading at a depth), so what a pattern says
  of the bytes after its match waits for them: an end anchor (`$` without multi-line, `\\Z`) never
  matches, `(?m)$` matches before a line feed, a `\\b` that ends a match waits for the next byte,
  and so do lookaheads (python mode only: Hyperscan refuses them) for the bytes they look at. In
  the python mode, a match overlapping an earlier one that waits may be missed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from re import _constants as sre, _parser as sre_parse
from typing import Any, Protocol

import ahocorasick

from probe.match.markers import Marker

try:
    import hyperscan
except ImportError:
    hyperscan = None

ENGINES = ("hyperscan", "python")
REGEX_WINDOW = 4096
"""Python mode: bytes before the new data that a regular expression match may start in, at most
(an unbounded repeat would otherwise keep the whole stream)."""
_NEXT = b"\x00"
"""Python mode: follows the window when a pattern looks past its match (`$`, `\\Z`, `\\b`, `\\B`,
a lookahead), so that `$` and `\\Z` see no end there; a match hits once every byte it looks at is
real data, and waits for the next data otherwise."""
_AHEAD = frozenset((sre.AT_END, sre.AT_END_STRING, sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY))
"""Anchors that look at the byte after them."""

_ALL_BYTES = frozenset(range(256))
_DIGITS = frozenset(b"0123456789")
_SPACES = frozenset(b" \t\n\r\f\v")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_CATEGORIES = {
    sre.CATEGORY_DIGIT: _DIGITS,
    sre.CATEGORY_NOT_DIGIT: _ALL_BYTES - _DIGITS,
    sre.CATEGORY_SPACE: _SPACES,
    sre.CATEGORY_NOT_SPACE: _ALL_BYTES - _SPACES,
    sre.CATEGORY_WORD: _WORD,
    sre.CATEGORY_NOT_WORD: _ALL_BYTES - _WORD,
}
"""What `re` classes mean in a bytes pattern: ASCII only."""
_ANCHORS = {
    sre.AT_BEGINNING: ("\\A", "(?m:^)"),
    sre.AT_BEGINNING_STRING: ("\\A", "\\A"),
    sre.AT_END: ("$", "(?m:$)"),
    sre.AT_END_STRING: ("\\z", "\\z"),
    sre.AT_BOUNDARY: ("\\b", "\\b"),
    sre.AT_NON_BOUNDARY: ("\\B", "\\B"),
}
"""PCRE text of each `re` anchor, without and with the multi-line flag."""
_REPEATS = {sre.MAX_REPEAT: "", sre.MIN_REPEAT: "?", sre.POSSESSIVE_REPEAT: "+"}
_ASSERTIONS = {(sre.ASSERT, 1): "(?=", (sre.ASSERT_NOT, 1): "(?!", (sre.ASSERT, -1): "(?<=", (sre.ASSERT_NOT, -1): "(?<!"}


class PatternStream(Protocol):
    """One direction of one flow being matched; not to be scanned once closed."""

    def scan(self, data: bytes) -> list[int]:
        """Positions (in the markers given to `PatternMatcher.build`) of the patterns this data
        completes, each at most once per stream."""

    def reset(self) -> None:
        """Bytes are missing before the next data: no match may span them."""

    def close(self) -> None:
        """Release the stream; calling it again does nothing."""


class PatternMatcher:
    """Every `bytes` marker of one marker set, compiled once; picklable (workers receive it).
    Hyperscan needs scratch space to scan, one per matcher: its streams are scanned from one
    thread at a time, as the probe does (one pipeline thread per process)."""

    def __init__(self, engine: str, patterns: int) -> None:
        self.engine = engine
        """"hyperscan" or "python", for `probe markers stats`."""
        self.patterns = patterns
        """`bytes` markers compiled."""
        self.state_bytes = 0
        """What one open stream keeps between two scans, at most (Hyperscan stream state or the
        python mode's history)."""
        self._database: Any = None
        self._found: list[int] = []
        """Markers matched by the scan under way; the stream that scanned empties it."""
        self._automaton: Any = None
        self._literal_reach = 0
        """Bytes of history a literal split across two scans can start in: the longest - 1."""
        self._regexes: tuple[tuple[int, re.Pattern[bytes], int, int], ...] = ()
        """(position, pattern, span, bytes it looks at past its match): a match the new data
        completes starts at most span - 1 bytes before it."""

    @classmethod
    def build(cls, markers: Sequence[Marker], engine: str | None = None) -> PatternMatcher:
        """Compile the `bytes` markers among `markers` (other types are left out); scans report
        positions in `markers`. `engine` None: Hyperscan when it is installed. Raises ValueError
        naming the marker whose regular expression Hyperscan cannot compile (its bundle is then
        refused with that message)."""
        engine = engine or ("hyperscan" if hyperscan is not None else "python")
        if engine not in ENGINES:
            raise ValueError(f"unknown pattern engine {engine!r} (known: {', '.join(ENGINES)})")
        if engine == "hyperscan" and hyperscan is None:
            raise ValueError("the hyperscan package is not installed")
        chosen = [(position, marker) for position, marker in enumerate(markers) if marker.type == "bytes"]
        matcher = cls(engine, len(chosen))
        if chosen and engine == "hyperscan":
            matcher._compile_hyperscan(chosen)
        elif chosen:
            matcher._compile_python(chosen)
        return matcher

    def open(self) -> PatternStream:
        """A stream for one direction of one flow: O(1), no payload kept."""
        if self._database is not None:
            return _HyperscanStream(self._database, self._found, self._collect)
        return _PythonStream(self)

    def _collect(self, pattern: int, start: int, end: int, flags: int, context: object) -> None:
        """Hyperscan's match callback, shared by the matcher's streams."""
        self._found.append(pattern)

    def _compile_hyperscan(self, chosen: list[tuple[int, Marker]]) -> None:
        expressions = []
        for position, marker in chosen:
            try:
                expressions.append(_hyperscan_expression(marker) if marker.encoding == "regex" else _escaped(_pattern_bytes(marker)))
            except ValueError as error:
                raise ValueError(f"bytes marker {marker.id}: {error}") from None
        positions = [position for position, _ in chosen]
        try:
            self._database = _hyperscan_database(expressions, positions)
        except hyperscan.error as error:
            for (_, marker), expression in zip(chosen, expressions):
                try:
                    _hyperscan_database([expression], [0])
                except hyperscan.error as alone:
                    raise ValueError(f"bytes marker {marker.id}: Hyperscan cannot compile its regular expression: {alone}") from None
            raise ValueError(f"bytes markers: Hyperscan cannot compile them together: {error}") from None
        self.state_bytes = len(hyperscan.Stream(self._database, 0, None, None))

    def _compile_python(self, chosen: list[tuple[int, Marker]]) -> None:
        """The history a stream keeps: the longest literal - 1; for a regular expression its
        span (longest match and bytes looked at after it) and the bytes it looks at before its
        start (lookbehinds, `\\b`, `(?m)^`; at least one, so that `^` never sees a cut history
        as the stream's start)."""
        literals: dict[bytes, tuple[int, ...]] = {}
        regexes = []
        for position, marker in chosen:
            if marker.encoding == "regex":
                text = marker.value.encode("utf-8", "surrogateescape")
                parsed = sre_parse.parse(text)
                ahead, behind = (min(width, REGEX_WINDOW) for width in _context(parsed))
                span = min(parsed.getwidth()[1] + ahead, REGEX_WINDOW)
                regexes.append((position, re.compile(text), span, ahead))
                self.state_bytes = max(self.state_bytes, span + max(behind, 1))
            else:
                literal = _pattern_bytes(marker)
                literals[literal] = literals.get(literal, ()) + (position,)
        if literals:
            self._automaton = ahocorasick.Automaton()
            for literal, positions in literals.items():
                self._automaton.add_word(literal.decode("latin-1"), positions)
            self._automaton.make_automaton()
            self._literal_reach = max(map(len, literals)) - 1
        self._regexes = tuple(regexes)
        self.state_bytes = max(self.state_bytes, self._literal_reach)

    def __getstate__(self) -> dict[str, Any]:
        """A Hyperscan database is not picklable: its serialised form is."""
        state = self.__dict__.copy()
        if self._database is not None:
            state["_database"] = hyperscan.dumpb(self._database)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._database is not None:
            self._database = hyperscan.loadb(self._database, hyperscan.HS_MODE_STREAM)
            self._database.scratch = hyperscan.Scratch(self._database)


class _HyperscanStream:
    """A Hyperscan stream. The binding holds borrowed references to the database and the match
    callback, so this object keeps both alive; and its `Stream.__enter__` returns a reference it
    does not own, which `Database.stream` makes up for: streams are opened only by the pair.

    The streams of one matcher share one callback and one list of matches: a scan reports its
    matches before it returns, one scan at a time (one pipeline thread), so each scan empties the
    list, and a stream costs no closure of its own (most are opened for one or two scans)."""

    __slots__ = ("_database", "_found", "_on_match", "_reported", "_stream")

    def __init__(self, database: Any, found: list[int], on_match: Any) -> None:
        self._database = database
        self._found = found
        self._on_match = on_match
        self._reported: set[int] | None = None
        self._stream = database.stream(match_event_handler=on_match).__enter__()

    def scan(self, data: bytes) -> list[int]:
        found = self._found
        try:
            self._stream.scan(data)
        except BaseException:  # what the callback had collected must not go to the next scan
            found.clear()
            raise
        if not found:
            return []
        reported = self._reported
        if reported is None:
            reported = self._reported = set()
        new = [position for position in dict.fromkeys(found) if position not in reported]
        reported.update(new)
        found.clear()
        return new

    def reset(self) -> None:
        """Closing reports the matches anchored at the end, which a gap is not: dropped."""
        self._close()
        self._stream = self._database.stream(match_event_handler=self._on_match).__enter__()

    def close(self) -> None:
        if self._stream is not None:
            self._close()
            self._stream = None

    def _close(self) -> None:
        """Close the Hyperscan stream and drop what closing reports (matches anchored at the end,
        which the stream's data did not reach), and only that."""
        found = self._found
        held = len(found)
        self._stream.close()
        del found[held:]

    def __del__(self) -> None:
        """The binding never frees a stream it did not close: a stream dropped unclosed would leak
        its state."""
        self.close()


class _PythonStream:
    """The python mode's stream: the last bytes seen, as many as the longest literal or the regex
    window needs (`PatternMatcher.state_bytes`)."""

    __slots__ = ("_history", "_matcher", "_reported")

    def __init__(self, matcher: PatternMatcher) -> None:
        self._matcher = matcher
        self._history = b""
        self._reported: set[int] = set()

    def scan(self, data: bytes) -> list[int]:
        matcher = self._matcher
        history = self._history
        window = history + data
        found = []
        reported = self._reported
        if matcher._automaton is not None:
            text = window[max(len(history) - matcher._literal_reach, 0) :].decode("latin-1")
            for _, positions in matcher._automaton.iter(text):
                for position in positions:
                    if position not in reported:
                        reported.add(position)
                        found.append(position)
        if matcher._regexes:
            limit = len(window)
            padded = b""
            for position, regex, span, ahead in matcher._regexes:
                if position in reported:
                    continue
                start = max(len(history) - span + 1, 0)
                if ahead:
                    padded = padded or window + _NEXT
                    match = regex.search(padded, start)
                    hit = match is not None and match.end() + ahead <= limit
                else:
                    hit = regex.search(window, start) is not None
                if hit:
                    reported.add(position)
                    found.append(position)
        keep = matcher.state_bytes
        self._history = window[len(window) - keep :] if len(window) > keep else window
        return found

    def reset(self) -> None:
        self._history = b""

    def close(self) -> None:
        self._history = b""


def _pattern_bytes(marker: Marker) -> bytes:
    if marker.encoding == "hex":
        return bytes.fromhex(marker.value)
    return marker.value.encode("utf-8", "surrogateescape")


def _escaped(literal: bytes) -> bytes:
    """Every byte as `\\xHH`: no byte is special to Hyperscan's parser, and none is a NUL (the
    binding hands expressions over as C strings)."""
    return "".join(f"\\x{byte:02x}" for byte in literal).encode("ascii")


def _hyperscan_database(expressions: list[bytes], positions: list[int]) -> Any:
    """One report per pattern per stream is all a marker needs (SINGLEMATCH: less work and
    state); no start offsets (no SOM flag, so no SOM horizon to keep)."""
    database = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    database.compile(expressions=expressions, ids=positions, flags=[hyperscan.HS_FLAG_SINGLEMATCH] * len(expressions))
    return database


def _context(items: Any) -> tuple[int, int]:
    """(bytes after its end, bytes before its start) a match of a parsed pattern may look at."""
    ahead = behind = 0
    for operation, argument in items:
        if operation is sre.AT and argument in _AHEAD:
            ahead = max(ahead, 1)
        elif operation in (sre.ASSERT, sre.ASSERT_NOT):
            direction, body = argument
            width = body.getwidth()[1]
            ahead, behind = (max(ahead, width), behind) if direction == 1 else (ahead, max(behind, width))
            inner = _context(body)
            ahead, behind = max(ahead, inner[0]), max(behind, inner[1])
        else:
            for body in _bodies(operation, argument):
                inner = _context(body)
                ahead, behind = max(ahead, inner[0]), max(behind, inner[1])
    return ahead, behind


def _bodies(operation: Any, argument: Any) -> list[Any]:
    """The sub-patterns a parsed item holds."""
    if operation is sre.BRANCH:
        return argument[1]
    if operation is sre.SUBPATTERN or operation in _REPEATS:
        return [argument[-1]]
    if operation is sre.GROUPREF_EXISTS:
        return [body for body in argument[1:] if body is not None]
    if operation is sre.ATOMIC_GROUP:
        return [argument]
    return []


def _hyperscan_expression(marker: Marker) -> bytes:
    """The PCRE text Hyperscan compiles for a marker's Python regular expression.

    Python's own parser (private to `re`, but the one definition of what a Python pattern means)
    reads the pattern; the text is rewritten from its tree, so the differences between the two
    syntaxes cannot change a match: `{,3}`, `\\Z`, case-insensitive classes, flags scoped to a
    group. Every byte is written as `\\xHH`. Constructs Hyperscan lacks (back-references,
    lookaround, atomic groups, possessive repeats, conditionals) are written as PCRE, so that
    Hyperscan's own message refuses them."""
    parsed = sre_parse.parse(marker.value.encode("utf-8", "surrogateescape"))
    return _expression(parsed, parsed.state.flags).encode("ascii")


def _expression(items: Any, flags: int) -> str:
    parts = []
    for operation, argument in items:
        if operation is sre.LITERAL:
            parts.append(_byte_class(_folded({argument}, flags)))
        elif operation is sre.NOT_LITERAL:
            parts.append(_byte_class(_ALL_BYTES - _folded({argument}, flags)))
        elif operation is sre.IN:
            parts.append(_byte_class(_class_bytes(argument, flags)))
        elif operation is sre.ANY:
            parts.append(_byte_class(_ALL_BYTES if flags & sre.SRE_FLAG_DOTALL else _ALL_BYTES - {0x0A}))
        elif operation is sre.AT:
            parts.append(_ANCHORS[argument][bool(flags & sre.SRE_FLAG_MULTILINE)])
        elif operation is sre.BRANCH:
            parts.append("(?:" + "|".join(_expression(branch, flags) for branch in argument[1]) + ")")
        elif operation is sre.SUBPATTERN:
            group, added, removed, body = argument
            parts.append(("(" if group else "(?:") + _expression(body, (flags | added) & ~removed) + ")")
        elif operation in _REPEATS:
            low, high, body = argument
            parts.append(f"(?:{_expression(body, flags)}){{{low},{'' if high == sre.MAXREPEAT else high}}}{_REPEATS[operation]}")
        elif operation is sre.GROUPREF:
            parts.append(f"(?:\\{argument})")
        elif operation is sre.GROUPREF_EXISTS:
            group, yes, no = argument
            parts.append(f"(?({group}){_expression(yes, flags)}|{_expression(no, flags) if no else ''})")
        elif operation in (sre.ASSERT, sre.ASSERT_NOT):
            direction, body = argument
            parts.append(_ASSERTIONS[operation, direction] + _expression(body, flags) + ")")
        elif operation is sre.ATOMIC_GROUP:
            parts.append(f"(?>{_expression(argument, flags)})")
        else:
            raise ValueError(f"the regular expression uses {operation}, which Hyperscan has no equivalent of")
    return "".join(parts)


def _class_bytes(items: Any, flags: int) -> frozenset[int]:
    """The bytes a `[...]` class matches; case folding comes before negation, as in `re`."""
    values: set[int] = set()
    negated = False
    for operation, argument in items:
        if operation is sre.NEGATE:
            negated = True
        elif operation is sre.LITERAL:
            values.add(argument)
        elif operation is sre.RANGE:
            values.update(range(argument[0], argument[1] + 1))
        else:
            values |= _CATEGORIES[argument]
    folded = _folded(values, flags)
    return _ALL_BYTES - folded if negated else folded


def _folded(values: set[int], flags: int) -> frozenset[int]:
    """Case-insensitive bytes patterns fold ASCII letters only, as `re` does."""
    if flags & sre.SRE_FLAG_IGNORECASE:
        return frozenset(values | {value ^ 0x20 for value in values if 0x41 <= (value & ~0x20) <= 0x5A})
    return frozenset(values)


def _byte_class(values: frozenset[int]) -> str:
    """A set of bytes as `\\xHH` or `[\\xHH-\\xHH...]`; the empty set as a class Hyperscan refuses
    ("can never match")."""
    if len(values) == 1:
        return f"\\x{next(iter(values)):02x}"
    if not values:
        return "[^\\x00-\\xff]"
    ranges = []
    ordered = sorted(values)
    first = previous = ordered[0]
    for value in ordered[1:] + [-1]:
        if value != previous + 1:
            ranges.append(f"\\x{first:02x}" if first == previous else f"\\x{first:02x}-\\x{previous:02x}")
            first = value
        previous = value
    return "[" + "".join(ranges) + "]"
