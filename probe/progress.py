"""A one-line progress display on a terminal's stderr, for replays of large captures."""

from __future__ import annotations

import os
import sys
import time
from typing import IO

LARGE_INPUT_BYTES = 64 * 1024 * 1024
REFRESH_SECONDS = 0.5


class Progress:
    def __init__(self, total_bytes: int | None, stream: IO[str] = sys.stderr) -> None:
        self.total_bytes = total_bytes
        self.stream = stream
        self.started = time.monotonic()
        self.shown = 0.0

    @classmethod
    def for_captures(cls, paths: list[str], stream: IO[str] = sys.stderr) -> Progress | None:
        """A progress line only when a person is watching (a terminal) and the wait is long."""
        if not stream.isatty():
            return None
        try:
            total = sum(os.path.getsize(path) for path in paths if path != "-")
        except OSError:
            return None
        if total < LARGE_INPUT_BYTES and "-" not in paths:
            return None
        return cls(total if "-" not in paths else None, stream)

    def update(self, packets: int, wire_bytes: int) -> None:
        now = time.monotonic()
        if now - self.shown < REFRESH_SECONDS:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        line = f"\r{packets:,} packets, {packets / elapsed:,.0f} packets/s"
        if self.total_bytes:
            line += f", about {min(100.0, 100.0 * wire_bytes / self.total_bytes):.0f}% of the input"
        self.stream.write(line + "\033[K")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()
