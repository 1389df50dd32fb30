"""`probe collect` (the fleet's collector) and `probe fleet setup/status`."""

from __future__ import annotations

import logging
import time

import click

from probe.config import load_config
from probe.errors import ProbeError
from probe.fleet.collector import Collector
from probe.fleet.heartbeat import read_heartbeats
from probe.fleet.setup import setup_bus
from probe.store_cli import fail, now_clock


config_required = click.option("--config", "config_path", required=True, metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file (TOML) with a [fleet] section.")


@click.command("collect")
@config_required
@click.option("--now", "now_text", metavar="TIME", help="Judge retention as of this past time (RFC 3339 or a date) instead of the wall clock: for tests and replayed captures, whose events are otherwise past their retention and not stored.")
def collect_command(config_path: str, now_text: str | None) -> None:
    """Store and forward the fleet's events, until SIGTERM.

    Consumes the [fleet] stream with its durable consumer, stores each event revision once in the
    [store] directory (same format, retention and minimisation as a probe's store: `probe store
    query/export/subscribers/audit --config` work on it across the fleet, each event naming the
    probe whose subject it came on), forwards every notification to the [[sinks]] (the
    authority's), and acknowledges a message only once the store has fsync'd it and the outbox
    holds it. A message it cannot read is logged with the reason, acknowledged and dropped.
    """
    logger = logging.getLogger("probe")
    logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        handler.setLevel(logging.INFO)
    try:
        collector = Collector(load_config(config_path), now_clock(now_text))
        collector.run()
    except ProbeError as error:
        fail(str(error))


@click.group("fleet")
def fleet_group() -> None:
    """The fleet's bus: set it up, see its probes."""


@fleet_group.command("setup")
@config_required
@click.option("--replicas", type=click.IntRange(1, 5), default=3, show_default=True, help="Copies of the stream and buckets (3: one server may be lost).")
def setup_command(config_path: str, replicas: int) -> None:
    """Create or update the events stream, the status bucket and the bundle bucket."""
    try:
        for line in setup_bus(load_config(config_path), replicas):
            click.echo(line)
    except ProbeError as error:
        fail(str(error))


@fleet_group.command("status")
@config_required
@click.option("--stale", type=float, default=3.0, show_default=True, help="A probe whose last heartbeat is older than this many heartbeat intervals is marked STALE.")
def status_command(config_path: str, stale: float) -> None:
    """Each probe's active bundles, last heartbeat, packets/s and event counts."""
    try:
        config = load_config(config_path)
        heartbeats = read_heartbeats(config)
    except ProbeError as error:
        fail(str(error))
    now = time.time()
    click.echo(f"{'probe':<32} {'heartbeat':>10} {'packets/s':>10} {'events':>8}  bundles")
    for key, beat in sorted(heartbeats.items()):
        age = now - beat["time"]
        late = " STALE" if age > stale * beat.get("interval", config.fleet.heartbeat_interval) else ""
        bundles = ", ".join(f"{bundle['issuer']}/{bundle['id']} v{bundle['version']}" for bundle in beat["bundles"]) or "-"
        refused = f"; refused: {beat['refused']}" if beat.get("refused") else ""
        click.echo(f"{key:<32} {age:>8.0f} s {beat['packets_per_second']:>10,.0f} {beat['events']:>8}  {bundles}{refused}{late}")
    if not heartbeats:
        click.echo(f"no probe has sent a heartbeat to bucket {config.fleet.status_bucket}")
