"""The fleet over a real NATS JetStream bus (nats-server started by the tests on loopback): probes
publish with the `nats` sink, `probe collect` stores each event revision exactly once, bundles
travel over the bus and are checked by every probe, heartbeats reach `probe fleet status`.

Exactly once is checked on the collector's raw store: every (event id, revision) record it holds,
read in-process, not only the latest revisions `probe store query` prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

from natsserver import NATS_SERVER_MISSING, NatsCluster, NatsServer, consumer_state, nats_server_path, stored_revisions

PROBE = str(Path(sys.executable).with_name("probe"))
pytestmark = pytest.mark.skipif(nats_server_path() is None, reason=NATS_SERVER_MISSING)

MARKED = [f"198.51.100.{host}" for host in range(1, 11)]
"""Addresses the synthetic captures' flows go to, each one a marker."""


def synthetic_capture(path: Path, flows: int, seed: int, start: float) -> None:
    """`flows` UDP flows (two packets each, a query and an answer) between distinct clients and
    the marked addresses: one event per flow, with a detection and an end revision."""
    generator = random.Random(seed)
    records = []
    for flow in range(flows):
        client = bytes([10, seed % 256, flow // 256 % 256, flow % 256])
        server = bytes(int(part) for part in MARKED[flow % len(MARKED)].split("."))
        port = 1024 + generator.randrange(60000)
        for offset, (source, destination, source_port, destination_port) in enumerate(((client, server, port, 53), (server, client, 53, port))):
            payload = bytes(24)
            udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, source, destination) + udp
            frame = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip
            moment = start + flow * 0.001 + offset * 0.0001
            records.append(struct.pack("<IIII", int(moment), int(moment % 1 * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(records))


def marker_bundle(path: Path, version: int = 1, issuer: str = "fleet-test") -> Path:
    markers = [{"id": f"marked-{position}", "type": "ipv4", "value": address} for position, address in enumerate(MARKED)]
    path.write_text(json.dumps({"id": "fleet", "issuer": issuer, "version": version, "created": "2026-11-01T00:00:00Z", "markers": markers}))
    return path


def configuration(directory: Path, name: str, servers: list[str], sink: bool = True, extra: str = "", site: str = "test") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""
[probe]
name = "{name}"
site = "{site}"
[store]
directory = "{directory}/store"
[notify]
retry_initial = 0.2
retry_max = 1.0
drain_timeout = 20.0
[fleet]
servers = {json.dumps(servers)}
connect_timeout = 2.0
heartbeat_interval = 1.0
{extra}
"""
    if sink:
        text += '[[sinks]]\nname = "fleet"\ntype = "nats"\nauthority = true\n'
    path = directory / "probe.toml"
    path.write_text(text)
    return path


def run(*arguments: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([PROBE, *arguments], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"probe {' '.join(arguments)}: {result.stderr}"
    return result


def replay(config: Path, capture: Path, bundle: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run("replay", str(capture), "--markers", str(bundle), "--config", str(config), "--events", str(config.parent / f"events-{capture.stem}.jsonl"), check=check)


def setup_bus(directory: Path, servers: list[str], replicas: int) -> Path:
    config = configuration(directory / "admin", "admin", servers, sink=False)
    run("fleet", "setup", "--config", str(config), "--replicas", str(replicas))
    return config


def replay_probes(directory: Path, servers: list[str], captures: list[Path], bundle: Path) -> list[Path]:
    """One probe per capture, each replaying it with a nats sink; their configurations."""
    configs = []
    for number, capture in enumerate(captures):
        config = configuration(directory / f"probe{number}", f"probe{number}", servers)
        result = replay(config, capture, bundle)
        assert "0 waiting in the spool" in result.stderr, result.stderr
        configs.append(config)
    return configs


def run_async(coroutine):
    """Like asyncio.run, without leaving the main thread with no event loop (pyshark's tests
    that run later in the same process need one)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (nats.errors.Error, OSError, asyncio.TimeoutError):  # a cluster electing a leader
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Collector:
    def __init__(self, directory: Path, servers: list[str], config: Path | None = None) -> None:
        """`servers`: where the test watches the stream from; `config`: the collector's own, when
        it is not made here."""
        self.config = config or configuration(directory, "collector", servers, sink=False)
        self.servers = servers
        self.process: subprocess.Popen | None = None

    def start(self) -> Collector:
        self.process = subprocess.Popen([PROBE, "collect", "--config", str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        STARTED.append(self.process)
        return self

    def drain(self, timeout: float = 60) -> str:
        """Wait until the stream is empty (work-queue: acknowledged messages leave it), then stop;
        what the collector logged."""
        wait_for(lambda: consumer_state(self.servers) == (0, 0, 0), timeout, "the collector to acknowledge every message")
        return self.stop()

    def stop(self) -> str:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, errors
        return errors

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.communicate()

    def records(self) -> Counter:
        """Every stored (event id, revision), counted."""
        return stored_revisions(self.config)

def probe_records(config: Path) -> set[tuple[str, int]]:
    """Every (event id, revision) a probe stored itself: what the collector must hold once."""
    return set(stored_revisions(config))


STARTED: list[subprocess.Popen] = []
"""Collector processes, killed after each test whatever its outcome."""


@pytest.fixture(autouse=True)
def no_collector_left():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def server(tmp_path):
    node = NatsServer(tmp_path / "nats").start()
    yield node
    node.stop()


@pytest.fixture
def captures(tmp_path) -> list[Path]:
    """Three captures of distinct flows, from a day ago (inside any retention)."""
    start = time.time() - 86400
    paths = []
    for seed in range(3):
        path = tmp_path / f"capture-{seed}.pcap"
        synthetic_capture(path, 400, seed + 1, start + seed * 10)
        paths.append(path)
    return paths


def test_three_probes_one_collector_each_event_once(server, captures, tmp_path) -> None:
    bundle = marker_bundle(tmp_path / "bundle.json")
    setup_bus(tmp_path, [server.url], 1)
    probes = replay_probes(tmp_path, [server.url], captures, bundle)
    collector = Collector(tmp_path / "collector", [server.url]).start()
    collector.drain()
    held = collector.records()
    expected = set().union(*(probe_records(config) for config in probes))
    assert len(expected) == 3 * 400 * 2, "each flow: a detection and its end"
    assert set(held) == expected
    assert max(held.values()) == 1
    query = run("store", "query", "--config", str(collector.config), "--format", "jsonl", "--purpose", "fleet test").stdout.splitlines()
    assert len(query) == 3 * 400
    seen_by = {(json.loads(line)["src_ip"].split(".")[1], json.loads(line)["probe"]["name"], json.loads(line)["probe"]["site"]) for line in query}
    assert seen_by == {("1", "probe0", "test"), ("2", "probe1", "test"), ("3", "probe2", "test")}, "each event names the probe that saw it, not the collector"
    table = run("store", "query", "--config", str(collector.config), "--purpose", "fleet test").stdout.splitlines()
    assert table[0].split()[-1] == "probe" and {line.split()[-1] for line in table[1:]} == {"probe0", "probe1", "probe2"}


def test_collector_killed_mid_batch_loses_nothing_and_stores_nothing_twice(server, captures, tmp_path) -> None:
    bundle = marker_bundle(tmp_path / "bundle.json")
    setup_bus(tmp_path, [server.url], 1)
    probes = replay_probes(tmp_path, [server.url], captures, bundle)
    collector = Collector(tmp_path / "collector", [server.url])
    kills = 0
    waiting = consumer_state([server.url])[0]
    for _ in range(3):  # killed as soon as a batch was acknowledged: the next one is under way
        collector.start()
        deadline = time.monotonic() + 30
        while consumer_state([server.url])[0] >= waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        collector.kill()
        remaining = consumer_state([server.url])[0]
        if remaining == 0:
            break
        kills += 1
        waiting = remaining
    assert kills >= 1, "the collector was never killed while messages were waiting"
    collector.start().drain()
    held = collector.records()
    assert set(held) == set().union(*(probe_records(config) for config in probes))
    assert max(held.values()) == 1, [key for key, count in held.items() if count > 1][:5]


def test_a_repeat_after_the_duplicate_window_is_recognised_by_the_store(server, captures, tmp_path) -> None:
    """Notifications published again after JetStream's de-duplication window (here: under other
    message ids, which JetStream cannot tell from new ones either) leave the store as it was."""
    bundle = marker_bundle(tmp_path / "bundle.json")
    setup_bus(tmp_path, [server.url], 1)
    config = configuration(tmp_path / "probe", "probe0", [server.url])
    replay(config, captures[0], bundle)
    collector = Collector(tmp_path / "collector", [server.url])
    collector.start().drain()
    first = collector.records()

    async def republish() -> None:
        connection = await nats.connect(servers=[server.url])
        jetstream = connection.jetstream()
        for line in (config.parent / "events-capture-0.jsonl").read_text().splitlines():
            event = json.loads(line)
            event.pop("probe")
            document = {"notification": "event", "idempotency_key": f"repeat/{event['event_id']}/{event['revision']}", "created": event["timestamp"], "probe": {"name": "probe0", "site": "test", "declaration": ""}, "stage": "ended", "event": event}
            await jetstream.publish("probe.events.test.probe0", json.dumps(document).encode(), headers={"Nats-Msg-Id": document["idempotency_key"]})
        await connection.close()
    run_async(republish())
    logged = collector.start().drain()
    assert collector.records() == first
    assert "400 messages, 0 events stored, 400 already stored" in logged, logged


def test_messages_the_collector_cannot_read_are_dropped_with_their_reason(server, captures, tmp_path) -> None:
    """A message on an unexpected subject, one that is no JSON (or nested too deep to read), and
    ones holding a value outside the store's allowlist or the notification format (a count too
    large to store, a time before 1970 or far ahead, a layer that is no table, text that is a
    list, an unknown TLP label, a notification without its body) are each logged and
    acknowledged, never redelivered forever; the readable messages around them are stored, each
    once, and forwarded made again from their checked fields, naming the probe the subject
    names whatever the body claims."""
    bundle = marker_bundle(tmp_path / "bundle.json")
    setup_bus(tmp_path, [server.url], 1)
    config = configuration(tmp_path / "probe", "probe0", [server.url], sink=False)
    replay(config, captures[0], bundle)
    good = [json.loads(line) for line in (config.parent / "events-capture-0.jsonl").read_text().splitlines()][:2]
    for event in good:
        event.pop("probe")
    bad_port = dict(good[0], src_port=-1)
    later = dict(good[0], revision=9)  # a revision the store does not hold, so that it is encoded
    crashing = [  # each of these once made the collector's reading raise beyond ValueError
        dict(later, proto=float("inf")),
        dict(later, packets=2**64),
        dict(later, encapsulation=["x"]),
        dict(later, encapsulation=[{"type": "http", "id": 1}]),
        dict(later, flow_start="1969-12-31T23:59:59.000000Z"),
        dict(later, last_seen="9999-12-31T00:00:00.000000Z"),
        dict(later, matched_on=["ip.dst"]),
        dict(later, marker=dict(later["marker"], tlp="purple")),
    ]
    bundle_fields = {"time": good[0]["timestamp"], "action": "activated", "issuer": "fleet-test", "id": "fleet", "version": 1, "sha256": "0" * 64, "reason": ""}

    def document(event: dict, claimed: str = "probe0") -> bytes:
        return json.dumps({"notification": "event", "idempotency_key": f"{event['event_id']}/{event['revision']}/{event['src_port']}", "created": event["timestamp"], "probe": {"name": claimed, "site": "test"}, "stage": "detected", "event": event}).encode()

    def other(kind: str, body: dict | None) -> bytes:
        return json.dumps({"notification": kind, "idempotency_key": f"{kind}/{len(str(body))}", "created": good[0]["timestamp"], "probe": {"name": "probe0", "site": "test"}, **({kind: body} if body is not None else {})}).encode()

    async def publish() -> None:
        connection = await nats.connect(servers=[server.url])
        jetstream = connection.jetstream()
        await jetstream.publish("probe.events.test.probe0", document(good[0]))
        await jetstream.publish("probe.events.test.probe0.extra", document(good[0]))
        await jetstream.publish("probe.events.test.probe0", b"\x00 not json")
        await jetstream.publish("probe.events.test.probe0", document(bad_port))
        for event in crashing:
            await jetstream.publish("probe.events.test.probe0", document(event))
        await jetstream.publish("probe.events.test.probe0", b"[" * 100_000)
        await jetstream.publish("probe.events.test.probe0", other("suppressed", None))
        await jetstream.publish("probe.events.test.probe0", other("bundle", dict(bundle_fields, version=2**64)))
        await jetstream.publish("probe.events.test.probe0", other("bundle", bundle_fields))
        await jetstream.publish("probe.events.test.probe0", document(good[1], claimed="lyon-1"))
        await connection.close()
    run_async(publish())
    forwarded_path = tmp_path / "collector" / "forwarded.jsonl"
    sink = f'\n[[sinks]]\nname = "authority"\ntype = "file"\npath = "{forwarded_path}"\nauthority = true\n'
    collector = Collector(tmp_path / "collector", [server.url], configuration(tmp_path / "collector", "collector", [server.url], sink=False, extra=sink))
    logged = collector.start().drain()
    assert collector.records() == Counter({(event["event_id"], event["revision"]): 1 for event in good})
    assert "probe.events.test.probe0.extra: a message that is no readable notification, dropped: ValueError: the subject is not probe.events.<site>.<probe>" in logged, logged
    for reason in ("JSONDecodeError", "RecursionError", "ValueError: src_port -1 is not an integer from 0 to 65535", "ValueError: proto inf is not an integer", "ValueError: packets 18446744073709551616 is not an integer",
                   "ValueError: encapsulation ['x'] is not a list of layers", "RecordError: encapsulation type 'http' is not in the allowlist", "ValueError: flow_start '1969-12-31T23:59:59.000000Z' is before 1970", "ValueError: a time of the event is ahead of this collector's clock by more than 24 hours",
                   "ValueError: matched_on ['ip.dst'] is not text", "ValueError: marker tlp 'purple' is not one of", "KeyError: 'suppressed'", "ValueError: bundle version 18446744073709551616 is not an integer"):
        assert reason in logged, (reason, logged)
    assert "17 messages, 2 events stored, 0 already stored, 3 forwarded, 14 malformed" in logged, logged
    forwarded = [json.loads(line) for line in forwarded_path.read_text().splitlines()]
    assert sorted(document["notification"] for document in forwarded) == ["bundle", "event", "event"]
    assert all(document["probe"] == {"name": "probe0", "site": "test", "declaration": ""} for document in forwarded), "the subject's probe, not the body's claim"
    assert [document["event"] for document in forwarded if document["notification"] == "event"] == good


def test_a_probe_cut_off_from_the_bus_spools_and_delivers_when_it_returns(server, captures, tmp_path) -> None:
    bundle = marker_bundle(tmp_path / "bundle.json")
    setup_bus(tmp_path, [server.url], 1)
    config = configuration(tmp_path / "probe", "probe0", [server.url])
    server.stop()
    result = replay(config, captures[0], bundle)
    assert "events: 400" in result.stderr, "detection goes on without the bus"
    assert "no NATS server answers" in result.stderr or "not yet acknowledged" in result.stderr, result.stderr
    assert "800 notifications not yet acknowledged stay in the spool" in result.stderr or "801 notifications not yet acknowledged" in result.stderr, result.stderr
    server.restart()
    delivered = run("outbox", "deliver", "--config", str(config), "--timeout", "60")
    assert delivered.returncode == 0, delivered.stderr
    collector = Collector(tmp_path / "collector", [server.url])
    collector.start().drain()
    held = collector.records()
    assert set(held) == probe_records(config) and max(held.values()) == 1


def test_a_broker_node_lost_and_back_while_probes_publish(captures, tmp_path) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        setup_bus(tmp_path, cluster.urls, 3)
        bundle = marker_bundle(tmp_path / "bundle.json")
        configs = [configuration(tmp_path / f"probe{number}", f"probe{number}", cluster.urls) for number in range(3)]
        replays = [subprocess.Popen([PROBE, "replay", str(capture), "--markers", str(bundle), "--config", str(config), "--events", os.devnull], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for capture, config in zip(captures, configs)]
        time.sleep(0.5)
        lost = next(node for node in cluster.nodes if node is not cluster.meta_leader())
        lost.kill()
        time.sleep(2.0)
        lost.restart()
        for process in replays:
            _, errors = process.communicate(timeout=120)
            assert process.returncode == 0, errors
        for config in configs:  # what a replay could not deliver within drain_timeout is spooled
            run("outbox", "deliver", "--config", str(config), "--timeout", "60")
        collector = Collector(tmp_path / "collector", cluster.urls)
        collector.start().drain()
        held = collector.records()
        assert set(held) == set().union(*(probe_records(config) for config in configs))
        assert max(held.values()) == 1
    finally:
        cluster.stop()


def test_clear_errors_for_a_missing_stream_refused_credentials_and_no_server(tmp_path) -> None:
    guarded = NatsServer(tmp_path / "guarded", user="probe", password="right").start()
    try:
        password = tmp_path / "password"
        password.write_text("wrong")
        password.chmod(0o600)
        config = configuration(tmp_path / "wrong", "probe0", [guarded.url], sink=False, extra=f'user = "probe"\npassword_file = "{password}"')
        result = run("fleet", "status", "--config", str(config), check=False)
        assert result.returncode == 2 and "refused this probe's credentials" in result.stderr, result.stderr
        password.write_text("right")
        config = configuration(tmp_path / "right", "probe0", [guarded.url], sink=False, extra=f'user = "probe"\npassword_file = "{password}"')
        result = run("fleet", "status", "--config", str(config), check=False)
        assert result.returncode == 2 and "run probe fleet setup" in result.stderr, result.stderr
        password.chmod(0o644)
        result = run("fleet", "status", "--config", str(config), check=False)
        assert result.returncode == 2 and "chmod 600" in result.stderr, result.stderr
    finally:
        guarded.stop()
    result = run("fleet", "status", "--config", str(configuration(tmp_path / "none", "probe0", [guarded.url], sink=False)), check=False)
    assert result.returncode == 2 and "no NATS server answers" in result.stderr, result.stderr


def test_a_missing_stream_keeps_notifications_spooled(server, captures, tmp_path) -> None:
    config = configuration(tmp_path / "probe", "probe0", [server.url])
    config.write_text(config.read_text().replace("drain_timeout = 20.0", "drain_timeout = 2.0"))
    result = replay(config, captures[0], marker_bundle(tmp_path / "bundle.json"))
    assert "create stream 'PROBE_EVENTS' (probe fleet setup)" in result.stderr, result.stderr
    assert "not yet acknowledged stay in the spool" in result.stderr


def test_a_nats_sink_needs_the_bus_and_subject_tokens(tmp_path) -> None:
    config = tmp_path / "probe.toml"
    config.write_text('[probe]\nname = "p.1"\nsite = "s"\n[fleet]\nservers = ["nats://127.0.0.1:4222"]\n[[sinks]]\nname = "fleet"\ntype = "nats"\n')
    result = run("replay", "captures/dns-udp.pcap", "--markers", "markers/example-bundle.json", "--config", str(config), check=False)
    assert result.returncode == 2 and "probe.name: 'p.1'" in result.stderr, result.stderr
    config.write_text('[[sinks]]\nname = "fleet"\ntype = "nats"\n')
    result = run("replay", "captures/dns-udp.pcap", "--markers", "markers/example-bundle.json", "--config", str(config), check=False)
    assert result.returncode == 2 and "needs [fleet] servers" in result.stderr, result.stderr
    config.write_text('[probe]\nname = "collector.example"\nsite = "soc"\n[store]\ndirectory = "store"\n[fleet]\nservers = ["nats://127.0.0.1:4222"]\n')
    result = run("collect", "--config", str(config), check=False)
    assert result.returncode == 2 and "probe.name: 'collector.example'" in result.stderr and "inbox _INBOX.<site>.<name>" in result.stderr, result.stderr


AUTHORIZATION = Path(__file__).resolve().parent.parent / "systemd" / "nats-authorization.conf"
PASSWORDS = {"FLEET_SECURITY_TEAM_PASSWORD": "team-secret", "FLEET_COLLECTOR_PASSWORD": "collector-secret", "FLEET_PARIS_CORE_1_PASSWORD": "probe-secret"}


def member(directory: Path, name: str, site: str, user: str, servers: list[str], sink: bool = False) -> Path:
    """A fleet member's configuration, logging in as `user` of the shipped authorization file."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "password"
    password_file.write_text(PASSWORDS[f"FLEET_{user.upper().replace('-', '_')}_PASSWORD"])
    password_file.chmod(0o600)
    return configuration(directory, name, servers, sink, f'user = "{user}"\npassword_file = "{password_file}"\nbundle_bucket = "probe-bundles"', site)


def refused(config: Path, attempt) -> list[str]:
    """The bus's refusals of what `attempt(jetstream, connection)` tries, connected with the
    member's own options (credentials, inbox prefix)."""
    from probe.config import load_config
    from probe.fleet.bus import connect_options

    loaded = load_config(str(config))
    errors: list[str] = []

    async def note(error: Exception) -> None:
        errors.append(str(error))

    async def session() -> None:
        connection = await nats.connect(**connect_options(loaded.fleet, loaded.probe, "test"), error_cb=note)
        try:
            await attempt(connection.jetstream(timeout=2), connection)
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            errors.append(f"{type(error).__name__}: {error}")
        await asyncio.sleep(0.3)  # a refused subscription is reported after the fact
        await connection.close()
    run_async(session())
    return errors


def test_the_shipped_bus_permissions_let_each_member_do_its_own_work_only(captures, tmp_path) -> None:
    """systemd/nats-authorization.conf as written: the probe publishes its events and heartbeat
    and reads bundles, the collector consumes the events, the security team sets up and
    publishes bundles; a probe cannot speak for another probe, write a bundle, read the events
    stream or receive the collector's replies, or wipe the other heartbeats with a rollup, and the
    collector cannot publish events. A probe configured with another site is told what the bus
    refused, and keeps its notifications."""
    from probe.config import load_config
    from probe.fleet.agent import FleetAgent
    from probe.fleet.bus import Bus

    server = NatsServer(tmp_path / "nats", authorization=AUTHORIZATION, environment=PASSWORDS).start()
    try:
        watch = [server.url.replace("nats://", "nats://security-team:team-secret@")]
        team = member(tmp_path / "team", "security-host", "soc", "security-team", [server.url])
        run("fleet", "setup", "--config", str(team), "--replicas", "1")
        run("markers", "keygen", "fleet-test", "--dir", str(tmp_path))
        run("markers", "sign", str(marker_bundle(tmp_path / "bundle.json")), "--key", str(tmp_path / "fleet-test.key"))
        run("markers", "publish", str(tmp_path / "bundle.json"), "--config", str(team))
        probe = member(tmp_path / "probe", "paris-core-1", "paris", "paris-core-1", [server.url], sink=True)
        result = replay(probe, captures[0], tmp_path / "bundle.json")
        assert "0 waiting in the spool" in result.stderr, result.stderr
        collector = Collector(tmp_path / "collector", watch, member(tmp_path / "collector", "collector", "soc", "collector", [server.url]))
        collector.start().drain()
        assert set(collector.records()) == probe_records(probe)

        loaded = load_config(str(probe))
        agent = FleetAgent(loaded, str(tmp_path / "fetched"), dict, lambda path, done: None)
        with Bus(loaded.fleet, loaded.probe, "probe") as bus:
            assert [name for name, _ in bus.call(agent._new_objects(bus), 10)] == ["fleet-test/fleet"]
            bus.call(agent._put_heartbeat(bus, b"{}"), 10)

        async def speak_for_another(jetstream, connection) -> None:
            await jetstream.publish("probe.events.paris.paris-core-2", b"{}", stream="PROBE_EVENTS")
        assert any('permissions violation for publish to "probe.events.paris.paris-core-2"' in error for error in refused(probe, speak_for_another))

        async def write_a_bundle(jetstream, connection) -> None:
            await (await jetstream.object_store("probe-bundles")).put("fleet-test/fleet", b"tampered")
        assert any("permissions violation for publish" in error for error in refused(probe, write_a_bundle))

        async def beat_for_another(jetstream, connection) -> None:
            await (await jetstream.key_value("probe-fleet")).put("paris.paris-core-2", b"{}")
        assert any('permissions violation for publish to "$kv.probe-fleet.paris.paris-core-2"' in error.lower() for error in refused(probe, beat_for_another))

        async def heartbeat_of_lyon(jetstream, connection) -> None:
            await (await jetstream.key_value("probe-fleet")).put("lyon.lyon-1", b"{}")
        assert refused(team, heartbeat_of_lyon) == []

        async def wipe_the_heartbeats(jetstream, connection) -> None:
            await jetstream.publish("$KV.probe-fleet.paris.paris-core-1", b"{}", headers={"Nats-Rollup": "all"})
        assert any("rollup" in error.lower() for error in refused(probe, wipe_the_heartbeats))

        async def still_there(jetstream, connection) -> None:
            assert (await (await jetstream.key_value("probe-fleet")).get("lyon.lyon-1")).value == b"{}"
        assert refused(team, still_there) == [], "another probe's heartbeat survives a rollup attempt"

        async def read_the_events(jetstream, connection) -> None:
            await connection.subscribe("probe.events.>")
            await connection.subscribe("_INBOX.soc.collector.>")
            await jetstream.pull_subscribe("probe.events.>", durable="spy", stream="PROBE_EVENTS")
        errors = refused(probe, read_the_events)
        assert any('permissions violation for subscription to "probe.events.>"' in error for error in errors), errors
        assert any('permissions violation for subscription to "_inbox.soc.collector.>"' in error.lower() for error in errors), errors
        assert any("permissions violation for publish" in error and "PROBE_EVENTS" in error.upper() for error in errors), errors

        misplaced = member(tmp_path / "misplaced", "paris-core-1", "lyon", "paris-core-1", [server.url], sink=True)
        result = replay(misplaced, captures[1], tmp_path / "bundle.json", check=False)
        assert "do not let this member do that: nats: permissions violation for" in result.stderr and "(the rights of its user: systemd/nats-authorization.conf)" in result.stderr, result.stderr
        assert "not yet acknowledged stay in the spool" in result.stderr, result.stderr

        async def forge_an_event(jetstream, connection) -> None:
            await jetstream.publish("probe.events.paris.paris-core-1", b"{}", stream="PROBE_EVENTS")
        assert any('permissions violation for publish to "probe.events.paris.paris-core-1"' in error for error in refused(collector.config, forge_an_event))
    finally:
        server.stop()


def _live_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a network namespace and packet sockets"
    for tool in ("ip", "tcpreplay"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} not installed (.ci/setup installs iproute2 and tcpreplay)"
    return None


@pytest.fixture
def link():
    """A veth pair: `send0` in a namespace of its own (tcpreplay writes there), its peer in this
    namespace, where the probes capture and reach the bus on loopback."""
    reason = _live_requirements()
    if reason:
        pytest.skip(reason)
    sender, tap = f"fleet-send-{os.getpid()}", f"ftap{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", sender], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "link", "add", tap, "type", "veth", "peer", "name", "send0", "netns", sender], check=True, capture_output=True)
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{tap}.disable_ipv6=1"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True, capture_output=True)
        subprocess.run(["ip", "-n", sender, "link", "set", "send0", "up"], check=True, capture_output=True)
        yield sender, tap
    finally:
        subprocess.run(["ip", "link", "del", tap], capture_output=True)
        subprocess.run(["ip", "netns", "del", sender], capture_output=True)


def _signed(path: Path, version: int, key: Path, addresses: list[str]) -> Path:
    markers = [{"id": f"marked-{position}", "type": "ipv4", "value": address} for position, address in enumerate(addresses)]
    path.write_text(json.dumps({"id": "fleet", "issuer": "fleet-test", "version": version, "created": f"2026-11-0{version}T00:00:00Z", "markers": markers}))
    run("markers", "sign", str(path), "--key", str(key))
    return path


def _heartbeats(config: Path) -> str:
    return run("fleet", "status", "--config", str(config)).stdout


def test_bundles_over_the_bus_a_tampered_one_is_refused_by_every_probe(server, link, tmp_path) -> None:
    sender, tap = link
    keys = tmp_path / "keys"
    keys.mkdir()
    run("markers", "keygen", "fleet-test", "--dir", str(keys))
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "fleet-test.pub").write_bytes((keys / "fleet-test.pub").read_bytes())
    (tmp_path / "v1").mkdir()
    first = _signed(tmp_path / "v1" / "bundle.json", 1, keys / "fleet-test.key", ["198.18.7.7"])
    admin = configuration(tmp_path / "admin", "admin", [server.url], sink=False, extra='bundle_bucket = "probe-bundles"')
    run("fleet", "setup", "--config", str(admin), "--replicas", "1")
    probes = []
    try:
        for number in range(2):
            directory = tmp_path / f"probe{number}"
            config = configuration(directory, f"probe{number}", [server.url], extra='bundle_bucket = "probe-bundles"')
            config.write_text(config.read_text() + f"""
[declaration]
reference = "TEST-DECLARATION-1"
declared_by = "Test operator"
declared_on = "2026-11-01"
interfaces = ["{tap}"]
[capture]
interfaces = ["{tap}"]
[service]
metrics_address = ""
control_socket = "{directory}/control.sock"
[markers]
files = ["{first}"]
require_signature = true
trust_store = "{trust}"
state_file = "{directory}/versions.json"
""")
            (directory / "store").mkdir(mode=0o700)
            probes.append((config, subprocess.Popen([PROBE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        wait_for(lambda: _heartbeats(admin).count("fleet-test/fleet v1") == 2, 60, "both probes' heartbeats with version 1")

        (tmp_path / "v2").mkdir()
        second = _signed(tmp_path / "v2" / "bundle.json", 2, keys / "fleet-test.key", MARKED)
        run("markers", "publish", str(second), "--config", str(admin))
        wait_for(lambda: _heartbeats(admin).count("fleet-test/fleet v2") == 2, 60, "both probes to hot-swap version 2")

        (tmp_path / "v3").mkdir()
        third = _signed(tmp_path / "v3" / "bundle.json", 3, keys / "fleet-test.key", ["198.18.9.9"])
        third.write_text(third.read_text().replace("198.18.9.9", "198.18.9.8"))  # after signing: tampered
        run("markers", "publish", str(third), "--config", str(admin))
        wait_for(lambda: sum("; refused: " in line and "signature" in line for line in _heartbeats(admin).splitlines()) == 2, 60, "both probes to refuse the tampered bundle")
        status = _heartbeats(admin)
        assert status.count("fleet-test/fleet v2") == 2 and "v3" not in status.replace("/v3/", ""), status

        capture = tmp_path / "traffic.pcap"
        synthetic_capture(capture, 20, 9, time.time())
        subprocess.run(["ip", "netns", "exec", sender, "tcpreplay", "-i", "send0", "--topspeed", str(capture)], check=True, capture_output=True)
        wait_for(lambda: all(f"probe{number}" in line and line.split()[4] == "20" for number, line in enumerate(sorted(line for line in _heartbeats(admin).splitlines() if line.startswith("test.")))), 60, "both probes to detect the 20 flows with version 2")
    finally:
        for _, process in probes:
            process.send_signal(signal.SIGTERM)
        logs = [process.communicate(timeout=60)[1] for _, process in probes]
    for (config, process), log in zip(probes, logs):
        assert process.returncode == 0, log
        assert "signature" in log and "refused" in log, log
        stored = run("store", "query", "--config", str(config), "--format", "jsonl", "--purpose", "fleet test").stdout.splitlines()
        assert len(stored) == 20 and {json.loads(line)["marker"]["bundle_version"] for line in stored} == {2}
