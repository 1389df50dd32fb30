"""STIX 2.1 (OASIS): import of the indicators whose pattern the probe can match, and export of
markers as indicators.

Only what the probe matches faithfully is imported: comparisons with `=` (and `ISSUBSET` for a
network) of addresses, networks, domain names, URLs and certificate SHA-256 digests, and
`network-traffic:dst_port` as a port constraint on the values of its observation. Every other
pattern is refused with the indicator id, never half-read. The patterning language is parsed by a
small tokenizer and recursive-descent parser (strings with escapes, brackets, AND/OR, operators),
since a regular expression cannot follow its nesting.

Domain names match with their subdomains, STIX having no notion of exact or subdomain match; the
exporter writes `x_probe_match: "exact"` on exact domain markers, and the importer honours it, so
that a bundle exported and imported back gives the same markers.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from probe.bundles.format import strictest_tlp
from probe.bundles.importing import ImportReport, load_json
from probe.bundles.values import normalise_value
from probe.errors import MarkerError
from probe.match.markers import TLP_LEVELS, Constraints, Marker

VALUE_PATHS = {
    "ipv4-addr:value": "ipv4",
    "ipv6-addr:value": "ipv6",
    "network-traffic:dst_ref.value": "address",
    "domain-name:value": "domain",
    "url:value": "url",
    "x509-certificate:hashes.'SHA-256'": "x509_sha256",
}
"""Object paths whose value is a marker → the type given to `normalise_value`."""
PORT_PATH = "network-traffic:dst_port"
KEYWORDS = {"AND", "OR", "NOT", "FOLLOWEDBY", "IN", "LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET", "EXISTS", "WITHIN", "REPEATS", "TIMES", "START", "STOP", "SECONDS"}
OPERATORS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
WORD_OPERATORS = ("IN", "LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET")
QUALIFIERS = ("WITHIN", "REPEATS", "START")
MAX_TERMS = 10_000
"""AND of ORs multiplies out; a pattern needing more alternatives than this is refused."""

OBJECT_PATH = re.compile(r"[a-z0-9][a-z0-9-]*:[A-Za-z_][A-Za-z0-9_]*")
PATH_STEP = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*|\.'(?:[^'\\]|\\.)*'|\[(?:\*|-?\d+)\]")
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

EXPORTED_TYPES = ("ipv4", "ipv6", "cidr", "domain", "url", "x509_sha256")
EXPORT_PATHS = {"domain": "domain-name:value", "url": "url:value", "x509_sha256": "x509-certificate:hashes.'SHA-256'"}
ID_NAMESPACE = uuid.UUID("3b4a4a0e-5d1c-5f4e-9e43-7a1f0c2d6b58")
"""Fixed namespace of the UUIDv5 ids of exported objects: the same bundle exports the same ids."""


TLP_MARKINGS = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "clear",  # TLP 1.0 WHITE, STIX 2.1 section 7.2.1.4
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "green",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "amber",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "red",
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": "clear",  # TLP 2.0 marking definitions
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "green",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "amber",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": "amber+strict",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": "red",
}
"""The well-known TLP marking definitions, by id; export uses the TLP 2.0 ones."""
TLP_2_MARKINGS = {level: marking for marking, level in list(TLP_MARKINGS.items())[4:]}


def read_stix(path: Path, report: ImportReport) -> Iterator[dict]:
    """Markers of the bundle's indicators, ids the indicator id (`#2`, `#3`... after the first
    when a pattern holds several values), with the indicator's `valid_from`, `valid_until` and
    `description` (as reference). Objects other than indicators are counted in a note."""
    document = load_json(path)
    if not isinstance(document, dict) or document.get("type") != "bundle" or not isinstance(document.get("objects"), list):
        raise MarkerError(f"{path}: not a STIX 2.1 bundle (a JSON object with \"type\": \"bundle\" and an \"objects\" list)")
    ignored: dict[str, int] = {}
    markings = {**TLP_MARKINGS, **_bundle_tlp_markings(document["objects"])}
    for number, stix_object in enumerate(document["objects"], 1):
        if not isinstance(stix_object, dict):
            report.refused.append(f"{path}:object #{number}: not a JSON object")
            continue
        if stix_object.get("type") != "indicator":
            ignored[str(stix_object.get("type"))] = ignored.get(str(stix_object.get("type")), 0) + 1
            continue
        indicator_id = stix_object.get("id")
        if not isinstance(indicator_id, str) or not indicator_id:
            report.refused.append(f"{path}:object #{number}: indicator without an id")
            continue
        if stix_object.get("revoked") is True:
            report.notes.append(f"{path}:{indicator_id}: revoked by its producer, skipped")
            continue
        try:
            markers, separate = _indicator_markers(stix_object)
        except ValueError as error:
            report.refused.append(f"{path}:{indicator_id}: {error}")
            continue
        except RecursionError:
            report.refused.append(f"{path}:{indicator_id}: pattern nested too deeply")
            continue
        if separate:
            report.notes.append(f"{path}:{indicator_id}: values joined by AND read as separate markers, each matching on its own")
        references = stix_object.get("object_marking_refs")
        tlp = strictest_tlp(*(markings.get(reference) for reference in references if isinstance(reference, str))) if isinstance(references, list) else None
        yield from (marker | {"tlp": tlp} for marker in markers) if tlp else markers
    if ignored:
        report.notes.append(f"{path}: objects other than indicators ignored: " + ", ".join(f"{kind} {count}" for kind, count in sorted(ignored.items())))


def _bundle_tlp_markings(objects: list) -> dict[str, str]:
    """TLP marking definitions a bundle defines under ids of its own (`definition.tlp`, or a
    name such as `TLP:AMBER`)."""
    found = {}
    for stix_object in objects:
        if isinstance(stix_object, dict) and stix_object.get("type") == "marking-definition" and isinstance(stix_object.get("id"), str):
            definition = stix_object.get("definition")
            level = definition.get("tlp") if isinstance(definition, dict) else None
            if not isinstance(level, str):
                name = stix_object.get("name")
                level = name[4:] if isinstance(name, str) and name.upper().startswith("TLP:") else None
            level = {"white": "clear"}.get(str(level).lower(), str(level).lower())
            if level in TLP_LEVELS:
                found[stix_object["id"]] = level
    return found


def export_stix(markers: Iterable[Marker], bundle_id: str) -> tuple[dict, list[str]]:
    """A STIX 2.1 bundle of one indicator per marker STIX patterns can express, and one line per
    marker that they cannot ("<marker id>: <why>, not exported"). Deterministic: ids are UUIDv5 of
    the bundle and marker ids, `created` and `modified` the marker's `valid_from` (the epoch when
    it has none), so exporting the same bundle twice gives the same file."""
    objects, not_exported = [], []
    for marker in markers:
        try:
            pattern = _pattern(marker)
        except ValueError as error:
            not_exported.append(f"{marker.id}: {error}, not exported")
            continue
        objects.append(_indicator(marker, bundle_id, pattern))
    return {"type": "bundle", "id": f"bundle--{uuid.uuid5(ID_NAMESPACE, bundle_id)}", "objects": objects}, not_exported


# The pattern language: tokens, then a tree of observations and comparisons.


@dataclass(frozen=True)
class _Token:
    kind: str
    """`[ ] ( ) ,`, `op` (comparison), `keyword`, `path`, `string`, `number`, `boolean`, `literal`
    (a t'', b'' or h'' constant, which no supported comparison takes)."""
    value: object
    position: int
    """1-based character position, for messages."""


@dataclass(frozen=True)
class _Comparison:
    path: str
    operator: str
    value: object


@dataclass(frozen=True)
class _Join:
    operator: str
    """`and` or `or`."""
    items: tuple


@dataclass(frozen=True)
class _Observation:
    expression: _Comparison | _Join


def _tokenize(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char.isspace():
            position += 1
            continue
        start = position + 1
        operator = next((text for text in ("!=", "<>", "<=", ">=", "==") if pattern.startswith(text, position)), None) or (char if char in "=<>" else None)
        path = OBJECT_PATH.match(pattern, position)
        number = NUMBER.match(pattern, position)
        word = WORD.match(pattern, position)
        if char in "[](),":
            tokens.append(_Token(char, char, start))
            position += 1
        elif operator:
            tokens.append(_Token("op", OPERATORS[operator], start))
            position += len(operator)
        elif char == "'":
            text, position = _string(pattern, position)
            tokens.append(_Token("string", text, start))
        elif char in "tbh" and pattern.startswith("'", position + 1):
            text, position = _string(pattern, position + 1)
            tokens.append(_Token("literal", f"{char}'{text}'", start))
        elif path:
            position = path.end()
            while step := PATH_STEP.match(pattern, position):
                position = step.end()
            tokens.append(_Token("path", pattern[path.start() : position], start))
        elif number:
            tokens.append(_Token("number", float(number.group()) if "." in number.group() else int(number.group()), start))
            position = number.end()
        elif word and word.group() in ("true", "false"):
            tokens.append(_Token("boolean", word.group() == "true", start))
            position = word.end()
        elif word and word.group() in KEYWORDS:
            tokens.append(_Token("keyword", word.group(), start))
            position = word.end()
        else:
            raise ValueError(f"pattern syntax: unexpected {pattern[position:position + 12]!r} at character {start}")
    return tokens


def _string(pattern: str, quote: int) -> tuple[str, int]:
    """The text of the quoted string opening at `quote` (STIX escapes: \\' and \\\\ only) and the
    position after its closing quote."""
    text = []
    position = quote + 1
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            if pattern[position + 1 : position + 2] not in ("'", "\\"):
                raise ValueError(f"pattern syntax: invalid escape at character {position + 1} (only \\' and \\\\)")
            text.append(pattern[position + 1])
            position += 2
        elif char == "'":
            return "".join(text), position + 1
        else:
            text.append(char)
            position += 1
    raise ValueError(f"pattern syntax: string opened at character {quote + 1} is not closed")


class _Parser:
    """Recursive descent over the STIX 2.1 pattern grammar: FOLLOWEDBY binds loosest, then OR,
    then AND, at both the observation level and inside brackets. Constructs the probe cannot
    match (sequences, qualifiers, EXISTS) are refused as soon as they are met."""

    def __init__(self, pattern: str) -> None:
        self.tokens = _tokenize(pattern)
        self.index = 0

    def parse(self) -> _Observation | _Join:
        node = self._observations()
        if self.index < len(self.tokens):
            self._fail("the end of the pattern")
        return node

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, kind: str, value: object = None) -> _Token | None:
        token = self._peek()
        if token is None or token.kind != kind or (value is not None and token.value != value):
            return None
        self.index += 1
        return token

    def _expect(self, kind: str, what: str) -> _Token:
        return self._take(kind) or self._fail(what)

    def _fail(self, expected: str) -> _Token:
        token = self._peek()
        found = f"{token.value!r} at character {token.position}" if token else "the end of the pattern"
        raise ValueError(f"pattern syntax: expected {expected}, found {found}")

    def _joined(self, keyword: str, operand):
        items = [operand()]
        while self._take("keyword", keyword):
            items.append(operand())
        return items[0] if len(items) == 1 else _Join(keyword.lower(), tuple(items))

    def _observations(self):
        node = self._joined("OR", lambda: self._joined("AND", self._observation))
        if self._take("keyword", "FOLLOWEDBY"):
            raise ValueError("FOLLOWEDBY (observations in sequence) is not supported")
        return node

    def _observation(self):
        if self._take("["):
            node = _Observation(self._joined("OR", lambda: self._joined("AND", self._comparison)))
            self._expect("]", "']'")
        elif self._take("("):
            node = self._observations()
            self._expect(")", "')'")
        else:
            self._fail("'[' (an observation) or '('")
        token = self._peek()
        if token and token.kind == "keyword" and token.value in QUALIFIERS:
            raise ValueError(f"qualifier {token.value} is not supported (the probe matches values, not timed observations)")
        return node

    def _comparison(self):
        if self._take("("):
            node = self._joined("OR", lambda: self._joined("AND", self._comparison))
            self._expect(")", "')'")
            return node
        if self._take("keyword", "EXISTS"):
            raise ValueError("EXISTS is not supported")
        path = self._expect("path", "an object path (type:property)").value
        negated = self._take("keyword", "NOT") is not None
        token = self._take("op") or next((found for name in WORD_OPERATORS if (found := self._take("keyword", name))), None) or self._fail("a comparison operator")
        operator = ("NOT " if negated else "") + str(token.value)
        if token.value == "IN":
            self._expect("(", "'(' opening a set")
            values = [self._literal()]
            while self._take(","):
                values.append(self._literal())
            self._expect(")", "')' closing the set")
            return _Comparison(str(path), operator, tuple(values))
        return _Comparison(str(path), operator, self._literal())

    def _literal(self) -> object:
        token = self._peek()
        if token is None or token.kind not in ("string", "number", "boolean", "literal"):
            self._fail("a constant")
        self.index += 1
        return token.value


# From a parsed pattern to markers.


def _indicator_markers(indicator: dict) -> tuple[list[dict], bool]:
    """The markers of one indicator, and whether AND joined several values (each then becomes a
    marker matching on its own: the probe does not correlate observations); ValueError says why
    the indicator cannot be imported."""
    if indicator.get("pattern_type") != "stix":
        raise ValueError(f"pattern_type {indicator.get('pattern_type')!r} is not supported (only 'stix')")
    pattern = indicator.get("pattern")
    if not isinstance(pattern, str):
        raise ValueError("no pattern")
    match = indicator.get("x_probe_match", "subdomains")
    if match not in ("exact", "subdomains"):
        raise ValueError(f"x_probe_match must be 'exact' or 'subdomains', got {match!r}")
    shared = {}
    for key, marker_key in (("valid_from", "valid_from"), ("valid_until", "valid_until"), ("description", "reference")):
        if key in indicator:
            if not isinstance(indicator[key], str):
                raise ValueError(f"{key} is not a string")
            shared[marker_key] = indicator[key]
    observations, joined_by_and = _observations(_Parser(pattern).parse())
    markers: dict[str, dict] = {}
    for expression in observations:
        for term in _terms(expression):
            values = _term_markers(term, match)
            joined_by_and = joined_by_and or len(values) > 1
            for marker in values:
                markers.setdefault(json.dumps(marker, sort_keys=True), marker | shared)
    indicator_id = indicator["id"]
    return [{"id": indicator_id if number == 1 else f"{indicator_id}#{number}"} | marker for number, marker in enumerate(markers.values(), 1)], joined_by_and and len(markers) > 1


def _observations(node: _Observation | _Join) -> tuple[list, bool]:
    """The comparison expressions of every observation, and whether any were joined by AND."""
    if isinstance(node, _Observation):
        return [node.expression], False
    expressions, joined_by_and = [], node.operator == "and"
    for item in node.items:
        found, item_and = _observations(item)
        expressions += found
        joined_by_and = joined_by_and or item_and
    return expressions, joined_by_and


def _terms(expression: _Comparison | _Join) -> list[list[_Comparison]]:
    """The expression as an OR of AND terms (disjunctive normal form)."""
    if isinstance(expression, _Comparison):
        return [[expression]]
    if expression.operator == "or":
        return [term for item in expression.items for term in _terms(item)]
    terms: list[list[_Comparison]] = [[]]
    for item in expression.items:
        terms = [left + right for left in terms for right in _terms(item)]
        if len(terms) > MAX_TERMS:
            raise ValueError(f"pattern too complex (over {MAX_TERMS} alternatives once multiplied out)")
    return terms


def _term_markers(term: list[_Comparison], match: str) -> list[dict]:
    """Markers of the values of an AND term, each with the term's destination ports (the ports
    all its `dst_port` comparisons allow)."""
    values, ports = [], None
    for comparison in term:
        if comparison.path == PORT_PATH:
            allowed = _ports(comparison)
            ports = allowed if ports is None else ports & allowed
        else:
            values.append(_value_marker(comparison, match))
    if ports is not None:
        if not values:
            raise ValueError(f"{PORT_PATH} without an address or name in the same observation: a port alone is no marker")
        if not ports:
            raise ValueError(f"{PORT_PATH} compared to different ports joined by AND: the pattern never matches")
        for marker in values:
            marker.setdefault("constraints", {})["port"] = min(ports) if len(ports) == 1 else sorted(ports)
    return values


def _ports(comparison: _Comparison) -> frozenset[int]:
    if comparison.operator not in ("=", "IN"):
        raise ValueError(f"operator {comparison.operator} on {PORT_PATH} is not supported (only = and IN)")
    numbers = comparison.value if comparison.operator == "IN" else (comparison.value,)
    if not all(isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535 for port in numbers):
        raise ValueError(f"{PORT_PATH} compared to {comparison.value!r}: not port numbers")
    return frozenset(numbers)


def _value_marker(comparison: _Comparison, match: str) -> dict:
    marker_type = VALUE_PATHS.get(comparison.path)
    if marker_type is None:
        raise ValueError(f"{comparison.path} is not supported (supported: {', '.join([*VALUE_PATHS, PORT_PATH])})")
    is_address = marker_type in ("ipv4", "ipv6", "address")
    if comparison.operator != "=" and not (comparison.operator == "ISSUBSET" and is_address):
        raise ValueError(f"operator {comparison.operator} on {comparison.path} is not supported (only =, and ISSUBSET for a network)")
    if not isinstance(comparison.value, str):
        raise ValueError(f"{comparison.path} compared to {comparison.value!r}: expected a string")
    if is_address and (comparison.operator == "ISSUBSET" or "/" in comparison.value):
        kind, value = normalise_value("cidr", comparison.value)
        version = ipaddress.ip_network(value).version
        if marker_type != "address" and marker_type != f"ipv{version}":
            raise ValueError(f"{comparison.path}: {comparison.value!r} is an IPv{version} network")
    else:
        kind, value = normalise_value(marker_type, comparison.value)
    marker = {"type": kind, "value": value}
    if kind == "domain":
        marker["match"] = match
    if comparison.path == "network-traffic:dst_ref.value":
        marker["constraints"] = {"direction": "to_server"}
    return marker


# Export.


def _pattern(marker: Marker) -> str:
    """The STIX pattern of a marker; ValueError says what it cannot express."""
    if marker.type not in EXPORTED_TYPES:
        raise ValueError(f"type {marker.type} cannot be expressed as a STIX pattern")
    constraints = marker.constraints or Constraints()
    if constraints.protocols is not None:
        raise ValueError("its protocol constraint cannot be expressed as a STIX pattern")
    is_address = marker.type in ("ipv4", "ipv6", "cidr")
    if constraints.to_server is False or (constraints.to_server and not is_address):
        raise ValueError(f"its direction constraint on a {marker.type} marker cannot be expressed as a STIX pattern")
    if constraints.to_server:
        path = "network-traffic:dst_ref.value"
    elif is_address:
        path = "ipv6-addr:value" if ":" in marker.value else "ipv4-addr:value"
    else:
        path = EXPORT_PATHS[marker.type]
    comparisons = [f"{path} = {_quote('http://' + marker.value if marker.type == 'url' else marker.value)}"]
    if constraints.ports:
        ports = sorted(constraints.ports)
        comparisons.append(f"{PORT_PATH} = {ports[0]}" if len(ports) == 1 else f"{PORT_PATH} IN ({', '.join(map(str, ports))})")
    return f"[{' AND '.join(comparisons)}]"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def indicator_id(marker: Marker, bundle_id: str) -> str:
    """The STIX indicator of a marker: the one it was imported from, or the one `export_stix`
    gives it (UUIDv5 of the bundle and marker ids)."""
    if marker.id.startswith("indicator--"):
        return marker.id.split("#", 1)[0]
    return f"indicator--{uuid.uuid5(ID_NAMESPACE, f'{bundle_id}/{marker.id}')}"


def _indicator(marker: Marker, bundle_id: str, pattern: str) -> dict:
    moment = _timestamp(marker.valid_from or 0, milliseconds=True)
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": indicator_id(marker, bundle_id),
        "created": moment,
        "modified": moment,
        "name": marker.id,
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": _timestamp(marker.valid_from or 0),
    }
    if marker.valid_until is not None:
        indicator["valid_until"] = _timestamp(marker.valid_until)
    if marker.reference:
        indicator["description"] = marker.reference
    if marker.type == "domain" and not marker.subdomains:
        indicator["x_probe_match"] = "exact"
    if marker.tlp is not None:
        indicator["object_marking_refs"] = [TLP_2_MARKINGS[marker.tlp]]
    return indicator


def _timestamp(nanoseconds: int, milliseconds: bool = False) -> str:
    """RFC 3339 UTC text of a marker time; `created` and `modified` must carry milliseconds in
    STIX 2.1, other times keep the microseconds a bundle can hold."""
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if milliseconds:
        return f"{text}.{rest // 1_000_000:03d}Z"
    return f"{text}.{rest // 1000:06d}Z" if rest // 1000 else f"{text}Z"
