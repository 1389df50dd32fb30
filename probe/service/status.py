"""The running probe's figures: one snapshot, read by `probe status` and by Prometheus.

The main process rebuilds the snapshot about once a second; the control socket (a Unix socket
of mode 0600, so only the probe's user and root read it) hands it out as JSON, and the metrics
endpoint renders the same dictionary, so the two never disagree.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from probe.config import split_address
from probe.errors import ProbeError


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve_status(path: str, snapshot: Callable[[], dict]) -> ControlServer:
    """Answer every connection to `path` with the current snapshot, on a thread of its own."""
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(json.dumps(snapshot()).encode() + b"\n")

    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ProbeError(f"service.control_socket: directory {directory} does not exist (the systemd unit creates /run/probe)")
    if os.path.exists(path):
        if _answers(path):
            raise ProbeError(f"service.control_socket: {path}: another probe is running and answers there")
        os.unlink(path)  # left by a probe that was killed
    old_mask = os.umask(0o177)
    try:
        server = ControlServer(path, Handler)
    finally:
        os.umask(old_mask)
    threading.Thread(target=server.serve_forever, name="control-socket", daemon=True).start()
    return server


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def read_status(path: str, timeout: float = 5.0) -> dict:
    """The snapshot of the probe listening on `path` (`probe status`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except FileNotFoundError:
            raise ProbeError(f"{path}: no control socket: is probe run running with this configuration?") from None
        except PermissionError:
            raise ProbeError(f"{path}: permission denied: run probe status as the probe's user or root") from None
        except OSError as error:
            raise ProbeError(f"{path}: the probe does not answer: {error.strerror or error}") from None
    return json.loads(b"".join(chunks))


class StatusCollector:
    """Prometheus metrics rendered from the snapshot at each scrape."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Any:
        status = self.snapshot()
        interfaces = status["interfaces"]
        yield _family(CounterMetricFamily, "probe_kernel_received", "Frames the kernel passed the capture filter", "interface", {name: figures["received"] for name, figures in interfaces.items()})
        yield _family(CounterMetricFamily, "probe_kernel_drops", "Frames the kernel dropped for want of ring space", "interface", {name: figures["dropped"] for name, figures in interfaces.items()})
        workers = {str(worker["worker"]): worker for worker in status["workers"]}
        for key, kind, text in (
            ("packets", CounterMetricFamily, "Packets matched"),
            ("bytes", CounterMetricFamily, "Bytes of the packets matched"),
            ("decode_errors", CounterMetricFamily, "Frames that could not be decoded"),
            ("dispatch_dropped_frames", CounterMetricFamily, "Frames dropped because the worker's queue was full"),
            ("flows_evicted", CounterMetricFamily, "Flows evicted at the flow table's cap"),
            ("flows_active", GaugeMetricFamily, "Flows tracked"),
            ("packets_per_second", GaugeMetricFamily, "Packets per second over the last interval"),
            ("queue_bytes", GaugeMetricFamily, "Bytes waiting in the worker's queue"),
        ):
            yield _family(kind, f"probe_worker_{key}", text, "worker", {number: worker[key] for number, worker in workers.items()})
        anomalies = CounterMetricFamily("probe_worker_anomalies", "Bad or evasive input skipped, by kind (tls.malformed, quic.bad_tag, tcp.gap...)", labels=["worker", "kind"])
        for number, worker in workers.items():
            for kind, count in worker.get("anomalies", {}).items():
                anomalies.add_metric([number, kind], count)
        yield anomalies
        yield _family(CounterMetricFamily, "probe_events", "Events detected", "marker_type", status["events"]["by_marker_type"])
        bundle_info = GaugeMetricFamily("probe_bundle_active", "Active marker bundles (1 each)", labels=["issuer", "id", "version"])
        bundle_age = GaugeMetricFamily("probe_bundle_age_seconds", "Seconds since the bundle version was activated", labels=["issuer", "id"])
        for bundle in status["bundles"]:
            bundle_info.add_metric([bundle["issuer"], bundle["id"], str(bundle["version"])], 1)
            bundle_age.add_metric([bundle["issuer"], bundle["id"]], bundle["age_seconds"])
        yield bundle_info
        yield bundle_age
        store = status["store"]
        yield GaugeMetricFamily("probe_store_bytes", "Bytes of the event store", value=store["bytes"])
        yield GaugeMetricFamily("probe_store_oldest_record_age_seconds", "Age of the oldest stored record", value=store["oldest_record_age_seconds"] or 0)
        outbox = status["outbox"]
        yield CounterMetricFamily("probe_outbox_dropped", "Notifications dropped at the spool's size cap", value=outbox["dropped"])
        sinks = outbox["sinks"]
        yield _family(GaugeMetricFamily, "probe_outbox_depth", "Notifications spooled and not yet acknowledged", "sink", {name: sink["pending"] for name, sink in sinks.items()})
        yield _family(CounterMetricFamily, "probe_outbox_delivered", "Notifications acknowledged", "sink", {name: sink["delivered"] for name, sink in sinks.items()})
        yield _family(CounterMetricFamily, "probe_outbox_delivery_failures", "Failed delivery attempts", "sink", {name: sink["failures"] for name, sink in sinks.items()})


def _family(kind: type, name: str, text: str, label: str, values: dict[str, float]) -> Any:
    family = kind(name, text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def serve_metrics(address: str, snapshot: Callable[[], dict]) -> None:
    host, port = split_address(address, "service.metrics_address")
    registry = CollectorRegistry()
    registry.register(StatusCollector(snapshot))  # type: ignore[arg-type]
    try:
        start_http_server(port, host, registry=registry)
    except OSError as error:
        raise ProbeError(f"service.metrics_address: cannot listen on {address}: {error.strerror or error}") from None
