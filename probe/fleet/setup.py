"""`probe fleet setup`: the stream and buckets a fleet needs, created or brought to the settings
the README explains.

- Events stream: subjects `probe.events.>`, work-queue retention (a message acknowledged by the
  collector leaves the stream: nothing stays on the bus longer than it takes to store it), file
  storage, `replicas` copies (3 survives the loss of one server), `max_age` no longer than the
  collector's store keeps events (28-day months: shorter than any calendar month), and
  JetStream's duplicate window for the `Nats-Msg-Id` of each notification.
- Status bucket: one key per probe, its last heartbeat only.
- Bundle bucket (when `[fleet] bundle_bucket` is set): the signed bundles probes fetch.
"""

from __future__ import annotations

from nats.js.api import KeyValueConfig, ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig
import nats.js.errors

from probe.config import Config
from probe.fleet.bus import EVENT_SUBJECTS, Bus

DAY = 86400.0
DUPLICATE_WINDOW = 120.0


def stream_config(config: Config, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=config.fleet.stream, subjects=[EVENT_SUBJECTS], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        num_replicas=replicas, max_age=config.store.retention_months * 28 * DAY, duplicate_window=DUPLICATE_WINDOW,
    )


def setup_bus(config: Config, replicas: int) -> list[str]:
    """Create or update the stream and buckets; one line per thing done."""
    with Bus(config.fleet, config.probe, "probe fleet setup") as bus:
        return bus.call(_setup(bus, config, replicas), config.fleet.connect_timeout * 4 + 1)


async def _setup(bus: Bus, config: Config, replicas: int) -> list[str]:
    jetstream = bus.jetstream
    fleet = config.fleet
    done = []
    wanted = stream_config(config, replicas)
    try:
        await jetstream.stream_info(fleet.stream)
        await jetstream.update_stream(wanted)
        done.append(f"stream {fleet.stream}: updated")
    except nats.js.errors.NotFoundError:
        await jetstream.add_stream(wanted)
        done.append(f"stream {fleet.stream}: created")
    done[-1] += f" (subjects {EVENT_SUBJECTS}, work-queue retention, {replicas} replica(s), max_age {wanted.max_age / DAY:.0f} days, duplicate window {DUPLICATE_WINDOW:.0f} s)"
    if fleet.status_bucket:
        await jetstream.create_key_value(KeyValueConfig(bucket=fleet.status_bucket, history=1, replicas=replicas, storage=StorageType.FILE))
        # A heartbeat is a plain put. With rollups allowed, a probe's put to its own key with a
        # `Nats-Rollup: all` header would wipe every other probe's (subject rights cannot stop it).
        status = (await jetstream.stream_info(f"KV_{fleet.status_bucket}")).config
        if status.allow_rollup_hdrs:
            status.allow_rollup_hdrs = False
            await jetstream.update_stream(status)
        done.append(f"key-value bucket {fleet.status_bucket}: ready (heartbeats; no rollups)")
    if fleet.bundle_bucket:
        await jetstream.create_object_store(fleet.bundle_bucket, ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE))
        done.append(f"object bucket {fleet.bundle_bucket}: ready (bundles)")
    return done
