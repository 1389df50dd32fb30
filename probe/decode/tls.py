"""TLS at the start of a TCP connection: the ClientHello's server name and fingerprints, and the
hashes of the certificates the server sends.

The probe recognises TLS by content, not by port, so the first question is whether a stream starts
with a handshake at all (NOT_TLS otherwise, cheaply, from the first bytes). A ClientHello often
does not fit one TCP segment (post-quantum key shares make it ~1.8 KB), a certificate chain spans
several, and either may be fragmented over several TLS records (or share one with the messages
around it), so the caller passes the concatenated stream prefix it has and learns whether to wait
(NEED_MORE, with the total length worth waiting for), give up (MALFORMED) or use the result (DONE).

What is kept, and nothing else of the payload: the host_name of the server_name extension; the JA3
and JA4 fingerprints of the hello (hashes of its lists of parameters); the SHA-256 of each
certificate of the server's TLS <= 1.2 Certificate message. TLS 1.3 encrypts the server's
Certificate message (RFC 8446 2, 4.4.2) under keys a passive probe never has, so the certificates of
TLS 1.3 connections are never seen: read_server_certificates then reports ENCRYPTED.

Every function accepts any bytes-like object, never raises and does work bounded by MAX_HELLO_LEN,
MAX_CERTIFICATE_LEN and MAX_RECORDS. A caller is never asked to buffer more than one hello on the
client side, or the ServerHello and the Certificate message (MAX_HELLO_LEN + MAX_CERTIFICATE_LEN
plus 5 bytes per record) on the server side: longer announcements are MALFORMED from their header.

Name presentation: ASCII letters lower-cased, one trailing dot removed. A host_name should be
ASCII (RFC 6066 3: A-labels); other bytes are decoded as UTF-8 when valid, else as latin-1 so that
every byte survives as the code point of the same value.

Fingerprints. JA3 (Salesforce): MD5 of "SSLVersion,Ciphers,Extensions,EllipticCurves,
EllipticCurvePointFormats", decimal values joined by "-", GREASE values (RFC 8701) left out of the
three lists that may hold them. JA4 (FoxIO, technical_details/JA4.md of github.com/FoxIO-LLC/ja4):
"a_b_c" as specified there, including its rule for an ALPN value that does not start and end with
an ASCII letter or digit (the first and last characters of its hex form), which the reference
implementations replace by "99".
"""

from __future__ import annotations

import hashlib
from struct import Struct, pack, unpack_from
from typing import Final, NamedTuple

__all__ = [
    "NOT_TLS",
    "NEED_MORE",
    "DONE",
    "MALFORMED",
    "ENCRYPTED",
    "MAX_HELLO_LEN",
    "MAX_CERTIFICATE_LEN",
    "MAX_RECORDS",
    "ClientHello",
    "ServerCertificates",
    "read_client_hello",
    "fingerprint_client_hello",
    "read_server_certificates",
]

NOT_TLS: Final = 0
NEED_MORE: Final = 1
DONE: Final = 2
MALFORMED: Final = 3
ENCRYPTED: Final = 4

# A hello body (client or server) above this is refused: real ones stay below ~8 KB even with large
# post-quantum shares and many PSK identities, and the bound caps what a caller must buffer.
MAX_HELLO_LEN: Final = 65536
# A Certificate message body above this is refused. Real chains take 2-8 KB, rarely 20 KB; the
# bound caps what a caller buffers for one connection's server side.
MAX_CERTIFICATE_LEN: Final = 65536
# Records a hello (or the server's flight up to its certificates) may be fragmented into. Evasion
# tools split hellos into a few tiny records; thousands of 1-byte records only serve to burn CPU,
# once per arriving segment.
MAX_RECORDS: Final = 2048

_CONTENT_CHANGE_CIPHER_SPEC: Final = 0x14
_CONTENT_ALERT: Final = 0x15
_CONTENT_HANDSHAKE: Final = 0x16
_ALERT_WARNING: Final = 1
_HS_CLIENT_HELLO: Final = 1
_HS_SERVER_HELLO: Final = 2
_HS_CERTIFICATE: Final = 11
_RECORD_HEADER: Final = 5
_HS_HEADER: Final = 4
# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes; some stacks overshoot slightly,
# so allow the ciphertext allowance (RFC 5246 6.2.3) before calling it malformed.
_MAX_RECORD_LEN: Final = 16384 + 2048
# version(2) random(32) session_id_len(1) suites_len(2) one suite(2) comp_len(1) one method(1)
_MIN_HELLO_LEN: Final = 41
# version(2) random(32) session_id_len(1) suite(2) method(1)
_MIN_SERVER_HELLO_LEN: Final = 38
_TLS13: Final = 0x0304

_EXT_SERVER_NAME: Final = 0
_EXT_SUPPORTED_GROUPS: Final = 10
_EXT_EC_POINT_FORMATS: Final = 11
_EXT_SIGNATURE_ALGORITHMS: Final = 13
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43
_READ_EXTENSIONS: Final = frozenset((_EXT_SERVER_NAME, _EXT_SUPPORTED_GROUPS, _EXT_EC_POINT_FORMATS, _EXT_SIGNATURE_ALGORITHMS, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS))
_JA3_BY_LISTS: dict[tuple, str] = {}
_JA4_BY_LISTS: dict[tuple, str] = {}
"""JA3 and JA4 by the hello lists each is made of: most clients on a network are a few TLS stacks
sending the same lists, and hashing them costs more than reading the hello. Two caches, because a
client that shuffles its extensions per connection (Chrome) has a new JA3 each time but one JA4
(its extensions sorted). They hold lists of protocol numbers and JA4's two ALPN characters only
(no name, address or other byte of a hello), and each forgets everything when full."""
_UINT16S_BY_BYTES: dict[bytes, tuple[int, ...]] = {}
_DECIMALS_BY_LIST: dict[tuple[int, ...] | bytes, bytes] = {}
"""The same for the parts of that work a new JA3 repeats: the values of a list of cipher suites,
groups, signature algorithms or versions by its bytes (GREASE left out), and JA3's text of a list.
A stack sends these lists the same each time but for its GREASE values (16 possible), so both hit
when the JA3 cache misses. Protocol numbers only, as above."""
MAX_REMEMBERED_SHAPES: Final = 4096
MAX_REMEMBERED_VALUES: Final = 128
"""A hello with longer lists (none a real stack sends) is fingerprinted but not remembered: each
cache holds at most MAX_REMEMBERED_SHAPES entries of at most this many values, about 25 MB for all
of them in the worst case a client can force, a few hundred kilobytes for real stacks."""
_NAME_ONLY: Final = frozenset((_EXT_SERVER_NAME,))
"""The one extension read when the fingerprints are not asked for."""
_NAME_TYPE_HOST: Final = 0
_EXTENSION_HEADER: Final = Struct(">HH").unpack_from
"""An extension's type and body length, read with one call instead of four byte look-ups."""

# RFC 8701: 0x0A0A, 0x1A1A, ..., 0xFAFA, in cipher suites, extensions, groups, versions, signatures.
_GREASE: Final = frozenset(range(0x0A0A, 0x10000, 0x1010))
# JA4's two-character version. The DTLS codes of the specification belong to DTLS hellos, which
# this module does not read.
_JA4_VERSIONS: Final = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}
_JA4_EMPTY: Final = "000000000000"
_ALNUM: Final = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class ClientHello(NamedTuple):
    """Result of looking for a ClientHello at the start of a client stream (or in one message).

    `end` depends on `status`: NEED_MORE -> total stream length to wait for before a new call can
    progress (a lower bound: more records may follow); DONE -> offset just after the record that
    completed the ClientHello, where the client's next record starts (it may exceed len(stream) if
    that record carries more than the hello and the rest has not arrived); NOT_TLS / MALFORMED -> 0.
    `ja3` (32 hex digits) and `ja4` are set exactly when status is DONE (and fingerprints were
    asked for).
    """

    status: int
    server_name: str | None
    end: int
    ja3: str | None = None
    ja4: str | None = None


class ServerCertificates(NamedTuple):
    """Result of looking for the certificates at the start of a server stream.

    `sha256`: lower-case hex SHA-256 of each DER certificate of the Certificate message, in the
    server's order (the leaf first); empty unless DONE, and empty with DONE when the server's
    handshake has no Certificate message (session resumption, anonymous or PSK suites, an alert).
    `end` as in ClientHello: NEED_MORE -> total stream length to wait for; DONE / ENCRYPTED ->
    offset just after the record that settled it; NOT_TLS / MALFORMED -> 0.
    """

    status: int
    sha256: tuple[str, ...]
    end: int


_RESULT_NOT_TLS: Final = ClientHello(NOT_TLS, None, 0)
_RESULT_MALFORMED: Final = ClientHello(MALFORMED, None, 0)
_CERTS_NOT_TLS: Final = ServerCertificates(NOT_TLS, (), 0)
_CERTS_MALFORMED: Final = ServerCertificates(MALFORMED, (), 0)


def read_client_hello(stream: bytes | bytearray | memoryview, transport: str = "t", fingerprints: bool = True) -> ClientHello:
    """SNI, JA3 and JA4 of the ClientHello at the start of `stream` (the client's bytes, in order).

    `transport` is JA4's first character, "t" for TLS over TCP. (QUIC carries hellos without TLS
    records: they go through fingerprint_client_hello.) `fingerprints` False leaves JA3 and JA4
    out: computing them costs four times the rest, and without fingerprint markers nobody reads
    them."""
    try:
        return _parse(bytes(stream), transport, fingerprints)  # bytes: the same object, when it is
    except Exception:  # pragma: no cover - defensive: _parse is written not to raise
        return _RESULT_MALFORMED


def fingerprint_client_hello(message: bytes | bytearray | memoryview, transport: str) -> ClientHello:
    """The same result for one ClientHello handshake message without TLS records around it.

    QUIC carries the handshake in CRYPTO frames, not in records (RFC 9001 4), so a QUIC decoder
    passes the reassembled message (type 1, 3-byte length, body) with transport "q". NEED_MORE's
    `end` is the message's total length; DONE's is the offset just after the message."""
    try:
        return _message(bytes(message), transport)
    except Exception:  # pragma: no cover - defensive: _message is written not to raise
        return _RESULT_MALFORMED


def read_server_certificates(stream: bytes | bytearray | memoryview) -> ServerCertificates:
    """SHA-256 of the certificates the server sends at the start of `stream` (its bytes, in order).

    Certificates identify the server whatever name the client asked for, so they are matched
    too; only their hashes are computed, and only TLS <= 1.2 shows them (ENCRYPTED otherwise)."""
    try:
        return _server_flight(bytes(stream))
    except Exception:  # pragma: no cover - defensive: _server_flight is written not to raise
        return _CERTS_MALFORMED


def _parse(buf: bytes, transport: str, fingerprints: bool) -> ClientHello:
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
            return _hello_result(buf, _RECORD_HEADER + _HS_HEADER, hs_end, rec_end, transport, fingerprints)
    return _reassemble(buf, n, transport, fingerprints)


def _message(buf: bytes, transport: str) -> ClientHello:
    n = len(buf)
    if n >= 1 and buf[0] != _HS_CLIENT_HELLO:
        return _RESULT_NOT_TLS
    if n < _HS_HEADER:
        return ClientHello(NEED_MORE, None, _HS_HEADER)
    hs_len = (buf[1] << 16) | (buf[2] << 8) | buf[3]
    if hs_len < _MIN_HELLO_LEN or hs_len > MAX_HELLO_LEN:
        return _RESULT_MALFORMED
    end = _HS_HEADER + hs_len
    if n < end:
        return ClientHello(NEED_MORE, None, end)
    return _hello_result(buf, _HS_HEADER, end, end, transport, True)


def _reassemble(buf: bytes, n: int, transport: str, fingerprints: bool) -> ClientHello:
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
            return _hello_result(bytes(msg), _HS_HEADER, want, rec_end, transport, fingerprints)
        if rec_end > n:
            # The current record is incomplete; progress needs either its end or, when the hello
            # ends inside it, the hello's end.
            missing = (want if want >= 0 else _HS_HEADER) - len(msg)
            return ClientHello(NEED_MORE, None, min(rec_end, n + missing))
        pos = rec_end
    return _RESULT_MALFORMED


def _hello_result(buf: bytes, pos: int, end: int, record_end: int, transport: str, fingerprints: bool) -> ClientHello:
    """Walk a complete ClientHello body buf[pos:end]: its server name and the lists the two
    fingerprints are made of.

    Lengths that disagree in the hello's structure or its server_name make it MALFORMED. Inside the
    extensions read only for the fingerprints, a list is read as far as its bytes go instead (as
    tshark does): a server that does not use such an extension ignores its content, so a broken
    one must not hide the server name."""
    legacy_version = (buf[pos] << 8) | buf[pos + 1]
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
    cs_start = pos + 2
    pos = cs_start + cs_len
    if pos + 1 > end:
        return _RESULT_MALFORMED
    comp_len = buf[pos]
    if comp_len < 1:
        return _RESULT_MALFORMED
    pos += 1 + comp_len
    if pos > end:
        return _RESULT_MALFORMED
    ciphers = _u16_vector(buf, cs_start - 2, cs_start + cs_len, 2) if fingerprints else ()
    read_extensions = _READ_EXTENSIONS if fingerprints else _NAME_ONLY

    extensions: list[int] = []  # types in the order sent, GREASE left out
    name = None
    seen_sni = False
    # None until the extension is read: a repeated one is ignored, the fingerprints describe the
    # first one, as a server reads it.
    groups: tuple[int, ...] | None = None
    point_formats: bytes | None = None
    signatures: tuple[int, ...] | None = None
    versions: tuple[int, ...] | None = None
    alpn: bytes | None = None
    # No extensions at all (SSL 3.0 / early TLS 1.0 clients) is a valid hello without SNI.
    if pos < end:
        if pos + 2 > end:
            return _RESULT_MALFORMED
        ext_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if ext_end > end:
            return _RESULT_MALFORMED
        pos += 2
        while pos < ext_end:
            if pos + 4 > ext_end:
                return _RESULT_MALFORMED
            ext_type, body_len = _EXTENSION_HEADER(buf, pos)
            body = pos + 4
            pos = body + body_len
            if pos > ext_end:
                return _RESULT_MALFORMED
            if ext_type not in read_extensions:
                if fingerprints and ext_type not in _GREASE:
                    extensions.append(ext_type)
                continue
            extensions.append(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                if seen_sni:
                    # RFC 8446 4.2: one extension of a type at most. Two SNIs would let a client
                    # show one name to the probe and another to the server.
                    return _RESULT_MALFORMED
                seen_sni = True
                if body == pos:
                    # Empty server_name: what a server echoes, tolerated from a client as "no name".
                    continue
                name = _server_name(buf, body, pos)
                if name is _BAD:
                    return _RESULT_MALFORMED
            elif ext_type == _EXT_SUPPORTED_GROUPS:
                if groups is None:
                    groups = _u16_vector(buf, body, pos, 2)
            elif ext_type == _EXT_EC_POINT_FORMATS:
                if point_formats is None:
                    point_formats = _u8_vector(buf, body, pos)
            elif ext_type == _EXT_SIGNATURE_ALGORITHMS:
                if signatures is None:
                    signatures = _u16_vector(buf, body, pos, 2)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                if versions is None:
                    versions = _u16_vector(buf, body, pos, 1)
            elif ext_type == _EXT_ALPN:
                if alpn is None:
                    alpn = _first_alpn(buf, body, pos)

    if not fingerprints:
        return ClientHello(DONE, name, record_end)
    if groups is None:
        groups = ()
    if point_formats is None:
        point_formats = b""
    if signatures is None:
        signatures = ()
    if versions is None:
        versions = ()
    ja3_lists = (legacy_version, ciphers, tuple(extensions), groups, point_formats)
    ja4_lists = (transport, _JA4_VERSIONS.get(max(versions) if versions else legacy_version, "00"), seen_sni, ciphers, tuple(sorted(extensions)), signatures, _alpn_code(alpn))
    ja3 = _JA3_BY_LISTS.get(ja3_lists)
    ja4 = _JA4_BY_LISTS.get(ja4_lists)
    if ja3 is None or ja4 is None:
        remember = len(ciphers) + len(extensions) + len(groups) + len(point_formats) + len(signatures) + len(versions) <= MAX_REMEMBERED_VALUES
        if ja3 is None:
            ja3 = _ja3(*ja3_lists)
            if remember:
                _remember(_JA3_BY_LISTS, ja3_lists, ja3)
        if ja4 is None:
            ja4 = _ja4(*ja4_lists)
            if remember:
                _remember(_JA4_BY_LISTS, ja4_lists, ja4)
    return ClientHello(DONE, name, record_end, ja3, ja4)


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= MAX_REMEMBERED_SHAPES:
        cache.clear()
    cache[key] = value


def _ja3(legacy_version: int, ciphers: tuple[int, ...], extensions: tuple[int, ...], groups: tuple[int, ...], point_formats: bytes) -> str:
    """MD5 of the public JA3 definition's string."""
    text = b"%d,%b,%b,%b,%b" % (legacy_version, _remembered_decimals(ciphers), _decimals(extensions), _remembered_decimals(groups), _remembered_decimals(point_formats))
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def _remembered_decimals(values: tuple[int, ...] | bytes) -> bytes:
    """_decimals of a list a stack sends the same each time: all but its extensions, which Chrome
    shuffles, so that a new JA3 costs the formatting of its extensions only."""
    text = _DECIMALS_BY_LIST.get(values)
    if text is None:
        text = _decimals(values)
        if len(values) <= MAX_REMEMBERED_VALUES:
            _remember(_DECIMALS_BY_LIST, values, text)
    return text


def _decimals(values: tuple[int, ...] | bytes) -> bytes:
    """JA3's list form, b"4865-4866-...", written by one %-format (half the cost of a str() per
    value and a join)."""
    return (b"-%d" * len(values))[1:] % tuple(values)


def _ja4(transport: str, version: str, seen_sni: bool, ciphers: tuple[int, ...], sorted_extensions: tuple[int, ...], signatures: tuple[int, ...], alpn_code: str) -> str:
    """FoxIO's JA4: counts, version and ALPN characters, then the truncated hashes of the sorted
    ciphers and of the sorted extensions (server name and ALPN left out) with the signature
    algorithms in the order sent."""
    head = f"{transport}{version}{'d' if seen_sni else 'i'}{min(len(ciphers), 99):02d}{min(len(sorted_extensions), 99):02d}{alpn_code}"
    listed = _hex_list([extension for extension in sorted_extensions if extension != _EXT_SERVER_NAME and extension != _EXT_ALPN])
    if signatures:
        listed += "_" + _hex_list(signatures)
    return f"{head}_{_hash12(_hex_list(sorted(ciphers)))}_{_hash12(listed)}"


def _u16_vector(buf: bytes, pos: int, end: int, length_bytes: int) -> tuple[int, ...]:
    """The uint16 values, GREASE left out, of a vector with a 1- or 2-byte length in buf[pos:end]
    (the cipher suites, or an extension body), as far as both its length and buf[pos:end] go."""
    start = pos + length_bytes
    if start > end:
        return ()
    stop = start + (buf[pos] if length_bytes == 1 else (buf[pos] << 8) | buf[pos + 1])
    stop = stop if stop < end else end  # min() costs a quarter of this function
    raw = buf[start : stop - ((stop - start) & 1)]  # whole values only: the cache keeps numbers
    values = _UINT16S_BY_BYTES.get(raw)
    if values is None:
        values = tuple([value for value in unpack_from(f">{len(raw) >> 1}H", raw) if value not in _GREASE])
        if len(raw) <= 2 * MAX_REMEMBERED_VALUES:
            _remember(_UINT16S_BY_BYTES, raw, values)
    return values


def _u8_vector(buf: bytes, pos: int, end: int) -> bytes:
    """The bytes of a vector with a 1-byte length in the extension body buf[pos:end], as far as both
    its length and the body go."""
    if pos >= end:
        return b""
    stop = pos + 1 + buf[pos]
    return buf[pos + 1 : stop if stop < end else end]


def _first_alpn(buf: bytes, pos: int, end: int) -> bytes:
    """First protocol name of an ALPN extension body buf[pos:end] (RFC 7301 3.1); empty if there
    is none whole within the list and the body."""
    start = pos + 3
    if start > end:
        return b""
    stop = start + buf[pos + 2]
    if stop > end or stop > pos + 2 + ((buf[pos] << 8) | buf[pos + 1]):
        return b""
    return buf[start:stop]


def _alpn_code(alpn: bytes | None) -> str:
    """JA4's two ALPN characters: first and last of the first value when both are ASCII letters or
    digits, else the first and last digits of its hex form; "00" without a (non-empty) value."""
    if not alpn:
        return "00"
    if alpn[0] in _ALNUM and alpn[-1] in _ALNUM:
        return chr(alpn[0]) + chr(alpn[-1])
    digits = alpn.hex()
    return digits[0] + digits[-1]


def _hex_list(values) -> str:
    """JA4's list form, "0a0b,1301,...": 4 lower-case hex digits per value, comma-separated."""
    return pack(f">{len(values)}H", *values).hex(",", 2)


def _hash12(text: str) -> str:
    """JA4's truncated SHA-256, and its "000000000000" for an empty list (an explicit "nothing"
    rather than the hash of an empty string)."""
    if not text:
        return _JA4_EMPTY
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_BAD: Final = object()


def _server_name(buf: bytes, pos: int, end: int):
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
            raw = buf[start:pos].lower()
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


def _server_flight(buf: bytes) -> ServerCertificates:
    """Walk the server's records up to its Certificate message (RFC 5246 7.3: ServerHello, then
    Certificate unless the suite or a resumed session has none).

    Handshake fragments are joined in `hs`; a message may span records and records may hold
    several messages. Only the ServerHello and the Certificate message are gathered whole, each
    under its bound, so `hs` never exceeds them plus one record."""
    n = len(buf)
    if n >= 1 and buf[0] != _CONTENT_HANDSHAKE and buf[0] != _CONTENT_ALERT:
        return _CERTS_NOT_TLS
    if n >= 2 and buf[1] != 3:
        return _CERTS_NOT_TLS
    if n >= 6 and buf[0] == _CONTENT_HANDSHAKE and buf[5] != _HS_SERVER_HELLO:
        return _CERTS_NOT_TLS
    hs = bytearray()
    done = 0  # bytes of hs taken by complete messages
    want = -1  # total length of the message being gathered (header included), once known
    seen_hello = False
    pos = 0
    for _ in range(MAX_RECORDS):
        if pos + _RECORD_HEADER > n:
            if pos < n and buf[pos] not in (_CONTENT_HANDSHAKE, _CONTENT_ALERT, _CONTENT_CHANGE_CIPHER_SPEC):
                return _CERTS_MALFORMED
            if pos + 1 < n and buf[pos + 1] != 3:
                return _CERTS_MALFORMED
            return ServerCertificates(NEED_MORE, (), pos + _RECORD_HEADER + 1)
        content = buf[pos]
        rec_len = (buf[pos + 3] << 8) | buf[pos + 4]
        if buf[pos + 1] != 3 or rec_len == 0 or rec_len > _MAX_RECORD_LEN:
            return _CERTS_MALFORMED
        start = pos + _RECORD_HEADER
        rec_end = start + rec_len
        if content == _CONTENT_ALERT:
            if start >= n:
                return ServerCertificates(NEED_MORE, (), start + 1)
            if buf[start] != _ALERT_WARNING:
                return ServerCertificates(DONE, (), rec_end)  # the handshake failed: no certificate
            pos = rec_end
            continue
        if content == _CONTENT_CHANGE_CIPHER_SPEC:
            # The server switches to encryption before any Certificate: a resumed session
            # (RFC 5246 7.3), which has none.
            if not seen_hello or len(hs) > done:
                return _CERTS_MALFORMED
            return ServerCertificates(DONE, (), rec_end)
        if content != _CONTENT_HANDSHAKE:
            return _CERTS_MALFORMED  # application data before the server's handshake ended
        hs += buf[start : min(rec_end, n)]
        while True:
            if want < 0:
                if len(hs) - done < _HS_HEADER:
                    break
                msg_type = hs[done]
                msg_len = (hs[done + 1] << 16) | (hs[done + 2] << 8) | hs[done + 3]
                if not seen_hello:
                    if msg_type != _HS_SERVER_HELLO or msg_len < _MIN_SERVER_HELLO_LEN or msg_len > MAX_HELLO_LEN:
                        return _CERTS_MALFORMED
                elif msg_type != _HS_CERTIFICATE:
                    # ServerKeyExchange, ServerHelloDone, NewSessionTicket...: no certificate comes.
                    return ServerCertificates(DONE, (), rec_end)
                elif msg_len > MAX_CERTIFICATE_LEN:
                    return _CERTS_MALFORMED
                want = _HS_HEADER + msg_len
            if len(hs) - done < want:
                break
            body, end = done + _HS_HEADER, done + want
            if seen_hello:
                hashes = _certificate_hashes(hs, body, end)
                if hashes is None:
                    return _CERTS_MALFORMED
                return ServerCertificates(DONE, hashes, rec_end)
            selected = _server_hello_version(hs, body, end)
            if selected < 0:
                return _CERTS_MALFORMED
            if selected >= _TLS13:
                return ServerCertificates(ENCRYPTED, (), rec_end)
            seen_hello = True
            done, want = end, -1
        if rec_end > n:
            missing = (want if want >= 0 else _HS_HEADER) - (len(hs) - done)
            return ServerCertificates(NEED_MORE, (), min(rec_end, n + missing))
        pos = rec_end
    return _CERTS_MALFORMED


def _server_hello_version(buf: bytearray, pos: int, end: int) -> int:
    """Version a complete ServerHello body buf[pos:end] selects: its supported_versions extension
    when present (RFC 8446 4.2.1; a server negotiating TLS <= 1.2 does not send it), else its
    legacy version; -1 if malformed."""
    version = (buf[pos] << 8) | buf[pos + 1]
    pos += 34
    sid_len = buf[pos]
    if sid_len > 32:
        return -1
    pos += 1 + sid_len + 3  # session id, cipher suite, compression method
    if pos > end:
        return -1
    if pos == end:
        return version
    if pos + 2 > end or pos + 2 + ((buf[pos] << 8) | buf[pos + 1]) != end:
        return -1
    pos += 2
    while pos < end:
        if pos + 4 > end:
            return -1
        ext_type = (buf[pos] << 8) | buf[pos + 1]
        body = pos + 4
        pos = body + ((buf[pos + 2] << 8) | buf[pos + 3])
        if pos > end:
            return -1
        if ext_type == _EXT_SUPPORTED_VERSIONS:
            if pos - body != 2:
                return -1
            selected = (buf[body] << 8) | buf[body + 1]
            return selected if selected >= _TLS13 else -1
    return version


def _certificate_hashes(buf: bytearray, pos: int, end: int) -> tuple[str, ...] | None:
    """SHA-256 of each certificate of a TLS <= 1.2 Certificate body buf[pos:end] (RFC 5246 7.4.2:
    a 3-byte list length, then 3-byte length + DER per certificate); None if the lengths disagree."""
    if pos + 3 > end or pos + 3 + ((buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]) != end:
        return None
    pos += 3
    hashes = []
    while pos < end:
        if pos + 3 > end:
            return None
        start = pos + 3
        pos = start + ((buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2])
        if pos == start or pos > end:
            return None
        hashes.append(hashlib.sha256(buf[start:pos]).hexdigest())
    return tuple(hashes)
