"""The probe's one configuration file: TOML, loaded and validated here and nowhere else.

Every command takes `--config PATH`; its command-line options override the file. Each section is a
dataclass whose fields are the keys a user may write; an unknown key, a wrong type or a value out of
range is refused with the key's full name, so a typo never silently falls back to a default.
`systemd/probe.toml` is the commented example of every key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.errors import ConfigError
from probe.bundles.values import MARKER_TYPES
from probe.match.markers import RECORD_CLASS, RESERVED_CLASSES, TLP_LEVELS


@dataclass(frozen=True)
class ProbeSection:
    name: str = field(default_factory=socket.gethostname)
    """Name of this probe, written into every event (`probe.name`)."""
    site: str = ""
    """Site or tap point this probe watches (`probe.site`)."""


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
    """Per-flow bound on buffered client bytes while a TLS ClientHello or HTTP headers are incomplete."""


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
class Config:
    probe: ProbeSection = field(default_factory=ProbeSection)
    flows: FlowsSection = field(default_factory=FlowsSection)
    fragments: FragmentsSection = field(default_factory=FragmentsSection)
    markers: MarkersSection = field(default_factory=MarkersSection)
    events: EventsSection = field(default_factory=EventsSection)
    store: StoreSection = field(default_factory=StoreSection)


POSITIVE_FIELDS = {"segment_period", "flush_interval", "max_bytes", "max_flows", "handshake_buffer_bytes", "max_datagrams", "max_per_source", "max_bytes", "tcp_timeout", "tcp_closed_timeout", "udp_timeout", "other_timeout", "timeout"}
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
    sections = {}
    section_types = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in section_types:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: {', '.join(section_types)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table of keys")
        sections[name] = _parse_section(_section_class(name), value, name, origin)
    return Config(**sections)


def _section_class(name: str) -> type:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}[name]  # type: ignore[return-value]


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
        elif expected == "bool | None":
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
        if key in POSITIVE_FIELDS and not 0 < value <= (MAXIMUM_SECONDS if expected == "float" else MAXIMUM_COUNT):
            limit = f"{MAXIMUM_SECONDS:.0f} seconds" if expected == "float" else f"{MAXIMUM_COUNT}"
            raise ConfigError(f"{where}: must be greater than 0 and at most {limit}, got {value!r}")
        values[key] = value
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


def check_retention_months(months: int, where: str) -> None:
    if months > MAXIMUM_RETENTION_MONTHS:
        raise ConfigError(f"{where}: {months} months refused: the law allows keeping the data that characterise a detected event for six months at most (CPCE art. L33-14); set 6 or less")
    if months < 1:
        raise ConfigError(f"{where}: must be at least 1 month, got {months}")


def _check_record_class(name: str, where: str) -> None:
    if not RECORD_CLASS.fullmatch(name) or name in RESERVED_CLASSES:
        raise ConfigError(f"{where}: a record class name is 1-32 lower-case letters, digits, '-' or '_', other than {' and '.join(RESERVED_CLASSES)}")
