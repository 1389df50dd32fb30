"""Loading marker files: the project's JSON bundle (`markers/README.md`) and Zeek intel files.

Both give `Marker`s with normalised values. The format is recognised by content: a JSON object is a
bundle, anything else must be a Zeek intel file with a `#fields` header. Every problem is reported
with the file and the line or marker it is in; a file with an error loads nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from datetime import datetime
from pathlib import Path

from probe.errors import MarkerError
from probe.match.markers import ACTIVE_TYPES, Marker, MarkerFile

PLANNED_TYPES = ("http_host", "url", "tls_sni", "ja3", "ja4", "x509_sha256", "bytes", "yara")
"""Bundle types defined by the format whose matching is not built yet: counted as not loaded."""

ZEEK_TYPES = {"Intel::ADDR": "address", "Intel::SUBNET": "cidr", "Intel::DOMAIN": "domain"}


def load_marker_file(path: str) -> MarkerFile:
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise MarkerError(f"{path}: cannot read marker file: {error.strerror}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MarkerError(f"{path}: not UTF-8 text (byte {error.start})") from None
    derived_id = f"{Path(path).stem}-{hashlib.sha256(content).hexdigest()[:12]}"
    if text.lstrip().startswith("{"):
        return _load_bundle(path, text, derived_id)
    return _load_zeek_intel(path, text, derived_id)


def normalise_value(marker_type: str, value: str) -> tuple[str, str]:
    """(type, canonical value) of a marker value; raises ValueError saying what is wrong."""
    value = value.strip()
    if marker_type in ("ipv4", "ipv6", "address"):
        address = ipaddress.ip_address(value)
        if marker_type != "address" and f"ipv{address.version}" != marker_type:
            raise ValueError(f"{value!r} is an IPv{address.version} address, not {marker_type}")
        return f"ipv{address.version}", str(address)
    if marker_type == "cidr":
        return "cidr", str(ipaddress.ip_network(value, strict=False))
    if marker_type == "domain":
        name = value.lower().rstrip(".")
        if not name or len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")) or any(c.isspace() or c in "/:@" for c in name):
            raise ValueError(f"{value!r} is not a domain name")
        return "domain", name
    raise ValueError(f"unknown marker type {marker_type!r}")


def _timestamp(value: object, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MarkerError(f"{where}: expected an RFC 3339 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MarkerError(f"{where}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise MarkerError(f"{where}: {value!r} has no time zone (add Z for UTC)")
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def _load_bundle(path: str, text: str, derived_id: str) -> MarkerFile:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise MarkerError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(document, dict) or not isinstance(document.get("markers"), list):
        raise MarkerError(f"{path}: a bundle is a JSON object with a 'markers' list")
    bundle = document.get("id", derived_id)
    version = document.get("version", 0)
    if not isinstance(bundle, str) or not bundle:
        raise MarkerError(f"{path}: 'id' must be a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MarkerError(f"{path}: 'version' must be a non-negative integer")
    bundle_from = _timestamp(document.get("valid_from"), f"{path}: valid_from")
    bundle_until = _timestamp(document.get("valid_until"), f"{path}: valid_until")
    markers, not_loaded, seen = [], {}, set()
    for number, entry in enumerate(document["markers"], 1):
        where = f"{path}: marker #{number}"
        if not isinstance(entry, dict):
            raise MarkerError(f"{where}: expected an object")
        marker_id, marker_type, value = entry.get("id"), entry.get("type"), entry.get("value")
        if not isinstance(marker_id, str) or not marker_id:
            raise MarkerError(f"{where}: 'id' must be a non-empty string")
        where = f"{path}: marker {marker_id!r}"
        if marker_id in seen:
            raise MarkerError(f"{where}: id used twice in the bundle")
        seen.add(marker_id)
        if marker_type in PLANNED_TYPES:
            not_loaded[marker_type] = not_loaded.get(marker_type, 0) + 1
            continue
        if marker_type not in ACTIVE_TYPES:
            raise MarkerError(f"{where}: unknown type {marker_type!r} (known: {', '.join(ACTIVE_TYPES + PLANNED_TYPES)})")
        if not isinstance(value, str):
            raise MarkerError(f"{where}: 'value' must be a string")
        match = entry.get("match", "subdomains")
        if match not in ("exact", "subdomains"):
            raise MarkerError(f"{where}: 'match' must be 'exact' or 'subdomains', got {match!r}")
        try:
            kind, normalised = normalise_value(marker_type, value)
        except ValueError as error:
            raise MarkerError(f"{where}: {error}") from None
        valid_from = _timestamp(entry.get("valid_from"), f"{where}: valid_from")
        valid_until = _timestamp(entry.get("valid_until"), f"{where}: valid_until")
        markers.append(
            Marker(
                id=marker_id,
                type=kind,
                value=normalised,
                bundle=bundle,
                bundle_version=version,
                subdomains=kind == "domain" and match == "subdomains",
                valid_from=max(filter(None.__ne__, (valid_from, bundle_from)), default=None),
                valid_until=min(filter(None.__ne__, (valid_until, bundle_until)), default=None),
            )
        )
    return MarkerFile(path, bundle, version, markers, not_loaded)


def _load_zeek_intel(path: str, text: str, derived_id: str) -> MarkerFile:
    columns: list[str] | None = None
    markers, not_loaded, seen = [], {}, set()
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("#fields"):
                columns = line.split("\t")[1:]
                if "indicator" not in columns or "indicator_type" not in columns:
                    raise MarkerError(f"{path}:{line_number}: #fields must name 'indicator' and 'indicator_type'")
            continue
        if columns is None:
            raise MarkerError(f"{path}:{line_number}: not a marker bundle (JSON) nor a Zeek intel file (no #fields header before the first entry)")
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise MarkerError(f"{path}:{line_number}: {len(fields)} tab-separated fields, the #fields header names {len(columns)}")
        row = dict(zip(columns, fields))
        indicator, indicator_type = row["indicator"], row["indicator_type"]
        if indicator_type not in ZEEK_TYPES:
            not_loaded[indicator_type] = not_loaded.get(indicator_type, 0) + 1
            continue
        try:
            kind, normalised = normalise_value(ZEEK_TYPES[indicator_type], indicator)
        except ValueError as error:
            raise MarkerError(f"{path}:{line_number}: {indicator_type}: {error}") from None
        marker_id = f"{indicator_type}:{normalised}"
        if marker_id in seen:
            continue  # Zeek merges repeated indicators; so do we
        seen.add(marker_id)
        markers.append(Marker(id=marker_id, type=kind, value=normalised, bundle=derived_id, bundle_version=0))
    if columns is None:
        raise MarkerError(f"{path}: not a marker bundle (JSON) nor a Zeek intel file (no #fields header)")
    return MarkerFile(path, derived_id, 0, markers, not_loaded)
