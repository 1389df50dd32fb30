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

from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key
from probe.match.markers import ADDRESS_TYPES, Marker

NO_MARKERS: tuple[int, ...] = ()


class MarkerIndex:
    def __init__(self, markers: list[Marker]) -> None:
        self.markers = markers
        self.addresses: dict[bytes, tuple[int, ...]] = {}
        self.exact_names: dict[str, tuple[int, ...]] = {}
        self.parent_names: dict[str, tuple[int, ...]] = {}
        networks: list[tuple[int, int, int]] = []
        for number, marker in enumerate(markers):
            if marker.type in ADDRESS_TYPES:
                key = address_key(marker.value)
                self.addresses[key] = self.addresses.get(key, NO_MARKERS) + (number,)
            elif marker.type == "cidr":
                network = ipaddress.ip_network(marker.value)
                first = int.from_bytes(address_key(str(network.network_address)), "big")
                networks.append((first, first + network.num_addresses, number))
            elif marker.type == "domain":
                self.exact_names[marker.value] = self.exact_names.get(marker.value, NO_MARKERS) + (number,)
                if marker.subdomains:
                    self.parent_names[marker.value] = self.parent_names.get(marker.value, NO_MARKERS) + (number,)
        self.parent_zones = {parent[parent.rfind(".", 0, parent.rfind(".")) + 1 :] for parent in self.parent_names if "." in parent}
        """Last two labels of every subdomain marker that has at least two."""
        self._boundaries, self._covering = _flatten(networks)
        self.has_address_markers = bool(self.addresses or networks)
        self._prepare_address_filter(networks)

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

    def match_address(self, address: bytes) -> tuple[int, ...]:
        """Markers (by number) hit by a 16-byte flow address, exact or by prefix."""
        hits = self.addresses.get(address, NO_MARKERS)
        if self._boundaries:
            position = bisect_right(self._boundaries, int.from_bytes(address, "big")) - 1
            if position >= 0 and self._covering[position]:
                hits += self._covering[position]
        return hits

    def match_name(self, name: str) -> tuple[int, ...]:
        """Markers hit by a lower-case name without trailing dot: every marker of the name itself,
        and the subdomain markers of each of its parents. Most names share no last two labels with
        any subdomain marker, which one set lookup tells before walking the parents."""
        hits = self.exact_names.get(name, NO_MARKERS)
        parents = self.parent_names
        top_dot = name.rfind(".")
        if not parents or top_dot < 0:
            return hits
        found = parents.get(name[top_dot + 1 :])
        if found:
            hits += found
        zone_dot = name.rfind(".", 0, top_dot)
        if zone_dot < 0 or name[zone_dot + 1 :] not in self.parent_zones:
            return hits
        position = name.find(".")
        while position < top_dot:
            found = parents.get(name[position + 1 :])
            if found:
                hits += found
            position = name.find(".", position + 1)
        return hits


def sorted_contains(sorted_values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Whether each probe is in a sorted array: one binary search per probe."""
    if not len(sorted_values) or not len(probes):
        return np.zeros(len(probes), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_values, probes), len(sorted_values) - 1)
    return sorted_values[position] == probes


def _flatten(networks: list[tuple[int, int, int]]) -> tuple[list[int], list[tuple[int, ...]]]:
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
        covering.append(tuple(sorted(active)))
    return boundaries, covering
