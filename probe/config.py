"""The probe's one configuration file: TOML, loaded and validated here and nowhere else.

Every command takes `--config PATH`; its command-line options override the file. Each section is a
dataclass whose fields are the keys a user may write; an unknown key, a wrong type or a value out of
range is refused with the key's full name, so a typo never silently falls back to a default.
`systemd/probe.toml` is the commented example of every key.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.errors import ConfigError
from probe.bundles.values import MARKER_TYPES
from probe.match.markers import RECORD_CLASS, RESERVED_CLASSES, SEVERITIES, TLP_LEVELS


@dataclass(frozen=True)
class ProbeSection:
    name: str = field(default_factory=socket.gethostname)
    """Name of this probe, written into every event (`probe.name`)."""
    site: str = ""
    """Site or tap point this probe watches (`probe.site`)."""


@dataclass(frozen=True)
class DeclarationSection:
    reference: str = ""
    """Reference of the deployment's declaration to the authority (CPCE art. L33-14), written into
    every notification so the authority knows which declared device saw the event."""
    declared_by: str = ""
    """Who declared the deployment to the authority (the operator's legal entity or its officer)."""
    declared_on: str = ""
    """Date of the declaration, YYYY-MM-DD."""
    interfaces: tuple[str, ...] = ()
    """The interfaces the declaration covers: `probe run` refuses to capture on any other."""


@dataclass(frozen=True)
class CaptureSection:
    interfaces: tuple[str, ...] = ()
    """Interfaces `probe run` captures on (promiscuous, every frame the tap or SPAN port mirrors)."""
    bpf_filter: str = ""
    """A libpcap filter expression applied in the kernel; empty: every frame."""
    snaplen: int = 65535
    """Bytes kept of each frame; the rest is counted in its length but never read."""
    buffer_bytes: int = 64 * 1024**2
    """Kernel ring buffer per interface: what absorbs bursts while the probe is busy."""


@dataclass(frozen=True)
class ServiceSection:
    workers: int = 1
    """Processes that decode and match; frames are spread among them by a symmetric hash of the
    innermost addresses, so both directions of a flow (and all its fragments) reach the same one."""
    worker_queue_bytes: int = 32 * 1024**2
    """Shared memory per worker for frames waiting to be matched; a batch that finds it full is
    dropped and counted (capture never waits for a worker)."""
    metrics_address: str = "127.0.0.1:9477"
    """host:port of the Prometheus endpoint; empty: no endpoint."""
    control_socket: str = "/run/probe/control.sock"
    """Unix socket (mode 0600) that `probe status` reads the running probe's figures from."""
    stop_timeout: float = 30.0
    """Seconds SIGTERM may take to drain the workers and flush store and outbox; a second SIGTERM
    exits at once."""


@dataclass(frozen=True)
class FlowsSection:
    max_flows: int = 1_000_000
    """Flows tracked at once; when full, the flow idle the longest is evicted (and counted)."""
    tcp_timeout: float = 300.0
    """Seconds of silence after which a TCP flow ends and its events are written."""
    tcp_closed_timeout: float = 10.0
    """Seconds a TCP flow closed by FIN/RST is remembered, so late packets do not start a new flow."""
    udp_timeout: float = 60.0
    other_timeout: float = 60.0
    """ICMP and every other protocol."""
    handshake_buffer_bytes: int = 16_384
    """Per-flow, per-direction bound on bytes buffered while a TLS ClientHello or Certificate
    message, an HTTP header block or a DNS message is incomplete."""
    pattern_depth: int = 65_536
    """Bytes of each TCP direction matched against `bytes` markers (streaming: none buffered)."""
    yara_depth: int = 4_096
    """First bytes of each TCP direction buffered and matched against `yara` markers."""
    reassembly_max_bytes: int = 64 * 1024**2
    """Bytes held for all flows together while their streams are read (out-of-order segments,
    handshake, HTTP header and YARA buffers, QUIC CRYPTO data); beyond, a segment is refused or a
    message given up (counted) and the stream goes on after a gap."""


@dataclass(frozen=True)
class FragmentsSection:
    timeout: float = 30.0
    """Seconds a datagram may wait for its missing fragments (RFC 791 suggests up to 15-120 s)."""
    max_datagrams: int = 10_000
    max_per_source: int = 512
    max_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class MarkersSection:
    files: tuple[str, ...] = ()
    """Marker files loaded when `--markers` is not given: bundles, or feeds read directly (STIX,
    MISP, Zeek intel, plain lists)."""
    require_signature: bool | None = None
    """Refuse a bundle without a valid signature by a trusted key of its issuer. Default: true for
    the live service, false for `probe replay`."""
    trust_store: str = ""
    """Directory of issuers' public keys, `<issuer>.pub` or `<issuer>.<label>.pub`."""
    state_file: str = ""
    """Where the highest accepted version of each bundle is kept (0600), so that no older bundle
    is accepted after a restart. Empty: versions are remembered for the run only."""


@dataclass(frozen=True)
class EventsSection:
    path: str = "-"
    """Where `probe replay` writes events as JSON Lines; `-` is standard output."""
    max_tlp: str = "red"
    """Highest TLP label (clear, green, amber, amber+strict, red) whose marker values this output
    may carry; an event of a marker labelled above it names the marker's id only."""


@dataclass(frozen=True)
class StoreSection:
    directory: str = ""
    """The ring store (mode 0700, its files 0600). Empty: `probe replay` stores nothing unless
    given --store."""
    segment_period: int = 3600
    """Seconds of event time per segment file: an expired record stays on disk at most this long
    after its retention ends (its segment goes when all its records have expired)."""
    flush_interval: float = 1.0
    """Seconds an event may wait before it is written and fsync'd (acknowledged)."""
    max_bytes: int = 10 * 1024**3
    """Size cap: a warning at 80 %; beyond it the oldest segments are evicted, each one logged."""
    retention_months: int = 6
    """Calendar months an event is kept after its last packet; six at most (CPCE art. L33-14)."""
    class_retention_months: dict[str, int] = field(default_factory=dict)
    """Shorter retention of named record classes, e.g. { network = 3 } (CPCE art. R10-14 IV)."""
    class_by_type: dict[str, str] = field(default_factory=dict)
    """Record class of a marker type's events, when the marker and its bundle name none."""
    subscriber_prefixes: tuple[str, ...] = ()
    """The operator's subscriber address space (CIDR), for `probe store subscribers`."""


@dataclass(frozen=True)
class NotifySection:
    spool_directory: str = ""
    """The outbox (mode 0700, files 0600): every notification is written here before it is sent
    and removed once every sink acknowledged it. Empty: `spool` inside the store directory."""
    spool_max_bytes: int = 1024**3
    """Spool size cap; beyond it new notifications are dropped, counted, logged and, once there is
    room again, reported to every sink in a `dropped` notification."""
    update_interval: float = 60.0
    """Seconds (capture time) between two updates of an event whose flow goes on and is still
    counting packets; the flow's end always gives a final update."""
    marker_rate: float = 10.0
    """Detections of one marker notified per second (capture time) once its burst is spent; the
    rest are stored but not notified, and counted in a `suppressed` notification."""
    marker_burst: int = 100
    retry_initial: float = 1.0
    """Seconds before the first retry of a sink that failed; doubled at each failure (with
    jitter) up to `retry_max`."""
    retry_max: float = 60.0
    drain_timeout: float = 10.0
    """Seconds `probe replay` waits at its end for the sinks to acknowledge what it found; what is
    left stays spooled for the next start."""


@dataclass(frozen=True)
class FleetSection:
    """The fleet's NATS JetStream bus: where a probe's `nats` sink publishes, where probes fetch
    bundles and report their heartbeat, and what `probe collect` consumes."""

    servers: tuple[str, ...] = ()
    """nats:// or tls:// URLs of the bus's servers; the client moves to another when one fails."""
    user: str = ""
    password_file: str = ""
    """File (mode 0600) holding the password of `user`."""
    nkey_seed_file: str = ""
    """File (mode 0600) holding this host's NKey seed (the server knows its public key)."""
    creds_file: str = ""
    """Credentials file (mode 0600) with a user JWT and its NKey seed (decentralised auth)."""
    ca_file: str = ""
    """CA certificates (PEM) the servers' certificates must chain to; default: the system's."""
    connect_timeout: float = 5.0
    """Seconds a connection, a publish acknowledgement or a request may take."""
    stream: str = "PROBE_EVENTS"
    """JetStream stream of the notifications, subjects `probe.events.>`."""
    consumer: str = "collector"
    """`probe collect`: its durable consumer on the stream."""
    bundle_bucket: str = ""
    """Object store bucket of marker bundles (`probe markers publish`); `probe run` fetches and
    loads each new one. Empty: no bundles from the bus."""
    bundle_directory: str = ""
    """`probe run`: where fetched bundles are kept (0700). Empty: `fleet-bundles` in the store
    directory."""
    status_bucket: str = "probe-fleet"
    """Key-value bucket of the probes' heartbeats (`probe fleet status`)."""
    heartbeat_interval: float = 10.0
    """`probe run`: seconds between two heartbeats; empty `status_bucket`: none."""


SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A probe's name and site are tokens of its subject `probe.events.<site>.<probe>` and of its inbox
prefix `_INBOX.<site>.<probe>`."""
BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SINK_TYPES = ("file", "stdout", "syslog", "webhook", "nats")
SYSLOG_TRANSPORTS = ("udp", "tcp", "unix")
SYSLOG_FACILITIES = {name: number for number, name in enumerate(("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"))}
SINK_NAME = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True)
class SinkSection:
    """One `[[sinks]]` entry: where notifications go, and which of them."""

    name: str = ""
    """Required, unique: names the sink in logs and its place in the spool."""
    type: str = ""
    """file, stdout, syslog, webhook or nats (the [fleet] bus)."""
    authority: bool = False
    """This sink reaches the authority: it gets every notification, unfiltered."""
    marker_types: tuple[str, ...] = ()
    """Only events of these marker types (and every bundle and dropped notification)."""
    min_severity: str = ""
    """Only events of markers at least this severe; a marker without severity always passes."""
    max_tlp: str = "red"
    """Highest TLP label whose marker values this sink may receive (see [events] max_tlp)."""
    path: str = ""
    """file: the JSON Lines file; syslog over unix: the socket."""
    max_bytes: int = 64 * 1024**2
    """file: rotated beyond this size."""
    rotate_interval: float = 86400.0
    """file: rotated when this old (seconds)."""
    transport: str = "udp"
    """syslog: udp, tcp (octet-counted framing, RFC 6587) or unix."""
    address: str = ""
    """syslog over udp or tcp: host:port."""
    facility: str = "local0"
    url: str = ""
    """webhook: http:// or https:// URL the notifications are POSTed to."""
    hmac_secret_file: str = ""
    """webhook: file (mode 0600) holding the shared secret of the X-Probe-Signature header."""
    ca_file: str = ""
    """webhook: CA certificates (PEM) the receiver's certificate must chain to; default: the system's."""
    tls_verify: bool = True
    timeout: float = 5.0
    """syslog tcp/unix, webhook: seconds a connection or a send may take before it counts as failed."""


SINK_KEYS = {
    "file": {"path", "max_bytes", "rotate_interval"},
    "stdout": set(),
    "syslog": {"transport", "address", "path", "facility", "timeout"},
    "webhook": {"url", "hmac_secret_file", "ca_file", "tls_verify", "timeout"},
    "nats": set(),
}
COMMON_SINK_KEYS = ("name", "type", "authority", "marker_types", "min_severity", "max_tlp")


@dataclass(frozen=True)
class Config:
    probe: ProbeSection = field(default_factory=ProbeSection)
    declaration: DeclarationSection = field(default_factory=DeclarationSection)
    capture: CaptureSection = field(default_factory=CaptureSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    flows: FlowsSection = field(default_factory=FlowsSection)
    fragments: FragmentsSection = field(default_factory=FragmentsSection)
    markers: MarkersSection = field(default_factory=MarkersSection)
    events: EventsSection = field(default_factory=EventsSection)
    store: StoreSection = field(default_factory=StoreSection)
    notify: NotifySection = field(default_factory=NotifySection)
    fleet: FleetSection = field(default_factory=FleetSection)
    sinks: tuple[SinkSection, ...] = ()

    @property
    def spool_directory(self) -> str:
        """Where the outbox is: [notify] spool_directory, else `spool` in the store directory."""
        if self.notify.spool_directory:
            return self.notify.spool_directory
        return os.path.join(self.store.directory, "spool") if self.store.directory else ""


POSITIVE_FIELDS = {"connect_timeout", "heartbeat_interval", "segment_period", "flush_interval", "max_bytes", "max_flows", "handshake_buffer_bytes", "pattern_depth", "yara_depth", "reassembly_max_bytes", "max_datagrams", "max_per_source", "tcp_timeout", "tcp_closed_timeout", "udp_timeout", "other_timeout", "timeout", "spool_max_bytes", "update_interval", "marker_rate", "marker_burst", "retry_initial", "retry_max", "drain_timeout", "rotate_interval", "snaplen", "buffer_bytes", "workers", "worker_queue_bytes", "stop_timeout"}
MAXIMUM_SECONDS = 7 * 24 * 3600.0
"""No flow or fragment waits longer than a week of capture time."""
MAXIMUM_COUNT = 1 << 40
MAXIMUM_RETENTION_MONTHS = 6
"""CPCE art. L33-14: six months at most."""


def load_config(path: str | None) -> Config:
    """Read and validate a configuration file; None gives the defaults."""
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read configuration: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], origin: str = "configuration") -> Config:
    sections: dict[str, Any] = {}
    section_types = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in section_types:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: {', '.join(section_types)})")
        if name == "sinks":
            sections[name] = _parse_sinks(value, origin)
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table of keys")
        sections[name] = _parse_section(_section_class(name), value, name, origin)
    config = Config(**sections)
    _check_fleet(config, origin)
    return config


def _section_class(name: str) -> type:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}[name]  # type: ignore[return-value]


def _parse_sinks(raw: Any, origin: str) -> tuple[SinkSection, ...]:
    """`[[sinks]]`: each entry checked with the keys of its own type, names unique."""
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ConfigError(f"{origin}: sinks must be written as [[sinks]] tables")
    sinks = []
    for position, entry in enumerate(raw):
        where = f"sinks[{position}]"
        kind = entry.get("type")
        if kind not in SINK_TYPES:
            raise ConfigError(f"{origin}: {where}.type: {'missing' if kind is None else f'unknown sink type {kind!r}'} (known: {', '.join(SINK_TYPES)})")
        allowed = set(COMMON_SINK_KEYS) | SINK_KEYS[kind]
        for key in entry:
            if key not in allowed and key in SinkSection.__dataclass_fields__:
                raise ConfigError(f"{origin}: {where}.{key}: not a key of {kind} sinks (their keys: {', '.join(sorted(allowed))})")
        sink = _parse_section(SinkSection, entry, where, origin)
        _check_sink(sink, entry, f"{origin}: {where}")
        if sink.name in {other.name for other in sinks}:
            raise ConfigError(f"{origin}: {where}.name: {sink.name!r} names two sinks; each needs its own name (it keys its place in the spool)")
        if sink.type == "file" and os.path.abspath(sink.path) in {os.path.abspath(other.path) for other in sinks if other.type == "file"}:
            raise ConfigError(f"{origin}: {where}.path: {sink.path} is the file of another sink; each file sink needs its own")
        sinks.append(sink)
    return tuple(sinks)


def _check_sink(sink: SinkSection, entry: dict, where: str) -> None:
    if not SINK_NAME.fullmatch(sink.name):
        raise ConfigError(f"{where}.name: {'missing' if not sink.name else repr(sink.name)}: every sink needs a name of 1-32 lower-case letters, digits, '-' or '_'")
    if sink.authority and (sink.marker_types or sink.min_severity):
        raise ConfigError(f"{where}: an authority sink receives every event: remove its {'marker_types' if sink.marker_types else 'min_severity'}")
    for marker_type in sink.marker_types:
        if marker_type not in MARKER_TYPES:
            raise ConfigError(f"{where}.marker_types: unknown marker type {marker_type!r} (known: {', '.join(MARKER_TYPES)})")
    if sink.min_severity and sink.min_severity not in SEVERITIES:
        raise ConfigError(f"{where}.min_severity: must be one of {', '.join(SEVERITIES)}, got {sink.min_severity!r}")
    if sink.type == "file" and not sink.path:
        raise ConfigError(f"{where}.path: a file sink needs the path of its JSON Lines file")
    if sink.type == "syslog":
        if sink.transport not in SYSLOG_TRANSPORTS:
            raise ConfigError(f"{where}.transport: must be one of {', '.join(SYSLOG_TRANSPORTS)}, got {sink.transport!r}")
        if sink.facility not in SYSLOG_FACILITIES:
            raise ConfigError(f"{where}.facility: unknown syslog facility {sink.facility!r} (known: {', '.join(SYSLOG_FACILITIES)})")
        if sink.transport == "unix":
            if not sink.path or "address" in entry:
                raise ConfigError(f"{where}.path: a syslog sink over unix needs the socket's path (and no address)")
        else:
            if "path" in entry:
                raise ConfigError(f"{where}.path: only for transport = \"unix\"; over {sink.transport} give address = \"host:port\"")
            split_address(sink.address, f"{where}.address")
    if sink.type == "webhook":
        parsed = urllib.parse.urlsplit(sink.url)
        if any(character.isspace() or not character.isprintable() for character in sink.url) or parsed.username or parsed.password:
            raise ConfigError(f"{where}.url: {sink.url!r} has spaces, control characters or a user name in it; percent-encode the path, and put credentials in hmac_secret_file")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"{where}.url: {sink.url!r} is not an http:// or https:// URL with a host")
        try:
            parsed.port
        except ValueError:
            raise ConfigError(f"{where}.url: {sink.url!r} has an invalid port") from None
        if parsed.scheme == "http" and ("ca_file" in entry or "tls_verify" in entry):
            raise ConfigError(f"{where}.url: ca_file and tls_verify apply to https:// URLs only")


def _check_fleet(config: Config, origin: str) -> None:
    """A `nats` sink needs the bus; a member of the fleet (probe, collector, the security team's
    host) needs a name and site that can be subject tokens: its identity on the bus."""
    fleet = config.fleet
    for url in fleet.servers:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname or parsed.username or parsed.password:
            raise ConfigError(f"{origin}: fleet.servers: {url!r} is not a nats:// or tls:// URL with a host (credentials go in user, password_file, nkey_seed_file or creds_file)")
    if sum(bool(value) for value in (fleet.password_file, fleet.nkey_seed_file, fleet.creds_file)) > 1:
        raise ConfigError(f"{origin}: fleet: give one of password_file, nkey_seed_file and creds_file")
    if bool(fleet.user) != bool(fleet.password_file):
        raise ConfigError(f"{origin}: fleet: user and password_file go together")
    for key in ("stream", "consumer", "status_bucket", "bundle_bucket"):
        value = getattr(fleet, key)
        if value and not BUCKET_NAME.fullmatch(value):
            raise ConfigError(f"{origin}: fleet.{key}: {value!r}: 1-64 letters, digits, '-' or '_'")
    if not fleet.stream or not fleet.consumer:
        raise ConfigError(f"{origin}: fleet: stream and consumer may not be empty")
    nats_sinks = [sink for sink in config.sinks if sink.type == "nats"]
    if nats_sinks and not fleet.servers:
        raise ConfigError(f"{origin}: sinks: nats sink {nats_sinks[0].name!r} needs [fleet] servers")
    if len(nats_sinks) > 1:
        raise ConfigError(f"{origin}: sinks: one nats sink at most (the fleet has one bus)")
    if nats_sinks and nats_sinks[0].max_tlp != "red":
        raise ConfigError(f"{origin}: sinks: nats sink {nats_sinks[0].name!r}: max_tlp must stay red: the collector stores what this probe stores, and its own sinks apply their labels")
    for key in ("name", "site"):
        if fleet.servers and not SUBJECT_TOKEN.fullmatch(getattr(config.probe, key)):
            raise ConfigError(f"{origin}: probe.{key}: {getattr(config.probe, key)!r}: on the fleet's bus this is probe.events.<site>.<name>, heartbeat key <site>.<name> and inbox _INBOX.<site>.<name>, so both must be 1-64 letters, digits, '-' or '_'")


def split_address(address: str, where: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port`."""
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} is not host:port (e.g. \"192.0.2.5:514\" or \"[2001:db8::5]:6514\")")
    return host, int(port)


def _parse_section(cls: type, raw: dict[str, Any], section: str, origin: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        where = f"{origin}: {section}.{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key (known in [{section}]: {', '.join(fields)})")
        expected = fields[key].type
        if expected == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string, got {value!r}")
        elif expected == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
        elif expected == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
            value = float(value)
        elif expected in ("bool | None", "bool"):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
        elif expected == "tuple[str, ...]":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            value = tuple(value)
        elif expected.startswith("dict[str, "):
            item_type = int if expected == "dict[str, int]" else str
            if not isinstance(value, dict) or not all(isinstance(item, item_type) and not isinstance(item, bool) for item in value.values()):
                example = "{ network = 3 }" if item_type is int else '{ ipv4 = "network" }'
                raise ConfigError(f"{where}: expected a table of {item_type.__name__} values, e.g. {example}, got {value!r}")
        if key == "max_tlp" and value not in TLP_LEVELS:
            raise ConfigError(f"{where}: must be one of {', '.join(TLP_LEVELS)}, got {value!r}")
        if section == "store":
            value = _store_value(key, value, where)
        if section in ("capture", "service", "declaration"):
            _live_value(key, value, where)
        if key == "spool_max_bytes" and value < 8192:
            raise ConfigError(f"{where}: must be at least 8192 bytes (the last 4096 are kept for the notification that reports drops), got {value!r}")
        if key in POSITIVE_FIELDS and not 0 < value <= (MAXIMUM_SECONDS if expected == "float" else MAXIMUM_COUNT):
            limit = f"{MAXIMUM_SECONDS:.0f}" + (" per second" if key == "marker_rate" else " seconds") if expected == "float" else f"{MAXIMUM_COUNT}"
            raise ConfigError(f"{where}: must be greater than 0 and at most {limit}, got {value!r}")
        values[key] = value
    if section == "notify" and values.get("retry_initial", NotifySection.retry_initial) > values.get("retry_max", NotifySection.retry_max):
        raise ConfigError(f"{origin}: notify.retry_initial: longer than retry_max; the delay starts at retry_initial and doubles up to retry_max")
    return cls(**values)


def _store_value(key: str, value: Any, where: str) -> Any:
    """The store's keys that the law bounds: retention, class names, subscriber prefixes."""
    if key == "retention_months":
        check_retention_months(value, where)
    elif key == "class_retention_months":
        for name, months in value.items():
            _check_record_class(name, f"{where}.{name}")
            check_retention_months(months, f"{where}.{name}")
    elif key == "class_by_type":
        for marker_type, name in value.items():
            if marker_type not in MARKER_TYPES:
                raise ConfigError(f"{where}.{marker_type}: unknown marker type (known: {', '.join(MARKER_TYPES)})")
            _check_record_class(name, f"{where}.{marker_type}")
    elif key == "subscriber_prefixes":
        for prefix in value:
            try:
                ipaddress.ip_network(prefix)
            except ValueError:
                raise ConfigError(f"{where}: {prefix!r} is not a network in CIDR form (address/length, host bits zero)") from None
    elif key == "segment_period" and not 60 <= value <= 86400:
        raise ConfigError(f"{where}: must be between 60 and 86400 seconds, got {value!r}")
    elif key == "flush_interval" and not 0 < value <= 1.0:
        raise ConfigError(f"{where}: must be greater than 0 and at most 1 second (events are acknowledged within it), got {value!r}")
    return value


def _live_value(key: str, value: Any, where: str) -> None:
    if key == "declared_on":
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a date YYYY-MM-DD") from None
    elif key == "snaplen" and not 64 <= value <= 262144:
        raise ConfigError(f"{where}: must be between 64 and 262144 bytes, got {value!r}")
    elif key == "buffer_bytes" and not 1024**2 <= value <= 1024**3:
        raise ConfigError(f"{where}: must be between 1 MiB and 1 GiB, got {value!r}")
    elif key == "workers" and value > 64:
        raise ConfigError(f"{where}: at most 64 worker processes, got {value!r}")
    elif key == "worker_queue_bytes" and not 8 * 1024**2 <= value <= 1024**3:
        raise ConfigError(f"{where}: must be between 8 MiB (a few capture blocks with their frame tables) and 1 GiB, got {value!r}")
    elif key == "metrics_address" and value:
        split_address(value, where)
    elif key == "interfaces" and len(set(value)) != len(value):
        raise ConfigError(f"{where}: an interface is listed twice")


def check_live(config: Config, origin: str) -> None:
    """What the law and the service need before `probe run` captures anything: a complete
    declaration that covers every interface, a store for the events, and a sink that reaches the
    authority (detected events are notified to it without delay)."""
    declaration = config.declaration
    for key in ("reference", "declared_by", "declared_on"):
        if not getattr(declaration, key):
            raise ConfigError(f"{origin}: declaration.{key}: required by probe run: the deployment must be declared to the authority (CPCE art. L33-14) before it captures")
    if not declaration.interfaces:
        raise ConfigError(f"{origin}: declaration.interfaces: required by probe run: list the interfaces the declaration covers")
    if not config.capture.interfaces:
        raise ConfigError(f"{origin}: capture.interfaces: no interface to capture on")
    undeclared = [name for name in config.capture.interfaces if name not in declaration.interfaces]
    if undeclared:
        raise ConfigError(f"{origin}: capture.interfaces: {', '.join(undeclared)} not covered by the declaration (declaration.interfaces: {', '.join(declaration.interfaces)}); capture there is refused")
    if not config.store.directory:
        raise ConfigError(f"{origin}: store.directory: required by probe run: detected events must be stored")
    if not any(sink.authority for sink in config.sinks):
        raise ConfigError(f"{origin}: sinks: probe run needs a sink with authority = true: detected events are notified to the authority without delay")


def check_retention_months(months: int, where: str) -> None:
    if months > MAXIMUM_RETENTION_MONTHS:
        raise ConfigError(f"{where}: {months} months refused: the law allows keeping the data that characterise a detected event for six months at most (CPCE art. L33-14); set 6 or less")
    if months < 1:
        raise ConfigError(f"{where}: must be at least 1 month, got {months}")


def _check_record_class(name: str, where: str) -> None:
    if not RECORD_CLASS.fullmatch(name) or name in RESERVED_CLASSES:
        raise ConfigError(f"{where}: a record class name is 1-32 lower-case letters, digits, '-' or '_', other than {' and '.join(RESERVED_CLASSES)}")
