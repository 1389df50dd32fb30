"""Ed25519 signatures of bundles and the trust store of issuers' public keys.

A signature covers the bundle file's exact bytes; companion value files are covered through the
SHA-256 the bundle lists for each. A public key is trusted for one issuer only, named by its file
(`<issuer>.pub` or `<issuer>.<label>.pub`), so that one issuer's key can neither publish nor block
(by version) another issuer's bundles.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from probe.bundles.format import ISSUER
from probe.errors import MarkerError

SIGNATURE_SUFFIX = ".sig"


def signature_path(bundle_path: str | Path) -> Path:
    return Path(f"{bundle_path}{SIGNATURE_SUFFIX}")


def write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only, atomically and durably: a reader never sees half
    of it, and after a crash it is the old file or the new one. The temporary name is random and
    created exclusively, never through a link someone placed there."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def generate_key_pair(issuer: str, directory: Path) -> tuple[Path, Path]:
    """Write `<issuer>.key` (PKCS#8 PEM, 0600) and `<issuer>.pub`; never overwrite a key."""
    if not ISSUER.fullmatch(issuer):
        raise MarkerError(f"{issuer!r} is not an issuer name (1-64 letters, digits, '-' or '_', e.g. anssi)")
    private_path, public_path = directory / f"{issuer}.key", directory / f"{issuer}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise MarkerError(f"{path}: already exists; a key is never overwritten (move it away first)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_private(private_path, private)
    public_path.write_bytes(public)
    return private_path, public_path


def load_private_key(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as error:
        raise MarkerError(f"{path}: cannot read private key: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise MarkerError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MarkerError(f"{path}: not an Ed25519 key")
    return key


def sign_bundle(bundle_path: str, key_path: str) -> Path:
    """Sign the bundle's bytes as they are on disk; the signature file is written beside it."""
    key = load_private_key(key_path)
    try:
        data = Path(bundle_path).read_bytes()
    except OSError as error:
        raise MarkerError(f"{bundle_path}: cannot read bundle: {error.strerror}") from None
    target = signature_path(bundle_path)
    write_private(target, base64.b64encode(key.sign(data)) + b"\n")
    return target


def read_signature(bundle_path: str) -> bytes:
    path = signature_path(bundle_path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise MarkerError(f"{bundle_path}: refused: unsigned (no {path.name} beside it)") from None
    except OSError as error:
        raise MarkerError(f"{path}: cannot read signature: {error.strerror}") from None
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        signature = b""
    if len(signature) != 64:
        raise MarkerError(f"{bundle_path}: refused: {path.name} is not a base64 Ed25519 signature")
    return signature


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    issuer: str
    """Case-folded issuer this key may sign for."""
    key: Ed25519PublicKey


class TrustStore:
    """The public keys of a directory, each bound to the issuer its file name gives."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.keys: list[TrustedKey] = []
        root = Path(directory)
        if not root.is_dir():
            raise MarkerError(f"{directory}: trust store is not a directory of <issuer>.pub keys")
        try:
            paths = sorted(root.glob("*.pub"))
        except OSError as error:
            raise MarkerError(f"{directory}: cannot read trust store: {error.strerror}") from None
        for path in paths:
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as error:
                raise MarkerError(f"{path}: not a PEM public key ({error})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise MarkerError(f"{path}: not an Ed25519 public key")
            self.keys.append(TrustedKey(path, path.name.split(".", 1)[0].casefold(), key))
        if not self.keys:
            raise MarkerError(f"{directory}: trust store holds no <issuer>.pub key: no bundle could be accepted")

    def verify(self, bundle_path: str, data: bytes) -> TrustedKey:
        """The trusted key whose signature over `data` is valid, checked before anything of the
        bundle is parsed; the caller then checks that the bundle names that key's issuer.
        Raises MarkerError with the reason for refusal otherwise."""
        signature = read_signature(bundle_path)
        for trusted in self.keys:
            try:
                trusted.key.verify(signature, data)
            except InvalidSignature:
                continue
            return trusted
        raise MarkerError(f"{bundle_path}: refused: bad signature (tampered, or signed by no key of trust store {self.directory})")
