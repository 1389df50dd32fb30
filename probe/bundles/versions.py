"""The highest accepted version of each (issuer, bundle id), kept across restarts.

Without it, an attacker who can drop an old signed bundle where the probe reads bundles could take
it back to markers the authority has withdrawn. The file is small JSON, mode 0600, replaced
atomically; the bundle's digest is kept with its version, so that reloading the very bundle
accepted is allowed and another bundle with the same version is not.
"""

from __future__ import annotations

import json
from pathlib import Path

from probe.bundles.format import Bundle
from probe.bundles.signing import write_private
from probe.errors import MarkerError


class VersionState:
    def __init__(self, path: str | None) -> None:
        """`path` None keeps versions in memory only (replay without a state file)."""
        self.path = path
        self.accepted: dict[tuple[str, str], tuple[int, str]] = {}
        if path is not None and Path(path).exists():
            try:
                entries = json.loads(Path(path).read_text(encoding="utf-8"))["bundles"]
                for entry in entries:
                    self.accepted[(entry["issuer"], entry["id"])] = (int(entry["version"]), str(entry["sha256"]))
            except OSError as error:
                raise MarkerError(f"{path}: cannot read bundle version state: {error.strerror}") from None
            except (ValueError, KeyError, TypeError) as error:
                raise MarkerError(f"{path}: bundle version state is corrupt ({error}); restore it from backup rather than delete it, or every older bundle becomes acceptable again") from None

    def refusal(self, bundle: Bundle) -> str | None:
        """Why `bundle` may not become active, or None: its version must be greater than the one
        accepted, or the same bundle again."""
        known = self.accepted.get(bundle.key)
        if known is None:
            return None
        version, digest = known
        if bundle.version > version or (bundle.version == version and bundle.digest == digest):
            return None
        if bundle.version == version:
            return f"{bundle.path}: refused: version {bundle.version} of {bundle.issuer}/{bundle.id} was already accepted with other content (a new issue needs a greater version)"
        return f"{bundle.path}: refused: version {bundle.version} of {bundle.issuer}/{bundle.id} is older than version {version} already accepted (no downgrade)"

    def accept(self, bundles: list[Bundle]) -> None:
        """Remember `bundles` as accepted, on disk first: if the file cannot be written, nothing
        is remembered and the caller must not activate them."""
        accepted = {**self.accepted, **{bundle.key: (bundle.version, bundle.digest) for bundle in bundles}}
        if self.path is not None:
            self._write(accepted)
        self.accepted = accepted

    def _write(self, accepted: dict[tuple[str, str], tuple[int, str]]) -> None:
        entries = [{"issuer": issuer, "id": bundle_id, "version": version, "sha256": digest} for (issuer, bundle_id), (version, digest) in sorted(accepted.items())]
        try:
            write_private(Path(self.path), json.dumps({"bundles": entries}, indent=1).encode() + b"\n")
        except OSError as error:
            raise MarkerError(f"{self.path}: cannot write bundle version state: {error.strerror}") from None
