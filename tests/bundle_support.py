"""Helpers for tests that need marker bundles: valid bundle files, and libraries built in memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from probe.bundles.format import Bundle
from probe.bundles.library import MarkerLibrary
from probe.match.compiled import CompiledMarkers
from probe.match.markers import Marker

CREATED = "2026-11-01T00:00:00Z"


def bundle_document(markers: list[dict], **fields: object) -> dict:
    """A complete bundle document; `fields` override or add header keys."""
    return {"id": "test-bundle", "issuer": "test", "version": 1, "created": CREATED, **fields, "markers": markers}


def write_bundle(path: Path, markers: list[dict], **fields: object) -> Path:
    path.write_text(json.dumps(bundle_document(markers, **fields)), encoding="utf-8")
    return path


def bundle_of(markers: list[Marker], bundle_id: str = "test") -> Bundle:
    digest = hashlib.sha256(repr(markers).encode()).hexdigest()
    return Bundle(f"{bundle_id}.json", bundle_id, "test", 1, None, None, None, None, digest, list(markers), [])


def library_of(markers: list[Marker]) -> MarkerLibrary:
    """A library whose active set is exactly these markers (no file, no policy)."""
    library = MarkerLibrary()
    bundle = bundle_of(markers)
    library.bundles = {bundle.key: bundle}
    library.active = CompiledMarkers([bundle])
    return library
