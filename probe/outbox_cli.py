"""`probe outbox deliver`: send what the notification spool still holds, then stop.

For after an outage: the receiver is back and the probe that spooled the notifications has
stopped (a replay ended before its sinks acknowledged everything). The live service does this by
itself at every start.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from probe.config import load_config
from probe.errors import ConfigError, ProbeError
from probe.notify.delivery import SinkStatistics
from probe.notify.outbox import Outbox
from probe.store_cli import fail, now_clock

EXIT_UNDELIVERED = 1


@click.group("outbox")
def outbox_group() -> None:
    """The notification spool: what the sinks of [[sinks]] have not acknowledged yet."""


@outbox_group.command("deliver")
@click.option("--config", "config_path", required=True, metavar="PATH", type=click.Path(dir_okay=False), help="Configuration file: its [[sinks]], and where the spool is ([notify] spool_directory, else [store] directory).")
@click.option("--spool", "spool_path", metavar="DIR", help="Spool directory. Default: from --config.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0), help="Seconds to keep trying sinks that do not acknowledge (retried with backoff, [notify] retry_initial to retry_max).")
@click.option("--now", "now_text", metavar="TIME", help="Judge retention as of this past time (RFC 3339 or a date): a notification past its retention is deleted, never sent.")
def deliver_command(config_path: str, spool_path: str | None, timeout: float, now_text: str | None) -> None:
    """Deliver every spooled notification, in order, to each sink; exit once all are
    acknowledged or after --timeout.

    \b
    Exit codes:
      0  the spool is empty: every sink acknowledged everything
      1  notifications are left (listed per sink on stderr); run again later
      2  usage or configuration error
    """
    try:
        config = load_config(config_path)
        if spool_path:
            config = dataclasses.replace(config, notify=dataclasses.replace(config.notify, spool_directory=spool_path))
        if not config.sinks:
            raise ConfigError(f"{config_path}: no [[sinks]]: nothing to deliver to")
        if not os.path.isdir(config.spool_directory):
            raise ConfigError(f"{config.spool_directory or '(none)'}: no spool there; give the spool directory the probe used (--spool, [notify] spool_directory, or spool/ in [store] directory)")
        outbox = Outbox(config, now_clock(now_text))
    except ProbeError as error:
        fail(str(error))
    try:
        waiting = outbox.pending()
        left = outbox.drain(timeout)
    finally:
        outbox.close()
    for sink in outbox.sinks:
        statistics = outbox.statistics.get(sink.name, SinkStatistics())
        click.echo(f"probe: sink {sink.name} ({sink.describe()}): {waiting[sink.name]} waiting, {statistics.delivered} delivered, {statistics.filtered} filtered out" + (f", {left[sink.name]} LEFT after {statistics.failures} failed attempts" if sink.name in left else ""), err=True)
    if left:
        sys.exit(EXIT_UNDELIVERED)
