"""Question names of DNS messages (also mDNS and LLMNR, which share the wire format).

Only the QNAMEs are extracted: they are what a domain-name marker is matched against, and the
probe must not keep anything else of a payload (answers, TXT data, EDNS options are never read).

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
"""

from __future__ import annotations

__all__ = [
    "MAX_QUESTIONS",
    "MAX_NAME_WIRE_LEN",
    "MAX_POINTER_HOPS",
    "MAX_STEPS",
    "dns_query_names",
    "dns_tcp_query_names",
]

# Unicast DNS carries one question (RFC 9619), but mDNS queries ask many at once (an iPhone sends
# 17 service types in one packet). Questions past this are ignored to bound the work.
MAX_QUESTIONS = 64
# Labels plus pointer jumps read for a whole message. Compression lets every question point at a
# long name, so the per-name bounds alone would allow ~10,000 steps per packet; real messages need
# a few per question. A message over budget is treated as malformed.
MAX_STEPS = 1024
# RFC 1035 3.1: a name is at most 255 octets in wire form, length octets and root label included.
MAX_NAME_WIRE_LEN = 255
# A name reached through more jumps than this is an attack (compression loops or chains); real
# messages need one jump per name, a handful at most.
MAX_POINTER_HOPS = 32

_HEADER_LEN = 12


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def dns_query_names(message: bytes | bytearray | memoryview) -> list[str]:
    """Return the question names of one DNS message (query or response), [] when malformed.

    Any defect in the header or in one of the questions read makes the whole result empty: a
    message that does not parse is not evidence that its sender asked for a name.
    """
    try:
        return _query_names(message)
    except Exception:  # pragma: no cover - defensive: _query_names is written not to raise
        return []


def _query_names(buf) -> list[str]:
    end = len(buf)
    if end < _HEADER_LEN + 5:  # header + root name + QTYPE + QCLASS
        return []
    qdcount = (buf[4] << 8) | buf[5]
    if qdcount > MAX_QUESTIONS:
        qdcount = MAX_QUESTIONS
    names: list[str] = []
    pos = _HEADER_LEN
    steps = MAX_STEPS
    for _ in range(qdcount):
        # One name: labels are gathered into `out`; after the first compression pointer `after`
        # remembers where the question continues (QTYPE follows the pointer, not the target).
        out = bytearray()
        wire_len = 1  # the terminating root label
        hops = 0
        after = -1
        while True:
            steps -= 1
            if steps < 0 or pos >= end:
                return []
            length = buf[pos]
            if length == 0:
                pos = pos + 1 if after < 0 else after
                break
            kind = length & 0xC0
            if kind == 0xC0:
                hops += 1
                if hops > MAX_POINTER_HOPS or pos + 1 >= end:
                    return []
                target = ((length & 0x3F) << 8) | buf[pos + 1]
                if after < 0:
                    after = pos + 2
                # The header cannot hold a name; a pointer into it or past the end is forged.
                if target < _HEADER_LEN or target >= end:
                    return []
                pos = target
                continue
            if kind:
                # 0x40 (extended label types, deprecated by RFC 6891) and 0x80 (reserved).
                return []
            wire_len += length + 1
            if wire_len > MAX_NAME_WIRE_LEN:
                return []
            start = pos + 1
            pos = start + length
            if pos > end:
                return []
            if out:
                out += b"."
            out += buf[start:pos]
        pos += 4  # QTYPE, QCLASS
        if pos > end:
            return []
        if out:
            name = bytes(out).lower()
            if name[-1:] == b".":
                # Only reachable through a '.' byte inside the last label; keep the documented
                # "no trailing dot" shape.
                name = name.rstrip(b".")
                if not name:
                    continue
            names.append(_text(name))
    return names


def dns_tcp_query_names(stream: bytes | bytearray | memoryview) -> tuple[list[str], int]:
    """Question names of every complete message at the start of a DNS-over-TCP stream.

    Returns (names, consumed): `consumed` is the offset of the first byte not yet used, so the
    caller keeps `stream[consumed:]` (a partial length prefix or message) and calls again once more
    bytes arrived. The messages are read in place, not copied.
    """
    try:
        end = len(stream)
        pos = 0
        names: list[str] = []
        view = stream if isinstance(stream, memoryview) else memoryview(stream)
        while pos + 2 <= end:
            length = (stream[pos] << 8) | stream[pos + 1]
            stop = pos + 2 + length
            if stop > end:
                break
            if length:
                names += dns_query_names(view[pos + 2 : stop])
            pos = stop
        return names, pos
    except Exception:  # pragma: no cover - defensive
        return [], 0
