"""MarkerIndex: answers "which markers does this address or name hit" in time independent of how
many markers are loaded.

Addresses are a dict lookup. CIDR prefixes are flattened once into sorted, non-overlapping
intervals, each carrying the prefixes covering it, so a lookup is one binary search whatever the
number or nesting of prefixes (for IPv4, within a bucket of a few intervals). Names are looked up
by suffix, label by label: the cost grows with the name's label count, not with the marker count.

`address_candidates` tells a whole batch of flows which may hit: the IPv4 values and prefixes are
merged into disjoint ranges, tested with a bitmap of blocks of address space small enough to stay
in the processor's caches, then a bucketed search (`SortedKeys`) for the few the bitmap lets pass.
A million markers then cost a batch about what ten thousand do: a plain binary search over them
would read twenty places in memory per address, most of them cache misses.

The index is built once per version of the marker set, outside the hot path. Companion value files
(a million values) are loaded by a loop of their own per type, and their markers are only built on
a hit: a table holds the `ValueFile` a key came from, never a million `Marker` objects. Building
uses no hash an attacker can aim at (Python's str hash is seeded per process; the arrays are
sorted), and a value repeated any number of times is gathered in a list: a hostile feed loads in
linear time.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable
from itertools import groupby, islice
from operator import itemgetter

import numpy as np

from probe.bundles.format import Bundle, ValueFile
from probe.bundles.values import ascii_name
from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key, address_text
from probe.match.markers import ADDRESS_TYPES, Marker

NO_MARKERS: tuple[Marker, ...] = ()
MAPPED_BASE = int.from_bytes(IPV4_MAPPED_PREFIX + bytes(4), "big")
"""The IPv4-mapped block of the 16-byte address space, where flows keep their IPv4 addresses."""
MAPPED_END = MAPPED_BASE + (1 << 32)
_MAPPED_WORD = 0xFFFF
"""The third big-endian 32-bit word of an IPv4-mapped address (the first two are zero)."""
BUILD_CHUNK = 65_536
"""Keys turned into arrays at once when building."""
FEW_PROBES = 256
"""Fewer probes than this are searched by plain binary search: setting up the buckets and the
bitmap would cost more than the cache misses they save."""


Entry = "tuple[Marker, ...] | ValueFile"
"""What an index table holds for one key: the markers themselves, or the companion value file the
key came from (a million values share that one object; the marker is built only on a hit)."""


class SortedKeys:
    """Sorted unsigned integers (IPv4 addresses, name hashes) searched a whole batch at a time.

    A binary search over a million keys reads twenty places far apart, most of them outside the
    processor's caches. Here the keys are cut into buckets by their top bits, about two keys a
    bucket, and a table says where each bucket starts: a probe is searched only in its own bucket,
    a few keys side by side, with one vector step per halving. Keys bunched into one bucket (a
    hostile feed) only add steps, one per doubling of the largest bucket."""

    MAX_BITS = 22

    def __init__(self, keys: np.ndarray, key_bits: int) -> None:
        """`keys`: sorted, of an unsigned dtype `key_bits` wide."""
        count = len(keys)
        self.bits = max(1, min(count.bit_length() - 1, self.MAX_BITS))
        self.shift = keys.dtype.type(key_bits - self.bits)
        self.starts = np.empty((1 << self.bits) + 1, dtype=np.int32)
        """Where the keys of each bucket start, and where the last bucket ends."""
        for bucket in range(0, 1 << self.bits, BUILD_CHUNK):
            first_keys = np.arange(bucket, min(bucket + BUILD_CHUNK, 1 << self.bits), dtype=keys.dtype) << self.shift
            self.starts[bucket : bucket + len(first_keys)] = np.searchsorted(keys, first_keys)
        self.starts[-1] = count
        self.steps = int(np.diff(self.starts).max()).bit_length()
        self.keys = keys
        self.count = count

    def count_at_most(self, probes: np.ndarray) -> np.ndarray:
        """For each probe (of the keys' dtype), how many keys are lower or equal."""
        if len(probes) < FEW_PROBES:
            return np.searchsorted(self.keys, probes, side="right")
        buckets = (probes >> self.shift).astype(np.intp)
        low, high = self.starts[buckets], self.starts[buckets + 1]
        keys = self.keys
        for _ in range(self.steps):
            middle = (low + high) >> 1
            right = (np.take(keys, middle, mode="clip") <= probes) & (middle < high)  # clip: an empty window may sit past the end
            low = np.where(right, middle + 1, low)
            high = np.where(right, high, middle)
        return low


class BlockBitmap:
    """One bit per block of consecutive keys: whether the block holds a key, or part of a range.
    Most probes are told "not there" by one bit of a table small enough to stay in the processor's
    caches (2 MB at most), and only the others are searched."""

    MAX_BITS = 24

    def __init__(self, firsts: np.ndarray, lasts: np.ndarray, key_bits: int) -> None:
        """`firsts`, `lasts`: the first and last key of each range (the same array for single
        keys), of an unsigned dtype `key_bits` wide."""
        bits = max(16, min(len(firsts).bit_length() + 4, self.MAX_BITS))  # a million keys mark about 1 block in 16
        self.shift = firsts.dtype.type(key_bits - bits)
        self.bits = np.zeros(1 << (bits - 3), dtype=np.uint8)
        for start in range(0, len(firsts), BUILD_CHUNK):
            first_blocks = firsts[start : start + BUILD_CHUNK] >> self.shift
            self._mark(first_blocks)
            if lasts is not firsts:
                last_blocks = lasts[start : start + BUILD_CHUNK] >> self.shift
                self._mark(last_blocks)
                wide = last_blocks - first_blocks > 1
                for first, last in zip(first_blocks[wide].tolist(), last_blocks[wide].tolist()):
                    self._mark_span(first + 1, last - 1)

    def _mark(self, blocks: np.ndarray) -> None:
        np.bitwise_or.at(self.bits, blocks >> 3, np.left_shift(1, (blocks & 7).astype(np.uint8)))

    def _mark_span(self, first: int, last: int) -> None:
        """Mark the blocks first to last, included: whole bytes at once."""
        whole_start, whole_end = (first + 7) >> 3, (last + 1) >> 3
        if whole_start < whole_end:
            self.bits[whole_start:whole_end] = 0xFF
            self._mark(np.array([*range(first, whole_start << 3), *range(whole_end << 3, last + 1)], dtype=np.int64))
        else:
            self._mark(np.arange(first, last + 1, dtype=np.int64))

    def may_hold(self, probes: np.ndarray) -> np.ndarray:
        blocks = probes >> self.shift
        return (self.bits[blocks >> 3] >> (blocks & 7).astype(np.uint8)) & 1 == 1


class KeySet:
    """Sorted unique keys (name hashes): which probes are among them."""

    def __init__(self, keys: np.ndarray, key_bits: int) -> None:
        self._keys = SortedKeys(keys, key_bits)
        self._blocks = BlockBitmap(keys, keys, key_bits)
        self.count = len(keys)

    def contains(self, probes: np.ndarray) -> np.ndarray:
        keys = self._keys.keys
        if not self.count:
            return np.zeros(len(probes), dtype=bool)
        if len(probes) < FEW_PROBES:
            return keys[np.minimum(np.searchsorted(keys, probes), self.count - 1)] == probes
        found = np.zeros(len(probes), dtype=bool)
        rows = np.flatnonzero(self._blocks.may_hold(probes))
        if len(rows):
            probe = probes[rows]
            position = self._keys.count_at_most(probe) - 1
            found[rows] = (position >= 0) & (keys[position] == probe)
        return found


class IntervalSet:
    """Sorted disjoint ranges of unsigned keys, none adjacent to the next: which probes fall in one.
    The ranges' edges (each range's first key, and the key after its last) are searched as
    SortedKeys: a probe is in a range when an odd number of edges are at or below it."""

    def __init__(self, firsts: np.ndarray, lasts: np.ndarray, key_bits: int) -> None:
        edges = np.empty(2 * len(firsts), dtype=firsts.dtype)
        edges[0::2] = firsts
        edges[1::2] = lasts
        edges[1::2] += firsts.dtype.type(1)  # 0 after a range that ends at the top: dropped below
        if len(lasts) and lasts[-1] == np.iinfo(lasts.dtype).max:
            edges = edges[:-1].copy()
        self._edges = SortedKeys(edges, key_bits)
        self._blocks = BlockBitmap(firsts, lasts, key_bits)
        self.count = len(firsts)

    def covers(self, probes: np.ndarray) -> np.ndarray:
        if len(probes) < FEW_PROBES:
            return self._edges.count_at_most(probes) & 1 == 1
        inside = np.zeros(len(probes), dtype=bool)
        rows = np.flatnonzero(self._blocks.may_hold(probes))
        if len(rows):
            inside[rows] = self._edges.count_at_most(probes[rows]) & 1 == 1
        return inside


class MarkerIndex:
    def __init__(self, bundles: list[Bundle]) -> None:
        self.addresses: dict[bytes, Entry] = {}
        self.exact_names: dict[str, Entry] = {}
        """`domain` markers, by name."""
        self.parent_names: dict[str, Entry] = {}
        """`domain` markers that also match every name below theirs."""
        self.server_names: dict[str, Entry] = {}
        """`tls_sni` markers."""
        self.http_hosts: dict[str, Entry] = {}
        self.fingerprints: dict[str, Entry] = {}
        """`ja3` (32 hex digits) and `ja4` markers: the two forms never collide."""
        self.certificates: dict[str, Entry] = {}
        """`x509_sha256` markers."""
        self.urls: dict[str, list[tuple[int | None, str, Entry, str]]] = {}
        """`url` markers by lower-case host: (port or None, path prefix, entry, value)."""
        self.pattern_markers: list[Marker] = []
        """`bytes` markers, compiled together by match/patterns.py."""
        self.yara_markers: list[Marker] = []
        """`yara` markers, compiled together by match/yara_rules.py."""
        self.active = 0
        self._networks: list[tuple[int, int]] = []
        """(first, end) of each CIDR marker in the 16-byte address space, end excluded."""
        self._network_sources: list[tuple[int, Entry, str]] = []
        """(number, entry, value) of each CIDR marker: what the intervals it covers hold."""
        self._merged: list[tuple[dict, object]] = []
        """Keys given more than once: their markers are gathered in a list while building."""
        self._network_numbers: dict[str, int] = {}
        """Number of each network: a network given twice is one, with the markers of both, so that
        no interval is covered by more than the 33 (129) nested prefixes of different lengths."""
        for bundle in bundles:
            for marker in bundle.markers:
                self._add(marker.type, marker.value, (marker,), marker.subdomains)
            for value_file in bundle.value_files:
                self._add_file(value_file)
        for table in (self.exact_names, self.parent_names, self.server_names, self.http_hosts):
            self._file_under_ascii_names(table)
        for table, key in self._merged:
            table[key] = tuple(table[key])
        self._prepare_networks()
        self.has_address_markers = bool(self.addresses or self._networks)
        self._prepare_address_filter()
        del self._networks, self._network_sources, self._network_numbers, self._merged

    def _add(self, kind: str, value: str, entry: Entry, subdomains: bool) -> None:
        if kind in ADDRESS_TYPES:
            _put(self.addresses, address_key(value), value, entry, self._merged)
        elif kind == "cidr":
            number = self._network_numbers.setdefault(value, len(self._networks))
            if number == len(self._networks):
                self._network_sources.append((number, entry, value))
                self._networks.append(_network_range(value))
            else:  # gathered in a list, as `_put` does
                found = self._network_sources[number][1]
                if found.__class__ is list:
                    found.extend(_markers(entry, value))  # type: ignore[union-attr]
                else:
                    self._network_sources[number] = (number, [*_markers(found, value), *_markers(entry, value)], value)  # type: ignore[list-item]
        elif kind == "domain":
            _put(self.exact_names, value, value, entry, self._merged)
            if subdomains:
                _put(self.parent_names, value, value, entry, self._merged)
        elif kind == "tls_sni":
            _put(self.server_names, value, value, entry, self._merged)
        elif kind == "http_host":
            _put(self.http_hosts, value, value, entry, self._merged)
        elif kind in ("ja3", "ja4"):
            _put(self.fingerprints, value, value, entry, self._merged)
        elif kind == "x509_sha256":
            _put(self.certificates, value, value, entry, self._merged)
        elif kind == "url":
            host, _, path = value.partition("/")
            name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
            prefix = ("/" + path).encode("utf-8", "surrogateescape").decode("latin-1")  # requests' paths are bytes read as latin-1
            self.urls.setdefault(name.strip("[]") if colon else host.strip("[]"), []).append((int(port) if colon else None, prefix, entry, value))
        elif kind == "bytes":
            self.pattern_markers.append(entry[0])  # type: ignore[index]
        else:  # yara: bundle files allow no other type
            self.yara_markers.append(entry[0])  # type: ignore[index]
        self.active += 1

    def _file_under_ascii_names(self, table: dict) -> None:
        """File each internationalised name also under its IDNA form, with its own markers (they
        keep the name as the marker gave it)."""
        for name in [name for name in table if not name.isascii()]:
            alias = ascii_name(name)
            if alias is not None:
                _put(table, alias, alias, _markers(table[name], name), self._merged)

    def _add_file(self, value_file: ValueFile) -> None:
        """`_add` for every value of a companion file, in a loop that does nothing else."""
        kind = value_file.type
        if kind in ADDRESS_TYPES:
            count = _load(value_file, self._merged, self.addresses, address_key)
        elif kind == "domain":
            count = _load(value_file, self._merged, self.exact_names, also=self.parent_names if value_file.template.subdomains else None)
        elif kind == "tls_sni":
            count = _load(value_file, self._merged, self.server_names)
        elif kind == "http_host":
            count = _load(value_file, self._merged, self.http_hosts)
        elif kind in ("ja3", "ja4"):
            count = _load(value_file, self._merged, self.fingerprints)
        elif kind == "x509_sha256":
            count = _load(value_file, self._merged, self.certificates)
        else:
            for value in value_file.values():
                self._add(kind, value, value_file, False)
            return
        self.active += count

    def _prepare_networks(self) -> None:
        """Flatten the prefixes into elementary intervals: those inside the IPv4-mapped block in
        IPv4 numbers, with a table of where each bucket of IPv4 space starts among them (a lookup
        then bisects a few intervals, not all of them), the others in 16-byte numbers."""
        self._network_sources = [(number, tuple(entry) if entry.__class__ is list else entry, value) for number, entry, value in self._network_sources]
        inside = [(first - MAPPED_BASE, end - MAPPED_BASE, number) for number, (first, end) in enumerate(self._networks) if first >= MAPPED_BASE and end <= MAPPED_END]
        others = [(first, end, number) for number, (first, end) in enumerate(self._networks) if first < MAPPED_BASE or end > MAPPED_END]
        bounds, self._ipv4_covering = _flatten(inside, self._network_sources)
        ranges = np.array([(first, end - 1) for first, end, _ in inside], dtype=np.uint32).reshape(-1, 2)
        blocks = BlockBitmap(ranges[:, 0], ranges[:, 1], 32)
        self._ipv4_network_blocks, self._ipv4_network_block_shift = blocks.bits.tobytes(), int(blocks.shift)
        """`BlockBitmap` of the IPv4 prefixes as bytes, read one address at a time: most addresses
        are in no prefix, and one bit tells."""
        self._ipv4_bounds = array("q", bounds)
        self._ipv4_bucket_bits = max(1, min(len(bounds).bit_length() - 1, SortedKeys.MAX_BITS))
        shift = 32 - self._ipv4_bucket_bits
        self._ipv4_bucket_shift = shift
        self._ipv4_buckets = array("q", np.searchsorted(np.array(bounds, dtype=np.int64), np.arange((1 << self._ipv4_bucket_bits) + 1, dtype=np.int64) << shift).tolist())
        """Where the intervals starting in each bucket of IPv4 space begin among the bounds."""
        self._boundaries, self._covering = _flatten(others, self._network_sources)
        self._others_over_ipv4 = any(first < MAPPED_END and end > MAPPED_BASE for first, end, _ in others)
        """Whether a prefix outside the IPv4-mapped block covers part of it (::/0, say)."""

    def _prepare_address_filter(self) -> None:
        """The IPv4 values and the IPv4 parts of the prefixes, merged into sorted disjoint ranges,
        so that a whole batch of flows can be told "cannot hit an address marker" at once. Built
        chunk by chunk and in place where it can: the heap keeps what a build's temporary arrays
        once took."""
        self._ipv6_possible = any(first < MAPPED_BASE or end > MAPPED_END for first, end in self._networks)
        values = np.empty(len(self.addresses), dtype=np.uint32)
        count = 0
        keys = iter(self.addresses)
        while chunk := b"".join(islice(keys, BUILD_CHUNK)):
            words = np.frombuffer(chunk, dtype=">u4").reshape(-1, 4)
            mapped = (words[:, 0] == 0) & (words[:, 1] == 0) & (words[:, 2] == _MAPPED_WORD)
            self._ipv6_possible |= not mapped.all()
            found = words[mapped, 3]
            values[count : count + len(found)] = found
            count += len(found)
        values = values[:count]
        values.sort()
        clipped = sorted((max(first, MAPPED_BASE) - MAPPED_BASE, min(end, MAPPED_END) - MAPPED_BASE - 1) for first, end in self._networks if first < MAPPED_END and end > MAPPED_BASE)
        networks = np.array(clipped, dtype=np.uint32).reshape(-1, 2)
        places = np.searchsorted(values, networks[:, 0])
        firsts = np.insert(values, places, networks[:, 0])
        reach = np.insert(values, places, networks[:, 1])
        del values
        np.maximum.accumulate(reach, out=reach)
        # A range opens a merged range unless it starts at most one past the end of those before it;
        # a merged range closes where the next one opens.
        opens = np.ones(len(firsts), dtype=bool)
        opens[1:] = (firsts[1:] > reach[:-1]) & (firsts[1:] - reach[:-1] > 1)
        closes = np.ones(len(firsts), dtype=bool)
        closes[:-1] = opens[1:]
        firsts, reach = firsts[opens], reach[closes]
        self._ipv4_ranges = IntervalSet(firsts, reach, 32)

    def address_candidates(self, addresses: np.ndarray) -> np.ndarray:
        """For an (n, 16) uint8 array of flow addresses, whether each may hit an address marker
        (exactly: a False is never wrong; a True is then confirmed by `match_address`)."""
        words = np.ascontiguousarray(addresses).view(">u4").astype(np.uint32)
        is_ipv4 = (words[:, 0] == 0) & (words[:, 1] == 0) & (words[:, 2] == _MAPPED_WORD)
        candidates = self._ipv4_ranges.covers(words[:, 3]) & is_ipv4
        if self._ipv6_possible:
            candidates |= ~is_ipv4
        return candidates

    def match_address(self, address: bytes) -> tuple[Marker, ...]:
        """Markers hit by a 16-byte flow address, exact or by prefix."""
        found = self.addresses.get(address)
        hits = NO_MARKERS if found is None else found if found.__class__ is tuple else (found.marker(address_text(address)),)  # type: ignore[union-attr]
        covered: tuple[tuple[int, Entry, str], ...] = ()
        if address.startswith(IPV4_MAPPED_PREFIX):
            value = int.from_bytes(address[12:], "big")
            block = value >> self._ipv4_network_block_shift
            if self._ipv4_network_blocks[block >> 3] >> (block & 7) & 1:
                bucket = value >> self._ipv4_bucket_shift
                position = bisect_right(self._ipv4_bounds, value, self._ipv4_buckets[bucket], self._ipv4_buckets[bucket + 1]) - 1
                if position >= 0:
                    covered = self._ipv4_covering[position]
            if not self._others_over_ipv4:
                return hits + _network_markers(covered) if covered else hits
        if self._boundaries:
            position = bisect_right(self._boundaries, int.from_bytes(address, "big")) - 1
            if position >= 0 and self._covering[position]:
                covered = tuple(sorted(covered + self._covering[position]))  # in marker order: by number
        return hits + _network_markers(covered) if covered else hits

    def match_server_name(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by a TLS server name: `tls_sni` markers of the name and `domain` markers."""
        found = self.server_names.get(name)
        return self.match_name(name) if found is None else _markers(found, name) + self.match_name(name)

    def match_http_host(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by an HTTP request's host: `http_host` markers of the host and `domain`
        markers."""
        found = self.http_hosts.get(name)
        return self.match_name(name) if found is None else _markers(found, name) + self.match_name(name)

    def match_fingerprint(self, fingerprint: str) -> tuple[Marker, ...]:
        """Markers hit by a ClientHello's JA3 MD5 or JA4."""
        found = self.fingerprints.get(fingerprint)
        return NO_MARKERS if found is None else _markers(found, fingerprint)

    def match_certificate(self, digest: str) -> tuple[Marker, ...]:
        """Markers hit by a server certificate's SHA-256 (lower-case hex)."""
        found = self.certificates.get(digest)
        return NO_MARKERS if found is None else _markers(found, digest)

    def match_url(self, host: str, port: int, path: str) -> tuple[Marker, ...]:
        """`url` markers hit by a request: same host (case-insensitive), same port when the marker
        names one, and a path that starts with the marker's (bytes compared exactly)."""
        found = self.urls.get(host)
        if found is None:
            return NO_MARKERS
        hits: tuple[Marker, ...] = ()
        for marker_port, prefix, entry, value in found:
            if (marker_port is None or marker_port == port) and path.startswith(prefix):
                hits += _markers(entry, value)
        return hits

    def match_name(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by a lower-case name without trailing dot: every marker of the name itself,
        and the subdomain markers of each of its parents."""
        found = self.exact_names.get(name)
        hits = NO_MARKERS if found is None else found if found.__class__ is tuple else (found.marker(name),)  # type: ignore[union-attr]
        parents = self.parent_names
        top_dot = name.rfind(".")
        if not parents or top_dot < 0:
            return hits
        parent = name[top_dot + 1 :]
        found = parents.get(parent)
        if found is not None:
            hits += found if found.__class__ is tuple else (found.marker(parent),)  # type: ignore[union-attr,operator]
        position = name.find(".")
        while position < top_dot:
            parent = name[position + 1 :]
            found = parents.get(parent)
            if found is not None:
                hits += found if found.__class__ is tuple else (found.marker(parent),)  # type: ignore[union-attr,operator]
            position = name.find(".", position + 1)
        return hits


def _markers(entry: Entry, value: str) -> tuple[Marker, ...]:
    if entry.__class__ is list:  # while building: a key given more than once
        return tuple(entry)  # type: ignore[arg-type]
    return entry if entry.__class__ is tuple else (entry.marker(value),)  # type: ignore[return-value,union-attr]


def _put(table: dict, key: object, value: str, entry: Entry, merged: list[tuple[dict, object]]) -> None:
    """Add `entry` under `key`. A key given again (the same value in two bundles, files or lines)
    gets a list of all its markers, made a tuple once the index is built: adding stays linear
    however often a value repeats."""
    found = table.get(key)
    if found is None:
        table[key] = entry
    elif found.__class__ is list:
        found.extend(_markers(entry, value))
    else:
        table[key] = [*_markers(found, value), *_markers(entry, value)]
        merged.append((table, key))


def _load(value_file: ValueFile, merged: list[tuple[dict, object]], table: dict, key_of: Callable[[str], object] | None = None, also: dict | None = None) -> int:
    """`_put` every value of a companion file into `table` (under `key_of(value)`, or the value
    itself), and into `also` when given; return how many values there were."""
    count = 0
    get = table.get
    if key_of is not None:
        for value in value_file.values():
            key = key_of(value)
            if get(key) is None:
                table[key] = value_file
            else:
                _put(table, key, value, value_file, merged)
            count += 1
    elif also is None:
        for value in value_file.values():
            if get(value) is None:
                table[value] = value_file
            else:
                _put(table, value, value, value_file, merged)
            count += 1
    else:
        get_also = also.get
        for value in value_file.values():
            if get(value) is None:
                table[value] = value_file
            else:
                _put(table, value, value, value_file, merged)
            if get_also(value) is None:
                also[value] = value_file
            else:
                _put(also, value, value, value_file, merged)
            count += 1
    return count


def _network_range(value: str) -> tuple[int, int]:
    """(first, end) of a canonical network (`198.51.100.0/24`, `2001:db8::/32`) in the 16-byte
    address space, end excluded."""
    address, _, length = value.partition("/")
    first = int.from_bytes(address_key(address), "big")
    return first, first + (1 << ((128 if ":" in address else 32) - int(length)))


def _network_markers(covered: tuple[tuple[int, Entry, str], ...]) -> tuple[Marker, ...]:
    """The markers of the prefixes covering an interval, built for those from companion files."""
    markers: tuple[Marker, ...] = ()
    for _, entry, value in covered:
        markers += entry if entry.__class__ is tuple else (entry.marker(value),)  # type: ignore[union-attr,operator]
    return markers


def _flatten(networks: list[tuple[int, int, int]], sources: list[tuple[int, Entry, str]]) -> tuple[list[int], list[tuple[tuple[int, Entry, str], ...]]]:
    """Sweep the (start, end, number) of prefixes into elementary intervals: their starts, sorted,
    and the sources of the prefixes covering each, by number."""
    edges = sorted([(start, 1, number) for start, _, number in networks] + [(end, -1, number) for _, end, number in networks])
    boundaries: list[int] = []
    covering: list[tuple[tuple[int, Entry, str], ...]] = []
    active: dict[int, None] = {}
    for position, changes in groupby(edges, key=itemgetter(0)):
        for _, change, number in changes:
            if change > 0:
                active[number] = None
            else:
                del active[number]
        boundaries.append(position)
        covering.append(tuple(sources[number] for number in sorted(active)))
    return boundaries, covering
