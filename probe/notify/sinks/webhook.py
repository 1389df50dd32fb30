"""Webhook sink: each notification POSTed as one JSON document; a 2xx answer acknowledges it.

Headers: `Idempotency-Key` (the document's key: a receiver drops a second delivery of it),
`Content-Type: application/json`, and with a shared secret `X-Probe-Signature: sha256=<hex>`, the
HMAC-SHA256 of the exact body bytes, which the receiver recomputes to know the probe sent it.
HTTPS verifies the receiver's certificate and name by default, against the system's CAs or
`ca_file`. One connection is kept open and reused; any failure closes it, and the next attempt
opens a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import importlib.metadata
import json
import logging
import os
import ssl
import stat
import urllib.parse
from typing import Any

from probe.config import SinkSection
from probe.errors import NotifyError
from probe.notify.sinks import Sink, SinkError

log = logging.getLogger("probe.notify")
USER_AGENT = f"probe/{importlib.metadata.version('probe')}"
MAX_ANSWER = 65536
"""Bytes of a receiver's answer read; beyond, the connection is closed rather than drained."""


def read_secret(path: str, sink: str) -> bytes:
    where = f"sink {sink}: hmac_secret_file {path}"
    try:
        status = os.stat(path)
        with open(path, "rb") as stream:
            secret = stream.read().strip()
    except OSError as error:
        raise NotifyError(f"{where}: cannot read it: {error.strerror}") from None
    if stat.S_IMODE(status.st_mode) & 0o077:
        raise NotifyError(f"{where}: mode {stat.S_IMODE(status.st_mode):04o} lets other users read the shared secret: run chmod 600 {path}")
    if not secret:
        raise NotifyError(f"{where}: the file is empty")
    return secret


def tls_context(section: SinkSection) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=section.ca_file or None)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
        raise NotifyError(f"sink {section.name}: ca_file {section.ca_file}: cannot load CA certificates from it: {reason}") from None
    if not section.tls_verify:
        log.warning(f"sink {section.name}: tls_verify = false: the receiver's certificate is not checked, anyone on the path can read and answer in its place")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class WebhookSink(Sink):
    def __init__(self, section: SinkSection) -> None:
        super().__init__(section)
        url = urllib.parse.urlsplit(section.url)
        self.https = url.scheme == "https"
        self.host = url.hostname or ""
        self.port = url.port or (443 if self.https else 80)
        self.target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.secret = read_secret(section.hmac_secret_file, self.name) if section.hmac_secret_file else None
        self.context = tls_context(section) if self.https else None
        self._connection: http.client.HTTPConnection | None = None

    def describe(self) -> str:
        return f"webhook {self.section.url}"

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        for delivered, (document, _) in enumerate(documents):
            self.check_stopping(delivered)
            body = json.dumps(document, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": document["idempotency_key"], "User-Agent": USER_AGENT}
            if self.secret is not None:
                headers["X-Probe-Signature"] = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            try:
                status, reason, answer = self._post(body, headers)
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.close()
                raise SinkError(f"{self.describe()}: {getattr(error, 'strerror', None) or error or type(error).__name__}", delivered) from None
            if not 200 <= status < 300:
                self.close()
                detail = answer.decode("utf-8", "replace").strip().splitlines()[:1]
                raise SinkError(f"{self.describe()}: HTTP {status} {reason}" + (f": {detail[0][:200]}" if detail else ""), delivered)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """One POST and its whole answer. A kept-alive connection the receiver closed while idle
        fails before any answer: the POST is sent again once on a new connection (the
        idempotency key makes a second copy harmless)."""
        reused = self._connection is not None
        try:
            return self._exchange(body, headers)
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            if not reused:
                raise
            self.close()
            return self._exchange(body, headers)

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        connection = self._connect()
        connection.request("POST", self.target, body, headers)
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER)
        if not response.isclosed():  # an answer longer than we read: the connection cannot be reused
            self.close()
        elif response.will_close:
            self.close()
        return response.status, response.reason, answer

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            timeout = self.section.timeout
            if self.https:
                self._connection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
