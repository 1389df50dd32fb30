"""The configured sinks, built from `[[sinks]]`."""

from __future__ import annotations

from probe.clock import Clock
from probe.config import Config
from probe.notify.sinks import Sink
from probe.notify.sinks.jsonl import FileSink, StdoutSink
from probe.notify.sinks.nats import NatsSink
from probe.notify.sinks.syslog import SyslogSink
from probe.notify.sinks.webhook import WebhookSink
from probe.store.retention import Retention


def build_sinks(config: Config, clock: Clock) -> list[Sink]:
    """Their files, secrets and certificates checked now, before any traffic is read; a problem
    is a `NotifyError` naming the sink and its key."""
    retention = Retention(config.store)
    shortest = min([retention.default_months, *retention.class_months.values()])
    sinks: list[Sink] = []
    for section in config.sinks:
        if section.type == "file":
            sinks.append(FileSink(section, clock, shortest))
        elif section.type == "stdout":
            sinks.append(StdoutSink(section))
        elif section.type == "syslog":
            sinks.append(SyslogSink(section, config.probe.name))
        elif section.type == "nats":
            sinks.append(NatsSink(section, config))
        else:
            sinks.append(WebhookSink(section))
    return sinks
