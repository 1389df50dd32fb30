"""`probe markers ...`: keys, signatures, validation, import and export of marker bundles.

Exit codes of verify, validate and import: 0 valid, 1 refused or invalid content (the reasons on
stderr, one a line), 2 usage or I/O error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from probe.bundles.format import read_file
from probe.bundles.importing import SOURCE_FORMATS, ImportReport, read_source as read_feed, write_bundle
from probe.bundles.library import LoadPolicy, MarkerLibrary, read_source
from probe.bundles.signing import TrustStore, generate_key_pair, sign_bundle, write_private
from probe.bundles.validate import validate_file
from probe.bundles.versions import VersionState
from probe.config import load_config
from probe.errors import MarkerError, ProbeError
from probe.fleet.bundles import publish_bundle
from probe.match.markers import Marker
from probe.match.patterns import PatternMatcher

EXIT_REFUSED = 1
EXIT_ERROR = 2
TYPE_NOTES = {
    "x509_sha256": "TLS 1.3 certificates are encrypted: only TLS 1.2 and older handshakes show theirs",
    "yara": "YARA-X, over the first [flows] yara_depth bytes of each TCP direction (cleartext)",
}
config_option = click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file; its [markers] section gives the trust store and state file.")


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"probe: error: {message}", err=True)
    sys.exit(code)


def refuse(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"probe: {line}", err=True)
    sys.exit(EXIT_REFUSED)


def readable(path: str) -> None:
    """A file that cannot be read is a usage or I/O error (2), not a refused bundle (1)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        fail(f"{path}: cannot read: {error.strerror}")


@click.group("markers")
def markers_group() -> None:
    """Marker bundles: keys, signatures, validation, import, export (markers/README.md)."""


@markers_group.command("keygen")
@click.argument("issuer")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False, exists=True), help="Where to write ISSUER.key (0600) and ISSUER.pub.")
def keygen_command(issuer: str, directory: str) -> None:
    """Make an Ed25519 key pair for ISSUER.

    ISSUER.pub goes into the trust store of every probe that should accept this issuer's bundles;
    ISSUER.key signs them and should stay offline.
    """
    try:
        private, public = generate_key_pair(issuer, Path(directory))
    except (ProbeError, OSError) as error:
        fail(str(error))
    click.echo(f"private key: {private} (mode 0600; keep it offline)\npublic key: {public} (copy into the trust store)")


@markers_group.command("sign")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key written by 'probe markers keygen'.")
def sign_command(bundle: str, key_path: str) -> None:
    """Sign BUNDLE's exact bytes; the signature is written to BUNDLE.sig.

    Companion value files are covered through the SHA-256 the bundle lists. Validate first: a
    signature does not make a bundle valid.
    """
    readable(bundle)
    try:
        target = sign_bundle(bundle, key_path)
    except ProbeError as error:
        fail(str(error))
    click.echo(f"signature: {target}")


@markers_group.command("verify")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...", type=click.Path(dir_okay=False))
@click.option("--trust-store", "trust_store", metavar="DIR", help="Directory of <issuer>.pub keys. Default: [markers] trust_store of --config.")
@config_option
def verify_command(bundles: tuple[str, ...], trust_store: str | None, config_path: str | None) -> None:
    """Check that each BUNDLE would be accepted by a probe requiring signatures.

    \b
    Checks: a .sig beside it, made by a trusted key of the bundle's issuer over its exact bytes;
    every companion file's SHA-256; not expired; a version newer than the one in the state file
    ([markers] state_file of --config), if any.

    \b
    Exit codes: 0 valid, 1 refused (reasons on stderr), 2 usage or I/O error.
    """
    try:
        section = load_config(config_path).markers
        store = TrustStore(trust_store or section.trust_store) if (trust_store or section.trust_store) else None
        if store is None:
            fail("no trust store: give --trust-store DIR or [markers] trust_store in --config")
        library = MarkerLibrary(LoadPolicy(True, store, VersionState(section.state_file or None), clock=time.time_ns))
    except ProbeError as error:
        fail(str(error))
    refusals = []
    for path in bundles:
        readable(path)
        try:
            bundle = library.admit(path)
        except ProbeError as error:
            refusals.append(str(error))
            continue
        problems: list[str] = []
        for value_file in bundle.value_files:
            for _ in value_file.every_value(problems):
                pass
        if problems:
            refusals += problems
            continue
        click.echo(f"{path}: valid: {bundle.issuer}/{bundle.id} version {bundle.version}, {sum(bundle.counts().values())} markers")
    if refusals:
        refuse(refusals)


@markers_group.command("publish")
@click.argument("bundle", metavar="BUNDLE", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", required=True, metavar="PATH", type=click.Path(dir_okay=False), help="Configuration with the [fleet] bus and its bundle_bucket.")
def publish_command(bundle: str, config_path: str) -> None:
    """Put a signed BUNDLE on the fleet's bus: every probe with [fleet] bundle_bucket fetches it.

    The bundle, its .sig and its companion files go as one object named <issuer>/<id>. With
    [markers] trust_store in --config, the bundle is first checked as a probe would check it (a
    bundle a probe would refuse is not published). Each probe checks it again on its own: a
    tampered or older bundle on the bus is refused there, and reported in its heartbeat and its
    bundle notifications.
    """
    readable(bundle)
    try:
        config = load_config(config_path)
        if config.markers.trust_store:
            MarkerLibrary(LoadPolicy(True, TrustStore(config.markers.trust_store), clock=time.time_ns)).admit(bundle)
        click.echo(publish_bundle(config, bundle))
    except ProbeError as error:
        fail(str(error))


@markers_group.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", type=click.Path(dir_okay=False))
def validate_command(files: tuple[str, ...]) -> None:
    """Check everything in marker files and list every problem with its marker id or line.

    \b
    Bundles: the JSON Schema (markers/bundle.schema.json), values (addresses, networks, names,
    hashes), duplicate ids, regular expressions, YARA rules that do not compile, companion files
    (digest, count, each line). Other formats (STIX, MISP, Zeek intel, lists): what an import
    would refuse. Nested networks are listed as information.

    \b
    Exit codes: 0 valid, 1 invalid content, 2 usage or I/O error.
    """
    invalid = False
    for path in files:
        readable(path)
        try:
            result = validate_file(path)
        except ProbeError as error:  # the file was readable: what is wrong is its content
            invalid = True
            click.echo(f"probe: invalid: {error}", err=True)
            continue
        for line in result.information:
            click.echo(f"probe: info: {path}: {line}", err=True)
        if result.problems:
            invalid = True
            for problem in result.problems:
                click.echo(f"probe: invalid: {problem}", err=True)
            continue
        what = f"bundle {result.bundle.issuer}/{result.bundle.id} version {result.bundle.version}" if result.bundle else f"{result.source_format} file"
        click.echo(f"{path}: valid {what}")
    if invalid:
        sys.exit(EXIT_REFUSED)


@markers_group.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", type=click.Path(dir_okay=False))
@click.option("--from", "source_format", required=True, type=click.Choice(SOURCE_FORMATS), help="Format of FILE.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Bundle to write (companion value files beside it for large sets).")
@click.option("--issuer", required=True, help="Issuer named in the bundle: the trust store must hold a key of this issuer.")
@click.option("--id", "bundle_id", help="Bundle id. Default: the output file's name without extension.")
@click.option("--version", "version", type=click.IntRange(min=0), help="Bundle version. Default: the current Unix time, so that every import is newer than the last.")
@click.option("--type", "type_hint", help="suricata-dataset: string, ipv4, ipv6, md5 or sha256 (required). list: the type of every line (default: detected per line).")
@click.option("--all", "include_all", is_flag=True, help="MISP: also attributes whose to_ids is false.")
@click.option("--tlp", type=click.Choice(["clear", "green", "amber", "amber+strict", "red"]), help="TLP label of the bundle.")
def import_command(files: tuple[str, ...], source_format: str, output: str, issuer: str, bundle_id: str | None, version: int | None, type_hint: str | None, include_all: bool, tlp: str | None) -> None:
    """Convert feeds (STIX 2.1, MISP event JSON, Zeek intel, Suricata datasets, plain lists) into
    one bundle, reporting counts by type, what was refused and why, and how domains match.

    \b
    The bundle is written with what was accepted. Exit codes: 0 everything imported, 1 some
    entries refused (listed), 2 usage or I/O error.
    """
    for path in files:
        readable(path)
        if not os.path.isfile(path):
            fail(f"{path}: import reads a regular file (save what a pipe gives first)")
    report = ImportReport()
    target = Path(output)
    try:
        markers = (marker for path in files for marker in read_feed(source_format, path, report, type_hint, include_all))
        write_bundle(markers, target, bundle_id=bundle_id or target.stem, issuer=issuer, version=int(time.time()) if version is None else version, report=report, tlp=tlp)
    except OSError as error:
        fail(f"{error.filename or output}: cannot write: {error.strerror}")
    except MarkerError as error:  # the feed's content
        fail(str(error), EXIT_REFUSED)
    except ProbeError as error:
        fail(str(error))
    for line in report.lines():
        click.echo(f"probe: {line}", err=True)
    if report.refused:
        sys.exit(EXIT_REFUSED)


@markers_group.command("export")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--to", "target_format", required=True, type=click.Choice(["stix"]), help="Output format.")
@click.option("-o", "--output", default="-", help="Where to write; '-' is standard output (the default).")
def export_command(bundle: str, target_format: str, output: str) -> None:
    """Write the markers STIX 2.1 patterns can express (addresses, networks, domains, URLs,
    certificate SHA-256) as STIX indicators; the others are listed on stderr as not exported."""
    from probe.bundles.stix import export_stix

    readable(bundle)
    try:
        loaded = read_source(bundle, read_file(bundle))
        document, skipped = export_stix(loaded.all_markers(), loaded.id)
        text = json.dumps(document, indent=1) + "\n"
        if output == "-":
            sys.stdout.write(text)
        else:
            write_private(Path(output), text.encode("utf-8"))  # markers are confidential: 0600
    except OSError as error:
        fail(f"{output}: cannot write: {error.strerror}")
    except ProbeError as error:
        fail(str(error))
    for line in skipped:
        click.echo(f"probe: not exported: {line}", err=True)


@markers_group.command("stats")
@click.argument("files", nargs=-1, required=True, metavar="FILE...", type=click.Path(dir_okay=False))
def stats_command(files: tuple[str, ...]) -> None:
    """Compile marker files as a probe would and print counts by type (with what limits a type's
    matching: the byte-pattern engine, encrypted TLS 1.3 certificates), validity now, and the
    memory and build time of the compiled index."""
    for path in files:
        readable(path)
    before = _resident_bytes()
    started = time.perf_counter()
    library = MarkerLibrary()
    report = library.load(list(files))
    elapsed = time.perf_counter() - started
    memory = _resident_bytes() - before
    if report.refused:
        refuse(report.refused)
    now = time.time_ns()
    totals: dict[str, int] = {}
    validity = {"valid now": 0, "not yet valid": 0, "expired": 0}
    for bundle in library.bundles.values():
        click.echo(f"bundle {bundle.issuer}/{bundle.id} version {bundle.version} ({bundle.source_format}, {bundle.path})" + (f" tlp {bundle.tlp}" if bundle.tlp else ""))
        for kind, count in bundle.counts().items():
            totals[kind] = totals.get(kind, 0) + count
        for marker, count in bundle.validity_groups():
            state = "not yet valid" if marker.valid_from is not None and marker.valid_from > now else "expired" if marker.valid_until is not None and marker.valid_until < now else "valid now"
            validity[state] += count
    notes = {**TYPE_NOTES, "bytes": _pattern_engine(library.active.patterns)}
    click.echo(f"{'type':<12} {'markers':>9}  notes")
    for kind in sorted(totals):
        click.echo(f"{kind:<12} {totals[kind]:>9}  {notes.get(kind, '')}".rstrip())
    click.echo("validity: " + ", ".join(f"{count} {state}" for state, count in validity.items()))
    click.echo(f"index: {memory / 1e6:.1f} MB (resident memory it added), compiled in {elapsed:.2f} s")


def _pattern_engine(patterns: PatternMatcher | None) -> str:
    if patterns is None:
        return "Hyperscan streaming mode over the first [flows] pattern_depth bytes of each TCP direction"
    if patterns.engine == "hyperscan":
        return f"Hyperscan streaming mode over the first [flows] pattern_depth bytes of each TCP direction, {patterns.state_bytes} bytes of state per direction"
    return "Hyperscan unavailable: pure-Python fallback (slower; a regular expression matches within 4 KiB windows)"


def _resident_bytes() -> int:
    """This process's resident memory: what the compiled index costs a probe, allocator overhead
    included, and measured without slowing the build down."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@markers_group.command("diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
def diff_command(old: str, new: str) -> None:
    """List markers added (+), removed (-) and changed (~) from OLD to NEW, by marker id."""
    bundles = []
    for path in (old, new):
        readable(path)
        try:
            loaded = read_source(path, read_file(path))
            bundles.append({marker.id: marker for marker in loaded.all_markers()})
        except ProbeError as error:
            fail(str(error))
    before, after = bundles
    compared = ("type", "value", "subdomains", "valid_from", "valid_until", "severity", "reference", "tlp", "name", "encoding", "constraints")
    added = removed = changed = 0
    for marker_id in sorted(before.keys() | after.keys()):
        was, now = before.get(marker_id), after.get(marker_id)
        if was is None:
            added += 1
            click.echo(f"+ {marker_id} {now.type} {_shown(now)}")
        elif now is None:
            removed += 1
            click.echo(f"- {marker_id} {was.type} {_shown(was)}")
        else:
            differences = [f"{name}: {getattr(was, name)!r} -> {getattr(now, name)!r}" for name in compared if getattr(was, name) != getattr(now, name)]
            if differences:
                changed += 1
                click.echo(f"~ {marker_id} " + "; ".join(differences))
    click.echo(f"added {added}, removed {removed}, changed {changed}", err=True)


def _shown(marker: Marker) -> str:
    return marker.name or "" if marker.type in ("bytes", "yara") else marker.value
