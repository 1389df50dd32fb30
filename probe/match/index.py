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

from probe.decode.packet import address_key
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
        self._boundaries, self._covering = _flatten(networks)
        self.has_address_markers = bool(self.addresses or networks)

    def match_address(self, address: bytes) -> tuple[int, ...]:
        """Markers (by number) hit by a 16-byte flow address, exact or by prefix."""
        hits = self.addresses.get(address, NO_MARKERS)
        if self._boundaries:
            position = bisect_right(self._boundaries, int.from_bytes(address, "big")) - 1
            if position >= 0 and self._covering[position]:
                hits += self._covering[position]
        return hits

    def match_name(self, name: str) -> tuple[int, ...]:
        """Markers hit by a lower-case name without trailing dot: exact markers of the name itself,
        subdomain markers of the name and of each of its parents."""
        hits = self.exact_names.get(name, NO_MARKERS)
        parents = self.parent_names
        if not parents:
            return hits
        position = name.find(".")
        while position >= 0:
            name = name[position + 1 :]
            found = parents.get(name)
            if found:
                hits += found
            position = name.find(".")
        return hits


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
