"""Server name (SNI) of a TLS ClientHello found at the start of a TCP client byte stream.

The probe recognises TLS by content, not by port, so the first question is whether the stream
starts with a ClientHello at all (NOT_TLS otherwise, cheaply, from the first bytes). A ClientHello
often does not fit one TCP segment (post-quantum key shares make it ~1.8 KB) and may even be
fragmented over several TLS records, so the caller passes the concatenated stream prefix it has
and learns whether to wait (NEED_MORE, with the total length worth waiting for), give up
(MALFORMED) or match (DONE).

Only the host_name of the server_name extension is returned; nothing else of the hello is kept.
Every function accepts any bytes-like object, never raises and does work bounded by
MAX_HELLO_LEN and MAX_RECORDS.

Name presentation: ASCII letters lower-cased, one trailing dot removed. A host_name should be
ASCII (RFC 6066 3: A-labels); other bytes are decoded as UTF-8 when valid, else as latin-1 so that
every byte survives as the code point of the same value.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "NOT_TLS",
    "NEED_MORE",
    "DONE",
    "MALFORMED",
    "MAX_HELLO_LEN",
    "MAX_RECORDS",
    "ClientHello",
    "client_hello_server_name",
]

NOT_TLS = 0
NEED_MORE = 1
DONE = 2
MALFORMED = 3

# A ClientHello body above this is refused: real ones stay below ~8 KB even with large
# post-quantum shares and many PSK identities, and the bound caps what a caller must buffer.
MAX_HELLO_LEN = 65536
# Records a hello may be fragmented into. Evasion tools split hellos into a few tiny records;
# thousands of 1-byte records only serve to burn CPU, once per arriving segment.
MAX_RECORDS = 2048

_CONTENT_HANDSHAKE = 0x16
_HS_CLIENT_HELLO = 1
_RECORD_HEADER = 5
_HS_HEADER = 4
# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes; some stacks overshoot slightly,
# so allow the ciphertext allowance (RFC 5246 6.2.3) before calling it malformed.
_MAX_RECORD_LEN = 16384 + 2048
# version(2) random(32) session_id_len(1) suites_len(2) one suite(2) comp_len(1) one method(1)
_MIN_HELLO_LEN = 41
_EXT_SERVER_NAME = 0
_NAME_TYPE_HOST = 0


class ClientHello(NamedTuple):
    """Result of looking for a ClientHello at the start of a client stream.

    `end` depends on `status`: NEED_MORE -> total stream length to wait for before a new call can
    progress (a lower bound: more records may follow); DONE -> offset just after the record that
    completed the ClientHello, where the client's next record starts (it may exceed len(stream) if
    that record carries more than the hello and the rest has not arrived); NOT_TLS / MALFORMED -> 0.
    """

    status: int
    server_name: str | None
    end: int


_RESULT_NOT_TLS = ClientHello(NOT_TLS, None, 0)
_RESULT_MALFORMED = ClientHello(MALFORMED, None, 0)


def client_hello_server_name(stream: bytes | bytearray | memoryview) -> ClientHello:
    """Find the SNI of the ClientHello at the start of `stream` (the client's bytes, in order)."""
    try:
        return _parse(stream)
    except Exception:  # pragma: no cover - defensive: _parse is written not to raise
        return _RESULT_MALFORMED


def _parse(buf) -> ClientHello:
    n = len(buf)
    # Record header of the first record: content type, legacy version (major 3), length.
    if n >= 1 and buf[0] != _CONTENT_HANDSHAKE:
        return _RESULT_NOT_TLS
    if n >= 2 and buf[1] != 3:
        return _RESULT_NOT_TLS
    if n >= 6 and buf[5] != _HS_CLIENT_HELLO:
        return _RESULT_NOT_TLS
    if n < _RECORD_HEADER:
        return ClientHello(NEED_MORE, None, _RECORD_HEADER + _HS_HEADER)
    rec_len = (buf[3] << 8) | buf[4]
    if rec_len == 0 or rec_len > _MAX_RECORD_LEN:
        return _RESULT_MALFORMED
    rec_end = _RECORD_HEADER + rec_len

    # Fast path: the whole handshake message sits in the first record (the usual case).
    if rec_len >= _HS_HEADER:
        if n < _RECORD_HEADER + _HS_HEADER:
            return ClientHello(NEED_MORE, None, _RECORD_HEADER + _HS_HEADER)
        hs_len = (buf[6] << 16) | (buf[7] << 8) | buf[8]
        if hs_len < _MIN_HELLO_LEN or hs_len > MAX_HELLO_LEN:
            return _RESULT_MALFORMED
        hs_end = _RECORD_HEADER + _HS_HEADER + hs_len
        if hs_end <= rec_end:
            if n < hs_end:
                return ClientHello(NEED_MORE, None, hs_end)
            return _hello_result(buf, _RECORD_HEADER + _HS_HEADER, hs_end, rec_end)
    return _reassemble(buf, n)


def _reassemble(buf, n: int) -> ClientHello:
    """Gather the hello from consecutive handshake records (fragmented, RFC 8446 5.1)."""
    msg = bytearray()
    want = -1  # total handshake message length (header included), once known
    pos = 0
    for _ in range(MAX_RECORDS):
        if pos + _RECORD_HEADER > n:
            # Check whatever part of the next header has arrived, then wait for the rest.
            if pos < n and buf[pos] != _CONTENT_HANDSHAKE:
                return _RESULT_MALFORMED
            if pos + 1 < n and buf[pos + 1] != 3:
                return _RESULT_MALFORMED
            return ClientHello(NEED_MORE, None, pos + _RECORD_HEADER + 1)
        if buf[pos] != _CONTENT_HANDSHAKE or buf[pos + 1] != 3:
            # Another content type before the hello is complete: RFC 8446 5.1 forbids
            # interleaving, so this is no hello we can trust.
            return _RESULT_MALFORMED
        rec_len = (buf[pos + 3] << 8) | buf[pos + 4]
        if rec_len == 0 or rec_len > _MAX_RECORD_LEN:
            return _RESULT_MALFORMED
        start = pos + _RECORD_HEADER
        rec_end = start + rec_len
        stop = rec_end if rec_end <= n else n
        if want >= 0 and stop - start > want - len(msg):
            stop = start + want - len(msg)
        msg += buf[start:stop]
        if want < 0 and len(msg) >= _HS_HEADER:
            hs_len = (msg[1] << 16) | (msg[2] << 8) | msg[3]
            if hs_len < _MIN_HELLO_LEN or hs_len > MAX_HELLO_LEN:
                return _RESULT_MALFORMED
            want = _HS_HEADER + hs_len
        if want >= 0 and len(msg) >= want:
            return _hello_result(msg, _HS_HEADER, want, rec_end)
        if rec_end > n:
            # The current record is incomplete; progress needs either its end or, when the hello
            # ends inside it, the hello's end.
            missing = (want if want >= 0 else _HS_HEADER) - len(msg)
            return ClientHello(NEED_MORE, None, min(rec_end, n + missing))
        pos = rec_end
    return _RESULT_MALFORMED


def _hello_result(buf, pos: int, end: int, record_end: int) -> ClientHello:
    """Walk a complete ClientHello body buf[pos:end] to its server_name extension."""
    # legacy_version(2) + random(32), then session id, cipher suites, compression methods.
    pos += 34
    sid_len = buf[pos]
    if sid_len > 32:
        return _RESULT_MALFORMED
    pos += 1 + sid_len
    if pos + 2 > end:
        return _RESULT_MALFORMED
    cs_len = (buf[pos] << 8) | buf[pos + 1]
    if cs_len < 2 or cs_len & 1:
        return _RESULT_MALFORMED
    pos += 2 + cs_len
    if pos + 1 > end:
        return _RESULT_MALFORMED
    comp_len = buf[pos]
    if comp_len < 1:
        return _RESULT_MALFORMED
    pos += 1 + comp_len
    if pos > end:
        return _RESULT_MALFORMED
    if pos == end:
        # No extensions at all (SSL 3.0 / early TLS 1.0 clients): a valid hello without SNI.
        return ClientHello(DONE, None, record_end)
    if pos + 2 > end:
        return _RESULT_MALFORMED
    ext_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if ext_end > end:
        return _RESULT_MALFORMED
    pos += 2
    name = None
    seen_sni = False
    while pos < ext_end:
        if pos + 4 > ext_end:
            return _RESULT_MALFORMED
        ext_type = (buf[pos] << 8) | buf[pos + 1]
        body = pos + 4
        pos = body + ((buf[pos + 2] << 8) | buf[pos + 3])
        if pos > ext_end:
            return _RESULT_MALFORMED
        if ext_type != _EXT_SERVER_NAME:
            continue
        if seen_sni:
            # RFC 8446 4.2: one extension of a type at most. Two SNIs would let a client show one
            # name to the probe and another to the server.
            return _RESULT_MALFORMED
        seen_sni = True
        if body == pos:
            # Empty server_name: what a server echoes, tolerated from a client as "no name".
            continue
        name = _server_name(buf, body, pos)
        if name is _BAD:
            return _RESULT_MALFORMED
    return ClientHello(DONE, name, record_end)


_BAD = object()


def _server_name(buf, pos: int, end: int):
    """host_name from a server_name extension body buf[pos:end]; None if absent, _BAD if broken."""
    if pos + 2 > end:
        return _BAD
    list_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if list_end != end:
        return _BAD
    pos += 2
    name = None
    while pos < list_end:
        if pos + 3 > list_end:
            return _BAD
        name_type = buf[pos]
        start = pos + 3
        pos = start + ((buf[pos + 1] << 8) | buf[pos + 2])
        if pos > list_end:
            return _BAD
        if name_type == _NAME_TYPE_HOST and name is None:
            raw = bytes(buf[start:pos]).lower()
            if raw[-1:] == b".":
                raw = raw[:-1]
            if raw:
                name = _text(raw)
    return name


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
