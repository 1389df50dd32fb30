"""The probe against Wireshark: for every shared capture, what the probe decodes (innermost
addresses, DNS query names, TLS SNI, HTTP hosts) equals tshark's dissection, and markers planted
from that truth each give their event while decoys give none."""

from __future__ import annotations

import io
import json
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
    for key, where, normalise in (("dns_qnames", "dns.query", truth_name), ("tls_sni", "tls.sni", truth_name), ("http_hosts", "http.host", truth_host)):
        expected = {normalise(value) for value in truth[key]}
        missing = expected - pipeline.names[where] - ALLOWED_DIFFERENCES.get((name, where), set())
        assert not missing, f"{where}: tshark saw {sorted(missing)}, the probe did not"
        assert pipeline.names[where] <= expected, f"{where}: the probe saw {sorted(pipeline.names[where] - expected)}, tshark did not"


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
    truth: dict[str, list[str]] = {"dns_qnames": [], "tls_sni": [], "http_hosts": [], "inner_ipv4": [], "inner_ipv6": []}
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
