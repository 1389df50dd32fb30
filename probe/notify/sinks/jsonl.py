"""JSON Lines sinks: a file, rotated by size and age, and standard output.

A file sink's line is on disk (written and fsync'd) before it counts as delivered. Rotated files
are named after the retention deadline of the earliest record they hold, `<path>.<UTC deadline>`,
and deleted when it passes: a rotated file never outlives the store's limit for any line in it
(some lines go earlier than their own limit allows, which the law permits). The file being written
is rotated too when that deadline comes, delivering or idle. At start, an existing file is rotated
at once, its deadline read from the earliest time in it and the shortest retention configured; a
file that is not this sink's is refused, never rotated or deleted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from contextlib import suppress
from datetime import datetime, timezone
from typing import Any

from probe.clock import NANOSECONDS, Clock, add_months, parse_instant
from probe.config import SinkSection
from probe.errors import NotifyError
from probe.notify.sinks import Sink, SinkError
from probe.store.framing import sync_directory, write_all

ROTATED_SUFFIX = re.compile(r"\.(\d{8}T\d{6}Z)(?:-\d+)?")
TIME_FIELDS = ("first_seen", "time", "first")


def json_line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


class FileSink(Sink):
    def __init__(self, section: SinkSection, clock: Clock, shortest_retention_months: int) -> None:
        super().__init__(section)
        self.path = section.path
        self.clock = clock
        self.shortest_months = shortest_retention_months
        self._descriptor: int | None = None
        self._size = 0
        self._opened = 0.0
        self._earliest_expiry: int | None = None
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise NotifyError(f"sink {self.name}: path: directory {directory} does not exist")
        try:
            if os.path.exists(self.path) and os.path.getsize(self.path):
                self._rotate(self._deadline_of_existing())
            self._delete_expired()
        except OSError as error:
            raise NotifyError(f"sink {self.name}: path {self.path}: {error.strerror}") from None

    def describe(self) -> str:
        return f"file {self.path}"

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        """Lines written and fsync'd in one go, but rotated at the line that crosses a limit. A
        write that fails is cut back to the last whole line, so a retry appends after it."""
        now = self.clock.now()
        delivered, lines, pending = 0, [], 0
        try:
            self._delete_expired()
            for document, expires in documents:
                if self._descriptor is not None and self._rotation_due(now, pending):
                    self._write(lines)
                    delivered += len(lines)
                    lines, pending = [], 0
                    self._rotate(self._earliest_expiry)
                if self._descriptor is None:
                    self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    self._size = os.fstat(self._descriptor).st_size
                    self._opened = time.monotonic()
                line = json_line(document)
                lines.append(line)
                pending += len(line)
                self._earliest_expiry = expires if self._earliest_expiry is None else min(self._earliest_expiry, expires)
            self._write(lines)
        except OSError as error:
            self._close_file()
            raise SinkError(f"{self.path}: {error.strerror}", delivered) from None

    def maintain(self, now: int) -> None:
        """When idle too: the file being written is rotated when its earliest line's deadline
        comes, and rotated files go at theirs."""
        if self._descriptor is not None and self._earliest_expiry is not None and self._earliest_expiry <= now:
            self._rotate(self._earliest_expiry)
        self._delete_expired()

    def _rotation_due(self, now: int, pending: int) -> bool:
        return self._size + pending >= self.section.max_bytes or time.monotonic() - self._opened >= self.section.rotate_interval or (self._earliest_expiry is not None and self._earliest_expiry <= now)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"".join(lines)
        try:
            write_all(self._descriptor, data)  # type: ignore[arg-type]
            os.fsync(self._descriptor)  # type: ignore[arg-type]
        except OSError:
            with suppress(OSError):
                os.ftruncate(self._descriptor, self._size)  # type: ignore[arg-type]
            raise
        self._size += len(data)

    def _rotate(self, deadline: int | None) -> None:
        self._close_file()
        if deadline is None or not os.path.exists(self.path):
            return
        stamp = datetime.fromtimestamp(deadline // NANOSECONDS, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target, number = f"{self.path}.{stamp}", 0
        while os.path.exists(target):
            number += 1
            target = f"{self.path}.{stamp}-{number}"
        os.rename(self.path, target)
        sync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._earliest_expiry = None

    def _delete_expired(self) -> None:
        directory, base = os.path.split(os.path.abspath(self.path))
        now = self.clock.now()
        for name in os.listdir(directory):
            match = ROTATED_SUFFIX.fullmatch(name[len(base):]) if name.startswith(base) else None
            try:
                deadline = parse_instant(match.group(1)) if match else None
            except ValueError:
                continue  # not a name this sink gave
            if deadline is not None and deadline <= now:
                with suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))

    def _deadline_of_existing(self) -> int:
        """The earliest time written in the file, plus the shortest retention: no line in it may
        be kept longer. A last line without its newline (a crash mid-write) is ignored; a file
        that is not this sink's JSON Lines is refused, never touched."""
        earliest = None
        with open(self.path, "rb") as stream:
            for number, line in enumerate(stream, 1):
                if not line.endswith(b"\n"):
                    break
                try:
                    document = json.loads(line)
                    part = document[document["notification"]]
                    times = [parse_instant(part[name]) for name in TIME_FIELDS if name in part]
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise NotifyError(f"sink {self.name}: path {self.path}: line {number} is not a notification this sink wrote; move the file away or give another path") from None
                earliest = min([*times, earliest] if earliest is not None else times, default=earliest)
        return self.clock.now() if earliest is None else add_months(earliest, self.shortest_months)

    def _close_file(self) -> None:
        if self._descriptor is not None:
            with suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = None

    def close(self) -> None:
        self._close_file()


class StdoutSink(Sink):
    def describe(self) -> str:
        return "standard output"

    def deliver(self, documents: list[tuple[dict[str, Any], int]]) -> None:
        try:
            sys.stdout.buffer.write(b"".join(json_line(document) for document, _ in documents))
            sys.stdout.flush()
        except (OSError, ValueError) as error:
            raise SinkError(f"standard output: {error}") from None
