"""Command line. Errors a user can act on become one line on stderr and exit code 2."""

from __future__ import annotations

import dataclasses
import sys

import click

from probe.config import Config, load_config
from probe.errors import ProbeError
from probe.fleet_cli import collect_command, fleet_group
from probe.markers_cli import markers_group
from probe.notify.notifier import Notifier, open_notifier
from probe.outbox_cli import outbox_group
from probe.process import forbid_core_dumps, report_to_stderr
from probe.progress import Progress
from probe.service.install import install_service
from probe.service_cli import run_command, status_command
from probe.replay import load_library, run_replay, write_summary
from probe.store.ring import RingStore
from probe.store_cli import now_clock, store_group

EXIT_EVENTS_FOUND = 1
EXIT_ERROR = 2

config_option = click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file (TOML); command-line options override it.")


def fail(message: str) -> None:
    click.echo(f"probe: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="probe")
def main() -> None:
    """Detect technical threat markers in network traffic (CPCE art. L33-14).

    Events hold network metadata and the marker's identity, never payload content.

    \b
    Exit codes of every command:
      0  done
      1  events found and --fail-on-event given (replay); notifications left
         undelivered (outbox deliver); a second SIGTERM stopped run at once
      2  usage or input error, reported on one line
    """
    forbid_core_dumps()
    report_to_stderr()


@main.command("replay")
@click.argument("captures", nargs=-1, required=True, metavar="CAPTURE...")
@click.option("--markers", "marker_paths", multiple=True, metavar="FILE", help="Marker file: a bundle (markers/README.md), or a STIX 2.1, MISP, Zeek intel or plain-list feed, recognised by content. Repeatable. Default: [markers] files of the configuration.")
@click.option("--events", "events_path", metavar="PATH", help="Where to write events as JSON Lines; '-' is standard output (the default).")
@click.option("--fail-on-event", is_flag=True, help="Exit with code 1 when at least one event was found (for CI pipelines).")
@click.option("--store", "store_path", metavar="DIR", help="Also keep every event revision in the ring store in DIR (created 0700). Default: [store] directory of --config.")
@click.option("--now", "now_text", metavar="TIME", help="Judge retention as of this past time (RFC 3339 or a date) instead of the wall clock: events of an old capture are otherwise past their retention and not stored.")
@config_option
def replay_command(captures: tuple[str, ...], marker_paths: tuple[str, ...], events_path: str | None, fail_on_event: bool, store_path: str | None, now_text: str | None, config_path: str | None) -> None:
    """Replay captures against markers and write one event per (flow, marker).

    CAPTURE is a pcap or pcapng file, optionally gzip-compressed, or '-' for standard input;
    several may be given. TCP streams are reassembled per direction and read by content on any
    port (TLS, QUIC Initials, HTTP, DNS, byte patterns, YARA). A summary goes to stderr, with bad
    or evasive input counted by kind (anomalies). Markers are matched as valid at each packet's
    capture time. With [markers] require_signature = true in --config, only bundles signed by a
    key of the trust store load. With [[sinks]] in --config, events and bundle activations are
    notified through them (spooled first; what a sink has not acknowledged after [notify]
    drain_timeout stays spooled for `probe outbox deliver` or the next start).

    \b
    Exit codes:
      0  done
      1  events found and --fail-on-event given
      2  usage or input error (a corrupt capture, a bad marker file...); wins over 1
    """
    store: RingStore | None = None
    notifier: Notifier | None = None
    try:
        config: Config = load_config(config_path)
        paths = list(marker_paths) or list(config.markers.files)
        if not paths:
            fail("no marker file: give --markers FILE or list files in the [markers] section of --config")
        library = load_library(config, paths)  # before the events file is opened (and emptied)
        if store_path:
            config = dataclasses.replace(config, store=dataclasses.replace(config.store, directory=store_path))
        clock = now_clock(now_text)
        store = RingStore(config.store.directory, config.store, clock, config.probe) if config.store.directory else None
        notifier = open_notifier(config, clock)
        target = events_path or config.events.path
        events = sys.stdout if target == "-" else open(target, "w", encoding="utf-8")
    except OSError as error:
        close_outputs(store, notifier)
        fail(f"{error.filename}: cannot write events: {error.strerror}")
    except ProbeError as error:
        close_outputs(store, notifier)
        fail(str(error))
    if config.sinks and not any(sink.authority for sink in config.sinks):
        click.echo("probe: warning: no sink has authority = true: detected events reach no authority (the live service refuses to start so)", err=True)
    if events is sys.stdout and any(sink.type == "stdout" for sink in config.sinks):
        click.echo("probe: warning: events and a stdout sink both write to standard output; their lines may interleave: give --events FILE", err=True)
    try:
        result = run_replay(config, list(captures), library, events, Progress.for_captures(list(captures)), store, notifier, clock)
    except ProbeError as error:
        fail(str(error))
    finally:
        if events is not sys.stdout:
            events.close()
        close_outputs(store, notifier)
    for warning in result.warnings:
        click.echo(f"probe: warning: {warning}", err=True)
    for sink, count in result.undelivered.items():
        click.echo(f"probe: warning: sink {sink}: {count} notifications not yet acknowledged stay in the spool {config.spool_directory}; they are sent at the next start, or by `probe outbox deliver`", err=True)
    write_summary(result)
    if result.capture_errors:
        for error in result.capture_errors:
            click.echo(f"probe: error: {error}", err=True)
        sys.exit(EXIT_ERROR)
    if fail_on_event and result.writer.written:
        sys.exit(EXIT_EVENTS_FOUND)


def close_outputs(store: RingStore | None, notifier: Notifier | None) -> None:
    """Flush and close what a command opened: the store's last records, the outbox's cursors."""
    if notifier is not None:
        notifier.outbox.close()
    if store is not None:
        store.close()


main.add_command(markers_group)
main.add_command(outbox_group)
main.add_command(store_group)
main.add_command(run_command)
main.add_command(status_command)
main.add_command(install_service)
main.add_command(collect_command)
main.add_command(fleet_group)
