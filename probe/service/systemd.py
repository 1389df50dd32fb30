"""The systemd notification protocol (sd_notify), spoken directly: no dependency on libsystemd.

Under `Type=notify` the service says READY=1 once it captures, STOPPING=1 when it begins to stop,
STATUS=... with its figures, and WATCHDOG=1 at half the watchdog period while its main loop turns;
a probe stuck anywhere stops pinging and systemd restarts it. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(watchdog) / 2_000_000 if watchdog.isdigit() and for_us else 0.0
        """Seconds between two WATCHDOG=1; 0 when systemd watches nothing."""

    def notify(self, *assignments: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a receiver that does not read must not stop the probe
            try:
                sock.sendto("\n".join(assignments).encode(), self.address)
            except OSError:
                pass  # systemd gone or the socket not ours: the service goes on regardless
