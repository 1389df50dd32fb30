"""The unit of work handed from capture to decode: many frames sharing one buffer.

Frames are not copied out of the chunk they were read in; a batch carries the chunk and numpy
arrays describing each frame, so that decode can classify a whole batch with vector operations and
only fall back to per-frame Python code for the unusual ones.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

FrameBuffer = bytes | mmap.mmap
"""What frames are read from: a mapped capture file, or the chunks of a stream."""


@dataclass(slots=True)
class FrameBatch:
    data: FrameBuffer
    """Buffer the frames live in."""
    offsets: np.ndarray
    """int64: start of each frame's captured bytes in `data`."""
    caplens: np.ndarray
    """int64: captured length of each frame (bytes present in `data`)."""
    wirelens: np.ndarray
    """int64: length of each frame on the wire (larger than caplen when the snap length cut it)."""
    timestamps: np.ndarray
    """int64: capture time of each frame, nanoseconds since the Unix epoch."""
    linktypes: np.ndarray
    """int64: LINKTYPE_* value of each frame (pcapng interfaces may differ)."""

    def __len__(self) -> int:
        return len(self.offsets)
