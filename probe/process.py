"""Protections of the probe's own process, applied before it reads any traffic or stored event.

A core dump would write process memory (packets, flow state, events) to disk, outside every
retention rule: the process is made non-dumpable and its core size limit set to zero. Messages
of the stages (the store's recoveries, evictions, disk errors) go to stderr as one line each.
"""

from __future__ import annotations

import ctypes
import logging
import resource

import click

PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


class StderrLines(logging.Handler):
    """`probe: warning: ...` on whatever stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"probe: {record.levelname.lower()}: {record.getMessage()}", err=True)


def report_to_stderr() -> None:
    logger = logging.getLogger("probe")
    if not any(isinstance(handler, StderrLines) for handler in logger.handlers):
        logger.addHandler(StderrLines(logging.WARNING))
        logger.setLevel(logging.WARNING)
        logger.propagate = False
