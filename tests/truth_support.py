"""Helpers shared by the tests that compare the probe with the tshark ground truth of the shared
captures (`../shared/captures/truth/*.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from bundle_support import library_of
from probe.config import Config
from probe.decode import dns
from probe.decode.packet import address_text
from probe.errors import CaptureError
from probe.capture.reader import read_capture
from probe.match.markers import Marker
from probe.pipeline import Pipeline
from probe.record.events import EventWriter

SHARED_CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"


def shared_captures() -> list[Path]:
    if not SHARED_CAPTURES.is_dir():
        pytest.skip(f"shared captures not found at {SHARED_CAPTURES} (they sit beside the project root)")
    return sorted(path for path in SHARED_CAPTURES.iterdir() if path.suffix in (".pcap", ".pcapng"))


def truth_of(capture: Path) -> dict:
    return json.loads((capture.parent / "truth" / f"{capture.name}.json").read_text())


DECOYS = [Marker("decoy-certificate", "x509_sha256", "0" * 64, "decoy", 1), Marker("decoy-ja3", "ja3", "0" * 32, "decoy", 1)]
"""Markers nothing hits whose types have every handshake read, both sides, fingerprints too."""


class RecordingPipeline(Pipeline):
    """The real pipeline, also noting every name it tried to match and every flow's addresses, so a
    test can compare what was decoded with tshark's dissection."""

    def __init__(self, markers: list[Marker] | None = None, writer: EventWriter | None = None) -> None:
        super().__init__(Config(), library_of(markers or DECOYS), writer or EventWriter(_Discard()))
        self.name_filter = _EveryName()
        self.names: dict[str, set] = {place: set() for place in ("dns.query", "dns.answer", "tls.sni", "quic.sni", "http.host", "http.url", "tls.ja3", "tls.ja4", "tls.cert_sha256")}
        self.addresses: set[str] = set()
        self._reads_answers = self._reads_initials = True  # read everything, as with markers of every kind

    def _match_names(self, flow, names, matched_on, *rest) -> None:
        names = list(names)
        self.names[matched_on].update(names)
        super()._match_names(flow, names, matched_on, *rest)

    def _record_observed(self, flow, *rest) -> None:
        for matched_on, value, _ in self._observed:
            if matched_on in self.names and matched_on != "payload":
                self.names[matched_on].add(value)
        super()._record_observed(flow, *rest)

    def _end_flow(self, flow) -> None:
        self._note_addresses(flow)
        super()._end_flow(flow)

    def finish(self) -> None:
        for flow in self.flows.flows.values():  # flows still open end without `_end_flow` unless they hit
            self._note_addresses(flow)
        super().finish()

    def _note_addresses(self, flow) -> None:
        self.addresses.add(address_text(flow.key[0:16]))
        self.addresses.add(address_text(flow.key[18:34]))


class _EveryName:
    """Lets every DNS question and server name through to the exact decoders, so that all names
    are seen, not only those that could hit a marker."""

    def may_hit(self, names: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.ones(len(lengths), dtype=bool)


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def replay_capture(pipeline: Pipeline, capture: Path) -> CaptureError | None:
    """Replay a capture; a RecordingPipeline also notes every DNS question name decoded (the
    pipeline matches those without going through `_match_names`)."""
    decode_names = dns.dns_query_names

    def recording(message: bytes) -> list[str]:
        names = decode_names(message)
        if isinstance(pipeline, RecordingPipeline):
            pipeline.names["dns.query"].update(names)
        return names

    error = None
    with mock.patch.object(dns, "dns_query_names", recording):
        try:
            for batch in read_capture(str(capture)):
                pipeline.process_batch(batch)
        except CaptureError as failure:
            error = failure
        pipeline.finish()
    return error


def truth_host(value: str) -> str:
    value = value.lower().rstrip(".")
    if value.startswith("["):
        return value[1 : value.index("]")]
    if value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.rstrip(".")


def truth_name(value: str) -> str:
    return value.lower().rstrip(".")


def planted_bundle(truth: dict, path: Path) -> tuple[set[str], set[str]]:
    """A bundle planting every name and inner address of a capture's truth, plus decoys that must
    never hit; the planted values and the decoys."""
    markers, planted = [], set()
    for key in ("dns_qnames", "tls_sni", "quic_sni", "http_hosts"):
        for value in truth[key]:
            host = truth_host(value) if key == "http_hosts" else truth_name(value)
            if host and not host.replace(".", "").isdigit() and ":" not in host and host not in planted:
                planted.add(host)
                markers.append({"id": f"name-{len(markers)}", "type": "domain", "value": host, "match": "exact"})
    for fingerprint in sorted(set(truth["ja3"]) | set(truth["quic_ja3"])):
        planted.add(fingerprint)
        markers.append({"id": f"ja3-{len(markers)}", "type": "ja3", "value": fingerprint})
    for address in truth["inner_ipv4"] + truth["inner_ipv6"]:
        planted.add(address)
        markers.append({"id": f"address-{len(markers)}", "type": "ipv6" if ":" in address else "ipv4", "value": address})
    decoys = {"decoy.example.invalid", "198.18.7.7", "2001:db8:dead::1", "0" * 32, "0" * 64}
    markers += [
        {"id": "decoy-ja3", "type": "ja3", "value": "0" * 32},
        {"id": "decoy-certificate", "type": "x509_sha256", "value": "0" * 64},
        {"id": "decoy-name", "type": "domain", "value": "decoy.example.invalid"},
        {"id": "decoy-v4", "type": "ipv4", "value": "198.18.7.7"},
        {"id": "decoy-v6", "type": "ipv6", "value": "2001:db8:dead::1"},
        {"id": "decoy-prefix", "type": "cidr", "value": "198.18.0.0/24"},
    ]
    path.write_text(json.dumps({"id": "planted", "issuer": "test", "version": 1, "created": "2026-11-01T00:00:00Z", "markers": markers}))
    return planted, decoys
