"""`probe run` (the live service) and `probe status` (its figures, from another shell)."""

from __future__ import annotations

import json
import logging
import sys

import click

from probe.clock import Clock
from probe.config import load_config
from probe.errors import ProbeError
from probe.service.run import Service
from probe.service.status import read_status


def _fail(message: str) -> None:
    click.echo(f"probe: error: {message}", err=True)
    sys.exit(2)


@click.command("run")
@click.option("--config", "config_path", required=True, metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file (TOML): [declaration], [capture], [service], [markers], [store] and [[sinks]] are required or checked at start.")
def run_command(config_path: str) -> None:
    """Capture on the configured interfaces and detect, until SIGTERM.

    Refuses to start without a complete [declaration] that covers every capture interface, a
    [store] directory and a sink with authority = true. SIGHUP reloads the marker bundles
    ([markers]); SIGTERM stops capture, lets the workers end their flows, flushes store and
    outbox and exits 0 within [service] stop_timeout; a second SIGTERM exits at once. Under
    systemd (Type=notify) it reports READY, STATUS, STOPPING and pings the watchdog.
    """
    logger = logging.getLogger("probe")
    logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        handler.setLevel(logging.INFO)
    try:
        service = Service(config_path, Clock())
        service.run()
    except ProbeError as error:
        _fail(str(error))


@click.command("status")
@click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False), help="Configuration of the running probe (its [service] control_socket).")
@click.option("--socket", "socket_path", metavar="PATH", help="Control socket to read, instead of the configuration's.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON (the figures the metrics endpoint serves).")
def status_command(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """Figures of a running probe: capture, kernel drops, workers, events, bundles, store, outbox."""
    try:
        status = read_status(socket_path or load_config(config_path).service.control_socket)
    except ProbeError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    probe = status["probe"]
    click.echo(f"probe {probe['name']} (site {probe['site'] or '-'}), pid {probe['pid']}, up {probe['uptime_seconds']} s, declaration {probe['declaration']}")
    for name, interface in status["interfaces"].items():
        click.echo(f"  interface {name}: {interface['frames']} frames, {interface['bytes']} bytes, kernel: {interface['received']} received, {interface['dropped']} dropped")
    for worker in status["workers"]:
        click.echo(f"  worker {worker['worker']} (pid {worker['pid']}): {worker.get('packets', 0)} packets ({worker['packets_per_second']}/s), {worker.get('flows_active', 0)} flows, {worker.get('decode_errors', 0)} decode errors, {sum(worker.get('anomalies', {}).values())} anomalies, queue {worker['queue_bytes']} bytes, {worker['dispatch_dropped_frames']} frames dropped at the queue")
    events = status["events"]
    by_type = ", ".join(f"{name} {count}" for name, count in sorted(events["by_marker_type"].items())) or "none"
    click.echo(f"  events: {events['total']} ({by_type})")
    for bundle in status["bundles"]:
        click.echo(f"  bundle {bundle['issuer']}/{bundle['id']} version {bundle['version']}, active for {bundle['age_seconds']} s")
    store = status["store"]
    oldest = "none" if store["oldest_record_age_seconds"] is None else f"{store['oldest_record_age_seconds']} s old"
    click.echo(f"  store: {store['bytes']} bytes, oldest record {oldest}")
    outbox = status["outbox"]
    for name, sink in outbox["sinks"].items():
        click.echo(f"  sink {name}: {sink['delivered']} delivered, {sink['pending']} pending, {sink['failures']} failures")
    click.echo(f"  outbox: {outbox['dropped']} notifications dropped at the spool's cap")
