"""The probe's one configuration file: TOML, loaded and validated here and nowhere else.

Every command takes `--config PATH`; its command-line options override the file. Each section is a
dataclass whose fields are the keys a user may write; an unknown key, a wrong type or a value out of
range is refused with the key's full name, so a typo never silently falls back to a default.
`systemd/probe.toml` is the commented example of every key.
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.errors import ConfigError
from probe.match.markers import TLP_LEVELS


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
class Config:
    probe: ProbeSection = field(default_factory=ProbeSection)
    flows: FlowsSection = field(default_factory=FlowsSection)
    fragments: FragmentsSection = field(default_factory=FragmentsSection)
    markers: MarkersSection = field(default_factory=MarkersSection)
    events: EventsSection = field(default_factory=EventsSection)


POSITIVE_FIELDS = {"max_flows", "handshake_buffer_bytes", "max_datagrams", "max_per_source", "max_bytes", "tcp_timeout", "tcp_closed_timeout", "udp_timeout", "other_timeout", "timeout"}
MAXIMUM_SECONDS = 7 * 24 * 3600.0
"""No flow or fragment waits longer than a week of capture time."""
MAXIMUM_COUNT = 1 << 40


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
        if key == "max_tlp" and value not in TLP_LEVELS:
            raise ConfigError(f"{where}: must be one of {', '.join(TLP_LEVELS)}, got {value!r}")
        if key in POSITIVE_FIELDS and not 0 < value <= (MAXIMUM_SECONDS if expected == "float" else MAXIMUM_COUNT):
            limit = f"{MAXIMUM_SECONDS:.0f} seconds" if expected == "float" else f"{MAXIMUM_COUNT}"
            raise ConfigError(f"{where}: must be greater than 0 and at most {limit}, got {value!r}")
        values[key] = value
    return cls(**values)
