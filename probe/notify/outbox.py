"""`Outbox`: the probe's side of notification delivery.

`put` appends an entry to the spool (`SpoolWriter`) and writes one byte to a pipe that wakes the
delivery process (`delivery.py`), which does everything else beside the probe: fsync, rendering,
filters, sending, retries, cursors. Matching therefore never waits on a sink, a disk flush or a
TLS handshake, and the delivery's work does not compete with it for the interpreter. A spool at
its cap drops the new notification (counted, logged once per episode); the first one it takes
again is followed by a `dropped` notification with the count. If the delivery process dies, it
is started again (it resumes from the saved cursors).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import suppress
from multiprocessing import Pipe
from typing import Any

from probe.clock import Clock, add_months
from probe.config import MAXIMUM_RETENTION_MONTHS, Config
from probe.errors import NotifyError
from probe.notify.delivery import SinkStatistics
from probe.notify.documents import dropped_document, probe_identity
from probe.notify.sinks.build import build_sinks
from probe.notify.spool import SpoolFull, SpoolWriter

log = logging.getLogger("probe.notify")

START_TIMEOUT = 30.0
WAKE_INTERVAL = 5_000_000
"""Nanoseconds between two wake-ups of the delivery process; between them it finds what was
spooled by itself (it looks again every few milliseconds while notifications come)."""
REPLY_MARGIN = 30.0
"""Seconds beyond a request's own time that the delivery process may take to answer (a sink
blocked in a send until its timeout)."""


class Outbox:
    def __init__(self, config: Config, clock: Clock) -> None:
        directory = config.spool_directory
        if not directory:
            raise NotifyError("sinks are configured but there is no spool to keep their notifications until delivered: set [notify] spool_directory (or [store] directory)")
        self.config = config
        self.clock = clock
        self.identity = probe_identity(config)
        self.sinks = build_sinks(config, clock)
        for sink in self.sinks:
            sink.close()
        self.spool = SpoolWriter(directory, config.notify.spool_max_bytes, [sink.name for sink in self.sinks])
        self._first_sequence = self.spool.next_sequence
        self.dropped = 0
        """Notifications the spool could not take (full, or the disk refused them)."""
        self.dropped_first = 0
        self.dropped_last = 0
        self._dropped_reported = 0
        self._drop_reason: str | None = None
        self.statistics: dict[str, SinkStatistics] = {}
        """Per sink, as the delivery process last reported (at `close`, its final figures)."""
        self._woken = 0
        self._wake: int | None = None
        self._replies: queue.Queue = queue.Queue()
        """(request id, kind, payload) from the delivery process; id None: it died."""
        self._request_ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._restart_lock = threading.Lock()
        """Held while the delivery process is started again, and by `close`."""
        self._closing = False
        self._process: subprocess.Popen | None = None
        try:
            self._start_delivery()
        except BaseException:
            self.spool.close()
            raise

    def _start_delivery(self) -> None:
        """Start the delivery process and wait for it to be ready; its connection and wake-up
        pipe are used only from then on."""
        connection, child_end = Pipe()
        wake_read, wake_write = os.pipe()
        try:
            # The child keeps the spool's lock too: if the probe dies, no new probe takes the spool
            # until this delivery process has stopped. -P: never import from the working directory.
            process = subprocess.Popen([sys.executable, "-P", "-m", "probe.notify.delivery", str(child_end.fileno()), str(wake_read)], pass_fds=(child_end.fileno(), wake_read, self.spool.lock_descriptor), stdin=subprocess.DEVNULL)
        except OSError:
            connection.close()
            os.close(wake_write)
            raise
        finally:
            child_end.close()
            os.close(wake_read)
        while not self._replies.empty():  # answers of a process that died
            with suppress(queue.Empty):
                self._replies.get_nowait()
        connection.send((self.config, self.clock.fixed, self._first_sequence))
        threading.Thread(target=self._listen, args=(connection, process), name="outbox-listener", daemon=True).start()
        reply = self._reply(0, START_TIMEOUT)
        if reply[1] != "ready":
            process.kill()
            connection.close()
            os.close(wake_write)
            raise NotifyError(f"the notification delivery process did not start: {reply[2]}")
        os.set_blocking(wake_write, False)
        previous, self._wake = self._wake, wake_write
        self._process, self._connection = process, connection
        if previous is not None:
            os.close(previous)

    def _listen(self, connection: Any, process: subprocess.Popen) -> None:
        """Log what the delivery process logs, pass its answers on, start it again if it dies
        (waiting `retry_initial`, doubled at each failed start up to `retry_max`)."""
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            if message[0] == "log":
                log.log(message[1], message[2])
            else:
                self._replies.put(message)
        code = process.wait()
        self._replies.put((None, "failed", f"the delivery process ended (exit code {code})"))
        if self._closing or process is not self._process:
            return
        log.error(f"the notification delivery process ended (exit code {code}); notifications stay spooled; starting it again")
        delay = self.config.notify.retry_initial
        while True:
            time.sleep(delay)
            with self._restart_lock:
                if self._closing:
                    return
                try:
                    self._start_delivery()
                    return
                except (NotifyError, OSError) as error:
                    log.error(f"the notification delivery process cannot be started again: {error}; notifications stay spooled; trying again in {delay:.0f} s")
            delay = min(delay * 2, self.config.notify.retry_max)

    def _reply(self, request_id: int, timeout: float) -> tuple:
        """The answer to `request_id` (0: the start), or a failure."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return (request_id, "failed", f"no answer within {timeout:.0f} s")
            if reply[0] == request_id or reply[0] is None:
                return reply

    def _request(self, kind: str, timeout: float, *arguments: Any) -> tuple:
        """Ask the delivery process; while it is being started again, ask the new one."""
        deadline = time.monotonic() + timeout
        while True:
            request_id = next(self._request_ids)
            try:
                with self._send_lock:
                    self._connection.send((request_id, kind, *arguments))
                reply = self._reply(request_id, max(0.0, deadline - time.monotonic()))
            except OSError as error:
                reply = (request_id, "failed", str(error))
            if reply[1] != "failed" or self._closing or time.monotonic() >= deadline:
                return reply
            time.sleep(0.1)

    def put(self, item: Any, expires: int) -> bool:
        """Spool a notification (a document, or an event's compact form) for every sink; False
        when the spool could not take it (counted in `dropped`)."""
        created = time.time_ns()
        try:
            self.spool.append(created, expires, item)
        except SpoolFull as error:
            self.dropped += 1
            self.dropped_first = self.dropped_first or created
            self.dropped_last = created
            if self._drop_reason is None:
                log.error(f"{error}: notifications are dropped (counted; the events are still stored) until the sinks catch up")
            self._drop_reason = str(error)
            return False
        if self.dropped > self._dropped_reported:
            self._report_dropped(created)
        if created - self._woken >= WAKE_INTERVAL and self._wake is not None:  # a busy delivery process looks for more by itself
            self._woken = created
            try:
                os.write(self._wake, b"\0")
            except OSError:
                pass  # the pipe is full of wake-ups already, or the delivery process is being restarted
        return True

    def _report_dropped(self, now: int) -> None:
        count = self.dropped - self._dropped_reported
        report = dropped_document(count, self.dropped_first, self.dropped_last, self._drop_reason or "", self.identity)
        try:
            self.spool.append(now, add_months(self.clock.now(), MAXIMUM_RETENTION_MONTHS), report, reserved=True)
        except SpoolFull:
            return  # with the next notification the spool takes
        log.warning(f"{self.spool.directory}: spooling again; {count} notifications were dropped, reported to every sink")
        self._dropped_reported = self.dropped
        self.dropped_first = 0
        self._drop_reason = None

    @property
    def last_sequence(self) -> int:
        return self.spool.next_sequence - 1

    def pending(self) -> dict[str, int]:
        """Per sink, notifications spooled and not yet acknowledged (or skipped by its filter)."""
        reply = self._request("status", REPLY_MARGIN, self.last_sequence)
        if reply[1] != "status":
            raise NotifyError(f"the notification delivery process does not answer: {reply[2]}")
        self.statistics = reply[2]
        return {name: statistics.pending for name, statistics in self.statistics.items()}

    def drain(self, timeout: float) -> dict[str, int]:
        """Wait until every sink has acknowledged everything spooled, or `timeout` seconds;
        what each sink still has pending (all this run spooled, when the delivery process does
        not answer)."""
        reply = self._request("drain", timeout + REPLY_MARGIN, self.last_sequence, timeout)
        if reply[1] == "drained":
            return reply[2]
        return {sink.name: self.last_sequence - self._first_sequence + 1 for sink in self.sinks}

    def close(self) -> None:
        """Stop the delivery process (a send under way finishes or times out; cursors are saved)
        and seal the spool; what is not delivered stays spooled for the next start."""
        if self.dropped > self._dropped_reported:
            self._report_dropped(time.time_ns())
        with self._restart_lock:
            self._closing = True
        reply = self._request("stop", REPLY_MARGIN + max((sink.section.timeout for sink in self.sinks), default=0), self.last_sequence)
        if reply[1] == "stopped":
            self.statistics = reply[2]
        else:
            log.error(f"the notification delivery process did not stop cleanly ({reply[2]}); notifications stay spooled")
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._connection.close()
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None
        self.spool.close()
