"""`probe markers validate`: every problem of a marker file at once, each pointing at its marker id
or line, plus information a security team wants before publishing (nested networks).

Loading stops at a bundle's first problem; validation goes on, so that a bundle is fixed in one
pass. Schema errors come from the JSON Schema shipped with the format; what a schema cannot say
(canonical values, regular expressions, YARA compilation, companion file digests, duplicate ids)
comes from the same parser loading uses, so the two never disagree on what loads.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from probe.bundles.format import Bundle, is_bundle, parse_bundle, read_file
from probe.bundles.importing import ImportReport, detect_format, read_source

SCHEMA_PATH = Path(__file__).with_name("bundle.schema.json")
NESTED_SHOWN = 20
"""Nested networks listed one per line; beyond, a count."""


@dataclass
class Validation:
    path: str
    problems: list[str] = field(default_factory=list)
    information: list[str] = field(default_factory=list)
    bundle: Bundle | None = None
    source_format: str = "bundle"


def validate_file(path: str) -> Validation:
    """Raises MarkerError only when the file cannot be read at all (a usage or I/O error)."""
    data = read_file(path)
    if not is_bundle(data):
        return _validate_feed(path)
    result = Validation(path)
    bundle, problems = parse_bundle(path, data)
    result.bundle = bundle
    if bundle is None:
        result.problems = problems
        return result
    # The parser's problems come first (they name the value and what is wrong with it); the
    # schema's are added for the parts of the bundle where the parser found nothing.
    flagged = {_entry_of(path, problem) for problem in problems}
    result.problems = problems + [message for parts, message in _schema_problems(path, json.loads(data.decode("utf-8-sig"))) if not parts & flagged]
    networks = [(marker.value, marker.id) for marker in bundle.markers if marker.type == "cidr"]
    marker_ids = {marker.id for marker in bundle.markers}
    for value_file in bundle.value_files:
        problems: list[str] = []
        repeated, listed_networks = [], []
        for value in value_file.every_value(problems):  # one pass: lines, digest and ids together
            marker = value_file.marker(value)
            if marker.id in marker_ids:
                repeated.append(f"{value_file.path}: value {value!r}: marker id {marker.id!r} used twice in the bundle")
            marker_ids.add(marker.id)
            if marker.type == "cidr":
                listed_networks.append((value, marker.id))
        result.problems += problems or repeated  # ids and networks only of a file found whole
        if not problems:
            networks += listed_networks
    result.information = nested_networks(networks)
    return result


def _entry_of(path: str, problem: str) -> str:
    """Which part of the bundle a problem is about: `marker '<id>'`, `value file '<name>'`, an
    entry by number, or `header`."""
    rest = problem[len(path) + 2 :]
    for kind in ("marker ", "markers #", "value file ", "value_files #"):
        if rest.startswith(kind):
            return rest.split(": ", 1)[0]
    return "header"


def _schema_problems(path: str, document: dict) -> list[tuple[set[str], str]]:
    """The schema's complaints, each with the parts of the bundle it is about (as `_entry_of`
    names them), so that the parser's wording of the same mistake is not repeated."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    problems: list[tuple[set[str], str]] = []
    for error in sorted(validator.iter_errors(document), key=lambda error: list(map(str, error.absolute_path))):
        location = list(error.absolute_path)
        parts, inner = {"header"}, location
        if len(location) >= 2 and location[0] in ("markers", "value_files"):
            entry = document[location[0]][location[1]]
            parts, inner = {f"{location[0]} #{location[1] + 1}"}, location[2:]
            if location[0] == "markers" and isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
                parts.add(f"marker {entry['id']!r}")
            if location[0] == "value_files" and isinstance(entry, dict) and isinstance(entry.get("path"), str):
                parts.add(f"value file {entry['path']!r}")
        where = path if parts == {"header"} else f"{path}: {max(parts)}"
        problems.append((parts, f"{where}: {error.message}" + (f" (at {'/'.join(map(str, inner))})" if inner else "")))
    return problems


def _validate_feed(path: str) -> Validation:
    source_format = detect_format(path)
    report = ImportReport()
    networks = [(entry["value"], entry["id"]) for entry in read_source(source_format, path, report) if entry["type"] == "cidr"]
    return Validation(path, list(report.refused), nested_networks(networks), None, source_format)


def nested_networks(networks: list[tuple[str, str]]) -> list[str]:
    """Networks that lie inside another marker's network: not an error (a /24 may carry its own
    advisory inside a /16), but often a feed's mistake worth a look."""
    spans = []
    for value, marker_id in networks:
        network = ipaddress.ip_network(value)
        spans.append((network.version, int(network.network_address), -int(network.broadcast_address), value, marker_id))
    spans.sort()
    lines: list[str] = []
    enclosing: list[tuple[int, int, str, str]] = []
    for version, start, negative_end, value, marker_id in spans:
        end = -negative_end
        while enclosing and (enclosing[-1][0] != version or enclosing[-1][1] < start):
            enclosing.pop()
        if enclosing:
            _, _, outer_value, outer_id = enclosing[-1]
            lines.append(f"cidr {value} ({marker_id}) lies inside {outer_value} ({outer_id})")
        enclosing.append((version, end, value, marker_id))
    if len(lines) > NESTED_SHOWN:
        lines = lines[:NESTED_SHOWN] + [f"... and {len(lines) - NESTED_SHOWN} more nested networks"]
    return lines
