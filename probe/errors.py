"""Exceptions a user can act on. The CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class ProbeError(Exception):
    """Base of every error the probe reports to its user instead of a traceback."""


class ConfigError(ProbeError):
    """The configuration file or a command-line option is wrong; the message names the key."""


class MarkerError(ProbeError):
    """A marker file cannot be loaded; the message names the file and, where known, the line or marker."""


class CaptureError(ProbeError):
    """A capture is unreadable from some point on; frames before `offset` were delivered intact."""

    def __init__(self, path: str, offset: int, problem: str) -> None:
        super().__init__(f"{path}: {problem} at byte offset {offset}")
        self.path = path
        self.offset = offset
        self.problem = problem


class InterfaceError(ProbeError):
    """Live capture cannot start or go on on an interface (missing, not Ethernet, no privilege,
    a filter libpcap refuses); the message names the interface or the key."""


class CompanionError(MarkerError):
    """A bundle's companion value file is unreadable, malformed, or not the file the bundle lists."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path


class StoreError(ProbeError):
    """The event store cannot be opened, read or written as asked; the message names the file."""


class NotifyError(ProbeError):
    """The notification spool or a sink cannot be set up as configured; the message names it."""


class FleetError(ProbeError):
    """The fleet's NATS bus cannot be reached or used as configured (no server, refused
    credentials, a missing stream or bucket); the message says which and what to do."""
