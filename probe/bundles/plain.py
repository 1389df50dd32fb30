"""Plain value lists and Suricata datasets: one value a line, the type detected or given.

Marker ids are `<type>/<value>`, relative to the bundle (see `importing`): stable across issues of
the same feed, and the id_prefix + value form that lets a large list become a companion file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from pathlib import Path

from probe.bundles.importing import ImportReport, read_lines
from probe.bundles.values import detect_type, normalise_value, value_id

DATASET_TYPES = ("string", "ipv4", "ipv6", "ip", "md5", "sha256")
"""Suricata dataset types: `string` values are base64 and detected once decoded; the others map
to a marker type by `VALUE_TYPES`."""
VALUE_TYPES = {"ipv4": "ipv4", "ipv6": "address", "ip": "address", "md5": "ja3", "sha256": "x509_sha256"}
"""Suricata's `ip` sets (and `ipv6` here) hold addresses of both versions."""
DATASET_NOTES = {
    "string": "values base64-decoded, then read as an address, URL or domain name by their shape",
    "md5": "MD5 values read as JA3 fingerprints (ja3): the probe matches no other MD5",
    "sha256": "SHA-256 values read as server certificate fingerprints (x509_sha256): the probe matches no other SHA-256",
}
BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def read_list(path: Path, report: ImportReport, marker_type: str | None = None) -> Iterator[dict]:
    """Markers of a plain list: '#' comments and blank lines skipped, each other line one value of
    `marker_type`, or of the type its shape says (`detect_type`); a line that fits nothing is
    refused by number. A file of base64 lines that read as nothing else is a Suricata `string`
    dataset (its own file does not say so) and is read as one."""
    if marker_type is None and _is_string_dataset(path):
        report.notes.append(f"{path}: every line is base64 text: read as a Suricata string dataset")
        yield from read_dataset(path, report, "string")
        return
    for number, line in read_lines(path, report):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            kind, value = normalise_value(marker_type, text) if marker_type else detect_type(text)
        except ValueError as error:
            report.refused.append(f"{path}:{number}: {error}")
            continue
        yield listed_marker(kind, value, "subdomains")


def read_dataset(path: Path, report: ImportReport, dataset_type: str) -> Iterator[dict]:
    """Markers of a Suricata dataset of `dataset_type` (see `DATASET_TYPES`). `datarep` lines,
    `value,reputation`, give their value: the probe has no use for the reputation."""
    if dataset_type in DATASET_NOTES:
        report.notes.append(f"{path}: Suricata {dataset_type} dataset: {DATASET_NOTES[dataset_type]}")
    for number, line in read_lines(path, report):
        text = line.strip().partition(",")[0].strip()
        if not text or text.startswith("#"):
            continue
        try:
            if dataset_type == "string":
                kind, value = detect_type(_base64_text(text))
            else:
                kind, value = normalise_value(VALUE_TYPES[dataset_type], text)
        except ValueError as error:
            report.refused.append(f"{path}:{number}: {error}")
            continue
        yield listed_marker(kind, value, "subdomains")


def listed_marker(kind: str, value: str, match: str) -> dict:
    """A marker of a value list; domains say their `match` explicitly, since formats differ."""
    marker = {"id": f"{kind}/{value_id(value)}", "type": kind, "value": value}
    if kind == "domain":
        marker["match"] = match
    return marker


def _base64_text(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{text!r} is not base64 of UTF-8 text (a Suricata string dataset value)") from None


def _is_string_dataset(path: Path) -> bool:
    """Whether every value line is padded base64 of UTF-8 text and reads as no value itself (a
    dotted name, an address, a digest): base64 has no dots, and short words rarely decode to text.
    Stops at the first line that settles it, at once for an ordinary list."""
    lines = 0
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                text = raw.strip().partition(b",")[0].strip()
                if not text or text.startswith(b"#"):
                    continue
                if not BASE64.fullmatch(text):
                    return False
                try:
                    _base64_text(text.decode("ascii"))
                except ValueError:
                    return False
                try:
                    kind, value = detect_type(text.decode("ascii"))
                except ValueError:
                    kind, value = "", ""
                if kind and (kind != "domain" or "." in value):
                    return False
                lines += 1
    except OSError:
        return False
    return lines > 0
