"""`probe markers import`'s machinery: every source format read from real files, what each refuses
and says, the bundle and companion files written, and the STIX round trip.

Files are written to tmp_path as a feed would arrive; written bundles are read back with the
probe's own bundle reader, so that an import is checked by what will load it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import stat
from pathlib import Path

import pytest

from probe.bundles.values import value_id
from probe.bundles.format import Bundle, read_file
from probe.bundles import library
from probe.bundles.importing import ImportReport, detect_format, read_source, write_bundle
from probe.bundles.stix import export_stix
from probe.errors import ConfigError, MarkerError

CREATED = "2026-11-01T00:00:00Z"
SHA256 = "ab" * 32
JA3 = "e7d705a3286e19ea42f587b344ee6865"


def read_bundle(path: str) -> Bundle:
    return library.read_source(path, read_file(path))


def imported(source_format: str, path: Path, **options: object) -> tuple[list[dict], ImportReport]:
    report = ImportReport()
    return list(read_source(source_format, path, report, **options)), report


def write(tmp_path: Path, markers, report: ImportReport | None = None, name: str = "soc.json", **header: object) -> tuple[Path, dict]:
    output = tmp_path / name
    write_bundle(markers, output, bundle_id=str(header.get("bundle_id", "soc")), issuer="soc", version=4, report=report or ImportReport(), created=CREATED, tlp=header.get("tlp"))  # type: ignore[arg-type]
    return output, json.loads(output.read_text(encoding="utf-8"))


def triples(markers) -> set[tuple[str, str, str | None]]:
    """(type, value, match) of loaded `Marker`s: what a round trip must keep."""
    return {(marker.type, marker.value, ("subdomains" if marker.subdomains else "exact") if marker.type == "domain" else None) for marker in markers}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Plain lists and Suricata datasets.


def test_list_detects_each_line_and_refuses_what_fits_nothing(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text(f"# weekly feed\n198.51.100.7\n\n2001:DB8::7\n203.0.113.9/24\nEvil.Example.\nhttp://bad.example/x\n{JA3}\n{SHA256.upper()}\nnot a value\n", encoding="utf-8")
    markers, report = imported("list", feed)
    assert [(marker["type"], marker["value"]) for marker in markers] == [
        ("ipv4", "198.51.100.7"),
        ("ipv6", "2001:db8::7"),
        ("cidr", "203.0.113.0/24"),
        ("domain", "evil.example"),
        ("url", "bad.example/x"),
        ("ja3", JA3),
        ("x509_sha256", SHA256),
    ]
    assert markers[3] == {"id": f"domain/{value_id('evil.example')}", "type": "domain", "value": "evil.example", "match": "subdomains"}
    assert report.refused == [f"{feed}:10: 'not a value' is not an address, network, hash, JA4, URL or domain name"]
    assert report.semantics == "domains: name and subdomains"
    _, document = write(tmp_path, markers, report)
    assert report.counts == {"ipv4": 1, "ipv6": 1, "cidr": 1, "domain": 1, "url": 1, "ja3": 1, "x509_sha256": 1}
    assert report.lines()[:2] == ["imported 7 markers: ipv4 1, ipv6 1, cidr 1, domain 1, url 1, ja3 1, x509_sha256 1", "domains: name and subdomains"]
    assert report.lines()[-2:] == ["refused 1:", f"  {feed}:10: 'not a value' is not an address, network, hash, JA4, URL or domain name"]
    assert document["markers"][0] == {"id": f"soc/ipv4/{value_id('198.51.100.7')}", "type": "ipv4", "value": "198.51.100.7"}


def test_list_with_a_given_type(tmp_path: Path) -> None:
    feed = tmp_path / "names.txt"
    feed.write_text("a.example\n198.51.100.7\n", encoding="utf-8")
    markers, report = imported("list", feed, type_hint="http_host")
    assert [(marker["type"], marker["value"]) for marker in markers] == [("http_host", "a.example"), ("http_host", "198.51.100.7")]
    with pytest.raises(ConfigError, match="--type of a list must be one of"):
        read_source("list", feed, ImportReport(), type_hint="yara")


def test_list_of_base64_lines_is_a_suricata_string_dataset(tmp_path: Path) -> None:
    feed = tmp_path / "dns-bl.lst"
    feed.write_text("".join(base64.b64encode(name.encode()).decode() + "\n" for name in ("evil.example", "c2.bad.example", "198.51.100.7")), encoding="utf-8")
    assert detect_format(feed) == "list"
    markers, report = imported("list", feed)
    assert [(marker["type"], marker["value"], marker.get("match")) for marker in markers] == [("domain", "evil.example", "subdomains"), ("domain", "c2.bad.example", "subdomains"), ("ipv4", "198.51.100.7", None)]
    assert report.notes[0] == f"{feed}: every line is base64 text: read as a Suricata string dataset"
    assert "base64-decoded" in report.notes[1]


def test_an_ordinary_list_is_not_taken_for_base64(tmp_path: Path) -> None:
    feed = tmp_path / "names.txt"
    feed.write_text("abcd.example\nZXZpbC5leGFtcGxl\n", encoding="utf-8")
    markers, report = imported("list", feed)
    assert [marker["value"] for marker in markers] == ["abcd.example"]
    assert report.notes == []
    assert len(report.refused) == 1 and "ZXZpbC5leGFtcGxl" in report.refused[0], "a one-label line is no domain, and not decoded either"


def test_suricata_datasets_of_each_type(tmp_path: Path) -> None:
    strings = tmp_path / "strings.lst"
    strings.write_text(base64.b64encode(b"evil.example").decode() + ",200\n" + "!!notbase64\n", encoding="utf-8")
    markers, report = imported("suricata-dataset", strings, type_hint="string")
    assert [(marker["type"], marker["value"]) for marker in markers] == [("domain", "evil.example")]
    assert report.refused == [f"{strings}:2: '!!notbase64' is not base64 of UTF-8 text (a Suricata string dataset value)"]
    addresses = tmp_path / "ipv4.lst"
    addresses.write_text("198.51.100.7,100\n2001:db8::1\n", encoding="utf-8")
    markers, report = imported("suricata-dataset", addresses, type_hint="ipv4")
    assert [marker["value"] for marker in markers] == ["198.51.100.7"]
    assert report.refused == [f"{addresses}:2: '2001:db8::1' is an IPv6 address, not ipv4"]
    markers, _ = imported("suricata-dataset", addresses, type_hint="ip")
    assert [marker["type"] for marker in markers] == ["ipv4", "ipv6"]
    hashes = tmp_path / "md5.lst"
    hashes.write_text(JA3.upper() + "\n", encoding="utf-8")
    markers, report = imported("suricata-dataset", hashes, type_hint="md5")
    assert markers == [{"id": f"ja3/{value_id(JA3)}", "type": "ja3", "value": JA3}]
    assert report.notes == [f"{hashes}: Suricata md5 dataset: MD5 values read as JA3 fingerprints (ja3): the probe matches no other MD5"]
    digests = tmp_path / "sha256.lst"
    digests.write_text(SHA256 + "\n", encoding="utf-8")
    markers, _ = imported("suricata-dataset", digests, type_hint="sha256")
    assert markers == [{"id": f"x509_sha256/{value_id(SHA256)}", "type": "x509_sha256", "value": SHA256}]
    with pytest.raises(ConfigError, match="needs --type"):
        read_source("suricata-dataset", digests, ImportReport())


# Zeek intel.


ZEEK = (
    "#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\tmeta.do_notice\n"
    "# a comment\n"
    "198.51.100.7\tIntel::ADDR\tsoc\tC2 server\tT\n"
    "2001:db8::7\tIntel::ADDR\tsoc\t-\tF\n"
    "203.0.113.0/24\tIntel::SUBNET\tsoc\t-\tF\n"
    "Evil.Example\tIntel::DOMAIN\tsoc\tphishing\tF\n"
    "bad.example/login\tIntel::URL\tsoc\t-\tF\n"
    "d41d8cd98f00b204e9800998ecf8427e\tIntel::FILE_HASH\tsoc\t-\tF\n"
    "evil.example\tIntel::DOMAIN\tother\tsecond source\tF\n"
    "198.51.100.8\tIntel::ADDR\tsoc\n"
    "10.0.0.0/8\tIntel::ADDR\tsoc\t-\tF\n"
)


def test_zeek_intel(tmp_path: Path) -> None:
    feed = tmp_path / "intel.dat"
    feed.write_text(ZEEK, encoding="utf-8")
    assert detect_format(feed) == "zeek"
    markers, report = imported("zeek", feed)
    assert markers == [
        {"id": f"ipv4/{value_id('198.51.100.7')}", "type": "ipv4", "value": "198.51.100.7", "reference": "C2 server"},
        {"id": f"ipv6/{value_id('2001:db8::7')}", "type": "ipv6", "value": "2001:db8::7"},
        {"id": f"cidr/{value_id('203.0.113.0/24')}", "type": "cidr", "value": "203.0.113.0/24"},
        {"id": f"domain/{value_id('evil.example')}", "type": "domain", "value": "evil.example", "match": "exact", "reference": "phishing"},
        {"id": f"url/{value_id('bad.example/login')}", "type": "url", "value": "bad.example/login"},
    ]
    assert report.refused == [
        f"{feed}:8: Intel::FILE_HASH not supported (supported: Intel::ADDR, Intel::SUBNET, Intel::DOMAIN, Intel::URL)",
        f"{feed}:10: 3 tab-separated fields, the #fields header names 5",
        f"{feed}:11: Intel::ADDR: '10.0.0.0/8' is not an IP address",
    ]
    assert report.semantics == "domains: exact name (Zeek's meaning)"


def test_zeek_without_header_or_with_spaces(tmp_path: Path) -> None:
    feed = tmp_path / "intel.dat"
    feed.write_text("198.51.100.7\tIntel::ADDR\tsoc\n", encoding="utf-8")
    with pytest.raises(MarkerError, match=r"intel.dat:1: not a Zeek intel file \(no #fields header before the first entry\)"):
        imported("zeek", feed)
    feed.write_text("#fields indicator indicator_type meta.source\n", encoding="utf-8")
    with pytest.raises(MarkerError, match=r"intel.dat:1: #fields must name 'indicator' and 'indicator_type', separated by tabs"):
        imported("zeek", feed)


# MISP.


def misp_event() -> dict:
    def attribute(uuid: str, kind: str, value: str, to_ids: bool = True, **fields: object) -> dict:
        return {"uuid": uuid, "type": kind, "category": "Network activity", "value": value, "to_ids": to_ids, **fields}

    return {
        "Event": {
            "uuid": "ev-1",
            "info": "Phishing wave",
            "threat_level_id": "1",
            "Tag": [{"name": "tlp:amber"}],
            "Attribute": [
                attribute("a-1", "ip-dst", "198.51.100.7"),
                attribute("a-2", "ip-src", "203.0.113.0/24"),
                attribute("a-3", "ip-dst|port", "192.0.2.8|8443"),
                attribute("a-4", "ip-src|port", "192.0.2.9|51000"),
                attribute("a-5", "hostname", "Mail.Evil.Example"),
                attribute("a-6", "domain|ip", "evil.example|2001:db8::7"),
                attribute("a-7", "url", "https://bad.example/x"),
                attribute("a-8", "ja3-fingerprint-md5", JA3),
                attribute("a-9", "x509-fingerprint-sha256", SHA256.upper(), Tag=[{"name": "tlp:red"}]),
                attribute("a-10", "snort", "alert tcp any any -> any any (sid:1;)"),
                attribute("a-11", "domain", "quiet.example", to_ids=False),
                attribute("a-12", "ip-dst", "not-an-address"),
            ],
            "Object": [{"name": "yara", "Attribute": [attribute("a-13", "yara", 'rule beacon { strings: $a = "xyz" condition: $a }')]}],
        }
    }


def test_misp_event(tmp_path: Path) -> None:
    feed = tmp_path / "event.json"
    feed.write_text(json.dumps(misp_event()), encoding="utf-8")
    assert detect_format(feed) == "misp"
    markers, report = imported("misp", feed)
    shared = {"severity": "high", "reference": "Phishing wave (MISP event ev-1)", "tlp": "amber"}
    assert markers == [
        {"id": "a-1", "type": "ipv4", "value": "198.51.100.7", **shared},
        {"id": "a-2", "type": "cidr", "value": "203.0.113.0/24", **shared},
        {"id": "a-3", "type": "ipv4", "value": "192.0.2.8", "constraints": {"port": 8443}, **shared},
        {"id": "a-4", "type": "ipv4", "value": "192.0.2.9", **shared},
        {"id": "a-5", "type": "domain", "value": "mail.evil.example", "match": "subdomains", **shared},
        {"id": "a-6", "type": "domain", "value": "evil.example", "match": "subdomains", **shared},
        {"id": "a-6#ip", "type": "ipv6", "value": "2001:db8::7", **shared},
        {"id": "a-7", "type": "url", "value": "bad.example/x", **shared},
        {"id": "a-8", "type": "ja3", "value": JA3, **shared},
        {"id": "a-9", "type": "x509_sha256", "value": SHA256, **shared, "tlp": "red"},
        {"id": "a-13", "type": "yara", "value": 'rule beacon { strings: $a = "xyz" condition: $a }', "name": "beacon", **shared},
    ]
    assert report.refused[0].startswith(f"{feed}:a-10: MISP type 'snort' not supported (supported: ip-src, ")
    assert report.refused[1:] == [f"{feed}:a-12: ip-dst: 'not-an-address' is not an IP address"]
    assert report.notes == [
        f"{feed}: 1 attribute with to_ids false skipped (--all imports them)",
        f"{feed}: ip-src|port: the source port of 1 attribute dropped (a client port, not the server port a constraint names); addresses imported",
    ]
    everything, report = imported("misp", feed, include_all=True)
    assert {"id": "a-11", "type": "domain", "value": "quiet.example", "match": "subdomains", **shared} in everything
    path, document = write(tmp_path, markers)
    assert read_bundle(str(path)).counts() == {"ipv4": 3, "cidr": 1, "domain": 2, "ipv6": 1, "url": 1, "ja3": 1, "x509_sha256": 1, "yara": 1}
    assert document["markers"][-1]["id"] == "soc/a-13"


def test_misp_search_answer_and_threat_levels(tmp_path: Path) -> None:
    feed = tmp_path / "search.json"
    events = [{"Event": {"uuid": f"ev-{level}", "info": "x", "threat_level_id": str(level), "Attribute": [{"uuid": f"u-{level}", "type": "domain", "value": f"l{level}.example", "to_ids": True}]}} for level in (2, 3, 4)]
    feed.write_text(json.dumps({"response": events}), encoding="utf-8")
    assert detect_format(feed) == "misp"
    markers, _ = imported("misp", feed)
    assert [marker.get("severity") for marker in markers] == ["medium", "low", None]
    feed.write_text(json.dumps({"response": [{"nothing": 1}]}), encoding="utf-8")
    with pytest.raises(MarkerError, match="not a MISP event"):
        imported("misp", feed)


# STIX 2.1.


def indicator(number: int, pattern: str, **fields: object) -> dict:
    return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{number:08d}", "created": CREATED, "modified": CREATED, "pattern": pattern, "pattern_type": "stix", "valid_from": CREATED, **fields}


def stix_bundle(*objects: dict) -> dict:
    return {"type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000000", "objects": list(objects)}


def test_stix_indicators(tmp_path: Path) -> None:
    feed = tmp_path / "feed.stix.json"
    feed.write_text(
        json.dumps(
            stix_bundle(
                {"type": "identity", "id": "identity--1", "name": "CERT"},
                indicator(1, "[ipv4-addr:value = '198.51.100.7' OR ipv6-addr:value = '2001:DB8::7'] OR [domain-name:value = 'Evil.Example']", valid_until="2027-01-01T00:00:00Z", description="advisory 42"),
                indicator(2, "[network-traffic:dst_ref.value = '192.0.2.8' AND network-traffic:dst_port = 443]"),
                indicator(3, "[url:value = 'http://bad.example/it\\'s'] OR [x509-certificate:hashes.'SHA-256' = '" + SHA256.upper() + "']"),
                indicator(4, "[ipv4-addr:value ISSUBSET '203.0.113.7/24']"),
                indicator(5, "[domain-name:value = 'a.example'] AND [domain-name:value = 'b.example']"),
                indicator(6, "[ipv4-addr:value = '198.51.100.9'] FOLLOWEDBY [ipv4-addr:value = '198.51.100.10']"),
                indicator(7, "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']"),
                indicator(8, "[ipv4-addr:value != '198.51.100.7']"),
                indicator(9, "[ipv4-addr:value = '198.51.100.7'] WITHIN 300 SECONDS"),
                indicator(10, "alert tcp any any -> any any (sid:1;)", pattern_type="snort"),
                indicator(11, "[ipv4-addr:value = '198.51.100.7'"),
                indicator(12, "[network-traffic:dst_port = 443]"),
                indicator(13, "[domain-name:value = 'x.example']", revoked=True),
            )
        ),
        encoding="utf-8",
    )
    assert detect_format(feed) == "stix"
    markers, report = imported("stix", feed)
    advisory = {"valid_from": CREATED, "valid_until": "2027-01-01T00:00:00Z", "reference": "advisory 42"}
    assert markers == [
        {"id": "indicator--00000001", "type": "ipv4", "value": "198.51.100.7", **advisory},
        {"id": "indicator--00000001#2", "type": "ipv6", "value": "2001:db8::7", **advisory},
        {"id": "indicator--00000001#3", "type": "domain", "value": "evil.example", "match": "subdomains", **advisory},
        {"id": "indicator--00000002", "type": "ipv4", "value": "192.0.2.8", "constraints": {"direction": "to_server", "port": 443}, "valid_from": CREATED},
        {"id": "indicator--00000003", "type": "url", "value": "bad.example/it's", "valid_from": CREATED},
        {"id": "indicator--00000003#2", "type": "x509_sha256", "value": SHA256, "valid_from": CREATED},
        {"id": "indicator--00000004", "type": "cidr", "value": "203.0.113.0/24", "valid_from": CREATED},
        {"id": "indicator--00000005", "type": "domain", "value": "a.example", "match": "subdomains", "valid_from": CREATED},
        {"id": "indicator--00000005#2", "type": "domain", "value": "b.example", "match": "subdomains", "valid_from": CREATED},
    ]
    assert report.refused == [
        f"{feed}:indicator--00000006: FOLLOWEDBY (observations in sequence) is not supported",
        f"{feed}:indicator--00000007: file:hashes.MD5 is not supported (supported: ipv4-addr:value, ipv6-addr:value, network-traffic:dst_ref.value, domain-name:value, url:value, x509-certificate:hashes.'SHA-256', network-traffic:dst_port)",
        f"{feed}:indicator--00000008: operator != on ipv4-addr:value is not supported (only =, and ISSUBSET for a network)",
        f"{feed}:indicator--00000009: qualifier WITHIN is not supported (the probe matches values, not timed observations)",
        f"{feed}:indicator--00000010: pattern_type 'snort' is not supported (only 'stix')",
        f"{feed}:indicator--00000011: pattern syntax: expected ']', found the end of the pattern",
        f"{feed}:indicator--00000012: network-traffic:dst_port without an address or name in the same observation: a port alone is no marker",
    ]
    assert report.notes == [
        f"{feed}:indicator--00000005: values joined by AND read as separate markers, each matching on its own",
        f"{feed}:indicator--00000013: revoked by its producer, skipped",
        f"{feed}: objects other than indicators ignored: identity 1",
    ]
    assert report.semantics.startswith("domains: name and subdomains")


def test_stix_pattern_syntax_errors_name_the_place(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps(stix_bundle(indicator(1, "[domain-name:value = 'unclosed]"), indicator(2, "[domain-name:value = 'a' ~ 'b']"), indicator(3, "[domain-name:value = 'a\\x']"))), encoding="utf-8")
    _, report = imported("stix", feed)
    assert report.refused == [
        f"{feed}:indicator--00000001: pattern syntax: string opened at character 22 is not closed",
        f"{feed}:indicator--00000002: pattern syntax: unexpected \"~ 'b']\" at character 26",
        f"{feed}:indicator--00000003: pattern syntax: invalid escape at character 24 (only \\' and \\\\)",
    ]


# Formats by content.


def test_detect_format(tmp_path: Path) -> None:
    cases = {
        "bundle.json": ("bundle", json.dumps({"id": "x", "markers": []})),
        "stix.json": ("stix", json.dumps(stix_bundle())),
        "misp.json": ("misp", json.dumps(misp_event())),
        "intel.dat": ("zeek", "# Zeek intel\n#fields\tindicator\tindicator_type\n"),
        "list.txt": ("list", "# comment\n198.51.100.7\n#fields\tindicator\n"),
        "empty.txt": ("list", ""),
    }
    for name, (expected, content) in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        assert detect_format(tmp_path / name) == expected, name
    (tmp_path / "other.json").write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(MarkerError, match="JSON, but not a marker bundle"):
        detect_format(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text('{\n  "Event": [\n', encoding="utf-8")
    with pytest.raises(MarkerError, match=r"broken.json:3: not valid JSON"):
        detect_format(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="already a marker bundle"):
        read_source("bundle", tmp_path / "bundle.json", ImportReport())


# Writing bundles.


def test_large_groups_become_companion_files(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    names = [f"host{number}.example" for number in range(1500)]
    feed.write_text("198.51.100.7\n" + "\n".join(names) + "\n198.51.100.8\nhost7.example\n", encoding="utf-8")
    report = ImportReport()
    output, document = write(tmp_path, read_source("list", feed, report), report, tlp="amber")
    companion = tmp_path / "soc.domain.txt"
    content = companion.read_bytes()
    assert content == "".join(f"{name}\n" for name in names).encode()
    assert document["value_files"] == [
        {"path": "soc.domain.txt", "type": "domain", "id_prefix": "soc/domain/", "count": 1500, "sha256": hashlib.sha256(content).hexdigest(), "match": "subdomains"}
    ]
    assert [marker["id"] for marker in document["markers"]] == [f"soc/ipv4/{value_id('198.51.100.7')}", f"soc/ipv4/{value_id('198.51.100.8')}"]
    assert {key: document[key] for key in ("id", "issuer", "version", "created", "tlp")} == {"id": "soc", "issuer": "soc", "version": 4, "created": CREATED, "tlp": "amber"}
    assert report.counts == {"ipv4": 2, "domain": 1500}
    assert report.refused == [f"soc/domain/{value_id('host7.example')}: duplicate marker id, only the first one kept"]
    assert mode(output) == 0o600 and mode(companion) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["feed.txt", "soc.domain.txt", "soc.json"]
    bundle = read_bundle(str(output))
    assert bundle.counts() == {"ipv4": 2, "domain": 1500}
    loaded = list(bundle.all_markers())
    assert loaded[2].id == f"soc/domain/{value_id('host0.example')}" and loaded[2].subdomains and loaded[2].tlp == "amber"


def test_groups_split_by_shared_keys_and_small_groups_stay_in_order(tmp_path: Path) -> None:
    def group(octet: int, count: int, reference: str) -> list[dict]:
        addresses = [f"10.{octet}.{number // 256}.{number % 256}" for number in range(count)]
        return [{"id": f"ipv4/{value_id(address)}", "type": "ipv4", "value": address, "reference": reference} for address in addresses]

    markers = group(0, 1001, "a feed") + group(1, 1002, "b feed")
    markers.insert(1, {"id": f"ipv4/{value_id('192.0.2.1')}", "type": "ipv4", "value": "192.0.2.1", "severity": "high"})
    markers.append({"id": "custom-id", "type": "ipv4", "value": "192.0.2.2"})
    markers.append({"id": f"ipv4/{value_id('192.0.2.3')}", "type": "ipv4", "value": "192.0.2.3", "name": "has a name"})
    _, document = write(tmp_path, markers)
    assert [(entry["path"], entry["count"], entry["reference"]) for entry in document["value_files"]] == [("soc.ipv4.txt", 1001, "a feed"), ("soc.ipv4.2.txt", 1002, "b feed")]
    assert [marker["id"] for marker in document["markers"]] == [f"soc/ipv4/{value_id('192.0.2.1')}", "soc/custom-id", f"soc/ipv4/{value_id('192.0.2.3')}"]
    assert document["markers"][0] == {"id": f"soc/ipv4/{value_id('192.0.2.1')}", "type": "ipv4", "value": "192.0.2.1", "severity": "high"}


def test_same_input_same_bytes(tmp_path: Path) -> None:
    feed = tmp_path / "intel.dat"
    feed.write_text(ZEEK + "".join(f"198.18.{number // 256}.{number % 256}\tIntel::ADDR\tsoc\t-\tF\n" for number in range(1200)), encoding="utf-8")
    first, second = tmp_path / "one", tmp_path / "two"
    for directory in (first, second):
        directory.mkdir()
        write(directory, read_source("zeek", feed, ImportReport()))
    for name in ("soc.json", "soc.ipv4.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_write_refuses_a_bad_header_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bundle id must be"):
        write(tmp_path, [], bundle_id="no spaces")
    output, document = write(tmp_path, [])
    assert document["markers"] == [] and "value_files" not in document
    read_bundle(str(output))

    def failing():
        yield {"id": f"ipv4/{value_id('198.51.100.7')}", "type": "ipv4", "value": "198.51.100.7"}
        raise MarkerError("feed.txt:2: broken")

    with pytest.raises(MarkerError, match="broken"):
        write(tmp_path, failing(), name="other.json")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["soc.json"]


def test_a_hundred_thousand_line_list(tmp_path: Path) -> None:
    feed = tmp_path / "big.txt"
    feed.write_text("".join(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}\n" for number in range(100_000)), encoding="utf-8")
    report = ImportReport()
    output, document = write(tmp_path, read_source("list", feed, report), report)
    assert report.counts == {"ipv4": 100_000} and report.refused == []
    assert document["markers"] == [] and document["value_files"][0]["count"] == 100_000
    assert os.path.getsize(tmp_path / "soc.ipv4.txt") < 1_600_000


# STIX round trip.


def test_import_export_import_keeps_every_stix_expressible_marker(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text(f"198.51.100.7\n2001:db8::7\n203.0.113.0/24\n2001:db8:1::/48\nsub.example\nhttp://bad.example/Path?q=1\n{SHA256}\n{JA3}\n", encoding="utf-8")
    intel = tmp_path / "intel.dat"
    intel.write_text("#fields\tindicator\tindicator_type\tmeta.source\nexact.example\tIntel::DOMAIN\tsoc\n", encoding="utf-8")
    report = ImportReport()
    first, _ = write(tmp_path, itertools.chain(read_source("list", feed, report), read_source("zeek", intel, report)), report)
    original = list(read_bundle(str(first)).all_markers())
    exported, not_exported = export_stix(original, "soc")
    assert not_exported == [f"soc/ja3/{value_id(JA3)}: type ja3 cannot be expressed as a STIX pattern, not exported"]
    assert exported == export_stix(original, "soc")[0]
    assert {stix_object["spec_version"] for stix_object in exported["objects"]} == {"2.1"}
    assert [stix_object.get("x_probe_match") for stix_object in exported["objects"]][-1] == "exact"
    stix_file = tmp_path / "export.stix.json"
    stix_file.write_text(json.dumps(exported), encoding="utf-8")
    assert detect_format(stix_file) == "stix"
    report = ImportReport()
    second, _ = write(tmp_path, read_source("stix", stix_file, report), report, name="again.json", bundle_id="again")
    assert report.refused == [] and report.notes == []
    expected = triples(marker for marker in original if marker.type != "ja3")
    assert triples(read_bundle(str(second)).all_markers()) == expected
    assert ("domain", "exact.example", "exact") in expected and ("domain", "sub.example", "subdomains") in expected


def test_export_of_constraints(tmp_path: Path) -> None:
    markers = [
        {"id": "m-1", "type": "ipv4", "value": "192.0.2.8", "constraints": {"port": [443, 8443], "direction": "to_server"}},
        {"id": "m-2", "type": "domain", "value": "evil.example", "constraints": {"port": 53}},
        {"id": "m-3", "type": "ipv4", "value": "192.0.2.9", "constraints": {"protocol": "tcp"}},
        {"id": "m-4", "type": "domain", "value": "x.example", "constraints": {"direction": "to_server"}},
        {"id": "m-5", "type": "yara", "value": "rule r { condition: true }", "name": "r"},
    ]
    output = tmp_path / "b.json"
    output.write_text(json.dumps({"id": "b", "issuer": "soc", "version": 1, "created": CREATED, "markers": markers}), encoding="utf-8")
    exported, not_exported = export_stix(read_bundle(str(output)).markers, "b")
    assert [stix_object["pattern"] for stix_object in exported["objects"]] == [
        "[network-traffic:dst_ref.value = '192.0.2.8' AND network-traffic:dst_port IN (443, 8443)]",
        "[domain-name:value = 'evil.example' AND network-traffic:dst_port = 53]",
    ]
    assert not_exported == [
        "m-3: its protocol constraint cannot be expressed as a STIX pattern, not exported",
        "m-4: its direction constraint on a domain marker cannot be expressed as a STIX pattern, not exported",
        "m-5: type yara cannot be expressed as a STIX pattern, not exported",
    ]
    stix_file = tmp_path / "b.stix.json"
    stix_file.write_text(json.dumps(exported), encoding="utf-8")
    markers_back, _ = imported("stix", stix_file)
    assert [marker["constraints"] for marker in markers_back] == [{"direction": "to_server", "port": [443, 8443]}, {"port": 53}]
