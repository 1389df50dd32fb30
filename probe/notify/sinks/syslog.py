"""Syslog sink: RFC 5424 messages carrying the notification as JSON, over UDP, TCP (octet-counted
framing, RFC 6587 section 3.4.1) or a Unix socket (stream, octet-counted; or datagram, as
`/dev/log` is).

Syslog has no acknowledgement: over TCP and a Unix socket a completed write counts as delivered,
over UDP the send does. These sinks are best-effort: a receiver that crashes after the write loses
what it had not processed, and a UDP datagram can be lost without anyone knowing. Give the
authority a webhook sink; use syslog for the operator's collectors.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from typing import Any

from probe.config import SYSLOG_FACILITIES, SinkSection, split_address
from probe.notify.sinks import Sink, SinkError

log = logging.getLogger("probe.notify")

SEVERITY_OF_MARKER = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
"""Syslog severities: 2 critical, 3 error, 4 warning, 5 notice, 6 informational."""
SEVERITY_OF_NOTIFICATION = {"event": 4, "suppressed": 4, "dropped": 3, "bundle": 5}
MAX_UDP_MESSAGE = 65_000


def printable(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or '-'."""
    cleaned = "".join(character for character in text if 33 <= ord(character) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(document: dict[str, Any], facility: int, hostname: str) -> bytes:
    kind = document["notification"]
    severity = SEVERITY_OF_NOTIFICATION[kind]
    if kind == "event":
        severity = SEVERITY_OF_MARKER.get(document["event"]["marker"].get("severity", ""), severity)
    header = f"<{facility * 8 + severity}>1 {document['created']} {printable(hostname, 255)} probe {os.getpid()} {kind} - "
    return header.encode("ascii") + json.dumps(document, separators=(",", ":")).encode("ascii")


class SyslogSink(Sink):
    def __init__(self, section: SinkSection, hostname: str) -> None:
        super().__init__(section)
        self.transport = section.transport
        self.facility = SYSLOG_FACILITIES[section.facility]
        self.hostname = hostname
        self.best_effort = True
        self._socket: socket.socket | None = None
        self._stream = self.transport != "udp"
        if self.transport != "unix":
            self.host, self.port = split_address(section.address, f"sink {self.name}: address")

    def describe(self) -> str:
        return f"syslog over {self.transport} to {self.section.path if self.transport == 'unix' else self.section.address}"

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        delivered = 0
        try:
            connection = self._connect()
            for document, _ in documents:
                self.check_stopping(delivered)
                message = syslog_message(document, self.facility, self.hostname)
                if self._stream:
                    connection.sendall(b"%d %s" % (len(message), message))
                elif len(message) > MAX_UDP_MESSAGE:  # best-effort: reported, not retried forever
                    log.warning(f"sink {self.name}: a {len(message)}-byte notification ({document['idempotency_key']}) does not fit a datagram; not sent")
                elif self.transport == "udp":
                    connection.sendto(message, (self.host, self.port))
                else:
                    connection.send(message)
                delivered += 1
        except OSError as error:
            self.close()
            raise SinkError(f"{self.describe()}: {error.strerror or error}", delivered) from None

    def _connect(self) -> socket.socket:
        if self._socket is not None:
            return self._socket
        timeout = self.section.timeout
        if self.transport == "udp":
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
            self._socket = socket.socket(family, socket.SOCK_DGRAM)
        elif self.transport == "tcp":
            self._socket = socket.create_connection((self.host, self.port), timeout=timeout)
        else:
            self._socket = self._connect_unix(timeout)
        return self._socket

    def _connect_unix(self, timeout: float) -> socket.socket:
        """A stream socket if the receiver listens on one, else a datagram socket."""
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            connection = socket.socket(socket.AF_UNIX, kind)
            connection.settimeout(timeout)
            try:
                connection.connect(self.section.path)
            except OSError as error:
                connection.close()
                if error.errno == errno.EPROTOTYPE:
                    continue
                raise
            self._stream = kind == socket.SOCK_STREAM
            return connection
        raise OSError(errno.EPROTOTYPE, "neither a stream nor a datagram socket")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
