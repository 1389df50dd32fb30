"""The probe against Wireshark: for every shared capture, what the probe decodes (innermost
addresses, DNS query names, TLS SNI, HTTP hosts) equals tshark's dissection, and markers planted
from that truth each give their event while decoys give none."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import probe.decode.batch
import probe.pipeline
from probe.config import Config
from probe.decode.batch import FastFrames
from probe.replay import replay
from truth_support import RecordingPipeline, planted_bundle, truth_host, truth_name, replay_capture, shared_captures, truth_of


ALLOWED_DIFFERENCES = {
    # SSDP M-SEARCH requests (HTTP over UDP/1900) name a multicast IP literal as Host: tshark
    # dissects them, the probe reads HTTP over TCP only, and an IP-literal host is an address, which
    # address markers already cover.
    ("mixed-iphone-mdns-many-answers.pcap", "http.host"): {"239.255.255.250"},
    ("mixed-large-1kxun.pcap", "http.host"): {"239.255.255.250", "ff02::c"},
}


def _capture_ids() -> list[str]:
    try:
        return [path.name for path in shared_captures()]
    except pytest.skip.Exception:
        return ["shared-captures-missing"]


def _capture(name: str) -> Path:
    captures = {path.name: path for path in shared_captures()}
    return captures[name]


@pytest.mark.parametrize("name", _capture_ids())
def test_decoded_metadata_equals_tshark(name: str) -> None:
    capture = _capture(name)
    truth = truth_of(capture)
    pipeline = RecordingPipeline()
    error = replay_capture(pipeline, capture)
    assert (error is not None) == bool(truth.get("tshark_rc")), f"read error {error} vs tshark rc {truth.get('tshark_rc')}"
    assert pipeline.addresses == set(truth["inner_ipv4"]) | set(truth["inner_ipv6"])
    truth["ja3"] = truth["ja3"] + truth["quic_ja3"]  # the probe computes JA3 for QUIC's ClientHellos too
    for key, where, normalise in (("dns_qnames", "dns.query", truth_name), ("tls_sni", "tls.sni", truth_name), ("quic_sni", "quic.sni", truth_name), ("http_hosts", "http.host", truth_host), ("ja3", "tls.ja3", str)):
        expected = {normalise(value) for value in truth[key]}
        missing = expected - pipeline.names[where] - ALLOWED_DIFFERENCES.get((name, where), set())
        assert not missing, f"{where}: tshark saw {sorted(missing)}, the probe did not"
        assert pipeline.names[where] <= expected, f"{where}: the probe saw {sorted(pipeline.names[where] - expected)}, tshark did not"


def _tshark_certificate_hashes(capture: Path) -> set[str]:
    """SHA-256 of every certificate tshark dissects in a TLS Certificate message (TLS ≤ 1.2: in
    TLS 1.3 they are encrypted, and tshark has no keys either)."""
    result = subprocess.run(["tshark", "-n", "-r", str(capture), "-Y", "tls.handshake.certificate", "-T", "fields", "-e", "tls.handshake.certificate"], capture_output=True, text=True)
    hashes = set()
    for line in result.stdout.split():
        for certificate in line.split(","):
            hashes.add(hashlib.sha256(bytes.fromhex(certificate.replace(":", ""))).hexdigest())
    return hashes


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (.ci/setup installs it)")
@pytest.mark.parametrize("name", _capture_ids())
def test_certificate_hashes_equal_tsharks_certificate_bytes(name: str) -> None:
    capture = _capture(name)
    pipeline = RecordingPipeline()
    replay_capture(pipeline, capture)
    assert pipeline.names["tls.cert_sha256"] == _tshark_certificate_hashes(capture)


@pytest.mark.parametrize("name", _capture_ids())
def test_planted_markers_give_events_and_decoys_none(name: str, tmp_path: Path) -> None:
    capture = _capture(name)
    planted, decoys = planted_bundle(truth_of(capture), tmp_path / "planted.json")
    events = io.StringIO()
    replay(Config(), [str(capture)], [str(tmp_path / "planted.json")], events)
    values = {json.loads(line)["marker"]["value"] for line in events.getvalue().splitlines()}
    assert planted <= values, f"no event for {sorted(planted - values)}"
    assert not values & (decoys | {"198.18.0.0/24"})


def _events(captures: list[Path], bundle: Path) -> list[dict]:
    events = io.StringIO()
    replay(Config(), [str(capture) for capture in captures], [str(bundle)], events)
    return sorted((json.loads(line) for line in events.getvalue().splitlines()), key=lambda event: event["event_id"])


def _every_marker_planted(bundle: Path) -> list[Path]:
    """The readable shared captures, and a bundle planting every name and address of their truth."""
    captures = [capture for capture in shared_captures() if not truth_of(capture).get("tshark_rc")]
    truth: dict[str, list[str]] = {"dns_qnames": [], "tls_sni": [], "quic_sni": [], "ja3": [], "quic_ja3": [], "http_hosts": [], "inner_ipv4": [], "inner_ipv6": []}
    for capture in captures:
        for key in truth:
            truth[key] += truth_of(capture)[key]
    planted_bundle(truth, bundle)
    return captures


def test_batch_classifier_and_per_frame_decoder_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectorised route and the per-frame route are two decoders of the same frames: sending
    every frame through the per-frame decoder must give the very same events."""
    captures = _every_marker_planted(tmp_path / "planted.json")
    batched = _events(captures, tmp_path / "planted.json")
    monkeypatch.setattr(probe.pipeline, "classify_batch", lambda batch: FastFrames(np.arange(len(batch))))
    per_frame = _events(captures, tmp_path / "planted.json")
    assert len(batched) > 100
    assert batched == per_frame


def test_grouping_stays_exact_when_flow_hashes_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows are grouped by a 64-bit hash of their key; were every key to collide, the grouping
    falls back to sorting the keys themselves and the events must not change."""
    captures = _every_marker_planted(tmp_path / "planted.json")
    normal = _events(captures, tmp_path / "planted.json")
    monkeypatch.setattr(probe.decode.batch, "_lane_hashes", lambda lanes: np.zeros(len(lanes), dtype=np.uint64))
    assert _events(captures, tmp_path / "planted.json") == normal
