"""Question names of DNS messages (also mDNS and LLMNR, which share the wire format).

Only the QNAMEs are extracted: they are what a domain-name marker is matched against, and the
probe must not keep anything else of a payload (answers, TXT data, EDNS options are never read).

Every function here accepts any bytes-like object (bytes, bytearray, memoryview), never raises on
any input and does bounded work: a hostile packet cannot make the probe spin or allocate much.

Name presentation: labels joined by '.', no trailing dot, ASCII letters lower-cased (DNS names are
case-insensitive for ASCII only, RFC 4343), every other byte kept as the code point of the same
value (latin-1 decoding). tshark escapes such bytes instead; we keep them raw because a marker
never contains them and an escape syntax would only create ambiguity. A '.' byte inside a label is
kept as is, so such a label reads like two labels; this can only produce names a registrant could
have registered anyway, so it cannot hide a marker. The root name (QNAME of zero length, e.g. a
priming query for `. NS`) yields no entry: no marker can name the root.
"""

from __future__ import annotations

__all__ = [
    "MAX_QUESTIONS",
    "MAX_NAME_WIRE_LEN",
    "MAX_POINTER_HOPS",
    "dns_query_names",
    "dns_tcp_messages",
    "dns_tcp_query_names",
]

# Real traffic carries one question (RFC 9619 makes QDCOUNT > 1 an error); a few more are read so
# that odd but harmless senders are still matched, the rest is ignored to bound the work.
MAX_QUESTIONS = 8
# RFC 1035 3.1: a name is at most 255 octets in wire form, length octets and root label included.
MAX_NAME_WIRE_LEN = 255
# A name reached through more jumps than this is an attack (compression loops or chains); real
# messages need one jump per name, a handful at most.
MAX_POINTER_HOPS = 32

_HEADER_LEN = 12


def _read_name(buf, pos: int, end: int) -> tuple[bytes | None, int]:
    """Read one name at `pos`; return (lower-cased name bytes, offset after it in the question).

    (None, -1) when malformed. The returned offset is where the name ends in the question itself,
    i.e. after the first compression pointer if any, which is where QTYPE follows.
    """
    out = bytearray()
    wire_len = 1  # the terminating root label
    hops = 0
    after = -1  # offset following the first pointer, once one has been followed
    while True:
        if pos >= end:
            return None, -1
        length = buf[pos]
        if length == 0:
            if after < 0:
                after = pos + 1
            return bytes(out).lower(), after
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                return None, -1
            hops += 1
            if hops > MAX_POINTER_HOPS:
                return None, -1
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if after < 0:
                after = pos + 2
            # The header cannot hold a name; a pointer into it or past the end is forged.
            if target < _HEADER_LEN or target >= end:
                return None, -1
            pos = target
            continue
        if kind:
            # 0x40 (extended label types, RFC 6891 deprecated them) and 0x80 (reserved).
            return None, -1
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN:
            return None, -1
        start = pos + 1
        pos = start + length
        if pos > end:
            return None, -1
        if out:
            out += b"."
        out += buf[start:pos]


def dns_query_names(message: bytes | bytearray | memoryview) -> list[str]:
    """Return the question names of one DNS message (query or response), [] when malformed.

    Any defect in the header or in one of the questions read makes the whole result empty: a
    message that does not parse is not evidence that its sender asked for a name.
    """
    try:
        end = len(message)
        if end < _HEADER_LEN + 5:  # header + root name + QTYPE + QCLASS
            return []
        qdcount = (message[4] << 8) | message[5]
        if qdcount == 0:
            return []
        if qdcount > MAX_QUESTIONS:
            qdcount = MAX_QUESTIONS
        names: list[str] = []
        pos = _HEADER_LEN
        for _ in range(qdcount):
            name, pos = _read_name(message, pos, end)
            if name is None:
                return []
            pos += 4  # QTYPE, QCLASS
            if pos > end:
                return []
            if name:
                if name[-1:] == b".":
                    # Only reachable through a '.' byte inside the last label; keep the
                    # documented "no trailing dot" shape.
                    name = name.rstrip(b".")
                    if not name:
                        continue
                names.append(name.decode("latin-1"))
        return names
    except Exception:  # pragma: no cover - defensive: the loop above is written not to raise
        return []


def dns_tcp_messages(stream: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
    """Split the start of a DNS-over-TCP byte stream into its complete messages.

    Returns (messages, consumed): `consumed` is the offset of the first byte not yet used, so the
    caller keeps `stream[consumed:]` (a partial length prefix or message) and calls again once more
    bytes arrived. Zero-length messages are consumed and dropped. The work is linear in the input.
    """
    try:
        end = len(stream)
        pos = 0
        messages: list[bytes] = []
        while pos + 2 <= end:
            length = (stream[pos] << 8) | stream[pos + 1]
            stop = pos + 2 + length
            if stop > end:
                break
            if length:
                messages.append(bytes(stream[pos + 2 : stop]))
            pos = stop
        return messages, pos
    except Exception:  # pragma: no cover - defensive
        return [], 0


def dns_tcp_query_names(stream: bytes | bytearray | memoryview) -> tuple[list[str], int]:
    """Question names of every complete message at the start of a DNS-over-TCP stream.

    Same `consumed` contract as `dns_tcp_messages`, without materialising the messages: the names
    are read in place.
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
