"""Mutation of valid messages for the decoders' fuzz tests: the edits that reach their error paths
(bytes changed, inserted, deleted, cut short, and length-like or delimiter-like pairs spliced in)."""

from __future__ import annotations

import random

SPLICED = [b"\xff\xff", b"\x00\x00", b"\x00\x01", b"\x00\x05", b"\x0a\x0a", b"\xc0\x0c", b"\x80\x00", b"\r\n", b"\n\n", b"0\r"]
"""Lengths at their extremes, a GREASE value, a DNS compression pointer, line ends, a chunk size."""


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(5)
        if operation == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif operation == 1:
            buf.insert(rng.randint(0, len(buf)), rng.randrange(256))
        elif operation == 2 and buf:
            del buf[rng.randrange(len(buf))]
        elif operation == 3 and buf:
            del buf[rng.randint(0, len(buf)) :]
        elif operation == 4 and len(buf) > 2:
            i = rng.randrange(len(buf) - 1)
            buf[i : i + 2] = rng.choice(SPLICED)
    return bytes(buf)
