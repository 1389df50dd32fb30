"""Vector pre-filter for names: which of a batch's DNS questions and ClientHello server names could
hit a domain marker at all.

Most names on a network belong to nothing the markers know, yet decoding each in Python costs more
than the rest of its packet's journey. The batch classifier extracts the names of the common cases
with numpy; here each name, and each of its parents (one per dot), is hashed with a polynomial
hash computed for the whole batch from one cumulative sum, and compared with the hashes of the
markers' names. Only names whose own hash or a parent's matches go on to the exact per-packet path
(`MarkerIndex.match_name`); a collision only costs that path a lookup, and nothing that could hit
is dropped. Names this filter cannot judge (too long, non-ASCII, oddly formed) always go on.
"""

from __future__ import annotations

import numpy as np

from probe.match.index import MarkerIndex, sorted_contains

NAME_COLUMNS = 64
"""Names longer than this take the exact path."""
_MODULUS = 1 << 64
_BASE = 0x100000001B3
_POWERS = np.array([pow(_BASE, column, _MODULUS) for column in range(NAME_COLUMNS)], dtype=np.uint64)
_INVERSE_POWERS = np.array([pow(_BASE, -column, _MODULUS) for column in range(NAME_COLUMNS)], dtype=np.uint64)
_DOT = ord(".")


HASH_CHUNK = 65_536
"""Names hashed at once when building: bounds the build's peak memory for a million names."""


def name_hashes(names: list[str]) -> np.ndarray:
    """Sorted unique hashes of marker names, computed by the same vector code as the traffic's.
    Names longer than NAME_COLUMNS are left out: a name the filter reads is never longer, nor is
    any of its parents."""
    hashes = [np.empty(0, dtype=np.uint64)]
    for start in range(0, len(names), HASH_CHUNK):
        encoded = [name.encode("utf-8", "surrogateescape") for name in names[start : start + HASH_CHUNK]]
        encoded = [name for name in encoded if len(name) <= NAME_COLUMNS]
        if not encoded:
            continue
        matrix = np.frombuffer(b"".join(name.ljust(NAME_COLUMNS, b"\0") for name in encoded), dtype=np.uint8).reshape(-1, NAME_COLUMNS)
        lengths = np.array([len(name) for name in encoded], dtype=np.int64)
        prefix = np.cumsum(matrix.astype(np.uint64) * _POWERS, axis=1)
        hashes.append(prefix[np.arange(len(encoded)), np.maximum(lengths - 1, 0)])
    return np.unique(np.concatenate(hashes))


class NameFilter:
    def __init__(self, index: MarkerIndex) -> None:
        self._names = name_hashes(list(index.exact_names) + list(index.server_names))
        self._parents = name_hashes(list(index.parent_names))

    def may_hit(self, names: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """For an (n, NAME_COLUMNS) uint8 matrix of dotted names (bytes past each length are
        ignored), whether each may name a marked domain or a child of one. Rows whose length is 0
        or above NAME_COLUMNS, or that hold bytes the exact path would decode differently, are
        reported True: the caller sends them on."""
        count = len(lengths)
        if not len(self._names) or not count:
            return np.zeros(count, dtype=bool)
        width = int(np.clip(lengths, 1, NAME_COLUMNS).max())  # no longer than the longest name here
        columns = np.arange(width)
        last = np.clip(lengths - 1, 0, width - 1)
        inside = columns[None, :] < lengths[:, None]
        text = np.where(inside, names[:, :width], 0)
        upper = (text >= 65) & (text <= 90)
        text = text + upper * np.uint8(32)
        rows = np.arange(count)
        unjudged = (lengths <= 0) | (lengths > NAME_COLUMNS) | (text >= 0x80).any(axis=1) | (text[rows, last] == _DOT)
        prefix = np.cumsum(text.astype(np.uint64) * _POWERS[:width], axis=1)
        whole = prefix[rows, last]
        hit = sorted_contains(self._names, whole)
        if len(self._parents):
            # A parent starts after each dot: hash(name[j:]) = (whole - prefix[j-1]) / BASE**j.
            dots = (text[:, :-1] == _DOT) & inside[:, 1:]
            parent_rows, starts = np.nonzero(dots)
            starts += 1
            parents = (whole[parent_rows] - prefix[parent_rows, starts - 1]) * _INVERSE_POWERS[starts]
            hit[parent_rows[sorted_contains(self._parents, parents)]] = True
        return hit | unjudged

