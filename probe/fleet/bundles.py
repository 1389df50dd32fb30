"""Marker bundles over the bus: `probe markers publish` puts a signed bundle into the object store
bucket `[fleet] bundle_bucket`, and every probe configured with it fetches each new object and
offers it to its marker library, which checks it as any bundle file: signature by a trusted key
of its issuer, expiry, no downgrade. The bus is a transport, never trusted: a tampered or older
bundle there is refused by each probe, and the active version stays.

One object per bundle, named `<issuer>/<id>`: a tar archive of the bundle file, its detached
signature and its companion value files, at their paths relative to the bundle. A probe extracts
it, regular files only and inside one new directory, `<bundle_directory>/<issuer>/<id>/<digest>`;
the directory of the version in force stays (a restart loads it again), the others are deleted.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import nats.js.errors

from probe.bundles.format import parse_bundle, read_file, refusal
from probe.bundles.signing import SIGNATURE_SUFFIX, signature_path
from probe.config import Config
from probe.errors import FleetError, MarkerError
from probe.fleet.bus import Bus

BUNDLE_FILE = "bundle.json"
MAX_ARCHIVE_BYTES = 1024**3
"""A fetched archive larger than this is refused unread."""


def pack_bundle(path: str) -> tuple[str, bytes, int]:
    """(object name, archive, version) of a signed bundle file and its companions."""
    data = read_file(path)
    bundle, problems = parse_bundle(path, data)
    if problems or bundle is None:
        raise refusal(path, problems)
    signature = signature_path(path)
    if not signature.is_file():
        raise MarkerError(f"{path}: no signature beside it ({signature}): probes load only signed bundles; sign it first (probe markers sign)")
    directory = Path(path).resolve().parent
    members = [(BUNDLE_FILE, data), (BUNDLE_FILE + SIGNATURE_SUFFIX, signature.read_bytes())]
    for value_file in bundle.value_files:
        relative = os.path.relpath(Path(value_file.path).resolve(), directory)
        if relative.startswith(".."):
            raise MarkerError(f"{path}: companion file {value_file.path} is outside the bundle's directory: a probe could not place it")
        members.append((relative, read_file(str(value_file.path))))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(content))
    return f"{bundle.issuer}/{bundle.id}", archive.getvalue(), bundle.version


def publish_bundle(config: Config, path: str) -> str:
    """Put a bundle on the bus; what was done, in one line."""
    if not config.fleet.servers or not config.fleet.bundle_bucket:
        raise FleetError("fleet.servers and fleet.bundle_bucket: publishing needs the bus and its bundle bucket")
    name, archive, version = pack_bundle(path)
    with Bus(config.fleet, config.probe, "probe markers publish") as bus:
        bus.call(_put(bus, config.fleet.bundle_bucket, name, archive), config.fleet.connect_timeout * 4 + len(archive) / 1e6 + 1)
    return f"{path}: published as {name} (version {version}, {len(archive):,} bytes) in bucket {config.fleet.bundle_bucket}"


async def _put(bus: Bus, bucket: str, name: str, archive: bytes) -> None:
    try:
        store = await bus.jetstream.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        raise FleetError(f"fleet.bundle_bucket: bucket {bucket!r} does not exist on the bus: run probe fleet setup") from None
    await store.put(name, archive)


def unpack_bundle(name: str, archive: bytes, root: str) -> str:
    """Extract a fetched archive into a new directory under `root`; the bundle file's path.
    Raises MarkerError for an archive that is not one `pack_bundle` could have made."""
    digest = hashlib.sha256(archive).hexdigest()[:16]
    parts = name.split("/")
    if len(parts) != 2 or not all(part and part not in (".", "..") and "\\" not in part for part in parts):
        raise MarkerError(f"bus object {name!r}: not named <issuer>/<bundle id>")
    target = Path(root, *parts, digest)
    if (target / BUNDLE_FILE).is_file():
        return str(target / BUNDLE_FILE)
    staging = Path(str(target) + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar.getmembers():
                relative = Path(member.name)
                if not member.isfile() or relative.is_absolute() or ".." in relative.parts:
                    raise MarkerError(f"bus object {name!r}: member {member.name!r} is not a plain file inside the bundle's directory")
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                source = tar.extractfile(member)
                assert source is not None
                with open(destination, "xb") as output:
                    shutil.copyfileobj(source, output)
                os.chmod(destination, 0o600)
    except tarfile.TarError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise MarkerError(f"bus object {name!r}: not a bundle archive: {error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not (staging / BUNDLE_FILE).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise MarkerError(f"bus object {name!r}: holds no {BUNDLE_FILE}")
    os.replace(staging, target)
    return str(target / BUNDLE_FILE)


def installed_bundles(root: str) -> list[str]:
    """The bundle files fetched earlier, to load at start: one directory per bundle version kept."""
    if not root or not os.path.isdir(root):
        return []
    return sorted(str(path) for path in Path(root).glob(f"*/*/*/{BUNDLE_FILE}") if not path.parent.name.endswith(".partial"))


def keep_only(bundle_path: str) -> None:
    """The version at `bundle_path` is in force: delete the other versions of its bundle."""
    version_directory = Path(bundle_path).parent
    for sibling in version_directory.parent.iterdir():
        if sibling != version_directory:
            shutil.rmtree(sibling, ignore_errors=True)


def discard(bundle_path: str) -> None:
    """A refused version: nothing of it stays."""
    shutil.rmtree(Path(bundle_path).parent, ignore_errors=True)
