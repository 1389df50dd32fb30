"""Loading marker files: the project's JSON bundle (`markers/README.md`) and Zeek intel files.

Both give `Marker`s with normalised values. The format is recognised by content: a JSON object is a
bundle, anything else must be a Zeek intel file with a `#fields` header. Every problem is reported
with the file and the line or marker it is in; a file with an error loads nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
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


DOMAIN_NAME = re.compile(r"(?!.{254})[^\s/:@.]{1,63}(\.[^\s/:@.]{1,63})*")
"""Labels of 1-63 characters, 253 at most in all; anything but spaces and URL punctuation, since
feeds carry internationalised and underscore names."""


def _address(value: str) -> tuple[int, str]:
    """(version, canonical text): socket's parser is an order of magnitude faster than ipaddress's
    on feeds of hundreds of thousands of addresses, and as strict."""
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            return version, socket.inet_ntop(family, socket.inet_pton(family, value))
        except OSError:
            continue
    raise ValueError(f"{value!r} is not an IP address")


def normalise_value(marker_type: str, value: str) -> tuple[str, str]:
    """(type, canonical value) of a marker value; raises ValueError saying what is wrong."""
    value = value.strip()
    if marker_type in ("ipv4", "ipv6", "address"):
        version, text = _address(value)
        if marker_type != "address" and f"ipv{version}" != marker_type:
            raise ValueError(f"{value!r} is an IPv{version} address, not {marker_type}")
        return f"ipv{version}", text
    if marker_type == "cidr":
        return "cidr", str(ipaddress.ip_network(value, strict=False))
    if marker_type == "domain":
        name = value.lower().rstrip(".")
        if not DOMAIN_NAME.fullmatch(name):
            raise ValueError(f"{value!r} is not a domain name")
        return "domain", name
    raise ValueError(f"unknown marker type {marker_type!r}")


def _timestamp(value: object, key: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time; raises ValueError naming `key`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected an RFC 3339 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{key}: {value!r} has no time zone (add Z for UTC)")
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
    try:
        bundle_from = _timestamp(document.get("valid_from"), "valid_from")
        bundle_until = _timestamp(document.get("valid_until"), "valid_until")
    except ValueError as error:
        raise MarkerError(f"{path}: {error}") from None
    markers, not_loaded, seen = [], {}, set()
    for number, entry in enumerate(document["markers"], 1):
        marker_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(marker_id, str) or not marker_id:
            raise MarkerError(f"{path}: marker #{number}: expected an object with a non-empty string 'id'")
        if marker_id in seen:
            raise MarkerError(f"{path}: marker {marker_id!r}: id used twice in the bundle")
        seen.add(marker_id)
        marker_type, value, match = entry.get("type"), entry.get("value"), entry.get("match", "subdomains")
        if marker_type in PLANNED_TYPES:
            not_loaded[marker_type] = not_loaded.get(marker_type, 0) + 1
            continue
        try:
            if marker_type not in ACTIVE_TYPES:
                raise ValueError(f"unknown type {marker_type!r} (known: {', '.join(ACTIVE_TYPES + PLANNED_TYPES)})")
            if not isinstance(value, str):
                raise ValueError("'value' must be a string")
            if match != "subdomains" and match != "exact":
                raise ValueError(f"'match' must be 'exact' or 'subdomains', got {match!r}")
            kind, normalised = normalise_value(marker_type, value)
            valid_from = _timestamp(entry.get("valid_from"), "valid_from")
            valid_until = _timestamp(entry.get("valid_until"), "valid_until")
        except ValueError as error:
            raise MarkerError(f"{path}: marker {marker_id!r}: {error}") from None
        if bundle_from is not None and (valid_from is None or valid_from < bundle_from):
            valid_from = bundle_from
        if bundle_until is not None and (valid_until is None or valid_until > bundle_until):
            valid_until = bundle_until
        markers.append(Marker(marker_id, kind, normalised, bundle, version, kind == "domain" and match == "subdomains", valid_from, valid_until))
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
