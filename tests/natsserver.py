"""Real nats-server processes for the tests: a JetStream node, or a JetStream cluster of them, on
loopback, each in a directory of the test's own (its configuration, log and store).

A mock would not show what the probe meets in production: PubAcks, duplicate detection by
Nats-Msg-Id, a store that outlives a restart, a cluster that keeps accepting with a node down.
Every wait here has a deadline, so a server that does not come up fails its test with the
server's own log instead of hanging it, and every server runs under coreutils `timeout`, so one
left behind by a test run that was killed ends by itself after `lifetime` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

NATS_SERVER_MISSING = "nats-server is not installed: run sh .ci/setup (Debian package nats-server)"
"""The reason for pytest.skip when nats_server_path() finds no binary."""

START_TIMEOUT = 15.0
"""Seconds for a node to answer its health check: a few hundred milliseconds are usual."""
CLUSTER_TIMEOUT = 30.0
"""Seconds for a cluster to elect its JetStream meta leader once every node is up."""
STOP_TIMEOUT = 10.0
"""Seconds a node has to shut down on SIGTERM before it is killed."""
LIFETIME = 600.0
"""Seconds after which `timeout` ends a server that no test stopped."""


def nats_server_path() -> str | None:
    """The binary, or None: Debian installs it in /usr/sbin, which an ordinary user's PATH lacks."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports free at the time of the call.

    The sockets are held open together, so the kernel cannot hand out one port twice: a node needs
    two or three ports and a cluster all of its nodes' ports at once."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for bound in sockets:
            bound.bind(("127.0.0.1", 0))
        return [bound.getsockname()[1] for bound in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class ClusterSettings:
    """A node's place in a cluster: nodes of one name that route to each other form one cluster."""

    name: str
    port: int
    """This node's route port, the one the other nodes connect to."""
    routes: tuple[str, ...]
    """The other nodes' route URLs, nats-route://127.0.0.1:<port>: each node routes to all the
    others, so that the cluster forms whatever order they start in."""


class NatsServer:
    """One nats-server with JetStream, configured by a file it writes in `work_dir`.

    The ports are chosen once, in the constructor, so restart() brings the node back where clients
    and the other nodes of its cluster look for it, with the same store: what JetStream acknowledged
    before must still be there."""

    def __init__(
        self,
        work_dir: Path,
        name: str = "nats",
        port: int | None = None,
        monitor_port: int | None = None,
        cluster: ClusterSettings | None = None,
        user: str | None = None,
        password: str | None = None,
        lifetime: float = LIFETIME,
        authorization: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """`port` and `monitor_port` are chosen here when not given; a caller giving one should
        choose both with free_ports(), which cannot return the same port twice.

        With `user` and `password`, clients must authenticate: nats-server refuses anyone else.
        `authorization`: a file of users and permissions the configuration includes instead (as an
        operator's would), its variables looked up in `environment`."""
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if authorization is not None and user is not None:
            raise ValueError("give user and password, or an authorization file")
        chosen = iter(free_ports(2))
        self.work_dir = work_dir
        self.name = name
        """server_name: a JetStream cluster identifies its peers by it, so it must be unique there."""
        self.port = port or next(chosen)
        self.monitor_port = monitor_port or next(chosen)
        self.cluster = cluster
        self.user = user
        self.password = password
        self.lifetime = lifetime
        self.authorization = authorization
        self.environment = environment or {}
        self.config_path = work_dir / "nats.conf"
        self.log_path = work_dir / "nats.log"
        self.store_dir = work_dir / "store"
        self._pid_path = work_dir / "nats.pid"
        self._process: subprocess.Popen[bytes] | None = None
        """The `timeout` process, whose child is nats-server."""
        self._server_pid = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> NatsServer:
        """Starts the server and returns once it accepts clients with JetStream enabled.

        In a cluster, the health check asked for does not wait for a meta leader: the first node
        would wait for the others, which are started after it (NatsCluster.wait_ready() does)."""
        if self.running:
            raise RuntimeError(f"nats-server {self.name} is already running")
        binary = nats_server_path()
        if binary is None:
            raise RuntimeError(NATS_SERVER_MISSING)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.authorization is not None:  # nats-server includes files relative to the including one
            shutil.copyfile(self.authorization, self.work_dir / "authorization.conf")
        self.config_path.write_text(self._config(), encoding="utf-8")
        # Errors met before the server opens its log file (a configuration it cannot parse) go to
        # stderr: into the same file, so that log_tail() shows them too. Both append.
        with self.log_path.open("ab") as log:
            # process_group: `timeout` would make its own group anyway; made here, it exists from the
            # start, for _abandon() to kill however early it is called.
            self._process = subprocess.Popen(
                ["timeout", "--kill-after=5", str(self.lifetime), binary, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0, env={**os.environ, **self.environment},
            )
        self._wait_healthy()
        # nats-server writes its pid file before it opens its listeners: current once healthy.
        self._server_pid = int(self._pid_path.read_text())
        return self

    def stop(self) -> None:
        """Ends the server with SIGTERM, as systemd would, and kills it if it takes too long."""
        if self._process is None:
            return
        if self._process.poll() is None:
            _signal(self._server_pid, signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._process = None

    def kill(self) -> None:
        """Kills the server with SIGKILL: a crash, which JetStream must recover from on restart().

        The signal goes to nats-server itself rather than to `timeout`, which reaps it before it
        exits: once wait() returns, the server is gone and its ports are free to bind again."""
        if self._process is None:
            return
        if self._process.poll() is None:
            _signal(self._server_pid, signal.SIGKILL)
            self._process.wait(STOP_TIMEOUT)
        self._process = None

    def restart(self) -> NatsServer:
        """Stops the server unless it is already down (killed, say), then starts it again."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The log's last lines, less the warnings nats-server writes for each health check that
        fails: NatsCluster.wait_ready() polls ten times a second, which would leave nothing else."""
        if not self.log_path.exists():
            return "(no log)"
        logged = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join([line for line in logged if "Healthcheck failed" not in line][-lines:])

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def _config(self) -> str:
        lines = [
            f"server_name: {_quoted(self.name)}",
            f"listen: {_quoted(f'127.0.0.1:{self.port}')}",
            f"http: {_quoted(f'127.0.0.1:{self.monitor_port}')}",
            f"log_file: {_quoted(str(self.log_path))}",
            f"pid_file: {_quoted(str(self._pid_path))}",
            f"jetstream {{ store_dir: {_quoted(str(self.store_dir))} }}",
        ]
        if self.cluster is not None:
            routes = ", ".join(_quoted(route) for route in self.cluster.routes)
            lines.append(f"cluster {{ name: {_quoted(self.cluster.name)}, listen: {_quoted(f'127.0.0.1:{self.cluster.port}')}, routes: [{routes}] }}")
        if self.user is not None and self.password is not None:
            lines.append(f"authorization {{ user: {_quoted(self.user)}, password: {_quoted(self.password)} }}")
        if self.authorization is not None:
            lines.append("include ./authorization.conf")
        return "\n".join(lines) + "\n"

    def _wait_healthy(self) -> None:
        """Polls /healthz, which answers 200 only once the client port listens (nats-server checks
        its listeners first) and, with js-enabled-only, JetStream is enabled."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while monitor_get(self.monitor_port, "/healthz?js-enabled-only=true")[0] != 200:
            if self._process.poll() is not None:
                status = self._process.returncode
                self._process = None
                raise RuntimeError(f"nats-server {self.name} exited with status {status} while starting; its log ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._abandon()
                raise RuntimeError(f"nats-server {self.name} was not healthy after {START_TIMEOUT:.0f} s; its log ends with:\n{self.log_tail()}")
            time.sleep(0.05)

    def _abandon(self) -> None:
        """Kills `timeout` and nats-server together: a server that never became healthy may not
        have written its pid file yet."""
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(STOP_TIMEOUT)
        self._process = None


class NatsCluster:
    """`size` nodes forming one JetStream cluster, each routing to all the others.

    All ports are chosen in the constructor, so a node restarted keeps its place in the cluster."""

    def __init__(self, work_dir: Path, size: int = 3, name: str = "probe", lifetime: float = LIFETIME) -> None:
        ports = free_ports(3 * size)
        clients, routes, monitors = ports[:size], ports[size : 2 * size], ports[2 * size :]
        self.size = size
        self.nodes = [
            NatsServer(
                work_dir / f"n{index + 1}", name=f"n{index + 1}", port=clients[index], monitor_port=monitors[index], lifetime=lifetime,
                cluster=ClusterSettings(name, routes[index], tuple(f"nats-route://127.0.0.1:{route}" for route in routes if route != routes[index])),
            )
            for index in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> NatsCluster:
        """Starts every node, then waits for the cluster to be ready; stops them all if it is not,
        since no context manager's exit will."""
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Waits until every node agrees on the meta leader, the leader counts `size` peers all
        current, and every node is current with it (full /healthz): only then is a stream of `size`
        replicas sure to be created, and a node restarted caught up. Every node must be running.

        The size is the leader's view: a follower's /jsz may show one peer fewer for good once a
        leader was killed and restarted (nats-server 2.9.10), in a cluster that works."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self._state(node) for node in self.nodes]
            leaders = {leader for leader, _ in states}
            if len(leaders) == 1 and "" not in leaders and all(state == "ok" for _, state in states):
                return
            if time.monotonic() > deadline:
                report = "\n\n".join(f"{node.name}: meta leader {leader or 'none'}, {state}; its log ends with:\n{node.log_tail(15)}" for node, (leader, state) in zip(self.nodes, states))
                raise RuntimeError(f"the JetStream cluster of {self.size} nodes was not ready after {timeout:.0f} s\n\n{report}")
            time.sleep(0.1)

    def meta_leader(self) -> NatsServer:
        """The node leading the JetStream meta group. Killing it costs an election, 4 to 7 s with
        nats-server 2.9.10, before the cluster is ready again (stopping it hands the leadership over
        within a second): a test that needs a node down but not that wait kills another one, and
        not the leader of its stream either, whose election takes as long."""
        leaders = {_meta(node).get("leader", "") for node in self.nodes if node.running} - {""}
        chosen = [node for node in self.nodes if node.name in leaders]
        if len(chosen) != 1:
            raise RuntimeError(f"the running nodes do not agree on one meta leader: {', '.join(sorted(leaders)) or 'none known'}")
        return chosen[0]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def _state(self, node: NatsServer) -> tuple[str, str]:
        """(meta leader this node knows of, "ok" or why it is not ready). /healthz is asked last:
        each failed health check is a warning more in the node's log."""
        if not node.running:
            return "", "not running"
        meta = _meta(node)
        leader = meta.get("leader", "")
        if not leader:
            return "", "no meta leader known"
        if leader == node.name:
            current = [peer for peer in meta.get("replicas", []) if peer.get("current")]
            if meta.get("cluster_size") != self.size or len(current) != self.size - 1:
                return leader, f"leading {meta.get('cluster_size')} peers, {len(current)} others current"
        status, body = monitor_get(node.monitor_port, "/healthz")
        return leader, "ok" if status == 200 else f"/healthz answered {status or 'nothing'} {body.decode(errors='replace').strip()}"


def _meta(node: NatsServer) -> dict[str, Any]:
    """The meta_cluster part of the node's /jsz (name, leader, cluster_size), empty if it does not
    answer or has none yet."""
    status, body = monitor_get(node.monitor_port, "/jsz")
    return json.loads(body).get("meta_cluster", {}) if status == 200 else {}


def monitor_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) from a node's monitoring port, status 0 if it does not answer (yet). Through
    http.client, which ignores any http_proxy of the environment, unlike urllib."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


def _signal(pid: int, number: int) -> None:
    """Signals nats-server, unless it has just ended: `timeout` may not have exited yet."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _quoted(value: str) -> str:
    r"""A double-quoted nats-server configuration string. Not json.dumps(): its parser knows only the
    escapes \xXX, \t, \n, \r, \" and \\, not JSON's \uXXXX."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def consumer_state(servers: list[str], stream: str = "PROBE_EVENTS", consumer: str = "collector") -> tuple[int, int, int]:
    """(messages in the stream, pending for the consumer, delivered but not acknowledged): what
    the fleet tests and benchmark wait on."""
    messages, state = _stream_and_consumer(servers, stream, consumer)
    if state is None:
        return messages, messages, 0
    return messages, state.num_pending, state.num_ack_pending


def wait_collecting(servers: list[str], timeout: float, stream: str = "PROBE_EVENTS", consumer: str = "collector") -> None:
    """Returns once a collector has the durable consumer and a fetch waiting on it (it is
    subscribed and ready to take messages), so that a measure starts from a collector at work
    rather than one still connecting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, state = _stream_and_consumer(servers, stream, consumer)
        if state is not None and state.num_waiting > 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no collector was fetching from consumer {consumer} of stream {stream} within {timeout:.0f} s")


def _stream_and_consumer(servers: list[str], stream: str, consumer: str) -> tuple[int, Any]:
    """The stream's message count and the consumer's info (None before it exists). On a private
    event loop, so that the main thread keeps its own (pyshark's tests, later in the same process,
    need it)."""
    import nats
    import nats.js.errors

    async def read() -> tuple[int, Any]:
        connection = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=2)
        try:
            jetstream = connection.jetstream()
            info = await jetstream.stream_info(stream)
            try:
                return info.state.messages, await jetstream.consumer_info(stream, consumer)
            except nats.js.errors.NotFoundError:
                return info.state.messages, None
        finally:
            await connection.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(read())
    finally:
        loop.close()


def stored_revisions(config_path: Path) -> Counter[tuple[str, int]]:
    """Every (event id, revision) record of the store a probe configuration names, counted: how
    exactly once is checked, on the raw store rather than on the latest revisions a query prints."""
    from probe.config import load_config
    from probe.record.events import Event
    from probe.store.ring import RingStore

    config = load_config(str(config_path))
    store = RingStore(config.store.directory, config.store, writable=False)
    try:
        return Counter((record.event_id, record.revision) for summary in store.segments() for record in store.read(summary) if isinstance(record, Event))
    finally:
        store.close()
