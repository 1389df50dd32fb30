"""`probe store ...`: query, export, subscriber lists, audit log, statistics and purge of the ring store.

Every command that returns events (query, export, subscribers) and the audit reader require
`--purpose`, and append an audit record (who, when, what, why, how many) before showing anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from probe.clock import NANOSECONDS, Clock, parse_instant
from probe.config import Config, load_config
from probe.errors import ProbeError, StoreError
from probe.record.events import Event, rfc3339
from probe.store.audit import audit, audit_records, format_audit, require_purpose
from probe.store.export import export_stix
from probe.store.query import EventFilter, format_events, format_subscribers, latest_events, parse_network, subscriber_rows
from probe.store.retention import AUDIT_CLASS, BUNDLES_CLASS
from probe.store.ring import RingStore

EXIT_ERROR = 2


def fail(message: str) -> None:
    click.echo(f"probe: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def store_options(command: Callable) -> Callable:
    command = click.option("--now", "now_text", metavar="TIME", help="Judge retention as of this past time (RFC 3339 or a date) instead of the wall clock: for tests and replays of old captures. Audit records keep the real time.")(command)
    command = click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file; its [store] section gives the directory, retention and subscriber prefixes.")(command)
    return click.option("--store", "store_path", metavar="DIR", help="Store directory. Default: [store] directory of --config.")(command)


def purpose_option(command: Callable) -> Callable:
    return click.option("--purpose", required=True, metavar="TEXT", help="Why the data is read (required; written to the audit log with your user name).")(command)


def time_options(command: Callable) -> Callable:
    command = click.option("--until", "until_text", metavar="TIME", help="Events that began before this time (RFC 3339 or a date, UTC).")(command)
    return click.option("--since", "since_text", metavar="TIME", help="Events that lasted until this time or later (RFC 3339 or a date, UTC).")(command)


def open_store(store_path: str | None, config_path: str | None, now_text: str | None, writable: bool = False) -> tuple[Config, RingStore]:
    config = load_config(config_path)
    directory = store_path or config.store.directory
    if not directory:
        raise StoreError("no store directory: give --store DIR or set [store] directory in --config")
    return config, RingStore(directory, config.store, now_clock(now_text), config.probe, writable=writable)


def now_clock(now_text: str | None) -> Clock:
    """The wall clock, or the past instant `--now` gives. A future one is refused: judged from
    the future, records the law still allows to keep would be purged."""
    if not now_text:
        return Clock()
    fixed = _instant(now_text, "--now")
    assert fixed is not None
    if fixed > Clock().now():
        raise StoreError(f"--now {now_text}: later than the current time; --now looks back (what was kept, what a purge then removed), never ahead")
    return Clock(fixed)


def _instant(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError as error:
        raise StoreError(f"{option}: {error}") from None


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except ProbeError as error:
        fail(str(error))


@click.group("store")
def store_group() -> None:
    """The ring store of detected events: query, export, subscribers, audit, stats, purge.

    Events are kept at most six calendar months after their last packet (CPCE art. L33-14), less
    for classes the configuration limits. Reading events requires --purpose and is audited.
    """


@store_group.command("query")
@time_options
@click.option("--marker", metavar="ID", help="Events of this marker (its id, or bundle/id).")
@click.option("--ip", "ip_text", metavar="ADDR|CIDR", help="Events where either side is this address or inside this network.")
@click.option("--event", "event_id", metavar="ID", help="One event, by its event_id.")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True)
@purpose_option
@store_options
def query_command(since_text: str | None, until_text: str | None, marker: str | None, ip_text: str | None, event_id: str | None, output_format: str, purpose: str, store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """Events (each at its latest revision) matching every filter given, oldest first."""

    def run() -> None:
        require_purpose(purpose)
        config, store = open_store(store_path, config_path, now_text)
        event_filter = EventFilter(_instant(since_text, "--since"), _instant(until_text, "--until"), marker, parse_network(ip_text) if ip_text else None, event_id)
        events = latest_events(store, event_filter)
        audit(store, "query", {"since": since_text, "until": until_text, "marker": marker, "ip": ip_text, "event": event_id, "format": output_format, "now": now_text}, purpose, len(events))
        click.echo(format_events(events, output_format, config.probe, config.events.max_tlp), nl=False)
        _report_problems(store)

    _run(run)


@store_group.command("export")
@click.option("--for-authority", is_flag=True, required=True, help="Required: this export is characterisation data for the national authority (CPCE art. L2321-3).")
@click.option("--event", "event_id", metavar="ID", help="One event, by its event_id.")
@click.option("--marker", metavar="ID", help="Every event of one marker (its id, or bundle/id).")
@time_options
@click.option("--format", "output_format", type=click.Choice(["jsonl", "stix"]), default="jsonl", show_default=True, help="stix: a STIX 2.1 bundle of sightings of the markers' indicators, with observed-data holding only the events' metadata.")
@purpose_option
@store_options
def export_command(for_authority: bool, event_id: str | None, marker: str | None, since_text: str | None, until_text: str | None, output_format: str, purpose: str, store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """Export events for the authority: one event (--event) or every event of a marker (--marker)."""

    def run() -> None:
        require_purpose(purpose)
        if not (event_id or marker) or (event_id and marker):
            raise StoreError("give exactly one of --event ID and --marker ID: an export characterises one event or one marker's events")
        config, store = open_store(store_path, config_path, now_text)
        events = latest_events(store, EventFilter(_instant(since_text, "--since"), _instant(until_text, "--until"), marker, None, event_id))
        audit(store, "export", {"for_authority": for_authority, "event": event_id, "marker": marker, "since": since_text, "until": until_text, "format": output_format, "now": now_text}, purpose, len(events))
        click.echo(export_stix(events, config.probe) if output_format == "stix" else format_events(events, "jsonl", config.probe, config.events.max_tlp), nl=False)
        _report_problems(store)

    _run(run)


@store_group.command("subscribers")
@time_options
@click.option("--prefix", "prefix_text", metavar="CIDR", help="Only subscriber addresses in this network (inside [store] subscriber_prefixes).")
@purpose_option
@store_options
def subscribers_command(since_text: str | None, until_text: str | None, prefix_text: str | None, purpose: str, store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """CSV of the events that concern each subscriber address, for a customer-care system.

    Subscriber addresses are those in [store] subscriber_prefixes of --config. One row per
    (subscriber address, event): its port, the exact first and last times (needed to find a
    subscriber behind carrier-grade NAT), the peer, and the marker.
    """

    def run() -> None:
        require_purpose(purpose)
        config, store = open_store(store_path, config_path, now_text)
        prefixes = [parse_network(text) for text in config.store.subscriber_prefixes]
        if not prefixes:
            raise StoreError("no subscriber address space: set [store] subscriber_prefixes in --config (the operator's own prefixes)")
        if prefix_text:
            wanted = parse_network(prefix_text)
            if not any(wanted.version == prefix.version and wanted.subnet_of(prefix) for prefix in prefixes):  # type: ignore[arg-type]
                raise StoreError(f"--prefix {prefix_text} is not inside the subscriber prefixes ({', '.join(config.store.subscriber_prefixes)})")
            prefixes = [wanted]
        since, until = _instant(since_text, "--since"), _instant(until_text, "--until")
        events: dict[tuple, Event] = {}
        for prefix in prefixes:
            for event in latest_events(store, EventFilter(since, until, None, prefix)):
                events[event.event_id, event.observer] = event
        rows = subscriber_rows(sorted(events.values(), key=lambda event: event.first_seen), prefixes, config.events.max_tlp)
        audit(store, "subscribers", {"since": since_text, "until": until_text, "prefix": prefix_text, "now": now_text}, purpose, len(rows))
        click.echo(format_subscribers(rows), nl=False)
        _report_problems(store)

    _run(run)


@store_group.command("audit")
@time_options
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@purpose_option
@store_options
def audit_command(since_text: str | None, until_text: str | None, output_format: str, purpose: str, store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """The audit log: every query and export (time, user, command, filters, purpose, records returned).

    Reading it is audited too: its filters can hold addresses.
    """

    def run() -> None:
        require_purpose(purpose)
        _, store = open_store(store_path, config_path, now_text)
        records = audit_records(store, _instant(since_text, "--since"), _instant(until_text, "--until"))
        audit(store, "audit", {"since": since_text, "until": until_text, "format": output_format, "now": now_text}, purpose, len(records))
        click.echo(format_audit(records, output_format), nl=False)

    _run(run)


@store_group.command("stats")
@store_options
def stats_command(store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """Segments, records by class and by marker, oldest and newest, bytes, time to next expiry."""

    def run() -> None:
        _, store = open_store(store_path, config_path, now_text)
        click.echo(format_stats(store), nl=False)

    _run(run)


@store_group.command("purge")
@store_options
def purge_command(store_path: str | None, config_path: str | None, now_text: str | None) -> None:
    """Delete now every segment whose records have all expired (done also at every open, and
    continuously by the writing probe). Torn tails left by a crash are truncated and reported."""

    def run() -> None:
        _, store = open_store(store_path, config_path, now_text, writable=True)
        with store:
            for line in store.recovered:
                click.echo(f"probe: recovered: {line}", err=True)
            click.echo(f"purged {store.purged_segments} segment(s); {len(store.summaries)} remain")

    _run(run)


def format_stats(store: RingStore) -> str:
    segments = store.segments()
    now = store.clock.now()
    by_class: dict[str, list[int]] = {}
    by_marker: dict[str, int] = {}
    for summary in segments:
        entry = by_class.setdefault(summary.record_class, [0, 0, 0])
        entry[0] += 1
        entry[1] += summary.records
        entry[2] += summary.length
        for marker, count in summary.markers.items():
            by_marker[marker] = by_marker.get(marker, 0) + count
    times = [summary.time_min for summary in segments if summary.time_min is not None] + [summary.time_max for summary in segments if summary.time_max is not None]
    expiries = [store.retention.expiry(summary.record_class, summary.time_min) for summary in segments if summary.time_min is not None]
    lines = [
        f"store: {store.directory}",
        f"segments: {len(segments)}  bytes: {store.total_bytes()} (max_bytes {store.section.max_bytes})",
        f"oldest record: {rfc3339(min(times)) if times else '-'}  newest: {rfc3339(max(times)) if times else '-'}",
        f"next expiry: {_until(min(expiries) - now) if expiries else '-'}",
    ]
    for record_class, (count, records, size) in sorted(by_class.items()):
        kind = "bundle history" if record_class == BUNDLES_CLASS else "audit log" if record_class == AUDIT_CLASS else f"events, kept {store.retention.months(record_class)} months"
        lines.append(f"class {record_class} ({kind}): {count} segments, {records} records, {size} bytes")
    for marker, count in sorted(by_marker.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"marker {marker}: {count} records")
    return "\n".join(lines) + "\n"


def _until(nanoseconds: int) -> str:
    if nanoseconds <= 0:
        return "due now (purged at the next open or purge)"
    seconds = nanoseconds // NANOSECONDS
    days, rest = divmod(seconds, 86400)
    return f"in {days} d {rest // 3600} h {rest % 3600 // 60} min"


def _report_problems(store: RingStore) -> None:
    for problem in store.problems:
        click.echo(f"probe: warning: {problem}", err=True)
