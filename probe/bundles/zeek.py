"""Zeek intel files (Zeek's `frameworks/intel`): a `#fields` header naming at least `indicator`
and `indicator_type`, then one tab-separated indicator a line, `-` for an empty field.

Zeek matches a domain indicator as that exact name, so domain markers read here say `match:
exact`. Repeated indicators are merged, as Zeek does: the first one's description is kept. Marker
ids are `<type>/<value>`, relative to the bundle (see `importing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from probe.bundles.importing import ImportReport, read_lines
from probe.bundles.plain import listed_marker
from probe.bundles.values import normalise_value
from probe.errors import MarkerError

ZEEK_TYPES = {"Intel::ADDR": "address", "Intel::SUBNET": "cidr", "Intel::DOMAIN": "domain", "Intel::URL": "url"}
"""Zeek indicator type → marker type given to `normalise_value` (`address` answers ipv4 or ipv6)."""


def read_zeek(path: Path, report: ImportReport) -> Iterator[dict]:
    """Markers of a Zeek intel file. Columns beyond the two required (`meta.source`, `meta.desc`,
    MISP's `meta.do_notice`, ...) are accepted; `meta.desc` becomes the marker's reference. A line
    of another indicator type, with a value that is not one, or with the wrong number of fields is
    refused by number; a file without a `#fields` header before its first entry is no intel file."""
    columns: list[str] | None = None
    seen: set[str] = set()
    for number, line in read_lines(path, report):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("#fields"):
                columns = line.split("\t")[1:]
                if "indicator" not in columns or "indicator_type" not in columns:
                    raise MarkerError(f"{path}:{number}: #fields must name 'indicator' and 'indicator_type', separated by tabs")
            continue
        if columns is None:
            raise MarkerError(f"{path}:{number}: not a Zeek intel file (no #fields header before the first entry)")
        fields = line.split("\t")
        if len(fields) != len(columns):
            report.refused.append(f"{path}:{number}: {len(fields)} tab-separated fields, the #fields header names {len(columns)}")
            continue
        row = dict(zip(columns, fields))
        indicator_type = row["indicator_type"]
        if indicator_type not in ZEEK_TYPES:
            report.refused.append(f"{path}:{number}: {indicator_type} not supported (supported: {', '.join(ZEEK_TYPES)})")
            continue
        try:
            kind, value = normalise_value(ZEEK_TYPES[indicator_type], row["indicator"])
        except ValueError as error:
            report.refused.append(f"{path}:{number}: {indicator_type}: {error}")
            continue
        marker = listed_marker(kind, value, "exact")
        if marker["id"] in seen:
            continue
        seen.add(marker["id"])
        description = row.get("meta.desc", "-")
        if description not in ("-", ""):
            marker["reference"] = description
        yield marker
    if columns is None:
        raise MarkerError(f"{path}: not a Zeek intel file (no #fields header)")
