"""The writing processes that test_store_crash.py kills: each appends synthetic events to a ring
store and reports every event the store acknowledged, until SIGKILL stops it.

Run as `python store_writer.py DIRECTORY`, this imports the store once and serves: for each line
`run ITERATION SEED REPORT` on standard input it forks a writer, says `started PID`, waits for
that process to die and says `ended PID CODE` (CODE as subprocess reports it: -9 for SIGKILL).
The writer itself says `opened PID` on the same output once the store is open and recovered.
Forking from one imported process costs milliseconds where starting Python and importing the
store costs 0.2 s, which is what lets the test kill a hundred writers and more in seconds; each
writer is still a process of its own, which the kernel cleans up after SIGKILL (its descriptors
closed, the store's lock released) exactly as after a crash of the probe.

A writer opens the store writable (which recovers what the previous kill left) and appends random
small batches, flushing after each; once a flush returns, the ids it acknowledged are written, one
a line and in one write, to the file REPORT, which the test created and reads after the kill. A
complete line there is therefore a promise the store made.

Every event is `synthetic_event(number)`: each field derives from its number, and the number can
be read back from the stored source address, so the test recomputes exactly what was written and
recognises any record that differs from it in a single field.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from random import Random
from typing import NoReturn

from probe.clock import NANOSECONDS, Clock, parse_instant
from probe.config import StoreSection
from probe.decode.packet import IPV4_MAPPED_PREFIX, address_key
from probe.match.markers import Marker
from probe.record.events import Event
from probe.store.ring import RingStore

EVENTS_PER_WRITER = 50_000
"""Numbers reserved for one writer process: writer `iteration` writes numbers from
`iteration * EVENTS_PER_WRITER`, so no two processes ever write the same event."""
MAXIMUM_NUMBER = 1 << 24
"""Numbers are carried in the low 24 bits of an IPv4 source address (10.0.0.0/8)."""
EPOCH = parse_instant("2026-03-01T00:00:00Z")
"""Start of the first segment period the writers use."""
NOW = parse_instant("2026-06-01T00:00:00Z")
"""The fixed clock: three months after the events, inside the six months of retention, so nothing
expires and every acknowledged event must still be there."""
HOUR = 3600 * NANOSECONDS
SECTION = StoreSection(segment_period=3600, flush_interval=0.001)
EVENTS_PER_PERIOD = 48
"""Events one writer puts in a period before moving on to the next (so each run creates segments)."""
OLD_PERIOD_EVERY = 13
"""One event in this many goes to an earlier period, whose segment has been sealed: it is reopened."""
CLIENT_NETWORK = 10 << 24
DOCUMENTATION_NETWORK = bytes.fromhex("20010db800000000")
"""2001:db8::/64: the other clients, the number in the low 64 bits."""
SERVER = address_key("198.51.100.7")
MARKERS = (
    Marker(id="m1", type="ipv4", value="198.51.100.7", bundle="b", bundle_version=1),
    Marker(id="m2", type="ipv6", value="2001:db8:dead::1", bundle="b", bundle_version=2, severity="high", reference="https://example.org/m2", tlp="amber", name="m2 name", issuer="issuer"),
)
ENCAPSULATIONS: tuple[list[dict], ...] = ([], [{"type": "vlan", "id": 100}], [{"type": "vlan", "id": 100}, {"type": "vxlan", "vni": 5001, "src": "192.0.2.1", "dst": "192.0.2.2"}], [])


def synthetic_event(number: int) -> Event:
    """The one event a writer appends as its `number`-th (counting across all writers)."""
    if not 0 <= number < MAXIMUM_NUMBER:
        raise ValueError(f"event number {number} cannot be carried in a source address")
    iteration, sequence = divmod(number, EVENTS_PER_WRITER)
    current = iteration // 3 + sequence // EVENTS_PER_PERIOD
    period = (number * 7) % (current + 1) if sequence % OLD_PERIOD_EVERY == 5 else current
    last_seen = EPOCH + period * HOUR + (number * 7919 % 3_600_000_000) * 1000
    first_seen = last_seen - (1000 + number % 5_000_000) * 1000
    if number % 4 == 3:
        source = DOCUMENTATION_NETWORK + number.to_bytes(8, "big")
    else:
        source = IPV4_MAPPED_PREFIX + (CLIENT_NETWORK + number).to_bytes(4, "big")
    proto = 17 if number % 3 == 0 else 6
    to_server = number % 5 != 0
    packets = 1 + number % 97
    return Event(
        revision=number % 2,
        timestamp=first_seen + (number % 1000) * 1000,
        proto=proto,
        src=source,
        src_port=1024 + number % 64_000,
        dst=SERVER,
        dst_port=53 if proto == 17 else 443,
        to_server=to_server,
        matched_on="ip.dst" if to_server else "ip.src",
        marker=MARKERS[number % 7 == 0],
        encapsulation=ENCAPSULATIONS[number % len(ENCAPSULATIONS)],
        opened=first_seen - (number % 3) * 1000,
        first_seen=first_seen,
        last_seen=last_seen,
        packets=packets,
        bytes=60 * packets + number % 1500,
        hits=1 + number % 5,
    )


def event_number(event: Event) -> int:
    """The number `synthetic_event` carried in the event's source address."""
    if event.src[:12] == IPV4_MAPPED_PREFIX:
        return int.from_bytes(event.src[12:], "big") - CLIENT_NETWORK
    return int.from_bytes(event.src[8:], "big")


def report(descriptor: int, data: bytes) -> None:
    while data:
        data = data[os.write(descriptor, data) :]


def write_until_killed(directory: str, iteration: int, seed: int, report_path: str) -> None:
    report_descriptor = os.open(report_path, os.O_WRONLY | os.O_APPEND)
    store = RingStore(directory, SECTION, Clock(NOW), writable=True)
    report(1, f"opened {os.getpid()}\n".encode())
    batches = Random(seed)
    number = iteration * EVENTS_PER_WRITER
    end = number + EVENTS_PER_WRITER
    while number < end:
        for _ in range(min(batches.randint(1, 6), end - number)):
            store.append(synthetic_event(number))
            number += 1
        acknowledged = store.flush()
        report(report_descriptor, "".join(f"{record.event_id}\n" for record in acknowledged).encode())
    signal.pause()


def writer_process(directory: str, iteration: int, seed: int, report_path: str) -> NoReturn:
    """The forked child: never returns into the serving loop, whatever happens."""
    try:
        write_until_killed(directory, iteration, seed, report_path)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def main(arguments: list[str]) -> int:
    directory = arguments[0]
    commands = sys.stdin.buffer
    while line := commands.readline():
        verb, iteration, seed, report_path = line.decode().split()
        if verb != "run":
            raise SystemExit(f"unknown command {line!r}")
        process = os.fork()
        if process == 0:
            writer_process(directory, int(iteration), int(seed), report_path)
        report(1, f"started {process}\n".encode())
        _, status = os.waitpid(process, 0)
        report(1, f"ended {process} {os.waitstatus_to_exitcode(status)}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
