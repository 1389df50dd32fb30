"""MarkerIndex: answers "which markers does this address or name hit" in time independent of how
many markers are loaded.

Addresses are a dict lookup. CIDR prefixes are flattened once into sorted, non-overlapping
intervals, each carrying the markers covering it, so a lookup is one binary search whatever the
number or nesting of prefixes. Names are looked up by suffix, label by label: the cost grows with
the name's label count, not with the marker count.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right

import numpy as np

from probe.bundles.format import Bundle, ValueFile
from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key, address_text
from probe.match.markers import ADDRESS_TYPES, Marker

NO_MARKERS: tuple[Marker, ...] = ()


Entry = "tuple[Marker, ...] | ValueFile"
"""What an index table holds for one key: the markers themselves, or the companion value file the
key came from (a million values share that one object; the marker is built only on a hit)."""


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
        self.inactive: dict[str, int] = {}
        """Markers by type this version cannot match yet."""
        self.active = 0
        self._networks: list[tuple[int, int, Marker]] = []
        for bundle in bundles:
            for marker in bundle.markers:
                self._add(marker.type, marker.value, (marker,), marker.subdomains)
            for value_file in bundle.value_files:
                for value in value_file.values():
                    self._add(value_file.type, value, value_file, value_file.template.subdomains)
        self.parent_zones = {parent[parent.rfind(".", 0, parent.rfind(".")) + 1 :] for parent in self.parent_names if "." in parent}
        """Last two labels of every subdomain marker that has at least two."""
        networks = [(start, end, number) for number, (start, end, _) in enumerate(self._networks)]
        self._boundaries, self._covering = _flatten(networks, [marker for _, _, marker in self._networks])
        self.has_address_markers = bool(self.addresses or networks)
        self._prepare_address_filter(networks)
        del self._networks

    def _add(self, kind: str, value: str, entry: Entry, subdomains: bool) -> None:
        if kind in ADDRESS_TYPES:
            _put(self.addresses, address_key(value), value, entry)
        elif kind == "cidr":
            network = ipaddress.ip_network(value)
            first = int.from_bytes(address_key(str(network.network_address)), "big")
            self._networks.append((first, first + network.num_addresses, _markers(entry, value)[0]))
        elif kind == "domain":
            _put(self.exact_names, value, value, entry)
            if subdomains:
                _put(self.parent_names, value, value, entry)
        elif kind == "tls_sni":
            _put(self.server_names, value, value, entry)
        elif kind == "http_host":
            _put(self.http_hosts, value, value, entry)
        else:
            self.inactive[kind] = self.inactive.get(kind, 0) + 1
            return
        self.active += 1

    def _prepare_address_filter(self, networks: list[tuple[int, int, int]]) -> None:
        """Sorted IPv4 values and merged IPv4 ranges, so that a whole batch of flows can be told
        "cannot hit an address marker" with two binary searches per address."""
        mapped_base = int.from_bytes(IPV4_MAPPED_PREFIX + bytes(4), "big")
        mapped_end = mapped_base + (1 << 32)
        self._ipv4_values = np.array(sorted(int.from_bytes(key[12:], "big") for key in self.addresses if key[:12] == IPV4_MAPPED_PREFIX), dtype=np.int64)
        ranges = sorted((max(start, mapped_base) - mapped_base, min(end, mapped_end) - mapped_base) for start, end, _ in networks if start < mapped_end and end > mapped_base)
        merged: list[list[int]] = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._ipv4_range_starts = np.array([start for start, _ in merged], dtype=np.int64)
        self._ipv4_range_ends = np.array([end for _, end in merged], dtype=np.int64)
        self._ipv6_possible = any(key[:12] != IPV4_MAPPED_PREFIX for key in self.addresses) or any(start < mapped_base or end > mapped_end for start, end, _ in networks)

    def address_candidates(self, addresses: np.ndarray) -> np.ndarray:
        """For an (n, 16) uint8 array of flow addresses, whether each may hit an address marker
        (exactly: a False is never wrong; a True is then confirmed by `match_address`)."""
        is_ipv4 = (addresses[:, :12] == np.frombuffer(IPV4_MAPPED_PREFIX, np.uint8)).all(axis=1)
        value = addresses[:, 12:16].astype(np.int64)
        value = (value[:, 0] << 24) | (value[:, 1] << 16) | (value[:, 2] << 8) | value[:, 3]
        candidates = np.zeros(len(addresses), dtype=bool)
        candidates |= sorted_contains(self._ipv4_values, value)
        if len(self._ipv4_range_starts):
            position = np.searchsorted(self._ipv4_range_starts, value, side="right") - 1
            candidates |= (position >= 0) & (value < self._ipv4_range_ends[np.maximum(position, 0)])
        candidates &= is_ipv4
        if self._ipv6_possible:
            candidates |= ~is_ipv4
        return candidates

    def match_address(self, address: bytes) -> tuple[Marker, ...]:
        """Markers hit by a 16-byte flow address, exact or by prefix."""
        found = self.addresses.get(address)
        hits = NO_MARKERS if found is None else found if found.__class__ is tuple else (found.marker(address_text(address)),)  # type: ignore[union-attr]
        if self._boundaries:
            position = bisect_right(self._boundaries, int.from_bytes(address, "big")) - 1
            if position >= 0 and self._covering[position]:
                hits += self._covering[position]
        return hits

    def match_server_name(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by a TLS server name: `tls_sni` markers of the name and `domain` markers."""
        found = self.server_names.get(name)
        return self.match_name(name) if found is None else _markers(found, name) + self.match_name(name)

    def match_http_host(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by an HTTP request's host: `http_host` markers of the host and `domain`
        markers."""
        found = self.http_hosts.get(name)
        return self.match_name(name) if found is None else _markers(found, name) + self.match_name(name)

    def match_name(self, name: str) -> tuple[Marker, ...]:
        """Markers hit by a lower-case name without trailing dot: every marker of the name itself,
        and the subdomain markers of each of its parents. Most names share no last two labels with
        any subdomain marker, which one set lookup tells before walking the parents."""
        found = self.exact_names.get(name)
        hits = NO_MARKERS if found is None else _markers(found, name)
        parents = self.parent_names
        top_dot = name.rfind(".")
        if not parents or top_dot < 0:
            return hits
        parent = name[top_dot + 1 :]
        found = parents.get(parent)
        if found is not None:
            hits += _markers(found, parent)
        zone_dot = name.rfind(".", 0, top_dot)
        if zone_dot < 0 or name[zone_dot + 1 :] not in self.parent_zones:
            return hits
        position = name.find(".")
        while position < top_dot:
            parent = name[position + 1 :]
            found = parents.get(parent)
            if found is not None:
                hits += _markers(found, parent)
            position = name.find(".", position + 1)
        return hits


def sorted_contains(sorted_values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Whether each probe is in a sorted array: one binary search per probe."""
    if not len(sorted_values) or not len(probes):
        return np.zeros(len(probes), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_values, probes), len(sorted_values) - 1)
    return sorted_values[position] == probes


def _markers(entry: Entry, value: str) -> tuple[Marker, ...]:
    return entry if entry.__class__ is tuple else (entry.marker(value),)  # type: ignore[return-value,union-attr]


def _put(table: dict, key: object, value: str, entry: Entry) -> None:
    """Add `entry` under `key`; where a key is already there (the same value in two bundles or
    files), both become marker tuples."""
    found = table.get(key)
    table[key] = entry if found is None else _markers(found, value) + _markers(entry, value)


def _flatten(networks: list[tuple[int, int, int]], markers: list[Marker]) -> tuple[list[int], list[tuple[Marker, ...]]]:
    """Sweep the prefixes' starts and ends into elementary intervals with their covering markers."""
    edges: dict[int, list[tuple[int, int]]] = {}
    for start, end, number in networks:
        edges.setdefault(start, []).append((1, number))
        edges.setdefault(end, []).append((-1, number))
    boundaries, covering = [], []
    active: dict[int, None] = {}
    for position in sorted(edges):
        for change, number in edges[position]:
            if change > 0:
                active[number] = None
            else:
                active.pop(number, None)
        boundaries.append(position)
        covering.append(tuple(markers[number] for number in sorted(active)))
    return boundaries, covering
