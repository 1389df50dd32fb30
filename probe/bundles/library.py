"""The active marker set: which bundles are accepted, and the compiled version the pipeline reads.

`MarkerLibrary.load` admits bundle files one by one (read once, signature checked on those very
bytes, expiry, version rules), compiles the new set in the calling thread — a background thread
on a live reload — and only then publishes it by one attribute assignment, which the pipeline
picks up between two batches. A refused bundle changes nothing: what was active stays active.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from probe.bundles.format import Bundle, is_bundle, markers_from_entries, parse_bundle, read_file, refusal
from probe.bundles.importing import ImportReport, detect_format, is_unsupported, read_source as read_feed
from probe.bundles.signing import TrustStore
from probe.bundles.versions import VersionState
from probe.errors import CompanionError, MarkerError, ProbeError
from probe.match.compiled import CompiledMarkers


@dataclass
class LoadPolicy:
    require_signature: bool = False
    trust_store: TrustStore | None = None
    versions: VersionState = field(default_factory=lambda: VersionState(None))
    clock: Callable[[], int] | None = None
    """Wall clock (nanoseconds) refusing expired bundles at load (the live service). None: a
    bundle's window is judged by each packet's capture time only (replay)."""


@dataclass
class LoadReport:
    accepted: list[Bundle] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """One line each, naming the file and the reason."""


class MarkerLibrary:
    def __init__(self, policy: LoadPolicy | None = None) -> None:
        self.policy = policy or LoadPolicy()
        if self.policy.require_signature and self.policy.trust_store is None:
            raise MarkerError("require_signature is set but no trust store is configured ([markers] trust_store)")
        self.bundles: dict[tuple[str, str], Bundle] = {}
        """The active bundle of each (issuer, id)."""
        self.active = CompiledMarkers([])
        """Replaced whole by each successful load; readers take it without a lock."""
        self.generation = 0
        self._lock = threading.Lock()

    def load(self, paths: list[str]) -> LoadReport:
        """Admit the given files (new bundles, or new versions of active ones) and publish the
        resulting set. Bundles not named stay active."""
        with self._lock:
            report = LoadReport()
            candidates: dict[tuple[str, str], Bundle] = {}
            for path in paths:
                try:
                    bundle = self.admit(path)
                except ProbeError as error:
                    report.refused.append(str(error))
                    continue
                rival = candidates.get(bundle.key)
                if rival is not None and rival.digest != bundle.digest:
                    older, bundle = (rival, bundle) if rival.version < bundle.version else (bundle, rival)
                    if older.version == bundle.version:
                        report.refused.append(f"{older.path}: refused: version {older.version} of {older.issuer}/{older.id} is also {bundle.path}, with other content")
                        continue
                    report.refused.append(f"{older.path}: refused: superseded by version {bundle.version} in {bundle.path}")
                candidates[bundle.key] = bundle
            unchanged = [bundle for key, bundle in candidates.items() if key in self.bundles and self.bundles[key].digest == bundle.digest]
            changed = {key: bundle for key, bundle in candidates.items() if key not in self.bundles or self.bundles[key].digest != bundle.digest}
            while changed:
                chosen = {**self.bundles, **changed}
                try:
                    compiled = CompiledMarkers(list(chosen.values()))
                except CompanionError as error:
                    owner = next(key for key, bundle in chosen.items() if any(str(value_file.path) == error.path for value_file in bundle.value_files))
                    if owner not in changed:  # an active bundle's file changed on disk: what is active stays as compiled
                        report.refused += [f"{bundle.path}: refused: active bundle {chosen[owner].path} cannot be compiled again: {error}" for bundle in changed.values()]
                        changed = {}
                        break
                    report.refused.append(f"{changed.pop(owner).path}: refused: {error}")
                    continue
                try:
                    if self.policy.require_signature:  # only what a trusted key signed may raise the bar for later bundles
                        self.policy.versions.accept(list(changed.values()))
                except MarkerError as error:  # not remembered, not active: a restart could not tell it was accepted
                    report.refused += [f"{bundle.path}: refused: {error}" for bundle in changed.values()]
                    break
                self.bundles = chosen
                self.active = compiled
                self.generation += 1
                break
            report.accepted = unchanged + [bundle for bundle in changed.values() if self.bundles.get(bundle.key) is bundle]
            return report

    def load_in_background(self, paths: list[str], done: Callable[[LoadReport], None]) -> threading.Thread:
        """Load on a thread of its own (the live service's reload): matching goes on meanwhile
        with the active version."""
        def run() -> None:
            try:
                report = self.load(paths)
            except Exception as error:  # a reload must always answer; the active version stays
                report = LoadReport(refused=[f"reload of {', '.join(paths)} failed: {error!r}"])
            done(report)

        thread = threading.Thread(target=run, name="bundle-reload", daemon=True)
        thread.start()
        return thread

    def admit(self, path: str) -> Bundle:
        """Read one marker file and check everything but its companion files (checked as they are
        compiled): signature, expiry, version. Raises MarkerError with the reason for refusal."""
        data = read_file(path)
        policy = self.policy
        if policy.require_signature:
            if not is_bundle(data):
                raise MarkerError(f"{path}: refused: not a bundle, so unsigned; import it into a bundle (probe markers import), sign it, then load it")
            assert policy.trust_store is not None
            signer = policy.trust_store.verify(path, data)
            bundle = read_source(path, data)
            if bundle.issuer.casefold() != signer.issuer:
                raise MarkerError(f"{path}: refused: signed by {signer.path.name}, a key of issuer {signer.issuer!r}, but the bundle names issuer {bundle.issuer!r}")
        else:
            bundle = read_source(path, data)
        if policy.clock is not None and bundle.valid_until is not None and bundle.valid_until < policy.clock():
            raise MarkerError(f"{path}: refused: expired (valid_until is in the past)")
        active = self.bundles.get(bundle.key)
        if active is not None and active.digest != bundle.digest and bundle.version <= active.version:
            raise MarkerError(f"{path}: refused: version {bundle.version} of {bundle.issuer}/{bundle.id} is not newer than active version {active.version} (no downgrade)")
        refusal = policy.versions.refusal(bundle)
        if refusal is not None:
            raise MarkerError(refusal)
        return bundle


def read_source(path: str, data: bytes) -> Bundle:
    """A bundle, or a feed in another format (STIX, MISP, Zeek intel, plain list) read as an
    unsigned bundle whose id is derived from the file's name and content."""
    if is_bundle(data):
        bundle, problems = parse_bundle(path, data)
        if problems:
            raise refusal(path, problems)
        assert bundle is not None
        return bundle
    if not Path(path).is_file():  # a feed is read twice: once to tell its format
        raise MarkerError(f"{path}: a feed must be a regular file (save what a pipe gives first)")
    source_format = detect_format(path)
    digest = hashlib.sha256(data).hexdigest()
    bundle = Bundle(path, f"{Path(path).stem}-{digest[:12]}", "local", 0, None, None, None, None, digest, [], [], source_format)
    problems: list[str] = []
    feed_report = ImportReport()
    bundle.markers = list(markers_from_entries(path, read_feed(source_format, path, feed_report), bundle, problems))
    invalid = problems + [line for line in feed_report.refused if not is_unsupported(line)]
    if invalid:
        raise refusal(path, invalid)
    bundle.notes = [f"not loaded: {line}" for line in feed_report.refused] + feed_report.notes
    return bundle
