"""Vector pre-filter for names: which of a batch's DNS questions and ClientHello server names could
hit a domain marker at all.

Most names on a network belong to nothing the markers know, yet decoding each in Python costs more
than the rest of its packet's journey. The batch classifier extracts the names of the common cases
with numpy; here each name, and each of its parents (one per dot), is hashed with a polynomial
hash computed for the whole batch from one cumulative sum, and compared with the hashes of the
markers' names. Only names whose own hash or a parent's matches go on to the exact per-packet path
(`MarkerIndex.match_name`); a collision only costs that path a lookup, and nothing that could hit
is dropped. Names this filter cannot judge (too long, non-ASCII, oddly formed) always go on.

The markers' hashes are a sorted array (`KeySet`): a bitmap of blocks of hash space, small enough
to stay in the processor's caches, rules out most names, and a bucketed search settles the rest, so
that a million marked names cost a batch about what ten thousand do.
"""

from __future__ import annotations

import numpy as np

from probe.match.index import KeySet, MarkerIndex

NAME_COLUMNS = 64
"""Names longer than this take the exact path."""
_MODULUS = 1 << 64
_BASE = 0x100000001B3
_POWERS = np.array([pow(_BASE, column, _MODULUS) for column in range(NAME_COLUMNS)], dtype=np.uint64)
_INVERSE_POWERS = np.array([pow(_BASE, -column, _MODULUS) for column in range(NAME_COLUMNS)], dtype=np.uint64)
_DOT = ord(".")


HASH_CHUNK = 16_384
"""Names hashed at once when building: bounds the build's memory for a million names."""
_NEWLINE = ord("\n")


def name_hashes(names: list[str]) -> np.ndarray:
    """Sorted unique hashes of marker names: the same polynomial as the traffic's, summed over each
    name's bytes (without padding to NAME_COLUMNS, one reduction per chunk of names). Names longer
    than NAME_COLUMNS are left out: a name the filter reads is never longer, nor is any of its
    parents."""
    hashes = [np.empty(0, dtype=np.uint64)]
    for start in range(0, len(names), HASH_CHUNK):
        chunk = names[start : start + HASH_CHUNK]
        data = np.frombuffer(("\n".join(chunk) + "\n").encode("utf-8", "surrogateescape"), dtype=np.uint8)
        ends = np.flatnonzero(data == _NEWLINE)
        if len(ends) != len(chunk):  # a name holding a line feed (never a valid one): encode them one by one
            encoded = [name.encode("utf-8", "surrogateescape") for name in chunk]
            data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            ends = np.cumsum([len(name) for name in encoded], dtype=np.int64)
            data = np.insert(data, ends, 0)  # a zero after each name, where the line feeds would be
            ends += np.arange(len(ends))
        starts = np.empty(len(ends), dtype=np.int64)
        starts[:1], starts[1:] = 0, ends[:-1] + 1
        lengths = ends - starts
        columns = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths + 1)
        weights = _POWERS[np.minimum(columns, NAME_COLUMNS - 1)]
        weights[ends] = 0
        sums = np.add.reduceat(data * weights, starts)
        hashes.append(sums[(lengths > 0) & (lengths <= NAME_COLUMNS)])
    values = np.concatenate(hashes)
    values.sort()  # then drop repeats: np.unique hashes first, several times slower on a million
    return values[np.append(True, values[1:] != values[:-1])] if len(values) else values


class NameFilter:
    def __init__(self, index: MarkerIndex) -> None:
        self._names = KeySet(name_hashes(list(index.exact_names) + list(index.server_names)), 64)
        self._parents = KeySet(name_hashes(list(index.parent_names)), 64)

    def may_hit(self, names: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """For an (n, NAME_COLUMNS) uint8 matrix of dotted names (bytes past each length are
        ignored), whether each may name a marked domain or a child of one. Rows whose length is 0
        or above NAME_COLUMNS, or that hold bytes the exact path would decode differently, are
        reported True: the caller sends them on."""
        count = len(lengths)
        if not self._names.count or not count:
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
        hit = self._names.contains(whole)
        if self._parents.count:
            # A parent starts after each dot: hash(name[j:]) = (whole - prefix[j-1]) / BASE**j.
            dots = (text[:, :-1] == _DOT) & inside[:, 1:]
            parent_rows, starts = np.nonzero(dots)
            starts += 1
            parents = (whole[parent_rows] - prefix[parent_rows, starts - 1]) * _INVERSE_POWERS[starts]
            hit[parent_rows[self._parents.contains(parents)]] = True
        return hit | unjudged

