"""Marker bundles: signatures and the trust store, versions that never go back, companion value
files, validity, constraints, confidentiality of what events say, and the `probe markers`
commands with their exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from bundle_support import bundle_document, write_bundle
from probe.bundles.values import value_id
from probe.bundles.library import LoadPolicy, MarkerLibrary
from probe.bundles.signing import TrustStore, generate_key_pair, sign_bundle
from probe.bundles.versions import VersionState
from probe.config import Config, parse_config
from probe.errors import MarkerError
from probe.match.markers import Marker
from probe.record.events import marker_fields
from probe.replay import replay
from test_cli import EPOCH, capture_hitting, events_of, marker_ids, run_probe, udp_packets, write_pcap

NOW = 1_790_000_000_000_000_000  # 2026-09: the wall clock of these tests


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A trust store holding the keys of issuers `anssi` and `soc`; private keys beside it."""
    store = tmp_path / "trust"
    store.mkdir()
    for issuer in ("anssi", "soc"):
        generate_key_pair(issuer, tmp_path)
        (tmp_path / f"{issuer}.pub").rename(store / f"{issuer}.pub")
    return store


def signed(path: Path, markers: list[dict], key: Path, **fields: object) -> str:
    write_bundle(path, markers, **{"issuer": "anssi", **fields})
    sign_bundle(str(path), str(key))
    return str(path)


def strict_library(store: Path, state: Path | None = None) -> MarkerLibrary:
    return MarkerLibrary(LoadPolicy(True, TrustStore(str(store)), VersionState(str(state) if state else None), clock=lambda: NOW))


ADDRESS = [{"id": "c2", "type": "ipv4", "value": "203.0.113.1"}]


# --- signatures ----------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    private, public = generate_key_pair("anssi", tmp_path)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(MarkerError, match="already exists"):
        generate_key_pair("anssi", tmp_path)


def test_a_signed_bundle_of_a_trusted_issuer_is_accepted(tmp_path: Path, keys: Path) -> None:
    library = strict_library(keys)
    report = library.load([signed(tmp_path / "b.json", ADDRESS, tmp_path / "anssi.key")])
    assert not report.refused and [bundle.id for bundle in report.accepted] == ["test-bundle"]
    assert library.active.active_count == 1
    assert stat.S_IMODE(os.stat(tmp_path / "b.json.sig").st_mode) == 0o600


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda path, keys: (path.parent / f"{path.name}.sig").unlink(), "unsigned"),
        (lambda path, keys: path.write_bytes(path.read_bytes().replace(b"203.0.113.1", b"203.0.113.2")), "bad signature"),
        (lambda path, keys: sign_bundle(str(path), str(keys.parent / "soc.key")), "a key of issuer 'soc', but the bundle names issuer 'anssi'"),
        (lambda path, keys: (path.parent / f"{path.name}.sig").write_text("not base64!"), "not a base64 Ed25519 signature"),
    ],
    ids=["unsigned", "tampered", "signed-by-another-issuer", "garbage-signature"],
)
def test_a_bad_signature_is_refused_and_the_active_bundle_stays(tmp_path: Path, keys: Path, spoil, reason: str) -> None:
    library = strict_library(keys)
    first = signed(tmp_path / "v1.json", ADDRESS, tmp_path / "anssi.key", version=1)
    assert not library.load([first]).refused
    active, generation = library.active, library.generation
    second = tmp_path / "v2.json"
    signed(second, [{"id": "other", "type": "ipv4", "value": "203.0.113.1"}], tmp_path / "anssi.key", version=2)
    spoil(second, keys)
    report = library.load([str(second)])
    assert len(report.refused) == 1 and reason in report.refused[0] and str(second) in report.refused[0]
    assert "\n" not in report.refused[0]
    assert library.active is active and library.generation == generation


def test_a_key_signs_only_for_its_own_issuer(tmp_path: Path, keys: Path) -> None:
    """The SOC's key cannot publish, nor block by version, the authority's bundles."""
    path = tmp_path / "b.json"
    signed(path, ADDRESS, tmp_path / "soc.key")  # issuer anssi, signed with soc's key
    report = strict_library(keys).load([str(path)])
    assert "signed by soc.pub, a key of issuer 'soc', but the bundle names issuer 'anssi'" in report.refused[0]
    signed(path, ADDRESS, tmp_path / "soc.key", issuer="cert-fr")
    assert "but the bundle names issuer 'cert-fr'" in strict_library(keys).load([str(path)]).refused[0]
    signed(path, ADDRESS, tmp_path / "soc.key", issuer="cert.fr")
    assert "'issuer' must be 1-64 letters" in strict_library(keys).load([str(path)]).refused[0], "an issuer never has a dot, so no key file reads as another issuer's"
    with pytest.raises(MarkerError, match="not an issuer name"):
        generate_key_pair("cert.fr", tmp_path)


def test_an_expired_bundle_is_refused(tmp_path: Path, keys: Path) -> None:
    path = signed(tmp_path / "b.json", ADDRESS, tmp_path / "anssi.key", valid_until="2026-01-01T00:00:00Z")
    assert "expired" in strict_library(keys).load([path]).refused[0]


def test_feeds_in_other_formats_are_refused_when_signatures_are_required(tmp_path: Path, keys: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("203.0.113.1\n")
    refusal = strict_library(keys).load([str(feed)]).refused[0]
    assert "not a bundle, so unsigned" in refusal and "probe markers import" in refusal


def test_a_trust_store_without_keys_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MarkerError, match="holds no"):
        TrustStore(str(tmp_path))


# --- versions ------------------------------------------------------------------------------------


def test_no_downgrade_even_after_a_restart(tmp_path: Path, keys: Path) -> None:
    state = tmp_path / "state" / "versions.json"
    state.parent.mkdir()
    key = tmp_path / "anssi.key"
    version_3 = signed(tmp_path / "v3.json", ADDRESS, key, version=3)
    version_2 = signed(tmp_path / "v2.json", ADDRESS + [{"id": "old", "type": "domain", "value": "old.example"}], key, version=2)
    assert not strict_library(keys, state).load([version_3]).refused
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    restarted = strict_library(keys, state)
    refusal = restarted.load([version_2]).refused[0]
    assert "older than version 3" in refusal and "no downgrade" in refusal
    assert not restarted.load([version_3]).refused, "the very bundle accepted may be loaded again"
    replayed = signed(tmp_path / "v3-other.json", ADDRESS + [{"id": "x", "type": "domain", "value": "x.example"}], key, version=3)
    assert "already accepted with other content" in strict_library(keys, state).load([replayed]).refused[0]


def test_the_newest_of_several_versions_given_at_once_wins(tmp_path: Path) -> None:
    old = write_bundle(tmp_path / "old.json", ADDRESS, version=1)
    new = write_bundle(tmp_path / "new.json", [{"id": "new", "type": "ipv4", "value": "203.0.113.9"}], version=2)
    library = MarkerLibrary()
    report = library.load([str(new), str(old)])
    assert len(report.refused) == 1 and "superseded by version 2" in report.refused[0]
    assert [bundle.version for bundle in library.bundles.values()] == [2]


def test_a_corrupt_state_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    state = tmp_path / "versions.json"
    state.write_text("{not json")
    with pytest.raises(MarkerError, match="corrupt"):
        VersionState(str(state))


# --- companion value files -----------------------------------------------------------------------


def companion_bundle(tmp_path: Path, values: list[str], **entry: object) -> Path:
    data = "".join(f"{value}\n" for value in values).encode()
    (tmp_path / "big.ipv4.txt").write_bytes(data)
    value_file = {"path": "big.ipv4.txt", "type": "ipv4", "id_prefix": "feed/ipv4/", "sha256": hashlib.sha256(data).hexdigest(), "count": len(values), **entry}
    return write_bundle(tmp_path / "big.json", [], value_files=[value_file])


def test_values_of_a_companion_file_match_with_their_own_ids(tmp_path: Path) -> None:
    bundle = companion_bundle(tmp_path, [f"198.18.{n // 256}.{n % 256}" for n in range(3000)] + ["203.0.113.1"], severity="high")
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(bundle)], events)
    (event,) = events_of(events.getvalue())
    assert event["marker"] == {"id": f"feed/ipv4/{value_id('203.0.113.1')}", "type": "ipv4", "value": "203.0.113.1", "severity": "high", "bundle": "test-bundle", "bundle_version": 1}


def test_a_changed_companion_file_is_refused(tmp_path: Path, keys: Path) -> None:
    bundle = companion_bundle(tmp_path, ["203.0.113.1", "203.0.113.2"])
    sign_bundle(str(bundle), str(tmp_path / "anssi.key"))
    bundle.write_text(json.dumps({**json.loads(bundle.read_text()), "issuer": "anssi"}))
    sign_bundle(str(bundle), str(tmp_path / "anssi.key"))
    (tmp_path / "big.ipv4.txt").write_text("203.0.113.1\n198.51.100.66\n")
    library = strict_library(keys)
    refusal = library.load([str(bundle)]).refused[0]
    assert "big.ipv4.txt" in refusal and "SHA-256" in refusal
    assert not library.bundles


# --- matching rules ------------------------------------------------------------------------------


def test_constraints_restrict_which_flows_a_marker_hits(tmp_path: Path) -> None:
    packets = udp_packets("192.0.2.10", "203.0.113.1", dport=53, sport=50001) + udp_packets("192.0.2.10", "203.0.113.1", dport=443, sport=50002)
    capture = write_pcap(tmp_path / "c.pcap", packets)
    markers = [
        {"id": "dns-only", "type": "ipv4", "value": "203.0.113.1", "constraints": {"protocol": "udp", "port": 53}},
        {"id": "tcp-only", "type": "ipv4", "value": "203.0.113.1", "constraints": {"protocol": "tcp"}},
        {"id": "as-client", "type": "ipv4", "value": "203.0.113.1", "constraints": {"direction": "to_client"}},
        {"id": "as-server", "type": "ipv4", "value": "203.0.113.1", "constraints": {"direction": "to_server", "port": [443, 8443]}},
    ]
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(write_bundle(tmp_path / "b.json", markers))], events)
    found = {(event["marker"]["id"], event["dest_port"], event["direction"]) for event in events_of(events.getvalue())}
    assert found == {("dns-only", 53, "to_server"), ("as-server", 443, "to_server")}


def test_http_host_and_tls_sni_markers_match_only_where_they_say(tmp_path: Path) -> None:
    from test_pipeline import session

    from test_cli import client_hello

    packets = session(40001, 80, [b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n"]) + session(40002, 443, [client_hello("shop.example")])
    markers = [{"id": "host", "type": "http_host", "value": "shop.example"}, {"id": "sni", "type": "tls_sni", "value": "SHOP.example."}]
    capture = write_pcap(tmp_path / "c.pcap", packets)
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(write_bundle(tmp_path / "b.json", markers))], events)
    found = {(event["marker"]["id"], event["matched_on"]) for event in events_of(events.getvalue())}
    assert found == {("host", "http.host"), ("sni", "tls.sni")}


def test_a_marker_expires_during_a_capture_without_a_reload(tmp_path: Path) -> None:
    early = udp_packets("192.0.2.10", "203.0.113.1", sport=50001, start=EPOCH)
    late = udp_packets("192.0.2.10", "203.0.113.1", sport=50002, start=EPOCH + 3600)
    capture = write_pcap(tmp_path / "c.pcap", early + late)
    markers = [{"id": "c2", "type": "ipv4", "value": "203.0.113.1", "valid_until": "2023-11-14T22:30:00Z"}]
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(write_bundle(tmp_path / "b.json", markers))], events)
    assert [event["src_port"] for event in events_of(events.getvalue())] == [50001]


def test_replay_warns_when_a_bundles_window_excludes_the_capture(tmp_path: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    bundle = write_bundle(tmp_path / "fresh.json", ADDRESS, valid_from="2026-11-01T00:00:00Z")
    result = run_probe("replay", capture, "--markers", bundle)
    assert result.returncode == 0 and result.stdout == ""
    assert any("excludes the whole capture" in line and str(bundle) in line for line in result.stderr.splitlines() if line.startswith("probe: warning:"))


# --- what events say of markers ------------------------------------------------------------------


def test_events_never_carry_patterns_or_rules() -> None:
    rule = Marker("r1", "yara", "rule secret { strings: $a = \"PAYLOAD\" condition: $a }", "b", 1, name="secret")
    pattern = Marker("p1", "bytes", "5041594c4f4144", "b", 1, name="payload-header", encoding="hex")
    for marker in (rule, pattern):
        fields = marker_fields(marker, "red")
        assert fields["name"] == marker.name and "value" not in fields
        assert marker.value not in json.dumps(fields)


def test_markers_above_an_outputs_tlp_are_named_by_id_only(tmp_path: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    markers = [{"id": "red-one", "type": "ipv4", "value": "203.0.113.1", "tlp": "red"}, {"id": "amber-one", "type": "cidr", "value": "203.0.113.0/24"}]
    bundle = write_bundle(tmp_path / "b.json", markers, tlp="amber")
    events = io.StringIO()
    replay(parse_config({"events": {"max_tlp": "amber"}}), [str(capture)], [str(bundle)], events)
    by_id = {event["marker"]["id"]: event["marker"] for event in events_of(events.getvalue())}
    assert by_id["red-one"] == {"id": "red-one", "tlp": "red", "bundle": "test-bundle", "bundle_version": 1}
    assert by_id["amber-one"]["value"] == "203.0.113.0/24" and by_id["amber-one"]["tlp"] == "amber"
    assert "203.0.113.1" not in json.dumps(by_id["red-one"])


# --- replay with signatures required ---------------------------------------------------------------


def test_replay_with_signatures_required_takes_only_signed_bundles(tmp_path: Path, keys: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    bundle = tmp_path / "b.json"
    write_bundle(bundle, ADDRESS, issuer="anssi")
    config = tmp_path / "probe.toml"
    config.write_text(f'[markers]\nrequire_signature = true\ntrust_store = "{keys}"\nstate_file = "{tmp_path / "state.json"}"\n')
    result = run_probe("replay", capture, "--markers", bundle, "--config", config)
    assert result.returncode == 2 and result.stderr.strip() == f"probe: error: {bundle}: refused: unsigned (no b.json.sig beside it)"
    sign_bundle(str(bundle), str(tmp_path / "anssi.key"))
    result = run_probe("replay", capture, "--markers", bundle, "--config", config)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"c2"}


# --- the commands ---------------------------------------------------------------------------------


def test_verify_exit_codes(tmp_path: Path, keys: Path) -> None:
    good = signed(tmp_path / "good.json", ADDRESS, tmp_path / "anssi.key")
    result = run_probe("markers", "verify", good, "--trust-store", keys)
    assert result.returncode == 0 and "valid: anssi/test-bundle version 1" in result.stdout
    bad = tmp_path / "bad.json"
    write_bundle(bad, ADDRESS, issuer="anssi")
    result = run_probe("markers", "verify", bad, "--trust-store", keys)
    assert result.returncode == 1 and result.stderr.strip() == f"probe: {bad}: refused: unsigned (no bad.json.sig beside it)"
    result = run_probe("markers", "verify", tmp_path / "missing.json", "--trust-store", keys)
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = run_probe("markers", "verify", good)
    assert result.returncode == 2 and "no trust store" in result.stderr


def test_keygen_sign_verify_from_the_command_line(tmp_path: Path) -> None:
    assert run_probe("markers", "keygen", "cert-fr", "--dir", tmp_path).returncode == 0
    bundle = write_bundle(tmp_path / "b.json", ADDRESS, issuer="CERT-FR")
    assert run_probe("markers", "sign", bundle, "--key", tmp_path / "cert-fr.key").returncode == 0
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "cert-fr.pub").rename(store / "cert-fr.2027.pub")
    assert run_probe("markers", "verify", bundle, "--trust-store", store).returncode == 0


def test_validate_lists_every_problem_with_its_marker(tmp_path: Path) -> None:
    bundle = tmp_path / "bad.json"
    markers = [
        {"id": "a", "type": "ipv4", "value": "300.1.1.1"},
        {"id": "a", "type": "ipv4", "value": "192.0.2.1", "severity": "urgent"},
        {"id": "g", "type": "domain", "value": "ok.example", "valid_from": "2027-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
        {"id": "h", "type": "domain", "value": "ok.example", "reference": 7},
        {"id": "b", "type": "bogus", "value": "x"},
        {"id": "c", "type": "bytes", "value": "(", "encoding": "regex"},
        {"id": "d", "type": "yara", "value": "rule x { condition: }"},
        {"id": "e", "type": "cidr", "value": "10.0.0.0/8"},
        {"id": "f", "type": "cidr", "value": "10.1.0.0/16"},
    ]
    bundle.write_text(json.dumps(bundle_document(markers)))
    result = run_probe("markers", "validate", bundle)
    assert result.returncode == 1
    invalid = [line for line in result.stderr.splitlines() if line.startswith("probe: invalid:")]
    expected = ["marker 'a': '300.1.1.1' is not an IP address", "marker 'a': id used twice", "marker 'b': unknown type 'bogus'", "marker 'c': invalid regular expression", "marker 'd': YARA rule: does not compile", "marker 'g': valid_from is after valid_until", "marker 'h': 'reference' must be a string"]
    for needle in expected:
        assert sum(needle in line for line in invalid) == 1, (needle, result.stderr)
    assert len(invalid) == len(expected), result.stderr
    assert any("info:" in line and "10.1.0.0/16 (f) lies inside 10.0.0.0/8 (e)" in line for line in result.stderr.splitlines())
    good = write_bundle(tmp_path / "good.json", ADDRESS)
    assert run_probe("markers", "validate", good).returncode == 0
    assert run_probe("markers", "validate", tmp_path / "missing.json").returncode == 2


def test_validate_checks_companion_files_line_by_line(tmp_path: Path) -> None:
    bundle = companion_bundle(tmp_path, ["203.0.113.1", "not-an-address", "203.0.113.3"])
    result = run_probe("markers", "validate", bundle)
    assert result.returncode == 1
    assert "big.ipv4.txt:2: 'not-an-address' is not an IP address" in result.stderr


def test_stats_lists_types_with_their_limits_and_index_memory(tmp_path: Path) -> None:
    markers = ADDRESS + [
        {"id": "cert", "type": "x509_sha256", "value": "AB" * 32},
        {"id": "u", "type": "url", "value": "evil.example/x"},
        {"id": "b", "type": "bytes", "value": "evil", "name": "evil bytes"},
        {"id": "old", "type": "domain", "value": "old.example", "valid_until": "2020-01-01T00:00:00Z"},
    ]
    result = run_probe("markers", "stats", write_bundle(tmp_path / "b.json", markers))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split() == ["ipv4", "1"] for line in lines)
    assert any(line.startswith("x509_sha256") and "TLS 1.3 certificates are encrypted" in line for line in lines)
    assert any(line.startswith("bytes") and "Hyperscan streaming mode" in line for line in lines)
    assert any(line.split() == ["url", "1"] for line in lines)
    assert "warning" not in result.stderr
    assert "validity: 4 valid now, 0 not yet valid, 1 expired" in lines
    assert any(line.startswith("index: ") and " MB" in line for line in lines)


def test_diff_lists_added_removed_and_changed_markers(tmp_path: Path) -> None:
    old = write_bundle(tmp_path / "old.json", ADDRESS + [{"id": "gone", "type": "domain", "value": "gone.example"}])
    new = write_bundle(tmp_path / "new.json", [{"id": "c2", "type": "ipv4", "value": "203.0.113.2"}, {"id": "fresh", "type": "domain", "value": "fresh.example"}], version=2)
    result = run_probe("markers", "diff", old, new)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["~ c2 value: '203.0.113.1' -> '203.0.113.2'", "+ fresh domain fresh.example", "- gone domain gone.example"]
    assert "added 1, removed 1, changed 1" in result.stderr


def test_import_exit_codes_and_report(tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("203.0.113.1\nevil.example\n198.51.100.0/24\n")
    output = tmp_path / "out" / "soc.json"
    output.parent.mkdir()
    result = run_probe("markers", "import", "--from", "list", feed, "-o", output, "--issuer", "soc", "--version", "4")
    assert result.returncode == 0, result.stderr
    assert "imported 3 markers: ipv4 1, cidr 1, domain 1" in result.stderr and "domains: name and subdomains" in result.stderr
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
    assert run_probe("markers", "validate", output).returncode == 0
    feed.write_text("203.0.113.1\n!!nonsense!!\n")
    result = run_probe("markers", "import", "--from", "list", feed, "-o", output, "--issuer", "soc")
    assert result.returncode == 1 and f"{feed}:2:" in result.stderr and "refused 1" in result.stderr
    result = run_probe("markers", "import", "--from", "list", tmp_path / "missing.txt", "-o", output, "--issuer", "soc")
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = run_probe("markers", "import", "--from", "suricata-dataset", feed, "-o", output, "--issuer", "soc")
    assert result.returncode == 2 and "--type" in result.stderr


def test_import_sign_then_load_with_signatures_required(tmp_path: Path, keys: Path) -> None:
    misp = tmp_path / "event.json"
    misp.write_text(json.dumps({"Event": {"info": "campaign", "uuid": "e1", "threat_level_id": "1", "Attribute": [
        {"uuid": "a1", "type": "ip-dst", "category": "Network activity", "value": "203.0.113.1", "to_ids": True},
        {"uuid": "a2", "type": "snort", "category": "Network activity", "value": "alert tcp any any -> any any (msg:\"x\";)", "to_ids": True},
    ]}}))
    bundle = tmp_path / "anssi.json"
    result = run_probe("markers", "import", "--from", "misp", misp, "-o", bundle, "--issuer", "anssi", "--id", "campaign")
    assert result.returncode == 1 and "snort" in result.stderr and "not supported" in result.stderr
    assert run_probe("markers", "sign", bundle, "--key", tmp_path / "anssi.key").returncode == 0
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    config = tmp_path / "probe.toml"
    config.write_text(f'[markers]\nrequire_signature = true\ntrust_store = "{keys}"\n')
    result = run_probe("replay", capture, "--markers", bundle, "--config", config)
    assert result.returncode == 0, result.stderr
    (event,) = events_of(result.stdout)
    assert event["marker"]["bundle"] == "campaign" and event["marker"]["value"] == "203.0.113.1" and event["marker"]["severity"] == "high"


def test_replay_reads_feeds_directly_and_warns_of_what_it_cannot_use(tmp_path: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    stix = tmp_path / "feed.stix.json"
    stix.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": [
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--a", "pattern_type": "stix", "pattern": "[ipv4-addr:value = '203.0.113.1']", "valid_from": "2020-01-01T00:00:00Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--b", "pattern_type": "stix", "pattern": "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", "valid_from": "2020-01-01T00:00:00Z"},
    ]}))
    result = run_probe("replay", capture, "--markers", stix)
    assert result.returncode == 0, result.stderr
    assert [event["marker"]["id"] for event in events_of(result.stdout)] == ["indicator--a"]
    assert any(line.startswith("probe: warning: not loaded:") and "indicator--b" in line for line in result.stderr.splitlines())
    plain = tmp_path / "list.txt"
    plain.write_text("203.0.113.1\n")
    result = run_probe("replay", capture, "--markers", plain)
    assert result.returncode == 0 and marker_ids(events_of(result.stdout)) == {f"ipv4/{value_id('203.0.113.1')}"}
    plain.write_text("203.0.113.1\n203.0.113.999 oops\n")
    result = run_probe("replay", capture, "--markers", plain)
    assert result.returncode == 2 and f"{plain}:2:" in result.stderr


def test_export_to_stix_and_back(tmp_path: Path) -> None:
    markers = ADDRESS + [{"id": "d", "type": "domain", "value": "evil.example", "match": "exact", "tlp": "red"}, {"id": "j", "type": "ja3", "value": "e7d705a3286e19ea42f587b344ee6865"}]
    bundle = write_bundle(tmp_path / "b.json", markers, tlp="amber")
    exported = tmp_path / "b.stix.json"
    result = run_probe("markers", "export", "--to", "stix", bundle, "-o", exported)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(exported).st_mode) == 0o600
    assert "probe: not exported: j: type ja3" in result.stderr
    back = tmp_path / "back.json"
    assert run_probe("markers", "import", "--from", "stix", exported, "-o", back, "--issuer", "test").returncode == 0
    imported = json.loads(back.read_text())["markers"]
    assert sorted((m["type"], m["value"], m.get("match", "subdomains"), m["tlp"]) for m in imported) == [("domain", "evil.example", "exact", "red"), ("ipv4", "203.0.113.1", "subdomains", "amber")]


def test_revoked_stix_indicators_are_skipped_with_a_note(tmp_path: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    stix = tmp_path / "feed.stix.json"
    indicator = {"type": "indicator", "spec_version": "2.1", "pattern_type": "stix", "valid_from": "2020-01-01T00:00:00Z"}
    stix.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": [
        {**indicator, "id": "indicator--live", "pattern": "[ipv4-addr:value = '203.0.113.1']"},
        {**indicator, "id": "indicator--withdrawn", "pattern": "[ipv4-addr:value = '203.0.113.2']", "revoked": True},
    ]}))
    result = run_probe("replay", capture, "--markers", stix)
    assert result.returncode == 0, result.stderr
    assert "indicator--withdrawn: revoked by its producer, skipped" in result.stderr


def test_a_state_file_that_cannot_be_written_keeps_the_active_bundle(tmp_path: Path, keys: Path) -> None:
    state = tmp_path / "versions.json"
    library = strict_library(keys, state)
    assert not library.load([signed(tmp_path / "v1.json", ADDRESS, tmp_path / "anssi.key", version=1)]).refused
    active = library.active
    state.unlink()
    state.mkdir()  # the atomic replace now fails, as on a full or read-only disk
    report = library.load([signed(tmp_path / "v2.json", ADDRESS, tmp_path / "anssi.key", version=2)])
    assert len(report.refused) == 1 and "cannot write bundle version state" in report.refused[0]
    assert library.active is active and [bundle.version for bundle in library.bundles.values()] == [1]


def test_a_missing_companion_file_is_refused(tmp_path: Path) -> None:
    bundle = companion_bundle(tmp_path, ["203.0.113.1"])
    (tmp_path / "big.ipv4.txt").unlink()
    refusal = MarkerLibrary().load([str(bundle)]).refused[0]
    assert "big.ipv4.txt: cannot read companion value file" in refusal


def test_unsigned_bundles_never_raise_the_version_bar(tmp_path: Path, keys: Path) -> None:
    """A replay without signatures may share the live state file: what it loads is not recorded,
    so an unsigned bundle with a huge version cannot block the authority's next one."""
    state = tmp_path / "versions.json"
    lenient = MarkerLibrary(LoadPolicy(False, None, VersionState(str(state))))
    assert not lenient.load([str(write_bundle(tmp_path / "forged.json", ADDRESS, issuer="anssi", version=999_999_999))]).refused
    assert not state.exists()
    assert not strict_library(keys, state).load([signed(tmp_path / "real.json", ADDRESS, tmp_path / "anssi.key", version=2)]).refused


def test_replay_judges_a_signed_bundles_expiry_by_capture_time(tmp_path: Path, keys: Path) -> None:
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")  # captured in 2023
    bundle = signed(tmp_path / "b.json", ADDRESS, tmp_path / "anssi.key", valid_until="2024-01-01T00:00:00Z")
    config = tmp_path / "probe.toml"
    config.write_text(f'[markers]\nrequire_signature = true\ntrust_store = "{keys}"\n')
    result = run_probe("replay", capture, "--markers", bundle, "--config", config)
    assert result.returncode == 0, result.stderr
    assert marker_ids(events_of(result.stdout)) == {"c2"}


@pytest.mark.parametrize(
    "content, reason",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"id": "x", "issuer": "t", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": [' + "[" * 100_000 + "]" * 100_000 + "]}", "nested too deeply"),
        (json.dumps(bundle_document([{"id": "m", "type": "ipv4", "value": "203.0.113.1", "constraints": {"protocol": [["tcp"]]}}])), "constraints.protocol must be"),
        (json.dumps({"type": "bundle", "id": "bundle--1", "objects": [{"type": "indicator", "id": "indicator--deep", "pattern_type": "stix", "valid_from": "2020-01-01T00:00:00Z", "pattern": "(" * 3000 + "[ipv4-addr:value = '203.0.113.1']" + ")" * 3000}]}), "indicator--deep"),
    ],
    ids=["deep-json", "deep-bundle", "nested-list-constraint", "deep-stix-pattern"],
)
def test_hostile_structures_are_refused_with_a_reason_not_a_traceback(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(content)
    capture = capture_hitting(tmp_path, "c.pcap", "203.0.113.1")
    result = run_probe("replay", capture, "--markers", path)
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2) and reason in result.stderr, result.stderr


def test_a_changed_companion_of_an_active_bundle_keeps_what_is_active(tmp_path: Path) -> None:
    library = MarkerLibrary()
    bundle = companion_bundle(tmp_path, ["203.0.113.1"])
    assert not library.load([str(bundle)]).refused
    active = library.active
    (tmp_path / "big.ipv4.txt").write_text("198.51.100.1\n")
    other = write_bundle(tmp_path / "other.json", ADDRESS, id="other")
    refusal = library.load([str(other)]).refused
    assert len(refusal) == 1 and "active bundle" in refusal[0] and "big.ipv4.txt" in refusal[0]
    assert library.active is active


def test_a_reload_that_fails_unexpectedly_still_answers(tmp_path: Path) -> None:
    library = MarkerLibrary()
    reports = []
    library.load_in_background([str(tmp_path)], reports.append).join()  # a directory: not a marker file
    assert len(reports) == 1 and reports[0].refused


def test_invalid_content_exits_1_and_unreadable_files_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    result = run_probe("markers", "validate", broken)
    assert result.returncode == 1 and "probe: invalid:" in result.stderr and "Traceback" not in result.stderr
    result = run_probe("markers", "import", "--from", "stix", broken, "-o", tmp_path / "out.json", "--issuer", "soc")
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"$comment": "x", **bundle_document(ADDRESS)}).encode())
    result = run_probe("markers", "validate", with_bom)
    assert result.returncode == 1 and "unknown bundle key '$comment'" in result.stderr, result.stderr
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(bundle_document(ADDRESS)).encode())
    assert run_probe("markers", "validate", with_bom).returncode == 0
    assert run_probe("markers", "stats", with_bom).returncode == 0


def test_an_internationalised_name_matches_in_its_idna_form_too(tmp_path: Path) -> None:
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    packets = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.10", dst="192.0.2.53") / UDP(sport=50000 + number, dport=53) / DNS(rd=1, qd=DNSQR(qname=name)) for number, name in enumerate([b"www.xn--bcher-kva.example", "www.bücher.example".encode()])]
    for number, packet in enumerate(packets):
        packet.time = EPOCH + number
    capture = write_pcap(tmp_path / "c.pcap", packets)
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(write_bundle(tmp_path / "b.json", [{"id": "books", "type": "domain", "value": "Bücher.example"}]))], events)
    found = events_of(events.getvalue())
    assert [event["src_port"] for event in found] == [50000, 50001]
    assert {event["marker"]["value"] for event in found} == {"bücher.example"}


def test_wildcards_and_punctuation_are_not_names(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b.json", [{"id": "w", "type": "domain", "value": "*.evil.example"}, {"id": "p", "type": "domain", "value": "evil.example#frag"}])
    result = run_probe("markers", "validate", bundle)
    assert result.returncode == 1
    assert "give 'evil.example' with match 'subdomains'" in result.stderr and "'evil.example#frag' is not a domain name" in result.stderr


def test_validate_finds_ids_used_twice_across_companion_files(tmp_path: Path) -> None:
    bundle = companion_bundle(tmp_path, ["203.0.113.1", "203.0.113.2", "203.0.113.1"])
    result = run_probe("markers", "validate", bundle)
    assert result.returncode == 1 and "value '203.0.113.1'" in result.stderr and "used twice" in result.stderr


def test_feeds_and_imports_refuse_a_pipe(tmp_path: Path) -> None:
    result = run_probe("markers", "import", "--from", "list", "/dev/stdin", "-o", tmp_path / "out.json", "--issuer", "soc", stdin=b"203.0.113.1\n")
    assert result.returncode == 2 and "regular file" in result.stderr
