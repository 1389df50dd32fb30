"""Importing feeds of other formats into marker bundles (`markers/README.md`, "Other formats").

Readers (`stix`, `misp`, `zeek`, `plain`) turn one file into marker objects of the bundle format,
with canonical values, and record in an `ImportReport` everything they refuse and why, so that
nothing is dropped silently. `write_bundle` streams those objects into a bundle and its companion
value files, and counts what it wrote.

Marker ids from readers are relative to the bundle: readers do not know the bundle id, so
`write_bundle` prefixes every id with `<bundle id>/`. Readers of value lists (list, Suricata dataset,
Zeek) give `<type>/<value id>` (`values.value_id`, a digest: an id says nothing of its value), so
those markers become `<bundle id>/<type>/<value id>`: exactly the `id_prefix` + value id of a
companion file, which lets large groups of them leave the JSON. STIX and
MISP markers keep the indicator or attribute id they came from and stay individual markers.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from probe.bundles.format import BUNDLE_ID, ISSUER
from probe.bundles.values import LISTABLE_TYPES, MARKER_TYPES, value_id
from probe.errors import ConfigError, MarkerError
from probe.match.markers import TLP_LEVELS

SOURCE_FORMATS = ("stix", "misp", "zeek", "suricata-dataset", "list")
"""What `--from` accepts (`detect_format` answers the same names, `suricata-dataset` aside, and
`bundle`)."""
SHARED_KEYS = ("match", "severity", "reference", "valid_from", "valid_until", "constraints", "tlp")
"""Marker keys a companion file entry can carry for all its values."""
COMPANION_THRESHOLD = 1000
"""Groups of more values than this leave the JSON for a companion file (README: "more than 1,000")."""


@dataclass
class ImportReport:
    """What an import did, for its user: nothing refused or reinterpreted goes unsaid."""

    counts: dict[str, int] = field(default_factory=dict)
    """Markers by type, as `write_bundle` wrote them (duplicates dropped)."""
    refused: list[str] = field(default_factory=list)
    """One line each: `<file>:<line or indicator/attribute id>: <reason>`."""
    notes: list[str] = field(default_factory=list)
    """Readings the source format left open (a Suricata md5 set read as JA3, AND read as separate
    markers...): what was imported, but perhaps not as the feed's author meant."""
    semantics: str = ""
    """How domain markers match, which differs between formats (Zeek: the exact name)."""

    def lines(self) -> list[str]:
        total = sum(self.counts.values())
        by_type = ", ".join(f"{kind} {self.counts[kind]}" for kind in MARKER_TYPES if self.counts.get(kind))
        lines = [f"imported {total} marker{'' if total == 1 else 's'}" + (f": {by_type}" if by_type else "")]
        if self.semantics:
            lines.append(self.semantics)
        lines.extend(self.notes)
        lines.append(f"refused {len(self.refused)}" + (":" if self.refused else ""))
        lines.extend(f"  {line}" for line in self.refused)
        return lines


def is_unsupported(refusal: str) -> bool:
    """Whether a refusal is about what this probe does not read (a MISP type, a STIX operator, a
    Zeek indicator type), rather than about the feed's content: reading a feed directly warns of
    the first kind and refuses the file for the second."""
    return "not supported" in refusal


def detect_format(path: str | Path) -> str:
    """`bundle`, `stix`, `misp`, `zeek` or `list`, from the content, since feeds arrive with any
    file name. A Suricata dataset is a list (a `string` dataset is recognised while reading it)."""
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                line = raw.strip().removeprefix(b"\xef\xbb\xbf")
                if not line:
                    continue
                if line.startswith((b"{", b"[")):
                    return _json_format(path, load_json(path))
                if line.startswith(b"#fields") or b"\tIntel::" in line:  # the reader reports a missing header
                    return "zeek"
                if not line.startswith(b"#"):
                    return "list"
    except OSError as error:
        raise MarkerError(f"{path}: cannot read: {error.strerror}") from None
    return "list"


def _json_format(path: str | Path, document: object) -> str:
    if isinstance(document, dict):
        if "markers" in document:
            return "bundle"
        if document.get("type") == "bundle" and "objects" in document:
            return "stix"
        if "Event" in document or isinstance(document.get("response"), list) or "Attribute" in document or "Object" in document:
            return "misp"
    if isinstance(document, list) and document and all(isinstance(item, dict) and "Event" in item for item in document):
        return "misp"
    raise MarkerError(f"{path}: JSON, but not a marker bundle ('markers'), a STIX 2.1 bundle ('type': 'bundle') nor a MISP event ('Event')")


def read_source(source_format: str, path: str | Path, report: ImportReport, type_hint: str | None = None, include_all: bool = False) -> Iterator[dict]:
    """Marker objects of the bundle format read from one file, ids relative to the bundle (see the
    module docstring). Options are checked now, the file as the iterator is consumed.

    `type_hint`: the dataset type of a `suricata-dataset` (required: the file does not say it), or
    the marker type of every line of a `list` (otherwise detected per line). `include_all`: MISP
    attributes whose `to_ids` is false are imported too."""
    # The readers use this module's report and helpers, so they are imported here, not at the top.
    from probe.bundles import misp, plain, stix, zeek

    if source_format == "bundle":
        raise ConfigError(f"{path}: already a marker bundle: load, sign or validate it directly")
    if source_format not in SOURCE_FORMATS:
        raise ConfigError(f"unknown source format {source_format!r} (known: {', '.join(SOURCE_FORMATS)})")
    if type_hint is not None and source_format not in ("suricata-dataset", "list"):
        raise ConfigError(f"--type applies to suricata-dataset and list sources, not {source_format}")
    if include_all and source_format != "misp":
        raise ConfigError(f"--all applies to MISP events (to_ids), not {source_format}")
    path = Path(path)
    if source_format == "stix":
        report.semantics = "domains: name and subdomains (the exact name where x_probe_match is 'exact')"
        markers = stix.read_stix(path, report)
    elif source_format == "misp":
        report.semantics = "domains: name and subdomains"
        markers = misp.read_misp(path, report, include_all)
    elif source_format == "zeek":
        report.semantics = "domains: exact name (Zeek's meaning)"
        markers = zeek.read_zeek(path, report)
    elif source_format == "suricata-dataset":
        if type_hint not in plain.DATASET_TYPES:
            raise ConfigError(f"a Suricata dataset needs --type, one of {', '.join(plain.DATASET_TYPES)} (the file does not say)")
        report.semantics = "domains: name and subdomains"
        markers = plain.read_dataset(path, report, type_hint)
    else:
        if type_hint is not None and type_hint not in LISTABLE_TYPES:
            raise ConfigError(f"--type of a list must be one of {', '.join(LISTABLE_TYPES)} (got {type_hint!r})")
        report.semantics = "domains: name and subdomains"
        markers = plain.read_list(path, report, type_hint)
    return markers


def load_json(path: str | Path) -> object:
    """The JSON document of a feed file; MarkerError naming the file and line when it is not one."""
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise MarkerError(f"{path}: cannot read: {error.strerror}") from None
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MarkerError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MarkerError(f"{path}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise MarkerError(f"{path}: JSON nested too deeply to be a feed") from None


def read_lines(path: Path, report: ImportReport) -> Iterator[tuple[int, str]]:
    """Numbered lines without their line end, read as a stream (feeds run to millions of lines).
    A line that is not UTF-8 is refused by number instead of failing the whole feed."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise MarkerError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                report.refused.append(f"{path}:{number}: not UTF-8 text (byte {error.start})")
                continue
            yield number, (line.removeprefix("\ufeff") if number == 1 else line).rstrip("\r\n")


@dataclass
class _Group:
    """Markers that differ only by value: one companion file entry when large enough."""

    type: str
    shared: dict
    size: int = 0
    companion: _PrivateFile | None = None


def write_bundle(
    markers: Iterable[dict],
    output: Path,
    *,
    bundle_id: str,
    issuer: str,
    version: int,
    report: ImportReport,
    created: str | None = None,
    tlp: str | None = None,
) -> None:
    """Write `markers` (ids relative to the bundle, as `read_source` gives them) as the bundle
    `output`, every id prefixed with `<bundle_id>/`, and count them by type in `report`.

    Streaming, so that a million-value feed never exists as a million dicts: each marker is
    appended to a private spool file as it arrives, a plain listable value (id `<type>/<value id>`,
    no keys but the `SHARED_KEYS`) as one line of its group (type and shared keys). At the end,
    groups of more than 1,000 values become companion files `<output stem>.<type>[.<n>].txt`
    beside the bundle, listed in `value_files`; other markers stay in `markers`, in input order.
    A repeated id keeps its first marker; the others are refused in `report`.

    Every file is written with mode 0600 under a temporary name, then renamed: a reader never sees
    a partial bundle, and companions are in place before the bundle naming them. The same input
    gives the same bytes (`created` aside, which defaults to now)."""
    output = Path(output)
    created = created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _check_header(output, bundle_id, issuer, version, created, tlp)
    header = {"id": bundle_id, "issuer": issuer, "version": version, "created": created} | ({"tlp": tlp} if tlp else {})
    groups: dict[str, int] = {}
    group_list: list[_Group] = []
    group_of = array("i")
    digests = bytearray()
    try:
        spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n", dir=output.parent)
    except OSError as error:
        raise MarkerError(f"{output}: cannot write in {output.parent}: {error.strerror}") from None
    with spool:
        for marker in markers:
            marker = {**marker, "id": f"{bundle_id}/{marker['id']}"}
            digests += hashlib.blake2b(marker["id"].encode("utf-8"), digest_size=16).digest()
            shared = _shared_keys(marker, bundle_id)
            if shared is None:
                group_of.append(-1)
                spool.write(f"-\t{marker['type']}\t{_marker_json(marker)}\n")
                continue
            key = marker["type"] + "\t" + json.dumps(shared, sort_keys=True)
            if key not in groups:
                groups[key] = len(group_list)
                group_list.append(_Group(marker["type"], shared))
            group_of.append(groups[key])
            group_list[groups[key]].size += 1
            spool.write(f"{groups[key]}\t{marker['type']}\t{marker['value']}\n")
        duplicates = _later_duplicates(digests)
        for sequence in duplicates:
            if group_of[sequence] >= 0:
                group_list[group_of[sequence]].size -= 1
        spool.seek(0)
        _write_files(spool, output, header, group_list, duplicates, report)


def _check_header(output: Path, bundle_id: str, issuer: str, version: int, created: str, tlp: str | None) -> None:
    if not BUNDLE_ID.fullmatch(bundle_id):
        raise ConfigError(f"{output}: the bundle id must be 1-128 letters, digits or ._:- (got {bundle_id!r})")
    if not ISSUER.fullmatch(issuer):
        raise ConfigError(f"{output}: the issuer must be 1-64 letters, digits, '-' or '_' (it names the issuer's keys; got {issuer!r})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"{output}: the version must be an integer >= 0 (got {version!r})")
    if tlp is not None and tlp not in TLP_LEVELS:
        raise ConfigError(f"{output}: the TLP label must be one of {', '.join(TLP_LEVELS)} (got {tlp!r})")
    try:
        zone = datetime.fromisoformat(created.replace("Z", "+00:00")).tzinfo
    except ValueError:
        zone = None
    if zone is None:
        raise ConfigError(f"{output}: 'created' must be an RFC 3339 time with a zone (got {created!r})")


def _shared_keys(marker: dict, bundle_id: str) -> dict | None:
    """The keys a companion entry would carry for this marker, or None when it must stay a JSON
    object: a pattern, another key (name, encoding), or an id that is not prefix + value id."""
    kind = marker["type"]
    if kind not in LISTABLE_TYPES or marker["id"] != f"{bundle_id}/{kind}/{value_id(marker['value'])}":
        return None
    shared = {key: value for key, value in marker.items() if key not in ("id", "type", "value")}
    return shared if shared.keys() <= set(SHARED_KEYS) else None


def _marker_json(marker: dict) -> str:
    """One marker on one line: id, type and value first for the reader, the rest sorted."""
    head = json.dumps({key: marker[key] for key in ("id", "type", "value")}, ensure_ascii=False)
    rest = json.dumps({key: value for key, value in marker.items() if key not in ("id", "type", "value")}, ensure_ascii=False, sort_keys=True)
    return head if rest == "{}" else f"{head[:-1]}, {rest[1:]}"


def _later_duplicates(digests: bytearray) -> set[int]:
    """Input positions of the ids already seen earlier. Kept as 128-bit digests (16 bytes an id,
    where a set of a million id strings takes over 100 MB) and sorted stably, so that among equal
    digests the first in input order comes first and is the one kept."""
    if not digests:
        return set()
    columns = np.frombuffer(bytes(digests), dtype="<u8").reshape(-1, 2)
    order = np.lexsort((columns[:, 1], columns[:, 0]))
    ordered = columns[order]
    repeated = np.all(ordered[1:] == ordered[:-1], axis=1)
    return set(order[1:][repeated].tolist())


class _PrivateFile:
    """A file created with mode 0600 under a fresh temporary name in its final directory, renamed
    into place by `commit` and removed by `discard`: a failed import leaves nothing half-written."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temporary = final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise MarkerError(f"{final}: cannot write: {error.strerror}") from None
        self.stream = os.fdopen(descriptor, "wb")
        self.sha256 = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.stream.write(data)

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.temporary, self.final)

    def discard(self) -> None:
        self.stream.close()
        self.temporary.unlink(missing_ok=True)


def _write_files(spool: Iterable[str], output: Path, header: dict, groups: list[_Group], duplicates: set[int], report: ImportReport) -> None:
    """Second pass over the spool: companion values to their files, every other marker into the
    bundle's `markers`, in input order; then `value_files`, whose digests are known by then."""
    bundle_id = header["id"]
    numbers: dict[str, int] = {}
    private: list[_PrivateFile] = []
    try:
        for group in groups:
            if group.size > COMPANION_THRESHOLD:
                numbers[group.type] = numbers.get(group.type, 0) + 1
                suffix = "" if numbers[group.type] == 1 else f".{numbers[group.type]}"
                group.companion = _PrivateFile(output.with_name(f"{output.stem}.{group.type}{suffix}.txt"))
                private.append(group.companion)
        bundle = _PrivateFile(output)
        private.append(bundle)
        bundle.write(b"{\n")
        for key, value in header.items():
            bundle.write(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n".encode("utf-8"))
        bundle.write(b'  "markers": [')
        written = 0
        for sequence, line in enumerate(spool):
            tag, kind, payload = line[:-1].split("\t", 2)
            group = None if tag == "-" else groups[int(tag)]
            if sequence in duplicates:
                marker_id = json.loads(payload)["id"] if group is None else f"{bundle_id}/{kind}/{value_id(payload)}"
                report.refused.append(f"{marker_id}: duplicate marker id, only the first one kept")
                continue
            report.counts[kind] = report.counts.get(kind, 0) + 1
            if group is not None and group.companion is not None:
                group.companion.write(payload.encode("utf-8") + b"\n")
                group.companion.count += 1
                continue
            if group is not None:
                payload = _marker_json({"id": f"{bundle_id}/{kind}/{value_id(payload)}", "type": kind, "value": payload, **group.shared})
            bundle.write((b",\n    " if written else b"\n    ") + payload.encode("utf-8"))
            written += 1
        bundle.write(b"\n  ]" if written else b"]")
        entries = [
            {"path": group.companion.final.name, "type": group.type, "id_prefix": f"{bundle_id}/{group.type}/", "count": group.companion.count, "sha256": group.companion.sha256.hexdigest()} | dict(sorted(group.shared.items()))
            for group in groups
            if group.companion is not None
        ]
        if entries:
            bundle.write(b',\n  "value_files": [\n    ' + ",\n    ".join(json.dumps(entry, ensure_ascii=False) for entry in entries).encode("utf-8") + b"\n  ]")
        bundle.write(b"\n}\n")
        for companion in private:
            companion.commit()
    except BaseException:
        for companion in private:
            companion.discard()
        raise
