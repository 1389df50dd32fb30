"""Reading a marker bundle (`markers/README.md`, `markers/bundle.schema.json`) into `Marker`s.

A bundle is parsed from the very bytes whose signature was checked, never re-read from disk. Every
problem is collected with the marker id (or the companion file and line) it concerns, so that
`probe markers validate` can list them all; loading refuses a bundle with any problem and loads
nothing of it. Companion value files are read as streams, when the index is built: a million
values never exist as JSON objects, and their SHA-256 is checked on the bytes actually read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from probe.bundles.values import BYTES_ENCODINGS, LISTABLE_TYPES, MARKER_TYPES, PATTERN_TYPES, normalise_value, value_id
from probe.errors import CompanionError, MarkerError
from probe.match.markers import RECORD_CLASS, RESERVED_CLASSES, SEVERITIES, TLP_LEVELS, Constraints, Marker

BUNDLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ISSUER = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""An issuer names the trust store's key files (`<issuer>.pub`, `<issuer>.<label>.pub`): no dot,
so that no key file can be read as another issuer's."""
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
BUNDLE_KEYS = {"id", "issuer", "version", "created", "valid_from", "valid_until", "tlp", "retention_class", "description", "markers", "value_files", "$schema"}
MARKER_KEYS = {"id", "type", "value", "match", "encoding", "name", "valid_from", "valid_until", "severity", "reference", "tlp", "retention_class", "constraints"}
VALUE_FILE_KEYS = {"path", "type", "id_prefix", "sha256", "count", "match", "valid_from", "valid_until", "severity", "reference", "tlp", "retention_class", "constraints"}
READ_CHUNK = 1 << 20


def timestamp(value: object, key: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time; raises ValueError naming `key`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected an RFC 3339 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{key}: {value!r} has no time zone (add Z for UTC)")
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def strictest_tlp(*labels: str | None) -> str | None:
    """A marker is never less protected than any label its sources gave it."""
    present = [label for label in labels if label]
    return max(present, key=TLP_LEVELS.index) if present else None


@dataclass
class ValueFile:
    """A companion file of one value a line; each value is a marker built from `template`."""

    path: Path
    type: str
    id_prefix: str
    sha256: str
    count: int | None
    attributes: dict
    """The `Marker` fields its values share (all but id, value, name and encoding)."""

    @cached_property
    def template(self) -> Marker:
        """A marker with the shared attributes, id and value empty."""
        return Marker(id="", value="", **self.attributes)

    def marker(self, value: str) -> Marker:
        """The marker of one value, built only when it hits."""
        return Marker(id=self.id_prefix + value_id(value), value=value, **self.attributes)

    def values(self) -> Iterator[str]:
        """Canonical values in file order, read as a stream. The digest and count are checked
        once the file is read: a caller must use nothing until the iteration ends normally."""
        problems: list[str] = []
        yield from self._read(problems, stop_at_first=True)
        if problems:
            raise CompanionError(str(self.path), problems[0])

    def every_value(self, problems: list[str]) -> Iterator[str]:
        """Every valid value, reading on past a bad line; each problem of the file is appended to
        `problems` (for `probe markers validate` and `verify`)."""
        return self._read(problems, stop_at_first=False)

    def _read(self, problems: list[str], stop_at_first: bool) -> Iterator[str]:
        digest = hashlib.sha256()
        count = 0
        marker_type = self.type
        try:
            with open(self.path, "rb") as stream:
                remainder = b""
                line_number = 0
                while True:
                    chunk = stream.read(READ_CHUNK)
                    digest.update(chunk)
                    lines = (remainder + chunk).split(b"\n")
                    remainder = lines.pop() if chunk else b""
                    for line in lines:
                        line_number += 1
                        text = line.strip()
                        if not text:
                            continue
                        try:
                            _, value = normalise_value(marker_type, text.decode("utf-8"))
                        except (ValueError, UnicodeDecodeError) as error:
                            problems.append(f"{self.path}:{line_number}: {error}")
                            if stop_at_first:
                                return
                            continue
                        count += 1
                        yield value
                    if not chunk:
                        break
        except OSError as error:
            problems.append(f"{self.path}: cannot read companion value file: {error.strerror}")
            return
        if digest.hexdigest() != self.sha256:
            problems.append(f"{self.path}: SHA-256 {digest.hexdigest()} differs from the bundle's {self.sha256}: the file was changed or replaced")
        elif self.count is not None and count != self.count:
            problems.append(f"{self.path}: {count} values, the bundle says {self.count}")
        elif not problems:
            self.count = count  # the very file the bundle lists: its count is now known


@dataclass
class Bundle:
    """One accepted-or-not bundle: its identity, its markers and companion value files."""

    path: str
    id: str
    issuer: str
    version: int
    created: int | None
    valid_from: int | None
    valid_until: int | None
    tlp: str | None
    digest: str
    """SHA-256 of the bundle file's bytes: with the version, what the state file remembers."""
    markers: list[Marker]
    value_files: list[ValueFile]
    source_format: str = "bundle"
    retention_class: str | None = None
    """Default record class of its markers' events in the store (a shorter retention)."""
    notes: list[str] = field(default_factory=list)
    """What reading a feed in another format could not use (warnings, never silent)."""

    @property
    def key(self) -> tuple[str, str]:
        """What versions are counted per: (issuer, id)."""
        return self.issuer.casefold(), self.id

    def counts(self) -> dict[str, int]:
        """Markers by type; a companion file counts by its declared count, or the count found when
        it was read (it is read here only if it never was)."""
        counts: dict[str, int] = {}
        for marker in self.markers:
            counts[marker.type] = counts.get(marker.type, 0) + 1
        for value_file in self.value_files:
            count = value_file.count if value_file.count is not None else sum(1 for _ in value_file.values())
            counts[value_file.type] = counts.get(value_file.type, 0) + count
        return counts

    def validity_groups(self) -> list[tuple[Marker, int]]:
        """(a marker, how many share its type and validity): a companion file's values share
        their file's, so validity is judged without reading a million lines."""
        return [(marker, 1) for marker in self.markers] + [(value_file.template, value_file.count or 0) for value_file in self.value_files]

    def all_markers(self) -> Iterator[Marker]:
        """Every marker, companion values included, streamed (checks digests as it goes)."""
        yield from self.markers
        for value_file in self.value_files:
            for value in value_file.values():
                yield value_file.marker(value)


def refusal(path: str, problems: list[str]) -> MarkerError:
    """One line for a file with problems: the first, and where to see them all."""
    more = f" (and {len(problems) - 1} more: run 'probe markers validate {path}')" if len(problems) > 1 else ""
    return MarkerError(problems[0] + more)


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise MarkerError(f"{path}: cannot read marker file: {error.strerror}") from None


BUNDLE_START = re.compile(rb'\s*\{\s*"(id|issuer|version|created|valid_from|valid_until|tlp|retention_class|description|markers|value_files|\$schema)"')


def is_bundle(data: bytes) -> bool:
    """Whether a marker file is meant as a bundle rather than a feed in another format: a JSON
    object opening with a bundle key (a broken bundle is still a bundle, so that its error says
    so), or any JSON object with a 'markers' key."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if BUNDLE_START.match(data[:4096]):
        return True
    if not data.lstrip().startswith(b"{"):
        return False
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(document, dict) and "markers" in document


def parse_bundle(path: str, data: bytes) -> tuple[Bundle | None, list[str]]:
    """The bundle in `data` (the bytes of `path`) and every problem found in it."""
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        return None, [f"{path}: not UTF-8 text (byte {error.start})"]
    except json.JSONDecodeError as error:
        return None, [f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"]
    except RecursionError:
        return None, [f"{path}: JSON nested too deeply to be a bundle"]
    if not isinstance(document, dict) or not isinstance(document.get("markers"), list):
        return None, [f"{path}: a bundle is a JSON object with a 'markers' list"]
    problems: list[str] = []
    header = _bundle_header(path, document, problems)
    digest = hashlib.sha256(data).hexdigest()
    bundle = Bundle(path, header["id"], header["issuer"], header["version"], header["created"], header["valid_from"], header["valid_until"], header["tlp"], digest, [], [], retention_class=header["retention_class"])
    bundle.markers = list(markers_from_entries(path, document["markers"], bundle, problems))
    value_files = document.get("value_files", [])
    if not isinstance(value_files, list):
        problems.append(f"{path}: 'value_files' must be a list")
        value_files = []
    for number, entry in enumerate(value_files, 1):
        value_file = _value_file(path, number, entry, bundle, problems)
        if value_file is not None:
            bundle.value_files.append(value_file)
    return bundle, problems


def _bundle_header(path: str, document: dict, problems: list[str]) -> dict:
    header: dict = {}
    for key in sorted(set(document) - BUNDLE_KEYS):
        problems.append(f"{path}: unknown bundle key {key!r} (known: {', '.join(sorted(BUNDLE_KEYS - {'$schema'}))})")
    bundle_id, issuer, version = document.get("id"), document.get("issuer"), document.get("version")
    if not isinstance(bundle_id, str) or not BUNDLE_ID.fullmatch(bundle_id):
        problems.append(f"{path}: 'id' must be 1-128 letters, digits or ._:- (got {bundle_id!r})")
        bundle_id = "?"
    if not isinstance(issuer, str) or not ISSUER.fullmatch(issuer):
        problems.append(f"{path}: 'issuer' must be 1-64 letters, digits, '-' or '_' (it names the issuer's keys; got {issuer!r})")
        issuer = "?"
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        problems.append(f"{path}: 'version' must be an integer >= 0 (got {version!r})")
        version = 0
    header.update(id=bundle_id, issuer=issuer, version=version)
    for key in ("created", "valid_from", "valid_until"):
        try:
            header[key] = timestamp(document.get(key), key)
        except ValueError as error:
            problems.append(f"{path}: {error}")
            header[key] = None
    if "created" not in document:
        problems.append(f"{path}: 'created' is required (RFC 3339 time of issue)")
    tlp = document.get("tlp")
    if tlp is not None and tlp not in TLP_LEVELS:
        problems.append(f"{path}: 'tlp' must be one of {', '.join(TLP_LEVELS)} (got {tlp!r})")
        tlp = None
    header["tlp"] = tlp
    header["retention_class"] = _retention_class(path, document.get("retention_class"), problems)
    if header["valid_from"] is not None and header["valid_until"] is not None and header["valid_from"] > header["valid_until"]:
        problems.append(f"{path}: valid_from is after valid_until")
    return header


def markers_from_entries(path: str, entries: Iterable[object], bundle: Bundle, problems: list[str]) -> Iterator[Marker]:
    """Markers of bundle-format entries (from a bundle file or an importer), each checked; ids
    must be unique."""
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        marker_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(marker_id, str) or not marker_id:
            problems.append(f"{path}: marker #{number}: expected an object with a non-empty string 'id'")
            continue
        where = f"{path}: marker {marker_id!r}"
        if marker_id in seen:
            problems.append(f"{where}: id used twice in the bundle")
            continue
        seen.add(marker_id)
        marker = _marker(where, entry, bundle, problems)  # type: ignore[arg-type]
        if marker is not None:
            yield marker


def _marker(where: str, entry: dict, bundle: Bundle, problems: list[str]) -> Marker | None:
    if not entry.keys() <= MARKER_KEYS:
        problems += [f"{where}: unknown key {key!r}" for key in sorted(entry.keys() - MARKER_KEYS)]
    marker_type, value = entry.get("type"), entry.get("value")
    if marker_type not in MARKER_TYPES:
        problems.append(f"{where}: unknown type {marker_type!r} (known: {', '.join(MARKER_TYPES)})")
        return None
    if not isinstance(value, str):
        problems.append(f"{where}: 'value' must be a string")
        return None
    encoding = entry.get("encoding", "literal")
    if marker_type != "bytes" and "encoding" in entry:
        problems.append(f"{where}: 'encoding' applies to bytes markers only")
    if marker_type == "bytes" and encoding not in BYTES_ENCODINGS:
        problems.append(f"{where}: 'encoding' must be one of {', '.join(BYTES_ENCODINGS)}, got {encoding!r}")
        return None
    try:
        kind, normalised = normalise_value(marker_type, value, encoding)
    except ValueError as error:
        problems.append(f"{where}: {error}")
        return None
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        problems.append(f"{where}: 'name' must be a non-empty string")
        name = None
    if marker_type in PATTERN_TYPES and name is None:
        name = entry["id"]
    attributes = _shared_attributes(where, entry, kind, bundle, problems)
    if attributes is None:
        return None
    return Marker(id=entry["id"], value=normalised, name=name, encoding=encoding if kind == "bytes" else None, **attributes)


def _shared_attributes(where: str, entry: dict, kind: str, bundle: Bundle, problems: list[str]) -> dict | None:
    """The `Marker` fields a marker entry and a companion file entry have in common (all but id,
    value, name and encoding)."""
    count = len(problems)
    match = entry.get("match", "subdomains")
    if match not in ("exact", "subdomains"):
        problems.append(f"{where}: 'match' must be 'exact' or 'subdomains', got {match!r}")
    elif "match" in entry and kind != "domain":
        problems.append(f"{where}: 'match' applies to domain markers only")
    severity, reference, tlp = entry.get("severity"), entry.get("reference"), entry.get("tlp")
    if severity is not None and severity not in SEVERITIES:
        problems.append(f"{where}: 'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if reference is not None and not isinstance(reference, str):
        problems.append(f"{where}: 'reference' must be a string (text or URL of the advisory)")
    if tlp is not None and tlp not in TLP_LEVELS:
        problems.append(f"{where}: 'tlp' must be one of {', '.join(TLP_LEVELS)}, got {tlp!r}")
    valid_from = valid_until = None
    try:
        valid_from = timestamp(entry.get("valid_from"), "valid_from")
        valid_until = timestamp(entry.get("valid_until"), "valid_until")
    except ValueError as error:
        problems.append(f"{where}: {error}")
    if valid_from is not None and valid_until is not None and valid_from > valid_until:
        problems.append(f"{where}: valid_from is after valid_until (it could never match)")
    constraints = _constraints(where, entry.get("constraints"), problems)
    retention_class = _retention_class(where, entry.get("retention_class"), problems)
    if len(problems) > count:
        return None
    if bundle.valid_from is not None and (valid_from is None or valid_from < bundle.valid_from):
        valid_from = bundle.valid_from
    if bundle.valid_until is not None and (valid_until is None or valid_until > bundle.valid_until):
        valid_until = bundle.valid_until
    return {
        "type": kind,
        "bundle": bundle.id,
        "bundle_version": bundle.version,
        "subdomains": kind == "domain" and match == "subdomains",
        "valid_from": valid_from,
        "valid_until": valid_until,
        "severity": severity,
        "reference": reference,
        "tlp": strictest_tlp(tlp, bundle.tlp),
        "constraints": constraints,
        "issuer": bundle.issuer,
        "retention_class": retention_class or bundle.retention_class,
    }


def _retention_class(where: str, value: object, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RECORD_CLASS.fullmatch(value) or value in RESERVED_CLASSES:
        problems.append(f"{where}: 'retention_class' must be 1-32 lower-case letters, digits, '-' or '_', other than {' and '.join(RESERVED_CLASSES)} (got {value!r})")
        return None
    return value


def _constraints(where: str, raw: object, problems: list[str]) -> Constraints | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"protocol", "port", "direction"}:
        problems.append(f"{where}: 'constraints' is an object of 'protocol', 'port' and 'direction'")
        return None
    protocols = ports = to_server = None
    if "protocol" in raw:
        names = raw["protocol"] if isinstance(raw["protocol"], list) else [raw["protocol"]]
        unknown = [name for name in names if not isinstance(name, str) or name not in PROTOCOLS]
        if unknown or not names:
            problems.append(f"{where}: constraints.protocol must be one or a list of {', '.join(PROTOCOLS)} (got {raw['protocol']!r})")
            return None
        protocols = frozenset(PROTOCOLS[name] for name in names)
    if "port" in raw:
        numbers = raw["port"] if isinstance(raw["port"], list) else [raw["port"]]
        if not numbers or not all(isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535 for port in numbers):
            problems.append(f"{where}: constraints.port must be a port number or a list of them (got {raw['port']!r})")
            return None
        ports = frozenset(numbers)
    if "direction" in raw:
        if raw["direction"] not in ("to_server", "to_client"):
            problems.append(f"{where}: constraints.direction must be 'to_server' or 'to_client' (got {raw['direction']!r})")
            return None
        to_server = raw["direction"] == "to_server"
    return Constraints(protocols, ports, to_server)


def _value_file(path: str, number: int, entry: object, bundle: Bundle, problems: list[str]) -> ValueFile | None:
    where = f"{path}: value_files #{number}"
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object")
        return None
    for key in sorted(set(entry) - VALUE_FILE_KEYS):
        problems.append(f"{where}: unknown key {key!r}")
    name, kind, prefix, digest, count = entry.get("path"), entry.get("type"), entry.get("id_prefix"), entry.get("sha256"), entry.get("count")
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        problems.append(f"{where}: 'path' must be a file name in the bundle's directory (got {name!r})")
        return None
    where = f"{path}: value file {name!r}"
    if kind not in LISTABLE_TYPES:
        problems.append(f"{where}: 'type' must be one of {', '.join(LISTABLE_TYPES)} (got {kind!r})")
        return None
    if not isinstance(prefix, str):
        problems.append(f"{where}: 'id_prefix' must be a string (each marker's id is id_prefix + value)")
        return None
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        problems.append(f"{where}: 'sha256' must be the file's SHA-256 in 64 lower-case hex digits")
        return None
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        problems.append(f"{where}: 'count' must be an integer >= 0")
        return None
    attributes = _shared_attributes(where, entry, kind, bundle, problems)
    if attributes is None:
        return None
    return ValueFile(Path(path).parent / name, kind, prefix, digest, count, attributes)
