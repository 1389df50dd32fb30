"""Names and addresses of DNS messages (also mDNS and LLMNR, which share the wire format).

What is read is what a marker can be matched against, nothing more: the question names (domain
markers), and in responses the answer section's CNAME targets (domain markers) and A/AAAA
addresses (address markers), so that a resolution towards a marked host is seen even when the
connection that follows is not (another path, a later capture, a blocked connection). The
authority and additional sections, TXT data and EDNS options are never read: they describe other
names than the one asked for, and the probe must not keep anything else of a payload.

Every function here accepts any bytes-like object (bytes, bytearray, memoryview), never raises on
any input and does bounded work: a hostile packet cannot make the probe spin or allocate much.

Name presentation: labels joined by '.', no trailing dot, ASCII letters lower-cased (DNS names are
case-insensitive for ASCII only, RFC 4343). Non-ASCII bytes: the name is decoded as UTF-8 when it
is valid UTF-8 (mDNS names are UTF-8, RFC 6762 16, and tshark shows them so), else as latin-1 so
that every byte survives as the code point of the same value. Nothing is escaped (tshark escapes
unprintable bytes; an escape syntax would only make matching ambiguous). A '.' byte inside a label
is kept as is, so such a label reads like two labels: that can make a name look like a marker it
is not (a visible false positive), never hide one. The root name (QNAME of zero length, e.g. a
priming query for `. NS`) yields no entry: no marker can name the root.

Address presentation: the probe's 16-byte flow address form (decode/packet.py), IPv4 as an
IPv4-mapped IPv6 address, so that answers are looked up in the same address index as flows.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from probe.decode.packet import IPV4_MAPPED_PREFIX

__all__ = [
    "MAX_ANSWERS",
    "MAX_QUESTIONS",
    "MAX_NAME_WIRE_LEN",
    "MAX_POINTER_HOPS",
    "MAX_STEPS",
    "DnsAnswers",
    "DnsMessage",
    "dns_query_names",
    "dns_tcp_answers",
    "dns_tcp_query_names",
    "read_dns_message",
]

# Unicast DNS carries one question (RFC 9619), but mDNS queries ask many at once (an iPhone sends
# 17 service types in one packet). Questions past this are ignored to bound the work.
MAX_QUESTIONS: Final = 64
# Answer records read per message. A resolver's answer is a CNAME chain plus a few addresses; mDNS
# responses announce a host's services at once (~30 records). Records past this are ignored.
MAX_ANSWERS: Final = 64
# Labels plus pointer jumps read for a whole message. Compression lets every question point at a
# long name, so the per-name bounds alone would allow ~10,000 steps per packet; real messages need
# a few per name. A message over budget is treated as malformed from that point on.
MAX_STEPS: Final = 1024
# RFC 1035 3.1: a name is at most 255 octets in wire form, length octets and root label included.
MAX_NAME_WIRE_LEN: Final = 255
# A name reached through more jumps than this is an attack (compression loops or chains); real
# messages need one jump per name, a handful at most.
MAX_POINTER_HOPS: Final = 32

_HEADER_LEN: Final = 12
_TYPE_A: Final = 1
_TYPE_CNAME: Final = 5
_TYPE_AAAA: Final = 28
_CLASS_IN: Final = 1
# mDNS uses the class's top bit as the cache-flush flag (RFC 6762 10.2); the class is the rest.
_CLASS_MASK: Final = 0x7FFF
# TYPE, CLASS, TTL (skipped), RDLENGTH of a resource record, after its owner name.
_RECORD: Final = struct.Struct("!HH4xH")


class DnsMessage(NamedTuple):
    """What one DNS message holds for the markers.

    `questions`: the question names. `cname_targets` and `addresses` come from the answer section
    of a response (QR set) only, a query's are always empty: a query carrying answers states
    nothing about what a name resolves to. `is_response` is the QR bit.
    """

    questions: list[str]
    cname_targets: list[str]
    addresses: list[bytes]
    is_response: bool


class DnsAnswers(NamedTuple):
    """The answers of the responses in a DNS-over-TCP stream: `names` the CNAME targets,
    `addresses` the A/AAAA addresses, as in `DnsMessage`."""

    names: list[str]
    addresses: list[bytes]


def _empty() -> DnsMessage:
    # A new instance each time: callers may extend the lists they are given.
    return DnsMessage([], [], [], False)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_dns_message(message: bytes | bytearray | memoryview) -> DnsMessage:
    """Read a DNS message's question names, and a response's answers, in one pass.

    Any defect in the header or a question makes the whole result empty: a message that does not
    parse is not evidence that its sender asked for a name. A defect in the answer section keeps
    what was read before it: those records were well-formed and a resolver acts on them.
    """
    try:
        return _read_message(bytes(message))  # bytes: the same object, when it is
    except Exception:  # pragma: no cover - defensive: _read_message is written not to raise
        return _empty()


def dns_query_names(message: bytes | bytearray | memoryview) -> list[str]:
    """The question names of one DNS message (query or response), [] when malformed.

    Same questions as `read_dns_message`, without reading the answers, for callers that only match
    names asked for.
    """
    try:
        return _query_names(bytes(message))
    except Exception:  # pragma: no cover - defensive: _query_names is written not to raise
        return []


def _query_names(buf: bytes) -> list[str]:
    return _questions(buf, len(buf))[0]


def _read_message(buf: bytes) -> DnsMessage:
    end = len(buf)
    questions, pos, steps = _questions(buf, end)
    if pos < 0:
        return _empty()
    is_response = bool(buf[2] & 0x80)
    # Past MAX_QUESTIONS the questions were not read, so where the answers start is unknown.
    if not is_response or ((buf[4] << 8) | buf[5]) > MAX_QUESTIONS:
        return DnsMessage(questions, [], [], is_response)
    cname_targets: list[str] = []
    addresses: list[bytes] = []
    _answers(buf, pos, end, steps, cname_targets, addresses)
    return DnsMessage(questions, cname_targets, addresses, True)


def _questions(buf: bytes, end: int) -> tuple[list[str], int, int]:
    """(names, offset after the question section, steps left); offset -1 when malformed."""
    if end < _HEADER_LEN + 5:  # header + root name + QTYPE + QCLASS, or the smallest record
        return [], -1, 0
    qdcount = (buf[4] << 8) | buf[5]
    if qdcount > MAX_QUESTIONS:
        qdcount = MAX_QUESTIONS
    names: list[str] = []
    pos = _HEADER_LEN
    steps = MAX_STEPS
    for _ in range(qdcount):
        name, pos, steps = _name(buf, pos, end, end, steps)
        if pos < 0:
            return [], -1, 0
        pos += 4  # QTYPE, QCLASS
        if pos > end:
            return [], -1, 0
        if name:
            names.append(name)
    return names, pos, steps


def _name(buf: bytes, pos: int, limit: int, end: int, steps: int) -> tuple[str, int, int]:
    """(name, offset after it in place, steps left) of the name at `pos`; offset -1 when malformed.

    The steps spent are returned even when the name is malformed, so that a message of many
    broken names still runs out of budget; fewer than zero left means the budget ran out.

    The name's own bytes must lie before `limit` (the end of the record data holding it); a
    compression pointer may lead anywhere in the message before `end`, as resolvers allow.
    """
    # Labels are gathered into `labels`; after the first compression pointer `after` remembers
    # where the record continues (what follows the name follows the pointer, not its target).
    labels = []
    wire_len = 1  # the terminating root label
    hops = 0
    after = -1
    while True:
        steps -= 1
        if steps < 0 or pos >= limit:
            return "", -1, steps
        length = buf[pos]
        if length == 0:
            pos = pos + 1 if after < 0 else after
            break
        kind = length & 0xC0
        if kind == 0xC0:
            hops += 1
            if hops > MAX_POINTER_HOPS or pos + 1 >= limit:
                return "", -1, steps
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if after < 0:
                after = pos + 2
                limit = end
            # The header cannot hold a name; a pointer into it or past the end is forged.
            if target < _HEADER_LEN or target >= end:
                return "", -1, steps
            pos = target
            continue
        if kind:
            # 0x40 (extended label types, deprecated by RFC 6891) and 0x80 (reserved).
            return "", -1, steps
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN:
            return "", -1, steps
        start = pos + 1
        pos = start + length
        if pos > limit:
            return "", -1, steps
        labels.append(buf[start:pos])
    if not labels:
        return "", pos, steps
    name = b".".join(labels).lower()
    if name[-1:] == b".":
        # Only reachable through a '.' byte inside the last label; keep the documented "no
        # trailing dot" shape.
        name = name.rstrip(b".")
    return _text(name), pos, steps


def _answers(buf: bytes, pos: int, end: int, steps: int, cname_targets: list[str], addresses: list[bytes]) -> None:
    """Append the answer section's CNAME targets and A/AAAA addresses, up to the first defect.

    RDLENGTH frames each record, so a record of the right type but the wrong shape (an A record
    of 5 bytes, a CNAME whose name does not parse) is passed over and the next one still read:
    stub resolvers skip such records too, and a forged one must not hide the records after it.
    """
    ancount = (buf[6] << 8) | buf[7]
    if ancount > MAX_ANSWERS:
        ancount = MAX_ANSWERS
    for _ in range(ancount):
        # The owner name is stepped over in place, never followed: it is the question's name or an
        # earlier answer's target, already read.
        while True:
            if pos >= end:
                return
            length = buf[pos]
            if length >= 0xC0:
                pos += 2
                break
            if length == 0:
                pos += 1
                break
            steps -= 1
            if length & 0xC0 or steps < 0:
                return
            pos += length + 1
        if pos + 10 > end:
            return
        record_type, record_class, data_len = _RECORD.unpack_from(buf, pos)
        start = pos + 10
        pos = start + data_len
        if pos > end:
            return
        if record_type == _TYPE_A:
            if data_len == 4 and record_class & _CLASS_MASK == _CLASS_IN:
                addresses.append(IPV4_MAPPED_PREFIX + buf[start:pos])
        elif record_type == _TYPE_AAAA:
            if data_len == 16 and record_class & _CLASS_MASK == _CLASS_IN:
                addresses.append(bytes(buf[start:pos]))
        elif record_type == _TYPE_CNAME:
            name, _, steps = _name(buf, start, pos, end, steps)
            if steps < 0:
                return
            if name:
                cname_targets.append(name)


def dns_tcp_answers(stream: bytes | bytearray | memoryview) -> tuple[DnsAnswers, int]:
    """Answers of every complete response at the start of a DNS-over-TCP stream (the server's
    side), each message read as by `read_dns_message`; queries in the stream add nothing.

    Returns (answers, consumed): `consumed` is the offset of the first byte not yet used, so the
    caller keeps `stream[consumed:]` (a partial length prefix or message) and calls again once more
    bytes arrived.
    """
    try:
        messages, consumed = _tcp_messages(bytes(stream))
        names: list[str] = []
        addresses: list[bytes] = []
        for message in messages:
            read = _read_message(message)
            names += read.cname_targets
            addresses += read.addresses
        return DnsAnswers(names, addresses), consumed
    except Exception:  # pragma: no cover - defensive
        return DnsAnswers([], []), 0


def dns_tcp_query_names(stream: bytes | bytearray | memoryview) -> tuple[list[str], int]:
    """Question names of every complete message at the start of a DNS-over-TCP stream.

    Returns (names, consumed) like `dns_tcp_answers`.
    """
    try:
        messages, consumed = _tcp_messages(bytes(stream))
        names: list[str] = []
        for message in messages:
            names += _query_names(message)
        return names, consumed
    except Exception:  # pragma: no cover - defensive
        return [], 0


def _tcp_messages(stream: bytes) -> tuple[list[bytes], int]:
    """The complete length-prefixed messages (empty ones left out), and their end."""
    end = len(stream)
    pos = 0
    messages: list[bytes] = []
    while pos + 2 <= end:
        length = (stream[pos] << 8) | stream[pos + 1]
        stop = pos + 2 + length
        if stop > end:
            break
        if length:
            messages.append(stream[pos + 2 : stop])
        pos = stop
    return messages, pos
