"""The connection to the fleet's NATS bus, and the names on it.

nats-py is asyncio; the probe's stages are threads. `Bus` runs one event loop on a thread of its
own and hands it coroutines (`Bus.call`), so the client's pings, reconnections and acknowledgement
futures go on between two calls. Connection problems become `FleetError`s that say which server,
which credentials or which stream is wrong.

Names (subjects, buckets) are fixed here: notifications go to `probe.events.<site>.<probe>` in the
`[fleet] stream`, heartbeats to key `<site>.<probe>` of `status_bucket`, bundles are objects of
`bundle_bucket` named `<issuer>/<bundle id>` (an archive of the bundle, its signature and its
companion files).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl
import stat
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from probe.config import FleetSection, ProbeSection
from probe.errors import FleetError

log = logging.getLogger("probe.fleet")
EVENT_SUBJECTS = "probe.events.>"
T = TypeVar("T")


def event_subject(probe: ProbeSection) -> str:
    return f"probe.events.{probe.site}.{probe.name}"


def probe_key(probe: ProbeSection) -> str:
    """A probe's key in the status bucket."""
    return f"{probe.site}.{probe.name}"


def _private_file(path: str, key: str) -> str:
    """A secret the bus client reads: it must exist and be readable by its owner only."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as error:
        raise FleetError(f"fleet.{key}: {path}: cannot read it: {error.strerror}") from None
    if mode & 0o077:
        raise FleetError(f"fleet.{key}: {path}: mode {mode:04o} lets other users read a secret: run chmod 600 {path}")
    return path


def inbox_prefix(probe: ProbeSection) -> str:
    """Where the bus's replies to this member come (acknowledgements, fetched messages, bundle
    chunks): a prefix of its own, so that the bus's permissions can let each member receive its
    own replies only (a probe subscribed to every `_INBOX.>` would read what the collector
    fetches: the whole fleet's events)."""
    return f"_INBOX.{probe.site}.{probe.name}"


def connect_options(fleet: FleetSection, probe: ProbeSection, role: str) -> dict[str, Any]:
    """nats.connect's options from [fleet]; secrets checked now, before any connection."""
    options: dict[str, Any] = {"servers": list(fleet.servers), "name": f"{role} {probe_key(probe)}", "inbox_prefix": inbox_prefix(probe), "connect_timeout": fleet.connect_timeout, "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 1}
    if fleet.password_file:
        with open(_private_file(fleet.password_file, "password_file"), encoding="utf-8") as stream:
            options["user"], options["password"] = fleet.user, stream.read().strip()
    if fleet.nkey_seed_file:
        options["nkeys_seed"] = _private_file(fleet.nkey_seed_file, "nkey_seed_file")
    if fleet.creds_file:
        options["user_credentials"] = _private_file(fleet.creds_file, "creds_file")
    if fleet.ca_file or any(server.startswith("tls://") for server in fleet.servers):
        try:
            options["tls"] = ssl.create_default_context(cafile=fleet.ca_file or None)
        except (OSError, ssl.SSLError) as error:
            raise FleetError(f"fleet.ca_file: {fleet.ca_file}: cannot load CA certificates from it: {getattr(error, 'strerror', None) or error}") from None
    return options


def describe_failure(error: BaseException, fleet: FleetSection) -> str:
    """What a failed connection or request means for the operator."""
    servers = ", ".join(fleet.servers)
    text = str(error) or type(error).__name__
    if isinstance(error, (asyncio.TimeoutError, nats.errors.TimeoutError)):  # before OSError, which it is a kind of
        return f"the NATS servers at {servers} did not answer within {fleet.connect_timeout:g} s"
    if isinstance(error, nats.errors.NoServersError) or isinstance(error, (ConnectionRefusedError, OSError)) and not isinstance(error, ssl.SSLError):
        return f"no NATS server answers at {servers} ({text})"
    if "permissions violation" in text.lower():
        return f"the NATS servers at {servers} do not let this member do that: {text} (the rights of its user: systemd/nats-authorization.conf)"
    if "authorization" in text.lower() or "authentication" in text.lower() or isinstance(error, nats.errors.AuthorizationError):
        return f"the NATS servers at {servers} refused this probe's credentials (fleet.user/password_file, nkey_seed_file or creds_file): {text}"
    if isinstance(error, ssl.SSLError):
        return f"TLS with the NATS servers at {servers} failed (fleet.ca_file): {text}"
    if isinstance(error, nats.js.errors.NoStreamResponseError):
        return f"no JetStream stream takes this probe's subject on {servers}: create stream {fleet.stream!r} (probe fleet setup)"
    if isinstance(error, nats.js.errors.NotFoundError):
        return f"not found on {servers}: {getattr(error, 'description', None) or text} (probe fleet setup creates the stream and buckets)"
    return f"NATS at {servers}: {getattr(error, 'description', None) or text}"


class Bus:
    """One connection to the bus, on an event loop thread of its own."""

    def __init__(self, fleet: FleetSection, probe: ProbeSection, role: str) -> None:
        self.fleet = fleet
        self._options = connect_options(fleet, probe, role)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet-bus", daemon=True)
        self._thread.start()
        self.connection: Any = None
        self.jetstream: Any = None
        self._last_error: Exception | None = None
        """The client's last error reported by the server (a refused login or a permissions
        violation), which says more than the timeout a refused request ends in."""
        self._last_error_at = 0.0

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the bus's loop and wait for its result; a failure becomes a
        FleetError saying what it means."""
        return self.result(self.start(coroutine), timeout)

    def start(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the bus's loop while the caller goes on (`result` waits for it)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def result(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        try:
            return future.result(timeout)
        except FleetError:
            raise
        except Exception as error:
            future.cancel()
            raise FleetError(self.explain(error)) from None

    def explain(self, error: BaseException) -> str:
        """What a failed request means: a refused one ends in a timeout, but the server said why
        (a refusal reported while this request waited, not an older one)."""
        refusal = self._last_error
        recent = time.monotonic() - self._last_error_at <= self.fleet.connect_timeout * 2 + 1
        if isinstance(error, (asyncio.TimeoutError, nats.errors.TimeoutError)) and refusal is not None and recent and "permissions violation" in str(refusal).lower():
            self._last_error = None
            return describe_failure(refusal, self.fleet)
        return describe_failure(error, self.fleet)

    def connect(self) -> None:
        """Connect now (the first call of each user does); FleetError when no server takes us."""
        if self.connection is None or self.connection.is_closed:
            self._last_error = None
            try:
                self.call(self._connect(), self.fleet.connect_timeout * 2 + 1)
            except FleetError:
                if self._last_error is not None:  # what the servers said, rather than "no answer"
                    raise FleetError(describe_failure(self._last_error, self.fleet)) from None
                raise

    async def _connect(self) -> None:
        async def remember(error: Exception) -> None:
            self._last_error = error
            self._last_error_at = time.monotonic()
            log.debug(f"NATS: {error}")
        self.connection = await nats.connect(**self._options, error_cb=remember)
        self.jetstream = self.connection.jetstream(timeout=self.fleet.connect_timeout)

    def __enter__(self) -> Bus:
        """A one-shot use (a command): connected now, closed on leaving."""
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            try:
                self.call(self.connection.close(), self.fleet.connect_timeout + 1)
            except FleetError:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self.connection = None
