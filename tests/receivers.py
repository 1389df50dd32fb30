"""Real notification receivers on loopback, started by the tests: an HTTP(S) webhook server, a
syslog TCP listener (octet-counted frames), a syslog UDP listener and Unix socket listeners. Each
keeps what it received, in order, and can be stopped and started again on the same address."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class WebhookReceiver:
    """Answers POSTs with `status` (200 unless told otherwise) and keeps (headers, body) of each."""

    def __init__(self, port: int | None = None, certificate: tuple[Path, Path] | None = None) -> None:
        self.port = port or free_port()
        self.certificate = certificate
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.answer = b""
        """Body of every answer."""
        self.idle_timeout: float | None = None
        """Seconds a kept-alive connection may stay idle before the receiver closes it."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = receiver.idle_timeout

            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.status
                if 200 <= status < 300:
                    receiver.requests.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *arguments: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class StreamReceiver:
    """A TCP or Unix stream listener decoding RFC 6587 octet-counted frames."""

    def __init__(self, family: int = socket.AF_INET, path: str | None = None, port: int | None = None) -> None:
        self.family = family
        self.address: Any = path if family == socket.AF_UNIX else ("127.0.0.1", port or free_port())
        self.messages: list[bytes] = []
        self._listener: socket.socket | None = None

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> StreamReceiver:
        listener = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family != socket.AF_UNIX:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.family == socket.AF_UNIX:
                os.unlink(self.address)


class DatagramReceiver:
    """A UDP or Unix datagram listener: one message per datagram."""

    def __init__(self, family: int = socket.AF_INET, path: str | None = None) -> None:
        self.family = family
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.bind(path if family == socket.AF_UNIX else ("127.0.0.1", 0))
        self.address = self.socket.getsockname()
        self.messages: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def port(self) -> int:
        return self.address[1]

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.socket.recv(65536))
            except OSError:
                return

    def stop(self) -> None:
        self.socket.close()


def syslog_json(message: bytes) -> dict[str, Any]:
    """The JSON document of an RFC 5424 message `<PRI>1 TIME HOST APP PROCID MSGID - MSG`."""
    return json.loads(message.split(b" ", 7)[7])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths
